//! llm-openai: `llm_request`s on `llm.v1.request.generate.openai` become streamed
//! `POST {base_url}/chat/completions` calls; the server-sent events come back as
//! `llm_stream_event`s on `llm.v1.stream.openai`: `TextDelta`, `ToolCallStart` /
//! `ToolCallDelta` / `ToolCallEnd` (arguments arrive in fragments), `Usage`, then `Done`, or
//! one `Error` that says what went wrong (401, 429, 5xx, a malformed stream, a server silent
//! for `stall_timeout_secs`).
//!
//! An `llm_cancel_request {request_id}` on `llm.v1.request.cancel.openai` stops the request in
//! flight: the stream is read in short waits, the cancel topic is looked at between them, and
//! a cancelled request's stream is closed (the server sees the connection go) and ends with
//! `Error: "cancelled"`.

use std::collections::BTreeMap;
use std::time::Duration;

use astrid_sdk::http::{Chunk, Request};
use astrid_sdk::{Error, Hook, Subscription, ipc};
use serde_json::{Value, json};

const STREAM: &str = "llm.v1.stream.openai";
const CANCEL: &str = "llm.v1.request.cancel.openai";
/// How often a slow stream looks for a cancel.
const CANCEL_CHECK: Duration = Duration::from_millis(100);
/// The longest silence of the server, unless `stall_timeout_secs` says otherwise.
const STALL_TIMEOUT_SECS: u64 = 120;

fn event(request_id: &Value, event: Value) {
    let _ = ipc::publish(STREAM, &json!({"type": "llm_stream_event", "request_id": request_id, "event": event}));
}

/// Our `Message`s as chat-completions messages (with the system prompt first).
fn messages(system: &str, messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in messages {
        let role = message["role"].as_str().unwrap_or("user");
        let content = &message["content"];
        match content {
            // Tool calls the assistant made.
            Value::Array(calls) if calls.first().is_some_and(|c| c.get("arguments").is_some()) => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        json!({"id": c["id"], "type": "function",
                               "function": {"name": c["name"], "arguments": c["arguments"].to_string()}})
                    })
                    .collect();
                out.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
            }
            // A tool's result.
            Value::Object(result) if result.contains_key("call_id") => {
                out.push(json!({"role": "tool", "tool_call_id": result["call_id"], "content": result["content"]}));
            }
            Value::Array(parts) => {
                let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                out.push(json!({"role": role, "content": text.join("\n")}));
            }
            other => out.push(json!({"role": role, "content": other})),
        }
    }
    out
}

fn tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            // Function names allow [A-Za-z0-9_-]: `server:tool` names are sent with `__`.
            let name = t["name"].as_str().unwrap_or_default().replace(':', "__");
            json!({"type": "function", "function": {"name": name, "description": t["description"], "parameters": t["input_schema"]}})
        })
        .collect()
}

/// What a status code means for the person reading the error.
fn status_error(status: u16, body: &[u8]) -> String {
    let detail: String = String::from_utf8_lossy(body).chars().take(300).collect();
    let what = match status {
        401 | 403 => "the API key was refused",
        404 => "no such endpoint or model",
        429 => "rate limited or out of quota",
        500..=599 => "the server failed",
        _ => "the request was refused",
    };
    format!("HTTP {status}: {what}: {}", detail.trim())
}

/// Tool calls being assembled from fragments, by the server's index.
#[derive(Default)]
struct Calls {
    open: BTreeMap<u64, String>,
}

/// Turns one SSE `data:` payload into stream events; `Ok(true)` at `[DONE]`.
fn on_data(request_id: &Value, data: &str, calls: &mut Calls) -> Result<bool, String> {
    if data == "[DONE]" {
        return Ok(true);
    }
    let chunk: Value = serde_json::from_str(data).map_err(|e| format!("malformed stream: {e}: {data:.120}"))?;
    if let Some(message) = chunk["error"]["message"].as_str() {
        return Err(format!("the server reported an error: {message}"));
    }
    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
        event(
            request_id,
            json!({"Usage": {"input_tokens": usage["prompt_tokens"].as_u64().unwrap_or(0),
                                          "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0)}}),
        );
    }
    let Some(choice) = chunk["choices"].get(0) else { return Ok(false) };
    let delta = &choice["delta"];
    if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
        event(request_id, json!({"TextDelta": text}));
    }
    for call in delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let index = call["index"].as_u64().unwrap_or(0);
        if !calls.open.contains_key(&index) {
            let id = call["id"].as_str().map(str::to_owned).unwrap_or_else(|| format!("call_{index}"));
            let name = call["function"]["name"].as_str().unwrap_or_default().replace("__", ":");
            event(request_id, json!({"ToolCallStart": {"id": id, "name": name}}));
            calls.open.insert(index, id);
        }
        if let (Some(id), Some(args)) = (calls.open.get(&index), call["function"]["arguments"].as_str()) {
            if !args.is_empty() {
                event(request_id, json!({"ToolCallDelta": {"id": id, "args_delta": args}}));
            }
        }
    }
    if choice["finish_reason"].is_string() {
        for (_, id) in std::mem::take(&mut calls.open) {
            event(request_id, json!({"ToolCallEnd": {"id": id}}));
        }
    }
    Ok(false)
}

