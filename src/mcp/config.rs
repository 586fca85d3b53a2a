//! Which MCP servers run: `etc/servers.toml`, as the reference writes it.
//!
//! ```toml
//! [servers.time]
//! command = "uvx"
//! args = ["mcp-server-time"]
//! env = { TZ = "UTC" }          # added to a scrubbed environment
//! cwd = "/srv"                 # default: the workspace
//! description = "clock"
//! auto_start = true            # default
//! init_timeout_secs = 30       # discovery or initialize must answer within this (default 30)
//! call_timeout_secs = 60       # each tool call (default 60)
//! restart_policy = "on_failure" # "never" | "always" | "on_failure" (default)
//! ```
//!
//! Parsed strictly: an unknown key, a transport other than `stdio`, or a name that cannot be
//! the `server` of a `server:tool` name refuses that server with a message naming the file;
//! the other servers still run. Keys of the reference this version does not enforce
//! (`binary_hash`, `trusted`, sandbox paths) are refused rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The longest server name (it is a topic segment and half of a tool name).
pub const MAX_NAME: usize = 64;
/// A server started through `npx` or `uvx` may first fetch itself, and a busy machine starts
/// Node or Python slowly: 10 s failed real servers that were merely slow.
const DEFAULT_INIT_TIMEOUT: u64 = 30;
const DEFAULT_CALL_TIMEOUT: u64 = 60;

/// One server to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The `server` of `server:tool`.
    pub name: String,
    /// Program (looked up on `PATH` when it has no `/`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the scrubbed environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None`: the workspace.
    pub cwd: Option<PathBuf>,
    /// One line for `astrid mcp list`.
    pub description: Option<String>,
    /// How long `initialize` may take before the server is marked failed.
    pub init_timeout: Duration,
    /// How long one tool call may take before it is cancelled.
    pub call_timeout: Duration,
    /// When a server that exits is started again.
    pub restart: RestartPolicy,
    /// The capsule that declares it (`None`: `etc/servers.toml`).
    pub capsule: Option<String>,
}

/// When a server that exits is started again (with backoff, at most a few times in a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Once it exits it stays down until the daemon restarts.
    Never,
    /// Whatever its exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    servers: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "stdio")]
    transport: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    auto_start: bool,
    #[serde(default)]
    init_timeout_secs: Option<u64>,
    #[serde(default)]
    call_timeout_secs: Option<u64>,
    #[serde(default)]
    restart_policy: Option<RestartPolicy>,
}

fn stdio() -> String {
    "stdio".to_owned()
}

fn yes() -> bool {
    true
}

/// Whether `name` may name a server: 1 to 64 of `[A-Za-z0-9_-]` (no `.`: it is a topic
/// segment; no `:`: it separates server from tool).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The servers `path` configures, and one message per server (or for the file) refused.
/// A missing file configures none.
pub fn load(path: &Path) -> (Vec<ServerConfig>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![format!("cannot read {}: {e}", path.display())]),
    };
    parse(&text, &path.display().to_string())
}

/// [`load`] on text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> (Vec<ServerConfig>, Vec<String>) {
    let file: File = match toml::from_str(text) {
        Ok(file) => file,
        Err(e) => return (Vec::new(), vec![format!("{origin}: {e}")]),
    };
    let mut servers = Vec::new();
    let mut refused = Vec::new();
    for (name, value) in file.servers {
        match server(&name, value) {
            Ok(Some(server)) => servers.push(server),
            Ok(None) => {}
            Err(reason) => refused.push(format!("{origin}: server {name:?}: {reason}")),
        }
    }
    (servers, refused)
}

fn server(name: &str, value: toml::Value) -> Result<Option<ServerConfig>, String> {
    if !valid_name(name) {
        return Err(format!("a server name is 1 to {MAX_NAME} of A-Z a-z 0-9 _ -"));
    }
    let raw: RawServer = value.try_into().map_err(|e: toml::de::Error| e.message().to_owned())?;
    if raw.transport != "stdio" {
        return Err(format!("transport {:?} is not supported (only stdio)", raw.transport));
    }
    if raw.command.trim().is_empty() {
        return Err("command is empty".to_owned());
    }
    if !raw.auto_start {
        return Ok(None);
    }
    let seconds = |value: Option<u64>, default: u64| Duration::from_secs(value.filter(|&s| s > 0).unwrap_or(default));
    Ok(Some(ServerConfig {
        name: name.to_owned(),
        command: raw.command,
        args: raw.args,
        env: raw.env,
        cwd: raw.cwd,
        description: raw.description,
        init_timeout: seconds(raw.init_timeout_secs, DEFAULT_INIT_TIMEOUT),
        call_timeout: seconds(raw.call_timeout_secs, DEFAULT_CALL_TIMEOUT),
        restart: raw.restart_policy.unwrap_or(RestartPolicy::OnFailure),
        capsule: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_read_with_defaults_and_bad_ones_refused_alone() {
        let text = r#"
            [servers.time]
            command = "mcp-server-time"
            env = { TZ = "UTC" }
            [servers.everything]
            command = "npx"
            args = ["-y", "@modelcontextprotocol/server-everything"]
            call_timeout_secs = 5
            restart_policy = "never"
            [servers.off]
            command = "x"
            auto_start = false
            [servers.web]
            transport = "sse"
            command = "x"
            [servers."bad.name"]
            command = "x"
            [servers.typo]
            comand = "x"
        "#;
        let (servers, refused) = parse(text, "servers.toml");
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["everything", "time"]);
        assert_eq!(servers[0].call_timeout, Duration::from_secs(5));
        assert_eq!(servers[0].restart, RestartPolicy::Never);
        assert_eq!(servers[1].init_timeout, Duration::from_secs(30));
        assert_eq!(servers[1].restart, RestartPolicy::OnFailure);
        assert_eq!(servers[1].env["TZ"], "UTC");
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused.iter().any(|r| r.contains("\"web\"") && r.contains("only stdio")));
        assert!(refused.iter().any(|r| r.contains("\"bad.name\"")));
        assert!(refused.iter().any(|r| r.contains("\"typo\"") && r.contains("comand")));
    }

    #[test]
    fn a_broken_file_is_one_clear_error_and_a_missing_one_none() {
        let (servers, refused) = parse("[servers.x\ncommand = 1", "etc/servers.toml");
        assert!(servers.is_empty() && refused.len() == 1 && refused[0].starts_with("etc/servers.toml"));
        assert_eq!(load(Path::new("/nonexistent/servers.toml")), (Vec::new(), Vec::new()));
    }
}
