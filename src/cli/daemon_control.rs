//! `astrid start`, `stop`, `restart` and `status`.
//!
//! `stop` succeeds only once the daemon process is gone, its lock is free and its run files
//! are removed; when the polite way fails it escalates (Shutdown request → SIGTERM →
//! SIGKILL, each with a deadline) and names the stage that failed. Stopping a stopped
//! daemon is not an error. The lock decides who "the daemon" is: `start` reports the pid
//! that owns it, `stop` stops whatever owns it (waiting for a booting one to name itself).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argh::FromArgs;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::spawn::{self, Mode};
use crate::daemon::singleton::{self, Liveness};
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::ipc::client::ClientError;
use crate::types::management::{SandboxState, SandboxStatus};
use crate::types::{DaemonStatus, KernelRequest, KernelResponse};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const GRACEFUL_EXIT: Duration = Duration::from_secs(10);
const TERM_EXIT: Duration = Duration::from_secs(5);
const KILL_EXIT: Duration = Duration::from_secs(2);
/// How long a daemon that holds the lock may take to write its pid into it.
const IDENTIFY_WAIT: Duration = Duration::from_secs(10);
/// How long a daemon that lost the race for the lock may take to give up.
const LOSER_EXIT: Duration = Duration::from_secs(5);
/// How many daemons one `stop` stops, one after the other, before it gives up.
const MAX_SUCCESSORS: usize = 8;

/// start a persistent daemon (it runs until `astrid stop`)
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "start")]
pub struct StartArgs {
    /// the daemon's workspace (default: the current directory); clients still work in their own
    #[argh(option, short = 'w')]
    pub workspace: Option<std::path::PathBuf>,
}

/// stop the daemon and wait until it has exited and its files are gone
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stop")]
pub struct StopArgs {}

/// stop the daemon if it runs, then start a persistent one
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restart")]
pub struct RestartArgs {}

/// show whether a daemon runs and what it is doing
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// print the DaemonStatus as JSON (`null` when no daemon runs)
    #[argh(switch)]
    pub json: bool,
}

/// `astrid start`.
///
/// Reports the daemon that owns the lock: when several `start`s race, the one whose daemon
/// won says "started", the others "already running" with the winner's pid, and none of them
/// returns while the daemon it spawned may still take the lock later.
pub fn start(home: &AstridHome, args: &StartArgs) -> anyhow::Result<ExitCode> {
    if let Liveness::Running { .. } = singleton::probe(home)? {
        let pid = spawn::wait_ready(home, &mut None)?;
        println!("astrid daemon already running (pid {pid})");
        return Ok(ExitCode::SUCCESS);
    }
    let workspace = super::headless::workspace(args.workspace.as_ref())?;
    let spawned = spawn::spawn(home, Mode::Persistent, &workspace)?;
    let ours = spawned.id();
    let mut child = Some(spawned);
    loop {
        let owner = spawn::wait_ready(home, &mut child)?;
        if owner == ours {
            println!("astrid daemon started (pid {owner}, persistent)");
            return Ok(ExitCode::SUCCESS);
        }
        // Ours lost the race. It gives up within half a second of seeing the lock held;
        // should the winner vanish meanwhile, ours may take over, and is then the answer.
        if let Some(mut loser) = child.take() {
            let deadline = Instant::now() + LOSER_EXIT;
            while loser.try_wait()?.is_none() {
                if singleton::probe(home)? == (Liveness::Running { pid: Some(ours) }) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = loser.kill();
                    let _ = loser.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if loser.try_wait()?.is_none() {
                child = Some(loser);
                continue;
            }
        }
        // The owner now (it may have changed while ours gave up).
        let owner = spawn::wait_ready(home, &mut None)?;
        println!("astrid daemon already running (pid {owner})");
        return Ok(ExitCode::SUCCESS);
    }
}

/// `astrid stop`.
pub fn stop(home: &AstridHome) -> anyhow::Result<ExitCode> {
    stop_daemon(home, true)
}

/// Stops the daemon as `astrid stop` does; `report` prints what happened.
///
/// Whatever owns the lock is stopped, and then whatever took it next (a `start` racing
/// this stop), until the lock is free: `stop` returns only when no daemon runs. A daemon
/// that holds the lock but has not named itself yet (it is booting) is waited for.
pub fn stop_daemon(home: &AstridHome, report: bool) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if report {
            println!("{line}");
        }
    };
    let mut stopped = 0;
    loop {
        let Some(pid) = identify(home)? else {
            let removed = singleton::clean_stale(home).context("stop failed at stage 'cleanup'")?;
            if stopped > 0 {
                if !removed.is_empty() {
                    say(format!("removed {} run file(s) the stopped daemon left", removed.len()));
                }
            } else if removed.is_empty() {
                say("astrid daemon is not running".to_owned());
            } else {
                say(format!("astrid daemon is not running (removed {} stale run file(s))", removed.len()));
            }
            return Ok(ExitCode::SUCCESS);
        };
        if stopped == MAX_SUCCESSORS {
            bail!("stop failed: daemons keep taking the lock (the last one is pid {pid}); is something starting them?");
        }
        let how = stop_one(home, pid)?;
        stopped += 1;
        if how == Stopped::Killed {
            // A killed daemon cannot clean up; its files are ours to remove once the lock is
            // free (the next owner, if any, removes them itself).
            if identify(home)?.is_none() {
                let removed = singleton::clean_stale(home).context("stop failed at stage 'cleanup'")?;
                say(format!("astrid daemon stopped (pid {pid}, killed; removed {} run file(s))", removed.len()));
                return Ok(ExitCode::SUCCESS);
            }
            say(format!("astrid daemon stopped (pid {pid}, killed)"));
        } else {
            say(format!("astrid daemon stopped (pid {pid}{})", how.suffix()));
        }
    }
}

