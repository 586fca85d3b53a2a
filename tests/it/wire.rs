//! The wire types against the reference (66 vectors, and the encoding rules of spec §3) and
//! Astrid's extensions against `tests/data/extension-vectors.jsonl`.

use std::collections::BTreeSet;
use std::path::Path;

use astrid::types::*;
use astrid::types::{commands, management};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const VECTORS: &str = "tests/data/wire-vectors.jsonl";
/// Astrid's own messages (management replies, turn events, announcements), in the same format.
const EXTENSION_VECTORS: &str = "tests/data/extension-vectors.jsonl";

fn round_trip<T: Serialize + DeserializeOwned>(json: &Value) -> Result<Value, String> {
    let parsed: T = serde_json::from_value(json.clone()).map_err(|e| format!("parse: {e}"))?;
    serde_json::to_value(&parsed).map_err(|e| format!("serialize: {e}"))
}

fn check(kind: &str, json: &Value) -> Result<Value, String> {
    match kind {
        "Message" => round_trip::<Message>(json),
        "ToolCall" => round_trip::<ToolCall>(json),
        "ToolCallResult" => round_trip::<ToolCallResult>(json),
        "LlmToolDefinition" => round_trip::<LlmToolDefinition>(json),
        "StreamEvent" => round_trip::<StreamEvent>(json),
        "LlmResponse" => round_trip::<LlmResponse>(json),
        "StopReason" => round_trip::<StopReason>(json),
        "IpcPayload" => round_trip::<IpcPayload>(json),
        "IpcMessage" => round_trip::<IpcMessage>(json),
        "KernelRequest" => round_trip::<KernelRequest>(json),
        "KernelResponse" => round_trip::<KernelResponse>(json),
        other => Err(format!("unknown kind {other}")),
    }
}

/// Checks every vector of `file` with `check`: how many there were, their kinds, and each
/// one whose JSON did not come back exactly (value-equal after parse and re-serialize).
fn check_file(file: &str, check: fn(&str, &Value) -> Result<Value, String>) -> (usize, BTreeSet<String>, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("vectors");
    let mut kinds = BTreeSet::new();
    let mut failures = Vec::new();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let vector: Value = serde_json::from_str(line).expect("vector line is JSON");
        let (name, kind, json) =
            (vector["name"].as_str().expect("name"), vector["kind"].as_str().expect("kind"), &vector["json"]);
        count += 1;
        kinds.insert(kind.to_owned());
        match check(kind, json) {
            Ok(back) if &back == json => {}
            Ok(back) => failures.push(format!("{name} ({kind}): got {back}, want {json}")),
            Err(e) => failures.push(format!("{name} ({kind}): {e}")),
        }
    }
    (count, kinds, failures)
}

