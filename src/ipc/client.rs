//! The blocking client the CLI uses: connect, handshake, one management request at a time.
//!
//! Blocking std I/O on purpose: a CLI command is one request and one reply, and starting an
//! async runtime would cost more than the whole exchange (`astrid status` is meant to finish
//! in a few milliseconds).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::frame::{BlockingFrames, FrameError, MAX_HANDSHAKE_FRAME, MAX_SERVER_FRAME, write_frame_blocking};
use super::token::{SessionToken, TokenError};
use crate::home::{AstridHome, HomeError};
use crate::types::topics::{REQUEST_PREFIX, RESPONSE_PREFIX};
use crate::types::{
    CapsuleAttach, EgressFrame, HandshakeRequest, HandshakeResponse, HandshakeStatus, IpcMessage, IpcPayload,
    KernelRequest, KernelResponse, PROTOCOL_VERSION, SYSTEM_SESSION_UUID,
};

/// How long the client waits for each step of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file.
    #[error("no daemon socket at {0}")]
    NoSocket(PathBuf),
    /// The home, its `run/` or the socket may be another user's: the token is not handed over.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The socket exists but nobody accepts on it.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The token file is missing or malformed.
    #[error("cannot read the session token (is the daemon running?): {0}")]
    Token(#[from] TokenError),
    /// The daemon refused the handshake.
    #[error("daemon rejected connection: {0}")]
    Rejected(String),
    /// The daemon sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No reply in time.
    #[error("no reply from the daemon within {0:?}")]
    Timeout(Duration),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// Socket I/O failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Self::Timeout(HANDSHAKE_TIMEOUT)
            }
            FrameError::Io(e) => Self::Io(e),
            FrameError::Truncated { .. } => Self::Closed,
            other => Self::Protocol(other.to_string()),
        }
    }
}

/// An authenticated connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    frames: BlockingFrames,
}

/// The socket must be a socket (not a link to one elsewhere) bound by this user.
pub(super) fn check_socket(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClientError::NoSocket(path.to_path_buf())),
        Err(source) => return Err(ClientError::Connect { path: path.to_path_buf(), source }),
    };
    if meta.file_type().is_symlink() {
        return Err(HomeError::Symlink { path: path.to_path_buf() }.into());
    }
    if !meta.file_type().is_socket() {
        return Err(HomeError::WrongKind { path: path.to_path_buf(), expected: "a socket" }.into());
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(HomeError::Owner { path: path.to_path_buf(), owner: meta.uid(), uid }.into());
    }
    Ok(())
}

impl Client {
    /// Connects to the daemon of `home` and completes the handshake, working in the current
    /// directory (what the user's turns read and write; management requests about the
    /// workspace concern it too).
    pub fn connect(home: &AstridHome) -> Result<Self, ClientError> {
        let cwd = std::env::current_dir().ok();
        Self::connect_in(home, cwd.as_deref())
    }

    /// [`Client::connect`], working in `workspace` (`None`: the daemon's own).
    pub fn connect_in(home: &AstridHome, workspace: Option<&Path>) -> Result<Self, ClientError> {
        Self::handshake(home, None, workspace)
    }

    /// [`Client::connect`], as a capsule host serving the capsule `attach` names when given.
    pub fn connect_as(home: &AstridHome, attach: Option<CapsuleAttach>) -> Result<Self, ClientError> {
        Self::handshake(home, attach, None)
    }

    fn handshake(
        home: &AstridHome,
        attach: Option<CapsuleAttach>,
        workspace: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let path = home.socket_path();
        // The token goes only to a socket in a home and `run/` of this user's, bound by it.
        if !home.check_run_dir()? {
            return Err(ClientError::NoSocket(path));
        }
        check_socket(&path)?;
        let mut stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect { path, source })?;
        // Read fresh on every connect: the token changes with every boot.
        let token = SessionToken::read(&home.token_path())?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let request = HandshakeRequest {
            token: token.to_hex(),
            protocol_version: PROTOCOL_VERSION,
            client_version: crate::VERSION.to_owned(),
            capsule_host: attach,
            workspace: workspace.and_then(|w| w.canonicalize().ok()).map(|w| w.display().to_string()),
            label: None,
            answers_questions: None,
        };
        write_frame_blocking(&mut stream, &to_json(&request)?)?;
        let mut frames = BlockingFrames::default();
        let reply = frames.next_frame(&mut stream, MAX_HANDSHAKE_FRAME)?.ok_or(ClientError::Closed)?;
        let reply: HandshakeResponse =
            serde_json::from_slice(&reply).map_err(|e| ClientError::Protocol(format!("bad handshake reply: {e}")))?;
        match reply.status {
            HandshakeStatus::Ok => Ok(Self { stream, frames }),
            HandshakeStatus::Error => Err(ClientError::Rejected(reply.reason.unwrap_or_default())),
        }
    }

    /// Publishes `payload` on `topic` (an ingress topic: the daemon refuses others).
    pub fn publish(&mut self, topic: &str, payload: &IpcPayload) -> Result<(), ClientError> {
        let message = IpcMessage::new(topic, payload.clone(), SYSTEM_SESSION_UUID);
        write_frame_blocking(&mut self.stream, &to_json(&message)?)?;
        Ok(())
    }

    /// The next frame from the daemon, waiting at most `wait`.
    pub fn next_frame(&mut self, wait: Duration) -> Result<EgressFrame, ClientError> {
        self.stream.set_read_timeout(Some(wait))?;
        let frame = match self.frames.next_frame(&mut self.stream, MAX_SERVER_FRAME) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(ClientError::Closed),
            Err(FrameError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout(wait));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&frame).map_err(|e| ClientError::Protocol(format!("not a frame: {e}")))
    }

    /// Discards the frames already waiting (left over from an earlier turn), and tells whether
    /// the daemon is still there: `Err(Closed)` once it has gone.
    pub fn drain(&mut self) -> Result<(), ClientError> {
        loop {
            match self.next_frame(Duration::from_millis(1)) {
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection itself, for a protocol other than management requests (a capsule
    /// host's session), with whatever of the next frames was already read.
    pub fn into_parts(self) -> (UnixStream, BlockingFrames) {
        (self.stream, self.frames)
    }

    /// Sends `request` on `astrid.v1.request.<suffix>` and waits up to `wait` for the reply
    /// on `astrid.v1.response.<suffix>`, skipping unrelated frames.
    pub fn request(
        &mut self,
        suffix: &str,
        request: &KernelRequest,
        wait: Duration,
    ) -> Result<KernelResponse, ClientError> {
        let payload = serde_json::to_value(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let message =
            IpcMessage::new(format!("{REQUEST_PREFIX}{suffix}"), IpcPayload::RawJson(payload), SYSTEM_SESSION_UUID);
        write_frame_blocking(&mut self.stream, &to_json(&message)?)?;
        let reply_topic = format!("{RESPONSE_PREFIX}{suffix}");
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(wait));
            }
            let frame = match self.next_frame(left) {
                Err(ClientError::Timeout(_)) => return Err(ClientError::Timeout(wait)),
                other => other?,
            };
            if frame.topic != reply_topic {
                continue;
            }
            return serde_json::from_value(frame.payload).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")));
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Protocol(e.to_string()))
}
