//! `cargo bench --bench mcp`: what Astrid adds to an MCP tool call.
//!
//! One MCP server (the tests' scripted fixture, python, stdio), asked two ways in the same run:
//! - directly: a `tools/call` line written to the server's stdin, its answer read from stdout
//!   (baseline: the server's own cost and one pipe round trip each way);
//! - through Astrid: `McpCall` over the daemon's socket (management router, the MCP host,
//!   the server, the audit entry), as `astrid mcp call` makes it.
//!
//! Medians of many calls.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astrid::types::{KernelRequest, KernelResponse};
use serde_json::{Value, json};

#[path = "support/daemon.rs"]
mod daemon;

use daemon::Daemon;

const CALLS: usize = 200;
const WARMUP: usize = 20;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_scripted.py").display().to_string()
}

/// Microseconds per `tools/call echo`, talking to the server's pipes directly.
fn direct() -> f64 {
    let mut server =
        Command::new("python3").arg(fixture()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3");
    let mut stdin = server.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut ask = |id: usize, message: Value| -> f64 {
        let started = Instant::now();
        writeln!(stdin, "{message}").expect("write");
        stdin.flush().expect("flush");
        loop {
            line.clear();
            assert!(stdout.read_line(&mut line).expect("read") > 0, "the server ended");
            if serde_json::from_str::<Value>(&line).is_ok_and(|m| m["id"] == id) {
                return started.elapsed().as_secs_f64() * 1e6;
            }
        }
    };
    ask(
        0,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}}),
    );
    let call = |id: usize| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                                  "params": {"name": "echo", "arguments": {"text": "hi"}}})
    };
    for id in 1..=WARMUP {
        ask(id, call(id));
    }
    let samples = (WARMUP + 1..=WARMUP + CALLS).map(|id| ask(id, call(id))).collect();
    let _ = server.kill();
    let _ = server.wait();
    median(samples)
}

/// Microseconds per `McpCall` through a daemon running the same server.
fn through_astrid(root: &Path) -> f64 {
    let home = root.join("home");
    std::fs::create_dir_all(home.join("etc")).expect("etc");
    std::fs::write(
        home.join("etc/servers.toml"),
        format!("[servers.bench]\ncommand = \"python3\"\nargs = [{:?}]\n", fixture()),
    )
    .expect("servers.toml");
    let (_daemon, mut client) = Daemon::start(root, "home", &[("ASTRID_DEFAULT_CAPSULES", "0".to_owned())]);
    let request =
        KernelRequest::McpCall { server: "bench".into(), tool: "echo".into(), arguments: json!({"text": "hi"}) };
    let mut call = || -> Option<f64> {
        let started = Instant::now();
        match client.request("mcp_call", &request, Duration::from_secs(10)).expect("reply") {
            KernelResponse::Success(_) => Some(started.elapsed().as_secs_f64() * 1e6),
            _ => None,
        }
    };
    let waited = Instant::now();
    while call().is_none() {
        assert!(waited.elapsed() < Duration::from_secs(20), "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..WARMUP {
        call();
    }
    let samples = (0..CALLS).filter_map(|_| call()).collect();
    median(samples)
}

fn main() {
    let root = tempfile::Builder::new().prefix("astm").tempdir_in("/tmp").expect("tempdir");
    let direct = direct();
    let through = through_astrid(root.path());
    println!("astrid MCP benchmark (medians of {CALLS} calls, the same python stdio server)");
    println!("tools/call on the server's pipes (baseline): {direct:.0} us");
    println!(
        "McpCall through Astrid (socket, router, MCP host, audit): {through:.0} us ({:.1}x baseline; +{:.0} us added)",
        through / direct,
        through - direct
    );
}
