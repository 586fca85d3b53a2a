//! The IPC envelope and its payloads: what travels on the bus and over the socket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::llm::{LlmResponse, LlmToolDefinition, Message, StreamEvent, ToolCallResult};
use super::turn::TurnOutcome;

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpcMessage {
    /// Dot-separated topic, for example `user.v1.prompt`.
    pub topic: String,
    /// The content.
    pub payload: IpcPayload,
    /// Signature bytes, for messages that cross daemons (serialized as `null` when absent).
    #[serde(default)]
    pub signature: Option<Vec<u8>>,
    /// Who sent it (not trusted for provenance).
    pub source_id: Uuid,
    /// When it was created. Missing on the wire → now (host) or the Unix epoch (wasm32,
    /// which has no clock).
    #[serde(default = "default_timestamp")]
    pub timestamp: DateTime<Utc>,
    /// Bus sequence number, stamped on publish; 0 before.
    #[serde(default)]
    pub seq: u64,
    /// The principal the message acts for; omitted when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

#[cfg(not(target_arch = "wasm32"))]
fn default_timestamp() -> DateTime<Utc> {
    Utc::now()
}

#[cfg(target_arch = "wasm32")]
fn default_timestamp() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

#[cfg(not(target_arch = "wasm32"))]
impl IpcMessage {
    /// A message stamped now, with no signature, principal or sequence number yet.
    pub fn new(topic: impl Into<String>, payload: IpcPayload, source_id: Uuid) -> Self {
        Self {
            topic: topic.into(),
            payload,
            signature: None,
            source_id,
            timestamp: Utc::now(),
            seq: 0,
            principal: None,
        }
    }
}

/// What a message carries. Internally tagged by `type` (snake_case).
///
/// Plain serde maps an unknown tag to [`IpcPayload::Unknown`]; the kernel's ingress path
/// uses [`IpcPayload::from_json_value`] instead, which keeps such payloads as
/// [`IpcPayload::Custom`] so capsule-defined messages survive the trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IpcPayload {
    /// Any JSON object; its keys sit next to `type`. Carries every management request and
    /// reply. Serializing a non-object fails.
    RawJson(Value),
    /// A person's input.
    UserInput {
        /// What the person typed, as typed.
        text: String,
        /// The conversation it belongs to.
        #[serde(default = "default_session")]
        session_id: String,
        /// Extra context (for example `{"action": "cancel_turn"}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<Value>,
    },
    /// The agent's answer.
    AgentResponse {
        /// Text not yet streamed for this turn (all of it when nothing streamed).
        text: String,
        /// Whether this ends the turn.
        is_final: bool,
        /// The conversation it belongs to.
        #[serde(default = "default_session")]
        session_id: String,
        /// Astrid extension, on a final response: how the turn ended (absent: answered).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<TurnOutcome>,
    },
    /// A capsule asks the operator for consent.
    ApprovalRequired {
        /// Correlation id; the answer goes to `astrid.v1.approval.response.<id>`.
        request_id: String,
        /// What would be done.
        action: String,
        /// To what.
        resource: String,
        /// Why.
        reason: String,
        /// Astrid extension: what will happen, for the person to see before deciding (a
        /// write's diff, a tool call's arguments, a command line), capped by the kernel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<String>,
        /// Astrid extension: what `approve_session` and `approve_always` would cover (for
        /// example `write_file under notes/`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// The operator's answer to an approval request.
    ApprovalResponse {
        /// The request answered.
        request_id: String,
        /// `approve`, `approve_session`, `approve_always`; anything else denies.
        decision: String,
        /// Why, optionally.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A capsule needs configuration before it can run.
    OnboardingRequired {
        /// The capsule's installed name (the reference's field name).
        capsule_id: String,
        /// What to ask for.
        fields: Vec<OnboardingField>,
    },
    /// A completion request to an LLM provider.
    LlmRequest {
        /// Correlation id.
        request_id: Uuid,
        /// Model name.
        model: String,
        /// The conversation.
        messages: Vec<Message>,
        /// Tools offered.
        tools: Vec<LlmToolDefinition>,
        /// System prompt.
        system: String,
    },
    /// One streamed event of a completion.
    LlmStreamEvent {
        /// Correlation id.
        request_id: Uuid,
        /// A piece of text, of reasoning or of a tool call; usage; the end or a failure.
        event: StreamEvent,
    },
    /// A complete completion.
    LlmResponse {
        /// Correlation id.
        request_id: Uuid,
        /// The whole message, its stop reason and usage.
        response: LlmResponse,
    },
    /// Run a tool.
    ToolExecuteRequest {
        /// Correlation id.
        call_id: String,
        /// As the agent names it: a capsule tool's own name, or `server:tool` for an MCP tool.
        tool_name: String,
        /// What the model passed, unchecked: the tool validates them against its schema.
        arguments: Value,
    },
    /// A tool's outcome.
    ToolExecuteResult {
        /// Correlation id.
        call_id: String,
        /// The outcome.
        result: ToolCallResult,
    },
    /// Cancel running tool calls.
    ToolCancelRequest {
        /// The calls to cancel.
        call_ids: Vec<String>,
    },
    /// Ask the person to pick an option.
    SelectionRequired {
        /// Correlation id.
        request_id: String,
        /// Heading.
        title: String,
        /// The choices.
        options: Vec<SelectionOption>,
        /// Where the choice is published.
        callback_topic: String,
    },
    /// Ask the person for one configuration value.
    ElicitRequest {
        /// Correlation id.
        request_id: Uuid,
        /// The capsule asking.
        capsule_id: String,
        /// What to ask for.
        field: OnboardingField,
    },
    /// The answer to an elicitation; both values absent means cancelled.
    ElicitResponse {
        /// Correlation id.
        request_id: Uuid,
        /// A single value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// A list of values.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        values: Option<Vec<String>>,
    },
    /// A client connected.
    Connect,
    /// A client disconnected.
    Disconnect {
        /// Why, optionally.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Arbitrary JSON under `data`.
    Custom {
        /// The content.
        data: Value,
    },
    /// A management reply the kernel rendered to JSON text once, from its typed value, rather
    /// than building a `RawJson` tree to write out and drop. Host only, and never read from
    /// the wire: its guest rendering is that text (a `RawJson` of the same object, keys in
    /// the reply type's order, which JSON leaves free), and its tagged form is `raw_json`'s.
    #[cfg(not(target_arch = "wasm32"))]
    #[serde(rename = "raw_json", skip_deserializing, serialize_with = "RenderedReply::serialize_tagged")]
    Reply(RenderedReply),
    /// Any tag this version does not know. Serializes as `{"type":"unknown"}`.
    #[serde(other)]
    Unknown,
}

/// A management reply (`{"status": …, "data": …}`) as JSON text: see [`IpcPayload::Reply`].
///
/// Only [`RenderedReply::of`] makes one, so the text is always what serde_json wrote: valid
/// JSON, written into frames as it is.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct RenderedReply(String);

#[cfg(not(target_arch = "wasm32"))]
impl RenderedReply {
    /// Room made for a reply before rendering it: a status reply fits (about 530 bytes). A
    /// buffer grown from serde_json's 128 bytes was reallocated three times per status, then
    /// shrunk once more to box it as a `RawValue`.
    const ROOM: usize = 1024;

    /// Renders `reply` (any value that serializes as a JSON object).
    pub fn of<T: Serialize + ?Sized>(reply: &T) -> serde_json::Result<Self> {
        let mut text = Vec::with_capacity(Self::ROOM);
        serde_json::to_writer(&mut text, reply)?;
        // serde_json writes UTF-8; the check only keeps this free of `unsafe`.
        String::from_utf8(text).map(Self).map_err(serde::ser::Error::custom)
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// The same object as a tree.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }

    /// Serialized as the tree it stands for, so the enum's tag (`raw_json`) joins its keys
    /// with any serializer.
    fn serialize_tagged<S: serde::Serializer>(reply: &Self, serializer: S) -> Result<S::Ok, S::Error> {
        reply.to_value().serialize(serializer)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl PartialEq for RenderedReply {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

fn default_session() -> String {
    "default".to_owned()
}

/// The fields of a `user_input` payload (prompts on `user.v1.prompt`, slash commands on
/// `cli.v1.command.execute`), for code that handles only this kind: a capsule that reads it
/// through this struct links a fraction of the code the whole [`IpcPayload`] decoder needs
/// (measured: a 68 KiB module instead of 240 KiB, and compilation time with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInputFields {
    /// What the person typed, as typed.
    pub text: String,
    /// The conversation it belongs to.
    #[serde(default = "default_session")]
    pub session_id: String,
    /// Extra context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

impl UserInputFields {
    /// The fields of `payload` (guest JSON: the tagged object) if it is a `user_input`.
    pub fn from_payload(payload: &Value) -> Option<Self> {
        if payload.get("type").and_then(Value::as_str) != Some("user_input") {
            return None;
        }
        Self::deserialize(payload).ok()
    }
}

/// The 18 tags [`IpcPayload::from_json_value`] parses strictly.
const KNOWN_TAGS: [&str; 18] = [
    "raw_json",
    "user_input",
    "agent_response",
    "approval_required",
    "approval_response",
    "onboarding_required",
    "llm_request",
    "llm_stream_event",
    "llm_response",
    "tool_execute_request",
    "tool_execute_result",
    "tool_cancel_request",
    "selection_required",
    "elicit_request",
    "elicit_response",
    "connect",
    "disconnect",
    "custom",
];

impl IpcPayload {
    /// Whether `tag` names a variant (case-sensitive; `unknown` is not a tag one may send).
    pub fn is_known_tag(tag: &str) -> bool {
        KNOWN_TAGS.contains(&tag)
    }

    /// Converts client or guest JSON into a payload: a known `type` is parsed strictly, and
    /// anything else (unknown or missing tag, or a known tag with bad fields) is kept whole
    /// as [`IpcPayload::Custom`].
    pub fn from_json_value(mut value: Value) -> Self {
        let tag = value.get("type").and_then(Value::as_str);
        let (raw_json, known) = (tag == Some("raw_json"), tag.is_some_and(Self::is_known_tag));
        if raw_json && let Some(object) = value.as_object_mut() {
            // Every management request has this tag. What the derived deserializer makes of
            // it is the object without its tag, which is taken out here in place: no copy of
            // the tree, no buffering through serde's tagged-enum path (a fifth of the
            // daemon's work per `GetStatus`).
            object.remove("type");
            return Self::RawJson(value);
        }
        // Borrowed, so a payload that does not parse is kept whole without having been copied.
        if known && let Ok(payload) = Self::deserialize(&value) {
            return payload;
        }
        Self::Custom { data: value }
    }

    /// The guest rendering: `RawJson` and `Custom` give their inner value alone; every other
    /// variant its tagged form.
    pub fn to_guest_value(&self) -> Value {
        match self {
            Self::RawJson(value) | Self::Custom { data: value } => value.clone(),
            #[cfg(not(target_arch = "wasm32"))]
            Self::Reply(reply) => reply.to_value(),
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        }
    }

    /// The conversation this payload belongs to, when it names one: the `session_id` of a
    /// user input or an agent response, or a string `session_id` at the top of a custom or
    /// raw JSON object.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Self::UserInput { session_id, .. } | Self::AgentResponse { session_id, .. } => Some(session_id),
            Self::RawJson(value) | Self::Custom { data: value } => value.get("session_id").and_then(Value::as_str),
            // A reply's keys are `status` and `data`: it names no conversation.
            _ => None,
        }
    }

    /// [`IpcPayload::to_guest_value`] as JSON bytes.
    pub fn to_guest_bytes(&self) -> Vec<u8> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Reply(reply) => reply.json().as_bytes().to_vec(),
            other => serde_json::to_vec(&GuestPayload(other)).unwrap_or_default(),
        }
    }
}

/// One configuration value a capsule needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardingField {
    /// The variable name.
    pub key: String,
    /// The question.
    pub prompt: String,
    /// More explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What kind of value.
    pub field_type: OnboardingFieldType,
    /// Suggested value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Input hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
}

/// The kind of an onboarding value. Externally tagged: `"Text"`, `{"Enum": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnboardingFieldType {
    /// Free text.
    Text,
    /// A secret (never echoed).
    Secret,
    /// One of the listed values.
    Enum(Vec<String>),
    /// A list of values.
    Array,
}

/// One choice of a selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionOption {
    /// Returned when chosen.
    pub id: String,
    /// Shown.
    pub label: String,
    /// More explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A daemon → client frame: exactly `topic`, `payload` (guest-rendered) and `source_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressFrame {
    /// The message topic.
    pub topic: String,
    /// The payload, with `RawJson` and `Custom` unwrapped.
    pub payload: Value,
    /// The sender.
    pub source_id: Uuid,
}

