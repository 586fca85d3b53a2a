//! One MCP server over stdio: JSON-RPC 2.0, one message per line.
//!
//! The server runs as a child in a process group of its own, started through the
//! `astrid-mcp-exec` role (see [`super::exec`]) so that it dies with the daemon even when
//! the daemon is SIGKILLed; its stdin closing is the ordinary way to stop it. Its stderr goes
//! to the daemon log, line by line. Its stdout is read by one task: responses complete the
//! request waiting for them, `notifications/tools/list_changed` becomes an [`Event`], a
//! request from the server is answered (`ping`) or refused (method not found), and anything
//! that is not JSON-RPC is logged and skipped: a server that prints garbage does not take the
//! daemon with it. Lines are capped at [`MAX_LINE`].
//!
//! Every request has a timeout; a tool call that times out or is cancelled is also cancelled
//! at the server (`notifications/cancelled`).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};

use super::config::ServerConfig;
use super::exec;

/// The protocol versions this client speaks, newest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// The longest line a server may write (a tool result can be big; a runaway one cannot be
/// bigger than this).
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Pages of `tools/list` read at most (a server whose cursor never ends is cut off).
const MAX_PAGES: usize = 100;
/// How long a stopping server gets after its stdin closes, and again after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Variables of the daemon's environment a server inherits; nothing else (no API keys).
const INHERITED_ENV: [&str; 10] =
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM"];

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// No answer in time (the request was cancelled at the server).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The caller gave up (the request was cancelled at the server).
    #[error("cancelled")]
    Cancelled,
    /// The server is gone.
    #[error("the server exited ({0})")]
    Exited(String),
    /// The server answered with a JSON-RPC error.
    #[error("error {code}: {message}")]
    Rpc {
        /// JSON-RPC error code.
        code: i64,
        message: String,
    },
    /// The server could not be started or spoke something else.
    #[error("{0}")]
    Protocol(String),
    /// The server runs but cannot be used: it never answered `initialize`, or it speaks no
    /// protocol version this client does. Starting it again would not help.
    #[error("{0}")]
    Unusable(String),
}

/// What the server tells the host without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `notifications/tools/list_changed`.
    ToolsChanged,
    /// The server's stdout ended (it exited or closed it); with its exit status when known.
    Exited(String),
}

/// A tool as the server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// Its name on the server.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub input_schema: Value,
}

/// A tool call's outcome: the text parts joined, and whether the tool reported an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// The result as text.
    pub text: String,
    /// The tool's `isError`.
    pub is_error: bool,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, McpError>>>>>;

/// What the stdin writer task is asked to do.
#[derive(Debug)]
enum Outgoing {
    /// Write this line.
    Line(String),
    /// Close stdin (the ordinary way to stop a stdio server).
    Close,
}

/// A running, initialized server.
#[derive(Debug)]
pub struct McpClient {
    name: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    pending: Pending,
    next_id: AtomicU64,
    child: tokio::sync::Mutex<Child>,
    pid: Option<u32>,
    /// The version both sides speak.
    pub protocol_version: String,
    /// The server's `serverInfo` (`name`, `version`).
    pub server_info: Value,
}

