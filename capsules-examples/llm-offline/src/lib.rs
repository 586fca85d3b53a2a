//! llm-offline: answers `llm_request`s on `llm.v1.request.generate.offline` with a stream of
//! `llm_stream_event`s on `llm.v1.stream.offline`, like any provider, but from a fixed rule
//! instead of a model: it repeats what it was told, says that it is offline, and names the
//! tools it was offered. Same input, same output, no network.

use astrid_sdk::{Hook, ipc};
use serde_json::{Value, json};

const STREAM: &str = "llm.v1.stream.offline";

/// The text of a message's content: a string, or the text parts of a multi-part content.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

/// The reply for a conversation (`messages`) and the tools offered.
fn reply(messages: &[Value], tools: &[Value]) -> String {
    let said = messages.iter().rev().find(|m| m["role"] == "user").map(|m| text_of(&m["content"])).unwrap_or_default();
    let turn = messages.iter().filter(|m| m["role"] == "user").count();
    let mut reply = format!("[offline model] You said: \"{}\" (message {turn} of this conversation).", said.trim());
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    if !names.is_empty() {
        reply.push_str(&format!(" Tools on offer: {}.", names.join(", ")));
    }
    reply.push_str(" No model endpoint is configured; set OPENAI_BASE_URL (and OPENAI_API_KEY) for real answers.");
    reply
}

fn event(request_id: &Value, event: Value) {
    let _ = ipc::publish(STREAM, &json!({"type": "llm_stream_event", "request_id": request_id, "event": event}));
}

fn hook(_action: &str, payload: &[u8]) -> Hook {
    let Ok(request) = serde_json::from_slice::<Value>(payload) else { return Hook::Continue(None) };
    if request["type"] != "llm_request" {
        return Hook::Continue(None);
    }
    let id = &request["request_id"];
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let tools = request["tools"].as_array().map(Vec::as_slice).unwrap_or_default();
    let text = reply(messages, tools);
    // Streamed a word at a time, as a model would.
    for piece in text.split_inclusive(' ') {
        event(id, json!({"TextDelta": piece}));
    }
    let input: usize = messages.iter().map(|m| text_of(&m["content"]).split_whitespace().count()).sum();
    event(id, json!({"Usage": {"input_tokens": input, "output_tokens": text.split_whitespace().count()}}));
    event(id, json!("Done"));
    Hook::Final(Value::Null)
}

astrid_sdk::capsule!(hook = hook);
