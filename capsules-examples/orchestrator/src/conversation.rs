//! Conversations in this capsule's KV namespace: one key per session (`history:<session>`)
//! and the index of them all (`sessions`, [`SessionIndex`], which `astrid sessions list`
//! reads).
//!
//! A turn is stored once it is answered: the person's prompt, every tool call and result, and
//! the model's answer, so the next turn's model sees what was done and not only what was said.
//! What is stored is bounded: a session's history fits one KV value (under 1 MiB) and at most
//! twice the context budget (more would never be sent), by the budget's own rules (old tool
//! outputs shortened, then old turns left out with a line each); the index keeps the
//! [`MAX_INDEXED_SESSIONS`](astrid_sdk::types::sessions::MAX_INDEXED_SESSIONS) most recently
//! active sessions and a session that falls off it is deleted. So the namespace stays bounded
//! however long the conversations and however many.

use std::collections::VecDeque;

use astrid_sdk::kv;
use astrid_sdk::types::SessionIndex;
use astrid_sdk::types::sessions::SESSION_INDEX_KEY;
use serde_json::{Value, json};

use crate::budget::{self, Earlier};

/// The most a stored history may take (the KV value limit is 1 MiB; this leaves room).
pub const MAX_STORED_BYTES: usize = 960 * 1024;
const HISTORY_PREFIX: &str = "history:";

/// A session's conversation as stored.
#[derive(Debug, Default)]
pub struct Stored {
    /// The turns left out of it so far.
    pub earlier: Earlier,
    /// Its messages, oldest first.
    pub messages: Vec<Value>,
    /// Whether the person was told that the conversation outgrew the context budget.
    pub told: bool,
}

fn history_key(session_id: &str) -> String {
    format!("{HISTORY_PREFIX}{session_id}")
}

/// The stored conversation of `session_id` (none yet: empty). The first versions stored a
/// bare array of messages; that still reads.
pub fn load(session_id: &str) -> Stored {
    let Some(value) =
        kv::get(&history_key(session_id)).ok().flatten().and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        return Stored::default();
    };
    if let Value::Array(messages) = value {
        return Stored { messages, ..Stored::default() };
    }
    let lines: VecDeque<String> = value["earlier"]["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    Stored {
        earlier: Earlier { count: value["earlier"]["count"].as_u64().unwrap_or(lines.len() as u64), lines },
        messages: value["messages"].as_array().cloned().unwrap_or_default(),
        told: value["told"].as_bool().unwrap_or(false),
    }
}

/// Stores `turn` (its messages) at the end of `stored`, within `limit` bytes, and records it
/// in the index.
pub fn remember(session_id: &str, prompt: &str, mut stored: Stored, turn: &[Value], limit: usize) {
    let limit = limit.min(MAX_STORED_BYTES);
    let fitted = budget::fit(0, &stored.earlier, &stored.messages, turn, limit);
    stored.earlier = fitted.earlier;
    stored.messages = [fitted.history, fitted.current].concat();
    let value = json!({
        "earlier": {"count": stored.earlier.count, "lines": stored.earlier.lines},
        "messages": stored.messages,
        "told": stored.told,
    });
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    if let Err(e) = kv::set(&history_key(session_id), &bytes) {
        astrid_sdk::log(&format!("cannot store the conversation {session_id} ({} bytes): {e}", bytes.len()));
        return;
    }
    index_turn(session_id, prompt);
}

/// Moves `session_id` to the front of the index (adding it), and deletes the conversations
/// that fall off its end.
fn index_turn(session_id: &str, prompt: &str) {
    let mut index: SessionIndex = kv::get(SESSION_INDEX_KEY)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let evicted = index.record_turn(session_id, prompt, astrid_sdk::clock_ms());
    let Ok(bytes) = serde_json::to_vec(&index) else { return };
    if let Err(e) = kv::set(SESSION_INDEX_KEY, &bytes) {
        astrid_sdk::log(&format!("cannot store the session index: {e}"));
        return;
    }
    if evicted.is_empty() {
        return;
    }
    // The index is full: every history it does not name goes (those it just let go, and any
    // a version without an index left behind).
    let kept: Vec<String> = index.sessions.iter().map(|s| history_key(&s.id)).collect();
    for key in kv::list_keys(HISTORY_PREFIX).unwrap_or_default() {
        if !kept.contains(&key) {
            let _ = kv::delete(&key);
        }
    }
}
