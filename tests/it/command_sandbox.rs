//! The command sandbox, driven through the library with the real `astrid` binary as its
//! helper and a real VFS overlay in a temp home: what a command sees, where its writes go,
//! and that nothing it starts outlives it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrid::command_sandbox::{
    Availability, CommandEvent, CommandRequest, Finished, Outcome, RunningCommand, Sandbox, SandboxConfig,
    SandboxError, SandboxHost, SandboxMode,
};
use astrid::home::AstridHome;
use astrid::types::management::ChangeKind;
use astrid::vfs::{Vfs, VfsPath};
use tempfile::TempDir;

use crate::harness::HANG;

/// A home, a workspace with a few files, its VFS overlay, and a sandbox probed for them.
struct Fixture {
    _dir: TempDir,
    home: PathBuf,
    workspace: PathBuf,
    vfs: Arc<Vfs>,
    sandbox: Sandbox,
}

fn host() -> SandboxHost {
    SandboxHost { helper: PathBuf::from(env!("CARGO_BIN_EXE_astrid")), sysctls: PathBuf::from("/proc/sys") }
}

impl Fixture {
    fn new() -> Self {
        Self::with(SandboxConfig::default(), host())
    }

    fn with(config: SandboxConfig, host: SandboxHost) -> Self {
        let dir = tempfile::Builder::new().prefix("asb").tempdir_in("/tmp").expect("tempdir");
        let home = dir.path().join("h");
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(workspace.join("src")).expect("workspace");
        std::fs::write(workspace.join("README.md"), "readme\n").expect("readme");
        std::fs::write(workspace.join("src/lib.rs"), "fn main() {}\n").expect("lib.rs");
        let astrid_home = AstridHome::at(&home);
        astrid_home.ensure().expect("home");
        let workspace = workspace.canonicalize().expect("canonical");
        let vfs = Arc::new(Vfs::open(&workspace, &astrid_home.overlay_dir(&workspace)).expect("vfs"));
        let sandbox = Sandbox::with_host(config, &astrid_home, host);
        Self { _dir: dir, home, workspace, vfs, sandbox }
    }

    fn request(line: &str, timeout: Duration) -> CommandRequest {
        CommandRequest {
            command_line: line.to_owned(),
            cwd: VfsPath::parse("").expect("root"),
            timeout,
            network: false,
        }
    }

    fn start(&self, line: &str, timeout: Duration) -> RunningCommand {
        assert_eq!(self.sandbox.availability(), &Availability::Ready, "the sandbox must be ready here");
        self.sandbox.start(&self.vfs, &Self::request(line, timeout)).expect("start")
    }

    /// Runs `line` to its end; its output as text.
    fn run(&self, line: &str) -> (String, Finished) {
        self.run_with(line, Duration::from_secs(60))
    }

    fn run_with(&self, line: &str, timeout: Duration) -> (String, Finished) {
        finish(self.start(line, timeout))
    }

    fn path(path: &str) -> VfsPath {
        VfsPath::parse(path).expect("path")
    }
}

fn finish(mut command: RunningCommand) -> (String, Finished) {
    let deadline = Instant::now() + HANG;
    let mut output = Vec::new();
    loop {
        match command.next(Duration::from_millis(200)) {
            CommandEvent::Output(bytes) => output.extend(bytes),
            CommandEvent::Pending => assert!(Instant::now() < deadline, "the command hung"),
            CommandEvent::Finished(finished) => return (String::from_utf8_lossy(&output).into_owned(), finished),
        }
    }
}

/// Pids of the processes whose command line contains `marker`.
pub(crate) fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(name);
        }
    }
    found
}

