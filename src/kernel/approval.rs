//! Runtime approvals: a capsule asks, a person answers, silence means no.
//!
//! The request goes out as `ApprovalRequired` on `astrid.v1.approval` (to every connected
//! frontend) and the answer is awaited on `astrid.v1.approval.response.<id>`, subscribed to
//! *before* the request is published so a fast answer cannot be missed. Only a socket
//! client may answer (a message from the kernel itself is ignored).
//!
//! Decisions, failing closed (the reference once treated anything but `"deny"` as yes):
//! `approve` (this once), `approve_session` (until the answering client disconnects),
//! `approve_always` (persisted; survives restarts, listable and revocable); any other
//! string, and no answer within the timeout, is a deny.
//!
//! Allowances are scoped to (principal, capsule, action, resource): one capsule's "always"
//! never answers for another capsule.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::bus::{Bus, BusMessage, Origin, SubscriberId};
use crate::store::{KvError, KvStore, Namespace};
use crate::types::{IpcMessage, IpcPayload, SYSTEM_SESSION_UUID};

/// Where approval requests are published.
pub const APPROVAL_TOPIC: &str = "astrid.v1.approval";
/// Prefix of the per-request answer topic.
pub const RESPONSE_PREFIX: &str = "astrid.v1.approval.response.";
/// How long a request waits for an answer before it is denied.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted action text.
const MAX_ACTION: usize = 256;
/// Longest resource text kept (longer ones are cut).
const MAX_RESOURCE: usize = 1024;

/// What a capsule wants a person to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// The principal the capsule acts for.
    pub principal: String,
    /// The capsule asking.
    pub capsule: String,
    /// What it would do (for example `fs.write`).
    pub action: String,
    /// To what (for example `src/main.rs`).
    pub resource: String,
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
        /// `deny`, `unknown decision "…"`, `timeout after 60 s`, `invalid request: …`.
        reason: String,
    },
}

/// A decision string, parsed failing closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `approve`.
    Once,
    /// `approve_session`.
    Session,
    /// `approve_always`.
    Always,
    /// `deny` or anything unrecognised.
    Deny,
}

impl Decision {
    /// Parses a decision; anything but the three approvals is a deny.
    pub fn parse(text: &str) -> Self {
        match text {
            "approve" => Self::Once,
            "approve_session" => Self::Session,
            "approve_always" => Self::Always,
            _ => Self::Deny,
        }
    }
}

/// A standing permission created by `approve_session` or `approve_always`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Identifier for `astrid caps revoke`.
    pub id: String,
    /// Principal it applies to.
    pub principal: String,
    /// Capsule it applies to.
    pub capsule: String,
    /// Action it allows.
    pub action: String,
    /// Resource it allows.
    pub resource: String,
    /// `session` or `always`.
    pub scope: String,
    /// When it was granted.
    pub created_at: DateTime<Utc>,
}

impl Allowance {
    fn covers(&self, request: &ApprovalRequest) -> bool {
        self.principal == request.principal
            && self.capsule == request.capsule
            && self.action == request.action
            && self.resource == request.resource
    }
}

const ALLOWANCES: &str = "allowances";

/// The approval broker.
#[derive(Debug)]
pub struct Approvals {
    bus: Bus,
    store: KvStore,
    timeout: Duration,
    /// Session allowances with the client whose disconnect ends them.
    session: Mutex<Vec<(SubscriberId, Allowance)>>,
    /// "Always" allowances, mirrored from the store (written through, flushed).
    always: Mutex<Vec<Allowance>>,
    /// The runtime whose timer bounds the wait: capsules ask from threads of their own, which
    /// have no runtime, and a tokio timer made outside one panics.
    runtime: Option<tokio::runtime::Handle>,
}

