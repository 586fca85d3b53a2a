//! `Capsule.toml`, parsed strictly.
//!
//! The reference ignores unknown keys, so a typo silently drops a permission or a handler.
//! Here every table refuses unknown keys (`deny_unknown_fields`), and every error names the
//! file, line and column, from the TOML parser or from our own checks (which keep the span
//! of the value they reject). The `[capabilities]` table is validated by
//! [`CapabilitySet::from_manifest`] and remains a request until the operator approves it.
//!
//! A manifest is untrusted input that the daemon parses at install, at every discovery and
//! before every start, and keeps parts of (the registry, grants in the KV store, the bus
//! subscription of its interceptors). So what it may hold is bounded *before* anything of it
//! is used: its size is checked before it is parsed ([`MAX_MANIFEST_BYTES`]), then every
//! array and table, every string and the nesting depth (see [`limits`]), each refusal naming
//! the limit and where it was passed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::capability::CapabilitySet;
use super::topic;

/// Largest `Capsule.toml`, in bytes, checked before it is read whole or parsed (the examples
/// are under 3 KiB).
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// What a manifest may hold, wherever it is: the generous limits a hand-written manifest
/// never meets, and the tighter ones of the parts that cost the host most.
pub mod limits {
    /// Most entries of any array or table (`[[interceptor]]`, `[[command]]`, `[[tool]]`, a
    /// capability kind's list, `args`, `[imports]`, …).
    pub const MAX_ENTRIES: usize = 256;
    /// Most `[[mcp_server]]` entries: each is a process the daemon may start.
    pub const MAX_MCP_SERVERS: usize = 16;
    /// Most `[env.KEY]` declarations.
    pub const MAX_ENV: usize = 64;
    /// Most capability entries of all kinds together (kept in the grant the operator approves).
    pub const MAX_CAPABILITIES: usize = 512;
    /// Longest capability entry, in bytes.
    pub const MAX_CAPABILITY_BYTES: usize = 1024;
    /// Longest string (or key) anywhere else, in bytes.
    pub const MAX_STRING_BYTES: usize = 4096;
    /// Deepest nesting of tables and arrays (`[package.metadata]` tables included).
    pub const MAX_DEPTH: usize = 8;
}

/// A manifest that failed to load, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// A parsed and validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `[package]`.
    pub package: Package,
    /// What the capsule requests (not yet granted).
    pub capabilities: CapabilitySet,
    /// `[[component]]` (only the first is loaded).
    pub components: Vec<Component>,
    /// `[[command]]`.
    pub commands: Vec<Command>,
    /// `[[interceptor]]`.
    pub interceptors: Vec<Interceptor>,
    /// `[env.KEY]`.
    pub env: BTreeMap<String, EnvDef>,
    /// `[[mcp_server]]`.
    pub mcp_servers: Vec<McpServer>,
    /// `[[tool]]`.
    pub tools: Vec<Tool>,
    /// Tables accepted as written and interpreted by the parts of the host that use them:
    /// `imports`, `exports`, `publish`, `subscribe` (keyed by table name), and the arrays
    /// `context_file`, `skill`, `uplink`, `topic`.
    pub other: BTreeMap<&'static str, toml::Value>,
}

/// `[package]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// 1–64 of `[a-z0-9-]`.
    pub name: String,
    /// Full semver (`1.2.3`, optional `-pre` and `+build`).
    pub version: String,
    /// One line.
    pub description: Option<String>,
    /// The remaining `[package]` metadata (authors, license, …), as written.
    pub metadata: toml::Table,
}

/// `[[component]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Identifier.
    #[serde(default)]
    pub id: String,
    /// The `.wasm`, relative to the capsule directory.
    #[serde(alias = "entrypoint")]
    pub file: String,
    /// Declared hash (informative; integrity is checked against the install record).
    #[serde(default)]
    pub hash: Option<String>,
    /// `executable` or `library`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Where the component runs: on a daemon thread (default) or in a capsule-host process.
    #[serde(default)]
    pub isolation: Isolation,
}