/// Waits (bounded) until no process carries `marker`; the ones left, if any.
pub(crate) fn none_left(marker: &str) -> Vec<String> {
    let deadline = Instant::now() + HANG;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_command_sees_the_workspace_with_its_pending_writes() {
    let f = Fixture::new();
    f.vfs.write(&Fixture::path("notes/pending.txt"), b"written by the agent\n").expect("pending write");
    f.vfs.unlink(&Fixture::path("README.md")).expect("pending deletion");
    let (output, finished) = f.run("pwd; ls; cat notes/pending.txt; test -e README.md || echo no-readme");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(output.starts_with(&format!("{}\n", f.workspace.display())), "the workspace at its own path: {output}");
    assert!(output.contains("src") && output.contains("notes"), "{output}");
    assert!(output.contains("written by the agent"), "the pending write is visible: {output}");
    assert!(output.contains("no-readme"), "the pending deletion is visible: {output}");
    assert!(finished.changes.is_empty(), "{:?}", finished.changes);
}

#[test]
fn writes_land_in_the_overlay_and_not_in_the_workspace() {
    let f = Fixture::new();
    let (output, finished) =
        f.run("mkdir -p out && echo built > out/result.txt && echo changed > README.md && touch src/lib.rs");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    let kinds: Vec<(&str, ChangeKind)> = finished.changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    // `touch` copies the file up unchanged: no change.
    assert_eq!(kinds, [("README.md", ChangeKind::Modified), ("out/result.txt", ChangeKind::Added)]);
    assert_eq!(f.vfs.read(&Fixture::path("out/result.txt")).expect("in the overlay"), b"built\n");
    assert_eq!(f.vfs.read(&Fixture::path("README.md")).expect("in the overlay"), b"changed\n");
    assert!(!f.workspace.join("out").exists(), "nothing reaches the workspace before a commit");
    assert_eq!(std::fs::read(f.workspace.join("README.md")).expect("readme"), b"readme\n");
    let pending: Vec<String> = f.vfs.changes().expect("changes").into_iter().map(|c| c.path).collect();
    assert_eq!(pending, ["README.md", "out/result.txt"]);
    assert!(f.vfs.diff().expect("diff").contains("+changed"));
    // A second command sees the first one's writes, pending.
    let (output, _) = f.run("cat out/result.txt");
    assert_eq!(output, "built\n");
    // Committed, they reach the workspace.
    f.vfs.commit().expect("commit");
    assert_eq!(std::fs::read(f.workspace.join("out/result.txt")).expect("committed"), b"built\n");
}

#[test]
fn deletions_are_changes_of_the_overlay() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.workspace.join("old/deep")).expect("dir");
    std::fs::write(f.workspace.join("old/a"), "a").expect("a");
    std::fs::write(f.workspace.join("old/deep/b"), "b").expect("b");
    f.vfs.write(&Fixture::path("old/pending"), b"p").expect("pending");
    let (output, finished) = f.run("rm README.md && rm -r old && mkdir old && echo new > old/c");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    let kinds: Vec<(&str, ChangeKind)> = finished.changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("README.md", ChangeKind::Deleted),
            ("old/a", ChangeKind::Deleted),
            ("old/c", ChangeKind::Added),
            ("old/deep/b", ChangeKind::Deleted),
            ("old/pending", ChangeKind::Deleted),
        ]
    );
    assert!(f.workspace.join("README.md").exists() && f.workspace.join("old/deep/b").exists());
    assert!(!f.vfs.exists(&Fixture::path("README.md")).expect("exists"));
    assert!(!f.vfs.exists(&Fixture::path("old/pending")).expect("exists"));
    let pending: Vec<(String, ChangeKind)> =
        f.vfs.changes().expect("changes").into_iter().map(|c| (c.path, c.kind)).collect();
    assert!(pending.contains(&("README.md".to_owned(), ChangeKind::Deleted)), "{pending:?}");
    // The next command sees them gone. (The VFS records deletions of files: a directory
    // emptied of them stays, as it does for the agent.)
    let (output, _) = f.run("ls old; ls old/deep; test -e README.md || echo gone");
    assert_eq!(output, "c\ndeep\ngone\n");
}

#[test]
fn links_and_fifos_are_refused_and_said_so() {
    let f = Fixture::new();
    let (output, finished) = f.run("ln -s /etc/passwd link && mkfifo pipe && echo kept > file");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    let refused: Vec<&str> = finished.refused.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(refused.len(), 2, "{:?}", finished.refused);
    assert!(refused.contains(&"link") && refused.contains(&"pipe"));
    assert!(finished.refused.iter().any(|r| r.reason.contains("symbolic link")));
    assert_eq!(finished.changes.len(), 1);
    assert!(!f.vfs.exists(&Fixture::path("link")).expect("exists"));
}

