//! Stage H, the helper (`astrid-sandbox helper`): a child of the daemon that makes the
//! namespaces, builds the command's filesystem, starts init (stage C) in them, forwards the
//! output, enforces the timeout and the kill, and reports what changed.
//!
//! Its stdin is the daemon's control pipe and lifeline: after the request line, `k` asks for
//! the kill, and end of file (the daemon closed it, or died) is a kill too. It never runs the
//! command itself: `unshare(CLONE_NEWPID)` puts only its children in the new pid namespace,
//! and `pivot_root` would move every process of a mount namespace, itself included, away
//! from the staging directory it reports through. Nor does it start threads: after
//! `unshare(CLONE_NEWPID)` the kernel refuses them, so it polls its pipes on one.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::collect::{Layers, collect};
use super::protocol::{Frame, HelperRequest, InitRequest, InitStatus, KILL, Outcome, Report};
use super::rootfs::{self, Scratch};
use super::{INIT_ARG, ROLE};

/// Output is forwarded in chunks of at most this many bytes.
const CHUNK: usize = 64 * 1024;

/// The helper's life. Exit status 0 when it reported (whatever the command did), 1 when it
/// could not even report.
pub fn main() -> ExitCode {
    let _ = crate::lifeline::termination_signals().thread_unblock();
    let mut out = io::stdout().lock();
    let mut control = BufReader::new(io::stdin());
    let mut line = String::new();
    let request: HelperRequest = match control.read_line(&mut line).map(|_| serde_json::from_str(&line)) {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            send(&mut out, Frame::SetupFailed(format!("the sandbox helper got a malformed request: {e}")));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{ROLE}: cannot read the request: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Started { scratch, mut init, mut output } = match set_up(&request) {
        Ok(started) => started,
        Err(reason) => {
            send(&mut out, Frame::SetupFailed(reason));
            return ExitCode::SUCCESS;
        }
    };
    let Some(status_pipe) = init.stderr.take() else {
        let _ = init.kill();
        send(&mut out, Frame::SetupFailed("init has no status pipe".to_owned()));
        return ExitCode::SUCCESS;
    };
    let mut statuses = BufReader::new(status_pipe);
    match read_status(&mut statuses) {
        Some(InitStatus::Started) => {}
        Some(InitStatus::Failed { reason }) => {
            let _ = init.wait();
            send(&mut out, Frame::SetupFailed(reason));
            return ExitCode::SUCCESS;
        }
        other => {
            let _ = init.kill();
            let _ = init.wait();
            send(
                &mut out,
                Frame::SetupFailed(format!("the sandbox's init ended before the command started ({other:?})")),
            );
            return ExitCode::SUCCESS;
        }
    }
    if !send(&mut out, Frame::Started) {
        let _ = init.kill();
        return ExitCode::FAILURE;
    }
    let init_pid = Pid::from_raw(i32::try_from(init.id()).unwrap_or(i32::MAX));
    // The command's time counts from here, for its deadline and for what it is reported to
    // have run: the daemon hears of the start later, by however long the frame took.
    let started = Instant::now();
    let deadline = started + Duration::from_millis(request.timeout_ms);
    let (outcome, ran) = match watch(&mut control, &mut output, statuses, deadline, &mut out) {
        Watched::Ended(outcome) => (outcome, started.elapsed()),
        Watched::DaemonGone => {
            // Nobody to report to: end the command and go.
            let _ = kill(init_pid, Signal::SIGKILL);
            let _ = init.wait();
            return ExitCode::FAILURE;
        }
    };
    // Init's exit takes every process of its namespace with it (the kernel kills and reaps
    // them before init is reaped), so once it is waited for nothing can write any more.
    let _ = kill(init_pid, Signal::SIGKILL);
    let _ = init.wait();
    drain(output, &mut out);

    let staged = request.staging.join("files");
    let mut report = Report { outcome, ran, items: Vec::new(), refused: Vec::new(), problem: None };
    match std::fs::create_dir_all(&staged) {
        Ok(()) => {
            let collected = collect(&Layers {
                upper: &scratch.upper,
                merged: &scratch.merged,
                vfs_upper: &scratch.vfs_upper,
                deletions: &scratch.deletions,
                workspace: &request.workspace,
                staged: &staged,
            });
            report.items = collected.items;
            report.refused = collected.refused;
            report.problem = collected.problem;
        }
        Err(e) => report.problem = Some(format!("cannot stage the changes in {}: {e}", staged.display())),
    }
    if send(&mut out, Frame::Report(report)) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn send(out: &mut impl Write, frame: Frame) -> bool {
    frame.write_to(out).is_ok()
}

/// How watching the command ended.
enum Watched {
    Ended(Outcome),
    DaemonGone,
}

/// Forwards output and waits for the end, on this one thread: a process that made a new pid
/// namespace for its children cannot start threads (`clone` refuses `CLONE_THREAD` then),
/// so the control pipe, the output and init's status are polled together. Returns once
/// init reported the command's end, the daemon asked for the kill or went away, or the
/// timeout ran out; the output left in the pipe is forwarded by [`drain`] once init is gone.
fn watch(
    control: &mut BufReader<io::Stdin>,
    output: &mut io::PipeReader,
    mut statuses: BufReader<ChildStderr>,
    deadline: Instant,
    out: &mut impl Write,
) -> Watched {
    // A kill may have arrived with the request line.
    if control.buffer().contains(&KILL) {
        return Watched::Ended(Outcome::Killed);
    }
    let mut buffer = vec![0u8; CHUNK];
    let mut status_line = Vec::new();
    status_line.extend_from_slice(statuses.buffer());
    let mut output_open = true;
    let outcome = loop {
        if let Some(status) = complete_status(&mut status_line) {
            break match status {
                InitStatus::Exited { code } => Outcome::Exited(code),
                InitStatus::Signalled { signal } => Outcome::Signalled(signal),
                InitStatus::Started | InitStatus::Failed { .. } => Outcome::Killed,
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Outcome::TimedOut;
        }
        let wait = PollTimeout::try_from(left.min(Duration::from_secs(3600))).unwrap_or(PollTimeout::MAX);
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let (control_ready, output_ready, status_ready) = {
            let stdin = io::stdin();
            let mut fds = vec![
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(statuses.get_ref().as_fd(), PollFlags::POLLIN),
            ];
            if output_open {
                fds.push(PollFd::new(output.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => break Outcome::Killed,
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| r.intersects(readable));
            (ready(&fds[0]), fds.get(2).is_some_and(ready), ready(&fds[1]))
        };
        if control_ready {
            let mut byte = [0u8; 1];
            match control.get_mut().read(&mut byte) {
                Ok(1) if byte[0] == KILL => break Outcome::Killed,
                Ok(1) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return Watched::DaemonGone,
            }
        }
        if output_ready {
            match output.read(&mut buffer) {
                Ok(0) => output_open = false,
                Ok(n) => {
                    if !send(out, Frame::Output(buffer[..n].to_vec())) {
                        return Watched::DaemonGone;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => output_open = false,
            }
        }
        if status_ready {
            let mut chunk = [0u8; 512];
            match statuses.get_mut().read(&mut chunk) {
                // init is gone without saying how the command ended: it was killed.
                Ok(0) => break Outcome::Killed,
                Ok(n) => status_line.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Outcome::Killed,
            }
        }
    };
    Watched::Ended(outcome)
}

/// The first complete status line in `pending`, taken out of it.
fn complete_status(pending: &mut Vec<u8>) -> Option<InitStatus> {
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if let Ok(status) = serde_json::from_slice(&line) {
            return Some(status);
        }
    }
    None
}

fn read_status(statuses: &mut impl BufRead) -> Option<InitStatus> {
    let mut line = String::new();
    loop {
        line.clear();
        match statuses.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Ok(status) = serde_json::from_str(&line) {
                    return Some(status);
                }
            }
        }
    }
}

/// Forwards what is left in the output pipe, up to its end. Called once init is being
/// killed or has exited: the pipe's last writers die with its namespace.
fn drain(mut output: io::PipeReader, out: &mut impl Write) {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        match output.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if !send(out, Frame::Output(buffer[..n].to_vec())) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// A command whose init runs.
struct Started {
    scratch: Scratch,
    init: Child,
    /// The read end of the command's output (stdout and stderr of all its processes).
    output: io::PipeReader,
}

/// Namespaces, the filesystem, then init, started and handed its request.
fn set_up(request: &HelperRequest) -> Result<Started, String> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !request.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("cannot create the namespaces (user, mount, pid, ipc, uts, net): {e}"))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| format!("cannot write /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".to_owned())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    let _ = nix::unistd::sethostname("astrid-sandbox");
    let scratch = rootfs::build(request)?;

    let (output_reader, output_writer) = io::pipe().map_err(|e| format!("cannot make the output pipe: {e}"))?;
    let mut init = Command::new("/proc/self/exe")
        .arg0(ROLE)
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::from(output_writer))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the sandbox's init: {e}"))?;
    let init_request = InitRequest {
        root: scratch.root.clone(),
        cwd: scratch.cwd.clone(),
        command_line: request.command_line.clone(),
        env: request.env.clone(),
        limits: request.limits,
        namespace_pid_max: request.namespace_pid_max,
    };
    let mut line = serde_json::to_vec(&init_request).map_err(|e| format!("cannot encode init's request: {e}"))?;
    line.push(b'\n');
    let sent = init.stdin.as_mut().map(|stdin| stdin.write_all(&line));
    if !matches!(sent, Some(Ok(()))) {
        let _ = init.kill();
        let _ = init.wait();
        return Err("cannot hand init its request".to_owned());
    }
    // init's stdin stays open in `init` (its lifeline) until this process ends.
    Ok(Started { scratch, init, output: output_reader })
}
