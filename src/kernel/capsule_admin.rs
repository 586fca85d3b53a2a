//! The capsule management requests: `InstallCapsule`, `RemoveCapsule` (extension) and
//! `DescribeCapsules` (extension). Files are written by [`super::install`]; this module adds
//! the kernel's part: where capsules go, consent, audit, and telling the capsule host.
//!
//! An install that requests capabilities ends in `ApprovalRequired` with the grant's
//! request id; `ApproveCapability` (the operator, having been shown the list) completes it
//! and the capsule host starts the capsule. Nothing requested, or the very set and code
//! already approved: the capsule starts at once.

use std::path::Path;

use super::Kernel;
use super::capsules::CapsuleState;
use super::grants::GrantStatus;
use super::install;
use super::router::Caller;
use crate::audit::Decision;
use crate::types::KernelResponse;
use crate::types::management::{CapsuleDescription, CapsuleInstalled, CapsuleRemoved, RunState};

fn target_dir(kernel: &Kernel, workspace: bool) -> std::path::PathBuf {
    let dirs = kernel.capsule_dirs();
    if workspace { dirs.workspace } else { dirs.principal }
}

/// Installs from `source` (an absolute path the client resolved), then rescans.
pub(super) fn install(kernel: &Kernel, source: &str, workspace: bool, caller: &Caller) -> KernelResponse {
    let path = Path::new(source);
    if !path.is_absolute() {
        return KernelResponse::Error(format!("install source must be an absolute path, not {source:?}"));
    }
    let installed = match install::install(path, &target_dir(kernel, workspace)) {
        Ok(installed) => installed,
        Err(e) => {
            kernel.record(
                &caller.principal,
                caller.actor.clone(),
                "capsule.install",
                source,
                Decision::Deny,
                &e.to_string(),
            );
            return KernelResponse::Error(e.to_string());
        }
    };
    let what = format!("{} {}", installed.name, installed.version);
    let rule = installed.replaced.as_ref().map_or_else(|| "new".to_owned(), |old| format!("replaced {old}"));
    kernel.record(&caller.principal, caller.actor.clone(), "capsule.install", &what, Decision::Allow, &rule);
    kernel.reload_capsules();
    let registry = kernel.capsules();
    let Some(capsule) = registry.get(&installed.name) else {
        return KernelResponse::Error(format!(
            "{what} was installed but another capsule of that name takes precedence"
        ));
    };
    if capsule.dir.as_deref() != Some(installed.dir.as_path()) {
        return KernelResponse::Error(format!(
            "{what} was installed in {} but the capsule of that name in {} takes precedence",
            installed.dir.display(),
            capsule.dir.as_deref().map_or_else(|| "a built-in".to_owned(), |d| d.display().to_string())
        ));
    }
    match (&capsule.state, &capsule.grant) {
        (CapsuleState::Failed(reason), _) => KernelResponse::Error(format!("{what} was installed but fails: {reason}")),
        (_, GrantStatus::Pending { request_id }) => KernelResponse::ApprovalRequired {
            request_id: request_id.clone(),
            description: format!("{what} requests these capabilities; approve to start it"),
            capabilities: capsule.capabilities.entries().map(str::to_owned).collect(),
        },
        (_, GrantStatus::Approved | GrantStatus::NothingRequested) => KernelResponse::success(&CapsuleInstalled {
            name: installed.name,
            version: installed.version,
            replaced: installed.replaced,
            dir: installed.dir.display().to_string(),
        }),
    }
}

/// Uninstalls `name` and withdraws its grant; the capsule host stops it.
pub(super) fn remove(kernel: &Kernel, name: &str, workspace: bool, caller: &Caller) -> KernelResponse {
    match install::remove(name, &target_dir(kernel, workspace)) {
        Ok(meta) => {
            if let Err(e) = kernel.grants().revoke(name) {
                log::error!("removed {name} but cannot withdraw its grant: {e}");
            }
            let what = format!("{name} {}", meta.version);
            kernel.record(&caller.principal, caller.actor.clone(), "capsule.remove", &what, Decision::Info, "operator");
            kernel.reload_capsules();
            KernelResponse::success(&CapsuleRemoved { removed: name.to_owned(), version: meta.version })
        }
        Err(e) => KernelResponse::Error(e.to_string()),
    }
}

/// Every registered capsule, described.
pub(super) fn describe(kernel: &Kernel) -> KernelResponse {
    let registry = kernel.capsules();
    let capsules: Vec<CapsuleDescription> = registry
        .capsules()
        .iter()
        .map(|c| {
            let (state, reason) = match (&c.state, &c.grant) {
                (CapsuleState::Installed, GrantStatus::Pending { request_id }) => (
                    RunState::Stopped,
                    Some(format!("its capabilities are not approved (astrid caps approve {request_id})")),
                ),
                (CapsuleState::Ready, _) => (RunState::Running, None),
                (CapsuleState::Installed, _) => (RunState::Installed, None),
                (CapsuleState::Restarting { attempt, reason }, _) => {
                    (RunState::Restarting, Some(format!("attempt {attempt}: {reason}")))
                }
                (CapsuleState::Failed(reason), _) => (RunState::Failed, Some(reason.clone())),
            };
            CapsuleDescription {
                name: c.name.clone(),
                version: c.version.clone(),
                origin: c.origin,
                dir: c.dir.as_ref().map(|dir| dir.display().to_string()),
                state,
                reason,
                grant: c.grant.clone(),
                capabilities: c.capabilities.entries().map(str::to_owned).collect(),
                commands: c.commands.clone(),
                interceptors: c.interceptor_events.clone(),
                wasm_blake3: c.code_hash.clone(),
            }
        })
        .collect();
    KernelResponse::success(&capsules)
}
