//! The frames of a capsule-host session: a capsule running in a process of its own, its
//! host calls decided by the daemon.
//!
//! After its handshake (which names the capsule, [`super::CapsuleAttach`]) a capsule host
//! receives one [`SessionStart`]. From then on it sends [`CallFrame`]s, strictly one at a
//! time, and the daemon answers each with the [`ReplyFrame`] of the same id:
//!
//! ```text
//! host   → daemon  {"id": 7, "call": {"fn": "kv_get", "key": "<base64>"}}
//! daemon → host    {"id": 7, "reply": {"reply": "bytes", "value": "<base64>"}}
//! host   → daemon  {"id": 8, "failed": {"stage": "guest", "reason": "…"}}
//! daemon → host    {"id": 8, "reply": {"reply": "value", "value": 0}}
//! ```
//!
//! The last two frames end a capsule that failed: its process says why before it exits, and
//! waits for the answer, so the daemon has the reason by the time it sees the process end.
//!
//! These are wire types like the others in this module: the daemon and the capsule host
//! are the same binary today, but the shapes are pinned by `tests/data/session-vectors.jsonl`
//! so that neither end can change them alone.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes copied out of (or into) guest memory; base64 when a call crosses the socket, because
/// keys, values, files and bodies are arbitrary bytes inside JSON frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map(Blob).map_err(serde::de::Error::custom)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// One request from the guest side to the kernel side, with its arguments already copied
/// out of guest memory. Each variant but the runner's own steps (`lifecycle_done`,
/// `next_event`) is one host function of the `astrid` import module, under the same name
/// (see `docs/capsule-abi.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum HostCall {
    /// A line for the daemon log.
    Log {
        /// The line as the guest wrote it (not necessarily UTF-8).
        line: Blob,
    },
    /// The guest is ready to serve.
    SignalReady,
    /// One `[env]` value.
    GetConfig {
        /// The key as declared in the capsule's `[env]`.
        key: Blob,
    },
    /// Whether an `[env]` value is set, without handing it over.
    HasConfig {
        /// The key as declared in the capsule's `[env]`.
        key: Blob,
    },
    /// Ask a person.
    RequestApproval {
        /// `{action, resource}` as JSON.
        request: Blob,
    },
    /// Ask a person for a declared `[env]` value.
    Elicit {
        /// `{key, description?}` as JSON. Allowed only while the install or upgrade hook the
        /// daemon planned is due and the module exports it: the daemon knows both itself.
        request: Blob,
    },
    /// KV read.
    KvGet {
        /// The key, in the capsule's own namespace.
        key: Blob,
    },
    /// KV write.
    KvSet {
        /// The key, in the capsule's own namespace.
        key: Blob,
        /// The value, any bytes (the store's limit applies).
        value: Blob,
    },
    /// KV delete: the reply says whether there was anything to delete.
    KvDelete {
        /// The key, in the capsule's own namespace.
        key: Blob,
    },
    /// KV keys under a prefix.
    KvListKeys {
        /// The prefix, raw bytes (empty: every key).
        prefix: Blob,
    },
    /// KV delete under a prefix.
    KvClearPrefix {
        /// The prefix, raw bytes (empty: every key).
        prefix: Blob,
    },
    /// KV compare-and-swap.
    KvCas {
        /// The key, in the capsule's own namespace.
        key: Blob,
        /// The value the key must hold for the swap; `None` is "absent".
        expected: Option<Blob>,
        /// The value to store; `None` deletes.
        new: Option<Blob>,
    },
    /// Bus publish.
    IpcPublish {
        /// The topic as the guest wrote it; the kernel validates it and checks the grant.
        topic: Blob,
        /// The payload, JSON.
        payload: Blob,
    },
    /// Bus subscribe.
    IpcSubscribe {
        /// The topic pattern.
        pattern: Blob,
    },
    /// Wait for a message.
    IpcRecv {
        /// The subscription.
        handle: i32,
        /// How long to wait, as the guest asked (the host caps it).
        timeout_ms: i32,
    },
    /// Take a queued message, if any.
    IpcPoll {
        /// The subscription.
        handle: i32,
    },
    /// Drop a subscription.
    IpcUnsubscribe {
        /// The subscription.
        handle: i32,
    },
    /// Workspace read.
    FsRead {
        /// The workspace path.
        path: Blob,
    },
    /// Workspace write (into the overlay).
    FsWrite {
        /// The workspace path.
        path: Blob,
        /// The new content.
        data: Blob,
    },
    /// Whether a path exists.
    FsExists {
        /// The workspace path.
        path: Blob,
    },
    /// `{is_dir, is_file, size}`.
    FsStat {
        /// The workspace path.
        path: Blob,
    },
    /// Directory entries.
    FsReaddir {
        /// The workspace path.
        path: Blob,
    },
    /// Create a directory.
    FsMkdir {
        /// The workspace path.
        path: Blob,
    },
    /// Remove a file.
    FsUnlink {
        /// The workspace path.
        path: Blob,
    },
    /// One HTTP exchange.
    HttpRequest {
        /// `{method, url, headers, …}` as JSON.
        request: Blob,
        /// The request body.
        body: Blob,
    },
    /// An HTTP exchange whose body is read in chunks (waits for the head).
    HttpStreamStart {
        /// `{method, url, headers, …}` as JSON.
        request: Blob,
        /// The request body.
        body: Blob,
    },
    /// An HTTP exchange started on a thread of its own: a handle at once.
    HttpStreamOpen {
        /// `{method, url, headers, …}` as JSON.
        request: Blob,
        /// The request body.
        body: Blob,
    },
    /// `http_stream_head`: the response head, or `Pending` after the timeout.
    HttpStreamHead {
        /// The stream.
        handle: i32,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// The next chunk of a response body.
    HttpStreamRead {
        /// The stream.
        handle: i32,
    },
    /// `http_stream_wait`: the next chunk, or `Pending` after the timeout.
    HttpStreamWait {
        /// The stream.
        handle: i32,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// Close a response stream.
    HttpStreamClose {
        /// The stream.
        handle: i32,
    },
    /// Run a command in the sandbox (asks the person first).
    ProcessSpawn {
        /// A [`CommandSpawn`](super::commands::CommandSpawn) as JSON.
        request: Blob,
    },
    /// `process_read`: the next piece of a command's output, or `Pending` after the timeout.
    ProcessRead {
        /// The command.
        handle: i32,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// `process_wait`: how the command ended, or `Pending` after the timeout.
    ProcessWait {
        /// The command.
        handle: i32,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// Kill a command and everything it started.
    ProcessKill {
        /// The command.
        handle: i32,
    },
    /// The runner is past an install or upgrade hook: recorded so it is not due again.
    LifecycleDone {
        /// `astrid_install` or `astrid_upgrade`: it must be the hook the daemon planned.
        /// Whether it ran is the daemon's own reading of the module's exports.
        hook: String,
    },
    /// The runner waits for the next event on the capsule's interceptor bindings (the first
    /// call subscribes them): `[u32 BE topic length][topic][payload]`, or a negative status.
    NextEvent {
        /// How long to wait.
        timeout_ms: u32,
    },
    /// A capsule host reading ahead on a subscription: `ipc_recv` (or, with a zero timeout,
    /// `ipc_poll`) that may return more than one message, as [`HostReply::Messages`]. The
    /// host serves the guest's next `ipc_recv`/`ipc_poll` on that handle from what it holds,
    /// so a reader with a backlog takes it a batch per round trip. Never a guest import.
    IpcRecvMany {
        /// The subscription.
        handle: i32,
        /// How long to wait for the first message, as the guest asked (the daemon caps it).
        timeout_ms: i32,
        /// At most this many messages (the daemon caps it too).
        max: u32,
    },
    /// A capsule host hands the guest a message it read ahead on `handle` after the guest
    /// took one from another subscription: what the instance does next is again for that
    /// batch's cause. Never a guest import.
    IpcResume {
        /// The subscription whose batch the guest is back on.
        handle: i32,
    },
}

/// The kernel side's answer to a [`HostCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum HostReply {
    /// Returned to the guest as is: a status (negative) or a small result.
    Value(i64),
    /// Copied into a buffer from the guest's allocator; the guest gets `(ptr << 32) | len`.
    Bytes(Blob),
    /// The guest misused the ABI (or the host cannot go on): the call traps.
    Trap(String),
    /// The answer to [`HostCall::IpcRecvMany`]: messages in the order they were queued, as
    /// `ipc_recv` renders each; never empty (none is a status [`HostReply::Value`]).
    Messages(Vec<Blob>),
}

impl HostReply {
    /// A status or small result.
    pub fn value(value: impl Into<i64>) -> Self {
        Self::Value(value.into())
    }

    /// Bytes for the guest.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(Blob(bytes.into()))
    }
}

/// Limits for one capsule instance and each call into it: the daemon decides them and sends
/// them to a capsule-host process, which applies them to the instance it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLimits {
    /// Ceiling, in bytes, of the instance's linear memory and its table together (a table
    /// element counts 8 bytes).
    pub memory_bytes: usize,
    /// Fuel per call, in total (roughly one unit per executed instruction).
    pub fuel_per_call: u64,
    /// Fuel granted between two clock checks.
    pub fuel_slice: u64,
    /// Wall-clock time a call may take.
    pub deadline: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            fuel_per_call: 10_000_000_000,
            fuel_slice: 1_000_000,
            deadline: Duration::from_secs(30),
        }
    }
}

