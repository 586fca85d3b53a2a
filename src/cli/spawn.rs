//! Starting a daemon from the CLI and waiting until it is ready.
//!
//! The daemon is the current executable under the name `astrid-daemon`, in its own process
//! group (a Ctrl-C in the terminal is for the CLI, not the daemon), with stdio on /dev/null:
//! it logs to its file from the first line, and on failure the CLI prints that file's tail
//! together with the exit status, so a boot failure is never silent.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::daemon::allocator;
use crate::daemon::logging::latest_log_file;
use crate::daemon::singleton::{self, Liveness};
use crate::home::AstridHome;

/// Readiness polls: the first 1 ms after the start, each interval twice the last up to
/// 50 ms, for 10 s in all. (The reference polls every 50 ms from the start; a daemon is
/// usually ready within 10 ms, and `astrid chat` would wait for the poll.)
const FIRST_POLL: Duration = Duration::from_millis(1);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const READY_WAIT: Duration = Duration::from_secs(10);
/// Lines of the daemon log shown when a boot fails.
const LOG_TAIL_LINES: usize = 20;

/// How the daemon should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Exits when idle (`--ephemeral`); what commands that need a daemon start.
    Ephemeral,
    /// Runs until stopped; what `astrid start` starts.
    Persistent,
}

/// Makes sure a daemon serves `home`, starting an ephemeral one (in the current directory)
/// if none runs. Returns whether this call started it.
pub fn ensure_daemon(home: &AstridHome) -> anyhow::Result<bool> {
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    ensure_daemon_in(home, &cwd)
}

/// [`ensure_daemon`], starting the daemon in `workspace`.
pub fn ensure_daemon_in(home: &AstridHome, workspace: &Path) -> anyhow::Result<bool> {
    match singleton::probe(home)? {
        Liveness::Running { .. } => {
            wait_ready(home, &mut None)?;
            Ok(false)
        }
        Liveness::Stopped => {
            let mut child = Some(spawn(home, Mode::Ephemeral, workspace)?);
            let pid = child.as_ref().map(Child::id);
            let owner = wait_ready(home, &mut child)?;
            Ok(Some(owner) == pid)
        }
    }
}

/// Spawns `astrid-daemon [--ephemeral] --workspace <workspace>` from the current executable,
/// after the checks the daemon makes of its home (so a refusal is shown here, not only in a
/// log nobody reads).
pub fn spawn(home: &AstridHome, mode: Mode, workspace: &Path) -> anyhow::Result<Child> {
    home.check()?;
    let exe = std::env::current_exe().context("cannot locate the astrid executable")?;
    let mut command = Command::new(&exe);
    command.arg0("astrid-daemon");
    if mode == Mode::Ephemeral {
        command.arg("--ephemeral");
    }
    command
        .arg("--workspace")
        .arg(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    allocator::set_tunables(&mut command);
    command.spawn().with_context(|| format!("cannot start {} as astrid-daemon", exe.display()))
}

/// Waits until a daemon holds the lock, has named itself in it and has written
/// `run/system.ready`; returns that daemon's pid, which need not be `child`'s.
///
/// `child` is the daemon we spawned, if any: if it exits early the wait fails with its
/// status and log tail, unless another daemon won the race for the lock, in which case we
/// wait for that one instead (and `child` becomes `None`). On a timeout `child` is killed.
pub fn wait_ready(home: &AstridHome, child: &mut Option<Child>) -> anyhow::Result<u32> {
    let mut spinner = Spinner::new();
    let deadline = Instant::now() + READY_WAIT;
    let mut interval = FIRST_POLL;
    while Instant::now() < deadline {
        // Lock first, then the file: a ready file counts only once its (live) owner named
        // itself, as an owner names itself only after removing a dead daemon's files.
        if let Liveness::Running { pid: Some(pid) } = singleton::probe(home)?
            && home.ready_path().exists()
        {
            spinner.clear();
            return Ok(pid);
        }
        if let Some(running) = child.as_mut()
            && let Some(status) = running.try_wait()?
        {
            if !matches!(singleton::probe(home)?, Liveness::Running { .. }) {
                spinner.clear();
                bail!("the daemon exited during boot ({status}){}", log_tail(home));
            }
            *child = None; // another daemon won the race for the lock; wait for that one
        }
        if interval == POLL_INTERVAL {
            // Not for a quick boot: the line would only flicker.
            spinner.tick();
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(POLL_INTERVAL);
    }
    spinner.clear();
    if let Some(mut running) = child.take() {
        let _ = running.kill();
        let _ = running.wait();
    }
    bail!("the daemon did not become ready within {READY_WAIT:?}{}", log_tail(home))
}

/// The last lines of the newest daemon log, formatted for an error message.
pub fn log_tail(home: &AstridHome) -> String {
    let Some(path) = latest_log_file(&home.log_dir()) else {
        return format!("\n(no daemon log in {})", home.log_dir().display());
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("\nlast lines of {}:\n{tail}", path.display())
}

/// A one-line spinner on stderr, only when stderr is a terminal.
struct Spinner {
    frame: usize,
    active: bool,
}

impl Spinner {
    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

    fn new() -> Self {
        Self { frame: 0, active: std::io::stderr().is_terminal() }
    }

    fn tick(&mut self) {
        if self.active {
            let glyph = Self::FRAMES[self.frame % Self::FRAMES.len()];
            eprint!("\r{glyph} starting the astrid daemon...");
            let _ = std::io::stderr().flush();
            self.frame += 1;
        }
    }

    fn clear(&mut self) {
        if self.active && self.frame > 0 {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}
