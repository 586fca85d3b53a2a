//! Topic names and the two wildcard meanings, in one place.
//!
//! The reference runtime has two matchers and once let them drift apart (a publish ACL and
//! delivery disagreeing about `*`). Both live here, side by side, each with its own tests:
//!
//! - [`subscription_matches`] (bus delivery): `*` matches exactly one segment, except a
//!   trailing `.*`, which matches one or more remaining segments. `astrid.v1.request.*`
//!   therefore receives both `astrid.v1.request.status` and `astrid.v1.request.a.b`.
//! - [`acl_matches`] (capability lists, interceptors, and so what a capsule's subscriptions
//!   deliver: a capsule receives exactly what its grant names): segment counts must be equal
//!   and `*` matches exactly one segment anywhere.

/// Longest topic accepted on the bus, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Most segments a topic may have.
pub const MAX_TOPIC_SEGMENTS: usize = 8;
/// Topics longer than this never match a subscription, whatever the pattern.
const MAX_MATCHABLE_SEGMENTS: usize = 20;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {0} bytes, the limit is {MAX_TOPIC_BYTES}")]
    TooLong(usize),
    /// The topic has more than [`MAX_TOPIC_SEGMENTS`] segments.
    #[error("topic has {0} segments, the limit is {MAX_TOPIC_SEGMENTS}")]
    TooManySegments(usize),
    /// Two dots in a row, or a leading or trailing dot.
    #[error("topic has an empty segment")]
    EmptySegment,
    /// A concrete topic (one being published) may not contain a wildcard.
    #[error("a published topic may not contain '*'")]
    Wildcard,
}

