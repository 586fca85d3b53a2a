//! IPC host functions: publish, subscribe, recv, unsubscribe — each checked against the
//! capsule's approved grant first (`ipc_publish` / `ipc_subscribe`, ACL wildcard semantics)
//! and each decision audited by the kernel.
//!
//! `ipc_recv` waits without burning fuel, and its waiting time is not counted against the
//! call's wall-clock deadline: a run loop idling in `recv` is never killed for idling, while
//! one that spins still is.

use std::sync::Arc;
use std::time::Duration;

use super::context::CapsuleContext;
use super::host_call::{Blob, HostReply};
use super::wait::{block_on_timeout, unless_stopped};
use crate::kernel::bus::{BusMessage, Subscription};
use crate::kernel::capability::Capability;
use crate::kernel::topic;
use crate::types::{EgressFrame, IpcMessage, IpcPayload};

/// Most subscriptions one instance may hold.
pub const MAX_SUBSCRIPTIONS: usize = 128;
/// Longest a single `ipc_recv` may wait.
pub const MAX_RECV_WAIT: Duration = Duration::from_secs(60);
/// Largest payload a capsule may publish: a turn's conversation (tool results included)
/// travels in one `llm_request`.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Longest a publish waits for slow readers (the bus cuts off a stalled one well before).
const MAX_PUBLISH_WAIT: Duration = Duration::from_secs(600);

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

/// A subscription pattern: valid segments, `*` only as a whole segment, at most 8 segments.
fn valid_pattern(pattern: &str) -> bool {
    pattern.len() <= topic::MAX_TOPIC_BYTES
        && pattern.split('.').count() <= topic::MAX_TOPIC_SEGMENTS
        && pattern.split('.').all(|s| !s.is_empty() && (s == "*" || !s.contains('*')))
}

fn reply(status: IpcStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// `ipc_publish`: checked against `ipc_publish` (audited), then on the bus as this capsule
/// instance (its [`crate::kernel::bus::Origin`]): it does not come back to the instance, and a
/// reply to it (a management request's) goes to the instance alone.
pub(super) fn publish(context: &CapsuleContext, name: &[u8], payload: &[u8]) -> HostReply {
    let Some(access) = &context.kernel else { return reply(IpcStatus::CapabilityDenied) };
    let Some(name) = std::str::from_utf8(name).ok().filter(|name| topic::validate(name).is_ok()) else {
        return reply(IpcStatus::InvalidInput);
    };
    let request = Capability::IpcPublish(name);
    if !access.kernel.check_capability_for(context.audit_scope(), &access.principal, &context.capsule, &request) {
        return reply(IpcStatus::CapabilityDenied);
    }
    if payload.len() > MAX_PAYLOAD {
        return reply(IpcStatus::InvalidInput);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return reply(IpcStatus::InvalidInput);
    };
    let mut message = IpcMessage::new(name, IpcPayload::from_json_value(value), context.source_id);
    message.principal = Some(access.principal.clone());
    // Paced: a capsule that produces faster than its readers take waits for them (never past
    // a stop), so a stream is slowed down rather than cut. The bus cuts off a reader that
    // stopped reading, which ends the wait.
    let message = BusMessage::from(context.origin(), message).caused_by(context.cause.clone());
    let paced = access.kernel.bus().publish_paced(message);
    let _ = block_on_timeout(unless_stopped(paced, context.lifecycle.stopped()), MAX_PUBLISH_WAIT);
    HostReply::value(0)
}

/// `ipc_subscribe`: checked against `ipc_subscribe` (audited); a handle, or a status.
pub(super) fn subscribe(context: &mut CapsuleContext, pattern: &[u8]) -> HostReply {
    let Some(access) = context.kernel.clone() else { return reply(IpcStatus::CapabilityDenied) };
    let Some(pattern) = std::str::from_utf8(pattern).ok().filter(|p| valid_pattern(p)) else {
        return reply(IpcStatus::InvalidInput);
    };
    let request = Capability::IpcSubscribe(pattern);
    if !access.kernel.check_capability_for(context.audit_scope(), &access.principal, &context.capsule, &request) {
        return reply(IpcStatus::CapabilityDenied);
    }
    let slot = context.subscriptions.iter().position(Option::is_none);
    if slot.is_none() && context.subscriptions.len() >= MAX_SUBSCRIPTIONS {
        return reply(IpcStatus::Quota);
    }
    let subscription = access.kernel.bus().subscribe_as(context.bus_name(), context.subscriber_kind(), &[pattern]);
    let handle = match slot {
        Some(index) => {
            context.subscriptions[index] = Some(subscription);
            index
        }
        None => {
            context.subscriptions.push(Some(subscription));
            context.subscriptions.len() - 1
        }
    };
    HostReply::value(i32::try_from(handle).unwrap_or(IpcStatus::Quota as i32))
}

/// `ipc_recv`: waits up to `timeout_ms` (at most a minute) without burning fuel; a stop
/// asked for by the host ends the wait at once, as the closed case.
pub(super) fn recv(context: &mut CapsuleContext, handle: i32, timeout_ms: i32) -> HostReply {
    match receive(context, handle, timeout_ms) {
        Ok(received) => deliver(received),
        Err(status) => reply(status),
    }
}

/// What `ipc_recv` takes: a message (`Some(Some)`), a closed subscription (`Some(None)`) or
/// nothing in time (`None`); recorded as the instance's current message.
fn receive(
    context: &mut CapsuleContext,
    handle: i32,
    timeout_ms: i32,
) -> Result<Option<Option<Arc<BusMessage>>>, IpcStatus> {
    let wait = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)).min(MAX_RECV_WAIT);
    let stopped = context.lifecycle.stopped();
    let Some(subscription) = subscription(context, handle) else {
        return Err(IpcStatus::InvalidInput);
    };
    let received = match subscription.try_recv() {
        Some(message) => Some(Some(message)),
        None => block_on_timeout(unless_stopped(subscription.recv(), stopped), wait).map(Option::flatten),
    };
    context.received(received.as_ref().and_then(Option::as_ref));
    Ok(received)
}

