//! The serve process's connection to the daemon, held for the whole MCP session (so an
//! ephemeral daemon it started stays up), and made again when the daemon restarts under it.
//!
//! One connection carries concurrent requests: each management request gets a topic suffix of
//! its own (`call_tool.17`), the kernel answers on the matching response topic, and the reader
//! task hands each reply to the request that waits for it. What else the daemon sends this
//! connection (the approval questions its calls cause, their commands' output, news that the
//! tools changed) goes out as [`Event`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::spawn;
use crate::home::AstridHome;
use crate::ipc::ClientError;
use crate::ipc::async_client::{self, Frames, Hello, Sender};
use crate::types::commands::CommandOutput;
use crate::types::topics::{APPROVAL_TOPIC, CAPSULES_LOADED_TOPIC, COMMAND_OUTPUT_TOPIC, RESPONSE_PREFIX};
use crate::types::{EgressFrame, IpcPayload, KernelRequest, KernelResponse};

/// How long a request waits for a connection while the daemon is being reconnected to.
const RECONNECT_WAIT: Duration = Duration::from_secs(15);
/// How long the handshake may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// How often a lost daemon is looked for again.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long a lost daemon is waited for before this process starts one of its own.
const START_AFTER: Duration = Duration::from_secs(3);

/// Something the daemon told this connection besides replies.
#[derive(Debug)]
pub enum Event {
    /// A person is asked to allow something (one of this connection's calls, or anything
    /// asked of every frontend).
    Approval {
        /// Where the answer goes: `astrid.v1.approval.response.<id>`.
        request_id: String,
        /// What is asked.
        question: crate::cli::turn::Question,
    },
    /// A piece of a running command's output.
    CommandOutput(CommandOutput),
    /// The capsules or MCP servers changed: the tools may have.
    ToolsChanged,
    /// The connection was made again (the daemon restarted).
    Reconnected,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No daemon to talk to.
    #[error("the Astrid daemon is not reachable: {0}")]
    Unreachable(String),
    /// The connection was lost before the reply.
    #[error("the connection to the Astrid daemon was lost before it answered")]
    Lost,
    /// No reply in time.
    #[error("the Astrid daemon did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// Socket or protocol failure.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The connection (cheap to clone).
#[derive(Debug, Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    home: AstridHome,
    hello: Hello,
    sender: tokio::sync::Mutex<Option<Sender>>,
    /// Requests waiting for their reply, by reply topic.
    pending: Mutex<HashMap<String, oneshot::Sender<KernelResponse>>>,
    next: AtomicU64,
    /// Counts connections made; `None` while there is none.
    connected: watch::Sender<Option<u64>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Link {
    /// Connects (the daemon must be up: the caller made sure of it) and starts reading.
    pub async fn open(home: AstridHome, hello: Hello) -> Result<(Self, mpsc::UnboundedReceiver<Event>), LinkError> {
        let (sender, frames) = async_client::connect(&home, &hello, HANDSHAKE_WAIT).await?;
        let (events, received) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            home,
            hello,
            sender: tokio::sync::Mutex::new(Some(sender)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            connected: watch::channel(Some(1)).0,
            events,
        });
        tokio::spawn(read(Arc::clone(&inner), frames));
        Ok((Self { inner }, received))
    }

    /// Sends `request` under a suffix of its own made from `kind` and waits up to `wait` for
    /// the reply (waiting first, bounded, for a connection if the daemon is being reconnected to).
    pub async fn request(
        &self,
        kind: &str,
        request: &KernelRequest,
        wait: Duration,
    ) -> Result<KernelResponse, LinkError> {
        self.connected().await?;
        let suffix = format!("{kind}.{}", self.inner.next.fetch_add(1, Ordering::Relaxed));
        let (reply, replied) = oneshot::channel();
        let topic = format!("{RESPONSE_PREFIX}{suffix}");
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.clone(), reply);
        let _forget = Forget { inner: &self.inner, topic };
        {
            let mut sender = self.inner.sender.lock().await;
            let Some(sender) = sender.as_mut() else { return Err(LinkError::Lost) };
            sender.request(&suffix, request).await?;
        }
        match tokio::time::timeout(wait, replied).await {
            Err(_) => Err(LinkError::Timeout(wait)),
            Ok(Err(_)) => Err(LinkError::Lost),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Publishes `payload` on `topic` (an answer to a question).
    pub async fn publish(&self, topic: &str, payload: IpcPayload) -> Result<(), LinkError> {
        let mut sender = self.inner.sender.lock().await;
        let Some(sender) = sender.as_mut() else { return Err(LinkError::Lost) };
        Ok(sender.publish(topic, payload).await?)
    }

    async fn connected(&self) -> Result<(), LinkError> {
        let mut connected = self.inner.connected.subscribe();
        match tokio::time::timeout(RECONNECT_WAIT, connected.wait_for(Option::is_some)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LinkError::Unreachable(format!("no daemon came back within {} s", RECONNECT_WAIT.as_secs()))),
        }
    }
}

