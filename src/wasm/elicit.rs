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
use wasmi::Caller;

use super::config;
use super::sandbox::{HostState, read_guest, write_guest};
use super::wait::{block_on_timeout, unless_stopped};
use crate::audit::{Actor, Decision};
use crate::kernel::bus::{BusMessage, Origin};
use crate::types::{IpcMessage, IpcPayload};

/// Topic of elicitation requests.
pub const ELICIT_TOPIC: &str = "astrid.v1.elicit";
/// Longest a capsule waits for the answer.
const MAX_WAIT: Duration = Duration::from_secs(120);
const MAX_REQUEST: usize = 16 * 1024;

/// What `elicit` returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ElicitStatus {
    /// Nobody answered in time.
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

/// Asks, waits, stores; returns `{"value"}`, `{"values"}` or `{"secret_stored": true}`, packed.
pub(super) fn elicit(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<i64, wasmi::Error> {
    let bytes = read_guest(caller, ptr, len, MAX_REQUEST)?;
    if !caller.data().in_lifecycle {
        return Ok(ElicitStatus::NotInLifecycle as i64);
    }
    let Ok(ask) = serde_json::from_slice::<Ask>(&bytes) else { return Ok(ElicitStatus::InvalidInput as i64) };
    let Some(def) = caller.data().env.get(&ask.key).cloned() else {
        return Ok(ElicitStatus::InvalidInput as i64);
    };
    let Some(access) = caller.data().kernel.clone() else { return Ok(ElicitStatus::InvalidInput as i64) };
    let capsule = caller.data().capsule().to_owned();
    let secret = def.kind == "secret";
    let Some(mut field) = config::onboarding_fields(&caller.data().env, std::slice::from_ref(&ask.key)).pop() else {
        return Ok(ElicitStatus::InvalidInput as i64);
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
        kernel.bus().subscribe(format!("elicit:{request_id}"), &[&format!("{ELICIT_TOPIC}.response.{request_id}")]);
    let payload = IpcPayload::ElicitRequest { request_id, capsule_id: capsule.clone(), field };
    kernel.bus().publish(BusMessage {
        message: IpcMessage::new(ELICIT_TOPIC, payload, caller.data().source_id),
        origin: Origin::Kernel,
        reply_to: None,
    });
    let started = Instant::now();
    let lifecycle = std::sync::Arc::clone(&caller.data().lifecycle);
    let deadline = started + MAX_WAIT;
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(Some(Some(message))) = block_on_timeout(unless_stopped(answers.recv(), lifecycle.stopped()), left)
        else {
            break None;
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
    caller.data_mut().waited += started.elapsed();
    let (value, values) = match answer {
        None => {
            record(Decision::Deny, "no answer");
            return Ok(ElicitStatus::Timeout as i64);
        }
        Some((None, None)) => {
            record(Decision::Deny, "cancelled");
            return Ok(ElicitStatus::Cancelled as i64);
        }
        Some(answer) => answer,
    };
    let stored = value.clone().or_else(|| values.as_ref().map(|v| v.join(","))).unwrap_or_default();
    let home = kernel.config().home.clone();
    if let Err(e) =
        config::store_values(&home, &access.principal, &capsule, &[(ask.key.clone(), stored.clone())].into())
    {
        log::error!("capsule {capsule}: cannot store the value of {}: {e}", ask.key);
        return Ok(ElicitStatus::Store as i64);
    }
    record(Decision::Allow, if secret { "secret stored" } else { "value stored" });
    let state = caller.data_mut();
    if secret {
        state.secrets.insert(ask.key.clone(), stored.clone());
    }
    state.set_config(ask.key, stored);
    let reply = if secret {
        json!({"secret_stored": true})
    } else if let Some(values) = values {
        json!({"values": values})
    } else {
        json!({"value": value})
    };
    write_guest(caller, &serde_json::to_vec(&reply).map_err(|e| wasmi::Error::new(e.to_string()))?)
}
