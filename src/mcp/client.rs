//! One MCP server over stdio, spoken to through the official SDK (rmcp).
//!
//! The server runs as a child in a process group of its own, started through the
//! `astrid-mcp-exec` role (see [`super::exec`]) so that it dies with the daemon even when
//! the daemon is SIGKILLed; its stdin closing is the ordinary way to stop it. Its stderr goes
//! to the daemon log, line by line. This module spawns and owns that child (rmcp's own
//! `TokioChildProcess` would own it instead: no exit status, and signals to the process
//! rather than its group) and hands rmcp the two pipes: rmcp's line transport reads stdout
//! (lines capped at [`MAX_LINE`]; anything that is not JSON-RPC is skipped, so a server
//! that prints garbage does not take the daemon with it), and rmcp's client does the
//! protocol: the lifecycle and version negotiation, request ids, responses, `ping`,
//! notifications, cancellation.
//!
//! What stays here is policy: the environment a server gets, the init timeout, a timeout on
//! every request and `notifications/cancelled` when a call times out or its caller gives up,
//! a bound on `tools/list` pages, which server requests are refused, and the translation of
//! rmcp's types to the few the host uses ([`ToolInfo`], [`CallOutcome`], [`Event`]).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientCapabilities, ClientConfig,
    ClientRequest, ElicitRequestParams, ElicitResult, ElicitationCreateRequestMethod, ErrorData, Implementation,
    ListRootsRequestMethod, ListToolsRequest, PaginatedRequestParams, ProtocolVersion, ServerNotification,
    SubscriptionFilter,
};
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, PeerRequestOptions,
    QuitReason, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, ServiceError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};
use tokio::process::{Child, ChildStdout};
use tokio::sync::{Notify, mpsc};

use super::config::ServerConfig;
use super::exec;

/// The protocol versions this client speaks, oldest first: every one rmcp knows. Those with
/// an `initialize` handshake are reached through it; later ones (2026-07-28, stateless)
/// through `server/discover`, which is tried first.
pub const PROTOCOL_VERSIONS: &[ProtocolVersion] = ProtocolVersion::KNOWN_VERSIONS;
/// The longest line a server may write (a tool result can be big; a runaway one cannot be
/// bigger than this). A longer line is dropped by rmcp's transport as it arrives, never
/// buffered whole.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Pages of `tools/list` read at most (a server whose cursor never ends is cut off).
const MAX_PAGES: usize = 100;
/// How long a stopping server gets after its stdin closes, and again after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Variables of the daemon's environment a server inherits; nothing else (no API keys).
const INHERITED_ENV: [&str; 10] =
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM"];
/// The longest stderr line logged as it is (the rest of a longer one is skipped).
const MAX_STDERR_LINE: usize = 64 * 1024;

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

