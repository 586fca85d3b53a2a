//! The default capsule set: real WebAssembly built from `capsules-examples/` and compiled
//! into this binary, so `astrid run` answers on a fresh machine with nothing installed.
//!
//! They are registered after discovery under the origin `Embedded`, only where no installed
//! capsule has the name (installing a capsule of the same name replaces a default). Their
//! grant is the one their manifest asks for: they ship with the binary the operator chose to
//! run, so there is nobody else to consent; the registration is audited like any discovery.
//! `ASTRID_DEFAULT_CAPSULES=0` leaves them out. The committed modules are proved by CI to be
//! what their sources build to (`capsules-examples/build.sh --check`).

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
}

impl DefaultCapsule {
    /// The parsed manifest (errors name `<embedded>/<name>/Capsule.toml`).
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        Manifest::parse(&Path::new("<embedded>").join(self.name).join("Capsule.toml"), self.manifest)
    }
}

macro_rules! embedded {
    ($name:literal) => {
        DefaultCapsule {
            name: $name,
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

/// The default set, in load order (the provider before the loop that calls it).
pub const DEFAULT_CAPSULES: &[DefaultCapsule] = &[embedded!("llm-offline"), embedded!("orchestrator")];

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
