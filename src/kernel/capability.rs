//! Capabilities: what a capsule asks for, what the operator granted, and the check.
//!
//! Deny by default. A manifest's `[capabilities]` table is only a *request*; nothing in it
//! is effective until the operator approves that exact set. The approval is stored under
//! the set's BLAKE3 fingerprint, so a manifest that asks for more (or different) things
//! asks again instead of silently inheriting the old grant.
//!
//! A set is kept as sorted, normalised strings (`fs_read:cwd://src`, `net:api.example.com`),
//! which makes the fingerprint independent of TOML formatting and key order.
//!
//! Only kinds the kernel enforces can be asked for. The reference's other kinds (`net_bind`,
//! `net_connect`, `kv`, `identity`, `uplink`, `allow_prompt_injection`) are refused by name:
//! shown to an operator for consent, they would look like a limit that nothing applies.

use std::collections::BTreeSet;
use std::fmt;

use super::topic;

/// The capability fields of `[capabilities]`, each a list of strings, each enforced by a
/// check ([`Capability`]).
const LIST_FIELDS: &[&str] = &["net", "fs_read", "fs_write", "host_process", "process", "ipc_publish", "ipc_subscribe"];
/// Capability kinds of the reference runtime that nothing here enforces, with what a capsule
/// has instead.
const UNENFORCED: &[(&str, &str)] = &[
    ("net_bind", "capsules cannot listen on sockets"),
    ("net_connect", "capsule HTTP is granted by `net` hosts"),
    ("kv", "every capsule has its own KV namespace, and no other"),
    ("identity", "capsules cannot resolve or link identities"),
    ("uplink", "capsules publish as themselves only"),
    ("allow_prompt_injection", "capsules cannot inject into prompts"),
];

/// Why a `[capabilities]` table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A key that is not a capability (a typo would otherwise silently drop a permission).
    #[error("unknown capability `{0}` (known: {known})", known = known_fields())]
    Unknown(String),
    /// A kind the reference knows that nothing here enforces.
    #[error(
        "capability `{field}` is not enforced by this Astrid ({instead}), so granting it would mean nothing: remove it from [capabilities]"
    )]
    Unenforced {
        /// The field.
        field: String,
        /// What a capsule has instead.
        instead: &'static str,
    },
    /// A value of the wrong type.
    #[error("capability `{field}` must be {expected}")]
    Type {
        /// The field.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// An entry that can never be valid.
    #[error("invalid `{field}` entry {entry:?}: {reason}")]
    Entry {
        /// The field.
        field: String,
        entry: String,
        /// Why.
        reason: &'static str,
    },
}

fn known_fields() -> String {
    LIST_FIELDS.join(", ")
}

/// A normalised, ordered set of capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySet {
    entries: BTreeSet<String>,
}

impl CapabilitySet {
    /// Parses a manifest's `[capabilities]` table. Unknown keys are errors.
    pub fn from_manifest(table: &toml::Table) -> Result<Self, CapabilityError> {
        let mut entries = BTreeSet::new();
        for (field, value) in table {
            if let Some((_, instead)) = UNENFORCED.iter().find(|(name, _)| name == field) {
                return Err(CapabilityError::Unenforced { field: field.clone(), instead });
            }
            if !LIST_FIELDS.contains(&field.as_str()) {
                return Err(CapabilityError::Unknown(field.clone()));
            }
            let toml::Value::Array(items) = value else {
                return Err(CapabilityError::Type { field: field.clone(), expected: "a list of strings" });
            };
            for item in items {
                let toml::Value::String(entry) = item else {
                    return Err(CapabilityError::Type { field: field.clone(), expected: "a list of strings" });
                };
                validate_entry(field, entry)?;
                entries.insert(format!("{field}:{}", entry.trim()));
            }
        }
        Ok(Self { entries })
    }

    /// Builds a set from already-normalised strings (as stored with a grant).
    pub fn from_entries(entries: impl IntoIterator<Item = String>) -> Self {
        Self { entries: entries.into_iter().collect() }
    }

    /// Whether nothing is requested (such a capsule needs no approval).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The normalised entries, sorted.
    pub fn entries(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(String::as_str)
    }