/// One interceptor binding the grant allowed: events on `event` go to the hook entry as
/// `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Topic pattern (ACL semantics: `*` is one segment).
    pub event: String,
    /// The action name passed to the guest.
    pub action: String,
}

/// What the interpreter's half must do with an instance: decided by the daemon (which alone
/// knows the install record and the grant), carried out wherever the guest runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `astrid_install` or `astrid_upgrade` when one is due.
    pub lifecycle_hook: Option<String>,
    /// Interceptor bindings in priority order (lower first).
    pub bindings: Vec<Binding>,
}

/// The daemon's first frame on a capsule-host connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStart {
    /// Serve this capsule.
    Attached(Attached),
    /// Not attached; the connection closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// A development capsule requests capabilities: attach again with `approve` once the
    /// person running it consented.
    ConsentRequired {
        /// The development capsule's name, from its manifest.
        capsule: String,
        /// What it requests.
        capabilities: Vec<String>,
    },
}

/// What a capsule host needs to run its capsule, and nothing more (no secret, no store, no
/// file of the home: those stay with the daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The capsule's name.
    pub capsule: String,
    /// The module, as the daemon verified it against its pin.
    pub module: Blob,
    /// The limits to apply to the instance and each call.
    pub limits: SandboxLimits,
    /// Lifecycle hook and interceptor bindings.
    pub plan: Plan,
}