impl EgressFrame {
    /// Renders a bus message for a socket client.
    pub fn from_message(message: &IpcMessage) -> Self {
        Self { topic: message.topic.clone(), payload: message.payload.to_guest_value(), source_id: message.source_id }
    }

    /// The JSON of [`EgressFrame::from_message`], byte for byte, appended to `out`, without
    /// copying the message first: every frame a client is sent is written this way (a copy
    /// of each reply's payload tree was a tenth of the daemon's time under load).
    pub fn write_json(message: &IpcMessage, out: &mut Vec<u8>) -> serde_json::Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let IpcPayload::Reply(reply) = &message.payload {
            // What serde_json writes for `BorrowedEgressFrame` (compact, fields in order),
            // with the reply's text put in as it is.
            out.extend_from_slice(br#"{"topic":"#);
            serde_json::to_writer(&mut *out, &message.topic)?;
            out.extend_from_slice(br#","payload":"#);
            out.extend_from_slice(reply.json().as_bytes());
            out.extend_from_slice(br#","source_id":"#);
            serde_json::to_writer(&mut *out, &message.source_id)?;
            out.push(b'}');
            return Ok(());
        }
        serde_json::to_writer(
            out,
            &BorrowedEgressFrame {
                topic: &message.topic,
                payload: GuestPayload(&message.payload),
                source_id: message.source_id,
            },
        )
    }
}

/// [`EgressFrame`] over a borrowed message: the same fields, in the same order.
#[derive(Serialize)]
struct BorrowedEgressFrame<'a> {
    topic: &'a str,
    payload: GuestPayload<'a>,
    source_id: Uuid,
}

/// [`IpcPayload::to_guest_value`] as it serializes, borrowing what it can.
struct GuestPayload<'a>(&'a IpcPayload);

