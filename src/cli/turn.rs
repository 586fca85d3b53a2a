//! One turn of the agent, for every frontend: `astrid chat`, `astrid run`, and whatever comes
//! next. The loop is here once; what differs between frontends (how text is shown, how an
//! approval is asked, what Ctrl-C means) is a [`Frontend`].
//!
//! A turn is: the prompt goes out on `user.v1.prompt` (or a slash command on
//! `cli.v1.command.execute`); the kernel's receipt says who will answer it, or why nobody
//! will (then the turn ends at once, with that reason); the answers stream in and the turn
//! is over when every answerer of the receipt has sent its final `agent_response`. An answer
//! is the concatenation of the `text` of its answerer's responses up to the final one (the
//! reference's meaning). One answer is shown live; another arriving meanwhile is held and
//! shown whole after it, so answers never interleave and each is shown under its prompt.
//!
//! A daemon that sends no receipt (the reference) is still served: the first final answer
//! then ends the turn.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::ipc::{Client, ClientError};
pub use crate::types::ApprovalDecision;
use crate::types::commands::CommandOutput;
use crate::types::topics::{
    APPROVAL_RESPONSE_PREFIX, APPROVAL_TOPIC, COMMAND_OUTPUT_TOPIC, DELTA_TOPIC, ELICIT_RESPONSE_PREFIX, ELICIT_TOPIC,
    NOTICE_TOPIC, ONBOARDING_TOPIC, PROMPT_TOPIC, RECEIPT_TOPIC, RESPONSE_TOPIC, TOOL_REQUEST_TOPIC, TOOL_RESULT_TOPIC,
};
use crate::types::{EgressFrame, IpcPayload, TurnEvent, TurnOutcome};

/// How often a waiting turn looks for Ctrl-C.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a turn may go without any frame from the daemon, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a cancelled turn waits for its answerers to confirm before it is over anyway.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// What the person did while the turn ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// Nothing.
    None,
    /// Cancel the turn and wait for it to say so.
    Cancel,
    /// Cancel the turn and stop waiting at once.
    Leave,
}

/// An approval request, as the person is asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// What would be done (`write_file`, `mcp.call`).
    pub action: String,
    /// To what.
    pub resource: String,
    /// Who asks and why.
    pub reason: String,
    /// What will happen (a diff, the arguments), when the daemon says.
    pub details: Option<String>,
    /// What "session" and "always" would cover, when the daemon says.
    pub scope: Option<String>,
}

/// What a frontend does with the events of a turn.
pub trait Frontend {
    /// An answer starts being shown; `speaker` names the capsule when several answer.
    fn begin_answer(&mut self, speaker: Option<&str>) -> std::io::Result<()>;
    /// A piece of the answer being shown.
    fn text(&mut self, text: &str) -> std::io::Result<()>;
    /// The answer being shown is over; `message` says why when it did not end well.
    fn end_answer(&mut self, outcome: TurnOutcome, message: &str) -> std::io::Result<()>;
    /// The agent calls a tool.
    fn tool_call(&mut self, name: &str, arguments: &Value) -> std::io::Result<()>;
    /// A tool answered.
    fn tool_result(&mut self, content: &str, is_error: bool) -> std::io::Result<()>;
    /// A piece of a running command's output (the kernel sends it as the command writes it;
    /// pieces end anywhere, in the middle of a line too).
    fn command_output(&mut self, text: &str) -> std::io::Result<()>;
    /// Something the person should know about the turn.
    fn notice(&mut self, text: &str) -> std::io::Result<()>;
    /// Asks the person to allow something.
    fn approve(&mut self, question: &Question) -> ApprovalDecision;
    /// Asks the person for a value a capsule needs (`None`: no answer).
    fn elicit(&mut self, capsule: &str, prompt: &str) -> Option<String>;
    /// What the person did since the last look (Ctrl-C).
    fn interrupt(&mut self) -> Interrupt;
    /// The turn is being cancelled.
    fn cancelling(&mut self) -> std::io::Result<()>;
}

