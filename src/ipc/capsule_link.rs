//! The capsule host's end of a capsule-host connection (the protocol is described in
//! [`crate::types::capsule_session`]): attach, then one blocking host call at a time, and, if
//! the capsule fails, the report of why.
//!
//! Blocking std I/O, like the CLI's client: the interpreter calls host functions
//! synchronously on its own thread, and a call is one frame out and one frame back.
//!
//! One exception to "a call is a round trip": the guest's `ipc_recv` reads ahead. The link
//! asks for up to [`READ_AHEAD`] messages at once ([`HostCall::IpcRecvMany`]) and hands
//! them to the guest one `ipc_recv` or `ipc_poll` at a time, so a subscriber with a backlog
//! crosses the socket once per batch instead of once per message. The guest sees the same
//! messages in the same order; unsubscribing forgets what was read ahead, as the daemon
//! forgets what was still queued. A batch holds messages of one cause (the client request
//! they descend from), which is what the instance works for once it takes one; when the
//! guest goes back to a batch after a message from another subscription, the link first
//! tells the daemon ([`HostCall::IpcResume`]), so the instance never acts for the wrong one.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::capsule_session::MAX_SESSION_FRAME;
use super::client::{Client, ClientError};
use super::frame::{BlockingFrames, FrameError, write_frame_blocking};
use crate::home::AstridHome;
use crate::types::CapsuleAttach;
use crate::types::capsule_session::{
    Attached, Blob, CallFrame, CapsuleFailure, HostCall, HostReply, ReplyFrame, SessionRequest, SessionStart,
};
use crate::wasm::host_call::HostBackend;

/// How long the daemon may take to attach (it verifies the capsule's files and hashes them).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one reply: a call may wait two minutes for a person, so a little more.
const REPLY_TIMEOUT: Duration = Duration::from_secs(150);
/// Most messages one `ipc_recv` reads ahead (the daemon also caps a batch at about 1 MiB).
const READ_AHEAD: u32 = 64;

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Connecting, the handshake or the session start failed, or the daemon refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A development capsule requests capabilities the person running it must consent to.
    #[error("{capsule} requests capabilities that need your consent: {}", capabilities.join(", "))]
    ConsentRequired {
        capsule: String,
        /// What it requests.
        capabilities: Vec<String>,
    },
}