#[test]
fn all_reference_vectors_round_trip_exactly() {
    let (count, kinds, failures) = check_file(VECTORS, check);
    assert!(failures.is_empty(), "{} of {count} vectors failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(count, 66);
    assert_eq!(kinds.len(), 11, "{kinds:?}");
}

/// A management reply's data: decoded from a `Success` as its type, and sent as one again.
fn reply<T: Serialize + DeserializeOwned>(json: &Value) -> Result<Value, String> {
    let parsed: T = KernelResponse::Success(json.clone()).into_data().map_err(|e| e.to_string())?;
    match KernelResponse::success(&parsed) {
        KernelResponse::Success(back) => Ok(back),
        other => Err(format!("success() answered {other:?}")),
    }
}

fn check_extension(kind: &str, json: &Value) -> Result<Value, String> {
    match kind {
        "Names" => reply::<Vec<String>>(json),
        "DaemonAction" => reply::<management::DaemonAction>(json),
        "CapsuleInstalled" => reply::<management::CapsuleInstalled>(json),
        "CapsuleRemoved" => reply::<management::CapsuleRemoved>(json),
        "CapsuleDescriptions" => reply::<Vec<management::CapsuleDescription>>(json),
        "GrantApproved" => reply::<management::GrantApproved>(json),
        "CapabilityListing" => reply::<management::CapabilityListing>(json),
        "Revoked" => reply::<management::Revoked>(json),
        "KvValue" => reply::<management::KvValue>(json),
        "KvStored" => reply::<management::KvStored>(json),
        "KvDeleted" => reply::<management::KvDeleted>(json),
        "WorkspaceDiff" => reply::<management::WorkspaceDiff>(json),
        "WorkspaceCommitted" => reply::<management::WorkspaceCommitted>(json),
        "WorkspaceDiscarded" => reply::<management::WorkspaceDiscarded>(json),
        "McpListing" => reply::<management::McpListing>(json),
        "McpCallResult" => reply::<management::McpCallResult>(json),
        "AuditAcknowledged" => reply::<management::AuditAcknowledged>(json),
        "TurnEvent" => round_trip::<TurnEvent>(json),
        "HandshakeRequest" => round_trip::<HandshakeRequest>(json),
        "CapsulesLoaded" => round_trip::<CapsulesLoaded>(json),
        "CapsuleHealthFailed" => round_trip::<CapsuleHealthFailed>(json),
        "ToolsDescribed" => round_trip::<ToolsDescribed>(json),
        "CommandSpawn" => round_trip::<commands::CommandSpawn>(json),
        "SpawnReply" => round_trip::<commands::SpawnReply>(json),
        "CommandFinished" => round_trip::<commands::CommandFinished>(json),
        "CommandOutput" => round_trip::<commands::CommandOutput>(json),
        "ToolListing" => reply::<management::ToolListing>(json),
        "ToolCalled" => reply::<management::ToolCalled>(json),
        "ToolCallCancelled" => reply::<management::ToolCallCancelled>(json),
        "InstructionFiles" => reply::<InstructionFiles>(json),
        // Not a reply: the orchestrator's KV value `astrid sessions list` reads.
        "SessionIndex" => round_trip::<SessionIndex>(json),
        other => check(other, json),
    }
}

#[test]
fn every_extension_vector_round_trips_exactly_through_its_type() {
    let (count, kinds, failures) = check_file(EXTENSION_VECTORS, check_extension);
    assert!(failures.is_empty(), "{} of {count} vectors failed:\n{}", failures.len(), failures.join("\n"));
    let expected = [
        "AuditAcknowledged",
        "CapabilityListing",
        "CapsuleDescriptions",
        "CapsuleHealthFailed",
        "CapsuleInstalled",
        "CapsuleRemoved",
        "CapsulesLoaded",
        "CommandFinished",
        "CommandOutput",
        "CommandSpawn",
        "DaemonAction",
        "GrantApproved",
        "HandshakeRequest",
        "InstructionFiles",
        "IpcPayload",
        "KernelRequest",
        "KernelResponse",
        "KvDeleted",
        "KvStored",
        "KvValue",
        "McpCallResult",
        "McpListing",
        "Names",
        "Revoked",
        "SessionIndex",
        "SpawnReply",
        "ToolListing",
        "ToolsDescribed",
        "ToolCallCancelled",
        "ToolCalled",
        "TurnEvent",
        "WorkspaceCommitted",
        "WorkspaceDiff",
        "WorkspaceDiscarded",
    ];
    assert_eq!(kinds, expected.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>(), "one kind per reply type");
}

/// The wire name of each request. A match with no catch-all: a new request does not compile
/// until it is listed here, and then the test below wants a vector for it.
fn method_of(request: &KernelRequest) -> &'static str {
    match request {
        KernelRequest::InstallCapsule { .. } => "InstallCapsule",
        KernelRequest::ApproveCapability { .. } => "ApproveCapability",
        KernelRequest::ListCapsules => "ListCapsules",
        KernelRequest::ReloadCapsules => "ReloadCapsules",
        KernelRequest::GetCommands => "GetCommands",
        KernelRequest::GetCapsuleMetadata => "GetCapsuleMetadata",
        KernelRequest::GetStatus => "GetStatus",
        KernelRequest::Shutdown { .. } => "Shutdown",
        KernelRequest::ListCapabilities => "ListCapabilities",
        KernelRequest::RevokeCapability { .. } => "RevokeCapability",
        KernelRequest::KvGet { .. } => "KvGet",
        KernelRequest::KvSet { .. } => "KvSet",
        KernelRequest::KvDelete { .. } => "KvDelete",
        KernelRequest::KvList { .. } => "KvList",
        KernelRequest::RemoveCapsule { .. } => "RemoveCapsule",
        KernelRequest::DescribeCapsules => "DescribeCapsules",
        KernelRequest::WorkspaceDiff => "WorkspaceDiff",
        KernelRequest::WorkspaceCommit => "WorkspaceCommit",
        KernelRequest::WorkspaceDiscard => "WorkspaceDiscard",
        KernelRequest::McpList => "McpList",
        KernelRequest::McpCall { .. } => "McpCall",
        KernelRequest::AuditAcknowledge { .. } => "AuditAcknowledge",
        KernelRequest::ListTools => "ListTools",
        KernelRequest::GetInstructions => "GetInstructions",
        KernelRequest::CallTool { .. } => "CallTool",
        KernelRequest::CancelToolCall { .. } => "CancelToolCall",
    }
}

