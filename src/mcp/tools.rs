//! MCP tools for agents: the bus side.
//!
//! Answers `tool.v1.request.describe` with every ready server's tools named `server:tool`
//! (on `tool.v1.response.describe.mcp`; servers still starting are listed as `pending`, and
//! a second answer follows once they settled), and serves `tool.v1.execute.<server:tool>` like a
//! tool capsule would: each call is asked of the person through the kernel's approval flow
//! (`mcp.call` on `server:tool`, so "allow for the session" and "always" work as for any
//! capsule), then made within the server's call timeout, and answered on
//! `tool.v1.execute.<server:tool>.result`. A `tool_cancel_request` naming the call cancels it,
//! at the server too. Every call is audited (`mcp.call`) with how it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use super::host::McpHost;
use crate::audit::Decision;
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::approval::{ApprovalOutcome, ApprovalRequest};
use crate::kernel::{BusMessage, Cause, Kernel, Origin, Subscription};
use crate::types::topics::{
    TOOL_CANCEL_TOPIC, TOOL_DESCRIBE_TOPIC, TOOL_DESCRIBED_PREFIX, TOOL_EXECUTE_PATTERN, TOOL_EXECUTE_PREFIX,
};
use crate::types::{IpcMessage, IpcPayload, LlmToolDefinition, ToolApproval, ToolCall, ToolCallResult, ToolsDescribed};

/// The name this provider answers describe requests under.
const PROVIDER: &str = "mcp";

/// Publishes a describe answer: the tools, and the servers whose tools are still to come.
async fn describe(kernel: &Kernel, tools: Vec<LlmToolDefinition>, pending: Vec<String>, cause: Option<Arc<Cause>>) {
    // Every call of an MCP tool is asked of a person (`mcp.call`), whichever tool it is.
    let approval = tools.iter().map(|tool| (tool.name.clone(), ToolApproval::Asks)).collect();
    let answer = ToolsDescribed { tools, description: "MCP servers".to_owned(), pending, approval };
    match serde_json::to_value(answer) {
        Ok(value) => {
            let topic = format!("{TOOL_DESCRIBED_PREFIX}{PROVIDER}");
            // The list speaks for every server: the kernel's MCP host publishes it.
            publish(kernel, Origin::Kernel, &topic, IpcPayload::RawJson(value), cause).await;
        }
        Err(e) => log::error!("cannot encode the MCP tools: {e}"),
    }
}

/// Calls in flight, by call id: dropping the sender cancels the call.
type InFlight = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// Serves agents' tool traffic for `host`, on a task of its own, until the bus goes away.
/// Subscribed before the task exists: one that subscribed when first polled could miss what
/// was published meanwhile (see the kernel's `router::start`).
pub fn start(kernel: &Arc<Kernel>, host: Arc<McpHost>) -> tokio::task::JoinHandle<()> {
    let requests = kernel.bus().subscribe("mcp-tools", &[TOOL_DESCRIBE_TOPIC, TOOL_EXECUTE_PATTERN, TOOL_CANCEL_TOPIC]);
    tokio::spawn(serve(Arc::clone(kernel), host, requests))
}

