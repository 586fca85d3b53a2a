//! `elicit`: during its install or upgrade hook, a capsule asks a person for a value it
//! declared in `[env]`.
//!
//! The question is asked like every question put to a person ([`crate::kernel::ask`]: who is
//! asked, who may answer, the timeout and the limits are decided there): `ElicitRequest` on
//! `astrid.v1.elicit`, answered by an `ElicitResponse` from a client that was asked, so one
//! capsule cannot answer for a person. This thread blocks on the kernel's async wait. The
//! value is stored in the capsule's env file (0600) and takes effect for this instance at
//! once. A secret is stored and never returned to the guest: its header templates use it
//! host-side. Question and outcome are audited; the value never is.

use serde::Deserialize;
use serde_json::json;

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::wait::{block_on_timeout, unless_stopped};
use crate::audit::Decision;
use crate::kernel::ask::{Answer, Answered, Question, Unanswered};
use crate::kernel::capsule_config as config;

/// Largest request a guest may pass.
pub(super) const MAX_REQUEST: usize = 16 * 1024;

/// What `elicit` returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ElicitStatus {
    /// Nobody answered in time (at once when no frontend that saw it is connected, or the
    /// turn it was asked for is cancelled).
    Timeout = -1,
    /// Not `{key, …}` JSON, or a key the manifest does not declare.
    InvalidInput = -2,
    /// The person cancelled (an answer with no value), or answered with more than the
    /// limit ([`crate::kernel::ask::MAX_ANSWER`]).
    Cancelled = -5,
    /// Only install and upgrade hooks may ask.
    NotInLifecycle = -6,
    /// The value could not be stored.
    Store = -7,
}

#[derive(Deserialize)]
struct Ask {
    key: String,
    #[serde(default)]
    description: Option<String>,
}

fn reply(status: ElicitStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// Asks, waits, stores; answers `{"value"}`, `{"values"}` or `{"secret_stored": true}`.
pub(super) fn elicit(context: &mut CapsuleContext, bytes: &[u8], in_lifecycle: bool) -> HostReply {
    if !in_lifecycle {
        return reply(ElicitStatus::NotInLifecycle);
    }
    let Ok(ask) = serde_json::from_slice::<Ask>(bytes) else { return reply(ElicitStatus::InvalidInput) };
    let Some(def) = context.env.get(&ask.key).cloned() else { return reply(ElicitStatus::InvalidInput) };
    let Some(access) = context.kernel.clone() else { return reply(ElicitStatus::InvalidInput) };
    let capsule = context.capsule.clone();
    let secret = def.kind == "secret";
    let Some(mut field) = config::onboarding_fields(&context.env, std::slice::from_ref(&ask.key)).pop() else {
        return reply(ElicitStatus::InvalidInput);
    };
    if ask.description.is_some() {
        field.description = ask.description;
    }
    let kernel = &access.kernel;
    let actor = context.origin().actor();
    let record = |decision, rule: &str| {
        kernel.record(&access.principal, actor.clone(), "elicit", &ask.key, decision, rule);
    };
    record(Decision::Info, "asked");
    let questions = kernel.questions();
    let question = Question::Value { capsule: capsule.clone(), field };
    let waiting = questions.ask(question, context.cause.clone(), context.source_id);
    let answer = block_on_timeout(unless_stopped(waiting, context.lifecycle.stopped()), questions.longest_wait());
    let (value, values) = match answer {
        Some(Some(Ok(Answered { answer: Answer::Value { value: None, values: None }, .. }))) => {
            record(Decision::Deny, "cancelled");
            return reply(ElicitStatus::Cancelled);
        }
        Some(Some(Ok(Answered { answer: Answer::Value { value, values }, .. }))) => (value, values),
        Some(Some(Ok(Answered { answer: Answer::Decision(_), .. }))) => {
            record(Decision::Deny, "not a value");
            return reply(ElicitStatus::InvalidInput);
        }
        Some(Some(Err(why))) => {
            record(Decision::Deny, &why.to_string());
            return reply(match why {
                Unanswered::TooLong(_) => ElicitStatus::Cancelled,
                Unanswered::Invalid(_) => ElicitStatus::InvalidInput,
                _ => ElicitStatus::Timeout,
            });
        }
        Some(None) => {
            record(Decision::Deny, "the capsule was stopped");
            return reply(ElicitStatus::Timeout);
        }
        None => {
            record(Decision::Deny, &Unanswered::Timeout(questions.longest_wait()).to_string());
            return reply(ElicitStatus::Timeout);
        }
    };
    let stored = value.clone().or_else(|| values.as_ref().map(|v| v.join(","))).unwrap_or_default();
    let home = kernel.config().home.clone();
    if let Err(e) =
        config::store_values(&home, &access.principal, &capsule, &[(ask.key.clone(), stored.clone())].into())
    {
        log::error!("capsule {capsule}: cannot store the value of {}: {e}", ask.key);
        return reply(ElicitStatus::Store);
    }
    record(Decision::Allow, if secret { "secret stored" } else { "value stored" });
    if secret {
        context.secrets.insert(ask.key.clone(), stored.clone());
    }
    context.config.insert(ask.key, stored);
    let answer = if secret {
        json!({"secret_stored": true})
    } else if let Some(values) = values {
        json!({"values": values})
    } else {
        json!({"value": value})
    };
    match serde_json::to_vec(&answer) {
        Ok(bytes) => HostReply::bytes(bytes),
        Err(e) => HostReply::Trap(e.to_string()),
    }
}
