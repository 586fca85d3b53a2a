//! The kernel: routing, registry and accounting, with no sockets, signals or terminal.
//!
//! The kernel owns the [`Bus`], the [`CapsuleRegistry`] and the [`ClientTracker`], and runs
//! the management router as a task. It is driven from outside: the IPC bridge publishes what
//! clients send, and the daemon decides when the process ends. The kernel only *asks* for a
//! shutdown ([`Kernel::request_shutdown`]); the daemon carries it out.

pub mod approval;
pub mod ask;
pub mod bus;
pub mod capability;
mod capsule_admin;
pub mod capsule_config;
pub mod capsule_sync;
pub mod capsules;
pub mod cause;
pub mod clients;
pub mod command_scope;
pub mod defaults;
pub mod dependencies;
pub mod grants;
pub mod install;
pub mod instructions;
pub mod manifest;
pub mod mcp_service;
pub mod model;
pub mod operator_kv;
pub mod prompts;
pub mod rate_limit;
pub mod router;
pub mod routine;
pub mod running_commands;
pub mod start_gate;
pub mod tool_call;
mod tool_listing;
pub mod topic;
pub mod watchdog;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use uuid::Uuid;

pub use bus::{Bus, BusMessage, Origin, Subscription};
pub use capsules::{CapsuleDirs, CapsuleRegistry};
pub use cause::Cause;
pub use clients::{ClientLease, ClientTracker};

use approval::{ApprovalOutcome, ApprovalRequest, Approvals};
use capability::Capability;
use grants::{GrantStatus, Grants};

use crate::audit::{Acknowledged, Actor, AuditTrail, Decision, NewEntry};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::store::{KvError, KvStore};
use crate::types::topics::CAPSULES_LOADED_TOPIC;
use crate::types::{CapsulesLoaded, DaemonStatus, IpcMessage, IpcPayload, SubscriberDrops};
use crate::vfs::{Vfs, VfsError};

/// What the kernel needs to know to start.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Session id: the `source_id` of kernel replies.
    pub session: Uuid,
    /// The workspace root (canonical).
    pub workspace: PathBuf,
    /// The Astrid home.
    pub home: AstridHome,
    /// Whether the daemon exits when idle (reported by `GetStatus`).
    pub ephemeral: bool,
    /// Whether the default capsule set embedded in the binary is registered.
    pub default_capsules: bool,
    /// What the daemon's environment configures for the default set's model provider.
    pub provider: defaults::ProviderEnvironment,
}

/// Why the daemon is shutting down. Logged as the real reason, unlike the reference which
/// logs "signal" whatever happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A signal (`SIGTERM`, `SIGINT`, `SIGHUP`).
    Signal(&'static str),
    /// A `Shutdown` management request, with the reason the client gave.
    Request(Option<String>),
    /// Ephemeral mode: no client for the idle period.
    IdleTimeout,
    /// The daemon cannot go on (its KV store could not be opened): it stops as for any
    /// other reason, then exits with a failure.
    Failed(String),
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(name) => write!(f, "signal {name}"),
            Self::Request(Some(reason)) => write!(f, "Shutdown request ({reason})"),
            Self::Request(None) => f.write_str("Shutdown request"),
            Self::IdleTimeout => f.write_str("idle timeout (ephemeral mode)"),
            Self::Failed(why) => write!(f, "failure: {why}"),
        }
    }
}

/// The audit trail cannot be written now: every decision that needs it is refused (fail
/// closed) until the writer can write again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuditUnwritable {
    /// What the writer failed on.
    pub reason: String,
}

/// Why a development capsule (`astrid capsule run`) was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevelopmentRefused {
    /// Registering grants capabilities, which needs the audit trail.
    #[error("refused: {0}")]
    AuditUnwritable(#[from] AuditUnwritable),
    /// The name is taken by an installed or running capsule.
    #[error("a capsule called {name} is already installed or running; remove it or rename the development copy")]
    NameTaken {
        /// The capsule.
        name: String,
    },
}

