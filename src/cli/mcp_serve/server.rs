//! The MCP server: `tools/list` is the daemon's `ListTools`, `tools/call` its `CallTool`,
//! a client's `notifications/cancelled` its `CancelToolCall`; what the daemon says meanwhile
//! (approval questions, a command's output, tools that changed) becomes elicitation,
//! progress and `notifications/tools/list_changed`.
//!
//! The daemon is connected to once the server knows its client (`initialize`, or the first
//! request of a client of the handshake-less protocol, which carries the client in every
//! request): the connection names the client for the audit trail, and says whether anyone
//! there can answer an approval (the client declared form elicitation, on a protocol that
//! lets a server ask). When nobody can, the daemon asks the other frontends instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::Value;
use tokio::sync::mpsc;

use super::approvals;
use super::link::{Event, Link, LinkError};
use super::names::Names;
use super::selection::Selection;
use crate::home::AstridHome;
use crate::ipc::async_client::Hello;
use crate::types::management::{ToolCalled, ToolListing};
use crate::types::topics::APPROVAL_RESPONSE_PREFIX;
use crate::types::{IpcPayload, KernelRequest};

/// How long a listing may take (the daemon waits up to 3 s for the tool providers).
const LIST_WAIT: Duration = Duration::from_secs(30);
/// How long a call may take: above the daemon's own backstop (720 s), which answers first.
const CALL_WAIT: Duration = Duration::from_secs(730);
/// How long a cancelled call waits for the daemon to say how it ended.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Quiet after a change before the tools are listed again (changes come in bursts).
const SETTLE: Duration = Duration::from_millis(300);

/// What this server is, and what it knows of its client.
#[derive(Debug, Clone)]
pub struct AstridServer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    home: AstridHome,
    selection: Selection,
    workspace: Option<std::path::PathBuf>,
    link: tokio::sync::OnceCell<Link>,
    /// The names offered in the last listing, both ways.
    names: Mutex<Names>,
    /// The last listing sent (names and schemas), to tell a real change.
    offered: Mutex<Option<Vec<(String, Value)>>>,
    /// Calls in flight whose client asked for progress.
    progress: Mutex<Vec<Progress>>,
    next_call: AtomicU64,
    /// The `--tools` names already said to match no tool.
    unmatched_warned: Mutex<std::collections::BTreeSet<String>>,
}

/// A call whose client wants progress: a command's output, which the daemon sends tagged
/// with the call's id.
#[derive(Debug)]
struct Progress {
    call_id: String,
    token: ProgressToken,
    peer: Peer<RoleServer>,
    pieces: u64,
}

impl AstridServer {
    /// A server offering `selection` of the tools of the daemon of `home`, working in
    /// `workspace` (`None`: the current directory's... as the daemon's own).
    pub fn new(home: AstridHome, selection: Selection, workspace: Option<std::path::PathBuf>) -> Self {
        Self {
            state: Arc::new(State {
                home,
                selection,
                workspace,
                link: tokio::sync::OnceCell::new(),
                names: Mutex::new(Names::default()),
                offered: Mutex::new(None),
                progress: Mutex::new(Vec::new()),
                next_call: AtomicU64::new(1),
                unmatched_warned: Mutex::default(),
            }),
        }
    }

    /// The connection to the daemon, made once the client is known.
    async fn link(
        &self,
        client: Option<&Implementation>,
        answers: bool,
        peer: &Peer<RoleServer>,
    ) -> Result<&Link, McpError> {
        self.state
            .link
            .get_or_try_init(|| async {
                let label = match client {
                    Some(client) => format!("{} {} via astrid mcp serve", client.name, client.version),
                    None => "an MCP client via astrid mcp serve".to_owned(),
                };
                let hello =
                    Hello { workspace: self.state.workspace.clone(), label: Some(label), answers_questions: answers };
                let (link, events) = Link::open(self.state.home.clone(), hello).await.map_err(unavailable)?;
                tokio::spawn(listen(Arc::clone(&self.state), link.clone(), events, peer.clone(), answers));
                Ok(link)
            })
            .await
    }

    /// The link for a request: made now if the client came without `initialize`.
    async fn link_for(&self, context: &RequestContext<RoleServer>) -> Result<&Link, McpError> {
        if let Some(link) = self.state.link.get() {
            return Ok(link);
        }
        // A handshake-less client: known from the request, and never asked anything (its
        // protocol forbids a server's requests).
        self.link(context.client_info().as_ref(), false, &context.peer).await
    }