/// Checks a topic that is about to be published.
///
/// Every message a client or a capsule publishes passes here, so it reads the bytes once
/// (`.` and `*` are ASCII: no byte of a multi-byte character can be taken for either).
pub fn validate(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    let (mut segments, mut empty_segment, mut wildcard, mut previous) = (1, false, false, b'.');
    for &byte in topic.as_bytes() {
        match byte {
            b'.' => {
                segments += 1;
                empty_segment |= previous == b'.';
            }
            b'*' => wildcard = true,
            _ => {}
        }
        previous = byte;
    }
    if segments > MAX_TOPIC_SEGMENTS {
        return Err(TopicError::TooManySegments(segments));
    }
    if empty_segment || previous == b'.' {
        return Err(TopicError::EmptySegment);
    }
    if wildcard {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Bus delivery semantics: a trailing `*` absorbs one or more segments.
///
/// Called for every subscriber of every message (the bus's hottest path), so it walks both
/// strings segment by segment and allocates nothing.
pub fn subscription_matches(pattern: &str, topic: &str) -> bool {
    if topic.bytes().filter(|&b| b == b'.').count() >= MAX_MATCHABLE_SEGMENTS {
        return false;
    }
    let mut topic = topic.split('.');
    let mut pattern = pattern.split('.').peekable();
    while let Some(wanted) = pattern.next() {
        let Some(segment) = topic.next() else { return false };
        if wanted == "*" && pattern.peek().is_none() {
            // The trailing wildcard, with at least this one segment to take.
            return true;
        }
        if wanted != "*" && wanted != segment {
            return false;
        }
    }
    topic.next().is_none()
}

/// ACL semantics: equal segment counts, `*` is exactly one segment. Allocates nothing.
pub fn acl_matches(pattern: &str, topic: &str) -> bool {
    let (mut pattern, mut topic) = (pattern.split('.'), topic.split('.'));
    loop {
        match (pattern.next(), topic.next()) {
            (None, None) => return true,
            (Some(wanted), Some(segment)) if wanted == "*" || wanted == segment => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_wildcard_takes_one_or_more_segments_on_the_bus() {
        assert!(subscription_matches("astrid.v1.request.*", "astrid.v1.request.status"));
        assert!(subscription_matches("astrid.v1.request.*", "astrid.v1.request.a.b"));
        assert!(!subscription_matches("astrid.v1.request.*", "astrid.v1.request"));
        assert!(!subscription_matches("astrid.v1.request.*", "astrid.v1.response.status"));
    }

    #[test]
    fn middle_wildcard_is_one_segment_on_the_bus() {
        assert!(subscription_matches("llm.*.stream", "llm.v1.stream"));
        assert!(!subscription_matches("llm.*.stream", "llm.v1.x.stream"));
        assert!(subscription_matches("agent.v1.response", "agent.v1.response"));
        assert!(!subscription_matches("agent.v1.response", "agent.v1.response.x"));
    }

    #[test]
    fn very_long_topics_never_match() {
        let topic = vec!["a"; 21].join(".");
        assert!(!subscription_matches("a.*", &topic));
    }

    #[test]
    fn acl_wildcard_is_exactly_one_segment() {
        assert!(acl_matches("astrid.v1.request.*", "astrid.v1.request.status"));
        assert!(!acl_matches("astrid.v1.request.*", "astrid.v1.request.a.b"));
        assert!(acl_matches("*.v1.*", "user.v1.prompt"));
        assert!(!acl_matches("user.v1", "user.v1.prompt"));
    }

    #[test]
    fn validate_enforces_the_limits() {
        assert_eq!(validate("user.v1.prompt"), Ok(()));
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate("a..b"), Err(TopicError::EmptySegment));
        assert_eq!(validate("a.b."), Err(TopicError::EmptySegment));
        assert_eq!(validate("a.*"), Err(TopicError::Wildcard));
        assert_eq!(validate("a.b.c.d.e.f.g.h.i"), Err(TopicError::TooManySegments(9)));
        let long = "x".repeat(257);
        assert_eq!(validate(&long), Err(TopicError::TooLong(257)));
    }

    use proptest::prelude::*;

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9_]{1,5}", 1..=8).prop_map(|segments| segments.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof!["[a-z0-9_]{1,5}", Just("*".to_owned())], 1..=8)
            .prop_map(|segments| segments.join("."))
    }

    proptest! {
        #[test]
        fn a_topic_matches_itself_both_ways(t in topic()) {
            prop_assert!(validate(&t).is_ok());
            prop_assert!(subscription_matches(&t, &t));
            prop_assert!(acl_matches(&t, &t));
        }

        #[test]
        fn acl_matches_are_a_subset_of_bus_matches(p in pattern(), t in topic()) {
            if acl_matches(&p, &t) {
                prop_assert!(subscription_matches(&p, &t), "{p} / {t}");
            }
        }

        #[test]
        fn trailing_wildcard_means_one_or_more_on_the_bus_and_exactly_one_in_acls(
            prefix in topic(), rest in proptest::collection::vec("[a-z]{1,3}", 0..4)
        ) {
            let p = format!("{prefix}.*");
            let t = if rest.is_empty() { prefix.clone() } else { format!("{prefix}.{}", rest.join(".")) };
            prop_assert_eq!(subscription_matches(&p, &t), !rest.is_empty());
            prop_assert_eq!(acl_matches(&p, &t), rest.len() == 1);
        }

        /// The one-pass check gives the verdict, and the reason, of the plain reading of the
        /// rules (split on dots, then look), for any text: dots, stars, empty segments,
        /// multi-byte characters, too many segments.
        #[test]
        fn validate_reads_as_the_rules_say(raw in "[a.*é]{0,20}") {
            let segments = raw.split('.').count();
            let expected = if raw.is_empty() {
                Err(TopicError::Empty)
            } else if segments > MAX_TOPIC_SEGMENTS {
                Err(TopicError::TooManySegments(segments))
            } else if raw.split('.').any(str::is_empty) {
                Err(TopicError::EmptySegment)
            } else if raw.contains('*') {
                Err(TopicError::Wildcard)
            } else {
                Ok(())
            };
            prop_assert_eq!(validate(&raw), expected, "{:?}", raw);
        }

        #[test]
        fn published_topics_never_carry_wildcards_or_empty_segments(raw in "[a-z.*]{0,20}") {
            if validate(&raw).is_ok() {
                prop_assert!(!raw.contains('*'));
                prop_assert!(raw.split('.').all(|s| !s.is_empty()));
            }
        }
    }
}
