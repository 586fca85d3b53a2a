//! Asking a person: one question put to the right frontends, answered by one of them, or a
//! no. Runtime approvals ([`super::approval`]: may a capsule or an MCP server do this?) and a
//! capsule's `elicit` (a value it declared in `[env]`, asked during its install hook) both
//! ask here, so both follow the same rules and the same limits.
//!
//! **Who is asked.** A question that descends from a client's turn (its [`Cause`], which the
//! kernel carried along the chain) goes to that connection only: one frontend's `--yes` never
//! approves another's write, and nobody sees the questions of a turn that is not theirs. Any
//! other question (a capsule acting on its own, an install hook) goes to every connected
//! client. When there is nobody to ask (the turn's connection is gone, no client is
//! connected) the answer is no, at once.
//!
//! **A connection nobody answers at.** A connection may say in its handshake that it answers
//! no questions (`astrid mcp serve` for an MCP client without elicitation). A question its
//! calls cause then goes to every other connected client instead (`astrid chat` in another
//! terminal), and among those a question for everyone reaches it does not count (it sees
//! it, and leaves it to the others); with nobody else, the answer is no at once, saying how
//! to allow it ([`Unanswered::NoFrontend`]).
//!
//! **Who may answer.** Only a client that was asked, on `<question topic>.response.<id>`
//! (subscribed to before the question goes out, so a quick answer is not missed). An answer
//! from a capsule, an MCP server, the kernel itself or a client that was not asked is
//! ignored, whatever id it names: the bus stamps who published it ([`Origin`]), not the
//! publisher.
//!
//! **When it ends without an answer.** After [`TIMEOUT`]; at once when the turn is cancelled
//! ([`Questions::withdraw`]) or every connection that was asked has closed
//! ([`Questions::connection_closed`]); and when the asker stops waiting (a capsule being
//! stopped drops the wait, and the question is forgotten with it).
//!
//! **Limits**, one set for every question (they were two: 60 s for approvals, 120 s for
//! `elicit`; control characters were stripped from approvals only; an elicited value had no
//! size limit):
//! - [`TIMEOUT`], 60 s. The approvals' limit won: a question asked during a turn has to be
//!   answered within the 60 s the orchestrator gives a turn's tools anyway, and an install
//!   hook's unanswered question is not lost (the install says how to give the value with
//!   `--env`, and `astrid chat` shows the onboarding notice).
//! - What a person reads is text, never terminal commands: control characters are removed
//!   (a details text keeps its newlines and tabs). An action is at most [`MAX_ACTION`]
//!   characters (a longer one is refused: allowances are keyed by it); a resource or a
//!   field's prompt is cut at [`MAX_LINE`] characters; details or a field's description at
//!   [`MAX_DETAILS`] bytes, saying so.
//! - An answer (a decision, or a value, or the values together) is at most [`MAX_ANSWER`]
//!   bytes; a longer one ends the question as a no.
//!
//! **An async wait, and how a capsule's thread waits on it.** The wait is a future: the MCP
//! bridge asks from a tokio task, and what ends a question (an answer on the bus, the timer,
//! a withdrawal, a closed connection) wakes it, nothing polls. A capsule asks from a
//! synchronous host call on a thread of its own: it blocks on the same future with
//! `wasm::wait::block_on_timeout` (a tiny executor that needs no runtime), bounded by
//! [`Questions::longest_wait`] so that this module's own timeout always ends it first. The
//! timer is made in the runtime the kernel was built in, since a capsule's thread has none.
//! The other way round, a blocking loop that async callers would run on a thread of their
//! own, would tie up a thread per question and look for closed connections by polling, as
//! `elicit` did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::bus::{Address, Bus, BusMessage, Origin, SubscriberId};
use super::cause::Cause;
pub use crate::types::topics::{APPROVAL_TOPIC, ELICIT_TOPIC};
use crate::types::{IpcMessage, IpcPayload, OnboardingField};

