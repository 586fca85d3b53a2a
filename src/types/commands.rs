//! Commands a capsule runs in the command sandbox (the `process_*` host functions): what it
//! asks to run, whether it started, how it ended, and the output the kernel shows the person
//! while it runs. Astrid extensions, pinned by `tests/data/extension-vectors.jsonl`.

use serde::{Deserialize, Serialize};

use super::management::WorkspaceChange;

/// What `process_spawn` is asked to run, and how: `shell` or `program` (with `args`), never
/// both. Unknown fields are refused, so a misspelt `timeout_secs` is an error, not the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpawn {
    /// A line for `/bin/sh -c`. Its program is `sh`, so only a `process` grant of `sh` or
    /// `*` allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// A program found on the sandbox's `PATH`, by the name the `process` grant lists, run
    /// with exactly `args` (no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// The program's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The directory it starts in, relative to the workspace root (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Seconds before it is killed (default and upper limit: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Whether it needs the network. Without, it has none at all (not even loopback); with,
    /// it has the host's whole network, and the person is told so when asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
}

impl CommandSpawn {
    /// The command, once it is known to be exactly one of a shell line or a program.
    pub fn command(&self) -> Result<CommandLine, &'static str> {
        match (&self.shell, &self.program) {
            (Some(line), None) if self.args.is_empty() => Ok(CommandLine::Shell(line.clone())),
            (Some(_), None) => Err("`args` go with `program`, not with `shell`"),
            (None, Some(program)) => Ok(CommandLine::Program { program: program.clone(), args: self.args.clone() }),
            (Some(_), Some(_)) => Err("give `shell` or `program`, not both"),
            (None, None) => Err("give `shell` (a command line) or `program`"),
        }
    }
}

/// A command as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// A line for `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, no shell.
    Program {
        /// Its name.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// What `process_spawn` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SpawnReply {
    /// It runs: read its output and wait for it with this handle.
    Started {
        /// The handle for `process_read`, `process_wait` and `process_kill`.
        handle: i32,
    },
    /// It does not run.
    Refused {
        /// Why, in a word a program can act on.
        reason: SpawnRefusal,
        /// Why, in words a model or a person can act on (how to allow it, how to enable
        /// the sandbox).
        message: String,
    },
}

/// Why a command did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnRefusal {
    /// The capsule's `process` grant does not name the program.
    NotGranted,
    /// The person said no, or nobody was there to ask before the timeout.
    Denied,
    /// The sandbox cannot be set up on this machine (the message says what to change).
    SandboxUnavailable,
    /// The request is malformed (an empty line, control characters, a bad `cwd`).
    Invalid,
    /// The capsule already runs as many commands as it may at once.
    TooMany,
    /// The sandbox failed to start it (the message says why).
    Failed,
}

/// How a command ended (`process_wait`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFinished {
    /// How it ended.
    pub outcome: CommandOutcome,
    /// Its exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// From start to end, in milliseconds.
    pub duration_ms: u64,
    /// Output bytes it wrote (stdout and stderr together), all of them, read or not.
    pub output_bytes: u64,
    /// What it changed in the workspace, now pending review like the agent's own writes.
    pub changes: Vec<WorkspaceChange>,
    /// What it made that the review overlay cannot hold (symbolic links, devices, files
    /// too large), by path and why; none of it reaches the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_changes: Vec<String>,
    /// A failure of the sandbox itself after the command started (collecting its changes, for
    /// one): the changes listed may then be incomplete, and the model is told so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// It exited by itself (see `code`).
    Exited,
    /// A signal it did not handle ended it (see `signal`).
    Signalled,
    /// It ran past its timeout and was killed, with everything it started.
    TimedOut,
    /// It was killed on request: the capsule, a cancelled turn, or a connection gone.
    Killed,
}

/// A piece of a running command's output, shown to the person whose turn runs it as it comes
/// (a `custom` payload on [`COMMAND_OUTPUT_TOPIC`](super::topics::COMMAND_OUTPUT_TOPIC)). The
/// kernel sends it, not the capsule: what the person sees is what the command wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// The command line, as approved.
    pub command: String,
    /// The output, stdout and stderr interleaved as they came (invalid UTF-8 replaced).
    pub text: String,
    /// The client's `call_id` when its `CallTool` runs the command (absent in an agent's
    /// turn): a client with several calls in flight, even of the same command line, tells
    /// their output apart by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}
