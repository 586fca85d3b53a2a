//! The management API: `KernelRequest`s arriving on `astrid.v1.request.<suffix>` are
//! answered on `astrid.v1.response.<suffix>`, to the requester only: the client connection or
//! the capsule instance that published the request (its [`Origin`]), never to every
//! subscriber of the reply topic. The audit trail names that requester too: a capsule granted
//! `ipc_publish` on a request topic acts as itself, not as the kernel or the operator.
//!
//! Where the reference stays silent (a payload that is not `raw_json`, a request that does
//! not parse, a rate limit), we answer with `KernelResponse::Error` naming the problem:
//! a frontend waiting for a reply should never have to time out to learn it was refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::bus::{Address, BusMessage, Origin};
use super::rate_limit::SlidingWindow;
use super::{Kernel, ShutdownReason};
use crate::audit::{Actor, Decision};
use crate::home::DEFAULT_PRINCIPAL;
use crate::types::management::{
    AcknowledgedBreak, AuditAcknowledged, CapabilityListing, DaemonAction, DaemonActionStatus, GrantApproved,
    McpListing, Revoked, WorkspaceCommitted, WorkspaceDiff, WorkspaceDiscarded,
};
use crate::types::topics::{REQUEST_PATTERN, REQUEST_PREFIX, RESPONSE_PREFIX};
use crate::types::{IpcPayload, KernelRequest, KernelResponse};

/// The reply topic for a request topic (`astrid.v1.request.x` → `astrid.v1.response.x`).
/// Made by hand, not with `format!`: it runs for every request.
pub fn response_topic(request_topic: &str) -> String {
    let suffix = request_topic.strip_prefix(REQUEST_PREFIX).unwrap_or(request_topic);
    let mut topic = String::with_capacity(RESPONSE_PREFIX.len() + suffix.len());
    topic.push_str(RESPONSE_PREFIX);
    topic.push_str(suffix);
    topic
}

/// Requests per minute allowed for the methods that cost something.
fn rate_limit(request: &KernelRequest) -> Option<usize> {
    match request {
        KernelRequest::ReloadCapsules => Some(5),
        KernelRequest::Shutdown { .. } => Some(1),
        KernelRequest::InstallCapsule { .. }
        | KernelRequest::ApproveCapability { .. }
        | KernelRequest::RemoveCapsule { .. } => Some(10),
        KernelRequest::RevokeCapability { .. } | KernelRequest::WorkspaceCommit | KernelRequest::WorkspaceDiscard => {
            Some(30)
        }
        KernelRequest::AuditAcknowledge { .. } => Some(10),
        // Each one asks every tool provider to describe itself.
        KernelRequest::ListTools => Some(60),
        _ => None,
    }
}

/// Requests that only read: routine in the audit trail (the first of each kind is an
/// entry, repeats are counted: see [`super::routine`]), and served while the trail cannot
/// be written. Everything else changes something and is recorded every time.
fn read_only(request: &KernelRequest) -> bool {
    matches!(
        request,
        KernelRequest::GetStatus
            | KernelRequest::ListCapsules
            | KernelRequest::GetCommands
            | KernelRequest::GetCapsuleMetadata
            | KernelRequest::DescribeCapsules
            | KernelRequest::ListCapabilities
            | KernelRequest::KvGet { .. }
            | KernelRequest::KvList { .. }
            | KernelRequest::WorkspaceDiff
            | KernelRequest::McpList
            | KernelRequest::ListTools
            | KernelRequest::GetInstructions
    )
}

/// Requests answered from what the kernel holds in memory, in microseconds: served on the
/// async worker the router runs on. Every other request may block (it writes and flushes the
/// store, installs and compiles a capsule, diffs the workspace, verifies the audit chain,
/// reads files) and is answered off it, so no connection's traffic waits behind it: see
/// [`crate::blocking`].
fn answered_from_memory(request: &KernelRequest) -> bool {
    matches!(
        request,
        KernelRequest::GetStatus
            | KernelRequest::ListCapsules
            | KernelRequest::GetCommands
            | KernelRequest::GetCapsuleMetadata
            | KernelRequest::McpList
            | KernelRequest::CancelToolCall { .. }
    )
}

