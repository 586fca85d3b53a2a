//! `astrid chat`: talk to the agent.
//!
//! A line editor (rustyline: history kept in `var/chat_history`, editing, Ctrl-D to leave)
//! sends each line as a prompt on `user.v1.prompt`; the answer streams as it is written
//! (`agent.v1.stream.delta`), tool calls and their outcome are shown as they happen, and an
//! approval request is asked right there: `y` once, `s` for the session, `a` always, `n` no.
//! Ctrl-C during a turn cancels it; at the prompt it clears the line. Two in a row, with no
//! line entered between them, leave (exit 130, as for any program a SIGINT ends): mashing
//! Ctrl-C gets a person out however fast the turn's cancellation was.
//!
//! Slash commands: `/help`, `/quit`, `/clear` (a new conversation), `/diff`, `/commit`,
//! `/discard` (the workspace overlay), and any command a capsule offers (`GetCommands`), sent
//! on `cli.v1.command.execute`. Without a terminal the same loop reads lines from stdin.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use argh::FromArgs;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{headless, request, spawn, workspace};
use crate::home::AstridHome;
use crate::ipc::{Client, ClientError};
use crate::types::{IpcPayload, KernelRequest};

/// How long a turn may go without any frame from the daemon.
const TURN_TIMEOUT: Duration = Duration::from_secs(120);

/// talk to the agent (the default on a terminal)
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "chat")]
pub struct ChatArgs {
    /// the conversation to continue: a UUID, or a name
    #[argh(option, short = 's')]
    pub session: Option<String>,
}

const HELP: &str = "\
/help      this help
/quit      leave (also Ctrl-D)
/clear     start a new conversation
/diff      the agent's pending changes to the workspace
/commit    apply them
/discard   drop them
Ctrl-C     cancel the current turn, or clear the line (twice in a row: leave)";

