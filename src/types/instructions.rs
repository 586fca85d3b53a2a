//! Project instructions: the `AGENTS.md` files whose text joins the agent's system prompt.
//!
//! The convention (Codex, Cursor and others read it) is a Markdown file of standing
//! instructions at the root of a project. Astrid reads two: the user's own, in the Astrid
//! home, and the project's, at the root of the workspace a turn works on, in that order (the
//! more specific one last, so it has the last word). The kernel reads them (see
//! `kernel::instructions`) and hands over only their text; the same answer goes to the agent
//! (on [`INSTRUCTIONS_REQUEST_TOPIC`](super::topics::INSTRUCTIONS_REQUEST_TOPIC)) and to a
//! frontend (`GetInstructions`), so what the chat says it loaded is what the agent was given.

use serde::{Deserialize, Serialize};

/// The file name, in the home and at the workspace root.
pub const INSTRUCTIONS_FILE: &str = "AGENTS.md";

/// The most of one file that is used, in bytes; the rest is cut (and the cut marked).
pub const MAX_INSTRUCTIONS_BYTES: usize = 32 * 1024;

/// The instruction files that apply to a workspace: the answer to `GetInstructions` and to
/// the agent's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionFiles {
    /// The files found, the user's first, then the project's.
    pub files: Vec<InstructionFile>,
    /// Files that exist but were not read, each with the reason (a link leading out of the
    /// workspace, not a regular file, not UTF-8…).
    pub refused: Vec<String>,
}

/// One instruction file, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionFile {
    /// Whose instructions these are.
    pub scope: InstructionScope,
    /// Where the file is (absolute), for people.
    pub path: String,
    /// Its text, at most [`MAX_INSTRUCTIONS_BYTES`] of it; a cut is marked at the end.
    pub text: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether it was longer than [`MAX_INSTRUCTIONS_BYTES`] and cut.
    pub truncated: bool,
}

/// Whose instructions a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionScope {
    /// The person's own, for every project (`$ASTRID_HOME/AGENTS.md`).
    User,
    /// The project's (`AGENTS.md` at the workspace root, as the agent sees the workspace:
    /// pending changes included).
    Project,
}

impl InstructionScope {
    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Project => "project",
        }
    }
}

impl InstructionFiles {
    /// The text that joins the system prompt: each file under a heading that says whose it
    /// is; empty when there are none.
    pub fn prompt_text(&self) -> String {
        let mut text = String::new();
        for file in &self.files {
            let heading = match file.scope {
                InstructionScope::User => "Instructions from the user (their AGENTS.md, for every project)",
                InstructionScope::Project => "Instructions of this project (AGENTS.md at the workspace root)",
            };
            text.push_str(&format!("\n\n# {heading}\n\n{}", file.text.trim_end()));
        }
        text
    }
}
