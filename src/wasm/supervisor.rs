//! The capsule supervisor inside the daemon (not to be confused with the `capsule_host` role,
//! a process that runs one capsule): starts, supervises and stops capsule instances.
//!
//! Each running capsule has an OS thread of its own that owns its instance (wasmi runs
//! guest code synchronously, and a run loop blocks in `ipc_recv`), so a busy or stuck capsule
//! never holds up the kernel, the socket bridge or another capsule.
//!
//! What runs is decided from the kernel's registry, whenever it changes
//! ([`Kernel::capsules_changed`]): a capsule runs when it is installed and intact, has a
//! module, and its grant is approved (or it asks for nothing). A capsule whose code, grant or
//! configuration changed is stopped and started again; one that left the registry or lost
//! its grant is stopped.
//!
//! A capsule that traps, exhausts its budget, or whose run loop returns is audited
//! (`capsule.crashed`), announced on `astrid.v1.health.failed`, and restarted on a fresh
//! instance after a delay that doubles from the initial backoff up to two minutes. After
//! five restarts in a row it is left failed with the last reason; a capsule that ran a minute
//! without failing starts its count again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::development::{self, Refusal};
use super::lifecycle::Lifecycle;
use super::process::{self, ChildError, ChildReport, Tickets};
use super::runner::{PrepareError, RunError};
use super::sandbox::{CompiledModule, Sandbox, SandboxError};
use super::wait::{block_on_timeout, unless_stopped};
use super::{SandboxLimits, runner};
use crate::audit::{Actor, Decision};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::capsule_config as config;
use crate::kernel::capsules::{CapsuleOrigin, CapsuleState};
use crate::kernel::grants::GrantStatus;
use crate::kernel::manifest::Isolation;
use crate::kernel::{BusMessage, Kernel};
use crate::types::topics::HEALTH_FAILED_TOPIC;
use crate::types::{CapsuleAttach, CapsuleHealthFailed, IpcMessage, IpcPayload};

/// KV namespace recording, per capsule, the install whose lifecycle hook has run.
pub(super) const LIFECYCLE: &str = "lifecycle";
/// Guest export run on the first start of an install.
pub const INSTALL_EXPORT: &str = "astrid_install";
/// Guest export run on the first start of a new version.
pub const UPGRADE_EXPORT: &str = "astrid_upgrade";
/// Restarts in a row before a capsule is left failed.
pub const MAX_RESTARTS: u32 = 5;
/// The longest delay between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// Running this long without failing resets the restart count.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Why one life of a capsule ended in failure (the supervisor records it, then restarts the
/// capsule with backoff).
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The kernel's half could not start it.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// Its module does not compile or instantiate.
    #[error(transparent)]
    Load(#[from] SandboxError),
    /// The interpreter's half ended it.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Its capsule-host process failed.
    #[error(transparent)]
    Process(#[from] ChildError),
}

/// How the host runs capsules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Limits of every instance and call.
    pub limits: SandboxLimits,
    /// Delay before the first restart (doubles each time).
    pub initial_backoff: Duration,
    /// Whether capsule HTTP may reach private and loopback addresses.
    pub allow_private_network: bool,
    /// `Process` runs every capsule in a capsule-host process, whatever its manifest says.
    pub isolation: Isolation,
    /// How long the boot's start waits for capsules to signal ready before what is for them
    /// goes ahead anyway (a slow one is logged): see [`crate::kernel::start_gate`].
    pub start_wait: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            limits: SandboxLimits::default(),
            initial_backoff: Duration::from_secs(2),
            allow_private_network: false,
            isolation: Isolation::Thread,
            start_wait: Duration::from_millis(500),
        }
    }
}

