//! Where Astrid keeps its files, and with which permissions.
//!
//! The home is `$ASTRID_HOME` when that variable is set (even to an empty string, which is
//! then rejected), else `$HOME/.astrid`.
//!
//! The home is Astrid's alone, and Astrid only ever creates and tightens what it made itself:
//! - **Recognition.** A directory is an Astrid home when it holds `etc/layout-version` (a
//!   regular file, written when the layout is first made; every version has written it).
//!   A missing or empty directory, or one holding nothing but names of the layout (someone
//!   wrote `etc/servers.toml` or `AGENTS.md` before the first start), becomes one. Anything else (`/`, a
//!   project directory) is refused before a single mode is changed.
//! - **Ownership.** The home and every directory of the layout must belong to the effective
//!   uid and must not be writable by group or others: another user who can write there could
//!   swap in its own `run/` and receive the session token. Those are refused, with the path
//!   and the fix; a directory that is merely readable by others is tightened to 0700.
//! - **No links.** Inside the home no symbolic link is followed: every directory of the
//!   layout is opened relative to its parent's descriptor with `O_NOFOLLOW` (so nothing can
//!   be swapped between the check and the use), and a link where a directory or run file
//!   should be is refused. The home itself may be a link the user made (to another disk);
//!   the link must then be theirs or root's, and its target is checked like any home.
//! - **Modes.** Astrid creates directories 0700 and files 0600 whatever the umask, and on
//!   every boot tightens anything in the home that is open to group or others (directories
//!   to 0700, files to their owner bits), naming each path in the log.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag};

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
    /// The directory is neither empty nor an Astrid home.
    #[error(
        "refusing {} as the Astrid home: it is not empty (it holds {}) and has no etc/layout-version, so Astrid did not make it; set ASTRID_HOME to a new or empty directory",
        path.display(), found.join(", ")
    )]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// Some of the names found in it.
        found: Vec<String>,
    },
    /// A path of the layout is a symbolic link.
    #[error(
        "refusing {}: it is a symbolic link, and Astrid never follows links inside its home; remove it (`rm {}`) and Astrid makes its own",
        path.display(), path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A path of the layout is of the wrong kind.
    #[error("refusing {}: it should be {expected}; move it out of the Astrid home", path.display())]
    WrongKind {
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// A path belongs to another user.
    #[error(
        "refusing {}: it belongs to uid {owner}, not to you (uid {uid}), and its owner could swap what Astrid reads and writes there; use a home of your own (ASTRID_HOME), or `chown -R {uid} {}` if it is yours",
        path.display(), path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        /// The effective uid.
        uid: u32,
    },
    /// A directory is writable by group or others.
    #[error(
        "refusing {}: its mode {mode:04o} lets group or others write into it, so what it holds may not be Astrid's; check it, then `chmod go-w {}`",
        path.display(), path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
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

    /// Creates or checks the layout and tightens the whole home (the daemon, at every boot).
    ///
    /// Layout: `etc/` (+ `etc/hooks/`, `etc/layout-version` = `1` written once), `var/`,
    /// `run/`, `log/`, `keys/`, `bin/`, `wit/`, `home/`, and the default principal's
    /// `home/default/.local/{capsules,kv,log,audit,tokens,tmp}` and `.config/env`, every
    /// directory 0700. Returns what was tightened, for the log (the log directory does not
    /// exist before this runs).
    pub fn ensure(&self) -> Result<Vec<Tightened>, HomeError> {
        let mut tightened = Vec::new();
        let root = self.open_root(Apply::Create, &mut tightened)?.ok_or_else(|| HomeError::Io {
            action: "create",
            path: self.root.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        let etc = root.child("etc", Strictness::Layout, Apply::Create, &mut tightened)?;
        if let Some(etc) = &etc {
            etc.marker(Apply::Create, &mut tightened)?;
        }
        for path in LAYOUT {
            root.descend(path, Strictness::Layout, Apply::Create, &mut tightened)?;
        }
        for path in LATER_LAYOUT {
            root.descend(path, Strictness::Tighten, Apply::Create, &mut tightened)?;
        }
        let mut seen = 0;
        tighten_tree(&root, 0, &mut seen, &mut tightened);
        Ok(tightened)
    }

    /// The checks of [`AstridHome::ensure`] without changing anything: for the CLI before it
    /// starts a daemon, so a refusal is shown to the person rather than buried in a log.
    pub fn check(&self) -> Result<(), HomeError> {
        let mut ignored = Vec::new();
        let Some(root) = self.open_root(Apply::DryRun, &mut ignored)? else { return Ok(()) };
        if let Some(etc) = root.child("etc", Strictness::Layout, Apply::DryRun, &mut ignored)? {
            etc.marker(Apply::DryRun, &mut ignored)?;
        }
        for path in LAYOUT {
            root.descend(path, Strictness::Layout, Apply::DryRun, &mut ignored)?;
        }
        for path in LATER_LAYOUT {
            root.descend(path, Strictness::Tighten, Apply::DryRun, &mut ignored)?;
        }
        Ok(())
    }

    /// Checks the home and its `run/` as a client must before it trusts anything in them (a
    /// lock file's pid, a token, a socket): both exist, belong to the effective uid, are not
    /// writable by anyone else and are not links. `Ok(false)` when either does not exist
    /// (no daemon has ever run there). Creates and changes nothing.
    pub fn check_run_dir(&self) -> Result<bool, HomeError> {
        let mut ignored = Vec::new();
        let Some(root) = self.open_root(Apply::Verify, &mut ignored)? else { return Ok(false) };
        Ok(root.child("run", Strictness::Layout, Apply::Verify, &mut ignored)?.is_some())
    }

    /// Opens the home directory (following a link the user made, but only theirs or root's),
    /// creating it 0700 if it is missing and `apply` creates. Refuses another user's home, a
    /// home writable by others and a non-empty directory that is not an Astrid home.
    fn open_root(&self, apply: Apply, tightened: &mut Vec<Tightened>) -> Result<Option<HomeDir>, HomeError> {
        let path = &self.root;
        let uid = nix::unistd::geteuid().as_raw();
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() && meta.uid() != uid && meta.uid() != 0 => {
                return Err(HomeError::Owner { path: path.clone(), owner: meta.uid(), uid });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && apply == Apply::Create => {
                if let Some(parent) = path.parent() {
                    // Parents are not the home: created private, never changed if they exist.
                    fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|source| {
                        HomeError::Io { action: "create directory", path: parent.to_path_buf(), source }
                    })?;
                }
                match fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(HomeError::Io { action: "create directory", path: path.clone(), source });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HomeError::Io { action: "inspect", path: path.clone(), source }),
        }
        let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| match e {
                Errno::ENOTDIR => HomeError::WrongKind { path: path.clone(), expected: "a directory" },
                e => HomeError::Io { action: "open", path: path.clone(), source: e.into() },
            })?;
        let root = HomeDir { fd, path: path.clone() };
        let stat = root.stat()?;
        // Judge before recognising, recognise before changing anything.
        let verdict = judge(stat.st_uid, stat.st_mode, uid, Strictness::Layout, true);
        if let Verdict::Refuse(problem) = verdict {
            return Err(problem.error(path));
        }
        if apply != Apply::Verify {
            root.recognise()?;
        }
        if let Verdict::Tighten(mode) = verdict
            && apply == Apply::Create
        {
            root.chmod(stat.st_mode, mode, tightened)?;
        }
        Ok(Some(root))
    }
}

