//! What a message descends from: the client request that set it in motion.
//!
//! A prompt a person typed starts a chain of messages (the orchestrator's request to the
//! model, the model's stream, a tool call, the tool's approval request, the answer). The
//! kernel stamps the prompt with a [`Cause`] when it comes in over the socket and carries the
//! stamp along the chain itself: a capsule's host calls inherit the cause of the event its hook
//! is handling, the MCP bridge passes on the cause of the call it serves. Nothing a capsule
//! or a client writes can set or change it.
//!
//! The cause decides where the chain's messages go (an approval is asked of the connection
//! that started the turn, the turn's answer goes to that session's frontends) and which
//! workspace the turn works on.

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use super::bus::SubscriberId;

/// The client request a message descends from. Cheap to share: carried as `Arc<Cause>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The connection that sent the request.
    pub client: SubscriberId,
    /// The session (conversation) the request named.
    pub session: String,
    /// The kernel's own id for the request, unique per prompt.
    pub turn: Uuid,
    /// The workspace the connection works in (canonical), when it named one.
    pub workspace: Option<Arc<PathBuf>>,
    /// The connection's own id for the request, when it is a single tool call (`CallTool`):
    /// what the chain sends back to it (a command's output) names the call, so that a client
    /// with several calls in flight can tell them apart.
    pub call_id: Option<String>,
}

impl Cause {
    /// A fresh cause for a request of `client` in `session`.
    pub fn new(client: SubscriberId, session: impl Into<String>, workspace: Option<Arc<PathBuf>>) -> Arc<Self> {
        Arc::new(Self { client, session: session.into(), turn: Uuid::new_v4(), workspace, call_id: None })
    }

    /// A fresh cause for `client`'s tool call `call_id` in `session`.
    pub fn for_call(
        client: SubscriberId,
        session: impl Into<String>,
        workspace: Option<Arc<PathBuf>>,
        call_id: &str,
    ) -> Arc<Self> {
        let call_id = Some(call_id.to_owned());
        Arc::new(Self { client, session: session.into(), turn: Uuid::new_v4(), workspace, call_id })
    }
}
