//! The command sandbox: one shell command line, confined on Linux, seeing the workspace as
//! the agent sees it (pending writes and deletions of the VFS overlay included), its own
//! writes landing in that same overlay for review.
//!
//! Two processes of the `astrid` binary stand between the daemon and the command:
//!
//! 1. the daemon's [`RunningCommand`] starts the **helper** (`astrid-sandbox helper`, `helper.rs`):
//!    it makes user, mount, pid, ipc, uts and (unless the call asked for the network) net
//!    namespaces, builds the command's filesystem on a size-limited tmpfs
//!    (`rootfs.rs`: system directories read-only, `/etc` without secrets, a private `/tmp`
//!    and `HOME`, the workspace as an overlayfs over the VFS overlay and the real files) and
//!    starts
//! 2. **init** (`astrid-sandbox init`, `init.rs`), pid 1 of the new pid namespace: a mount namespace of
//!    its own, `pivot_root` into the new root, `/proc`, the process bound (`pid_max` of the
//!    namespace), rlimits, `no_new_privs`, no capabilities, a seccomp filter (`seccomp.rs`),
//!    then `/bin/sh -c <line>` with a scrubbed environment; it reaps until the command
//!    exits and then exits itself, which kills every process left in the namespace.
//! 3. When init is gone (exit, timeout, kill), the helper reads the overlay's upper layer
//!    (`collect.rs`), stages the changed files under the command's directory in the VFS's
//!    overlay directory and reports; the daemon imports them ([`crate::vfs::Vfs::import`]).
//!
//! The daemon talks to the helper over its stdin and stdout (`protocol.rs`). Network access
//! is all or nothing: without it the command has an empty network namespace (not even
//! loopback); with it, the host's network. `ASTRID_SANDBOX=off` runs commands unconfined
//! ([`SandboxMode::Unsandboxed`]: the real workspace, no overlay), at the operator's risk.

mod collect;
mod config;
mod helper;
mod init;
mod probe;
mod protocol;
mod rootfs;
mod running;
mod seccomp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Limits, SandboxConfig, SandboxMode};
pub use protocol::{Outcome, Refused};
pub use running::{CommandEvent, Finished, Killer, RunningCommand};

use crate::home::AstridHome;
use crate::types::management::{SandboxState, SandboxStatus};
use crate::vfs::{Vfs, VfsError, VfsPath};

/// The name (`argv[0]`) the daemon starts the helper and init under.
pub const ROLE: &str = "astrid-sandbox";
/// The argument that selects the helper stage.
const HELPER_ARG: &str = "helper";
/// The argument that selects the init stage.
const INIT_ARG: &str = "init";

/// The `astrid-sandbox` role: `helper` or `init` (only ever started by the daemon and the
/// helper).
pub fn main(args: &[&str]) -> ExitCode {
    match args {
        [HELPER_ARG] => helper::main(),
        [INIT_ARG] => init::main(),
        _ => {
            eprintln!("{ROLE}: started by the Astrid daemon only (helper | init)");
            ExitCode::from(2)
        }
    }
}

/// Whether commands can run, decided once at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The trial command ran in the sandbox: commands run confined.
    Ready,
    /// The sandbox cannot be set up here; every command is refused with this text.
    Unavailable {
        /// What failed.
        reason: String,
        /// What the operator can change (a sysctl, the kernel, or `ASTRID_SANDBOX=off`).
        how_to_enable: String,
    },
    /// The operator turned it off: commands run unconfined in the real workspace.
    Unsandboxed,
}

impl Availability {
    /// For `astrid status`.
    pub fn status(&self) -> SandboxStatus {
        match self {
            Self::Ready => SandboxStatus { state: SandboxState::Ready, detail: None },
            Self::Unavailable { reason, how_to_enable } => {
                SandboxStatus { state: SandboxState::Unavailable, detail: Some(format!("{reason}. {how_to_enable}")) }
            }
            Self::Unsandboxed => {
                SandboxStatus { state: SandboxState::Unsandboxed, detail: Some(UNSANDBOXED.to_owned()) }
            }
        }
    }
}