impl HostConfig {
    /// The defaults, with `ASTRID_CAPSULE_BACKOFF_MS` (the first restart delay),
    /// `ASTRID_CAPSULE_DEADLINE_MS` (wall-clock time per call) and `ASTRID_HTTP_ALLOW_PRIVATE=1`
    /// (capsule HTTP may reach private networks; off by default) and
    /// `ASTRID_CAPSULE_ISOLATION=process` (every capsule in a process of its own) and
    /// `ASTRID_CAPSULE_START_WAIT_MS` (the boot's wait for capsules) overriding them.
    pub fn from_env() -> Result<Self, String> {
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            match std::env::var(name) {
                Ok(raw) => raw
                    .trim()
                    .parse()
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|_| format!("{name} must be milliseconds, not {raw:?}")),
                Err(_) => Ok(None),
            }
        };
        let mut config = Self::default();
        if let Some(backoff) = millis("ASTRID_CAPSULE_BACKOFF_MS")? {
            config.initial_backoff = backoff;
        }
        if let Some(deadline) = millis("ASTRID_CAPSULE_DEADLINE_MS")? {
            config.limits.deadline = deadline;
        }
        if let Some(wait) = millis("ASTRID_CAPSULE_START_WAIT_MS")? {
            config.start_wait = wait;
        }
        config.allow_private_network = match std::env::var("ASTRID_HTTP_ALLOW_PRIVATE").as_deref() {
            Ok("1" | "true") => true,
            Ok("" | "0" | "false") | Err(_) => false,
            Ok(other) => return Err(format!("ASTRID_HTTP_ALLOW_PRIVATE must be 1 or 0, not {other:?}")),
        };
        config.isolation = match std::env::var("ASTRID_CAPSULE_ISOLATION").as_deref() {
            Ok("process") => Isolation::Process,
            Ok("" | "thread") | Err(_) => Isolation::Thread,
            Ok(other) => return Err(format!("ASTRID_CAPSULE_ISOLATION must be thread or process, not {other:?}")),
        };
        Ok(config)
    }
}

/// What identifies the code and permissions a running instance was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    /// Its installed directory; none for an embedded default capsule.
    dir: Option<PathBuf>,
    code_hash: Option<String>,
    grant: GrantStatus,
    /// BLAKE3 of the capsule's env file: new values given by the operator restart it.
    config_hash: Option<String>,
    /// BLAKE3 of its manifest: a new version or new bindings restart it.
    manifest_hash: Option<String>,
    /// Where it runs (the operator's setting over its manifest's).
    isolation: Isolation,
}

struct Running {
    identity: Identity,
    lifecycle: Arc<Lifecycle>,
    thread: CapsuleThread,
    /// The kernel's rescan count when it started.
    rescan: u64,
}

/// A capsule's supervising thread, and its end as something to wait on: the thread holds the
/// sender of `ended` and drops it when it returns or unwinds, which wakes every waiter.
struct CapsuleThread {
    handle: JoinHandle<()>,
    ended: watch::Receiver<()>,
}

impl CapsuleThread {
    fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> std::io::Result<Self> {
        let (alive, ended) = watch::channel(());
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _alive = alive;
            body();
        })?;
        Ok(Self { handle, ended })
    }

    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Completes once the thread's body is over. Needs no runtime.
    fn ended(&self) -> impl Future<Output = ()> + use<> {
        let mut ended = self.ended.clone();
        async move { while ended.changed().await.is_ok() {} }
    }

    /// Joins the thread if it ends within `within`; otherwise leaves it running (detached).
    fn join_within(self, within: Duration) -> bool {
        if block_on_timeout(self.ended(), within).is_none() {
            return false;
        }
        // Its body is over: what is left of the thread is its exit.
        if self.handle.join().is_err() {
            log::error!("a capsule thread panicked");
        }
        true
    }
}

/// A module compiled once, on first use, by whichever capsule thread needs it first.
type ModuleCell = Arc<std::sync::OnceLock<Result<CompiledModule, SandboxError>>>;

/// How long stopping waits for a capsule's thread. A stop wakes waits and computing guests
/// quickly, but an HTTP request in flight runs to its own timeout.
const STOP_WAIT: Duration = Duration::from_secs(2);

fn wanted_identity<'a>(wanted: &'a [(String, Identity)], name: &str) -> Option<&'a Identity> {
    wanted.iter().find(|(n, _)| n == name).map(|(_, identity)| identity)
}

/// Starts, restarts and stops the daemon's capsule instances, on threads of the daemon or in
/// capsule-host processes.
pub struct CapsuleSupervisor {
    kernel: Arc<Kernel>,
    config: HostConfig,
    running: Mutex<HashMap<String, Running>>,
    /// Compiled modules by BLAKE3 (a module is compiled once, however often it restarts),
    /// each on an engine of its own. Only the modules of capsules that are wanted are kept:
    /// [`CapsuleSupervisor::sync`] drops the others, and with them everything their engines held.
    modules: Mutex<HashMap<String, ModuleCell>>,
    /// Attach tickets of the capsule-host processes this host started.
    tickets: Tickets,
    /// Set by [`CapsuleSupervisor::stop_all`]: a sync still under way (the boot's start runs
    /// after readiness, so a shutdown can overtake it) starts nothing more.
    stopped: AtomicBool,
}

