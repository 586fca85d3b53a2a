//! Headless turns: `astrid run "prompt"` and `astrid -p "prompt"`.
//!
//! One prompt, one answer, no terminal needed: the prompt (with piped stdin prepended, as
//! `"<stdin>\n\n<prompt>"`) goes out on `user.v1.prompt` and the answer streams to stdout as
//! it is written (the turn loop is [`super::turn`], shared with the chat). Nobody is there to
//! answer questions, so approvals are denied (`headless mode`) unless `--yes` approves them,
//! and elicitations are cancelled. `--yes` answers only this run's own approvals: the daemon
//! asks a turn's approvals of the connection that started it, and nobody else's.
//!
//! Ctrl-C (SIGINT) cancels the turn in the daemon (so the provider drops its request) before
//! leaving with 130; the reference's headless mode just died, and the turn ran on.
//!
//! Exit codes: 0 answered; 1 the turn failed (the model's endpoint unreachable or failing, a
//! malformed stream, a timeout in the daemon, nobody to answer), with the reason on stderr;
//! 2 usage (an empty prompt); 4 answered, but an approval it asked for was denied (run again
//! with `--yes`, or answer it in `astrid chat`); 53 no frame at all for the response timeout
//! (120 s, `ASTRID_RESPONSE_TIMEOUT_SECS`); 130 interrupted.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use argh::FromArgs;
use serde_json::{Value, json};
use uuid::Uuid;

use super::turn::{self, ApprovalDecision, End, Frontend, Interrupt, Question};
use super::{model, spawn};
use crate::home::AstridHome;
use crate::ipc::{Client, ClientError};
use crate::types::TurnOutcome;
use crate::types::topics::PROMPT_TOPIC;

/// The exit code of a turn that timed out (the reference's).
pub const TIMEOUT_EXIT: u8 = 53;
/// The exit code of a turn that was answered but needed an approval that was denied.
pub const DENIED_EXIT: u8 = 4;

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
    /// approve this run's approval requests instead of denying them
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// output: pretty (default, streamed) or json ({"response", "tool_calls"})
    #[argh(option, default = "Format::Pretty")]
    pub format: Format,
    /// the directory the turn works on (default: the current one)
    #[argh(option, short = 'w')]
    pub workspace: Option<PathBuf>,
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

/// The response timeout: `ASTRID_RESPONSE_TIMEOUT_SECS`, or the default.
pub fn response_timeout() -> anyhow::Result<Duration> {
    match std::env::var("ASTRID_RESPONSE_TIMEOUT_SECS") {
        Ok(raw) => {
            raw.trim().parse::<u64>().ok().filter(|secs| *secs > 0).map(Duration::from_secs).with_context(|| {
                format!("ASTRID_RESPONSE_TIMEOUT_SECS must be a positive number of seconds, not {raw:?}")
            })
        }
        Err(_) => Ok(turn::DEFAULT_TIMEOUT),
    }
}

/// Runs one headless turn (piped stdin prepended to the prompt).
pub fn run(home: &AstridHome, args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.prompt.trim().is_empty() {
        eprintln!("astrid run: the prompt is empty (astrid run \"what to do\")");
        return Ok(ExitCode::from(2));
    }
    let prompt = full_prompt(&args.prompt)?;
    headless_turn(home, args, prompt)
}

/// Runs one headless turn whose prompt is `args.prompt` as it is (bare `astrid` with piped
/// input: stdin was the prompt).
pub fn run_prompt(home: &AstridHome, args: &RunArgs) -> anyhow::Result<ExitCode> {
    headless_turn(home, args, args.prompt.clone())
}

/// The workspace a command works on: `-w`, else the current directory.
pub fn workspace(flag: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.clone(),
        None => std::env::current_dir().context("cannot determine the current directory")?,
    };
    path.canonicalize().with_context(|| format!("workspace {}", path.display()))
}

