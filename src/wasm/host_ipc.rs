//! IPC host functions: publish, subscribe, recv, unsubscribe — each checked against the
//! capsule's approved grant first (`ipc_publish` / `ipc_subscribe`, ACL wildcard semantics)
//! and each decision audited by the kernel.
//!
//! `ipc_recv` waits without burning fuel, and its waiting time is not counted against the
//! call's wall-clock deadline: a run loop idling in `recv` is never killed for idling, while
//! one that spins still is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmi::{Caller, Linker};

use super::sandbox::{HOST_MODULE, HostState, read_guest, write_guest};
use super::wait::{block_on_timeout, unless_stopped};
use crate::kernel::bus::{BusMessage, Origin};
use crate::kernel::capability::Capability;
use crate::kernel::topic;
use crate::types::{EgressFrame, IpcMessage, IpcPayload};

/// Most subscriptions one instance may hold.
pub const MAX_SUBSCRIPTIONS: usize = 128;
/// Longest a single `ipc_recv` may wait.
pub const MAX_RECV_WAIT: Duration = Duration::from_secs(60);
const MAX_PAYLOAD: usize = 1024 * 1024;

/// What an IPC host function returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum IpcStatus {
    /// `ipc_recv`: nothing arrived in time.
    Timeout = -1,
    /// Bad topic, pattern, JSON or handle.
    InvalidInput = -2,
    /// The grant does not cover this topic (audited).
    CapabilityDenied = -3,
    /// Too many subscriptions.
    Quota = -4,
    /// The subscription was closed by the bus.
    Closed = -5,
}

fn text(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32, max: usize) -> Result<Option<String>, wasmi::Error> {
    Ok(String::from_utf8(read_guest(caller, ptr, len, max)?).ok())
}

/// A subscription pattern: valid segments, `*` only as a whole segment, at most 8 segments.
fn valid_pattern(pattern: &str) -> bool {
    pattern.len() <= topic::MAX_TOPIC_BYTES
        && pattern.split('.').count() <= topic::MAX_TOPIC_SEGMENTS
        && pattern.split('.').all(|s| !s.is_empty() && (s == "*" || !s.contains('*')))
}