/// How a turn ended, as far as the frontend is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every answerer answered (see [`Report::answers`] for how).
    Answered,
    /// Nobody will answer; the kernel says why.
    Refused(String),
    /// The person cancelled it and the answerers confirmed (or the grace ran out).
    Cancelled,
    /// The person left (the turn was cancelled in the daemon).
    Left,
    /// No frame came for the timeout.
    NoFrame(Duration),
}

/// One answerer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The capsule that answered.
    pub capsule: String,
    /// The whole answer text (what streamed and what the final response added).
    pub text: String,
    /// How its part ended.
    pub outcome: TurnOutcome,
}

/// What a turn produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// How it ended.
    pub end: End,
    /// The answers, in the order they were shown.
    pub answers: Vec<Answer>,
    /// `{call_id, name, arguments, result?, is_error?}` per tool call seen.
    pub tool_calls: Vec<Value>,
    /// Approval requests the person (or the frontend's policy) denied.
    pub denied: usize,
}

impl Report {
    /// Every answer's text, one after the other.
    pub fn response(&self) -> String {
        self.answers.iter().map(|a| a.text.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// The first answer that did not end well.
    pub fn failure(&self) -> Option<&Answer> {
        self.answers.iter().find(|a| a.outcome != TurnOutcome::Answered)
    }
}

/// One answerer's progress.
#[derive(Debug)]
struct Speaker {
    source: Uuid,
    capsule: String,
    /// Text received and not yet shown (while another answer is shown).
    held: String,
    /// Everything received.
    text: String,
    /// Its final response's outcome and message, once it came.
    done: Option<(TurnOutcome, String)>,
    /// Whether it was shown (live or whole).
    shown: bool,
}

/// The turn's state between frames.
struct State<'a, F: Frontend> {
    frontend: &'a mut F,
    session: String,
    /// `None` until the receipt came; `Some(None)` for a daemon that sends none.
    expected: Option<Option<Vec<(Uuid, String)>>>,
    speakers: Vec<Speaker>,
    /// The speaker being shown live.
    live: Option<Uuid>,
    several: bool,
    report: Report,
}

/// Sends `text` on `topic` for `session` and shows the turn through `frontend` until it is
/// over. Errors are the connection's (a daemon gone mid-turn).
pub fn run<F: Frontend>(
    client: &mut Client,
    frontend: &mut F,
    topic: &str,
    text: &str,
    session: &str,
    timeout: Duration,
) -> Result<Report, ClientError> {
    let prompt = IpcPayload::UserInput { text: text.to_owned(), session_id: session.to_owned(), context: None };
    client.publish(topic, &prompt)?;
    let mut state = State {
        frontend,
        session: session.to_owned(),
        expected: None,
        speakers: Vec::new(),
        live: None,
        several: false,
        report: Report { end: End::Answered, answers: Vec::new(), tool_calls: Vec::new(), denied: 0 },
    };
    let mut last_frame = Instant::now();
    let mut cancelled: Option<Instant> = None;
    loop {
        match state.frontend.interrupt() {
            Interrupt::None => {}
            Interrupt::Cancel if cancelled.is_none() => {
                cancel_turn(client, session)?;
                state.frontend.cancelling()?;
                cancelled = Some(Instant::now());
            }
            Interrupt::Cancel => {}
            Interrupt::Leave => {
                if cancelled.is_none() {
                    cancel_turn(client, session)?;
                }
                state.report.end = End::Left;
                return Ok(state.report);
            }
        }
        if cancelled.is_some_and(|at| at.elapsed() > CANCEL_GRACE) {
            state.report.end = End::Cancelled;
            return Ok(state.finish_unshown());
        }
        let frame = match client.next_frame(POLL) {
            Ok(frame) => frame,
            Err(ClientError::Timeout(_)) if last_frame.elapsed() < timeout => continue,
            Err(ClientError::Timeout(_)) => {
                state.report.end = End::NoFrame(timeout);
                return Ok(state.finish_unshown());
            }
            Err(e) => return Err(e),
        };
        last_frame = Instant::now();
        if let Some(reason) = state.frame(client, &frame)? {
            state.report.end = End::Refused(reason);
            return Ok(state.report);
        }
        if state.complete() {
            if cancelled.is_some() {
                state.report.end = End::Cancelled;
            }
            return Ok(state.report);
        }
    }
}

/// Asks the agent to cancel the turn of `session` (as the reference: an empty prompt whose
/// context says `cancel_turn`).
pub fn cancel_turn(client: &mut Client, session: &str) -> Result<(), ClientError> {
    let cancel = IpcPayload::UserInput {
        text: String::new(),
        session_id: session.to_owned(),
        context: Some(json!({"action": "cancel_turn"})),
    };
    client.publish(PROMPT_TOPIC, &cancel)
}

impl<F: Frontend> State<'_, F> {
    /// Handles one frame; `Some(reason)` when the receipt says nobody answers.
    fn frame(&mut self, client: &mut Client, frame: &EgressFrame) -> Result<Option<String>, ClientError> {
        let payload = IpcPayload::from_json_value(frame.payload.clone());
        let ours = payload.session_id().is_none_or(|s| s == self.session);
        match (frame.topic.as_str(), payload) {
            (RECEIPT_TOPIC, IpcPayload::Custom { data }) if ours && self.expected.is_none() => {
                match serde_json::from_value::<TurnEvent>(data) {
                    Ok(TurnEvent::PromptReceipt { refused: Some(reason), .. }) => return Ok(Some(reason)),
                    Ok(TurnEvent::PromptReceipt { answerers, .. }) => {
                        self.several = answerers.len() > 1;
                        self.expected = Some(Some(answerers.into_iter().map(|a| (a.source_id, a.capsule)).collect()));
                    }
                    _ => {}
                }
            }
            (DELTA_TOPIC | RESPONSE_TOPIC, IpcPayload::AgentResponse { text, is_final, outcome, .. }) if ours => {
                if self.expected.is_none() {
                    // A daemon without receipts: the first final answer ends the turn.
                    self.expected = Some(None);
                }
                let done = is_final.then(|| (outcome.unwrap_or(TurnOutcome::Answered), text.trim().to_owned()));
                self.piece(frame.source_id, &text, done).map_err(ClientError::Io)?;
            }
            (TOOL_REQUEST_TOPIC, IpcPayload::ToolExecuteRequest { call_id, tool_name, arguments }) => {
                self.frontend.tool_call(&tool_name, &arguments).map_err(ClientError::Io)?;
                self.report.tool_calls.push(json!({"call_id": call_id, "name": tool_name, "arguments": arguments}));
            }
            (TOOL_RESULT_TOPIC, IpcPayload::ToolExecuteResult { call_id, result }) => {
                if let Some(call) = self.report.tool_calls.iter_mut().find(|c| c["call_id"] == call_id.as_str()) {
                    call["result"] = json!(result.content);
                    call["is_error"] = json!(result.is_error);
                }
                self.frontend.tool_result(&result.content, result.is_error).map_err(ClientError::Io)?;
            }
            (APPROVAL_TOPIC, IpcPayload::ApprovalRequired { request_id, action, resource, reason, details, scope }) => {
                let decision = self.frontend.approve(&Question { action, resource, reason, details, scope });
                if decision == ApprovalDecision::Deny {
                    self.report.denied += 1;
                }
                client.publish(
                    &format!("{APPROVAL_RESPONSE_PREFIX}{request_id}"),
                    &IpcPayload::ApprovalResponse {
                        request_id,
                        decision: decision.as_str().to_owned(),
                        reason: Some("astrid".to_owned()),
                    },
                )?;
            }
            (ELICIT_TOPIC, IpcPayload::ElicitRequest { request_id, capsule_id, field }) => {
                let value = self.frontend.elicit(&capsule_id, &field.prompt).filter(|v| !v.is_empty());
                client.publish(
                    &format!("{ELICIT_RESPONSE_PREFIX}{request_id}"),
                    &IpcPayload::ElicitResponse { request_id, value, values: None },
                )?;
            }
            (COMMAND_OUTPUT_TOPIC, IpcPayload::Custom { data }) => {
                if let Ok(output) = serde_json::from_value::<CommandOutput>(data) {
                    self.frontend.command_output(&output.text).map_err(ClientError::Io)?;
                }
            }
            (NOTICE_TOPIC, IpcPayload::Custom { data }) if ours => {
                if let Ok(TurnEvent::Notice { text, .. }) = serde_json::from_value::<TurnEvent>(data) {
                    self.frontend.notice(&text).map_err(ClientError::Io)?;
                }
            }
            (ONBOARDING_TOPIC, payload) => {
                let capsule = match &payload {
                    IpcPayload::OnboardingRequired { capsule_id, .. } => capsule_id.as_str(),
                    _ => "a capsule",
                };
                let text = format!(
                    "capsule {capsule} needs configuration: install it again with `astrid capsule install DIR --env KEY=VALUE`"
                );
                self.frontend.notice(&text).map_err(ClientError::Io)?;
            }
            _ => {}
        }
        Ok(None)
    }

