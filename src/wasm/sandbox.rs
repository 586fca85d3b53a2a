//! One capsule instance: its store, its limits, and calls into it.

use std::time::Instant;

use wasmi::{
    Caller, Engine, Extern, Instance, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, TypedResumableCall,
    WasmParams, WasmResults,
};

use std::time::Duration;

use uuid::Uuid;

use super::SandboxLimits;
use std::sync::Arc;

use crate::kernel::Kernel;
use crate::kernel::bus::Subscription;
use crate::store::{KvStore, Namespace};

/// The import module every host function lives in.
pub const HOST_MODULE: &str = "astrid";
/// The host functions this build links (everything else is refused at load).
pub const HOST_FUNCTIONS: &[&str] = &[
    "log",
    "clock_ms",
    "random_bytes",
    "kv_get",
    "kv_set",
    "kv_delete",
    "kv_list_keys",
    "kv_clear_prefix",
    "kv_cas",
    "ipc_publish",
    "ipc_subscribe",
    "ipc_recv",
    "ipc_unsubscribe",
    "fs_read",
    "fs_write",
    "fs_exists",
    "fs_stat",
    "fs_readdir",
    "fs_mkdir",
    "fs_unlink",
];
/// Most random bytes one call may ask for.
const MAX_RANDOM: usize = 64 * 1024;
/// Longest log line a guest may pass.
const MAX_LOG: usize = 64 * 1024;

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
}

/// Per-instance host state.
#[derive(Debug)]
pub struct HostState {
    limits: StoreLimits,
    capsule: String,
    pub(super) kv: Option<(KvStore, Namespace)>,
    pub(super) kernel: Option<KernelAccess>,
    /// Bus subscriptions by handle (a freed handle is `None` and reused).
    pub(super) subscriptions: Vec<Option<Subscription>>,
    /// Time spent waiting in host calls during the current call (not charged to the deadline).
    pub(super) waited: Duration,
    /// The `source_id` of this instance's messages.
    pub(super) source_id: Uuid,
    /// Lines the guest logged (also sent to the daemon log).
    pub logs: Vec<String>,
}

impl HostState {
    /// The capsule this state belongs to.
    pub fn capsule(&self) -> &str {
        &self.capsule
    }
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
    pub fn load(engine: &Engine, capsule: &str, wasm: &[u8], limits: SandboxLimits) -> Result<Self, SandboxError> {
        Self::load_with(engine, capsule, wasm, limits, HostServices::default())
    }

    /// [`Sandbox::load`] with host services (KV, …) for this instance.
    pub fn load_with(
        engine: &Engine,
        capsule: &str,
        wasm: &[u8],
        limits: SandboxLimits,
        services: HostServices,
    ) -> Result<Self, SandboxError> {
        let module = Module::new(engine, wasm).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        for import in module.imports() {
            if import.module() != HOST_MODULE || !HOST_FUNCTIONS.contains(&import.name()) {
                return Err(SandboxError::ForbiddenImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(1)
                .memories(1)
                .tables(1)
                .build(),
            capsule: capsule.to_owned(),
            kv: services.kv,
            kernel: services.kernel,
            subscriptions: Vec::new(),
            waited: Duration::ZERO,
            source_id: Uuid::new_v4(),
            logs: Vec::new(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        let mut linker = Linker::<HostState>::new(engine);
        link(&mut linker)?;
        // Instantiation runs no guest code (start functions are refused by the engine config),
        // but give it a slice of fuel for any lazy translation it does.
        store.set_fuel(limits.fuel_slice).map_err(|e| SandboxError::Instantiate(e.to_string()))?;
        let instance =
            linker.instantiate_and_start(&mut store, &module).map_err(|e| SandboxError::Instantiate(e.to_string()))?;
        Ok(Self { store, instance, limits, poisoned: false })
    }

    /// Calls `export` with `params` under the fuel budget and the deadline.
    pub fn call<P: WasmParams, R: WasmResults>(&mut self, export: &str, params: P) -> Result<R, SandboxError> {
        if self.poisoned {
            return Err(SandboxError::Poisoned);
        }
        let func = self
            .instance
            .get_typed_func::<P, R>(&self.store, export)
            .map_err(|e| SandboxError::MissingExport { name: export.to_owned(), reason: e.to_string() })?;
        let result = self.run(export, |store| func.call_resumable(store, params));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn run<R: WasmResults>(
        &mut self,
        export: &str,
        start: impl FnOnce(&mut Store<HostState>) -> Result<TypedResumableCall<R>, wasmi::Error>,
    ) -> Result<R, SandboxError> {
        let trap = |e: wasmi::Error| SandboxError::Trap { export: export.to_owned(), message: e.to_string() };
        let started = Instant::now();
        self.store.data_mut().waited = Duration::ZERO;
        let slice = self.limits.fuel_slice;
        self.store.set_fuel(slice).map_err(trap)?;
        let mut spent = 0u64;
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

    /// The capsule this instance runs.
    pub fn capsule(&self) -> &str {
        &self.store.data().capsule
    }

    /// What the guest logged so far.
    pub fn logs(&self) -> &[String] {
        &self.store.data().logs
    }
}

fn link(linker: &mut Linker<HostState>) -> Result<(), SandboxError> {
    let err = |e: wasmi::errors::LinkerError| SandboxError::Instantiate(e.to_string());
    linker
        .func_wrap(
            HOST_MODULE,
            "log",
            |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<(), wasmi::Error> {
                let bytes = read_guest(&mut caller, ptr, len, MAX_LOG)?;
                let line = String::from_utf8_lossy(&bytes).into_owned();
                log::info!("capsule {}: {line}", caller.data().capsule);
                caller.data_mut().logs.push(line);
                Ok(())
            },
        )
        .map_err(err)?;
    linker.func_wrap(HOST_MODULE, "clock_ms", || -> i64 { chrono::Utc::now().timestamp_millis() }).map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "random_bytes",
            |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
                // Checks the buffer first (read_guest bounds-checks), then fills it from the OS CSPRNG.
                let mut bytes = read_guest(&mut caller, ptr, len, MAX_RANDOM)?;
                if getrandom::fill(&mut bytes).is_err() {
                    return Ok(-1);
                }
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    return Err(wasmi::Error::new("the capsule exports no memory"));
                };
                let offset = usize::try_from(ptr).map_err(|_| wasmi::Error::new("negative pointer"))?;
                memory.write(&mut caller, offset, &bytes).map_err(|e| wasmi::Error::new(e.to_string()))?;
                Ok(0)
            },
        )
        .map_err(err)?;
    super::host_kv::link(linker).map_err(err)?;
    super::host_ipc::link(linker).map_err(err)?;
    super::host_fs::link(linker).map_err(err)?;
    Ok(())
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
    let ptr = alloc.call(&mut *caller, len)?;
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
