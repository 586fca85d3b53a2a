//! The event bus: every message in the kernel passes through here.
//!
//! **Nothing is lost silently.** Each subscriber has one queue, in publish order. A turn's
//! stream (a model's deltas, the tool calls, the final answer) is a flow that must arrive
//! whole and in order at any length and any reader speed, so the bus does not drop it when a
//! reader falls behind: it slows the writer down instead. A publisher that can wait (a
//! capsule's thread, a client's reader task, the MCP bridge) publishes *paced*
//! ([`Bus::publish_paced`]): once a queue it wrote to holds [`PACE_MARK`] messages, it waits
//! until that reader has taken some. Backpressure travels back up the chain, subscriber by
//! subscriber, to whoever produces too fast (a provider then reads its HTTP stream later).
//! The kernel's own services never wait ([`Bus::publish`]): they write little.
//!
//! Only two things end a delivery, both loudly:
//! - telemetry that is stale once late ([`is_droppable`]: the watchdog's tick) is dropped for
//!   a subscriber whose queue is at the pace mark, counted and logged;
//! - a subscriber that stops taking messages is cut off: when its queue passes [`CUT_MARK`]
//!   or makes no progress for [`STALL`] while a publisher waits on it (checked by
//!   [`Bus::cut_off_stalled`], which the kernel runs every second). Its
//!   [`Subscription::recv`] then returns `None`, so a socket client sees its connection
//!   close, and the reason is logged as an error. A stuck reader cannot hold up everyone else
//!   for long, and never quietly loses part of a stream.
//!
//! **Routing.** Every message says who published it ([`Origin`]) and never comes back to that
//! publisher. A message may name one recipient ([`BusMessage::reply_to`]): a management reply
//! goes only to whoever asked, a client's connection or a capsule instance (to those of the
//! instance's subscriptions whose grant covers the reply's topic, never to a capsule that did
//! not subscribe to it). Socket clients additionally see only what
//! is theirs: a payload that names a session goes to the connections that speak in that
//! session ([`Bus::claim_session`]); any other message descending from a client's request
//! (its [`Cause`]) goes to that client only; the rest is broadcast. The reference
//! broadcast everything to every frontend, so two frontends saw (and answered) each other's
//! approval prompts.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use super::cause::Cause;
use super::topic;
use crate::audit::Actor;
use crate::types::IpcMessage;

/// Messages a subscriber may have queued before paced publishers wait for it.
pub const PACE_MARK: usize = 1024;
/// Messages a subscriber may have queued at all; one more cuts it off.
pub const CUT_MARK: usize = 16 * 1024;
/// How long a subscriber may take no message while a publisher waits on it.
pub const STALL: Duration = Duration::from_secs(30);

/// Topics whose messages are worthless once late: dropped for a subscriber that is behind.
pub fn is_droppable(topic: &str) -> bool {
    topic == crate::types::topics::TICK_TOPIC
}

/// Identifies one subscriber (a socket client, the management router, a capsule, …).
pub type SubscriberId = u64;

/// Who put a message on the bus. The kernel stamps it from the way the message came in (a
/// client's connection, a capsule instance's host call, the MCP bridge serving a server),
/// never from anything the publisher wrote, and it decides three things: a message is never
/// delivered back to its publisher, a reply goes to the publisher that asked
/// ([`Origin::reply_address`]), and the audit trail names the publisher ([`Origin::actor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The kernel's own services (router replies, lifecycle events, the watchdog, the MCP
    /// host's list of every server's tools). Nobody to reply to.
    Kernel,
    /// A socket client.
    Client {
        /// The bus subscription of its connection: where its replies go.
        subscriber: SubscriberId,
        /// The connection's number, `client#N` in the daemon log and the audit trail.
        connection: u64,
    },
    /// A capsule instance.
    Capsule {
        /// The capsule's name.
        name: String,
        /// The instance's `source_id`, which each of its subscriptions carries: a reply goes
        /// to those of them whose grant covers the reply's topic, and to nothing else.
        instance: Uuid,
    },
    /// An MCP server the daemon runs (its tools' results, published for it by the MCP
    /// bridge). It has no bus subscription, so nothing is addressed to it.
    McpServer {
        /// The server's name in `servers.toml` or its capsule's manifest.
        name: String,
    },
}