fn headless_turn(home: &AstridHome, args: &RunArgs, prompt: String) -> anyhow::Result<ExitCode> {
    let timeout = response_timeout()?;
    let workspace = workspace(args.workspace.as_ref())?;
    let session = session_id(args.session.as_deref()).to_string();
    spawn::ensure_daemon_in(home, &workspace)?;
    model::reconcile(home, &workspace)?;

    let mut client = Client::connect_in(home, Some(&workspace))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot handle Ctrl-C")?;
    let mut frontend = Headless { format: args.format, yes: args.yes, interrupted, wrote: false, line_open: false };
    let report = match turn::run(&mut client, &mut frontend, PROMPT_TOPIC, &prompt, &session, timeout) {
        Ok(report) => report,
        Err(ClientError::Closed) => bail!("the daemon closed the connection before the answer"),
        Err(e) => return Err(e.into()),
    };
    let code = match &report.end {
        End::Refused(reason) => {
            eprintln!("astrid: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        End::Left | End::Cancelled => {
            eprintln!("\n[headless] Interrupted: the turn is cancelled");
            return Ok(ExitCode::from(130));
        }
        End::NoFrame(timeout) => {
            eprintln!("[headless] Timed out waiting for response ({}s)", timeout.as_secs());
            return Ok(ExitCode::from(TIMEOUT_EXIT));
        }
        End::Answered if report.failure().is_some() => ExitCode::FAILURE,
        End::Answered if report.denied > 0 => ExitCode::from(DENIED_EXIT),
        End::Answered => ExitCode::SUCCESS,
    };
    match args.format {
        Format::Pretty if frontend.line_open => println!(),
        Format::Pretty => {}
        Format::Json => println!("{}", json!({"response": report.response(), "tool_calls": report.tool_calls})),
    }
    Ok(code)
}

/// The headless frontend: text to stdout, everything else to stderr, approvals by `--yes`.
struct Headless {
    format: Format,
    yes: bool,
    interrupted: Arc<AtomicBool>,
    /// Whether anything went to stdout, and whether its last line is still open (the output
    /// ends with a newline, as the reference's does).
    wrote: bool,
    line_open: bool,
}

impl Headless {
    fn print(&mut self, text: &str) -> std::io::Result<()> {
        if self.format == Format::Pretty && !text.is_empty() {
            let mut stdout = std::io::stdout();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
            self.wrote = true;
            self.line_open = !text.ends_with('\n');
        }
        Ok(())
    }

    fn close_line(&mut self) -> std::io::Result<()> {
        if self.line_open { self.print("\n") } else { Ok(()) }
    }
}

impl Frontend for Headless {
    fn begin_answer(&mut self, _speaker: Option<&str>) -> std::io::Result<()> {
        // Several answers, one after the other, each on lines of its own.
        self.close_line()
    }

    fn text(&mut self, text: &str) -> std::io::Result<()> {
        self.print(text)
    }

    fn end_answer(&mut self, outcome: TurnOutcome, message: &str) -> std::io::Result<()> {
        if outcome != TurnOutcome::Answered {
            self.close_line()?;
            eprintln!("astrid: {message}");
        }
        Ok(())
    }

    fn tool_call(&mut self, _name: &str, _arguments: &Value) -> std::io::Result<()> {
        Ok(())
    }

    fn tool_result(&mut self, _content: &str, _is_error: bool) -> std::io::Result<()> {
        Ok(())
    }

    /// Passed through to stderr as it comes: stdout holds only the answer.
    fn command_output(&mut self, text: &str) -> std::io::Result<()> {
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(text.as_bytes())?;
        stderr.flush()
    }

    fn notice(&mut self, text: &str) -> std::io::Result<()> {
        eprintln!("[headless] {text}");
        Ok(())
    }

    fn approve(&mut self, question: &Question) -> ApprovalDecision {
        eprintln!(
            "[headless] approval {}: {} on {}",
            if self.yes { "granted" } else { "denied (use --yes to approve)" },
            question.action,
            question.resource
        );
        // What was (or would have been) done, on the record of this run.
        for line in question.details.as_deref().unwrap_or_default().lines() {
            eprintln!("[headless]   {line}");
        }
        if self.yes { ApprovalDecision::Once } else { ApprovalDecision::Deny }
    }

    fn elicit(&mut self, capsule: &str, _prompt: &str) -> Option<String> {
        eprintln!("[headless] {capsule} asks for a value; nobody is here to answer");
        None
    }

    fn interrupt(&mut self) -> Interrupt {
        if self.interrupted.load(Ordering::SeqCst) { Interrupt::Leave } else { Interrupt::None }
    }

    fn cancelling(&mut self) -> std::io::Result<()> {
        Ok(())
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
    fn formats_parse_as_the_reference_names_them() {
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert_eq!("stream-json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }
}
