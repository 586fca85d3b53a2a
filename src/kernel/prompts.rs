//! Prompts and slash commands from clients: stamped, acknowledged, then published.
//!
//! A `user_input` a client publishes on [`PROMPT_TOPIC`] or [`COMMAND_TOPIC`] starts a turn.
//! The kernel gives it a [`Cause`] (the connection, the session, the workspace), records it in
//! the audit trail, and tells the client at once who will answer it with a
//! [`TurnEvent::PromptReceipt`], *before* the prompt reaches anyone, so the receipt is the
//! first frame of its turn on that connection. The receipt names the capsules that received
//! the prompt and may answer it; a frontend waits for a final answer from each of them, so a
//! second capsule answering prompts no longer shifts the answers a turn late. When nobody
//! will answer, the receipt says why (no such command, the capsule that offers it is
//! stopped, no agent is running, the prompt is empty) and the prompt is not published: the
//! person hears it at once instead of waiting out a timeout.
//!
//! A command is answered only by the capsules that declare it (`[[command]]` in their
//! manifest); an undeclared one is "no such command".
//!
//! A `cancel_turn` (a `user_input` whose context says so) is not a turn: it withdraws the
//! approvals that session's turn is waiting on, at once, and goes on to the agent, which
//! stops what the turn started.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Kernel;
use super::bus::{BusMessage, Origin, SubscriberId};
use super::capability::Capability;
use super::capsules::{Capsule, CapsuleState};
use super::cause::Cause;
use super::grants::GrantStatus;
use crate::audit::Decision;
use crate::home::DEFAULT_PRINCIPAL;
use crate::types::topics::{COMMAND_TOPIC, PROMPT_TOPIC, RECEIPT_TOPIC, RESPONSE_TOPIC};
use crate::types::{Answerer, IpcMessage, IpcPayload, TurnEvent};

/// How long a prompt waits for a capsule that is about to run before the receipt says it
/// does not.
const STARTING_WAIT: Duration = Duration::from_secs(10);

/// Whether a client's message on `topic` is a prompt or command the kernel takes in itself.
pub fn is_input_topic(topic: &str) -> bool {
    topic == PROMPT_TOPIC || topic == COMMAND_TOPIC
}