impl Origin {
    /// Where a reply to this publisher goes; `None` for the kernel and MCP servers, which
    /// never wait for one: what they would be answered is not published at all.
    pub fn reply_address(&self) -> Option<Address> {
        match self {
            Self::Client { subscriber, .. } => Some(Address::Subscriber(*subscriber)),
            Self::Capsule { instance, .. } => Some(Address::Instance(*instance)),
            Self::Kernel | Self::McpServer { .. } => None,
        }
    }

    /// Who the audit trail names for what this publisher did.
    pub fn actor(&self) -> Actor {
        match self {
            Self::Kernel => Actor::Kernel,
            Self::Client { connection, .. } => Actor::Client { id: format!("client#{connection}") },
            Self::Capsule { name, .. } => Actor::Capsule { name: name.clone() },
            Self::McpServer { name } => Actor::McpServer { name: name.clone() },
        }
    }

    /// Whether this publisher may ask the management API for changes (install, grant,
    /// commit, shutdown…): the operator's connections and the kernel. A capsule or an MCP
    /// server whose grant reaches the management topics may only read.
    pub fn may_change_the_system(&self) -> bool {
        matches!(self, Self::Kernel | Self::Client { .. })
    }

    /// The client connection this came from, if a client published it.
    pub fn client(&self) -> Option<SubscriberId> {
        match self {
            Self::Client { subscriber, .. } => Some(*subscriber),
            _ => None,
        }
    }
}

/// The one publisher a message is for: a reply, a receipt, a question put to one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// One subscription: a client's connection (or, in tests, a kernel service).
    Subscriber(SubscriberId),
    /// Every subscription of one capsule instance (its `source_id`), each delivering what
    /// its grant covers, as anything else would.
    Instance(Uuid),
}

/// A message in flight, with the routing facts that never go on the wire.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The message as clients and capsules see it; `seq` is stamped by the bus.
    pub message: IpcMessage,
    /// Who published it; never delivered back to its own publisher.
    pub origin: Origin,
    /// When set, only this publisher's subscriptions receive the message.
    pub reply_to: Option<Address>,
    /// The client request this message descends from, if any (set by the kernel only).
    pub cause: Option<Arc<Cause>>,
}

impl BusMessage {
    /// A message from the kernel to every subscriber of its topic.
    pub fn from_kernel(message: IpcMessage) -> Self {
        Self { message, origin: Origin::Kernel, reply_to: None, cause: None }
    }

    /// A message from `origin`.
    pub fn from(origin: Origin, message: IpcMessage) -> Self {
        Self { message, origin, reply_to: None, cause: None }
    }

    /// Addressed to `address` only (`None`: to every subscriber of the topic).
    pub fn to(mut self, address: Option<Address>) -> Self {
        self.reply_to = address;
        self
    }

    /// Descending from `cause`.
    pub fn caused_by(mut self, cause: Option<Arc<Cause>>) -> Self {
        self.cause = cause;
        self
    }
}

/// What a subscriber is, which decides what it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberKind {
    /// A kernel service (the router, the MCP bridge, an approval waiting for its answer).
    Service,
    /// A socket client: sees only its own sessions' and requests' messages, and broadcasts.
    Client,
    /// A capsule instance, publishing as `source_id`.
    Capsule {
        /// The capsule's name.
        name: String,
        /// The `source_id` of what the instance publishes.
        source_id: Uuid,
    },
}

/// A capsule a message was delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The capsule's name.
    pub capsule: String,
    /// The `source_id` its messages carry.
    pub source_id: Uuid,
}

/// Why a subscriber's queue stopped delivering.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closed {
    /// Its subscription was dropped.
    Unsubscribed,
    /// The bus cut it off (the reason is logged).
    CutOff,
}

#[derive(Debug)]
struct QueueState {
    items: VecDeque<Arc<BusMessage>>,
    closed: Option<Closed>,
    /// When the reader last took a message (or the queue was created).
    last_taken: Instant,
}

/// One subscriber's queue, shared by the bus (writers) and the [`Subscription`] (reader).
#[derive(Debug)]
struct Queue {
    name: String,
    state: Mutex<QueueState>,
    /// Wakes the reader: a message arrived or the queue closed.
    readable: Notify,
    /// Wakes paced writers: the queue went below the pace mark or closed.
    writable: Notify,
    /// Messages lost: what a cut-off queue held.
    dropped: AtomicU64,
    /// Stale telemetry not delivered because the reader was behind (expected, not a loss).
    skipped: AtomicU64,
}