/// What `astrid status` says of a sandbox the operator turned off.
pub const UNSANDBOXED: &str = "ASTRID_SANDBOX=off: commands run unconfined as the daemon's user, in the real \
     workspace (no review overlay), with the host's network and files";

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// Given to `/bin/sh -c`.
    pub command_line: String,
    /// The working directory, relative to the workspace.
    pub cwd: VfsPath,
    /// At most the operator's `max_timeout`.
    pub timeout: Duration,
    /// The host's network (all of it), or none.
    pub network: bool,
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox cannot be set up on this machine (decided at boot).
    #[error("commands cannot run: the sandbox is unavailable: {reason}. {how_to_enable}")]
    Unavailable { reason: String, how_to_enable: String },
    /// The call asked for a longer timeout than the operator allows.
    #[error("a timeout of {}s is above the limit of {}s (ASTRID_COMMAND_MAX_TIMEOUT_SECS)", asked.as_secs(), max.as_secs())]
    TimeoutTooLong { asked: Duration, max: Duration },
    /// A timeout of zero.
    #[error("a command needs a timeout above zero")]
    NoTimeout,
    /// The command's sandbox could not be set up; nothing ran.
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
    /// The helper (or, unsandboxed, the shell) could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    /// The workspace overlay refused.
    #[error(transparent)]
    Vfs(#[from] VfsError),
}

/// Paths of the host the sandbox depends on: injectable, so tests can point the probe at
/// another binary or another view of the kernel's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHost {
    /// The `astrid` binary started as the helper (the running one by default).
    pub helper: PathBuf,
    /// Where the kernel's settings are read (`/proc/sys`).
    pub sysctls: PathBuf,
}

impl SandboxHost {
    /// The running binary and the real `/proc/sys`.
    pub fn current() -> Result<Self, std::io::Error> {
        Ok(Self { helper: std::env::current_exe()?, sysctls: PathBuf::from("/proc/sys") })
    }
}

/// Secrets under the user's home that a command never sees, even when the workspace or a
/// read-only path contains them.
const HOME_SECRETS: [&str; 16] = [
    ".ssh",
    ".aws",
    ".gnupg",
    ".netrc",
    ".git-credentials",
    ".docker",
    ".kube",
    ".azure",
    ".password-store",
    ".config/gcloud",
    ".config/gh",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".npmrc",
    ".pypirc",
    ".vault-token",
];

/// The command runner, built once at boot.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    availability: Availability,
    host: SandboxHost,
    /// Paths masked wherever the command could see them (the Astrid home, the user's keys).
    hidden: Vec<PathBuf>,
    /// Whether this kernel bounds processes per pid namespace (`pid_max`, Linux ≥ 6.14).
    namespace_pid_max: bool,
}

impl Sandbox {
    /// Probes the machine once (a trial command in a throwaway workspace under the home's
    /// `var/`) and keeps the verdict. Never fails: a sandbox that cannot be set up is
    /// [`Availability::Unavailable`], and every command is refused with its text.
    pub fn new(config: SandboxConfig, home: &AstridHome) -> Self {
        match SandboxHost::current() {
            Ok(host) => Self::with_host(config, home, host),
            Err(e) => {
                let mut sandbox =
                    Self::unprobed(config, home, SandboxHost { helper: PathBuf::new(), sysctls: PathBuf::new() });
                sandbox.availability = Availability::Unavailable {
                    reason: format!("cannot locate the astrid binary for the sandbox helper: {e}"),
                    how_to_enable: probe::HOW_TO_ENABLE.to_owned(),
                };
                sandbox
            }
        }
    }

