//! `astrid tools list`: the tools the agent is offered now, who serves each, and whether it
//! asks before it acts (`ListTools`; the daemon asks the tool providers as the agent does).

use std::process::ExitCode;

use argh::FromArgs;

use super::request;
use crate::home::AstridHome;
use crate::types::management::{ListedTool, ToolListing};
use crate::types::{KernelRequest, ToolApproval};

/// the tools the agent is offered
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tools")]
pub struct ToolsArgs {
    #[argh(subcommand)]
    command: ToolsCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum ToolsCommand {
    List(ListArgs),
}

/// list them: name, origin (capsule or MCP server), whether it asks for approval
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print the daemon's JSON answer
    #[argh(switch)]
    json: bool,
}

/// Runs a `tools` subcommand against the daemon (starting one if needed).
pub fn run(home: &AstridHome, args: &ToolsArgs) -> anyhow::Result<ExitCode> {
    let ToolsCommand::List(list) = &args.command;
    let listing: ToolListing = request::call(home, "list_tools", &KernelRequest::ListTools)?;
    if list.json {
        println!("{}", request::json_text(&listing, false)?);
    } else {
        print!("{}", render(&listing));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(listing: &ToolListing) -> String {
    let mut out = String::new();
    if listing.tools.is_empty() {
        out.push_str("No tools are offered to the agent.\n");
    }
    let width = |f: fn(&ListedTool) -> usize| listing.tools.iter().map(f).max().unwrap_or(0);
    let (name_width, origin_width) = (width(|t| t.name.len()), width(|t| t.origin.to_string().len()));
    for tool in &listing.tools {
        let approval = match tool.approval {
            Some(ToolApproval::Asks) => "asks first",
            Some(ToolApproval::Never) => "no approval",
            None => "approval: not said",
        };
        let description: String = tool.description.as_deref().unwrap_or_default().chars().take(60).collect();
        out.push_str(&format!(
            "{:name_width$}  {:origin_width$}  {approval:<18}  {description}\n",
            tool.name,
            tool.origin.to_string()
        ));
    }
    if !listing.pending.is_empty() {
        out.push_str(&format!("still starting (offered once up): {}\n", listing.pending.join(", ")));
    }
    if !listing.unanswered.is_empty() {
        out.push_str(&format!("did not answer in time: {}\n", listing.unanswered.join(", ")));
    }
    out
}