/// A frame the capsule host sends; the daemon answers it with the [`ReplyFrame`] of its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFrame {
    /// Chosen by the capsule host; echoed in the reply.
    pub id: u64,
    /// What the capsule host asks.
    #[serde(flatten)]
    pub request: SessionRequest,
}

/// What a [`CallFrame`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionRequest {
    /// A host call of the guest (or of the runner).
    Call(HostCall),
    /// The capsule failed and the process is about to end: why, sent before it exits so the
    /// daemon records a typed reason rather than reading the process's output. Answered
    /// once recorded.
    Failed(CapsuleFailure),
}

/// The answer to one [`CallFrame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyFrame {
    /// The call's id.
    pub id: u64,
    /// The answer.
    pub reply: HostReply,
}

/// Why a capsule running in a capsule-host process failed. The reason texts come from the
/// interpreter, which is host-only; the stage is what the daemon can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum CapsuleFailure {
    /// The module the daemon sent could not be compiled or instantiated in the process.
    #[error("{reason}")]
    Load {
        /// What the interpreter said.
        reason: String,
    },
    /// The install or upgrade hook failed (it is due again on the next start).
    #[error("{hook} failed: {reason}")]
    LifecycleHook {
        /// `astrid_install` or `astrid_upgrade`.
        hook: String,
        /// What the interpreter said.
        reason: String,
    },
    /// The guest failed while it served: it trapped, ran out of fuel or time, or returned
    /// what the ABI does not allow.
    #[error("{reason}")]
    Guest {
        /// What the interpreter said.
        reason: String,
    },
    /// The daemon's side ended it: a step of the runner was answered with a trap (the
    /// connection was lost, a record could not be written, an event was malformed).
    #[error("{reason}")]
    Host {
        /// The trap's message.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_is_not_one_of_the_host_functions_or_carries_bad_bytes_is_refused() {
        assert!(serde_json::from_value::<HostCall>(serde_json::json!({"fn": "spawn_shell"})).is_err());
        assert!(serde_json::from_value::<HostCall>(serde_json::json!({"fn": "kv_get", "key": "%%"})).is_err());
        let call = HostCall::KvCas { key: Blob(b"k".to_vec()), expected: None, new: Some(Blob(vec![0, 255])) };
        let json = serde_json::to_value(&call).expect("json");
        assert_eq!(json, serde_json::json!({"fn": "kv_cas", "key": "aw==", "expected": null, "new": "AP8="}));
    }
}