    async fn listing(&self, link: &Link) -> Result<Vec<Tool>, McpError> {
        let listing: ToolListing = link
            .request("list_tools", &KernelRequest::ListTools, LIST_WAIT)
            .await
            .map_err(unavailable)?
            .into_data()
            .map_err(refused)?;
        let mut names = Names::default();
        let mut tools = Vec::new();
        for tool in &listing.tools {
            let Some(mcp_name) = names.offer(&tool.name) else { continue };
            if !self.state.selection.offers(tool, &mcp_name) {
                continue;
            }
            let schema = match &tool.input_schema {
                Some(Value::Object(schema)) => schema.clone(),
                _ => serde_json::Map::from_iter([("type".to_owned(), Value::String("object".to_owned()))]),
            };
            tools.push(Tool::new_with_raw(mcp_name, tool.description.clone().map(Into::into), schema));
        }
        // A name in --tools that nothing answers to is likely a typo: said once (the tool
        // may still come later, with a capsule or an MCP server).
        let mut warned = self.state.unmatched_warned.lock().unwrap_or_else(|e| e.into_inner());
        for name in self.state.selection.unmatched(&names) {
            if warned.insert(name.to_owned()) {
                log::warn!("astrid mcp serve: --tools names {name}, which no tool is called now (astrid tools list)");
            }
        }
        drop(warned);
        // Only what is offered can be called.
        let mut offered = Names::default();
        for tool in &tools {
            if let Some(astrid) = names.astrid_name(&tool.name) {
                offered.offer(astrid);
            }
        }
        *self.state.names.lock().unwrap_or_else(|e| e.into_inner()) = offered;
        *self.state.offered.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary(&tools));
        Ok(tools)
    }
}

/// What tells two listings apart: names and schemas.
fn summary(tools: &[Tool]) -> Vec<(String, Value)> {
    tools.iter().map(|t| (t.name.to_string(), Value::Object((*t.input_schema).clone()))).collect()
}

fn unavailable(e: LinkError) -> McpError {
    McpError::internal_error(format!("Astrid: {e}"), None)
}

fn refused(e: crate::types::ReplyError) -> McpError {
    McpError::internal_error(format!("Astrid: {e}"), None)
}

/// Whether a client can be asked a form: it declared elicitation, in form mode (or without a
/// mode, which means form).
fn elicits(capabilities: &ClientCapabilities) -> bool {
    capabilities.elicitation.as_ref().is_some_and(|e| e.form.is_some() || e.url.is_none())
}

impl ServerHandler for AstridServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
            .with_server_info(Implementation::new("astrid", crate::VERSION))
            .with_instructions(
                "Astrid's tools: every call is checked against its grant, asks a person when the tool \
                 asks for approval, is recorded in Astrid's audit trail, and writes go to a review \
                 overlay until a person commits them (`astrid workspace diff`, `astrid workspace commit`).",
            )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        let result = self.negotiate_initialize(&request)?;
        self.link(Some(&request.client_info), elicits(&request.capabilities), &context.peer).await?;
        Ok(result)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let link = self.link_for(&context).await?;
        Ok(ListToolsResult::with_all_items(self.listing(link).await?))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let link = self.link_for(&context).await?;
        if self.state.offered.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            // A client that calls before it lists: learn the names first.
            self.listing(link).await?;
        }
        let name =
            self.state.names.lock().unwrap_or_else(|e| e.into_inner()).astrid_name(&request.name).map(str::to_owned);
        let Some(name) = name else {
            return Err(McpError::invalid_params(format!("no tool called {} is offered", request.name), None));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let call_id = self.state.next_call.fetch_add(1, Ordering::Relaxed).to_string();
        let _progress = ProgressGuard::new(&self.state, &call_id, &context);
        let call = KernelRequest::CallTool { name, arguments, call_id: call_id.clone() };
        let reply = link.request("call_tool", &call, CALL_WAIT);
        tokio::pin!(reply);
        let reply = tokio::select! {
            reply = &mut reply => reply,
            () = context.ct.cancelled() => {
                let cancel = KernelRequest::CancelToolCall { call_id };
                if let Err(e) = link.request("cancel_tool_call", &cancel, CANCEL_WAIT).await {
                    log::warn!("astrid mcp serve: cannot cancel a call: {e}");
                }
                tokio::time::timeout(CANCEL_WAIT, reply).await.unwrap_or(Err(LinkError::Timeout(CANCEL_WAIT)))
            }
        };
        let called: ToolCalled = reply.map_err(unavailable)?.into_data().map_err(refused)?;
        let content = vec![ContentBlock::text(called.content)];
        Ok(if called.is_error { CallToolResult::error(content) } else { CallToolResult::success(content) }.into())
    }
}

