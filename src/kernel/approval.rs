//! Runtime approvals: a capsule (or an MCP server's tool call) asks, a person answers,
//! silence means no.
//!
//! The question is asked like every question put to a person, through [`super::ask`]: as
//! `ApprovalRequired` on `astrid.v1.approval`, of the connection whose turn caused it (only it
//! may answer) or, for a request of no turn, of every connected client; it ends as a no after
//! the timeout, when the turn is cancelled, when the connections asked are gone. What is
//! particular to approvals lives here: standing allowances that answer without asking, and
//! what each decision grants.
//!
//! **What the person sees.** The request carries `details` (a write's diff, a tool call's
//! arguments; computed by the kernel side, capped) and `scope`, which says what "session"
//! and "always" would cover.
//!
//! Decisions, failing closed (the reference once treated anything but `"deny"` as yes):
//! `approve` (this once), `approve_session` (for that connection's session, until it
//! disconnects), `approve_always` (persisted; survives restarts, listable and revocable);
//! any other string, and no answer, is a deny.
//!
//! Allowances are scoped to (principal, asker, action) and a resource: exactly the one
//! approved, or, for a path, everything under the directory it is in (`write_file under
//! notes/`): what people mean by "allow writes for this session". One capsule's "always"
//! never answers for another capsule.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chrono::Utc;
use uuid::Uuid;

use super::ask::{self, Answer, Answered, Question, Questions};
use super::bus::{Origin, SubscriberId};
use super::cause::Cause;
use super::command_scope;
use crate::store::{KvError, KvStore, Namespace};
use crate::types::{ApprovalDecision, SYSTEM_SESSION_UUID};

/// What "session" and "always" would cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Exactly the resource asked about.
    Resource,
    /// Any resource under this directory of the workspace (`""`: the whole workspace); for
    /// requests whose resource is a workspace path.
    Under(String),
    /// For a command line (the resource): a prefix of words, when the line is simple enough
    /// for one to mean anything (see [`super::command_scope`]); else exactly the line.
    Command {
        /// The words "session" and "always" would cover (`cargo test`).
        prefix: Option<String>,
    },
}

impl Scope {
    /// The scope for a request on the workspace path `path`: the directory it is in.
    pub fn directory_of(path: &str) -> Self {
        let path = path.trim_start_matches("./").trim_end_matches('/');
        Self::Under(path.rsplit_once('/').map(|(dir, _)| dir.to_owned()).unwrap_or_default())
    }

    /// The scope for running the command line `line`.
    pub fn command(line: &str) -> Self {
        Self::Command { prefix: command_scope::prefix_of(line) }
    }
}

/// What a capsule (or an MCP server) wants a person to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// The principal the capsule acts for.
    pub principal: String,
    /// Who asks: a capsule instance or an MCP server. The audit trail names it, and its
    /// allowances are its own ([`ApprovalRequest::holder`]).
    pub asker: Origin,
    /// What it would do (for example `fs.write`).
    pub action: String,
    /// To what (for example `src/main.rs`).
    pub resource: String,
    /// What will happen, shown to the person (a diff, the arguments); capped.
    pub details: Option<String>,
    /// What "session" and "always" would cover.
    pub scope: Scope,
    /// The client request this one descends from (set by the kernel, never by a capsule).
    pub cause: Option<Arc<Cause>>,
}

impl ApprovalRequest {
    /// A request of `asker` for `action` on `resource`, exactly, with no details and no cause.
    pub fn new(principal: &str, asker: Origin, action: &str, resource: &str) -> Self {
        Self {
            principal: principal.to_owned(),
            asker,
            action: action.to_owned(),
            resource: resource.to_owned(),
            details: None,
            scope: Scope::Resource,
            cause: None,
        }
    }

    /// Whom the allowances this request makes or uses belong to: the capsule's name, or
    /// `mcp:<server>` (the name persisted allowances have always used).
    pub fn holder(&self) -> String {
        match &self.asker {
            Origin::Capsule { name, .. } => name.clone(),
            Origin::McpServer { name } => format!("mcp:{name}"),
            Origin::Client { connection, .. } => format!("client#{connection}"),
            Origin::Kernel => "kernel".to_owned(),
        }
    }

