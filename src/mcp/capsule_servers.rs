//! MCP servers a capsule declares (`[[mcp_server]] type = "stdio"`), as server configs.
//!
//! Only a capsule whose grant the operator approved gets its servers, and only under its own
//! rules: a command with a `/` that is relative must stay inside the capsule's directory
//! (after resolving symlinks); any other command (a bare name looked up on `PATH`, an
//! absolute path) must be granted by the capsule's `host_process` capability (checked and
//! audited like every capability). The server runs in the capsule's directory with the
//! manifest's `env` and the capsule's resolved `[env]` values.

use std::path::Path;
use std::time::Duration;

use super::config::{RestartPolicy, ServerConfig, valid_name};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::Kernel;
use crate::kernel::capability::Capability;
use crate::kernel::grants::GrantStatus;
use crate::kernel::manifest::Manifest;

const INIT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The servers every approved capsule declares, and one message per declaration refused.
pub fn collect(kernel: &Kernel) -> (Vec<ServerConfig>, Vec<String>) {
    let capsules: Vec<(String, std::path::PathBuf)> = kernel
        .capsules()
        .capsules()
        .iter()
        .filter(|c| c.grant == GrantStatus::Approved)
        .filter_map(|c| Some((c.name.clone(), c.dir.clone()?)))
        .collect();
    let mut servers = Vec::new();
    let mut refused = Vec::new();
    for (capsule, dir) in capsules {
        let Ok(manifest) = Manifest::load(&dir.join(crate::kernel::capsules::MANIFEST_FILE)) else { continue };
        for declared in &manifest.mcp_servers {
            if declared.kind.as_deref() != Some("stdio") {
                continue;
            }
            match server(kernel, &capsule, &dir, &manifest, declared) {
                Ok(server) => servers.push(server),
                Err(reason) => refused.push(format!("capsule {capsule}: mcp_server {:?}: {reason}", declared.id)),
            }
        }
    }
    (servers, refused)
}

fn server(
    kernel: &Kernel,
    capsule: &str,
    dir: &Path,
    manifest: &Manifest,
    declared: &crate::kernel::manifest::McpServer,
) -> Result<ServerConfig, String> {
    if !valid_name(&declared.id) {
        return Err("an MCP server id is 1 to 64 of A-Z a-z 0-9 _ -".to_owned());
    }
    let Some(command) = declared.command.as_deref().filter(|c| !c.trim().is_empty()) else {
        return Err("a stdio server needs a command".to_owned());
    };
    let command = if command.contains('/') && !command.starts_with('/') {
        let root = dir.canonicalize().map_err(|e| format!("cannot resolve the capsule directory: {e}"))?;
        let resolved = dir.join(command).canonicalize().map_err(|e| format!("{command}: {e}"))?;
        if !resolved.starts_with(&root) {
            return Err(format!("{command} leads outside the capsule's directory"));
        }
        resolved.display().to_string()
    } else if kernel.check_capability(DEFAULT_PRINCIPAL, capsule, &Capability::HostProcess(command)) {
        command.to_owned()
    } else {
        return Err(format!("{command} is not in the capsule's host_process grant"));
    };
    let (mut env, _) = crate::kernel::capsule_config::resolve(
        &kernel.config().home,
        DEFAULT_PRINCIPAL,
        capsule,
        &manifest.env,
        &std::collections::BTreeMap::new(),
    );
    env.extend(declared.env.clone());
    Ok(ServerConfig {
        name: declared.id.clone(),
        command,
        args: declared.args.clone(),
        env,
        cwd: Some(dir.to_path_buf()),
        description: declared.description.clone(),
        init_timeout: INIT_TIMEOUT,
        call_timeout: CALL_TIMEOUT,
        restart: RestartPolicy::Always,
        capsule: Some(capsule.to_owned()),
    })
}
