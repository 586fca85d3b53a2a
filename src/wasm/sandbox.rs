//! One capsule instance: its store, its limits, and calls into it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use wasmi::{Caller, Extern, Instance, Linker, Module, Store, TypedResumableCall, WasmParams, WasmResults};

use super::SandboxLimits;
use super::context::CapsuleContext;
use super::host_call::{HostBackend, HostCall, HostReply};
use super::host_functions::{self, HOST_MODULE, HostFunction};
use super::lifecycle::Lifecycle;
use super::limits::{CapsuleLimiter, check_module};

use crate::kernel::Kernel;
use crate::store::{KvStore, Namespace};

/// Largest hook result a guest may return.
const MAX_HOOK_RESULT: usize = 1024 * 1024;

/// The guest export for run loops.
pub const RUN_EXPORT: &str = "run";
/// The guest export for interceptors, tools and commands.
pub const HOOK_EXPORT: &str = "astrid_hook_trigger";
/// Fuel for one call of the guest's allocator from inside a host function.
const ALLOC_FUEL: u64 = 1_000_000;
/// The guest's allocator, through which the host hands it bytes.
pub const ALLOC_EXPORT: &str = "astrid_alloc";
/// The guest's optional deallocator, called on buffers the guest handed back.
pub const FREE_EXPORT: &str = "astrid_free";

/// Why a capsule could not be loaded or a call failed. Each is the capsule's problem alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// Not valid WebAssembly, or over the parse-time limits.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module imports something this host does not provide (WASI, for example).
    #[error("forbidden import {module}.{name}: capsules may only import the astrid host functions")]
    ForbiddenImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// The module imports a host function with a type other than the host's.
    #[error("import astrid.{name} is declared as {found}; the host provides {expected}")]
    ImportSignature {
        /// The host function.
        name: String,
        /// Its signature on the host.
        expected: String,
        /// What the module declares.
        found: String,
    },
    /// Instantiation failed (for example an initial memory over the ceiling).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The export does not exist or has another signature.
    #[error("no export {name} with the expected signature: {reason}")]
    MissingExport {
        /// The export.
        name: String,
        /// Why.
        reason: String,
    },
    /// The guest trapped (or a host function refused its misuse of the ABI).
    #[error("trapped in {export}: {message}")]
    Trap {
        /// The export called.
        export: String,
        /// The trap.
        message: String,
    },
    /// The call used its whole fuel budget.
    #[error("{export} ran out of fuel after {fuel} units")]
    OutOfFuel {
        /// The export called.
        export: String,
        /// Fuel consumed.
        fuel: u64,
    },
    /// The call passed its wall-clock deadline.
    #[error("{export} exceeded its deadline ({elapsed_ms} ms)")]
    Deadline {
        /// The export called.
        export: String,
        /// Time taken when stopped.
        elapsed_ms: u128,
    },
    /// A previous failure left the instance in an unknown state.
    #[error("the instance failed earlier and must be re-instantiated")]
    Poisoned,
    /// The host asked the instance to stop.
    #[error("{export} was stopped by the host")]
    Stopped {
        /// The export called.
        export: String,
    },
    /// The guest returned something that is not what the ABI specifies.
    #[error("{export} returned a malformed result: {reason}")]
    BadResult {
        /// The export called.
        export: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The kernel behind an instance's gated host functions (IPC, files): every call is
/// checked against the capsule's approved grant and audited, for this principal.
#[derive(Debug, Clone)]
pub struct KernelAccess {
    /// The kernel (bus, grants, audit).
    pub kernel: Arc<Kernel>,
    /// The principal the capsule acts for.
    pub principal: String,
}

/// What the host offers one instance beyond the always-available functions.
#[derive(Debug, Clone, Default)]
pub struct HostServices {
    /// The KV store and this capsule's namespace (chosen by the host, never by the guest).
    pub kv: Option<(KvStore, Namespace)>,
    /// The bus, through the kernel's capability checks.
    pub kernel: Option<KernelAccess>,
    /// What `get_config` answers: the capsule's own `[env]` values, resolved at load.
    pub config: BTreeMap<String, String>,
    /// The `[env]` values declared `type = "secret"`: what `{{secret:NAME}}` in an HTTP
    /// header may name, and what responses are redacted of.
    pub secrets: BTreeMap<String, String>,
    /// Whether HTTP may reach private and loopback addresses (operator setting).
    pub allow_private_network: bool,
    /// The `[env]` declarations (what `elicit` may ask for).
    pub env: BTreeMap<String, crate::kernel::manifest::EnvDef>,
    /// Readiness and stop, shared with the capsule host.
    pub lifecycle: Arc<Lifecycle>,
}

/// Per-instance host state: the guest side of the host functions. What the calls act on is
/// behind `backend` (see [`super::host_call`]).
#[derive(Debug)]
pub struct HostState {
    limits: CapsuleLimiter,
    pub(super) capsule: String,
    /// Where host calls go: a [`CapsuleContext`] here, or the daemon over the socket.
    backend: Box<dyn HostBackend>,
    /// Time spent waiting in host calls during the current call (not charged to the deadline).
    pub(super) waited: Duration,
    /// Readiness and stop, as seen by the interpreter (checked at every fuel slice).
    pub(super) lifecycle: Arc<Lifecycle>,
    /// How many times the guest has waited for messages (a run loop's budget restarts then).
    pub(super) waits: u64,
}

impl HostState {
    /// The capsule the instance runs.
    pub(super) fn capsule(&self) -> &str {
        &self.capsule
    }
}

/// Hands `call` to the backend and the reply to the guest: a value as is, bytes through the
/// guest's allocator (packed `(ptr << 32) | len`), a trap as a trap. Time spent in a call
/// that blocks is not the guest's; a wait for input restarts a run loop's budget.
pub(super) fn forward(caller: &mut Caller<'_, HostState>, call: HostCall) -> Result<i64, wasmi::Error> {
    let (is_wait, blocks) = (call.is_wait(), call.blocks());
    let started = Instant::now();
    // A bug on the kernel side must cost this guest its call, not the daemon its life: a
    // panic cannot unwind through the interpreter, so it is caught here and becomes a trap.
    let backend = &mut caller.data_mut().backend;
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.call(call))).unwrap_or_else(|_| {
        HostReply::Trap("the host failed while serving this call (a bug; see the daemon log)".to_owned())
    });
    let state = caller.data_mut();
    if blocks {
        state.waited += started.elapsed();
    }
    if is_wait {
        state.waits += 1;
    }
    match reply {
        HostReply::Value(value) => Ok(value),
        HostReply::Bytes(bytes) => write_guest(caller, &bytes.0),
        HostReply::Trap(message) => Err(wasmi::Error::new(message)),
        // Only the capsule host's read-ahead asks for a batch, and it hands the guest one
        // message at a time: a batch here is a host bug, not something to guess at.
        HostReply::Messages(_) => Err(wasmi::Error::new("the host answered a guest's call with a batch of messages")),
    }
}

