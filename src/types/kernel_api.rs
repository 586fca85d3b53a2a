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
    /// Astrid extension: grants, pending capability requests and standing allowances.
    ListCapabilities,
    /// Astrid extension: withdraw a capsule's grant (by capsule name) or an allowance (by id).
    RevokeCapability {
        /// Capsule name or allowance id.
        id: String,
    },
    /// Astrid extension: read a KV value (the operator's namespace, or a capsule's).
    KvGet {
        /// The capsule whose namespace to read; the operator's own when absent.
        capsule: Option<String>,
        /// The key.
        key: String,
    },
    /// Astrid extension: write a KV value; the reply comes after the write is durable.
    KvSet {
        /// The capsule whose namespace to write; the operator's own when absent.
        capsule: Option<String>,
        /// The key.
        key: String,
        /// The value (UTF-8).
        value: String,
    },
    /// Astrid extension: delete a KV value.
    KvDelete {
        /// The capsule whose namespace to change; the operator's own when absent.
        capsule: Option<String>,
        /// The key.
        key: String,
    },
    /// Astrid extension: list KV keys with a prefix.
    KvList {
        /// The capsule whose namespace to list; the operator's own when absent.
        capsule: Option<String>,
        /// The prefix ("" for all).
        prefix: String,
    },
    /// Astrid extension: uninstall a capsule (its grant is withdrawn with it).
    RemoveCapsule {
        /// The capsule.
        name: String,
        /// From the workspace rather than the principal's home.
        workspace: bool,
    },
    /// Astrid extension: every capsule with its state, origin, grant and declarations.
    DescribeCapsules,
    /// Astrid extension: pending workspace changes as a unified diff.
    WorkspaceDiff,
    /// Astrid extension: apply pending workspace changes.
    WorkspaceCommit,
    /// Astrid extension: drop pending workspace changes.
    WorkspaceDiscard,
    /// Astrid extension: the MCP servers, their state and tools.
    McpList,
    /// Astrid extension: call an MCP tool as the operator (audited; no approval prompt).
    McpCall {
        /// The server.
        server: String,
        /// The tool on it.
        tool: String,
        /// Its arguments (an object).
        arguments: Value,
    },
    /// Astrid extension: the operator acknowledges the audit breaks the daemon knows of (each
    /// acknowledgement is itself an audit entry, carrying `note`).
    AuditAcknowledge {
        /// Why, in the operator's words.
        note: Option<String>,
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
            Self::ListCapabilities => "ListCapabilities",
            Self::RevokeCapability { .. } => "RevokeCapability",
            Self::KvGet { .. } => "KvGet",
            Self::KvSet { .. } => "KvSet",
            Self::KvDelete { .. } => "KvDelete",
            Self::KvList { .. } => "KvList",
            Self::RemoveCapsule { .. } => "RemoveCapsule",
            Self::DescribeCapsules => "DescribeCapsules",
            Self::WorkspaceDiff => "WorkspaceDiff",
            Self::WorkspaceCommit => "WorkspaceCommit",
            Self::WorkspaceDiscard => "WorkspaceDiscard",
            Self::McpList => "McpList",
            Self::McpCall { .. } => "McpCall",
            Self::AuditAcknowledge { .. } => "AuditAcknowledge",
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
    Status(Box<DaemonStatus>),
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
    /// Astrid extension: messages dropped for slow bus subscribers (omitted when none, so
    /// the reference encoding is unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bus_drops: Vec<SubscriberDrops>,
    /// Astrid extension: the audit chain check at boot, `intact` or what is wrong
    /// (omitted when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<String>,
    /// Astrid extension: which model answers prompts (omitted when no agent is installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStatus>,
    /// Astrid extension: the daemon's workspace (clients may work in others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// Which model the agent asks, as `astrid status` shows it: no secret, only a fingerprint of
/// the key, so a frontend can tell whether its own key is the one in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// The provider the orchestrator asks (`offline`, `openai`, …).
    pub provider: String,
    /// The model name it asks for (empty: the provider's default).
    pub model: String,
    /// The endpoint of an OpenAI-compatible provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `blake3:` and the first 8 hex digits of the key's hash, when a key is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where the settings come from: `home` (astrid config), `environment` (the daemon's),
    /// or `default`.
    pub source: String,
}

/// Messages the bus dropped for one slow subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberDrops {
    /// The subscriber (for example `client#3`).
    pub subscriber: String,
    /// Messages dropped for it.
    pub dropped: u64,
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