thread_local! {
    /// The cancel topic, subscribed once for the instance's life (a subscription per request
    /// would cost a capability check on every request's critical path).
    static CANCELS: Option<Subscription> = Subscription::new(CANCEL)
        .map_err(|e| astrid_sdk::log(&format!("cannot watch for cancels ({e}); requests cannot be cancelled")))
        .ok();
}

/// Forgets cancels of requests that are over (they may arrive after their request ended).
fn forget_old_cancels() {
    CANCELS.with(|cancels| while let Some(Ok(Some(_))) = cancels.as_ref().map(Subscription::poll) {});
}

/// Whether a cancel for `id` has arrived.
fn cancelled(id: &Value) -> bool {
    CANCELS.with(|cancels| {
        let Some(cancels) = cancels else { return false };
        while let Ok(Some(message)) = cancels.poll() {
            if message.payload["type"] == "llm_cancel_request" && message.payload["request_id"] == *id {
                return true;
            }
        }
        false
    })
}

fn generate(request: &Value) -> Result<(), String> {
    let id = &request["request_id"];
    forget_old_cancels();
    let stall = astrid_sdk::config("stall_timeout_secs")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(STALL_TIMEOUT_SECS);
    let base = astrid_sdk::config("base_url").unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
    let configured = astrid_sdk::config("model").unwrap_or_default();
    let model = match request["model"].as_str() {
        Some(model) if !model.is_empty() && model != "openai" => model.to_owned(),
        _ => configured,
    };
    let history = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let offered = request["tools"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut body = json!({
        "model": model,
        "messages": messages(request["system"].as_str().unwrap_or_default(), history),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !offered.is_empty() {
        body["tools"] = Value::Array(tools(offered));
    }
    let mut http = Request::new("POST", &format!("{}/chat/completions", base.trim_end_matches('/')))
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .idle_timeout(Duration::from_secs(stall))
        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    if astrid_sdk::has_config("api_key") {
        http = http.header("Authorization", "Bearer {{secret:api_key}}");
    }
    let mut stream = http.stream().map_err(|e| match e {
        Error::Timeout => format!("{base} sent no response for {stall} s"),
        e => format!("cannot reach {base}: {e}"),
    })?;
    if stream.status != 200 {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = stream.read() {
            body.extend_from_slice(&chunk);
            if body.len() > 4096 {
                break;
            }
        }
        return Err(status_error(stream.status, &body));
    }
    let mut calls = Calls::default();
    let mut buffer = String::new();
    loop {
        if cancelled(id) {
            return Err("cancelled".to_owned());
        }
        let chunk = match stream.wait(CANCEL_CHECK) {
            Ok(Chunk::Data(chunk)) => chunk,
            Ok(Chunk::Pending) => continue,
            Ok(Chunk::End) => return Err("the stream ended before [DONE]".to_owned()),
            Err(Error::Timeout) => return Err(format!("the server sent nothing for {stall} s")),
            Err(e) => return Err(format!("the stream broke: {e}")),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        // Events end with a blank line; a partial one waits for the next chunk.
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if on_data(id, data.trim(), &mut calls)? {
                        event(id, json!("Done"));
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn hook(_action: &str, payload: &[u8]) -> Hook {
    let Ok(request) = serde_json::from_slice::<Value>(payload) else { return Hook::Continue(None) };
    if request["type"] != "llm_request" {
        return Hook::Continue(None);
    }
    if let Err(message) = generate(&request) {
        astrid_sdk::log(&format!("request failed: {message}"));
        event(&request["request_id"], json!({"Error": message}));
    }
    Hook::Final(Value::Null)
}

astrid_sdk::capsule!(hook = hook);
