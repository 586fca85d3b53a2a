//! llm-offline: answers `llm_request`s on `llm.v1.request.generate.offline` with a stream of
//! `llm_stream_event`s on `llm.v1.stream.offline`, like any provider, but from fixed rules
//! instead of a model: it repeats what it was told, says that it is offline, and names the
//! tools it was offered. Same input, same output, no network.
//!
//! It also exercises tool calls, when the tool is offered: `read PATH` calls `read_file`,
//! `list [PATH]` `list_dir`, `search TEXT` `search`, `write PATH: TEXT` `write_file`, `run LINE`
//! `run_command` (a shell command line, in the sandbox, asked first); after a
//! tool's result it reports what the tool answered. A file `read_file` hands over in pages is
//! read on to its end, as a model would: each page is told and the next one asked for in the
//! same response, so the answer is the whole file, in order.
//!
//! Text streams a few words at a time (pieces of about [`PIECE`] bytes), as a model's tokens
//! would, whatever its length.

use astrid_sdk::{Hook, ipc};
use serde_json::{Value, json};

const STREAM: &str = "llm.v1.stream.offline";
/// Bytes of text per streamed piece (cut after a space or a line end).
const PIECE: usize = 48;

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
    reply.push_str(
        " No model endpoint is configured: `astrid config model --base-url URL` (an OpenAI-compatible \
         endpoint) sets one for real answers.",
    );
    reply
}

/// The tool call a prompt asks for, if the tool is on offer.
fn tool_call(said: &str, tools: &[Value]) -> Option<(&'static str, Value)> {
    let offered = |name: &str| tools.iter().any(|t| t["name"] == name);
    let said = said.trim();
    if let Some(path) = said.strip_prefix("read ").filter(|_| offered("read_file")) {
        return Some(("read_file", json!({"path": path.trim()})));
    }
    if (said == "list" || said.starts_with("list ")) && offered("list_dir") {
        let path = said.strip_prefix("list").unwrap_or_default().trim();
        return Some(("list_dir", json!({"path": if path.is_empty() { "." } else { path }})));
    }
    if let Some(text) = said.strip_prefix("search ").filter(|_| offered("search")) {
        return Some(("search", json!({"text": text.trim()})));
    }
    if let Some(line) = said.strip_prefix("run ").filter(|_| offered("run_command")) {
        return Some(("run_command", json!({"command": line.trim()})));
    }
    if let Some((path, content)) = said.strip_prefix("write ").and_then(|rest| rest.split_once(':')) {
        if offered("write_file") {
            return Some(("write_file", json!({"path": path.trim(), "content": content.trim_start()})));
        }
    }
    None
}

/// The report on a tool's result (the last message), naming the tool that was called, and
/// the next page to read when the result was a page of a longer file.
fn tool_report(messages: &[Value]) -> (String, Option<Value>) {
    let result = &messages[messages.len() - 1]["content"];
    let call = messages
        .iter()
        .rev()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|call| call["id"] == result["call_id"]);
    let name = call.and_then(|call| call["name"].as_str()).unwrap_or("the tool");
    let content = result["content"].as_str().unwrap_or_default();
    if name == "read_file" && result["is_error"] != true {
        let arguments = call.map(|call| &call["arguments"]).unwrap_or(&Value::Null);
        // Later pages go on where the last one stopped, with nothing in between.
        let lead =
            if arguments["offset"].as_u64().unwrap_or(0) == 0 { "[offline model] read_file answered: " } else { "" };
        return match next_page(content) {
            Some((page, offset)) => {
                (format!("{lead}{page}"), Some(json!({"path": arguments["path"], "offset": offset})))
            }
            None => (format!("{lead}{content}"), None),
        };
    }
    let outcome = if result["is_error"] == true { "failed" } else { "answered" };
    (format!("[offline model] {name} {outcome}: {content}"), None)
}

/// A page `read_file` cut (`…\n[truncated: … read_file with offset=N reads on]`): the page
/// without that line, and where the next one starts.
fn next_page(content: &str) -> Option<(&str, u64)> {
    let (page, last) = content.rsplit_once("\n[truncated: ")?;
    let offset = last.split("offset=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((page, offset))
}

/// `text` in pieces of about [`PIECE`] bytes, each ending after a space or a line end where
/// there is one.
fn pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (index, character) in text.char_indices() {
        let end = index + character.len_utf8();
        if end - start >= PIECE && (character == ' ' || character == '\n') {
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Streams a tool call of `name` with `arguments`, as models do: start, the arguments in two
/// fragments, end.
fn call_tool(id: &Value, name: &str, arguments: &Value) {
    let call_id = format!("call-{}", id.as_str().unwrap_or_default().chars().take(8).collect::<String>());
    event(id, json!({"ToolCallStart": {"id": call_id, "name": name}}));
    let arguments = arguments.to_string();
    let (head, tail) = arguments.split_at(arguments.len() / 2);
    for fragment in [head, tail] {
        event(id, json!({"ToolCallDelta": {"id": call_id, "args_delta": fragment}}));
    }
    event(id, json!({"ToolCallEnd": {"id": call_id}}));
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
    let last_is_user = messages.last().is_some_and(|m| m["role"] == "user");
    if let Some((name, arguments)) =
        last_is_user.then(|| tool_call(&text_of(&messages[messages.len() - 1]["content"]), tools)).flatten()
    {
        call_tool(id, name, &arguments);
        event(id, json!("Done"));
        return Hook::Final(Value::Null);
    }
    let (text, next) = if messages.last().is_some_and(|m| m["role"] == "tool") {
        tool_report(messages)
    } else {
        (reply(messages, tools), None)
    };
    for piece in pieces(&text) {
        event(id, json!({"TextDelta": piece}));
    }
    if let Some(arguments) = next.filter(|_| tools.iter().any(|t| t["name"] == "read_file")) {
        call_tool(id, "read_file", &arguments);
    } else {
        let input: usize = messages.iter().map(|m| text_of(&m["content"]).split_whitespace().count()).sum();
        event(id, json!({"Usage": {"input_tokens": input, "output_tokens": text.split_whitespace().count()}}));
    }
    event(id, json!("Done"));
    Hook::Final(Value::Null)
}

astrid_sdk::capsule!(hook = hook);
