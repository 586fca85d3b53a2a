//! Chat completions, without I/O: our conversation as chat-completions `messages`, and the
//! data of the server's events as our stream events.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// Our tool names as function names, which allow `[A-Za-z0-9_-]`: `server:tool` is sent as
/// `server__tool`.
fn function_name(name: &Value) -> String {
    name.as_str().unwrap_or_default().replace(':', "__")
}

/// Our `Message`s as chat-completions messages (with the system prompt first). An assistant
/// text immediately followed by the assistant's tool calls (one model round that did both)
/// is one assistant message with `content` and `tool_calls`, as the model produced it.
pub fn messages(system: &str, messages: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
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
                               "function": {"name": function_name(&c["name"]), "arguments": c["arguments"].to_string()}})
                    })
                    .collect();
                match out.last_mut() {
                    // The text of the same round, just before.
                    Some(text)
                        if text["role"] == "assistant"
                            && text["content"].is_string()
                            && text.get("tool_calls").is_none() =>
                    {
                        if text["content"] == "" {
                            text["content"] = Value::Null;
                        }
                        text["tool_calls"] = Value::Array(calls);
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": calls})),
                }
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

/// The tools offered, as chat-completions functions.
pub fn tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {"name": function_name(&t["name"]), "description": t["description"], "parameters": t["input_schema"]}})
        })
        .collect()
}

/// Turns the data of the server's events into our stream events, for one response.
#[derive(Debug)]
pub struct Translator {
    /// Makes the ids of calls whose server gave none unique to this request.
    request_id: String,
    /// Calls being assembled from fragments: the server's index → our id.
    open: BTreeMap<u64, String>,
    /// Every call id of this response so far.
    used: BTreeSet<String>,
}

/// What one read of the body came to.
#[derive(Debug, PartialEq)]
pub struct Translated {
    /// Stream events to publish, in order, adjacent text (and fragments of one call's
    /// arguments) merged.
    pub events: Vec<Value>,
    /// `Ok(true)` at `[DONE]`; `Err` for a malformed event or an error the server reported
    /// (after the events before it).
    pub outcome: Result<bool, String>,
}

impl Translator {
    /// A translator for the response to `request_id`.
    pub fn new(request_id: &Value) -> Self {
        let request_id = match request_id {
            Value::String(id) => id.clone(),
            other => other.to_string(),
        };
        Self { request_id, open: BTreeMap::new(), used: BTreeSet::new() }
    }

    /// The events of the data of several server events (one read of the body): a client
    /// that reads slowly gets fewer, larger deltas.
    pub fn translate(&mut self, data: &[String]) -> Translated {
        let mut events = Vec::new();
        let mut outcome = Ok(false);
        for data in data {
            match self.on_data(data, &mut events) {
                Ok(false) => {}
                done_or_failed => {
                    outcome = done_or_failed;
                    break;
                }
            }
        }
        Translated { events: coalesce(events), outcome }
    }