/// How long a question waits for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest action (characters): refused beyond, since an allowance is keyed by it.
pub const MAX_ACTION: usize = 256;
/// Longest resource or field prompt shown (characters); longer ones are cut.
pub const MAX_LINE: usize = 1024;
/// Longest details or field description shown (bytes); longer ones are cut, and say so.
pub const MAX_DETAILS: usize = 16 * 1024;
/// Longest answer (bytes): a decision, a value, or all the values together.
pub const MAX_ANSWER: usize = 16 * 1024;
/// How many cancelled requests are remembered (see [`Questions::withdraw_cause`]).
const REMEMBERED_CANCELS: usize = 256;
/// How much longer than the timeout a blocking caller may wait: a hang guard only.
const MARGIN: Duration = Duration::from_secs(5);

/// The topic the answer to question `id` on `topic` comes back on.
pub fn answer_topic(topic: &str, id: Uuid) -> String {
    // `APPROVAL_RESPONSE_PREFIX` and `ELICIT_RESPONSE_PREFIX` are these (types::topics tests it).
    format!("{topic}.response.{id}")
}

/// What a person is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// May a capsule (or an MCP server) do this? `ApprovalRequired` on [`APPROVAL_TOPIC`],
    /// answered with a decision.
    Approval {
        /// What it would do (for example `fs.write`).
        action: String,
        /// To what.
        resource: String,
        /// Who asks, in words (`Capsule 'tools-fs' requests approval`).
        reason: String,
        /// What will happen (a diff, the arguments).
        details: Option<String>,
        /// What "session" and "always" would cover, in words.
        scope: Option<String>,
    },
    /// What is this value a capsule declared? `ElicitRequest` on [`ELICIT_TOPIC`], answered
    /// with a value, values, or neither (the person cancelled).
    Value {
        /// The capsule asking.
        capsule: String,
        /// The field asked for.
        field: OnboardingField,
    },
}

impl Question {
    /// The question within the limits (see the module documentation), or why it cannot be
    /// asked.
    fn within_limits(self) -> Result<Self, Unanswered> {
        Ok(match self {
            Self::Approval { action, resource, reason, details, scope } => Self::Approval {
                action: action_text(&action)?,
                resource: line(&resource, MAX_LINE),
                reason: line(&reason, MAX_LINE),
                details: details.map(|details| shown_text(&details)),
                scope: scope.map(|scope| line(&scope, MAX_LINE)),
            },
            Self::Value { capsule, mut field } => {
                field.prompt = line(&field.prompt, MAX_LINE);
                field.description = field.description.map(|description| shown_text(&description));
                Self::Value { capsule, field }
            }
        })
    }

    fn topic(&self) -> &'static str {
        match self {
            Self::Approval { .. } => APPROVAL_TOPIC,
            Self::Value { .. } => ELICIT_TOPIC,
        }
    }

    fn payload(self, id: Uuid) -> IpcPayload {
        match self {
            Self::Approval { action, resource, reason, details, scope } => {
                IpcPayload::ApprovalRequired { request_id: id.to_string(), action, resource, reason, details, scope }
            }
            Self::Value { capsule, field } => IpcPayload::ElicitRequest { request_id: id, capsule_id: capsule, field },
        }
    }

    /// The answer `payload` gives to question `id` of this kind, if it is one.
    fn answer_in(&self, payload: &IpcPayload, id: Uuid) -> Option<Answer> {
        match (self, payload) {
            (Self::Approval { .. }, IpcPayload::ApprovalResponse { request_id, decision, .. })
                if *request_id == id.to_string() =>
            {
                Some(Answer::Decision(decision.clone()))
            }
            (Self::Value { .. }, IpcPayload::ElicitResponse { request_id, value, values }) if *request_id == id => {
                Some(Answer::Value { value: value.clone(), values: values.clone() })
            }
            _ => None,
        }
    }
}

/// A person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To an approval: `approve`, `approve_session`, `approve_always`, or anything else
    /// (which [`crate::types::ApprovalDecision::parse`] reads as a deny).
    Decision(String),
    /// To a value: one value, a list, or neither (cancelled).
    Value {
        /// A single value.
        value: Option<String>,
        /// A list of values.
        values: Option<Vec<String>>,
    },
}

impl Answer {
    fn len(&self) -> usize {
        match self {
            Self::Decision(decision) => decision.len(),
            Self::Value { value, values } => {
                value.as_ref().map_or(0, String::len) + values.iter().flatten().map(String::len).sum::<usize>()
            }
        }
    }
}

/// An answer and the connection that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The client (its bus subscription) that answered.
    pub client: SubscriberId,
    /// What it answered.
    pub answer: Answer,
}