/// A running, initialized server.
#[derive(Debug)]
pub struct McpClient {
    name: String,
    /// rmcp's handle for requests and notifications to the server.
    peer: Peer<RoleClient>,
    /// Tells the task that owns rmcp's session to end it (which closes the server's stdin).
    close: Arc<Notify>,
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
        tokio::spawn(log_stderr(config.name.clone(), stderr));
        let transport = AsyncRwTransport::new_client(DrainedStdout(Some(stdout)), stdin).with_max_line_length(MAX_LINE);
        let handler = Handler { name: config.name.clone(), events: events.clone() };
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: PROTOCOL_VERSIONS.iter().rev().filter(|v| !v.has_initialize()).cloned().collect(),
            legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
        };
        let started =
            tokio::time::timeout(config.init_timeout, handler.serve_with_lifecycle(transport, lifecycle)).await;
        let running = match started {
            Ok(Ok(running)) => running,
            failed => {
                // rmcp dropped the pipes with the failed start: the server's stdin is closed.
                stop_child(&config.name, &mut child, pid).await;
                return Err(match failed {
                    Ok(Err(e)) => initialize_error(e),
                    _ => McpError::Unusable(format!("did not answer initialize within {:?}", config.init_timeout)),
                });
            }
        };
        let peer = running.peer().clone();
        let info = peer.peer_info();
        let version = info.as_ref().map(|i| i.protocol_version.clone()).unwrap_or_default();
        let client = Self {
            name: config.name.clone(),
            peer,
            close: Arc::default(),
            child: tokio::sync::Mutex::new(child),
            pid,
            protocol_version: version.to_string(),
            server_info: info.as_ref().and_then(|i| serde_json::to_value(&i.server_info).ok()).unwrap_or_default(),
        };
        tokio::spawn(own_session(config.name.clone(), running, Arc::clone(&client.close), events.clone()));
        if !PROTOCOL_VERSIONS.contains(&version) {
            client.stop().await;
            let known: Vec<&str> = PROTOCOL_VERSIONS.iter().rev().map(ProtocolVersion::as_str).collect();
            return Err(McpError::Unusable(format!(
                "the server speaks protocol {:?}; this client speaks {}",
                version.as_str(),
                known.join(", ")
            )));
        }
        let announces_changes = info
            .as_ref()
            .and_then(|i| i.capabilities.tools.as_ref())
            .is_some_and(|tools| tools.list_changed == Some(true));
        if !version.has_initialize() && announces_changes {
            tokio::spawn(follow_tool_changes(config.name.clone(), client.peer.clone(), events));
        }
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
            let params = PaginatedRequestParams::default().with_cursor(cursor.take());
            let page =
                self.request(ClientRequest::ListToolsRequest(ListToolsRequest::with_param(params)), timeout).await?;
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
        let arguments = match arguments {
            Value::Object(arguments) => arguments,
            _ => serde_json::Map::new(),
        };
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        // rmcp sends `notifications/cancelled` itself when the timeout ends the request.
        let handle = self
            .peer
            .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
            .await
            .map_err(service_error)?;
        let id = handle.id.clone();
        let result = tokio::select! {
            reply = handle.await_response() => reply.map_err(service_error),
            () = cancel => {
                let cancelled = CancelledNotificationParam::new(Some(id), Some("cancelled".to_owned()));
                let _ = self.peer.notify_cancelled(cancelled).await;
                Err(McpError::Cancelled)
            }
        };
        let result = serde_json::to_value(result?).map_err(|e| McpError::Protocol(e.to_string()))?;
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
        self.close.notify_one();
        stop_child(&self.name, &mut *self.child.lock().await, self.pid).await;
    }

    /// Sends `request` and waits up to `timeout` for its result (rmcp cancels it at the
    /// server when the time is up), as JSON: the shape the server sent, whatever rmcp made of it.
    async fn request(&self, request: ClientRequest, timeout: Duration) -> Result<Value, McpError> {
        let result = self
            .peer
            .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
            .await
            .map_err(service_error)?
            .await_response()
            .await
            .map_err(service_error)?;
        serde_json::to_value(result).map_err(|e| McpError::Protocol(e.to_string()))
    }
}

/// What rmcp calls on the client's side: the tool-list notification becomes an [`Event`],
/// a log message goes to the daemon log, `ping` is answered, and the requests this client
/// does not declare (sampling, roots, elicitation) are refused (sampling by rmcp's default).
#[derive(Debug)]
struct Handler {
    name: String,
    events: mpsc::UnboundedSender<Event>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("astrid", crate::VERSION))
            .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.events.send(Event::ToolsChanged);
    }

    // Logging and roots are gone from the 2026-07-28 revision (rmcp marks them deprecated);
    // servers on earlier ones still use them.
    #[expect(deprecated, reason = "servers on earlier protocol versions still send log messages")]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let text: String = params.data.to_string().chars().take(500).collect();
        log::info!("mcp {}: {text}", self.name);
    }

    #[expect(deprecated, reason = "servers on earlier protocol versions may still ask for roots")]
    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, ErrorData> {
        Err(ErrorData::method_not_found::<ListRootsRequestMethod>())
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Err(ErrorData::method_not_found::<ElicitationCreateRequestMethod>())
    }
}

/// Owns rmcp's session until the server's stdout ends or [`McpClient::stop`] asks for it to
/// end (rmcp then closes the server's stdin); tells the host the server is gone.
async fn own_session(
    name: String,
    running: RunningService<RoleClient, Handler>,
    close: Arc<Notify>,
    events: mpsc::UnboundedSender<Event>,
) {
    let token = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    let ended = tokio::select! {
        ended = &mut waiting => ended,
        () = close.notified() => {
            token.cancel();
            waiting.await
        }
    };
    let end = match ended {
        Ok(QuitReason::Closed) => "stdout closed".to_owned(),
        Ok(QuitReason::Cancelled) => "stopped".to_owned(),
        Ok(other) => format!("the session failed: {other:?}"),
        Err(e) => format!("the session failed: {e}"),
    };
    log::info!("mcp {name}: {end}");
    let _ = events.send(Event::Exited(end));
}

