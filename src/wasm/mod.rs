//! The WebAssembly sandbox: capsules run on the wasmi interpreter under strict limits.
//!
//! What a capsule module may be is decided before it runs: parsed and validated whole as
//! binary WebAssembly only (no WAT in the product), with wasmi's strict parse-time limits, no start function (code
//! does not run during instantiation), and no import other than the `astrid` host functions
//! this build links; WASI and anything else is refused by name at load.
//!
//! What it may make the host allocate is bounded before it runs and while it runs (see
//! [`limits`]): the counts a module declares are checked before wasmi builds anything from
//! them, and its linear memory and its table count against one ceiling (64 MiB by default)
//! through the store's limiter. CPU is bounded through fuel. wasmi cannot be interrupted from outside, so a
//! wall-clock deadline is built from fuel *slices*: the call runs resumably, and each time a
//! slice is used up the host checks the clock and the total budget before refilling. A
//! spinning capsule is stopped within one slice of its deadline; a trap, an exhausted budget
//! or a passed deadline is an error for that capsule alone, and the instance is poisoned so
//! it is re-instantiated rather than reused in an unknown state.

pub mod context;
pub mod development;
mod elicit;
mod host_approval;
pub mod host_call;
mod host_fs;
pub mod host_functions;
mod host_http;
mod host_ipc;
mod host_kv;
pub mod host_process;
mod http_stream;
mod lifecycle;
pub mod limits;
mod net_policy;
pub mod process;
pub mod runner;
mod sandbox;
pub mod supervisor;
pub(crate) mod wait;

pub use host_fs::FsStatus;
pub use host_functions::{HOST_FUNCTIONS, HOST_MODULE, HostFunction, Side};
pub use host_http::HttpStatus;
pub use host_ipc::IpcStatus;
pub use host_kv::KvStatus;
pub use lifecycle::Lifecycle;
pub use sandbox::{
    CompiledModule, HOOK_EXPORT, HookAction, HookResult, HostServices, KernelAccess, RUN_EXPORT, Sandbox, SandboxError,
    compile,
};

/// Limits of an instance: a wire type, since the daemon sends them to capsule-host processes.
pub use crate::types::capsule_session::SandboxLimits;

/// The engine configuration of every capsule module: fuel metering on, no start functions,
/// strict limits, a bounded value stack, custom sections dropped, and modules validated whole
/// when loaded.
///
/// **One engine per compiled module** ([`compile`]). A wasmi engine keeps every function of
/// every module it ever compiled (its code map is append-only, and each entry holds the
/// function's bytes, its translation and the module's header) until the engine itself is
/// dropped. A shared engine therefore grows with each module compiled and never shrinks; an
/// engine per module is dropped with the module and its last instance, so what a removed or
/// replaced capsule cost is given back.
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
fn engine() -> wasmi::Engine {
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
        // Names and debug info are of no use to the host; kept, they would be copied.
        .ignore_custom_sections(true)
        .set_max_stack_height(limits::MAX_STACK_BYTES)
        .set_max_recursion_depth(limits::MAX_RECURSION_DEPTH)
        .set_max_cached_stacks(1)
        .compilation_mode(wasmi::CompilationMode::LazyTranslation);
    wasmi::Engine::new(&config)
}
