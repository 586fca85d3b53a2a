//! The management API: requests on `astrid.v1.request.<suffix>`, replies on
//! `astrid.v1.response.<suffix>`, both inside `raw_json` payloads.

use serde::de::DeserializeOwned;
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
        /// The key, verbatim: dots and separators in it are not interpreted.
        key: String,
    },
    /// Astrid extension: write a KV value; the reply comes after the write is durable.
    KvSet {
        /// The capsule whose namespace to write; the operator's own when absent.
        capsule: Option<String>,
        /// The key, verbatim: dots and separators in it are not interpreted.
        key: String,
        /// The value (UTF-8).
        value: String,
    },
    /// Astrid extension: delete a KV value.
    KvDelete {
        /// The capsule whose namespace to change; the operator's own when absent.
        capsule: Option<String>,
        /// The key, verbatim: dots and separators in it are not interpreted.
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
        /// The server's name, as `McpList` shows it.
        server: String,
        /// The tool's own name on that server (not the agent's `server:tool` name).
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
    /// Astrid extension: the tools the agent is offered now, with who serves each and
    /// whether it asks before it acts.
    ListTools,
    /// Astrid extension: the instruction files (`AGENTS.md`) that join the agent's system
    /// prompt in the requester's workspace.
    GetInstructions,
    /// Astrid extension: call a tool exactly as the agent would (`astrid mcp serve` does, for
    /// its MCP client): published on `tool.v1.execute.<name>` under a cause bound to the
    /// requesting connection, so the tool's capability checks, approvals and command output
    /// are that connection's, and answered with the tool's result. A change: only the
    /// operator's connections may ask.
    CallTool {
        /// As `ListTools` names it: a capsule tool's own name, or `server:tool`.
        name: String,
        /// Its arguments (an object), passed as the model's would be.
        arguments: Value,
        /// The caller's id for the call, unique among its calls in flight: what
        /// `CancelToolCall` names.
        call_id: String,
    },
    /// Astrid extension: cancel a `CallTool` of this connection in flight: its pending
    /// approvals are denied, its commands killed, an MCP server's call cancelled at the server.
    CancelToolCall {
        /// The `call_id` the `CallTool` named.
        call_id: String,
    },
}

/// `method_name` and `audit_action` from one list of the request's variants, so the two
/// cannot disagree. (`Self::V { .. }` matches a unit variant as well as a struct one.)
macro_rules! request_names {
    ($($variant:ident),* $(,)?) => {
        impl KernelRequest {
            /// The wire name (`method`) of the request.
            pub fn method_name(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)*
                }
            }

            /// The action the audit trail records for the request: `management.<method>`.
            pub fn audit_action(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => concat!("management.", stringify!($variant)),)*
                }
            }
        }
    };
}

request_names!(
    InstallCapsule,
    ApproveCapability,
    ListCapsules,
    ReloadCapsules,
    GetCommands,
    GetCapsuleMetadata,
    GetStatus,
    Shutdown,
    ListCapabilities,
    RevokeCapability,
    KvGet,
    KvSet,
    KvDelete,
    KvList,
    RemoveCapsule,
    DescribeCapsules,
    WorkspaceDiff,
    WorkspaceCommit,
    WorkspaceDiscard,
    McpList,
    McpCall,
    AuditAcknowledge,
    ListTools,
    GetInstructions,
    CallTool,
    CancelToolCall,
);

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

impl KernelResponse {
    /// A `Success` carrying `data` (one of the [`super::management`] types, as a rule). Data
    /// that cannot be JSON (a map with non-string keys) becomes an `Error` saying so: a reply
    /// always goes out.
    pub fn success<T: Serialize>(data: &T) -> Self {
        match serde_json::to_value(data) {
            Ok(value) => Self::Success(value),
            Err(e) => Self::Error(format!("the daemon could not encode its reply: {e}")),
        }
    }

    /// The data of a `Success` reply, as the type the request answers with. An `Error` reply
    /// is [`ReplyError::Refused`]; another kind of reply, or data of another shape (a daemon
    /// of another version), says which.
    pub fn into_data<T: DeserializeOwned>(self) -> Result<T, ReplyError> {
        match self {
            Self::Success(value) => serde_json::from_value(value)
                .map_err(|source| ReplyError::Shape { expected: short_type_name::<T>(), source }),
            Self::Error(message) => Err(ReplyError::Refused(message)),
            other => Err(ReplyError::Unexpected { expected: short_type_name::<T>(), got: other.kind() }),
        }
    }

    /// The variant's name on the wire (`status`), for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Success(_) => "Success",
            Self::Commands(_) => "Commands",
            Self::CapsuleMetadata(_) => "CapsuleMetadata",
            Self::Error(_) => "Error",
            Self::Status(_) => "Status",
            Self::ApprovalRequired { .. } => "ApprovalRequired",
        }
    }
}

/// `Vec<astrid::types::management::KvValue>` → `Vec<KvValue>`: the name a reader knows.
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut short = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        match c {
            ':' => segment.clear(),
            '<' | '>' | ',' | ' ' | '(' | ')' | '[' | ']' | ';' | '&' => {
                short.push_str(&segment);
                segment.clear();
                short.push(c);
            }
            _ => segment.push(c),
        }
    }
    short.push_str(&segment);
    short
}

/// Why a management reply is not the data the client asked for.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The daemon refused or failed the request; its words.
    #[error("{0}")]
    Refused(String),
    /// The daemon answered with another kind of reply than this request's.
    #[error("the daemon answered {got} where {expected} was expected")]
    Unexpected {
        /// The data type the request answers with.
        expected: String,
        /// The reply's kind.
        got: &'static str,
    },
    /// A `Success` whose data is not of this request's type (a daemon of another version).
    #[error("the daemon's reply is not a {expected}: {source}")]
    Shape {
        /// The data type the request answers with.
        expected: String,
        /// What does not fit.
        source: serde_json::Error,
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
    /// Astrid extension: whether commands run confined (omitted when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<super::management::SandboxStatus>,
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
    /// Whose connections these are (the principal of each connection's lease).
    pub principal: String,
    /// How many are open now.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::types::management::{CapsuleDescription, KvValue};

    #[test]
    fn a_reply_that_is_not_the_expected_data_says_what_was_expected() {
        let refused = KernelResponse::Error("no grant or allowance named x".into()).into_data::<KvValue>();
        assert_eq!(refused.expect_err("refused").to_string(), "no grant or allowance named x");
        let status = KernelResponse::Commands(Vec::new()).into_data::<KvValue>().expect_err("another kind");
        assert_eq!(status.to_string(), "the daemon answered Commands where KvValue was expected");
        let shape = KernelResponse::Success(json!({"val": "x"})).into_data::<Vec<CapsuleDescription>>();
        let shape = shape.expect_err("another shape").to_string();
        assert!(shape.starts_with("the daemon's reply is not a Vec<CapsuleDescription>: "), "{shape}");
        let value = KernelResponse::Success(json!({"value": null})).into_data::<KvValue>().expect("a KvValue");
        assert_eq!(value, KvValue { value: None });
    }

    #[test]
    fn data_that_cannot_be_json_becomes_an_error_reply() {
        let unencodable: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let KernelResponse::Error(message) = KernelResponse::success(&unencodable) else { panic!("not an error") };
        assert!(message.starts_with("the daemon could not encode its reply"), "{message}");
        assert_eq!(KernelResponse::success(&vec!["a"]), KernelResponse::Success(json!(["a"])));
    }
}
