//! The kernel side of one capsule instance: what its host calls act on.
//!
//! A [`CapsuleContext`] holds everything a capsule's calls need besides its memory: who it
//! is and for which principal, the kernel (grants, audit, bus, VFS), its KV namespace, its
//! subscriptions and open HTTP streams, its configuration and secrets. It lives where the
//! kernel lives, in the daemon, whether the guest runs on a thread beside it or in a
//! capsule-host process at the other end of the socket.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::host_call::{HostBackend, HostCall, HostReply};
use super::host_functions::{MAX_CONFIG_KEY, MAX_LOG};
use super::lifecycle::Lifecycle;
use super::sandbox::{HostServices, KernelAccess};
use super::{elicit, host_approval, host_fs, host_http, host_ipc, host_kv, host_process};
use crate::audit::{Actor, Decision};
use crate::kernel::Cause;
use crate::kernel::bus::{BusMessage, Origin, SubscriberKind, Subscription};
use crate::kernel::install::CapsuleMeta;
use crate::kernel::manifest::EnvDef;
use crate::store::{KvStore, Namespace};

/// Why a finished lifecycle hook could not be recorded.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// The install record does not encode.
    #[error("cannot encode the install record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] crate::store::KvError),
}

/// The state a capsule's host calls act on (see the module documentation).
#[derive(Debug)]
pub struct CapsuleContext {
    pub(super) capsule: String,
    pub(super) kv: Option<(KvStore, Namespace)>,
    pub(super) kernel: Option<KernelAccess>,
    /// Bus subscriptions by handle (a freed handle is `None` and reused).
    pub(super) subscriptions: Vec<Option<Subscription>>,
    /// The `source_id` of this instance's messages.
    pub(super) source_id: Uuid,
    /// The capsule's configuration.
    pub(super) config: BTreeMap<String, String>,
    /// Its declared secrets.
    pub(super) secrets: BTreeMap<String, String>,
    /// Whether HTTP may reach internal addresses.
    pub(super) allow_private_network: bool,
    /// Hosts HTTP may reach on internal addresses all the same: the endpoint the operator
    /// configured for an embedded provider (a local Ollama, say).
    pub(super) private_hosts: Vec<String>,
    /// The `[env]` declarations.
    pub(super) env: BTreeMap<String, EnvDef>,
    /// Open HTTP response streams by handle.
    pub(super) streams: Vec<Option<super::http_stream::Stream>>,
    /// Held by each stream's thread while it runs (closed streams' included).
    pub(super) exchanges: Arc<()>,
    /// Commands it runs in the sandbox, by handle (a freed handle is `None` and reused).
    /// Dropping one kills it: an instance that ends leaves no command behind.
    pub(super) processes: Vec<Option<super::host_process::Process>>,
    /// The call deadline (bounds host-side timeouts).
    pub(super) deadline: Duration,
    /// Readiness and stop of the instance.
    pub(super) lifecycle: Arc<Lifecycle>,
    /// The topic patterns of the runner's interceptor bindings (granted, checked when the
    /// instance was prepared), and their subscription once `next_event` first asked.
    pub(super) interceptor_patterns: Vec<String>,
    pub(super) interceptors: Option<Subscription>,
    /// The install record a finished lifecycle hook is recorded against.
    pub(super) installed: Option<CapsuleMeta>,
    /// The install or upgrade hook planned for this instance and not yet reported done.
    due_hook: Option<DueHook>,
    /// The client request the instance is working for: the cause of the event its hook is
    /// handling (a run loop: of the last message it received). Its publishes and approval
    /// requests carry it on; the kernel sets it, the guest cannot.
    pub(super) cause: Option<Arc<Cause>>,
    /// Per subscription handle, the cause of the last batch a capsule host read ahead on it:
    /// the cause again once the guest goes back to that batch ([`HostCall::IpcResume`]).
    pub(super) read_ahead_causes: HashMap<i32, Option<Arc<Cause>>>,
}

impl CapsuleContext {
    /// A context for `capsule` with these services and a call deadline.
    pub fn new(capsule: &str, deadline: Duration, services: HostServices) -> Self {
        Self {
            capsule: capsule.to_owned(),
            kv: services.kv,
            kernel: services.kernel,
            subscriptions: Vec::new(),
            source_id: Uuid::new_v4(),
            config: services.config,
            secrets: services.secrets,
            allow_private_network: services.allow_private_network,
            private_hosts: Vec::new(),
            env: services.env,
            streams: Vec::new(),
            exchanges: Arc::new(()),
            processes: Vec::new(),
            deadline,
            lifecycle: services.lifecycle,
            interceptor_patterns: Vec::new(),
            interceptors: None,
            installed: None,
            due_hook: None,
            cause: None,
            read_ahead_causes: HashMap::new(),
        }
    }