/// Registers a call whose client sent a progress token, while it runs: the output of any
/// command it runs (`run_command`, or a capsule tool that runs one) becomes progress.
struct ProgressGuard<'a> {
    state: &'a State,
    call_id: Option<String>,
}

impl<'a> ProgressGuard<'a> {
    fn new(state: &'a State, call_id: &str, context: &RequestContext<RoleServer>) -> Self {
        let Some(token) = context.meta.get_progress_token() else {
            return Self { state, call_id: None };
        };
        state.progress.lock().unwrap_or_else(|e| e.into_inner()).push(Progress {
            call_id: call_id.to_owned(),
            token,
            peer: context.peer.clone(),
            pieces: 0,
        });
        Self { state, call_id: Some(call_id.to_owned()) }
    }
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        if let Some(call_id) = &self.call_id {
            self.state.progress.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p.call_id != *call_id);
        }
    }
}

/// Acts on what the daemon says besides replies, for the session's life.
async fn listen(
    state: Arc<State>,
    link: Link,
    mut events: mpsc::UnboundedReceiver<Event>,
    peer: Peer<RoleServer>,
    answers: bool,
) {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    {
        let (state, link, peer) = (Arc::clone(&state), link.clone(), peer.clone());
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                // A burst of changes is one: settle, then look.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                tools_changed(&state, &link, &peer).await;
            }
        });
    }
    while let Some(event) = events.recv().await {
        match event {
            Event::Approval { request_id, question } if answers => {
                let (link, peer) = (link.clone(), peer.clone());
                tokio::spawn(async move {
                    let decision = approvals::ask(&peer, &question).await;
                    let answer = IpcPayload::ApprovalResponse {
                        request_id: request_id.clone(),
                        decision: decision.as_str().to_owned(),
                        reason: Some("astrid mcp serve (MCP elicitation)".to_owned()),
                    };
                    if let Err(e) = link.publish(&format!("{APPROVAL_RESPONSE_PREFIX}{request_id}"), answer).await {
                        log::warn!("astrid mcp serve: cannot answer an approval: {e}");
                    }
                });
            }
            // Nobody here answers: the daemon asks the other frontends (or denies at once).
            Event::Approval { .. } => {}
            Event::CommandOutput(output) => {
                if let Some(call_id) = &output.call_id {
                    progress(&state, call_id, &output.text).await;
                }
            }
            Event::ToolsChanged | Event::Reconnected => {
                let _ = changed.send(());
            }
        }
    }
}

/// A piece of a command's output, as progress of the call `call_id` that runs it.
async fn progress(state: &State, call_id: &str, text: &str) {
    let note = {
        let mut running = state.progress.lock().unwrap_or_else(|e| e.into_inner());
        running.iter_mut().find(|p| p.call_id == call_id).map(|p| {
            p.pieces += 1;
            #[allow(clippy::cast_precision_loss)] // a count of output pieces
            let done = p.pieces as f64;
            (p.peer.clone(), ProgressNotificationParam::new(p.token.clone(), done).with_message(text.to_owned()))
        })
    };
    if let Some((peer, note)) = note
        && let Err(e) = peer.notify_progress(note).await
    {
        log::debug!("astrid mcp serve: cannot send progress: {e}");
    }
}

/// Lists the tools again and tells the client when what it would be offered changed.
async fn tools_changed(state: &Arc<State>, link: &Link, peer: &Peer<RoleServer>) {
    let before = state.offered.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let server = AstridServer { state: Arc::clone(state) };
    let Ok(tools) = server.listing(link).await else { return };
    if before.is_some_and(|before| before == summary(&tools)) {
        return;
    }
    if let Err(e) = peer.notify_tool_list_changed().await {
        log::debug!("astrid mcp serve: cannot announce the new tools: {e}");
    }
}
