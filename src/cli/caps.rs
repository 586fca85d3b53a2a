//! `astrid caps …`: capability grants, pending requests and standing allowances.

use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;
use serde_json::Value;

use super::request;
use crate::home::AstridHome;
use crate::types::{KernelRequest, KernelResponse};

/// inspect and change what capsules are allowed to do
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "caps")]
pub struct CapsArgs {
    #[argh(subcommand)]
    command: CapsCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum CapsCommand {
    List(ListArgs),
    Approve(ApproveArgs),
    Revoke(RevokeArgs),
}

/// list grants, pending capability requests and allowances
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print the daemon's JSON answer
    #[argh(switch)]
    json: bool,
}

/// approve a pending capability request (by its request id)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve")]
struct ApproveArgs {
    /// the request id shown by `astrid caps list`
    #[argh(positional)]
    request_id: String,
}

/// revoke a capsule's grant (by capsule name) or an allowance (by id)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
struct RevokeArgs {
    /// capsule name or allowance id
    #[argh(positional)]
    id: String,
}

/// Runs a `caps` subcommand against the daemon (starting one if needed).
pub fn run(home: &AstridHome, args: &CapsArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        CapsCommand::List(list) => {
            let listing = list_capabilities(home)?;
            if list.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", render(&listing));
            }
        }
        CapsCommand::Approve(args) => println!("approved: {}", approve(home, &args.request_id)?),
        CapsCommand::Revoke(revoke) => {
            let reply =
                request::send(home, "revoke_capability", &KernelRequest::RevokeCapability { id: revoke.id.clone() })?;
            println!("revoked: {}", request::success(reply)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Approves the pending request `request_id`, signing it with the fingerprint the daemon
/// shows for it: an approval covers exactly the set (and code) that was listed.
pub fn approve(home: &AstridHome, request_id: &str) -> anyhow::Result<Value> {
    let listing = list_capabilities(home)?;
    let pending = listing["pending"].as_array().cloned().unwrap_or_default();
    let Some(request) = pending.iter().find(|p| p["request_id"] == request_id) else {
        bail!("no pending capability request {request_id}");
    };
    let fingerprint = request["fingerprint"].as_str().unwrap_or_default().to_owned();
    let reply = request::send(
        home,
        "approve_capability",
        &KernelRequest::ApproveCapability { request_id: request_id.to_owned(), signature: fingerprint },
    )?;
    request::success(reply)
}

fn list_capabilities(home: &AstridHome) -> anyhow::Result<Value> {
    match request::send(home, "list_capabilities", &KernelRequest::ListCapabilities)? {
        KernelResponse::Success(value) => Ok(value),
        KernelResponse::Error(message) => bail!("{message}"),
        other => Err(anyhow::anyhow!("unexpected reply {other:?}")).context("ListCapabilities"),
    }
}

fn render(listing: &Value) -> String {
    let rows = |key: &str| listing[key].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    out.push_str("grants:\n");
    for grant in rows("grants") {
        out.push_str(&format!(
            "  {}  {}  [{}]\n",
            grant["capsule"].as_str().unwrap_or("?"),
            short(&grant["fingerprint"]),
            join(&grant["capabilities"])
        ));
    }
    out.push_str("pending (approve with `astrid caps approve REQUEST_ID`):\n");
    for pending in rows("pending") {
        out.push_str(&format!(
            "  {}  {}  {}  [{}]\n",
            pending["request_id"].as_str().unwrap_or("?"),
            pending["capsule"].as_str().unwrap_or("?"),
            short(&pending["fingerprint"]),
            join(&pending["capabilities"])
        ));
    }
    out.push_str("allowances:\n");
    for allowance in rows("allowances") {
        out.push_str(&format!(
            "  {}  {}  {}  {} {} on {}\n",
            allowance["id"].as_str().unwrap_or("?"),
            allowance["scope"].as_str().unwrap_or("?"),
            allowance["principal"].as_str().unwrap_or("?"),
            allowance["capsule"].as_str().unwrap_or("?"),
            allowance["action"].as_str().unwrap_or("?"),
            allowance["resource"].as_str().unwrap_or("?"),
        ));
    }
    out
}

fn short(fingerprint: &Value) -> String {
    fingerprint.as_str().unwrap_or("?").chars().take(16).collect()
}

fn join(list: &Value) -> String {
    list.as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}
