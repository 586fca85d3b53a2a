//! Astrid's extensions to a turn's wire traffic, beyond the reference's messages.
//!
//! The reference gives a frontend no way to know who will answer a prompt, or whether an
//! answer is an answer or an error: a frontend waited for the first final `agent_response`,
//! so a second capsule answering prompts shifted every later answer one turn late, an
//! unknown command waited out the timeout, and `LLM error: …` exited 0. These types fill the
//! gaps without changing what a reference frontend sees: a receipt and a notice are frames
//! on topics it does not know (it skips them), and [`TurnOutcome`] is an optional field of
//! `agent_response` it ignores.
//!
//! The kernel answers every prompt and command a client publishes with a
//! [`TurnEvent::PromptReceipt`] on [`RECEIPT_TOPIC`](super::topics::RECEIPT_TOPIC), before
//! any answer can reach it; capsules tell the person about a turn on
//! [`NOTICE_TOPIC`](super::topics::NOTICE_TOPIC).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a turn ended, on the final `agent_response` (absent: answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The agent answered.
    Answered,
    /// The model or a tool failed; the text says what went wrong.
    Failed,
    /// The turn was cancelled (Ctrl-C, or a client's `cancel_turn`).
    Cancelled,
    /// The model went silent or the tools took too long.
    TimedOut,
    /// The turn used all of its rounds of tool calls.
    Stopped,
}

/// A person's answer to an approval request, failing closed: anything but the three
/// approvals is a denial (the reference once treated anything but `"deny"` as yes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalDecision {
    /// `approve`: just this once.
    Once,
    /// `approve_session`: for this session.
    Session,
    /// `approve_always`: from now on.
    Always,
    /// `deny`, or anything unrecognised.
    Deny,
}

impl ApprovalDecision {
    /// Parses a decision on the wire; anything but the three approvals is a denial.
    pub fn parse(text: &str) -> Self {
        match text {
            "approve" => Self::Once,
            "approve_session" => Self::Session,
            "approve_always" => Self::Always,
            _ => Self::Deny,
        }
    }

    /// The decision on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "approve",
            Self::Session => "approve_session",
            Self::Always => "approve_always",
            Self::Deny => "deny",
        }
    }
}

/// A capsule that will answer a prompt: its final `agent_response` ends its part of the turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answerer {
    /// The capsule's name.
    pub capsule: String,
    /// The `source_id` its frames carry.
    pub source_id: Uuid,
}

/// Turn events that are not answers. Internally tagged by `type`; carried as custom payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnEvent {
    /// The kernel's acknowledgement of a prompt or command: who will answer it, or why nobody
    /// will. Sent only to the connection that published it, before anything else of its turn.
    PromptReceipt {
        /// The session the prompt named.
        session_id: String,
        /// The kernel's id for this prompt.
        turn: Uuid,
        /// The capsules that received it and may answer (each ends with a final response).
        answerers: Vec<Answerer>,
        /// Why nobody answers (`answerers` is then empty): an unknown command, a stopped
        /// capsule, no agent running, an empty prompt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// Something the person should know about a turn that is not part of the answer (a tool
    /// server left out because it was still starting, say).
    Notice {
        /// The session it concerns.
        session_id: String,
        /// What to say.
        text: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_events_are_tagged_and_optional_fields_stay_out() {
        let receipt = TurnEvent::PromptReceipt {
            session_id: "s".into(),
            turn: Uuid::nil(),
            answerers: vec![Answerer { capsule: "orchestrator".into(), source_id: Uuid::nil() }],
            refused: None,
        };
        let json = serde_json::to_value(&receipt).expect("json");
        assert_eq!(json["type"], "prompt_receipt");
        assert!(json.get("refused").is_none());
        assert_eq!(serde_json::from_value::<TurnEvent>(json).expect("back"), receipt);
        assert_eq!(serde_json::to_value(TurnOutcome::TimedOut).expect("json"), "timed_out");
        for decision in [ApprovalDecision::Once, ApprovalDecision::Session, ApprovalDecision::Always] {
            assert_eq!(ApprovalDecision::parse(decision.as_str()), decision);
        }
        for denied in ["deny", "Approve", "yes", "", "approve_workspace"] {
            assert_eq!(ApprovalDecision::parse(denied), ApprovalDecision::Deny, "{denied:?}");
        }
    }
}