/// Why a question ended without an answer; its text is what the audit trail records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    /// The question is not within the limits.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Nobody answered in time.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The connection whose turn asked was gone before the question went out.
    #[error("the connection whose turn asked is gone")]
    AskerGone,
    /// The connection whose turn asked closed while the question waited.
    #[error("the connection whose turn asked closed")]
    AskerClosed,
    /// A question of no turn: no client was connected, or every one that was asked closed.
    #[error("no frontend left to ask")]
    NobodyToAsk,
    /// The connection that caused it answers no questions (an MCP client without
    /// elicitation) and no other frontend was connected to ask.
    #[error(
        "nobody could be asked: the client that made the call cannot answer approvals and no Astrid frontend is connected; answer it in `astrid chat` (run it in another terminal), where \"always\" allows it from then on (see `astrid caps list`)"
    )]
    NoFrontend,
    /// The turn the question belongs to was cancelled.
    #[error("the turn was cancelled")]
    TurnCancelled,
    /// The answer was over [`MAX_ANSWER`] bytes.
    #[error("an answer of {0} bytes, over the {MAX_ANSWER}-byte limit")]
    TooLong(usize),
    /// The bus went away.
    #[error("the bus closed")]
    BusClosed,
    /// No runtime to time the wait with (never in the daemon).
    #[error("no timer available")]
    NoTimer,
}

/// A question waiting for its person.
#[derive(Debug)]
struct Pending {
    id: Uuid,
    /// The connection and session of the turn it belongs to.
    turn: Option<(SubscriberId, String)>,
    /// The kernel's id of the request it descends from ([`Cause::turn`]).
    cause: Option<Uuid>,
    /// The clients it went to, once it went out.
    asked: Option<Vec<SubscriberId>>,
    /// Ends it without an answer.
    end: Option<oneshot::Sender<Unanswered>>,
}

impl Pending {
    fn end(&mut self, why: Unanswered) {
        if let Some(end) = self.end.take() {
            let _ = end.send(why);
        }
    }
}

/// The questions waiting for a person, and how they are asked.
#[derive(Debug)]
pub struct Questions {
    bus: Bus,
    timeout: Duration,
    pending: Mutex<Vec<Pending>>,
    /// Connections that said in their handshake that nobody there answers questions, with
    /// who they act for (the other frontends are told whose call asks).
    silent: Mutex<HashMap<SubscriberId, String>>,
    /// Requests cancelled lately ([`Questions::withdraw_cause`]), newest last: a question one
    /// of them asks afterwards is a no at once.
    cancelled: Mutex<std::collections::VecDeque<Uuid>>,
    /// The runtime whose timer bounds the wait: capsules ask from threads of their own, which
    /// have no runtime, and a tokio timer made outside one panics.
    runtime: Option<tokio::runtime::Handle>,
}

