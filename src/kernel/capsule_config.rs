//! What `get_config` answers: a capsule's own `[env]` values.
//!
//! Values the operator gave live in `home/<principal>/.config/env/<capsule>.env.json` (a JSON
//! object of strings, 0600, outside the capsule directory so a reinstall keeps it). A key the
//! file does not set falls back to the manifest's `default`. Only keys the manifest declares
//! are ever handed to the capsule, and only to that capsule: one capsule's secrets are not in
//! another's map.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use crate::home::AstridHome;
use crate::kernel::manifest::EnvDef;
use crate::types::{OnboardingField, OnboardingFieldType};

/// The env file of `capsule` for `principal`.
pub fn env_file(home: &AstridHome, principal: &str, capsule: &str) -> PathBuf {
    home.principal_dir(principal).join(".config").join("env").join(format!("{capsule}.env.json"))
}

/// The declared keys that have a value, and the keys that have none and still need one. A
/// value is what the operator stored, else `fallback` (the daemon's environment, for the
/// embedded default set only), else the manifest's default.
pub fn resolve(
    home: &AstridHome,
    principal: &str,
    capsule: &str,
    declared: &BTreeMap<String, EnvDef>,
    fallback: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let given = stored(home, principal, capsule);
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for (key, def) in declared {
        let value = given.get(key).or_else(|| fallback.get(key)).cloned().or_else(|| {
            def.default.as_ref().map(|v| match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        match value {
            Some(value) => {
                values.insert(key.clone(), value);
            }
            None => missing.push(key.clone()),
        }
    }
    (values, missing)
}

/// The values the operator stored for `capsule` (its env file; none when there is none).
pub fn stored(home: &AstridHome, principal: &str, capsule: &str) -> BTreeMap<String, String> {
    let path = env_file(home, principal, capsule);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("{} is not a JSON object of strings ({e}); ignoring it", path.display());
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Merges `values` into the capsule's env file, written 0600 (in a 0700 directory) through
/// a temporary file and a rename, so a crash never leaves half a file of secrets.
pub fn store_values(
    home: &AstridHome,
    principal: &str,
    capsule: &str,
    values: &BTreeMap<String, String>,
) -> std::io::Result<PathBuf> {
    update_values(home, principal, capsule, values, &[])
}

/// [`store_values`], also removing the keys in `remove` (what they fall back to applies).
pub fn update_values(
    home: &AstridHome,
    principal: &str,
    capsule: &str,
    values: &BTreeMap<String, String>,
    remove: &[&str],
) -> std::io::Result<PathBuf> {
    let path = env_file(home, principal, capsule);
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut merged: BTreeMap<String, String> =
        std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    merged.retain(|key, _| !remove.contains(&key.as_str()));
    merged.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(&serde_json::to_vec_pretty(&merged).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// How to ask a person for each of `missing` (an `OnboardingRequired` payload).
pub fn onboarding_fields(declared: &BTreeMap<String, EnvDef>, missing: &[String]) -> Vec<OnboardingField> {
    missing
        .iter()
        .filter_map(|key| {
            let def = declared.get(key)?;
            let field_type = match def.kind.as_str() {
                "secret" => OnboardingFieldType::Secret,
                "array" => OnboardingFieldType::Array,
                _ if def.enum_values.len() > 1 => OnboardingFieldType::Enum(def.enum_values.clone()),
                _ => OnboardingFieldType::Text,
            };
            Some(OnboardingField {
                key: key.clone(),
                prompt: def.request.clone().unwrap_or_else(|| format!("Value for {key}")),
                description: def.description.clone(),
                field_type,
                default: None,
                placeholder: def.placeholder.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_keys_reach_the_capsule_and_defaults_fill_the_gaps() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path());
        let file = env_file(&home, "default", "llm");
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, r#"{"API_KEY": "sk-1", "OTHER_CAPSULES_KEY": "x"}"#).expect("write");
        let manifest = crate::kernel::manifest::Manifest::parse(
            std::path::Path::new("Capsule.toml"),
            "[package]\nname = \"llm\"\nversion = \"1.0.0\"\n[env.API_KEY]\ntype = \"secret\"\n[env.MODEL]\ntype = \"string\"\ndefault = \"small\"\n[env.REGION]\ntype = \"string\"\n",
        )
        .expect("manifest");
        let none = BTreeMap::new();
        let (values, missing) = resolve(&home, "default", "llm", &manifest.env, &none);
        assert_eq!(values.get("API_KEY").map(String::as_str), Some("sk-1"));
        assert_eq!(values.get("MODEL").map(String::as_str), Some("small"));
        assert!(!values.contains_key("OTHER_CAPSULES_KEY"), "undeclared keys are not handed out");
        assert_eq!(missing, vec!["REGION"]);
        let fields = onboarding_fields(&manifest.env, &missing);
        assert_eq!((fields[0].key.as_str(), &fields[0].field_type), ("REGION", &OnboardingFieldType::Text));

        let stored =
            store_values(&home, "default", "llm", &[("REGION".to_owned(), "eu".to_owned())].into()).expect("store");
        assert_eq!(std::fs::metadata(&stored).expect("meta").permissions().mode() & 0o777, 0o600);
        let (values, missing) = resolve(&home, "default", "llm", &manifest.env, &none);
        assert_eq!(values.get("REGION").map(String::as_str), Some("eu"));
        assert_eq!(values.get("API_KEY").map(String::as_str), Some("sk-1"), "merged, not replaced");
        assert!(missing.is_empty());
        // The environment fallback comes after what is stored and before the default.
        let fallback: BTreeMap<String, String> =
            [("MODEL".to_owned(), "large".to_owned()), ("API_KEY".to_owned(), "sk-env".to_owned())].into();
        let (values, _) = resolve(&home, "default", "llm", &manifest.env, &fallback);
        assert_eq!(values.get("MODEL").map(String::as_str), Some("large"));
        assert_eq!(values.get("API_KEY").map(String::as_str), Some("sk-1"), "stored wins");
    }
}
