//! `astrid caps …`: capability grants, pending requests and standing allowances.

use std::process::ExitCode;

use anyhow::bail;
use argh::FromArgs;

use super::request;
use crate::home::AstridHome;
use crate::types::KernelRequest;
use crate::types::management::{
    CapabilityListing, GrantApproved, RUN_COMMAND_ACTION, RUN_NETWORKED_COMMAND_ACTION, Revoked,
};

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
                println!("{}", request::json_text(&listing, true)?);
            } else {
                print!("{}", render(&listing));
            }
        }
        CapsCommand::Approve(args) => {
            println!("approved: {}", request::json_text(&approve(home, &args.request_id)?, false)?);
        }
        CapsCommand::Revoke(revoke) => {
            let request = KernelRequest::RevokeCapability { id: revoke.id.clone() };
            let revoked: Revoked = request::call(home, "revoke_capability", &request)?;
            println!("revoked: {}", request::json_text(&revoked, false)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Approves the pending request `request_id`, signing it with the fingerprint the daemon
/// shows for it: an approval covers exactly the set (and code) that was listed.
pub fn approve(home: &AstridHome, request_id: &str) -> anyhow::Result<GrantApproved> {
    let listing = list_capabilities(home)?;
    let Some(request) = listing.pending.into_iter().find(|p| p.request_id == request_id) else {
        bail!("no pending capability request {request_id}");
    };
    let approval =
        KernelRequest::ApproveCapability { request_id: request_id.to_owned(), signature: request.fingerprint };
    request::call(home, "approve_capability", &approval)
}

fn list_capabilities(home: &AstridHome) -> anyhow::Result<CapabilityListing> {
    request::call(home, "list_capabilities", &KernelRequest::ListCapabilities)
}

fn render(listing: &CapabilityListing) -> String {
    let mut out = String::new();
    out.push_str("grants:\n");
    for grant in &listing.grants {
        out.push_str(&format!(
            "  {}  {}  [{}]\n",
            grant.capsule,
            short(&grant.fingerprint),
            grant.capabilities.join(", ")
        ));
    }
    out.push_str("pending (approve with `astrid caps approve REQUEST_ID`):\n");
    for pending in &listing.pending {
        out.push_str(&format!(
            "  {}  {}  {}  [{}]\n",
            pending.request_id,
            pending.capsule,
            short(&pending.fingerprint),
            pending.capabilities.join(", ")
        ));
    }
    out.push_str("allowances:\n");
    for allowance in &listing.allowances {
        let covered = match (allowance.under, allowance.action.as_str()) {
            (false, _) => allowance.resource.clone(),
            (true, RUN_COMMAND_ACTION | RUN_NETWORKED_COMMAND_ACTION) => format!("`{} …`", allowance.resource),
            (true, _) if allowance.resource.is_empty() => "the whole workspace".to_owned(),
            (true, _) => format!("{}/", allowance.resource),
        };
        out.push_str(&format!(
            "  {}  {}  {}  {} {} on {covered}\n",
            allowance.id, allowance.scope, allowance.principal, allowance.capsule, allowance.action,
        ));
    }
    out
}

/// The first 16 hex digits: enough to tell fingerprints apart on screen.
pub fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(16).collect()
}
