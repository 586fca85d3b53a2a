//! The MCP host: every configured server, supervised.
//!
//! Each server has a task of its own: start → initialize (within its init timeout) →
//! `tools/list` → ready; a tool list change is read again; an exit is restarted with backoff
//! (1 s doubling to 30 s, at most [`MAX_FAILURES`] in a row, per its restart policy). A server
//! that does not answer `initialize` in time is marked failed and not retried (it would only
//! hang again). Nothing here waits on a server: boot, other servers and the daemon go on
//! whatever one server does. Every start, exit and failure is audited (`mcp.server`).
//!
//! When the set of tools changes, `astrid.v1.capsules_loaded` is published, which is what
//! tells the orchestrator to ask for the tools again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::client::{CallOutcome, Event, McpClient, McpError, ToolInfo};
use super::config::{RestartPolicy, ServerConfig};
use crate::audit::{Actor, Decision};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::Kernel;
use crate::kernel::mcp_service::McpCallError;
use crate::types::LlmToolDefinition;
use crate::types::management::{McpCallResult, McpListing, McpServer, McpServerState, McpTool};

/// Failed starts (or exits) in a row after which a server is given up.
pub const MAX_FAILURES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a server's run ended.
#[derive(Debug)]
struct Exit {
    /// What happened, for the log, the audit trail and `astrid mcp list`.
    why: String,
    /// It exited with status 0 (`on_failure` does not restart it).
    clean: bool,
}

/// Completes once the daemon stops the servers (holding no borrow across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug)]
struct Server {
    config: ServerConfig,
    /// Which launch of this name the entry belongs to (a task of an earlier one, still
    /// stopping, must not touch it).
    generation: u64,
    state: McpServerState,
    tools: Vec<ToolInfo>,
    client: Option<Arc<McpClient>>,
    last_error: Option<String>,
    starts: u32,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The supervised servers.
#[derive(Debug)]
pub struct McpHost {
    kernel: Arc<Kernel>,
    workspace: PathBuf,
    servers: Mutex<BTreeMap<String, Server>>,
    /// Configuration errors of `etc/servers.toml`.
    refused: Vec<String>,
    /// Declarations of capsules that were refused, as of the last sync.
    capsule_refused: Mutex<Vec<String>>,
    generations: std::sync::atomic::AtomicU64,
    /// Bumped on every change of a server's state, for whoever waits for servers to settle.
    changed: watch::Sender<u64>,
}

/// A server's first start may take this long beyond its init timeout (the program itself
/// starting) before a waiting describer gives up on it.
const START_SLACK: Duration = Duration::from_secs(5);

impl McpHost {
    /// Starts supervising `configs` (on the current runtime); `refused` are configuration
    /// errors to show in `astrid mcp list`.
    pub fn start(
        kernel: Arc<Kernel>,
        workspace: PathBuf,
        configs: Vec<ServerConfig>,
        refused: Vec<String>,
    ) -> Arc<Self> {
        for reason in &refused {
            log::error!("MCP server refused: {reason}");
            kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "mcp.server", "servers.toml", Decision::Deny, reason);
        }
        let host = Arc::new(Self {
            kernel,
            workspace,
            servers: Mutex::new(BTreeMap::new()),
            refused,
            capsule_refused: Mutex::new(Vec::new()),
            generations: std::sync::atomic::AtomicU64::new(0),
            changed: watch::channel(0).0,
        });
        for config in configs {
            host.launch(config);
        }
        host
    }

    /// Starts supervising one server (its name is free).
    fn launch(self: &Arc<Self>, config: ServerConfig) {
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let name = config.name.clone();
        let server = Server {
            config,
            generation,
            state: McpServerState::Starting,
            tools: Vec::new(),
            client: None,
            last_error: None,
            starts: 0,
            stop,
            task: None,
        };
        self.servers().insert(name.clone(), server);
        let task = tokio::spawn(Arc::clone(self).supervise(name.clone(), generation, stopped));
        if let Some(server) = self.servers().get_mut(&name).filter(|s| s.generation == generation) {
            server.task = Some(task);
        }
    }