impl Queue {
    fn new(name: String) -> Self {
        Self {
            name,
            state: Mutex::new(QueueState { items: VecDeque::new(), closed: None, last_taken: Instant::now() }),
            readable: Notify::new(),
            writable: Notify::new(),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A poisoned lock means a panic while holding it; the queue itself is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the queue; a cut-off also loses what it held (logged by the caller).
    fn close(&self, why: Closed) {
        let mut state = self.lock();
        if state.closed.is_none() {
            if why == Closed::CutOff {
                let lost = state.items.len() as u64;
                state.items.clear();
                self.dropped.fetch_add(lost, Ordering::Relaxed);
            }
            state.closed = Some(why);
        }
        drop(state);
        self.readable.notify_one();
        self.writable.notify_waiters();
    }

    /// Whether a paced writer may go on: below the pace mark, or closed.
    fn has_room(&self) -> bool {
        let state = self.lock();
        state.closed.is_some() || state.items.len() < PACE_MARK
    }

    fn take(&self) -> Option<Arc<BusMessage>> {
        self.take_if(|_| true)
    }

    /// Takes the oldest message if `wanted` says so.
    fn take_if(&self, wanted: impl FnOnce(&BusMessage) -> bool) -> Option<Arc<BusMessage>> {
        let mut state = self.lock();
        if !wanted(state.items.front()?) {
            return None;
        }
        let message = state.items.pop_front()?;
        state.last_taken = Instant::now();
        let room = state.items.len() < PACE_MARK;
        drop(state);
        if room {
            self.writable.notify_waiters();
        }
        Some(message)
    }
}

struct Subscriber {
    id: SubscriberId,
    kind: SubscriberKind,
    patterns: Vec<String>,
    queue: Arc<Queue>,
}

impl Subscriber {
    /// Whether this subscription is (one of) the subscriptions of `address`.
    fn is(&self, address: Address) -> bool {
        match (address, &self.kind) {
            (Address::Subscriber(id), _) => self.id == id,
            (Address::Instance(instance), SubscriberKind::Capsule { source_id, .. }) => *source_id == instance,
            (Address::Instance(_), _) => false,
        }
    }

    /// Whether a message on `topic` is for this subscriber. A capsule's patterns are its
    /// grant, so they are matched as the grant was checked ([`topic::acl_matches`]: `*` is
    /// one segment, anywhere): it receives exactly what the grant says and nothing deeper.
    /// The kernel's own services and clients use the bus meaning, where a trailing `.*`
    /// takes one or more segments ([`topic::subscription_matches`]).
    fn wants(&self, topic: &str) -> bool {
        let matches = match self.kind {
            SubscriberKind::Capsule { .. } => topic::acl_matches,
            _ => topic::subscription_matches,
        };
        self.patterns.iter().any(|p| matches(p, topic))
    }
}

/// The subscribers, and which of them each topic seen lately goes to.
///
/// Matching every pattern of every subscriber against every message was the bus's largest
/// cost (a client connection alone subscribes to twenty patterns), while the topics on the bus
/// are few and repeat. So the matching subscribers of a topic are computed once and kept until
/// the list changes (a subscribe or an unsubscribe forgets them all), or until
/// [`MAX_ROUTES`] topics are known, when the memory starts over.
#[derive(Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    /// Topic → positions in `list` of the subscribers that want it, in subscription order.
    /// Shared, so a known topic is looked up once (a request and its reply, two lookups
    /// each, hashed their topics four times).
    routes: HashMap<Box<str>, Arc<[usize]>>,
}

/// The most topics whose subscribers are remembered at once.
const MAX_ROUTES: usize = 1024;

impl Subscribers {
    fn add(&mut self, subscriber: Subscriber) {
        self.list.push(subscriber);
        self.routes.clear();
    }

    fn remove(&mut self, id: SubscriberId) {
        self.list.retain(|s| s.id != id);
        self.routes.clear();
    }

    /// The subscribers that want `topic`, in subscription order.
    fn wanting(&mut self, topic: &str) -> impl Iterator<Item = &Subscriber> {
        let route = match self.routes.get(topic) {
            Some(route) => Arc::clone(route),
            None => {
                if self.routes.len() >= MAX_ROUTES {
                    self.routes.clear();
                }
                let wanting: Arc<[usize]> =
                    self.list.iter().enumerate().filter(|(_, s)| s.wants(topic)).map(|(i, _)| i).collect();
                self.routes.insert(topic.into(), Arc::clone(&wanting));
                wanting
            }
        };
        let list = &self.list;
        (0..route.len()).filter_map(move |k| list.get(route[k]))
    }
}

impl std::ops::Deref for Subscribers {
    type Target = [Subscriber];

