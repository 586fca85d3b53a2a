//! One life of a capsule instance, in two halves that may live in different processes.
//!
//! [`prepare`] is the kernel's half and always runs in the daemon: it re-checks the
//! installed files against their pins, resolves the capsule's configuration (announcing
//! what is missing), decides which lifecycle hook is due, checks each interceptor binding
//! against the grant (audited), and builds the [`CapsuleContext`] the instance's host calls
//! will act on. What the instance needs to know is a [`Plan`], small enough to send over the
//! socket.
//!
//! [`run`] is the interpreter's half: lifecycle hook, then the run loop or the interceptor
//! dispatch. It reaches the kernel only through [`Sandbox::host_call`], so the same code
//! serves a capsule on a daemon thread and one in a capsule-host process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SandboxLimits;
use super::context::CapsuleContext;
use super::host_call::{HostBackend, HostCall, HostReply};
use super::host_ipc::IpcStatus;
use super::lifecycle::Lifecycle;
use super::sandbox::{HOOK_EXPORT, HookAction, HostServices, KernelAccess, RUN_EXPORT, Sandbox, SandboxError};
use super::supervisor::{HostConfig, INSTALL_EXPORT, LIFECYCLE, UPGRADE_EXPORT};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::capability::Capability;
use crate::kernel::capsule_config as config;
use crate::kernel::capsules::CapsuleState;
use crate::kernel::defaults;
use crate::kernel::install::{CapsuleMeta, InstallError, hash_hex, verify_installed};
use crate::kernel::manifest::{Manifest, ManifestError};
use crate::kernel::{BusMessage, Kernel, topic};
use crate::store::{KvError, Namespace};
use crate::types::capsule_session::{Binding, CapsuleFailure, Plan};
use crate::types::topics::ONBOARDING_TOPIC;
use crate::types::{IpcMessage, IpcPayload};

/// How long one wait for an interceptor event lasts before the runner looks again.
const IDLE_WAKE_MS: u32 = 60_000;

