//! `astrid sessions list`: the conversations the agent keeps, newest first.
//!
//! The orchestrator keeps an index of its conversations beside their histories in its KV
//! namespace ([`crate::types::sessions`]); this reads it through the daemon (`KvGet` of that
//! namespace) and decodes it with the type the orchestrator writes it with. `astrid chat
//! --resume` picks the first entry.

use std::process::ExitCode;

use anyhow::Context;
use argh::FromArgs;
use chrono::Local;

use super::request;
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::management::KvValue;
use crate::types::sessions::{SESSION_INDEX_CAPSULE, SESSION_INDEX_KEY};
use crate::types::{KernelRequest, SessionIndex, SessionSummary};

/// the conversations the agent keeps (continue one with `astrid chat -s ID`)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sessions")]
pub struct SessionsArgs {
    #[argh(subcommand)]
    command: SessionsCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum SessionsCommand {
    List(ListArgs),
}

/// list them, the most recently active first: id, last activity, turns, first line
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print them as JSON
    #[argh(switch)]
    json: bool,
}

/// The management request that reads the index.
fn index_request() -> KernelRequest {
    KernelRequest::KvGet { capsule: Some(SESSION_INDEX_CAPSULE.to_owned()), key: SESSION_INDEX_KEY.to_owned() }
}

/// The index from a `KvGet` answer, newest first (none stored yet: empty).
fn decode(value: KvValue) -> anyhow::Result<SessionIndex> {
    let Some(text) = value.value else { return Ok(SessionIndex::default()) };
    let mut index: SessionIndex =
        serde_json::from_str(&text).context("the orchestrator's session index is not one this version reads")?;
    index.sessions.sort_by_key(|s| std::cmp::Reverse(s.last_active_at));
    Ok(index)
}

/// The index, asked on an open connection (the chat's).
pub fn index_on(client: &mut Client) -> anyhow::Result<SessionIndex> {
    let reply = client.request("kv_get", &index_request(), request::REQUEST_TIMEOUT)?;
    decode(reply.into_data()?)
}

/// Runs a `sessions` subcommand against the daemon (starting one if needed).
pub fn run(home: &AstridHome, args: &SessionsArgs) -> anyhow::Result<ExitCode> {
    let SessionsCommand::List(list) = &args.command;
    let index = decode(request::call(home, "kv_get", &index_request())?)?;
    if list.json {
        println!("{}", request::json_text(&index.sessions, false)?);
    } else if index.sessions.is_empty() {
        println!("No conversations yet: `astrid chat` starts one.");
    } else {
        for session in &index.sessions {
            println!("{}", row(session));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: id, last activity (local time), turns, first line of the first prompt.
pub fn row(session: &SessionSummary) -> String {
    let when = session.last_active_at.with_timezone(&Local).format("%Y-%m-%d %H:%M");
    let turns = if session.turns == 1 { "1 turn".to_owned() } else { format!("{} turns", session.turns) };
    format!("{}  {when}  {turns:>9}  {}", session.id, session.title)
}
