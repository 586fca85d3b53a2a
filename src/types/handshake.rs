//! The handshake frames exchanged before anything else on the socket.

use serde::{Deserialize, Serialize};

/// The one protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// The 64 hex characters of `run/system.token`.
    pub token: String,
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The client's own version (logged only).
    pub client_version: String,
    /// Present when the client is a capsule host asking to serve one capsule over this
    /// connection (an Astrid extension: the reference has no such role, and ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_host: Option<CapsuleAttach>,
    /// The directory this client works in (absolute): its turns read and write that
    /// workspace, through an overlay of its own (an Astrid extension; absent, the daemon's
    /// `--workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Who the connection acts for, besides the operator, named beside it in the audit trail
    /// (`astrid mcp serve`: its MCP client's name and version). An Astrid extension; one line,
    /// cut at 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `false` when nobody at this connection can answer a question (an MCP client without
    /// elicitation): questions its calls cause go to the other frontends instead, and
    /// questions for everyone skip it (an Astrid extension; absent: it answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers_questions: Option<bool>,
}

/// Which capsule a capsule-host connection serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleAttach {
    /// The one-time ticket the daemon handed a capsule-host process it started itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// A capsule directory to run for its author (`astrid capsule run DIR`), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The person running it consented to the capabilities it asks for.
    #[serde(default)]
    pub approve: bool,
}

/// Whether the handshake succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandshakeStatus {
    /// Accepted.
    Ok,
    /// Refused; see `reason`.
    Error,
}

/// The server's answer to the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// Accepted or refused.
    pub status: HandshakeStatus,
    /// The server's protocol version.
    pub protocol_version: u32,
    /// The server's version.
    pub server_version: String,
    /// Why it was refused (absent on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HandshakeResponse {
    /// An acceptance.
    pub fn ok(server_version: impl Into<String>) -> Self {
        Self {
            status: HandshakeStatus::Ok,
            protocol_version: PROTOCOL_VERSION,
            server_version: server_version.into(),
            reason: None,
        }
    }

    /// A refusal with its reason.
    pub fn error(server_version: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            status: HandshakeStatus::Error,
            protocol_version: PROTOCOL_VERSION,
            server_version: server_version.into(),
            reason: Some(reason.into()),
        }
    }
}
