//! The event bus: every message in the kernel passes through here.
//!
//! Each subscriber owns a bounded queue, so a slow subscriber (a client that stopped reading)
//! loses its own messages and never blocks the publisher or anyone else; what it loses is
//! counted per subscriber and logged. Publishing is synchronous and never awaits, which keeps
//! the ordering simple: a message published before another reaches every queue first.
//!
//! A message may name a single recipient ([`BusMessage::reply_to`]): management replies go
//! only to the connection that asked, where the reference broadcast them to every client.
//!
//! Control topics (approvals, elicitation, management replies; see [`is_control_topic`])
//! travel in a second, separate lane per subscriber and are never dropped silently: a
//! subscriber whose control lane is full is cut off (its [`Subscription::recv`] returns
//! `None`, so a socket client sees its connection close) and the cut is logged as an error.
//! Losing an approval request quietly would leave a capsule waiting for a denial by timeout
//! and the person never asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::topic;
use crate::types::IpcMessage;

/// Messages a subscriber may have queued before further ones are dropped for it.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Control messages a subscriber may have queued before it is cut off.
pub const CONTROL_QUEUE: usize = 256;

/// Topics that must never be lost: approvals, elicitation and management replies.
pub fn is_control_topic(topic: &str) -> bool {
    ["astrid.v1.approval", "astrid.v1.elicit", "astrid.v1.response.", "astrid.v1.admin.response."]
        .iter()
        .any(|prefix| topic.starts_with(prefix))
}

/// Identifies one subscriber (a socket client, the management router, …).
pub type SubscriberId = u64;

/// Who put a message on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The kernel itself (router replies, lifecycle events).
    Kernel,
    /// The subscriber with this id (a socket client publishing through the bridge).
    Subscriber(SubscriberId),
}

/// A message in flight, with the routing facts that never go on the wire.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The message as clients and capsules see it; `seq` is stamped by the bus.
    pub message: IpcMessage,
    /// Who published it; never delivered back to its own publisher.
    pub origin: Origin,
    /// When set, only this subscriber receives the message.
    pub reply_to: Option<SubscriberId>,
}