    /// The workspace this instance's file calls act on: that of the client whose turn it is
    /// working for, else the daemon's.
    pub(super) fn workspace(&self) -> Option<Arc<crate::vfs::Vfs>> {
        let access = self.kernel.as_ref()?;
        let root = self.cause.as_ref().and_then(|cause| cause.workspace.clone());
        match access.kernel.workspace(root.as_deref().map(|p| p.as_path())) {
            Ok(vfs) => Some(vfs),
            Err(e) => {
                log::error!("capsule {}: cannot open its turn's workspace: {e}", self.capsule);
                None
            }
        }
    }

    /// The name of this instance's bus subscriptions (in the log and `status`).
    pub(super) fn bus_name(&self) -> String {
        format!("capsule:{}", self.capsule)
    }

    /// Who this instance is on the bus when it publishes or asks: its replies come back to
    /// its own subscriptions, and the audit trail names the capsule.
    pub(super) fn origin(&self) -> Origin {
        Origin::Capsule { name: self.capsule.clone(), instance: self.source_id }
    }

    /// What this instance is to the bus: the capsule, publishing as its `source_id`.
    pub(super) fn subscriber_kind(&self) -> SubscriberKind {
        SubscriberKind::Capsule { name: self.capsule.clone(), source_id: self.source_id }
    }

    /// A run loop took `message` off a subscription: what it does next, it does for that
    /// message's cause. (A hook's cause is the event it was handed; what it polls on the
    /// side, such as a cancel, does not change whose work it is doing.)
    pub(super) fn received(&mut self, message: Option<&Arc<BusMessage>>) {
        if let Some(message) = message {
            self.working_for(message.cause.clone());
        }
    }

    /// A run loop is now working on a message of `cause` (see [`Self::received`]).
    pub(super) fn working_for(&mut self, cause: Option<Arc<Cause>>) {
        if self.interceptor_patterns.is_empty() {
            self.cause = cause;
        }
    }

    /// Who asks for a capability, for the audit trail: this instance, for its turn.
    pub(super) fn audit_scope(&self) -> Option<crate::kernel::routine::Scope> {
        let turn = self.cause.as_ref().map(|cause| cause.turn);
        Some(crate::kernel::routine::Scope { instance: self.source_id, turn })
    }

    /// The capsule this context belongs to.
    pub fn capsule(&self) -> &str {
        &self.capsule
    }

    /// The instance's readiness and stop flags.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The interceptor patterns `next_event` serves (already checked against the grant).
    pub fn set_interceptors(&mut self, patterns: Vec<String>) {
        self.interceptor_patterns = patterns;
    }

