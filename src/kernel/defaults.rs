//! The default capsule set: real WebAssembly built from `capsules-examples/` and compiled
//! into this binary, so `astrid run` answers on a fresh machine with nothing installed.
//! The modules are embedded deflated (`build.rs`: a third of their size) with their hashes;
//! one is inflated when its capsule starts, after the daemon is ready.
//!
//! They are registered after discovery under the origin `Embedded`, only where no installed
//! capsule has the name (installing a capsule of the same name replaces a default). Their
//! grant is the one their manifest asks for: they ship with the binary the operator chose to
//! run, so there is nobody else to consent; the registration is audited like any discovery.
//! `ASTRID_DEFAULT_CAPSULES=0` leaves them out. The committed modules are proved by CI to be
//! what their sources build to (`capsules-examples/build.sh --check`).

use std::collections::BTreeMap;
use std::path::Path;

use super::manifest::{Manifest, ManifestError};

/// One capsule of the default set.
#[derive(Debug)]
pub struct DefaultCapsule {
    /// Its package name.
    pub name: &'static str,
    /// Its `Capsule.toml`.
    pub manifest: &'static str,
    /// Its module, deflated by `build.rs` ([`Self::module`] inflates it).
    deflated: &'static [u8],
    /// The module's BLAKE3 (hex), computed by `build.rs`: what
    /// [`hash_hex`](super::install::hash_hex) gives for the inflated module.
    pub hash: &'static str,
    /// Configuration taken from the daemon's environment where the operator stored none
    /// (only the default set gets this: it is code the operator runs anyway).
    pub environment: fn(&ProviderEnvironment) -> BTreeMap<String, String>,
}

impl DefaultCapsule {
    /// The parsed manifest (errors name `<embedded>/<name>/Capsule.toml`).
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        Manifest::parse(&Path::new("<embedded>").join(self.name).join("Capsule.toml"), self.manifest)
    }

    /// Its module, inflated. Failing is a defect of this build, reported rather than trusted.
    pub fn module(&self) -> Result<Vec<u8>, String> {
        let limit = usize::try_from(super::install::MAX_MODULE_BYTES).unwrap_or(usize::MAX);
        // No need to shrink the buffer inflating grew: the bytes are freed once compiled.
        miniz_oxide::inflate::decompress_to_vec_with_limit(self.deflated, limit)
            .map_err(|e| format!("the embedded module of {} does not inflate: {e}", self.name))
    }
}

macro_rules! embedded {
    ($name:literal, $environment:expr) => {
        DefaultCapsule {
            name: $name,
            environment: $environment,
            manifest: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/capsules-examples/", $name, "/Capsule.toml")),
            deflated: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm.deflate")),
            hash: include_str!(concat!(env!("OUT_DIR"), "/", $name, ".wasm.blake3")),
        }
    };
}

/// The default set, in load order (providers and tools before the loop that calls them).
pub static DEFAULT_CAPSULES: &[DefaultCapsule] = &[
    embedded!("llm-offline", no_environment),
    embedded!("llm-openai", openai_environment),
    embedded!("tools-fs", no_environment),
    embedded!("tools-shell", no_environment),
    embedded!("orchestrator", orchestrator_environment),
];

/// The model provider settings the daemon's environment gives the default set
/// (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `ASTRID_MODEL`). Read and checked once, with the
/// daemon's other variables, before anything is created ([`Self::from_env`]); the kernel
/// keeps this copy, so a reload sees the same values the boot validated.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderEnvironment {
    /// `OPENAI_BASE_URL`: an `http://` or `https://` endpoint.
    pub base_url: Option<String>,
    /// `OPENAI_API_KEY`.
    pub api_key: Option<String>,
    /// `ASTRID_MODEL`.
    pub model: Option<String>,
}

impl std::fmt::Debug for ProviderEnvironment {
    /// The key is a secret: a debug print says only whether it is set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderEnvironment")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("model", &self.model)
            .finish()
    }
}

impl ProviderEnvironment {
    /// Reads the three variables (empty counts as unset). An endpoint that is not an
    /// `http(s)://` URL is refused here, naming the variable, rather than when a turn first
    /// reaches the provider.
    pub fn from_env() -> Result<Self, String> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        let base_url = variable("OPENAI_BASE_URL");
        if let Some(url) = &base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("OPENAI_BASE_URL must be an http:// or https:// URL, not {url:?}"));
        }
        Ok(Self { base_url, api_key: variable("OPENAI_API_KEY"), model: variable("ASTRID_MODEL") })
    }

    /// Whether the operator pointed the default set at an OpenAI-compatible provider.
    fn configured(&self) -> bool {
        self.base_url.is_some() || self.api_key.is_some()
    }
}

/// `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `ASTRID_MODEL`, as the provider's configuration.
fn openai_environment(provider: &ProviderEnvironment) -> BTreeMap<String, String> {
    [("base_url", &provider.base_url), ("api_key", &provider.api_key), ("model", &provider.model)]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value.clone()?)))
        .collect()
}

/// The orchestrator asks the OpenAI-compatible provider once an endpoint or a key is set in
/// the environment, the offline model otherwise.
fn orchestrator_environment(provider: &ProviderEnvironment) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    if provider.configured() {
        config.insert("provider".to_owned(), "openai".to_owned());
        config.insert("model".to_owned(), provider.model.clone().unwrap_or_default());
    }
    config
}

/// No configuration from the environment.
fn no_environment(_: &ProviderEnvironment) -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The default capsule called `name`.
pub fn find(name: &str) -> Option<&'static DefaultCapsule> {
    DEFAULT_CAPSULES.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_capsule_has_a_valid_manifest_named_like_it_and_a_module() {
        for capsule in DEFAULT_CAPSULES {
            let manifest = capsule.manifest().expect("valid manifest");
            assert_eq!(manifest.package.name, capsule.name);
            let module = capsule.module().expect("the module inflates");
            assert!(module.starts_with(b"\0asm"), "{} is a binary module", capsule.name);
            assert_eq!(
                capsule.hash,
                super::super::install::hash_hex(&module),
                "{}: the hash is the module's",
                capsule.name
            );
            let committed =
                format!("{}/capsules-examples/{}/{}.wasm", env!("CARGO_MANIFEST_DIR"), capsule.name, capsule.name);
            assert_eq!(
                module,
                std::fs::read(committed).expect("the committed module"),
                "{} is embedded whole",
                capsule.name
            );
        }
        assert!(find("orchestrator").is_some() && find("nope").is_none());
    }
}