impl Approvals {
    /// Loads the persisted allowances.
    pub fn new(bus: Bus, store: KvStore, timeout: Duration) -> Result<Self, KvError> {
        let namespace = Namespace::system(ALLOWANCES);
        let mut always = Vec::new();
        for key in store.list_keys(&namespace, "")? {
            let Some(bytes) = store.get(&namespace, &key)? else { continue };
            match serde_json::from_slice::<Allowance>(&bytes) {
                Ok(allowance) => always.push(allowance),
                Err(e) => log::error!("ignoring unreadable allowance {key}: {e}"),
            }
        }
        Ok(Self {
            bus,
            store,
            timeout,
            session: Mutex::new(Vec::new()),
            always: Mutex::new(always),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    fn session_allowances(&self) -> MutexGuard<'_, Vec<(SubscriberId, Allowance)>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn always_allowances(&self) -> MutexGuard<'_, Vec<Allowance>> {
        self.always.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks (or answers from a standing allowance) and waits for the decision.
    pub async fn request(&self, request: ApprovalRequest) -> ApprovalOutcome {
        let request = match sanitize(request) {
            Ok(request) => request,
            Err(reason) => return ApprovalOutcome::Denied { reason: format!("invalid request: {reason}") },
        };
        if let Some(rule) = self.standing_allowance(&request) {
            return ApprovalOutcome::Allowed { rule };
        }
        let request_id = Uuid::new_v4().to_string();
        let mut answers =
            self.bus.subscribe(format!("approval {request_id}"), &[&format!("{RESPONSE_PREFIX}{request_id}")]);
        let payload = IpcPayload::ApprovalRequired {
            request_id: request_id.clone(),
            action: request.action.clone(),
            resource: request.resource.clone(),
            reason: format!("Capsule '{}' requests approval", request.capsule),
        };
        self.bus.publish(BusMessage {
            message: IpcMessage::new(APPROVAL_TOPIC, payload, SYSTEM_SESSION_UUID),
            origin: Origin::Kernel,
            reply_to: None,
        });
        let answered = async {
            while let Some(message) = answers.recv().await {
                let Origin::Subscriber(client) = message.origin else { continue };
                if let IpcPayload::ApprovalResponse { request_id: answered, decision, .. } = &message.message.payload
                    && *answered == request_id
                {
                    return Some((client, decision.clone()));
                }
            }
            None
        };
        // The timer is made inside a runtime (the caller's, or the one the kernel was built
        // in) and the guard dropped before waiting: the caller may be a capsule's thread.
        let timed = {
            let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone());
            let Some(runtime) = runtime else {
                log::error!("approval {request_id}: no runtime to time the wait; denied");
                return ApprovalOutcome::Denied { reason: "no timer available".to_owned() };
            };
            let _entered = runtime.enter();
            tokio::time::timeout(self.timeout, answered)
        };
        let answer = timed.await;
        let Ok(Some((client, decision))) = answer else {
            return ApprovalOutcome::Denied { reason: format!("no answer within {} s", self.timeout.as_secs()) };
        };
        self.apply(Decision::parse(&decision), &decision, &request, client)
    }

    fn apply(
        &self,
        decision: Decision,
        text: &str,
        request: &ApprovalRequest,
        client: SubscriberId,
    ) -> ApprovalOutcome {
        let allowance = |scope: &str| Allowance {
            id: Uuid::new_v4().to_string(),
            principal: request.principal.clone(),
            capsule: request.capsule.clone(),
            action: request.action.clone(),
            resource: request.resource.clone(),
            scope: scope.to_owned(),
            created_at: Utc::now(),
        };
        match decision {
            Decision::Once => ApprovalOutcome::Allowed { rule: "approve".to_owned() },
            Decision::Session => {
                self.session_allowances().push((client, allowance("session")));
                ApprovalOutcome::Allowed { rule: "approve_session".to_owned() }
            }
            Decision::Always => {
                let allowance = allowance("always");
                if let Err(e) = self.persist(&allowance) {
                    // The person said yes to this request; only the "always" part failed.
                    log::error!("cannot persist allowance {}: {e}; it applies this once", allowance.id);
                } else {
                    self.always_allowances().push(allowance);
                }
                ApprovalOutcome::Allowed { rule: "approve_always".to_owned() }
            }
            Decision::Deny if text == "deny" => ApprovalOutcome::Denied { reason: "deny".to_owned() },
            Decision::Deny => {
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
        let always = self.always_allowances();
        if let Some(found) = always.iter().find(|a| a.covers(request)) {
            return Some(format!("allowance {} (always)", found.id));
        }
        drop(always);
        let session = self.session_allowances();
        session.iter().find(|(_, a)| a.covers(request)).map(|(_, a)| format!("allowance {} (session)", a.id))
    }

    /// Ends the session allowances granted by `client` (called when it disconnects).
    pub fn end_session(&self, client: SubscriberId) -> usize {
        let mut session = self.session_allowances();
        let before = session.len();
        session.retain(|(owner, _)| *owner != client);
        before - session.len()
    }

    /// Every standing allowance, "always" first.
    pub fn list(&self) -> Vec<Allowance> {
        let mut all = self.always_allowances().clone();
        all.extend(self.session_allowances().iter().map(|(_, a)| a.clone()));
        all
    }

    /// Revokes the allowance with this id; returns whether one existed.
    pub fn revoke(&self, id: &str) -> Result<bool, KvError> {
        let mut always = self.always_allowances();
        if let Some(index) = always.iter().position(|a| a.id == id) {
            self.store.delete(&Namespace::system(ALLOWANCES), id)?;
            self.store.flush()?;
            always.remove(index);
            return Ok(true);
        }
        drop(always);
        let mut session = self.session_allowances();
        let before = session.len();
        session.retain(|(_, a)| a.id != id);
        Ok(session.len() < before)
    }
}

/// Strips control characters (they could forge lines in a terminal prompt) and bounds sizes.
fn sanitize(mut request: ApprovalRequest) -> Result<ApprovalRequest, String> {
    let clean = |text: &str| text.trim().chars().filter(|c| !c.is_control()).collect::<String>();
    request.action = clean(&request.action);
    request.resource = clean(&request.resource).chars().take(MAX_RESOURCE).collect();
    if request.action.is_empty() {
        return Err("empty action".to_owned());
    }
    if request.action.chars().count() > MAX_ACTION {
        return Err(format!("action longer than {MAX_ACTION} characters"));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::AstridHome;
    use crate::store::KvConfig;

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

    fn request(capsule: &str) -> ApprovalRequest {
        ApprovalRequest {
            principal: "default".into(),
            capsule: capsule.into(),
            action: "fs.write".into(),
            resource: "src/main.rs".into(),
        }
    }

    /// A frontend on the bus that answers the next approval request with `decision`.
    fn frontend(bus: &Bus, decision: &'static str) -> tokio::task::JoinHandle<SubscriberId> {
        let mut requests = bus.subscribe("frontend", &[APPROVAL_TOPIC]);
        let bus = bus.clone();
        tokio::spawn(async move {
            let message = requests.recv().await.expect("approval request");
            let IpcPayload::ApprovalRequired { request_id, .. } = &message.message.payload else {
                panic!("not a request")
            };
            let answer = IpcPayload::ApprovalResponse {
                request_id: request_id.clone(),
                decision: decision.into(),
                reason: None,
            };
            bus.publish(BusMessage {
                message: IpcMessage::new(format!("{RESPONSE_PREFIX}{request_id}"), answer, SYSTEM_SESSION_UUID),
                origin: Origin::Subscriber(requests.id()),
                reply_to: None,
            });
            requests.id()
        })
    }

    #[tokio::test]
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
            let approvals = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_secs(5)).expect("approvals");
            // A fresh capsule name each time, so no earlier allowance answers.
            let answerer = frontend(&s.bus, decision);
            let outcome = approvals.request(request(&format!("c{}", decision.len()))).await;
            answerer.await.expect("frontend");
            assert_eq!(matches!(outcome, ApprovalOutcome::Allowed { .. }), allowed, "{decision:?}: {outcome:?}");
            for allowance in approvals.list() {
                approvals.revoke(&allowance.id).expect("revoke");
            }
        }
    }

    #[tokio::test]
    async fn silence_is_a_deny() {
        let s = setup();
        let approvals = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_millis(200)).expect("approvals");
        let outcome = approvals.request(request("quiet")).await;
        assert_eq!(outcome, ApprovalOutcome::Denied { reason: "no answer within 0 s".into() });
    }

    #[tokio::test]
    async fn allowances_are_scoped_persisted_and_revocable() {
        let s = setup();
        let approvals = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_secs(5)).expect("approvals");
        let answerer = frontend(&s.bus, "approve_always");
        assert!(matches!(approvals.request(request("writer")).await, ApprovalOutcome::Allowed { .. }));
        answerer.await.expect("frontend");
        // Answered from the allowance, no frontend needed.
        let again = approvals.request(request("writer")).await;
        assert!(matches!(&again, ApprovalOutcome::Allowed { rule } if rule.contains("always")), "{again:?}");
        // Another capsule is not covered.
        let quick = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_millis(100)).expect("approvals");
        assert!(matches!(quick.request(request("other")).await, ApprovalOutcome::Denied { .. }));
        // It survives a restart (a new broker over the same store) and can be revoked.
        let listed = quick.list();
        assert_eq!(listed.len(), 1);
        assert!(matches!(quick.request(request("writer")).await, ApprovalOutcome::Allowed { .. }));
        assert!(quick.revoke(&listed[0].id).expect("revoke"));
        assert!(matches!(quick.request(request("writer")).await, ApprovalOutcome::Denied { .. }));
    }

