//! tools-fs: file tools for the agent, through the workspace VFS and the capsule's grant.
//!
//! `tool.v1.request.describe` is answered on `tool.v1.response.describe.fs` with the tool
//! definitions and which of them ask before they act (`approval`, shown by `astrid tools
//! list`); a `tool_execute_request` on `tool.v1.execute.<tool>` is answered with a
//! `tool_execute_result` on `tool.v1.execute.<tool>.result`. `write_file` and `edit_file` ask
//! for approval first; a denial is a tool error the model sees, and nothing is written.

use astrid_sdk::{Hook, fs, ipc};
use serde_json::{Value, json};

/// Most of a file `read_file` hands the model at once; the rest is read with `offset`.
const MAX_READ: usize = 256 * 1024;
/// Most matches `search` reports.
const MAX_MATCHES: usize = 50;
/// The tools that ask the person before they act (through [`approved`]); the others read
/// within the grant.
const ASKS: &[&str] = &["write_file", "edit_file"];

fn definitions() -> Value {
    let path = json!({"type": "string", "description": "A path relative to the workspace root"});
    json!([
        {"name": "read_file", "description": "Read a text file of the workspace (256 KiB at a time; a longer file says where to go on with `offset`)",
         "input_schema": {"type": "object", "properties": {"path": path,
            "offset": {"type": "integer", "description": "Byte to start at (default 0)"}}, "required": ["path"]}},
        {"name": "list_dir", "description": "List a directory of the workspace",
         "input_schema": {"type": "object", "properties": {"path": path}, "required": []}},
        {"name": "search", "description": "Find lines containing a text in the files of a directory (not recursive)",
         "input_schema": {"type": "object", "properties": {"text": {"type": "string"}, "path": path}, "required": ["text"]}},
        {"name": "write_file", "description": "Write a whole file (asks the user; lands in the review overlay)",
         "input_schema": {"type": "object", "properties": {"path": path, "content": {"type": "string"}}, "required": ["path", "content"]}},
        {"name": "edit_file", "description": "Replace one exact text in a file by another (asks the user)",
         "input_schema": {"type": "object", "properties": {"path": path, "old": {"type": "string"}, "new": {"type": "string"}}, "required": ["path", "old", "new"]}},
    ])
}

fn text(arguments: &Value, key: &str) -> Result<String, String> {
    arguments[key].as_str().map(str::to_owned).ok_or_else(|| format!("missing argument `{key}`"))
}

fn read_text(path: &str) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The page of `path` that starts at byte `offset` (moved forward to a character boundary):
/// at most [`MAX_READ`] bytes, and, when the file goes on, a last line that says where.
fn read_page(path: &str, offset: usize) -> Result<String, String> {
    let text = read_text(path)?;
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut end = (start + MAX_READ).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut page = text[start..end].to_owned();
    if end < text.len() {
        page.push_str(&format!(
            "\n[truncated: bytes {start}..{end} of {} shown; read_file with offset={end} reads on]",
            text.len()
        ));
    }
    Ok(page)
}

/// Asks the person to allow writing `content` to `path` (they see the diff).
fn approved(action: &str, path: &str, content: &str) -> Result<(), String> {
    match astrid_sdk::request_write_approval(action, path, content) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the user did not approve {action} on {path}; nothing was written")),
        Err(e) => Err(format!("cannot ask for approval: {e}")),
    }
}

fn execute(tool: &str, arguments: &Value) -> Result<String, String> {
    match tool {
        "read_file" => {
            let offset = arguments["offset"].as_u64().and_then(|o| usize::try_from(o).ok()).unwrap_or(0);
            read_page(&text(arguments, "path")?, offset)
        }
        "list_dir" => {
            let path = arguments["path"].as_str().filter(|p| !p.is_empty()).unwrap_or(".");
            let entries = fs::read_dir(path).map_err(|e| format!("cannot list {path}: {e}"))?;
            let mut names: Vec<String> =
                entries.iter().map(|e| if e.is_dir { format!("{}/", e.name) } else { e.name.clone() }).collect();
            names.sort();
            Ok(names.join("\n"))
        }
        "search" => {
            let needle = text(arguments, "text")?;
            let dir = arguments["path"].as_str().filter(|p| !p.is_empty()).unwrap_or(".");
            let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {dir}: {e}"))?;
            let mut found = Vec::new();
            for entry in entries.iter().filter(|e| !e.is_dir) {
                let path = if dir == "." { entry.name.clone() } else { format!("{dir}/{}", entry.name) };
                let Ok(content) = read_text(&path) else { continue };
                for (number, line) in content.lines().enumerate().filter(|(_, l)| l.contains(&needle)) {
                    found.push(format!("{path}:{}: {line}", number + 1));
                }
            }
            found.truncate(MAX_MATCHES);
            Ok(if found.is_empty() { format!("no line contains {needle:?}") } else { found.join("\n") })
        }
        "write_file" => {
            let (path, content) = (text(arguments, "path")?, text(arguments, "content")?);
            approved("write_file", &path, &content)?;
            fs::write(&path, content.as_bytes()).map_err(|e| format!("cannot write {path}: {e}"))?;
            Ok(format!("wrote {} bytes to {path} (pending review: astrid workspace diff)", content.len()))
        }
        "edit_file" => {
            let (path, old, new) = (text(arguments, "path")?, text(arguments, "old")?, text(arguments, "new")?);
            let content = read_text(&path)?;
            if content.matches(old.as_str()).count() != 1 {
                return Err(format!("{path} must contain the old text exactly once"));
            }
            let edited = content.replacen(&old, &new, 1);
            approved("edit_file", &path, &edited)?;
            fs::write(&path, edited.as_bytes()).map_err(|e| format!("cannot write {path}: {e}"))?;
            Ok(format!("edited {path} (pending review: astrid workspace diff)"))
        }
        other => Err(format!("no tool called {other}")),
    }
}

fn hook(action: &str, payload: &[u8]) -> Hook {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else { return Hook::Continue(None) };
    match action {
        "describe" => {
            let tools = definitions();
            let approval: serde_json::Map<String, Value> = tools
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|tool| tool["name"].as_str())
                .map(|name| (name.to_owned(), json!(if ASKS.contains(&name) { "asks" } else { "never" })))
                .collect();
            let reply = json!({"tools": tools, "description": "Workspace files", "approval": approval});
            let _ = ipc::publish("tool.v1.response.describe.fs", &reply);
        }
        "execute" if event["type"] == "tool_execute_request" => {
            let tool = event["tool_name"].as_str().unwrap_or_default();
            // Every tool's calls pass here (tool.v1.execute.*): answer only our own, or another
            // tool (an MCP server's, another capsule's) would get our "no such tool" first.
            if !definitions().as_array().is_some_and(|tools| tools.iter().any(|d| d["name"] == tool)) {
                return Hook::Continue(None);
            }
            let call_id = event["call_id"].clone();
            let (content, is_error) = match execute(tool, &event["arguments"]) {
                Ok(content) => (content, false),
                Err(content) => (content, true),
            };
            let result = json!({"type": "tool_execute_result", "call_id": call_id,
                                "result": {"call_id": call_id, "content": content, "is_error": is_error}});
            let _ = ipc::publish(&format!("tool.v1.execute.{tool}.result"), &result);
        }
        _ => {}
    }
    Hook::Final(Value::Null)
}

astrid_sdk::capsule!(hook = hook);
