//! `astrid workspace diff|commit|discard`: the person decides what capsule writes reach the
//! workspace. Capsules write into a copy-on-write overlay; nothing touches the real files
//! until `commit`.

use std::process::ExitCode;

use argh::FromArgs;
use serde::de::DeserializeOwned;

use super::{request, spawn};
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::KernelRequest;
use crate::types::management::{WorkspaceCommitted, WorkspaceDiff, WorkspaceDiscarded};

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
    fn send<T: DeserializeOwned>(client: &mut Client, suffix: &str, request: KernelRequest) -> anyhow::Result<T> {
        Ok(client.request(suffix, &request, request::REQUEST_TIMEOUT)?.into_data()?)
    }
    match action {
        "diff" => {
            let pending: WorkspaceDiff = send(client, "workspace_diff", KernelRequest::WorkspaceDiff)?;
            print!("{}", pending.diff);
        }
        "commit" => {
            let done: WorkspaceCommitted = send(client, "workspace_commit", KernelRequest::WorkspaceCommit)?;
            for change in &done.committed {
                println!("{} {}", change.kind.as_str(), change.path);
            }
            println!("{} change(s) committed", done.committed.len());
        }
        "discard" => {
            let done: WorkspaceDiscarded = send(client, "workspace_discard", KernelRequest::WorkspaceDiscard)?;
            println!("{} change(s) discarded", done.discarded);
        }
        other => anyhow::bail!("no workspace action {other:?}"),
    }
    Ok(())
}
