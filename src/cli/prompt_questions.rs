//! Approval questions as `astrid chat` shows them: in a turn, and while it waits at its prompt.
//!
//! A question usually belongs to a turn, and the chat asks it there ([`super::turn`] hands it
//! to the chat, which asks with the line editor). But the daemon also asks the connected
//! frontends on behalf of a client that cannot ask its own person (`astrid mcp serve` for an
//! MCP client without elicitation: the person who started a write in their editor answers it
//! in the chat in the next terminal), and such a question comes whenever that client calls,
//! most likely while the chat sits at its prompt. So while the line editor waits for a line, a
//! thread reads the connection ([`PromptQuestions::read_line`]): a question is printed above
//! the prompt (rustyline's external printer redraws the line being typed under it), and the
//! next line entered is its answer, `y`, `s`, `a` or `n` (Ctrl-C: `n`). Questions queue, one
//! at a time is asked, and one that waited past the daemon's question timeout is dropped with
//! a line saying so: the daemon took it as a no.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};

use super::turn::Question;
use crate::ipc::{Client, ClientError};
use crate::types::topics::{APPROVAL_RESPONSE_PREFIX, APPROVAL_TOPIC};
use crate::types::{ApprovalDecision, IpcPayload};

/// How long the daemon waits for an answer (its question timeout); past it, a no.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// How often the reading thread looks whether the line was entered.
const POLL: Duration = Duration::from_millis(20);

/// The question, with its details (a diff coloured on a terminal), as lines to print.
pub fn render(question: &Question) -> String {
    let mut text = format!("  {}: {} on {}\n", question.reason, question.action, question.resource);
    let colour = std::io::stdout().is_terminal();
    for line in question.details.as_deref().unwrap_or_default().lines() {
        let paint = match line.chars().next() {
            Some('+') if colour && !line.starts_with("+++") => "\x1b[32m",
            Some('-') if colour && !line.starts_with("---") => "\x1b[31m",
            _ => "",
        };
        text.push_str(&format!("    {paint}{line}{}\n", if paint.is_empty() { "" } else { "\x1b[0m" }));
    }
    text
}

/// The four answers, saying what "session" and "always" would cover.
pub fn choices(question: &Question) -> String {
    let scope = question.scope.clone().unwrap_or_else(|| format!("{} on {}", question.action, question.resource));
    format!("  [y] once  [s] {scope} this session  [a] {scope} always  [n] no")
}

/// The decision a typed answer stands for; `None` for anything but the four.
pub fn parse_answer(answer: &str) -> Option<ApprovalDecision> {
    match answer.trim() {
        "y" | "Y" | "yes" => Some(ApprovalDecision::Once),
        "s" | "S" => Some(ApprovalDecision::Session),
        "a" | "A" => Some(ApprovalDecision::Always),
        "n" | "N" | "no" => Some(ApprovalDecision::Deny),
        _ => None,
    }
}

/// A question asked of this chat outside its turns, waiting for the person.
#[derive(Debug)]
struct Waiting {
    request_id: String,
    question: Question,
    since: Instant,
}

/// What the chat made of a line typed at its prompt.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// An ordinary line: no question was waiting.
    Text(String),
    /// The answer to the waiting question, sent.
    Answered,
    /// Not one of the four answers: the question is asked again.
    NotAnAnswer,
}

/// The questions asked of this chat while it waits at its prompt.
pub struct PromptQuestions {
    queue: Mutex<VecDeque<Waiting>>,
    /// Prints above the line being edited (a terminal); `None`: plain printing.
    printer: Mutex<Option<Box<dyn ExternalPrinter + Send>>>,
}

