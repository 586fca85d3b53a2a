//! The Astrid capsule SDK: write a capsule in plain Rust, build it for
//! `wasm32-unknown-unknown`, install it with `astrid capsule install`.
//!
//! ```ignore
//! use astrid_sdk::{Hook, ipc};
//!
//! fn hook(action: &str, payload: &[u8]) -> Hook {
//!     ipc::publish("agent.v1.response", &serde_json::json!({"type": "custom", "data": action})).ok();
//!     Hook::Continue(None)
//! }
//! astrid_sdk::capsule!(hook = hook);
//! ```
//!
//! Every call goes through a host function that checks the capsule's approved grant and
//! audits the decision; a refusal is an [`Error`] value, never a trap. The ABI itself (raw
//! pointers, packed results) stays inside [`abi`]. Messages arrive as the project's own wire
//! type ([`Message`] is the kernel's egress frame), so guest and host cannot drift apart.

#![deny(missing_docs, unsafe_op_in_unsafe_fn)]

#[doc(hidden)]
pub mod abi;
mod error;
pub mod fs;
pub mod http;
pub mod ipc;
pub mod kv;
pub mod process;

pub use astrid::types;
pub use error::{Error, Result};
pub use ipc::{Message, Subscription};

/// Writes one line to the daemon log, under the capsule's name.
pub fn log(message: &str) {
    // SAFETY: a valid buffer for the duration of the call.
    unsafe { abi::log(message.as_ptr(), message.len()) }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn clock_ms() -> i64 {
    abi::clock_ms()
}

/// `n` bytes from the host's CSPRNG (at most 64 KiB per call).
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buffer = vec![0u8; n];
    // SAFETY: a valid, writable buffer of `n` bytes.
    let status = unsafe { abi::random_bytes(buffer.as_mut_ptr(), n) };
    Error::check(i64::from(status)).map(|_| buffer)
}

/// The capsule's own configuration value for `key` (declared in `[env]`), if it has one.
/// A secret is only ever in guest memory if the capsule asks for it here.
pub fn config(key: &str) -> Option<String> {
    // SAFETY: a valid buffer for the duration of the call.
    let packed = unsafe { abi::get_config(key.as_ptr(), key.len()) };
    abi::unpack(packed).ok().and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Whether the capsule has a value for `key`, without handing it over (for secrets: ask
/// whether one is set without ever holding it).
pub fn has_config(key: &str) -> bool {
    // SAFETY: a valid buffer for the duration of the call.
    unsafe { abi::has_config(key.as_ptr(), key.len()) == 1 }
}

/// What a person answered to [`elicit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elicited {
    /// A single value.
    Value(String),
    /// A list of values.
    Values(Vec<String>),
    /// A secret: stored by the host for this capsule, never handed to the guest (use it in
    /// HTTP header templates).
    SecretStored,
}

/// Asks a person for the value of `key`, which must be declared in `[env]`; only inside
/// an install or upgrade hook. The value is stored and [`config`] returns it from then on
/// (except secrets, which stay with the host).
pub fn elicit(key: &str, description: Option<&str>) -> Result<Elicited> {
    let request = serde_json::json!({"key": key, "description": description});
    let bytes = serde_json::to_vec(&request).map_err(|_| Error::InvalidInput)?;
    // SAFETY: a valid buffer for the duration of the call.
    let answer = abi::unpack(unsafe { abi::elicit(bytes.as_ptr(), bytes.len()) }).map_err(Error::elicit)?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).map_err(|_| Error::InvalidInput)?;
    if answer["secret_stored"] == true {
        return Ok(Elicited::SecretStored);
    }
    if let Some(values) = answer["values"].as_array() {
        return Ok(Elicited::Values(values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()));
    }
    Ok(Elicited::Value(answer["value"].as_str().unwrap_or_default().to_owned()))
}

/// Asks a person (or a standing allowance) whether the capsule may do `action` on `resource`:
/// `Ok(true)` approved, `Ok(false)` denied (including nobody answering within a minute).
/// Waiting is not charged to the capsule's CPU deadline; question and answer are audited.
pub fn request_approval(action: &str, resource: &str) -> Result<bool> {
    ask(&serde_json::json!({"action": action, "resource": resource}))
}

