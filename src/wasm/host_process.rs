//! `process_spawn`, `process_read`, `process_wait`, `process_kill`: a capsule runs a command
//! in the command sandbox ([`crate::command_sandbox`]).
//!
//! `process_spawn` decides, in this order, each refusal a [`SpawnReply::Refused`] whose message
//! a model (and through it, a person) can act on:
//! 1. the request is well formed: a command line the person can be shown whole (at most
//!    [`ask::MAX_LINE`] characters, no control characters: a newline would let one line look
//!    like another), a `cwd` that is a directory of the workspace as the turn sees it;
//! 2. the capsule's `process` grant names the program (`sh` for a shell line; audited), and
//!    a command that asks for the network needs `net = ["*"]` too (the sandbox gives all of
//!    the host's network or none: it cannot hold a command to some hosts);
//! 3. the sandbox works on this machine (else what to change, in the message);
//! 4. a person allows this exact line (with the network: a separate action, so an allowance
//!    for a line offline never covers it online), or a standing allowance covers it (the kernel's
//!    approvals: asked of the connection whose turn runs it, audited, "session" and "always"
//!    covering a prefix of its words: see [`crate::kernel::command_scope`]);
//! 5. the sandbox starts it, and `process.start` is audited with the line, cwd, network and
//!    the rule that allowed it.
//!
//! The kernel, not the capsule, decides all of this: a capsule cannot run a line other than
//! the one the person saw. The command is registered with the kernel under the turn it runs
//! for, so a cancelled turn or a closed connection kills it and everything it started. Its
//! output goes to the guest (`process_read`) and, as it is read, to the person whose turn it
//! is ([`CommandOutput`]): what the person sees is what the command wrote, not what the
//! capsule chooses to relay. `process_wait` audits `process.exit` (how it ended, how long,
//! how many bytes, which files it changed in the review overlay) and frees the handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::wait::{block_on_timeout, unless_stopped};
use crate::audit::{Actor, Decision};
use crate::command_sandbox::{Availability, CommandEvent, CommandRequest, Finished, Killer, Outcome, RunningCommand};
use crate::kernel::approval::{ApprovalOutcome, ApprovalRequest, Scope};
use crate::kernel::ask;
use crate::kernel::bus::BusMessage;
use crate::kernel::capability::Capability;
use crate::kernel::running_commands::Registration;
use crate::kernel::{Cause, Kernel};
use crate::types::commands::{
    CommandFinished, CommandLine, CommandOutcome, CommandOutput, CommandSpawn, SpawnRefusal, SpawnReply,
};
use crate::types::management::{RUN_COMMAND_ACTION, RUN_NETWORKED_COMMAND_ACTION};
use crate::types::topics::COMMAND_OUTPUT_TOPIC;
use crate::types::{IpcMessage, IpcPayload};
use crate::vfs::VfsPath;

/// Largest `process_spawn` request a guest may pass.
pub(super) const MAX_SPAWN_REQUEST: usize = 64 * 1024;
/// Commands one capsule instance may run at once.
const MAX_PROCESSES: usize = 4;
/// Longest one `process_read` or `process_wait` waits (a guest waits in slices).
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Longest a command waits for the boot's trial of the sandbox (it takes milliseconds; a
/// kernel run without a daemon never has one).
const SANDBOX_TRIAL_WAIT: Duration = Duration::from_secs(30);
/// Changed paths named in one `process.exit` audit entry (the count is always there).
const AUDITED_CHANGES: usize = 64;

/// `process_read` and `process_wait`: nothing within the timeout; the command goes on.
pub const PENDING: i32 = -10;
/// No command has this handle (never opened, or already waited for).
pub const NO_PROCESS: i32 = -5;

/// A command an instance runs, by handle.
pub(super) struct Process {
    running: RunningCommand,
    killer: Killer,
    /// The line as approved (what the person saw, in the audit trail and the output events).
    line: String,
    /// How it ended, once the sandbox said (the output is over then).
    finished: Option<Finished>,
    /// Who the output is shown to: the turn it runs for.
    cause: Option<Arc<Cause>>,
    _registration: Registration,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("line", &self.line).field("finished", &self.finished.is_some()).finish()
    }
}

fn refused(reason: SpawnRefusal, message: impl Into<String>) -> HostReply {
    reply_json(&SpawnReply::Refused { reason, message: message.into() })
}

fn reply_json<T: serde::Serialize>(value: &T) -> HostReply {
    match serde_json::to_vec(value) {
        Ok(bytes) => HostReply::bytes(bytes),
        Err(e) => HostReply::Trap(format!("cannot encode a process reply: {e}")),
    }
}

