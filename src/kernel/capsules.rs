//! The capsule registry: what is installed, where it came from, and what state it is in.
//!
//! Discovery reads two directories, in priority order: the principal's
//! `home/<principal>/.local/capsules/` and the workspace's `.astrid/capsules/` (the
//! `--workspace` directory, not the process CWD as in the reference). A directory is a
//! capsule when it holds a `Capsule.toml`. Names are unique; the first directory wins.
//!
//! Each capsule fails alone: a manifest that does not parse is recorded as
//! [`CapsuleState::Failed`] with the reason, and discovery goes on. The socket bridge is
//! built in and always present as [`BRIDGE_CAPSULE`], so frontends written for the
//! reference find the capsule name they expect.
//!
//! Every capsule is checked as it is found ([`super::install::verify_installed`]): a capsule
//! without `meta.json`, or whose manifest or module no longer matches the hashes pinned at
//! install, is listed as failed with that reason and never started. Discovered capsules are
//! [`CapsuleState::Installed`] until the capsule host starts them.

use std::fs;
use std::path::{Path, PathBuf};

use super::capability::CapabilitySet;
use super::dependencies::{Interfaces, load_order};
use super::grants::GrantStatus;
use super::install::verify_installed;
use super::manifest::{Isolation, Manifest};
use crate::types::kernel_api::{CapsuleMetadataEntry, CommandInfo};

/// The name under which the built-in socket bridge is listed.
pub const BRIDGE_CAPSULE: &str = "astrid-capsule-cli";
/// The manifest file that marks a capsule directory.
pub const MANIFEST_FILE: &str = "Capsule.toml";

/// Where a capsule was found: the same enum `DescribeCapsules` reports.
pub use crate::types::management::CapsuleOrigin;

/// What a registered capsule is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapsuleState {
    /// Running and serving events.
    Ready,
    /// Installed and valid, not (yet) running.
    Installed,
    /// Stopped after a failure; the host starts it again after the delay.
    Restarting {
        /// Restarts so far in this streak.
        attempt: u32,
        /// Why it stopped.
        reason: String,
    },
    /// Could not be loaded; the reason is shown to the operator.
    Failed(String),
}

/// One entry of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// The package name from the manifest (unique in the registry).
    pub name: String,
    /// The package version, when the manifest gives one.
    pub version: Option<String>,
    /// Where it was found.
    pub origin: CapsuleOrigin,
    /// Its directory (none for built-ins).
    pub dir: Option<PathBuf>,
    pub state: CapsuleState,
    /// Slash commands it offers to frontends.
    pub commands: Vec<CommandInfo>,
    /// Event topics its interceptors listen on.
    pub interceptor_events: Vec<String>,
    /// What its manifest requests (a request, not a grant).
    pub capabilities: CapabilitySet,
    /// BLAKE3 of its module as verified at discovery (part of what the operator approves).
    pub code_hash: Option<String>,
    /// BLAKE3 of its manifest as installed (a new manifest restarts a running capsule).
    pub manifest_hash: Option<String>,
    /// What it imports and exports (decides the load order).
    pub interfaces: Interfaces,
    /// Whether the operator approved that request (set by the kernel after discovery).
    pub grant: GrantStatus,
    /// Where its manifest asks it to run.
    pub isolation: Isolation,
}

/// Every capsule the kernel knows about, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleRegistry {
    capsules: Vec<Capsule>,
}

/// The capsule directories to scan, in priority order.
#[derive(Debug, Clone)]
pub struct CapsuleDirs {
    /// `home/<principal>/.local/capsules/`.
    pub principal: PathBuf,
    /// `<workspace>/.astrid/capsules/`.
    pub workspace: PathBuf,
}

impl CapsuleRegistry {
    /// A registry holding only the built-in bridge.
    pub fn with_builtins() -> Self {
        Self {
            capsules: vec![Capsule {
                name: BRIDGE_CAPSULE.to_owned(),
                version: Some(crate::VERSION.to_owned()),
                origin: CapsuleOrigin::BuiltIn,
                dir: None,
                state: CapsuleState::Ready,
                commands: Vec::new(),
                interceptor_events: Vec::new(),
                capabilities: CapabilitySet::default(),
                code_hash: None,
                manifest_hash: None,
                interfaces: Interfaces::default(),
                grant: GrantStatus::NothingRequested,
                isolation: Isolation::Thread,
            }],
        }
    }

    /// Builds the registry: the built-ins, then every capsule found in `dirs`.
    pub fn discover(dirs: &CapsuleDirs) -> Self {
        let mut registry = Self::with_builtins();
        for (dir, origin) in [(&dirs.principal, CapsuleOrigin::Principal), (&dirs.workspace, CapsuleOrigin::Workspace)]
        {
            for capsule in scan_dir(dir, origin) {
                if let Some(existing) = registry.get(&capsule.name) {
                    log::warn!(
                        "capsule {:?} in {} ignored: the name is already taken by {}",
                        capsule.name,
                        display_dir(capsule.dir.as_deref()),
                        display_dir(existing.dir.as_deref()),
                    );
                    continue;
                }
                registry.capsules.push(capsule);
            }
        }
        registry.order_by_dependencies();
        registry
    }