    #[tokio::test]
    async fn session_allowances_end_with_the_answering_client() {
        let s = setup();
        let approvals = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_millis(300)).expect("approvals");
        let answerer = frontend(&s.bus, "approve_session");
        assert!(matches!(approvals.request(request("s")).await, ApprovalOutcome::Allowed { .. }));
        let client = answerer.await.expect("frontend");
        assert!(matches!(approvals.request(request("s")).await, ApprovalOutcome::Allowed { .. }));
        assert_eq!(approvals.end_session(client), 1);
        assert!(matches!(approvals.request(request("s")).await, ApprovalOutcome::Denied { .. }));
    }

    #[tokio::test]
    async fn answers_from_the_kernel_itself_and_control_characters_are_ignored() {
        let s = setup();
        let approvals = Approvals::new(s.bus.clone(), s.store.clone(), Duration::from_millis(300)).expect("approvals");
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
            bus.publish(BusMessage {
                message: IpcMessage::new(format!("{RESPONSE_PREFIX}{request_id}"), answer, SYSTEM_SESSION_UUID),
                origin: Origin::Kernel,
                reply_to: None,
            });
        });
        let mut forged = request("k");
        forged.action = "fs.\u{1b}[2Kwrite".into();
        assert!(matches!(approvals.request(forged).await, ApprovalOutcome::Denied { .. }));
        forger.await.expect("forger");
        let mut long = request("k");
        long.action = "x".repeat(300);
        assert!(
            matches!(approvals.request(long).await, ApprovalOutcome::Denied { reason } if reason.starts_with("invalid request"))
        );
    }
}
