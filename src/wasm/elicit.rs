//! `elicit`: during its install or upgrade hook, a capsule asks a person for a value it
//! declared in `[env]`.
//!
//! The host publishes `ElicitRequest` on `astrid.v1.elicit` (after subscribing to the
//! per-request answer topic) and waits for an `ElicitResponse` from a *client* — an answer
//! published by a capsule is ignored, so one capsule cannot answer for a person. The value is
//! stored in the capsule's env file (0600) and takes effect for this instance at once. A
//! secret is stored and never returned to the guest: its header templates use it host-side.
//! Question and outcome are audited; the value never is.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::wait::{block_on_timeout, unless_stopped};
use crate::audit::{Actor, Decision};
use crate::kernel::bus::{BusMessage, Origin};
use crate::kernel::capsule_config as config;
use crate::types::topics::{ELICIT_RESPONSE_PREFIX, ELICIT_TOPIC};
use crate::types::{IpcMessage, IpcPayload};
/// Longest a capsule waits for the answer.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// Largest request a guest may pass.
pub(super) const MAX_REQUEST: usize = 16 * 1024;
/// How often a waiting question looks whether anybody who saw it is still connected.
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// What `elicit` returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ElicitStatus {
    /// Nobody answered in time (at once when no frontend that saw it is connected).
    Timeout = -1,
    /// Not `{key, …}` JSON, or a key the manifest does not declare.
    InvalidInput = -2,
    /// The person cancelled (an answer with no value).
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
    let request_id = Uuid::new_v4();
    let kernel = &access.kernel;
    let record = |decision, rule: &str| {
        let actor = Actor::Capsule { name: capsule.clone() };
        kernel.record(&access.principal, actor, "elicit", &ask.key, decision, rule);
    };
    record(Decision::Info, "asked");
    // Subscribe before asking, so an instant answer is not missed.
    let mut answers =
        kernel.bus().subscribe(format!("elicit:{request_id}"), &[&format!("{ELICIT_RESPONSE_PREFIX}{request_id}")]);
    let payload = IpcPayload::ElicitRequest { request_id, capsule_id: capsule.clone(), field };
    let message = BusMessage::from_kernel(IpcMessage::new(ELICIT_TOPIC, payload, context.source_id));
    let asked = kernel.bus().publish_to_clients(message);
    let lifecycle = std::sync::Arc::clone(&context.lifecycle);
    let deadline = Instant::now() + MAX_WAIT;
    let answer = loop {
        // Nobody left who saw the question (or nobody connected at all): say so now rather
        // than after the whole wait.
        if !asked.iter().any(|client| kernel.bus().is_subscribed(*client)) {
            record(Decision::Deny, "no frontend left to ask");
            return reply(ElicitStatus::Timeout);
        }
        let left = deadline.saturating_duration_since(Instant::now()).min(LOOK_AGAIN);
        if left.is_zero() {
            break None;
        }
        let message = match block_on_timeout(unless_stopped(answers.recv(), lifecycle.stopped()), left) {
            None => continue,
            Some(Some(Some(message))) => message,
            Some(_) => break None,
        };
        // Only a person's client may answer.
        if !matches!(message.origin, Origin::Subscriber(_)) {
            continue;
        }
        if let IpcPayload::ElicitResponse { request_id: id, value, values } = &message.message.payload
            && *id == request_id
        {
            break Some((value.clone(), values.clone()));
        }
    };
    let (value, values) = match answer {
        None => {
            record(Decision::Deny, "no answer");
            return reply(ElicitStatus::Timeout);
        }
        Some((None, None)) => {
            record(Decision::Deny, "cancelled");
            return reply(ElicitStatus::Cancelled);
        }
        Some(answer) => answer,
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
