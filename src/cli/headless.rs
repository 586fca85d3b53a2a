//! Headless turns: `astrid run "prompt"` and `astrid -p "prompt"`.
//!
//! One prompt, one answer, no terminal needed: the prompt (with piped stdin prepended, as
//! `"<stdin>\n\n<prompt>"`) goes out on `user.v1.prompt`, and what the agent says comes back
//! on `agent.v1.response` until a final response. Streamed text (`agent.v1.stream.delta`) is
//! printed as it arrives. Nobody is there to answer questions, so approvals are denied
//! (`headless mode`) unless `--yes` approves them, and elicitations are cancelled.
//!
//! Ctrl-C (SIGINT) cancels the turn in the daemon (so the provider drops its request) before
//! leaving with 130; the reference's headless mode just died, and the turn ran on.
//!
//! Exit codes: 0 answered, 53 no frame for the response timeout (120 s,
//! `ASTRID_RESPONSE_TIMEOUT_SECS`), 130 interrupted, 1 other failures.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argh::FromArgs;
use serde_json::{Value, json};
use uuid::Uuid;

use super::spawn;
use crate::home::AstridHome;
use crate::ipc::{Client, ClientError};
use crate::types::IpcPayload;

/// The exit code of a turn that timed out (the reference's).
pub const TIMEOUT_EXIT: u8 = 53;
/// How long a turn may go without any frame from the daemon.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Topic of the user's prompts.
const PROMPT_TOPIC: &str = "user.v1.prompt";
/// How often a waiting turn looks for Ctrl-C (here and in the chat).
pub(super) const POLL: Duration = Duration::from_millis(100);

/// run one prompt without a terminal and print the answer
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// the prompt (piped stdin is prepended to it)
    #[argh(positional)]
    pub prompt: String,
    #[argh(option, long = "session")]
    /// the conversation: a UUID, or a name (the same name is always the same conversation)
    pub session: Option<String>,
    /// approve every approval request instead of denying it
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// output: pretty (default, streamed) or json ({"response", "tool_calls"})
    #[argh(option, default = "Format::Pretty")]
    pub format: Format,
}

/// How a headless answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The text as it streams.
    Pretty,
    /// One JSON object at the end.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pretty" => Ok(Self::Pretty),
            // The reference treats stream-json as json.
            "json" | "stream-json" => Ok(Self::Json),
            other => Err(format!("unknown format {other:?}: pretty or json")),
        }
    }
}

/// The conversation id for `--session`: a UUID verbatim, any other text as a UUID v5 in the
/// URL namespace (as the reference), none as a new conversation.
pub fn session_id(session: Option<&str>) -> Uuid {
    match session {
        None => Uuid::new_v4(),
        Some(text) => Uuid::parse_str(text).unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_URL, text.as_bytes())),
    }
}

/// Asks the agent to cancel the turn of `session` (as the reference: an empty prompt whose
/// context says `cancel_turn`).
pub(super) fn cancel_turn(client: &mut Client, session: &str) -> Result<(), ClientError> {
    let cancel = IpcPayload::UserInput {
        text: String::new(),
        session_id: session.to_owned(),
        context: Some(json!({"action": "cancel_turn"})),
    };
    client.publish(PROMPT_TOPIC, &cancel)
}

/// The prompt with piped stdin prepended, as the reference does.
fn full_prompt(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(prompt.to_owned());
    }
    let mut piped = String::new();
    stdin.lock().read_to_string(&mut piped).context("cannot read stdin")?;
    Ok(if piped.trim().is_empty() { prompt.to_owned() } else { format!("{}\n\n{prompt}", piped.trim_end()) })
}