/// Most messages one read-ahead returns, and the size past which it adds no more (the first
/// message goes whatever its size): a batch stays far below a session frame's limit.
const READ_AHEAD_MESSAGES: u32 = 256;
const READ_AHEAD_BYTES: usize = 1024 * 1024;

/// A capsule host's read-ahead ([`HostCall::IpcRecvMany`](crate::types::capsule_session::HostCall)):
/// the first message as `ipc_recv` waits for it, then whatever else is queued, up to `max`.
///
/// Only messages of the first one's cause join it. What an instance does after it takes a
/// message, it does for that message's cause ([`CapsuleContext::received`]), and the daemon
/// does not see which buffered message the guest is working on: within one batch the answer
/// is the same for all of them. A new turn's first message starts the next batch.
pub(super) fn recv_many(context: &mut CapsuleContext, handle: i32, timeout_ms: i32, max: u32) -> HostReply {
    let first = match receive(context, handle, timeout_ms) {
        Ok(Some(Some(message))) => message,
        Ok(received) => return deliver(received),
        Err(status) => return reply(status),
    };
    let mut size = 0;
    let mut messages = match deliver(Some(Some(Arc::clone(&first)))) {
        HostReply::Bytes(frame) => {
            size += frame.0.len();
            vec![frame]
        }
        // Cannot be encoded: the guest's call traps, as its `ipc_recv` would.
        other => return other,
    };
    let Some(subscription) = subscription(context, handle) else {
        return HostReply::Messages(messages);
    };
    while messages.len() < max.clamp(1, READ_AHEAD_MESSAGES) as usize && size < READ_AHEAD_BYTES {
        // Encoded before it is taken: one that cannot be stays first in the queue, and the
        // guest's next read traps on it as `ipc_recv` would.
        let mut frame = Vec::new();
        let join = |message: &BusMessage| {
            message.cause == first.cause && EgressFrame::write_json(&message.message, &mut frame).is_ok()
        };
        if subscription.try_recv_if(join).is_none() {
            break;
        }
        size += frame.len();
        messages.push(Blob(frame));
    }
    if messages.len() > 1 {
        context.read_ahead_causes.insert(handle, first.cause.clone());
    }
    HostReply::Messages(messages)
}