/// How one daemon was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Asked,
    Terminated,
    Killed,
}

impl Stopped {
    fn suffix(self) -> &'static str {
        match self {
            Self::Asked => "",
            Self::Terminated => ", after SIGTERM",
            Self::Killed => ", killed",
        }
    }
}

/// The pid of the daemon that owns the lock, `None` when nobody does. A lock held without
/// a (live) pid belongs to a daemon that is booting or exiting, or to a CLI taking a look:
/// it is waited for, until it names itself or is released.
fn identify(home: &AstridHome) -> anyhow::Result<Option<u32>> {
    let deadline = Instant::now() + IDENTIFY_WAIT;
    loop {
        match singleton::probe(home)? {
            Liveness::Stopped => return Ok(None),
            Liveness::Running { pid: Some(pid) } => return Ok(Some(pid)),
            Liveness::Running { pid: None } if Instant::now() > deadline => {
                bail!(
                    "stop failed at stage 'identify': the lock has been held for {IDENTIFY_WAIT:?} by a process that names no pid"
                );
            }
            Liveness::Running { pid: None } => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Stops the process `pid`, escalating: the `Shutdown` request, SIGTERM, SIGKILL. Returns
/// once that process is gone (the lock may still be held by whoever took it next).
fn stop_one(home: &AstridHome, pid: u32) -> anyhow::Result<Stopped> {
    let target = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    let asked = Client::connect(home).and_then(|mut client| {
        client.request("shutdown", &KernelRequest::Shutdown { reason: Some("astrid stop".to_owned()) }, REQUEST_TIMEOUT)
    });
    let graceful = match asked {
        Ok(KernelResponse::Success(_)) => GRACEFUL_EXIT,
        Ok(other) => {
            eprintln!("astrid: stage 'request' failed: unexpected reply {other:?}; waiting anyway");
            GRACEFUL_EXIT
        }
        // Not listening yet (booting) or any more (exiting): its signal handlers are
        // installed before it takes the lock, so SIGTERM is the clean way, at once.
        Err(ClientError::NoSocket(_) | ClientError::Connect { .. }) if !home.ready_path().exists() => Duration::ZERO,
        Err(e) => {
            eprintln!("astrid: stage 'request' failed: {e}; falling back to signals");
            GRACEFUL_EXIT
        }
    };
    if wait_gone(target, graceful) {
        return Ok(Stopped::Asked);
    }
    if !graceful.is_zero() {
        eprintln!("astrid: stage 'graceful exit' failed: pid {pid} still alive after {graceful:?}; sending SIGTERM");
    }
    signal(target, Signal::SIGTERM).context("stop failed at stage 'SIGTERM'")?;
    if wait_gone(target, TERM_EXIT) {
        return Ok(Stopped::Terminated);
    }
    eprintln!("astrid: stage 'SIGTERM' failed: pid {pid} still alive after {TERM_EXIT:?}; sending SIGKILL");
    signal(target, Signal::SIGKILL).context("stop failed at stage 'SIGKILL'")?;
    if wait_gone(target, KILL_EXIT) {
        return Ok(Stopped::Killed);
    }
    bail!("stop failed at stage 'SIGKILL': pid {pid} is still alive")
}

/// `astrid restart`.
pub fn restart(home: &AstridHome) -> anyhow::Result<ExitCode> {
    stop(home)?;
    start(home, &StartArgs::default())
}

/// `astrid status`. Never starts a daemon.
pub fn status(home: &AstridHome, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let pid = match singleton::probe(home)? {
        Liveness::Stopped => {
            println!("{}", if args.json { "null" } else { "astrid daemon is not running" });
            return Ok(ExitCode::SUCCESS);
        }
        Liveness::Running { pid } => pid,
    };
    let reply = Client::connect(home)
        .and_then(|mut client| client.request("status", &KernelRequest::GetStatus, REQUEST_TIMEOUT));
    let status = match reply {
        Ok(KernelResponse::Status(status)) => status,
        Ok(other) => bail!("unexpected reply to GetStatus: {other:?}"),
        Err(_) if !home.ready_path().exists() => {
            println!("astrid daemon is starting ({})", describe(pid));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => bail!("astrid daemon ({}) is running but unreachable: {e}", describe(pid)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(status: &DaemonStatus) -> String {
    let clients = if status.connections_by_principal.is_empty() {
        status.connected_clients.to_string()
    } else {
        let parts: Vec<String> =
            status.connections_by_principal.iter().map(|p| format!("{}: {}", p.principal, p.count)).collect();
        format!("{} ({})", status.connected_clients, parts.join(", "))
    };
    let mut out = format!(
        "astrid daemon running (pid {})\n  version   {}\n  uptime    {}\n  mode      {}\n  clients   {}\n  capsules  {}\n",
        status.pid,
        status.version,
        format_uptime(status.uptime_secs),
        if status.ephemeral { "ephemeral" } else { "persistent" },
        clients,
        status.loaded_capsules.join(", "),
    );
    if let Some(audit) = &status.audit {
        out.push_str(&format!("  audit     {audit}\n"));
    }
    if let Some(model) = &status.model {
        out.push_str(&format!("  model     {}\n", super::model::describe(model)));
    }
    if let Some(workspace) = &status.workspace {
        out.push_str(&format!("  workspace {workspace}\n"));
    }
    if let Some(sandbox) = &status.sandbox {
        out.push_str(&format!("  commands  {}\n", describe_sandbox(sandbox)));
    }
    for drops in &status.bus_drops {
        out.push_str(&format!("  dropped   {} message(s) for {} (too slow)\n", drops.dropped, drops.subscriber));
    }
    out
}

/// How the agent's commands run, in one line: an operator must not miss an unconfined
/// daemon, so that case says so in capitals.
fn describe_sandbox(sandbox: &SandboxStatus) -> String {
    let detail = sandbox.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
    match sandbox.state {
        SandboxState::Ready => "sandboxed (namespaces, seccomp, writes pending review)".to_owned(),
        SandboxState::Probing => format!("sandbox being tried{detail}"),
        SandboxState::Unavailable => format!("refused, the sandbox is unavailable{detail}"),
        SandboxState::Unsandboxed => format!("UNSANDBOXED{detail}"),
    }
}

/// `1h02m03s`, `2m03s`, `3s`.
pub fn format_uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

fn describe(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

fn signal(pid: Pid, signal: Signal) -> anyhow::Result<()> {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the process `pid` is gone (whoever holds the lock next is the caller's
/// business: see [`identify`]).
fn wait_gone(pid: Pid, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process. A zombie (exited, not yet reaped by its parent) counts
/// as gone: it holds no lock and serves nothing.
fn process_alive(pid: Pid) -> bool {
    u32::try_from(pid.as_raw()).is_ok_and(singleton::alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_compact() {
        assert_eq!(format_uptime(3), "3s");
        assert_eq!(format_uptime(123), "2m03s");
        assert_eq!(format_uptime(3723), "1h02m03s");
    }

    #[test]
    fn our_own_process_is_alive() {
        assert!(process_alive(Pid::this()));
    }
}