#[test]
fn the_astrid_home_and_other_secrets_are_not_there() {
    let f = Fixture::new();
    let key = f.home.join("keys/runtime.key");
    let token = f.home.join("run/system.token");
    std::fs::write(&key, "SECRET-KEY-BYTES").expect("key");
    std::fs::write(&token, "SECRET-TOKEN").expect("token");
    let line = format!(
        "cat {} {}; ls {} 2>&1; ls -A $HOME; wc -c < /etc/shadow; ls /root /home 2>&1; echo end",
        key.display(),
        token.display(),
        f.home.display()
    );
    let (output, finished) = f.run(&line);
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(!output.contains("SECRET"), "{output}");
    assert!(output.contains("runtime.key: No such file or directory"), "{output}");
    assert!(output.contains("system.token: No such file or directory"), "{output}");
    assert!(output.contains(&format!("{}': No such file or directory", f.home.display())), "{output}");
    assert!(output.contains("\n0\n"), "/etc/shadow is masked empty: {output}");
}

#[test]
fn nothing_outside_the_workspace_can_be_written() {
    let f = Fixture::new();
    let outside = f.workspace.parent().expect("parent").join("outside.txt");
    let line = format!(
        "for p in /usr/astrid-x /etc/astrid-x /astrid-x /proc/sys/vm/overcommit_ratio /proc/sysrq-trigger {0}; do \
         v=$(cat $p 2>/dev/null | head -c 8); (echo ${{v:-h}} > $p) 2>/dev/null && echo WROTE $p || echo refused $p; done; \
         (echo 1 > /proc/sys/vm/overcommit_ratio) 2>&1 | grep -c 'Read-only file system'; \
         echo scratch > /tmp/ok && cat /tmp/ok",
        outside.display()
    );
    let (output, finished) = f.run(&line);
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    // Beside the workspace is the private /tmp here (the test's workspace is in /tmp): the
    // write lands in scratch, never on the host.
    assert!(output.contains(&format!("WROTE {}\n", outside.display())), "{output}");
    assert!(output.ends_with("scratch\n"), "{output}");
    assert_eq!(output.matches("refused").count(), 5, "{output}");
    assert!(output.contains("refused /proc/sysrq-trigger\n") && output.contains("\n1\n"), "{output}");
    assert!(output.ends_with("scratch\n"), "its own /tmp is writable: {output}");
    assert!(!outside.exists() && !Path::new("/usr/astrid-x").exists() && !Path::new("/astrid-x").exists());
    assert!(finished.changes.is_empty(), "{:?}", finished.changes);
}

#[test]
fn no_network_unless_asked() {
    let f = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let line = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 5); print('CONNECTED')\" 2>&1 | tail -1"
    );
    let (output, finished) = f.run(&line);
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(!output.contains("CONNECTED") && output.contains("Error"), "{output}");
    // With the network (all of it), the same connection goes through: the listener works.
    let mut request = Fixture::request(&line, Duration::from_secs(60));
    request.network = true;
    let (output, _) = finish(f.sandbox.start(&f.vfs, &request).expect("start"));
    assert!(output.contains("CONNECTED"), "{output}");
}

#[test]
fn a_fork_bomb_is_bounded_and_leaves_nothing() {
    let config = SandboxConfig {
        limits: astrid::command_sandbox::Limits { processes: 300, ..Default::default() },
        ..SandboxConfig::default()
    };
    let f = Fixture::with(config, host());
    // Many sleepers at once: the namespace holds at most the bound, the rest fail to start.
    let (output, finished) = f.run(
        "python3 -c \"
import subprocess
started = []
try:
    for _ in range(500):
        started.append(subprocess.Popen(['sleep', '60.4711']))
except OSError as e:
    print('refused:', e.strerror)
print(len(started))
\"",
    );
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(output.starts_with("refused: Resource temporarily unavailable\n"), "{output}");
    let count: usize = output.trim().lines().last().and_then(|l| l.parse().ok()).expect("a count");
    assert!((100..300).contains(&count), "sleepers started beside init, sh and python: {count}");
    assert_eq!(none_left("60.4711"), Vec::<String>::new(), "the sleepers died with the command");
    // A real bomb, ended by its timeout; the host still starts processes afterwards.
    let marker = "bomb4711";
    // The shell forks once, for the bomb, before any of it exists, then `exec`s: a shell that
    // forked again could meet the full limit itself and end early with "Cannot fork".
    let (_, finished) = f.run_with(
        &format!("{marker}() {{ {marker} | {marker} & }}; {marker} & exec sleep 1000.4720"),
        Duration::from_secs(3),
    );
    assert_eq!(finished.outcome, Outcome::TimedOut);
    assert_eq!(none_left(marker), Vec::<String>::new());
    assert!(std::process::Command::new("true").status().expect("the host can fork").success());
    // The host's own pid_max is untouched (it is per namespace).
    let host_pid_max: u32 =
        std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("pid_max").trim().parse().expect("number");
    assert!(host_pid_max > 301, "host pid_max {host_pid_max}");
}

