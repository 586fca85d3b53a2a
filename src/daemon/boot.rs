//! Boot: from a validated configuration to a daemon that answers, one step at a time.
//!
//! The steps are [`Step`], in order; each is a function below, logged once when it is done
//! (`boot 3/7: …`) and named in the error when it fails (`boot step 3/7 (socket): …`), so
//! the log, the error and this list cannot drift apart. What runs before step 1
//! (configuration, home, logging, signals) is in [`super::main`]: nothing there takes a lock
//! or binds a socket.
//!
//! 1. **lock**: `run/system.lock`, exclusively; then remove run files a dead daemon left;
//! 2. **kernel**: KV store (opened once ready), audit trail, workspace overlay; bus, registry,
//!    management router;
//! 3. **socket**: bind `run/system.sock` in the 0700 `run/` directory, chmod 0600;
//! 4. **token**: a new `run/system.token` (0600, atomic);
//! 5. **MCP servers**: those of `etc/servers.toml` and those approved capsules declare are
//!    started, not waited for;
//! 6. **capsules**: the start gate closed, the bridge accepting (capsule-host processes
//!    attach through it), then discovery: the registry is complete;
//! 7. **ready**: `run/system.ready` (empty, 0600) is written last; then, in the background
//!    (not before: each would take the CPUs or the file system's journal from the steps
//!    above), the command sandbox is tried, the capsule host starts every intact, granted
//!    capsule, the KV store opens, the audit chains are verified, and the watchdog ticks.
//!
//! Ready means the daemon answers: a client may connect, and every request is answered.
//! It does not mean the capsules have started (that is most of a boot): what would reach a
//! capsule waits at the kernel's start gate until they have, or until the boot's wait for
//! them ends ([`crate::kernel::start_gate`]).

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::args::DaemonConfig;
use super::singleton::{self, SingletonLock};
use crate::audit::{Actor, AuditTrail, Decision};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::ipc::SessionToken;
use crate::ipc::bridge::{self, BridgeConfig};
use crate::kernel::start_gate::Opener;
use crate::kernel::{Kernel, KernelConfig, KernelState, ShutdownReason};
use crate::mcp::McpHost;
use crate::store::{KvConfig, KvStore};
use crate::vfs::Vfs;
use crate::wasm::supervisor::CapsuleSupervisor;

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 108;

/// How long boot waits for a previous daemon, exiting, to release the KV store's own lock.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The boot steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Lock,
    Kernel,
    Socket,
    Token,
    McpServers,
    Capsules,
    Ready,
}

impl Step {
    const ALL: [Step; 7] =
        [Step::Lock, Step::Kernel, Step::Socket, Step::Token, Step::McpServers, Step::Capsules, Step::Ready];

    fn number(self) -> usize {
        Self::ALL.iter().position(|step| *step == self).map_or(0, |i| i + 1)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Lock => "lock",
            Step::Kernel => "kernel",
            Step::Socket => "socket",
            Step::Token => "token",
            Step::McpServers => "MCP servers",
            Step::Capsules => "capsules",
            Step::Ready => "ready",
        }
    }

    /// The step's one log line, once it is done.
    fn done(self, what: fmt::Arguments<'_>) {
        log::info!("boot {}/{}: {what}", self.number(), Self::ALL.len());
    }
}

/// How a failed step is named in the error (`boot step 3/7 (socket)`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot step {}/{} ({})", self.number(), Self::ALL.len(), self.name())
    }
}

/// A daemon that answers: everything boot started, which shutdown stops in reverse.
pub(super) struct Running {
    pub(super) home: AstridHome,
    pub(super) lock: SingletonLock,
    pub(super) kernel: Arc<Kernel>,
    pub(super) router: JoinHandle<()>,
    pub(super) mcp: Arc<McpHost>,
    /// Tasks that follow the MCP servers (their tools on the bus, the servers capsules declare).
    pub(super) mcp_tasks: [JoinHandle<()>; 2],
    pub(super) supervisor: Arc<CapsuleSupervisor>,
    /// Keeps the running capsules in line with the registry and the grants.
    pub(super) capsule_sync: JoinHandle<()>,
    pub(super) bridge: JoinHandle<()>,
    /// Tells the bridge to stop accepting and close its connections.
    pub(super) stop_bridge: watch::Sender<bool>,
    pub(super) watchdog: JoinHandle<()>,
    /// When `run/system.ready` was written: the ephemeral idle clock starts there.
    pub(super) ready_at: tokio::time::Instant,
}