impl Kernel {
    /// Takes in a prompt or command the client on connection `connection` (subscribed to
    /// the bus as `client`) published, working in `workspace`: see the module
    /// documentation. Completes once the input is delivered (paced to the speed of whoever
    /// receives it).
    pub async fn accept_input(
        &self,
        client: SubscriberId,
        connection: u64,
        message: IpcMessage,
        workspace: Option<Arc<PathBuf>>,
    ) {
        let origin = Origin::Client { subscriber: client, connection };
        let IpcPayload::UserInput { text, session_id, context } = &message.payload else {
            // Not a user input (a reference client may send other shapes): published as is.
            self.bus.publish_paced(BusMessage::from(origin, message)).await;
            return;
        };
        let principal = message.principal.as_deref().unwrap_or(DEFAULT_PRINCIPAL).to_owned();
        let action = context.as_ref().and_then(|c| c.get("action")).and_then(Value::as_str);
        let what = match action {
            Some(action) => format!("action {action}"),
            None => format!("{} characters", text.chars().count()),
        };
        let resource = format!("{} session {session_id}", message.topic);
        self.record(&principal, origin.actor(), "client.input", &resource, Decision::Info, &what);
        self.bus.claim_session(client, session_id);
        let cause = Cause::new(client, session_id.clone(), workspace);
        if action == Some("cancel_turn") {
            let withdrawn = self.questions.withdraw(client, session_id);
            if withdrawn > 0 {
                log::info!("client#{connection}: cancelled its turn; {withdrawn} pending question(s) denied");
            }
            let killed = self.running_commands.cancel_turn(client, session_id);
            if killed > 0 {
                log::info!("client#{connection}: cancelled its turn; {killed} running command(s) killed");
            }
        } else {
            let answerers = match self.audit_writable() {
                // Fail closed: a turn's every step needs the trail.
                Err(why) => Err(format!("refused: {why}; prompts are refused until it can be written")),
                Ok(()) => {
                    // A capsule that is about to run (the daemon just booted, a reload
                    // restarts it) is waited for a moment rather than reported missing.
                    let started = tokio::time::Instant::now();
                    while self.starting(&message.topic, text) && started.elapsed() < STARTING_WAIT {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.answerers(&message.topic, text)
                }
            };
            let refused = answerers.as_ref().err().cloned();
            let receipt = TurnEvent::PromptReceipt {
                session_id: session_id.clone(),
                turn: cause.turn,
                answerers: answerers.unwrap_or_default(),
                refused,
            };
            let refused = matches!(&receipt, TurnEvent::PromptReceipt { refused: Some(_), .. });
            let data = serde_json::to_value(&receipt).unwrap_or(Value::Null);
            let receipt = IpcMessage::new(RECEIPT_TOPIC, IpcPayload::Custom { data }, self.session());
            self.bus.publish(BusMessage::from_kernel(receipt).to(origin.reply_address()));
            if refused {
                return;
            }
        }
        let message = BusMessage::from(origin, message).caused_by(Some(cause));
        self.bus.publish_paced(message).await;
    }

    /// Whether a capsule that would answer `text` on `topic` is about to run: granted, not
    /// failed, and not (yet) listening.
    fn starting(&self, topic: &str, text: &str) -> bool {
        let listening = self.bus.capsules_subscribed(topic);
        self.candidates(topic, text).unwrap_or_default().iter().any(|c| {
            let granted =
                c.code_hash.is_some() && matches!(c.grant, GrantStatus::Approved | GrantStatus::NothingRequested);
            let pending = matches!(c.state, CapsuleState::Installed)
                || (c.state == CapsuleState::Ready && !listening.iter().any(|r| r.capsule == c.name));
            granted && pending
        })
    }

    /// The capsules that should answer `text` on `topic` (whatever their state), or why there
    /// are none.
    fn candidates(&self, topic: &str, text: &str) -> Result<Vec<Capsule>, String> {
        if text.trim().is_empty() {
            return Err("the prompt is empty".to_owned());
        }
        let registry = self.capsules();
        let candidates: Vec<&Capsule> = if topic == COMMAND_TOPIC {
            let command = text.split_whitespace().next().unwrap_or_default();
            let providers: Vec<&Capsule> = registry
                .capsules()
                .iter()
                .filter(|c| c.commands.iter().any(|offered| offered.name == command))
                .collect();
            if providers.is_empty() {
                return Err(format!("no such command: {command}"));
            }
            providers
        } else {
            let answers_prompts = |c: &&Capsule| {
                c.capabilities.allows(&Capability::IpcSubscribe(PROMPT_TOPIC)).is_some()
                    && c.capabilities.allows(&Capability::IpcPublish(RESPONSE_TOPIC)).is_some()
            };
            let agents: Vec<&Capsule> = registry.capsules().iter().filter(answers_prompts).collect();
            if agents.is_empty() {
                return Err("nothing answers prompts: no agent capsule is installed (astrid capsule list)".to_owned());
            }
            agents
        };
        Ok(candidates.into_iter().cloned().collect())
    }

    /// The capsules that will answer `text` on `topic`, or why none will.
    fn answerers(&self, topic: &str, text: &str) -> Result<Vec<Answerer>, String> {
        let candidates = self.candidates(topic, text)?;
        let listening = self.bus.capsules_subscribed(topic);
        let answerers: Vec<Answerer> = listening
            .into_iter()
            .filter(|r| candidates.iter().any(|c| c.name == r.capsule && unavailable(c, true).is_none()))
            .map(|r| Answerer { capsule: r.capsule, source_id: r.source_id })
            .collect();
        if !answerers.is_empty() {
            return Ok(answerers);
        }
        let reasons: Vec<String> = candidates
            .iter()
            .map(|c| {
                let listening = self.bus.capsules_subscribed(topic).iter().any(|r| r.capsule == c.name);
                format!("{} {}", c.name, unavailable(c, listening).unwrap_or_else(|| "is starting".to_owned()))
            })
            .collect();
        Err(reasons.join("; "))
    }
}

/// Why `capsule` cannot answer now (`None`: it can), for the person reading the receipt.
fn unavailable(capsule: &Capsule, listening: bool) -> Option<String> {
    if let CapsuleState::Failed(reason) = &capsule.state {
        return Some(format!("failed: {reason}"));
    }
    if let GrantStatus::Pending { .. } = capsule.grant {
        return Some("is stopped: its capabilities are not approved (astrid caps list)".to_owned());
    }
    match &capsule.state {
        CapsuleState::Restarting { reason, .. } => Some(format!("is restarting after a failure: {reason}")),
        CapsuleState::Installed => Some("is not running".to_owned()),
        CapsuleState::Ready if !listening => Some("is starting".to_owned()),
        _ if capsule.capabilities.allows(&Capability::IpcPublish(RESPONSE_TOPIC)).is_none() => {
            Some(format!("may not answer (its grant does not cover {RESPONSE_TOPIC})"))
        }
        _ => None,
    }
}
