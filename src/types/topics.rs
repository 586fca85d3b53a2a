//! Every topic the runtime itself publishes, subscribes to or polices, spelled once.
//!
//! Topics are the addresses of the protocol: a typo in one is a message nobody receives, and
//! nothing fails to say so. So the kernel, the bridge's policy, the CLI and capsules built on
//! these types all name a topic through a constant of this module, never a literal. A
//! *prefix* ends with `.` and is completed with a suffix (`astrid.v1.request.` + `status`);
//! a *pattern* is a subscription (`.*` matches one or more further segments, see
//! `kernel::topic`) and is derived from its prefix, so the two cannot drift apart.
//!
//! The reference runtime's topics keep its spelling; the Astrid extensions are marked.

/// Declares a prefix and the subscription pattern that covers it, from one literal.
macro_rules! prefix_and_pattern {
    ($(#[$prefix_doc:meta])* $prefix:ident, $(#[$pattern_doc:meta])* $pattern:ident = $literal:literal) => {
        $(#[$prefix_doc])*
        pub const $prefix: &str = $literal;
        $(#[$pattern_doc])*
        pub const $pattern: &str = concat!($literal, "*");
    };
}

// --- A turn -------------------------------------------------------------------------------

/// Where a person's prompts are published.
pub const PROMPT_TOPIC: &str = "user.v1.prompt";
/// Where slash commands are published.
pub const COMMAND_TOPIC: &str = "cli.v1.command.execute";
/// Where answers are published (the final one, and the reference's whole answers).
pub const RESPONSE_TOPIC: &str = "agent.v1.response";
/// Where streamed pieces of an answer are published (`agent_response`, `is_final: false`).
pub const DELTA_TOPIC: &str = "agent.v1.stream.delta";
/// Astrid extension: where the kernel acknowledges a prompt or command to the client that
/// sent it (a [`super::TurnEvent::PromptReceipt`]).
pub const RECEIPT_TOPIC: &str = "astrid.v1.prompt.receipt";
/// Astrid extension: where capsules tell the person something about a turn that is not part
/// of the answer (a [`super::TurnEvent::Notice`]).
pub const NOTICE_TOPIC: &str = "agent.v1.notice";

// --- Tools --------------------------------------------------------------------------------

/// Where an agent asks every tool provider to describe its tools.
pub const TOOL_DESCRIBE_TOPIC: &str = "tool.v1.request.describe";
prefix_and_pattern!(
    /// Where a tool provider answers a describe request, followed by its own name.
    TOOL_DESCRIBED_PREFIX,
    /// Every describe answer.
    TOOL_DESCRIBED_PATTERN = "tool.v1.response.describe."
);
prefix_and_pattern!(
    /// Where one tool is called, followed by its `server:tool` name (a provider subscribes to
    /// its tools); the result goes to the same topic with `.result` appended.
    TOOL_EXECUTE_PREFIX,
    /// Every tool call and result below [`TOOL_EXECUTE_PREFIX`].
    TOOL_EXECUTE_PATTERN = "tool.v1.execute."
);
/// Where the agent announces a tool call it makes (shown by frontends).
pub const TOOL_REQUEST_TOPIC: &str = "tool.v1.request.execute";
/// Where a tool call's result is announced (shown by frontends).
pub const TOOL_RESULT_TOPIC: &str = "tool.v1.execute.result";
/// Where tool calls a turn gave up on are cancelled.
pub const TOOL_CANCEL_TOPIC: &str = "tool.v1.request.cancel";

// --- The management API --------------------------------------------------------------------

prefix_and_pattern!(
    /// Management requests ([`super::KernelRequest`]): `astrid.v1.request.<suffix>`.
    REQUEST_PREFIX,
    /// Every management request.
    REQUEST_PATTERN = "astrid.v1.request."
);
prefix_and_pattern!(
    /// Management replies ([`super::KernelResponse`]) on the requester's suffix.
    RESPONSE_PREFIX,
    /// Every management reply.
    RESPONSE_PATTERN = "astrid.v1.response."
);
/// The admin API of the later reference revision (agents, groups, quotas); clients may
/// publish under it, nothing in this daemon answers yet.
pub const ADMIN_PREFIX: &str = "astrid.v1.admin.";
prefix_and_pattern!(
    /// Replies of the admin API: only the kernel publishes them.
    ADMIN_RESPONSE_PREFIX,
    /// Every admin reply.
    ADMIN_RESPONSE_PATTERN = "astrid.v1.admin.response."
);

// --- What the agent is told ---------------------------------------------------------------

/// Astrid extension: where an agent asks the kernel for the instruction files (`AGENTS.md`)
/// of its turn's workspace; a grant of this topic reaches those two files and nothing else
/// (unlike a management topic, which reaches every read-only request).
pub const INSTRUCTIONS_REQUEST_TOPIC: &str = "astrid.v1.instructions.request";
/// Astrid extension: where the kernel answers, to the asking capsule instance only
/// ([`super::InstructionFiles`]).
pub const INSTRUCTIONS_RESPONSE_TOPIC: &str = "astrid.v1.instructions.response";

// --- Asking a person -----------------------------------------------------------------------

/// Where the kernel asks a person to approve what a capsule wants to do
/// ([`super::IpcPayload::ApprovalRequired`]).
pub const APPROVAL_TOPIC: &str = "astrid.v1.approval";
/// Where the answer to one approval request goes, followed by its `request_id`
/// ([`super::IpcPayload::ApprovalResponse`]).
pub const APPROVAL_RESPONSE_PREFIX: &str = "astrid.v1.approval.response.";
/// Where a capsule's install or upgrade hook asks a person for a value
/// ([`super::IpcPayload::ElicitRequest`]).
pub const ELICIT_TOPIC: &str = "astrid.v1.elicit";
/// Where the answer to one elicitation goes, followed by its `request_id`
/// ([`super::IpcPayload::ElicitResponse`]).
pub const ELICIT_RESPONSE_PREFIX: &str = "astrid.v1.elicit.response.";
/// Every topic below [`ELICIT_TOPIC`] (what the reference's bridge forwarded).
pub const ELICIT_PATTERN: &str = concat!("astrid.v1.elicit", ".*");
/// Where the kernel says a capsule lacks configuration
/// ([`super::IpcPayload::OnboardingRequired`]).
pub const ONBOARDING_TOPIC: &str = "astrid.v1.onboarding.required";

// --- Kernel announcements ------------------------------------------------------------------

/// Where the kernel announces that capsule loading finished (boot, reload, a change of the
/// MCP tools): what tells an agent to ask for the tools again
/// ([`super::CapsulesLoaded`]).
pub const CAPSULES_LOADED_TOPIC: &str = "astrid.v1.capsules_loaded";
/// Astrid extension: where the kernel announces that a capsule crashed and is restarted
/// ([`super::CapsuleHealthFailed`]).
pub const HEALTH_FAILED_TOPIC: &str = "astrid.v1.health.failed";
/// Astrid extension: the kernel's heartbeat, which a stalled subscriber must not hold up.
pub const TICK_TOPIC: &str = "astrid.v1.watchdog.tick";
/// Astrid extension: a running command's output, as the kernel shows it to the person whose
/// turn runs it ([`super::commands::CommandOutput`]).
pub const COMMAND_OUTPUT_TOPIC: &str = "astrid.v1.command.output";

// --- Reference services this daemon forwards but does not serve ---------------------------

prefix_and_pattern!(
    /// Where a frontend answers a selection, followed by the selection's id.
    SELECTION_PREFIX,
    /// Every selection topic.
    SELECTION_PATTERN = "registry.v1.selection."
);
/// Replies of the model registry.
pub const REGISTRY_RESPONSE_PATTERN: &str = "registry.v1.response.*";
/// The model registry's announcement of a new active model.
pub const ACTIVE_MODEL_CHANGED_TOPIC: &str = "registry.v1.active_model_changed";
/// Requests to the session service.
pub const SESSION_REQUEST_PREFIX: &str = "session.v1.request.";
/// Replies of the session service.
pub const SESSION_RESPONSE_PATTERN: &str = "session.v1.response.*";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pattern_is_its_prefix_and_a_wildcard() {
        for (prefix, pattern) in [
            (TOOL_EXECUTE_PREFIX, TOOL_EXECUTE_PATTERN),
            (TOOL_DESCRIBED_PREFIX, TOOL_DESCRIBED_PATTERN),
            (REQUEST_PREFIX, REQUEST_PATTERN),
            (RESPONSE_PREFIX, RESPONSE_PATTERN),
            (ADMIN_RESPONSE_PREFIX, ADMIN_RESPONSE_PATTERN),
            (SELECTION_PREFIX, SELECTION_PATTERN),
        ] {
            assert_eq!(pattern, format!("{prefix}*"));
        }
        assert_eq!(ELICIT_PATTERN, format!("{ELICIT_TOPIC}.*"));
        assert_eq!(ELICIT_RESPONSE_PREFIX, format!("{ELICIT_TOPIC}.response."));
        assert_eq!(APPROVAL_RESPONSE_PREFIX, format!("{APPROVAL_TOPIC}.response."));
    }
}