async fn serve(kernel: Arc<Kernel>, host: Arc<McpHost>, mut requests: Subscription) {
    let in_flight: InFlight = Arc::default();
    while let Some(incoming) = requests.recv().await {
        let topic = incoming.message.topic.as_str();
        if topic == TOOL_DESCRIBE_TOPIC {
            // The ready servers' tools now; servers still starting are named as pending, and
            // a second answer follows once they are up (or given up on), so a first turn on
            // a cold daemon is offered every tool.
            let (tools, pending) = (host.tool_descriptions(), host.starting());
            let more_to_come = !pending.is_empty();
            if !tools.is_empty() || more_to_come {
                describe(&kernel, tools, pending, incoming.cause.clone()).await;
            }
            if more_to_come {
                let (kernel, host, cause) = (Arc::clone(&kernel), Arc::clone(&host), incoming.cause.clone());
                tokio::spawn(async move {
                    host.settled().await;
                    describe(&kernel, host.tool_descriptions(), host.starting(), cause).await;
                });
            }
        } else if topic == TOOL_CANCEL_TOPIC {
            let payload = incoming.message.payload.to_guest_value();
            let mut in_flight = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for id in payload["call_ids"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if let Some(cancel) = in_flight.remove(id) {
                    let _ = cancel.send(());
                }
            }
        } else if let Some(addressed) = topic.strip_prefix(TOOL_EXECUTE_PREFIX).filter(|n| !n.ends_with(".result")) {
            let IpcPayload::ToolExecuteRequest { call_id, tool_name, arguments } = &incoming.message.payload else {
                continue;
            };
            // The topic is what the publisher's grant was checked against: the name inside
            // the payload must not name another tool.
            if tool_name != addressed {
                log::warn!("ignoring a call of {tool_name:?} published on {topic}");
                continue;
            }
            let requested = ToolCall { id: call_id.clone(), name: tool_name.clone(), arguments: arguments.clone() };
            let Some((server, tool)) = requested.parse_name().filter(|(server, _)| host.has_server(server)) else {
                continue;
            };
            let principal = incoming.message.principal.clone().unwrap_or_else(|| DEFAULT_PRINCIPAL.to_owned());
            let call = Call {
                cause: incoming.cause.clone(),
                principal,
                server: server.to_owned(),
                tool: tool.to_owned(),
                call_id: requested.id.clone(),
                arguments: requested.arguments.clone(),
            };
            let (cancel, cancelled) = oneshot::channel();
            in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(call.call_id.clone(), cancel);
            let (kernel, host, in_flight) = (Arc::clone(&kernel), Arc::clone(&host), Arc::clone(&in_flight));
            tokio::spawn(async move {
                let (content, is_error) = execute(&kernel, &host, &call, cancelled).await;
                in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&call.call_id);
                let result = IpcPayload::ToolExecuteResult {
                    call_id: call.call_id.clone(),
                    result: ToolCallResult { call_id: call.call_id.clone(), content, is_error },
                };
                let topic = format!("{TOOL_EXECUTE_PREFIX}{}:{}.result", call.server, call.tool);
                let server = Origin::McpServer { name: call.server.clone() };
                publish(&kernel, server, &topic, result, call.cause.clone()).await;
            });
        }
    }
}

struct Call {
    /// The turn the call belongs to: its approval is asked of that turn's frontend.
    cause: Option<Arc<Cause>>,
    principal: String,
    server: String,
    tool: String,
    call_id: String,
    arguments: Value,
}

/// Approval, then the call; the result text and whether it is an error.
async fn execute(kernel: &Kernel, host: &McpHost, call: &Call, cancelled: oneshot::Receiver<()>) -> (String, bool) {
    let name = format!("{}:{}", call.server, call.tool);
    let server = Origin::McpServer { name: call.server.clone() };
    let actor = || server.actor();
    let mut request = ApprovalRequest::new(&call.principal, server.clone(), "mcp.call", &name);
    request.cause = call.cause.clone();
    request.details = Some(arguments_preview(&call.arguments));
    if let ApprovalOutcome::Denied { reason } = kernel.request_approval(request).await {
        kernel.record(&call.principal, actor(), "mcp.call", &name, Decision::Deny, &reason);
        return (format!("{name} was not run: the user did not approve ({reason})"), true);
    }
    let cancel = async {
        // A dropped sender (the call finished) is not a cancel.
        if cancelled.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match host.call(&call.server, &call.tool, call.arguments.clone(), cancel).await {
        Ok(outcome) => {
            let how = if outcome.is_error { "the tool reported an error" } else { "ok" };
            kernel.record(&call.principal, actor(), "mcp.call", &name, Decision::Allow, how);
            (outcome.text, outcome.is_error)
        }
        Err(error) => {
            let reason = error.to_string();
            kernel.record(&call.principal, actor(), "mcp.call", &name, Decision::Allow, &format!("failed: {reason}"));
            (reason, true)
        }
    }
}

/// The arguments of a call as the person approving it reads them: pretty JSON.
fn arguments_preview(arguments: &Value) -> String {
    let pretty = serde_json::to_string_pretty(arguments).unwrap_or_else(|_| arguments.to_string());
    format!("arguments:\n{pretty}")
}

/// Publishes for `cause`'s turn, paced to the speed of the readers: as a server (its tool's
/// result), or as the kernel's MCP host (the tool list, which speaks for every server).
async fn publish(kernel: &Kernel, origin: Origin, topic: &str, payload: IpcPayload, cause: Option<Arc<Cause>>) {
    let message = IpcMessage::new(topic, payload, kernel.session());
    kernel.bus().publish_paced(BusMessage::from(origin, message).caused_by(cause)).await;
}