/// [`forward`] for host functions whose result is an `i32` status.
pub(super) fn forward_status(caller: &mut Caller<'_, HostState>, call: HostCall) -> Result<i32, wasmi::Error> {
    let value = forward(caller, call)?;
    i32::try_from(value).map_err(|_| wasmi::Error::new("the host answered a status call with bytes"))
}

/// Refuses a module that imports anything but the `astrid` host functions this build links,
/// each with its declared signature.
fn check_imports(module: &Module) -> Result<(), SandboxError> {
    for import in module.imports() {
        let forbidden =
            || SandboxError::ForbiddenImport { module: import.module().to_owned(), name: import.name().to_owned() };
        let Some(function) = HostFunction::named(import.name()).filter(|_| import.module() == HOST_MODULE) else {
            return Err(forbidden());
        };
        let wasmi::ExternType::Func(ty) = import.ty() else { return Err(forbidden()) };
        if !function.accepts(ty) {
            return Err(SandboxError::ImportSignature {
                name: function.name.to_owned(),
                expected: function.signature(),
                found: host_functions::signature_of(ty),
            });
        }
    }
    Ok(())
}

/// A module ready to be instantiated: validated, its imports checked, and linked with the
/// host functions. Cheap to clone; every instance of it shares its engine and its linker.
#[derive(Debug, Clone)]
pub struct CompiledModule {
    module: Module,
    linker: Arc<Linker<HostState>>,
}

impl CompiledModule {
    /// The engine the module was compiled on (one per module, see [`super::engine`]).
    pub fn engine(&self) -> &wasmi::Engine {
        self.module.engine()
    }
}

/// Validates and compiles `wasm` (binary only, within [`super::limits`] and the engine's
/// parse-time limits) on an engine of its own, which lives as long as the module and its
/// instances (see [`super::engine`]), checks its imports and links the host functions once
/// for all its instances.
pub fn compile(wasm: &[u8]) -> Result<CompiledModule, SandboxError> {
    check_module(wasm)?;
    let module = Module::new(&super::engine(), wasm).map_err(|e| SandboxError::Invalid(e.to_string()))?;
    check_imports(&module)?;
    let linker = host_functions::linker(module.engine()).map_err(|e| SandboxError::Instantiate(e.to_string()))?;
    Ok(CompiledModule { module, linker: Arc::new(linker) })
}