    fn deref(&self) -> &[Subscriber] {
        &self.list
    }
}

#[derive(Default)]
struct Shared {
    subscribers: Mutex<Subscribers>,
    /// Sessions and the client connections that speak in them.
    sessions: Mutex<HashMap<String, Vec<SubscriberId>>>,
    next_id: AtomicU64,
    seq: AtomicU64,
}

impl Shared {
    fn subscribers(&self) -> MutexGuard<'_, Subscribers> {
        // A poisoned lock means a panic while holding it; the list itself is still valid.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Vec<SubscriberId>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
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

/// What one publish did.
#[derive(Debug, Default)]
struct Delivery {
    delivered: usize,
    recipients: Vec<Recipient>,
    /// The socket clients it went to.
    clients: Vec<SubscriberId>,
    /// Queues at or over the pace mark after this message went in.
    behind: Vec<Arc<Queue>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes a kernel service to every topic matching any of `patterns`
    /// (subscription semantics, see [`topic::subscription_matches`]). Dropping the
    /// [`Subscription`] unsubscribes.
    pub fn subscribe(&self, name: impl Into<String>, patterns: &[&str]) -> Subscription {
        self.subscribe_as(name, SubscriberKind::Service, patterns)
    }

    /// [`Bus::subscribe`] for a subscriber of `kind`.
    pub fn subscribe_as(&self, name: impl Into<String>, kind: SubscriberKind, patterns: &[&str]) -> Subscription {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let queue = Arc::new(Queue::new(name.into()));
        self.shared.subscribers().add(Subscriber {
            id,
            kind,
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            queue: Arc::clone(&queue),
        });
        Subscription { id, queue, shared: Arc::clone(&self.shared) }
    }

    /// Records that the client `subscriber` speaks in `session`: payloads naming that session
    /// go to it (and to any other client that claimed it). Released when it unsubscribes.
    pub fn claim_session(&self, subscriber: SubscriberId, session: &str) {
        let mut sessions = self.shared.sessions();
        let clients = sessions.entry(session.to_owned()).or_default();
        if !clients.contains(&subscriber) {
            clients.push(subscriber);
        }
    }

    /// The socket clients a message on `topic` would be delivered to now, were it for them
    /// all (a question asked of everyone but some).
    pub fn clients_subscribed(&self, topic: &str) -> Vec<SubscriberId> {
        self.shared
            .subscribers()
            .wanting(topic)
            .filter(|s| s.kind == SubscriberKind::Client && s.queue.lock().closed.is_none())
            .map(|s| s.id)
            .collect()
    }

    /// Whether the client `subscriber` is still connected.
    pub fn is_subscribed(&self, subscriber: SubscriberId) -> bool {
        self.shared.subscribers().iter().any(|s| s.id == subscriber)
    }

    /// Stamps `seq` and delivers to every matching subscriber, never waiting. Returns how
    /// many subscribers received it. For the kernel's own messages; publishers that produce
    /// streams use [`Bus::publish_paced`].
    pub fn publish(&self, bus_message: BusMessage) -> usize {
        self.deliver(bus_message).delivered
    }

    /// Delivers like [`Bus::publish`] at once, then waits (the returned future) until every
    /// subscriber it delivered to is below [`PACE_MARK`] again, or gone. The future resolves
    /// to the number of subscribers that received the message.
    pub fn publish_paced(&self, bus_message: BusMessage) -> Paced {
        let delivery = self.deliver(bus_message);
        Paced { delivered: delivery.delivered, behind: delivery.behind, waiting: None }
    }

    /// Delivers like [`Bus::publish_paced`] and also names the capsules that received it.
    pub fn publish_traced(&self, bus_message: BusMessage) -> (Paced, Vec<Recipient>) {
        let delivery = self.deliver(bus_message);
        (Paced { delivered: delivery.delivered, behind: delivery.behind, waiting: None }, delivery.recipients)
    }

    /// Delivers like [`Bus::publish`] and names the socket clients that received it (a
    /// question put to people: whoever waits for the answer can tell when they are all gone).
    pub fn publish_to_clients(&self, bus_message: BusMessage) -> Vec<SubscriberId> {
        self.deliver(bus_message).clients
    }

    /// The capsules a message on `topic` would be delivered to now.
    pub fn capsules_subscribed(&self, topic: &str) -> Vec<Recipient> {
        let mut found: Vec<Recipient> = Vec::new();
        for subscriber in self.shared.subscribers().wanting(topic) {
            if let SubscriberKind::Capsule { name, source_id } = &subscriber.kind
                && !found.iter().any(|r| r.capsule == *name)
            {
                found.push(Recipient { capsule: name.clone(), source_id: *source_id });
            }
        }
        found
    }

