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
//!
//! Calls and replies are wire types ([`crate::types::capsule_session`]); what a call means to
//! the host's clock (whether it waits for input, whether it may block) is decided here.

pub use crate::types::capsule_session::{Blob, HostCall, HostReply};

impl HostCall {
    /// Whether the guest is waiting for input (a run loop's budget starts afresh after it).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Self::IpcRecv { .. }
                | Self::IpcPoll { .. }
                | Self::IpcRecvMany { .. }
                | Self::HttpStreamHead { .. }
                | Self::HttpStreamRead { .. }
                | Self::HttpStreamWait { .. }
                | Self::ProcessRead { .. }
                | Self::ProcessWait { .. }
        )
    }

    /// Whether the call may block on something outside the guest (a person, the network, the
    /// bus, a reader the bus paces a publish for): its time is not charged to the call's CPU deadline.
    pub fn blocks(&self) -> bool {
        matches!(
            self,
            Self::IpcRecv { .. }
                | Self::IpcRecvMany { .. }
                | Self::IpcPublish { .. }
                | Self::RequestApproval { .. }
                | Self::Elicit { .. }
                | Self::HttpRequest { .. }
                | Self::HttpStreamStart { .. }
                | Self::HttpStreamHead { .. }
                | Self::HttpStreamRead { .. }
                | Self::HttpStreamWait { .. }
                | Self::NextEvent { .. }
                | Self::ProcessSpawn { .. }
                | Self::ProcessRead { .. }
                | Self::ProcessWait { .. }
        )
    }
}

/// Where a guest's host calls go: a [`super::context::CapsuleContext`] in this process, or
/// the daemon over the socket.
pub trait HostBackend: Send + std::fmt::Debug {
    /// Performs one call. Never panics on what the guest sent: refusals are values.
    fn call(&mut self, call: HostCall) -> HostReply;
}