/// Runs the chat until the person leaves.
pub fn run(home: &AstridHome, args: &ChatArgs) -> anyhow::Result<ExitCode> {
    spawn::ensure_daemon(home)?;
    let mut client = Client::connect(home)?;
    let mut session = headless::session_id(args.session.as_deref()).to_string();
    let mut editor = DefaultEditor::new().context("cannot start the line editor")?;
    let history = home.root().join("var").join("chat_history");
    let _ = editor.load_history(&history);
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&interrupts);
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("cannot handle Ctrl-C")?;
    let capsule_commands = capsule_commands(home);
    println!("astrid chat: /help for commands, Ctrl-D to leave.");
    // The last key was a Ctrl-C (a cancelled turn or a cleared line): another one leaves.
    let mut armed = false;
    let code = loop {
        let line = match editor.readline("you> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) if armed => break ExitCode::from(130),
            Err(ReadlineError::Interrupted) => {
                armed = true;
                println!("(Ctrl-C again to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => break ExitCode::SUCCESS,
            Err(e) => return Err(e).context("cannot read a line"),
        };
        armed = false;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let topic = match line.split_whitespace().next() {
            Some("/quit" | "/exit" | "/q") => break ExitCode::SUCCESS,
            Some("/help") => {
                println!("{HELP}");
                for (name, description) in &capsule_commands {
                    println!("{name:<10} {description}");
                }
                continue;
            }
            Some("/clear") => {
                session = Uuid::new_v4().to_string();
                println!("(a new conversation)");
                continue;
            }
            Some(command @ ("/diff" | "/commit" | "/discard")) => {
                if let Err(e) = workspace::act(home, &command[1..]) {
                    println!("({e:#})");
                }
                continue;
            }
            Some(command) if command.starts_with('/') => "cli.v1.command.execute",
            _ => "user.v1.prompt",
        };
        interrupts.store(0, Ordering::SeqCst);
        let prompt = IpcPayload::UserInput { text: line.to_owned(), session_id: session.clone(), context: None };
        client.publish(topic, &prompt)?;
        match turn(&mut client, &mut editor, &session, &interrupts)? {
            Turn::Done => {}
            Turn::Cancelled => armed = true,
            Turn::Leave => break ExitCode::from(130),
        }
    };
    if let Some(parent) = history.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = editor.save_history(&history);
    Ok(code)
}

/// The slash commands capsules offer, for `/help`.
fn capsule_commands(home: &AstridHome) -> Vec<(String, String)> {
    let Ok(reply) = request::send(home, "get_commands", &KernelRequest::GetCommands) else { return Vec::new() };
    let value = serde_json::to_value(reply).unwrap_or(Value::Null);
    value["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((c["name"].as_str()?.to_owned(), c["description"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Turn {
    Done,
    /// Ended by a Ctrl-C.
    Cancelled,
    Leave,
}

/// Shows one turn as it happens, until its final answer.
fn turn(
    client: &mut Client,
    editor: &mut DefaultEditor,
    session: &str,
    interrupts: &AtomicUsize,
) -> anyhow::Result<Turn> {
    let mut stdout = std::io::stdout();
    let mut printed = String::new();
    let mut cancelled = false;
    let mut last_frame = Instant::now();
    loop {
        match interrupts.load(Ordering::SeqCst) {
            0 => {}
            1 if !cancelled => {
                cancelled = true;
                headless::cancel_turn(client, session)?;
                println!("\n(cancelling; Ctrl-C again to leave)");
            }
            1 => {}
            _ => return Ok(Turn::Leave),
        }
        let frame = match client.next_frame(headless::POLL) {
            Ok(frame) => frame,
            Err(ClientError::Timeout(_)) if last_frame.elapsed() < TURN_TIMEOUT => continue,
            Err(ClientError::Timeout(_)) => {
                println!("(no answer within {} s)", TURN_TIMEOUT.as_secs());
                return Ok(Turn::Done);
            }
            Err(e) => return Err(e.into()),
        };
        last_frame = Instant::now();
        let payload = &frame["payload"];
        let ours = payload["session_id"].as_str().is_none_or(|s| s == session);
        match (frame["topic"].as_str().unwrap_or_default(), payload["type"].as_str()) {
            ("agent.v1.stream.delta", _) if ours => {
                if printed.is_empty() {
                    print!("astrid> ");
                }
                let delta = payload["text"].as_str().unwrap_or_default();
                printed.push_str(delta);
                print!("{delta}");
                stdout.flush()?;
            }
            ("agent.v1.response", Some("agent_response")) if ours => {
                let text = payload["text"].as_str().unwrap_or_default();
                match text.strip_prefix(printed.as_str()) {
                    Some(rest) if !printed.is_empty() => print!("{rest}"),
                    _ => print!("{}astrid> {text}", if printed.is_empty() { "" } else { "\n" }),
                }
                printed.push_str(text);
                if payload["is_final"].as_bool().unwrap_or(false) {
                    println!();
                    return Ok(if cancelled { Turn::Cancelled } else { Turn::Done });
                }
            }
            ("tool.v1.request.execute", Some("tool_execute_request")) => {
                println!("  • {} {}", payload["tool_name"].as_str().unwrap_or("?"), payload["arguments"]);
            }
            ("tool.v1.execute.result", Some("tool_execute_result")) => {
                let failed = payload["result"]["is_error"].as_bool().unwrap_or(false);
                let first =
                    payload["result"]["content"].as_str().unwrap_or_default().lines().next().unwrap_or_default();
                println!("    {} {first}", if failed { "✗" } else { "✓" });
            }
            ("astrid.v1.approval", Some("approval_required")) => approve(client, editor, payload)?,
            ("astrid.v1.elicit", Some("elicit_request")) => {
                let request_id = payload["request_id"].as_str().unwrap_or_default();
                let question = payload["field"]["prompt"].as_str().unwrap_or("a value");
                let value = editor.readline(&format!("{} asks: {question}: ", payload["capsule_id"])).ok();
                client.publish_json(
                    &format!("astrid.v1.elicit.response.{request_id}"),
                    json!({"type": "elicit_response", "request_id": request_id, "value": value.filter(|v| !v.is_empty())}),
                )?;
            }
            _ => {}
        }
    }
}

/// Asks the person about an approval request and answers it.
fn approve(client: &mut Client, editor: &mut DefaultEditor, payload: &Value) -> anyhow::Result<()> {
    let request_id = payload["request_id"].as_str().unwrap_or_default();
    // The question on a line of its own: a line editor shows no prompt without a terminal.
    println!(
        "\n  {}: {} on {}",
        payload["reason"].as_str().unwrap_or("a capsule"),
        payload["action"].as_str().unwrap_or("?"),
        payload["resource"].as_str().unwrap_or("?")
    );
    let answer = editor.readline("  Allow? [y]es once, [s]ession, [a]lways, [n]o: ").unwrap_or_default();
    let decision = match answer.trim() {
        "y" | "Y" | "yes" => "approve",
        "s" | "S" => "approve_session",
        "a" | "A" => "approve_always",
        _ => "deny",
    };
    client.publish(
        &format!("astrid.v1.approval.response.{request_id}"),
        &IpcPayload::ApprovalResponse {
            request_id: request_id.to_owned(),
            decision: decision.to_owned(),
            reason: Some("astrid chat".to_owned()),
        },
    )?;
    Ok(())
}