/// What a preparation of the home may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Create what is missing and tighten what is loose (the daemon).
    Create,
    /// Judge only, as [`Apply::Create`] would (the CLI before it starts a daemon).
    DryRun,
    /// Judge only what exists, without recognising the home (a client).
    Verify,
}

/// How strictly an existing path is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// A directory every version of Astrid forced to 0700: writable by group or others
    /// means somebody changed it, and it is refused.
    Layout,
    /// Something Astrid made with the umask's mode before this version: tightened, loudly.
    Tighten,
}

/// A path of the home that was open to group or others and no longer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    /// Its mode before.
    pub from: u32,
    /// Its mode now.
    pub to: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} was mode {:04o}, tightened to {:04o}", self.path.display(), self.from, self.to)
    }
}

/// What may be done with an existing path, from its owner and mode alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its mode is private already.
    Keep,
    /// Ours, but open to others: set it to this mode.
    Tighten(u32),
    /// Not to be used.
    Refuse(Problem),
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// It belongs to this uid, not to the effective uid.
    Owner {
        owner: u32,
        /// The effective uid.
        uid: u32,
    },
    /// Group or others may write into it.
    Writable {
        /// Its permission bits.
        mode: u32,
    },
}

impl Problem {
    fn error(self, path: &Path) -> HomeError {
        match self {
            Self::Owner { owner, uid } => HomeError::Owner { path: path.to_path_buf(), owner, uid },
            Self::Writable { mode } => HomeError::Writable { path: path.to_path_buf(), mode },
        }
    }
}

