//! The socket bridge: accepts frontends on `run/system.sock`, authenticates them, and moves
//! frames between each connection and the kernel bus.
//!
//! The reference delegates this to an external WebAssembly capsule; ours is built in and
//! listed as `astrid-capsule-cli`. Per connection:
//!
//! 1. peer UID must equal ours (checked before reading a byte; mismatch closes silently);
//! 2. handshake within [`HANDSHAKE_TIMEOUT`], frame ≤ 4096 bytes (see [`super::handshake`]);
//! 3. a client slot (at most `max_clients` authenticated connections, refusal past it), a
//!    [`ClientLease`](crate::kernel::ClientLease) and a bus subscription to the egress topics;
//! 4. a reader (ingress: allowlisted topics, payload converted with `from_json_value`) and a
//!    writer task (egress: `{topic, payload, source_id}`), each failing alone.
//!
//! The accept loop only accepts and spawns: it never waits on a connection's work, so a
//! burst of slow or silent clients cannot wedge it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::timeout;
use uuid::Uuid;

use super::capsule_session;
use super::frame::{FrameReader, MAX_CLIENT_FRAME, MAX_HANDSHAKE_FRAME, write_frame};
use super::handshake::{Verdict, evaluate};
use super::policy::{EGRESS_PATTERNS, ingress_allowed};
use super::token::SessionToken;
use crate::audit::Decision;
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::bus::{Address, BusMessage, Origin, SubscriberId, SubscriberKind, Subscription};
use crate::kernel::router::response_topic;
use crate::kernel::{Kernel, prompts, topic};
use crate::types::topics::{DELTA_TOPIC, REQUEST_PREFIX};
use crate::types::{EgressFrame, HandshakeResponse, IpcMessage, IpcPayload, KernelResponse};
use crate::wasm::supervisor::CapsuleSupervisor;

/// How long a new connection has to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one egress frame may take to write before the client is considered stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on authenticated connections.
pub const DEFAULT_MAX_CLIENTS: usize = 256;
/// Connections allowed to be mid-handshake at once; a new one beyond this evicts the oldest
/// once that one has had [`PENDING_GRACE`].
const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long a connection surely has to send its handshake, however many others arrive
/// after it (then [`HANDSHAKE_TIMEOUT`], unless the pending slots are all taken).
const PENDING_GRACE: Duration = Duration::from_secs(1);
/// Largest payload a client may publish (after the 10 MiB frame limit).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Tunables of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Most authenticated connections served at once.
    pub max_clients: usize,
    /// How long connections get to flush queued replies at shutdown.
    pub drain_timeout: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self { max_clients: DEFAULT_MAX_CLIENTS, drain_timeout: Duration::from_secs(1) }
    }
}

struct Context {
    kernel: Arc<Kernel>,
    /// Where capsule-host connections attach (none: they are refused).
    capsules: Option<Arc<CapsuleSupervisor>>,
    token: SessionToken,
    config: BridgeConfig,
    client_slots: Arc<Semaphore>,
    next_connection: AtomicU64,
    our_uid: u32,
}