impl McpClient {
    /// Starts the server of `config` in `workspace` (or its own `cwd`) and initializes it
    /// within its init timeout. Events go to `events`.
    pub async fn start(
        config: &ServerConfig,
        workspace: &Path,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, McpError> {
        let mut child = spawn(config, workspace)?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(McpError::Protocol("the server's pipes were not set up".to_owned()));
        };
        let pending: Pending = Arc::default();
        let (outgoing, lines) = mpsc::unbounded_channel();
        tokio::spawn(write_stdin(stdin, lines));
        tokio::spawn(read_stdout(config.name.clone(), stdout, Arc::clone(&pending), events, outgoing.clone()));
        tokio::spawn(log_stderr(config.name.clone(), stderr));
        let mut client = Self {
            name: config.name.clone(),
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            child: tokio::sync::Mutex::new(child),
            pid,
            protocol_version: String::new(),
            server_info: Value::Null,
        };
        let params = json!({
            "protocolVersion": PROTOCOL_VERSIONS[0],
            "capabilities": {},
            "clientInfo": {"name": "astrid", "version": crate::VERSION},
        });
        let reply = match client.request_raw("initialize", params, config.init_timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                client.stop().await;
                return Err(match e {
                    McpError::Timeout(after) => {
                        McpError::Unusable(format!("did not answer initialize within {after:?}"))
                    }
                    other => other,
                });
            }
        };
        let version = reply["protocolVersion"].as_str().unwrap_or_default().to_owned();
        if !PROTOCOL_VERSIONS.contains(&version.as_str()) {
            client.stop().await;
            return Err(McpError::Unusable(format!(
                "the server speaks protocol {version:?}; this client speaks {}",
                PROTOCOL_VERSIONS.join(", ")
            )));
        }
        client.protocol_version = version;
        client.server_info = reply["serverInfo"].clone();
        client.notify("notifications/initialized", None)?;
        Ok(client)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Every tool, following `nextCursor` (at most [`MAX_PAGES`] pages).
    pub async fn list_tools(&self, timeout: Duration) -> Result<Vec<ToolInfo>, McpError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.as_ref().map_or_else(|| json!({}), |c| json!({"cursor": c}));
            let page = self.request_raw("tools/list", params, timeout).await?;
            for tool in page["tools"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let Some(name) = tool["name"].as_str() else { continue };
                tools.push(ToolInfo {
                    name: name.to_owned(),
                    description: tool["description"].as_str().unwrap_or_default().to_owned(),
                    input_schema: tool.get("inputSchema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
            }
            match page["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(tools),
            }
        }
        log::warn!("mcp {}: tools/list still had pages after {MAX_PAGES}; using what came", self.name);
        Ok(tools)
    }

    /// Calls `tool`; gives up (and cancels it at the server) after `timeout` or when
    /// `cancel` completes.
    pub async fn call_tool(
        &self,
        tool: &str,
        arguments: Value,
        timeout: Duration,
        cancel: impl Future<Output = ()>,
    ) -> Result<CallOutcome, McpError> {
        let arguments = if arguments.is_object() { arguments } else { json!({}) };
        let (id, reply) = self.send_request("tools/call", json!({"name": tool, "arguments": arguments})).await?;
        let result = tokio::select! {
            reply = reply => reply.unwrap_or_else(|_| Err(McpError::Exited("no answer".to_owned()))),
            () = tokio::time::sleep(timeout) => Err(McpError::Timeout(timeout)),
            () = cancel => Err(McpError::Cancelled),
        };
        if matches!(result, Err(McpError::Timeout(_) | McpError::Cancelled)) {
            self.forget(id);
            let reason = if matches!(result, Err(McpError::Timeout(_))) { "timeout" } else { "cancelled" };
            let _ = self.notify("notifications/cancelled", Some(json!({"requestId": id, "reason": reason})));
        }
        let result = result?;
        Ok(CallOutcome { text: text_of(&result), is_error: result["isError"].as_bool().unwrap_or(false) })
    }

    /// How the server's process ended, waiting a moment for it; `None` if it has not (yet).
    pub async fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().await;
        tokio::time::timeout(Duration::from_secs(1), child.wait()).await.ok().and_then(Result::ok)
    }

    /// Stops the server: stdin closed, then SIGTERM, then SIGKILL to its process group, each
    /// after a grace period. Waits for it.
    pub async fn stop(&self) {
        let _ = self.outgoing.send(Outgoing::Close);
        let mut child = self.child.lock().await;
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
            if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
            }
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
                return;
            }
        }
        log::error!("mcp {}: the server did not stop", self.name);
    }

    async fn request_raw(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, McpError> {
        let (id, reply) = self.send_request(method, params).await?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(McpError::Exited("no answer".to_owned())),
            Err(_) => {
                self.forget(id);
                Err(McpError::Timeout(timeout))
            }
        }
    }

    async fn send_request(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(u64, oneshot::Receiver<Result<Value, McpError>>), McpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, reply) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, sender);
        if let Err(e) = self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})) {
            self.forget(id);
            return Err(e);
        }
        Ok((id, reply))
    }

    fn notify(&self, method: &str, params: Option<Value>) -> Result<(), McpError> {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if let Some(params) = params {
            message["params"] = params;
        }
        self.write(&message)
    }

    fn write(&self, message: &Value) -> Result<(), McpError> {
        let mut line = message.to_string();
        line.push('\n');
        self.outgoing.send(Outgoing::Line(line)).map_err(|_| McpError::Exited("stopped".to_owned()))
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Owns the server's stdin: writes lines in order until asked to close it (or a write fails:
/// the stdout task then sees the server go).
async fn write_stdin(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(Outgoing::Line(line)) = lines.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// The text of a `tools/call` result: text parts joined by newlines; other parts named.
fn text_of(result: &Value) -> String {
    let parts: Vec<String> = result["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|part| match part["type"].as_str() {
            Some("text") => part["text"].as_str().unwrap_or_default().to_owned(),
            Some("resource_link") => format!("[resource {}]", part["uri"].as_str().unwrap_or("?")),
            Some(kind) => format!("[{kind} {}]", part["mimeType"].as_str().unwrap_or("content")),
            None => String::new(),
        })
        .collect();
    if parts.is_empty() && result.get("structuredContent").is_some() {
        return result["structuredContent"].to_string();
    }
    parts.join("\n")
}

fn spawn(config: &ServerConfig, workspace: &Path) -> Result<Child, McpError> {
    let exe = std::env::current_exe().map_err(|e| McpError::Protocol(format!("cannot find astrid itself: {e}")))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg0(exec::ROLE)
        .arg(&config.command)
        .args(&config.args)
        .env_clear()
        .envs(INHERITED_ENV.iter().filter_map(|name| Some((*name, std::env::var_os(name)?))))
        .envs(&config.env)
        .env(crate::lifeline::PARENT_ENV, std::process::id().to_string())
        .current_dir(config.cwd.as_deref().unwrap_or(workspace))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command.spawn().map_err(|e| McpError::Protocol(format!("cannot start {}: {e}", config.command)))
}

/// Reads one line of at most `max` bytes into `line` (without the newline). `Ok(false)` at
/// the end; a longer line is skipped to its end and reported as `Err(len)`.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Result<bool, usize>> {
    line.clear();
    let mut skipped = 0usize;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if skipped > 0 { Err(skipped) } else { Ok(!line.is_empty()) });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if skipped > 0 || line.len() + chunk.len() > max {
            skipped += line.len() + chunk.len();
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            return Ok(if skipped > 0 { Err(skipped) } else { Ok(true) });
        }
    }
}

