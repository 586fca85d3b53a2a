//! Capsules in a process of their own: the daemon's side of `isolation = "process"`.
//!
//! For each life of such a capsule the supervisor issues a one-time ticket and starts
//! `astrid capsule-host --capsule NAME` with the ticket in its environment (never in argv,
//! which every user can read). The child connects to the daemon's socket like any client,
//! presents the ticket in its handshake, and from then on every host call of its capsule is
//! decided by the daemon ([`super::runner::prepare`] runs when it attaches). The supervisor
//! watches the child: a stop request terminates it, and its exit is the end of that life,
//! with the reason the daemon refused its attach, or the one the child reported over its
//! session before it exited ([`ChildReport`]), or else how it ended.
//!
//! The child gets a scrubbed environment, its own process group (a Ctrl-C meant for a
//! foreground daemon does not race the daemon's own shutdown), and asks the OS to kill it
//! when the daemon dies, so a SIGKILLed daemon leaves no capsule behind. (Linux sends that
//! signal when the *thread* that spawned the child ends; [`run_child`] spawns the child and
//! stays until it has reaped it, so that thread outlives the child. The exit itself is
//! watched by a thread of its own, so the wait is a notification, not a polling loop.)

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::lifecycle::Lifecycle;
use super::runner::PrepareError;
use super::wait::{block_on, block_on_timeout, unless_stopped};
use crate::types::capsule_session::CapsuleFailure;

/// The environment variable that carries a child's ticket.
pub const TICKET_ENV: &str = "ASTRID_CAPSULE_TICKET";
pub use crate::lifeline::PARENT_ENV;
/// How long a ticket stays valid: the child attaches within milliseconds.
const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// How long a terminated child gets before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(1);
/// Environment variables a child keeps (logging only); everything else is dropped.
const KEPT_ENV: &[&str] = &["RUST_LOG", "ASTRID_LOG", "RUST_BACKTRACE"];

