//! The WebAssembly sandbox: capsules run on the wasmi interpreter under strict limits.
//!
//! What a capsule module may be is decided before it runs: parsed and validated whole as
//! binary WebAssembly only (no WAT in the product), with wasmi's strict parse-time limits, no start function (code
//! does not run during instantiation), and no import other than the `astrid` host functions
//! this build links; WASI and anything else is refused by name at load.
//!
//! What it may consume is bounded while it runs: a memory ceiling (64 MiB by default) through
//! the store's limiter, and CPU through fuel. wasmi cannot be interrupted from outside, so a
//! wall-clock deadline is built from fuel *slices*: the call runs resumably, and each time a
//! slice is used up the host checks the clock and the total budget before refilling. A
//! spinning capsule is stopped within one slice of its deadline; a trap, an exhausted budget
//! or a passed deadline is an error for that capsule alone, and the instance is poisoned so
//! it is re-instantiated rather than reused in an unknown state.

mod approval;
pub mod context;
pub mod development;
mod elicit;
pub mod host_call;
mod host_fs;
mod host_http;
mod host_ipc;
mod host_kv;
mod http_stream;
mod lifecycle;
mod net_policy;
pub mod process;
pub mod runner;
mod sandbox;
pub mod supervisor;
pub(crate) mod wait;

pub use host_fs::FsStatus;
pub use host_http::HttpStatus;
pub use host_ipc::IpcStatus;
pub use host_kv::KvStatus;
pub use lifecycle::Lifecycle;
pub use sandbox::{
    HOOK_EXPORT, HOST_FUNCTIONS, HookAction, HookResult, HostServices, KernelAccess, RUN_EXPORT, Sandbox, SandboxError,
    compile,
};

use std::time::Duration;

/// Limits for one capsule instance and each call into it (sent to a capsule-host process,
/// which applies them to the instance it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxLimits {
    /// Linear memory ceiling in bytes.
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

/// The engine every capsule shares: fuel metering on, no start functions, strict limits,
/// and modules validated whole when loaded.
///
/// Validation is eager: untrusted code is checked completely, and refused, before anything
/// of it runs. Translation to wasmi's bytecode is lazy, function by function on first call,
/// which takes most of the compile time off the boot (20 distinct capsules went from 97 ms
/// to 46 ms to ready).
///
/// Translation is **not charged to fuel**. wasmi would charge it to the call that first
/// reaches the function, but when that happens in the middle of a call with less fuel left in
/// the slice than the translation costs, wasmi 2 fails the whole call instead of pausing it
/// (only running out of fuel *between instructions* is resumable): a capsule would trap at
/// random, about once in every few hundred first calls. Free translation costs nothing in
/// safety: each function is translated once per module, the work is bounded by the module's
/// size (already validated whole, within the engine's limits), exactly what eager compilation
/// would do at load, and the wall-clock deadline still applies. Modules are validated once per
/// BLAKE3 and instantiated from the cache.
pub fn engine() -> wasmi::Engine {
    let mut config = wasmi::Config::default();
    config
        .consume_fuel(true)
        .fuel_cost(wasmi::CustomFuelCosts {
            // wasmi's default for bulk copies (`memory.copy` and the like): still charged.
            bytes_copied_per_fuel: 64,
            fuel_per_bytes_translated: 0,
            fuel_per_bytes_validated: 0,
        })
        .allow_start_fn(false)
        .enforced_limits(wasmi::EnforcedLimits::strict())
        .compilation_mode(wasmi::CompilationMode::LazyTranslation);
    wasmi::Engine::new(&config)
}