/// [`request_approval`] for writing `content` to the workspace path `path`: the person sees
/// the diff against what is there now (computed by the host from the workspace, not by the
/// capsule), and "session"/"always" cover that path's directory.
pub fn request_write_approval(action: &str, path: &str, content: &str) -> Result<bool> {
    ask(&serde_json::json!({"action": action, "resource": path, "write": content}))
}

/// [`request_approval`] with `details` (what will happen: a command line, arguments) shown to
/// the person under the question.
pub fn request_approval_with(action: &str, resource: &str, details: &str) -> Result<bool> {
    ask(&serde_json::json!({"action": action, "resource": resource, "details": details}))
}

fn ask(request: &serde_json::Value) -> Result<bool> {
    let bytes = serde_json::to_vec(request).map_err(|_| Error::InvalidInput)?;
    // SAFETY: a valid buffer for the duration of the call.
    match unsafe { abi::request_approval(bytes.as_ptr(), bytes.len()) } {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(Error::InvalidInput),
    }
}

/// Tells the host a run-loop capsule is ready to serve (boot waits briefly for this).
pub fn signal_ready() {
    abi::signal_ready();
}

/// What a hook decided about the event it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Hook {
    /// The event goes on (optionally with a replacement payload).
    Continue(Option<serde_json::Value>),
    /// The event stops here with this result.
    Final(serde_json::Value),
    /// The event is refused, with a reason.
    Deny(String),
}

impl Hook {
    #[doc(hidden)]
    pub fn into_bytes(self) -> Vec<u8> {
        let value = match self {
            Self::Continue(data) => serde_json::json!({"action": "continue", "data": data}),
            Self::Final(data) => serde_json::json!({"action": "final", "data": data}),
            Self::Deny(reason) => serde_json::json!({"action": "deny", "data": reason}),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// Defines the capsule's exports: the allocator the host writes through, and the entry
/// points given (`run` for an event loop, `hook` for interceptors, tools and commands).
///
/// `capsule!(run = my_loop)`, `capsule!(hook = my_hook)` or both, where `my_loop: fn()` and
/// `my_hook: fn(&str, &[u8]) -> Hook`; optionally `install = f` (run once on the first start of
/// an install) and `upgrade = f` (on the first start of a new version), both `fn()`.
#[macro_export]
macro_rules! capsule {
    ($($entry:ident = $handler:path),+ $(,)?) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "C" fn astrid_alloc(len: usize) -> *mut u8 {
            $crate::abi::alloc(len)
        }

        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn astrid_free(ptr: *mut u8, len: usize) {
            // SAFETY: the host only frees buffers this module handed out, once.
            unsafe { $crate::abi::free(ptr, len) }
        }

        $($crate::capsule!(@entry $entry = $handler);)+
    };
    (@entry run = $handler:path) => {
        // Exported under the ABI name, defined under another so a handler called `run`
        // is not shadowed by its own export.
        #[doc(hidden)]
        #[unsafe(export_name = "run")]
        pub extern "C" fn __astrid_run() {
            $handler()
        }
    };
    (@entry install = $handler:path) => {
        #[doc(hidden)]
        #[unsafe(export_name = "astrid_install")]
        pub extern "C" fn __astrid_install() {
            $handler()
        }
    };
    (@entry upgrade = $handler:path) => {
        #[doc(hidden)]
        #[unsafe(export_name = "astrid_upgrade")]
        pub extern "C" fn __astrid_upgrade() {
            $handler()
        }
    };
    (@entry hook = $handler:path) => {
        #[doc(hidden)]
        #[unsafe(export_name = "astrid_hook_trigger")]
        pub unsafe extern "C" fn __astrid_hook_trigger(
            action: *mut u8,
            action_len: usize,
            payload: *mut u8,
            payload_len: usize,
        ) -> i64 {
            // SAFETY: the host passes buffers it obtained from `astrid_alloc` and filled.
            let (action, payload) =
                unsafe { ($crate::abi::take(action, action_len), $crate::abi::take(payload, payload_len)) };
            let action = String::from_utf8_lossy(&action);
            let decision: $crate::Hook = $handler(&action, &payload);
            $crate::abi::give(decision.into_bytes())
        }
    };
}
