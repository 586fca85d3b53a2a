//! What a tool provider answers to a describe request: the reference's shape, and the
//! `pending` Astrid adds so an agent can wait for tools that are still starting.

use serde::{Deserialize, Serialize};

use super::llm::LlmToolDefinition;

/// A describe answer on [`TOOL_DESCRIBED_PREFIX`](super::topics::TOOL_DESCRIBED_PREFIX) and
/// the provider's name, carried as a `raw_json` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsDescribed {
    /// The tools it offers now.
    pub tools: Vec<LlmToolDefinition>,
    /// What the provider is, in a few words.
    pub description: String,
    /// Astrid extension: sources of tools still starting (an MCP server initializing); a
    /// second answer follows once they settled. Empty when none (the reference's answer).
    #[serde(default)]
    pub pending: Vec<String>,
}
