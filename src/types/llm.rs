//! LLM conversation types: messages, tool calls, streaming events and responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Instructions for the model.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: MessageRole,
    /// What it says.
    pub content: MessageContent,
}

/// The body of a message. Untagged: the JSON shape decides, tried in declaration order, so
/// `[]` is `ToolCalls(vec![])` and a non-empty array of `{"type": …}` parts is `MultiPart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text (a JSON string).
    Text(String),
    /// Tool calls made by the assistant.
    ToolCalls(Vec<ToolCall>),
    /// The result of one tool call.
    ToolResult(ToolCallResult),
    /// Text and images.
    MultiPart(Vec<ContentPart>),
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// UTF-8, any length.
        text: String,
    },
    /// An image, base64-encoded.
    Image {
        /// Base64 data.
        data: String,
        /// MIME type, for example `image/png`.
        media_type: String,
    },
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Correlates the call with its result.
    pub id: String,
    /// `server:tool` for MCP tools, a bare name otherwise.
    pub name: String,
    /// The arguments, as the model produced them.
    pub arguments: Value,
}

impl ToolCall {
    /// A call with empty (`{}`) arguments.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self { id: id.into(), name: name.into(), arguments: Value::Object(serde_json::Map::new()) }
    }

    /// Splits `server:tool` at the first `:` (`"a:b:c"` → `("a", "b:c")`); `None` without a colon.
    pub fn parse_name(&self) -> Option<(&str, &str)> {
        self.name.split_once(':')
    }
}

/// The outcome of a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallResult {
    /// The call this answers.
    pub call_id: String,
    /// The output, as text.
    pub content: String,
    /// Whether the tool failed.
    #[serde(default)]
    pub is_error: bool,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmToolDefinition {
    /// The tool name.
    pub name: String,
    /// What it does (always serialized, `null` when absent).
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default = "default_input_schema")]
    pub input_schema: Value,
}

fn default_input_schema() -> Value {
    serde_json::json!({"type": "object"})
}

/// One event of a streamed completion. Externally tagged, PascalCase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// A piece of the answer.
    TextDelta(String),
    /// A tool call begins.
    ToolCallStart {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// A piece of a tool call's JSON arguments.
    ToolCallDelta {
        /// Call id.
        id: String,
        /// The next fragment of the arguments.
        args_delta: String,
    },
    /// A tool call is complete.
    ToolCallEnd {
        /// Call id.
        id: String,
    },
    /// A piece of the model's reasoning.
    ReasoningDelta(String),
    /// Token counts.
    Usage(Usage),
    /// The stream ended normally.
    Done,
    /// The stream failed.
    Error(String),
}

/// A complete (non-streamed) completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// The assistant message.
    pub message: Message,
    /// Whether the message holds tool calls.
    pub has_tool_calls: bool,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Token counts.
    pub usage: Usage,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// The token limit was hit.
    MaxTokens,
    /// The model wants tools run.
    ToolUse,
    /// A stop sequence was produced.
    StopSequence,
}

/// Token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: usize,
    /// Completion tokens.
    pub output_tokens: usize,
}

impl Usage {
    /// Input plus output, saturating.
    pub fn total(&self) -> usize {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}