    /// A piece of `source`'s answer, and its end when `done`.
    fn piece(&mut self, source: Uuid, text: &str, done: Option<(TurnOutcome, String)>) -> std::io::Result<()> {
        let index = match self.speakers.iter().position(|s| s.source == source) {
            Some(index) => index,
            None => {
                let capsule = match &self.expected {
                    Some(Some(expected)) => expected.iter().find(|(id, _)| *id == source).map(|(_, name)| name.clone()),
                    _ => None,
                };
                self.speakers.push(Speaker {
                    source,
                    capsule: capsule.unwrap_or_else(|| "astrid".to_owned()),
                    held: String::new(),
                    text: String::new(),
                    done: None,
                    shown: false,
                });
                self.speakers.len() - 1
            }
        };
        // A final response of a turn that ended early carries its message, not answer text.
        let answer_text = match &done {
            Some((outcome, _)) if *outcome != TurnOutcome::Answered => "",
            _ => text,
        };
        let speaker = &mut self.speakers[index];
        speaker.text.push_str(answer_text);
        if done.is_some() {
            speaker.done = done;
        }
        if self.live.is_none() && !self.speakers[index].shown {
            self.live = Some(source);
            self.speakers[index].shown = true;
            let speaker = self.several.then(|| self.speakers[index].capsule.clone());
            self.frontend.begin_answer(speaker.as_deref())?;
        }
        if self.live == Some(source) {
            if !answer_text.is_empty() {
                self.frontend.text(answer_text)?;
            }
        } else {
            self.speakers[index].held.push_str(answer_text);
        }
        if self.live == Some(source) && self.speakers[index].done.is_some() {
            self.close_live()?;
        }
        Ok(())
    }