    /// Puts importers after the capsules that export what they import (built-ins first).
    fn order_by_dependencies(&mut self) {
        let split = self.capsules.iter().take_while(|c| c.origin == CapsuleOrigin::BuiltIn).count();
        let installed = self.capsules.split_off(split);
        let named: Vec<(&str, &Interfaces)> = installed.iter().map(|c| (c.name.as_str(), &c.interfaces)).collect();
        let (order, problems) = load_order(&named);
        for problem in problems {
            log::warn!("capsule dependencies: {problem}");
        }
        let mut slots: Vec<Option<Capsule>> = installed.into_iter().map(Some).collect();
        self.capsules.extend(order.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)));
    }

    /// All capsules, in load order.
    pub fn capsules(&self) -> &[Capsule] {
        &self.capsules
    }

    /// All capsules, for the kernel to fill in what discovery cannot know (grants).
    pub fn capsules_mut(&mut self) -> &mut [Capsule] {
        &mut self.capsules
    }

    /// Adds the default capsule set, each unless an installed capsule has its name (then the
    /// installed one replaces it). Its grant is what its manifest asks for.
    pub fn add_defaults(&mut self) {
        for default in super::defaults::DEFAULT_CAPSULES {
            if self.get(default.name).is_some() {
                log::info!("default capsule {} replaced by the installed one", default.name);
                continue;
            }
            match default.manifest() {
                Ok(manifest) => {
                    let hash = Some(default.hash.to_owned());
                    let mut capsule =
                        Capsule::from_manifest(manifest, Path::new(""), CapsuleOrigin::Embedded, hash, None);
                    capsule.dir = None;
                    capsule.grant_what_it_asks();
                    self.capsules.push(capsule);
                }
                Err(e) => log::error!("the embedded capsule {} has a broken manifest: {e}", default.name),
            }
        }
    }

    /// Adds `capsule` at the end (a development capsule), unless its name is taken: whether
    /// it was added.
    pub fn add(&mut self, capsule: Capsule) -> bool {
        if self.get(&capsule.name).is_some() {
            return false;
        }
        self.capsules.push(capsule);
        true
    }

    /// Removes the capsule called `name` if it came from `origin`.
    pub fn remove(&mut self, name: &str, origin: CapsuleOrigin) -> Option<Capsule> {
        let index = self.capsules.iter().position(|c| c.name == name && c.origin == origin)?;
        Some(self.capsules.remove(index))
    }

    /// The capsule called `name`.
    pub fn get(&self, name: &str) -> Option<&Capsule> {
        self.capsules.iter().find(|c| c.name == name)
    }

    /// Names of every registered capsule, whatever its state.
    pub fn names(&self) -> Vec<String> {
        self.capsules.iter().map(|c| c.name.clone()).collect()
    }

    /// Names of the capsules that are running.
    pub fn ready_names(&self) -> Vec<String> {
        self.capsules.iter().filter(|c| c.state == CapsuleState::Ready).map(|c| c.name.clone()).collect()
    }

    /// Slash commands of every capsule that is not failed.
    pub fn commands(&self) -> Vec<CommandInfo> {
        self.capsules
            .iter()
            .filter(|c| !matches!(c.state, CapsuleState::Failed(_)))
            .flat_map(|c| c.commands.iter().cloned())
            .collect()
    }

    /// Interceptor metadata of every capsule that is not failed.
    pub fn metadata(&self) -> Vec<CapsuleMetadataEntry> {
        self.capsules
            .iter()
            .filter(|c| !matches!(c.state, CapsuleState::Failed(_)))
            .map(|c| CapsuleMetadataEntry { name: c.name.clone(), interceptor_events: c.interceptor_events.clone() })
            .collect()
    }
}

fn display_dir(dir: Option<&Path>) -> String {
    dir.map_or_else(|| "a built-in capsule".to_owned(), |d| d.display().to_string())
}

/// Finds the capsules in one directory: the directory itself if it holds a manifest, then
/// each subdirectory that does, in name order so discovery is deterministic.
fn scan_dir(dir: &Path, origin: CapsuleOrigin) -> Vec<Capsule> {
    let mut found = Vec::new();
    if dir.join(MANIFEST_FILE).is_file() {
        found.push(load(dir, origin));
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return found,
        Err(e) => {
            log::warn!("cannot read capsule directory {}: {e}", dir.display());
            return found;
        }
    };
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        // Hidden directories are installs in progress or leftovers, never capsules.
        .filter(|path| !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|path| path.is_dir() && path.join(MANIFEST_FILE).is_file())
        .collect();
    subdirs.sort();
    found.extend(subdirs.iter().map(|path| load(path, origin)));
    found
}

