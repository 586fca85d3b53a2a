//! The operator's settings for commands, read once at boot (`DaemonArgs::validate`).
//!
//! | variable                          | meaning                                         | default |
//! |-----------------------------------|-------------------------------------------------|---------|
//! | `ASTRID_SANDBOX`                  | `on`, or `off`: commands run unconfined, in the real workspace (the operator's own risk; `astrid status` says so) | `on` |
//! | `ASTRID_COMMAND_TIMEOUT_SECS`     | a command's timeout when the call names none    | 120     |
//! | `ASTRID_COMMAND_MAX_TIMEOUT_SECS` | the longest timeout a call may ask for          | 600     |
//! | `ASTRID_SANDBOX_PROCESSES`        | processes a command may have at once            | 512     |
//! | `ASTRID_SANDBOX_MEMORY_MB`        | address space of each of its processes          | 4096    |
//! | `ASTRID_SANDBOX_SCRATCH_MB`       | what it may write in all (workspace changes, `/tmp`, its home) | 1024 |
//! | `ASTRID_SANDBOX_READ_ONLY`        | extra directories it sees read-only, `:`-separated absolute paths (toolchains: `~/.rustup:~/.cargo`) | none |
//!
//! The command's environment is built from the daemon's `PATH`, `HOME` (its path only: the
//! directory is an empty private one) and `LANG`, taken here too.

use std::path::PathBuf;
use std::time::Duration;

/// Whether commands are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Every command in the sandbox; none runs where it cannot be set up.
    Enforced,
    /// The operator opted out (`ASTRID_SANDBOX=off`): commands run as the daemon's user, in
    /// the real workspace, with only the scrubbed environment, the timeout and the kill.
    Unsandboxed,
}

/// What one command may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Processes (threads count too) alive at once in the command's pid namespace. Below
    /// 300 it is a hard bound only for a daemon that is not root: the kernel's per-namespace
    /// `pid_max` cannot go below 301.
    pub processes: u32,
    /// Address space of each process (`RLIMIT_AS`), in bytes.
    pub memory_per_process: u64,
    /// Size of the scratch tmpfs that holds everything the command writes, in bytes.
    pub scratch: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { processes: 512, memory_per_process: 4096 << 20, scratch: 1024 << 20 }
    }
}

/// The sandbox settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// A command's timeout when its call names none (never above `max_timeout`).
    pub default_timeout: Duration,
    /// The longest timeout a call may ask for.
    pub max_timeout: Duration,
    pub limits: Limits,
    /// Directories (or files) the command sees read-only at their own path, besides the
    /// system ones.
    pub read_only_paths: Vec<PathBuf>,
    /// The daemon's home directory: the command's `HOME` has this path (an empty private
    /// directory), so tools find the read-only toolchain directories under it; and secrets
    /// under it (`.ssh`, `.aws`…) are hidden when the workspace contains them.
    pub user_home: Option<PathBuf>,
    /// The command's `PATH` (the daemon's, or a standard one).
    pub search_path: String,
    /// The command's `LANG`.
    pub lang: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Enforced,
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(600),
            limits: Limits::default(),
            read_only_paths: Vec::new(),
            user_home: None,
            search_path: DEFAULT_PATH.to_owned(),
            lang: "C.UTF-8".to_owned(),
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