    /// What an allowance made from this request covers, in words.
    fn scope_text(&self) -> String {
        match &self.scope {
            Scope::Resource => format!("{} on {}", self.action, self.resource),
            Scope::Under(dir) if dir.is_empty() => format!("{} anywhere in the workspace", self.action),
            Scope::Under(dir) => format!("{} under {dir}/", self.action),
            Scope::Command { prefix: Some(prefix) } => {
                format!("commands that start with `{prefix}` (plain ones: no ; | & > $ and the like)")
            }
            Scope::Command { prefix: None } => "exactly this command line".to_owned(),
        }
    }
}

/// The answer, with the rule that produced it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Go ahead.
    Allowed {
        /// `approve`, `approve_session`, `approve_always`, or `allowance <id>`.
        rule: String,
    },
    /// Do not.
    Denied {
        /// `deny`, `unknown decision "…"`, or why nobody answered ([`ask::Unanswered`]).
        reason: String,
    },
}

/// A standing permission, stored and listed (`ListCapabilities`) as the wire defines it.
pub use crate::types::management::Allowance;

impl Allowance {
    fn covers(&self, request: &ApprovalRequest) -> bool {
        let resource = match &request.scope {
            Scope::Under(_) => request.resource.trim_start_matches("./"),
            Scope::Resource | Scope::Command { .. } => request.resource.as_str(),
        };
        let resource_covered = match (&request.scope, self.under) {
            // Words, not path components: and never a line a shell could make more of.
            (Scope::Command { .. }, true) => command_scope::covers(&self.resource, resource),
            (_, true) => {
                self.resource.is_empty()
                    || resource == self.resource
                    || resource.strip_prefix(self.resource.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
            (_, false) => self.resource == request.resource,
        };
        self.principal == request.principal
            && self.capsule == request.holder()
            && self.action == request.action
            && resource_covered
    }
}

const ALLOWANCES: &str = "allowances";

/// A session allowance: for one session of a connection (granted by that connection, or by
/// another frontend answering for it), ended by its disconnect.
#[derive(Debug)]
struct SessionAllowance {
    client: SubscriberId,
    session: String,
    allowance: Allowance,
}

/// The approval broker.
#[derive(Debug)]
pub struct Approvals {
    questions: Arc<Questions>,
    store: KvStore,
    /// Session allowances with the client whose disconnect ends them.
    session: Mutex<Vec<SessionAllowance>>,
    /// "Always" allowances, mirrored from the store (written through, flushed); read from
    /// it when first needed, or by [`Approvals::load`], so the broker exists before the
    /// store has opened.
    always: OnceLock<Mutex<Vec<Allowance>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic while holding it; the list itself is still valid.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Approvals {
    /// A broker asking through `questions`, with the allowances persisted in `store`.
    pub fn new(questions: Arc<Questions>, store: KvStore) -> Self {
        Self { questions, store, session: Mutex::new(Vec::new()), always: OnceLock::new() }
    }

    /// Reads the persisted allowances now (the daemon does as soon as its store is open),
    /// so that a store that cannot be read stops the daemon rather than failing a later
    /// question.
    pub fn load(&self) -> Result<(), KvError> {
        if self.always.get().is_none() {
            let read = self.read_always()?;
            let _ = self.always.set(Mutex::new(read));
        }
        Ok(())
    }

    fn read_always(&self) -> Result<Vec<Allowance>, KvError> {
        let namespace = Namespace::system(ALLOWANCES);
        let mut always = Vec::new();
        for key in self.store.list_keys(&namespace, "")? {
            let Some(bytes) = self.store.get(&namespace, &key)? else { continue };
            match serde_json::from_slice::<Allowance>(&bytes) {
                Ok(allowance) => always.push(allowance),
                Err(e) => log::error!("ignoring unreadable allowance {key}: {e}"),
            }
        }
        Ok(always)
    }

    /// The "always" allowances (none, should the store not be readable: every request is
    /// then asked about).
    fn always(&self) -> MutexGuard<'_, Vec<Allowance>> {
        locked(self.always.get_or_init(|| {
            Mutex::new(self.read_always().unwrap_or_else(|e| {
                log::error!("cannot read the standing allowances: {e}; every request will be asked about");
                Vec::new()
            }))
        }))
    }

    /// Answers from a standing allowance, or asks a person and waits for the decision.
    pub async fn request(&self, request: ApprovalRequest) -> ApprovalOutcome {
        let request = match sanitize(request) {
            Ok(request) => request,
            Err(why) => return ApprovalOutcome::Denied { reason: why.to_string() },
        };
        if let Some(rule) = self.standing_allowance(&request) {
            return ApprovalOutcome::Allowed { rule };
        }
        let question = Question::Approval {
            action: request.action.clone(),
            resource: request.resource.clone(),
            reason: format!("Capsule '{}' requests approval", request.holder()),
            details: request.details.clone(),
            scope: Some(request.scope_text()),
        };
        match self.questions.ask(question, request.cause.clone(), SYSTEM_SESSION_UUID).await {
            Ok(Answered { client, answer: Answer::Decision(decision) }) => {
                self.apply(ApprovalDecision::parse(&decision), &decision, &request, client)
            }
            Ok(Answered { answer, .. }) => ApprovalOutcome::Denied { reason: format!("not a decision: {answer:?}") },
            Err(why) => ApprovalOutcome::Denied { reason: why.to_string() },
        }
    }

    fn apply(
        &self,
        decision: ApprovalDecision,
        text: &str,
        request: &ApprovalRequest,
        client: SubscriberId,
    ) -> ApprovalOutcome {
        let allowance = |scope: &str| {
            let (resource, under) = match &request.scope {
                Scope::Resource | Scope::Command { prefix: None } => (request.resource.clone(), false),
                Scope::Under(dir) => (dir.clone(), true),
                Scope::Command { prefix: Some(prefix) } => (prefix.clone(), true),
            };
            Allowance {
                id: Uuid::new_v4().to_string(),
                principal: request.principal.clone(),
                capsule: request.holder(),
                action: request.action.clone(),
                resource,
                under,
                scope: scope.to_owned(),
                created_at: Utc::now(),
            }
        };
        match decision {
            ApprovalDecision::Once => ApprovalOutcome::Allowed { rule: "approve".to_owned() },
            ApprovalDecision::Session => {
                // The session is the one whose request asked: when another frontend answered
                // for a connection nobody answers at (an MCP client's calls), it covers that
                // connection's calls, and ends with it.
                let (client, session) = request
                    .cause
                    .as_ref()
                    .map_or_else(|| (client, String::new()), |cause| (cause.client, cause.session.clone()));
                locked(&self.session).push(SessionAllowance { client, session, allowance: allowance("session") });
                ApprovalOutcome::Allowed { rule: "approve_session".to_owned() }
            }
            ApprovalDecision::Always => {
                let allowance = allowance("always");
                if let Err(e) = self.persist(&allowance) {
                    // The person said yes to this request; only the "always" part failed.
                    log::error!("cannot persist allowance {}: {e}; it applies this once", allowance.id);
                } else {
                    self.always().push(allowance);
                }
                ApprovalOutcome::Allowed { rule: "approve_always".to_owned() }
            }
            ApprovalDecision::Deny if text == "deny" => ApprovalOutcome::Denied { reason: "deny".to_owned() },
            ApprovalDecision::Deny => {
                ApprovalOutcome::Denied { reason: format!("unknown decision {text:?} (treated as deny)") }
            }
        }
    }

    fn persist(&self, allowance: &Allowance) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(allowance).unwrap_or_default();
        self.store.set(&Namespace::system(ALLOWANCES), &allowance.id, &bytes)?;
        self.store.flush().map(|_| ())
    }

    fn standing_allowance(&self, request: &ApprovalRequest) -> Option<String> {
        let always = self.always();
        if let Some(found) = always.iter().find(|a| a.covers(request)) {
            return Some(format!("allowance {} (always)", found.id));
        }
        drop(always);
        // A session allowance answers only for the connection and session that granted it.
        let cause = request.cause.as_ref()?;
        let session = locked(&self.session);
        session
            .iter()
            .find(|s| s.client == cause.client && s.session == cause.session && s.allowance.covers(request))
            .map(|s| format!("allowance {} (session)", s.allowance.id))
    }

    /// Ends the session allowances `client` granted (it disconnected; its questions end
    /// through [`Questions::connection_closed`]). Returns how many ended.
    pub fn end_session(&self, client: SubscriberId) -> usize {
        let mut session = locked(&self.session);
        let before = session.len();
        session.retain(|s| s.client != client);
        before - session.len()
    }

    /// Every standing allowance, "always" first.
    pub fn list(&self) -> Vec<Allowance> {
        let mut all = self.always().clone();
        all.extend(locked(&self.session).iter().map(|s| s.allowance.clone()));
        all
    }

    /// Revokes the allowance with this id; returns whether one existed.
    pub fn revoke(&self, id: &str) -> Result<bool, KvError> {
        let mut always = self.always();
        if let Some(index) = always.iter().position(|a| a.id == id) {
            self.store.delete(&Namespace::system(ALLOWANCES), id)?;
            self.store.flush()?;
            always.remove(index);
            return Ok(true);
        }
        drop(always);
        let mut session = locked(&self.session);
        let before = session.len();
        session.retain(|s| s.allowance.id != id);
        Ok(session.len() < before)
    }
}

/// The request within the limits every question to a person keeps (see [`super::ask`]), so
/// that allowances are looked up and made with what the person is shown.
fn sanitize(mut request: ApprovalRequest) -> Result<ApprovalRequest, ask::Unanswered> {
    request.action = ask::action_text(&request.action)?;
    request.resource = ask::line(&request.resource, ask::MAX_LINE);
    request.details = request.details.map(|details| ask::shown_text(&details));
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::home::AstridHome;
    use crate::kernel::ask::{APPROVAL_TOPIC, answer_topic};
    use crate::kernel::bus::{Bus, BusMessage, SubscriberKind};
    use crate::store::KvConfig;
    use crate::types::management::RUN_COMMAND_ACTION;
    use crate::types::{IpcMessage, IpcPayload};

    struct Setup {
        _tmp: tempfile::TempDir,
        bus: Bus,
        store: KvStore,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = KvStore::open(&AstridHome::at(tmp.path()), KvConfig::default()).expect("store");
        Setup { _tmp: tmp, bus: Bus::new(), store }
    }

    impl Setup {
        /// A broker whose questions wait `timeout`.
        fn approvals(&self, timeout: Duration) -> Approvals {
            Approvals::new(Arc::new(Questions::new(self.bus.clone(), timeout)), self.store.clone())
        }
    }

    fn request(capsule: &str) -> ApprovalRequest {
        let asker = Origin::Capsule { name: capsule.to_owned(), instance: Uuid::nil() };
        ApprovalRequest::new("default", asker, "fs.write", "src/main.rs")
    }

    /// The topic an answer to `request_id` goes on.
    fn answer_on(request_id: &str) -> String {
        answer_topic(APPROVAL_TOPIC, request_id.parse().expect("a uuid"))
    }

    /// A frontend on the bus that answers the next approval request it sees with `decision`;
    /// its id is known at once (a cause may name it).
    fn frontend(bus: &Bus, decision: &'static str) -> (SubscriberId, tokio::task::JoinHandle<SubscriberId>) {
        let mut requests = bus.subscribe_as("frontend", SubscriberKind::Client, &[APPROVAL_TOPIC]);
        let id = requests.id();
        let bus = bus.clone();
        let task = tokio::spawn(async move {
            let message = requests.recv().await.expect("approval request");
            let IpcPayload::ApprovalRequired { request_id, .. } = &message.message.payload else {
                panic!("not a request")
            };
            let answer = IpcPayload::ApprovalResponse {
                request_id: request_id.clone(),
                decision: decision.into(),
                reason: None,
            };
            bus.publish(BusMessage::from(
                Origin::Client { subscriber: requests.id(), connection: 1 },
                IpcMessage::new(answer_on(request_id), answer, SYSTEM_SESSION_UUID),
            ));
            // Stay connected until the test is done with the answer.
            tokio::time::sleep(Duration::from_millis(200)).await;
            requests.id()
        });
        (id, task)
    }

    fn caused(mut request: ApprovalRequest, client: SubscriberId, session: &str) -> ApprovalRequest {
        request.cause = Some(Cause::new(client, session, None));
        request
    }

    // Paused time: a timeout fires only once every task is idle, so an answer a frontend
    // task is about to give always comes first, however busy the machine.
    #[tokio::test(start_paused = true)]
    async fn every_decision_string_maps_failing_closed() {
        let s = setup();
        for (decision, allowed) in [
            ("approve", true),
            ("approve_session", true),
            ("approve_always", true),
            ("deny", false),
            ("Approve", false),
            ("yes", false),
            ("", false),
            ("approve_workspace", false),
        ] {
            let approvals = s.approvals(Duration::from_secs(5));
            // A fresh capsule name each time, so no earlier allowance answers.
            let (_, answerer) = frontend(&s.bus, decision);
            let outcome = approvals.request(request(&format!("c{}", decision.len()))).await;
            answerer.await.expect("frontend");
            assert_eq!(matches!(outcome, ApprovalOutcome::Allowed { .. }), allowed, "{decision:?}: {outcome:?}");
            for allowance in approvals.list() {
                approvals.revoke(&allowance.id).expect("revoke");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_a_deny() {
        let s = setup();
        let approvals = s.approvals(Duration::from_millis(200));
        // A frontend is connected, and says nothing.
        let _silent = s.bus.subscribe_as("silent", SubscriberKind::Client, &[APPROVAL_TOPIC]);
        let outcome = approvals.request(request("quiet")).await;
        assert_eq!(outcome, ApprovalOutcome::Denied { reason: "no answer within 0 s".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn allowances_are_scoped_persisted_and_revocable() {
        let s = setup();
        let approvals = s.approvals(Duration::from_secs(5));
        let (_, answerer) = frontend(&s.bus, "approve_always");
        assert!(matches!(approvals.request(request("writer")).await, ApprovalOutcome::Allowed { .. }));
        answerer.await.expect("frontend");
        // Answered from the allowance, no frontend needed.
        let again = approvals.request(request("writer")).await;
        assert!(matches!(&again, ApprovalOutcome::Allowed { rule } if rule.contains("always")), "{again:?}");
        // Another capsule is not covered.
        let quick = s.approvals(Duration::from_millis(100));
        assert!(matches!(quick.request(request("other")).await, ApprovalOutcome::Denied { .. }));
        // It survives a restart (a new broker over the same store) and can be revoked.
        let listed = quick.list();
        assert_eq!(listed.len(), 1);
        assert!(matches!(quick.request(request("writer")).await, ApprovalOutcome::Allowed { .. }));
        assert!(quick.revoke(&listed[0].id).expect("revoke"));
        assert!(matches!(quick.request(request("writer")).await, ApprovalOutcome::Denied { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn session_allowances_hold_for_the_granting_connection_and_session_and_end_with_it() {
        let s = setup();
        let approvals = s.approvals(Duration::from_millis(300));
        let (client, answerer) = frontend(&s.bus, "approve_session");
        assert!(matches!(
            approvals.request(caused(request("s"), client, "chat")).await,
            ApprovalOutcome::Allowed { .. }
        ));
        assert!(matches!(
            approvals.request(caused(request("s"), client, "chat")).await,
            ApprovalOutcome::Allowed { .. }
        ));
        assert!(
            matches!(approvals.request(caused(request("s"), client, "chat")).await, ApprovalOutcome::Allowed { rule } if rule.contains("session"))
        );
        // Another connection (a concurrent `astrid run`) is not covered by this one's "session".
        let (other, _other_task) = frontend(&s.bus, "deny");
        assert!(matches!(approvals.request(caused(request("s"), other, "run")).await, ApprovalOutcome::Denied { .. }));
        // Another session of the same connection is not covered either.
        assert!(matches!(
            approvals.request(caused(request("s"), client, "other")).await,
            ApprovalOutcome::Denied { .. }
        ));
        assert_eq!(approvals.end_session(client), 1);
        answerer.await.expect("frontend");
        // A connection that is gone is not asked at all.
        let gone = approvals.request(caused(request("s"), client, "chat")).await;
        assert!(matches!(&gone, ApprovalOutcome::Denied { reason } if reason.contains("gone")), "{gone:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_goes_to_the_connection_whose_turn_asked_and_only_it_may_answer() {
        let s = setup();
        let questions = Arc::new(Questions::new(s.bus.clone(), Duration::from_secs(2)));
        let approvals = Approvals::new(Arc::clone(&questions), s.store.clone());
        let mut asker = s.bus.subscribe_as("asker", SubscriberKind::Client, &[APPROVAL_TOPIC]);
        // A bystander that would approve anything it sees (`astrid run --yes`).
        let (_, bystander) = frontend(&s.bus, "approve");
        let outcome = approvals.request(caused(request("w"), asker.id(), "chat")).await;
        assert!(matches!(&outcome, ApprovalOutcome::Denied { reason } if reason.contains("no answer")), "{outcome:?}");
        assert!(asker.try_recv().is_some(), "the asking connection saw the question");
        assert!(!bystander.is_finished(), "the bystander never saw it");
        bystander.abort();
        // An answer from a connection that was not asked is ignored even if it names the id.
        let approvals = std::sync::Arc::new(approvals);
        let waiting = tokio::spawn({
            let approvals = std::sync::Arc::clone(&approvals);
            let asker = asker.id();
            async move { approvals.request(caused(request("w"), asker, "chat")).await }
        });
        let question = asker.recv().await.expect("question");
        let IpcPayload::ApprovalRequired { request_id, details, scope, .. } = &question.message.payload else {
            panic!()
        };
        assert_eq!(details, &None);
        assert_eq!(scope.as_deref(), Some("fs.write on src/main.rs"));
        let forger = s.bus.subscribe_as("forger", SubscriberKind::Client, &[]);
        let answer =
            IpcPayload::ApprovalResponse { request_id: request_id.clone(), decision: "approve".into(), reason: None };
        s.bus.publish(BusMessage::from(
            Origin::Client { subscriber: forger.id(), connection: 9 },
            IpcMessage::new(answer_on(request_id), answer, SYSTEM_SESSION_UUID),
        ));
        // The turn is cancelled: the request is denied at once, not after the timeout.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(questions.withdraw(asker.id(), "chat"), 1);
        let outcome = waiting.await.expect("request");
        assert_eq!(outcome, ApprovalOutcome::Denied { reason: "the turn was cancelled".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_allowance_covers_its_directory_and_nothing_beside_it() {
        let s = setup();
        let approvals = s.approvals(Duration::from_millis(300));
        let write = |path: &str| {
            let tools = Origin::Capsule { name: "tools-fs".into(), instance: Uuid::nil() };
            let mut request = ApprovalRequest::new("default", tools, "write_file", path);
            request.scope = Scope::directory_of(path);
            request
        };
        assert_eq!(write("notes/a.txt").scope_text(), "write_file under notes/");
        assert_eq!(write("a.txt").scope_text(), "write_file anywhere in the workspace");
        let (_, answerer) = frontend(&s.bus, "approve_always");
        assert!(matches!(approvals.request(write("notes/a.txt")).await, ApprovalOutcome::Allowed { .. }));
        answerer.await.expect("frontend");
        for covered in ["notes/b.txt", "notes/deep/c.txt", "./notes/d.txt"] {
            assert!(matches!(approvals.request(write(covered)).await, ApprovalOutcome::Allowed { .. }), "{covered}");
        }
        for outside in ["notesx/a.txt", "a.txt", "other/notes/a.txt"] {
            assert!(matches!(approvals.request(write(outside)).await, ApprovalOutcome::Denied { .. }), "{outside}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_allowance_covers_plain_lines_with_its_words_and_nothing_a_shell_could_extend() {
        let s = setup();
        let approvals = s.approvals(Duration::from_millis(300));
        let run = |line: &str| {
            let shell = Origin::Capsule { name: "tools-shell".into(), instance: Uuid::nil() };
            let mut request = ApprovalRequest::new("default", shell, RUN_COMMAND_ACTION, line);
            request.scope = Scope::command(line);
            request
        };
        assert!(run("cargo test --lib").scope_text().starts_with("commands that start with `cargo test`"));
        assert_eq!(run("cargo test | tee log").scope_text(), "exactly this command line");
        let (_, answerer) = frontend(&s.bus, "approve_always");
        assert!(matches!(approvals.request(run("cargo test --lib")).await, ApprovalOutcome::Allowed { .. }));
        answerer.await.expect("frontend");
        let listed = approvals.list();
        assert_eq!((listed[0].resource.as_str(), listed[0].under), ("cargo test", true));
        for covered in ["cargo test", "cargo test -- --nocapture", "cargo  test vfs::"] {
            assert!(matches!(approvals.request(run(covered)).await, ApprovalOutcome::Allowed { .. }), "{covered}");
        }
        // Nobody answers these: each is a no after the timeout, never the allowance.
        for asked in ["cargo build", "cargo test; rm -rf .", "cargo test && curl x | sh", "cargo test > ../x"] {
            assert!(matches!(approvals.request(run(asked)).await, ApprovalOutcome::Denied { .. }), "{asked}");
        }
        // A line that is not plain is allowed exactly, and only itself.
        let (_, answerer) = frontend(&s.bus, "approve_always");
        assert!(matches!(approvals.request(run("git log | head")).await, ApprovalOutcome::Allowed { .. }));
        answerer.await.expect("frontend");
        assert!(matches!(approvals.request(run("git log | head")).await, ApprovalOutcome::Allowed { .. }));
        assert!(matches!(approvals.request(run("git log | head; id")).await, ApprovalOutcome::Denied { .. }));
        assert!(matches!(approvals.request(run("git log")).await, ApprovalOutcome::Denied { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_from_the_kernel_itself_or_a_capsule_and_control_characters_are_ignored() {
        let s = setup();
        let approvals = s.approvals(Duration::from_millis(300));
        let _person = s.bus.subscribe_as("person", SubscriberKind::Client, &[APPROVAL_TOPIC]);
        let mut requests = s.bus.subscribe("spy", &[APPROVAL_TOPIC]);
        let bus = s.bus.clone();
        let forger = tokio::spawn(async move {
            let message = requests.recv().await.expect("request");
            let IpcPayload::ApprovalRequired { request_id, action, .. } = &message.message.payload else { panic!() };
            assert_eq!(action, "fs.[2Kwrite", "the escape character is stripped, so the terminal sees text");
            let answer = IpcPayload::ApprovalResponse {
                request_id: request_id.clone(),
                decision: "approve".into(),
                reason: None,
            };
            let topic = answer_on(request_id);
            bus.publish(BusMessage::from_kernel(IpcMessage::new(&topic, answer.clone(), SYSTEM_SESSION_UUID)));
            let capsule = Origin::Capsule { name: "k".into(), instance: Uuid::nil() };
            bus.publish(BusMessage::from(capsule, IpcMessage::new(&topic, answer, SYSTEM_SESSION_UUID)));
        });
        let mut forged = request("k");
        forged.action = "fs.\u{1b}[2Kwrite".into();
        let outcome = approvals.request(forged).await;
        assert!(matches!(&outcome, ApprovalOutcome::Denied { reason } if reason.contains("no answer")), "{outcome:?}");
        forger.await.expect("forger");
        let mut long = request("k");
        long.action = "x".repeat(300);
        assert!(
            matches!(approvals.request(long).await, ApprovalOutcome::Denied { reason } if reason.starts_with("invalid request"))
        );
    }
}
