//! The daemon role: the kernel as a process.
//!
//! Boot order (each step logged; a failure stops the boot with the step named):
//!
//! 0. **configuration**: flags and environment validated at once ([`args::DaemonArgs::validate`];
//!    a bad value exits 2 before anything is created), then the home checked and prepared;
//! 1. **lock**: `run/system.lock`, exclusively; then remove run files a dead daemon left;
//! 2. **kernel**: bus, registry, management router;
//! 3. **socket**: bind `run/system.sock` in the 0700 `run/` directory;
//! 4. **token**: a new `run/system.token` (0600, atomic);
//! 5. **capsules**: discovery in the principal's and the workspace's capsule directories;
//! 6. **ready**: the bridge accepts, then `run/system.ready` (empty, 0600) is written last.
//!
//! Shutdown (SIGTERM, SIGINT, SIGHUP, a `Shutdown` request, or the ephemeral idle timeout):
//! stop accepting, flush queued replies (the `Shutdown` acknowledgement among them) and close
//! connections, remove socket, token and ready file, log the real reason, exit 0 (the lock
//! is released last, after the runtime's threads). A second signal during shutdown exits at once (130); a shutdown that takes longer
//! than [`SHUTDOWN_DEADLINE`] exits 1, so a wedged daemon never outlives its operator's patience.

mod allocator;
pub mod args;
pub mod idle;
pub mod logging;
pub mod reaper;
pub mod signals;
pub mod singleton;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio::sync::watch;

pub use args::{DaemonArgs, DaemonConfig};

use crate::audit::{Actor, AuditTrail, Decision};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::ipc::SessionToken;
use crate::ipc::bridge::{self, BridgeConfig};
use crate::kernel::{Kernel, KernelConfig, KernelState, ShutdownReason};
use crate::store::{KvConfig, KvError, KvStore};
use crate::vfs::Vfs;
use crate::wasm::supervisor::CapsuleHost;
use signals::Signals;
use singleton::SingletonLock;

/// Longest a graceful shutdown may take before the process exits anyway (status 1).
pub use signals::SHUTDOWN_DEADLINE;
/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 108;