#[test]
fn every_management_request_has_a_vector() {
    let mut covered = BTreeSet::new();
    for file in [VECTORS, EXTENSION_VECTORS] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect("vectors");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let vector: Value = serde_json::from_str(line).expect("vector line is JSON");
            if vector["kind"] == "KernelRequest" {
                let request: KernelRequest = serde_json::from_value(vector["json"].clone()).expect("a request");
                assert_eq!(method_of(&request), request.method_name(), "the wire name is the variant's");
                assert_eq!(request.audit_action(), format!("management.{}", method_of(&request)));
                covered.insert(method_of(&request));
            }
        }
    }
    assert_eq!(covered.len(), 26, "a request without a vector: only {covered:?} have one");
}

#[test]
fn the_vector_copy_matches_the_shared_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/spec/wire-vectors.jsonl");
    let Ok(reference) = std::fs::read(&shared) else {
        eprintln!("note: {} not present; the copy cannot be compared here", shared.display());
        return;
    };
    assert_eq!(std::fs::read(root.join(VECTORS)).expect("copy"), reference, "tests/data copy drifted from the spec");
}

#[test]
fn unknown_tags_parse_as_unknown_and_serialize_as_unknown() {
    let payload: IpcPayload = serde_json::from_value(json!({"type": "my_plugin_msg", "x": 1})).expect("parse");
    assert_eq!(payload, IpcPayload::Unknown);
    assert_eq!(serde_json::to_value(&payload).expect("ser"), json!({"type": "unknown"}));
    assert!(serde_json::from_value::<IpcPayload>(json!({"text": "no tag"})).is_err(), "a missing tag is an error");
}

#[test]
fn from_json_value_keeps_unknown_and_invalid_payloads_as_custom() {
    let unknown = json!({"type": "my_plugin_msg", "x": 1});
    assert_eq!(IpcPayload::from_json_value(unknown.clone()), IpcPayload::Custom { data: unknown });
    let bad_fields = json!({"type": "user_input", "text": 5});
    assert_eq!(IpcPayload::from_json_value(bad_fields.clone()), IpcPayload::Custom { data: bad_fields });
    let untagged = json!({"method": "GetStatus"});
    assert_eq!(IpcPayload::from_json_value(untagged.clone()), IpcPayload::Custom { data: untagged });
    assert_eq!(
        IpcPayload::from_json_value(json!({"type": "raw_json", "method": "GetStatus"})),
        IpcPayload::RawJson(json!({"method": "GetStatus"}))
    );
}