/// The stateful subsystems the daemon opens before the kernel starts.
#[derive(Debug)]
pub struct KernelState {
    /// The KV store (one sled database, opened once).
    pub store: KvStore,
    /// The audit trail.
    pub audit: AuditTrail,
    /// The workspace, behind its copy-on-write overlay.
    pub vfs: Vfs,
}

/// The running kernel.
#[derive(Debug)]
pub struct Kernel {
    config: KernelConfig,
    started: Instant,
    /// This process's id, read once: `getpid` is a system call each time (glibc caches
    /// nothing), and it was a quarter of the system calls a `GetStatus` made.
    pid: u32,
    bus: Bus,
    capsules: Mutex<CapsuleRegistry>,
    clients: ClientTracker,
    shutdown: watch::Sender<Option<ShutdownReason>>,
    store: KvStore,
    audit: AuditTrail,
    /// Routine events seen, and their repeats not yet written (see [`routine`]).
    routine: routine::Routine,
    /// The daemon's workspace (`--workspace`).
    vfs: Arc<Vfs>,
    /// Its root as `status` shows it, written once (the root never changes).
    workspace_shown: Box<str>,
    /// Other workspaces clients work in, opened on first use (each with its own overlay).
    workspaces: Mutex<Vec<Arc<Vfs>>>,
    /// The workspace each client connection named in its handshake.
    client_workspaces: Mutex<std::collections::HashMap<bus::SubscriberId, Arc<PathBuf>>>,
    /// How the audit trail names each client connection ([`Kernel::name_client`]): made
    /// once at its handshake, not formatted again for every request it makes.
    client_names: Mutex<std::collections::HashMap<bus::SubscriberId, Box<str>>>,
    /// Tools clients call (`CallTool`), in flight.
    tool_calls: tool_call::ToolCalls,
    grants: Grants,
    /// Questions waiting for a person (approvals and `elicit` alike).
    questions: Arc<ask::Questions>,
    approvals: Approvals,
    /// Bumped whenever the registry or a grant changes, so the capsule host can catch up.
    capsules_changed: watch::Sender<u64>,
    /// Which of those changes the capsule host has applied.
    capsules_applied: capsule_sync::AppliedChanges,
    /// Bumped by every rescan (boot, `ReloadCapsules`, install, remove): a capsule that gave
    /// up after its restarts is tried again then, and only then.
    rescans: std::sync::atomic::AtomicU64,
    /// The MCP host, once the daemon started one.
    mcp: std::sync::OnceLock<Arc<dyn mcp_service::McpService>>,
    /// The agent's model settings as of the last rescan (they are read from files).
    model: Mutex<Option<crate::types::ModelStatus>>,
    /// Commands capsules run in the sandbox, by turn: a cancel or a closed connection
    /// kills them.
    running_commands: running_commands::RunningCommands,
    /// The command sandbox, once the daemon has tried it on this machine (in the background
    /// at boot: readiness does not wait for the trial command).
    command_sandbox: watch::Sender<Option<Arc<crate::command_sandbox::Sandbox>>>,
    /// Closed while the boot's capsules start (after readiness): see [`start_gate`].
    start_gate: start_gate::StartGate,
}

impl Kernel {
    /// Creates the kernel with only the built-in capsules registered. Its KV store may still
    /// be opening: see [`Kernel::state_opened`].
    pub fn new(config: KernelConfig, state: KernelState) -> Arc<Self> {
        let (shutdown, _) = watch::channel(None);
        let bus = Bus::new();
        let questions = Arc::new(ask::Questions::new(bus.clone(), ask::TIMEOUT));
        let approvals = Approvals::new(Arc::clone(&questions), state.store.clone());
        Arc::new(Self {
            config,
            started: Instant::now(),
            pid: std::process::id(),
            capsules: Mutex::new(CapsuleRegistry::with_builtins()),
            clients: ClientTracker::new(),
            shutdown,
            grants: Grants::new(state.store.clone()),
            questions,
            approvals,
            capsules_changed: watch::channel(0).0,
            capsules_applied: capsule_sync::AppliedChanges::default(),
            rescans: std::sync::atomic::AtomicU64::new(0),
            mcp: std::sync::OnceLock::new(),
            model: Mutex::new(None),
            running_commands: running_commands::RunningCommands::default(),
            command_sandbox: watch::channel(None).0,
            bus,
            store: state.store,
            audit: state.audit,
            routine: routine::Routine::default(),
            workspace_shown: state.vfs.root().display().to_string().into(),
            vfs: Arc::new(state.vfs),
            workspaces: Mutex::new(Vec::new()),
            client_workspaces: Mutex::new(std::collections::HashMap::new()),
            client_names: Mutex::new(std::collections::HashMap::new()),
            tool_calls: tool_call::ToolCalls::default(),
            start_gate: start_gate::StartGate::default(),
        })
    }