/// Why a life of a capsule in a process of its own failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The OS gave no randomness for the attach ticket.
    #[error("no randomness for a ticket: {0}")]
    Ticket(#[source] getrandom::Error),
    /// The daemon's own executable (which the child runs) cannot be found.
    #[error("cannot find the astrid binary: {0}")]
    NoBinary(#[source] std::io::Error),
    /// The child could not be started.
    #[error("cannot start a capsule-host process: {0}")]
    Spawn(#[source] std::io::Error),
    /// The daemon refused the child's attach: the kernel's half of starting the capsule
    /// failed, as it would for a capsule on a thread.
    #[error(transparent)]
    Refused(PrepareError),
    /// The child reported, over its session, why its capsule failed.
    #[error(transparent)]
    Failed(CapsuleFailure),
    /// The child ended without saying why: how it ended.
    #[error("capsule-host process {pid} {}", describe(*status))]
    Ended {
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The child's exit cannot be watched (no thread for it); it was killed.
    #[error("cannot watch capsule-host process {pid}: {source}")]
    Watch {
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The child can no longer be waited for.
    #[error("lost track of capsule-host process {pid}: {source}")]
    Lost {
        pid: u32,
        /// Why waiting failed.
        source: std::io::Error,
    },
}

/// What a redeemed ticket stands for.
#[derive(Debug, Clone)]
pub struct Ticketed {
    /// The capsule.
    pub name: String,
    /// Its installed directory; none for an embedded default capsule.
    pub dir: Option<PathBuf>,
    /// The supervisor's lifecycle of it (readiness is reported there).
    pub lifecycle: Arc<Lifecycle>,
    /// Where the session puts why this life failed, for the supervisor to read once the
    /// process is gone.
    pub report: Arc<ChildReport>,
}

/// Why a capsule-host process's capsule failed, as the daemon learnt it: from its own refusal
/// of the attach, or from the process's typed report over the session (never from what the
/// process printed). Written before the process can exit, read after it did.
#[derive(Debug, Default)]
pub struct ChildReport(Mutex<Option<ChildError>>);

impl ChildReport {
    /// The daemon refused the attach.
    pub fn refused(&self, error: PrepareError) {
        self.set(ChildError::Refused(error));
    }

    /// The process reported its capsule's failure.
    pub fn failed(&self, failure: CapsuleFailure) {
        self.set(ChildError::Failed(failure));
    }

    fn set(&self, error: ChildError) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn take(&self) -> Option<ChildError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct Pending {
    ticket: [u8; 32],
    issued: Instant,
    ticketed: Ticketed,
}

/// Tickets issued and not yet redeemed.
#[derive(Default)]
pub struct Tickets(Mutex<Vec<Pending>>);

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").field("pending", &self.pending().len()).finish()
    }
}

impl Tickets {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket (hex) for one attach of `ticketed`.
    pub fn issue(&self, ticketed: Ticketed) -> Result<String, ChildError> {
        let mut ticket = [0u8; 32];
        getrandom::fill(&mut ticket).map_err(ChildError::Ticket)?;
        let mut pending = self.pending();
        pending.retain(|p| p.issued.elapsed() < TICKET_LIFETIME);
        pending.push(Pending { ticket, issued: Instant::now(), ticketed });
        Ok(ticket.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The capsule `presented` was issued for, once; compared in constant time.
    pub fn redeem(&self, presented: &str) -> Option<Ticketed> {
        let presented = decode_hex(presented)?;
        let mut pending = self.pending();
        pending.retain(|p| p.issued.elapsed() < TICKET_LIFETIME);
        let index = pending.iter().position(|p| bool::from(p.ticket.ct_eq(&presented)))?;
        Some(pending.remove(index).ticketed)
    }

    /// Forgets the unredeemed tickets of `name` (its child is gone).
    pub fn withdraw(&self, name: &str) {
        self.pending().retain(|p| p.ticketed.name != name);
    }
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// Runs one life of `name` in a child process and returns when the child exits (the reason
/// it gave, if it failed) or, after terminating it, when `lifecycle` is stopped (`Ok`).
pub fn run_child(
    home: &Path,
    tickets: &Tickets,
    name: &str,
    dir: Option<&Path>,
    lifecycle: &Arc<Lifecycle>,
) -> Result<(), ChildError> {
    lifecycle.reset_ready();
    let report = Arc::new(ChildReport::default());
    let ticket = tickets.issue(Ticketed {
        name: name.to_owned(),
        dir: dir.map(Path::to_path_buf),
        lifecycle: Arc::clone(lifecycle),
        report: Arc::clone(&report),
    })?;
    let exe = std::env::current_exe().map_err(ChildError::NoBinary)?;
    let mut command = Command::new(exe);
    command
        .args(["capsule-host", "--capsule", name])
        .env_clear()
        .env("ASTRID_HOME", home)
        .env(TICKET_ENV, ticket)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    for key in KEPT_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    let mut child = command.spawn().map_err(ChildError::Spawn)?;
    let pid = child.id();
    log::info!("capsule {name}: capsule-host process {pid} started");
    // Its output goes to the log, for the operator; why it failed comes through `report`.
    let reader = child.stderr.take().map(|stderr| {
        let capsule = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log::info!("capsule {capsule} (process {pid}): {line}");
            }
        })
    });
    let exit = match ExitWatch::start(pid) {
        Ok(exit) => exit,
        Err(source) => {
            // Unwatched, it could not be stopped: it does not run.
            let _ = child.kill();
            let _ = child.wait();
            tickets.withdraw(name);
            return Err(ChildError::Watch { pid, source });
        }
    };
    // The exit, or a stop (then the child is ended); this thread waits either way, so it
    // outlives the child (see the module documentation).
    if block_on(unless_stopped(exit.exited(), lifecycle.stopped())).is_none() {
        terminate(&mut child, &exit);
    }
    let status = child.wait();
    tickets.withdraw(name);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    if lifecycle.is_stopping() {
        return Ok(());
    }
    let status = status.map_err(|source| ChildError::Lost { pid, source })?;
    match (status, report.take()) {
        (_, Some(reported)) => Err(reported),
        (status, None) if status.success() => Ok(()),
        (status, None) => Err(ChildError::Ended { pid, status }),
    }
}

/// SIGTERM, then SIGKILL if it has not exited after a grace period. The caller reaps it.
fn terminate(child: &mut Child, exit: &ExitWatch) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // Not reaped yet (only the caller reaps), so the pid is still this child's.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if block_on_timeout(exit.exited(), TERMINATE_GRACE).is_none() {
        let _ = child.kill();
    }
}

/// A child's exit as something to wait on. A thread of its own waits for it with `waitid`
/// and `WNOWAIT`, which does not reap it: its pid stays its own (safe to signal) until its
/// owner reaps it with [`Child::wait`].
struct ExitWatch(watch::Receiver<bool>);

impl ExitWatch {
    fn start(pid: u32) -> std::io::Result<Self> {
        let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
        let (exited, watch) = watch::channel(false);
        std::thread::Builder::new().name(format!("exit-of:{pid}")).spawn(move || {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            while let Err(Errno::EINTR) = waitid(Id::Pid(Pid::from_raw(pid)), flags) {}
            // Exited, or no longer ours to wait for (reaped by a PID 1 reaper): either way,
            // waiters go on and the owner's `wait` says which.
            exited.send_replace(true);
        })?;
        Ok(Self(watch))
    }

    /// Completes once the child has exited. Needs no runtime.
    fn exited(&self) -> impl Future<Output = ()> + use<> {
        let mut exited = self.0.clone();
        async move {
            let _ = exited.wait_for(|exited| *exited).await;
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_only_in_full() {
        let tickets = Tickets::default();
        let ticketed = || Ticketed {
            name: "hello".into(),
            dir: Some("/x".into()),
            lifecycle: Arc::default(),
            report: Arc::default(),
        };
        let ticket = tickets.issue(ticketed()).expect("ticket");
        assert_eq!(ticket.len(), 64);
        assert!(tickets.redeem(&ticket[..63]).is_none());
        assert!(tickets.redeem(&"0".repeat(64)).is_none());
        assert!(tickets.redeem("not hex at all, but exactly sixty-four characters long, really!!").is_none());
        assert_eq!(tickets.redeem(&ticket).map(|t| t.name), Some("hello".to_owned()));
        assert!(tickets.redeem(&ticket).is_none(), "a ticket works once");
        let other = tickets.issue(ticketed()).expect("ticket");
        tickets.withdraw("hello");
        assert!(tickets.redeem(&other).is_none(), "withdrawn with its child");
    }

    /// `sh -c script`, watched.
    fn watched(script: &str) -> (Child, ExitWatch) {
        let child = Command::new("sh").args(["-c", script]).spawn().expect("sh");
        let exit = ExitWatch::start(child.id()).expect("watch");
        (child, exit)
    }

    #[test]
    fn an_exit_is_reported_without_reaping_and_the_owner_reaps_it() {
        let (mut child, exit) = watched("exit 3");
        // The exit woke it (the timeout is only a hang guard).
        assert_eq!(block_on_timeout(exit.exited(), Duration::from_secs(60)), Some(()));
        assert_eq!(child.wait().expect("reaped by its owner").code(), Some(3), "the status was left for the owner");
    }

    #[test]
    fn terminate_asks_first_and_kills_a_child_that_does_not_listen() {
        use std::os::unix::process::ExitStatusExt;
        let (mut polite, exit) = watched("sleep 600");
        terminate(&mut polite, &exit);
        assert_eq!(polite.wait().expect("reaped").signal(), Some(Signal::SIGTERM as i32));
        // `exec` keeps the ignored SIGTERM, and the printed line says the trap is set.
        let mut deaf = Command::new("sh")
            .args(["-c", "trap '' TERM; echo deaf; exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        BufReader::new(deaf.stdout.take().expect("stdout")).read_line(&mut line).expect("deaf");
        let exit = ExitWatch::start(deaf.id()).expect("watch");
        terminate(&mut deaf, &exit);
        assert_eq!(deaf.wait().expect("reaped").signal(), Some(Signal::SIGKILL as i32), "killed after the grace");
    }
}