/// The longest a request that changed the registry waits for the capsule host to apply it
/// (see [`super::capsule_sync`]): stopping a capsule may take its 2 s stop wait.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Requests whose answer depends on which capsules run (their state, the commands and
/// interceptors of those that did not fail): while the boot's capsules start, they wait at
/// the start gate, so an answer never shows a starting capsule as stopped. `GetStatus` does
/// not wait: it is the liveness check, and lists the capsules running at that moment.
fn describes_running_capsules(request: &KernelRequest) -> bool {
    matches!(request, KernelRequest::GetCommands | KernelRequest::GetCapsuleMetadata | KernelRequest::DescribeCapsules)
}

/// Subscribes to management requests, then serves them on a task of its own. The subscription
/// is made here, before the task exists: a task only subscribes when it is first polled, and a
/// request published before that (a client quick after `system.ready`, on a busy machine) would
/// have had no subscriber and no answer, ever.
pub(super) fn start(kernel: &Arc<Kernel>) -> tokio::task::JoinHandle<()> {
    let requests = kernel.bus().subscribe("management-router", &[REQUEST_PATTERN]);
    tokio::spawn(run(Arc::clone(kernel), requests))
}

/// Serves management requests until the bus goes away.
async fn run(kernel: Arc<Kernel>, mut requests: super::bus::Subscription) {
    let mut limiter = SlidingWindow::new(Duration::from_secs(60));
    while let Some(incoming) = requests.recv().await {
        let reply_topic = response_topic(&incoming.message.topic);
        let requester = incoming.origin.reply_address();
        let caller = Caller::of(&kernel, &incoming);
        let request = decode(&incoming.message.payload);
        if request.as_ref().is_ok_and(describes_running_capsules) {
            // In order: whatever this connection sent next waits behind it.
            kernel.start_gate().passed().await;
        }
        let refused = match &request {
            // The operator changes the system; a capsule (or a server) granted the management
            // topics may read it, never install, grant, commit or stop: a jailbroken agent
            // holding such a grant still cannot widen its own reach.
            Ok(r) if !read_only(r) && !incoming.origin.may_change_the_system() => Some(format!(
                "refused: {} changes the system, which is the operator's; a capsule or an MCP server may only read through the management API",
                r.method_name()
            )),
            // Fail closed: what changes state needs the audit trail; Shutdown stays possible.
            Ok(r) if !read_only(r) && !matches!(r, KernelRequest::Shutdown { .. }) => kernel
                .audit_writable()
                .err()
                .map(|why| format!("refused: {why}; only reads and Shutdown are served until it can be written")),
            _ => None,
        };
        if let Ok(KernelRequest::McpCall { server, tool, arguments }) = &request
            && refused.is_none()
        {
            // A tool call may take a minute: answered from a task of its own.
            let call = (server.clone(), tool.clone(), arguments.clone());
            tokio::spawn(mcp_call(Arc::clone(&kernel), call, caller, reply_topic, requester));
            continue;
        }
        if let Ok(KernelRequest::CallTool { name, arguments, call_id }) = &request
            && refused.is_none()
            && let Some(client) = caller.client
        {
            // A tool call may wait on a person and a command: answered from a task of its own.
            let call = super::tool_call::Request {
                name: name.clone(),
                arguments: arguments.clone(),
                call_id: call_id.clone(),
                client,
                principal: caller.principal.clone(),
                actor: caller.actor.clone(),
                workspace: caller.workspace.clone(),
            };
            let kernel = Arc::clone(&kernel);
            tokio::spawn(async move {
                let called = super::tool_call::call(&kernel, call).await;
                kernel.reply(&reply_topic, KernelResponse::success(&called), requester);
            });
            continue;
        }
        if let Ok(listing @ KernelRequest::ListTools) = &request
            && refused.is_none()
            && rate_limit(listing).is_none_or(|max| limiter.allow(listing.method_name(), max, Instant::now()))
        {
            // The describers are waited for (up to a few seconds): answered from a task of its
            // own, so the router goes on serving meanwhile. (Over the rate limit, the request
            // goes the common way and is refused there.)
            let read = routine_read(&incoming, &caller, listing.audit_action());
            let kernel = Arc::clone(&kernel);
            tokio::spawn(async move {
                let listing = super::tool_listing::list(&kernel).await;
                kernel.record_routine(read);
                kernel.reply(&reply_topic, KernelResponse::success(&listing), requester);
            });
            continue;
        }
        let (response, after, verdict) = match (&request, refused) {
            (Err(problem), _) => (KernelResponse::Error(problem.clone()), None, Err(problem.clone())),
            (Ok(_), Some(reason)) => (KernelResponse::Error(reason.clone()), None, Err(reason)),
            (Ok(request), None) if answered_from_memory(request) => {
                answer(&kernel, &mut limiter, request.clone(), &caller)
            }
            // Still in order (the router waits for it), but off the async worker it ran on.
            (Ok(request), None) => crate::blocking::off_the_worker(|| {
                let generation = kernel.capsules_generation();
                let answered = answer(&kernel, &mut limiter, request.clone(), &caller);
                let changed = kernel.capsules_generation();
                // A change to which capsules run is in effect once the host applied it.
                if changed != generation && !kernel.capsules_applied().wait_for(changed, APPLY_WAIT) {
                    log::warn!(
                        "{}: the capsule host did not apply the change within {APPLY_WAIT:?}; answering anyway",
                        request.method_name()
                    );
                }
                answered
            }),
        };
        // Reads are routine (a status bar may poll); changes and refusals are worth a line.
        let routine =
            matches!(&request, Ok(r) if rate_limit(r).is_none()) && !matches!(response, KernelResponse::Error(_));
        let level = if routine { log::Level::Debug } else { log::Level::Info };
        log::log!(
            level,
            "management: {} from {:?} -> {}",
            incoming.message.topic,
            incoming.origin,
            response_kind(&response)
        );
        let action = request.as_ref().map_or("management.malformed", KernelRequest::audit_action);
        match verdict {
            Ok(()) if request.as_ref().is_ok_and(read_only) => {
                kernel.record_routine(routine_read(&incoming, &caller, action));
            }
            verdict => {
                let (decision, rule) = match &verdict {
                    Ok(()) => (Decision::Allow, caller.authority),
                    Err(reason) => (Decision::Deny, reason.as_str()),
                };
                let topic = &incoming.message.topic;
                kernel.record(&caller.principal, caller.actor.clone(), action, topic, decision, rule);
            }
        }
        kernel.reply(&reply_topic, response, requester);
        if let Some(reason) = after {
            kernel.request_shutdown(reason);
        }
    }
}

