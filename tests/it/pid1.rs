//! The container entrypoint: `astrid daemon` as PID 1 of a new PID namespace.

use std::process::{Command, Stdio};

use crate::harness::{HANG, TestHome, wait_for};

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned())
}

#[test]
fn daemon_as_pid1_reaps_orphans_and_exits_cleanly_on_sigterm() {
    let t = TestHome::new();
    let probe = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("SKIPPED: unshare is not permitted here: {}", String::from_utf8_lossy(&out.stderr).trim());
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: unshare is not available: {e}");
            return;
        }
    }
    // PID 1 is a shell that leaves an orphan (`sleep`) and then execs the daemon, so the
    // daemon inherits a child it never spawned, exactly like a container init.
    let daemon = t.bin.join("astrid");
    let script = format!("sleep 0.3 & exec {} daemon", daemon.display());
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .env("ASTRID_HOME", &t.home)
        .current_dir(&t.workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    assert!(wait_for(&mut || t.ready().exists(), HANG), "daemon did not boot as PID 1");
    let pid1 = *children_of(unshare.id()).first().expect("the namespace's PID 1");
    assert!(t.logged("running as PID 1"), "{}", t.log());
    // The orphaned sleep exits after 0.3 s; PID 1 must reap it.
    let reaped = wait_for(
        &mut || {
            children_of(pid1).iter().all(|child| state(*child).is_none_or(|s| s != "Z")) && children_of(pid1).is_empty()
        },
        HANG,
    );
    assert!(reaped, "zombie left under PID 1: {:?}", children_of(pid1));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1 as i32), nix::sys::signal::Signal::SIGTERM).expect("kill");
    // The kernel ignores a signal PID 1 has no handler for: a daemon that forgot to install
    // one would never exit, so the guard's expiry is the failure "PID 1 ignored SIGTERM".
    let exited = wait_for(&mut || unshare.try_wait().expect("wait").is_some(), HANG);
    assert!(exited, "hung: PID 1 ignored SIGTERM\n{}", t.log());
    let status = unshare.wait().expect("status");
    assert!(status.success(), "{status}");
    assert_eq!(t.run_files_exist(), [false; 3]);
    let log = t.log();
    assert!(log.contains("shutdown complete (signal SIGTERM)"), "SIGTERM is why PID 1 ended:\n{log}");
}
