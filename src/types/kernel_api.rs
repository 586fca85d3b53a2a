//! The management API: requests on `astrid.v1.request.<suffix>`, replies on
//! `astrid.v1.response.<suffix>`, both inside `raw_json` payloads.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The nil UUID: the `source_id` of kernel-internal messages by default.
pub const SYSTEM_SESSION_UUID: Uuid = Uuid::nil();

/// A management request. Adjacently tagged (`method`, `params`), so a unit request may
/// omit `params` or give `null`, but not `{}`; `Shutdown` requires `params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params")]
pub enum KernelRequest {
    /// Install a capsule from a path or reference.
    InstallCapsule {
        /// Where from.
        source: String,
        /// Into the workspace rather than the principal's home.
        workspace: bool,
    },
    /// Grant the capabilities of a pending install.
    ApproveCapability {
        /// The pending request.
        request_id: String,
        /// The operator's signature.
        signature: String,
    },
    /// Names of the registered capsules.
    ListCapsules,
    /// Rescan the capsule directories.
    ReloadCapsules,
    /// Slash commands offered by capsules.
    GetCommands,
    /// Interceptor metadata of capsules.
    GetCapsuleMetadata,
    /// Daemon status.
    GetStatus,
    /// Shut the daemon down (after replying).
    Shutdown {
        /// Why, for the log.
        reason: Option<String>,
    },
}

impl KernelRequest {
    /// The wire name (`method`) of the request.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::InstallCapsule { .. } => "InstallCapsule",
            Self::ApproveCapability { .. } => "ApproveCapability",
            Self::ListCapsules => "ListCapsules",
            Self::ReloadCapsules => "ReloadCapsules",
            Self::GetCommands => "GetCommands",
            Self::GetCapsuleMetadata => "GetCapsuleMetadata",
            Self::GetStatus => "GetStatus",
            Self::Shutdown { .. } => "Shutdown",
        }
    }
}

/// A management reply. Adjacently tagged (`status`, `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "data")]
pub enum KernelResponse {
    /// Done; the data depends on the request.
    Success(Value),
    /// The answer to `GetCommands`.
    Commands(Vec<CommandInfo>),
    /// The answer to `GetCapsuleMetadata`.
    CapsuleMetadata(Vec<CapsuleMetadataEntry>),
    /// Refused or failed, with the reason.
    Error(String),
    /// The answer to `GetStatus`.
    Status(DaemonStatus),
    /// The install needs the operator's consent first.
    ApprovalRequired {
        /// Answer with `ApproveCapability` naming this id.
        request_id: String,
        /// What is asked.
        description: String,
        /// The capabilities requested.
        capabilities: Vec<String>,
    },
}

/// What `GetStatus` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since the kernel started.
    pub uptime_secs: u64,
    /// Daemon version.
    pub version: String,
    /// Whether it exits when idle.
    pub ephemeral: bool,
    /// Authenticated connections right now.
    pub connected_clients: u32,
    /// The same, per principal (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections_by_principal: Vec<PrincipalConnections>,
    /// Capsules that are running.
    pub loaded_capsules: Vec<String>,
}

/// Connections of one principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalConnections {
    /// The principal.
    pub principal: String,
    /// Its connections.
    pub count: u32,
}

/// A slash command a capsule offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// For example `/help`.
    pub name: String,
    /// One line.
    pub description: String,
    /// The capsule that handles it.
    pub provider_capsule: String,
}

/// Interceptor metadata of one capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleMetadataEntry {
    /// Capsule name.
    pub name: String,
    /// Topics its interceptors listen on.
    pub interceptor_events: Vec<String>,
}
