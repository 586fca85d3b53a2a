//! kv-counter: counts `/count` commands in its own KV namespace, safely under concurrency
//! (compare-and-swap), and survives restarts because the KV store does.

use astrid_sdk::types::{IpcPayload, UserInputFields};
use astrid_sdk::{Hook, ipc, kv};

const KEY: &str = "count";

fn increment() -> astrid_sdk::Result<u64> {
    loop {
        let current = kv::get(KEY)?;
        let n = current.as_deref().and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
        if kv::cas(KEY, current.as_deref(), Some(n.to_string().as_bytes()))? {
            return Ok(n);
        }
    }
}

fn hook(_action: &str, payload: &[u8]) -> Hook {
    let Some(UserInputFields { text, session_id, .. }) = ipc::user_input(payload) else {
        return Hook::Continue(None);
    };
    if text.trim() != "/count" {
        return Hook::Continue(None);
    }
    let text = match increment() {
        Ok(n) => format!("count = {n}"),
        Err(e) => format!("count failed: {e}"),
    };
    let _ = ipc::publish(
        "agent.v1.response",
        &IpcPayload::AgentResponse { text, is_final: true, session_id, outcome: None },
    );
    Hook::Final(serde_json::Value::Null)
}

/// Runs once, on the first start after an install: the counter starts from zero.
fn install() {
    let _ = kv::set(KEY, b"0");
    let _ = kv::set("installed", b"yes");
}

/// Runs once, on the first start of a new version: the count carries over.
fn upgrade() {
    let _ = kv::set("upgraded", b"yes");
}

astrid_sdk::capsule!(hook = hook, install = install, upgrade = upgrade);
