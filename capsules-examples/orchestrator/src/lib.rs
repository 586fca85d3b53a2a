//! orchestrator: one agent turn after another, per session.
//!
//! A `user_input` on `user.v1.prompt` starts a turn: the conversation so far (KV
//! `history:<session>`) plus the prompt goes to the configured provider as an `llm_request`
//! on `llm.v1.request.generate.<provider>`. The provider's `llm_stream_event`s on
//! `llm.v1.stream.<provider>` come back to this capsule's hook: each text delta is passed on
//! to the frontends at once (`agent_response`, not final, on `agent.v1.stream.delta`); `Done`
//! stores the answer in the conversation and sends it whole as the final `agent_response` on
//! `agent.v1.response`, as the reference pipeline does; an `Error` ends the turn with
//! `LLM error: …`. A prompt whose context says `cancel_turn` ends the session's turn.
//!
//! Turns in flight live in this instance's memory (the hook entry runs one event at a time);
//! only finished exchanges are stored, so a restart loses a turn, never the conversation.

use std::cell::RefCell;
use std::collections::BTreeMap;

use astrid_sdk::{Hook, ipc, kv};
use serde_json::{Value, json};

/// Messages kept per conversation (the oldest go first).
const MAX_HISTORY: usize = 100;
const SYSTEM_PROMPT: &str = "You are the agent of Astrid, a secure runtime. Answer plainly. \
    You can act only through the tools you are offered, and only within what the user granted.";

/// A turn waiting for its provider.
struct Turn {
    session_id: String,
    prompt: String,
    text: String,
}

thread_local! {
    static TURNS: RefCell<BTreeMap<String, Turn>> = const { RefCell::new(BTreeMap::new()) };
}

/// A fresh request id (a version 4 UUID from the host's CSPRNG).
fn request_id() -> String {
    let mut bytes = astrid_sdk::random_bytes(16).unwrap_or_else(|_| vec![0; 16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn history_key(session_id: &str) -> String {
    format!("history:{session_id}")
}

fn history(session_id: &str) -> Vec<Value> {
    kv::get(&history_key(session_id))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn remember(session_id: &str, prompt: &str, answer: &str) {
    let mut messages = history(session_id);
    messages.push(json!({"role": "user", "content": prompt}));
    messages.push(json!({"role": "assistant", "content": answer}));
    let excess = messages.len().saturating_sub(MAX_HISTORY);
    messages.drain(..excess);
    if let Ok(bytes) = serde_json::to_vec(&messages) {
        if let Err(e) = kv::set(&history_key(session_id), &bytes) {
            astrid_sdk::log(&format!("cannot store the conversation {session_id}: {e}"));
        }
    }
}

fn respond(topic: &str, session_id: &str, text: &str, is_final: bool) {
    let payload = json!({"type": "agent_response", "text": text, "is_final": is_final, "session_id": session_id});
    if let Err(e) = ipc::publish(topic, &payload) {
        astrid_sdk::log(&format!("cannot answer on {topic}: {e}"));
    }
}

fn start_turn(text: String, session_id: String) {
    let provider = astrid_sdk::config("provider").unwrap_or_else(|| "offline".to_owned());
    let model = astrid_sdk::config("model").unwrap_or_else(|| provider.clone());
    let mut messages = history(&session_id);
    messages.push(json!({"role": "user", "content": text}));
    let id = request_id();
    let request = json!({
        "type": "llm_request",
        "request_id": id,
        "model": model,
        "messages": messages,
        "tools": [],
        "system": SYSTEM_PROMPT,
    });
    TURNS.with(|turns| {
        turns.borrow_mut().insert(id, Turn { session_id: session_id.clone(), prompt: text, text: String::new() })
    });
    if let Err(e) = ipc::publish(&format!("llm.v1.request.generate.{provider}"), &request) {
        TURNS.with(|turns| turns.borrow_mut().retain(|_, turn| turn.session_id != session_id));
        respond("agent.v1.response", &session_id, &format!("LLM error: cannot reach provider {provider}: {e}"), true);
    }
}

fn on_prompt(payload: &[u8]) {
    let Some(input) = ipc::user_input(payload) else { return };
    let cancel = input.context.as_ref().is_some_and(|c| c["action"] == "cancel_turn");
    if cancel {
        let cancelled = TURNS.with(|turns| {
            let mut turns = turns.borrow_mut();
            let before = turns.len();
            turns.retain(|_, turn| turn.session_id != input.session_id);
            before != turns.len()
        });
        if cancelled {
            respond("agent.v1.response", &input.session_id, "Cancelled.", true);
        }
        return;
    }
    if input.text.trim().is_empty() {
        return;
    }
    start_turn(input.text, input.session_id);
}

fn on_stream(payload: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
    if event["type"] != "llm_stream_event" {
        return;
    }
    let Some(id) = event["request_id"].as_str() else { return };
    TURNS.with(|turns| {
        let mut turns = turns.borrow_mut();
        let Some(turn) = turns.get_mut(id) else { return };
        match &event["event"] {
            Value::Object(map) if map.contains_key("TextDelta") => {
                let delta = map["TextDelta"].as_str().unwrap_or_default();
                turn.text.push_str(delta);
                respond("agent.v1.stream.delta", &turn.session_id, delta, false);
            }
            Value::Object(map) if map.contains_key("Error") => {
                let message = map["Error"].as_str().unwrap_or("unknown error");
                respond("agent.v1.response", &turn.session_id, &format!("LLM error: {message}"), true);
                turns.remove(id);
            }
            Value::String(done) if done == "Done" => {
                if let Some(turn) = turns.remove(id) {
                    remember(&turn.session_id, &turn.prompt, &turn.text);
                    respond("agent.v1.response", &turn.session_id, &turn.text, true);
                }
            }
            _ => {}
        }
    });
}

fn hook(action: &str, payload: &[u8]) -> Hook {
    match action {
        "prompt" => on_prompt(payload),
        "stream" => on_stream(payload),
        _ => {}
    }
    Hook::Continue(None)
}

astrid_sdk::capsule!(hook = hook);