/// The decision for one existing path of the home: another uid's is refused; one writable
/// by group or others is refused where `strictness` is [`Strictness::Layout`]; one open to
/// group or others otherwise is tightened: a directory to 0700, a file to its owner's bits.
pub fn judge(owner: u32, mode: u32, uid: u32, strictness: Strictness, is_dir: bool) -> Verdict {
    let permissions = mode & 0o7777;
    if owner != uid {
        return Verdict::Refuse(Problem::Owner { owner, uid });
    }
    if strictness == Strictness::Layout && permissions & 0o022 != 0 {
        return Verdict::Refuse(Problem::Writable { mode: permissions });
    }
    let private = if is_dir { 0o700 } else { permissions & 0o700 };
    if permissions == private { Verdict::Keep } else { Verdict::Tighten(private) }
}

/// Directories below the home, created in this order; each is opened from its parent.
const LAYOUT: [&str; 19] = [
    "etc",
    "etc/hooks",
    "var",
    "run",
    "log",
    "keys",
    "bin",
    "wit",
    "home",
    "home/default",
    "home/default/.local",
    "home/default/.config",
    "home/default/.config/env",
    "home/default/.local/capsules",
    "home/default/.local/kv",
    "home/default/.local/log",
    "home/default/.local/audit",
    "home/default/.local/tokens",
    "home/default/.local/tmp",
];

/// Directories Astrid made with the umask's mode before this version: created 0700 now,
/// tightened (not refused) when an old home has them open.
const LATER_LAYOUT: [&str; 2] = ["var/overlay", "var/state.db"];

/// Names a directory may hold and still become a home: the top of the layout, and
/// `AGENTS.md` (the user's instructions to the agent, which a person may write first).
const TOP_LEVEL: [&str; 9] =
    ["etc", "var", "run", "log", "keys", "bin", "wit", "home", crate::types::instructions::INSTRUCTIONS_FILE];

/// The file that marks a home as Astrid's, in `etc/`.
const MARKER: &str = "layout-version";

/// How deep the boot-time tightening walks (the layout is six deep; capsules and overlays
/// add their own trees).
const MAX_DEPTH: usize = 32;
/// How many entries it looks at, at most (a home is small; an overlay could be large).
const MAX_ENTRIES: usize = 200_000;

/// An open directory of the home and the path it was opened as (for messages).
#[derive(Debug)]
struct HomeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl HomeDir {
    fn io(&self, action: &'static str, name: Option<&str>, e: Errno) -> HomeError {
        let path = name.map_or_else(|| self.path.clone(), |name| self.path.join(name));
        HomeError::Io { action, path, source: e.into() }
    }

    fn stat(&self) -> Result<FileStat, HomeError> {
        nix::sys::stat::fstat(self.fd.as_fd()).map_err(|e| self.io("inspect", None, e))
    }

    fn chmod(&self, from: u32, to: u32, tightened: &mut Vec<Tightened>) -> Result<(), HomeError> {
        nix::sys::stat::fchmod(self.fd.as_fd(), Mode::from_bits_truncate(to)).map_err(|e| self.io("chmod", None, e))?;
        tightened.push(Tightened { path: self.path.clone(), from: from & 0o7777, to });
        Ok(())
    }

