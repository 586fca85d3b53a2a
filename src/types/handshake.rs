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
