//! Daemon flags, and their validation into a [`DaemonConfig`].
//!
//! [`DaemonArgs`] mirrors the command line and does no I/O; [`DaemonArgs::validate`] turns
//! it into values the boot sequence can trust (a parsed UUID, a canonical workspace).

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use uuid::Uuid;

use super::idle::IdlePolicy;
use crate::command_sandbox::SandboxConfig;
use crate::ipc::bridge::DEFAULT_MAX_CLIENTS;
use crate::kernel::defaults::ProviderEnvironment;
use crate::wasm::supervisor::HostConfig;

/// run the Astrid kernel: bind run/system.sock and serve frontends
#[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
#[argh(subcommand, name = "daemon")]
pub struct DaemonArgs {
    /// kernel session id (a UUID; default 00000000-0000-0000-0000-000000000000)
    #[argh(option, short = 's')]
    pub session: Option<String>,
    /// workspace root (default: the current directory); must exist
    #[argh(option, short = 'w')]
    pub workspace: Option<PathBuf>,
    /// exit when no client has been connected for the idle period (5 s grace + 30 s, or
    /// ASTRID_IDLE_TIMEOUT_SECS)
    #[argh(switch)]
    pub ephemeral: bool,
    /// log at debug level
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// most client connections served at once (default 256)
    #[argh(option)]
    pub max_clients: Option<usize>,
}

/// Validated daemon settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Kernel session id.
    pub session: Uuid,
    /// Canonical workspace root.
    pub workspace: PathBuf,
    /// Idle exit enabled.
    pub ephemeral: bool,
    /// Debug logging.
    pub verbose: bool,
    /// Cap on authenticated connections.
    pub max_clients: usize,
    /// Whether the default capsule set runs (`ASTRID_DEFAULT_CAPSULES=0` leaves it out).
    pub default_capsules: bool,
    /// How often `astrid.v1.watchdog.tick` is published (`ASTRID_WATCHDOG_INTERVAL_MS`,
    /// default 5 s).
    pub watchdog_interval: Duration,
    /// The async runtime's worker threads (`ASTRID_ASYNC_WORKERS`, default
    /// [`DEFAULT_ASYNC_WORKERS`]).
    pub async_workers: usize,
    /// When an ephemeral daemon exits (`ASTRID_IDLE_TIMEOUT_SECS`); `None` when persistent.
    pub idle: Option<IdlePolicy>,
    /// The capsule host's limits and isolation (`ASTRID_CAPSULE_*`, `ASTRID_HTTP_ALLOW_PRIVATE`).
    pub host: HostConfig,
    /// The default set's model provider (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `ASTRID_MODEL`).
    pub provider: ProviderEnvironment,
    /// How commands run (`ASTRID_SANDBOX`, `ASTRID_COMMAND_*`, `ASTRID_SANDBOX_*`).
    pub sandbox: SandboxConfig,
}

/// The async runtime's worker threads unless `ASTRID_ASYNC_WORKERS` says otherwise: one.
///
/// The async side only moves bytes and routes messages; what computes or blocks runs
/// elsewhere (capsules on threads of their own, the audit and log writers on theirs, sled's
/// I/O on its own, disk waits handed off with `block_in_place`: `crate::blocking`). With a
/// second worker, nearly every task a request wakes also unparks the idle worker to steal
/// it: a futex and a context switch per hop, for work that takes microseconds.
///
/// Measured with `cargo bench --bench protocol`, 6 interleaved pairs on a 2-core VM
/// (medians): 8 clients got 38.6k requests/s from one worker against 34.7k from two, at
/// 25.6 against 39 us of daemon CPU per request, with a worst-client p99 of 336 against
/// 455 us; when the host was busy, two workers fell to 25k/s, one held 35k/s. The single
/// client's round trip and the bus bench (8 publishers, 8 subscribers) were the same with
/// either. A machine with many cores and many busy clients may want more.
pub const DEFAULT_ASYNC_WORKERS: usize = 1;

/// The most async workers `ASTRID_ASYNC_WORKERS` may ask for.
pub const MAX_ASYNC_WORKERS: usize = 64;