    /// Refuses a directory that is neither an Astrid home, nor empty, nor holding only
    /// names of the layout.
    fn recognise(&self) -> Result<(), HomeError> {
        let etc = nix::fcntl::openat(
            self.fd.as_fd(),
            "etc",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        if let Ok(etc) = etc
            && nix::sys::stat::fstatat(etc.as_fd(), MARKER, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| kind(&stat) == Some(SFlag::S_IFREG))
        {
            return Ok(());
        }
        let entries = fs::read_dir(&self.path).map_err(|source| HomeError::Io {
            action: "list",
            path: self.path.clone(),
            source,
        })?;
        let mut found: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !TOP_LEVEL.contains(&name.as_str()))
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        found.sort();
        let more = found.len().saturating_sub(5);
        found.truncate(5);
        if more > 0 {
            found.push(format!("{more} more"));
        }
        Err(HomeError::Foreign { path: self.path.clone(), found })
    }

    /// Opens the directory `name` in this one without following a link, creating it 0700
    /// when it is missing and `apply` creates, tightening or refusing it as [`judge`] says.
    /// `None` when it is missing and nothing may be created.
    fn child(
        &self,
        name: &str,
        strictness: Strictness,
        apply: Apply,
        tightened: &mut Vec<Tightened>,
    ) -> Result<Option<HomeDir>, HomeError> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut created = false;
        let fd = loop {
            match nix::fcntl::openat(self.fd.as_fd(), name, flags, Mode::empty()) {
                Ok(fd) => break fd,
                Err(Errno::ENOENT) if apply == Apply::Create && !created => {
                    match nix::sys::stat::mkdirat(self.fd.as_fd(), name, Mode::S_IRWXU) {
                        Ok(()) | Err(Errno::EEXIST) => created = true,
                        Err(e) => return Err(self.io("create directory", Some(name), e)),
                    }
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let stat = nix::sys::stat::fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| self.io("inspect", Some(name), e))?;
                    return Err(match kind(&stat) {
                        Some(SFlag::S_IFLNK) => HomeError::Symlink { path },
                        _ => HomeError::WrongKind { path, expected: "a directory" },
                    });
                }
                Err(e) => return Err(self.io("open", Some(name), e)),
            }
        };
        let dir = HomeDir { fd, path };
        let stat = dir.stat()?;
        let uid = nix::unistd::geteuid().as_raw();
        match judge(stat.st_uid, stat.st_mode, uid, strictness, true) {
            Verdict::Refuse(problem) => return Err(problem.error(&dir.path)),
            // mkdir's mode went through the umask: set it outright, and say nothing of it.
            Verdict::Tighten(mode) if created => {
                nix::sys::stat::fchmod(dir.fd.as_fd(), Mode::from_bits_truncate(mode))
                    .map_err(|e| dir.io("chmod", None, e))?;
            }
            Verdict::Tighten(mode) if apply == Apply::Create => dir.chmod(stat.st_mode, mode, tightened)?,
            Verdict::Tighten(_) | Verdict::Keep => {}
        }
        Ok(Some(dir))
    }

    /// [`HomeDir::child`] for each component of `relative`.
    fn descend(
        &self,
        relative: &str,
        strictness: Strictness,
        apply: Apply,
        tightened: &mut Vec<Tightened>,
    ) -> Result<Option<HomeDir>, HomeError> {
        let mut names = relative.split('/');
        let Some(first) = names.next() else { return Ok(None) };
        let Some(mut dir) = self.child(first, strictness, apply, tightened)? else { return Ok(None) };
        for name in names {
            match dir.child(name, strictness, apply, tightened)? {
                Some(next) => dir = next,
                None => return Ok(None),
            }
        }
        Ok(Some(dir))
    }

    /// Writes `layout-version` (`1`, 0600) in this `etc/` unless it exists; an existing one
    /// must be a regular file of ours.
    fn marker(&self, apply: Apply, tightened: &mut Vec<Tightened>) -> Result<(), HomeError> {
        let path = self.path.join(MARKER);
        let created = if apply == Apply::Create {
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match nix::fcntl::openat(self.fd.as_fd(), MARKER, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
                Ok(fd) => {
                    nix::sys::stat::fchmod(fd.as_fd(), Mode::S_IRUSR | Mode::S_IWUSR)
                        .map_err(|e| self.io("chmod", Some(MARKER), e))?;
                    let mut file = fs::File::from(fd);
                    file.write_all(b"1").map_err(|source| HomeError::Io {
                        action: "write",
                        path: path.clone(),
                        source,
                    })?;
                    true
                }
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(self.io("create", Some(MARKER), e)),
            }
        } else {
            false
        };
        if created {
            return Ok(());
        }
        let stat = match nix::sys::stat::fstatat(self.fd.as_fd(), MARKER, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.io("inspect", Some(MARKER), e)),
        };
        match kind(&stat) {
            Some(SFlag::S_IFREG) => {}
            Some(SFlag::S_IFLNK) => return Err(HomeError::Symlink { path }),
            _ => return Err(HomeError::WrongKind { path, expected: "a regular file" }),
        }
        let uid = nix::unistd::geteuid().as_raw();
        match judge(stat.st_uid, stat.st_mode, uid, Strictness::Tighten, false) {
            Verdict::Refuse(problem) => Err(problem.error(&path)),
            Verdict::Tighten(mode) if apply == Apply::Create => {
                tighten_at(self, MARKER, stat.st_mode, mode, tightened);
                Ok(())
            }
            Verdict::Tighten(_) | Verdict::Keep => Ok(()),
        }
    }
}