    /// Lets HTTP reach the host of the configured `base_url` even on a private or loopback
    /// address: for the embedded default set, whose endpoint only the operator configures
    /// (environment or env file). Audited.
    pub fn allow_configured_endpoint(&mut self) {
        let Some(access) = &self.kernel else { return };
        let Some(host) =
            self.config.get("base_url").and_then(|url| url::Url::parse(url).ok()?.host_str().map(str::to_owned))
        else {
            return;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let rule = "the operator's configured endpoint may be a private or loopback address";
        access.kernel.record(
            &access.principal,
            Actor::Kernel,
            "net.private_host",
            &format!("{} {host}", self.capsule),
            Decision::Allow,
            rule,
        );
        self.private_hosts.push(host);
    }

    /// The install whose lifecycle hook `lifecycle_done` records.
    pub fn set_installed(&mut self, meta: CapsuleMeta) {
        self.installed = Some(meta);
    }

    fn config_key(key: &[u8]) -> Option<&str> {
        (key.len() <= MAX_CONFIG_KEY).then(|| std::str::from_utf8(key).ok()).flatten()
    }

    /// The hook this instance was planned to run (`prepare`), and whether the module exports
    /// it: what `elicit` and `lifecycle_done` believe, never the guest side's word (which may
    /// be a capsule-host process).
    pub fn set_due_hook(&mut self, hook: Option<String>, wasm: &[u8]) {
        self.due_hook = hook.map(|name| {
            let exported = super::limits::exports_function(wasm, &name);
            DueHook { name, exported }
        });
    }

    fn lifecycle_done(&mut self, hook: &str) -> HostReply {
        let ran = match &self.due_hook {
            Some(due) if due.name == hook => due.exported,
            _ => return HostReply::Trap(format!("{hook} was not the hook due for this instance")),
        };
        self.due_hook = None;
        let (Some(access), Some(meta), Some((store, _))) = (&self.kernel, &self.installed, &self.kv) else {
            return HostReply::value(0);
        };
        if ran {
            let actor = Actor::Kernel;
            access.kernel.record(&access.principal, actor, "capsule.lifecycle", &self.capsule, Decision::Info, hook);
        }
        let namespace = Namespace::system(super::supervisor::LIFECYCLE);
        let stored = serde_json::to_vec(meta).map_err(RecordError::Encode).and_then(|record| {
            store.set(&namespace, &self.capsule, &record)?;
            store.flush()?;
            Ok(())
        });
        match stored {
            Ok(()) => HostReply::value(0),
            Err(e) => HostReply::Trap(format!("cannot record that {hook} ran: {e}")),
        }
    }
}

/// A lifecycle hook the daemon planned, as the daemon read it from the module.
#[derive(Debug)]
struct DueHook {
    name: String,
    /// Whether the module exports it (else the runner reports it done without calling it).
    exported: bool,
}

impl Drop for CapsuleContext {
    /// The instance ended: the counts of its routine audit events are written.
    fn drop(&mut self) {
        if let Some(access) = &self.kernel {
            access.kernel.instance_ended(self.source_id);
        }
    }
}

impl HostBackend for CapsuleContext {
    fn call(&mut self, call: HostCall) -> HostReply {
        match call {
            HostCall::Log { line } => {
                let end = line.0.len().min(MAX_LOG);
                log::info!("capsule {}: {}", self.capsule, String::from_utf8_lossy(&line.0[..end]));
                HostReply::value(0)
            }
            HostCall::SignalReady => {
                // Past any hook: a guest that is ready is serving, not installing.
                self.due_hook = None;
                self.lifecycle.signal_ready();
                HostReply::value(0)
            }
            HostCall::GetConfig { key } => match Self::config_key(&key.0).and_then(|key| self.config.get(key)) {
                Some(value) => HostReply::bytes(value.as_bytes()),
                None => HostReply::value(-1),
            },
            HostCall::HasConfig { key } => {
                HostReply::value(i32::from(Self::config_key(&key.0).is_some_and(|key| self.config.contains_key(key))))
            }
            HostCall::RequestApproval { request } => host_approval::request(self, &request.0),
            HostCall::Elicit { request } => {
                let in_hook = self.due_hook.as_ref().is_some_and(|due| due.exported);
                elicit::elicit(self, &request.0, in_hook)
            }
            HostCall::KvGet { key } => host_kv::get(self, &key.0),
            HostCall::KvSet { key, value } => host_kv::set(self, &key.0, &value.0),
            HostCall::KvDelete { key } => host_kv::delete(self, &key.0),
            HostCall::KvListKeys { prefix } => host_kv::list_keys(self, &prefix.0),
            HostCall::KvClearPrefix { prefix } => host_kv::clear_prefix(self, &prefix.0),
            HostCall::KvCas { key, expected, new } => host_kv::cas(
                self,
                &key.0,
                expected.as_ref().map(|b| b.0.as_slice()),
                new.as_ref().map(|b| b.0.as_slice()),
            ),
            HostCall::IpcPublish { topic, payload } => host_ipc::publish(self, &topic.0, &payload.0),
            HostCall::IpcSubscribe { pattern } => host_ipc::subscribe(self, &pattern.0),
            HostCall::IpcRecv { handle, timeout_ms } => host_ipc::recv(self, handle, timeout_ms),
            HostCall::IpcPoll { handle } => host_ipc::poll(self, handle),
            HostCall::IpcRecvMany { handle, timeout_ms, max } => host_ipc::recv_many(self, handle, timeout_ms, max),
            HostCall::IpcResume { handle } => host_ipc::resume(self, handle),
            HostCall::IpcUnsubscribe { handle } => host_ipc::unsubscribe(self, handle),
            HostCall::FsRead { path } => host_fs::read(self, &path.0),
            HostCall::FsWrite { path, data } => host_fs::write(self, &path.0, &data.0),
            HostCall::FsExists { path } => host_fs::exists(self, &path.0),
            HostCall::FsStat { path } => host_fs::stat(self, &path.0),
            HostCall::FsReaddir { path } => host_fs::readdir(self, &path.0),
            HostCall::FsMkdir { path } => host_fs::mkdir(self, &path.0),
            HostCall::FsUnlink { path } => host_fs::unlink(self, &path.0),
            HostCall::HttpRequest { request, body } => host_http::request(self, &request.0, &body.0),
            HostCall::HttpStreamStart { request, body } => host_http::stream_start(self, &request.0, &body.0),
            HostCall::HttpStreamOpen { request, body } => host_http::stream_open(self, &request.0, &body.0),
            HostCall::HttpStreamHead { handle, timeout_ms } => {
                host_http::stream_head(self, handle, Some(Duration::from_millis(timeout_ms.into())))
            }
            HostCall::HttpStreamRead { handle } => host_http::stream_read(self, handle, None),
            HostCall::HttpStreamWait { handle, timeout_ms } => {
                host_http::stream_read(self, handle, Some(Duration::from_millis(timeout_ms.into())))
            }
            HostCall::HttpStreamClose { handle } => host_http::stream_close(self, handle),
            HostCall::ProcessSpawn { request } => host_process::spawn(self, &request.0),
            HostCall::ProcessRead { handle, timeout_ms } => host_process::read(self, handle, timeout_ms),
            HostCall::ProcessWait { handle, timeout_ms } => host_process::wait(self, handle, timeout_ms),
            HostCall::ProcessKill { handle } => host_process::kill(self, handle),
            HostCall::LifecycleDone { hook } => self.lifecycle_done(&hook),
            HostCall::NextEvent { timeout_ms } => {
                self.due_hook = None;
                host_ipc::next_event(self, timeout_ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::types::HostReply;
    use crate::wasm::elicit::ElicitStatus;

    const INSTALL: &str = "astrid_install";

    fn context() -> CapsuleContext {
        CapsuleContext::new("guest", Duration::from_secs(1), HostServices::default())
    }

    fn elicit(context: &mut CapsuleContext) -> HostReply {
        context.call(HostCall::Elicit { request: br#"{"key":"api_key"}"#.to_vec().into() })
    }

    /// The guest side (possibly a capsule-host process) reports only which hook it is past;
    /// whether a hook is due, whether it ran and whether `elicit` may ask are the kernel's.
    #[test]
    fn the_kernel_side_decides_what_a_lifecycle_hook_may_do() {
        let module = wat::parse_str(r#"(module (func (export "astrid_install")))"#).expect("wat");
        let refused = HostReply::value(ElicitStatus::NotInLifecycle as i32);

        // Nothing planned: no question, and no hook to report done.
        let mut idle = context();
        assert_eq!(elicit(&mut idle), refused);
        assert!(matches!(idle.call(HostCall::LifecycleDone { hook: INSTALL.into() }), HostReply::Trap(_)));

        // A hook the module does not export cannot be "in progress", whatever the guest says.
        let mut absent = context();
        absent.set_due_hook(Some(INSTALL.into()), &wat::parse_str("(module)").expect("wat"));
        assert_eq!(elicit(&mut absent), refused);

        // The planned hook: elicit passes the lifecycle check (and fails later on input this
        // context has no kernel for); another hook's name is refused; once done, done.
        let mut due = context();
        due.set_due_hook(Some(INSTALL.into()), &module);
        assert_ne!(elicit(&mut due), refused);
        assert!(matches!(due.call(HostCall::LifecycleDone { hook: "astrid_upgrade".into() }), HostReply::Trap(_)));
        assert_eq!(due.call(HostCall::LifecycleDone { hook: INSTALL.into() }), HostReply::value(0));
        assert_eq!(elicit(&mut due), refused);
        assert!(matches!(due.call(HostCall::LifecycleDone { hook: INSTALL.into() }), HostReply::Trap(_)));

        // Serving ends the hook phase: a guest that signalled ready may not ask any more.
        let mut serving = context();
        serving.set_due_hook(Some(INSTALL.into()), &module);
        serving.call(HostCall::SignalReady);
        assert_eq!(elicit(&mut serving), refused);
    }
}
