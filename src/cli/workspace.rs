//! `astrid workspace diff|commit|discard`: the person decides what capsule writes reach the
//! workspace. Capsules write into a copy-on-write overlay; nothing touches the real files
//! until `commit`.

use std::process::ExitCode;

use argh::FromArgs;
use serde_json::Value;

use super::{request, spawn};
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::KernelRequest;

/// review and apply the changes capsules made to the workspace
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "workspace")]
pub struct WorkspaceArgs {
    #[argh(subcommand)]
    command: WorkspaceCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum WorkspaceCommand {
    Diff(DiffArgs),
    Commit(CommitArgs),
    Discard(DiscardArgs),
}

/// show pending changes as a unified diff
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "diff")]
struct DiffArgs {}

/// apply pending changes to the workspace
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "commit")]
struct CommitArgs {}

/// drop pending changes
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "discard")]
struct DiscardArgs {}

/// Runs a `workspace` subcommand.
pub fn run(home: &AstridHome, args: &WorkspaceArgs) -> anyhow::Result<ExitCode> {
    spawn::ensure_daemon(home)?;
    let mut client = Client::connect(home)?;
    act(
        &mut client,
        match &args.command {
            WorkspaceCommand::Diff(_) => "diff",
            WorkspaceCommand::Commit(_) => "commit",
            WorkspaceCommand::Discard(_) => "discard",
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `diff`, `commit` or `discard` of the workspace `client` works in, printed (also `astrid
/// chat`'s `/diff`, `/commit`, `/discard`).
pub fn act(client: &mut Client, action: &str) -> anyhow::Result<()> {
    let mut send = |suffix: &str, request: KernelRequest| -> anyhow::Result<Value> {
        request::success(client.request(suffix, &request, request::REQUEST_TIMEOUT)?)
    };
    match action {
        "diff" => {
            let data = send("workspace_diff", KernelRequest::WorkspaceDiff)?;
            print!("{}", data.get("diff").and_then(Value::as_str).unwrap_or_default());
        }
        "commit" => {
            let data = send("workspace_commit", KernelRequest::WorkspaceCommit)?;
            let committed = data.get("committed").and_then(Value::as_array).cloned().unwrap_or_default();
            for change in &committed {
                println!("{} {}", change["kind"].as_str().unwrap_or("?"), change["path"].as_str().unwrap_or("?"));
            }
            println!("{} change(s) committed", committed.len());
        }
        "discard" => {
            let data = send("workspace_discard", KernelRequest::WorkspaceDiscard)?;
            println!("{} change(s) discarded", data.get("discarded").and_then(Value::as_u64).unwrap_or(0));
        }
        other => anyhow::bail!("no workspace action {other:?}"),
    }
    Ok(())
}
