//! `cargo bench --bench mcp_serve`: what `astrid mcp serve` adds to a tool call.
//!
//! One daemon with the default set (tools-fs among it), one file, asked two ways in the same
//! run:
//! - through the daemon's socket directly: `CallTool read_file` (the baseline: the kernel,
//!   tools-fs in WebAssembly, the audit entry);
//! - through `astrid mcp serve`: an MCP `tools/call read_file` line on its stdin, the answer
//!   read from its stdout (the same call, plus JSON-RPC, the rmcp server and one more hop).
//!
//! 200 calls each, interleaved one by one; the medians, and the median of the pairs'
//! differences as the cost added, printed with the target (at most 1 ms added).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
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

/// `CallTool read_file` over the daemon's socket.
struct Direct {
    client: Client,
}

impl Direct {
    fn connect(home: &Path, workspace: &Path) -> Self {
        Self { client: Client::connect_in(&AstridHome::at(home), Some(workspace)).expect("connect") }
    }

    /// Microseconds for call `n`.
    fn call(&mut self, n: usize) -> f64 {
        let request = KernelRequest::CallTool {
            name: "read_file".into(),
            arguments: json!({"path": "notes.txt"}),
            call_id: n.to_string(),
        };
        let started = Instant::now();
        let called: ToolCalled = self
            .client
            .request("call_tool", &request, Duration::from_secs(10))
            .expect("reply")
            .into_data()
            .expect("called");
        assert!(!called.is_error, "{}", called.content);
        started.elapsed().as_secs_f64() * 1e6
    }
}

/// An MCP client of `astrid mcp serve`, speaking JSON-RPC lines on its pipes.
struct Serve {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl Serve {
    /// Starts it and completes the handshake.
    fn start(home: &Path, workspace: &Path) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_astrid"))
            .args(["mcp", "serve"])
            .env("ASTRID_HOME", home)
            .env("ASTRID_LOG", "warn")
            .current_dir(workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("astrid mcp serve");
        let stdin = process.stdin.take().expect("stdin");
        let stdout = BufReader::new(process.stdout.take().expect("stdout"));
        let mut serve = Self { process, stdin, stdout, line: String::new() };
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}});
        serve.ask(Some(0), "initialize", init);
        serve.ask(None, "notifications/initialized", Value::Null);
        let (_, listed) = serve.ask(Some(1), "tools/list", json!({}));
        assert!(listed.to_string().contains("read_file"), "{listed}");
        serve
    }

    /// A request (its answer waited for: microseconds and the answer) or, without an id, a
    /// notification.
    fn ask(&mut self, id: Option<usize>, method: &str, params: Value) -> (f64, Value) {
        let started = Instant::now();
        let message = match id {
            Some(id) => json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            None => json!({"jsonrpc": "2.0", "method": method}),
        };
        writeln!(self.stdin, "{message}").expect("write");
        self.stdin.flush().expect("flush");
        let Some(id) = id else { return (0.0, Value::Null) };
        loop {
            self.line.clear();
            assert!(self.stdout.read_line(&mut self.line).expect("read") > 0, "astrid mcp serve ended");
            if let Ok(message) = serde_json::from_str::<Value>(&self.line)
                && message["id"] == id
            {
                return (started.elapsed().as_secs_f64() * 1e6, message);
            }
        }
    }

    /// Microseconds for call `n`.
    fn call(&mut self, n: usize) -> f64 {
        let (took, answer) =
            self.ask(Some(n + 2), "tools/call", json!({"name": "read_file", "arguments": {"path": "notes.txt"}}));
        assert_ne!(answer["result"]["isError"], true, "{answer}");
        took
    }

    fn finish(self) {
        let Self { mut process, stdin, .. } = self;
        drop(stdin);
        let _ = process.wait();
    }
}

fn main() {
    let root = tempfile::Builder::new().prefix("asts").tempdir_in("/tmp").expect("tempdir");
    std::fs::write(root.path().join("notes.txt"), "buy milk\n".repeat(100)).expect("notes");
    let (_daemon, _client) = Daemon::start(root.path(), "home", &[]);
    let home = root.path().join("home");
    let mut direct = Direct::connect(&home, root.path());
    let mut serve = Serve::start(&home, root.path());
    for n in 0..WARMUP {
        direct.call(n);
        serve.call(n);
    }
    // Interleaved, so that a machine getting busier or quieter weighs on both alike; the
    // added cost is the median of each pair's difference.
    let (mut socket, mut through, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for n in WARMUP..WARMUP + CALLS {
        let (d, s) = (direct.call(n), serve.call(n));
        socket.push(d);
        through.push(s);
        added.push(s - d);
    }
    serve.finish();
    let (socket, through, added) = (median(socket), median(through), median(added));
    println!("astrid mcp serve benchmark (medians of {CALLS} read_file calls of a 900-byte file, interleaved)");
    println!("CallTool over the daemon socket (baseline): {socket:.0} us");
    println!(
        "tools/call through astrid mcp serve: {through:.0} us (+{added:.0} us added, median of the pairs; target <= {TARGET_US:.0} us: {})",
        if added <= TARGET_US { "met" } else { "MISSED" }
    );
}