/// The line the person is shown and the sandbox runs, and the program the grant must name.
fn command_line(spawn: &CommandSpawn) -> Result<(String, String), String> {
    let (line, program) = match spawn.command().map_err(str::to_owned)? {
        CommandLine::Shell(line) => (line, "sh".to_owned()),
        CommandLine::Program { program, args } => {
            let words = std::iter::once(program.as_str()).chain(args.iter().map(String::as_str));
            let line = shlex::try_join(words).map_err(|e| format!("cannot quote the arguments: {e}"))?;
            (line, program)
        }
    };
    if line.trim().is_empty() {
        return Err("the command line is empty".to_owned());
    }
    if line.chars().any(char::is_control) {
        return Err("the command line holds a control character (a newline or a tab); join commands with `;` \
                    or `&&` so the person sees exactly what runs"
            .to_owned());
    }
    if line.chars().count() > ask::MAX_LINE {
        return Err(format!(
            "the command line is longer than {} characters, more than a person can review",
            ask::MAX_LINE
        ));
    }
    Ok((line.trim().to_owned(), program))
}

/// `process_spawn`: see the module documentation.
pub(super) fn spawn(context: &mut CapsuleContext, bytes: &[u8]) -> HostReply {
    let spawn = match serde_json::from_slice::<CommandSpawn>(bytes) {
        Ok(spawn) => spawn,
        Err(e) => return refused(SpawnRefusal::Invalid, format!("not a process_spawn request: {e}")),
    };
    let (line, program) = match command_line(&spawn) {
        Ok(found) => found,
        Err(why) => return refused(SpawnRefusal::Invalid, why),
    };
    if context.processes.iter().filter(|p| p.is_some()).count() >= MAX_PROCESSES {
        return refused(SpawnRefusal::TooMany, format!("at most {MAX_PROCESSES} commands run at once"));
    }
    let Some(access) = context.kernel.clone() else {
        return refused(SpawnRefusal::SandboxUnavailable, "this capsule runs without a kernel");
    };
    let kernel = &access.kernel;
    let cwd = match spawn.cwd.as_deref().map(str::trim).filter(|c| !c.is_empty() && *c != ".") {
        None => VfsPath::parse("").map_err(|e| e.to_string()),
        Some(cwd) => VfsPath::parse(cwd).map_err(|e| e.to_string()),
    };
    let cwd = match cwd {
        Ok(cwd) => cwd,
        Err(why) => return refused(SpawnRefusal::Invalid, format!("bad cwd: {why}")),
    };
    let Some(vfs) = context.workspace() else {
        return refused(SpawnRefusal::Failed, "the workspace of this turn cannot be opened");
    };
    match vfs.stat(&cwd) {
        Ok(meta) if meta.is_dir => {}
        Ok(_) => return refused(SpawnRefusal::Invalid, format!("cwd {cwd} is not a directory")),
        Err(e) => return refused(SpawnRefusal::Invalid, format!("cwd: {e}")),
    }
    let request = Capability::Process(&program);
    if !kernel.check_capability_for(context.audit_scope(), &access.principal, &context.capsule, &request) {
        return refused(
            SpawnRefusal::NotGranted,
            format!(
                "capsule {} may not run {program}: its `process` grant does not name it{}",
                context.capsule,
                if program == "sh" { " (a shell line needs `sh` or `*`)" } else { "" }
            ),
        );
    }
    if spawn.network
        && !kernel.check_capability_for(
            context.audit_scope(),
            &access.principal,
            &context.capsule,
            &Capability::Net("*"),
        )
    {
        return refused(
            SpawnRefusal::NotGranted,
            format!(
                "capsule {} may not give a command the network: the sandbox cannot hold a command to some \
                 hosts, so only `net = [\"*\"]` in its grant allows it; run it without the network",
                context.capsule
            ),
        );
    }
    let settled = unless_stopped(kernel.command_sandbox_settled(), context.lifecycle.stopped());
    let Some(Some(sandbox)) = block_on_timeout(settled, SANDBOX_TRIAL_WAIT) else {
        return refused(SpawnRefusal::SandboxUnavailable, "this daemon has not set up its command sandbox");
    };
    let confinement = match sandbox.availability() {
        Availability::Ready => "in the sandbox: the workspace with its pending changes, writes pending review",
        Availability::Unsandboxed => {
            "UNSANDBOXED (the operator turned the sandbox off): on the host, with the daemon's rights, writing \
             straight into the workspace"
        }
        Availability::Unavailable { reason, how_to_enable } => {
            return refused(
                SpawnRefusal::SandboxUnavailable,
                format!("commands cannot run: the sandbox is unavailable ({reason}); {how_to_enable}"),
            );
        }
    };
    let limits = sandbox.config();
    let timeout = spawn.timeout_secs.map_or(limits.default_timeout, |secs| Duration::from_secs(secs.max(1)));
    if timeout > limits.max_timeout {
        // Refused rather than cut short: a model told "done in 600 s" that gets 300 would
        // misread the kill as the command's own failure.
        return refused(
            SpawnRefusal::Invalid,
            format!(
                "a timeout of {} s is above the operator's limit of {} s; ask for {} s or less",
                timeout.as_secs(),
                limits.max_timeout.as_secs(),
                limits.max_timeout.as_secs()
            ),
        );
    }
    let network = if spawn.network { "the host's whole network" } else { "none" };
    let where_ = if cwd.is_root() { "the workspace root".to_owned() } else { cwd.to_string() };
    let action = if spawn.network { RUN_NETWORKED_COMMAND_ACTION } else { RUN_COMMAND_ACTION };
    let mut approval = ApprovalRequest::new(&access.principal, context.origin(), action, &line);
    approval.cause = context.cause.clone();
    approval.scope = Scope::command(&line);
    approval.details =
        Some(format!("$ {line}\nin {where_}, {confinement}\nnetwork: {network}\ntimeout: {} s", timeout.as_secs()));
    let stopped = context.lifecycle.stopped();
    let longest = kernel.questions().longest_wait();
    let rule = match block_on_timeout(unless_stopped(kernel.request_approval(approval), stopped), longest) {
        Some(Some(ApprovalOutcome::Allowed { rule })) => rule,
        Some(Some(ApprovalOutcome::Denied { reason })) => {
            return refused(
                SpawnRefusal::Denied,
                format!(
                    "the user did not allow `{line}` ({reason}); nothing ran. A person can allow commands \
                     in `astrid chat`, or with `astrid run --yes`"
                ),
            );
        }
        _ => return refused(SpawnRefusal::Denied, format!("`{line}` was not allowed before the capsule stopped")),
    };
    let request = CommandRequest { command_line: line.clone(), cwd: cwd.clone(), timeout, network: spawn.network };
    let running = match sandbox.start(&vfs, &request) {
        Ok(running) => running,
        Err(e) => {
            let why = e.to_string();
            record(kernel, &access.principal, context, "process.start", &line, Decision::Deny, &why);
            return refused(SpawnRefusal::Failed, format!("`{line}` could not start: {why}"));
        }
    };
    let details = format!("{rule}; cwd {where_}; network {network}; timeout {} s", timeout.as_secs());
    record(kernel, &access.principal, context, "process.start", &line, Decision::Allow, &details);
    let killer = running.killer();
    let registration = {
        let killer = killer.clone();
        kernel.running_commands().register(context.cause.as_deref(), Box::new(move || killer.kill()))
    };
    let process =
        Process { running, killer, line, finished: None, cause: context.cause.clone(), _registration: registration };
    let handle = match context.processes.iter().position(Option::is_none) {
        Some(index) => {
            context.processes[index] = Some(process);
            index
        }
        None => {
            context.processes.push(Some(process));
            context.processes.len() - 1
        }
    };
    match i32::try_from(handle) {
        Ok(handle) => reply_json(&SpawnReply::Started { handle }),
        Err(_) => refused(SpawnRefusal::TooMany, "no handle left"),
    }
}

