//! Load order from `[imports]` / `[exports]`: a capsule starts after the capsules that
//! export what it imports.
//!
//! Both manifest surfaces are accepted, nested (`[imports.astrid] session = "^1.0"`) and
//! flat (`[imports] "astrid:session" = "^1.0"`); an import is a semver requirement (or
//! `{version, optional}`), an export an exact version (or `{version}`). Every exporter whose
//! version satisfies an import gets an edge to the importer (Kahn's algorithm, ties kept in
//! discovery order). A cycle is reported and the capsules in it keep discovery order; an
//! unmet required import is a warning. Nothing here stops a capsule from loading.

use std::collections::BTreeMap;

/// What a capsule imports and exports, keyed by `namespace:interface`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// `namespace:interface` → (requirement, optional).
    pub imports: BTreeMap<String, (String, bool)>,
    /// `namespace:interface` → version.
    pub exports: BTreeMap<String, String>,
}

impl Interfaces {
    /// Reads the `imports` and `exports` tables of a manifest (already validated as tables).
    pub fn from_manifest(imports: Option<&toml::Value>, exports: Option<&toml::Value>) -> Self {
        let mut interfaces = Self::default();
        for (name, value) in flatten(imports) {
            let (requirement, optional) = match value {
                toml::Value::String(requirement) => (requirement.clone(), false),
                toml::Value::Table(table) => (
                    table.get("version").and_then(toml::Value::as_str).unwrap_or("*").to_owned(),
                    table.get("optional").and_then(toml::Value::as_bool).unwrap_or(false),
                ),
                _ => continue,
            };
            interfaces.imports.insert(name, (requirement, optional));
        }
        for (name, value) in flatten(exports) {
            let version = match value {
                toml::Value::String(version) => version.clone(),
                toml::Value::Table(table) => match table.get("version").and_then(toml::Value::as_str) {
                    Some(version) => version.to_owned(),
                    None => continue,
                },
                _ => continue,
            };
            interfaces.exports.insert(name, version);
        }
        interfaces
    }
}

/// `namespace:interface` → value, from either surface.
fn flatten(table: Option<&toml::Value>) -> Vec<(String, &toml::Value)> {
    let Some(toml::Value::Table(table)) = table else { return Vec::new() };
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) if !key.contains(':') && !inner.contains_key("version") => {
                out.extend(inner.iter().map(|(iface, v)| (format!("{key}:{iface}"), v)));
            }
            _ => out.push((key.clone(), value)),
        }
    }
    out
}

fn satisfies(requirement: &str, version: &str) -> bool {
    match (semver::VersionReq::parse(requirement), semver::Version::parse(version)) {
        (Ok(requirement), Ok(version)) => requirement.matches(&version),
        _ => false,
    }
}

/// The load order of `capsules` (name, interfaces) as indices, and the problems found.
pub fn load_order(capsules: &[(&str, &Interfaces)]) -> (Vec<usize>, Vec<String>) {
    let n = capsules.len();
    let mut problems = Vec::new();
    let mut incoming = vec![0usize; n];
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (importer, (name, interfaces)) in capsules.iter().enumerate() {
        for (interface, (requirement, optional)) in &interfaces.imports {
            let providers: Vec<usize> = capsules
                .iter()
                .enumerate()
                .filter(|(provider, (_, other))| {
                    *provider != importer && other.exports.get(interface).is_some_and(|v| satisfies(requirement, v))
                })
                .map(|(provider, _)| provider)
                .collect();
            if providers.is_empty() && !optional {
                problems.push(format!("{name} imports {interface} {requirement}, which no installed capsule exports"));
            }
            for provider in providers {
                edges[provider].push(importer);
                incoming[importer] += 1;
            }
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    // Always take the first ready capsule in discovery order: stable and predictable.
    while let Some(next) = (0..n).find(|&i| !placed[i] && incoming[i] == 0) {
        placed[next] = true;
        order.push(next);
        for &importer in &edges[next] {
            incoming[importer] -= 1;
        }
    }
    if order.len() < n {
        let cycle: Vec<&str> = (0..n).filter(|&i| !placed[i]).map(|i| capsules[i].0).collect();
        problems.push(format!("import cycle among {}; they load in discovery order", cycle.join(", ")));
        order.extend((0..n).filter(|&i| !placed[i]));
    }
    (order, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces(text: &str) -> Interfaces {
        let table: toml::Table = toml::from_str(text).expect("toml");
        Interfaces::from_manifest(table.get("imports"), table.get("exports"))
    }

    #[test]
    fn importers_load_after_matching_exporters_and_cycles_are_named() {
        let react = interfaces("[imports.astrid]\nsession = \"^1.0\"\nllm = { version = \"^2\", optional = true }\n");
        let session = interfaces("[exports]\n\"astrid:session\" = \"1.3.0\"\n");
        let old_session = interfaces("[exports.astrid]\nsession = { version = \"0.9.0\" }\n");
        let capsules = [("react", &react), ("old", &old_session), ("session", &session)];
        let (order, problems) = load_order(&capsules);
        assert_eq!(order, vec![1, 2, 0], "react after the session store whose version matches");
        assert!(problems.is_empty(), "{problems:?}");

        let lonely = [("react", &react)];
        let (_, problems) = load_order(&lonely);
        assert_eq!(problems, vec!["react imports astrid:session ^1.0, which no installed capsule exports"]);

        let a = interfaces("[imports]\n\"x:b\" = \"^1\"\n[exports]\n\"x:a\" = \"1.0.0\"\n");
        let b = interfaces("[imports]\n\"x:a\" = \"^1\"\n[exports]\n\"x:b\" = \"1.0.0\"\n");
        let (order, problems) = load_order(&[("a", &a), ("b", &b)]);
        assert_eq!(order, vec![0, 1]);
        assert_eq!(problems, vec!["import cycle among a, b; they load in discovery order"]);
    }
}
