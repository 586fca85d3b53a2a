//! Commands in the sandbox, within the capsule's `process` grant (`process = ["cargo", "*"]`).
//!
//! The kernel asks a person before every command (showing the exact line; a standing
//! allowance may answer for a prefix of its words), runs it confined to the workspace as the
//! agent sees it, with its writes pending review like the agent's own, and shows its output to
//! the person as it comes. So a capsule cannot run anything the person did not see. A refusal
//! ([`Refused`]) carries a message written for the model: pass it on.

use crate::abi;
pub use astrid::types::commands::{CommandFinished, CommandOutcome, CommandSpawn, SpawnRefusal, SpawnReply};

/// `process_read` and `process_wait`: nothing arrived within the timeout.
const PENDING: i64 = -10;
/// How long one host call waits; [`Process::run_to_end`] loops over such slices.
const SLICE_MS: i32 = 1_000;

/// Why a command did not start, in a word and in words a model can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why, for code.
    pub reason: SpawnRefusal,
    /// Why, for the model and the person.
    pub message: String,
}

/// A command to run: a shell line, or a program with its arguments (no shell).
#[derive(Debug, Clone, Default)]
pub struct Command(CommandSpawn);

impl Command {
    /// `/bin/sh -c line`: needs `sh` or `*` in the `process` grant.
    pub fn shell(line: &str) -> Self {
        Self(CommandSpawn { shell: Some(line.to_owned()), ..CommandSpawn::default() })
    }

    /// `program` with exactly `args`: needs `program` (or `*`) in the `process` grant.
    pub fn program(program: &str, args: &[&str]) -> Self {
        Self(CommandSpawn {
            program: Some(program.to_owned()),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..CommandSpawn::default()
        })
    }

    /// Starts in this directory of the workspace.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.0.cwd = Some(dir.to_owned());
        self
    }

    /// Killed after this many seconds (at most the operator's limit).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.0.timeout_secs = Some(secs);
        self
    }

    /// Gets the host's network (the person is told when asked); without, it has none.
    pub fn network(mut self, network: bool) -> Self {
        self.0.network = network;
        self
    }

    /// Asks for it to run: waits while a person decides.
    pub fn spawn(&self) -> Result<Process, Refused> {
        let json = serde_json::to_vec(&self.0).unwrap_or_default();
        // SAFETY: a valid buffer for the duration of the call.
        let packed = unsafe { abi::process_spawn(json.as_ptr(), json.len()) };
        let reply = abi::unpack(packed)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SpawnReply>(&bytes).ok())
            .unwrap_or_else(|| SpawnReply::Refused {
                reason: SpawnRefusal::Failed,
                message: format!("the host answered process_spawn with {packed}"),
            });
        match reply {
            SpawnReply::Started { handle } => Ok(Process { handle, done: false }),
            SpawnReply::Refused { reason, message } => Err(Refused { reason, message }),
        }
    }
}

/// What [`Process::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A piece of output (stdout and stderr interleaved as they came).
    Output(Vec<u8>),
    /// Nothing within the timeout; it goes on.
    Pending,
    /// The output is over: the command ended.
    End,
}

/// A running command. Dropping it before [`Process::wait`] kills it.
#[derive(Debug)]
pub struct Process {
    handle: i32,
    done: bool,
}

impl Process {
    /// The next piece of output, waiting at most `timeout_ms`.
    pub fn read(&self, timeout_ms: i32) -> Read {
        match abi::unpack(abi::process_read(self.handle, timeout_ms)) {
            Ok(bytes) if bytes.is_empty() => Read::End,
            Ok(bytes) => Read::Output(bytes),
            Err(PENDING) => Read::Pending,
            Err(_) => Read::End,
        }
    }

    /// How it ended, waiting at most `timeout_ms` (`None`: still running).
    pub fn wait(&mut self, timeout_ms: i32) -> Option<CommandFinished> {
        let packed = abi::process_wait(self.handle, timeout_ms);
        let finished = abi::unpack(packed).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        self.done = finished.is_some() || packed != PENDING;
        finished
    }

    /// Kills it and everything it started.
    pub fn kill(&self) {
        abi::process_kill(self.handle);
    }

    /// Reads all of its output, keeping at most `keep` bytes of it (the first and the last
    /// halves; the cut is marked), and waits for its end.
    pub fn run_to_end(mut self, keep: usize) -> (CommandFinished, String) {
        let mut output = CappedOutput::new(keep);
        loop {
            match self.read(SLICE_MS) {
                Read::Output(bytes) => output.push(&bytes),
                Read::Pending => {}
                Read::End => break,
            }
        }
        loop {
            if let Some(finished) = self.wait(SLICE_MS) {
                return (finished, output.finish());
            }
            if self.done {
                // The handle is gone (the host dropped it): nothing more will come.
                let lost = CommandFinished {
                    outcome: CommandOutcome::Killed,
                    code: None,
                    signal: None,
                    duration_ms: 0,
                    output_bytes: output.seen as u64,
                    changes: Vec::new(),
                    refused_changes: Vec::new(),
                    problem: Some("the host dropped the command's handle".to_owned()),
                };
                return (lost, output.finish());
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.done {
            self.kill();
            let _ = self.wait(SLICE_MS);
        }
    }
}

/// Output kept within a budget: the head and the tail, with what was cut in between marked,
/// so a noisy build cannot flood a model's context and the error at the end still shows.
#[derive(Debug)]
pub struct CappedOutput {
    keep: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    seen: usize,
}

impl CappedOutput {
    /// Keeps at most `keep` bytes.
    pub fn new(keep: usize) -> Self {
        Self { keep, head: Vec::new(), tail: std::collections::VecDeque::new(), seen: 0 }
    }

    /// Adds output.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.seen += bytes.len();
        let head_room = (self.keep / 2).saturating_sub(self.head.len());
        let to_head = head_room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        let tail_keep = self.keep - self.keep / 2;
        self.tail.extend(bytes);
        while self.tail.len() > tail_keep {
            self.tail.pop_front();
        }
    }

    /// The kept text (invalid UTF-8 replaced), with a line saying how much was cut.
    pub fn finish(self) -> String {
        let cut = self.seen - self.head.len() - self.tail.len();
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if cut > 0 {
            text.push_str(&format!(
                "\n[… {cut} bytes of output cut; the first and last {} KiB kept …]\n",
                self.keep / 2048
            ));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        text.push_str(&String::from_utf8_lossy(&tail));
        text
    }
}
