//! Approvals asked of the person at the MCP client, through MCP elicitation.
//!
//! The daemon asks this connection (its calls caused the question) exactly what it asks
//! `astrid chat`: what would be done, to what, the details (a diff, a command line) and what
//! "session" and "always" would cover. Here it becomes an `elicitation/create` form with one
//! choice (once, session, always, deny), shown in the client's own UI, and the answer goes
//! back to the daemon as the chat's would. Anything but an accepted choice is a deny; the
//! elicitation is given up a little before the daemon's own 60 s, so the daemon always hears
//! a decision from here rather than a timeout.

use std::time::Duration;

use rmcp::model::{ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ServerRequest};
use rmcp::service::{Peer, PeerRequestOptions, RoleServer};
use serde_json::{Value, json};

use crate::cli::turn::Question;
use crate::types::ApprovalDecision;

/// How long the person has to answer here: less than the daemon's question timeout (60 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(55);

/// The form the person fills in: one choice.
fn form(question: &Question) -> Value {
    let mut message = format!("Astrid: {}\nAllow {} on {}?", question.reason, question.action, question.resource);
    if let Some(details) = &question.details {
        message.push_str(&format!("\n\n{details}"));
    }
    if let Some(scope) = &question.scope {
        message.push_str(&format!("\n\n\"For this session\" and \"always\" would allow {scope}."));
    }
    json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                "decision": {
                    "type": "string",
                    "title": "Allow?",
                    "oneOf": [
                        {"const": "once", "title": "Allow once"},
                        {"const": "session", "title": "Allow for this session"},
                        {"const": "always", "title": "Always allow"},
                        {"const": "deny", "title": "Deny"}
                    ]
                }
            },
            "required": ["decision"]
        }
    })
}

/// The decision a filled-in form stands for: a deny unless a choice was accepted.
fn decision(action: ElicitationAction, content: Option<&Value>) -> ApprovalDecision {
    if action != ElicitationAction::Accept {
        return ApprovalDecision::Deny;
    }
    match content.and_then(|c| c.get("decision")).and_then(Value::as_str) {
        Some("once") => ApprovalDecision::Once,
        Some("session") => ApprovalDecision::Session,
        Some("always") => ApprovalDecision::Always,
        _ => ApprovalDecision::Deny,
    }
}

/// Asks the person at the MCP client; a deny when they decline, cancel, do not answer in
/// time, or the client fails the request.
pub async fn ask(peer: &Peer<RoleServer>, question: &Question) -> ApprovalDecision {
    let params: ElicitRequestParams = match serde_json::from_value(form(question)) {
        Ok(params) => params,
        Err(e) => {
            log::error!("astrid mcp serve: cannot build the approval form: {e}");
            return ApprovalDecision::Deny;
        }
    };
    let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
    let answered = async {
        let handle = peer.send_request_with_option(request, PeerRequestOptions::with_timeout(ANSWER_WITHIN)).await?;
        handle.await_response().await
    };
    match answered.await {
        Ok(ClientResult::ElicitResult(result)) => decision(result.action, result.content.as_ref()),
        Ok(other) => {
            log::warn!("astrid mcp serve: the client answered an approval with {other:?}; denied");
            ApprovalDecision::Deny
        }
        Err(e) => {
            log::warn!("astrid mcp serve: the client could not be asked ({e}); denied");
            ApprovalDecision::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_a_valid_elicitation_and_only_an_accepted_choice_allows() {
        let question = Question {
            action: "write_file".into(),
            resource: "notes.txt".into(),
            reason: "Capsule 'tools-fs' requests approval".into(),
            details: Some("+buy milk".into()),
            scope: Some("write_file anywhere in the workspace".into()),
        };
        let params: ElicitRequestParams = serde_json::from_value(form(&question)).expect("an elicitation form");
        let ElicitRequestParams::FormElicitationParams { message, .. } = params else { panic!("a form") };
        assert!(message.contains("write_file on notes.txt") && message.contains("+buy milk"), "{message}");
        let choice = |c: &str| json!({"decision": c});
        assert_eq!(decision(ElicitationAction::Accept, Some(&choice("session"))), ApprovalDecision::Session);
        assert_eq!(decision(ElicitationAction::Accept, Some(&choice("always"))), ApprovalDecision::Always);
        assert_eq!(decision(ElicitationAction::Accept, Some(&choice("once"))), ApprovalDecision::Once);
        assert_eq!(decision(ElicitationAction::Accept, Some(&choice("yes please"))), ApprovalDecision::Deny);
        assert_eq!(decision(ElicitationAction::Decline, Some(&choice("always"))), ApprovalDecision::Deny);
        assert_eq!(decision(ElicitationAction::Cancel, None), ApprovalDecision::Deny);
    }
}