/// Adds the IPC functions to the linker.
pub(super) fn link(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap(
        HOST_MODULE,
        "ipc_publish",
        |mut caller: Caller<'_, HostState>,
         topic_ptr: i32,
         topic_len: i32,
         payload_ptr: i32,
         payload_len: i32|
         -> Result<i32, wasmi::Error> {
            let Some(access) = caller.data().kernel.clone() else { return Ok(IpcStatus::CapabilityDenied as i32) };
            let Some(name) = text(&mut caller, topic_ptr, topic_len, topic::MAX_TOPIC_BYTES)? else {
                return Ok(IpcStatus::InvalidInput as i32);
            };
            if topic::validate(&name).is_err() {
                return Ok(IpcStatus::InvalidInput as i32);
            }
            let capsule = caller.data().capsule().to_owned();
            if !access.kernel.check_capability(&access.principal, &capsule, &Capability::IpcPublish(&name)) {
                return Ok(IpcStatus::CapabilityDenied as i32);
            }
            let bytes = read_guest(&mut caller, payload_ptr, payload_len, MAX_PAYLOAD)?;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                return Ok(IpcStatus::InvalidInput as i32);
            };
            let mut message = IpcMessage::new(name, IpcPayload::from_json_value(value), caller.data().source_id);
            message.principal = Some(access.principal.clone());
            access.kernel.bus().publish(BusMessage { message, origin: Origin::Kernel, reply_to: None });
            Ok(0)
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "ipc_subscribe",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let Some(access) = caller.data().kernel.clone() else { return Ok(IpcStatus::CapabilityDenied as i32) };
            let Some(pattern) = text(&mut caller, ptr, len, topic::MAX_TOPIC_BYTES)? else {
                return Ok(IpcStatus::InvalidInput as i32);
            };
            if !valid_pattern(&pattern) {
                return Ok(IpcStatus::InvalidInput as i32);
            }
            let capsule = caller.data().capsule().to_owned();
            if !access.kernel.check_capability(&access.principal, &capsule, &Capability::IpcSubscribe(&pattern)) {
                return Ok(IpcStatus::CapabilityDenied as i32);
            }
            let state = caller.data_mut();
            let slot = state.subscriptions.iter().position(Option::is_none);
            if slot.is_none() && state.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Ok(IpcStatus::Quota as i32);
            }
            let subscription = access.kernel.bus().subscribe(format!("capsule:{capsule}"), &[&pattern]);
            let handle = match slot {
                Some(index) => {
                    state.subscriptions[index] = Some(subscription);
                    index
                }
                None => {
                    state.subscriptions.push(Some(subscription));
                    state.subscriptions.len() - 1
                }
            };
            Ok(i32::try_from(handle).unwrap_or(IpcStatus::Quota as i32))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "ipc_recv",
        |mut caller: Caller<'_, HostState>, handle: i32, timeout_ms: i32| -> Result<i64, wasmi::Error> {
            let Some(index) = usize::try_from(handle).ok() else { return Ok(IpcStatus::InvalidInput as i64) };
            let wait = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)).min(MAX_RECV_WAIT);
            let started = Instant::now();
            let stopped = caller.data().lifecycle.stopped();
            let received = {
                let Some(Some(subscription)) = caller.data_mut().subscriptions.get_mut(index) else {
                    return Ok(IpcStatus::InvalidInput as i64);
                };
                match subscription.try_recv() {
                    Some(message) => Some(Some(message)),
                    // A stop asked for by the host ends the wait at once, as the closed case.
                    None => block_on_timeout(unless_stopped(subscription.recv(), stopped), wait).map(Option::flatten),
                }
            };
            let state = caller.data_mut();
            state.waited += started.elapsed();
            state.waits += 1;
            deliver(&mut caller, received)
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "ipc_poll",
        |mut caller: Caller<'_, HostState>, handle: i32| -> Result<i64, wasmi::Error> {
            let Some(index) = usize::try_from(handle).ok() else { return Ok(IpcStatus::InvalidInput as i64) };
            let state = caller.data_mut();
            let Some(Some(subscription)) = state.subscriptions.get_mut(index) else {
                return Ok(IpcStatus::InvalidInput as i64);
            };
            let received = subscription.try_recv().map(Some);
            state.waits += 1;
            deliver(&mut caller, received)
        },
    )?;
    linker.func_wrap(HOST_MODULE, "ipc_unsubscribe", |mut caller: Caller<'_, HostState>, handle: i32| -> i32 {
        let slot = usize::try_from(handle).ok().and_then(|index| caller.data_mut().subscriptions.get_mut(index));
        match slot {
            Some(slot @ Some(_)) => {
                *slot = None;
                0
            }
            _ => IpcStatus::InvalidInput as i32,
        }
    })?;
    Ok(())
}

/// Hands a received message to the guest as its egress JSON; `None` is a timeout (or nothing
/// queued), `Some(None)` a closed subscription.
fn deliver(caller: &mut Caller<'_, HostState>, received: Option<Option<Arc<BusMessage>>>) -> Result<i64, wasmi::Error> {
    match received {
        None => Ok(IpcStatus::Timeout as i64),
        Some(None) => Ok(IpcStatus::Closed as i64),
        Some(Some(message)) => {
            let frame = serde_json::to_vec(&EgressFrame::from_message(&message.message))
                .map_err(|e| wasmi::Error::new(format!("cannot encode a message: {e}")))?;
            write_guest(caller, &frame)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_pattern;

    #[test]
    fn patterns_allow_whole_segment_wildcards_only() {
        assert!(valid_pattern("chat.v1.*"));
        assert!(valid_pattern("*.v1.in"));
        assert!(!valid_pattern("chat.v1.in*"));
        assert!(!valid_pattern("chat..x"));
        assert!(!valid_pattern("a.b.c.d.e.f.g.h.i"));
    }
}
