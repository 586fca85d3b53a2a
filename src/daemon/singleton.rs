//! One daemon per home, decided by an exclusive lock on `run/system.lock`.
//!
//! The lock is the only truth about liveness: the kernel releases it when the process dies,
//! however it dies, so a stale lock cannot exist. A socket, token or ready file, by
//! contrast, can be left behind by a SIGKILLed daemon; such files are removed only by a
//! process that holds the lock, so nobody ever unlinks the socket of a live daemon (the
//! reference's CLI did, and orphaned daemons piled up).
//!
//! The lock file also holds the owner's pid, for messages and for `astrid stop`. It is
//! never opened through a symbolic link (a link there is refused), and a client reads it only
//! after checking that the home and `run/` are its own user's (see
//! [`AstridHome::check_run_dir`]): a pid named by somebody else's file is never signalled.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::home::{AstridHome, HomeError};

/// How long a starting daemon retries a lock that is held, in case the holder is only a
/// CLI taking a brief look (see [`probe`]).
const CONTENDED_RETRY: Duration = Duration::from_millis(500);

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error("another astrid daemon owns {} ({})", home.display(), describe_pid(*pid))]
    Held {
        /// The home in question.
        home: PathBuf,
        /// The owner's pid, as written in the lock file.
        pid: Option<u32>,
    },
    /// The home or its `run/` may not be trusted.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The lock file is a symbolic link.
    #[error(
        "refusing {}: it is a symbolic link, and Astrid never follows links inside its home; remove it (`rm {}`)",
        path.display(), path.display()
    )]
    Symlink {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn describe_pid(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// Proof that this process owns the home. Dropping it releases the lock.
#[derive(Debug)]
pub struct SingletonLock {
    file: File,
}

/// Whether a daemon owns a home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Nobody holds the lock.
    Stopped,
    /// A process holds the lock.
    Running {
        /// Its pid, once written. `None` means the owner is still removing a dead daemon's
        /// files (or is a CLI taking a look, or a daemon that is exiting): do not trust the run
        /// files yet. A pid is given only while that process lives, so a pid left by a dead
        /// daemon, read before its successor truncated the file, is never reported.
        pid: Option<u32>,
    },
}

/// Takes the daemon's lock, removes the run files a dead daemon left behind, and only then
/// records our pid in the lock file. Returns the lock and the stale files removed.
///
/// The order matters to readers: once the lock names a pid, any ready file they see is that
/// daemon's own (see [`Liveness::Running`]).
pub fn acquire(home: &AstridHome) -> Result<(SingletonLock, Vec<PathBuf>), LockError> {
    let path = home.lock_path();
    let io_err = |action| {
        let path = path.clone();
        move |source| LockError::Io { action, path, source }
    };
    let lock = SingletonLock { file: lock_exclusive(home, &path)? };
    lock.file.set_len(0).map_err(io_err("truncate"))?;
    let stale = remove_run_files(home, &lock);
    let mut file = &lock.file;
    file.rewind().map_err(io_err("rewind"))?;
    // Not synced: the pid speaks to the processes of this boot, which read it from the page
    // cache; after a power loss it names nobody, and the next daemon truncates it anyway. (The
    // fsync cost 2 ms of every boot on a virtual disk.)
    write!(file, "{}", std::process::id()).map_err(io_err("write pid to"))?;
    Ok((lock, stale))
}

fn lock_exclusive(home: &AstridHome, path: &Path) -> Result<File, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // the current owner's pid must survive our attempt
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| open_error(path, source))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if started.elapsed() < CONTENDED_RETRY => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held { home: home.root().to_path_buf(), pid: read_pid(&file) });
            }
            Err(TryLockError::Error(source)) => {
                return Err(LockError::Io { action: "lock", path: path.to_path_buf(), source });
            }
        }
    }
}

fn open_error(path: &Path, source: io::Error) -> LockError {
    if source.raw_os_error() == Some(nix::libc::ELOOP) {
        return LockError::Symlink { path: path.to_path_buf() };
    }
    LockError::Io { action: "open", path: path.to_path_buf(), source }
}

