//! Publishing and receiving on the kernel's event bus, within the capsule's grant.

use std::time::Duration;

use serde::Serialize;

use crate::abi;
use crate::error::{Error, Result};

/// A message as the kernel delivers it: `{topic, payload, source_id}`, where `payload` is the
/// inner JSON of `custom` and `raw_json` payloads and the tagged object otherwise.
pub type Message = astrid::types::EgressFrame;

/// The user input (a prompt or a slash command) carried by a payload, if that is what it is.
/// Cheap: it does not link the decoder of every payload kind.
pub fn user_input(payload: &[u8]) -> Option<astrid::types::UserInputFields> {
    astrid::types::UserInputFields::from_payload(&serde_json::from_slice(payload).ok()?)
}

/// Publishes `payload` (any JSON; an object whose `type` names a known payload becomes that
/// payload, anything else is `custom`) on `topic`. Needs an `ipc_publish` grant for it.
pub fn publish(topic: &str, payload: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec(payload).map_err(|_| Error::InvalidInput)?;
    // SAFETY: valid buffers for the duration of the call.
    let code = unsafe { abi::ipc_publish(topic.as_ptr(), topic.len(), json.as_ptr(), json.len()) };
    if code >= 0 { Ok(()) } else { Err(Error::ipc(i64::from(code))) }
}

/// A live subscription; unsubscribed when dropped.
#[derive(Debug)]
pub struct Subscription {
    handle: i32,
}

impl Subscription {
    /// Subscribes to `pattern` (`*` matches one segment; a trailing `.*` one or more). Needs
    /// an `ipc_subscribe` grant covering it.
    pub fn new(pattern: &str) -> Result<Self> {
        // SAFETY: a valid buffer for the duration of the call.
        let handle = unsafe { abi::ipc_subscribe(pattern.as_ptr(), pattern.len()) };
        if handle >= 0 { Ok(Self { handle }) } else { Err(Error::ipc(i64::from(handle))) }
    }

    /// Waits up to `timeout` (at most 60 s) for the next message; `Ok(None)` if none came.
    /// Waiting costs no fuel; `Err(Closed)` means the host is stopping the capsule.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Message>> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        decode(abi::ipc_recv(self.handle, ms))
    }

    /// The next message if one is already queued.
    pub fn poll(&self) -> Result<Option<Message>> {
        decode(abi::ipc_poll(self.handle))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        abi::ipc_unsubscribe(self.handle);
    }
}

fn decode(packed: i64) -> Result<Option<Message>> {
    match abi::unpack(packed) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| Error::InvalidInput),
        Err(-1) => Ok(None),
        Err(code) => Err(Error::ipc(code)),
    }
}
