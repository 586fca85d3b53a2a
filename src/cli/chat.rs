//! `astrid chat`: talk to the agent.
//!
//! A line editor (rustyline: history kept in `var/chat_history`, editing, Ctrl-D to leave)
//! sends each line as a prompt on `user.v1.prompt`; the turn loop is [`super::turn`], shared
//! with `astrid run`. The answer streams as it is written, each answer under the prompt it
//! answers (several capsules answering are shown one after the other, named), tool calls and
//! their outcome as they happen, and an approval request is asked right there, showing what
//! will happen (a write's diff, a tool call's arguments) and what "session" and "always"
//! would cover: `y` once, `s` for the session, `a` always, `n` no; anything else asks again.
//!
//! Ctrl-C during a turn cancels it (the provider drops its request); at the prompt it clears
//! the line. Two in a row, with no line entered between them, leave (exit 130, as for any
//! program a SIGINT ends), however soon the second follows the first, even as the cancelled
//! turn ends and before the line editor has the terminal again. Text typed while a turn runs is not lost to a Ctrl-C: the terminal
//! is told not to flush its input on an interrupt (`NOFLSH`), so it is on the next prompt.
//!
//! A daemon that stops or drops the connection is noticed, said in one line, and reconnected
//! to (a new one started if this chat had started the last one); the conversation goes on,
//! since it lives in the daemon's store under the session id. For the same reason a chat can
//! pick up a conversation another one left: `--resume` continues the most recently active
//! one (`astrid sessions list` shows them all), `-s ID` a given one.
//!
//! A question the daemon asks every frontend (for a client that cannot ask its own person,
//! `astrid mcp serve` under an MCP client without elicitation) is shown above the prompt even
//! while the chat is idle, and the next line answers it: see [`super::prompt_questions`].
//!
//! At the start the chat says which instruction files (`AGENTS.md`, the user's and the
//! project's) the agent is given, as the daemon reads them for this workspace.
//!
//! Slash commands: `/help`, `/quit`, `/new` (a new conversation; `/clear` too), `/diff`,
//! `/commit`, `/discard` (the workspace overlay), and any command a capsule offers, sent on
//! `cli.v1.command.execute`: the daemon answers at once when no running capsule offers it.
//! Without a terminal the same loop reads lines from stdin.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use argh::FromArgs;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use serde_json::Value;
use uuid::Uuid;

use super::prompt_questions::{self, Line, PromptQuestions};
use super::turn::{self, ApprovalDecision, End, Frontend, Interrupt, Question, Report};
use super::{headless, model, request, spawn, workspace};
use crate::home::AstridHome;
use crate::ipc::{Client, ClientError};
use crate::types::instructions::MAX_INSTRUCTIONS_BYTES;
use crate::types::topics::{COMMAND_TOPIC, PROMPT_TOPIC};
use crate::types::{InstructionFiles, KernelRequest, KernelResponse, TurnOutcome};

/// How long a lost chat waits for a daemon it did not start to come back (a restart).
const RECONNECT_WAIT: Duration = Duration::from_secs(10);

/// talk to the agent (the default on a terminal)
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "chat")]
pub struct ChatArgs {
    /// the conversation to continue: a UUID, or a name
    #[argh(option, short = 's')]
    pub session: Option<String>,
    /// continue the most recently active conversation (`astrid sessions list` shows them)
    #[argh(switch)]
    pub resume: bool,
    /// the directory the agent works on (default: the current one)
    #[argh(option, short = 'w')]
    pub workspace: Option<PathBuf>,
}

const HELP: &str = "\
/help      this help
/quit      leave (also Ctrl-D)
/new       start a new conversation (also /clear)
/diff      the agent's pending changes to the workspace
/commit    apply them
/discard   drop them
Ctrl-C     cancel the current turn, or clear the line (twice in a row: leave)";