#[test]
fn known_tags_are_exactly_the_eighteen_variants() {
    let tags = [
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
    assert!(tags.iter().all(|t| IpcPayload::is_known_tag(t)));
    for not_a_tag in ["unknown", "my_plugin_msg", "Raw_Json", ""] {
        assert!(!IpcPayload::is_known_tag(not_a_tag), "{not_a_tag}");
    }
}

#[test]
fn guest_rendering_unwraps_raw_json_and_custom_only() {
    assert_eq!(IpcPayload::RawJson(json!({"a": 1})).to_guest_value(), json!({"a": 1}));
    assert_eq!(IpcPayload::Custom { data: json!([1, 2]) }.to_guest_value(), json!([1, 2]));
    assert_eq!(IpcPayload::Connect.to_guest_value(), json!({"type": "connect"}));
    assert_eq!(IpcPayload::Disconnect { reason: None }.to_guest_value(), json!({"type": "disconnect"}));
    let frame = EgressFrame::from_message(&IpcMessage::new(
        "astrid.v1.response.status",
        IpcPayload::RawJson(json!({"status": "Success", "data": null})),
        SYSTEM_SESSION_UUID,
    ));
    assert_eq!(
        serde_json::to_value(&frame).expect("ser"),
        json!({"topic": "astrid.v1.response.status", "payload": {"status": "Success", "data": null}, "source_id": "00000000-0000-0000-0000-000000000000"})
    );
}

/// Every frame a client is sent is written by `EgressFrame::write_json`, which borrows the
/// message: it must give the bytes the owned `EgressFrame` gives, for every payload kind.
#[test]
fn the_borrowed_egress_frame_writes_the_same_bytes_as_the_owned_one() {
    let mut payloads = 0;
    for file in [VECTORS, EXTENSION_VECTORS] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect("vectors");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let vector: Value = serde_json::from_str(line).expect("vector line is JSON");
            if vector["kind"] != "IpcPayload" {
                continue;
            }
            let payload: IpcPayload = serde_json::from_value(vector["json"].clone()).expect("payload");
            for payload in [payload.clone(), IpcPayload::Custom { data: vector["json"].clone() }] {
                let message = IpcMessage::new("a.topic", payload, SYSTEM_SESSION_UUID);
                let mut borrowed = Vec::new();
                EgressFrame::write_json(&message, &mut borrowed).expect("write");
                let owned = serde_json::to_vec(&EgressFrame::from_message(&message)).expect("ser");
                assert_eq!(String::from_utf8_lossy(&borrowed), String::from_utf8_lossy(&owned), "{}", vector["name"]);
                payloads += 1;
            }
        }
    }
    assert!(payloads >= 20, "only {payloads} payloads checked");
}

/// `IpcPayload::from_json_value` takes the tag out of a `raw_json` object in place instead of
/// going through the derived deserializer: it must make of every payload vector, and of
/// management requests every KernelRequest vector, exactly what that deserializer makes.
#[test]
fn from_json_value_reads_every_payload_as_the_derived_deserializer_does() {
    let mut checked = 0;
    for file in [VECTORS, EXTENSION_VECTORS] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect("vectors");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let vector: Value = serde_json::from_str(line).expect("vector line is JSON");
            let json = match vector["kind"].as_str() {
                Some("IpcPayload") => vector["json"].clone(),
                // A management request as a client sends it: its fields beside the tag.
                Some("KernelRequest") => {
                    let mut request = vector["json"].clone();
                    request["type"] = json!("raw_json");
                    request
                }
                _ => continue,
            };
            let derived: IpcPayload = serde_json::from_value(json.clone()).expect("payload");
            if derived == IpcPayload::Unknown {
                continue; // Kept as `Custom` on purpose (the test above).
            }
            assert_eq!(IpcPayload::from_json_value(json), derived, "{}", vector["name"]);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} payloads checked");
    // Nested objects that carry a `type` of their own keep it; only the top-level tag goes.
    let nested = json!({"type": "raw_json", "inner": {"type": "raw_json", "list": [{"type": 1}]}, "n": null});
    assert_eq!(
        IpcPayload::from_json_value(nested.clone()),
        serde_json::from_value::<IpcPayload>(nested).expect("payload")
    );
}

