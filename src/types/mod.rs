//! The wire types: everything that crosses the socket or the bus, and nothing else.
//!
//! No I/O lives here and no host-only crate is used, so the module compiles for
//! `wasm32-unknown-unknown` and capsules share the exact same definitions. The serde shapes
//! are those of the reference runtime (v0.7.0), pinned by the 66 vectors in
//! `tests/data/wire-vectors.jsonl`; Astrid's extensions (the management replies of
//! [`management`], the turn events of [`turn`], the announcements of [`announcements`]) are
//! pinned by `tests/data/extension-vectors.jsonl`. Every topic is a constant of [`topics`].

#![deny(missing_docs, clippy::unwrap_used)]

pub mod announcements;
pub mod capsule_session;
pub mod commands;
pub mod handshake;
pub mod instructions;
pub mod ipc;
pub mod kernel_api;
pub mod llm;
pub mod management;
pub mod sessions;
pub mod tools;
pub mod topics;
pub mod turn;

pub use announcements::{CapsuleHealthFailed, CapsulesLoaded};
pub use capsule_session::{
    Attached, Binding, Blob, CallFrame, CapsuleFailure, HostCall, HostReply, Plan, ReplyFrame, SandboxLimits,
    SessionRequest, SessionStart,
};
pub use handshake::{CapsuleAttach, HandshakeRequest, HandshakeResponse, HandshakeStatus, PROTOCOL_VERSION};
pub use instructions::{InstructionFile, InstructionFiles, InstructionScope};
#[cfg(not(target_arch = "wasm32"))]
pub use ipc::RenderedReply;
pub use ipc::{
    EgressFrame, IpcMessage, IpcPayload, OnboardingField, OnboardingFieldType, SelectionOption, UserInputFields,
};
pub use kernel_api::{
    CapsuleMetadataEntry, CommandInfo, DaemonStatus, KernelRequest, KernelResponse, ModelStatus, PrincipalConnections,
    ReplyError, SYSTEM_SESSION_UUID, SubscriberDrops,
};
pub use llm::{
    ContentPart, LlmResponse, LlmToolDefinition, Message, MessageContent, MessageRole, StopReason, StreamEvent,
    ToolCall, ToolCallResult, Usage,
};
pub use sessions::{SessionIndex, SessionSummary};
pub use tools::{ToolApproval, ToolsDescribed};
pub use turn::{Answerer, ApprovalDecision, TurnEvent, TurnOutcome};