/// Runs the chat until the person leaves.
pub fn run(home: &AstridHome, args: &ChatArgs) -> anyhow::Result<ExitCode> {
    if args.resume && args.session.is_some() {
        eprintln!("astrid chat: --resume continues the latest conversation and -s names one: give one of them");
        return Ok(ExitCode::from(2));
    }
    let workspace = headless::workspace(args.workspace.as_ref())?;
    let mut link = Link::open(home, &workspace)?;
    let mut session = if args.resume {
        resumed(&mut link.client)?
    } else {
        headless::session_id(args.session.as_deref()).to_string()
    };
    let timeout = headless::response_timeout()?;
    let mut editor = DefaultEditor::new().context("cannot start the line editor")?;
    let history = home.root().join("var").join("chat_history");
    let _ = editor.load_history(&history);
    keep_typed_input_on_interrupt();
    let interrupts = Arc::new(Interrupts::new());
    let handler = Arc::clone(&interrupts);
    ctrlc::set_handler(move || handler.signalled()).context("cannot handle Ctrl-C")?;
    let questions = PromptQuestions::new(&mut editor);
    let capsule_commands = capsule_commands(&mut link.client);
    println!("astrid chat in {}: /help for commands, Ctrl-D to leave.", workspace.display());
    announce_instructions(&mut link.client);
    // The last key was a Ctrl-C (a cancelled turn or a cleared line): another one leaves.
    let mut armed = false;
    let code = loop {
        // A second Ctrl-C that came as the cancelled turn ended, before the line editor took
        // the terminal, reached the signal handler, not the editor: it leaves all the same.
        if armed && interrupts.count.load(Ordering::SeqCst) > 1 {
            break ExitCode::from(130);
        }
        interrupts.leave_on_signal.store(armed, Ordering::SeqCst);
        let read = questions.read_line(&mut editor, &mut link.client);
        interrupts.leave_on_signal.store(false, Ordering::SeqCst);
        let line = match questions.take(&mut link.client, read) {
            Ok(Line::Text(line)) => line,
            // A question another client's call asked here, answered (or asked again).
            Ok(Line::Answered | Line::NotAnAnswer) => {
                armed = false;
                continue;
            }
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
        save_history(&mut editor, &history);
        let topic = match line.split_whitespace().next() {
            Some("/quit" | "/exit" | "/q") => break ExitCode::SUCCESS,
            Some("/help") => {
                println!("{HELP}");
                for (name, description) in &capsule_commands {
                    println!("{name:<10} {description}");
                }
                continue;
            }
            Some("/new" | "/clear") => {
                session = Uuid::new_v4().to_string();
                println!("(a new conversation)");
                continue;
            }
            Some(command @ ("/diff" | "/commit" | "/discard")) => {
                let done = link.with(|client| match workspace::act(client, &command[1..]) {
                    Err(e) => match e.downcast::<ClientError>() {
                        Ok(lost) => Err(lost),
                        Err(other) => {
                            println!("({other:#})");
                            Ok(())
                        }
                    },
                    Ok(()) => Ok(()),
                });
                if let Err(e) = done {
                    println!("({e:#})");
                }
                continue;
            }
            Some(command) if command.starts_with('/') => COMMAND_TOPIC,
            _ => PROMPT_TOPIC,
        };
        interrupts.count.store(0, Ordering::SeqCst);
        let mut frontend = Chat { editor: &mut editor, interrupts: &interrupts.count, line_open: false };
        let report = link.turn(&mut frontend, topic, line, &session, timeout);
        match report {
            Ok(report) => match report.end {
                End::Answered => {}
                End::Refused(reason) => println!("({reason})"),
                End::Cancelled => armed = true,
                End::Left => break ExitCode::from(130),
                End::NoFrame(after) => println!("(no answer within {} s)", after.as_secs()),
            },
            Err(e) => println!("({e:#})"),
        }
    };
    save_history(&mut editor, &history);
    Ok(code)
}

/// The chat's Ctrl-C state, shared with the signal handler.
///
/// The line editor reads Ctrl-C as a key while it holds the terminal (`ISIG` off); at any other
/// time the key is a SIGINT, which lands here.
struct Interrupts {
    /// SIGINTs since the current turn began: one cancels it, two leave.
    count: AtomicUsize,
    /// Set while the chat reads a line right after a Ctrl-C: a SIGINT from the terminal then
    /// came before the editor took it over, and it is the second Ctrl-C.
    leave_on_signal: AtomicBool,
    /// The terminal's settings before the line editor changed them, put back on leaving from
    /// the handler (a `kill -INT` can come while the editor holds the terminal in raw mode).
    terminal: std::sync::Mutex<Option<nix::sys::termios::Termios>>,
}

impl Interrupts {
    fn new() -> Self {
        let stdin = std::io::stdin();
        let terminal = if stdin.is_terminal() { nix::sys::termios::tcgetattr(&stdin).ok() } else { None };
        Self { count: AtomicUsize::new(0), leave_on_signal: AtomicBool::new(false), terminal: terminal.into() }
    }

    fn signalled(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.leave_on_signal.load(Ordering::SeqCst) {
            if let Some(settings) = self.terminal.lock().ok().as_deref().and_then(Option::as_ref) {
                let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, settings);
            }
            // The history is saved after every line: nothing else is left to do.
            println!();
            std::process::exit(130);
        }
    }
}

/// Writes the line history; after every line, so no way of leaving loses it.
fn save_history(editor: &mut DefaultEditor, history: &Path) {
    if let Some(parent) = history.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = editor.save_history(history);
}