    /// Ends the live answer, then shows what others held, finished ones whole and the first
    /// unfinished one live from there on.
    fn close_live(&mut self) -> std::io::Result<()> {
        let Some(index) = self.live.and_then(|live| self.speakers.iter().position(|s| s.source == live)) else {
            return Ok(());
        };
        let (outcome, message) = self.speakers[index].done.clone().unwrap_or((TurnOutcome::Answered, String::new()));
        self.frontend.end_answer(outcome, if outcome == TurnOutcome::Answered { "" } else { &message })?;
        let speaker = &self.speakers[index];
        self.report.answers.push(Answer { capsule: speaker.capsule.clone(), text: speaker.text.clone(), outcome });
        self.live = None;
        let Some(next) = self.speakers.iter().position(|s| !s.shown && (!s.held.is_empty() || s.done.is_some())) else {
            return Ok(());
        };
        self.live = Some(self.speakers[next].source);
        self.speakers[next].shown = true;
        let name = self.several.then(|| self.speakers[next].capsule.clone());
        self.frontend.begin_answer(name.as_deref())?;
        let held = std::mem::take(&mut self.speakers[next].held);
        if !held.is_empty() {
            self.frontend.text(&held)?;
        }
        if self.speakers[next].done.is_none() {
            return Ok(());
        }
        self.close_live()
    }

    /// Whether every expected answerer answered.
    fn complete(&self) -> bool {
        let finished = |source: &Uuid| self.speakers.iter().any(|s| s.source == *source && s.done.is_some());
        match &self.expected {
            None => false,
            Some(None) => self.live.is_none() && self.speakers.iter().any(|s| s.done.is_some()),
            Some(Some(expected)) => self.live.is_none() && expected.iter().all(|(source, _)| finished(source)),
        }
    }

