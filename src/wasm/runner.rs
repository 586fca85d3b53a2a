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
use std::path::Path;
use std::sync::Arc;

use super::SandboxLimits;
use super::context::CapsuleContext;
use super::host_call::{HostBackend, HostCall, HostReply};
use super::host_ipc::IpcStatus;
use super::lifecycle::Lifecycle;
use super::sandbox::{HOOK_EXPORT, HookAction, HostServices, KernelAccess, RUN_EXPORT, Sandbox};
use super::supervisor::{HostConfig, INSTALL_EXPORT, LIFECYCLE, ONBOARDING_TOPIC, UPGRADE_EXPORT};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::capability::Capability;
use crate::kernel::capsule_config as config;
use crate::kernel::capsules::CapsuleState;
use crate::kernel::defaults;
use crate::kernel::install::{CapsuleMeta, hash_hex, verify_installed};
use crate::kernel::manifest::Manifest;
use crate::kernel::{BusMessage, Kernel, topic};
use crate::store::Namespace;
use crate::types::capsule_session::{Binding, Plan};
use crate::types::{IpcMessage, IpcPayload};

/// How long one wait for an interceptor event lasts before the runner looks again.
const IDLE_WAKE_MS: u32 = 60_000;

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
) -> Result<Prepared, String> {
    let Some(dir) = dir else {
        let embedded = defaults::find(name).ok_or_else(|| format!("{name} is neither installed nor embedded"))?;
        let manifest = embedded.manifest().map_err(|e| e.to_string())?;
        let mut prepared = prepare_loaded(
            kernel,
            host,
            &manifest,
            embedded.wasm.to_vec(),
            None,
            &(embedded.environment)(),
            lifecycle,
        )?;
        prepared.context.allow_configured_endpoint();
        return Ok(prepared);
    };
    let verified = verify_installed(dir).map_err(|e| e.to_string())?;
    if verified.manifest.package.name != name {
        return Err(format!("{} now holds capsule {}", dir.display(), verified.manifest.package.name));
    }
    let wasm = verified.wasm.ok_or("the capsule has no module")?;
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
) -> Result<Prepared, String> {
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
        kv: Some((kernel.store().clone(), Namespace::capsule(DEFAULT_PRINCIPAL, name).map_err(|e| e.to_string())?)),
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
pub fn run(sandbox: &mut Sandbox, plan: &Plan) -> Result<(), String> {
    let name = sandbox.capsule().to_owned();
    if let Some(hook) = &plan.lifecycle_hook {
        let ran = sandbox.has_export(hook);
        if ran {
            sandbox.call_lifecycle(hook).map_err(|e| format!("{hook} failed: {e}"))?;
        }
        expect_done(sandbox.host_call(HostCall::LifecycleDone { hook: hook.clone(), ran }))?;
    }
    if sandbox.has_export(RUN_EXPORT) {
        log::info!("capsule {name} started (run loop)");
        return sandbox.run_loop().map_err(|e| e.to_string());
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
            HostReply::Trap(message) => return Err(message),
        };
        if !serving {
            continue;
        }
        let Some((topic_name, payload)) = split_event(&event) else {
            return Err("the host sent a malformed event".to_owned());
        };
        for binding in plan.bindings.iter().filter(|b| topic::acl_matches(&b.event, topic_name)) {
            let result = sandbox.hook(&binding.action, payload).map_err(|e| e.to_string())?;
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
    wasm: &[u8],
    limits: SandboxLimits,
    plan: &Plan,
) -> Result<(), String> {
    let module = super::compile(wasm).map_err(|e| e.to_string())?;
    let lifecycle = Arc::new(Lifecycle::default());
    let mut sandbox =
        Sandbox::instantiate_with(capsule, &module, limits, backend, lifecycle).map_err(|e| e.to_string())?;
    run(&mut sandbox, plan)
}

fn expect_done(reply: HostReply) -> Result<(), String> {
    match reply {
        HostReply::Trap(message) => Err(message),
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
