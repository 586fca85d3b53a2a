//! What each management request answers with, typed for both ends.
//!
//! The reference types a `Success` reply's data as any JSON, so each end used to agree on its
//! fields by spelling them twice: the kernel with `json!`, the CLI with `["key"]` lookups that
//! read a renamed field as absent instead of failing. Now the kernel builds one of these
//! types ([`KernelResponse::success`](super::KernelResponse::success)) and a client decodes
//! it ([`KernelResponse::into_data`](super::KernelResponse::into_data)); the JSON is what it
//! was, field for field, pinned by `tests/data/extension-vectors.jsonl`.
//!
//! | request | `Success` data |
//! |---|---|
//! | `ListCapsules`, `KvList` | `Vec<String>` (names, keys) |
//! | `ReloadCapsules`, `Shutdown` | [`DaemonAction`] |
//! | `InstallCapsule` (nothing to approve) | [`CapsuleInstalled`] |
//! | `RemoveCapsule` | [`CapsuleRemoved`] |
//! | `DescribeCapsules` | `Vec<`[`CapsuleDescription`]`>` |
//! | `ApproveCapability` | [`GrantApproved`] |
//! | `ListCapabilities` | [`CapabilityListing`] |
//! | `RevokeCapability` | [`Revoked`] |
//! | `KvGet`, `KvSet`, `KvDelete` | [`KvValue`], [`KvStored`], [`KvDeleted`] |
//! | `WorkspaceDiff`, `WorkspaceCommit`, `WorkspaceDiscard` | [`WorkspaceDiff`], [`WorkspaceCommitted`], [`WorkspaceDiscarded`] |
//! | `McpList`, `McpCall` | [`McpListing`], [`McpCallResult`] |
//! | `AuditAcknowledge` | [`AuditAcknowledged`] |
//! | `ListTools` | [`ToolListing`] |
//! | `CallTool`, `CancelToolCall` | [`ToolCalled`], [`ToolCallCancelled`] |
//! | `GetInstructions` | [`InstructionFiles`](super::instructions::InstructionFiles) |
//!
//! Optional fields are sent as `null` (never left out): that is how the first daemons wrote
//! them, and clients of any version read both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::kernel_api::CommandInfo;
use super::tools::ToolApproval;

/// What the daemon does about `ReloadCapsules` or `Shutdown` (the reference's replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonAction {
    /// What was done, or is being done.
    pub status: DaemonActionStatus,
}

/// The `status` of a [`DaemonAction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonActionStatus {
    /// The capsule directories were scanned again.
    Reloaded,
    /// The daemon stops once this reply is out.
    ShuttingDown,
}

/// An install that needed no approval (it requests nothing, or exactly what was approved):
/// the capsule starts at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleInstalled {
    /// The capsule's name.
    pub name: String,
    /// The version installed.
    pub version: String,
    /// The version it replaced (`null`: a new install).
    pub replaced: Option<String>,
    /// Where it now lives.
    pub dir: String,
}

/// An uninstall; the capsule's grant went with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleRemoved {
    /// The capsule's name.
    pub removed: String,
    /// The version that was installed.
    pub version: String,
}

/// One capsule as `astrid capsule list` and `show` present it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleDescription {
    /// The package name.
    pub name: String,
    /// The package version, when the manifest gives one.
    pub version: Option<String>,
    /// Where the daemon found it.
    pub origin: CapsuleOrigin,
    /// Its directory (`null` for built-ins).
    pub dir: Option<String>,
    /// What it is doing.
    pub state: RunState,
    /// Why it is not running, when it is not and there is a reason to give.
    pub reason: Option<String>,
    /// Whether the operator approved what it requests.
    pub grant: GrantStatus,
    /// What its manifest requests, one capability per entry.
    pub capabilities: Vec<String>,
    /// Slash commands it offers.
    pub commands: Vec<CommandInfo>,
    /// Topics its interceptors listen on.
    pub interceptors: Vec<String>,
    /// BLAKE3 of its module (part of what the operator approves), when it has one.
    pub wasm_blake3: Option<String>,
}

/// Where a capsule comes from; it decides precedence between capsules of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapsuleOrigin {
    /// Compiled into the daemon.
    #[serde(rename = "built-in")]
    BuiltIn,
    /// `home/<principal>/.local/capsules/`.
    #[serde(rename = "home")]
    Principal,
    /// `<workspace>/.astrid/capsules/`.
    #[serde(rename = "workspace")]
    Workspace,
    /// The default set compiled into the binary.
    #[serde(rename = "embedded")]
    Embedded,
    /// A directory an author runs with `astrid capsule run`, for as long as that runs; the
    /// daemon does not start it (the author's process is its capsule host).
    #[serde(rename = "development")]
    Development,
}

impl CapsuleOrigin {
    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BuiltIn => "built-in",
            Self::Principal => "home",
            Self::Workspace => "workspace",
            Self::Embedded => "embedded",
            Self::Development => "development",
        }
    }
}

