//! What a tool provider answers to a describe request: the reference's shape, plus the
//! `pending` Astrid adds so an agent can wait for tools that are still starting, and the
//! `approval` it adds so a person can see which tools ask before they act.

use std::collections::BTreeMap;

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
    /// Astrid extension: whether each tool (by name) asks a person before it acts. A tool
    /// the map does not name has not said (a reference provider's answer carries no map, and
    /// then none is sent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub approval: BTreeMap<String, ToolApproval>,
}

/// Whether a tool asks a person before it acts (what `astrid tools list` shows). It is the
/// provider's own statement about its code: the kernel's approvals are what enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolApproval {
    /// Every call asks first (a standing allowance, for the session or always, answers for
    /// the person).
    Asks,
    /// It acts within its capsule's grant without asking (reading, listing).
    Never,
}

impl ToolApproval {
    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asks => "asks",
            Self::Never => "never",
        }
    }
}