/// What the daemon keeps for a capsule-host connection that attached.
#[derive(Debug)]
pub struct Attachment {
    /// The capsule's context (its host calls act on it), module and plan.
    pub prepared: runner::Prepared,
    /// The session's own lifecycle: stopped when the connection ends, which wakes a call
    /// waiting on the bus or a person.
    pub lifecycle: Arc<Lifecycle>,
    /// The limits the capsule host must apply.
    pub limits: SandboxLimits,
    /// A development capsule's registration, dropped (unregistered) with the session.
    pub registration: Option<development::Registration>,
    /// Where a failure the capsule host reports goes: to the supervisor that started the
    /// process (none for a development run, whose author sees it).
    pub report: Option<Arc<ChildReport>>,
}

impl std::fmt::Debug for CapsuleSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleSupervisor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl CapsuleSupervisor {
    /// A host for `kernel`'s capsules; nothing runs until [`CapsuleSupervisor::sync`].
    pub fn new(kernel: Arc<Kernel>, config: HostConfig) -> Arc<Self> {
        Arc::new(Self {
            kernel,
            config,
            running: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            tickets: Tickets::default(),
            stopped: AtomicBool::new(false),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings what runs in line with the registry: starts, restarts and stops capsules, then
    /// reports the generation it read as applied (see [`crate::kernel::capsule_sync`]).
    pub fn sync(self: &Arc<Self>) {
        // Read before the registry: what this sync applies is this generation or a later one.
        let generation = self.kernel.capsules_generation();
        // In registry order, which is load order (importers after exporters).
        let wanted: Vec<(String, Identity)> = self
            .kernel
            .capsules()
            .capsules()
            .iter()
            // Built-ins are the daemon itself; development capsules run in their author's process.
            .filter(|c| !matches!(c.origin, CapsuleOrigin::BuiltIn | CapsuleOrigin::Development))
            .filter(|c| c.code_hash.is_some())
            .filter(|c| !matches!(c.state, CapsuleState::Failed(_)))
            .filter(|c| matches!(c.grant, GrantStatus::Approved | GrantStatus::NothingRequested))
            .filter_map(|c| {
                let dir = c.dir.clone();
                if dir.is_none() && c.origin != CapsuleOrigin::Embedded {
                    return None;
                }
                let env = config::env_file(&self.kernel.config().home, DEFAULT_PRINCIPAL, &c.name);
                let config_hash = std::fs::read(env).ok().map(|bytes| blake3::hash(&bytes).to_hex().to_string());
                let identity = Identity {
                    dir,
                    code_hash: c.code_hash.clone(),
                    grant: c.grant.clone(),
                    config_hash,
                    manifest_hash: c.manifest_hash.clone(),
                    isolation: if self.config.isolation == Isolation::Process {
                        Isolation::Process
                    } else {
                        c.isolation
                    },
                };
                Some((c.name.clone(), identity))
            })
            .collect();
        let rescan = self.kernel.rescans();
        let mut running = self.running();
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| wanted_identity(&wanted, name) != Some(&r.identity) || r.thread.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(old) = running.remove(&name) {
                // A finished thread gave up (failed for good): it stays down until something
                // about the capsule changes (a new identity) or the operator rescans.
                if old.thread.is_finished() && wanted_identity(&wanted, &name) == Some(&old.identity) {
                    if old.rescan == rescan {
                        running.insert(name, old);
                    }
                    continue;
                }
                old.lifecycle.stop();
                if !old.thread.join_within(STOP_WAIT) {
                    log::warn!("capsule {name} did not stop within {} ms; left to finish alone", STOP_WAIT.as_millis());
                }
                log::info!("capsule {name} stopped (changed, removed or no longer granted)");
                // Not running any more (a failure found on the way keeps its reason); a new
                // start reports itself ready again.
                self.kernel.stopped_capsule(&name);
            }
        }
        // Compiled modules of capsules that are no longer wanted (removed, replaced by new
        // code, failed) are dropped now that their threads are stopped; an instance that is
        // still finishing keeps its module (and engine) alive until it ends.
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|hash, _| wanted.iter().any(|(_, identity)| identity.code_hash.as_deref() == Some(hash.as_str())));
        for (name, identity) in wanted {
            if let Some(current) = running.get(&name) {
                // Reloading replaced the registry entry: report the state again.
                if !current.thread.is_finished() && current.lifecycle.is_ready() {
                    self.kernel.set_capsule_state(&name, CapsuleState::Ready);
                }
                continue;
            }
            let lifecycle = Arc::new(Lifecycle::default());
            let host = Arc::clone(self);
            let (thread_name, thread_lifecycle, dir) =
                (format!("capsule:{name}"), Arc::clone(&lifecycle), identity.dir.clone());
            let (capsule, isolation) = (name.clone(), identity.isolation);
            match CapsuleThread::spawn(thread_name, move || {
                host.supervise(&capsule, dir.as_deref(), isolation, &thread_lifecycle);
            }) {
                Ok(thread) => {
                    running.insert(name, Running { identity, lifecycle, thread, rescan });
                }
                Err(e) => {
                    log::error!("cannot start a thread for capsule {name}: {e}");
                    self.kernel.set_capsule_state(&name, CapsuleState::Failed(format!("cannot start a thread: {e}")));
                }
            }
        }
        // Old instances stopped, new ones spawned: a request waiting for this change may answer.
        self.kernel.capsules_applied().applied(generation);
    }

    /// Waits up to `within` for every running capsule to be ready (boot does not wait longer:
    /// a slow capsule is logged, not fatal).
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        // Each wait ends when the capsule signals ready or its thread ends (it gave up).
        let waits: Vec<(String, _)> = self
            .running()
            .iter()
            .map(|(name, r)| (name.clone(), unless_stopped(r.lifecycle.ready(), r.thread.ended())))
            .collect();
        let mut waiting = Vec::new();
        for (name, ready_or_ended) in waits {
            if block_on_timeout(ready_or_ended, deadline.saturating_duration_since(Instant::now())).is_none() {
                waiting.push(name);
            }
        }
        if !waiting.is_empty() {
            log::warn!("capsule(s) not ready after {} ms: {}", within.as_millis(), waiting.join(", "));
        }
    }

