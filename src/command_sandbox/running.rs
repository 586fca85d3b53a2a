//! A command while it runs, from the daemon's side: a blocking API for the thread that
//! drives it (a capsule's host-call thread), events from a reader thread, and a [`Killer`]
//! any other thread may use.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::protocol::{Frame, HelperRequest, KILL, Outcome, Refused, Report, StagedItem};
use super::{HELPER_ARG, ROLE, Sandbox, SandboxError};
use crate::vfs::{Change, Import, Vfs, VfsPath};

/// How long the helper may take to set a command up before it is given up on.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long past its timeout a helper that has not reported is given before it is killed
/// (it kills the command itself at the timeout; this is the daemon's own guard).
const REPORT_GRACE: Duration = Duration::from_secs(15);
/// Output chunks (64 KiB at most each) read ahead of the caller: past them, a command whose
/// output is not taken waits to write more, and memory stays bounded.
const BUFFERED_FRAMES: usize = 256;
/// Unsandboxed: how long output is still read after the shell exited (a process that left
/// its process group may hold the pipe open forever).
const DRAIN: Duration = Duration::from_secs(2);

/// What [`RunningCommand::next`] saw.
#[derive(Debug, Clone)]
pub enum CommandEvent {
    /// Bytes the command wrote (stdout and stderr interleaved as they came), raw.
    Output(Vec<u8>),
    /// Nothing within the wait.
    Pending,
    /// It ended (returned again by every later call).
    Finished(Finished),
}

/// How a command ended and what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    /// From start to end, as the side that enforces the timeout measured it (the helper, or
    /// unsandboxed the daemon's timer): a command ended by its timeout ran at least that.
    pub duration: Duration,
    /// Every byte of output, whether the caller kept it or not.
    pub output_bytes: u64,
    /// What it changed, already in the VFS overlay, relative to what the agent saw before
    /// (`Added`: did not exist; `Modified`; `Deleted`). Empty when unsandboxed: the command
    /// wrote the real workspace.
    pub changes: Vec<Change>,
    /// What it made that the overlay cannot hold (links, FIFOs, files above 10 MiB…), not
    /// imported.
    pub refused: Vec<Refused>,
    /// A problem of the sandbox itself after the command started (its changes may then be
    /// incomplete).
    pub problem: Option<String>,
}

/// Ends a command from any thread.
#[derive(Debug, Clone)]
pub struct Killer(Arc<Control>);

#[derive(Debug)]
struct Control {
    /// The helper's control pipe (sandboxed).
    stdin: Mutex<Option<ChildStdin>>,
    /// The helper, or the shell's process group (unsandboxed); `None` once reaped, so a
    /// recycled pid is never signalled.
    target: Mutex<Option<Target>>,
    killed: AtomicBool,
    timed_out: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Helper(Pid),
    Group(Pid),
}

impl Killer {
    /// Ends the command's whole process tree now. Sandboxed, the helper kills init (and
    /// with it the pid namespace) and still reports what the command changed until then.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.end();
    }
}

impl Control {
    fn end(&self) {
        let asked = {
            let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
            stdin.as_mut().is_some_and(|pipe| pipe.write_all(&[KILL]).and_then(|()| pipe.flush()).is_ok())
        };
        if asked {
            return;
        }
        match *self.target.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Target::Helper(pid)) => drop(kill(pid, Signal::SIGKILL)),
            Some(Target::Group(group)) => drop(killpg(group, Signal::SIGKILL)),
            None => {}
        }
    }

    /// SIGKILL, not asking: the helper's death takes init (parent-death signal, lifeline)
    /// and so the whole namespace.
    fn force(&self) {
        match *self.target.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Target::Helper(pid)) => drop(kill(pid, Signal::SIGKILL)),
            Some(Target::Group(group)) => drop(killpg(group, Signal::SIGKILL)),
            None => {}
        }
    }
}

enum Message {
    Frame(Frame),
    /// The stream ended (or broke).
    Closed,
}

