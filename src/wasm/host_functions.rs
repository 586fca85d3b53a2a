//! The host-function surface, declared once.
//!
//! Every function a capsule may import is one entry of the [`host_functions!`] invocation
//! below: its name, its WebAssembly signature, where it is answered, and its guest half (copy
//! the arguments out of guest memory within their limits, hand the [`HostCall`] of the same
//! name to the backend, copy the reply back in). Both things the interpreter needs are
//! generated from those entries, so they cannot disagree: [`HOST_FUNCTIONS`], the table a
//! module's imports are checked against when it is compiled, and [`linker`], the linker its
//! instances are linked with (one per engine, built with the module; the functions take their
//! state from the store through [`Caller::data`], never from the linker).
//!
//! What is not generated is checked against the table by tests: each `kernel` function has a
//! [`HostCall`] variant of its name (`tests/data/session-vectors.jsonl`, whose test also wants
//! a vector for every variant), the kernel side's dispatch is an exhaustive `match` on
//! [`HostCall`] (`context.rs`), and the guest SDK's `extern` block
//! (`capsules-examples/sdk/src/abi.rs`) and `docs/capsule-abi.md` name exactly these
//! functions, with these signatures.
//!
//! Adding a host function is therefore: an entry here, its [`HostCall`] variant and vector,
//! the arm of the dispatch with the kernel half, the SDK's extern and the ABI page; a
//! forgotten step fails the build or a test.

use wasmi::errors::LinkerError;
use wasmi::{Caller, Engine, Extern, Linker};

use super::host_call::HostCall;
use super::host_fs::FsStatus;
use super::host_kv::KvStatus;
use super::sandbox::{HostState, forward, forward_status, read_guest};
use super::{elicit, host_approval, host_http, host_ipc, host_process};
use crate::kernel::topic;
use crate::store::{MAX_KEY, MAX_VALUE};

/// The import module every host function lives in.
pub const HOST_MODULE: &str = "astrid";
/// Longest log line a guest may pass (the kernel side cuts longer ones from a remote guest).
pub(super) const MAX_LOG: usize = 64 * 1024;
/// Longest configuration key.
pub(super) const MAX_CONFIG_KEY: usize = 256;
/// Most random bytes one call may ask for.
const MAX_RANDOM: usize = 64 * 1024;

/// A WebAssembly value type a host function takes or returns (pointers and lengths are
/// `i32` on `wasm32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiType {
    I32,
    I64,
}

impl AbiType {
    /// The type as WebAssembly text names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::I32 => "i32",
            Self::I64 => "i64",
        }
    }

    /// The same type as wasmi names it.
    pub fn of(ty: wasmi::ValType) -> Option<Self> {
        match ty {
            wasmi::ValType::I32 => Some(Self::I32),
            wasmi::ValType::I64 => Some(Self::I64),
            _ => None,
        }
    }
}

/// Where a host function is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// In the interpreter, without the kernel (the clock, random bytes): nothing to decide.
    Guest,
    /// By the kernel side, through the [`HostCall`] of the same name: wherever the guest runs,
    /// the daemon decides.
    Kernel,
}

/// One host function: what a module may import from [`HOST_MODULE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFunction {
    /// The import name.
    pub name: &'static str,
    /// Its parameters.
    pub params: &'static [AbiType],
    /// Its result, if any.
    pub result: Option<AbiType>,
    /// Where it is answered.
    pub side: Side,
}