/// The guest is back on a batch read ahead on `handle`: its cause is the instance's again
/// (as [`CapsuleContext::received`] would have made it, message by message).
pub(super) fn resume(context: &mut CapsuleContext, handle: i32) -> HostReply {
    let Some(cause) = context.read_ahead_causes.get(&handle).cloned() else { return reply(IpcStatus::InvalidInput) };
    context.working_for(cause);
    HostReply::value(0)
}

/// The live subscription behind `handle`, if there is one.
fn subscription(context: &mut CapsuleContext, handle: i32) -> Option<&mut Subscription> {
    usize::try_from(handle).ok().and_then(|i| context.subscriptions.get_mut(i)).and_then(Option::as_mut)
}

/// `ipc_poll`: a queued message, or `Timeout` at once.
pub(super) fn poll(context: &mut CapsuleContext, handle: i32) -> HostReply {
    let Some(subscription) = subscription(context, handle) else {
        return reply(IpcStatus::InvalidInput);
    };
    let received = subscription.try_recv();
    context.received(received.as_ref());
    deliver(received.map(Some))
}

/// `ipc_unsubscribe`: frees the handle.
pub(super) fn unsubscribe(context: &mut CapsuleContext, handle: i32) -> HostReply {
    context.read_ahead_causes.remove(&handle);
    match usize::try_from(handle).ok().and_then(|index| context.subscriptions.get_mut(index)) {
        Some(slot @ Some(_)) => {
            *slot = None;
            HostReply::value(0)
        }
        _ => reply(IpcStatus::InvalidInput),
    }
}

/// The runner's wait for an event on the interceptor bindings: `[u32 BE topic length][topic]
/// [payload as the guest reads it]`, `Timeout`, or `Closed` once the bus (or a stop) ends it.
/// Without bindings it only waits for a stop.
pub(super) fn next_event(context: &mut CapsuleContext, timeout_ms: u32) -> HostReply {
    let wait = Duration::from_millis(u64::from(timeout_ms));
    let stopped = context.lifecycle.stopped();
    if context.interceptors.is_none()
        && !context.interceptor_patterns.is_empty()
        && let Some(access) = &context.kernel
    {
        let patterns: Vec<&str> = context.interceptor_patterns.iter().map(String::as_str).collect();
        context.interceptors =
            Some(access.kernel.bus().subscribe_as(context.bus_name(), context.subscriber_kind(), &patterns));
    }
    let Some(subscription) = context.interceptors.as_mut() else {
        if wait.is_zero() {
            return reply(IpcStatus::Timeout);
        }
        return match block_on_timeout(stopped, wait) {
            Some(()) => reply(IpcStatus::Closed),
            None => reply(IpcStatus::Timeout),
        };
    };
    match block_on_timeout(unless_stopped(subscription.recv(), stopped), wait) {
        None => reply(IpcStatus::Timeout),
        Some(None | Some(None)) => reply(IpcStatus::Closed),
        Some(Some(Some(message))) => {
            // What the hook does now, it does for this event's cause.
            context.cause = message.cause.clone();
            let topic = message.message.topic.as_bytes();
            let mut event = u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
            event.extend_from_slice(topic);
            event.extend_from_slice(&message.message.payload.to_guest_bytes());
            HostReply::bytes(event)
        }
    }
}

/// A received message as the guest reads it (its egress JSON); `None` is a timeout (or
/// nothing queued), `Some(None)` a closed subscription.
fn deliver(received: Option<Option<Arc<BusMessage>>>) -> HostReply {
    match received {
        None => reply(IpcStatus::Timeout),
        Some(None) => reply(IpcStatus::Closed),
        Some(Some(message)) => {
            let mut frame = Vec::new();
            match EgressFrame::write_json(&message.message, &mut frame) {
                Ok(()) => HostReply::bytes(frame),
                Err(e) => HostReply::Trap(format!("cannot encode a message: {e}")),
            }
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