async fn read_stdout(
    name: String,
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    events: mpsc::UnboundedSender<Event>,
    replies: mpsc::UnboundedSender<Outgoing>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut garbage = 0u64;
    let end = loop {
        match read_line(&mut reader, &mut line, MAX_LINE).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break "stdout closed".to_owned(),
            Ok(Err(len)) => {
                log::warn!("mcp {name}: skipped a line of {len} bytes (the limit is {MAX_LINE})");
                continue;
            }
            Err(e) => break format!("stdout failed: {e}"),
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            garbage += 1;
            if garbage.is_power_of_two() {
                let shown: String = String::from_utf8_lossy(&line).chars().take(120).collect();
                log::warn!("mcp {name}: {garbage} line(s) on stdout that are not JSON-RPC so far, e.g. {shown:?}");
            }
            continue;
        };
        handle(&name, message, &pending, &events, &replies);
    };
    log::info!("mcp {name}: {end}");
    for (_, waiting) in pending.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        let _ = waiting.send(Err(McpError::Exited(end.clone())));
    }
    let _ = events.send(Event::Exited(end));
}

fn handle(
    name: &str,
    message: Value,
    pending: &Pending,
    events: &mpsc::UnboundedSender<Event>,
    replies: &mpsc::UnboundedSender<Outgoing>,
) {
    let method = message["method"].as_str();
    match (method, message.get("id")) {
        // A response to one of ours.
        (None, Some(id)) => {
            let Some(id) = id.as_u64() else { return };
            let Some(waiting) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) else { return };
            let outcome = match message.get("error") {
                Some(error) => Err(McpError::Rpc {
                    code: error["code"].as_i64().unwrap_or(0),
                    message: error["message"].as_str().unwrap_or("unknown error").to_owned(),
                }),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiting.send(outcome);
        }
        // A request from the server: only ping is served (no roots, sampling or elicitation).
        (Some(method), Some(id)) => {
            let reply = if method == "ping" {
                json!({"jsonrpc": "2.0", "id": id, "result": {}})
            } else {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("{method} is not supported by this client")}})
            };
            let _ = replies.send(Outgoing::Line(format!("{reply}\n")));
        }
        (Some("notifications/tools/list_changed"), None) => {
            let _ = events.send(Event::ToolsChanged);
        }
        (Some("notifications/message"), None) => {
            let text: String = message["params"]["data"].to_string().chars().take(500).collect();
            log::info!("mcp {name}: {text}");
        }
        _ => {}
    }
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(read) = read_line(&mut reader, &mut line, 64 * 1024).await {
        match read {
            Ok(true) => log::info!("mcp {name}: {}", String::from_utf8_lossy(&line).trim_end()),
            Ok(false) => return,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_capped_and_a_long_one_is_skipped_whole() {
        let input: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nafter\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        loop {
            match read_line(&mut reader, &mut line, 8).await.expect("read") {
                Ok(true) => seen.push(String::from_utf8(line.clone()).expect("utf8")),
                Ok(false) => break,
                Err(len) => seen.push(format!("skipped {len}")),
            }
        }
        assert_eq!(seen, ["short", "skipped 20", "after", "last"]);
    }

    #[test]
    fn tool_results_become_text() {
        let result = json!({"content": [{"type": "text", "text": "a"}, {"type": "image", "mimeType": "image/png"}, {"type": "text", "text": "b"}]});
        assert_eq!(text_of(&result), "a\n[image image/png]\nb");
        assert_eq!(text_of(&json!({"content": [], "structuredContent": {"x": 1}})), "{\"x\":1}");
    }
}
