//! The CLI role: lifecycle commands, auto-spawn, links, exit codes.

use std::time::Duration;

use astrid::types::DaemonStatus;

use crate::harness::{HANG, TestHome, alive, freeze, wait_for};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn lock_pid(t: &TestHome) -> i32 {
    std::fs::read_to_string(t.run_dir().join("system.lock")).expect("lock").trim().parse().expect("pid")
}

#[test]
fn version_help_and_usage_errors() {
    let t = TestHome::new();
    let version = t.cli(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(stdout(&version).trim(), format!("astrid {}", env!("CARGO_PKG_VERSION")));
    let help = t.cli(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    for command in ["daemon", "start", "stop", "restart", "status", "capsule", "install-links"] {
        assert!(stdout(&help).contains(command), "{command} missing from help");
    }
    for args in [&["status", "--help"][..], &["capsule", "list", "--help"], &["daemon", "--help"], &["stop", "--help"]]
    {
        assert_eq!(t.cli(args).status.code(), Some(0), "{args:?}");
    }
    assert_eq!(t.cli(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(t.cli(&[]).status.code(), Some(2));
    let host = t.command("astrid-capsule-host").output().expect("run");
    assert_eq!(host.status.code(), Some(2));
    assert!(stderr(&host).contains("started by the daemon"), "{}", stderr(&host));
    assert_eq!(t.cli(&["capsule-host"]).status.code(), Some(2));
}

#[test]
fn status_without_a_daemon_spawns_nothing() {
    let t = TestHome::new();
    let output = t.cli(&["status"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output).trim(), "astrid daemon is not running");
    assert_eq!(stdout(&t.cli(&["status", "--json"])).trim(), "null");
    assert!(!t.run_dir().join("system.lock").exists(), "status must not start a daemon");
}

#[test]
fn start_status_stop_round_trip() {
    let t = TestHome::new();
    let started = t.cli(&["start"]);
    assert_eq!(started.status.code(), Some(0), "{}", stderr(&started));
    let pid = lock_pid(&t);
    assert!(stdout(&started).contains(&format!("pid {pid}")));
    let again = t.cli(&["start"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(stdout(&again).contains(&format!("already running (pid {pid})")), "{}", stdout(&again));

    let status = t.cli(&["status"]);
    assert_eq!(status.status.code(), Some(0));
    assert!(stdout(&status).contains(&format!("running (pid {pid})")), "{}", stdout(&status));
    assert!(stdout(&status).contains("persistent"));
    let json = t.cli(&["status", "--json"]);
    let parsed: DaemonStatus = serde_json::from_slice(&json.stdout).expect("DaemonStatus JSON");
    assert_eq!(parsed.pid as i32, pid);
    assert!(!parsed.ephemeral);

    let list = t.cli(&["capsule", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert!(stdout(&list).contains("astrid-capsule-cli") && stdout(&list).contains("running"));

    let stopped = t.cli(&["stop"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert!(!alive(pid), "stop returned before the daemon exited");
    assert_eq!(t.run_files_exist(), [false; 3], "stop returned before the files were gone");
    let twice = t.cli(&["stop"]);
    assert_eq!(twice.status.code(), Some(0));
    assert!(stdout(&twice).contains("not running"));
}

#[test]
fn restart_replaces_the_daemon() {
    let t = TestHome::new();
    assert_eq!(t.cli(&["start"]).status.code(), Some(0));
    let first = lock_pid(&t);
    let restarted = t.cli(&["restart"]);
    assert_eq!(restarted.status.code(), Some(0), "{}", stderr(&restarted));
    let second = lock_pid(&t);
    assert_ne!(first, second);
    assert!(!alive(first));
    assert!(alive(second));
    assert_eq!(t.cli(&["stop"]).status.code(), Some(0));
}

#[test]
fn stop_after_a_sigkill_cleans_the_leftovers() {
    let t = TestHome::new();
    assert_eq!(t.cli(&["start"]).status.code(), Some(0));
    let pid = lock_pid(&t);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    // A multi-threaded process can show as a zombie while its other threads still hold its
    // files: wait for the lock itself to be released.
    let home = astrid::home::AstridHome::at(&t.home);
    let released =
        || astrid::daemon::singleton::probe(&home).expect("probe") == astrid::daemon::singleton::Liveness::Stopped;
    assert!(wait_for(&mut || !alive(pid) && released(), HANG));
    assert_eq!(t.run_files_exist(), [true; 3]);
    let status = t.cli(&["status"]);
    assert_eq!(
        stdout(&status).trim(),
        "astrid daemon is not running",
        "stale files do not fool status: {}",
        stderr(&status)
    );
    let stopped = t.cli(&["stop"]);
    assert_eq!(stopped.status.code(), Some(0));
    assert!(stdout(&stopped).contains("removed 3 stale run file(s)"), "{}", stdout(&stopped));
    assert_eq!(t.run_files_exist(), [false; 3]);
}

#[test]
fn capsule_list_spawns_an_ephemeral_daemon_that_later_exits() {
    let t = TestHome::new();
    let list = t.cli_with(&["capsule", "list"], &[("ASTRID_IDLE_TIMEOUT_SECS", "1")]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert!(stdout(&list).contains("astrid-capsule-cli"));
    let pid = lock_pid(&t);
    assert!(alive(pid));
    let status: DaemonStatus = serde_json::from_slice(&t.cli(&["status", "--json"]).stdout).expect("status");
    assert!(status.ephemeral);
    assert!(wait_for(&mut || !alive(pid), HANG), "the ephemeral daemon did not exit");
    assert_eq!(t.run_files_exist(), [false; 3]);
}

#[test]
fn a_daemon_that_cannot_boot_is_reported_with_its_log() {
    let t = TestHome::new();
    let long_home = t.workspace.join("y".repeat(100));
    let mut command = t.command("astrid");
    command.env("ASTRID_HOME", &long_home).args(["capsule", "list"]);
    let output = command.output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("exited during boot"), "{err}");
    assert!(err.contains("exceeding the platform limit"), "the log tail must explain why: {err}");
}

#[test]
fn bad_astrid_home_is_refused() {
    let t = TestHome::new();
    let output = t.cli_with(&["status"], &[("ASTRID_HOME", "relative/home")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("ASTRID_HOME must be an absolute path"));
    let output = t.cli_with(&["status"], &[("ASTRID_HOME", "/tmp/../etc")]);
    assert!(stderr(&output).contains("'..'"));
    let audit = t.cli_with(&["audit", "verify"], &[("ASTRID_HOME", "relative/home")]);
    assert_eq!(audit.status.code(), Some(2), "audit verify keeps 1 for tampering");
}

#[test]
fn install_links_creates_role_links() {
    let t = TestHome::new();
    let dir = t.workspace.join("links");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let output = t.cli(&["install-links", dir.to_str().expect("utf8")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for name in ["astrid-daemon", "astrid-capsule-host"] {
        let link = dir.join(name);
        assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
    }
    // Idempotent, and the link really selects the role.
    assert_eq!(t.cli(&["install-links", dir.to_str().expect("utf8")]).status.code(), Some(0));
    let help = std::process::Command::new(dir.join("astrid-daemon")).arg("--help").output().expect("run");
    assert!(stdout(&help).contains("--ephemeral"));
    std::fs::remove_file(dir.join("astrid-daemon")).expect("rm");
    std::fs::write(dir.join("astrid-daemon"), "not a link").expect("write");
    assert_eq!(t.cli(&["install-links", dir.to_str().expect("utf8")]).status.code(), Some(1));
}

#[test]
fn stop_escalates_to_signals_and_names_each_failed_stage() {
    // A frozen daemon (SIGSTOP) accepts connections into the backlog but never answers:
    // the request stage times out, SIGTERM stays pending, SIGKILL ends it.
    let t = TestHome::new();
    assert_eq!(t.cli(&["start"]).status.code(), Some(0));
    let pid = lock_pid(&t);
    freeze(pid);
    let stopped = t.cli(&["stop"]);
    let err = stderr(&stopped);
    assert_eq!(stopped.status.code(), Some(0), "{err}");
    for stage in ["stage 'request' failed", "stage 'graceful exit' failed", "stage 'SIGTERM' failed"] {
        assert!(err.contains(stage), "{stage} not reported:\n{err}");
    }
    assert!(stdout(&stopped).contains("killed"), "{}", stdout(&stopped));
    assert!(!alive(pid));
    assert_eq!(t.run_files_exist(), [false; 3]);
}

/// Live `astrid-daemon` processes of this home (found by their environment), zombies aside.
fn daemons_of(t: &TestHome) -> Vec<i32> {
    let needle = format!("ASTRID_HOME={}", t.home.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(argv0).ends_with("astrid-daemon") || !alive(pid) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn concurrent_starts_report_the_one_daemon_and_one_stop_ends_it() {
    let t = TestHome::new();
    let starts: Vec<std::process::Child> = (0..4)
        .map(|_| {
            t.command("astrid")
                .arg("start")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("astrid start")
        })
        .collect();
    let outputs: Vec<std::process::Output> = starts.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    }
    let pid = lock_pid(&t);
    let said: Vec<String> = outputs.iter().map(|o| stdout(o).trim().to_owned()).collect();
    let started = said.iter().filter(|s| **s == format!("astrid daemon started (pid {pid}, persistent)")).count();
    let already = said.iter().filter(|s| **s == format!("astrid daemon already running (pid {pid})")).count();
    assert_eq!((started, already), (1, 3), "each start must name the owner of the lock: {said:#?}");
    // Every start returned with its own daemon settled: only the owner is left.
    assert_eq!(daemons_of(&t), vec![pid], "{said:#?}");

    let stopped = t.cli(&["stop"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert_eq!(stdout(&stopped).trim(), format!("astrid daemon stopped (pid {pid})"), "{}", stderr(&stopped));
    assert!(!alive(pid));
    assert_eq!(daemons_of(&t), Vec::<i32>::new(), "a daemon outlived the stop");
    let home = astrid::home::AstridHome::at(&t.home);
    assert_eq!(astrid::daemon::singleton::probe(&home).expect("probe"), astrid::daemon::singleton::Liveness::Stopped);
    assert_eq!(t.run_files_exist(), [false; 3]);
}

#[test]
fn stop_waits_for_a_booting_daemon_to_name_itself() {
    // A stand-in for a daemon between taking the lock and writing its pid: this test holds
    // the lock, names a process only later, and lets the lock go when that process ends.
    let t = TestHome::new();
    astrid::home::AstridHome::at(&t.home).ensure().expect("home");
    let lock_path = t.run_dir().join("system.lock");
    let mut lock =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&lock_path).expect("lock");
    lock.lock().expect("flock");
    let mut booting = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
    let stop = t
        .command("astrid")
        .arg("stop")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("astrid stop");
    std::thread::sleep(Duration::from_millis(300));
    std::io::Write::write_all(&mut lock, booting.id().to_string().as_bytes()).expect("write pid");
    // A booting daemon has its signal handlers: SIGTERM is how stop ends it.
    assert!(
        wait_for(&mut || booting.try_wait().expect("try_wait").is_some(), HANG),
        "stop never signalled the daemon that named itself"
    );
    drop(lock);
    let output = stop.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("astrid daemon stopped (pid {}, after SIGTERM)", booting.id()));
}

/// A daemon releases its lock only after its KV store: a `start` right after `stop` (as
/// `restart` and the model reconciliation do) never finds the store still locked.
#[test]
fn start_right_after_stop_always_boots() {
    let t = TestHome::new();
    for round in 0..12 {
        let started = t.cli(&["start"]);
        assert_eq!(started.status.code(), Some(0), "round {round}: {}", stderr(&started));
        let stopped = t.cli(&["stop"]);
        assert_eq!(stopped.status.code(), Some(0), "round {round}: {}", stderr(&stopped));
    }
}