/// How a call's fuel and deadline are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// Once for the whole call (hooks, tools, lifecycle).
    PerCall,
    /// Afresh after each wait for messages (run loops).
    BetweenWaits,
}

/// What the guest's hook entry decided.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookResult {
    /// Go on, stop with a result, or refuse.
    pub action: HookAction,
    /// The replacement payload (`continue`, `final`) or the reason (`deny`).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// The decision of a hook. Anything the guest names that is not one of these counts as
/// `continue`, as in the reference (its SDK reports errors as action `"error"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAction {
    /// The event stops here with this result.
    Final,
    /// The event is refused.
    #[serde(alias = "abort")]
    Deny,
    /// The event goes on.
    #[serde(other)]
    Continue,
}

/// A loaded, instantiated capsule.
pub struct Sandbox {
    store: Store<HostState>,
    instance: Instance,
    limits: SandboxLimits,
    poisoned: bool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("capsule", &self.store.data().capsule).field("limits", &self.limits).finish()
    }
}

impl Sandbox {
    /// Validates `wasm` (binary only), checks its imports, and instantiates it.
    pub fn load(capsule: &str, wasm: &[u8], limits: SandboxLimits) -> Result<Self, SandboxError> {
        Self::load_with(capsule, wasm, limits, HostServices::default())
    }

    /// [`Sandbox::load`] with host services (KV, …) for this instance.
    pub fn load_with(
        capsule: &str,
        wasm: &[u8],
        limits: SandboxLimits,
        services: HostServices,
    ) -> Result<Self, SandboxError> {
        Self::instantiate(capsule, &compile(wasm)?, limits, services)
    }

    /// Instantiates an already compiled module (see [`compile`]): what a restart or a
    /// second instance of the same code costs.
    pub fn instantiate(
        capsule: &str,
        module: &CompiledModule,
        limits: SandboxLimits,
        services: HostServices,
    ) -> Result<Self, SandboxError> {
        let lifecycle = Arc::clone(&services.lifecycle);
        let context = CapsuleContext::new(capsule, limits.deadline, services);
        Self::instantiate_with(capsule, module, limits, Box::new(context), lifecycle)
    }

    /// Instantiates a compiled module whose host calls go to `backend` (a capsule-host
    /// process passes its link to the daemon); `lifecycle` is what the interpreter checks for
    /// stop requests.
    pub fn instantiate_with(
        capsule: &str,
        compiled: &CompiledModule,
        limits: SandboxLimits,
        backend: Box<dyn HostBackend>,
        lifecycle: Arc<Lifecycle>,
    ) -> Result<Self, SandboxError> {
        let state = HostState {
            limits: CapsuleLimiter::new(limits.memory_bytes),
            capsule: capsule.to_owned(),
            backend,
            waited: Duration::ZERO,
            lifecycle,
            waits: 0,
        };
        // The module's own engine (see `compile`): the store keeps it alive.
        let mut store = Store::new(compiled.engine(), state);
        store.limiter(|state| &mut state.limits);
        // Instantiation runs no guest code (start functions are refused by the engine config),
        // but give it a slice of fuel for any lazy translation it does.
        store.set_fuel(limits.fuel_slice).map_err(|e| SandboxError::Instantiate(e.to_string()))?;
        let instance = compiled.linker.instantiate_and_start(&mut store, &compiled.module).map_err(|e| {
            // A refusal of the limiter is the real reason; wasmi only says an allocation failed.
            SandboxError::Instantiate(store.data().limits.refusal().map_or_else(|| e.to_string(), str::to_owned))
        })?;
        Ok(Self { store, instance, limits, poisoned: false })
    }

    /// Calls `export` with `params` under the fuel budget and the deadline.
    pub fn call<P: WasmParams + Copy, R: WasmResults>(&mut self, export: &str, params: P) -> Result<R, SandboxError> {
        self.call_with(export, params, Budget::PerCall)
    }