/// The session `--resume` continues: the most recently active one, said in a line; a new
/// one when there is none yet.
fn resumed(client: &mut Client) -> anyhow::Result<String> {
    let index = super::sessions::index_on(client).context("cannot read the conversations to resume")?;
    Ok(match index.latest() {
        Some(latest) => {
            println!("(continuing {})", super::sessions::row(latest));
            latest.id.clone()
        }
        None => {
            println!("(no earlier conversation: a new one)");
            Uuid::new_v4().to_string()
        }
    })
}

/// Says which instruction files the agent is given in this workspace (nothing when none),
/// and any it cannot use. A daemon that does not answer is not worth a line.
fn announce_instructions(client: &mut Client) {
    let Ok(reply) = client.request("get_instructions", &KernelRequest::GetInstructions, request::REQUEST_TIMEOUT)
    else {
        return;
    };
    let Ok(found) = reply.into_data::<InstructionFiles>() else { return };
    if !found.files.is_empty() {
        let files: Vec<String> = found
            .files
            .iter()
            .map(|f| {
                let cut = if f.truncated {
                    format!(", only its first {} KiB", MAX_INSTRUCTIONS_BYTES / 1024)
                } else {
                    String::new()
                };
                format!("{} ({}, {} bytes{cut})", f.path, f.scope.as_str(), f.bytes)
            })
            .collect();
        println!("(instructions loaded: {})", files.join("; "));
    }
    for refused in &found.refused {
        println!("(instructions not used: {refused})");
    }
}

/// The chat's connection, reconnected when the daemon goes away.
struct Link<'a> {
    home: &'a AstridHome,
    workspace: PathBuf,
    client: Client,
    /// Whether this chat started the daemon it talks to (it starts a new one if that one goes).
    started: bool,
}

impl<'a> Link<'a> {
    fn open(home: &'a AstridHome, workspace: &Path) -> anyhow::Result<Self> {
        let started = spawn::ensure_daemon_in(home, workspace)?;
        model::reconcile(home, workspace)?;

        let client = Client::connect_in(home, Some(workspace))?;
        Ok(Self { home, workspace: workspace.to_owned(), client, started })
    }

    /// Runs `act` on the connection; if the daemon went away before it, reconnects and runs
    /// it once more.
    fn with<T>(&mut self, mut act: impl FnMut(&mut Client) -> Result<T, ClientError>) -> anyhow::Result<T> {
        match act(&mut self.client) {
            Err(e) if lost(&e) => {
                self.reconnect(&e)?;
                Ok(act(&mut self.client)?)
            }
            other => Ok(other?),
        }
    }

    /// One turn; a daemon lost before the prompt went out is reconnected to and the prompt
    /// sent again, one lost during the turn is reconnected to and the turn reported lost.
    fn turn(
        &mut self,
        frontend: &mut Chat<'_>,
        topic: &str,
        line: &str,
        session: &str,
        timeout: Duration,
    ) -> anyhow::Result<Report> {
        // A closed socket shows on the first write: check the connection before the prompt
        // goes out, so a prompt is never half-sent to a daemon that is gone.
        if let Err(e) = self.client.drain()
            && lost(&e)
        {
            self.reconnect(&e)?;
        }
        match turn::run(&mut self.client, frontend, topic, line, session, timeout) {
            Err(e) if lost(&e) => {
                frontend.close_line()?;
                self.reconnect(&e)?;
                anyhow::bail!("the turn was lost with the connection; ask again")
            }
            other => Ok(other?),
        }
    }

    /// Says once that the daemon is gone, and connects again: to a new daemon this chat
    /// starts if it had started the last one, else to whichever comes back within a while.
    fn reconnect(&mut self, why: &ClientError) -> anyhow::Result<()> {
        println!("(lost the daemon: {why}; reconnecting)");
        let deadline = Instant::now() + RECONNECT_WAIT;
        loop {
            if self.started {
                spawn::ensure_daemon_in(self.home, &self.workspace)?;
            }
            match Client::connect_in(self.home, Some(&self.workspace)) {
                Ok(client) => {
                    self.client = client;
                    println!("(reconnected; the conversation goes on)");
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("no daemon to reconnect to ({e}); `astrid start`, then type again")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Whether `e` means the daemon is gone (rather than slow, or confused).
fn lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed | ClientError::Io(_) | ClientError::NoSocket(_) | ClientError::Connect { .. })
}

/// Tells the terminal not to flush typed input on an interrupt, so a Ctrl-C during a turn
/// does not throw away what the person typed meanwhile.
fn keep_typed_input_on_interrupt() {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return;
    }
    if let Ok(mut settings) = tcgetattr(&stdin) {
        settings.local_flags.insert(LocalFlags::NOFLSH);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &settings);
    }
}

/// The slash commands capsules offer, for `/help`.
fn capsule_commands(client: &mut Client) -> Vec<(String, String)> {
    match client.request("get_commands", &KernelRequest::GetCommands, request::REQUEST_TIMEOUT) {
        Ok(KernelResponse::Commands(commands)) => {
            commands.into_iter().map(|command| (command.name, command.description)).collect()
        }
        _ => Vec::new(),
    }
}

/// The chat's side of a turn.
struct Chat<'a> {
    editor: &'a mut DefaultEditor,
    interrupts: &'a AtomicUsize,
    /// Whether a line of output is still open (an answer being streamed).
    line_open: bool,
}