/// Forgets a waiting request however its wait ends.
struct Forget<'a> {
    inner: &'a Inner,
    topic: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.topic);
    }
}

/// Reads frames until the connection ends, then connects again, for as long as anyone holds
/// the link.
async fn read(inner: Arc<Inner>, mut frames: Frames) {
    loop {
        loop {
            match frames.next().await {
                Ok(Some(frame)) => dispatch(&inner, frame),
                Ok(None) => break,
                Err(e) => {
                    log::warn!("astrid mcp serve: reading from the daemon failed: {e}");
                    break;
                }
            }
        }
        inner.connected.send_replace(None);
        *inner.sender.lock().await = None;
        // Every request in flight is lost with the connection: their waits end now.
        inner.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        log::warn!("astrid mcp serve: lost the daemon; reconnecting");
        let Some((sender, more)) = reconnect(&inner).await else { return };
        *inner.sender.lock().await = Some(sender);
        frames = more;
        inner.connected.send_modify(|generation| *generation = Some(generation.unwrap_or(0) + 1));
        let _ = inner.events.send(Event::Reconnected);
    }
}

/// Connects again: to the daemon that comes back, or, after [`START_AFTER`] without one,
/// to an ephemeral daemon this process starts (as when it started). `None` once nobody
/// listens for events any more (the server is gone).
async fn reconnect(inner: &Arc<Inner>) -> Option<(Sender, Frames)> {
    let lost = tokio::time::Instant::now();
    loop {
        if inner.events.is_closed() {
            return None;
        }
        if lost.elapsed() >= START_AFTER {
            let (home, workspace) = (inner.home.clone(), inner.hello.workspace.clone());
            let started = tokio::task::spawn_blocking(move || match workspace {
                Some(workspace) => spawn::ensure_daemon_in(&home, &workspace),
                None => spawn::ensure_daemon(&home),
            })
            .await;
            if let Ok(Err(e)) = started {
                log::warn!("astrid mcp serve: cannot start a daemon: {e:#}");
            }
        }
        match async_client::connect(&inner.home, &inner.hello, HANDSHAKE_WAIT).await {
            Ok(connection) => {
                log::info!("astrid mcp serve: reconnected to the daemon");
                return Some(connection);
            }
            Err(_) => tokio::time::sleep(RETRY_EVERY).await,
        }
    }
}

fn dispatch(inner: &Inner, frame: EgressFrame) {
    if frame.topic.starts_with(RESPONSE_PREFIX) {
        let waiting = inner.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&frame.topic);
        if let Some(waiting) = waiting {
            match serde_json::from_value::<KernelResponse>(frame.payload) {
                Ok(reply) => {
                    let _ = waiting.send(reply);
                }
                Err(e) => log::warn!("astrid mcp serve: a reply on {} is not a KernelResponse: {e}", frame.topic),
            }
        }
        return;
    }
    let event = match (frame.topic.as_str(), IpcPayload::from_json_value(frame.payload)) {
        (APPROVAL_TOPIC, IpcPayload::ApprovalRequired { request_id, action, resource, reason, details, scope }) => {
            Event::Approval {
                request_id,
                question: crate::cli::turn::Question { action, resource, reason, details, scope },
            }
        }
        (COMMAND_OUTPUT_TOPIC, IpcPayload::Custom { data }) => match serde_json::from_value(data) {
            Ok(output) => Event::CommandOutput(output),
            Err(_) => return,
        },
        (CAPSULES_LOADED_TOPIC, _) => Event::ToolsChanged,
        _ => return,
    };
    let _ = inner.events.send(event);
}