impl Serialize for GuestPayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            IpcPayload::RawJson(value) | IpcPayload::Custom { data: value } => value.serialize(serializer),
            // Through a `Value`, as `to_guest_value` renders it: the same key order. (A
            // reply's text is written as it is by `write_json` and `to_guest_bytes`, the
            // two users of this; here it is read back into a tree.)
            other => other.to_guest_value().serialize(serializer),
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::types::KernelResponse;

    /// Every reader of a rendered reply sees the `RawJson` tree the kernel used to build.
    #[test]
    fn a_rendered_reply_reads_as_the_raw_json_tree_it_stands_for() {
        let response = KernelResponse::Success(json!({"names": ["a", "b\"c"], "nested": {"n": 1.5, "none": null}}));
        let tree = serde_json::to_value(&response).expect("a tree");
        let rendered = IpcPayload::Reply(RenderedReply::of(&response).expect("renders"));
        let built = IpcPayload::RawJson(tree.clone());

        // A capsule's view, and its bytes.
        assert_eq!(rendered.to_guest_value(), tree);
        assert_eq!(serde_json::from_slice::<Value>(&rendered.to_guest_bytes()).expect("json"), tree);
        // A client's frame: the same JSON (key order aside, which JSON leaves free).
        let frame = |payload: &IpcPayload| {
            let message = IpcMessage::new("astrid.v1.response.status", payload.clone(), Uuid::nil());
            let mut bytes = Vec::new();
            EgressFrame::write_json(&message, &mut bytes).expect("written");
            serde_json::from_slice::<Value>(&bytes).expect("json")
        };
        assert_eq!(frame(&rendered), frame(&built));
        // Byte for byte, the frame is serde_json's compact rendering of the three fields,
        // with the reply's text as it was rendered.
        let message = IpcMessage::new("astrid.v1.response.\"s\"", rendered.clone(), Uuid::from_u128(7));
        let mut bytes = Vec::new();
        EgressFrame::write_json(&message, &mut bytes).expect("written");
        let RenderedReply(text) = RenderedReply::of(&response).expect("renders");
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            format!(
                r#"{{"topic":"astrid.v1.response.\"s\"","payload":{text},"source_id":"00000000-0000-0000-0000-000000000007"}}"#
            )
        );
        // Whole and tagged (a capsule-host process is sent this), it reads back as `raw_json`.
        let tagged = serde_json::to_value(&rendered).expect("tagged");
        assert_eq!(tagged, serde_json::to_value(&built).expect("tagged"));
        assert_eq!(serde_json::from_value::<IpcPayload>(tagged).expect("parsed"), built);
        // It names no conversation, as the tree does not.
        assert_eq!(rendered.session_id(), None);
        assert_eq!(built.session_id(), None);
    }
}