fn record(
    kernel: &Kernel,
    principal: &str,
    context: &CapsuleContext,
    action: &str,
    line: &str,
    decision: Decision,
    rule: &str,
) {
    kernel.record(principal, Actor::Capsule { name: context.capsule.clone() }, action, line, decision, rule);
}

/// Takes the command with this handle out of the table for a call (the call puts it back
/// unless it is done with it), so it can be driven while the context is borrowed.
fn take(context: &mut CapsuleContext, handle: i32) -> Option<(usize, Process)> {
    let index = usize::try_from(handle).ok()?;
    context.processes.get_mut(index)?.take().map(|process| (index, process))
}

/// Shows a piece of output to the person whose turn runs the command.
fn show(kernel: &Kernel, process: &Process, bytes: &[u8]) {
    let Some(cause) = &process.cause else { return };
    let output = CommandOutput {
        command: process.line.clone(),
        text: String::from_utf8_lossy(bytes).into_owned(),
        call_id: cause.call_id.clone(),
    };
    let Ok(data) = serde_json::to_value(&output) else { return };
    let message = IpcMessage::new(COMMAND_OUTPUT_TOPIC, IpcPayload::Custom { data }, kernel.session());
    kernel.bus().publish(BusMessage::from_kernel(message).caused_by(Some(Arc::clone(cause))));
}

/// The next event within `wait`, shown to the person if it is output; the end is kept.
fn next(context: &CapsuleContext, process: &mut Process, wait: Duration) -> Option<Vec<u8>> {
    match process.running.next(wait) {
        CommandEvent::Output(bytes) => {
            if let Some(access) = &context.kernel {
                show(&access.kernel, process, &bytes);
            }
            Some(bytes)
        }
        CommandEvent::Pending => None,
        CommandEvent::Finished(finished) => {
            process.finished = Some(finished);
            None
        }
    }
}

