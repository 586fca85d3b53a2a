//! Zombie reaping when the daemon runs as PID 1 (a container entrypoint).
//!
//! Orphaned processes are re-parented to PID 1, which must `wait` for them or they stay as
//! zombies. Outside PID 1 this is not our job (and reaping every child would steal exit
//! statuses from code that waits on its own children), so the reaper only runs as PID 1.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// Starts reaping on every SIGCHLD if this process is PID 1. Returns whether it did.
pub fn spawn_if_pid1() -> bool {
    if std::process::id() != 1 {
        return false;
    }
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(sigchld) => sigchld,
        Err(e) => {
            log::error!("running as PID 1 but cannot watch SIGCHLD: {e}; zombies will not be reaped");
            return false;
        }
    };
    tokio::spawn(async move {
        loop {
            reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    true
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => log::debug!("reaped child: {status:?}"),
        }
    }
}