    /// BLAKE3 of the canonical form, as 64 hex characters.
    pub fn fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"astrid-capabilities-v1\n");
        for entry in &self.entries {
            hasher.update(entry.as_bytes());
            hasher.update(b"\n");
        }
        hasher.finalize().to_hex().to_string()
    }

    /// Whether the set allows `request`; returns the entry that allowed it (the "rule").
    pub fn allows(&self, request: &Capability<'_>) -> Option<&str> {
        self.entries().find(|entry| entry_allows(entry, request))
    }
}

impl fmt::Display for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return f.write_str("(none)");
        }
        f.write_str(&self.entries.iter().cloned().collect::<Vec<_>>().join(", "))
    }
}

fn validate_entry(field: &str, entry: &str) -> Result<(), CapabilityError> {
    let bad = |reason| Err(CapabilityError::Entry { field: field.to_owned(), entry: entry.to_owned(), reason });
    let entry = entry.trim();
    if entry.is_empty() {
        return bad("empty");
    }
    match field {
        "fs_read" | "fs_write" if entry.split('/').any(|segment| segment == "..") => bad("`..` is never allowed"),
        "ipc_publish" | "ipc_subscribe" if entry.split('.').any(str::is_empty) => bad("empty topic segment"),
        // A program is named as a command line starts it: a bare name looked up on the
        // sandbox's PATH. A path would suggest a file is pinned, and none is.
        "process" if entry != "*" && !entry.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)) => {
            bad("a program name (`cargo`), or `*` for any")
        }
        _ => Ok(()),
    }
}