impl std::fmt::Debug for PromptQuestions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptQuestions").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl PromptQuestions {
    /// For the chat whose line editor is `editor`.
    pub fn new(editor: &mut DefaultEditor) -> Self {
        let printer = editor.create_external_printer().ok().map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
        Self { queue: Mutex::new(VecDeque::new()), printer: Mutex::new(printer) }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads a line with `editor` while a thread reads `client` for questions. The prompt
    /// is `you> `, or `  Allow? ` while a question waits.
    pub fn read_line(&self, editor: &mut DefaultEditor, client: &mut Client) -> rustyline::Result<String> {
        self.drop_expired();
        let prompt = if self.queue().is_empty() { "you> " } else { "  Allow? " };
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let watcher = scope.spawn(|| self.watch(client, &stop));
            let read = editor.readline(prompt);
            stop.store(true, Ordering::SeqCst);
            // A lost connection ends the watch early; the next turn finds it and reconnects.
            let _ = watcher.join();
            read
        })
    }

    /// Queues the questions that arrive on `client` until `stop`, showing each as it becomes
    /// the first.
    fn watch(&self, client: &mut Client, stop: &AtomicBool) -> Result<(), ClientError> {
        while !stop.load(Ordering::SeqCst) {
            let frame = match client.next_frame(POLL) {
                Ok(frame) => frame,
                Err(ClientError::Timeout(_)) => continue,
                Err(e) => return Err(e),
            };
            if frame.topic != APPROVAL_TOPIC {
                continue;
            }
            let IpcPayload::ApprovalRequired { request_id, action, resource, reason, details, scope } =
                IpcPayload::from_json_value(frame.payload)
            else {
                continue;
            };
            let question = Question { action, resource, reason, details, scope };
            let first = {
                let mut queue = self.queue();
                queue.push_back(Waiting { request_id, question: question.clone(), since: Instant::now() });
                queue.len() == 1
            };
            if first {
                self.print(&format!("\n{}{}  (answer at the prompt)\n", render(&question), choices(&question)));
            }
        }
        Ok(())
    }

    /// Prints `text` above the line being edited, or plainly without a terminal.
    fn print(&self, text: &str) {
        let mut printer = self.printer.lock().unwrap_or_else(|e| e.into_inner());
        let shown = printer.as_mut().is_some_and(|p| p.print(text.to_owned()).is_ok());
        if !shown {
            print!("{text}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    }

    /// Forgets the questions the daemon has stopped waiting for, saying so.
    fn drop_expired(&self) {
        let expired: VecDeque<Waiting> = {
            let mut queue = self.queue();
            let (expired, kept) =
                std::mem::take(&mut *queue).into_iter().partition(|w| w.since.elapsed() > ANSWER_WITHIN);
            *queue = kept;
            expired
        };
        for waiting in expired {
            println!(
                "  (no answer within {} s: {} on {} was denied)",
                ANSWER_WITHIN.as_secs(),
                waiting.question.action,
                waiting.question.resource
            );
        }
    }

    /// Takes what `read_line` returned: the answer to the waiting question if one waits, else
    /// the line itself (an error stays an error, except that Ctrl-C at a question is a no).
    pub fn take(&self, client: &mut Client, read: rustyline::Result<String>) -> rustyline::Result<Line> {
        self.drop_expired();
        // Not in the match: its guard would live through the arms, which lock again.
        let nothing_waits = self.queue().is_empty();
        let decision = match (nothing_waits, read) {
            (true, read) => return read.map(Line::Text),
            (false, Ok(line)) => match parse_answer(&line) {
                Some(decision) => decision,
                None => {
                    if let Some(waiting) = self.queue().front() {
                        println!("{}", choices(&waiting.question));
                    }
                    return Ok(Line::NotAnAnswer);
                }
            },
            (false, Err(ReadlineError::Interrupted)) => ApprovalDecision::Deny,
            (false, Err(e)) => return Err(e),
        };
        let Some(waiting) = self.queue().pop_front() else { return Ok(Line::NotAnAnswer) };
        let answer = IpcPayload::ApprovalResponse {
            request_id: waiting.request_id.clone(),
            decision: decision.as_str().to_owned(),
            reason: Some("astrid chat (at its prompt)".to_owned()),
        };
        match client.publish(&format!("{APPROVAL_RESPONSE_PREFIX}{}", waiting.request_id), &answer) {
            Ok(()) => println!("  ({} {} on {})", said(decision), waiting.question.action, waiting.question.resource),
            Err(e) => println!("  (the answer could not be sent: {e})"),
        }
        if let Some(next) = self.queue().front() {
            println!("{}{}", render(&next.question), choices(&next.question));
        }
        Ok(Line::Answered)
    }
}

/// The decision as the chat confirms it.
fn said(decision: ApprovalDecision) -> &'static str {
    match decision {
        ApprovalDecision::Once => "allowed once:",
        ApprovalDecision::Session => "allowed for this session:",
        ApprovalDecision::Always => "allowed from now on:",
        ApprovalDecision::Deny => "denied:",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_answers_are_answers() {
        assert_eq!(parse_answer(" y "), Some(ApprovalDecision::Once));
        assert_eq!(parse_answer("s"), Some(ApprovalDecision::Session));
        assert_eq!(parse_answer("A"), Some(ApprovalDecision::Always));
        assert_eq!(parse_answer("no"), Some(ApprovalDecision::Deny));
        assert_eq!(parse_answer("write the tests"), None);
        assert_eq!(parse_answer(""), None);
    }
}