/// Where a component's instance runs. Either way its host calls are decided by the kernel;
/// a process of its own adds an OS boundary around the interpreter (a crash or a wasmi bug
/// ends that process, not the daemon) at the cost of a socket round trip per host call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A thread of the daemon.
    #[default]
    Thread,
    /// An `astrid capsule-host` process attached to the daemon over the socket.
    Process,
}

/// `[[command]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub name: String,
    /// One line.
    #[serde(default)]
    pub description: Option<String>,
    /// A file with the command's text.
    #[serde(default)]
    pub file: Option<String>,
}

/// `[[interceptor]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interceptor {
    /// Topic pattern (`*` = exactly one segment).
    pub event: String,
    /// Handler name passed to the guest.
    pub action: String,
    /// Lower fires first.
    pub priority: u32,
}

/// `[env.KEY]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvDef {
    /// `string`, `secret`, `array`, `integer`, …
    #[serde(rename = "type", default = "default_env_type")]
    pub kind: String,
    /// The question asked at install.
    #[serde(default)]
    pub request: Option<String>,
    /// More explanation.
    #[serde(default)]
    pub description: Option<String>,
    /// Suggested value.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// Allowed values.
    #[serde(default)]
    pub enum_values: Vec<String>,
    /// Input hint.
    #[serde(default)]
    pub placeholder: Option<String>,
}

fn default_env_type() -> String {
    "string".to_owned()
}