    /// Stops every capsule and waits for their threads (a stop reaches a waiting capsule at
    /// once and a computing one within a fuel slice).
    pub fn stop_all(&self) {
        // Before the lock: a sync that takes it later sees the flag and starts nothing.
        self.stopped.store(true, Ordering::SeqCst);
        let running: Vec<(String, Running)> = self.running().drain().collect();
        for (_, r) in &running {
            r.lifecycle.stop();
        }
        let deadline = Instant::now() + STOP_WAIT;
        for (name, r) in running {
            if !r.thread.join_within(deadline.saturating_duration_since(Instant::now())) {
                log::warn!("capsule {name} did not stop in time (blocked in a host call); exiting without it");
            }
        }
    }

    /// The compiled module for `wasm` (BLAKE3 `hash`), compiling it on first use. Capsules
    /// sharing a module wait for one compilation; different modules compile in parallel.
    fn module(&self, hash: &str, wasm: &[u8]) -> Result<CompiledModule, SandboxError> {
        let cell =
            Arc::clone(self.modules.lock().unwrap_or_else(|e| e.into_inner()).entry(hash.to_owned()).or_default());
        cell.get_or_init(|| super::compile(wasm)).clone()
    }

    /// The thread body: run the capsule, restart it with backoff when it fails.
    fn supervise(&self, name: &str, dir: Option<&Path>, isolation: Isolation, lifecycle: &Arc<Lifecycle>) {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let outcome = self.run_once(name, dir, isolation, lifecycle);
            if lifecycle.is_stopping() {
                return;
            }
            let reason = match outcome {
                Ok(()) => "its run loop returned".to_owned(),
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= HEALTHY_AFTER {
                attempt = 0;
            }
            attempt += 1;
            self.report_failure(name, &reason, attempt);
            if attempt > MAX_RESTARTS {
                let message = format!("gave up after {MAX_RESTARTS} restarts: {reason}");
                log::error!("capsule {name}: {message}");
                self.kernel.set_capsule_state(name, CapsuleState::Failed(message));
                return;
            }
            self.kernel.set_capsule_state(name, CapsuleState::Restarting { attempt, reason });
            let delay = self.config.initial_backoff.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF);
            if block_on_timeout(lifecycle.stopped(), delay).is_some() {
                return;
            }
        }
    }

    fn report_failure(&self, name: &str, reason: &str, attempt: u32) {
        log::warn!("capsule {name} failed ({reason}); restart {attempt} of {MAX_RESTARTS}");
        self.kernel.record(
            DEFAULT_PRINCIPAL,
            Actor::Capsule { name: name.to_owned() },
            "capsule.crashed",
            name,
            Decision::Info,
            reason,
        );
        let failed = CapsuleHealthFailed { capsule_id: name.to_owned(), reason: reason.to_owned(), attempt };
        match serde_json::to_value(failed) {
            Ok(data) => {
                let message = IpcMessage::new(HEALTH_FAILED_TOPIC, IpcPayload::Custom { data }, self.kernel.session());
                self.kernel.bus().publish(BusMessage::from_kernel(message));
            }
            Err(e) => log::error!("cannot encode {HEALTH_FAILED_TOPIC}: {e}"),
        }
    }

    /// One life of an instance, on this thread or, when its manifest or the operator asks
    /// for it, in a capsule-host process.
    fn run_once(
        &self,
        name: &str,
        dir: Option<&Path>,
        isolation: Isolation,
        lifecycle: &Arc<Lifecycle>,
    ) -> Result<(), InstanceError> {
        if isolation == Isolation::Process {
            let home = self.kernel.config().home.root().to_path_buf();
            return Ok(process::run_child(&home, &self.tickets, name, dir, lifecycle)?);
        }
        let mut prepared = runner::prepare(&self.kernel, &self.config, name, dir, Arc::clone(lifecycle))?;
        // The bytes are needed only to compile: dropped here, not held while the capsule runs
        // (a megabyte resident for the default set).
        let module = self.module(&prepared.hash, &std::mem::take(&mut prepared.wasm))?;
        let backend = Box::new(prepared.context);
        let mut sandbox = Sandbox::instantiate_with(name, &module, self.config.limits, backend, Arc::clone(lifecycle))?;
        self.kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "capsule.start", name, Decision::Info, "instantiated");
        Ok(runner::run(&mut sandbox, &prepared.plan)?)
    }

    /// Attaches a capsule-host connection: to the capsule its ticket was issued for, or to
    /// the development capsule in the directory it names (see [`development`]). The kernel's
    /// half of starting it runs here, in the daemon, and stays here (the connection carries
    /// only the module, the limits and the plan). Audited either way.
    pub fn attach(&self, request: &CapsuleAttach) -> Result<Attachment, Refusal> {
        let audit = |capsule: &str, decision, rule: &str| {
            self.kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "capsule.attach", capsule, decision, rule);
        };
        let refuse = |capsule: &str, reason: String| {
            audit(capsule, Decision::Deny, &reason);
            Refusal::Refused(reason)
        };
        let session = Arc::new(Lifecycle::default());
        if let (None, Some(dir)) = (&request.ticket, &request.dir) {
            let loaded = development::load(&self.kernel, dir, request.approve)?;
            let name = loaded.manifest.package.name.clone();
            let prepared = runner::prepare_loaded(
                &self.kernel,
                &self.config,
                &loaded.manifest,
                loaded.wasm,
                None,
                &std::collections::BTreeMap::new(),
                Arc::clone(&session),
            )
            .map_err(|error| refuse(&name, error.to_string()))?;
            audit(&name, Decision::Allow, &format!("development run of {dir}"));
            let registration = Some(loaded.registration);
            return Ok(Attachment {
                prepared,
                lifecycle: session,
                limits: self.config.limits,
                registration,
                report: None,
            });
        }
        let Some(ticketed) = request.ticket.as_deref().and_then(|ticket| self.tickets.redeem(ticket)) else {
            let reason = if request.ticket.is_some() {
                "unknown, expired or used ticket"
            } else {
                "a capsule host must present the ticket the daemon gave it, or a capsule directory"
            };
            return Err(refuse("-", reason.to_owned()));
        };
        let prepared =
            runner::prepare(&self.kernel, &self.config, &ticketed.name, ticketed.dir.as_deref(), Arc::clone(&session))
                .map_err(|error| {
                    // The supervisor learns why from here, not from the refused process.
                    let reason = error.to_string();
                    ticketed.report.refused(error);
                    refuse(&ticketed.name, reason)
                })?;
        let supervised = Arc::clone(&ticketed.lifecycle);
        session.on_ready(move || supervised.signal_ready());
        audit(&ticketed.name, Decision::Allow, "ticket redeemed; runs in a capsule-host process");
        Ok(Attachment {
            prepared,
            lifecycle: session,
            limits: self.config.limits,
            registration: None,
            report: Some(ticketed.report),
        })
    }
}