/// A command that runs. Dropping it kills it. Its output is read ahead up to 16 MiB; past
/// that the command waits until [`RunningCommand::next`] takes some.
#[derive(Debug)]
pub struct RunningCommand {
    /// The helper (sandboxed); unsandboxed, a waiter thread owns the shell.
    helper: Option<Child>,
    events: Receiver<Message>,
    control: Arc<Control>,
    started: Instant,
    deadline: Instant,
    output_bytes: u64,
    vfs: Arc<Vfs>,
    /// The command's directory under the overlay (sandboxed).
    dir: Option<PathBuf>,
    report: Option<Report>,
    /// When the report came (unsandboxed: when the shell exited).
    reported_at: Option<Instant>,
    /// The output stream ended (the helper exited).
    closed: bool,
    finished: Option<Finished>,
    /// Ends the unsandboxed timer thread when dropped.
    _timer: Option<Sender<()>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(frame) => write!(f, "Frame({frame:?})"),
            Self::Closed => f.write_str("Closed"),
        }
    }
}

impl RunningCommand {
    /// Waits up to `wait` for the next thing that happens: output, the end, or nothing.
    pub fn next(&mut self, wait: Duration) -> CommandEvent {
        if let Some(finished) = &self.finished {
            return CommandEvent::Finished(finished.clone());
        }
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            self.guard(now);
            if let Some(at) = self.reported_at
                && now >= at + DRAIN
            {
                return self.finish();
            }
            let mut slice = until.saturating_duration_since(now).min(Duration::from_millis(250));
            if let Some(at) = self.reported_at {
                slice = slice.min((at + DRAIN).saturating_duration_since(now));
            }
            match self.events.recv_timeout(slice) {
                Ok(Message::Frame(Frame::Output(bytes))) => {
                    self.output_bytes += bytes.len() as u64;
                    return CommandEvent::Output(bytes);
                }
                Ok(Message::Frame(Frame::Report(report))) => {
                    self.report = Some(report);
                    self.reported_at = Some(Instant::now());
                }
                Ok(Message::Frame(Frame::Started | Frame::SetupFailed(_))) => {}
                // The helper's report comes before its stream ends; unsandboxed, the shell's
                // status may come after its output ends.
                Ok(Message::Closed) if self.helper.is_none() && self.report.is_none() => self.closed = true,
                Ok(Message::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return self.finish();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= until {
                        return CommandEvent::Pending;
                    }
                }
            }
        }
    }

    /// Something any thread can use to end the command.
    pub fn killer(&self) -> Killer {
        Killer(Arc::clone(&self.control))
    }

    /// The helper enforces the timeout; this is the daemon's guard against a helper that
    /// has not reported well after it (unsandboxed, a timer thread kills the shell).
    fn guard(&mut self, now: Instant) {
        if self.helper.is_some() && self.report.is_none() && now >= self.deadline + REPORT_GRACE {
            self.control.force();
        }
    }

    fn finish(&mut self) -> CommandEvent {
        let report = self.report.take();
        // The helper exits right after its report (one that did not is ended); unsandboxed,
        // the waiter reaped the shell.
        if let Some(helper) = &mut self.helper {
            if !self.closed {
                self.control.force();
            }
            reap(helper, &self.control);
        }
        let mut finished = Finished {
            outcome: Outcome::Killed,
            duration: self.started.elapsed(),
            output_bytes: self.output_bytes,
            changes: Vec::new(),
            refused: Vec::new(),
            problem: None,
        };
        match report {
            Some(report) => {
                finished.outcome = report.outcome;
                finished.duration = report.ran;
                finished.refused = report.refused;
                finished.problem = report.problem;
                if let Some(dir) = &self.dir {
                    import(&self.vfs, dir, &report.items, &mut finished);
                }
            }
            None => finished.problem = Some("the sandbox helper ended without reporting".to_owned()),
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.finished = Some(finished.clone());
        CommandEvent::Finished(finished)
    }
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.control.killed.store(true, Ordering::SeqCst);
            self.control.force();
            if let Some(helper) = &mut self.helper {
                reap(helper, &self.control);
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits for the helper and forgets its pid. Called once its output ended (it closes it only
/// by exiting) or after it was killed, so the wait is short.
fn reap(process: &mut Child, control: &Control) {
    let _ = process.wait();
    *control.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Moves what the helper staged into the overlay.
fn import(vfs: &Vfs, dir: &Path, items: &[StagedItem], finished: &mut Finished) {
    let mut imports = Vec::with_capacity(items.len());
    for item in items {
        let (path, deleted) = match item {
            StagedItem::File { path } => (path, false),
            StagedItem::Deleted { path } => (path, true),
        };
        match VfsPath::parse(path) {
            Ok(parsed) => imports.push(if deleted { Import::Deleted(parsed) } else { Import::File(parsed) }),
            Err(e) => finished.refused.push(Refused { path: path.clone(), reason: e.to_string() }),
        }
    }
    match vfs.import(&dir.join("files"), &imports) {
        Ok(imported) => {
            finished.changes = imported.changes;
            finished
                .refused
                .extend(imported.refused.into_iter().map(|(path, e)| Refused { path, reason: e.to_string() }));
        }
        Err(e) => {
            let problem = format!("the changes could not all be imported into the workspace overlay: {e}");
            finished.problem = Some(match finished.problem.take() {
                Some(earlier) => format!("{earlier}; {problem}"),
                None => problem,
            });
        }
    }
}

/// Reads frames from `input` into `events` until the stream ends.
fn read_frames(mut input: impl io::Read, events: SyncSender<Message>) {
    loop {
        match super::protocol::Frame::read_from(&mut input) {
            Ok(Some(frame)) => {
                if events.send(Message::Frame(frame)).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = events.send(Message::Closed);
                return;
            }
        }
    }
}

/// Starts the helper, hands it the request and waits until the command runs.
pub(super) fn start_confined(
    sandbox: &Sandbox,
    vfs: &Arc<Vfs>,
    request: &super::CommandRequest,
) -> Result<RunningCommand, SandboxError> {
    let workspace = std::fs::canonicalize(vfs.root())
        .map_err(|e| SandboxError::Setup(format!("cannot resolve the workspace {}: {e}", vfs.root().display())))?;
    for hidden in &sandbox.hidden {
        if let Ok(hidden) = std::fs::canonicalize(hidden)
            && workspace.starts_with(&hidden)
        {
            return Err(SandboxError::Setup(format!(
                "the workspace {} lies inside {}, which commands must not see",
                workspace.display(),
                hidden.display()
            )));
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = vfs.command_dir(&id)?;
    let helper_request = HelperRequest {
        command_line: request.command_line.clone(),
        workspace,
        cwd: request.cwd.as_str().to_owned(),
        vfs_upper: vfs.upper_dir(),
        whiteouts: vfs.whiteout_paths(),
        staging: dir.clone(),
        timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
        network: request.network,
        limits: sandbox.config.limits,
        namespace_pid_max: sandbox.namespace_pid_max,
        read_only_paths: sandbox.config.read_only_paths.clone(),
        hidden: sandbox.hidden.clone(),
        home: sandbox.config.user_home.clone(),
        env: sandbox.environment(),
    };
    let cleanup = |e| {
        let _ = std::fs::remove_dir_all(&dir);
        e
    };
    let mut line = serde_json::to_vec(&helper_request).map_err(|e| cleanup(SandboxError::Setup(e.to_string())))?;
    line.push(b'\n');
    let mut process = Command::new(&sandbox.host.helper)
        .arg0(ROLE)
        .arg(HELPER_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| cleanup(SandboxError::Spawn { what: sandbox.host.helper.display().to_string(), source }))?;
    let pid = Pid::from_raw(i32::try_from(process.id()).unwrap_or(i32::MAX));
    let mut stdin = process.stdin.take();
    let stdout = process.stdout.take();
    let control = Arc::new(Control {
        stdin: Mutex::new(None),
        target: Mutex::new(Some(Target::Helper(pid))),
        killed: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
    });
    let fail = |process: &mut Child, reason: String| {
        control.force();
        reap(process, &control);
        let _ = std::fs::remove_dir_all(&dir);
        SandboxError::Setup(reason)
    };
    let sent = stdin.as_mut().map(|pipe| pipe.write_all(&line).and_then(|()| pipe.flush()));
    if !matches!(sent, Some(Ok(()))) {
        return Err(fail(&mut process, "cannot hand the sandbox helper its request".to_owned()));
    }
    *control.stdin.lock().unwrap_or_else(|e| e.into_inner()) = stdin;
    let Some(stdout) = stdout else { return Err(fail(&mut process, "the sandbox helper has no output".to_owned())) };
    let (sender, events) = mpsc::sync_channel(BUFFERED_FRAMES);
    std::thread::Builder::new()
        .name("sandbox-output".to_owned())
        .spawn(move || read_frames(stdout, sender))
        .map_err(|e| fail(&mut process, format!("cannot start the output reader: {e}")))?;
    match events.recv_timeout(SETUP_DEADLINE) {
        Ok(Message::Frame(Frame::Started)) => {}
        Ok(Message::Frame(Frame::SetupFailed(reason))) => return Err(fail(&mut process, reason)),
        Ok(other) => return Err(fail(&mut process, format!("the sandbox helper said {other:?} before starting"))),
        Err(RecvTimeoutError::Timeout) => {
            return Err(fail(&mut process, format!("the sandbox was not set up within {}s", SETUP_DEADLINE.as_secs())));
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(fail(&mut process, "the sandbox helper ended before the command started".to_owned()));
        }
    }
    let started = Instant::now();
    Ok(RunningCommand {
        helper: Some(process),
        events,
        control,
        started,
        deadline: started + request.timeout,
        output_bytes: 0,
        vfs: Arc::clone(vfs),
        dir: Some(dir),
        report: None,
        reported_at: None,
        closed: false,
        finished: None,
        _timer: None,
    })
}

/// `ASTRID_SANDBOX=off`: `/bin/sh -c` in the real workspace, in a process group of its own
/// (killed whole at the end, on kill and at the timeout), with the scrubbed environment.
pub(super) fn start_unconfined(
    sandbox: &Sandbox,
    vfs: &Arc<Vfs>,
    request: &super::CommandRequest,
) -> Result<RunningCommand, SandboxError> {
    let cwd = vfs.root().join(vfs.resolve(&request.cwd)?.as_str());
    if !cwd.is_dir() {
        return Err(SandboxError::Setup(format!("the working directory {} is not a directory", request.cwd)));
    }
    let (reader, writer) = io::pipe().map_err(|source| SandboxError::Spawn { what: "a pipe".to_owned(), source })?;
    let errors = writer.try_clone().map_err(|source| SandboxError::Spawn { what: "a pipe".to_owned(), source })?;
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg(&request.command_line)
        .env_clear()
        .envs(sandbox.environment())
        .current_dir(&cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(errors))
        .spawn()
        .map_err(|source| SandboxError::Spawn { what: "/bin/sh".to_owned(), source })?;
    // The command's time counts from here, for the timer and for what it is reported to have
    // run (the threads below may take a while to start on a busy machine).
    let started = Instant::now();
    let group = Pid::from_raw(i32::try_from(shell.id()).unwrap_or(i32::MAX));
    let control = Arc::new(Control {
        stdin: Mutex::new(None),
        target: Mutex::new(Some(Target::Group(group))),
        killed: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
    });
    let (sender, events) = mpsc::sync_channel(BUFFERED_FRAMES);
    let output = sender.clone();
    let spawned = std::thread::Builder::new().name("command-output".to_owned()).spawn(move || {
        let mut reader = reader;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match io::Read::read(&mut reader, &mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if output.send(Message::Frame(Frame::Output(buffer[..n].to_vec()))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = output.send(Message::Closed);
    });
    if let Err(source) = spawned {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = shell.wait();
        return Err(SandboxError::Spawn { what: "the output reader".to_owned(), source });
    }
    // The waiter owns the shell: it reaps it, ends what is left of its group, and reports.
    let waiter_control = Arc::clone(&control);
    std::thread::spawn(move || {
        let status = shell.wait();
        let _ = killpg(group, Signal::SIGKILL);
        *waiter_control.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let outcome = if waiter_control.timed_out.load(Ordering::SeqCst) {
            Outcome::TimedOut
        } else if waiter_control.killed.load(Ordering::SeqCst) {
            Outcome::Killed
        } else {
            match status {
                Ok(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                    (Some(code), _) => Outcome::Exited(code),
                    (None, Some(signal)) => Outcome::Signalled(signal),
                    (None, None) => Outcome::Killed,
                },
                Err(_) => Outcome::Killed,
            }
        };
        let report = Report { outcome, ran: started.elapsed(), items: Vec::new(), refused: Vec::new(), problem: None };
        let _ = sender.send(Message::Frame(Frame::Report(report)));
    });
    let (timer, cancelled) = mpsc::channel::<()>();
    let timer_control = Arc::clone(&control);
    let timeout = request.timeout;
    std::thread::spawn(move || {
        let left = (started + timeout).saturating_duration_since(Instant::now());
        if cancelled.recv_timeout(left) == Err(RecvTimeoutError::Timeout) {
            timer_control.timed_out.store(true, Ordering::SeqCst);
            timer_control.force();
        }
    });
    Ok(RunningCommand {
        helper: None,
        events,
        control,
        started,
        deadline: started + request.timeout,
        output_bytes: 0,
        vfs: Arc::clone(vfs),
        dir: None,
        report: None,
        reported_at: None,
        closed: false,
        finished: None,
        _timer: Some(timer),
    })
}