/// One thing a capsule attempts, to be checked against its granted set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability<'a> {
    /// Publish on a topic.
    IpcPublish(&'a str),
    /// Subscribe to a topic pattern.
    IpcSubscribe(&'a str),
    /// Read a workspace path (relative, already confined by the VFS).
    FsRead(&'a str),
    /// Write a workspace path (relative, already confined by the VFS).
    FsWrite(&'a str),
    /// Reach a network host.
    Net(&'a str),
    /// Start a program on the host (an MCP server a capsule declares): the command as
    /// written in the manifest.
    HostProcess(&'a str),
    /// Run a program in the command sandbox (`process_spawn`): its name, `sh` for a shell
    /// command line (so only `sh` or `*` allows one: a shell runs anything).
    Process(&'a str),
}

impl fmt::Display for Capability<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IpcPublish(t) => write!(f, "ipc_publish {t}"),
            Self::IpcSubscribe(t) => write!(f, "ipc_subscribe {t}"),
            Self::FsRead(p) => write!(f, "fs_read {p}"),
            Self::FsWrite(p) => write!(f, "fs_write {p}"),
            Self::Net(h) => write!(f, "net {h}"),
            Self::HostProcess(c) => write!(f, "host_process {c}"),
            Self::Process(p) => write!(f, "process {p}"),
        }
    }
}

fn entry_allows(entry: &str, request: &Capability<'_>) -> bool {
    let (field, value) = entry.split_once(':').unwrap_or((entry, ""));
    match request {
        Capability::IpcPublish(t) => field == "ipc_publish" && topic::acl_matches(value, t),
        Capability::IpcSubscribe(t) => field == "ipc_subscribe" && topic::acl_matches(value, t),
        Capability::FsRead(path) => field == "fs_read" && fs_pattern_allows(value, path),
        Capability::FsWrite(path) => field == "fs_write" && fs_pattern_allows(value, path),
        Capability::Net(host) => field == "net" && net_pattern_allows(value, host),
        Capability::Process(program) => field == "process" && (value == "*" || value == *program),
        Capability::HostProcess(command) => {
            field == "host_process"
                && (value == *command || value.strip_suffix('*').is_some_and(|prefix| command.starts_with(prefix)))
        }
    }
}

/// `*` covers the whole workspace; `cwd://sub` covers `sub` and everything below it
/// (component-wise, so `cwd://src` does not cover `srcx`). Paths reaching this check are
/// already relative and free of `..` (the VFS guarantees it).
fn fs_pattern_allows(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(prefix) = pattern.strip_prefix("cwd://") else { return false };
    let prefix = prefix.trim_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// `*` is any host, `example.com` is that host and its subdomains. Case-insensitive.
fn net_pattern_allows(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    pattern == "*" || host == pattern || host.strip_suffix(&pattern).is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(toml_text: &str) -> Result<CapabilitySet, CapabilityError> {
        let table: toml::Table = toml::from_str(toml_text).expect("toml");
        CapabilitySet::from_manifest(&table)
    }

    #[test]
    fn fingerprint_ignores_order_and_formatting_but_not_content() {
        let a = set("fs_read = [\"cwd://src\", \"*\"]\nnet = [\"a.example\"]\n").expect("a");
        let b = set("net = [\"a.example\"]\nfs_read = [ \"*\", \"cwd://src\" ]\n").expect("b");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = set("net = [\"a.example\"]\nfs_read = [\"*\", \"cwd://src\", \"cwd://docs\"]\n").expect("c");
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(set("net = []").expect("empty").entries().count(), 0);
    }

    #[test]
    fn unknown_and_malformed_capabilities_are_refused() {
        assert_eq!(set("fs_raed = [\"*\"]"), Err(CapabilityError::Unknown("fs_raed".into())));
        assert!(matches!(set("net = \"x\""), Err(CapabilityError::Type { .. })));
        assert!(matches!(set("fs_write = [\"cwd://../etc\"]"), Err(CapabilityError::Entry { .. })));
    }

    #[test]
    fn kinds_nothing_enforces_are_refused_by_name() {
        for text in [
            "net_bind = [\"0.0.0.0:80\"]",
            "net_connect = [\"example.com:443\"]",
            "kv = [\"*\"]",
            "identity = [\"admin\"]",
            "uplink = true",
            "allow_prompt_injection = true",
        ] {
            let field = text.split(' ').next().expect("field");
            let refused = set(text).expect_err(text);
            assert!(matches!(&refused, CapabilityError::Unenforced { field: f, .. } if f == field), "{refused:?}");
            assert!(refused.to_string().contains("not enforced"), "{refused}");
        }
    }

    #[test]
    fn checks_follow_each_field_rules() {
        let granted = set(
            "fs_read = [\"cwd://src\"]\nfs_write = [\"*\"]\nnet = [\"example.com\"]\nipc_publish = [\"tool.v1.*\"]",
        )
        .expect("set");
        assert_eq!(granted.allows(&Capability::FsRead("src/main.rs")), Some("fs_read:cwd://src"));
        assert_eq!(granted.allows(&Capability::FsRead("srcx/main.rs")), None);
        assert_eq!(granted.allows(&Capability::FsRead("README.md")), None);
        assert!(granted.allows(&Capability::FsWrite("any/where")).is_some());
        assert!(granted.allows(&Capability::Net("api.Example.com")).is_some());
        assert_eq!(granted.allows(&Capability::Net("badexample.com")), None);
        assert!(granted.allows(&Capability::IpcPublish("tool.v1.result")).is_some());
        assert_eq!(granted.allows(&Capability::IpcPublish("tool.v1.result.x")), None);
        assert_eq!(granted.allows(&Capability::IpcSubscribe("tool.v1.result")), None);
        assert_eq!(CapabilitySet::default().allows(&Capability::FsRead("x")), None, "empty set denies");
    }

    #[test]
    fn a_process_grant_names_programs_and_only_sh_or_any_allows_a_shell() {
        let named = set("process = [\"cargo\", \"git\"]").expect("set");
        assert_eq!(named.allows(&Capability::Process("cargo")), Some("process:cargo"));
        assert_eq!(named.allows(&Capability::Process("cargo-x")), None);
        assert_eq!(named.allows(&Capability::Process("sh")), None, "a shell line needs sh or *");
        assert_eq!(named.allows(&Capability::HostProcess("cargo")), None, "sandboxed is not on the host");
        let any = set("process = [\"*\"]").expect("set");
        assert!(any.allows(&Capability::Process("sh")).is_some());
        for bad in ["/usr/bin/cargo", "cargo test", "../sh", ""] {
            let text = format!("process = [{bad:?}]");
            assert!(matches!(set(&text), Err(CapabilityError::Entry { .. })), "{bad:?} must be refused");
        }
    }
}
