//! Capsules run by their authors: `astrid capsule run DIR`.
//!
//! The author's `astrid` process is the capsule host: it attaches to the daemon with the
//! directory instead of a ticket. The daemon loads the directory (manifest and module, checked
//! as an install would be), asks for the author's consent to what the manifest requests (the
//! CLI asks on the terminal, or takes `--yes`), and registers the capsule for as long as the
//! connection lasts: its grant is that consent, for that run only; nothing is installed or
//! persisted, and its end is audited. The daemon never starts a development capsule itself.

use std::path::Path;
use std::sync::Arc;

use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::capsules::{Capsule, CapsuleOrigin};
use crate::kernel::install::{hash_hex, load_unpinned};
use crate::kernel::{ClientLease, Kernel};

/// A development capsule's registration; dropping it (the session ended) unregisters it.
#[derive(Debug)]
pub struct Registration {
    kernel: Arc<Kernel>,
    name: String,
    /// A development run counts as a client: an ephemeral daemon stays while it runs.
    _lease: ClientLease,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.kernel.unregister_development(&self.name);
    }
}

/// Why a development capsule was not attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest requests capabilities and the author has not consented yet.
    ConsentRequired {
        capsule: String,
        /// What it requests.
        capabilities: Vec<String>,
    },
    /// Anything else, with the reason.
    Refused(String),
}

/// What was loaded and registered.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: crate::kernel::manifest::Manifest,
    /// The module.
    pub wasm: Vec<u8>,
    /// Unregisters the capsule when dropped.
    pub registration: Registration,
}

/// Loads `dir` and registers it as a development capsule, if the author consented
/// (`approve`) to what it requests.
pub fn load(kernel: &Arc<Kernel>, dir: &str, approve: bool) -> Result<Loaded, Refusal> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(Refusal::Refused(format!("{dir}: the capsule directory must be an absolute path")));
    }
    let (manifest, wasm) = load_unpinned(path).map_err(|e| Refusal::Refused(e.to_string()))?;
    let name = manifest.package.name.clone();
    let wasm = wasm.ok_or_else(|| Refusal::Refused(format!("{name} declares no [[component]] to run")))?;
    if !approve && !manifest.capabilities.is_empty() {
        let capabilities = manifest.capabilities.entries().map(str::to_owned).collect();
        return Err(Refusal::ConsentRequired { capsule: name, capabilities });
    }
    let entry = Capsule::from_manifest(manifest.clone(), path, CapsuleOrigin::Development, Some(hash_hex(&wasm)), None);
    kernel.register_development(entry).map_err(|refused| Refusal::Refused(refused.to_string()))?;
    let registration =
        Registration { kernel: Arc::clone(kernel), name, _lease: kernel.clients().open(DEFAULT_PRINCIPAL) };
    Ok(Loaded { manifest, wasm, registration })
}
