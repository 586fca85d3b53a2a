//! The daemon role: the kernel as a process.
//!
//! [`main`] does what must come before any side effect: the allocator's settings, the
//! signal mask, flags and every environment variable validated into one [`DaemonConfig`]
//! (a bad value exits 2, naming it, before the home is touched or the lock taken), the home
//! checked and prepared, the log opened. Then [`run`] boots ([`boot`]: the numbered steps,
//! lock to `run/system.ready`), serves until a signal, a `Shutdown` request or the ephemeral
//! idle timeout, and shuts down ([`shutdown`]). A second signal during shutdown exits at
//! once (130); a shutdown that takes longer than [`SHUTDOWN_DEADLINE`] exits 1, so a wedged
//! daemon never outlives its operator's patience.

pub mod allocator;
pub mod args;
mod boot;
pub mod idle;
pub mod logging;
pub mod reaper;
mod shutdown;
pub mod signals;
pub mod singleton;

use std::process::ExitCode;
use std::time::Duration;

pub use args::{DaemonArgs, DaemonConfig};

use crate::home::AstridHome;
use crate::kernel::ShutdownReason;
use signals::Signals;
use singleton::SingletonLock;

/// Longest a graceful shutdown may take before the process exits anyway (status 1).
pub use signals::SHUTDOWN_DEADLINE;

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
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(config.async_workers).enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                log::error!("cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    let (code, lock) = match runtime.block_on(run(config, home, signals)) {
        Ok((lock, ShutdownReason::Failed(why))) => {
            log::error!("daemon failed: {why}");
            (ExitCode::FAILURE, Some(lock))
        }
        Ok((lock, _)) => (ExitCode::SUCCESS, Some(lock)),
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
pub async fn run(
    config: DaemonConfig,
    home: AstridHome,
    mut signals: Signals,
) -> anyhow::Result<(SingletonLock, ShutdownReason)> {
    if reaper::spawn_if_pid1() {
        log::info!("running as PID 1: reaping orphaned children");
    }
    let running = boot::boot(&config, home).await?;
    let reason = running.until_shutdown(&mut signals, config.idle).await;
    log::info!("shutting down: {reason}");
    signals.shutting_down();
    let lock = running.shut_down(reason.clone()).await;
    Ok((lock, reason))
}

/// How long the exit waits for the runtime's threads (a blocking task still running is left
/// to the process exit).
const RUNTIME_EXIT_WAIT: Duration = Duration::from_secs(3);