    fn deliver(&self, mut bus_message: BusMessage) -> Delivery {
        bus_message.message.seq = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let bus_message = Arc::new(bus_message);
        let topic = bus_message.message.topic.as_str();
        let droppable = is_droppable(topic);
        // The clients a client-facing message is for; `None`: every client.
        let audience = self.audience(&bus_message);
        let mut delivery = Delivery::default();
        let mut cut_off = Vec::new();
        let mut subscribers = self.shared.subscribers();
        for subscriber in subscribers.wanting(topic) {
            if bus_message.origin.reply_address().is_some_and(|publisher| subscriber.is(publisher))
                || bus_message.reply_to.is_some_and(|to| !subscriber.is(to))
                || (subscriber.kind == SubscriberKind::Client
                    && audience.as_ref().is_some_and(|clients| !clients.contains(&subscriber.id)))
            {
                continue;
            }
            let queue = &subscriber.queue;
            let mut state = queue.lock();
            if state.closed.is_some() {
                continue;
            }
            if droppable && state.items.len() >= PACE_MARK {
                drop(state);
                let skipped = queue.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if skipped.is_power_of_two() {
                    log::info!("bus: {} is behind; {skipped} stale {topic} message(s) skipped for it", queue.name);
                }
                continue;
            }
            if state.items.len() >= CUT_MARK {
                drop(state);
                cut_off.push(Arc::clone(queue));
                continue;
            }
            state.items.push_back(Arc::clone(&bus_message));
            let behind = state.items.len() >= PACE_MARK;
            drop(state);
            queue.readable.notify_one();
            delivery.delivered += 1;
            if behind {
                delivery.behind.push(Arc::clone(queue));
            }
            match &subscriber.kind {
                SubscriberKind::Capsule { name, source_id }
                    if !delivery.recipients.iter().any(|r| r.capsule == *name) =>
                {
                    delivery.recipients.push(Recipient { capsule: name.clone(), source_id: *source_id });
                }
                SubscriberKind::Client => delivery.clients.push(subscriber.id),
                _ => {}
            }
        }
        drop(subscribers);
        for queue in cut_off {
            log::error!(
                "bus: {} holds {CUT_MARK} messages it has not taken; cutting it off rather than losing {topic}",
                queue.name
            );
            queue.close(Closed::CutOff);
        }
        delivery
    }

    /// Which clients may see `message` (`None`: all of them): the ones speaking in the
    /// session its payload names, else the one whose request it descends from.
    fn audience(&self, message: &BusMessage) -> Option<Vec<SubscriberId>> {
        if let Some(session) = message.message.payload.session_id() {
            return Some(self.shared.sessions().get(session).cloned().unwrap_or_default());
        }
        message.cause.as_ref().map(|cause| vec![cause.client])
    }

    /// Cuts off every subscriber that is at the pace mark and has taken nothing for
    /// [`STALL`]: someone may be waiting on it. Returns their names.
    pub fn cut_off_stalled(&self) -> Vec<String> {
        self.cut_off_stalled_after(STALL)
    }

    fn cut_off_stalled_after(&self, stall: Duration) -> Vec<String> {
        let stalled: Vec<Arc<Queue>> = self
            .shared
            .subscribers()
            .iter()
            .filter(|s| {
                let state = s.queue.lock();
                state.closed.is_none() && state.items.len() >= PACE_MARK && state.last_taken.elapsed() >= stall
            })
            .map(|s| Arc::clone(&s.queue))
            .collect();
        stalled
            .into_iter()
            .map(|queue| {
                log::error!(
                    "bus: {} took nothing for {} s with {PACE_MARK}+ messages waiting; cut off",
                    queue.name,
                    stall.as_secs()
                );
                queue.close(Closed::CutOff);
                queue.name.clone()
            })
            .collect()
    }

