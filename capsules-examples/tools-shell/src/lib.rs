//! tools-shell: the agent's `run_command` tool, through the kernel's command sandbox.
//!
//! `tool.v1.request.describe` is answered on `tool.v1.response.describe.shell`; a
//! `tool_execute_request` for `run_command` on `tool.v1.execute.run_command` is answered on
//! `tool.v1.execute.run_command.result` with the exit status and the output (its first and
//! last 32 KiB when it is longer), then what the command changed in the review overlay. The
//! approval, the confinement, the timeout and the live output are the kernel's: this capsule
//! cannot run a line the person did not see.

use astrid_sdk::process::{Command, CommandFinished, CommandOutcome};
use astrid_sdk::{Hook, ipc};
use serde_json::{Value, json};

/// Output handed to the model: 64 KiB, head and tail.
const KEEP: usize = 64 * 1024;

fn definitions() -> Value {
    json!([
        {"name": "run_command",
         "description": "Run a shell command line in the workspace (asks the user first). It sees the workspace \
                         with the changes pending review; its writes are pending review too. No network unless \
                         asked for. Returns the exit status and the output (stdout and stderr together; long \
                         output keeps its first and last 32 KiB).",
         "input_schema": {"type": "object", "properties": {
             "command": {"type": "string", "description": "The command line, run by /bin/sh -c"},
             "cwd": {"type": "string", "description": "Directory relative to the workspace root (default: the root)"},
             "timeout_secs": {"type": "integer", "description": "Seconds before it is killed (default 120)"},
             "network": {"type": "boolean", "description": "Whether it needs the network (default false)"}},
           "required": ["command"]}},
    ])
}

fn summary(finished: &CommandFinished) -> String {
    let ended = match (finished.outcome, finished.code, finished.signal) {
        (CommandOutcome::Exited, Some(code), _) => format!("exit status {code}"),
        (CommandOutcome::Signalled, _, Some(signal)) => format!("killed by signal {signal}"),
        (CommandOutcome::TimedOut, ..) => "killed: it ran past its timeout".to_owned(),
        _ => "killed on request".to_owned(),
    };
    format!("{ended} after {:.1} s", finished.duration_ms as f64 / 1000.0)
}

fn run_command(arguments: &Value) -> Result<String, String> {
    let line = arguments["command"].as_str().ok_or("missing argument `command`")?;
    let mut command = Command::shell(line).network(arguments["network"].as_bool().unwrap_or(false));
    if let Some(cwd) = arguments["cwd"].as_str() {
        command = command.cwd(cwd);
    }
    if let Some(secs) = arguments["timeout_secs"].as_u64() {
        command = command.timeout_secs(secs);
    }
    let process = command.spawn().map_err(|refused| refused.message)?;
    let (finished, output) = process.run_to_end(KEEP);
    let mut text = format!("{}\n{output}", summary(&finished));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if !finished.changes.is_empty() {
        let changed: Vec<String> =
            finished.changes.iter().map(|c| format!("{} ({:?})", c.path, c.kind).to_lowercase()).collect();
        text.push_str(&format!("changed, pending review (astrid workspace diff): {}\n", changed.join(", ")));
    }
    if !finished.refused_changes.is_empty() {
        text.push_str(&format!("not kept: {}\n", finished.refused_changes.join(", ")));
    }
    if let Some(problem) = &finished.problem {
        text.push_str(&format!("the sandbox reported a problem, the changes listed may be incomplete: {problem}\n"));
    }
    match finished.outcome {
        CommandOutcome::Exited => Ok(text),
        _ => Err(text),
    }
}

fn hook(action: &str, payload: &[u8]) -> Hook {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else { return Hook::Continue(None) };
    match action {
        "describe" => {
            let reply = json!({
                "tools": definitions(),
                "description": "Shell commands in the sandbox",
                "approval": {"run_command": "asks"},
            });
            let _ = ipc::publish("tool.v1.response.describe.shell", &reply);
        }
        "execute" if event["type"] == "tool_execute_request" => {
            // Every tool's calls pass here (tool.v1.execute.*): answer only our own.
            if event["tool_name"] != "run_command" {
                return Hook::Continue(None);
            }
            let call_id = event["call_id"].clone();
            let (content, is_error) = match run_command(&event["arguments"]) {
                Ok(content) => (content, false),
                Err(content) => (content, true),
            };
            let result = json!({"type": "tool_execute_result", "call_id": call_id,
                                "result": {"call_id": call_id, "content": content, "is_error": is_error}});
            let _ = ipc::publish("tool.v1.execute.run_command.result", &result);
        }
        _ => {}
    }
    Hook::Final(Value::Null)
}

astrid_sdk::capsule!(hook = hook);