    /// Brings the capsules' servers in line with `declared` (what approved capsules declare
    /// now): new ones start, gone or changed ones stop. A name `etc/servers.toml` already
    /// uses is refused.
    pub fn sync_capsule_servers(self: &Arc<Self>, declared: Vec<ServerConfig>, mut refused: Vec<String>) {
        let mut stopping = Vec::new();
        {
            let mut servers = self.servers();
            let gone: Vec<String> = servers
                .iter()
                .filter(|(_, s)| s.config.capsule.is_some() && !declared.contains(&s.config))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                if let Some(server) = servers.remove(&name) {
                    server.stop.send_replace(true);
                    stopping.extend(server.task);
                }
            }
        }
        for config in declared {
            let taken = self.servers().get(&config.name).map(|s| s.config == config);
            match taken {
                Some(true) => {}
                Some(false) => refused.push(format!(
                    "capsule {}: mcp_server {:?}: the name is taken by another server",
                    config.capsule.as_deref().unwrap_or("?"),
                    config.name
                )),
                None => self.launch(config),
            }
        }
        for reason in &refused {
            log::warn!("MCP server refused: {reason}");
        }
        *self.capsule_refused.lock().unwrap_or_else(|e| e.into_inner()) = refused;
        if !stopping.is_empty() {
            tokio::spawn(async move {
                for task in stopping {
                    let _ = task.await;
                }
            });
        }
    }

    fn servers(&self) -> MutexGuard<'_, BTreeMap<String, Server>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a server called `name` is configured.
    pub fn has_server(&self, name: &str) -> bool {
        self.servers().contains_key(name)
    }

    /// The servers still starting (their tools are not offered yet, and will be soon).
    pub fn starting(&self) -> Vec<String> {
        self.servers()
            .iter()
            .filter(|(_, s)| s.state == McpServerState::Starting)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Waits until no server is starting any more, or as long as the slowest of them may
    /// take to initialize (its init timeout, plus a little for the program to start).
    pub async fn settled(&self) {
        let bound = self
            .servers()
            .values()
            .filter(|s| s.state == McpServerState::Starting)
            .map(|s| s.config.init_timeout)
            .max()
            .unwrap_or_default()
            + START_SLACK;
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(bound, async {
            while !self.starting().is_empty() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Every ready server's tools, named `server:tool`, for agents.
    pub fn tool_descriptions(&self) -> Vec<LlmToolDefinition> {
        let servers = self.servers();
        servers
            .iter()
            .filter(|(_, s)| s.state == McpServerState::Ready)
            .flat_map(|(name, s)| {
                s.tools.iter().map(move |t| LlmToolDefinition {
                    name: format!("{name}:{}", t.name),
                    description: Some(t.description.clone()),
                    input_schema: t.input_schema.clone(),
                })
            })
            .collect()
    }

    /// `astrid mcp list`: each server's state, pid, tools and last error, and the refused ones.
    pub fn list(&self) -> McpListing {
        let servers = self
            .servers()
            .iter()
            .map(|(name, s)| McpServer {
                name: name.clone(),
                state: s.state,
                description: s.config.description.clone(),
                command: s.config.command.clone(),
                capsule: s.config.capsule.clone(),
                pid: s.client.as_ref().and_then(|c| c.pid()),
                protocol_version: s.client.as_ref().map(|c| c.protocol_version.clone()),
                starts: s.starts,
                last_error: s.last_error.clone(),
                tools: s
                    .tools
                    .iter()
                    .map(|t| McpTool { name: t.name.clone(), description: t.description.clone() })
                    .collect(),
            })
            .collect();
        let mut refused = self.refused.clone();
        refused.extend(self.capsule_refused.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        McpListing { servers, refused }
    }

    /// Calls `tool` on `server` (no approval asked here: the caller decided), within the
    /// server's call timeout or until `cancel` completes.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: Value,
        cancel: impl Future<Output = ()>,
    ) -> Result<CallOutcome, McpCallError> {
        let (client, timeout, known) = {
            let servers = self.servers();
            let Some(entry) = servers.get(server) else {
                return Err(McpCallError::NoServer { server: server.to_owned() });
            };
            let known = entry.tools.iter().any(|t| t.name == tool);
            (entry.client.clone().filter(|_| entry.state == McpServerState::Ready), entry.config.call_timeout, known)
        };
        let Some(client) = client else { return Err(McpCallError::NotReady { server: server.to_owned() }) };
        if !known {
            return Err(McpCallError::NoTool { server: server.to_owned(), tool: tool.to_owned() });
        }
        client.call_tool(tool, arguments, timeout, cancel).await.map_err(|source| McpCallError::Failed {
            server: server.to_owned(),
            tool: tool.to_owned(),
            source: Box::new(source),
        })
    }

    /// Stops every server and waits for them (their process groups are killed if they do not
    /// leave on their own).
    pub async fn stop_all(&self) {
        let tasks: Vec<_> = self
            .servers()
            .values_mut()
            .filter_map(|server| {
                server.stop.send_replace(true);
                server.task.take()
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn update(&self, name: &str, generation: u64, change: impl FnOnce(&mut Server)) {
        if let Some(server) = self.servers().get_mut(name).filter(|s| s.generation == generation) {
            change(server);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn audit(&self, name: &str, decision: Decision, what: &str) {
        self.kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "mcp.server", name, decision, what);
    }

    fn announce_tools(&self) {
        self.kernel.announce_capsules_loaded();
    }

    /// One server's life, until the daemon stops or the server is given up.
    async fn supervise(self: Arc<Self>, name: String, generation: u64, mut stop: watch::Receiver<bool>) {
        let Some(config) = self.servers().get(&name).map(|s| s.config.clone()) else { return };
        let mut failures = 0u32;
        loop {
            self.update(&name, generation, |s| {
                s.state = McpServerState::Starting;
                s.starts += 1;
            });
            let (events, mut incoming) = mpsc::unbounded_channel();
            let started = tokio::select! {
                started = McpClient::start(&config, &self.workspace, events) => started,
                () = stopped(&mut stop) => return self.update(&name, generation, |s| s.state = McpServerState::Stopped),
            };
            let exit = match started {
                Err(McpError::Unusable(reason)) => {
                    log::error!("mcp {name}: {reason}; marked failed");
                    self.audit(&name, Decision::Deny, &format!("failed: {reason}"));
                    return self.update(&name, generation, |s| {
                        s.state = McpServerState::Failed;
                        s.last_error = Some(reason);
                    });
                }
                Err(e) => Exit { why: format!("did not start: {e}"), clean: false },
                Ok(client) => {
                    let client = Arc::new(client);
                    match self.serve(&name, generation, &config, &client, &mut incoming, &mut stop).await {
                        None => {
                            client.stop().await;
                            self.update(&name, generation, |s| {
                                s.state = McpServerState::Stopped;
                                s.client = None;
                            });
                            return;
                        }
                        Some(why) => {
                            client.stop().await;
                            failures = 0;
                            why
                        }
                    }
                }
            };
            let Exit { why: exit, clean } = exit;
            log::warn!("mcp {name}: {exit}");
            self.audit(&name, Decision::Info, &exit);
            let had_tools = self.servers().get(&name).is_some_and(|s| !s.tools.is_empty());
            self.update(&name, generation, |s| {
                s.client = None;
                s.tools.clear();
                s.last_error = Some(exit.clone());
            });
            if had_tools {
                self.announce_tools();
            }
            failures += 1;
            let give_up = match config.restart {
                RestartPolicy::Never => true,
                RestartPolicy::OnFailure => clean,
                RestartPolicy::Always => false,
            };
            if give_up || failures > MAX_FAILURES {
                let state = if clean { McpServerState::Stopped } else { McpServerState::Failed };
                if state == McpServerState::Failed {
                    self.audit(&name, Decision::Deny, &format!("given up after {failures} failure(s): {exit}"));
                }
                return self.update(&name, generation, |s| s.state = state);
            }
            self.update(&name, generation, |s| s.state = McpServerState::Restarting);
            let backoff = (FIRST_BACKOFF * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return self.update(&name, generation, |s| s.state = McpServerState::Stopped),
            }
        }
    }

    /// Lists the tools and serves events until the server exits (`Some`) or the daemon
    /// stops (`None`).
    async fn serve(
        &self,
        name: &str,
        generation: u64,
        config: &ServerConfig,
        client: &Arc<McpClient>,
        incoming: &mut mpsc::UnboundedReceiver<Event>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Exit> {
        let tools = match client.list_tools(config.init_timeout).await {
            Ok(tools) => tools,
            Err(e) => return Some(Exit { why: format!("tools/list failed: {e}"), clean: false }),
        };
        let (count, pid) = (tools.len(), client.pid());
        self.update(name, generation, |s| {
            s.state = McpServerState::Ready;
            s.tools = tools;
            s.client = Some(Arc::clone(client));
            s.last_error = None;
        });
        log::info!("mcp {name}: ready (pid {pid:?}, protocol {}, {count} tool(s))", client.protocol_version);
        self.audit(name, Decision::Info, &format!("ready: {count} tool(s), protocol {}", client.protocol_version));
        self.announce_tools();
        loop {
            tokio::select! {
                event = incoming.recv() => match event {
                    Some(Event::ToolsChanged) => match client.list_tools(config.init_timeout).await {
                        Ok(tools) => {
                            log::info!("mcp {name}: tool list changed ({} tool(s))", tools.len());
                            self.update(name, generation, |s| s.tools = tools);
                            self.announce_tools();
                        }
                        Err(e) => log::warn!("mcp {name}: cannot read the changed tool list: {e}"),
                    },
                    Some(Event::Exited(why)) => {
                        let status = client.exit_status().await;
                        let how = status.map_or_else(|| "still running".to_owned(), |s| s.to_string());
                        return Some(Exit { why: format!("exited ({why}, {how})"), clean: status.is_some_and(|s| s.success()) });
                    }
                    None => return Some(Exit { why: "exited".to_owned(), clean: false }),
                },
                () = stopped(stop) => return None,
            }
        }
    }
}

impl crate::kernel::mcp_service::McpService for McpHost {
    fn list(&self) -> McpListing {
        McpHost::list(self)
    }

    fn call(self: Arc<Self>, server: String, tool: String, arguments: Value) -> crate::kernel::mcp_service::CallFuture {
        Box::pin(async move {
            let outcome = McpHost::call(&self, &server, &tool, arguments, std::future::pending()).await?;
            Ok(McpCallResult { content: outcome.text, is_error: outcome.is_error })
        })
    }
}