#[test]
fn a_command_is_killed_at_its_timeout() {
    let f = Fixture::new();
    let (_, finished) = f.run_with("sleep 1000.4712", Duration::from_secs(1));
    assert_eq!(finished.outcome, Outcome::TimedOut);
    assert!(finished.duration >= Duration::from_secs(1));
    assert_eq!(none_left("1000.4712"), Vec::<String>::new());
}

#[test]
fn detached_processes_that_ignore_sigterm_die_with_the_command() {
    let f = Fixture::new();
    // The command exits at once, leaving a detached SIGTERM-ignorer in a new session.
    let (output, finished) =
        f.run("setsid sh -c 'trap \"\" TERM HUP; sleep 2000.4713' > /dev/null 2>&1 & echo left-behind");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert_eq!(output, "left-behind\n");
    assert_eq!(none_left("2000.4713"), Vec::<String>::new());
    // The same, ended by the timeout while the command still runs.
    let (_, finished) = f.run_with(
        "setsid sh -c 'trap \"\" TERM HUP; sleep 2000.4714' > /dev/null 2>&1 & trap '' TERM; sleep 2000.4715",
        Duration::from_secs(1),
    );
    assert_eq!(finished.outcome, Outcome::TimedOut);
    assert_eq!(none_left("2000.471"), Vec::<String>::new());
}

#[test]
fn another_thread_can_kill_a_command_mid_output() {
    let f = Fixture::new();
    let mut command = f.start("i=0; while true; do echo line-4716 $i; i=$((i+1)); done", Duration::from_secs(600));
    let killer = command.killer();
    let mut seen = 0u64;
    let deadline = Instant::now() + HANG;
    while seen < 10_000 {
        match command.next(Duration::from_millis(200)) {
            CommandEvent::Output(bytes) => seen += bytes.len() as u64,
            CommandEvent::Pending => assert!(Instant::now() < deadline, "no output"),
            CommandEvent::Finished(finished) => panic!("ended early: {finished:?}"),
        }
    }
    std::thread::spawn(move || killer.kill()).join().expect("kill");
    let (_, finished) = finish(command);
    assert_eq!(finished.outcome, Outcome::Killed);
    assert!(finished.output_bytes >= seen);
    assert_eq!(none_left("line-4716"), Vec::<String>::new());
}