impl Chat<'_> {
    fn close_line(&mut self) -> std::io::Result<()> {
        if self.line_open {
            println!();
            self.line_open = false;
        }
        std::io::stdout().flush()
    }

    /// Asks until the answer is one of the four.
    fn ask(&mut self, question: &Question) -> ApprovalDecision {
        // The choices on a line of their own: a line editor shows no prompt without a terminal.
        println!("{}", prompt_questions::choices(question));
        loop {
            match self.editor.readline("  Allow? ") {
                Ok(answer) => match prompt_questions::parse_answer(&answer) {
                    Some(decision) => return decision,
                    None => println!("  (y, s, a or n)"),
                },
                // Ctrl-C at the question: no, and the turn is cancelled.
                Err(ReadlineError::Interrupted) => {
                    self.interrupts.fetch_add(1, Ordering::SeqCst);
                    return ApprovalDecision::Deny;
                }
                Err(_) => return ApprovalDecision::Deny,
            }
        }
    }
}

impl Frontend for Chat<'_> {
    fn begin_answer(&mut self, speaker: Option<&str>) -> std::io::Result<()> {
        self.close_line()?;
        print!("{}> ", speaker.unwrap_or("astrid"));
        self.line_open = true;
        std::io::stdout().flush()
    }

    fn text(&mut self, text: &str) -> std::io::Result<()> {
        print!("{text}");
        self.line_open = !text.ends_with('\n');
        std::io::stdout().flush()
    }

    fn end_answer(&mut self, outcome: TurnOutcome, message: &str) -> std::io::Result<()> {
        self.line_open = true;
        self.close_line()?;
        if outcome != TurnOutcome::Answered {
            println!("  ✗ {message}");
        }
        Ok(())
    }

    fn tool_call(&mut self, name: &str, arguments: &Value) -> std::io::Result<()> {
        self.close_line()?;
        println!("  • {name} {arguments}");
        Ok(())
    }

    /// Dimmed and indented under the tool call, like a terminal pane, as it comes.
    fn command_output(&mut self, text: &str) -> std::io::Result<()> {
        let colour = std::io::stdout().is_terminal();
        let mut out = std::io::stdout().lock();
        if colour {
            out.write_all(b"\x1b[2m")?;
        }
        for piece in text.split_inclusive('\n') {
            if !self.line_open {
                out.write_all(b"    \xe2\x94\x82 ")?;
            }
            out.write_all(piece.as_bytes())?;
            self.line_open = !piece.ends_with('\n');
        }
        if colour {
            out.write_all(b"\x1b[0m")?;
        }
        out.flush()
    }

    fn tool_result(&mut self, content: &str, is_error: bool) -> std::io::Result<()> {
        self.close_line()?;
        let first = content.lines().next().unwrap_or_default();
        println!("    {} {first}", if is_error { "✗" } else { "✓" });
        Ok(())
    }

    fn notice(&mut self, text: &str) -> std::io::Result<()> {
        self.close_line()?;
        println!("  ({text})");
        Ok(())
    }

    fn approve(&mut self, question: &Question) -> ApprovalDecision {
        let _ = self.close_line();
        // The question on lines of its own: a line editor shows no prompt without a terminal.
        print!("{}", prompt_questions::render(question));
        self.ask(question)
    }

    fn elicit(&mut self, capsule: &str, prompt: &str) -> Option<String> {
        let _ = self.close_line();
        self.editor.readline(&format!("{capsule} asks: {prompt}: ")).ok()
    }

    fn interrupt(&mut self) -> Interrupt {
        match self.interrupts.load(Ordering::SeqCst) {
            0 => Interrupt::None,
            1 => Interrupt::Cancel,
            _ => Interrupt::Leave,
        }
    }

    fn cancelling(&mut self) -> std::io::Result<()> {
        self.close_line()?;
        println!("(cancelling; Ctrl-C again to leave)");
        Ok(())
    }
}