struct Subscriber {
    id: SubscriberId,
    name: String,
    patterns: Vec<String>,
    queue: mpsc::Sender<Arc<BusMessage>>,
    control: mpsc::Sender<Arc<BusMessage>>,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct Shared {
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
    seq: AtomicU64,
}

impl Shared {
    fn subscribers(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        // A poisoned lock means a panic while holding it; the list itself is still valid.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The kernel's event bus. Cheap to clone; clones share the same subscribers.
#[derive(Clone, Default)]
pub struct Bus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("subscribers", &self.shared.subscribers().len()).finish()
    }
}

/// Per-subscriber delivery figures, for `status` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStats {
    /// The subscriber's name (for example `client#3` or `router`).
    pub name: String,
    /// Messages dropped because its queue was full.
    pub dropped: u64,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to every topic matching any of `patterns` (subscription semantics, see
    /// [`topic::subscription_matches`]). Dropping the [`Subscription`] unsubscribes.
    pub fn subscribe(&self, name: impl Into<String>, patterns: &[&str]) -> Subscription {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (queue, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        let (control, control_receiver) = mpsc::channel(CONTROL_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        self.shared.subscribers().push(Subscriber {
            id,
            name: name.into(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            queue,
            control,
            dropped: Arc::clone(&dropped),
        });
        Subscription { id, receiver, control_receiver, dropped, shared: Arc::clone(&self.shared) }
    }

    /// Stamps `seq` and delivers to every matching subscriber (or only to `reply_to`).
    /// Returns how many subscribers received it.
    pub fn publish(&self, mut bus_message: BusMessage) -> usize {
        bus_message.message.seq = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let bus_message = Arc::new(bus_message);
        let topic = bus_message.message.topic.as_str();
        let control = is_control_topic(topic);
        let mut delivered = 0;
        let mut cut_off = Vec::new();
        let mut subscribers = self.shared.subscribers();
        for subscriber in subscribers.iter() {
            if bus_message.origin == Origin::Subscriber(subscriber.id)
                || bus_message.reply_to.is_some_and(|to| to != subscriber.id)
                || !subscriber.patterns.iter().any(|p| topic::subscription_matches(p, topic))
            {
                continue;
            }
            let lane = if control { &subscriber.control } else { &subscriber.queue };
            match lane.try_send(Arc::clone(&bus_message)) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) if control => {
                    log::error!(
                        "bus: {} has {CONTROL_QUEUE} undelivered control messages; cutting it off rather than losing {topic}",
                        subscriber.name
                    );
                    cut_off.push(subscriber.id);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let dropped = subscriber.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        log::warn!(
                            "bus: {} is not keeping up; {dropped} message(s) dropped for it so far (last on {topic})",
                            subscriber.name
                        );
                    }
                }
                // The receiver is gone; its Subscription's Drop is about to remove it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        // Dropping the senders closes both lanes: the subscriber's `recv` returns None.
        subscribers.retain(|s| !cut_off.contains(&s.id));
        delivered
    }

    /// Delivery figures of every current subscriber.
    pub fn stats(&self) -> Vec<SubscriberStats> {
        self.shared
            .subscribers()
            .iter()
            .map(|s| SubscriberStats { name: s.name.clone(), dropped: s.dropped.load(Ordering::Relaxed) })
            .collect()
    }
}

/// A live subscription: a bounded queue of matching messages.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    receiver: mpsc::Receiver<Arc<BusMessage>>,
    control_receiver: mpsc::Receiver<Arc<BusMessage>>,
    dropped: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Subscription {
    /// This subscriber's id, used as a reply address.
    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// Waits for the next message, control messages first. `None` when the subscriber was
    /// cut off (or the bus is gone).
    pub async fn recv(&mut self) -> Option<Arc<BusMessage>> {
        tokio::select! {
            biased;
            Some(message) = self.control_receiver.recv() => Some(message),
            Some(message) = self.receiver.recv() => Some(message),
            else => None,
        }
    }

    /// Takes a queued message without waiting (used to drain at shutdown).
    pub fn try_recv(&mut self) -> Option<Arc<BusMessage>> {
        self.control_receiver.try_recv().or_else(|_| self.receiver.try_recv()).ok()
    }

    /// Messages dropped for this subscriber so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.subscribers().retain(|s| s.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{IpcPayload, SYSTEM_SESSION_UUID};

    fn message(topic: &str) -> BusMessage {
        let payload = IpcPayload::Custom { data: serde_json::json!({}) };
        BusMessage {
            message: IpcMessage::new(topic, payload, SYSTEM_SESSION_UUID),
            origin: Origin::Kernel,
            reply_to: None,
        }
    }

    #[tokio::test]
    async fn delivers_by_pattern_and_stamps_increasing_seq() {
        let bus = Bus::new();
        let mut requests = bus.subscribe("router", &["astrid.v1.request.*"]);
        let mut other = bus.subscribe("other", &["agent.v1.response"]);
        assert_eq!(bus.publish(message("astrid.v1.request.status")), 1);
        assert_eq!(bus.publish(message("astrid.v1.request.shutdown")), 1);
        let first = requests.recv().await.expect("first");
        let second = requests.recv().await.expect("second");
        assert!(first.message.seq < second.message.seq);
        assert!(other.try_recv().is_none());
    }

    #[tokio::test]
    async fn replies_reach_only_their_addressee_and_never_echo() {
        let bus = Bus::new();
        let mut a = bus.subscribe("a", &["astrid.v1.response.*"]);
        let mut b = bus.subscribe("b", &["astrid.v1.response.*"]);
        let mut reply = message("astrid.v1.response.status");
        reply.reply_to = Some(a.id());
        bus.publish(reply);
        assert!(a.try_recv().is_some());
        assert!(b.try_recv().is_none());
        let mut own = message("astrid.v1.response.status");
        own.origin = Origin::Subscriber(b.id());
        bus.publish(own);
        assert!(a.try_recv().is_some());
        assert!(b.try_recv().is_none(), "a publisher must not receive its own message");
    }

    #[tokio::test]
    async fn a_full_queue_drops_for_that_subscriber_only() {
        let bus = Bus::new();
        let slow = bus.subscribe("slow", &["t.v1.x"]);
        let mut fast = bus.subscribe("fast", &["t.v1.x"]);
        for _ in 0..SUBSCRIBER_QUEUE + 10 {
            bus.publish(message("t.v1.x"));
            assert!(fast.try_recv().is_some());
        }
        assert_eq!(slow.dropped(), 10);
        assert_eq!(fast.dropped(), 0);
        drop(slow);
        assert_eq!(bus.stats().len(), 1, "dropping a subscription unsubscribes");
    }

    #[tokio::test]
    async fn control_messages_are_never_dropped_silently() {
        let bus = Bus::new();
        let mut stuck = bus.subscribe("stuck", &["astrid.v1.approval", "t.v1.x"]);
        // Data floods do not touch the control lane.
        for _ in 0..SUBSCRIBER_QUEUE + 5 {
            bus.publish(message("t.v1.x"));
        }
        for _ in 0..CONTROL_QUEUE {
            assert_eq!(bus.publish(message("astrid.v1.approval")), 1);
        }
        assert_eq!(stuck.dropped(), 5);
        // One more control message cannot be queued: the subscriber is cut off, not skipped.
        assert_eq!(bus.publish(message("astrid.v1.approval")), 0);
        assert!(bus.stats().is_empty());
        // Control messages come out first, then the data, then the end.
        assert_eq!(stuck.recv().await.expect("control").message.topic, "astrid.v1.approval");
        let mut received = 1;
        while stuck.recv().await.is_some() {
            received += 1;
        }
        assert_eq!(received, CONTROL_QUEUE + SUBSCRIBER_QUEUE);
    }
}
