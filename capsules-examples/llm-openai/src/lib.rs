//! llm-openai: `llm_request`s on `llm.v1.request.generate.openai` become streamed
//! `POST {base_url}/chat/completions` calls; the server-sent events come back as
//! `llm_stream_event`s on `llm.v1.stream.openai`: `TextDelta`, `ToolCallStart` /
//! `ToolCallDelta` / `ToolCallEnd` (arguments arrive in fragments), `Usage`, then `Done`, or
//! one `Error` that says what went wrong (401, 429, 5xx, an answer that is not an event
//! stream, a stream cut short or malformed, a server silent for `stall_timeout_secs`).
//!
//! The events of one read of the body go out together: adjacent text as one `TextDelta`, so
//! a slow reader gets fewer, larger deltas. Every tool call of a response has an id of its
//! own, whatever ids the server sends.
//!
//! An `llm_cancel_request {request_id}` on `llm.v1.request.cancel.openai` stops the request in
//! flight, before the server answered too: the response head and then the body are awaited
//! in short waits, the cancel topic is looked at between them, and a cancelled request's
//! stream is closed (the server sees the connection go) and ends with `Error: "cancelled"`.

mod chat;
mod sse;

use std::time::Duration;

use astrid_sdk::http::{Chunk, Request, Stream};
use astrid_sdk::{Error, Hook, Subscription, ipc};
use serde_json::{Value, json};

use chat::{Translated, Translator};
use sse::EventStream;

const STREAM: &str = "llm.v1.stream.openai";
const CANCEL: &str = "llm.v1.request.cancel.openai";
/// How often a slow server is interrupted to look for a cancel.
const CANCEL_CHECK: Duration = Duration::from_millis(100);
/// The longest silence of the server, unless `stall_timeout_secs` says otherwise.
const STALL_TIMEOUT_SECS: u64 = 120;
/// How much of a body that is not an event stream goes into the error.
const BODY_SHOWN: usize = 300;

fn event(request_id: &Value, event: Value) {
    let _ = ipc::publish(STREAM, &json!({"type": "llm_stream_event", "request_id": request_id, "event": event}));
}

/// What a status code means for the person reading the error.
fn status_error(status: u16, body: &[u8]) -> String {
    let what = match status {
        401 | 403 => "the API key was refused",
        404 => "no such endpoint or model",
        429 => "rate limited or out of quota",
        500..=599 => "the server failed",
        _ => "the request was refused",
    };
    format!("HTTP {status}: {what}: {}", shown(body))
}

/// The start of a body, as text, for an error.
fn shown(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(BODY_SHOWN).collect::<String>().trim().to_owned()
}

/// Whether a `Content-Type` names an event stream (`text/event-stream`, parameters aside).
fn is_event_stream(content_type: Option<&String>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

thread_local! {
    /// The cancel topic, subscribed once for the instance's life (a subscription per request
    /// would cost a capability check on every request's critical path).
    static CANCELS: Option<Subscription> = Subscription::new(CANCEL)
        .map_err(|e| astrid_sdk::log(&format!("cannot watch for cancels ({e}); requests cannot be cancelled")))
        .ok();
}

/// Forgets cancels of requests that are over (they may arrive after their request ended);
/// whether `id` was cancelled among them already.
fn forget_old_cancels(id: &Value) -> bool {
    CANCELS.with(|cancels| {
        let mut this_one = false;
        while let Some(Ok(Some(message))) = cancels.as_ref().map(Subscription::poll) {
            this_one |= message.payload["type"] == "llm_cancel_request" && message.payload["request_id"] == *id;
        }
        this_one
    })
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

/// The first bytes of the body (up to about 4 KiB), for an error; looks for a cancel
/// between reads.
fn body_start(stream: &mut Stream, id: &Value) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while body.len() <= 4096 {
        if cancelled(id) {
            return Err("cancelled".to_owned());
        }
        match stream.wait(CANCEL_CHECK) {
            Ok(Chunk::Data(chunk)) => body.extend_from_slice(&chunk),
            Ok(Chunk::Pending) => {}
            Ok(Chunk::End) | Err(_) => break,
        }
    }
    Ok(body)
}

fn generate(request: &Value) -> Result<(), String> {
    let id = &request["request_id"];
    if forget_old_cancels(id) {
        return Err("cancelled".to_owned());
    }
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
        "messages": chat::messages(request["system"].as_str().unwrap_or_default(), history),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !offered.is_empty() {
        body["tools"] = Value::Array(chat::tools(offered));
    }
    let mut http = Request::new("POST", &format!("{}/chat/completions", base.trim_end_matches('/')))
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .idle_timeout(Duration::from_secs(stall))
        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    if astrid_sdk::has_config("api_key") {
        http = http.header("Authorization", "Bearer {{secret:api_key}}");
    }
    // The head is awaited in slices too: a cancel before the server's first byte drops the
    // request (and, with it, the connection) at once.
    let mut opening = http.open().map_err(|e| format!("cannot reach {base}: {e}"))?;
    let mut stream = loop {
        if cancelled(id) {
            return Err("cancelled".to_owned());
        }
        match opening.wait(CANCEL_CHECK) {
            Ok(Some(stream)) => break stream,
            Ok(None) => {}
            Err(Error::Timeout) => return Err(format!("{base} sent no response for {stall} s")),
            Err(e) => return Err(format!("cannot reach {base}: {e}")),
        }
    };
    if stream.status != 200 {
        let body = body_start(&mut stream, id)?;
        return Err(status_error(stream.status, &body));
    }
    let content_type = stream.headers.get("content-type");
    if !is_event_stream(content_type) {
        let content_type = content_type.map_or_else(|| "no Content-Type".to_owned(), |c| format!("Content-Type {c}"));
        let body = body_start(&mut stream, id)?;
        return Err(format!("the server did not answer with an event stream ({content_type}): {}", shown(&body)));
    }
    let mut events = EventStream::default();
    let mut translator = Translator::new(id);
    loop {
        if cancelled(id) {
            return Err("cancelled".to_owned());
        }
        let chunk = match stream.wait(CANCEL_CHECK) {
            Ok(Chunk::Data(chunk)) => chunk,
            Ok(Chunk::Pending) => continue,
            Ok(Chunk::End) => {
                return Err(format!(
                    "the stream was cut short: it ended after {} event(s), before [DONE]",
                    events.dispatched()
                ));
            }
            Err(Error::Timeout) => return Err(format!("the server sent nothing for {stall} s")),
            Err(e) => return Err(format!("the stream broke after {} event(s): {e}", events.dispatched())),
        };
        let Translated { events: out, outcome } = translator.translate(&events.feed(&chunk)?);
        for out in out {
            event(id, out);
        }
        if outcome? {
            event(id, json!("Done"));
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_event_stream_is_an_event_stream() {
        let is = |value: &str| is_event_stream(Some(&value.to_owned()));
        assert!(is("text/event-stream"));
        assert!(is("text/event-stream; charset=utf-8"));
        assert!(is("Text/Event-Stream"));
        assert!(!is("application/json"));
        assert!(!is("text/event-streams"));
        assert!(!is_event_stream(None));
    }
}