    /// The subscribers that lost messages, with how many: what `status` reports. (Polled
    /// by status bars: nothing is copied for a subscriber that lost none.)
    pub fn losses(&self) -> Vec<(String, u64)> {
        self.shared
            .subscribers()
            .iter()
            .filter_map(|s| match s.queue.dropped.load(Ordering::Relaxed) {
                0 => None,
                dropped => Some((s.queue.name.clone(), dropped)),
            })
            .collect()
    }
}

/// The wait of a paced publish: resolves once every queue the message went into is below
/// the pace mark again (or closed), to the number of subscribers that received it.
#[must_use = "a paced publish only paces when awaited"]
pub struct Paced {
    delivered: usize,
    behind: Vec<Arc<Queue>>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced").field("delivered", &self.delivered).field("behind", &self.behind.len()).finish()
    }
}

impl Paced {
    /// How many subscribers received the message (known at once).
    pub fn delivered(&self) -> usize {
        self.delivered
    }
}

impl Future for Paced {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<usize> {
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                if waiting.as_mut().poll(context).is_pending() {
                    return Poll::Pending;
                }
                self.waiting = None;
            }
            let Some(queue) = self.behind.last().cloned() else { return Poll::Ready(self.delivered) };
            if queue.has_room() {
                self.behind.pop();
                continue;
            }
            self.waiting = Some(Box::pin(async move {
                loop {
                    let notified = queue.writable.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    if queue.has_room() {
                        return;
                    }
                    notified.await;
                }
            }));
        }
    }
}

