//! `astrid mcp …`: the MCP servers the daemon runs (`etc/servers.toml`), for operators, and
//! `astrid mcp serve`, Astrid's tools for MCP clients (`mcp_serve`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use serde_json::Value;

use super::{request, spawn};
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::KernelRequest;
use crate::types::management::{McpCallResult, McpListing};

/// The longest an operator's call may take (a server's own call timeout is usually shorter).
const CALL_WAIT: Duration = Duration::from_secs(130);

/// MCP servers: their state and tools, calling a tool by hand, and serving Astrid's tools to MCP clients
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "mcp")]
pub struct McpArgs {
    #[argh(subcommand)]
    command: McpCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum McpCommand {
    List(ListArgs),
    Call(CallArgs),
    Serve(super::mcp_serve::ServeArgs),
}

/// list the servers, their state and their tools
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print the daemon's JSON answer
    #[argh(switch)]
    json: bool,
}

/// call a tool: astrid mcp call SERVER TOOL '{"arg": 1}'
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "call")]
struct CallArgs {
    /// the server (as named in etc/servers.toml)
    #[argh(positional)]
    server: String,
    /// the tool, by its name on that server
    #[argh(positional)]
    tool: String,
    /// the arguments, a JSON object (default {})
    #[argh(positional, default = "String::from(\"{}\")")]
    arguments: String,
}

/// Runs an `mcp` subcommand against the daemon (starting one if needed).
pub fn run(home: &AstridHome, args: &McpArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        McpCommand::Serve(serve) => super::mcp_serve::run(home, serve),
        McpCommand::List(list) => {
            let listing: McpListing = request::call(home, "mcp_list", &KernelRequest::McpList)?;
            if list.json {
                println!("{}", request::json_text(&listing, false)?);
            } else {
                print_listing(&listing);
            }
            Ok(ExitCode::SUCCESS)
        }
        McpCommand::Call(call) => {
            let arguments: Value = serde_json::from_str(&call.arguments)
                .with_context(|| format!("the arguments are not JSON: {}", call.arguments))?;
            anyhow::ensure!(arguments.is_object(), "the arguments must be a JSON object, like {{\"a\": 1}}");
            spawn::ensure_daemon(home)?;
            let mut client = Client::connect(home)?;
            let request = KernelRequest::McpCall { server: call.server.clone(), tool: call.tool.clone(), arguments };
            let outcome: McpCallResult = client.request("mcp_call", &request, CALL_WAIT)?.into_data()?;
            println!("{}", outcome.content);
            Ok(if outcome.is_error { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

fn print_listing(listing: &McpListing) {
    if listing.servers.is_empty() {
        println!("No MCP servers are configured (etc/servers.toml in the Astrid home).");
    }
    for server in &listing.servers {
        println!("{}  {}  {} tool(s)  {}", server.name, server.state.as_str(), server.tools.len(), server.command);
        if let Some(error) = &server.last_error {
            println!("  last error: {error}");
        }
        for tool in &server.tools {
            let description: String = tool.description.chars().take(70).collect();
            println!("  {}:{}  {description}", server.name, tool.name);
        }
    }
    for refused in &listing.refused {
        println!("refused: {refused}");
    }
}