/// The audit record of a read-only request served: routine (see [`super::routine`]).
fn routine_read(incoming: &BusMessage, caller: &Caller, action: &'static str) -> super::routine::Kind {
    super::routine::Kind {
        instance: None,
        turn: None,
        principal: caller.principal.clone(),
        // Whichever connection asks, it is the local operator reading (so a status bar
        // polling from a new connection each time stays one kind); a capsule is itself.
        actor: match incoming.origin {
            Origin::Client { .. } => Actor::Operator,
            _ => caller.actor.clone(),
        },
        action,
        resource: incoming.message.topic.clone(),
        rule: caller.authority.into(),
    }
}

/// The rule that allows a client's management request.
const OPERATOR: &str = "local operator (same uid, session token)";
/// The rule that allows a capsule's: its grant let it publish on the request topic (that
/// check is an audit entry of its own, with the grant's fingerprint).
const CAPSULE_GRANT: &str = "the capsule's grant covers ipc_publish on the request topic";
/// The rule for a request the daemon made itself.
const DAEMON: &str = "the daemon itself";

/// `McpCall`: the operator's own call, audited as `mcp.call` (the operator is the one who
/// would approve it), answered with an [`McpCallResult`](crate::types::management::McpCallResult).
async fn mcp_call(
    kernel: Arc<Kernel>,
    (server, tool, arguments): (String, String, serde_json::Value),
    caller: Caller,
    reply_topic: String,
    requester: Option<Address>,
) {
    let name = format!("{server}:{tool}");
    let response = match kernel.mcp() {
        None => KernelResponse::Error("this daemon runs no MCP servers".to_owned()),
        Some(mcp) => match Arc::clone(mcp).call(server, tool, arguments).await {
            Ok(outcome) => KernelResponse::success(&outcome),
            Err(error) => KernelResponse::Error(error.to_string()),
        },
    };
    let (decision, rule) = match &response {
        KernelResponse::Error(reason) => (Decision::Deny, reason.clone()),
        // Made without an approval prompt: the operator is the one who would approve it (a
        // capsule granted the request topic acts with the operator's authority, and says so).
        _ if caller.authority == OPERATOR => (Decision::Allow, "the local operator (astrid mcp call)".to_owned()),
        _ => (Decision::Allow, caller.authority.to_owned()),
    };
    kernel.record(&caller.principal, caller.actor.clone(), "mcp.call", &name, decision, &rule);
    kernel.reply(&reply_topic, response, requester);
}