/// A live subscription: the subscriber's queue of matching messages.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    queue: Arc<Queue>,
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

    /// Waits for the next message, in publish order. `None` once the subscriber was cut off.
    pub async fn recv(&mut self) -> Option<Arc<BusMessage>> {
        loop {
            let notified = self.queue.readable.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(message) = self.queue.take() {
                return Some(message);
            }
            if self.queue.lock().closed.is_some() {
                return None;
            }
            notified.await;
        }
    }

    /// Takes a queued message without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<BusMessage>> {
        self.queue.take()
    }

    /// Takes the oldest queued message without waiting, if `wanted` accepts it (it stays
    /// first in the queue otherwise).
    pub fn try_recv_if(&mut self, wanted: impl FnOnce(&BusMessage) -> bool) -> Option<Arc<BusMessage>> {
        self.queue.take_if(wanted)
    }

    /// Messages this subscriber lost so far (it was cut off).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// Stale telemetry it was not sent while it was behind.
    pub fn skipped(&self) -> u64 {
        self.queue.skipped.load(Ordering::Relaxed)
    }

    /// Whether the bus cut this subscriber off.
    pub fn is_cut_off(&self) -> bool {
        self.queue.lock().closed == Some(Closed::CutOff)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close(Closed::Unsubscribed);
        self.shared.subscribers().remove(self.id);
        self.shared.sessions().retain(|_, clients| {
            clients.retain(|c| *c != self.id);
            !clients.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{IpcPayload, SYSTEM_SESSION_UUID};

    fn message(topic: &str) -> BusMessage {
        let payload = IpcPayload::Custom { data: serde_json::json!({}) };
        BusMessage::from_kernel(IpcMessage::new(topic, payload, SYSTEM_SESSION_UUID))
    }

    fn answer(session: &str, text: &str) -> BusMessage {
        let payload = IpcPayload::AgentResponse {
            text: text.to_owned(),
            is_final: false,
            session_id: session.to_owned(),
            outcome: None,
        };
        BusMessage::from_kernel(IpcMessage::new("agent.v1.response", payload, SYSTEM_SESSION_UUID))
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
    async fn a_capsule_receives_exactly_what_its_grant_names() {
        let bus = Bus::new();
        let capsule = SubscriberKind::Capsule { name: "tools".into(), source_id: Uuid::nil() };
        // The grant `tool.v1.execute.*` was checked with `*` as one segment: so is delivery.
        let mut granted = bus.subscribe_as("tools", capsule, &["tool.v1.execute.*"]);
        let mut service = bus.subscribe("mcp-tools", &["tool.v1.execute.*"]);
        bus.publish(message("tool.v1.execute.read_file"));
        bus.publish(message("tool.v1.execute.read_file.result"));
        let topics = |s: &mut Subscription| {
            std::iter::from_fn(|| s.try_recv()).map(|m| m.message.topic.clone()).collect::<Vec<_>>()
        };
        assert_eq!(topics(&mut granted), ["tool.v1.execute.read_file"], "nothing deeper than the grant");
        assert_eq!(topics(&mut service), ["tool.v1.execute.read_file", "tool.v1.execute.read_file.result"]);
        assert_eq!(bus.capsules_subscribed("tool.v1.execute.read_file.result"), Vec::new());
        assert_eq!(bus.capsules_subscribed("tool.v1.execute.read_file").len(), 1);
    }

    #[tokio::test]
    async fn replies_reach_only_their_addressee_and_never_echo() {
        let bus = Bus::new();
        let mut a = bus.subscribe("a", &["astrid.v1.response.*"]);
        let mut b = bus.subscribe("b", &["astrid.v1.response.*"]);
        bus.publish(message("astrid.v1.response.status").to(Some(Address::Subscriber(a.id()))));
        assert!(a.try_recv().is_some());
        assert!(b.try_recv().is_none());
        let from_b = Origin::Client { subscriber: b.id(), connection: 2 };
        let own = BusMessage::from(from_b, message("astrid.v1.response.status").message);
        bus.publish(own);
        assert!(a.try_recv().is_some());
        assert!(b.try_recv().is_none(), "a publisher must not receive its own message");
    }

    #[tokio::test]
    async fn a_reply_to_a_capsule_reaches_only_its_own_subscriptions_that_cover_the_topic() {
        let bus = Bus::new();
        let (asker, other) = (Uuid::new_v4(), Uuid::new_v4());
        let capsule = |name: &str, source_id| SubscriberKind::Capsule { name: name.into(), source_id };
        let mut replies = bus.subscribe_as("capsule:asker", capsule("asker", asker), &["astrid.v1.response.*"]);
        let mut prompts = bus.subscribe_as("capsule:asker", capsule("asker", asker), &["user.v1.prompt"]);
        let mut bystander = bus.subscribe_as("capsule:other", capsule("other", other), &["astrid.v1.response.*"]);
        let mut client = bus.subscribe_as("client#1", SubscriberKind::Client, &["astrid.v1.response.*"]);
        let origin = Origin::Capsule { name: "asker".into(), instance: asker };
        let reply = message("astrid.v1.response.status").to(origin.reply_address());
        assert_eq!(bus.publish(reply), 1);
        assert!(replies.try_recv().is_some(), "the asking instance's subscription to the topic");
        assert!(prompts.try_recv().is_none(), "not a subscription of the instance that does not cover it");
        assert!(bystander.try_recv().is_none() && client.try_recv().is_none(), "nobody else");
        // What the instance publishes does not come back to any of its subscriptions.
        let own = BusMessage::from(origin.clone(), message("astrid.v1.response.status").message);
        assert_eq!(bus.publish(own), 2);
        assert!(replies.try_recv().is_none(), "never echoed to its publisher");
        assert!(bystander.try_recv().is_some() && client.try_recv().is_some());
        // The kernel and MCP servers have nobody to be answered at.
        assert_eq!(Origin::Kernel.reply_address(), None);
        assert_eq!(Origin::McpServer { name: "time".into() }.reply_address(), None);
        assert_eq!(origin.actor(), Actor::Capsule { name: "asker".into() });
    }

    #[tokio::test]
    async fn a_slow_reader_gets_everything_in_order_and_paces_its_writer() {
        let bus = Bus::new();
        let mut slow = bus.subscribe("slow", &["t.v1.x"]);
        let total = PACE_MARK * 3;
        let writer = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                let mut waited = 0;
                for n in 0..total {
                    let payload = IpcPayload::Custom { data: serde_json::json!({"n": n}) };
                    let paced = bus.publish_paced(BusMessage::from_kernel(IpcMessage::new(
                        "t.v1.x",
                        payload,
                        SYSTEM_SESSION_UUID,
                    )));
                    if !paced.behind.is_empty() {
                        waited += 1;
                    }
                    runtime.block_on(paced);
                }
                waited
            })
        };
        for n in 0..total {
            if n % 64 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let message = slow.recv().await.expect("message");
            assert_eq!(message.message.payload.to_guest_value()["n"], n, "in order, none lost");
        }
        let waited = writer.join().expect("writer");
        assert!(waited > 0, "the writer was held back at the pace mark");
        assert_eq!(slow.dropped(), 0);
    }

    #[tokio::test]
    async fn only_stale_telemetry_is_dropped_for_a_reader_that_is_behind() {
        let bus = Bus::new();
        let mut behind = bus.subscribe("behind", &["t.v1.x", crate::types::topics::TICK_TOPIC]);
        for _ in 0..PACE_MARK {
            bus.publish(message("t.v1.x"));
        }
        assert_eq!(bus.publish(message(crate::types::topics::TICK_TOPIC)), 0);
        assert_eq!(bus.publish(message("t.v1.x")), 1, "a stream message still gets in");
        assert_eq!((behind.skipped(), behind.dropped()), (1, 0), "skipped, not lost");
        let mut received = 0;
        while behind.try_recv().is_some() {
            received += 1;
        }
        assert_eq!(received, PACE_MARK + 1);
    }

    #[tokio::test]
    async fn a_reader_that_stops_is_cut_off_loudly_not_skipped() {
        let bus = Bus::new();
        let mut stuck = bus.subscribe("stuck", &["t.v1.x"]);
        let mut healthy = bus.subscribe("healthy", &["t.v1.x"]);
        for _ in 0..PACE_MARK {
            bus.publish(message("t.v1.x"));
            healthy.try_recv().expect("healthy keeps up");
        }
        assert!(bus.cut_off_stalled_after(Duration::from_secs(60)).is_empty(), "not stalled long enough");
        assert_eq!(bus.cut_off_stalled_after(Duration::ZERO), vec!["stuck".to_owned()]);
        assert!(stuck.is_cut_off());
        assert!(stuck.recv().await.is_none(), "the reader learns it was cut off");
        assert_eq!(stuck.dropped(), PACE_MARK as u64, "what it lost is counted");
        assert_eq!(bus.publish(message("t.v1.x")), 1, "the others go on");
        // A queue past the hard mark is cut off at the next message, by any publisher.
        let flooded = bus.subscribe("flooded", &["t.v1.y"]);
        for _ in 0..CUT_MARK {
            bus.publish(message("t.v1.y"));
        }
        assert_eq!(bus.publish(message("t.v1.y")), 0);
        assert!(flooded.is_cut_off());
    }

    #[tokio::test]
    async fn a_paced_publisher_is_released_when_its_reader_goes_away() {
        let bus = Bus::new();
        let gone = bus.subscribe("gone", &["t.v1.x"]);
        for _ in 0..PACE_MARK - 1 {
            bus.publish(message("t.v1.x"));
        }
        let paced = bus.publish_paced(message("t.v1.x"));
        drop(gone);
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), paced).await.expect("released"), 1);
    }

    #[tokio::test]
    async fn clients_see_their_own_sessions_and_requests_only() {
        let bus = Bus::new();
        let mut alice = bus.subscribe_as("alice", SubscriberKind::Client, &["agent.v1.response", "astrid.v1.approval"]);
        let mut bob = bus.subscribe_as("bob", SubscriberKind::Client, &["agent.v1.response", "astrid.v1.approval"]);
        let mut capsule = bus.subscribe_as(
            "capsule:spy",
            SubscriberKind::Capsule { name: "spy".into(), source_id: Uuid::nil() },
            &["agent.v1.response"],
        );
        bus.claim_session(alice.id(), "s-alice");
        bus.claim_session(bob.id(), "s-bob");
        bus.publish(answer("s-alice", "for alice"));
        assert!(alice.try_recv().is_some());
        assert!(bob.try_recv().is_none(), "another session's answer is not bob's");
        assert!(capsule.try_recv().is_some(), "capsules see what their grant covers");
        bus.publish(answer("nobody's", "lost soul"));
        assert!(alice.try_recv().is_none() && bob.try_recv().is_none(), "an unclaimed session goes to no client");
        // A message without a session goes where its cause came from, or to everyone.
        let caused = message("astrid.v1.approval").caused_by(Some(Cause::new(bob.id(), "s-bob", None)));
        bus.publish(caused);
        assert!(bob.try_recv().is_some());
        assert!(alice.try_recv().is_none(), "bob's approval is not alice's to see");
        bus.publish(message("astrid.v1.approval"));
        assert!(alice.try_recv().is_some() && bob.try_recv().is_some());
        // A claim ends with the connection.
        let bob_id = bob.id();
        drop(bob);
        assert!(!bus.is_subscribed(bob_id));
        assert!(!bus.shared.sessions().contains_key("s-bob"));
    }

    #[tokio::test]
    async fn traced_publishes_name_the_capsules_that_received_them() {
        let bus = Bus::new();
        let source = Uuid::new_v4();
        let _hook = bus.subscribe_as(
            "capsule:orchestrator",
            SubscriberKind::Capsule { name: "orchestrator".into(), source_id: source },
            &["user.v1.prompt"],
        );
        let _service = bus.subscribe("audit", &["user.v1.prompt"]);
        assert_eq!(bus.capsules_subscribed("user.v1.prompt").len(), 1);
        let (paced, recipients) = bus.publish_traced(message("user.v1.prompt"));
        assert_eq!(paced.await, 2);
        assert_eq!(recipients, vec![Recipient { capsule: "orchestrator".into(), source_id: source }]);
    }
}