fn response_timeout() -> anyhow::Result<Duration> {
    match std::env::var("ASTRID_RESPONSE_TIMEOUT_SECS") {
        Ok(raw) => {
            raw.trim().parse::<u64>().ok().filter(|secs| *secs > 0).map(Duration::from_secs).with_context(|| {
                format!("ASTRID_RESPONSE_TIMEOUT_SECS must be a positive number of seconds, not {raw:?}")
            })
        }
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// Runs one headless turn (piped stdin prepended to the prompt).
pub fn run(home: &AstridHome, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let prompt = full_prompt(&args.prompt)?;
    turn(home, args, prompt)
}

/// Runs one headless turn whose prompt is `args.prompt` as it is (bare `astrid` with piped
/// input: stdin was the prompt).
pub fn run_prompt(home: &AstridHome, args: &RunArgs) -> anyhow::Result<ExitCode> {
    turn(home, args, args.prompt.clone())
}

fn turn(home: &AstridHome, args: &RunArgs, prompt: String) -> anyhow::Result<ExitCode> {
    let timeout = response_timeout()?;
    let session = session_id(args.session.as_deref()).to_string();
    spawn::ensure_daemon(home)?;
    let mut client = Client::connect(home)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot handle Ctrl-C")?;
    client
        .publish(PROMPT_TOPIC, &IpcPayload::UserInput { text: prompt, session_id: session.clone(), context: None })?;
    let mut turn = Turn::default();
    let mut stdout = std::io::stdout();
    let mut last_frame = Instant::now();
    loop {
        if interrupted.load(Ordering::SeqCst) {
            cancel_turn(&mut client, &session)?;
            eprintln!("\n[headless] Interrupted: the turn is cancelled");
            return Ok(ExitCode::from(130));
        }
        let frame = match client.next_frame(POLL) {
            Ok(frame) => {
                last_frame = Instant::now();
                frame
            }
            Err(ClientError::Timeout(_)) if last_frame.elapsed() < timeout => continue,
            Err(ClientError::Timeout(_)) => {
                eprintln!("[headless] Timed out waiting for response ({}s)", timeout.as_secs());
                return Ok(ExitCode::from(TIMEOUT_EXIT));
            }
            Err(ClientError::Closed) => bail!("the daemon closed the connection before the answer"),
            Err(e) => return Err(e.into()),
        };
        let topic = frame["topic"].as_str().unwrap_or_default();
        let payload = &frame["payload"];
        match (topic, payload["type"].as_str()) {
            ("agent.v1.stream.delta", _) if payload["session_id"].as_str().is_none_or(|s| s == session) => {
                if let Some(delta) = payload["text"].as_str().or_else(|| payload["delta"].as_str()) {
                    turn.streamed.push_str(delta);
                    if args.format == Format::Pretty {
                        print!("{delta}");
                        stdout.flush()?;
                    }
                }
            }
            ("agent.v1.response", Some("agent_response")) if payload["session_id"] == session.as_str() => {
                let text = payload["text"].as_str().unwrap_or_default();
                let final_response = payload["is_final"].as_bool().unwrap_or(false);
                if args.format == Format::Pretty {
                    print!("{}", turn.unprinted(text, final_response));
                    stdout.flush()?;
                }
                if final_response {
                    turn.response = text.to_owned();
                    break;
                }
            }
            ("tool.v1.request.execute", Some("tool_execute_request")) => turn.tool_call(payload),
            ("tool.v1.execute.result", Some("tool_execute_result")) => turn.tool_result(payload),
            ("astrid.v1.approval", Some("approval_required")) => {
                answer_approval(&mut client, payload, args.yes)?;
            }
            ("astrid.v1.elicit", Some("elicit_request")) => {
                let request_id = payload["request_id"].as_str().unwrap_or_default();
                eprintln!("[headless] {} asks for a value; nobody is here to answer", payload["capsule_id"]);
                client.publish_json(
                    &format!("astrid.v1.elicit.response.{request_id}"),
                    json!({"type": "elicit_response", "request_id": request_id}),
                )?;
            }
            ("astrid.v1.onboarding.required", _) => {
                eprintln!(
                    "[headless] capsule {} needs configuration: astrid capsule install again",
                    payload["capsule_id"]
                );
            }
            _ => {}
        }
    }
    match args.format {
        Format::Pretty => println!(),
        Format::Json => println!("{}", json!({"response": turn.response, "tool_calls": turn.tool_calls})),
    }
    Ok(ExitCode::SUCCESS)
}

fn answer_approval(client: &mut Client, payload: &Value, yes: bool) -> anyhow::Result<()> {
    let request_id = payload["request_id"].as_str().unwrap_or_default();
    let (decision, reason) = if yes { ("approve", "headless --yes mode") } else { ("deny", "headless mode") };
    eprintln!(
        "[headless] approval {}: {} on {}",
        if yes { "granted" } else { "denied (use --yes to approve)" },
        payload["action"].as_str().unwrap_or("?"),
        payload["resource"].as_str().unwrap_or("?")
    );
    client.publish(
        &format!("astrid.v1.approval.response.{request_id}"),
        &IpcPayload::ApprovalResponse {
            request_id: request_id.to_owned(),
            decision: decision.to_owned(),
            reason: Some(reason.to_owned()),
        },
    )?;
    Ok(())
}

/// What a headless turn collected.
#[derive(Debug, Default)]
struct Turn {
    /// Text printed so far (streamed deltas and partial responses).
    streamed: String,
    /// The final response.
    response: String,
    /// `{call_id, name, arguments, result?, is_error?}` per tool call seen.
    tool_calls: Vec<Value>,
}

impl Turn {
    /// The part of `text` not printed yet: a final response usually repeats what streamed.
    fn unprinted(&mut self, text: &str, final_response: bool) -> String {
        let rest = match text.strip_prefix(self.streamed.as_str()) {
            Some(rest) => rest.to_owned(),
            None if final_response && !self.streamed.is_empty() => format!("\n{text}"),
            None => text.to_owned(),
        };
        self.streamed.push_str(&rest);
        rest
    }

    fn tool_call(&mut self, payload: &Value) {
        self.tool_calls.push(json!({
            "call_id": payload["call_id"],
            "name": payload["tool_name"],
            "arguments": payload["arguments"],
        }));
    }

    fn tool_result(&mut self, payload: &Value) {
        let call_id = &payload["call_id"];
        if let Some(call) = self.tool_calls.iter_mut().find(|c| &c["call_id"] == call_id) {
            call["result"] = payload["result"]["content"].clone();
            call["is_error"] = payload["result"]["is_error"].clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_uuids_verbatim_or_named() {
        let id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        assert_eq!(session_id(Some(id)).to_string(), id);
        assert_eq!(session_id(Some("work")), session_id(Some("work")));
        assert_ne!(session_id(Some("work")), session_id(Some("play")));
        assert_eq!(session_id(Some("work")).get_version_num(), 5);
        assert_ne!(session_id(None), session_id(None));
    }

    #[test]
    fn a_final_response_prints_only_what_did_not_stream() {
        let mut turn = Turn::default();
        assert_eq!(turn.unprinted("Hel", false), "Hel");
        assert_eq!(turn.unprinted("Hello", false), "lo");
        assert_eq!(turn.unprinted("Hello, world", true), ", world");
        let mut other = Turn { streamed: "thinking".into(), ..Turn::default() };
        assert_eq!(other.unprinted("Answer", true), "\nAnswer");
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }
}