/// What a described capsule is doing, as an operator needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Running and serving events.
    Running,
    /// Installed and valid, not (yet) running.
    Installed,
    /// Not started because its capabilities are not approved.
    Stopped,
    /// Stopped after a failure; started again after a delay.
    Restarting,
    /// Could not be loaded or gave up.
    Failed,
}

impl RunState {
    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Installed => "installed",
            Self::Stopped => "stopped",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
        }
    }
}

/// Whether a capsule's requested capabilities are in force. Internally tagged by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GrantStatus {
    /// It asks for nothing.
    NothingRequested,
    /// The operator approved exactly this set, for this module.
    Approved,
    /// Waiting for the operator (a previous, different grant does not count).
    Pending {
        /// The id to approve (`astrid caps approve <request_id>`).
        request_id: String,
    },
}

/// The grant an `ApproveCapability` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantApproved {
    /// The capsule now allowed to run.
    pub capsule: String,
    /// Fingerprint of the approved set and module.
    pub fingerprint: String,
}

/// Everything capsules are allowed, or ask to be: the answer to `ListCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityListing {
    /// Approved capability sets.
    pub grants: Vec<Grant>,
    /// Sets waiting for the operator.
    pub pending: Vec<PendingGrant>,
    /// Standing runtime approvals (`approve_session`, `approve_always`), "always" first.
    pub allowances: Vec<Allowance>,
}

/// An approved capability set. The same record is what the kernel keeps in its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The capsule it was approved for, by installed name.
    pub capsule: String,
    /// Fingerprint of the approved set (and module).
    pub fingerprint: String,
    /// The approved entries.
    pub capabilities: Vec<String>,
    /// When.
    pub approved_at: DateTime<Utc>,
}

/// A capability set waiting for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingGrant {
    /// Answer with `ApproveCapability { request_id, signature: fingerprint }`.
    pub request_id: String,
    /// The capsule asking, by installed name.
    pub capsule: String,
    /// Fingerprint of the requested set: the signature an approval must carry, so it can
    /// only ever cover the set the operator was shown.
    pub fingerprint: String,
    /// The requested entries.
    pub capabilities: Vec<String>,
}

/// The approval action of running a command line in the sandbox: its resource is the exact
/// line, and what "session" and "always" cover is a prefix of its words.
pub const RUN_COMMAND_ACTION: &str = "process.run";

/// As [`RUN_COMMAND_ACTION`], for a command given the host's network: a separate action, so
/// that allowing `cargo build` offline never allows it online.
pub const RUN_NETWORKED_COMMAND_ACTION: &str = "process.run_networked";

/// A standing permission created by `approve_session` or `approve_always`. The same record is
/// what the kernel keeps in its store for "always".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Identifier for `astrid caps revoke`.
    pub id: String,
    /// Principal it applies to.
    pub principal: String,
    /// Capsule it applies to.
    pub capsule: String,
    /// Action it allows.
    pub action: String,
    /// Resource it allows: exactly this one, or, with `under`, what lies under it.
    pub resource: String,
    /// Whether what lies under `resource` is covered too: for a path, every path in that
    /// directory (`""`: the workspace); for a command line ([`RUN_COMMAND_ACTION`]), every
    /// plain command line that starts with its words. Absent in records older than directory
    /// allowances.
    #[serde(default)]
    pub under: bool,
    /// `session` or `always`.
    pub scope: String,
    /// When it was granted.
    pub created_at: DateTime<Utc>,
}

/// A grant or allowance withdrawn by `RevokeCapability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The capsule name or allowance id, as asked.
    pub revoked: String,
}

/// The answer to `KvGet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvValue {
    /// The value as UTF-8 (invalid bytes replaced); `null` when the key is absent.
    pub value: Option<String>,
}

/// The answer to `KvSet`, sent once the write is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStored {
    /// The key written.
    pub stored: String,
}

/// The answer to `KvDelete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    /// Whether there was a value to delete.
    pub deleted: bool,
}

/// Pending workspace changes: the answer to `WorkspaceDiff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceDiff {
    /// Every change as one unified diff.
    pub diff: String,
    /// The changed paths.
    pub changes: Vec<WorkspaceChange>,
}

/// What `WorkspaceCommit` applied to the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceCommitted {
    /// The changes, as applied.
    pub committed: Vec<WorkspaceChange>,
}

/// What `WorkspaceDiscard` dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceDiscarded {
    /// How many changes.
    pub discarded: u64,
}

/// One pending change of the workspace overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceChange {
    /// The path, relative to the workspace root.
    pub path: String,
    /// What changes.
    pub kind: ChangeKind,
}

/// How a path changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new file.
    Added,
    /// A file with new content.
    Modified,
    /// A removed file.
    Deleted,
}

impl ChangeKind {
    /// The name on the wire, on screen and in audit actions (`workspace.commit.added`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
        }
    }
}