/// Who sent a management request.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) principal: String,
    /// Who the audit trail names: the requester's [`Origin`].
    pub(super) actor: Actor,
    /// Why the requester may ask at all (the rule of its audit entries).
    pub(super) authority: &'static str,
    /// The workspace the request acts on (`None`: the daemon's): the one the requesting
    /// connection named, or that of the turn a capsule is working for.
    pub(super) workspace: Option<Arc<std::path::PathBuf>>,
    /// The requesting connection, when a client asks.
    pub(super) client: Option<super::bus::SubscriberId>,
}

impl Caller {
    fn of(kernel: &Kernel, incoming: &BusMessage) -> Self {
        let (authority, workspace) = match &incoming.origin {
            Origin::Client { subscriber, .. } => (OPERATOR, kernel.client_workspace(*subscriber)),
            Origin::Capsule { .. } => (CAPSULE_GRANT, incoming.cause.as_ref().and_then(|c| c.workspace.clone())),
            Origin::Kernel | Origin::McpServer { .. } => (DAEMON, None),
        };
        Self {
            principal: incoming.message.principal.clone().unwrap_or_else(|| DEFAULT_PRINCIPAL.to_owned()),
            actor: kernel.actor_of(&incoming.origin),
            authority,
            workspace,
            client: incoming.origin.client(),
        }
    }
}

fn decode(payload: &IpcPayload) -> Result<KernelRequest, String> {
    match payload {
        // Read in place (`&Value` is a deserializer): the request is not copied first.
        IpcPayload::RawJson(value) => {
            KernelRequest::deserialize(value).map_err(|e| format!("malformed management request: {e}"))
        }
        other => Err(format!(
            "management requests must carry a raw_json payload, got {}",
            other
                .to_guest_value()
                .get("type")
                .and_then(|t| t.as_str())
                .map_or("an untagged payload".to_owned(), |t| format!("`{t}`"))
        )),
    }
}

/// Applies the rate limit, then answers. The third value is the audit verdict: `Ok` when
/// the request was served, `Err(reason)` when it was refused before being served.
fn answer(
    kernel: &Kernel,
    limiter: &mut SlidingWindow,
    request: KernelRequest,
    caller: &Caller,
) -> (KernelResponse, Option<ShutdownReason>, Result<(), String>) {
    let method = request.method_name();
    if let Some(max) = rate_limit(&request)
        && !limiter.allow(method, max, Instant::now())
    {
        let message = format!("Rate limited: max {max} {method} requests per minute");
        return (KernelResponse::Error(message.clone()), None, Err(message));
    }
    let (response, after) = handle(kernel, request, caller);
    (response, after, Ok(()))
}