    /// Waits until the KV store is open and the state kept in it is read (the standing
    /// allowances); the error is why not. The daemon is ready before this (sled's recovery
    /// is most of a boot's time); a request that needs the store waits for it.
    pub fn state_opened(&self) -> Result<(), KvError> {
        self.store.opened()?;
        self.approvals.load()
    }

    /// The gate what reaches capsules waits at while the boot's capsules start.
    pub fn start_gate(&self) -> &start_gate::StartGate {
        &self.start_gate
    }

    /// The KV store.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// The daemon's workspace (`--workspace`), behind its overlay.
    pub fn vfs(&self) -> &Vfs {
        &self.vfs
    }

    /// The workspace `root` (canonical) behind its overlay, or the daemon's own for `None`.
    /// A workspace is opened on first use and kept: its overlay is keyed by its path, so
    /// pending writes of two directories never mix.
    pub fn workspace(&self, root: Option<&Path>) -> Result<Arc<Vfs>, VfsError> {
        let Some(root) = root.filter(|root| *root != self.vfs.root()) else { return Ok(Arc::clone(&self.vfs)) };
        let mut open = self.workspaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vfs) = open.iter().find(|vfs| vfs.root() == root) {
            return Ok(Arc::clone(vfs));
        }
        let vfs = Arc::new(Vfs::open(root, &self.config.home.overlay_dir(root))?);
        log::info!("workspace {} opened for a client", root.display());
        open.push(Arc::clone(&vfs));
        Ok(vfs)
    }

    /// Records the workspace the client `subscriber` works in (`None`: forgets it).
    pub fn set_client_workspace(&self, subscriber: bus::SubscriberId, workspace: Option<Arc<PathBuf>>) {
        let mut clients = self.client_workspaces.lock().unwrap_or_else(|e| e.into_inner());
        match workspace {
            Some(workspace) => clients.insert(subscriber, workspace),
            None => clients.remove(&subscriber),
        };
    }

    /// The workspace the client `subscriber` works in (`None`: the daemon's).
    pub fn client_workspace(&self, subscriber: bus::SubscriberId) -> Option<Arc<PathBuf>> {
        self.client_workspaces.lock().unwrap_or_else(|e| e.into_inner()).get(&subscriber).cloned()
    }

    /// Names the client `subscriber` (connection number `connection`) for the audit trail:
    /// `client#7`, or `client#7 (claude-code 1.0.3)` when its handshake said whom it acts for.
    pub fn name_client(&self, subscriber: bus::SubscriberId, connection: u64, label: Option<&str>) {
        let name = match label {
            Some(label) => format!("client#{connection} ({label})"),
            None => format!("client#{connection}"),
        };
        self.client_names.lock().unwrap_or_else(|e| e.into_inner()).insert(subscriber, name.into());
    }

    /// Forgets the name of a client connection that closed.
    pub fn forget_client_name(&self, subscriber: bus::SubscriberId) {
        self.client_names.lock().unwrap_or_else(|e| e.into_inner()).remove(&subscriber);
    }

    /// Who the audit trail names for what `origin` did: a client connection by the name it
    /// was given at its handshake ([`Kernel::name_client`]).
    pub fn actor_of(&self, origin: &Origin) -> Actor {
        if let Origin::Client { subscriber, .. } = origin
            && let Some(name) = self.client_names.lock().unwrap_or_else(|e| e.into_inner()).get(subscriber)
        {
            return Actor::Client { id: String::from(&**name) };
        }
        origin.actor()
    }

    /// The tool calls clients made, in flight.
    pub fn tool_calls(&self) -> &tool_call::ToolCalls {
        &self.tool_calls
    }

    /// Install-time capability grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Runtime approvals.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// The commands capsules run in the sandbox.
    pub fn running_commands(&self) -> &running_commands::RunningCommands {
        &self.running_commands
    }

    /// The questions waiting for a person: a capsule's `elicit` asks here, a cancelled turn
    /// or a closed connection ends them.
    pub fn questions(&self) -> &ask::Questions {
        &self.questions
    }

    /// Appends an audit entry. A failure to audit is logged as an error, never ignored.
    pub fn record(&self, principal: &str, actor: Actor, action: &str, resource: &str, decision: Decision, rule: &str) {
        let entry = NewEntry {
            session: self.config.session,
            principal: principal.to_owned(),
            actor,
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision,
            rule: rule.to_owned(),
        };
        if let Err(e) = self.audit.record(entry) {
            log::error!("AUDIT WRITE FAILED for {action} on {resource}: {e}");
        }
    }

    /// Records a routine event (see [`routine`]): the first of its kind in full, the
    /// repeats as a count written later.
    pub fn record_routine(&self, kind: routine::Kind) {
        if let routine::Seen::First { flushed, kind } = self.routine.note(kind) {
            self.record_repeats(flushed);
            self.record(&kind.principal, kind.actor, kind.action, &kind.resource, Decision::Allow, &kind.rule);
        }
    }

    fn record_repeats(&self, repeats: Vec<(routine::Kind, routine::Repeats)>) {
        for (kind, repeats) in repeats {
            let action = format!("{}.repeated", kind.action);
            self.record(
                &kind.principal,
                kind.actor,
                &action,
                &kind.resource,
                Decision::Allow,
                &repeats.rule(&kind.rule),
            );
        }
    }

    /// Writes the counts of routine events repeated since the last summary (periodically,
    /// and at shutdown before `daemon.stop`).
    pub fn summarize_routine(&self) {
        self.record_repeats(self.routine.take_repeats());
    }

    /// A capsule instance ended: the counts of its routine events are written.
    pub fn instance_ended(&self, instance: Uuid) {
        self.record_repeats(self.routine.end_instance(instance));
    }

    /// Whether the audit trail can be written now; else why not. While it cannot, every
    /// decision that needs it is refused (fail closed).
    pub fn audit_writable(&self) -> Result<(), AuditUnwritable> {
        self.audit.writable().map_err(|reason| AuditUnwritable { reason })
    }

    /// Decides whether `capsule` may do `request`, and audits the decision either way.
    /// Deny by default: an unknown capsule, a capsule without an approved grant, or a grant
    /// that does not cover the request are all refusals. See [`Kernel::check_capability_for`].
    pub fn check_capability(&self, principal: &str, capsule: &str, request: &Capability<'_>) -> bool {
        self.check_capability_for(None, principal, capsule, request)
    }

    /// [`Kernel::check_capability`] for a capsule instance and the turn it works for
    /// (`None`: a check the kernel makes on the capsule's behalf). A deny, a write and a program started are
    /// recorded every time; any other allow is routine: recorded the first time for the
    /// instance, grant and resource, counted after (see [`routine`]). While the audit trail
    /// cannot be written, everything is denied.
    pub fn check_capability_for(
        &self,
        scope: Option<routine::Scope>,
        principal: &str,
        capsule: &str,
        request: &Capability<'_>,
    ) -> bool {
        let (allowed, rule) = match self.audit_writable() {
            Err(why) => (false, format!("refused: {why}")),
            Ok(()) => self.decide(capsule, request),
        };
        let actor = Actor::Capsule { name: capsule.to_owned() };
        if allowed && !matches!(request, Capability::FsWrite(_) | Capability::HostProcess(_) | Capability::Process(_)) {
            self.record_routine(routine::Kind {
                instance: scope.map(|scope| scope.instance),
                turn: scope.and_then(|scope| scope.turn),
                principal: principal.to_owned(),
                actor,
                action: "capability.check",
                resource: request.to_string(),
                rule: rule.into(),
            });
        } else {
            let decision = if allowed { Decision::Allow } else { Decision::Deny };
            self.record(principal, actor, "capability.check", &request.to_string(), decision, &rule);
        }
        allowed
    }

    /// The grant's verdict on `request`, and the rule that gave it.
    fn decide(&self, capsule: &str, request: &Capability<'_>) -> (bool, String) {
        let registry = self.capsules();
        match registry.get(capsule) {
            None => (false, "default deny: unknown capsule".to_owned()),
            Some(entry) => match &entry.grant {
                GrantStatus::Approved => match entry.capabilities.allows(request) {
                    Some(rule) => (true, format!("grant {}: {rule}", &entry.capabilities.fingerprint()[..16])),
                    None => (false, "default deny: not in the approved grant".to_owned()),
                },
                GrantStatus::Pending { request_id } => {
                    (false, format!("default deny: grant pending operator approval ({request_id})"))
                }
                GrantStatus::NothingRequested => (false, "default deny: no capabilities requested".to_owned()),
            },
        }
    }

    /// Asks a person (or a standing allowance) and audits the request and the outcome.
    /// While the audit trail cannot be written, the answer is no, without asking.
    pub async fn request_approval(&self, request: ApprovalRequest) -> ApprovalOutcome {
        let actor = || request.asker.actor();
        let resource = format!("{} {}", request.action, request.resource);
        self.record(&request.principal, actor(), "approval.request", &resource, Decision::Info, "asked");
        let outcome = match self.audit_writable() {
            Err(why) => ApprovalOutcome::Denied { reason: format!("refused: {why}") },
            Ok(()) => self.approvals.request(request.clone()).await,
        };
        let (decision, rule) = match &outcome {
            ApprovalOutcome::Allowed { rule } => (Decision::Allow, rule.clone()),
            ApprovalOutcome::Denied { reason } => (Decision::Deny, reason.clone()),
        };
        // The tool only learns "no": a client's call says why nobody was asked, and how to
        // allow it, beside the tool's answer.
        if let (ApprovalOutcome::Denied { reason }, Some(cause)) = (&outcome, &request.cause)
            && *reason == ask::Unanswered::NoFrontend.to_string()
        {
            self.tool_calls.note(cause.turn, reason);
        }
        self.record(&request.principal, actor(), "approval.decision", &resource, decision, &rule);
        outcome
    }

    /// Registers a capsule an author runs from its directory (`astrid capsule run`), with
    /// the consent the author gave for this run: approved, and gone with
    /// [`Kernel::unregister_development`]. Refused when an installed or running capsule has
    /// the name. Audited either way, with what was granted.
    pub fn register_development(&self, mut capsule: capsules::Capsule) -> Result<(), DevelopmentRefused> {
        let name = capsule.name.clone();
        let refuse = |refused: DevelopmentRefused| {
            let reason = refused.to_string();
            self.record(DEFAULT_PRINCIPAL, Actor::Kernel, "capsule.develop", &name, Decision::Deny, &reason);
            Err(refused)
        };
        if let Err(why) = self.audit_writable() {
            return refuse(DevelopmentRefused::from(why));
        }
        let granted = capsule.capabilities.entries().collect::<Vec<_>>().join(", ");
        capsule.origin = capsules::CapsuleOrigin::Development;
        capsule.grant_what_it_asks();
        let added = self.capsules().add(capsule);
        if !added {
            return refuse(DevelopmentRefused::NameTaken { name: name.clone() });
        }
        let rule = if granted.is_empty() {
            "no capabilities requested".to_owned()
        } else {
            format!("granted for this run: {granted}")
        };
        self.record(DEFAULT_PRINCIPAL, Actor::Kernel, "capsule.develop", &name, Decision::Allow, &rule);
        self.capsules_changed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Removes a development capsule and its consent (its run ended).
    pub fn unregister_development(&self, name: &str) {
        if self.capsules().remove(name, capsules::CapsuleOrigin::Development).is_some() {
            self.record(DEFAULT_PRINCIPAL, Actor::Kernel, "capsule.develop", name, Decision::Info, "run ended");
            self.capsules_changed.send_modify(|generation| *generation += 1);
        }
    }

    /// A receiver that changes whenever the registry or a grant changed: the capsule host
    /// watches it to start, restart or stop capsules (the kernel does not run them itself).
    pub fn capsules_changed(&self) -> watch::Receiver<u64> {
        self.capsules_changed.subscribe()
    }

    /// The registry's generation: bumped by every change [`Kernel::capsules_changed`] reports.
    pub fn capsules_generation(&self) -> u64 {
        *self.capsules_changed.borrow()
    }

    /// The changes the capsule host has applied (see [`capsule_sync`]).
    pub fn capsules_applied(&self) -> &capsule_sync::AppliedChanges {
        &self.capsules_applied
    }

    /// How many rescans of the capsule directories there have been.
    pub fn rescans(&self) -> u64 {
        self.rescans.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the state of a registered capsule (the capsule host reports what it runs).
    pub fn set_capsule_state(&self, name: &str, state: capsules::CapsuleState) {
        let mut registry = self.capsules();
        if let Some(capsule) = registry.capsules_mut().iter_mut().find(|c| c.name == name) {
            capsule.state = state;
        }
    }

    /// Records that the capsule host stopped `name`: a capsule shown as running is now only
    /// installed (a failed or restarting one keeps its reason).
    pub fn stopped_capsule(&self, name: &str) {
        let mut registry = self.capsules();
        if let Some(capsule) = registry.capsules_mut().iter_mut().find(|c| c.name == name)
            && capsule.state == capsules::CapsuleState::Ready
        {
            capsule.state = capsules::CapsuleState::Installed;
        }
    }

    /// Recomputes every capsule's grant status (after discovery, an approval or a revoke).
    pub fn refresh_grants(&self) {
        let mut registry = self.capsules();
        for capsule in registry.capsules_mut() {
            // A development capsule's consent was given by the person running it, for that run.
            if matches!(capsule.state, capsules::CapsuleState::Failed(_))
                || matches!(capsule.origin, capsules::CapsuleOrigin::Development | capsules::CapsuleOrigin::Embedded)
            {
                continue;
            }
            capsule.grant = self
                .grants
                .status(&capsule.name, &capsule.capabilities, capsule.code_hash.as_deref())
                .unwrap_or_else(|e| {
                    log::error!("cannot read the grant of {}: {e}; treating it as not approved", capsule.name);
                    GrantStatus::Pending { request_id: String::new() }
                });
        }
        drop(registry);
        self.capsules_changed.send_modify(|generation| *generation += 1);
    }

    /// Starts verifying every audit chain as this daemon found it, in the background (a
    /// long log must not delay readiness, nor shutdown: see
    /// [`Kernel::cancel_audit_verification`]); `GetStatus` shows `verifying`, then the
    /// verdict. The daemon keeps running on a broken chain so the operator can look.
    pub fn verify_audit(&self) {
        if let Err(e) = self.audit.start_verification() {
            log::error!("cannot verify the audit trail: {e}");
        }
    }

    /// Stops the audit verifications still running (the daemon is shutting down).
    pub fn cancel_audit_verification(&self) {
        let running = self.audit.cancel_verification();
        if !running.is_empty() {
            log::info!("audit verification of {} cancelled by the shutdown (still running)", running.join(", "));
        }
    }

    /// Records that `actor` (the operator) acknowledged every audit break known now, with
    /// `note`; returns what was acknowledged.
    pub fn acknowledge_audit(&self, actor: Actor, note: &str) -> Result<Vec<Acknowledged>, String> {
        self.audit.acknowledge(self.session(), actor, note)
    }

    /// The audit trail's state for `GetStatus`: `FAILED: …` while it cannot be written,
    /// `verifying`, the breaks not acknowledged, or `intact`.
    fn audit_status(&self) -> String {
        self.audit.inspect_health(Self::describe_audit_health)
    }

    fn describe_audit_health(health: &crate::audit::TrailHealth) -> String {
        if let Some(failure) = &health.failure {
            return format!("FAILED: {failure}; capability checks, approvals and changes are refused until it can be");
        }
        if health.verifying() {
            return "verifying".to_owned();
        }
        let problems: Vec<String> = health
            .logs
            .iter()
            .filter_map(|(principal, log)| {
                if let Some(e) = &log.error {
                    return Some(format!("{principal}: unverifiable: {e}"));
                }
                let first = log.unacknowledged.iter().min_by_key(|b| b.first_bad_seq)?;
                let more = match log.unacknowledged.len() - 1 {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                Some(format!(
                    "{principal}: tampered at entry {} ({}){more}, not acknowledged (see astrid audit verify)",
                    first.first_bad_seq, first.reason
                ))
            })
            .collect();
        if problems.is_empty() { "intact".to_owned() } else { problems.join("; ") }
    }

    /// Flushes state at shutdown.
    pub fn flush(&self) {
        if let Err(e) = self.store.flush() {
            log::error!("cannot flush the KV store: {e}");
        }
        if let Err(e) = self.audit.sync() {
            log::error!("cannot sync the audit log: {e}");
        }
    }

    /// Starts the management router, and the check that cuts off bus subscribers that stopped
    /// reading while someone waits on them (see [`bus`]). Must be called from within a tokio
    /// runtime; the returned handle is the router's.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                bus.cut_off_stalled();
            }
        });
        let kernel = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(routine::SUMMARY_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(kernel) = kernel.upgrade() else { return };
                kernel.summarize_routine();
            }
        });
        instructions::start(self);
        router::start(self)
    }

    /// Hands the kernel the daemon's MCP host (once; later calls are ignored).
    pub fn set_mcp(&self, mcp: Arc<dyn mcp_service::McpService>) {
        let _ = self.mcp.set(mcp);
    }

    /// The MCP host, when the daemon runs one.
    pub fn mcp(&self) -> Option<&Arc<dyn mcp_service::McpService>> {
        self.mcp.get()
    }

    /// Hands over the command sandbox the daemon set up (once; a second call is ignored).
    pub fn set_command_sandbox(&self, sandbox: Arc<crate::command_sandbox::Sandbox>) {
        self.command_sandbox.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(sandbox);
            true
        });
    }

    /// The command sandbox, when the daemon has set one up.
    pub fn command_sandbox(&self) -> Option<Arc<crate::command_sandbox::Sandbox>> {
        self.command_sandbox.borrow().clone()
    }

    /// The command sandbox, waiting for the boot's trial of it to end (it runs after
    /// readiness, so a command asked for at once waits here rather than being refused).
    pub async fn command_sandbox_settled(&self) -> Arc<crate::command_sandbox::Sandbox> {
        let mut settled = self.command_sandbox.subscribe();
        loop {
            if let Some(sandbox) = settled.borrow_and_update().clone() {
                return sandbox;
            }
            if settled.changed().await.is_err() {
                // The sender lives in the kernel, which outlives every caller.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The session id (`source_id` of kernel-originated messages).
    pub fn session(&self) -> Uuid {
        self.config.session
    }

    /// The kernel's configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// The event bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Connected clients.
    pub fn clients(&self) -> &ClientTracker {
        &self.clients
    }

    /// The capsule registry, locked for reading or replacing.
    pub fn capsules(&self) -> MutexGuard<'_, CapsuleRegistry> {
        self.capsules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The two capsule directories, principal first.
    pub fn capsule_dirs(&self) -> CapsuleDirs {
        CapsuleDirs {
            principal: self.config.home.principal_capsules_dir(DEFAULT_PRINCIPAL),
            workspace: self.config.workspace.join(".astrid").join("capsules"),
        }
    }

    /// Scans both capsule directories, replaces the registry and announces
    /// `astrid.v1.capsules_loaded`. Returns the number of capsules registered.
    pub fn reload_capsules(&self) -> usize {
        self.rescans.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut registry = CapsuleRegistry::discover(&self.capsule_dirs());
        if self.config.default_capsules {
            registry.add_defaults();
        }
        // Capsules being run by their authors are not on disk to be found: they stay.
        let development: Vec<capsules::Capsule> = self
            .capsules()
            .capsules()
            .iter()
            .filter(|c| c.origin == capsules::CapsuleOrigin::Development)
            .cloned()
            .collect();
        for capsule in development {
            let name = capsule.name.clone();
            if !registry.add(capsule) {
                log::warn!("development capsule {name} is now shadowed by an installed one");
            }
        }
        let count = registry.capsules().len();
        *self.capsules() = registry;
        self.refresh_grants();
        for capsule in self.capsules().capsules().iter().filter(|c| c.origin != capsules::CapsuleOrigin::BuiltIn) {
            let (action, rule) = match (&capsule.state, &capsule.grant) {
                (capsules::CapsuleState::Failed(reason), _) => ("capsule.failed", reason.clone()),
                (_, _) if capsule.origin == capsules::CapsuleOrigin::Embedded => {
                    ("capsule.discovered", "default set embedded in the binary; granted what it asks".to_owned())
                }
                (_, GrantStatus::Approved) => ("capsule.discovered", "grant approved".to_owned()),
                (_, GrantStatus::Pending { request_id }) => {
                    ("capsule.discovered", format!("awaiting approval of request {request_id}"))
                }
                (_, GrantStatus::NothingRequested) => ("capsule.discovered", "no capabilities requested".to_owned()),
            };
            self.record(DEFAULT_PRINCIPAL, Actor::Kernel, action, &capsule.name, Decision::Info, &rule);
        }
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = self.model();
        self.announce_capsules_loaded();
        count
    }

    /// Publishes `astrid.v1.capsules_loaded` ([`CapsulesLoaded`]): what tells an agent that
    /// the set of capsules or tools changed and to ask for the tools again.
    pub fn announce_capsules_loaded(&self) {
        let payload = match serde_json::to_value(CapsulesLoaded::ready()) {
            Ok(value) => IpcPayload::RawJson(value),
            Err(e) => return log::error!("cannot encode {CAPSULES_LOADED_TOPIC}: {e}"),
        };
        self.bus.publish(BusMessage::from_kernel(IpcMessage::new(CAPSULES_LOADED_TOPIC, payload, self.session())));
    }

    /// The answer to `GetStatus`.
    pub fn status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: self.pid,
            uptime_secs: self.started.elapsed().as_secs(),
            version: crate::VERSION.to_owned(),
            ephemeral: self.config.ephemeral,
            connected_clients: self.clients.total(),
            connections_by_principal: self.clients.by_principal(),
            loaded_capsules: self.capsules().ready_names(),
            bus_drops: (self.bus.losses().into_iter())
                .map(|(subscriber, dropped)| SubscriberDrops { subscriber, dropped })
                .collect(),
            audit: Some(self.audit_status()),
            model: self.model.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            workspace: Some(String::from(&*self.workspace_shown)),
            sandbox: Some(match self.command_sandbox() {
                Some(sandbox) => sandbox.availability().status(),
                None => crate::types::management::SandboxStatus {
                    state: crate::types::management::SandboxState::Probing,
                    detail: Some("a trial command is checking that the sandbox works on this machine".to_owned()),
                },
            }),
        }
    }

    /// Asks the daemon to shut down. The first reason wins; later requests are ignored.
    pub fn request_shutdown(&self, reason: ShutdownReason) {
        self.shutdown.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// A receiver that turns `Some(reason)` when a shutdown was requested.
    pub fn shutdown_requested(&self) -> watch::Receiver<Option<ShutdownReason>> {
        self.shutdown.subscribe()
    }
}

#[cfg(test)]
mod tests;