#[test]
fn dropping_a_command_kills_it() {
    let f = Fixture::new();
    let command = f.start("sleep 3000.4717", Duration::from_secs(600));
    let deadline = Instant::now() + HANG;
    while processes_with("3000.4717").is_empty() {
        assert!(Instant::now() < deadline, "the sleeper never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(command);
    assert_eq!(none_left("3000.4717"), Vec::<String>::new());
}

#[test]
fn privileges_and_dangerous_calls_are_gone() {
    let f = Fixture::new();
    let (output, finished) = f.run(
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
         unshare -U true 2>/dev/null && echo USERNS || echo no-userns; \
         unshare -m true 2>/dev/null && echo MOUNTNS || echo no-mountns; \
         id -u; hostname",
    );
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(output.contains("CapEff:\t0000000000000000"), "{output}");
    assert!(output.contains("CapBnd:\t0000000000000000"), "{output}");
    assert!(output.contains("NoNewPrivs:\t1") && output.contains("Seccomp:\t2"), "{output}");
    assert!(output.contains("no-userns") && output.contains("no-mountns"), "{output}");
    assert!(output.ends_with("0\nastrid-sandbox\n"), "{output}");
}

#[test]
fn the_environment_is_scrubbed() {
    let f = Fixture::new();
    let (output, finished) = f.run("env | cut -d= -f1 | sort");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    let names: Vec<&str> = output.lines().collect();
    for name in &names {
        assert!(
            ["HOME", "LANG", "OLDPWD", "PATH", "PWD", "SHLVL", "TERM", "_"].contains(name),
            "{name} leaked: {output}"
        );
    }
    assert!(names.contains(&"PATH") && names.contains(&"HOME"), "{output}");
}

/// The daemon's own environment holds a provider key and Astrid's settings; the command's
/// does not. Run in a child test process (`inner_environment`) so the key can be set
/// without touching this process's environment.
#[test]
fn secrets_of_the_daemon_environment_do_not_reach_the_command() {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "command_sandbox::inner_environment", "--nocapture", "--test-threads=1"])
        .env("OPENAI_API_KEY", "sk-test-4718")
        .env("ASTRID_SECRET_SETTING", "astrid-4718")
        .output()
        .expect("inner test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
#[ignore = "run by secrets_of_the_daemon_environment_do_not_reach_the_command"]
fn inner_environment() {
    assert_eq!(std::env::var("OPENAI_API_KEY").as_deref(), Ok("sk-test-4718"), "run through the outer test");
    let config = SandboxConfig::from_env().expect("config");
    let f = Fixture::with(config, host());
    let (output, finished) = f.run("env");
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(!output.contains("4718") && !output.contains("OPENAI") && !output.contains("ASTRID"), "{output}");
}

#[test]
fn timeouts_are_bounded_by_the_operator() {
    let f = Fixture::new();
    let error = f.sandbox.start(&f.vfs, &Fixture::request("true", Duration::from_secs(601))).expect_err("refused");
    assert!(matches!(error, SandboxError::TimeoutTooLong { .. }), "{error}");
    assert!(error.to_string().contains("ASTRID_COMMAND_MAX_TIMEOUT_SECS"));
}

#[test]
fn a_missing_working_directory_is_a_setup_error() {
    let f = Fixture::new();
    let mut request = Fixture::request("pwd", Duration::from_secs(60));
    request.cwd = Fixture::path("no/such/dir");
    let error = f.sandbox.start(&f.vfs, &request).expect_err("refused");
    assert!(matches!(error, SandboxError::Setup(_)), "{error}");
    assert!(error.to_string().contains("no/such/dir"), "{error}");
    request.cwd = Fixture::path("src");
    let (output, _) = finish(f.sandbox.start(&f.vfs, &request).expect("start"));
    assert_eq!(output, format!("{}\n", f.workspace.join("src").display()));
}

#[test]
fn an_unavailable_sandbox_says_why_and_how_to_enable_it() {
    // The kernel's settings as a machine without user namespaces has them.
    let sysctls = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(sysctls.path().join("user")).expect("dir");
    std::fs::write(sysctls.path().join("user/max_user_namespaces"), "0\n").expect("sysctl");
    let f = Fixture::with(SandboxConfig::default(), SandboxHost { sysctls: sysctls.path().to_path_buf(), ..host() });
    let Availability::Unavailable { reason, how_to_enable } = f.sandbox.availability() else {
        panic!("{:?}", f.sandbox.availability());
    };
    assert!(reason.contains("user.max_user_namespaces = 0"), "{reason}");
    assert!(
        how_to_enable.contains("sysctl -w user.max_user_namespaces=") && how_to_enable.contains("ASTRID_SANDBOX=off")
    );
    let error = f.sandbox.start(&f.vfs, &Fixture::request("true", Duration::from_secs(5))).expect_err("refused");
    assert!(matches!(error, SandboxError::Unavailable { .. }));
    assert!(error.to_string().contains("max_user_namespaces") && error.to_string().contains("ASTRID_SANDBOX=off"));
    // A helper that cannot set anything up fails the trial run: refused too, never unconfined.
    let f = Fixture::with(SandboxConfig::default(), SandboxHost { helper: PathBuf::from("/bin/false"), ..host() });
    let Availability::Unavailable { reason, .. } = f.sandbox.availability() else {
        panic!("{:?}", f.sandbox.availability());
    };
    assert!(reason.contains("trial command failed"), "{reason}");
}

#[test]
fn unsandboxed_commands_run_in_the_real_workspace() {
    let config = SandboxConfig { mode: SandboxMode::Unsandboxed, ..SandboxConfig::default() };
    let f = Fixture::with(config, host());
    assert_eq!(f.sandbox.availability(), &Availability::Unsandboxed);
    let status = f.sandbox.availability().status();
    assert!(status.detail.is_some_and(|d| d.contains("unconfined")));
    let (output, finished) = finish(
        f.sandbox
            .start(&f.vfs, &Fixture::request("echo real > real.txt; pwd", Duration::from_secs(60)))
            .expect("start"),
    );
    assert_eq!(finished.outcome, Outcome::Exited(0));
    assert_eq!(output, format!("{}\n", f.workspace.display()));
    assert_eq!(std::fs::read(f.workspace.join("real.txt")).expect("written for real"), b"real\n");
    assert!(finished.changes.is_empty());
    // The timeout and the group kill hold unsandboxed too.
    let (_, finished) = finish(
        f.sandbox
            .start(&f.vfs, &Fixture::request("sleep 1000.4719 & sleep 1000.4719", Duration::from_secs(1)))
            .expect("start"),
    );
    assert_eq!(finished.outcome, Outcome::TimedOut);
    assert_eq!(none_left("1000.4719"), Vec::<String>::new());
}

#[test]
fn toolchains_the_operator_exposes_run_read_only() {
    // The cargo running this test: its toolchain directory, exposed as an operator would.
    let cargo = Path::new(env!("CARGO")).canonicalize().expect("cargo");
    let toolchain = cargo.parent().and_then(Path::parent).expect("toolchain dir").to_path_buf();
    let config = SandboxConfig { read_only_paths: vec![toolchain.clone()], ..SandboxConfig::default() };
    let f = Fixture::with(config, host());
    let line =
        format!("{} --version && touch {}/x 2>/dev/null || echo read-only", cargo.display(), toolchain.display());
    let (output, finished) = f.run(&line);
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(output.starts_with("cargo ") && output.ends_with("read-only\n"), "{output}");
    // Without it, not there.
    let (output, _) = Fixture::new().run(&format!("test -e {} || echo absent", cargo.display()));
    assert_eq!(output, "absent\n");
}

#[test]
fn secrets_inside_the_workspace_are_masked() {
    // A user who runs the agent in their home directory: the workspace holds ~/.ssh and the
    // Astrid home itself.
    let dir = tempfile::Builder::new().prefix("asb").tempdir_in("/tmp").expect("tempdir");
    let workspace = dir.path().canonicalize().expect("canonical");
    std::fs::create_dir_all(workspace.join(".ssh")).expect(".ssh");
    std::fs::write(workspace.join(".ssh/id_ed25519"), "PRIVATE-KEY").expect("key");
    std::fs::write(workspace.join(".netrc"), "machine x password NETRC-SECRET").expect("netrc");
    std::fs::write(workspace.join("notes.txt"), "visible").expect("notes");
    let home = AstridHome::at(workspace.join(".astrid"));
    home.ensure().expect("home");
    std::fs::write(home.root().join("keys/runtime.key"), "RUNTIME-KEY").expect("key");
    let vfs = Arc::new(Vfs::open(&workspace, &home.overlay_dir(&workspace)).expect("vfs"));
    let config = SandboxConfig { user_home: Some(workspace.clone()), ..SandboxConfig::default() };
    let sandbox = Sandbox::with_host(config, &home, host());
    assert_eq!(sandbox.availability(), &Availability::Ready);
    let line = "cat notes.txt; echo; ls -A .ssh .astrid; cat .netrc .ssh/id_ed25519 .astrid/keys/runtime.key 2>&1; \
                echo x > .ssh/planted 2>/dev/null || echo refused";
    let (output, finished) =
        finish(sandbox.start(&vfs, &Fixture::request(line, Duration::from_secs(60))).expect("start"));
    assert_eq!(finished.outcome, Outcome::Exited(0), "{output}");
    assert!(output.starts_with("visible\n"), "{output}");
    for secret in ["PRIVATE-KEY", "NETRC-SECRET", "RUNTIME-KEY"] {
        assert!(!output.contains(secret), "{secret} leaked: {output}");
    }
    assert!(output.contains(".astrid:\n\n.ssh:\ncat: .ssh/id_ed25519: No such file"), "both empty: {output}");
    assert!(output.ends_with("refused\n"), "{output}");
    assert!(finished.changes.is_empty(), "{:?}", finished.changes);
    // The overlay works the same with the home inside the workspace.
    vfs.write(&Fixture::path("pending.txt"), b"pending").expect("pending");
    let request = Fixture::request("cat pending.txt && echo made > made.txt", Duration::from_secs(60));
    let (output, finished) = finish(sandbox.start(&vfs, &request).expect("start"));
    assert_eq!(output, "pending");
    let changes: Vec<&str> = finished.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(changes, ["made.txt"]);
    assert!(!workspace.join("made.txt").exists());
}