fn kind(stat: &FileStat) -> Option<SFlag> {
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    [SFlag::S_IFREG, SFlag::S_IFDIR, SFlag::S_IFLNK, SFlag::S_IFSOCK].into_iter().find(|k| *k == kind)
}

/// Sets the mode of `name` in `dir` without following a link, and records it.
fn tighten_at(dir: &HomeDir, name: &str, from: u32, to: u32, tightened: &mut Vec<Tightened>) {
    let path = dir.path.join(name);
    match nix::sys::stat::fchmodat(dir.fd.as_fd(), name, Mode::from_bits_truncate(to), FchmodatFlags::NoFollowSymlink) {
        Ok(()) => tightened.push(Tightened { path, from: from & 0o7777, to }),
        Err(e) => log::warn!("cannot tighten {} (mode {:04o}): {e}", path.display(), from & 0o7777),
    }
}

/// Tightens everything below `dir` that is open to group or others (directories to 0700,
/// files to their owner's bits), never following a link and leaving other users' files
/// alone (they are named in the log). Sockets too: a frontend needs only the owner's bits.
fn tighten_tree(dir: &HomeDir, depth: usize, seen: &mut usize, tightened: &mut Vec<Tightened>) {
    let Ok(entries) = fs::read_dir(&dir.path) else { return };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.filter_map(Result::ok) {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(stat) = nix::sys::stat::fstatat(dir.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        let is_dir = match kind(&stat) {
            Some(SFlag::S_IFDIR) => true,
            Some(SFlag::S_IFREG | SFlag::S_IFSOCK) => false,
            _ => continue, // links are never followed nor changed; nothing else belongs here
        };
        match judge(stat.st_uid, stat.st_mode, uid, Strictness::Tighten, is_dir) {
            Verdict::Refuse(_) => {
                log::warn!(
                    "{} belongs to uid {}, not to Astrid's uid {uid}: left as it is",
                    dir.path.join(name).display(),
                    stat.st_uid
                );
                continue;
            }
            Verdict::Tighten(mode) => tighten_at(dir, name, stat.st_mode, mode, tightened),
            Verdict::Keep => {}
        }
        if is_dir && depth < MAX_DEPTH {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            if let Ok(fd) = nix::fcntl::openat(dir.fd.as_fd(), name, flags, Mode::empty()) {
                tighten_tree(&HomeDir { fd, path: dir.path.join(name) }, depth + 1, seen, tightened);
            }
        }
    }
}

/// Tightens everything below the directory `dir` (not `dir` itself) that is open to group
/// or others, as the boot-time check does for the whole home: for files a library made
/// with the umask's mode (sled's). Returns what it changed.
pub fn tighten_below(dir: &Path) -> Vec<Tightened> {
    let mut tightened = Vec::new();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::open(dir, flags, Mode::empty()) {
        Ok(fd) => tighten_tree(&HomeDir { fd, path: dir.to_path_buf() }, 0, &mut 0, &mut tightened),
        Err(e) => log::warn!("cannot open {} to tighten what it holds: {e}", dir.display()),
    }
    tightened
}

/// Creates `dir` and its missing parents with mode 0700 whatever the umask, and tightens
/// `dir` to 0700 if it exists looser. Refuses a link at `dir`. For directories below the
/// home whose parents [`AstridHome::ensure`] checked (a workspace's overlay).
pub fn private_dir_all(dir: &Path) -> Result<(), HomeError> {
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| HomeError::Io { action, path, source }
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(HomeError::Symlink { path: dir.to_path_buf() }),
        Ok(meta) if !meta.is_dir() => {
            return Err(HomeError::WrongKind { path: dir.to_path_buf(), expected: "a directory" });
        }
        Ok(meta) => {
            let uid = nix::unistd::geteuid().as_raw();
            return match judge(meta.uid(), meta.mode(), uid, Strictness::Tighten, true) {
                Verdict::Refuse(problem) => Err(problem.error(dir)),
                Verdict::Tighten(mode) => {
                    log::warn!("{} was mode {:04o}, tightened to {mode:04o}", dir.display(), meta.mode() & 0o7777);
                    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))
                }
                Verdict::Keep => Ok(()),
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(HomeError::Io { action: "inspect", path: dir.to_path_buf(), source }),
    }
    if let Some(parent) = dir.parent()
        && !parent.exists()
    {
        private_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return private_dir_all(dir),
        Err(source) => return Err(HomeError::Io { action: "create directory", path: dir.to_path_buf(), source }),
    }
    // The umask applied to mkdir's mode: set it outright.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod 0700", dir))
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

    #[test]
    fn judge_refuses_other_owners_and_writable_layout_and_tightens_the_rest() {
        let me = 1000;
        let dir = |mode| judge(me, mode, me, Strictness::Layout, true);
        assert_eq!(
            judge(0, 0o40700, me, Strictness::Layout, true),
            Verdict::Refuse(Problem::Owner { owner: 0, uid: me })
        );
        assert_eq!(
            judge(0, 0o100600, me, Strictness::Tighten, false),
            Verdict::Refuse(Problem::Owner { owner: 0, uid: me }),
            "another user's file is never ours to tighten"
        );
        assert_eq!(dir(0o40700), Verdict::Keep);
        assert_eq!(dir(0o40755), Verdict::Tighten(0o700));
        assert_eq!(dir(0o42700), Verdict::Tighten(0o700), "setgid is not private");
        assert_eq!(dir(0o40500), Verdict::Tighten(0o700), "Astrid needs to write in its directories");
        assert_eq!(dir(0o40770), Verdict::Refuse(Problem::Writable { mode: 0o770 }));
        assert_eq!(dir(0o40703), Verdict::Refuse(Problem::Writable { mode: 0o703 }));
        assert_eq!(judge(me, 0o40777, me, Strictness::Tighten, true), Verdict::Tighten(0o700));
        assert_eq!(judge(me, 0o100666, me, Strictness::Tighten, false), Verdict::Tighten(0o600));
        assert_eq!(judge(me, 0o100755, me, Strictness::Tighten, false), Verdict::Tighten(0o700));
        assert_eq!(judge(me, 0o100400, me, Strictness::Tighten, false), Verdict::Keep);
    }

    #[test]
    fn refusals_name_the_path_and_the_fix() {
        let path = Path::new("/srv/h/run");
        let owner = Problem::Owner { owner: 0, uid: 1000 }.error(path).to_string();
        assert!(owner.contains("refusing /srv/h/run: it belongs to uid 0, not to you (uid 1000)"), "{owner}");
        assert!(owner.contains("chown -R 1000 /srv/h/run"), "{owner}");
        let writable = Problem::Writable { mode: 0o777 }.error(path).to_string();
        assert!(writable.contains("mode 0777") && writable.contains("`chmod go-w /srv/h/run`"), "{writable}");
        let link = HomeError::Symlink { path: path.to_path_buf() }.to_string();
        assert!(link.contains("symbolic link") && link.contains("`rm /srv/h/run`"), "{link}");
    }

    #[test]
    fn links_anywhere_in_the_layout_are_refused_and_never_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("target");
        fs::create_dir(&target).expect("target");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod");
        let home = AstridHome::at(tmp.path().join("h"));
        home.ensure().expect("ensure");
        let audit = home.principal_dir(DEFAULT_PRINCIPAL).join(".local/audit");
        fs::remove_dir(&audit).expect("rmdir");
        std::os::unix::fs::symlink(&target, &audit).expect("symlink");
        assert!(matches!(home.check(), Err(HomeError::Symlink { path }) if path == audit));
        assert!(matches!(home.ensure(), Err(HomeError::Symlink { path }) if path == audit));
        assert_eq!(fs::metadata(&target).expect("stat").permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read_dir(&target).expect("ls").count(), 0);
        // A file where a directory belongs is refused too.
        fs::remove_file(&audit).expect("rm");
        fs::write(&audit, "").expect("file");
        assert!(matches!(home.ensure(), Err(HomeError::WrongKind { .. })));
    }

    #[test]
    fn only_empty_or_astrid_directories_become_homes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path());
        fs::write(tmp.path().join("Cargo.toml"), "").expect("write");
        let err = home.ensure().expect_err("foreign");
        assert!(matches!(&err, HomeError::Foreign { found, .. } if found == &["Cargo.toml".to_owned()]), "{err}");
        assert!(!tmp.path().join("etc").exists(), "nothing is created in a refused directory");
        // A home made by an earlier version (etc/layout-version, other files beside) is kept.
        fs::create_dir(tmp.path().join("etc")).expect("etc");
        fs::write(tmp.path().join("etc/layout-version"), "1").expect("marker");
        home.ensure().expect("an Astrid home");
        assert!(home.run_dir().is_dir());
        assert!(matches!(AstridHome::at("/").check(), Err(HomeError::Foreign { .. } | HomeError::Owner { .. })));
        // The user's instructions to the agent may be written before the first start.
        let first = tempfile::tempdir().expect("tempdir");
        fs::write(first.path().join("AGENTS.md"), "be brief").expect("write");
        AstridHome::at(first.path()).ensure().expect("AGENTS.md alone is not foreign");
    }

    #[test]
    fn the_client_check_creates_nothing_and_refuses_what_the_daemon_would() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path().join("h"));
        assert!(!home.check_run_dir().expect("missing home"));
        assert!(!home.root().exists());
        home.ensure().expect("ensure");
        assert!(home.check_run_dir().expect("checked"));
        fs::set_permissions(home.run_dir(), fs::Permissions::from_mode(0o730)).expect("chmod");
        assert!(matches!(home.check_run_dir(), Err(HomeError::Writable { mode: 0o730, .. })));
        assert_eq!(fs::metadata(home.run_dir()).expect("stat").permissions().mode() & 0o777, 0o730, "unchanged");
    }

    #[test]
    fn tightening_fixes_loose_files_and_leaves_links_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::write(&outside, "x").expect("write");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).expect("chmod");
        let dir = tmp.path().join("db");
        private_dir_all(&dir.join("blobs")).expect("dirs");
        fs::write(dir.join("conf"), "x").expect("write");
        fs::set_permissions(dir.join("conf"), fs::Permissions::from_mode(0o666)).expect("chmod");
        fs::set_permissions(dir.join("blobs"), fs::Permissions::from_mode(0o777)).expect("chmod");
        std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");
        let tightened = tighten_below(&dir);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir.join("conf")), 0o600);
        assert_eq!(mode(&dir.join("blobs")), 0o700);
        assert_eq!(mode(&outside), 0o644, "a link's target is never touched");
        assert_eq!(tightened.len(), 2, "{tightened:?}");
        assert!(tightened.iter().any(|t| t.path == dir.join("conf") && t.from == 0o666 && t.to == 0o600));
        assert!(matches!(private_dir_all(&dir.join("link")), Err(HomeError::Symlink { .. })));
    }
}
