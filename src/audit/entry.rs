//! What an audit entry records, and how a line of the log is laid out.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// The kernel itself (lifecycle, discovery).
    Kernel,
    /// A person at the CLI acting on local files.
    Operator,
    /// A socket client (`client#N`).
    Client {
        /// The connection.
        id: String,
    },
    /// A capsule, by its installed name (its host calls and bus publishes).
    Capsule { name: String },
    /// An MCP server the daemon runs (its tool calls).
    McpServer { name: String },
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// A fact rather than a decision (start, stop, discovery).
    Info,
}

/// One entry, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1-based position in this principal's log.
    pub seq: u64,
    /// Unique id.
    pub id: Uuid,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The daemon session.
    pub session: Uuid,
    /// The principal acted for.
    pub principal: String,
    /// Who acted.
    pub actor: Actor,
    /// What was attempted (`capability.check`, `management.GetStatus`, …).
    pub action: String,
    /// On what.
    pub resource: String,
    pub decision: Decision,
    /// The rule or grant that decided.
    pub rule: String,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev_hash: String,
}

/// An entry before the log assigns its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The daemon session.
    pub session: Uuid,
    /// The principal acted for.
    pub principal: String,
    /// Who acted.
    pub actor: Actor,
    /// What was attempted.
    pub action: String,
    /// On what.
    pub resource: String,
    pub decision: Decision,
    /// The rule or grant that decided.
    pub rule: String,
}

/// One line of `audit.jsonl`: the entry, the BLAKE3 of its JSON, and the signature of that
/// hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub entry: AuditEntry,
    /// Hex BLAKE3 of `serde_json::to_vec(&entry)`.
    pub hash: String,
    /// Hex ed25519 signature over the 32 hash bytes.
    pub sig: String,
}

/// `audit.head`: the last entry's position and hash, signed, so a truncated tail shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    /// Seq of the last entry.
    pub seq: u64,
    /// That entry's [`Line::hash`].
    pub hash: String,
    /// Signature over [`head_message`].
    pub sig: String,
}

/// BLAKE3 of the entry's JSON: what [`Line::hash`] and the next entry's `prev_hash` hold.
pub fn entry_hash(entry: &AuditEntry) -> blake3::Hash {
    blake3::hash(&serde_json::to_vec(entry).unwrap_or_default())
}

/// What the head signature covers.
pub fn head_message(seq: u64, hash: &[u8]) -> Vec<u8> {
    let mut message = b"astrid-audit-head".to_vec();
    message.extend_from_slice(&seq.to_le_bytes());
    message.extend_from_slice(hash);
    message
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}