    fn call_with<P: WasmParams + Copy, R: WasmResults>(
        &mut self,
        export: &str,
        params: P,
        budget: Budget,
    ) -> Result<R, SandboxError> {
        if self.poisoned {
            return Err(SandboxError::Poisoned);
        }
        let func = self
            .instance
            .get_typed_func::<P, R>(&self.store, export)
            .map_err(|e| SandboxError::MissingExport { name: export.to_owned(), reason: e.to_string() })?;
        let result = self.run(export, budget, |store| func.call_resumable(store, params));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Calls an install or upgrade hook (`() -> ()`). Whether `elicit` may ask a person is
    /// decided on the kernel side, from the hook it planned ([`CapsuleContext`]), not here.
    pub fn call_lifecycle(&mut self, export: &str) -> Result<(), SandboxError> {
        self.call::<(), ()>(export, ())
    }

    /// Whether the module exports a function called `name`.
    pub fn has_export(&self, name: &str) -> bool {
        self.instance.get_func(&self.store, name).is_some()
    }

    /// Runs the guest's `run` export, the capsule's event loop, until it returns, fails or is
    /// stopped. The fuel budget and the deadline apply to the stretch of work between two
    /// waits for messages: a loop that idles in `ipc_recv` lives as long as it likes, one
    /// that spins without waiting is stopped like any call.
    pub fn run_loop(&mut self) -> Result<(), SandboxError> {
        self.call_with(RUN_EXPORT, (), Budget::BetweenWaits)
    }

    /// Calls the guest's hook entry with an action name and a payload; the answer says
    /// whether the event goes on (`continue`), stops here with a result (`final`) or is
    /// refused (`deny`).
    pub fn hook(&mut self, action: &str, payload: &[u8]) -> Result<HookResult, SandboxError> {
        let export = HOOK_EXPORT;
        let action_buffer = self.give(action.as_bytes())?;
        let payload_buffer = self.give(payload)?;
        let packed: i64 = self.call(export, (action_buffer.0, action_buffer.1, payload_buffer.0, payload_buffer.1))?;
        let bytes = self.take(export, packed, MAX_HOOK_RESULT)?;
        if bytes.is_empty() {
            return Ok(HookResult { action: HookAction::Continue, data: None });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| SandboxError::BadResult { export: export.to_owned(), reason: e.to_string() })
    }

    /// Copies `bytes` into a buffer from the guest's allocator: `(ptr, len)`.
    fn give(&mut self, bytes: &[u8]) -> Result<(i32, i32), SandboxError> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| SandboxError::BadResult { export: ALLOC_EXPORT.to_owned(), reason: "too large".to_owned() })?;
        let ptr: i32 = self.call(ALLOC_EXPORT, len)?;
        let memory = self.memory(ALLOC_EXPORT)?;
        let offset = usize::try_from(ptr).map_err(|_| self.poison_with(ALLOC_EXPORT, "negative pointer"))?;
        if memory.write(&mut self.store, offset, bytes).is_err() {
            return Err(self.poison_with(ALLOC_EXPORT, "returned a buffer outside its memory"));
        }
        Ok((ptr, len))
    }

    /// Reads the buffer `export` returned packed as `(ptr << 32) | len`, then hands it back
    /// to the guest's `astrid_free` if it has one.
    fn take(&mut self, export: &str, packed: i64, max: usize) -> Result<Vec<u8>, SandboxError> {
        let bad = |reason: String| SandboxError::BadResult { export: export.to_owned(), reason };
        let (ptr, len) = ((packed >> 32) as u32 as usize, (packed & 0xffff_ffff) as u32 as usize);
        if len > max {
            return Err(bad(format!("{len} bytes is over the {max}-byte limit")));
        }
        let memory = self.memory(export)?;
        let mut bytes = vec![0u8; len];
        memory.read(&self.store, ptr, &mut bytes).map_err(|e| bad(format!("buffer outside its memory: {e}")))?;
        if len > 0 && self.has_export(FREE_EXPORT) {
            let (ptr, len) = (i32::try_from(ptr).unwrap_or(0), i32::try_from(len).unwrap_or(0));
            self.call::<(i32, i32), ()>(FREE_EXPORT, (ptr, len))?;
        }
        Ok(bytes)
    }

    fn memory(&self, export: &str) -> Result<wasmi::Memory, SandboxError> {
        self.instance.get_memory(&self.store, "memory").ok_or_else(|| SandboxError::MissingExport {
            name: "memory".to_owned(),
            reason: format!("needed by {export}"),
        })
    }

    fn poison_with(&mut self, export: &str, reason: &str) -> SandboxError {
        self.poisoned = true;
        SandboxError::BadResult { export: export.to_owned(), reason: reason.to_owned() }
    }

    /// The instance's lifecycle flags (readiness, stop).
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.store.data().lifecycle
    }

    fn run<R: WasmResults>(
        &mut self,
        export: &str,
        budget: Budget,
        mut start: impl FnMut(&mut Store<HostState>) -> Result<TypedResumableCall<R>, wasmi::Error>,
    ) -> Result<R, SandboxError> {
        let trap = |e: wasmi::Error| SandboxError::Trap { export: export.to_owned(), message: e.to_string() };
        let mut started = Instant::now();
        self.store.data_mut().waited = Duration::ZERO;
        let mut waits = self.store.data().waits;
        let slice = self.limits.fuel_slice;
        let mut spent = 0u64;
        self.store.set_fuel(slice).map_err(trap)?;
        let mut call = start(&mut self.store).map_err(trap)?;
        loop {
            match call {
                TypedResumableCall::Finished(results) => return Ok(results),
                TypedResumableCall::HostTrap(host) => {
                    return Err(SandboxError::Trap {
                        export: export.to_owned(),
                        message: host.host_error().to_string(),
                    });
                }
                TypedResumableCall::OutOfFuel(pending) => {
                    if self.store.data().lifecycle.is_stopping() {
                        return Err(SandboxError::Stopped { export: export.to_owned() });
                    }
                    if budget == Budget::BetweenWaits && self.store.data().waits != waits {
                        // The guest waited for messages since the last slice: new work, new budget.
                        waits = self.store.data().waits;
                        spent = 0;
                        started = Instant::now();
                        self.store.data_mut().waited = Duration::ZERO;
                    }
                    spent = spent.saturating_add(slice);
                    if spent >= self.limits.fuel_per_call {
                        return Err(SandboxError::OutOfFuel { export: export.to_owned(), fuel: spent });
                    }
                    // Waiting in a host call (recv) is not running: only guest time counts.
                    let running = started.elapsed().saturating_sub(self.store.data().waited);
                    if running >= self.limits.deadline {
                        return Err(SandboxError::Deadline {
                            export: export.to_owned(),
                            elapsed_ms: started.elapsed().as_millis(),
                        });
                    }
                    self.store.set_fuel(slice.max(pending.required_fuel())).map_err(trap)?;
                    call = pending.resume(&mut self.store).map_err(trap)?;
                }
            }
        }
    }

    /// A host call made by the host itself on the instance's behalf (the runner's
    /// `lifecycle_done`, `next_event`, `signal_ready`), through the same backend as the guest's.
    pub fn host_call(&mut self, call: HostCall) -> HostReply {
        self.store.data_mut().backend.call(call)
    }

    /// The capsule this instance runs.
    pub fn capsule(&self) -> &str {
        &self.store.data().capsule
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory, refusing anything out of bounds
/// or over `max` (ABI misuse traps the guest; it never reaches the host as a panic).
pub(super) fn read_guest(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    max: usize,
) -> Result<Vec<u8>, wasmi::Error> {
    let (Ok(ptr), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return Err(wasmi::Error::new("negative pointer or length"));
    };
    if len > max {
        return Err(wasmi::Error::new(format!("buffer of {len} bytes exceeds {max}")));
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmi::Error::new("the capsule exports no memory"));
    };
    let mut buffer = vec![0u8; len];
    memory
        .read(&*caller, ptr, &mut buffer)
        .map_err(|e| wasmi::Error::new(format!("out-of-bounds guest buffer: {e}")))?;
    Ok(buffer)
}