impl Questions {
    /// Questions on `bus`, each waiting at most `timeout` ([`TIMEOUT`] in the daemon).
    pub fn new(bus: Bus, timeout: Duration) -> Self {
        Self {
            bus,
            timeout,
            pending: Mutex::new(Vec::new()),
            silent: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(std::collections::VecDeque::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Vec<Pending>> {
        // A poisoned lock means a panic while holding it; the list itself is still valid.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether anyone at the client `client` (acting for `label`) answers questions,
    /// as its handshake said; forgotten with [`Questions::connection_closed`].
    pub fn set_answers(&self, client: SubscriberId, answers: bool, label: Option<&str>) {
        let mut silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        if answers {
            silent.remove(&client);
        } else {
            silent.insert(client, label.map_or_else(|| format!("client {client}"), str::to_owned));
        }
    }

    fn silent_clients(&self) -> Vec<SubscriberId> {
        self.silent.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    /// Who the client `client` acts for, when nobody there answers questions.
    fn silent_label(&self, client: SubscriberId) -> Option<String> {
        self.silent.lock().unwrap_or_else(|e| e.into_inner()).get(&client).cloned()
    }

    /// How long a caller that blocks on [`Questions::ask`] may bound its wait by: longer
    /// than the timeout, so that the question's own end always comes first.
    pub fn longest_wait(&self) -> Duration {
        self.timeout + MARGIN
    }

    /// Asks `question` for `cause`'s turn (or, without one, of every connected client),
    /// published with `source_id`, and waits for the answer (see the module documentation).
    pub async fn ask(
        &self,
        question: Question,
        cause: Option<Arc<Cause>>,
        source_id: Uuid,
    ) -> Result<Answered, Unanswered> {
        let question = question.within_limits()?;
        if cause
            .as_ref()
            .is_some_and(|cause| self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).contains(&cause.turn))
        {
            return Err(Unanswered::TurnCancelled);
        }
        let id = Uuid::new_v4();
        let topic = question.topic();
        let mut answers = self.bus.subscribe(format!("question {id}"), &[&answer_topic(topic, id)]);
        let (end, ended) = oneshot::channel();
        let turn_client = cause.as_ref().map(|cause| cause.client);
        self.pending().push(Pending {
            id,
            turn: cause.as_ref().map(|cause| (cause.client, cause.session.clone())),
            cause: cause.as_ref().map(|cause| cause.turn),
            asked: None,
            end: Some(end),
        });
        let _forget = Forget { questions: self, id };
        let elsewhere = turn_client.and_then(|client| self.silent_label(client));
        let shown = match (question.clone(), &elsewhere) {
            // The other frontends are told whose call it is.
            (Question::Approval { action, resource, reason, details, scope }, Some(label)) => {
                let reason = line(&format!("{reason}, for a call of {label}"), MAX_LINE);
                Question::Approval { action, resource, reason, details, scope }
            }
            (question, _) => question,
        };
        let message = IpcMessage::new(topic, shown.payload(id), source_id);
        let (sent, nobody) = match turn_client {
            Some(client) if elsewhere.is_none() => {
                let message = BusMessage::from_kernel(message).to(Some(Address::Subscriber(client))).caused_by(cause);
                (self.bus.publish_to_clients(message), Unanswered::AskerGone)
            }
            // A connection nobody answers at: every other client, one by one (so that
            // connection is not among them).
            Some(client) => {
                let silent = self.silent_clients();
                let mut sent = Vec::new();
                for other in
                    self.bus.clients_subscribed(topic).into_iter().filter(|c| *c != client && !silent.contains(c))
                {
                    let message = BusMessage::from_kernel(message.clone()).to(Some(Address::Subscriber(other)));
                    sent.extend(self.bus.publish_to_clients(message));
                }
                (sent, Unanswered::NoFrontend)
            }
            // A question of no turn: to everyone; those nobody answers at do not count.
            None => {
                let silent = self.silent_clients();
                let sent = self.bus.publish_to_clients(BusMessage::from_kernel(message));
                (sent.into_iter().filter(|c| !silent.contains(c)).collect(), Unanswered::NobodyToAsk)
            }
        };
        let asked = self.went_to(id, sent, nobody)?;
        let answered = async {
            while let Some(message) = answers.recv().await {
                let Origin::Client { subscriber: client, .. } = message.origin else { continue };
                if !asked.contains(&client) {
                    log::warn!("question {id}: an answer from client {client}, which was not asked, ignored");
                    continue;
                }
                if let Some(answer) = question.answer_in(&message.message.payload, id) {
                    return match answer.len() {
                        len if len > MAX_ANSWER => Err(Unanswered::TooLong(len)),
                        _ => Ok(Answered { client, answer }),
                    };
                }
            }
            Err(Unanswered::BusClosed)
        };
        let decided = async {
            tokio::select! {
                answer = answered => answer,
                why = ended => Err(why.unwrap_or(Unanswered::BusClosed)),
            }
        };
        // The timer is made inside a runtime (the caller's, or the one the kernel was built
        // in) and the guard dropped before waiting: the caller may be a capsule's thread.
        let timed = {
            let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone());
            let Some(runtime) = runtime else {
                log::error!("question {id}: no runtime to time the wait; denied");
                return Err(Unanswered::NoTimer);
            };
            let _entered = runtime.enter();
            tokio::time::timeout(self.timeout, decided)
        };
        timed.await.unwrap_or(Err(Unanswered::Timeout(self.timeout)))
    }

    /// Records the clients question `id` went to, less those that closed meanwhile (their
    /// [`Questions::connection_closed`] may have come before this), or says nobody was asked.
    fn went_to(&self, id: Uuid, sent: Vec<SubscriberId>, nobody: Unanswered) -> Result<Vec<SubscriberId>, Unanswered> {
        let asked: Vec<SubscriberId> = sent.into_iter().filter(|client| self.bus.is_subscribed(*client)).collect();
        if asked.is_empty() {
            return Err(nobody);
        }
        if let Some(pending) = self.pending().iter_mut().find(|p| p.id == id) {
            pending.asked = Some(asked.clone());
        }
        Ok(asked)
    }

    /// Ends every question of `client`'s turns in `session` (the turn was cancelled).
    /// Returns how many there were.
    pub fn withdraw(&self, client: SubscriberId, session: &str) -> usize {
        let mut ended = 0;
        for pending in self.pending().iter_mut() {
            if pending.turn.as_ref().is_some_and(|(c, s)| *c == client && s == session) && pending.end.is_some() {
                pending.end(Unanswered::TurnCancelled);
                ended += 1;
            }
        }
        ended
    }

    /// Ends every question the request `turn` ([`Cause::turn`]) caused (a single tool call
    /// was cancelled). Returns how many there were.
    /// A question the request asks later is a no at once.
    pub fn withdraw_cause(&self, turn: Uuid) -> usize {
        {
            let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            if cancelled.len() >= REMEMBERED_CANCELS {
                cancelled.pop_front();
            }
            cancelled.push_back(turn);
        }
        let mut ended = 0;
        for pending in self.pending().iter_mut().filter(|p| p.cause == Some(turn) && p.end.is_some()) {
            pending.end(Unanswered::TurnCancelled);
            ended += 1;
        }
        ended
    }

    /// `client`'s connection closed: its turns' questions end, and so does any other question
    /// it was the last connection asked. Returns how many ended.
    pub fn connection_closed(&self, client: SubscriberId) -> usize {
        self.silent.lock().unwrap_or_else(|e| e.into_inner()).remove(&client);
        let mut ended = 0;
        for pending in self.pending().iter_mut().filter(|p| p.end.is_some()) {
            if pending.turn.as_ref().is_some_and(|(c, _)| *c == client) {
                pending.end(Unanswered::AskerClosed);
                ended += 1;
            } else if let Some(asked) = pending.asked.as_mut()
                && asked.contains(&client)
            {
                asked.retain(|c| *c != client);
                if asked.is_empty() {
                    pending.end(Unanswered::NobodyToAsk);
                    ended += 1;
                }
            }
        }
        ended
    }
}

/// Forgets a question however its wait ends, a caller that stops waiting included.
struct Forget<'a> {
    questions: &'a Questions,
    id: Uuid,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.questions.pending().retain(|p| p.id != self.id);
    }
}

/// `text` on one line, without control characters, cut at `max` characters.
pub fn line(text: &str, max: usize) -> String {
    text.trim().chars().filter(|c| !c.is_control()).take(max).collect()
}

/// An action as asked: one line, not empty, at most [`MAX_ACTION`] characters.
pub fn action_text(action: &str) -> Result<String, Unanswered> {
    let clean: String = action.trim().chars().filter(|c| !c.is_control()).collect();
    if clean.is_empty() {
        return Err(Unanswered::Invalid("empty action".to_owned()));
    }
    if clean.chars().count() > MAX_ACTION {
        return Err(Unanswered::Invalid(format!("action longer than {MAX_ACTION} characters")));
    }
    Ok(clean)
}

/// Text shown to a person as is: its lines kept (a diff is lines), nothing else a terminal
/// would act on, cut at [`MAX_DETAILS`] bytes with a note saying so.
pub fn shown_text(text: &str) -> String {
    let mut clean: String = text.chars().filter(|c| *c == '\n' || *c == '\t' || !c.is_control()).collect();
    if clean.len() > MAX_DETAILS {
        let mut end = MAX_DETAILS;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean.push_str("\n[… cut]");
    }
    clean
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::kernel::bus::{SubscriberKind, Subscription};
    use crate::types::{OnboardingFieldType, SYSTEM_SESSION_UUID};

    fn field(key: &str) -> OnboardingField {
        OnboardingField {
            key: key.to_owned(),
            prompt: format!("{key}?\u{1b}[2K"),
            description: Some("line one\nline two\u{7}".to_owned()),
            field_type: OnboardingFieldType::Secret,
            default: None,
            placeholder: None,
        }
    }

    fn value_question() -> Question {
        Question::Value { capsule: "fetch".into(), field: field("TOKEN") }
    }

    fn client(bus: &Bus) -> Subscription {
        bus.subscribe_as("client", SubscriberKind::Client, &[APPROVAL_TOPIC, ELICIT_TOPIC])
    }

    /// The next question `client` sees: its id and payload.
    async fn question(client: &mut Subscription) -> (Uuid, IpcPayload) {
        let message = client.recv().await.expect("question");
        let id = match &message.message.payload {
            IpcPayload::ElicitRequest { request_id, .. } => *request_id,
            IpcPayload::ApprovalRequired { request_id, .. } => request_id.parse().expect("uuid"),
            other => panic!("not a question: {other:?}"),
        };
        (id, message.message.payload.clone())
    }

    fn answer(bus: &Bus, from: Origin, id: Uuid, value: &str) {
        let payload = IpcPayload::ElicitResponse { request_id: id, value: Some(value.to_owned()), values: None };
        bus.publish(BusMessage::from(
            from,
            IpcMessage::new(answer_topic(ELICIT_TOPIC, id), payload, SYSTEM_SESSION_UUID),
        ));
    }

    fn from_client(client: &Subscription) -> Origin {
        Origin::Client { subscriber: client.id(), connection: 1 }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_client_that_was_asked_answers_and_what_it_reads_is_plain_text() {
        let bus = Bus::new();
        let questions = Arc::new(Questions::new(bus.clone(), TIMEOUT));
        let mut asked = client(&bus);
        let waiting = tokio::spawn({
            let questions = Arc::clone(&questions);
            async move { questions.ask(value_question(), None, SYSTEM_SESSION_UUID).await }
        });
        let (id, payload) = question(&mut asked).await;
        let IpcPayload::ElicitRequest { field, .. } = payload else { panic!() };
        assert_eq!(field.prompt, "TOKEN?[2K", "no escape reaches a terminal");
        assert_eq!(field.description.as_deref(), Some("line one\nline two"));
        // Not asked (it connected afterwards), a capsule, an MCP server, the kernel: ignored.
        let late = client(&bus);
        answer(&bus, from_client(&late), id, "forged");
        answer(&bus, Origin::Capsule { name: "spy".into(), instance: Uuid::new_v4() }, id, "forged");
        answer(&bus, Origin::McpServer { name: "spy".into() }, id, "forged");
        answer(&bus, Origin::Kernel, id, "forged");
        answer(&bus, from_client(&asked), id, "sk-1");
        let answered = waiting.await.expect("task").expect("answered");
        assert_eq!(answered.client, asked.id());
        assert_eq!(answered.answer, Answer::Value { value: Some("sk-1".into()), values: None });
        assert!(questions.pending().is_empty(), "forgotten once answered");
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_to_ask_is_a_no_at_once_and_so_is_the_last_connection_asked_closing() {
        let bus = Bus::new();
        let questions = Arc::new(Questions::new(bus.clone(), TIMEOUT));
        assert_eq!(questions.ask(value_question(), None, SYSTEM_SESSION_UUID).await, Err(Unanswered::NobodyToAsk));
        let gone = Cause::new(999, "s", None);
        assert_eq!(questions.ask(value_question(), Some(gone), SYSTEM_SESSION_UUID).await, Err(Unanswered::AskerGone));
        let (mut first, mut second) = (client(&bus), client(&bus));
        let waiting = tokio::spawn({
            let questions = Arc::clone(&questions);
            async move { questions.ask(value_question(), None, SYSTEM_SESSION_UUID).await }
        });
        question(&mut first).await;
        question(&mut second).await;
        let (first_id, second_id) = (first.id(), second.id());
        drop(first);
        assert_eq!(questions.connection_closed(first_id), 0, "one asked connection is left");
        drop(second);
        assert_eq!(questions.connection_closed(second_id), 1);
        assert_eq!(waiting.await.expect("task"), Err(Unanswered::NobodyToAsk));
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_of_a_connection_nobody_answers_at_goes_to_the_others_and_never_to_it() {
        let bus = Bus::new();
        let questions = Arc::new(Questions::new(bus.clone(), TIMEOUT));
        let mut serve = client(&bus);
        questions.set_answers(serve.id(), false, Some("claude-code 1.0"));
        let cause = Cause::new(serve.id(), "tool-calls", None);
        assert_eq!(
            questions.ask(value_question(), Some(Arc::clone(&cause)), SYSTEM_SESSION_UUID).await,
            Err(Unanswered::NoFrontend),
            "nobody else to ask: a no at once"
        );
        let mut chat = client(&bus);
        let waiting = tokio::spawn({
            let questions = Arc::clone(&questions);
            let cause = Arc::clone(&cause);
            async move { questions.ask(value_question(), Some(cause), SYSTEM_SESSION_UUID).await }
        });
        let (id, _) = question(&mut chat).await;
        answer(&bus, from_client(&chat), id, "v");
        assert_eq!(waiting.await.expect("task").map(|a| a.client), Ok(chat.id()));
        assert!(serve.try_recv().is_none(), "the connection that cannot answer was never asked");
        // A cancelled request's later question is a no at once.
        questions.withdraw_cause(cause.turn);
        assert_eq!(
            questions.ask(value_question(), Some(cause), SYSTEM_SESSION_UUID).await,
            Err(Unanswered::TurnCancelled)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_turn_a_long_answer_and_silence_end_a_question_as_a_no() {
        let bus = Bus::new();
        let questions = Arc::new(Questions::new(bus.clone(), Duration::from_secs(5)));
        let mut asker = client(&bus);
        let cause = Cause::new(asker.id(), "chat", None);
        let ask = |cause: Option<Arc<Cause>>| {
            let questions = Arc::clone(&questions);
            tokio::spawn(async move { questions.ask(value_question(), cause, SYSTEM_SESSION_UUID).await })
        };
        let cancelled = ask(Some(Arc::clone(&cause)));
        question(&mut asker).await;
        assert_eq!(questions.withdraw(asker.id(), "other session"), 0);
        assert_eq!(questions.withdraw(asker.id(), "chat"), 1);
        assert_eq!(cancelled.await.expect("task"), Err(Unanswered::TurnCancelled));
        let long = ask(Some(Arc::clone(&cause)));
        let (id, _) = question(&mut asker).await;
        answer(&bus, from_client(&asker), id, &"x".repeat(MAX_ANSWER + 1));
        assert_eq!(long.await.expect("task"), Err(Unanswered::TooLong(MAX_ANSWER + 1)));
        let silent = ask(Some(cause));
        question(&mut asker).await;
        assert_eq!(silent.await.expect("task"), Err(Unanswered::Timeout(Duration::from_secs(5))));
        assert!(questions.pending().is_empty());
    }

    #[test]
    fn a_blocking_caller_that_stops_waiting_leaves_nothing_behind() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let bus = Bus::new();
        let questions = runtime.block_on(async { Questions::new(bus.clone(), TIMEOUT) });
        let _asked = client(&bus);
        // A capsule's thread, stopped while it waits: the wait is dropped where it stands.
        let mut wait = Box::pin(questions.ask(value_question(), None, SYSTEM_SESSION_UUID));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut context).is_pending(), "nobody answered");
        assert_eq!(questions.pending().len(), 1);
        drop(wait);
        assert!(questions.pending().is_empty(), "the question is forgotten with its wait");
        assert!(questions.longest_wait() > TIMEOUT);
    }

    #[test]
    fn limits_cut_what_is_shown_and_refuse_what_keys_an_allowance() {
        assert_eq!(line("  a\u{1b}b\n", 10), "ab");
        assert_eq!(line(&"é".repeat(2000), MAX_LINE).chars().count(), MAX_LINE);
        assert!(action_text("").is_err() && action_text(&"x".repeat(MAX_ACTION + 1)).is_err());
        assert_eq!(action_text("fs.\u{1b}[2Kwrite"), Ok("fs.[2Kwrite".to_owned()));
        let long = shown_text(&"é".repeat(MAX_DETAILS));
        assert!(long.ends_with("\n[… cut]") && long.len() <= MAX_DETAILS + 16);
        assert_eq!(shown_text("a\n\tb\u{7}"), "a\n\tb");
    }
}