/// Answers one request; the second value is work to do after the reply went out.
fn handle(kernel: &Kernel, request: KernelRequest, caller: &Caller) -> (KernelResponse, Option<ShutdownReason>) {
    match request {
        KernelRequest::GetStatus => (KernelResponse::Status(Box::new(kernel.status())), None),
        KernelRequest::ListCapsules => (KernelResponse::success(&kernel.capsules().names()), None),
        KernelRequest::GetCommands => (KernelResponse::Commands(kernel.capsules().commands()), None),
        KernelRequest::GetCapsuleMetadata => (KernelResponse::CapsuleMetadata(kernel.capsules().metadata()), None),
        KernelRequest::ReloadCapsules => {
            kernel.reload_capsules();
            (KernelResponse::success(&DaemonAction { status: DaemonActionStatus::Reloaded }), None)
        }
        KernelRequest::Shutdown { reason } => (
            KernelResponse::success(&DaemonAction { status: DaemonActionStatus::ShuttingDown }),
            Some(ShutdownReason::Request(reason)),
        ),
        KernelRequest::InstallCapsule { source, workspace } => {
            (super::capsule_admin::install(kernel, &source, workspace, caller), None)
        }
        KernelRequest::RemoveCapsule { name, workspace } => {
            (super::capsule_admin::remove(kernel, &name, workspace, caller), None)
        }
        KernelRequest::DescribeCapsules => (super::capsule_admin::describe(kernel), None),
        KernelRequest::ApproveCapability { request_id, signature } => {
            (approve(kernel, &request_id, &signature, caller), None)
        }
        KernelRequest::ListCapabilities => (list_capabilities(kernel), None),
        KernelRequest::RevokeCapability { id } => (revoke(kernel, &id, caller), None),
        KernelRequest::KvGet { .. }
        | KernelRequest::KvSet { .. }
        | KernelRequest::KvDelete { .. }
        | KernelRequest::KvList { .. } => (super::operator_kv::handle(kernel, request, &caller.principal), None),
        KernelRequest::WorkspaceDiff => (workspace(kernel, WorkspaceAction::Diff, caller), None),
        KernelRequest::WorkspaceCommit => (workspace(kernel, WorkspaceAction::Commit, caller), None),
        KernelRequest::WorkspaceDiscard => (workspace(kernel, WorkspaceAction::Discard, caller), None),
        KernelRequest::McpList => {
            let listing =
                kernel.mcp().map_or_else(|| McpListing { servers: Vec::new(), refused: Vec::new() }, |mcp| mcp.list());
            (KernelResponse::success(&listing), None)
        }
        // Served by `mcp_call`, from a task of its own.
        KernelRequest::McpCall { .. } => (KernelResponse::Error("an MCP call is answered on its own".to_owned()), None),
        KernelRequest::AuditAcknowledge { note } => (acknowledge(kernel, note.as_deref(), caller), None),
        KernelRequest::GetInstructions => {
            let files = super::instructions::load(kernel, caller.workspace.as_deref().map(|p| p.as_path()));
            (KernelResponse::success(&files), None)
        }
        // Served by `tool_listing`, from a task of its own.
        KernelRequest::ListTools => (KernelResponse::Error("the tool listing is answered on its own".to_owned()), None),
        // Served by `tool_call`, from a task of its own, when a connection asks.
        KernelRequest::CallTool { .. } => {
            (KernelResponse::Error("only a client connection may call a tool this way".to_owned()), None)
        }
        KernelRequest::CancelToolCall { call_id } => {
            (KernelResponse::success(&super::tool_call::cancel(kernel, caller.client, &call_id)), None)
        }
    }
}

/// `AuditAcknowledge`: each break acknowledged is an `audit.acknowledge` entry in the log
/// that holds it, naming the break's record and carrying the operator's note.
fn acknowledge(kernel: &Kernel, note: Option<&str>, caller: &Caller) -> KernelResponse {
    let note = note.map(str::trim).filter(|note| !note.is_empty()).unwrap_or("acknowledged by the local operator");
    match kernel.acknowledge_audit(caller.actor.clone(), note) {
        Ok(acknowledged) => KernelResponse::success(&AuditAcknowledged {
            acknowledged: acknowledged
                .into_iter()
                .map(|(principal, found)| AcknowledgedBreak {
                    principal,
                    entry: found.first_bad_seq,
                    reason: found.reason,
                    recorded_at: found.recorded_at,
                    acknowledged_at: found.acknowledged_at,
                })
                .collect(),
        }),
        Err(reason) => KernelResponse::Error(reason),
    }
}

fn approve(kernel: &Kernel, request_id: &str, signature: &str, caller: &Caller) -> KernelResponse {
    match kernel.grants().approve(request_id, signature) {
        Ok(grant) => {
            kernel.refresh_grants();
            let rule = format!("operator approval of {}", &grant.fingerprint[..16]);
            kernel.record(
                &caller.principal,
                caller.actor.clone(),
                "capability.grant",
                &grant.capsule,
                Decision::Allow,
                &rule,
            );
            KernelResponse::success(&GrantApproved { capsule: grant.capsule, fingerprint: grant.fingerprint })
        }
        Err(e) => {
            kernel.record(
                &caller.principal,
                caller.actor.clone(),
                "capability.grant",
                request_id,
                Decision::Deny,
                &e.to_string(),
            );
            KernelResponse::Error(e.to_string())
        }
    }
}

fn list_capabilities(kernel: &Kernel) -> KernelResponse {
    match kernel.grants().list() {
        Ok(grants) => KernelResponse::success(&CapabilityListing {
            grants,
            pending: kernel.grants().pending_list(),
            allowances: kernel.approvals().list(),
        }),
        Err(e) => KernelResponse::Error(format!("cannot read grants: {e}")),
    }
}