    /// As [`Sandbox::new`], with the helper binary and the kernel settings' location given.
    pub fn with_host(config: SandboxConfig, home: &AstridHome, host: SandboxHost) -> Self {
        let mut sandbox = Self::unprobed(config, home, host);
        if sandbox.config.mode == SandboxMode::Unsandboxed {
            log::warn!("command sandbox OFF: {UNSANDBOXED}");
            sandbox.availability = Availability::Unsandboxed;
            return sandbox;
        }
        let (availability, namespace_pid_max) = probe::probe(&sandbox, home);
        match &availability {
            Availability::Ready => log::info!("command sandbox ready"),
            Availability::Unavailable { reason, how_to_enable } => {
                log::warn!("command sandbox unavailable, commands will be refused: {reason}. {how_to_enable}");
            }
            Availability::Unsandboxed => {}
        }
        sandbox.availability = availability;
        sandbox.namespace_pid_max = namespace_pid_max;
        sandbox
    }

    fn unprobed(config: SandboxConfig, home: &AstridHome, host: SandboxHost) -> Self {
        let mut hidden = vec![home.root().to_path_buf()];
        if let Some(user_home) = &config.user_home {
            hidden.extend(HOME_SECRETS.iter().map(|name| user_home.join(name)));
        }
        Self { config, availability: Availability::Ready, host, hidden, namespace_pid_max: false }
    }

    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Starts `request` against the workspace of `vfs`; returns once the command runs (the
    /// sandbox set up), or why it cannot.
    pub fn start(&self, vfs: &Arc<Vfs>, request: &CommandRequest) -> Result<RunningCommand, SandboxError> {
        if request.timeout.is_zero() {
            return Err(SandboxError::NoTimeout);
        }
        if request.timeout > self.config.max_timeout {
            return Err(SandboxError::TimeoutTooLong { asked: request.timeout, max: self.config.max_timeout });
        }
        match &self.availability {
            Availability::Ready => running::start_confined(self, vfs, request),
            Availability::Unsandboxed => running::start_unconfined(self, vfs, request),
            Availability::Unavailable { reason, how_to_enable } => {
                Err(SandboxError::Unavailable { reason: reason.clone(), how_to_enable: how_to_enable.clone() })
            }
        }
    }

    /// The command's whole environment: nothing of the daemon's but the search path and the
    /// language; `HOME` names an empty private directory.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_owned(), self.config.search_path.clone()),
            ("LANG".to_owned(), self.config.lang.clone()),
            ("TERM".to_owned(), "dumb".to_owned()),
        ];
        let home = self.config.user_home.as_deref().unwrap_or(Path::new("/tmp"));
        env.push(("HOME".to_owned(), home.display().to_string()));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_holds_no_secret() {
        let config = SandboxConfig { user_home: Some(PathBuf::from("/home/u")), ..SandboxConfig::default() };
        let sandbox = Sandbox::unprobed(
            config,
            &AstridHome::at("/home/u/.astrid"),
            SandboxHost { helper: PathBuf::new(), sysctls: PathBuf::new() },
        );
        let environment = sandbox.environment();
        let names: Vec<&str> = environment.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "LANG", "TERM", "HOME"]);
        assert!(sandbox.hidden.contains(&PathBuf::from("/home/u/.astrid")));
        assert!(sandbox.hidden.contains(&PathBuf::from("/home/u/.ssh")));
    }

    #[test]
    fn commands_can_be_driven_and_killed_from_other_threads() {
        fn send<T: Send>() {}
        fn shared<T: Send + Sync>() {}
        send::<RunningCommand>();
        shared::<Killer>();
        shared::<Sandbox>();
    }

    #[test]
    fn status_says_what_to_do() {
        let unavailable =
            Availability::Unavailable { reason: "no user namespaces".into(), how_to_enable: "sysctl …".into() };
        let status = unavailable.status();
        assert_eq!(status.state, SandboxState::Unavailable);
        assert_eq!(status.detail.as_deref(), Some("no user namespaces. sysctl …"));
        assert!(Availability::Unsandboxed.status().detail.is_some_and(|d| d.contains("unconfined")));
    }
}