/// Runs the daemon role to completion and returns the process exit code.
pub fn main(args: &DaemonArgs) -> ExitCode {
    // First of all, while this is the only thread: the allocator's settings need a fresh
    // start of the process (it comes back here with them, the same pid).
    let untuned = allocator::tune_or_reexec();
    // Then, before any thread exists: every thread started after inherits the blocked mask.
    let signals = match Signals::start() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("astrid daemon: cannot take termination signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match args.validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("astrid daemon: {message}");
            return ExitCode::from(2);
        }
    };
    let home = match AstridHome::from_env() {
        Ok(home) => home,
        Err(e) => {
            eprintln!("astrid daemon: cannot resolve the Astrid home (set ASTRID_HOME or HOME): {e}");
            return ExitCode::FAILURE;
        }
    };
    let tightened = match home.ensure() {
        Ok(tightened) => tightened,
        Err(e) => {
            eprintln!("astrid daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(&home.log_dir(), config.verbose) {
        eprintln!("astrid daemon: cannot open the log in {}: {e}; logging to stderr only", home.log_dir().display());
    }
    log_tightened(&home, &tightened);
    if let Some(reason) = untuned {
        log::warn!("{reason}");
    }
    log::info!(
        "astrid {} daemon starting: pid {}, home {}, workspace {}, session {}, {}",
        crate::VERSION,
        std::process::id(),
        home.root().display(),
        config.workspace.display(),
        config.session,
        if config.ephemeral { "ephemeral" } else { "persistent" },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (code, lock) = match runtime.block_on(run(config, home, signals)) {
        Ok(lock) => (ExitCode::SUCCESS, Some(lock)),
        Err(e) => {
            log::error!("daemon failed: {e:#}");
            (ExitCode::FAILURE, None)
        }
    };
    // The runtime goes first: its threads may hold the last handles on the KV store, whose
    // own file lock sled releases only when they are gone. The singleton lock is released
    // after that, so a successor that wins it finds the store free (see `open_state`).
    runtime.shutdown_timeout(RUNTIME_EXIT_WAIT);
    logging::flush(Duration::from_secs(1));
    drop(lock);
    code
}

/// Logs what the home's check tightened: loudly, except below `var/` (the KV store and
/// the overlays), where files are made with the umask's mode inside 0700 directories.
fn log_tightened(home: &AstridHome, tightened: &[crate::home::Tightened]) {
    let var = home.root().join("var");
    let (quiet, loud): (Vec<_>, Vec<_>) = tightened.iter().partition(|t| t.path.starts_with(&var));
    for t in loud {
        log::warn!(
            "home: {t}: Astrid keeps its home private (directories 0700, files 0600); if others could reach it, treat what it holds as exposed (a key, a secret)"
        );
    }
    if !quiet.is_empty() {
        log::info!("home: tightened {} path(s) below {} to owner-only modes", quiet.len(), var.display());
        for t in quiet {
            log::debug!("home: {t}");
        }
    }
}

/// Boots, serves until a shutdown is asked for, and shuts down. Runs inside the runtime.
///
/// Returns the singleton lock rather than releasing it: the caller holds it until every
/// thread that could still touch the stores is gone.
pub async fn run(config: DaemonConfig, home: AstridHome, mut signals: Signals) -> anyhow::Result<SingletonLock> {
    let boot_started = Instant::now();
    if reaper::spawn_if_pid1() {
        log::info!("running as PID 1: reaping orphaned children");
    }
    let idle_policy = config.idle;

    let (lock, stale) = singleton::acquire(&home).context("boot step 1/6 (lock)")?;
    if !stale.is_empty() {
        log::warn!("removed run files left by a daemon that did not shut down cleanly: {stale:?}");
    }
    log::info!("boot 1/6: lock {} acquired", home.lock_path().display());

    let state = open_state(&home, &config).context("boot step 2/6 (kernel state)")?;
    let kernel = Kernel::new(
        KernelConfig {
            session: config.session,
            workspace: config.workspace.clone(),
            home: home.clone(),
            ephemeral: config.ephemeral,
            default_capsules: config.default_capsules,
        },
        state,
    )
    .context("boot step 2/6 (kernel)")?;
    let router = kernel.start();
    let mode = if config.ephemeral { "ephemeral" } else { "persistent" };
    kernel.record(
        DEFAULT_PRINCIPAL,
        Actor::Kernel,
        "daemon.start",
        mode,
        Decision::Info,
        &format!("pid {}", std::process::id()),
    );
    log::info!("boot 2/6: kernel started (KV store, audit trail, workspace overlay open)");

    let listener = bind_socket(&home).context("boot step 3/6 (socket)")?;
    log::info!("boot 3/6: listening on {}", home.socket_path().display());

    let token = SessionToken::generate().context("boot step 4/6 (token)")?;
    token.write_atomic(&home.token_path()).context("boot step 4/6 (token)")?;
    log::info!("boot 4/6: session token written to {}", home.token_path().display());

    let (servers, refused) = crate::mcp::config::load(&home.root().join("etc").join("servers.toml"));
    log::info!("boot 5/6: {} MCP server(s) configured in etc/servers.toml, starting", servers.len());
    let mcp = crate::mcp::McpHost::start(Arc::clone(&kernel), config.workspace.clone(), servers, refused);
    kernel.set_mcp(Arc::clone(&mcp) as Arc<dyn crate::kernel::mcp_service::McpService>);
    let mcp_tools = tokio::spawn(crate::mcp::tools::serve(Arc::clone(&kernel), Arc::clone(&mcp)));

    let capsules = kernel.reload_capsules();
    let mcp_capsules = tokio::spawn(follow_capsule_servers(Arc::clone(&kernel), Arc::clone(&mcp)));
    let dirs = kernel.capsule_dirs();
    log::info!(
        "boot 5/6: {capsules} capsule(s) registered (searched {} and {})",
        dirs.principal.display(),
        dirs.workspace.display()
    );

    let capsule_host = CapsuleHost::new(Arc::clone(&kernel), config.host);
    // The bridge accepts before capsules start: capsules with a process of their own attach
    // through it. Frontends learn the daemon is ready from the ready file, written last.
    let (stop, stop_rx) = watch::channel(false);
    let bridge_config = BridgeConfig { max_clients: config.max_clients, ..BridgeConfig::default() };
    let bridge = tokio::spawn(bridge::serve(
        listener,
        Arc::clone(&kernel),
        Some(Arc::clone(&capsule_host)),
        token,
        bridge_config,
        stop_rx,
    ));
    let host_task = tokio::spawn(keep_capsules_in_sync(Arc::clone(&capsule_host), kernel.capsules_changed()));
    {
        let host = Arc::clone(&capsule_host);
        tokio::task::spawn_blocking(move || {
            host.sync();
            host.wait_ready(CAPSULE_READY_WAIT);
        })
        .await
        .context("boot step 5/6 (starting capsules)")?;
    }
    log::info!("boot 5/6: running: {:?}", kernel.capsules().ready_names());

    write_ready(&home).context("boot step 6/6 (ready)")?;
    log::info!("boot 6/6: ready in {:.1} ms", boot_started.elapsed().as_secs_f64() * 1000.0);
    kernel.verify_audit();
    let watchdog = tokio::spawn(crate::kernel::watchdog::run(Arc::clone(&kernel), config.watchdog_interval));

    let ready_at = tokio::time::Instant::now();
    let idle = async {
        match idle_policy {
            Some(policy) => idle::wait_until_idle(kernel.clients().watch(), policy, ready_at).await,
            None => std::future::pending().await,
        }
    };
    let mut requested = kernel.shutdown_requested();
    let reason = tokio::select! {
        name = signals.recv() => ShutdownReason::Signal(name),
        reason = requested.wait_for(Option::is_some) => match reason {
            Ok(reason) => reason.clone().unwrap_or(ShutdownReason::Request(None)),
            Err(_) => ShutdownReason::Request(None),
        },
        () = idle => ShutdownReason::IdleTimeout,
    };
    log::info!("shutting down: {reason}");
    signals.shutting_down();
    kernel.cancel_audit_verification();

    stop.send_replace(true);
    if let Err(e) = bridge.await {
        log::error!("socket bridge ended abnormally: {e}");
    }
    host_task.abort();
    let host = Arc::clone(&capsule_host);
    if let Err(e) = tokio::task::spawn_blocking(move || host.stop_all()).await {
        log::error!("stopping capsules failed: {e}");
    }
    mcp_tools.abort();
    mcp_capsules.abort();
    mcp.stop_all().await;
    router.abort();
    watchdog.abort();
    kernel.summarize_routine();
    kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "daemon.stop", &reason.to_string(), Decision::Info, "shutdown");
    kernel.flush();
    let removed = singleton::remove_run_files(&home, &lock);
    log::info!("removed {} run file(s); shutdown complete ({reason})", removed.len());
    Ok(lock)
}

/// How long the exit waits for the runtime's threads (a blocking task still running is left
/// to the process exit).
const RUNTIME_EXIT_WAIT: Duration = Duration::from_secs(3);

/// How long boot waits for a previous daemon, exiting, to release the KV store's own lock.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// How long boot waits for run-loop capsules to signal readiness (a slow one is logged).
const CAPSULE_READY_WAIT: Duration = Duration::from_millis(500);

/// Starts, restarts and stops capsules whenever the registry or a grant changes.
async fn keep_capsules_in_sync(host: Arc<CapsuleHost>, mut changed: watch::Receiver<u64>) {
    while changed.changed().await.is_ok() {
        let host = Arc::clone(&host);
        if let Err(e) = tokio::task::spawn_blocking(move || host.sync()).await {
            log::error!("capsule host sync failed: {e}");
        }
    }
}

/// Starts and stops the MCP servers capsules declare as capsules come, go and get grants.
async fn follow_capsule_servers(kernel: Arc<Kernel>, mcp: Arc<crate::mcp::McpHost>) {
    let mut changed = kernel.capsules_changed();
    loop {
        let (servers, refused) = crate::mcp::capsule_servers::collect(&kernel);
        mcp.sync_capsule_servers(servers, refused);
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Opens the stores. The KV store comes after the singleton lock, so a second daemon never
/// reaches sled; should sled still find its lock taken, the error names the owning daemon.
///
/// Holding the singleton lock, a store that is still locked can only belong to a daemon in
/// its last moments (the lock and sled's own lock are released one after the other when a
/// process exits), so the open is retried for [`STORE_RELEASE_WAIT`] before it is refused.
fn open_state(home: &AstridHome, config: &DaemonConfig) -> anyhow::Result<KernelState> {
    let started = Instant::now();
    let mut waited = false;
    let store = loop {
        match KvStore::open(home, KvConfig::default()) {
            Err(KvError::Locked { .. }) if started.elapsed() < STORE_RELEASE_WAIT => {
                waited = true;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => break other?,
        }
    };
    if waited {
        log::info!("the previous daemon released the KV store after {:.0?}", started.elapsed());
    }
    let audit = AuditTrail::open(home)?;
    let vfs = Vfs::open(&config.workspace, &home.overlay_dir(&config.workspace))?;
    Ok(KernelState { store, audit, vfs })
}

fn bind_socket(home: &AstridHome) -> anyhow::Result<UnixListener> {
    let path = home.socket_path();
    let len = path.as_os_str().len();
    if len >= MAX_SOCKET_PATH {
        bail!(
            "socket path is {len} bytes, exceeding the platform limit of {MAX_SOCKET_PATH} bytes: {} (choose a shorter ASTRID_HOME)",
            path.display()
        );
    }
    // `run/` was checked (ours, 0700, not a link) with the rest of the home before the lock.
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
    // bind(2) gave the socket 0777 less the umask: a frontend needs only the owner's bits.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", path.display()))?;
    Ok(listener)
}

fn write_ready(home: &AstridHome) -> anyhow::Result<()> {
    let path = home.ready_path();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
