//! Stage C, init (`astrid-sandbox init`): pid 1 of the command's pid namespace. It enters
//! the new root, bounds what the command may use, gives up every privilege, starts
//! `/bin/sh -c <line>` and reaps until the command ends; then it exits, and the kernel kills
//! every process left in the namespace (detached daemons and SIGTERM-ignorers alike).
//!
//! Its stdin is the helper's lifeline (end of file: the helper is gone, so is the command),
//! its stdout the command's output pipe, its stderr the status lines the helper reads.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::protocol::{InitRequest, InitStatus};
use super::seccomp;

/// Files of `/proc` a command must not write (the sysctls, the magic SysRq key…): when the
/// daemon is root, the command's uid is the host's root too, and procfs grants a few files
/// by uid alone. Made read-only, as container runtimes do.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Files of `/proc` that say too much about the host, masked.
const PROC_MASKED: [&str; 7] = ["kcore", "keys", "timer_list", "sched_debug", "latency_stats", "acpi", "scsi"];

fn report(status: &InitStatus) {
    if let Ok(mut line) = serde_json::to_vec(status) {
        line.push(b'\n');
        let mut err = io::stderr();
        let _ = err.write_all(&line);
        let _ = err.flush();
    }
}

/// Init's life; its exit status is the command's (or 128 + the signal), 125 when the
/// sandbox could not be set up.
pub fn main() -> ExitCode {
    let mut lifeline = BufReader::new(io::stdin());
    let mut line = String::new();
    let request: InitRequest = match lifeline.read_line(&mut line).map(|_| serde_json::from_str(&line)) {
        Ok(Ok(request)) => request,
        _ => {
            report(&InitStatus::Failed { reason: "init got no request".to_owned() });
            return ExitCode::from(125);
        }
    };
    let child = match set_up(&request).and_then(|()| spawn(&request)) {
        Ok(child) => child,
        Err(reason) => {
            report(&InitStatus::Failed { reason });
            return ExitCode::from(125);
        }
    };
    report(&InitStatus::Started);
    // The helper holds our stdin open for its whole life: end of file means it is gone.
    std::thread::spawn(move || {
        let mut rest = String::new();
        while lifeline.read_line(&mut rest).is_ok_and(|n| n > 0) {
            rest.clear();
        }
        std::process::exit(137);
    });
    let command = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The child is reaped here, as every orphan of the namespace is: std's handle is not used.
    drop(child);
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                report(&InitStatus::Exited { code });
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                report(&InitStatus::Signalled { signal: signal as i32 });
                return ExitCode::from(128u8.saturating_add(signal as u8));
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                report(&InitStatus::Failed { reason: format!("init lost its command: {e}") });
                return ExitCode::from(125);
            }
        }
    }
}

fn set_up(request: &InitRequest) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("cannot tie init to the helper: {e}"))?;
    // The helper may have died before the tie was made: its end of our stdin is closed then.
    let stdin = io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO).is_ok() && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)) {
        return Err("the sandbox helper is gone".to_owned());
    }
    // A mount namespace of init's own, so that pivot_root moves only the command's side.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot make init's mount namespace: {e}"))?;
    let root = &request.root;
    let proc = root.join("proc");
    // procfs for this pid namespace, mounted while the host's is still visible (the kernel
    // refuses a new procfs in a namespace that shows none whole).
    mount(Some("proc"), &proc, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(|e| format!("cannot mount /proc: {e}"))?;
    if request.namespace_pid_max {
        // Per pid namespace since Linux 6.14: a hard bound on the processes in it, root or
        // not. (pid 1 is this init; the kernel's minimum is 301.)
        let pid_max = request.limits.processes.saturating_add(1).max(301);
        std::fs::write(proc.join("sys/kernel/pid_max"), pid_max.to_string())
            .map_err(|e| format!("cannot bound the processes (pid_max of the pid namespace): {e}"))?;
    }
    for name in PROC_READ_ONLY {
        let path = proc.join(name);
        if path.exists() {
            mount(Some(&path), &path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| format!("cannot bind /proc/{name}: {e}"))?;
            mount(
                None::<&str>,
                &path,
                None::<&str>,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_BIND
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| format!("cannot make /proc/{name} read-only: {e}"))?;
        }
    }
    let empty = root.join("dev/null");
    for name in PROC_MASKED {
        let path = proc.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let result = if meta.is_dir() {
            mount(Some("tmpfs"), &path, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=4k"))
        } else {
            mount(Some(&empty), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        result.map_err(|e| format!("cannot mask /proc/{name}: {e}"))?;
    }
    std::env::set_current_dir(root).map_err(|e| format!("cannot enter the new root: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("cannot pivot into the new root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("cannot enter /: {e}"))?;
    std::env::set_current_dir(&request.cwd)
        .map_err(|e| format!("cannot enter the working directory {}: {e}", request.cwd.display()))?;

    let limit = |resource, value: u64, what: &str| {
        setrlimit(resource, value, value).map_err(|e| format!("cannot limit {what}: {e}"))
    };
    limit(Resource::RLIMIT_NPROC, u64::from(request.limits.processes), "the processes")?;
    limit(Resource::RLIMIT_AS, request.limits.memory_per_process, "the memory")?;
    limit(Resource::RLIMIT_CORE, 0, "core dumps")?;
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    // Not dumpable: the command's processes (same uid) cannot read init's memory or open its
    // descriptors through /proc/1.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("cannot make init undumpable: {e}"))?;
    drop_capabilities()?;
    seccomp::apply()
}

/// The bounding set first (needs CAP_SETPCAP, still held), then the rest: `sh`, exec'd as
/// root of the user namespace, gets nothing back from an empty bounding set.
fn drop_capabilities() -> Result<(), String> {
    use caps::CapSet;
    for set in [CapSet::Bounding, CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("cannot drop the {set:?} capabilities: {e}"))?;
    }
    Ok(())
}

fn spawn(request: &InitRequest) -> Result<std::process::Child, String> {
    let output = io::stdout().as_fd().try_clone_to_owned().map_err(|e| format!("cannot share the output: {e}"))?;
    let errors = output.try_clone().map_err(|e| format!("cannot share the output: {e}"))?;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(&request.command_line)
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .current_dir(Path::new(&request.cwd))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))
}