fn revoke(kernel: &Kernel, id: &str, caller: &Caller) -> KernelResponse {
    let revoked = kernel.grants().revoke(id).and_then(|grant| Ok(grant || kernel.approvals().revoke(id)?));
    match revoked {
        Ok(true) => {
            kernel.refresh_grants();
            kernel.record(&caller.principal, caller.actor.clone(), "capability.revoke", id, Decision::Info, "operator");
            KernelResponse::success(&Revoked { revoked: id.to_owned() })
        }
        Ok(false) => KernelResponse::Error(format!("no grant or allowance named {id}")),
        Err(e) => KernelResponse::Error(format!("cannot revoke {id}: {e}")),
    }
}

/// What an operator asks of the workspace's pending changes. Its own type, so each request
/// names its action and no catch-all can discard the overlay.
#[derive(Debug, Clone, Copy)]
enum WorkspaceAction {
    Diff,
    Commit,
    Discard,
}

fn workspace(kernel: &Kernel, action: WorkspaceAction, caller: &Caller) -> KernelResponse {
    let vfs = match kernel.workspace(caller.workspace.as_deref().map(|p| p.as_path())) {
        Ok(vfs) => vfs,
        Err(e) => return KernelResponse::Error(format!("cannot open the workspace: {e}")),
    };
    let result = match action {
        WorkspaceAction::Diff => {
            vfs.diff().and_then(|diff| Ok(KernelResponse::success(&WorkspaceDiff { diff, changes: vfs.changes()? })))
        }
        WorkspaceAction::Commit => vfs.commit().map(|committed| {
            for change in &committed {
                let action = format!("workspace.commit.{}", change.kind.as_str());
                kernel.record(
                    &caller.principal,
                    caller.actor.clone(),
                    &action,
                    &change.path,
                    Decision::Allow,
                    "operator commit",
                );
            }
            KernelResponse::success(&WorkspaceCommitted { committed })
        }),
        WorkspaceAction::Discard => vfs.discard().map(|discarded| {
            let rule = format!("operator discarded {discarded} change(s)");
            kernel.record(&caller.principal, caller.actor.clone(), "workspace.discard", "*", Decision::Info, &rule);
            KernelResponse::success(&WorkspaceDiscarded { discarded: u64::try_from(discarded).unwrap_or(u64::MAX) })
        }),
    };
    result.unwrap_or_else(|e| KernelResponse::Error(e.to_string()))
}

fn response_kind(response: &KernelResponse) -> String {
    match response {
        KernelResponse::Error(message) => format!("Error({message})"),
        other => other.kind().to_owned(),
    }
}

impl Kernel {
    /// Publishes `response` on `topic`, addressed to `requester` only. A requester with no
    /// address (the kernel itself, an MCP server: neither waits for a reply) gets nothing, so
    /// a reply is never broadcast to whoever subscribes to the topic. It is rendered to JSON
    /// text here, once ([`IpcPayload::Reply`]): the client's writer copies that text into the
    /// frame, where a `RawJson` tree cost a tree built, walked and freed per reply (about a
    /// quarter of the daemon's instructions per `GetStatus`).
    pub fn reply(&self, topic: &str, response: KernelResponse, requester: Option<Address>) {
        let Some(requester) = requester else {
            log::debug!("management: {topic} {} not published: nobody to answer", response_kind(&response));
            return;
        };
        let payload = match crate::types::RenderedReply::of(&response) {
            Ok(reply) => IpcPayload::Reply(reply),
            Err(e) => {
                log::error!("cannot encode management reply on {topic}: {e}");
                return;
            }
        };
        let message = crate::types::IpcMessage::new(topic, payload, self.session());
        self.bus().publish(BusMessage::from_kernel(message).to(Some(requester)));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn response_topic_keeps_the_suffix() {
        assert_eq!(response_topic("astrid.v1.request.status"), "astrid.v1.response.status");
        assert_eq!(response_topic("astrid.v1.request.a.b"), "astrid.v1.response.a.b");
    }

    #[test]
    fn non_raw_json_payloads_and_bad_requests_are_explained() {
        let custom = IpcPayload::Custom { data: json!({"method": "GetStatus"}) };
        assert!(decode(&custom).expect_err("custom").contains("raw_json"));
        let shutdown = IpcPayload::RawJson(json!({"method": "Shutdown"}));
        assert!(decode(&shutdown).expect_err("no params").starts_with("malformed management request"));
        let ok = IpcPayload::RawJson(json!({"method": "GetStatus"}));
        assert_eq!(decode(&ok), Ok(KernelRequest::GetStatus));
    }
}