impl SandboxConfig {
    /// Reads the settings from the daemon's environment. The error names the variable and
    /// what it accepts.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `var`, so the rules are testable without touching the
    /// process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Self::default();
        let mode = match var("ASTRID_SANDBOX").as_deref() {
            None | Some("" | "on" | "1" | "true") => SandboxMode::Enforced,
            Some("off" | "0" | "false") => SandboxMode::Unsandboxed,
            Some(other) => return Err(format!("ASTRID_SANDBOX must be on or off, not {other:?}")),
        };
        let number = |name: &str, range: std::ops::RangeInclusive<u64>, default: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(value) if range.contains(&value) => Ok(value),
                    _ => Err(format!(
                        "{name} must be a whole number from {} to {}, not {text:?}",
                        range.start(),
                        range.end()
                    )),
                },
            }
        };
        let max_timeout = Duration::from_secs(number("ASTRID_COMMAND_MAX_TIMEOUT_SECS", 1..=86_400, 600)?);
        let default_timeout = Duration::from_secs(number("ASTRID_COMMAND_TIMEOUT_SECS", 1..=86_400, 120)?);
        if default_timeout > max_timeout {
            return Err(format!(
                "ASTRID_COMMAND_TIMEOUT_SECS ({}) is above ASTRID_COMMAND_MAX_TIMEOUT_SECS ({})",
                default_timeout.as_secs(),
                max_timeout.as_secs()
            ));
        }
        let limits = Limits {
            processes: number("ASTRID_SANDBOX_PROCESSES", 16..=1_000_000, u64::from(defaults.limits.processes))?
                .try_into()
                .unwrap_or(u32::MAX),
            memory_per_process: number(
                "ASTRID_SANDBOX_MEMORY_MB",
                64..=1 << 24,
                defaults.limits.memory_per_process >> 20,
            )? << 20,
            scratch: number("ASTRID_SANDBOX_SCRATCH_MB", 16..=1 << 24, defaults.limits.scratch >> 20)? << 20,
        };
        let mut read_only_paths = Vec::new();
        for part in var("ASTRID_SANDBOX_READ_ONLY").unwrap_or_default().split(':').filter(|p| !p.is_empty()) {
            let path = PathBuf::from(part);
            if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(format!("ASTRID_SANDBOX_READ_ONLY takes absolute paths without `..`, not {part:?}"));
            }
            read_only_paths.push(path);
        }
        let user_home = var("HOME").map(PathBuf::from).filter(|home| home.is_absolute() && home != &PathBuf::from("/"));
        let search_path = var("PATH").filter(|path| !path.is_empty()).unwrap_or(defaults.search_path);
        let lang = var("LANG").filter(|lang| !lang.is_empty()).unwrap_or(defaults.lang);
        Ok(Self { mode, default_timeout, max_timeout, limits, read_only_paths, user_home, search_path, lang })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<SandboxConfig, String> {
        SandboxConfig::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn defaults_are_enforced_with_bounded_timeouts() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.mode, SandboxMode::Enforced);
        assert_eq!(config.default_timeout, Duration::from_secs(120));
        assert_eq!(config.max_timeout, Duration::from_secs(600));
        assert_eq!(config.limits, Limits::default());
        assert!(config.read_only_paths.is_empty());
    }

    #[test]
    fn values_are_read_and_checked() {
        let config = parse(&[
            ("ASTRID_SANDBOX", "off"),
            ("ASTRID_COMMAND_MAX_TIMEOUT_SECS", "30"),
            ("ASTRID_COMMAND_TIMEOUT_SECS", "10"),
            ("ASTRID_SANDBOX_PROCESSES", "64"),
            ("ASTRID_SANDBOX_MEMORY_MB", "512"),
            ("ASTRID_SANDBOX_READ_ONLY", "/opt/a::/root/.rustup"),
            ("HOME", "/root"),
            ("PATH", "/x/bin"),
        ])
        .expect("valid");
        assert_eq!(config.mode, SandboxMode::Unsandboxed);
        assert_eq!(config.max_timeout, Duration::from_secs(30));
        assert_eq!(config.limits.processes, 64);
        assert_eq!(config.limits.memory_per_process, 512 << 20);
        assert_eq!(config.read_only_paths, [PathBuf::from("/opt/a"), PathBuf::from("/root/.rustup")]);
        assert_eq!(config.user_home, Some(PathBuf::from("/root")));
        assert_eq!(config.search_path, "/x/bin");
        for (name, value, named) in [
            ("ASTRID_SANDBOX", "maybe", "ASTRID_SANDBOX"),
            ("ASTRID_COMMAND_MAX_TIMEOUT_SECS", "0", "ASTRID_COMMAND_MAX_TIMEOUT_SECS"),
            ("ASTRID_COMMAND_TIMEOUT_SECS", "601", "ASTRID_COMMAND_TIMEOUT_SECS"),
            ("ASTRID_SANDBOX_PROCESSES", "lots", "ASTRID_SANDBOX_PROCESSES"),
            ("ASTRID_SANDBOX_READ_ONLY", "relative/dir", "ASTRID_SANDBOX_READ_ONLY"),
            ("ASTRID_SANDBOX_READ_ONLY", "/a/../etc", "ASTRID_SANDBOX_READ_ONLY"),
        ] {
            let error = parse(&[(name, value)]).expect_err(value);
            assert!(error.contains(named), "{error}");
        }
    }
}