impl HostFunction {
    /// The declared function called `name`.
    pub fn named(name: &str) -> Option<&'static Self> {
        HOST_FUNCTIONS.iter().find(|f| f.name == name)
    }

    /// `(i32, i32) -> i64`, as the ABI page writes signatures.
    pub fn signature(&self) -> String {
        let names = |types: &[AbiType]| types.iter().map(|t| t.name().to_owned()).collect::<Vec<_>>();
        written(&names(self.params), &names(self.result.as_slice()))
    }

    /// Whether a function type (as a module imports it) is this function's.
    pub fn accepts(&self, ty: &wasmi::FuncType) -> bool {
        let params: Option<Vec<AbiType>> = ty.params().iter().map(|t| AbiType::of(*t)).collect();
        let results: Option<Vec<AbiType>> = ty.results().iter().map(|t| AbiType::of(*t)).collect();
        params.as_deref() == Some(self.params) && results == Some(self.result.into_iter().collect())
    }
}

/// A function type as a module declares it, written like [`HostFunction::signature`].
pub fn signature_of(ty: &wasmi::FuncType) -> String {
    let names = |types: &[wasmi::ValType]| -> Vec<String> {
        types
            .iter()
            .map(|t| AbiType::of(*t).map_or_else(|| format!("{t:?}").to_lowercase(), |t| t.name().to_owned()))
            .collect()
    };
    let (params, results) = (names(ty.params()), names(ty.results()));
    written(&params, &results)
}

fn written(params: &[String], results: &[String]) -> String {
    match results {
        [] => format!("({})", params.join(", ")),
        [one] => format!("({}) -> {one}", params.join(", ")),
        many => format!("({}) -> ({})", params.join(", "), many.join(", ")),
    }
}