impl DaemonArgs {
    /// Checks every flag and every environment variable the daemon reads, before anything
    /// is created, locked or bound: a bad value ends the daemon with status 2 and a message
    /// naming it, and leaves the home as it was. The error text is meant for the user as it is.
    pub fn validate(&self) -> Result<DaemonConfig, String> {
        let session = match &self.session {
            None => Uuid::nil(),
            Some(text) => Uuid::parse_str(text).map_err(|e| format!("invalid --session {text:?}: {e}"))?,
        };
        let workspace = match &self.workspace {
            Some(path) => path.clone(),
            None => std::env::current_dir().map_err(|e| format!("cannot determine the current directory: {e}"))?,
        };
        let workspace =
            workspace.canonicalize().map_err(|e| format!("invalid --workspace {}: {e}", workspace.display()))?;
        if !workspace.is_dir() {
            return Err(format!("invalid --workspace {}: not a directory", workspace.display()));
        }
        let max_clients = self.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS);
        if max_clients == 0 {
            return Err("--max-clients must be at least 1".to_owned());
        }
        let default_capsules = match std::env::var("ASTRID_DEFAULT_CAPSULES").as_deref() {
            Ok("0" | "false") => false,
            Ok("" | "1" | "true") | Err(_) => true,
            Ok(other) => return Err(format!("ASTRID_DEFAULT_CAPSULES must be 1 or 0, not {other:?}")),
        };
        let watchdog_interval = match std::env::var("ASTRID_WATCHDOG_INTERVAL_MS") {
            Err(_) => crate::kernel::watchdog::DEFAULT_INTERVAL,
            Ok(text) => match text.parse::<u64>() {
                Ok(ms @ 10..=3_600_000) => Duration::from_millis(ms),
                _ => return Err(format!("ASTRID_WATCHDOG_INTERVAL_MS must be 10 to 3600000 (ms), not {text:?}")),
            },
        };
        let async_workers = match std::env::var("ASTRID_ASYNC_WORKERS") {
            Err(_) => DEFAULT_ASYNC_WORKERS,
            Ok(text) => match text.parse::<usize>() {
                Ok(workers @ 1..=MAX_ASYNC_WORKERS) => workers,
                _ => return Err(format!("ASTRID_ASYNC_WORKERS must be 1 to {MAX_ASYNC_WORKERS}, not {text:?}")),
            },
        };
        let idle = if self.ephemeral { Some(IdlePolicy::from_env()?) } else { None };
        let host = HostConfig::from_env()?;
        let provider = ProviderEnvironment::from_env()?;
        let sandbox = SandboxConfig::from_env()?;
        Ok(DaemonConfig {
            session,
            workspace,
            ephemeral: self.ephemeral,
            verbose: self.verbose,
            max_clients,
            default_capsules,
            watchdog_interval,
            async_workers,
            idle,
            host,
            provider,
            sandbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DaemonArgs, argh::EarlyExit> {
        DaemonArgs::from_args(&["astrid-daemon"], args)
    }

    #[test]
    fn defaults_are_nil_session_and_cwd() {
        let config = parse(&[]).expect("parse").validate().expect("valid");
        assert_eq!(config.session, Uuid::nil());
        assert_eq!(config.workspace, std::env::current_dir().expect("cwd").canonicalize().expect("canon"));
        assert!(!config.ephemeral);
        assert_eq!(config.max_clients, DEFAULT_MAX_CLIENTS);
    }

    #[test]
    fn flags_are_validated() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ws = tmp.path().to_str().expect("utf8");
        let config = parse(&["-s", "6f1c2a9e-3b7d-4e58-9a21-0c4d5e6f7a8b", "-w", ws, "--ephemeral", "-v"])
            .expect("parse")
            .validate()
            .expect("valid");
        assert!(config.ephemeral && config.verbose);
        assert_eq!(config.session.to_string(), "6f1c2a9e-3b7d-4e58-9a21-0c4d5e6f7a8b");
        assert!(parse(&["-s", "nope"]).expect("parse").validate().expect_err("uuid").contains("--session"));
        let missing = tmp.path().join("missing");
        let missing = missing.to_str().expect("utf8");
        assert!(parse(&["-w", missing]).expect("parse").validate().expect_err("ws").contains("--workspace"));
        assert!(parse(&["--bogus"]).is_err());
    }
}