/// Why a call could not be exchanged with the daemon: the capsule cannot go on without it.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The call could not be encoded.
    #[error("cannot encode a host call: {0}")]
    Encode(#[source] serde_json::Error),
    /// The call could not be written.
    #[error("cannot reach the daemon: {0}")]
    Send(#[source] io::Error),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// The daemon did not answer in time.
    #[error("no answer from the daemon within {REPLY_TIMEOUT:?}")]
    Timeout,
    /// Reading the answer failed.
    #[error("connection to the daemon failed: {0}")]
    Receive(#[source] FrameError),
    /// The answer is not a reply frame.
    #[error("the daemon sent a malformed reply: {0}")]
    Malformed(#[source] serde_json::Error),
}

/// An attached capsule-host connection; host calls go through it to the daemon.
///
/// A clone is another handle on the same connection: the instance owns one (as its backend)
/// and the capsule host keeps one to report the capsule's failure once the instance is gone.
/// Exchanges stay one at a time, as the protocol wants.
#[derive(Debug, Clone)]
pub struct CapsuleLink {
    connection: Arc<Mutex<Connection>>,
}

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    frames: BlockingFrames,
    next_id: u64,
    /// Messages read ahead per subscription handle, oldest first.
    read_ahead: HashMap<i32, VecDeque<Blob>>,
    /// The handle of the last message the daemon handed out: the instance works for that
    /// message's cause as far as the daemon knows.
    current: Option<i32>,
}

impl CapsuleLink {
    /// Connects to the daemon of `home`, attaches as `attach` says, and returns the link and
    /// what to run. A refusal is [`ClientError::Rejected`] with the daemon's reason.
    pub fn attach(home: &AstridHome, attach: CapsuleAttach) -> Result<(Self, Attached), AttachError> {
        let (mut stream, mut frames) = Client::connect_as(home, Some(attach))?.into_parts();
        stream.set_read_timeout(Some(ATTACH_TIMEOUT)).map_err(ClientError::Io)?;
        let frame =
            frames.next_frame(&mut stream, MAX_SESSION_FRAME).map_err(ClientError::from)?.ok_or(ClientError::Closed)?;
        let start: SessionStart =
            serde_json::from_slice(&frame).map_err(|e| ClientError::Protocol(format!("bad session start: {e}")))?;
        let attached = match start {
            SessionStart::Attached(attached) => attached,
            SessionStart::Refused { reason } => return Err(ClientError::Rejected(reason).into()),
            SessionStart::ConsentRequired { capsule, capabilities } => {
                return Err(AttachError::ConsentRequired { capsule, capabilities });
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(ClientError::Io)?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(ClientError::Io)?;
        let connection = Connection { stream, frames, next_id: 0, read_ahead: HashMap::new(), current: None };
        Ok((Self { connection: Arc::new(Mutex::new(connection)) }, attached))
    }

    /// Tells the daemon why the capsule failed, and waits until it has recorded it: the
    /// daemon then knows the reason before it sees this process end.
    pub fn report_failure(&self, failure: CapsuleFailure) -> Result<(), LinkError> {
        self.exchange(SessionRequest::Failed(failure)).map(drop)
    }

    fn exchange(&self, request: SessionRequest) -> Result<HostReply, LinkError> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection.exchange(request)
    }

    /// The guest's `ipc_recv` (`wait` set) or `ipc_poll` on `handle`: the next message read
    /// ahead, or else the daemon's answer, with whatever it read ahead kept for the next ones.
    fn receive(&self, handle: i32, wait: Option<i32>) -> Result<HostReply, LinkError> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(message) = connection.read_ahead.get_mut(&handle).and_then(VecDeque::pop_front) {
            if connection.current != Some(handle) {
                // The guest took a message from another subscription since: the daemon
                // must work for this batch's cause again before the guest acts on it.
                match connection.exchange(SessionRequest::Call(HostCall::IpcResume { handle }))? {
                    HostReply::Value(0) => connection.current = Some(handle),
                    HostReply::Trap(reason) => return Ok(HostReply::Trap(reason)),
                    other => return Ok(HostReply::Trap(format!("the daemon refused to resume a batch: {other:?}"))),
                }
            }
            return Ok(HostReply::Bytes(message));
        }
        let call = match wait {
            Some(timeout_ms) => HostCall::IpcRecvMany { handle, timeout_ms, max: READ_AHEAD },
            // A poll stays a poll: its answers (a closed subscription reads as empty) are its own.
            None => HostCall::IpcPoll { handle },
        };
        match connection.exchange(SessionRequest::Call(call))? {
            HostReply::Messages(messages) => {
                let mut messages = VecDeque::from(messages);
                let Some(first) = messages.pop_front() else {
                    return Ok(HostReply::Trap("the daemon read ahead an empty batch".to_owned()));
                };
                if !messages.is_empty() {
                    connection.read_ahead.insert(handle, messages);
                }
                connection.current = Some(handle);
                Ok(HostReply::Bytes(first))
            }
            HostReply::Bytes(message) => {
                connection.current = Some(handle);
                Ok(HostReply::Bytes(message))
            }
            other => Ok(other),
        }
    }
}

impl Connection {
    fn exchange(&mut self, request: SessionRequest) -> Result<HostReply, LinkError> {
        let Connection { stream, frames, next_id, .. } = self;
        *next_id += 1;
        let id = *next_id;
        let frame = serde_json::to_vec(&CallFrame { id, request }).map_err(LinkError::Encode)?;
        write_frame_blocking(stream, &frame).map_err(LinkError::Send)?;
        loop {
            let frame = match frames.next_frame(stream, MAX_SESSION_FRAME) {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(FrameError::Truncated { .. }) => return Err(LinkError::Closed),
                Err(FrameError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(LinkError::Timeout);
                }
                Err(e) => return Err(LinkError::Receive(e)),
            };
            let reply: ReplyFrame = serde_json::from_slice(&frame).map_err(LinkError::Malformed)?;
            if reply.id == id {
                return Ok(reply.reply);
            }
            log::warn!("ignoring the daemon's reply to call {} (waiting for {id})", reply.id);
        }
    }
}

impl HostBackend for CapsuleLink {
    /// A lost or broken connection is a trap: the capsule cannot go on without its kernel.
    fn call(&mut self, call: HostCall) -> HostReply {
        let reply = match call {
            HostCall::IpcRecv { handle, timeout_ms } => self.receive(handle, Some(timeout_ms)),
            HostCall::IpcPoll { handle } => self.receive(handle, None),
            HostCall::IpcUnsubscribe { handle } => {
                let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
                connection.read_ahead.remove(&handle);
                connection.exchange(SessionRequest::Call(call))
            }
            call => self.exchange(SessionRequest::Call(call)),
        };
        reply.unwrap_or_else(|e| HostReply::Trap(e.to_string()))
    }
}
