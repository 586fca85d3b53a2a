//! Where Astrid keeps its files, and with which permissions.
//!
//! The home is `$ASTRID_HOME` when that variable is set (even to an empty string, which is
//! then rejected), else `$HOME/.astrid`. Every directory we create is forced to mode 0700 on
//! every boot, because a home copied or created by hand may carry looser modes and the socket
//! directory is one of the three locks on the door (dir mode, peer UID, token).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The principal every single-user setup runs as.
pub const DEFAULT_PRINCIPAL: &str = "default";

/// Why the home could not be resolved or prepared.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// The variable that names the home is not an absolute path.
    #[error("{0} must be an absolute path")]
    NotAbsolute(&'static str),
    /// The variable that names the home contains a `..` component.
    #[error("{0} must not contain '..' path components")]
    ParentComponent(&'static str),
    /// Neither variable is set.
    #[error("neither ASTRID_HOME nor HOME environment variable is set")]
    Unset,
    /// A directory or file of the layout could not be created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The path we were doing it to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The resolved Astrid home and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AstridHome {
    root: PathBuf,
}

impl AstridHome {
    /// Resolves the home from the process environment.
    pub fn from_env() -> Result<Self, HomeError> {
        Self::resolve(std::env::var_os("ASTRID_HOME"), std::env::var_os("HOME"))
    }

    /// Resolves the home from the two variables, so the rules can be tested without
    /// touching the process environment.
    pub fn resolve(astrid_home: Option<OsString>, home: Option<OsString>) -> Result<Self, HomeError> {
        if let Some(value) = astrid_home {
            let root = checked_absolute(PathBuf::from(value), "ASTRID_HOME")?;
            return Ok(Self { root });
        }
        let home = home.ok_or(HomeError::Unset)?;
        let home = checked_absolute(PathBuf::from(home), "HOME")?;
        Ok(Self { root: home.join(".astrid") })
    }

    /// Uses `root` as the home as it is (for tests and tools that already hold a path).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `run/`: socket, token, readiness sentinel and the singleton lock.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `run/system.sock`: the Unix socket frontends connect to.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir().join("system.sock")
    }

    /// `run/system.token`: the per-boot session token (64 lowercase hex, mode 0600).
    pub fn token_path(&self) -> PathBuf {
        self.run_dir().join("system.token")
    }

    /// `run/system.ready`: written last during boot; its presence under a held lock means
    /// the daemon accepts clients.
    pub fn ready_path(&self) -> PathBuf {
        self.run_dir().join("system.ready")
    }

    /// `run/system.lock`: exclusively locked by the daemon for its whole life. The lock, not
    /// the socket, is the truth about whether a daemon owns this home.
    pub fn lock_path(&self) -> PathBuf {
        self.run_dir().join("system.lock")
    }

    /// `log/`: daemon log files `astrid.YYYY-MM-DD.log`.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// `home/<principal>/`: the per-principal home.
    pub fn principal_dir(&self, principal: &str) -> PathBuf {
        self.root.join("home").join(principal)
    }

    /// `home/<principal>/.local/capsules/`: capsules installed for that principal.
    pub fn principal_capsules_dir(&self, principal: &str) -> PathBuf {
        self.principal_dir(principal).join(".local").join("capsules")
    }

    /// `var/overlay/<id>/`: pending (uncommitted) capsule writes to `workspace`, keyed by a
    /// hash of its canonical path so each workspace has its own.
    pub fn overlay_dir(&self, workspace: &Path) -> PathBuf {
        let id = blake3::hash(workspace.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("var").join("overlay").join(&id.as_str()[..16])
    }

    /// Creates the layout (idempotent) and forces every directory to mode 0700.
    ///
    /// Layout: `etc/` (+ `etc/hooks/`, `etc/layout-version` = `1` written once), `var/`,
    /// `run/`, `log/`, `keys/`, `bin/`, `wit/`, `home/`, and the default principal's
    /// `home/default/.local/{capsules,kv,log,audit,tokens,tmp}` and `.config/env`.
    pub fn ensure(&self) -> Result<(), HomeError> {
        private_dir(&self.root)?;
        for dir in ["etc", "etc/hooks", "var", "run", "log", "keys", "bin", "wit", "home"] {
            private_dir(&self.root.join(dir))?;
        }
        let principal = self.principal_dir(DEFAULT_PRINCIPAL);
        private_dir(&principal)?;
        for dir in [".local", ".config", ".config/env"] {
            private_dir(&principal.join(dir))?;
        }
        for dir in ["capsules", "kv", "log", "audit", "tokens", "tmp"] {
            private_dir(&principal.join(".local").join(dir))?;
        }
        let version = self.root.join("etc").join("layout-version");
        if !version.exists() {
            fs::write(&version, "1").map_err(|source| HomeError::Io {
                action: "write",
                path: version.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn checked_absolute(path: PathBuf, var: &'static str) -> Result<PathBuf, HomeError> {
    if !path.is_absolute() {
        return Err(HomeError::NotAbsolute(var));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(HomeError::ParentComponent(var));
    }
    Ok(path)
}

/// Creates `path` (and parents) and sets it to 0700 whether or not it existed.
fn private_dir(path: &Path) -> Result<(), HomeError> {
    let io_err = |action| move |source| HomeError::Io { action, path: path.to_path_buf(), source };
    fs::create_dir_all(path).map_err(io_err("create directory"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod 0700"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn astrid_home_wins_over_home() {
        let home = AstridHome::resolve(os("/srv/astrid"), os("/home/u")).expect("valid");
        assert_eq!(home.root(), Path::new("/srv/astrid"));
    }

    #[test]
    fn home_falls_back_to_dot_astrid() {
        let home = AstridHome::resolve(None, os("/home/u")).expect("valid");
        assert_eq!(home.root(), Path::new("/home/u/.astrid"));
    }

    #[test]
    fn relative_empty_and_dotdot_are_rejected() {
        for bad in ["relative/path", "", "/a/../b"] {
            assert!(AstridHome::resolve(os(bad), os("/home/u")).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(AstridHome::resolve(None, None), Err(HomeError::Unset)));
        assert!(matches!(AstridHome::resolve(None, os("rel")), Err(HomeError::NotAbsolute("HOME"))));
    }

    #[test]
    fn ensure_creates_private_dirs_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path().join("h"));
        home.ensure().expect("first ensure");
        fs::set_permissions(home.run_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
        home.ensure().expect("second ensure");
        for dir in [home.root().to_path_buf(), home.run_dir(), home.principal_capsules_dir("default")] {
            let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let version = fs::read_to_string(home.root().join("etc/layout-version")).expect("read");
        assert_eq!(version, "1");
    }
}