/// Copies `bytes` into a buffer the guest allocates with its `astrid_alloc(len) -> ptr`
/// export and returns `(ptr << 32) | len`. A guest without the export, or whose allocator
/// returns an out-of-bounds pointer, traps.
pub(super) fn write_guest(caller: &mut Caller<'_, HostState>, bytes: &[u8]) -> Result<i64, wasmi::Error> {
    let len = i32::try_from(bytes.len()).map_err(|_| wasmi::Error::new("result too large for the guest"))?;
    let Some(Extern::Func(alloc)) = caller.get_export("astrid_alloc") else {
        return Err(wasmi::Error::new("the capsule exports no astrid_alloc"));
    };
    let alloc = alloc.typed::<i32, i32>(&*caller)?;
    // The allocator runs on a fuel allowance of its own, not the guest's slice: the host asked
    // for this call (which, unlike the guest's own calls, cannot pause and resume), while a
    // hostile allocator that spins still stops at the allowance.
    let saved = caller.get_fuel().unwrap_or(0);
    caller.set_fuel(ALLOC_FUEL)?;
    let ptr = alloc.call(&mut *caller, len);
    caller.set_fuel(saved)?;
    let ptr = ptr?;
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmi::Error::new("the capsule exports no memory"));
    };
    let offset = usize::try_from(ptr).map_err(|_| wasmi::Error::new("astrid_alloc returned a negative pointer"))?;
    memory
        .write(&mut *caller, offset, bytes)
        .map_err(|e| wasmi::Error::new(format!("astrid_alloc returned a bad buffer: {e}")))?;
    Ok((i64::from(ptr) << 32) | i64::from(len))
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