/// Declares the host functions: each entry is `guest fn` or `kernel fn` (its [`Side`]), its
/// name, the name its body calls the caller by, its parameters, its result and its body,
/// which returns `Result<result, wasmi::Error>` (an `Err` traps the guest).
macro_rules! host_functions {
    (@abi i32) => { AbiType::I32 };
    (@abi i64) => { AbiType::I64 };
    (@side guest) => { Side::Guest };
    (@side kernel) => { Side::Kernel };
    (@result) => { None };
    (@result $ret:ident) => { Some(host_functions!(@abi $ret)) };
    (@returns) => { () };
    (@returns $ret:ident) => { $ret };
    ($(
        $(#[doc = $doc:literal])*
        $side:ident fn $name:ident($caller:ident $(, $arg:ident: $ty:ident)*) $(-> $ret:ident)? $body:block
    )*) => {
        /// Every host function this build links (everything else is refused at load).
        pub const HOST_FUNCTIONS: &[HostFunction] = &[$(
            HostFunction {
                name: stringify!($name),
                params: &[$(host_functions!(@abi $ty)),*],
                result: host_functions!(@result $($ret)?),
                side: host_functions!(@side $side),
            },
        )*];

        /// A linker holding every host function, for the modules of `engine`: built once per
        /// engine (there is one per compiled module), shared by all its instances.
        pub(super) fn linker(engine: &Engine) -> Result<Linker<HostState>, LinkerError> {
            let mut linker = Linker::new(engine);
            $(
                linker.func_wrap(
                    HOST_MODULE,
                    stringify!($name),
                    |mut $caller: Caller<'_, HostState> $(, $arg: $ty)*|
                     -> Result<host_functions!(@returns $($ret)?), wasmi::Error> {
                        let $caller = &mut $caller;
                        $body
                    },
                )?;
            )*
            Ok(linker)
        }
    };
}

host_functions! {
    /// One UTF-8 line into the daemon log, under the capsule's name.
    kernel fn log(caller, ptr: i32, len: i32) {
        let bytes = read_guest(caller, ptr, len, MAX_LOG)?;
        // The kernel side logs it for the operator; this is for whoever runs the guest (an
        // author's terminal in `astrid capsule run`).
        log::debug!(target: "astrid::capsule", "{}: {}", caller.data().capsule(), String::from_utf8_lossy(&bytes));
        forward(caller, HostCall::Log { line: bytes.into() }).map(drop)
    }
    /// Wall-clock milliseconds since the Unix epoch.
    guest fn clock_ms(_caller) -> i64 {
        Ok(chrono::Utc::now().timestamp_millis())
    }
    /// Fills the buffer from the OS CSPRNG.
    guest fn random_bytes(caller, ptr: i32, len: i32) -> i32 {
        // Checks the buffer first (read_guest bounds-checks), then fills it.
        let mut bytes = read_guest(caller, ptr, len, MAX_RANDOM)?;
        if getrandom::fill(&mut bytes).is_err() {
            return Ok(-1);
        }
        let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
            return Err(wasmi::Error::new("the capsule exports no memory"));
        };
        let offset = usize::try_from(ptr).map_err(|_| wasmi::Error::new("negative pointer"))?;
        memory.write(&mut *caller, offset, &bytes).map_err(|e| wasmi::Error::new(e.to_string()))?;
        Ok(0)
    }
    /// The capsule's own `[env]` value.
    kernel fn get_config(caller, ptr: i32, len: i32) -> i64 {
        let key = read_guest(caller, ptr, len, MAX_CONFIG_KEY)?;
        forward(caller, HostCall::GetConfig { key: key.into() })
    }
    /// Whether the capsule has a value for a key, without handing it over.
    kernel fn has_config(caller, ptr: i32, len: i32) -> i32 {
        let key = read_guest(caller, ptr, len, MAX_CONFIG_KEY)?;
        forward_status(caller, HostCall::HasConfig { key: key.into() })
    }
    /// A run-loop capsule is ready.
    kernel fn signal_ready(caller) {
        caller.data().lifecycle.signal_ready();
        forward(caller, HostCall::SignalReady).map(drop)
    }
    /// Ask a person.
    kernel fn request_approval(caller, ptr: i32, len: i32) -> i32 {
        let request = read_guest(caller, ptr, len, host_approval::MAX_REQUEST)?;
        forward_status(caller, HostCall::RequestApproval { request: request.into() })
    }
    /// Ask a person for a declared `[env]` value (install and upgrade hooks only).
    kernel fn elicit(caller, ptr: i32, len: i32) -> i64 {
        let request = read_guest(caller, ptr, len, elicit::MAX_REQUEST)?;
        forward(caller, HostCall::Elicit { request: request.into() })
    }
    /// KV read.
    kernel fn kv_get(caller, ptr: i32, len: i32) -> i64 {
        let key = read_guest(caller, ptr, len, MAX_KEY)?;
        forward(caller, HostCall::KvGet { key: key.into() })
    }
    /// KV write.
    kernel fn kv_set(caller, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32) -> i32 {
        let key = read_guest(caller, key_ptr, key_len, MAX_KEY)?;
        if usize::try_from(value_len).is_ok_and(|len| len > MAX_VALUE) {
            return Ok(KvStatus::TooLarge as i32);
        }
        let value = read_guest(caller, value_ptr, value_len, MAX_VALUE)?;
        forward_status(caller, HostCall::KvSet { key: key.into(), value: value.into() })
    }
    /// KV delete: 1 when something was deleted, 0 when there was nothing.
    kernel fn kv_delete(caller, ptr: i32, len: i32) -> i32 {
        let key = read_guest(caller, ptr, len, MAX_KEY)?;
        forward_status(caller, HostCall::KvDelete { key: key.into() })
    }
    /// KV keys under a prefix.
    kernel fn kv_list_keys(caller, ptr: i32, len: i32) -> i64 {
        let prefix = read_guest(caller, ptr, len, MAX_KEY)?;
        forward(caller, HostCall::KvListKeys { prefix: prefix.into() })
    }
    /// KV delete under a prefix.
    kernel fn kv_clear_prefix(caller, ptr: i32, len: i32) -> i64 {
        let prefix = read_guest(caller, ptr, len, MAX_KEY)?;
        forward(caller, HostCall::KvClearPrefix { prefix: prefix.into() })
    }
    /// KV compare-and-swap; a length of -1 is "absent" (expect no value, or delete).
    kernel fn kv_cas(
        caller,
        key_ptr: i32,
        key_len: i32,
        expected_ptr: i32,
        expected_len: i32,
        new_ptr: i32,
        new_len: i32
    ) -> i32 {
        let key = read_guest(caller, key_ptr, key_len, MAX_KEY)?;
        let expected = optional_value(caller, expected_ptr, expected_len)?;
        let new = optional_value(caller, new_ptr, new_len)?;
        let (expected, new) = (expected.map(Into::into), new.map(Into::into));
        forward_status(caller, HostCall::KvCas { key: key.into(), expected, new })
    }
    /// Bus publish.
    kernel fn ipc_publish(caller, topic_ptr: i32, topic_len: i32, payload_ptr: i32, payload_len: i32) -> i32 {
        let topic = read_guest(caller, topic_ptr, topic_len, topic::MAX_TOPIC_BYTES)?;
        let payload = read_guest(caller, payload_ptr, payload_len, host_ipc::MAX_PAYLOAD)?;
        forward_status(caller, HostCall::IpcPublish { topic: topic.into(), payload: payload.into() })
    }
    /// Bus subscribe.
    kernel fn ipc_subscribe(caller, ptr: i32, len: i32) -> i32 {
        let pattern = read_guest(caller, ptr, len, topic::MAX_TOPIC_BYTES)?;
        forward_status(caller, HostCall::IpcSubscribe { pattern: pattern.into() })
    }
    /// Wait for a message.
    kernel fn ipc_recv(caller, handle: i32, timeout_ms: i32) -> i64 {
        forward(caller, HostCall::IpcRecv { handle, timeout_ms })
    }
    /// Take a queued message, if any.
    kernel fn ipc_poll(caller, handle: i32) -> i64 {
        forward(caller, HostCall::IpcPoll { handle })
    }
    /// Drop a subscription.
    kernel fn ipc_unsubscribe(caller, handle: i32) -> i32 {
        forward_status(caller, HostCall::IpcUnsubscribe { handle })
    }
    /// Workspace read.
    kernel fn fs_read(caller, ptr: i32, len: i32) -> i64 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward(caller, HostCall::FsRead { path: path.into() })
    }
    /// Workspace write (into the overlay).
    kernel fn fs_write(caller, ptr: i32, len: i32, data_ptr: i32, data_len: i32) -> i32 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        let limit = usize::try_from(crate::vfs::MAX_FILE).unwrap_or(usize::MAX);
        if usize::try_from(data_len).is_ok_and(|n| n > limit) {
            return Ok(FsStatus::TooLarge as i32);
        }
        let data = read_guest(caller, data_ptr, data_len, limit)?;
        forward_status(caller, HostCall::FsWrite { path: path.into(), data: data.into() })
    }
    /// Whether a path exists.
    kernel fn fs_exists(caller, ptr: i32, len: i32) -> i32 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward_status(caller, HostCall::FsExists { path: path.into() })
    }
    /// `{is_dir, is_file, size}`.
    kernel fn fs_stat(caller, ptr: i32, len: i32) -> i64 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward(caller, HostCall::FsStat { path: path.into() })
    }
    /// Directory entries.
    kernel fn fs_readdir(caller, ptr: i32, len: i32) -> i64 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward(caller, HostCall::FsReaddir { path: path.into() })
    }
    /// Create a directory.
    kernel fn fs_mkdir(caller, ptr: i32, len: i32) -> i32 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward_status(caller, HostCall::FsMkdir { path: path.into() })
    }
    /// Remove a file.
    kernel fn fs_unlink(caller, ptr: i32, len: i32) -> i32 {
        let path = read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?;
        forward_status(caller, HostCall::FsUnlink { path: path.into() })
    }
    /// One HTTP exchange.
    kernel fn http_request(caller, request_ptr: i32, request_len: i32, body_ptr: i32, body_len: i32) -> i64 {
        let (request, body) = http_exchange(caller, (request_ptr, request_len), (body_ptr, body_len))?;
        forward(caller, HostCall::HttpRequest { request: request.into(), body: body.into() })
    }
    /// An HTTP exchange whose body is read in chunks (waits for the head).
    kernel fn http_stream_start(caller, request_ptr: i32, request_len: i32, body_ptr: i32, body_len: i32) -> i64 {
        let (request, body) = http_exchange(caller, (request_ptr, request_len), (body_ptr, body_len))?;
        forward(caller, HostCall::HttpStreamStart { request: request.into(), body: body.into() })
    }
    /// An HTTP exchange on a thread of its own: a handle at once.
    kernel fn http_stream_open(caller, request_ptr: i32, request_len: i32, body_ptr: i32, body_len: i32) -> i32 {
        let (request, body) = http_exchange(caller, (request_ptr, request_len), (body_ptr, body_len))?;
        forward_status(caller, HostCall::HttpStreamOpen { request: request.into(), body: body.into() })
    }
    /// The response head, or `Pending` after the timeout.
    kernel fn http_stream_head(caller, handle: i32, timeout_ms: i32) -> i64 {
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(0);
        forward(caller, HostCall::HttpStreamHead { handle, timeout_ms })
    }
    /// The next chunk of a response body.
    kernel fn http_stream_read(caller, handle: i32) -> i64 {
        forward(caller, HostCall::HttpStreamRead { handle })
    }
    /// The next chunk, or `Pending` after the timeout.
    kernel fn http_stream_wait(caller, handle: i32, timeout_ms: i32) -> i64 {
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(0);
        forward(caller, HostCall::HttpStreamWait { handle, timeout_ms })
    }
    /// Close a response stream.
    kernel fn http_stream_close(caller, handle: i32) -> i32 {
        forward_status(caller, HostCall::HttpStreamClose { handle })
    }
    /// Run a command in the sandbox, once the grant and a person allow it: a handle, or why not.
    kernel fn process_spawn(caller, ptr: i32, len: i32) -> i64 {
        let request = read_guest(caller, ptr, len, host_process::MAX_SPAWN_REQUEST)?;
        forward(caller, HostCall::ProcessSpawn { request: request.into() })
    }
    /// The next piece of a command's output, or `Pending` after the timeout.
    kernel fn process_read(caller, handle: i32, timeout_ms: i32) -> i64 {
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(0);
        forward(caller, HostCall::ProcessRead { handle, timeout_ms })
    }
    /// How a command ended, or `Pending` after the timeout.
    kernel fn process_wait(caller, handle: i32, timeout_ms: i32) -> i64 {
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(0);
        forward(caller, HostCall::ProcessWait { handle, timeout_ms })
    }
    /// Kill a command and everything it started.
    kernel fn process_kill(caller, handle: i32) -> i32 {
        forward_status(caller, HostCall::ProcessKill { handle })
    }
}

/// A KV value that may be absent: a length of -1 means "none".
fn optional_value(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Option<Vec<u8>>, wasmi::Error> {
    if len == -1 {
        return Ok(None);
    }
    read_guest(caller, ptr, len, MAX_VALUE).map(Some)
}

/// An HTTP request's JSON and body, each within its limit (an empty body needs no buffer).
fn http_exchange(
    caller: &mut Caller<'_, HostState>,
    request: (i32, i32),
    body: (i32, i32),
) -> Result<(Vec<u8>, Vec<u8>), wasmi::Error> {
    let request = read_guest(caller, request.0, request.1, host_http::MAX_REQUEST_JSON)?;
    let body = if body.1 > 0 { read_guest(caller, body.0, body.1, host_http::MAX_BODY)? } else { Vec::new() };
    Ok((request, body))
}

#[cfg(test)]
#[path = "host_functions_tests.rs"]
mod tests;
