//! The handshake: the client speaks first with `{token, protocol_version, client_version}`,
//! the server answers `{status, protocol_version, server_version, reason?}`.
//!
//! Order of checks (spec §2.2): peer UID (done by the server before reading), then the
//! protocol version (so an old client learns to restart the daemon rather than doubting its
//! token), then the token in constant time. A wrong token and a malformed one get the same
//! `authentication failed`, so the reply says nothing about which part was wrong.

use serde_json::Value;

use super::token::SessionToken;
use crate::types::handshake::{CapsuleAttach, PROTOCOL_VERSION};

/// The longest label a connection is known by (characters; a longer one is cut).
pub const MAX_LABEL: usize = 128;

/// The reason given for any token problem.
pub const AUTH_FAILED: &str = "authentication failed";

/// What to do with a handshake frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The client may proceed; its self-reported version, for the log.
    Accept {
        /// `client_version`, truncated to 64 characters.
        client_version: String,
        /// The capsule it serves, when it is a capsule host.
        attach: Option<CapsuleAttach>,
        /// The workspace it asks to work in, as it sent it (checked by the caller, which
        /// may touch the file system).
        workspace: Option<String>,
        /// Who the connection acts for (the audit trail names it beside the connection),
        /// one line of at most [`MAX_LABEL`] characters.
        label: Option<String>,
        /// Whether someone at this connection answers questions (approvals, values).
        answers_questions: bool,
    },
    /// Reply with an error carrying this reason, then close.
    Reject(String),
    /// Close without a reply (the frame is not a handshake at all).
    Drop(String),
}

/// Judges one handshake frame against the daemon's token.
pub fn evaluate(frame: &[u8], token: &SessionToken) -> Verdict {
    let request: Value = match serde_json::from_slice(frame) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => return Verdict::Drop("handshake is not a JSON object".to_owned()),
        Err(e) => return Verdict::Drop(format!("handshake is not JSON: {e}")),
    };
    match request.get("protocol_version") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => return Verdict::Reject(version_mismatch(other)),
        None => return Verdict::Reject("malformed handshake: missing protocol_version".to_owned()),
    }
    let presented = request.get("token").and_then(Value::as_str).and_then(|t| SessionToken::from_hex(t).ok());
    if !presented.is_some_and(|presented| token.matches(&presented)) {
        return Verdict::Reject(AUTH_FAILED.to_owned());
    }
    let client_version = request.get("client_version").and_then(Value::as_str).unwrap_or("unknown");
    let attach = match request.get("capsule_host") {
        None | Some(Value::Null) => None,
        Some(attach) => match serde_json::from_value::<CapsuleAttach>(attach.clone()) {
            Ok(attach) => Some(attach),
            Err(e) => return Verdict::Reject(format!("malformed capsule_host: {e}")),
        },
    };
    let workspace = match request.get("workspace") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) => Some(path.clone()),
        Some(other) => return Verdict::Reject(format!("malformed workspace: {other} is not a path")),
    };
    let label = match request.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(label)) => {
            Some(label.trim().chars().filter(|c| !c.is_control()).take(MAX_LABEL).collect::<String>())
                .filter(|label| !label.is_empty())
        }
        Some(other) => return Verdict::Reject(format!("malformed label: {other} is not a string")),
    };
    let answers_questions = match request.get("answers_questions") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(answers)) => *answers,
        Some(other) => return Verdict::Reject(format!("malformed answers_questions: {other} is not a boolean")),
    };
    Verdict::Accept {
        client_version: client_version.chars().take(64).collect(),
        attach,
        workspace,
        label,
        answers_questions,
    }
}

fn version_mismatch(client: &Value) -> String {
    format!(
        "Protocol version mismatch (client={client}, server={PROTOCOL_VERSION}). Restart the daemon with `astrid restart`."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn good_token_is_accepted() {
        let token = SessionToken::generate().expect("token");
        let verdict = evaluate(
            &frame(json!({"token": token.to_hex(), "protocol_version": 1, "client_version": "0.7.0"})),
            &token,
        );
        assert_eq!(
            verdict,
            Verdict::Accept {
                client_version: "0.7.0".into(),
                attach: None,
                workspace: None,
                label: None,
                answers_questions: true
            }
        );
        let attach = json!({"token": token.to_hex(), "protocol_version": 1, "client_version": "x",
            "capsule_host": {"ticket": "t1"}});
        let expected = CapsuleAttach { ticket: Some("t1".into()), ..CapsuleAttach::default() };
        assert_eq!(
            evaluate(&frame(attach), &token),
            Verdict::Accept {
                client_version: "x".into(),
                attach: Some(expected),
                workspace: None,
                label: None,
                answers_questions: true
            }
        );
        let bad = json!({"token": token.to_hex(), "protocol_version": 1, "client_version": "x",
            "capsule_host": {"ticket": 7}});
        assert!(matches!(evaluate(&frame(bad), &token), Verdict::Reject(reason) if reason.contains("capsule_host")));
    }

    #[test]
    fn a_label_is_one_clean_line_and_a_connection_may_say_it_answers_no_questions() {
        let token = SessionToken::generate().expect("token");
        let hello = json!({"token": token.to_hex(), "protocol_version": 1, "client_version": "x",
            "label": format!(" claude-code 1.0\u{1b}[2K\n{} ", "x".repeat(200)), "answers_questions": false});
        let Verdict::Accept { label: Some(label), answers_questions, .. } = evaluate(&frame(hello), &token) else {
            panic!("accepted with a label")
        };
        assert!(label.starts_with("claude-code 1.0[2K") && label.chars().count() == MAX_LABEL, "{label}");
        assert!(!answers_questions);
        let bad = json!({"token": token.to_hex(), "protocol_version": 1, "client_version": "x", "label": 7});
        assert!(matches!(evaluate(&frame(bad), &token), Verdict::Reject(reason) if reason.contains("label")));
    }

    #[test]
    fn wrong_and_malformed_tokens_look_the_same() {
        let token = SessionToken::generate().expect("token");
        let other = SessionToken::generate().expect("token");
        for presented in [json!(other.to_hex()), json!("abcd"), json!(12), json!(null)] {
            let verdict =
                evaluate(&frame(json!({"token": presented, "protocol_version": 1, "client_version": "x"})), &token);
            assert_eq!(verdict, Verdict::Reject(AUTH_FAILED.into()), "{presented}");
        }
    }

    #[test]
    fn version_is_checked_before_the_token() {
        let token = SessionToken::generate().expect("token");
        let verdict = evaluate(&frame(json!({"token": "bad", "protocol_version": 2, "client_version": "x"})), &token);
        assert_eq!(
            verdict,
            Verdict::Reject(
                "Protocol version mismatch (client=2, server=1). Restart the daemon with `astrid restart`.".into()
            )
        );
    }

    #[test]
    fn garbage_is_dropped_without_reply() {
        let token = SessionToken::generate().expect("token");
        assert!(matches!(evaluate(b"\xff\x00garbage", &token), Verdict::Drop(_)));
        assert!(matches!(evaluate(b"[1,2]", &token), Verdict::Drop(_)));
    }
}
