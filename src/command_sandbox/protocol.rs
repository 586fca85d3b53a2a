//! What the three processes of a command say to each other.
//!
//! ```text
//! daemon ── stdin: HelperRequest (one JSON line), then control bytes (`k`: kill) ──▶ helper
//!        ◀─ stdout: frames (tag, u32 length, payload): Started, Output…, Report | SetupFailed
//! helper ── stdin: InitRequest (one JSON line), then held open (EOF: the helper is gone) ──▶ init
//!        ◀─ stdout and stderr of the command (one pipe, raw) ─ the command's processes
//!        ◀─ stderr: InitStatus JSON lines (Started | Failed, then Exited | Signalled) ── init
//! ```
//!
//! The daemon's stdin pipe is the helper's lifeline and the helper's is init's: when the
//! writer dies, the reader sees end of file and ends the command. Frames are length-prefixed
//! because output is arbitrary bytes; each frame is at most [`MAX_FRAME`].

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::Limits;

/// Largest frame payload: the report of a command that changed many paths (output comes in
/// chunks of 64 KiB).
pub const MAX_FRAME: usize = 64 << 20;
/// The control byte that asks the helper to kill the command now.
pub const KILL: u8 = b'k';

/// Everything the helper needs, from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperRequest {
    pub command_line: String,
    /// Canonical absolute path of the workspace (the command sees it at this path).
    pub workspace: PathBuf,
    /// The command's working directory, relative to the workspace (already checked).
    pub cwd: String,
    /// The VFS overlay's `upper/` (pending writes), the top lower layer.
    pub vfs_upper: PathBuf,
    /// The VFS whiteouts (pending deletions), relative to the workspace.
    pub whiteouts: Vec<String>,
    /// A fresh private directory for this command: the scratch mount point and the staged
    /// files.
    pub staging: PathBuf,
    pub timeout_ms: u64,
    pub network: bool,
    pub limits: Limits,
    /// Whether the kernel bounds processes per pid namespace (`pid_max`, Linux ≥ 6.14).
    pub namespace_pid_max: bool,
    pub read_only_paths: Vec<PathBuf>,
    /// Paths to hide if they lie inside the workspace (the Astrid home, the user's keys).
    pub hidden: Vec<PathBuf>,
    /// The command's `HOME`: created empty at this path.
    pub home: Option<PathBuf>,
    /// The command's whole environment.
    pub env: Vec<(String, String)>,
}

/// What init needs, from the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRequest {
    /// The new root, a mount point in the helper's mount namespace.
    pub root: PathBuf,
    /// Absolute working directory inside the new root.
    pub cwd: PathBuf,
    pub command_line: String,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub namespace_pid_max: bool,
}

/// What init reports, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum InitStatus {
    /// The command was started.
    Started,
    /// The sandbox could not be set up; nothing ran.
    Failed {
        reason: String,
    },
    Exited {
        code: i32,
    },
    Signalled {
        signal: i32,
    },
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (its number).
    Signalled(i32),
    /// Its timeout ran out; it was killed.
    TimedOut,
    /// It was killed on request (a cancelled turn, a dropped command).
    Killed,
}

/// One thing the command left in the scratch upper layer, for the daemon to import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StagedItem {
    /// A regular file, its content staged at `staging/files/<path>`.
    File { path: String },
    /// The path is gone: a file, or a directory with everything below it.
    Deleted { path: String },
}

/// Something the command made that the overlay cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Relative to the workspace.
    pub path: String,
    /// Why (`a symbolic link`, `a FIFO`, `larger than 10 MiB`…).
    pub reason: String,
}

/// The helper's last frame after the command started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    /// How long the command ran, measured by whoever enforces its timeout from the instant
    /// its deadline counts from: so a command ended by a timeout of T ran at least T.
    pub ran: std::time::Duration,
    /// In the order to apply: deletions first, then files.
    pub items: Vec<StagedItem>,
    pub refused: Vec<Refused>,
    /// What went wrong collecting the changes (they may be incomplete).
    pub problem: Option<String>,
}

/// A frame from the helper.
#[derive(Debug, Clone)]
pub enum Frame {
    /// The command runs.
    Started,
    /// Bytes it wrote (stdout and stderr, as they came).
    Output(Vec<u8>),
    /// The end, and what changed.
    Report(Report),
    /// The sandbox could not be set up (before `Started`); nothing ran.
    SetupFailed(String),
}

const STARTED: u8 = b'S';
const OUTPUT: u8 = b'O';
const REPORT: u8 = b'R';
const SETUP_FAILED: u8 = b'E';

impl Frame {
    /// Writes the frame (one `write_all` of header and payload, then a flush).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let (tag, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Self::Started => (STARTED, Vec::new().into()),
            Self::Output(bytes) => (OUTPUT, bytes.as_slice().into()),
            Self::Report(report) => (REPORT, serde_json::to_vec(report).map_err(io::Error::other)?.into()),
            Self::SetupFailed(reason) => (SETUP_FAILED, reason.as_bytes().into()),
        };
        if payload.len() > MAX_FRAME {
            return Err(io::Error::other("frame too large"));
        }
        let mut buffer = Vec::with_capacity(5 + payload.len());
        buffer.push(tag);
        buffer.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buffer.extend_from_slice(&payload);
        out.write_all(&buffer)?;
        out.flush()
    }

    /// Reads one frame; `None` at a clean end of the stream.
    pub fn read_from(input: &mut impl Read) -> io::Result<Option<Self>> {
        let mut header = [0u8; 5];
        match input.read_exact(&mut header[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        input.read_exact(&mut header[1..])?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
        }
        let mut payload = vec![0; len];
        input.read_exact(&mut payload)?;
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        Ok(Some(match header[0] {
            STARTED => Self::Started,
            OUTPUT => Self::Output(payload),
            REPORT => Self::Report(serde_json::from_slice(&payload).map_err(|e| invalid(e.to_string()))?),
            SETUP_FAILED => Self::SetupFailed(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(invalid(format!("unknown frame tag {other}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let report = Report {
            outcome: Outcome::Exited(3),
            ran: std::time::Duration::from_millis(1500),
            items: vec![StagedItem::Deleted { path: "a".into() }, StagedItem::File { path: "b/c".into() }],
            refused: vec![Refused { path: "l".into(), reason: "a symbolic link".into() }],
            problem: None,
        };
        let mut bytes = Vec::new();
        for frame in [
            Frame::Started,
            Frame::Output(b"hi\0\xff".to_vec()),
            Frame::Report(report),
            Frame::SetupFailed("no".into()),
        ] {
            frame.write_to(&mut bytes).expect("write");
        }
        let mut input = bytes.as_slice();
        assert!(matches!(Frame::read_from(&mut input), Ok(Some(Frame::Started))));
        assert!(matches!(Frame::read_from(&mut input), Ok(Some(Frame::Output(b))) if b == b"hi\0\xff"));
        match Frame::read_from(&mut input) {
            Ok(Some(Frame::Report(r))) => {
                assert_eq!(r.outcome, Outcome::Exited(3));
                assert_eq!(r.ran, std::time::Duration::from_millis(1500));
                assert_eq!(r.items.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(Frame::read_from(&mut input), Ok(Some(Frame::SetupFailed(r))) if r == "no"));
        assert!(matches!(Frame::read_from(&mut input), Ok(None)));
        assert!(Frame::read_from(&mut &b"Z\0\0\0\0"[..]).is_err());
        assert!(Frame::read_from(&mut &b"O\xff\xff\xff\xff"[..]).is_err());
        assert!(Frame::read_from(&mut &b"O\0\0\0\x05ab"[..]).is_err());
    }
}
