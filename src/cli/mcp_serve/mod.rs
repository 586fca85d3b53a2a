//! `astrid mcp serve`: Astrid's tools for any MCP client, on stdio.
//!
//! A client (Claude Code, Codex, Cursor, Claude Desktop…) starts this process and speaks MCP
//! on its stdin and stdout, through the official Rust SDK (`rmcp`), every protocol version it
//! negotiates. The process is a frontend of the daemon like `astrid chat`: it holds one
//! connection for the session (starting an ephemeral daemon if none runs, which then stays
//! up as long as the session does), and every tool call takes the agent's own road in the
//! daemon (`CallTool`): the capsule's grant, the approval, the audit trail, the overlay.
//!
//! - [`server`]: the MCP side (tools/list, tools/call, cancel, progress, list_changed);
//! - [`link`]: the daemon side (one connection, concurrent requests, reconnecting);
//! - [`approvals`]: approvals asked through MCP elicitation;
//! - [`names`]: `server:tool` as an MCP tool name and back;
//! - [`selection`]: `--tools` and `--read-only`;
//! - [`lifetime`]: ending with the client.
//!
//! Nothing but the protocol goes to stdout; logs go to stderr (`ASTRID_LOG`, default warn).
//! Unlike the rest of the CLI this command runs an async runtime: it serves a session, with
//! requests, answers and notifications crossing both ways at once.

mod approvals;
mod lifetime;
mod link;
mod names;
mod selection;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use rmcp::ServiceExt;

use super::spawn;
use crate::home::AstridHome;
pub use selection::Selection;
pub use server::AstridServer;

/// How long the runtime waits for its tasks at exit (a read of stdin cannot be cancelled).
const SHUTDOWN_WAIT: Duration = Duration::from_millis(200);

/// serve Astrid's tools to an MCP client on stdio (claude mcp add astrid -- astrid mcp serve)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct ServeArgs {
    /// offer only these tools (comma-separated: read_file,run_command,everything__echo)
    #[argh(option)]
    tools: Option<String>,
    /// the workspace the tools work in (default: the current directory)
    #[argh(option)]
    workspace: Option<PathBuf>,
    /// offer only tools that cannot change anything (read_file, list_dir, search)
    #[argh(switch)]
    read_only: bool,
}

/// Serves until the client closes stdin or goes away.
pub fn run(home: &AstridHome, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let parent = lifetime::tie_to_parent()?;
    let workspace = match &args.workspace {
        Some(path) => path.canonicalize().with_context(|| format!("workspace {}", path.display()))?,
        None => std::env::current_dir().context("cannot determine the current directory")?,
    };
    anyhow::ensure!(workspace.is_dir(), "workspace {} is not a directory", workspace.display());
    let selection = Selection {
        tools: args
            .tools
            .as_ref()
            .map(|tools| tools.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()),
        read_only: args.read_only,
    };
    spawn::ensure_daemon_in(home, &workspace)?;
    // One thread: the process only waits on pipes and a socket, and a hop between worker
    // threads per message cost more than it gained (+190 against +280 µs a call, or worse
    // under load, in benches/mcp_serve.rs).
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let server = AstridServer::new(home.clone(), selection, Some(workspace));
    let ended = runtime.block_on(async move {
        // The pipes on the reactor, not stdin/stdout on the blocking pool: a thread hand-off
        // per message cost about 0.7 ms a call (benches/mcp_serve.rs).
        let service = match server.serve(rmcp::transport::io::stdio_pipes()).await {
            Ok(service) => service,
            // The client left (or spoke something else) before the session began.
            Err(e) => return format!("no MCP session: {e}"),
        };
        tokio::select! {
            quit = service.waiting() => format!("the session ended ({quit:?})"),
            () = lifetime::parent_gone(parent) => "the client is gone".to_owned(),
        }
    });
    log::info!("astrid mcp serve: {ended}");
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr, never stdout (the protocol's): warnings, or `ASTRID_LOG`.
fn init_logging() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_env(env_logger::Env::new().filter("ASTRID_LOG"))
        .target(env_logger::Target::Stderr)
        .try_init();
}