/// Looks without disturbing: a shared lock taken and released at once. Never creates files.
/// Refuses a home or `run/` that another user controls (see [`AstridHome::check_run_dir`]).
pub fn probe(home: &AstridHome) -> Result<Liveness, LockError> {
    if !home.check_run_dir()? {
        return Ok(Liveness::Stopped);
    }
    let path = home.lock_path();
    let file =
        match OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Liveness::Stopped),
            Err(source) => return Err(open_error(&path, source)),
        };
    match file.try_lock_shared() {
        Ok(()) => Ok(Liveness::Stopped),
        Err(TryLockError::WouldBlock) => Ok(Liveness::Running { pid: read_pid(&file).filter(|pid| alive(*pid)) }),
        Err(TryLockError::Error(source)) => Err(LockError::Io { action: "lock", path, source }),
    }
}

/// Whether `pid` names a live process (a zombie counts as gone: it holds no lock, serves
/// nothing and runs no code).
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        Ok(()) | Err(_) => {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name: "pid (comm) S ...".
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
    }
}

/// The run files a daemon leaves behind if it dies without its shutdown sequence.
pub fn run_files(home: &AstridHome) -> [PathBuf; 3] {
    [home.socket_path(), home.token_path(), home.ready_path()]
}

/// Removes the socket, token and ready files. Requires the lock, as proof that no live
/// daemon is using them. A symlink is removed as a link; its target is never touched.
pub fn remove_run_files(home: &AstridHome, _owner: &SingletonLock) -> Vec<PathBuf> {
    run_files(home)
        .into_iter()
        .filter(|path| fs::symlink_metadata(path).is_ok())
        .filter(|path| match fs::remove_file(path) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("cannot remove {}: {e}", path.display());
                false
            }
        })
        .collect()
}

/// For the CLI after it had to SIGKILL a daemon: takes the lock briefly (no pid written)
/// and removes the leftover run files. Fails with [`LockError::Held`] if a daemon lives.
pub fn clean_stale(home: &AstridHome) -> Result<Vec<PathBuf>, LockError> {
    if !home.check_run_dir()? {
        return Ok(Vec::new());
    }
    let file = lock_exclusive(home, &home.lock_path())?;
    Ok(remove_run_files(home, &SingletonLock { file }))
}

/// The pid in the lock file, read through the descriptor that was locked (never reopened
/// by path, so never through a link swapped in since).
fn read_pid(file: &File) -> Option<u32> {
    let mut text = String::new();
    let mut file = file;
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_with_the_owner_pid() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path());
        home.ensure().expect("ensure");
        assert_eq!(probe(&home).expect("probe"), Liveness::Stopped);
        let (lock, _) = acquire(&home).expect("first");
        let err = acquire(&home).expect_err("second");
        let text = err.to_string();
        assert!(text.starts_with("another astrid daemon owns"), "{text}");
        assert!(text.contains(&format!("(pid {})", std::process::id())), "{text}");
        assert_eq!(probe(&home).expect("probe"), Liveness::Running { pid: Some(std::process::id()) });
        drop(lock);
        assert_eq!(probe(&home).expect("probe"), Liveness::Stopped);
    }

    #[test]
    fn run_files_are_removed_only_with_the_lock_and_symlink_targets_survive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path().join("h"));
        home.ensure().expect("ensure");
        let target = tmp.path().join("precious");
        fs::write(&target, "keep").expect("write");
        std::os::unix::fs::symlink(&target, home.socket_path()).expect("symlink");
        fs::write(home.ready_path(), "").expect("ready");
        let removed = clean_stale(&home).expect("clean");
        assert_eq!(removed.len(), 2);
        assert_eq!(fs::read_to_string(&target).expect("target"), "keep");
        let _owner = acquire(&home).expect("lock");
        assert!(!home.ready_path().exists());
        assert!(matches!(clean_stale(&home), Err(LockError::Held { .. })));
    }
}
