//! The `astrid-mcp-exec` role: the first moments of an MCP server's process.
//!
//! The daemon cannot ask the OS to kill an arbitrary program when the daemon dies (that is
//! set from inside the child, before `exec`, and this crate forbids the `unsafe` a
//! `pre_exec` hook needs). So it starts its own binary under this role: the process ties its
//! life to the daemon's (`PR_SET_PDEATHSIG`, which survives `exec`), checks the daemon did
//! not die already, and replaces itself with the server. A SIGKILLed daemon leaves no server
//! behind; its closed pipes end the server's own children in the ordinary way.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use crate::lifeline::{PARENT_ENV, die_with_parent};

/// The name (argv[0]) the daemon starts this role under.
pub const ROLE: &str = "astrid-mcp-exec";

/// Runs `args` (program, then its arguments) in place of this process; returns only on
/// failure (exit 127, as a shell does for a program it cannot run).
pub fn main(args: &[String]) -> ExitCode {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("{ROLE}: no program to run (this role is started by the Astrid daemon)");
        return ExitCode::from(2);
    };
    if let Err(reason) = die_with_parent() {
        eprintln!("{ROLE}: {reason}");
        return ExitCode::FAILURE;
    }
    let error = std::process::Command::new(program).args(rest).env_remove(PARENT_ENV).exec();
    eprintln!("{ROLE}: cannot run {program}: {error}");
    ExitCode::from(127)
}
