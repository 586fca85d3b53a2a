//! The command sandbox, driven through the library with the real `astrid` binary as its
//! helper and a real VFS overlay in a temp home: what a command sees, where its writes go,
//! and that nothing it starts outlives it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrid::home::AstridHome;
use astrid::sandbox::{
    Availability, CommandEvent, CommandRequest, Finished, Outcome, RunningCommand, Sandbox, SandboxConfig,
    SandboxError, SandboxHost, SandboxMode,
};
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
fn processes_with(marker: &str) -> Vec<String> {
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
fn none_left(marker: &str) -> Vec<String> {
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