    /// The report of a turn that ends before its answers did: what was received counts.
    fn finish_unshown(mut self) -> Report {
        for speaker in &self.speakers {
            if !self.report.answers.iter().any(|a| a.capsule == speaker.capsule) && !speaker.text.is_empty() {
                let outcome = speaker.done.as_ref().map_or(TurnOutcome::Cancelled, |(outcome, _)| *outcome);
                self.report.answers.push(Answer {
                    capsule: speaker.capsule.clone(),
                    text: speaker.text.clone(),
                    outcome,
                });
            }
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frontend that writes what it is told into a transcript.
    #[derive(Default)]
    struct Transcript(String);

    impl Frontend for Transcript {
        fn begin_answer(&mut self, speaker: Option<&str>) -> std::io::Result<()> {
            self.0.push_str(&format!("<{}>", speaker.unwrap_or("")));
            Ok(())
        }
        fn text(&mut self, text: &str) -> std::io::Result<()> {
            self.0.push_str(text);
            Ok(())
        }
        fn end_answer(&mut self, outcome: TurnOutcome, message: &str) -> std::io::Result<()> {
            self.0.push_str(&format!("</{outcome:?}{message}>"));
            Ok(())
        }
        fn tool_call(&mut self, _: &str, _: &Value) -> std::io::Result<()> {
            Ok(())
        }
        fn tool_result(&mut self, _: &str, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn command_output(&mut self, text: &str) -> std::io::Result<()> {
            self.0.push_str(&format!("[{text}]"));
            Ok(())
        }
        fn notice(&mut self, _: &str) -> std::io::Result<()> {
            Ok(())
        }
        fn approve(&mut self, _: &Question) -> ApprovalDecision {
            ApprovalDecision::Deny
        }
        fn elicit(&mut self, _: &str, _: &str) -> Option<String> {
            None
        }
        fn interrupt(&mut self) -> Interrupt {
            Interrupt::None
        }
        fn cancelling(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn state<'a>(frontend: &'a mut Transcript, answerers: &[(Uuid, &str)]) -> State<'a, Transcript> {
        State {
            frontend,
            session: "s".into(),
            expected: Some(Some(answerers.iter().map(|(id, name)| (*id, (*name).to_owned())).collect())),
            speakers: Vec::new(),
            live: None,
            several: answerers.len() > 1,
            report: Report { end: End::Answered, answers: Vec::new(), tool_calls: Vec::new(), denied: 0 },
        }
    }

    #[test]
    fn two_answers_never_interleave_and_the_turn_waits_for_both() {
        let (slow, quick) = (Uuid::new_v4(), Uuid::new_v4());
        let mut frontend = Transcript::default();
        let mut turn = state(&mut frontend, &[(slow, "orchestrator"), (quick, "hello")]);
        turn.piece(slow, "Hel", None).expect("piece");
        turn.piece(quick, "hello, hi", Some((TurnOutcome::Answered, "hello, hi".into()))).expect("piece");
        assert!(!turn.complete(), "the orchestrator has not finished");
        turn.piece(slow, "lo", None).expect("piece");
        turn.piece(slow, "", Some((TurnOutcome::Answered, String::new()))).expect("piece");
        assert!(turn.complete());
        let answers: Vec<String> = turn.report.answers.iter().map(|a| a.text.clone()).collect();
        assert_eq!(answers, ["Hello", "hello, hi"]);
        assert_eq!(frontend.0, "<orchestrator>Hello</Answered><hello>hello, hi</Answered>");
    }

    #[test]
    fn a_failed_answer_keeps_its_text_and_reports_the_message_apart() {
        let source = Uuid::new_v4();
        let mut frontend = Transcript::default();
        let mut turn = state(&mut frontend, &[(source, "orchestrator")]);
        turn.piece(source, "partial ", None).expect("piece");
        turn.piece(source, "\nLLM error: HTTP 500", Some((TurnOutcome::Failed, "LLM error: HTTP 500".into())))
            .expect("piece");
        assert!(turn.complete());
        assert_eq!(turn.report.failure().map(|a| a.text.as_str()), Some("partial "));
        assert_eq!(frontend.0, "<>partial </FailedLLM error: HTTP 500>");
    }
}
