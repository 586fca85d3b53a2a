//! The seam between a guest's memory and everything the kernel does for it.
//!
//! Every gated host function is split in two. The *guest side* (the linker closures in
//! `host_*.rs`) only copies arguments out of guest memory, within their size limits, into a
//! [`HostCall`], and copies the [`HostReply`] back in. The *kernel side*
//! ([`super::context::CapsuleContext`]) decides and acts: capability checks, audit, KV, VFS,
//! bus, HTTP, secrets.
//!
//! In the daemon both sides share a thread and the call is a plain function call. In a
//! capsule-host process the guest side runs there and the call crosses the socket
//! ([`crate::ipc::capsule_link`]) to a context the daemon keeps for that capsule, so the
//! process running untrusted code holds no secret, no store and no file handle: it reaches
//! the kernel only through the daemon, which applies the same checks in the same code.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes copied out of (or into) guest memory; base64 when a call crosses the socket.
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
/// out of guest memory. Variants mirror the `astrid` imports (see `docs/capsule-abi.md`),
/// plus the few steps the capsule runner itself asks for (`lifecycle_done`, `next_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum HostCall {
    /// A line for the daemon log.
    Log { line: Blob },
    /// The guest is ready to serve.
    SignalReady,
    /// One `[env]` value.
    GetConfig { key: Blob },
    /// Whether an `[env]` value is set.
    HasConfig { key: Blob },
    /// `{action, resource}`: ask a person.
    RequestApproval { request: Blob },
    /// `{key, description?}`: ask a person for a declared value. `in_lifecycle` says whether
    /// the guest is inside its install or upgrade hook, the only time this is allowed.
    Elicit { request: Blob, in_lifecycle: bool },
    /// KV read.
    KvGet { key: Blob },
    /// KV write.
    KvSet { key: Blob, value: Blob },
    /// KV delete.
    KvDelete { key: Blob },
    /// KV keys under a prefix.
    KvListKeys { prefix: Blob },
    /// KV delete under a prefix.
    KvClearPrefix { prefix: Blob },
    /// KV compare-and-swap; `None` is "absent".
    KvCas { key: Blob, expected: Option<Blob>, new: Option<Blob> },
    /// Bus publish.
    IpcPublish { topic: Blob, payload: Blob },
    /// Bus subscribe.
    IpcSubscribe { pattern: Blob },
    /// Wait for a message.
    IpcRecv { handle: i32, timeout_ms: i32 },
    /// Take a queued message, if any.
    IpcPoll { handle: i32 },
    /// Drop a subscription.
    IpcUnsubscribe { handle: i32 },
    /// Workspace read.
    FsRead { path: Blob },
    /// Workspace write (into the overlay).
    FsWrite { path: Blob, data: Blob },
    /// Whether a path exists.
    FsExists { path: Blob },
    /// `{is_dir, is_file, size}`.
    FsStat { path: Blob },
    /// Directory entries.
    FsReaddir { path: Blob },
    /// Create a directory.
    FsMkdir { path: Blob },
    /// Remove a file.
    FsUnlink { path: Blob },
    /// One HTTP exchange.
    HttpRequest { request: Blob, body: Blob },
    /// An HTTP exchange whose body is read in chunks (waits for the head).
    HttpStreamStart { request: Blob, body: Blob },
    /// An HTTP exchange started on a thread of its own: a handle at once.
    HttpStreamOpen { request: Blob, body: Blob },
    /// `http_stream_head`: the response head, or `Pending` after `timeout_ms`.
    HttpStreamHead { handle: i32, timeout_ms: u32 },
    /// The next chunk of a response body.
    HttpStreamRead { handle: i32 },
    /// `http_stream_wait`: the next chunk, or `Pending` after `timeout_ms`.
    HttpStreamWait { handle: i32, timeout_ms: u32 },
    /// Close a response stream.
    HttpStreamClose { handle: i32 },
    /// The runner is past the install or upgrade hook `hook` (`ran`: the guest exports it):
    /// record it so it is not due again.
    LifecycleDone { hook: String, ran: bool },
    /// The runner waits for the next event on the capsule's interceptor bindings (the first
    /// call subscribes them): `[u32 BE topic length][topic][payload]`, or a negative status.
    NextEvent { timeout_ms: u32 },
}

impl HostCall {
    /// Whether the guest is waiting for input (a run loop's budget starts afresh after it).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Self::IpcRecv { .. }
                | Self::IpcPoll { .. }
                | Self::HttpStreamHead { .. }
                | Self::HttpStreamRead { .. }
                | Self::HttpStreamWait { .. }
        )
    }

    /// Whether the call may block on something outside the guest (a person, the network, the
    /// bus, a reader the bus paces a publish for): its time is not charged to the call's CPU deadline.
    pub fn blocks(&self) -> bool {
        matches!(
            self,
            Self::IpcRecv { .. }
                | Self::IpcPublish { .. }
                | Self::RequestApproval { .. }
                | Self::Elicit { .. }
                | Self::HttpRequest { .. }
                | Self::HttpStreamStart { .. }
                | Self::HttpStreamHead { .. }
                | Self::HttpStreamRead { .. }
                | Self::HttpStreamWait { .. }
                | Self::NextEvent { .. }
        )
    }
}

/// The kernel side's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum HostReply {
    /// Returned to the guest as is: a status (negative) or a small result.
    Value(i64),
    /// Copied into a buffer from the guest's allocator; the guest gets `(ptr << 32) | len`.
    Bytes(Blob),
    /// The guest misused the ABI (or the host cannot go on): the call traps.
    Trap(String),
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

/// Where a guest's host calls go: a [`super::context::CapsuleContext`] in this process, or
/// the daemon over the socket.
pub trait HostBackend: Send + std::fmt::Debug {
    /// Performs one call. Never panics on what the guest sent: refusals are values.
    fn call(&mut self, call: HostCall) -> HostReply;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_replies_cross_the_socket_as_tagged_json_with_base64_bytes() {
        let call = HostCall::KvCas { key: Blob(b"k".to_vec()), expected: None, new: Some(Blob(vec![0, 255])) };
        let json = serde_json::to_value(&call).expect("json");
        assert_eq!(json, serde_json::json!({"fn": "kv_cas", "key": "aw==", "expected": null, "new": "AP8="}));
        assert_eq!(serde_json::from_value::<HostCall>(json).expect("back"), call);
        let reply = HostReply::bytes(vec![1, 2, 3]);
        let json = serde_json::to_value(&reply).expect("json");
        assert_eq!(json, serde_json::json!({"reply": "bytes", "value": "AQID"}));
        assert_eq!(serde_json::from_value::<HostReply>(json).expect("back"), reply);
        assert!(serde_json::from_value::<HostCall>(serde_json::json!({"fn": "kv_get", "key": "%%"})).is_err());
        assert!(serde_json::from_value::<HostCall>(serde_json::json!({"fn": "spawn_shell"})).is_err());
    }
}
