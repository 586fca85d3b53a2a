//! `cargo bench --bench command_sandbox`: what the command sandbox adds to running a command.
//!
//! The same command (`true`) two ways in the same run:
//! - directly: `/bin/sh -c true` spawned and waited for (baseline: what any agent that runs
//!   commands pays);
//! - through the sandbox: `Sandbox::start` → `RunningCommand::next` until `Finished`, as the
//!   `run_command` tool drives it (helper and init started, namespaces, the filesystem with
//!   its overlay built, seccomp, the upper layer read and imported afterwards).
//!
//! Medians of 50 runs after 5 warm-ups.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrid::command_sandbox::{
    Availability, CommandEvent, CommandRequest, Outcome, Sandbox, SandboxConfig, SandboxHost,
};
use astrid::home::AstridHome;
use astrid::vfs::{Vfs, VfsPath};

const RUNS: usize = 50;
const WARMUP: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Milliseconds per `sh -c true`, spawned directly.
fn direct() -> f64 {
    let mut samples = Vec::new();
    for run in 0..WARMUP + RUNS {
        let started = Instant::now();
        let status = Command::new("/bin/sh").args(["-c", "true"]).status().expect("sh");
        assert!(status.success());
        if run >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(samples)
}

/// Milliseconds per `true` through the sandbox, start to `Finished`.
fn sandboxed(root: &std::path::Path) -> f64 {
    let home = AstridHome::at(root.join("h"));
    home.ensure().expect("home");
    let workspace = root.join("ws");
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::write(workspace.join("Cargo.toml"), "[package]\n").expect("file");
    let vfs = Arc::new(Vfs::open(&workspace, &home.overlay_dir(&workspace)).expect("vfs"));
    let host = SandboxHost { helper: PathBuf::from(env!("CARGO_BIN_EXE_astrid")), sysctls: PathBuf::from("/proc/sys") };
    let sandbox = Sandbox::with_host(SandboxConfig::default(), &home, host);
    assert_eq!(sandbox.availability(), &Availability::Ready, "the sandbox is not available here");
    let request = CommandRequest {
        command_line: "true".to_owned(),
        cwd: VfsPath::parse("").expect("root"),
        timeout: Duration::from_secs(60),
        network: false,
    };
    let mut samples = Vec::new();
    for run in 0..WARMUP + RUNS {
        let started = Instant::now();
        let mut command = sandbox.start(&vfs, &request).expect("start");
        let finished = loop {
            if let CommandEvent::Finished(finished) = command.next(Duration::from_secs(1)) {
                break finished;
            }
        };
        assert_eq!(finished.outcome, Outcome::Exited(0));
        drop(command);
        if run >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(samples)
}

fn main() {
    let root = tempfile::Builder::new().prefix("asbb").tempdir_in("/tmp").expect("tempdir");
    let direct = direct();
    let through = sandboxed(root.path());
    println!("astrid command sandbox benchmark (medians of {RUNS} runs of `true`)");
    println!("sh -c true spawned directly (baseline): {direct:.2} ms");
    println!(
        "through the sandbox (helper, init, namespaces, overlay, seccomp, changes read): {through:.2} ms \
         (+{:.2} ms added; target: at most 20 ms)",
        through - direct
    );
}
