//! An async client connection, for a frontend that lives as long as another program's
//! session and serves it concurrently (`astrid mcp serve`): the same checks and handshake as
//! the blocking [`super::Client`], then frames read and written from tokio tasks.
//!
//! It says who it acts for (`label`) and whether anyone at it answers questions, which the
//! daemon uses for the audit trail and to route approvals (see `kernel::ask`).

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::client::{ClientError, check_socket};
use super::frame::{FrameError, FrameReader, MAX_HANDSHAKE_FRAME, MAX_SERVER_FRAME, write_frame};
use super::token::SessionToken;
use crate::home::AstridHome;
use crate::types::topics::REQUEST_PREFIX;
use crate::types::{
    EgressFrame, HandshakeRequest, HandshakeResponse, HandshakeStatus, IpcMessage, IpcPayload, KernelRequest,
    PROTOCOL_VERSION, SYSTEM_SESSION_UUID,
};

/// How the connection presents itself.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// The workspace it works in (`None`: the daemon's).
    pub workspace: Option<std::path::PathBuf>,
    /// Who it acts for, named in the audit trail.
    pub label: Option<String>,
    /// Whether anyone at this connection answers questions.
    pub answers_questions: bool,
}

/// The reading half: frames from the daemon.
#[derive(Debug)]
pub struct Frames {
    reader: FrameReader<OwnedReadHalf>,
}

impl Frames {
    /// The next frame; `Ok(None)` once the daemon closed the connection. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<EgressFrame>, ClientError> {
        match self.reader.next_frame().await {
            Ok(Some(frame)) => {
                serde_json::from_slice(&frame).map(Some).map_err(|e| ClientError::Protocol(format!("not a frame: {e}")))
            }
            Ok(None) | Err(FrameError::Truncated { .. }) => Ok(None),
            Err(FrameError::Io(e)) => Err(ClientError::Io(e)),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }
}

/// The writing half: messages to the daemon.
#[derive(Debug)]
pub struct Sender {
    writer: OwnedWriteHalf,
}

impl Sender {
    /// Publishes `payload` on `topic` (an ingress topic: the daemon refuses others).
    pub async fn publish(&mut self, topic: &str, payload: IpcPayload) -> Result<(), ClientError> {
        let message = IpcMessage::new(topic, payload, SYSTEM_SESSION_UUID);
        let bytes = serde_json::to_vec(&message).map_err(|e| ClientError::Protocol(e.to_string()))?;
        write_frame(&mut self.writer, &bytes).await.map_err(ClientError::Io)
    }

    /// Sends `request` on `astrid.v1.request.<suffix>`; the reply comes on
    /// `astrid.v1.response.<suffix>`, among the frames.
    pub async fn request(&mut self, suffix: &str, request: &KernelRequest) -> Result<(), ClientError> {
        let payload = serde_json::to_value(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.publish(&format!("{REQUEST_PREFIX}{suffix}"), IpcPayload::RawJson(payload)).await
    }
}

/// Connects to the daemon of `home` and completes the handshake within `wait`.
pub async fn connect(home: &AstridHome, hello: &Hello, wait: Duration) -> Result<(Sender, Frames), ClientError> {
    let path = home.socket_path();
    if !home.check_run_dir()? {
        return Err(ClientError::NoSocket(path));
    }
    check_socket(&path)?;
    let stream = UnixStream::connect(&path).await.map_err(|source| ClientError::Connect { path, source })?;
    let token = SessionToken::read(&home.token_path())?;
    let (read_half, mut writer) = stream.into_split();
    let request = HandshakeRequest {
        token: token.to_hex(),
        protocol_version: PROTOCOL_VERSION,
        client_version: crate::VERSION.to_owned(),
        capsule_host: None,
        workspace: hello.workspace.as_deref().and_then(canonical),
        label: hello.label.clone(),
        answers_questions: (!hello.answers_questions).then_some(false),
    };
    let bytes = serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut reader = FrameReader::new(read_half, MAX_HANDSHAKE_FRAME);
    let exchange = async {
        write_frame(&mut writer, &bytes).await?;
        reader.next_frame().await.map_err(|e| match e {
            FrameError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        })
    };
    let reply = match tokio::time::timeout(wait, exchange).await {
        Err(_) => return Err(ClientError::Timeout(wait)),
        Ok(Err(e)) => return Err(ClientError::Io(e)),
        Ok(Ok(None)) => return Err(ClientError::Closed),
        Ok(Ok(Some(reply))) => reply,
    };
    let reply: HandshakeResponse =
        serde_json::from_slice(&reply).map_err(|e| ClientError::Protocol(format!("bad handshake reply: {e}")))?;
    if reply.status == HandshakeStatus::Error {
        return Err(ClientError::Rejected(reply.reason.unwrap_or_default()));
    }
    reader.set_max(MAX_SERVER_FRAME);
    Ok((Sender { writer }, Frames { reader }))
}

fn canonical(path: &Path) -> Option<String> {
    path.canonicalize().ok().map(|p| p.display().to_string())
}