fn load(dir: &Path, origin: CapsuleOrigin) -> Capsule {
    let (manifest, code_hash, manifest_hash) = match verify_installed(dir) {
        Ok(verified) => (verified.manifest, verified.meta.wasm_hash, verified.meta.manifest_hash),
        Err(e) => {
            log::error!("capsule in {} failed: {e}", dir.display());
            let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
            return Capsule {
                name,
                version: None,
                origin,
                dir: Some(dir.to_path_buf()),
                state: CapsuleState::Failed(e.to_string()),
                commands: Vec::new(),
                interceptor_events: Vec::new(),
                capabilities: CapabilitySet::default(),
                code_hash: None,
                manifest_hash: None,
                interfaces: Interfaces::default(),
                grant: GrantStatus::NothingRequested,
                isolation: Isolation::Thread,
            };
        }
    };
    log::info!("capsule {} found in {}", manifest.package.name, dir.display());
    Capsule::from_manifest(manifest, dir, origin, code_hash, manifest_hash)
}

impl Capsule {
    /// Grants exactly what it requests, for capsules whose consent is not the operator's to
    /// give at install (the embedded set, a development run).
    pub fn grant_what_it_asks(&mut self) {
        self.grant = if self.capabilities.is_empty() { GrantStatus::NothingRequested } else { GrantStatus::Approved };
    }

    /// The registry entry of a valid manifest found in `dir`.
    pub fn from_manifest(
        manifest: Manifest,
        dir: &Path,
        origin: CapsuleOrigin,
        code_hash: Option<String>,
        manifest_hash: Option<String>,
    ) -> Self {
        let name = manifest.package.name;
        Self {
            commands: manifest
                .commands
                .into_iter()
                .map(|c| CommandInfo {
                    name: c.name,
                    description: c.description.unwrap_or_else(|| "No description".to_owned()),
                    provider_capsule: name.clone(),
                })
                .collect(),
            interceptor_events: manifest.interceptors.into_iter().map(|i| i.event).collect(),
            name,
            version: Some(manifest.package.version),
            origin,
            dir: Some(dir.to_path_buf()),
            state: CapsuleState::Installed,
            interfaces: Interfaces::from_manifest(manifest.other.get("imports"), manifest.other.get("exports")),
            isolation: manifest.components.first().map(|c| c.isolation).unwrap_or_default(),
            capabilities: manifest.capabilities,
            code_hash,
            manifest_hash,
            grant: GrantStatus::NothingRequested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Installs a capsule whose source directory is called `dir`; a manifest that does not
    /// parse is written in place as is, the way a hand-made directory would be.
    fn write_capsule(root: &Path, dir: &str, manifest: &str) {
        let source = root.with_extension(format!("src-{dir}"));
        fs::create_dir_all(&source).expect("mkdir");
        fs::write(source.join(MANIFEST_FILE), manifest).expect("write manifest");
        if crate::kernel::install::install(&source, root).is_err() {
            fs::create_dir_all(root.join(dir)).expect("mkdir");
            fs::write(root.join(dir).join(MANIFEST_FILE), manifest).expect("write manifest");
        }
    }

    #[test]
    fn discovery_orders_dedupes_and_isolates_failures() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = CapsuleDirs { principal: tmp.path().join("p"), workspace: tmp.path().join("w") };
        write_capsule(
            &dirs.principal,
            "b",
            "[package]\nname = \"echo\"\nversion = \"1.0.0\"\n\n[[command]]\nname = \"/echo\"\n",
        );
        write_capsule(&dirs.principal, "a", "[package\nname = ");
        write_capsule(&dirs.workspace, "echo-again", "[package]\nname = \"echo\"\nversion = \"1.0.0\"\n");
        write_capsule(
            &dirs.workspace,
            "guard",
            "[package]\nname = \"guard\"\nversion = \"1.0.0\"\n[[interceptor]]\nevent = \"tool.v1.execute\"\n",
        );
        let registry = CapsuleRegistry::discover(&dirs);
        assert_eq!(registry.names(), vec![BRIDGE_CAPSULE, "a", "echo", "guard"]);
        assert!(
            matches!(&registry.get("a").expect("a").state, CapsuleState::Failed(reason) if reason.contains("Capsule.toml"))
        );
        assert_eq!(registry.get("echo").expect("echo").origin, CapsuleOrigin::Principal);
        assert_eq!(registry.ready_names(), vec![BRIDGE_CAPSULE]);
        assert_eq!(registry.commands()[0].description, "No description");
        assert_eq!(
            registry.metadata().iter().find(|m| m.name == "guard").expect("guard").interceptor_events,
            vec!["tool.v1.execute"]
        );
    }
}