/// `[[mcp_server]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Identifier.
    pub id: String,
    /// One line.
    #[serde(default)]
    pub description: Option<String>,
    /// `stdio` (the only type that starts a process).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Program.
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `[[tool]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Tool name.
    pub name: String,
    /// What the model is told.
    #[serde(default)]
    pub description_for_llm: Option<String>,
    #[serde(default)]
    pub input_schema_wit: Option<String>,
    /// Whether it changes things.
    #[serde(default)]
    pub mutable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    package: RawPackage,
    #[serde(default)]
    component: Vec<Component>,
    #[serde(default)]
    imports: toml::Table,
    #[serde(default)]
    exports: toml::Table,
    #[serde(default)]
    publish: toml::Table,
    #[serde(default)]
    subscribe: toml::Table,
    #[serde(default)]
    tool: Vec<Tool>,
    #[serde(default)]
    capabilities: Option<Spanned<toml::Table>>,
    #[serde(default)]
    env: BTreeMap<String, EnvDef>,
    #[serde(default)]
    context_file: Vec<toml::Table>,
    #[serde(default)]
    command: Vec<Command>,
    #[serde(default)]
    mcp_server: Vec<McpServer>,
    #[serde(default)]
    skill: Vec<toml::Table>,
    #[serde(default)]
    uplink: Vec<toml::Table>,
    #[serde(default)]
    interceptor: Vec<RawInterceptor>,
    #[serde(default)]
    topic: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPackage {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    homepage: Option<String>,
    #[serde(default)]
    documentation: Option<String>,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    license_file: Option<String>,
    #[serde(default)]
    readme: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    astrid_version: Option<String>,
    #[serde(default)]
    publish: Option<bool>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    metadata: Option<toml::Value>,
}

impl RawPackage {
    /// Everything but name, version and description, as a table (absent keys omitted).
    fn metadata_table(&self) -> toml::Table {
        let strings = |v: &Option<String>| v.clone().map(toml::Value::String);
        let list = |v: &Vec<String>| {
            (!v.is_empty()).then(|| toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()))
        };
        [
            ("authors", list(&self.authors)),
            ("repository", strings(&self.repository)),
            ("homepage", strings(&self.homepage)),
            ("documentation", strings(&self.documentation)),
            ("license", strings(&self.license)),
            ("license-file", strings(&self.license_file)),
            ("readme", strings(&self.readme)),
            ("keywords", list(&self.keywords)),
            ("categories", list(&self.categories)),
            ("astrid-version", strings(&self.astrid_version)),
            ("publish", self.publish.map(toml::Value::Boolean)),
            ("include", list(&self.include)),
            ("exclude", list(&self.exclude)),
            ("metadata", self.metadata.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterceptor {
    event: Spanned<String>,
    #[serde(default)]
    action: String,
    #[serde(default = "default_priority")]
    priority: u32,
}

fn default_priority() -> u32 {
    100
}

/// Reads the manifest file at `path`, refusing one over [`MAX_MANIFEST_BYTES`] before reading
/// it whole (its size is checked, and the read stops one byte past the limit in case it grows).
pub fn read(path: &Path) -> Result<Vec<u8>, ManifestError> {
    use std::io::Read;
    let error = |line, message: String| ManifestError { file: path.to_path_buf(), line, column: line, message };
    let file = std::fs::File::open(path).map_err(|e| error(0, format!("cannot read: {e}")))?;
    let too_large = |size: u64| error(1, format!("{size} bytes is over the {MAX_MANIFEST_BYTES}-byte manifest limit"));
    let size = file.metadata().map_err(|e| error(0, format!("cannot read: {e}")))?.len();
    if size > MAX_MANIFEST_BYTES as u64 {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(0, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Checks `value` (found at `path`, `depth` levels down) against [`limits`]: the span and the
/// message of the first limit passed.
fn check_limits(value: &DeValue<'_>, path: &str, depth: usize) -> Result<(), (Range<usize>, String)> {
    use limits::*;
    let in_capabilities = path.starts_with("capabilities.");
    let string_limit = if in_capabilities { MAX_CAPABILITY_BYTES } else { MAX_STRING_BYTES };
    let entry_limit = match path {
        "mcp_server" => MAX_MCP_SERVERS,
        "env" => MAX_ENV,
        _ => MAX_ENTRIES,
    };
    let too_many = |what: &str| format!("{path}: more than {entry_limit} {what}, the limit");
    match value {
        DeValue::String(text) if text.len() > string_limit => {
            Err((0..0, format!("{path}: a string of {} bytes is over the {string_limit}-byte limit", text.len())))
        }
        DeValue::Array(_) | DeValue::Table(_) if depth > MAX_DEPTH => {
            Err((0..0, format!("{path}: nested deeper than {MAX_DEPTH} levels, the limit")))
        }
        DeValue::Array(items) => {
            if let Some(extra) = items.get(entry_limit) {
                return Err((extra.span(), too_many("entries")));
            }
            for (index, item) in items.iter().enumerate() {
                check_limits(item.get_ref(), &format!("{path}[{index}]"), depth + 1).map_err(|e| at_least(e, item))?;
            }
            Ok(())
        }
        DeValue::Table(table) => {
            if let Some((extra, _)) = table.iter().nth(entry_limit) {
                return Err((extra.span(), too_many("keys")));
            }
            for (key, item) in table {
                let key_text = key.get_ref();
                if key_text.len() > MAX_STRING_BYTES {
                    return Err((key.span(), format!("{path}: a key of {} bytes is over the limit", key_text.len())));
                }
                let inner = if path.is_empty() { key_text.to_string() } else { format!("{path}.{key_text}") };
                check_limits(item.get_ref(), &inner, depth + 1).map_err(|e| at_least(e, item))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An error from inside `value` keeps its own span, or takes the value's.
fn at_least<T>((span, message): (Range<usize>, String), value: &Spanned<T>) -> (Range<usize>, String) {
    (if span.is_empty() { value.span() } else { span }, message)
}

impl Manifest {
    /// Reads (at most [`MAX_MANIFEST_BYTES`]) and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let bytes = read(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ManifestError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "not UTF-8".to_owned(),
        })?;
        Self::parse(path, text)
    }

    /// Validates manifest `text`; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let at = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_column(text, s.start));
            ManifestError { file: path.to_path_buf(), line, column, message }
        };
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(at(None, format!("{} bytes is over the {MAX_MANIFEST_BYTES}-byte manifest limit", text.len())));
        }
        let document = DeTable::parse(text).map_err(|e| at(e.span(), e.message().to_owned()))?;
        for (key, value) in document.get_ref() {
            check_limits(value.get_ref(), key.get_ref(), 1)
                .map_err(|e| at_least(e, value))
                .map_err(|(span, message)| at(Some(span), message))?;
        }
        let raw = RawManifest::deserialize(toml::de::Deserializer::from(document))
            .map_err(|e| at(e.span(), e.message().to_owned()))?;
        let metadata = raw.package.metadata_table();
        let name = &raw.package.name;
        if !valid_name(name.get_ref()) {
            return Err(at(
                Some(name.span()),
                format!("invalid package name {:?}: use 1-64 of a-z, 0-9 and '-'", name.get_ref()),
            ));
        }
        let version = &raw.package.version;
        if !valid_semver(version.get_ref()) {
            return Err(at(
                Some(version.span()),
                format!("invalid version {:?}: a full semver such as 1.0.0 is required", version.get_ref()),
            ));
        }
        let capabilities = match &raw.capabilities {
            None => CapabilitySet::default(),
            Some(table) => CapabilitySet::from_manifest(table.get_ref())
                .map_err(|e| at(Some(table.span()), format!("[capabilities]: {e}")))?,
        };
        let requested = capabilities.entries().count();
        if requested > limits::MAX_CAPABILITIES {
            let span = raw.capabilities.as_ref().map(Spanned::span);
            return Err(at(
                span,
                format!("[capabilities]: {requested} entries is over the limit of {}", limits::MAX_CAPABILITIES),
            ));
        }
        let mut interceptors = Vec::new();
        for interceptor in raw.interceptor {
            let event = interceptor.event.get_ref();
            if event.is_empty()
                || event.split('.').any(str::is_empty)
                || event.split('.').count() > topic::MAX_TOPIC_SEGMENTS
            {
                return Err(at(Some(interceptor.event.span()), format!("invalid interceptor event {event:?}")));
            }
            interceptors.push(Interceptor {
                event: event.clone(),
                action: interceptor.action,
                priority: interceptor.priority,
            });
        }
        Ok(Self {
            package: Package {
                name: raw.package.name.into_inner(),
                version: raw.package.version.into_inner(),
                description: raw.package.description,
                metadata,
            },
            capabilities,
            components: raw.component,
            commands: raw.command,
            interceptors,
            env: raw.env,
            mcp_servers: raw.mcp_server,
            tools: raw.tool,
            other: BTreeMap::from([
                ("imports", toml::Value::Table(raw.imports)),
                ("exports", toml::Value::Table(raw.exports)),
                ("publish", toml::Value::Table(raw.publish)),
                ("subscribe", toml::Value::Table(raw.subscribe)),
                ("context_file", tables(raw.context_file)),
                ("skill", tables(raw.skill)),
                ("uplink", tables(raw.uplink)),
                ("topic", tables(raw.topic)),
            ]),
        })
    }
}

fn tables(tables: Vec<toml::Table>) -> toml::Value {
    toml::Value::Array(tables.into_iter().map(toml::Value::Table).collect())
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// 1–64 of `[a-z0-9-]`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `MAJOR.MINOR.PATCH` with optional `-pre` and `+build` (SemVer 2.0 shape).
fn valid_semver(version: &str) -> bool {
    let (core, _build) = version.split_once('+').unwrap_or((version, ""));
    let (core, pre) = core.split_once('-').map_or((core, None), |(c, p)| (c, Some(p)));
    let numbers: Vec<&str> = core.split('.').collect();
    let numeric =
        |n: &&str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0'));
    numbers.len() == 3
        && numbers.iter().all(numeric)
        && pre.is_none_or(|p| !p.is_empty() && p.split('.').all(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("caps/x/Capsule.toml"), text)
    }

    #[test]
    fn a_full_manifest_parses() {
        let manifest = parse(
            r#"
[package]
name = "fs-tool"
version = "1.2.3-beta.1+build5"
description = "Files"
authors = ["a"]
license-file = "LICENSE"

[[component]]
file = "fs.wasm"

[capabilities]
fs_read = ["cwd://src"]

[env.API_KEY]
type = "secret"
request = "Key?"

[[command]]
name = "/ls"

[[interceptor]]
event = "tool.v1.request.*"
action = "on_tool"

[[mcp_server]]
id = "time"
type = "stdio"
command = "uvx"
args = ["mcp-server-time"]
"#,
        )
        .expect("valid");
        assert_eq!(manifest.package.name, "fs-tool");
        assert_eq!(manifest.interceptors[0].priority, 100);
        assert_eq!(manifest.capabilities.entries().collect::<Vec<_>>(), vec!["fs_read:cwd://src"]);
        assert_eq!(manifest.env["API_KEY"].kind, "secret");
        assert_eq!(manifest.mcp_servers[0].args, vec!["mcp-server-time"]);
    }

    #[test]
    fn isolation_is_thread_unless_a_process_is_asked_for_and_nothing_else_is_accepted() {
        let with = |isolation: &str| {
            parse(&format!(
                "[package]\nname = \"x\"\nversion = \"1.0.0\"\n\n[[component]]\nfile = \"x.wasm\"\n{isolation}"
            ))
        };
        assert_eq!(with("").expect("default").components[0].isolation, Isolation::Thread);
        assert_eq!(with("isolation = \"process\"").expect("process").components[0].isolation, Isolation::Process);
        let err = with("isolation = \"vm\"").expect_err("unknown isolation");
        assert_eq!((err.line, err.column), (7, 13), "{err}");
        assert!(err.message.contains("process"), "{err}");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("[package]\nname = \"x\"\nversion = \"1.0.0\"\nextra = 1\n").expect_err("unknown key");
        assert_eq!((err.line, err.column), (4, 1), "{err}");
        assert!(err.to_string().starts_with("caps/x/Capsule.toml:4:1: unknown field `extra`"), "{err}");
        let err = parse("[package]\nname = \"x\"\nversion = \"1.0.0\"\nlicence = \"MIT\"\n").expect_err("typo");
        assert_eq!((err.line, err.column), (4, 1), "{err}");
        assert!(err.message.contains("unknown field `licence`"), "{err}");
        let err = parse("[package]\nname = \"Bad_Name\"\nversion = \"1.0.0\"\n").expect_err("name");
        assert_eq!((err.line, err.column), (2, 8), "{err}");
        let err = parse("[package]\nname = \"x\"\nversion = \"1.0\"\n").expect_err("semver");
        assert!(err.message.contains("full semver"), "{err}");
        assert_eq!(err.line, 3);
        let err =
            parse("[package]\nname = \"x\"\nversion = \"1.0.0\"\n[capabilities]\nfs_raed = []\n").expect_err("cap");
        assert!(err.message.contains("unknown capability `fs_raed`"), "{err}");
        assert_eq!(err.line, 4);
        let err = parse("[package]\nname = \"x\"\nversion = \"1.0.0\"\n[[interceptor]]\nevent = \"a..b\"\n")
            .expect_err("event");
        assert_eq!(err.line, 5);
        assert!(parse("[package\n").is_err());
    }

    const HEAD: &str = "[package]\nname = \"x\"\nversion = \"1.0.0\"\n";

    #[test]
    fn an_oversized_manifest_is_refused_before_it_is_parsed() {
        let big = format!("{HEAD}description = \"{}\"\n", "x".repeat(MAX_MANIFEST_BYTES));
        let err = parse(&big).expect_err("too big");
        assert!(err.message.contains("over the 262144-byte manifest limit"), "{err}");
        // From a file: refused on its size, before it is read whole.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Capsule.toml");
        let interceptor = "[[interceptor]]\nevent = \"a.b\"\naction = \"x\"\n";
        std::fs::write(&file, format!("{HEAD}{}", interceptor.repeat(200_000))).expect("write");
        let err = Manifest::load(&file).expect_err("9 MB");
        assert!(err.message.contains("bytes is over the 262144-byte manifest limit"), "{err}");
    }

    #[test]
    fn entry_counts_are_limited_and_the_error_names_the_limit_and_the_place() {
        let interceptor = "[[interceptor]]\nevent = \"a.b\"\naction = \"x\"\n";
        parse(&format!("{HEAD}{}", interceptor.repeat(limits::MAX_ENTRIES))).expect("256 interceptors");
        let err = parse(&format!("{HEAD}{}", interceptor.repeat(limits::MAX_ENTRIES + 1))).expect_err("257");
        assert_eq!(err.message, "interceptor: more than 256 entries, the limit");
        assert_eq!(err.line, 4 + 3 * 256, "{err}");
        let command = "[[command]]\nname = \"/c\"\n";
        let err = parse(&format!("{HEAD}{}", command.repeat(257))).expect_err("commands");
        assert!(err.message.starts_with("command: more than 256"), "{err}");
        let server = "[[mcp_server]]\nid = \"s\"\n";
        parse(&format!("{HEAD}{}", server.repeat(limits::MAX_MCP_SERVERS))).expect("16 servers");
        let err = parse(&format!("{HEAD}{}", server.repeat(limits::MAX_MCP_SERVERS + 1))).expect_err("servers");
        assert!(err.message.starts_with("mcp_server: more than 16 entries"), "{err}");
        let env: String = (0..=limits::MAX_ENV).map(|i| format!("[env.K{i}]\ntype = \"string\"\n")).collect();
        let err = parse(&format!("{HEAD}{env}")).expect_err("env");
        assert!(err.message.starts_with("env: more than 64 keys"), "{err}");
        let args = vec!["\"a\""; 257].join(", ");
        let err = parse(&format!("{HEAD}[[mcp_server]]\nid = \"s\"\nargs = [{args}]\n")).expect_err("args");
        assert!(err.message.starts_with("mcp_server[0].args: more than 256 entries"), "{err}");
    }

    #[test]
    fn capabilities_are_limited_per_kind_in_total_and_in_length() {
        let topics = |n: usize, kind: &str| {
            let list: Vec<String> = (0..n).map(|i| format!("\"{kind}.v1.t{i}\"")).collect();
            format!("{kind} = [{}]\n", list.join(", "))
        };
        let per_kind = format!("{HEAD}[capabilities]\n{}", topics(257, "ipc_publish"));
        let err = parse(&per_kind).expect_err("per kind");
        assert!(err.message.starts_with("capabilities.ipc_publish: more than 256 entries"), "{err}");
        let total =
            format!("{HEAD}[capabilities]\n{}{}{}", topics(200, "ipc_publish"), topics(200, "ipc_subscribe"), {
                let list: Vec<String> = (0..200).map(|i| format!("\"h{i}.example.com\"")).collect();
                format!("net = [{}]\n", list.join(", "))
            });
        let err = parse(&total).expect_err("total");
        assert_eq!(err.message, "[capabilities]: 600 entries is over the limit of 512");
        let long = format!("{HEAD}[capabilities]\nnet = [\"{}.com\"]\n", "a".repeat(1100));
        let err = parse(&long).expect_err("long");
        assert!(
            err.message.contains("capabilities.net[0]: a string of 1104 bytes is over the 1024-byte limit"),
            "{err}"
        );
        assert_eq!(err.line, 5);
    }

    #[test]
    fn strings_and_nesting_are_limited_and_deep_nesting_never_crashes() {
        let err = parse(&format!("{HEAD}description = \"{}\"\n", "d".repeat(5000))).expect_err("long string");
        assert_eq!(err.message, "package.description: a string of 5000 bytes is over the 4096-byte limit");
        assert_eq!((err.line, err.column), (4, 15), "{err}");
        let nested = format!("{HEAD}[package.metadata.a.b.c.d.e.f.g]\nx = 1\n");
        let err = parse(&nested).expect_err("nested");
        assert!(err.message.contains("nested deeper than 8 levels"), "{err}");
        // A hundred thousand brackets inside the size limit: an error, not a stack overflow.
        let brackets = format!("{HEAD}[package.metadata]\nx = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&brackets).is_err());
    }

    #[test]
    fn semver_shapes() {
        for ok in ["0.1.0", "10.20.30", "1.0.0-alpha", "1.0.0+x", "1.0.0-rc.1+b.2"] {
            assert!(valid_semver(ok), "{ok}");
        }
        for bad in ["1.0", "1", "01.0.0", "1.0.0-", "a.b.c", "1.0.0.0", ""] {
            assert!(!valid_semver(bad), "{bad}");
        }
    }
}
