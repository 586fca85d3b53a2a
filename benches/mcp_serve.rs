//! `cargo bench --bench mcp_serve`: what `astrid mcp serve` adds to a tool call.
//!
//! One daemon with the default set (tools-fs among it), one file, asked two ways in the same
//! run:
//! - through the daemon's socket directly: `CallTool read_file` (the baseline: the kernel,
//!   tools-fs in WebAssembly, the audit entry);
//! - through `astrid mcp serve`: an MCP `tools/call read_file` line on its stdin, the answer
//!   read from its stdout (the same call, plus JSON-RPC, the rmcp server and one more hop).
//!
//! Medians of 200 calls, printed with the baseline and the target (at most 1 ms added).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astrid::home::AstridHome;
use astrid::ipc::Client;
use astrid::types::KernelRequest;
use astrid::types::management::ToolCalled;
use serde_json::{Value, json};

#[path = "support/daemon.rs"]
mod daemon;

use daemon::Daemon;

const CALLS: usize = 200;
const WARMUP: usize = 20;
/// The most `astrid mcp serve` should add to a call, in microseconds.
const TARGET_US: f64 = 1000.0;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Microseconds per `CallTool read_file` over the socket.
fn direct(home: &Path, workspace: &Path) -> f64 {
    let mut client = Client::connect_in(&AstridHome::at(home), Some(workspace)).expect("connect");
    let mut call = |n: usize| {
        let request = KernelRequest::CallTool {
            name: "read_file".into(),
            arguments: json!({"path": "notes.txt"}),
            call_id: n.to_string(),
        };
        let started = Instant::now();
        let called: ToolCalled =
            client.request("call_tool", &request, Duration::from_secs(10)).expect("reply").into_data().expect("called");
        assert!(!called.is_error, "{}", called.content);
        started.elapsed().as_secs_f64() * 1e6
    };
    for n in 0..WARMUP {
        call(n);
    }
    median((WARMUP..WARMUP + CALLS).map(&mut call).collect())
}

/// Microseconds per MCP `tools/call read_file` through `astrid mcp serve`.
fn through_serve(home: &Path, workspace: &Path) -> f64 {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_astrid"))
        .args(["mcp", "serve"])
        .env("ASTRID_HOME", home)
        .env("ASTRID_LOG", "warn")
        .current_dir(workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("astrid mcp serve");
    let mut stdin = serve.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(serve.stdout.take().expect("stdout"));
    let mut line = String::new();
    let samples = {
        // A request (waited for) or, without an id, a notification.
        let mut ask = |id: Option<usize>, method: &str, params: Value| -> (f64, Value) {
            let started = Instant::now();
            let message = match id {
                Some(id) => json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
                None => json!({"jsonrpc": "2.0", "method": method}),
            };
            writeln!(stdin, "{message}").expect("write");
            stdin.flush().expect("flush");
            let Some(id) = id else { return (0.0, Value::Null) };
            loop {
                line.clear();
                assert!(stdout.read_line(&mut line).expect("read") > 0, "astrid mcp serve ended");
                if let Ok(message) = serde_json::from_str::<Value>(&line)
                    && message["id"] == id
                {
                    return (started.elapsed().as_secs_f64() * 1e6, message);
                }
            }
        };
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}});
        ask(Some(0), "initialize", init);
        ask(None, "notifications/initialized", Value::Null);
        let (_, listed) = ask(Some(1), "tools/list", json!({}));
        assert!(listed.to_string().contains("read_file"), "{listed}");
        let mut call = |id: usize| {
            let (took, answer) =
                ask(Some(id), "tools/call", json!({"name": "read_file", "arguments": {"path": "notes.txt"}}));
            assert_ne!(answer["result"]["isError"], true, "{answer}");
            took
        };
        for id in 2..2 + WARMUP {
            call(id);
        }
        (2 + WARMUP..2 + WARMUP + CALLS).map(&mut call).collect()
    };
    drop(stdin);
    let _ = serve.wait();
    median(samples)
}

fn main() {
    let root = tempfile::Builder::new().prefix("asts").tempdir_in("/tmp").expect("tempdir");
    std::fs::write(root.path().join("notes.txt"), "buy milk\n".repeat(100)).expect("notes");
    let (_daemon, _client) = Daemon::start(root.path(), "home", &[]);
    let home = root.path().join("home");
    let direct = direct(&home, root.path());
    let through = through_serve(&home, root.path());
    let added = through - direct;
    println!("astrid mcp serve benchmark (medians of {CALLS} read_file calls of a 900-byte file)");
    println!("CallTool over the daemon socket (baseline): {direct:.0} us");
    println!(
        "tools/call through astrid mcp serve: {through:.0} us (+{added:.0} us added; target <= {TARGET_US:.0} us: {})",
        if added <= TARGET_US { "met" } else { "MISSED" }
    );
}