#[test]
fn raw_json_must_wrap_an_object() {
    assert!(serde_json::to_value(IpcPayload::RawJson(json!([1, 2]))).is_err());
    assert!(serde_json::to_value(IpcPayload::RawJson(json!("text"))).is_err());
}

#[test]
fn proxy_frames_without_timestamp_or_seq_parse_with_defaults() {
    let message: IpcMessage = serde_json::from_value(json!({
        "topic": "astrid.v1.capsules_loaded",
        "payload": {"type": "raw_json", "status": "ready"},
        "source_id": "00000000-0000-0000-0000-000000000000"
    }))
    .expect("parse");
    assert_eq!(message.seq, 0);
    assert_eq!(message.signature, None);
    assert_eq!(message.principal, None);
    let serialized = serde_json::to_value(&message).expect("ser");
    assert!(serialized.get("principal").is_none());
    assert_eq!(serialized["signature"], Value::Null);
    let bad_source = json!({"topic": "t", "payload": {"type": "connect"}, "source_id": "nope"});
    assert!(serde_json::from_value::<IpcMessage>(bad_source).is_err());
}

#[test]
fn kernel_request_tagging_matches_the_reference_strictness() {
    let parse = |v: Value| serde_json::from_value::<KernelRequest>(v);
    assert_eq!(parse(json!({"method": "ListCapsules"})).expect("bare"), KernelRequest::ListCapsules);
    assert_eq!(parse(json!({"method": "ListCapsules", "params": null})).expect("null"), KernelRequest::ListCapsules);
    assert!(parse(json!({"method": "ListCapsules", "params": {}})).is_err());
    assert!(parse(json!({"method": "Shutdown"})).is_err());
    assert_eq!(
        parse(json!({"method": "Shutdown", "params": {}})).expect("empty"),
        KernelRequest::Shutdown { reason: None }
    );
}

#[test]
fn tool_names_split_at_the_first_colon_and_content_is_untagged() {
    assert_eq!(ToolCall::new("1", "a:b:c").parse_name(), Some(("a", "b:c")));
    assert_eq!(ToolCall::new("1", "echo").parse_name(), None);
    assert_eq!(ToolCall::new("1", "echo").arguments, json!({}));
    let empty: MessageContent = serde_json::from_value(json!([])).expect("parse");
    assert_eq!(empty, MessageContent::ToolCalls(vec![]));
    assert_eq!(Usage { input_tokens: usize::MAX, output_tokens: 1 }.total(), usize::MAX);
}

#[test]
fn user_input_fields_read_exactly_what_the_full_payload_decoder_reads() {
    let full = IpcPayload::UserInput { text: "/count".into(), session_id: "s1".into(), context: Some(json!({"k": 1})) };
    let fields = UserInputFields::from_payload(&full.to_guest_value()).expect("a user_input");
    assert_eq!(
        (fields.text.as_str(), fields.session_id.as_str(), fields.context),
        ("/count", "s1", Some(json!({"k": 1})))
    );
    let defaulted = UserInputFields::from_payload(&json!({"type": "user_input", "text": "hi"})).expect("defaults");
    assert_eq!(defaulted.session_id, "default", "same default as the enum");
    let answer =
        IpcPayload::AgentResponse { text: "hi".into(), is_final: true, session_id: "s1".into(), outcome: None };
    assert_eq!(UserInputFields::from_payload(&answer.to_guest_value()), None, "other kinds are not user input");
    assert_eq!(UserInputFields::from_payload(&json!({"type": "user_input"})), None, "text is required");
}
