//! file-tool: `/write PATH TEXT`, `/read PATH`, `/ls PATH`, `/rm PATH` on the workspace,
//! within its grant (`notes/` only). Writes wait in the overlay for a person to commit.

use astrid_sdk::types::{IpcPayload, UserInputFields};
use astrid_sdk::{Hook, fs, ipc};

fn run_command(text: &str) -> Option<String> {
    let mut words = text.trim().splitn(3, ' ');
    let command = words.next()?;
    let path = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("");
    let answer = match command {
        "/write" => fs::write(path, rest.as_bytes()).map(|()| format!("wrote {} bytes to {path}", rest.len())),
        "/read" => fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        "/ls" => fs::read_dir(path).map(|entries| {
            entries
                .iter()
                .map(|e| if e.is_dir { format!("{}/", e.name) } else { e.name.clone() })
                .collect::<Vec<_>>()
                .join(" ")
        }),
        "/rm" => fs::remove(path).map(|()| format!("removed {path}")),
        _ => return None,
    };
    Some(answer.unwrap_or_else(|e| format!("error: {e}")))
}

fn hook(_action: &str, payload: &[u8]) -> Hook {
    let Some(UserInputFields { text, session_id, .. }) = ipc::user_input(payload) else {
        return Hook::Continue(None);
    };
    let Some(text) = run_command(&text) else { return Hook::Continue(None) };
    let _ = ipc::publish(
        "agent.v1.response",
        &IpcPayload::AgentResponse { text, is_final: true, session_id, outcome: None },
    );
    Hook::Final(serde_json::Value::Null)
}

astrid_sdk::capsule!(hook = hook);