/// Runs the boot steps. A failure returns the error with its step named; what earlier steps
/// created is undone by dropping it (the lock last, with the process).
pub(super) async fn boot(config: &DaemonConfig, home: AstridHome) -> anyhow::Result<Running> {
    let started = Instant::now();
    let lock = take_lock(&home).context(Step::Lock)?;
    let kernel = start_kernel(config, &home).context(Step::Kernel)?;
    let router = kernel.start();
    let listener = bind_socket(&home).context(Step::Socket)?;
    let token = write_token(&home).context(Step::Token)?;
    let (mcp, mcp_tasks) = start_mcp_servers(&kernel, config, &home);

    let supervisor = CapsuleSupervisor::new(Arc::clone(&kernel), config.host);
    // From here on a request that changes the registry is answered once the host applied it.
    kernel.capsules_applied().follow();
    // Closed before the first client can connect; opened when the capsules have started.
    let capsules_started = kernel.start_gate().close();
    // The bridge accepts before capsules start: capsules with a process of their own attach
    // through it. Frontends learn the daemon is ready from the ready file, written last.
    let (stop_bridge, stop_rx) = watch::channel(false);
    let bridge_config = BridgeConfig { max_clients: config.max_clients, ..BridgeConfig::default() };
    let bridge = tokio::spawn(bridge::serve(
        listener,
        Arc::clone(&kernel),
        Some(Arc::clone(&supervisor)),
        token,
        bridge_config,
        stop_rx,
    ));
    discover_capsules(&kernel);

    write_ready(&home).context(Step::Ready)?;
    Step::Ready.done(format_args!("ready in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0));
    // Only now: their compilation, and the sandbox's trial command, would take the CPUs from
    // the steps above.
    try_command_sandbox(&kernel, config, &home);
    let capsule_sync = tokio::spawn(run_capsules(Arc::clone(&kernel), Arc::clone(&supervisor), capsules_started));
    watch_state(&kernel);
    let ready_at = tokio::time::Instant::now();
    kernel.verify_audit();
    let watchdog = tokio::spawn(crate::kernel::watchdog::run(Arc::clone(&kernel), config.watchdog_interval));
    Ok(Running {
        home,
        lock,
        kernel,
        router,
        mcp,
        mcp_tasks,
        supervisor,
        capsule_sync,
        bridge,
        stop_bridge,
        watchdog,
        ready_at,
    })
}

/// Step 1: the singleton lock, then the run files a dead daemon left.
fn take_lock(home: &AstridHome) -> anyhow::Result<SingletonLock> {
    let (lock, stale) = singleton::acquire(home)?;
    if !stale.is_empty() {
        log::warn!("removed run files left by a daemon that did not shut down cleanly: {stale:?}");
    }
    Step::Lock.done(format_args!("lock {} acquired", home.lock_path().display()));
    Ok(lock)
}

/// Step 2: the stores and the kernel over them; the start is audited.
fn start_kernel(config: &DaemonConfig, home: &AstridHome) -> anyhow::Result<Arc<Kernel>> {
    let state = open_state(home, config)?;
    let kernel = Kernel::new(
        KernelConfig {
            session: config.session,
            workspace: config.workspace.clone(),
            home: home.clone(),
            ephemeral: config.ephemeral,
            default_capsules: config.default_capsules,
            provider: config.provider.clone(),
        },
        state,
    );
    let mode = if config.ephemeral { "ephemeral" } else { "persistent" };
    kernel.record(
        DEFAULT_PRINCIPAL,
        Actor::Kernel,
        "daemon.start",
        mode,
        Decision::Info,
        &format!("pid {}", std::process::id()),
    );
    Step::Kernel
        .done(format_args!("kernel started (audit trail and workspace overlay open; KV store opens once ready)"));
    Ok(kernel)
}

/// Opens the stores. The KV store comes after the singleton lock, so a second daemon never
/// reaches sled; should sled still find its lock taken, the error names the owning daemon.
///
/// sled opens on a thread of its own, begun once the daemon is ready ([`watch_state`]) or by
/// the first operation that needs it, whichever comes first: its recovery reads the last
/// segment, then writes and syncs the rest of it, and beside the boot that sync held the
/// boot's own file operations up in the file system's journal. The daemon is ready without
/// waiting for it, and what needs the store waits (see [`watch_state`] for a store that
/// cannot be opened).
///
/// Holding the singleton lock, a store that is still locked can only belong to a daemon in
/// its last moments (the lock and sled's own lock are released one after the other when a
/// process exits), so the open is retried for [`STORE_RELEASE_WAIT`] before it is refused.
/// (A lock another process holds sends no notification: this one wait polls.)
fn open_state(home: &AstridHome, config: &DaemonConfig) -> anyhow::Result<KernelState> {
    let store = KvStore::opening(home, KvConfig::default(), STORE_RELEASE_WAIT)?;
    let audit = AuditTrail::open(home)?;
    let vfs = Vfs::open(&config.workspace, &home.overlay_dir(&config.workspace))?;
    Ok(KernelState { store, audit, vfs })
}

/// Begins the KV store's open, after readiness, and watches it: a store that cannot be
/// opened (or whose allowances cannot be read) stops the daemon with the reason, and a
/// failing exit.
fn watch_state(kernel: &Arc<Kernel>) {
    let kernel = Arc::clone(kernel);
    tokio::spawn(async move {
        let started = Instant::now();
        let opening = Arc::clone(&kernel);
        let failure = match tokio::task::spawn_blocking(move || opening.state_opened()).await {
            Ok(Ok(())) => {
                return log::debug!("KV store open {:.1} ms after readiness", started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("opening it failed: {e}"),
        };
        kernel.request_shutdown(ShutdownReason::Failed(format!("the KV store could not be opened: {failure}")));
    });
}

/// Step 3: the socket, private to its owner.
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
    Step::Socket.done(format_args!("listening on {}", path.display()));
    Ok(listener)
}

/// Step 4: a token no earlier boot used.
fn write_token(home: &AstridHome) -> anyhow::Result<SessionToken> {
    let token = SessionToken::generate()?;
    token.write_atomic(&home.token_path())?;
    Step::Token.done(format_args!("session token written to {}", home.token_path().display()));
    Ok(token)
}

/// Step 5: the MCP servers, started in the background (boot never waits on one).
fn start_mcp_servers(
    kernel: &Arc<Kernel>,
    config: &DaemonConfig,
    home: &AstridHome,
) -> (Arc<McpHost>, [JoinHandle<()>; 2]) {
    let (servers, refused) = crate::mcp::config::load(&home.root().join("etc").join("servers.toml"));
    let configured = servers.len();
    let mcp = McpHost::start(Arc::clone(kernel), config.workspace.clone(), servers, refused);
    kernel.set_mcp(Arc::clone(&mcp) as Arc<dyn crate::kernel::mcp_service::McpService>);
    let tools = crate::mcp::tools::start(kernel, Arc::clone(&mcp));
    let declared = tokio::spawn(follow_capsule_servers(Arc::clone(kernel), Arc::clone(&mcp)));
    Step::McpServers.done(format_args!("{configured} MCP server(s) configured in etc/servers.toml, starting"));
    (mcp, [tools, declared])
}

/// After step 7: the command sandbox is tried on this machine (a trial command in a
/// throwaway workspace) on a thread of its own. Not earlier: its processes and files took
/// CPU and the file system's journal from the boot. A command asked for before the verdict
/// waits for it ([`Kernel::command_sandbox_settled`]). The verdict is logged and shown by
/// `astrid status`.
fn try_command_sandbox(kernel: &Arc<Kernel>, config: &DaemonConfig, home: &AstridHome) {
    let kernel = Arc::clone(kernel);
    let sandbox_config = config.sandbox.clone();
    let home = home.clone();
    tokio::task::spawn_blocking(move || {
        let sandbox = crate::command_sandbox::Sandbox::new(sandbox_config, &home);
        kernel.set_command_sandbox(Arc::new(sandbox));
    });
}

/// Step 6: discovery. The capsules themselves are started after readiness, by
/// [`run_capsules`], behind the start gate.
fn discover_capsules(kernel: &Kernel) {
    let registered = kernel.reload_capsules();
    let dirs = kernel.capsule_dirs();
    Step::Capsules.done(format_args!(
        "{registered} capsule(s) registered (searched {} and {}), starting",
        dirs.principal.display(),
        dirs.workspace.display(),
    ));
}

/// Starts the capsules, opens the start gate (`started`), then keeps them in line with the
/// registry and the grants.
async fn run_capsules(kernel: Arc<Kernel>, host: Arc<CapsuleSupervisor>, started: Opener) {
    // Before the first sync: a change made while it runs is caught up on after it.
    let changed = kernel.capsules_changed();
    let since = Instant::now();
    let (starting, wait) = (Arc::clone(&host), host.config().start_wait);
    let start = tokio::task::spawn_blocking(move || {
        starting.sync();
        starting.wait_ready(wait);
    });
    if let Err(e) = start.await {
        log::error!("starting capsules failed: {e}");
    }
    drop(started);
    log::info!(
        "capsules started in {:.1} ms, running: {:?}",
        since.elapsed().as_secs_f64() * 1000.0,
        kernel.capsules().ready_names()
    );
    keep_capsules_in_sync(host, changed).await;
}

/// Step 7: the sentinel frontends wait for, written last.
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

/// Starts, restarts and stops capsules whenever the registry or a grant changes.
async fn keep_capsules_in_sync(host: Arc<CapsuleSupervisor>, mut changed: watch::Receiver<u64>) {
    while changed.changed().await.is_ok() {
        let host = Arc::clone(&host);
        if let Err(e) = tokio::task::spawn_blocking(move || host.sync()).await {
            log::error!("capsule host sync failed: {e}");
        }
    }
}

/// Starts and stops the MCP servers capsules declare as capsules come, go and get grants.
async fn follow_capsule_servers(kernel: Arc<Kernel>, mcp: Arc<McpHost>) {
    let mut changed = kernel.capsules_changed();
    loop {
        let (servers, refused) = crate::mcp::capsule_servers::collect(&kernel);
        mcp.sync_capsule_servers(servers, refused);
        if changed.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_in_order_and_named_in_errors() {
        let numbers: Vec<usize> = Step::ALL.iter().map(|step| step.number()).collect();
        assert_eq!(numbers, (1..=Step::ALL.len()).collect::<Vec<_>>());
        assert_eq!(Step::Socket.to_string(), "boot step 3/7 (socket)");
        assert_eq!(Step::Ready.to_string(), "boot step 7/7 (ready)");
    }
}
