//! The default capsule set: real WebAssembly built from `capsules-examples/` and compiled
//! into this binary, so `astrid run` answers on a fresh machine with nothing installed.
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
    /// Its module.
    pub wasm: &'static [u8],
    /// Configuration taken from the daemon's environment where the operator stored none
    /// (only the default set gets this: it is code the operator runs anyway).
    pub environment: fn() -> BTreeMap<String, String>,
}

impl DefaultCapsule {
    /// The parsed manifest (errors name `<embedded>/<name>/Capsule.toml`).
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        Manifest::parse(&Path::new("<embedded>").join(self.name).join("Capsule.toml"), self.manifest)
    }
}

macro_rules! embedded {
    ($name:literal, $environment:expr) => {
        DefaultCapsule {
            name: $name,
            environment: $environment,
            manifest: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/capsules-examples/", $name, "/Capsule.toml")),
            wasm: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/capsules-examples/",
                $name,
                "/",
                $name,
                ".wasm"
            )),
        }
    };
}

/// The default set, in load order (providers and tools before the loop that calls them).
pub const DEFAULT_CAPSULES: &[DefaultCapsule] = &[
    embedded!("llm-offline", BTreeMap::new),
    embedded!("llm-openai", openai_environment),
    embedded!("tools-fs", BTreeMap::new),
    embedded!("orchestrator", orchestrator_environment),
];

/// A variable of the daemon's environment, if set and not empty.
fn variable(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `ASTRID_MODEL`, as the provider's configuration.
fn openai_environment() -> BTreeMap<String, String> {
    [("base_url", "OPENAI_BASE_URL"), ("api_key", "OPENAI_API_KEY"), ("model", "ASTRID_MODEL")]
        .into_iter()
        .filter_map(|(key, name)| Some((key.to_owned(), variable(name)?)))
        .collect()
}

/// The orchestrator asks the OpenAI-compatible provider once an endpoint or a key is set in
/// the environment, the offline model otherwise.
fn orchestrator_environment() -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    if variable("OPENAI_BASE_URL").is_some() || variable("OPENAI_API_KEY").is_some() {
        config.insert("provider".to_owned(), "openai".to_owned());
        config.insert("model".to_owned(), variable("ASTRID_MODEL").unwrap_or_default());
    }
    config
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
            assert!(capsule.wasm.starts_with(b"\0asm"), "{} is a binary module", capsule.name);
        }
        assert!(find("orchestrator").is_some() && find("nope").is_none());
    }
}