/// Serves clients until `stop` turns true, then stops accepting, lets every connection
/// flush what is queued for it (bounded by `drain_timeout`) and returns. Capsule-host
/// connections attach to `capsules`.
pub async fn serve(
    listener: UnixListener,
    kernel: Arc<Kernel>,
    capsules: Option<Arc<CapsuleSupervisor>>,
    token: SessionToken,
    config: BridgeConfig,
    mut stop: watch::Receiver<bool>,
) {
    let context = Arc::new(Context {
        kernel,
        capsules,
        token,
        client_slots: Arc::new(Semaphore::new(config.max_clients)),
        config,
        next_connection: AtomicU64::new(1),
        our_uid: nix::unistd::geteuid().as_raw(),
    });
    let pending = Arc::new(Pending::default());
    // Each connection task holds a clone; when all are dropped, `recv` returns None.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let connection_stop = stop.clone();
    loop {
        // While every pending slot is held by a connection still within its grace, new
        // connections wait in the listen queue, first come first served: a real client,
        // whose handshake is already written, is reached in turn and answered at once.
        let wait = pending.admission_wait();
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                () = pending.freed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let id = context.next_connection.fetch_add(1, Ordering::Relaxed);
                let permit = pending.admit(id);
                let task = connection(Arc::clone(&context), id, stream, permit, connection_stop.clone(), alive.clone());
                tokio::spawn(task);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::error!("bridge: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(alive);
    let drain = context.config.drain_timeout + Duration::from_millis(500);
    if timeout(drain, all_done.recv()).await.is_err() {
        log::warn!("bridge: some connections did not finish within {drain:?}; abandoning them");
    }
}

async fn connection(
    context: Arc<Context>,
    id: u64,
    stream: UnixStream,
    mut pending: PendingSlot,
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == context.our_uid => {}
        Ok(cred) => {
            log::warn!("client#{id}: peer uid {} is not ours ({}); closed", cred.uid(), context.our_uid);
            return;
        }
        Err(e) => {
            log::warn!("client#{id}: cannot read peer credentials ({e}); closed");
            return;
        }
    }
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FrameReader::new(read_half, MAX_HANDSHAKE_FRAME);
    // Shutdown does not wait for a client that has not even said hello.
    let mut stop = stop;
    let read = tokio::select! {
        _ = stop.wait_for(|stop| *stop) => return,
        () = pending.evicted() => {
            return log::debug!("client#{id}: no handshake yet and {MAX_PENDING_HANDSHAKES} newer connections waiting; closed");
        }
        read = timeout(HANDSHAKE_TIMEOUT, reader.next_frame()) => read,
    };
    let frame = match read {
        Err(_) => return log::debug!("client#{id}: no handshake within {HANDSHAKE_TIMEOUT:?}; closed"),
        Ok(Ok(None)) => return log::debug!("client#{id}: closed before the handshake (liveness probe)"),
        Ok(Err(e)) => return log::warn!("client#{id}: handshake read failed: {e}; closed"),
        Ok(Ok(Some(frame))) => frame,
    };
    let verdict = evaluate(&frame, &context.token);
    let slot = match verdict {
        Verdict::Drop(why) => return log::warn!("client#{id}: {why}; closed without reply"),
        Verdict::Reject(reason) => {
            log::warn!("client#{id}: handshake refused: {reason}");
            let _ = send_handshake(&mut write_half, HandshakeResponse::error(crate::VERSION, reason)).await;
            return;
        }
        Verdict::Accept { client_version, attach, workspace, label, answers_questions } => {
            match Arc::clone(&context.client_slots).try_acquire_owned() {
                Ok(slot) => {
                    let workspace = match workspace.as_deref().map(workspace_dir).transpose() {
                        Ok(workspace) => workspace,
                        Err(reason) => {
                            log::warn!("client#{id}: handshake refused: {reason}");
                            let _ =
                                send_handshake(&mut write_half, HandshakeResponse::error(crate::VERSION, reason)).await;
                            return;
                        }
                    };
                    log::debug!("client#{id}: authenticated (client version {client_version})");
                    (slot, attach, workspace, Hello { label, answers_questions })
                }
                Err(_) => {
                    let reason = format!(
                        "too many clients: this daemon serves at most {} connections",
                        context.config.max_clients
                    );
                    log::warn!("client#{id}: refused: {reason}");
                    let _ = send_handshake(&mut write_half, HandshakeResponse::error(crate::VERSION, reason)).await;
                    return;
                }
            }
        }
    };
    let (slot, attach, workspace, hello) = slot;
    if let Err(e) = send_handshake(&mut write_half, HandshakeResponse::ok(crate::VERSION)).await {
        return log::warn!("client#{id}: cannot send the handshake reply: {e}");
    }
    drop(pending);
    match (attach, &context.capsules) {
        (None, _) => serve_client(&context, id, reader, write_half, stop, workspace, hello).await,
        (Some(attach), Some(capsules)) => {
            capsule_session::serve(Arc::clone(capsules), id, attach, reader, write_half, stop).await;
        }
        (Some(_), None) => {
            let refusal = crate::types::capsule_session::SessionStart::Refused {
                reason: "this daemon runs no capsules".to_owned(),
            };
            if let Ok(bytes) = serde_json::to_vec(&refusal) {
                let _ = timeout(WRITE_TIMEOUT, write_frame(&mut write_half, &bytes)).await;
            }
        }
    }
    drop(slot);
}

/// The workspace a client asked for, canonical, or why it cannot be one.
fn workspace_dir(raw: &str) -> Result<Arc<PathBuf>, String> {
    let path = std::path::Path::new(raw);
    if !path.is_absolute() {
        return Err(format!("workspace {raw:?} is not an absolute path"));
    }
    let canonical = path.canonicalize().map_err(|e| format!("workspace {raw}: {e}"))?;
    if !canonical.is_dir() {
        return Err(format!("workspace {raw} is not a directory"));
    }
    Ok(Arc::new(canonical))
}

async fn send_handshake<W: AsyncWrite + Unpin>(writer: &mut W, response: HandshakeResponse) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    match timeout(HANDSHAKE_TIMEOUT, write_frame(writer, &bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake reply timed out")),
    }
}

/// Connections that have not finished their handshake, oldest first.
///
/// When they are all taken, the oldest is evicted for a new one, but only once it has had
/// [`PENDING_GRACE`]; until then the accept loop leaves new connections in the kernel's
/// listen queue, in arrival order. So silent connections that reconnect as soon as they are
/// closed can neither hold every slot (each is evicted after its grace) nor churn a real
/// client out before it is read (however busy the machine, it has its grace, and it waits
/// its turn behind at most the connections that came before it), while a silent one still
/// gets [`HANDSHAKE_TIMEOUT`] when nobody is waiting behind it.
#[derive(Default)]
struct Pending {
    waiting: std::sync::Mutex<std::collections::VecDeque<(u64, Instant, tokio::sync::oneshot::Sender<()>)>>,
    /// Signalled when a slot is given back.
    freed: tokio::sync::Notify,
}

impl Pending {
    /// How long the accept loop must wait before it may take one more connection: zero
    /// while a slot is free or the oldest pending connection has had its grace.
    fn admission_wait(&self) -> Duration {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.front() {
            Some((_, since, _)) if waiting.len() >= MAX_PENDING_HANDSHAKES => {
                (*since + PENDING_GRACE).saturating_duration_since(Instant::now())
            }
            _ => Duration::ZERO,
        }
    }

    fn admit(self: &Arc<Self>, id: u64) -> PendingSlot {
        let (evict, evicted) = tokio::sync::oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.len() >= MAX_PENDING_HANDSHAKES
            && let Some((oldest, _, evict)) = waiting.pop_front()
        {
            log::debug!("bridge: {MAX_PENDING_HANDSHAKES} handshakes pending; evicting client#{oldest}");
            let _ = evict.send(());
        }
        waiting.push_back((id, Instant::now(), evict));
        PendingSlot { id, evicted: Some(evicted), pending: Arc::clone(self) }
    }
}

/// A connection's place among the pending handshakes; given back when dropped.
struct PendingSlot {
    id: u64,
    evicted: Option<tokio::sync::oneshot::Receiver<()>>,
    pending: Arc<Pending>,
}

impl PendingSlot {
    /// Completes when a newer connection took this one's place.
    async fn evicted(&mut self) {
        let evicted = match self.evicted.as_mut() {
            Some(evicted) => evicted.await.is_ok(),
            None => false,
        };
        if !evicted {
            // The slot was given back without an eviction: nothing will ever evict it.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.waiting.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _, _)| *id != self.id);
        // A stored permit if the accept loop is not waiting yet: no wake-up is lost.
        self.pending.freed.notify_one();
    }
}

/// What a client said of itself in its handshake, besides its version and workspace.
struct Hello {
    /// Who it acts for (the audit trail names it).
    label: Option<String>,
    /// Whether anyone there answers questions.
    answers_questions: bool,
}

/// The authenticated part of a connection: reader here, writer in its own task.
async fn serve_client(
    context: &Context,
    id: u64,
    mut reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
    write_half: OwnedWriteHalf,
    mut stop: watch::Receiver<bool>,
    workspace: Option<Arc<PathBuf>>,
    hello: Hello,
) {
    let kernel = &context.kernel;
    let _lease = kernel.clients().open(DEFAULT_PRINCIPAL);
    let subscription = kernel.bus().subscribe_as(format!("client#{id}"), SubscriberKind::Client, EGRESS_PATTERNS);
    let subscriber = subscription.id();
    kernel.set_client_workspace(subscriber, workspace.clone());
    kernel.name_client(subscriber, id, hello.label.as_deref());
    kernel.questions().set_answers(subscriber, hello.answers_questions, hello.label.as_deref());
    if let Some(label) = &hello.label {
        log::info!(
            "client#{id}: acts for {label}{}",
            if hello.answers_questions { "" } else { "; answers no questions" }
        );
    }
    let source_id = Uuid::new_v4();
    reader.set_max(MAX_CLIENT_FRAME);
    let (closing, closing_rx) = watch::channel(false);
    let mut writer =
        tokio::spawn(write_loop(id, write_half, subscription, stop.clone(), closing_rx, context.config.drain_timeout));
    // One wait for the stop for the whole connection (see `write_loop`); ready, it ends it.
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    let ended = loop {
        let frame = tokio::select! {
            _ = &mut stopped => break "daemon shutting down",
            _ = &mut writer => break "writer ended",
            frame = reader.next_frame() => frame,
        };
        match frame {
            Ok(Some(frame)) => {
                // Paced: a client that sends faster than its messages are taken waits (its
                // socket fills), as a capsule would; a stop still ends the wait.
                tokio::select! {
                    _ = &mut stopped => break "daemon shutting down",
                    () = ingress(kernel, id, subscriber, source_id, &frame, workspace.clone()) => {}
                }
            }
            Ok(None) => break "client disconnected",
            Err(e) => {
                log::warn!("client#{id}: {e}");
                break "read error";
            }
        }
    };
    closing.send_replace(true);
    if !writer.is_finished() {
        let _ = writer.await;
    }
    kernel.set_client_workspace(subscriber, None);
    kernel.forget_client_name(subscriber);
    let cancelled_calls = kernel.tool_calls().connection_closed(subscriber);
    if cancelled_calls > 0 {
        log::info!("client#{id}: {cancelled_calls} tool call(s) it made were cancelled with the connection");
    }
    let ended_questions = kernel.questions().connection_closed(subscriber);
    if ended_questions > 0 {
        log::info!("client#{id}: {ended_questions} question(s) it was asked ended with the connection");
    }
    let killed = kernel.running_commands().connection_closed(subscriber);
    if killed > 0 {
        log::info!("client#{id}: {killed} command(s) its turns ran were killed with the connection");
    }
    let ended_allowances = kernel.approvals().end_session(subscriber);
    if ended_allowances > 0 {
        log::debug!("client#{id}: {ended_allowances} session allowance(s) ended with the connection");
    }
    log::debug!("client#{id}: connection closed ({ended})");
}

/// Publishes one client frame on the bus (prompts and commands through the kernel's intake),
/// or explains why not. Completes once it is delivered: the client is paced.
async fn ingress(
    kernel: &Kernel,
    id: u64,
    subscriber: SubscriberId,
    source_id: Uuid,
    frame: &[u8],
    workspace: Option<Arc<PathBuf>>,
) {
    match decode_ingress(frame, source_id, DEFAULT_PRINCIPAL) {
        Ok(message) => {
            log::debug!("client#{id}: publishing on {}", message.topic);
            if !message.topic.starts_with(REQUEST_PREFIX) {
                // Anything but a kernel management request may be for a capsule: not
                // published before the boot's capsules have started and subscribed.
                kernel.start_gate().passed().await;
            }
            if prompts::is_input_topic(&message.topic) {
                kernel.accept_input(subscriber, id, message, workspace).await;
            } else {
                let origin = Origin::Client { subscriber, connection: id };
                kernel.bus().publish_paced(BusMessage::from(origin, message)).await;
            }
        }
        Err(refusal) => {
            log::warn!("client#{id}: frame dropped: {}", refusal.reason);
            if let Some(topic) = refusal.topic.as_deref().filter(|t| !ingress_allowed(t)) {
                let actor = Origin::Client { subscriber, connection: id }.actor();
                kernel.record(DEFAULT_PRINCIPAL, actor, "client.publish", topic, Decision::Deny, &refusal.reason);
            }
            // A refused management request still gets an answer; never leave a client waiting.
            if let Some(topic) = refusal.topic.filter(|t| t.starts_with(REQUEST_PREFIX) && topic::validate(t).is_ok()) {
                let requester = Some(Address::Subscriber(subscriber));
                kernel.reply(&response_topic(&topic), KernelResponse::Error(refusal.reason), requester);
            }
        }
    }
}

/// Why a client frame was not published, and its topic when it had a readable one.
#[derive(Debug)]
struct RefusedFrame {
    reason: String,
    topic: Option<String>,
}

impl RefusedFrame {
    fn new(reason: impl Into<String>, topic: Option<&str>) -> Self {
        Self { reason: reason.into(), topic: topic.map(str::to_owned) }
    }
}

/// What [`decode_ingress`] takes from a client frame: its topic, its payload (present, if
/// maybe `null`), and the principal it claims (only ever logged: a connection acts for the
/// principal its handshake established).
#[derive(Debug, PartialEq)]
struct Envelope {
    topic: String,
    payload: Value,
    principal: Option<Value>,
}

/// The fields of a client frame, read without building a tree of the whole frame: the
/// envelope's other keys (`source_id`, `timestamp`, `seq`, `signature`) are skipped, and the
/// topic is borrowed from the frame. Parsing every frame into a `Value` first was the largest
/// part of reading a request.
#[derive(serde::Deserialize)]
struct TypedEnvelope<'a> {
    #[serde(borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
    /// `"payload": null` is a payload that is present (and null), unlike a missing one.
    #[serde(default, deserialize_with = "present")]
    payload: Option<Value>,
    #[serde(default)]
    principal: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

impl Envelope {
    /// The fast reading of a well-formed frame; `None` for anything else (not an object, a
    /// key twice, a topic that is not a string, a field missing), which
    /// [`Envelope::from_value`] then reads, or refuses with the reason.
    fn typed(frame: &[u8]) -> Option<Self> {
        // A struct also deserializes from an array; a frame must be an object.
        if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let typed: TypedEnvelope<'_> = serde_json::from_slice(frame).ok()?;
        Some(Self { topic: typed.topic?.into_owned(), payload: typed.payload?, principal: typed.principal })
    }

    /// The reading of any frame through a JSON tree: the envelope, or why there is none.
    fn from_value(frame: &[u8]) -> Result<Self, RefusedFrame> {
        let mut value: Value =
            serde_json::from_slice(frame).map_err(|e| RefusedFrame::new(format!("frame is not JSON: {e}"), None))?;
        let object = value.as_object_mut().ok_or_else(|| RefusedFrame::new("frame is not a JSON object", None))?;
        let topic = match object.remove("topic") {
            Some(Value::String(topic)) => topic,
            _ => return Err(RefusedFrame::new("frame has no string `topic`", None)),
        };
        let Some(payload) = object.remove("payload") else {
            return Err(RefusedFrame::new("frame has no `payload`", Some(&topic)));
        };
        Ok(Self { topic, payload, principal: object.remove("principal") })
    }
}

/// [`decode_ingress`] for callers outside the bridge (the fuzz targets): the message a client
/// frame becomes, or why it is refused.
pub fn decode_client_frame(frame: &[u8], source_id: Uuid) -> Result<IpcMessage, String> {
    decode_ingress(frame, source_id, DEFAULT_PRINCIPAL).map_err(|refusal| refusal.reason)
}

/// Turns a client frame into a bus message. Only `topic` and `payload` are read; the rest of
/// the client's envelope (`source_id`, `seq`, `principal`, …) is not trusted. The message acts
/// for `principal`, the connection's (every connection of this uid is the home's `default`
/// principal): a client never chooses whose KV, grants or audit trail its request touches.
fn decode_ingress(frame: &[u8], source_id: Uuid, principal: &str) -> Result<IpcMessage, RefusedFrame> {
    let Envelope { topic, payload, principal: claimed } = match Envelope::typed(frame) {
        Some(envelope) => envelope,
        None => Envelope::from_value(frame)?,
    };
    let refuse = |reason: String| RefusedFrame::new(reason, Some(&topic));
    topic::validate(&topic).map_err(|e| refuse(format!("invalid topic {topic:?}: {e}")))?;
    if !ingress_allowed(&topic) {
        return Err(refuse(format!("topic {topic:?} is not open to clients")));
    }
    // The frame bounds the payload; re-serialize only when the frame alone is too big to tell.
    if frame.len() > MAX_PAYLOAD_BYTES {
        let size = serde_json::to_vec(&payload).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_PAYLOAD_BYTES {
            return Err(refuse(format!("payload is {size} bytes, the limit is {MAX_PAYLOAD_BYTES}")));
        }
    }
    if let Some(claimed) = claimed.filter(|p| !p.is_null() && p.as_str() != Some(principal)) {
        log::debug!("ignoring the principal {claimed} a client wrote; the connection acts for {principal}");
    }
    let mut message = IpcMessage::new(topic, IpcPayload::from_json_value(payload), source_id);
    message.principal = Some(principal.to_owned());
    Ok(message)
}

/// Writes bus messages to the client until it goes away, or until the daemon stops, in
/// which case whatever is already queued (such as the reply to `Shutdown`) is flushed first.
///
/// Streamed pieces of an answer that queued up while the client was busy are sent as one
/// frame (consecutive `agent.v1.stream.delta`s of one answerer and session, up to
/// [`MAX_MERGED_DELTA`] bytes): a slow reader gets fewer, larger frames and the same text.
async fn write_loop(
    id: u64,
    mut writer: OwnedWriteHalf,
    mut subscription: Subscription,
    stop: watch::Receiver<bool>,
    mut closing: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let mut held: Option<Arc<BusMessage>> = None;
    let mut frame = FrameBuffer::default();
    // Made once, not per message: each `wait_for` made anew registered with its channel and
    // unregistered again, twice per frame written. Either ends the loop when it is ready.
    // (The stop's on a clone: it is read below while this waits.)
    let mut stop_seen = stop.clone();
    let stopped = stop_seen.wait_for(|s| *s);
    let closed = closing.wait_for(|c| *c);
    tokio::pin!(stopped, closed);
    loop {
        let message = match held.take() {
            Some(message) => message,
            None => {
                // Biased: when the daemon stops, the reader also closes; the stop must win so
                // what is queued (the Shutdown reply among it) is flushed rather than dropped.
                let next = tokio::select! {
                    biased;
                    _ = &mut stopped => Next::Stop,
                    _ = &mut closed => Next::Closing,
                    message = subscription.recv() => Next::Message(message),
                };
                match next {
                    Next::Stop => break,
                    Next::Closing if *stop.borrow() => break,
                    Next::Closing => return,
                    Next::Message(None) => {
                        if subscription.is_cut_off() {
                            log::error!("client#{id}: cut off: it stopped reading what was sent to it");
                        }
                        return;
                    }
                    Next::Message(Some(message)) => message,
                }
            }
        };
        let message = merge_deltas(message, &mut subscription, &mut held);
        if let Err(e) = send(&mut writer, &message, &mut frame).await {
            return log::warn!("client#{id}: write failed: {e}");
        }
    }
    let drained = timeout(drain_timeout, async {
        for message in held.into_iter().chain(std::iter::from_fn(|| subscription.try_recv())) {
            send(&mut writer, &message, &mut frame).await?;
        }
        std::io::Result::Ok(())
    })
    .await;
    if !matches!(drained, Ok(Ok(()))) {
        log::warn!("client#{id}: could not flush queued frames at shutdown");
    }
}

/// Largest text one merged delta frame carries.
pub const MAX_MERGED_DELTA: usize = 64 * 1024;

/// `message`, with the deltas queued right behind it appended when it is a delta; the first
/// queued message that does not fit is left in `held`.
fn merge_deltas(
    message: Arc<BusMessage>,
    queue: &mut Subscription,
    held: &mut Option<Arc<BusMessage>>,
) -> Arc<BusMessage> {
    let piece = |m: &BusMessage| match &m.message.payload {
        IpcPayload::AgentResponse { text, is_final: false, session_id, .. } if m.message.topic == DELTA_TOPIC => {
            Some((text.len(), session_id.clone(), m.message.source_id))
        }
        _ => None,
    };
    let Some((mut length, session, source)) = piece(&message) else { return message };
    let mut merged: Option<BusMessage> = None;
    while length < MAX_MERGED_DELTA {
        let Some(next) = queue.try_recv() else { break };
        match piece(&next) {
            Some((more, next_session, next_source))
                if next_session == session && next_source == source && length + more <= MAX_MERGED_DELTA =>
            {
                let into = merged.get_or_insert_with(|| (*message).clone());
                if let (IpcPayload::AgentResponse { text, .. }, IpcPayload::AgentResponse { text: next_text, .. }) =
                    (&mut into.message.payload, &next.message.payload)
                {
                    text.push_str(next_text);
                }
                length += more;
            }
            _ => {
                *held = Some(next);
                break;
            }
        }
    }
    merged.map_or(message, Arc::new)
}

/// The buffer a connection's frames are built in, kept from one frame to the next: a fresh
/// one grew from nothing to each frame's size (eight reallocations for a `GetStatus` reply).
#[derive(Default)]
struct FrameBuffer(Vec<u8>);

impl FrameBuffer {
    /// Most capacity kept between frames: one large frame (a long answer, a big listing)
    /// does not leave its size held by an idle connection.
    const KEPT: usize = 16 * 1024;

    /// The buffer, emptied, with four bytes of room for the length prefix.
    fn start(&mut self) -> &mut Vec<u8> {
        self.0.clear();
        self.0.extend_from_slice(&[0; 4]);
        &mut self.0
    }

    /// The frame is out: a buffer grown past [`Self::KEPT`] is given back now, not at the
    /// connection's next frame, which may never come.
    fn sent(&mut self) {
        if self.0.capacity() > Self::KEPT {
            self.0 = Vec::new();
        }
    }
}

/// What woke the writer.
enum Next {
    Stop,
    Closing,
    Message(Option<Arc<BusMessage>>),
}

/// Writes one frame. A client that accepts no byte for [`WRITE_TIMEOUT`] is stuck; one that
/// reads slowly is not, however long a large frame takes it.
async fn send(writer: &mut OwnedWriteHalf, message: &BusMessage, frame: &mut FrameBuffer) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    // The frame is built in one buffer: its length is written over the first four bytes.
    let bytes = frame.start();
    EgressFrame::write_json(&message.message, bytes).map_err(std::io::Error::other)?;
    let length = u32::try_from(bytes.len() - 4).map_err(|_| std::io::Error::other("frame too large"))?;
    bytes[..4].copy_from_slice(&length.to_be_bytes());
    // A socket with room takes the frame at once: no timer is armed for the usual write.
    let mut written = match writer.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    while written < bytes.len() {
        match timeout(WRITE_TIMEOUT, writer.write(&bytes[written..])).await {
            Ok(Ok(0)) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the client is gone")),
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client is not reading")),
        }
    }
    frame.sent();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A connection keeps the room of its usual frames, and gives back the room of a large
    /// one as soon as it is sent.
    #[test]
    fn a_frame_buffer_keeps_small_room_and_gives_large_room_back() {
        let mut frame = FrameBuffer::default();
        frame.start().extend_from_slice(&[b'x'; 600]);
        assert_eq!(&frame.0[..5], b"\0\0\0\0x");
        frame.sent();
        let kept = frame.0.capacity();
        assert!(kept >= 604);
        assert_eq!(frame.start().as_slice(), b"\0\0\0\0", "a new frame starts empty but for its prefix");
        assert_eq!(frame.0.capacity(), kept, "the room is reused");
        frame.start().extend_from_slice(&vec![b'y'; FrameBuffer::KEPT + 1]);
        frame.sent();
        assert_eq!(frame.0.capacity(), 0, "a large frame's room is given back once it is out");
    }

    fn decode(value: Value) -> Result<IpcMessage, String> {
        decode_ingress(&serde_json::to_vec(&value).expect("json"), Uuid::nil(), DEFAULT_PRINCIPAL).map_err(|r| r.reason)
    }

    /// The fast reading of a frame agrees with the reading through a JSON tree wherever it
    /// gives an answer, and gives none where the tree refuses the frame or reads it another way.
    #[test]
    fn the_typed_envelope_reads_what_the_json_tree_reads_or_leaves_the_frame_to_it() {
        let frames: &[&str] = &[
            r#"{"topic":"astrid.v1.request.s","payload":{"type":"raw_json","method":"GetStatus"},"signature":null,"source_id":"00000000-0000-0000-0000-000000000000","timestamp":"2026-05-25T12:00:00Z","seq":0}"#,
            r#"  {"payload":null,"topic":"user.v1.prompt"}"#,
            r#"{"topic":"a\u002eb","payload":[1,{"x":"y"}],"principal":"someone"}"#,
            r#"{"topic":"a.b","payload":{},"principal":{"not":"a string"},"extra":[{"deep":[[]]}]}"#,
            r#"{"topic":"a.b","topic":"c.d","payload":1}"#,
            r#"{"topic":"a.b","payload":1,"payload":2}"#,
            r#"{"topic":5,"payload":{}}"#,
            r#"{"topic":"a.b"}"#,
            r#"{"payload":{}}"#,
            r#"["a.b",{}]"#,
            r#"{"topic":"a.b","payload":{}} trailing"#,
            r#"{"topic":"a.b","payload":{"#,
            "",
            "null",
        ];
        for frame in frames {
            let tree = Envelope::from_value(frame.as_bytes()).map_err(|r| r.reason);
            match Envelope::typed(frame.as_bytes()) {
                Some(typed) => assert_eq!(Ok(typed), tree, "{frame}"),
                None => assert!(
                    tree.is_err() || frame.contains(r#""topic":"c.d""#) || frame.contains(r#""payload":2"#),
                    "the fast reading gave up on a plain frame: {frame}"
                ),
            }
        }
        // The last of a duplicated key counts, as it always did (read through the tree).
        let duplicated = br#"{"topic":"a.b","topic":"c.d","payload":1}"#;
        assert!(Envelope::typed(duplicated).is_none());
        assert_eq!(
            decode_ingress(duplicated, Uuid::nil(), DEFAULT_PRINCIPAL).map_err(|r| r.reason).map(|m| m.topic).err(),
            Some("topic \"c.d\" is not open to clients".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_pending_slots_hold_new_connections_back_until_the_oldest_had_its_grace() {
        let pending = Arc::new(Pending::default());
        let mut slots: Vec<PendingSlot> = (0..MAX_PENDING_HANDSHAKES as u64).map(|id| pending.admit(id)).collect();
        // All taken and all fresh: the next connection waits for the oldest one's grace.
        let wait = pending.admission_wait();
        assert!(wait > Duration::ZERO && wait <= PENDING_GRACE, "{wait:?}");
        // A slot given back lets the next one in at once, and says so.
        drop(slots.pop());
        assert_eq!(pending.admission_wait(), Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(60), pending.freed.notified())
            .await
            .expect("a freed slot is signalled");
        // Once the oldest has had its grace, a newcomer evicts it.
        slots.push(pending.admit(1000));
        std::thread::sleep(PENDING_GRACE);
        assert_eq!(pending.admission_wait(), Duration::ZERO);
        let newcomer = pending.admit(1001);
        tokio::time::timeout(Duration::from_secs(60), slots[0].evicted()).await.expect("the oldest is evicted");
        drop(newcomer);
    }

    #[test]
    fn ingress_reads_topic_and_payload_only_and_acts_for_the_connection() {
        let message = decode(json!({
            "topic": "astrid.v1.request.status",
            "payload": {"type": "raw_json", "method": "GetStatus"},
            "source_id": "not even a uuid", "seq": 99, "principal": "alice"
        }))
        .expect("valid");
        assert_eq!(message.payload, IpcPayload::RawJson(json!({"method": "GetStatus"})));
        assert_eq!(message.principal.as_deref(), Some(DEFAULT_PRINCIPAL), "never the principal the client wrote");
        assert_eq!(message.seq, 0);
    }

    #[test]
    fn ingress_refusals_are_explained() {
        assert!(decode(json!({"payload": {}})).expect_err("no topic").contains("topic"));
        assert!(decode(json!({"topic": "user.v1.prompt"})).expect_err("no payload").contains("payload"));
        assert!(
            decode(json!({"topic": "agent.v1.response", "payload": {}})).expect_err("egress only").contains("not open")
        );
        assert!(
            decode(json!({"topic": "astrid.v1.request..x", "payload": {}}))
                .expect_err("empty")
                .contains("empty segment")
        );
        let huge = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        assert!(decode(json!({"topic": "user.v1.prompt", "payload": {"t": huge}})).expect_err("big").contains("limit"));
        let bad = decode(json!({"topic": "user.v1.prompt", "payload": {}, "principal": "alice@evil.example"}));
        assert_eq!(bad.expect("ignored").principal.as_deref(), Some(DEFAULT_PRINCIPAL));
    }
}