/// The MCP servers the daemon runs: the answer to `McpList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpListing {
    /// Every configured server, by name.
    pub servers: Vec<McpServer>,
    /// Server declarations that were refused, with why.
    pub refused: Vec<String>,
}

/// One MCP server and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// Its name (the `server` of `server:tool`).
    pub name: String,
    /// Where it is in its life.
    pub state: McpServerState,
    /// What it is for, as configured.
    pub description: Option<String>,
    /// The program that runs it.
    pub command: String,
    /// The capsule that declares it (`null`: `etc/servers.toml`).
    pub capsule: Option<String>,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// The MCP protocol version it speaks, once initialized.
    pub protocol_version: Option<String>,
    /// How many times it was started.
    pub starts: u32,
    /// Why it last exited or failed.
    pub last_error: Option<String>,
    /// Its tools, while it is ready.
    pub tools: Vec<McpTool>,
}

/// Where an MCP server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpServerState {
    /// Started, not yet initialized.
    Starting,
    /// Initialized; its tools are offered.
    Ready,
    /// Exited; started again after a backoff.
    Restarting,
    /// Given up (see its last error).
    Failed,
    /// Exited cleanly and not restarted, or stopped with the daemon.
    Stopped,
}

impl McpServerState {
    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// A tool of an MCP server, as listed to the operator (its schema is for agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpTool {
    /// Its name on the server.
    pub name: String,
    /// What it does.
    pub description: String,
}

/// The outcome of an operator's `McpCall` (a tool that reports an error still answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpCallResult {
    /// The result's text parts, joined.
    pub content: String,
    /// The tool's `isError`.
    pub is_error: bool,
}

/// The audit breaks an `AuditAcknowledge` acknowledged (none: nothing was waiting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAcknowledged {
    /// One per break, in the logs that hold them.
    pub acknowledged: Vec<AcknowledgedBreak>,
}

/// One acknowledged break of an audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcknowledgedBreak {
    /// Whose log.
    pub principal: String,
    /// Seq of the first entry that fails (or the first one missing).
    pub entry: u64,
    /// What is wrong.
    pub reason: String,
    /// Seq of the `audit.chain_broken` entry that records the break.
    pub recorded_at: Option<u64>,
    /// Seq of the `audit.acknowledge` entry that acknowledges it.
    pub acknowledged_at: Option<u64>,
}

/// How the agent's commands run, as `astrid status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// Confined, refused, or unconfined.
    pub state: SandboxState,
    /// For `unavailable`, why and how to enable it; for `unsandboxed`, what that means.
    pub detail: Option<String>,
}

/// Whether commands are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// The daemon is still trying the sandbox on this machine (just after boot); a command
    /// asked for now waits for the verdict.
    Probing,
    /// Every command runs in the sandbox.
    Ready,
    /// The sandbox cannot be set up on this machine: commands are refused.
    Unavailable,
    /// The operator turned the sandbox off: commands run unconfined, in the real workspace.
    Unsandboxed,
}

/// The tools the agent is offered now: the answer to `ListTools`. The kernel asks every
/// tool provider to describe its tools, as the agent does before a turn, and lists what
/// came back in time, with who answered (the bus stamps that, not the answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolListing {
    /// The tools, in the order the agent would take them (a name offered twice is the first
    /// provider's, as for the agent).
    pub tools: Vec<ListedTool>,
    /// Sources of tools still starting (an MCP server initializing): offered once up.
    pub pending: Vec<String>,
    /// Capsules that received the describe request and did not answer in time.
    pub unanswered: Vec<String>,
}

/// One tool on offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedTool {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, as its provider says.
    pub description: Option<String>,
    /// Who serves it.
    pub origin: ToolOrigin,
    /// Whether it asks a person before it acts (`null`: its provider does not say).
    pub approval: Option<ToolApproval>,
    /// The JSON Schema of its arguments, as its provider describes it (`null` in answers of
    /// daemons that did not pass it on).
    #[serde(default)]
    pub input_schema: Option<serde_json::Value>,
}

/// The outcome of a `CallTool`: the tool's own result (a tool that reports an error, or a
/// call a person did not approve, still answers), or the kernel's word on a call that could
/// not be made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCalled {
    /// The `call_id` of the request.
    pub call_id: String,
    /// The result's text, as the model would read it.
    pub content: String,
    /// Whether it is an error (the tool's, a denial, a cancel, or no such tool).
    pub is_error: bool,
}

/// The answer to `CancelToolCall`; the call itself then answers its `CallTool` (cancelled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallCancelled {
    /// The call named.
    pub call_id: String,
    /// Whether it was in flight (`false`: it had already ended, or never was this
    /// connection's).
    pub cancelled: bool,
}

/// Who serves a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ToolOrigin {
    /// A capsule, by name.
    Capsule(String),
    /// An MCP server the daemon runs, by name.
    McpServer(String),
}

impl std::fmt::Display for ToolOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Capsule(name) => write!(f, "capsule {name}"),
            Self::McpServer(name) => write!(f, "MCP server {name}"),
        }
    }
}