    /// One event's data; `Ok(true)` at `[DONE]`.
    fn on_data(&mut self, data: &str, events: &mut Vec<Value>) -> Result<bool, String> {
        if data.trim() == "[DONE]" {
            self.end_calls(events);
            return Ok(true);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| format!("malformed stream: {e}: {data:.120}"))?;
        if let Some(message) = chunk["error"]["message"].as_str() {
            return Err(format!("the server reported an error: {message}"));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            events.push(json!({"Usage": {"input_tokens": usage["prompt_tokens"].as_u64().unwrap_or(0),
                                         "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0)}}));
        }
        let Some(choice) = chunk["choices"].get(0) else { return Ok(false) };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            events.push(json!({"TextDelta": text}));
        }
        for call in delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let index = call["index"].as_u64().unwrap_or(0);
            if !self.open.contains_key(&index) {
                let id = self.call_id(call["id"].as_str().filter(|id| !id.is_empty()), index);
                let name = call["function"]["name"].as_str().unwrap_or_default().replace("__", ":");
                events.push(json!({"ToolCallStart": {"id": id, "name": name}}));
                self.open.insert(index, id);
            }
            if let (Some(id), Some(args)) = (self.open.get(&index), call["function"]["arguments"].as_str())
                && !args.is_empty()
            {
                events.push(json!({"ToolCallDelta": {"id": id, "args_delta": args}}));
            }
        }
        if choice["finish_reason"].is_string() {
            self.end_calls(events);
        }
        Ok(false)
    }

    /// The id of a new call: the server's when it is new in this response, else one made
    /// distinct (a server that repeats ids, or gives none).
    fn call_id(&mut self, server: Option<&str>, index: u64) -> String {
        let base = match server {
            Some(id) if !self.used.contains(id) => id.to_owned(),
            Some(id) => format!("{id}_{index}"),
            None => format!("call_{}_{index}", self.request_id),
        };
        let mut id = base.clone();
        let mut n = 1;
        while self.used.contains(&id) {
            n += 1;
            id = format!("{base}_{n}");
        }
        self.used.insert(id.clone());
        id
    }

    fn end_calls(&mut self, events: &mut Vec<Value>) {
        for (_, id) in std::mem::take(&mut self.open) {
            events.push(json!({"ToolCallEnd": {"id": id}}));
        }
    }
}

/// Adjacent text deltas as one, and adjacent argument fragments of the same call as one;
/// the order of everything else is kept.
fn coalesce(events: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(events.len());
    for event in events {
        let merged = match (out.last_mut(), &event) {
            (Some(Value::Object(last)), Value::Object(next)) => {
                match (last.get_mut("TextDelta"), next.get("TextDelta")) {
                    (Some(Value::String(text)), Some(Value::String(more))) => {
                        text.push_str(more);
                        true
                    }
                    _ => match (last.get_mut("ToolCallDelta"), next.get("ToolCallDelta")) {
                        (Some(last), Some(next)) if last["id"] == next["id"] => {
                            let more = next["args_delta"].as_str().unwrap_or_default();
                            let args = format!("{}{more}", last["args_delta"].as_str().unwrap_or_default());
                            last["args_delta"] = Value::String(args);
                            true
                        }
                        _ => false,
                    },
                }
            }
            _ => false,
        };
        if !merged {
            out.push(event);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(piece: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}).to_string()
    }

    fn call(index: u64, id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
        let mut call = json!({"index": index, "type": "function", "function": {"arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]}).to_string()
    }

    fn finish(reason: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}).to_string()
    }

    fn starts(events: &[Value]) -> Vec<String> {
        events.iter().filter_map(|e| e["ToolCallStart"]["id"].as_str().map(str::to_owned)).collect()
    }

    #[test]
    fn text_of_one_read_is_one_delta_in_order() {
        let mut translator = Translator::new(&json!("r1"));
        let out = translator.translate(&[text("Hel"), text("lo, "), text("world")]);
        assert_eq!(out, Translated { events: vec![json!({"TextDelta": "Hello, world"})], outcome: Ok(false) });
        let out = translator.translate(&[text("!"), finish("stop"), "[DONE]".to_owned(), text("never")]);
        assert_eq!(out, Translated { events: vec![json!({"TextDelta": "!"})], outcome: Ok(true) });
    }

    #[test]
    fn text_around_a_tool_call_and_fragments_of_different_calls_are_not_merged() {
        let mut translator = Translator::new(&json!("r1"));
        let data = [
            text("Let me look. "),
            text("One moment."),
            call(0, Some("call_a"), Some("read_file"), ""),
            call(0, None, None, "{\"pa"),
            call(0, None, None, "th\": 1}"),
            call(1, Some("call_b"), Some("fs__list"), "{}"),
            call(0, None, None, ""),
            text("Done"),
            finish("tool_calls"),
        ];
        let out = translator.translate(&data);
        assert_eq!(
            out.events,
            vec![
                json!({"TextDelta": "Let me look. One moment."}),
                json!({"ToolCallStart": {"id": "call_a", "name": "read_file"}}),
                json!({"ToolCallDelta": {"id": "call_a", "args_delta": "{\"path\": 1}"}}),
                json!({"ToolCallStart": {"id": "call_b", "name": "fs:list"}}),
                json!({"ToolCallDelta": {"id": "call_b", "args_delta": "{}"}}),
                json!({"TextDelta": "Done"}),
                json!({"ToolCallEnd": {"id": "call_a"}}),
                json!({"ToolCallEnd": {"id": "call_b"}}),
            ]
        );
    }

    #[test]
    fn a_repeated_server_id_is_made_distinct_within_the_response() {
        let mut translator = Translator::new(&json!("r1"));
        let out = translator.translate(&[
            call(0, Some("call_fake_1"), Some("a"), "{}"),
            call(1, Some("call_fake_1"), Some("b"), "{}"),
            call(2, Some("call_fake_1"), Some("c"), "{}"),
            call(3, Some("call_fake_1_1"), Some("d"), "{}"),
        ]);
        let ids = starts(&out.events);
        assert_eq!(ids[0], "call_fake_1", "a new id is the server's");
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 4, "{ids:?}");
        // The arguments follow each call's own id.
        assert_eq!(out.events[1], json!({"ToolCallDelta": {"id": ids[0], "args_delta": "{}"}}));
        assert_eq!(out.events[3], json!({"ToolCallDelta": {"id": ids[1], "args_delta": "{}"}}));
    }

    #[test]
    fn an_omitted_id_is_unique_to_the_request_and_the_call() {
        let ids = |request: &str| {
            let mut translator = Translator::new(&json!(request));
            starts(&translator.translate(&[call(0, None, Some("a"), ""), call(1, Some(""), Some("b"), "")]).events)
        };
        let (first, second) = (ids("req-1"), ids("req-2"));
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert!(first.iter().all(|id| !second.contains(id)), "{first:?} {second:?}");
        assert!(first[0].contains("req-1"));
    }

    #[test]
    fn calls_still_open_at_done_are_ended_and_errors_come_after_what_preceded_them() {
        let mut translator = Translator::new(&json!("r"));
        let out = translator.translate(&[call(0, Some("c"), Some("a"), "{}"), "[DONE]".to_owned()]);
        assert_eq!(out.events.last(), Some(&json!({"ToolCallEnd": {"id": "c"}})));
        assert_eq!(out.outcome, Ok(true));

        let mut translator = Translator::new(&json!("r"));
        let out = translator.translate(&[text("partial"), "{not json".to_owned(), text("lost")]);
        assert_eq!(out.events, vec![json!({"TextDelta": "partial"})]);
        assert!(out.outcome.is_err_and(|e| e.starts_with("malformed stream")));

        let reported = json!({"error": {"message": "overloaded"}}).to_string();
        let out = Translator::new(&json!("r")).translate(&[reported]);
        assert_eq!(out.outcome, Err("the server reported an error: overloaded".to_owned()));
    }

    #[test]
    fn usage_is_reported() {
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).to_string();
        let out = Translator::new(&json!("r")).translate(&[usage]);
        assert_eq!(out.events, vec![json!({"Usage": {"input_tokens": 7, "output_tokens": 3}})]);
    }

    #[test]
    fn a_round_of_text_and_tool_calls_is_one_assistant_message() {
        let calls = json!([{"id": "c1", "name": "fs:read", "arguments": {"path": "a"}},
                           {"id": "c2", "name": "list", "arguments": {}}]);
        let history = [
            json!({"role": "user", "content": "look"}),
            json!({"role": "assistant", "content": "I will read two things."}),
            json!({"role": "assistant", "content": calls}),
            json!({"role": "tool", "content": {"call_id": "c1", "content": "A", "is_error": false}}),
            json!({"role": "tool", "content": {"call_id": "c2", "content": "B", "is_error": false}}),
            json!({"role": "assistant", "content": "Both read."}),
        ];
        let out = messages("be brief", &history);
        assert_eq!(out.len(), 6, "{out:#?}");
        assert_eq!(out[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(out[2]["role"], "assistant");
        assert_eq!(out[2]["content"], "I will read two things.");
        let sent = out[2]["tool_calls"].as_array().expect("tool calls");
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0]["id"], "c1");
        assert_eq!(sent[0]["function"]["name"], "fs__read", "function names allow no colon");
        assert_eq!(sent[0]["function"]["arguments"], "{\"path\":\"a\"}");
        assert_eq!(out[3], json!({"role": "tool", "tool_call_id": "c1", "content": "A"}));
        assert_eq!(out[5], json!({"role": "assistant", "content": "Both read."}));
    }

    #[test]
    fn tool_calls_alone_or_after_another_role_stay_their_own_message() {
        let calls = json!([{"id": "c1", "name": "read", "arguments": {}}]);
        let out =
            messages("", &[json!({"role": "user", "content": "go"}), json!({"role": "assistant", "content": calls})]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1]["content"], Value::Null);
        assert_eq!(out[1]["tool_calls"][0]["id"], "c1");
        // Two rounds of calls in a row are two messages: only text is merged into.
        let out = messages(
            "",
            &[json!({"role": "assistant", "content": calls}), json!({"role": "assistant", "content": calls})],
        );
        assert_eq!(out.len(), 2);
        // Empty text before the calls: no text is sent.
        let out = messages(
            "",
            &[json!({"role": "assistant", "content": ""}), json!({"role": "assistant", "content": calls})],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["content"], Value::Null);
        assert_eq!(out[0]["tool_calls"][0]["id"], "c1");
    }
}
