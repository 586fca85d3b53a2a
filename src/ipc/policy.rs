//! Which topics socket clients may publish (ingress) and which they receive (egress).
//!
//! The lists are the reference proxy's (spec §2.3, §2.4) with three fixes: tool calls and
//! their results reach frontends (the reference's CLI renders them, its bridge dropped them); the bare
//! `astrid.v1.elicit` request topic is forwarded (the reference's `astrid.v1.elicit.*`
//! needed one more segment and silently hid it), and the admin API is reachable, as the
//! later reference revision allows.

use crate::types::topics::{
    ACTIVE_MODEL_CHANGED_TOPIC, ADMIN_PREFIX, ADMIN_RESPONSE_PATTERN, ADMIN_RESPONSE_PREFIX, APPROVAL_RESPONSE_PREFIX,
    APPROVAL_TOPIC, CAPSULES_LOADED_TOPIC, COMMAND_OUTPUT_TOPIC, COMMAND_TOPIC, DELTA_TOPIC, ELICIT_PATTERN,
    ELICIT_RESPONSE_PREFIX, ELICIT_TOPIC, NOTICE_TOPIC, ONBOARDING_TOPIC, PROMPT_TOPIC, RECEIPT_TOPIC,
    REGISTRY_RESPONSE_PATTERN, REQUEST_PREFIX, RESPONSE_PATTERN, RESPONSE_TOPIC, SELECTION_PATTERN, SELECTION_PREFIX,
    SESSION_REQUEST_PREFIX, SESSION_RESPONSE_PATTERN, TOOL_CANCEL_TOPIC, TOOL_REQUEST_TOPIC, TOOL_RESULT_TOPIC,
};

/// Topics a client may publish on, matched exactly.
const INGRESS_EXACT: &[&str] = &[PROMPT_TOPIC, COMMAND_TOPIC];

/// Topic prefixes a client may publish under.
const INGRESS_PREFIXES: &[&str] = &[
    REQUEST_PREFIX,
    ELICIT_RESPONSE_PREFIX,
    APPROVAL_RESPONSE_PREFIX,
    SELECTION_PREFIX,
    SESSION_REQUEST_PREFIX,
    ADMIN_PREFIX,
];

/// Prefixes carved out of [`INGRESS_PREFIXES`]: replies only the kernel may publish.
const INGRESS_DENIED_PREFIXES: &[&str] = &[ADMIN_RESPONSE_PREFIX];

/// Bus subscriptions of every client connection (subscription wildcard semantics).
pub const EGRESS_PATTERNS: &[&str] = &[
    RESPONSE_TOPIC,
    // Streamed text of a turn, as the reference's bridge forwards it.
    DELTA_TOPIC,
    // What a capsule tells the person about a turn besides the answer (Astrid extension).
    NOTICE_TOPIC,
    // The kernel's receipt for a prompt: who answers it, or why nobody does (Astrid extension).
    RECEIPT_TOPIC,
    // Tool calls and their results, so a frontend can show what the agent does (the
    // reference's CLI renders them but its bridge never forwarded them).
    TOOL_REQUEST_TOPIC,
    TOOL_RESULT_TOPIC,
    // Tool calls a turn gave up on (cancelled or timed out), so a frontend can say so.
    TOOL_CANCEL_TOPIC,
    // A running command's output, sent by the kernel to the turn that runs it (Astrid extension).
    COMMAND_OUTPUT_TOPIC,
    ONBOARDING_TOPIC,
    ELICIT_TOPIC,
    ELICIT_PATTERN,
    APPROVAL_TOPIC,
    RESPONSE_PATTERN,
    CAPSULES_LOADED_TOPIC,
    REGISTRY_RESPONSE_PATTERN,
    ACTIVE_MODEL_CHANGED_TOPIC,
    SELECTION_PATTERN,
    SESSION_RESPONSE_PATTERN,
    ADMIN_RESPONSE_PATTERN,
];

/// Whether a client may publish on `topic`.
pub fn ingress_allowed(topic: &str) -> bool {
    if INGRESS_DENIED_PREFIXES.iter().any(|p| topic.starts_with(p)) {
        return false;
    }
    INGRESS_EXACT.contains(&topic) || INGRESS_PREFIXES.iter().any(|p| topic.len() > p.len() && topic.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::topic::subscription_matches;

    #[test]
    fn ingress_allowlist() {
        for ok in [
            "user.v1.prompt",
            "astrid.v1.request.status",
            "astrid.v1.approval.response.r1",
            "astrid.v1.admin.agent.list",
        ] {
            assert!(ingress_allowed(ok), "{ok}");
        }
        for denied in [
            "agent.v1.response",
            "astrid.v1.request.",
            "astrid.v1.response.status",
            "astrid.v1.admin.response.agent.list",
            "client.v1.disconnect",
            "user.v1.prompt.x",
        ] {
            assert!(!ingress_allowed(denied), "{denied}");
        }
    }

    #[test]
    fn egress_covers_replies_and_elicit() {
        let egress = |topic: &str| EGRESS_PATTERNS.iter().any(|p| subscription_matches(p, topic));
        assert!(egress("astrid.v1.response.status"));
        assert!(egress("astrid.v1.elicit"));
        assert!(egress("astrid.v1.approval"));
        assert!(!egress("astrid.v1.request.status"));
        assert!(!egress("llm.v1.stream.openai"));
    }
}
