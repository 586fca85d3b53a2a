//! `astrid start`, `stop`, `restart` and `status`.
//!
//! `stop` succeeds only once the daemon process is gone, its lock is free and its run files
//! are removed; when the polite way fails it escalates (Shutdown request → SIGTERM →
//! SIGKILL, each with a deadline) and names the stage that failed. Stopping a stopped
//! daemon is not an error.

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
use crate::types::{DaemonStatus, KernelRequest, KernelResponse};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const GRACEFUL_EXIT: Duration = Duration::from_secs(10);
const TERM_EXIT: Duration = Duration::from_secs(5);
const KILL_EXIT: Duration = Duration::from_secs(2);

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
pub fn start(home: &AstridHome, args: &StartArgs) -> anyhow::Result<ExitCode> {
    if let Liveness::Running { pid } = singleton::probe(home)? {
        println!("astrid daemon already running ({})", describe(pid));
        return Ok(ExitCode::SUCCESS);
    }
    let workspace = super::headless::workspace(args.workspace.as_ref())?;
    let child = spawn::spawn(Mode::Persistent, &workspace)?;
    let pid = child.id();
    spawn::wait_ready(home, Some(child))?;
    println!("astrid daemon started (pid {pid}, persistent)");
    Ok(ExitCode::SUCCESS)
}

/// `astrid stop`.
pub fn stop(home: &AstridHome) -> anyhow::Result<ExitCode> {
    stop_daemon(home, true)
}

/// Stops the daemon as `astrid stop` does; `report` prints what happened.
pub fn stop_daemon(home: &AstridHome, report: bool) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if report {
            println!("{line}");
        }
    };
    let pid = match singleton::probe(home)? {
        Liveness::Stopped => {
            let removed = singleton::clean_stale(home).context("stop failed at stage 'cleanup'")?;
            if removed.is_empty() {
                say("astrid daemon is not running".to_owned());
            } else {
                say(format!("astrid daemon is not running (removed {} stale run file(s))", removed.len()));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Liveness::Running { pid: Some(pid) } => pid,
        Liveness::Running { pid: None } => bail!("stop failed at stage 'identify': the lock is held but names no pid"),
    };
    let target = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);

    let asked = Client::connect(home).and_then(|mut client| {
        client.request("shutdown", &KernelRequest::Shutdown { reason: Some("astrid stop".to_owned()) }, REQUEST_TIMEOUT)
    });
    match asked {
        Ok(KernelResponse::Success(_)) => {}
        Ok(other) => eprintln!("astrid: stage 'request' failed: unexpected reply {other:?}; waiting anyway"),
        Err(e) => eprintln!("astrid: stage 'request' failed: {e}; falling back to signals"),
    }
    if wait_gone(home, target, GRACEFUL_EXIT)? {
        say(format!("astrid daemon stopped (pid {pid})"));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("astrid: stage 'graceful exit' failed: pid {pid} still alive after {GRACEFUL_EXIT:?}; sending SIGTERM");
    signal(target, Signal::SIGTERM).context("stop failed at stage 'SIGTERM'")?;
    if wait_gone(home, target, TERM_EXIT)? {
        say(format!("astrid daemon stopped (pid {pid}, after SIGTERM)"));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("astrid: stage 'SIGTERM' failed: pid {pid} still alive after {TERM_EXIT:?}; sending SIGKILL");
    signal(target, Signal::SIGKILL).context("stop failed at stage 'SIGKILL'")?;
    let deadline = Instant::now() + KILL_EXIT;
    while process_alive(target) {
        if Instant::now() > deadline {
            bail!("stop failed at stage 'SIGKILL': pid {pid} is still alive");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed daemon cannot clean up; its files are ours to remove now that the lock is free.
    let removed = singleton::clean_stale(home).context("stop failed at stage 'cleanup'")?;
    say(format!("astrid daemon stopped (pid {pid}, killed; removed {} run file(s))", removed.len()));
    Ok(ExitCode::SUCCESS)
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
    for drops in &status.bus_drops {
        out.push_str(&format!("  dropped   {} message(s) for {} (too slow)\n", drops.dropped, drops.subscriber));
    }
    out
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

/// Waits until the process is gone and nobody holds the lock.
fn wait_gone(home: &AstridHome, pid: Pid, within: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if !process_alive(pid) && singleton::probe(home)? == Liveness::Stopped {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process. A zombie (exited, not yet reaped by its parent) counts
/// as gone: it holds no lock and serves nothing.
fn process_alive(pid: Pid) -> bool {
    match kill(pid, None) {
        Err(Errno::ESRCH) => false,
        Ok(()) | Err(_) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name: "pid (comm) S ...".
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
    }
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
