//! Which model answers: the agent's effective model settings, and where they come from.
//!
//! The settings live in the home, in the configuration of the two capsules that decide them
//! (`orchestrator`: `provider`, `model`; `llm-openai`: `base_url`, `model`, `api_key`), where
//! `astrid config model` writes them (0600, like every capsule's configuration). For the
//! embedded default set, the daemon's environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
//! `ASTRID_MODEL`) fills what the home does not set; the manifests' defaults fill the rest.
//! `GetStatus` reports the result, so a frontend can tell whether the model it was asked
//! to use is the one the daemon runs, and never has to guess.

use std::collections::BTreeMap;

use super::Kernel;
use super::capsule_config;
use super::capsules::CapsuleOrigin;
use super::defaults;
use super::manifest::Manifest;
use crate::home::DEFAULT_PRINCIPAL;
use crate::types::ModelStatus;

/// The capsule whose `provider` decides who answers.
pub const ORCHESTRATOR: &str = "orchestrator";
/// The OpenAI-compatible provider capsule.
pub const OPENAI: &str = "llm-openai";
/// Where `llm-openai` goes when nothing says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://api.openai.com/v1";

/// The fingerprint of an API key shown instead of the key: `blake3:` and 8 hex digits.
pub fn key_fingerprint(key: &str) -> String {
    format!("blake3:{}", &blake3::hash(key.as_bytes()).to_hex()[..8])
}

/// One capsule's configuration values, with where each came from.
struct Settings {
    values: BTreeMap<String, String>,
    /// Keys the home sets, and keys the daemon's environment sets.
    from_home: Vec<String>,
    from_environment: Vec<String>,
}

impl Settings {
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}

impl Kernel {
    /// The agent's model settings, or `None` when no orchestrator is registered.
    pub fn model(&self) -> Option<ModelStatus> {
        let orchestrator = self.settings(ORCHESTRATOR)?;
        let provider = orchestrator.get("provider").unwrap_or("offline").to_owned();
        let mut model = orchestrator.get("model").unwrap_or_default().to_owned();
        let mut sources = vec![&orchestrator];
        let openai = (provider == "openai").then(|| self.settings(OPENAI)).flatten();
        let (mut endpoint, mut key) = (None, None);
        if let Some(openai) = &openai {
            endpoint = Some(openai.get("base_url").unwrap_or(DEFAULT_ENDPOINT).to_owned());
            key = openai.get("api_key").map(key_fingerprint);
            if model.is_empty() {
                model = openai.get("model").unwrap_or_default().to_owned();
            }
            sources.push(openai);
        }
        let decided = |keys: fn(&Settings) -> &Vec<String>| {
            sources
                .iter()
                .any(|s| keys(s).iter().any(|k| ["provider", "model", "base_url", "api_key"].contains(&k.as_str())))
        };
        let source = if decided(|s| &s.from_home) {
            "home"
        } else if decided(|s| &s.from_environment) {
            "environment"
        } else {
            "default"
        };
        Some(ModelStatus { provider, model, endpoint, key, source: source.to_owned() })
    }

    /// The configuration `name` would run with now: what the home stores, else (embedded
    /// capsules) the daemon's environment, else its manifest's defaults.
    fn settings(&self, name: &str) -> Option<Settings> {
        let (manifest, fallback) = {
            let registry = self.capsules();
            let capsule = registry.get(name)?;
            match (capsule.origin, &capsule.dir) {
                (CapsuleOrigin::Embedded, _) => {
                    let embedded = defaults::find(name)?;
                    (embedded.manifest().ok()?, (embedded.environment)(&self.config().provider))
                }
                (_, Some(dir)) => (Manifest::load(&dir.join(super::capsules::MANIFEST_FILE)).ok()?, BTreeMap::new()),
                _ => return None,
            }
        };
        let home = &self.config().home;
        let stored = capsule_config::stored(home, DEFAULT_PRINCIPAL, name);
        let (values, _) = capsule_config::resolve(home, DEFAULT_PRINCIPAL, name, &manifest.env, &fallback);
        let declared = |key: &&String| manifest.env.contains_key(key.as_str());
        Some(Settings {
            from_home: stored.keys().filter(declared).cloned().collect(),
            from_environment: fallback.keys().filter(declared).filter(|k| !stored.contains_key(*k)).cloned().collect(),
            values,
        })
    }
}
