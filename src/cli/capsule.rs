//! `astrid capsule …`: capsule commands. `list` asks the daemon, so the built-in bridge is
//! listed too, and starts an ephemeral daemon when none runs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use argh::FromArgs;

use super::spawn;
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::{KernelRequest, KernelResponse};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// manage capsules
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "capsule")]
pub struct CapsuleArgs {
    #[argh(subcommand)]
    command: CapsuleCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum CapsuleCommand {
    List(ListArgs),
}

/// list the capsules the daemon knows, with whether each is running
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print a JSON array of {name, running}
    #[argh(switch)]
    json: bool,
}

/// Runs a `capsule` subcommand.
pub fn run(home: &AstridHome, args: &CapsuleArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        CapsuleCommand::List(list) => self::list(home, list),
    }
}

fn list(home: &AstridHome, args: &ListArgs) -> anyhow::Result<ExitCode> {
    spawn::ensure_daemon(home)?;
    let mut client = Client::connect(home)?;
    let names: Vec<String> = match client.request("list_capsules", &KernelRequest::ListCapsules, REQUEST_TIMEOUT)? {
        KernelResponse::Success(value) => serde_json::from_value(value)?,
        other => bail!("unexpected reply to ListCapsules: {other:?}"),
    };
    let running = match client.request("status", &KernelRequest::GetStatus, REQUEST_TIMEOUT)? {
        KernelResponse::Status(status) => status.loaded_capsules,
        other => bail!("unexpected reply to GetStatus: {other:?}"),
    };
    if args.json {
        let rows: Vec<serde_json::Value> =
            names.iter().map(|name| serde_json::json!({"name": name, "running": running.contains(name)})).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for name in &names {
        let state = if running.contains(name) { "running" } else { "not running" };
        println!("{name:width$}  {state}");
    }
    Ok(ExitCode::SUCCESS)
}