/// Why the kernel's half could not start an instance. Each is that capsule's problem alone:
/// the supervisor records it and tries again with backoff.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Nothing installed under the name, and no default capsule has it.
    #[error("{name} is neither installed nor embedded")]
    Unknown {
        /// The capsule.
        name: String,
    },
    /// An embedded manifest does not parse (a build defect, reported rather than trusted).
    #[error(transparent)]
    EmbeddedManifest(#[from] ManifestError),
    /// An embedded module does not inflate (a build defect too).
    #[error("{0}")]
    Embedded(String),
    /// The installed files no longer match their pins, or cannot be read.
    #[error(transparent)]
    Installed(#[from] InstallError),
    /// The directory now holds another capsule.
    #[error("{} now holds capsule {found}", dir.display())]
    Replaced {
        /// The capsule's directory.
        dir: PathBuf,
        /// The name its manifest gives now.
        found: String,
    },
    /// The capsule declares no module to run.
    #[error("the capsule has no module")]
    NoModule,
    /// The capsule's name cannot be a KV namespace.
    #[error(transparent)]
    Namespace(#[from] KvError),
}

/// Why the interpreter's half ended an instance.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The module could not be compiled or instantiated (a capsule-host process compiles
    /// what the daemon sent).
    #[error("{source}")]
    Load {
        /// What the sandbox said.
        #[source]
        source: SandboxError,
    },
    /// The install or upgrade hook failed; it is due again with the next start.
    #[error("{hook} failed: {source}")]
    LifecycleHook {
        /// `astrid_install` or `astrid_upgrade`.
        hook: String,
        /// How it failed.
        #[source]
        source: SandboxError,
    },
    /// The guest failed while serving (the run loop or a hook call).
    #[error(transparent)]
    Guest(#[from] SandboxError),
    /// A step of the runner was answered with a trap: the kernel side cannot go on (a record
    /// could not be written, the daemon is gone).
    #[error("{0}")]
    Host(String),
    /// The kernel side handed over an event the runner cannot read.
    #[error("the host sent a malformed event")]
    MalformedEvent,
}

impl RunError {
    /// The failure as a capsule-host process reports it to the daemon (the same text, and the
    /// stage it happened at).
    pub fn failure(&self) -> CapsuleFailure {
        let reason = self.to_string();
        match self {
            Self::Load { .. } => CapsuleFailure::Load { reason },
            Self::LifecycleHook { hook, source } => {
                CapsuleFailure::LifecycleHook { hook: hook.clone(), reason: source.to_string() }
            }
            Self::Guest(_) => CapsuleFailure::Guest { reason },
            Self::Host(_) | Self::MalformedEvent => CapsuleFailure::Host { reason },
        }
    }
}

/// The kernel's half, ready: the context, the module and what to do with it.
#[derive(Debug)]
pub struct Prepared {
    /// What the instance's host calls act on.
    pub context: CapsuleContext,
    /// The module, as verified against its pin.
    pub wasm: Vec<u8>,
    /// Its BLAKE3 (hex).
    pub hash: String,
    /// What to run.
    pub plan: Plan,
}

/// The kernel's half of starting the capsule `name`: installed in `dir`, or, without one, the
/// embedded default capsule of that name (see the module documentation). Readiness signalled
/// on `lifecycle` marks the capsule ready in the registry.
pub fn prepare(
    kernel: &Arc<Kernel>,
    host: &HostConfig,
    name: &str,
    dir: Option<&Path>,
    lifecycle: Arc<Lifecycle>,
) -> Result<Prepared, PrepareError> {
    let Some(dir) = dir else {
        let embedded = defaults::find(name).ok_or_else(|| PrepareError::Unknown { name: name.to_owned() })?;
        let manifest = embedded.manifest()?;
        let mut prepared = prepare_loaded(
            kernel,
            host,
            &manifest,
            embedded.module().map_err(PrepareError::Embedded)?,
            None,
            &(embedded.environment)(&kernel.config().provider),
            lifecycle,
        )?;
        prepared.context.allow_configured_endpoint();
        return Ok(prepared);
    };
    let verified = verify_installed(dir)?;
    if verified.manifest.package.name != name {
        return Err(PrepareError::Replaced { dir: dir.to_path_buf(), found: verified.manifest.package.name });
    }
    let wasm = verified.wasm.ok_or(PrepareError::NoModule)?;
    prepare_loaded(kernel, host, &verified.manifest, wasm, Some(verified.meta), &BTreeMap::new(), lifecycle)
}

/// [`prepare`] for a manifest and module already loaded (and checked): `installed` is the
/// install record, or `None` for a development run or an embedded capsule (which run
/// `astrid_install` each time); `fallback` is configuration used where none is stored.
pub fn prepare_loaded(
    kernel: &Arc<Kernel>,
    host: &HostConfig,
    manifest: &Manifest,
    wasm: Vec<u8>,
    installed: Option<CapsuleMeta>,
    fallback: &BTreeMap<String, String>,
    lifecycle: Arc<Lifecycle>,
) -> Result<Prepared, PrepareError> {
    lifecycle.reset_ready();
    let name = manifest.package.name.as_str();
    let hash = hash_hex(&wasm);
    let home = &kernel.config().home;
    let (values, missing) = config::resolve(home, DEFAULT_PRINCIPAL, name, &manifest.env, fallback);
    if !missing.is_empty() {
        log::warn!("capsule {name} has no value for {}; get_config answers none", missing.join(", "));
        let fields = config::onboarding_fields(&manifest.env, &missing);
        let payload = IpcPayload::OnboardingRequired { capsule_id: name.to_owned(), fields };
        kernel.bus().publish(BusMessage::from_kernel(IpcMessage::new(ONBOARDING_TOPIC, payload, kernel.session())));
    }
    let services = HostServices {
        kv: Some((kernel.store().clone(), Namespace::capsule(DEFAULT_PRINCIPAL, name)?)),
        kernel: Some(KernelAccess { kernel: Arc::clone(kernel), principal: DEFAULT_PRINCIPAL.to_owned() }),
        secrets: values
            .iter()
            .filter(|(key, _)| manifest.env.get(*key).is_some_and(|def| def.kind == "secret"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        config: values,
        allow_private_network: host.allow_private_network,
        env: manifest.env.clone(),
        lifecycle: Arc::clone(&lifecycle),
    };
    let mut context = CapsuleContext::new(name, host.limits.deadline, services);
    let mut interceptors: Vec<_> = manifest
        .interceptors
        .iter()
        .filter(|i| {
            kernel.check_capability(DEFAULT_PRINCIPAL, name, &Capability::IpcSubscribe(&i.event)) || {
                log::warn!("capsule {name}: interceptor on {} not bound: not in its ipc_subscribe grant", i.event);
                false
            }
        })
        .collect();
    interceptors.sort_by_key(|i| i.priority);
    let bindings: Vec<Binding> =
        interceptors.iter().map(|i| Binding { event: i.event.clone(), action: i.action.clone() }).collect();
    context.set_interceptors(bindings.iter().map(|b| b.event.clone()).collect());
    let lifecycle_hook = match installed {
        Some(meta) => {
            let due = due_hook(kernel, name, &meta);
            context.set_installed(meta);
            due
        }
        None => Some(INSTALL_EXPORT.to_owned()),
    };
    let (registry, capsule) = (Arc::clone(kernel), name.to_owned());
    lifecycle.on_ready(move || {
        log::info!("capsule {capsule} is ready");
        registry.set_capsule_state(&capsule, CapsuleState::Ready);
    });
    context.set_due_hook(lifecycle_hook.clone(), &wasm);
    Ok(Prepared { context, wasm, hash, plan: Plan { lifecycle_hook, bindings } })
}

/// `astrid_install` on the first start of an install, `astrid_upgrade` on the first start of
/// another version, nothing once the hook for this install has run (recorded in the KV store
/// only after it succeeded, so a failed hook is tried again with the restart).
fn due_hook(kernel: &Kernel, name: &str, meta: &CapsuleMeta) -> Option<String> {
    let seen: Option<CapsuleMeta> = kernel
        .store()
        .get(&Namespace::system(LIFECYCLE), name)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let hook = match &seen {
        None => INSTALL_EXPORT,
        Some(seen) if seen.installed_at != meta.installed_at => INSTALL_EXPORT,
        Some(seen) if seen.version != meta.version => UPGRADE_EXPORT,
        Some(_) => return None,
    };
    Some(hook.to_owned())
}

/// The interpreter's half: lifecycle hook, then the run loop, or the interceptor dispatch,
/// until the instance fails or is stopped. An `Ok` return from a run loop is the guest
/// ending on its own, which the supervisor treats as a failure.
pub fn run(sandbox: &mut Sandbox, plan: &Plan) -> Result<(), RunError> {
    let name = sandbox.capsule().to_owned();
    if let Some(hook) = &plan.lifecycle_hook {
        if sandbox.has_export(hook) {
            sandbox.call_lifecycle(hook).map_err(|source| RunError::LifecycleHook { hook: hook.clone(), source })?;
        }
        expect_done(sandbox.host_call(HostCall::LifecycleDone { hook: hook.clone() }))?;
    }
    if sandbox.has_export(RUN_EXPORT) {
        log::info!("capsule {name} started (run loop)");
        return Ok(sandbox.run_loop()?);
    }
    let serving = sandbox.has_export(HOOK_EXPORT);
    if serving {
        log::info!("capsule {name} started ({} interceptor(s))", plan.bindings.len());
    } else {
        log::info!("capsule {name} started (no run loop and no hook entry: nothing to call)");
    }
    // The first look subscribes the bindings; ready only after it, so an event sent the moment
    // the capsule shows as running is served.
    let mut timeout_ms = 0;
    loop {
        let event = sandbox.host_call(HostCall::NextEvent { timeout_ms });
        if timeout_ms == 0 {
            sandbox.lifecycle().signal_ready();
            expect_done(sandbox.host_call(HostCall::SignalReady))?;
            timeout_ms = IDLE_WAKE_MS;
        }
        if sandbox.lifecycle().is_stopping() {
            return Ok(());
        }
        let event = match event {
            HostReply::Bytes(event) => event.0,
            HostReply::Value(status) if status == i64::from(IpcStatus::Timeout as i32) => continue,
            HostReply::Value(_) => return Ok(()),
            HostReply::Trap(message) => return Err(RunError::Host(message)),
            HostReply::Messages(_) => return Err(RunError::Host("a batch of messages answered next_event".to_owned())),
        };
        if !serving {
            continue;
        }
        let Some((topic_name, payload)) = split_event(&event) else {
            return Err(RunError::MalformedEvent);
        };
        for binding in plan.bindings.iter().filter(|b| topic::acl_matches(&b.event, topic_name)) {
            let result = sandbox.hook(&binding.action, payload)?;
            match result.action {
                HookAction::Continue => {}
                HookAction::Final => break,
                HookAction::Deny => {
                    log::info!("capsule {name} denied {topic_name} ({}): {:?}", binding.action, result.data);
                    break;
                }
            }
        }
    }
}

/// The whole life of an instance whose kernel is elsewhere (a capsule-host process): compile
/// the module the daemon sent, instantiate it with `backend` as its host, [`run`] it.
pub fn run_remote(
    backend: Box<dyn HostBackend>,
    capsule: &str,
    wasm: Vec<u8>,
    limits: SandboxLimits,
    plan: &Plan,
) -> Result<(), RunError> {
    let load = |source| RunError::Load { source };
    // Only compiling reads the bytes: they are not held while the capsule runs.
    let module = super::compile(&wasm).map_err(load)?;
    drop(wasm);
    let lifecycle = Arc::new(Lifecycle::default());
    let mut sandbox = Sandbox::instantiate_with(capsule, &module, limits, backend, lifecycle).map_err(load)?;
    run(&mut sandbox, plan)
}

fn expect_done(reply: HostReply) -> Result<(), RunError> {
    match reply {
        HostReply::Trap(message) => Err(RunError::Host(message)),
        HostReply::Messages(_) => Err(RunError::Host("a batch of messages answered a runner step".to_owned())),
        HostReply::Value(_) | HostReply::Bytes(_) => Ok(()),
    }
}

/// `[u32 BE topic length][topic][payload]` → `(topic, payload)`.
fn split_event(event: &[u8]) -> Option<(&str, &[u8])> {
    let (length, rest) = event.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    if rest.len() < length {
        return None;
    }
    let (topic_name, payload) = rest.split_at(length);
    Some((std::str::from_utf8(topic_name).ok()?, payload))
}

#[cfg(test)]
mod tests {
    use super::split_event;

    #[test]
    fn events_split_into_topic_and_payload_and_short_ones_are_refused() {
        let mut event = 5u32.to_be_bytes().to_vec();
        event.extend_from_slice(b"a.b.c{\"x\":1}");
        assert_eq!(split_event(&event), Some(("a.b.c", &b"{\"x\":1}"[..])));
        assert_eq!(split_event(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(split_event(&[0, 0]), None);
    }
}
