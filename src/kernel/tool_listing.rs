//! `ListTools`: the tools the agent is offered now, asked the way the agent asks.
//!
//! The kernel publishes `tool.v1.request.describe` and gathers the answers on
//! `tool.v1.response.describe.*`, as the orchestrator does before a turn. Who serves each tool
//! is the answer's [`Origin`], stamped by the bus: a capsule's answer is that capsule's, and
//! the kernel's own MCP bridge answers for its servers (`server:tool`). What a provider
//! writes about itself decides only the description and whether a tool asks before it acts.
//!
//! The wait is bounded: it ends once every capsule the request reached has answered and the
//! bus stayed quiet for [`QUIET`] (the MCP bridge answers at once from what it knows), or
//! after [`WINDOW`]; capsules that did not answer by then are named.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::Kernel;
use super::bus::{BusMessage, Origin};
use crate::types::management::{ListedTool, ToolListing, ToolOrigin};
use crate::types::topics::{TOOL_DESCRIBE_TOPIC, TOOL_DESCRIBED_PATTERN, TOOL_DESCRIBED_PREFIX};
use crate::types::{IpcMessage, IpcPayload, LlmToolDefinition, ToolApproval};

/// The longest the kernel waits for describers.
const WINDOW: Duration = Duration::from_secs(3);
/// The quiet after the last answer that ends the wait, once every capsule answered.
const QUIET: Duration = Duration::from_millis(100);
/// The provider name under which the MCP bridge answers.
const MCP_PROVIDER: &str = "mcp";

/// One describer's latest answer.
#[derive(Debug, Default)]
struct Answer {
    origin: Option<Origin>,
    tools: Vec<LlmToolDefinition>,
    pending: Vec<String>,
    approval: BTreeMap<String, ToolApproval>,
}

/// Asks every tool provider to describe its tools and lists what came back in time.
pub(super) async fn list(kernel: &Kernel) -> ToolListing {
    // Capsules still starting at boot would not hear the request: their tools would be missing.
    kernel.start_gate().passed().await;
    let mut answers = kernel.bus().subscribe("tool-listing", &[TOOL_DESCRIBED_PATTERN]);
    let request = IpcMessage::new(
        TOOL_DESCRIBE_TOPIC,
        IpcPayload::Custom { data: Value::Object(Default::default()) },
        kernel.session(),
    );
    let (_, reached) = kernel.bus().publish_traced(BusMessage::from_kernel(request));
    let mut waiting: Vec<String> = reached.into_iter().map(|r| r.capsule).collect();
    let deadline = Instant::now() + WINDOW;
    // By provider name (the topic's last segment): a provider's later answer replaces its
    // earlier one, as for the agent.
    let mut described: BTreeMap<String, Answer> = BTreeMap::new();
    loop {
        let until = if waiting.is_empty() { (Instant::now() + QUIET).min(deadline) } else { deadline };
        let Ok(Some(message)) = tokio::time::timeout_at(until, answers.recv()).await else { break };
        let Some(provider) = message.message.topic.strip_prefix(TOOL_DESCRIBED_PREFIX) else { continue };
        if let Origin::Capsule { name, .. } = &message.origin {
            waiting.retain(|capsule| capsule != name);
        }
        let payload = message.message.payload.to_guest_value();
        let answer = described.entry(provider.to_owned()).or_default();
        answer.origin = Some(message.origin.clone());
        answer.tools = decoded(&payload["tools"]);
        answer.pending = decoded(&payload["pending"]);
        answer.approval = decoded(&payload["approval"]);
    }
    let mut listing = ToolListing { tools: Vec::new(), pending: Vec::new(), unanswered: waiting };
    for (provider, answer) in described {
        listing.pending.extend(answer.pending);
        for tool in answer.tools {
            let Some(origin) = origin_of(answer.origin.as_ref(), &provider, &tool.name) else { continue };
            // The agent offers a name once (the first provider's) and only names a topic can carry.
            if !valid_tool_name(&tool.name) || listing.tools.iter().any(|t| t.name == tool.name) {
                continue;
            }
            listing.tools.push(ListedTool {
                approval: answer.approval.get(&tool.name).copied(),
                name: tool.name,
                description: tool.description,
                origin,
                input_schema: Some(tool.input_schema),
            });
        }
    }
    kernel.tool_calls().remember(&listing);
    listing
}

/// A field of a describe answer, or its default when absent or malformed (a provider that
/// says less is listed with less, not dropped).
fn decoded<T: serde::de::DeserializeOwned + Default>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Who serves `tool`, from who published the answer: a capsule, or (the kernel's MCP bridge,
/// answering as `mcp`) the server named before the tool's colon.
fn origin_of(origin: Option<&Origin>, provider: &str, tool: &str) -> Option<ToolOrigin> {
    match origin? {
        Origin::Capsule { name, .. } => Some(ToolOrigin::Capsule(name.clone())),
        Origin::Kernel if provider == MCP_PROVIDER => {
            tool.split_once(':').map(|(server, _)| ToolOrigin::McpServer(server.to_owned()))
        }
        _ => None,
    }
}

/// The agent's own rule: a tool name becomes a topic segment (no dots, no wildcards).
pub(super) fn valid_tool_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_who_published_never_what_the_answer_says() {
        let capsule = Origin::Capsule { name: "tools-fs".into(), instance: uuid::Uuid::nil() };
        assert_eq!(origin_of(Some(&capsule), "mcp", "read_file"), Some(ToolOrigin::Capsule("tools-fs".into())));
        assert_eq!(origin_of(Some(&Origin::Kernel), "mcp", "time:now"), Some(ToolOrigin::McpServer("time".into())));
        assert_eq!(origin_of(Some(&Origin::Kernel), "fs", "read_file"), None, "the kernel answers only as mcp");
        assert_eq!(origin_of(None, "fs", "x"), None);
        assert!(valid_tool_name("server:tool") && !valid_tool_name("a.b") && !valid_tool_name("*"));
    }
}