/// `process_read`: the next piece of output; an empty one once the output is over.
pub(super) fn read(context: &mut CapsuleContext, handle: i32, timeout_ms: u32) -> HostReply {
    let wait = Duration::from_millis(timeout_ms.into()).min(MAX_WAIT);
    let Some((index, mut process)) = take(context, handle) else { return HostReply::value(NO_PROCESS) };
    let reply = match process.finished {
        Some(_) => HostReply::bytes(Vec::new()),
        None => match next(context, &mut process, wait) {
            Some(bytes) => HostReply::bytes(bytes),
            None if process.finished.is_some() => HostReply::bytes(Vec::new()),
            None => HostReply::value(PENDING),
        },
    };
    context.processes[index] = Some(process);
    reply
}

/// `process_wait`: how the command ended (output not read by then is dropped, though the
/// person saw it and it is counted), or `PENDING` after the timeout. Frees the handle.
pub(super) fn wait(context: &mut CapsuleContext, handle: i32, timeout_ms: u32) -> HostReply {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.into()).min(MAX_WAIT);
    let Some((index, mut process)) = take(context, handle) else { return HostReply::value(NO_PROCESS) };
    while process.finished.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || context.lifecycle.is_stopping() {
            context.processes[index] = Some(process);
            return HostReply::value(PENDING);
        }
        // A stop must not wait out a long slice: look again at least every quarter second.
        next(context, &mut process, left.min(Duration::from_millis(250)));
    }
    let Some(finished) = process.finished.take() else { return HostReply::value(NO_PROCESS) };
    let report = finished_report(&finished);
    if let Some(access) = &context.kernel {
        let rule = exit_summary(&report);
        record(&access.kernel, &access.principal, context, "process.exit", &process.line, Decision::Info, &rule);
    }
    reply_json(&report)
}

/// `process_kill`: kills the command and everything it started; `process_wait` then says so.
pub(super) fn kill(context: &mut CapsuleContext, handle: i32) -> HostReply {
    let Some((index, process)) = take(context, handle) else { return HostReply::value(NO_PROCESS) };
    process.killer.kill();
    context.processes[index] = Some(process);
    HostReply::value(0)
}

fn finished_report(finished: &Finished) -> CommandFinished {
    let (outcome, code, signal) = match finished.outcome {
        Outcome::Exited(code) => (CommandOutcome::Exited, Some(code), None),
        Outcome::Signalled(signal) => (CommandOutcome::Signalled, None, Some(signal)),
        Outcome::TimedOut => (CommandOutcome::TimedOut, None, None),
        Outcome::Killed => (CommandOutcome::Killed, None, None),
    };
    CommandFinished {
        outcome,
        code,
        signal,
        duration_ms: u64::try_from(finished.duration.as_millis()).unwrap_or(u64::MAX),
        output_bytes: finished.output_bytes,
        changes: finished.changes.clone(),
        refused_changes: finished
            .refused
            .iter()
            .map(|refused| format!("{}: {}", refused.path, refused.reason))
            .collect(),
        problem: finished.problem.clone(),
    }
}

/// The `process.exit` audit entry's rule: how it ended, how long, how much output, and the
/// files it changed in the overlay (the first [`AUDITED_CHANGES`], and how many in all).
fn exit_summary(report: &CommandFinished) -> String {
    let ended = match (report.outcome, report.code, report.signal) {
        (CommandOutcome::Exited, Some(code), _) => format!("exited {code}"),
        (CommandOutcome::Signalled, _, Some(signal)) => format!("ended by signal {signal}"),
        (CommandOutcome::TimedOut, ..) => "killed at its timeout".to_owned(),
        _ => "killed on request".to_owned(),
    };
    let mut changed: Vec<String> =
        report.changes.iter().take(AUDITED_CHANGES).map(|c| format!("{} ({:?})", c.path, c.kind)).collect();
    if report.changes.len() > AUDITED_CHANGES {
        changed.push(format!("… {} more", report.changes.len() - AUDITED_CHANGES));
    }
    let changed = if changed.is_empty() { "none".to_owned() } else { changed.join(", ") };
    let refused = if report.refused_changes.is_empty() {
        String::new()
    } else {
        format!("; refused: {}", report.refused_changes.join(", "))
    };
    let problem = report.problem.as_ref().map(|problem| format!("; sandbox problem: {problem}")).unwrap_or_default();
    format!(
        "{ended} after {} ms; {} bytes of output; changed: {changed}{refused}{problem}",
        report.duration_ms, report.output_bytes
    )
}