/// On a 2026-07-28 (stateless) connection a server announces tool-list changes only on a
/// `subscriptions/listen` stream that asked for them: this opens one and turns what it
/// carries into [`Event::ToolsChanged`], until the connection ends.
async fn follow_tool_changes(name: String, peer: Peer<RoleClient>, events: mpsc::UnboundedSender<Event>) {
    let mut subscription = match peer.listen(SubscriptionFilter::builder().tools_list_changed().build()).await {
        Ok(subscription) => subscription,
        Err(e) => {
            log::warn!("mcp {name}: cannot subscribe to tool-list changes: {e}");
            return;
        }
    };
    loop {
        match subscription.next().await {
            Ok(Some(ServerNotification::ToolListChangedNotification(_))) => {
                let _ = events.send(Event::ToolsChanged);
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                log::warn!("mcp {name}: the tool-list subscription ended: {e}");
                return;
            }
        }
    }
}

/// The server's stdout as rmcp reads it. rmcp lets go of it when the session ends (the
/// server closed it, or [`McpClient::stop`] closed stdin); from then on what the server still
/// writes is read and dropped until it exits, so a server answering on its way out (a
/// `subscriptions/listen` stream's final result) exits as it means to, not of a broken pipe.
struct DrainedStdout(Option<ChildStdout>);

impl AsyncRead for DrainedStdout {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().0.as_mut() {
            Some(stdout) => Pin::new(stdout).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for DrainedStdout {
    fn drop(&mut self) {
        let (Some(mut stdout), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) else { return };
        runtime.spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
    }
}

/// Waits for a server whose stdin is closed (or is being closed) to leave; then SIGTERM, then
/// SIGKILL to its process group, each after a grace period.
async fn stop_child(name: &str, child: &mut Child, pid: Option<u32>) {
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
        return;
    }
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    log::error!("mcp {name}: the server did not stop");
}

/// What a failed request means to the host.
fn service_error(error: ServiceError) -> McpError {
    match error {
        ServiceError::McpError(error) => McpError::Rpc { code: i64::from(error.code.0), message: error.message.into() },
        ServiceError::Timeout { timeout } => McpError::Timeout(timeout),
        ServiceError::Cancelled { .. } => McpError::Cancelled,
        ServiceError::TransportClosed => McpError::Exited("no answer".to_owned()),
        ServiceError::TransportSend(e) => McpError::Exited(format!("cannot write to it: {e}")),
        other => McpError::Protocol(other.to_string()),
    }
}

/// What a failed start means to the host: a server that cannot agree on a version is
/// unusable; one that exited or spoke nonsense may do better when started again.
fn initialize_error(error: ClientInitializeError) -> McpError {
    match error {
        ClientInitializeError::LegacyFallbackFailed { fallback, .. } => initialize_error(*fallback),
        ClientInitializeError::NoCompatibleProtocolVersion { server_supported, .. } => {
            let theirs: Vec<&str> = server_supported.iter().map(ProtocolVersion::as_str).collect();
            McpError::Unusable(format!("the server speaks protocol {theirs:?}; this client speaks none of them"))
        }
        ClientInitializeError::ConnectionClosed(why) => McpError::Exited(why),
        ClientInitializeError::JsonRpcError(error) => {
            McpError::Rpc { code: i64::from(error.code.0), message: error.message.into() }
        }
        other => McpError::Protocol(other.to_string()),
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

/// Reads one line of at most `max` bytes into `line` (without the newline), for stderr. `Ok(false)` at
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

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(read) = read_line(&mut reader, &mut line, MAX_STDERR_LINE).await {
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

    #[tokio::test]
    async fn a_server_writing_after_the_session_let_go_of_its_stdout_exits_cleanly() {
        // Without the drain, `echo` writes to a closed pipe and the shell dies of SIGPIPE.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "read line; echo goodbye; exit 0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sh");
        let stdout = DrainedStdout(child.stdout.take());
        drop(stdout);
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("exits").expect("status");
        assert!(status.success(), "{status}");
    }

    #[test]
    fn tool_results_become_text() {
        let result = json!({"content": [{"type": "text", "text": "a"}, {"type": "image", "mimeType": "image/png"}, {"type": "text", "text": "b"}]});
        assert_eq!(text_of(&result), "a\n[image image/png]\nb");
        assert_eq!(text_of(&json!({"content": [], "structuredContent": {"x": 1}})), "{\"x\":1}");
    }
}
