//! The workspace as capsules see it: confined, and copy-on-write.
//!
//! Confinement: the workspace root and the overlay are opened once as directory handles
//! (cap-std) and every access is relative to them, so no `..`, absolute path or symlink can
//! lead outside, and there is no check-then-use race (the kernel resolves each path against
//! the handle). Paths are also checked lexically first ([`VfsPath`]). Inside the workspace,
//! [`Vfs::resolve`] says where a path really leads (its symlinks followed): grants are
//! checked against that, operations act on it, and commit refuses a change whose path has
//! gained a link since it was written.
//!
//! Copy-on-write: writes land in `overlay/upper/` and deletions in `overlay/whiteouts.json`;
//! reads see the overlay over the workspace. Nothing reaches the real files until the person
//! runs `astrid workspace commit`; `discard` drops it all. The overlay lives under the home,
//! so pending changes survive a restart of the daemon.

mod import;
mod path;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use import::{Import, Imported};
pub use path::{MAX_PATH, VfsPath};

/// Largest file read or written through the VFS.
pub const MAX_FILE: u64 = 10 * 1024 * 1024;
/// Most symlinks followed while resolving one path (as the kernel's `ELOOP`).
const MAX_LINKS: usize = 40;
const WHITEOUTS: &str = "whiteouts.json";
/// Below the overlay directory: a private directory per running command (its scratch mount
/// point and its staged files), removed when it ends and, after a crash, at the next open.
const COMMANDS: &str = "commands";

/// Why a VFS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The path was refused before any filesystem access.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path (cut to 200 characters).
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The path would lead outside the workspace.
    #[error("{path} leads outside the workspace")]
    Escape { path: String },
    /// Nothing there.
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    /// A directory where a file was expected.
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    /// A file where a directory was expected.
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    /// Resolving the path followed too many symlinks (a loop, most likely).
    #[error("{path}: too many symbolic links")]
    TooManyLinks { path: String },
    /// The target is a symlink, which is never written through.
    #[error("{path} is a symlink; writing through links is refused")]
    SymlinkRefused { path: String },
    /// The file is too large.
    #[error("{path} is {size} bytes, the limit is {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    /// Another I/O failure.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// What `stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// A directory.
    pub is_dir: bool,
    /// A regular file.
    pub is_file: bool,
    /// Size in bytes.
    pub size: u64,
}

/// A pending change and its kind are what `WorkspaceDiff` and `WorkspaceCommit` report: one
/// definition, the wire's.
pub use crate::types::management::{ChangeKind, WorkspaceChange as Change};

/// The confined, copy-on-write workspace.
pub struct Vfs {
    root: PathBuf,
    workspace: Dir,
    upper: Dir,
    overlay_dir: PathBuf,
    whiteouts: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("root", &self.root).field("overlay", &self.overlay_dir).finish()
    }
}

/// `old` → `new` as a unified diff with three lines of context under `--- old_name` and
/// `+++ new_name`; nothing at all (not even the header) where the texts are the same.
fn unified_diff(old: &str, new: &str, old_name: String, new_name: String) -> String {
    let patch = diffy::DiffOptions::new()
        .set_context_len(3)
        .set_original_filename(old_name)
        .set_modified_filename(new_name)
        .create_patch(old, new);
    if patch.hunks().is_empty() { String::new() } else { patch.to_string() }
}

fn classify(path: &VfsPath, action: &'static str, e: io::Error) -> VfsError {
    let text = e.to_string();
    if text.contains("outside of the filesystem") || text.contains("escape") {
        return VfsError::Escape { path: path.to_string() };
    }
    // ELOOP: a symlink where cap-std will not follow one.
    if e.raw_os_error() == Some(40) {
        return VfsError::Escape { path: path.to_string() };
    }
    match e.kind() {
        io::ErrorKind::NotFound => VfsError::NotFound { path: path.to_string() },
        io::ErrorKind::IsADirectory => VfsError::IsADirectory { path: path.to_string() },
        io::ErrorKind::NotADirectory => VfsError::NotADirectory { path: path.to_string() },
        io::ErrorKind::PermissionDenied => VfsError::Escape { path: path.to_string() },
        _ => VfsError::Io { action, path: path.to_string(), source: e },
    }
}

impl Vfs {
    /// Opens the workspace at `root` with its overlay in `overlay_dir` (created 0700).
    pub fn open(root: &Path, overlay_dir: &Path) -> Result<Self, VfsError> {
        let io_err = |action, path: &Path| {
            let path = path.display().to_string();
            move |source| VfsError::Io { action, path, source }
        };
        let upper_path = overlay_dir.join("upper");
        // 0700 whatever the umask, never through a link (the home's rules).
        for dir in [overlay_dir, &upper_path] {
            crate::home::private_dir_all(dir).map_err(|e| VfsError::Io {
                action: "create",
                path: dir.display().to_string(),
                source: io::Error::other(e),
            })?;
        }
        let workspace = Dir::open_ambient_dir(root, ambient_authority()).map_err(io_err("open", root))?;
        let upper = Dir::open_ambient_dir(&upper_path, ambient_authority()).map_err(io_err("open", &upper_path))?;
        // What commands of a daemon that died left behind (their mounts died with them).
        let _ = fs::remove_dir_all(overlay_dir.join(COMMANDS));
        let whiteouts_path = overlay_dir.join(WHITEOUTS);
        let whiteouts = match fs::read(&whiteouts_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err("read", &whiteouts_path)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            workspace,
            upper,
            overlay_dir: overlay_dir.to_path_buf(),
            whiteouts: Mutex::new(whiteouts),
        })
    }

    /// The workspace root, as opened.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The overlay's `upper/` directory, for the command sandbox: it is the top lower layer
    /// of the workspace a command sees.
    pub fn upper_dir(&self) -> PathBuf {
        self.overlay_dir.join("upper")
    }

    /// The pending deletions, workspace-relative.
    pub fn whiteout_paths(&self) -> Vec<String> {
        self.whiteouts().iter().cloned().collect()
    }

    /// A fresh private directory (0700) for one command, on the overlay's filesystem so its
    /// staged files reach the overlay by rename. The caller removes it when done.
    pub fn command_dir(&self, id: &str) -> Result<PathBuf, VfsError> {
        let dir = self.overlay_dir.join(COMMANDS).join(id);
        let failed = |source| VfsError::Io { action: "create", path: dir.display().to_string(), source };
        crate::home::private_dir_all(&self.overlay_dir.join(COMMANDS)).map_err(|e| failed(io::Error::other(e)))?;
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(failed)?;
        Ok(dir)
    }

    /// Where `path` really leads inside the workspace: every symlink along it followed (a
    /// link's target taken relative to the link's directory), so the result names no link.
    /// A link that leads out of the workspace (`..` past the root, an absolute target) is an
    /// [`VfsError::Escape`]. Grants are checked against this path and every operation acts
    /// on it, so a link inside a granted directory (`notes/up -> ..`) cannot widen a grant,
    /// and what a person reviews is the file that really changes. Links exist only in the
    /// workspace (capsules cannot make one); the overlay and whiteouts are taken into
    /// account so a path the capsule created or deleted resolves as it sees it.
    pub fn resolve(&self, path: &VfsPath) -> Result<VfsPath, VfsError> {
        let mut pending: std::collections::VecDeque<String> =
            path.as_str().split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut followed = 0;
        let escape = || VfsError::Escape { path: path.to_string() };
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop().ok_or_else(escape)?;
                    continue;
                }
                _ => resolved.push(part),
            }
            let current = resolved.join("/");
            // A link the capsule deleted (a whiteout) is gone for it; the overlay never holds
            // links, and a link in the workspace wins over what the overlay has below it.
            if self.whiteouts().contains(&current) {
                continue;
            }
            let is_link = match self.workspace.symlink_metadata(&current) {
                Ok(meta) => meta.file_type().is_symlink(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(classify(path, "stat", e)),
            };
            if !is_link {
                continue;
            }
            followed += 1;
            if followed > MAX_LINKS {
                return Err(VfsError::TooManyLinks { path: path.to_string() });
            }
            // cap-std refuses to read an absolute target: such a link leads outside.
            let target = self.workspace.read_link(&current).map_err(|_| escape())?;
            resolved.pop();
            for component in target.components().rev() {
                match component {
                    std::path::Component::Normal(name) => pending.push_front(name.to_string_lossy().into_owned()),
                    std::path::Component::ParentDir => pending.push_front("..".to_owned()),
                    std::path::Component::CurDir => {}
                    std::path::Component::RootDir | std::path::Component::Prefix(_) => return Err(escape()),
                }
            }
        }
        VfsPath::parse(&resolved.join("/"))
    }

    fn whiteouts(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.whiteouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_whiteouts(&self, whiteouts: &BTreeSet<String>) -> Result<(), VfsError> {
        let path = self.overlay_dir.join(WHITEOUTS);
        let temp = self.overlay_dir.join(format!("{WHITEOUTS}.tmp"));
        let bytes = serde_json::to_vec(whiteouts).unwrap_or_default();
        let io_err = |action| {
            let path = path.display().to_string();
            move |source| VfsError::Io { action, path, source }
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(io_err("write"))?;
        io::Write::write_all(&mut file, &bytes).map_err(io_err("write"))?;
        fs::rename(&temp, &path).map_err(io_err("replace"))
    }

    /// Which layer holds `path`: the overlay, the workspace, or none (whited out or absent).
    fn layer(&self, path: &VfsPath) -> Result<Option<(&Dir, cap_std::fs::Metadata)>, VfsError> {
        if self.whiteouts().contains(path.as_str()) {
            return Ok(None);
        }
        for dir in [&self.upper, &self.workspace] {
            match dir.metadata(path.fs()) {
                Ok(meta) => return Ok(Some((dir, meta))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify(path, "stat", e)),
            }
        }
        Ok(None)
    }

    /// Reads a file (overlay first).
    pub fn read(&self, path: &VfsPath) -> Result<Vec<u8>, VfsError> {
        let Some((dir, meta)) = self.layer(path)? else { return Err(VfsError::NotFound { path: path.to_string() }) };
        if meta.is_dir() {
            return Err(VfsError::IsADirectory { path: path.to_string() });
        }
        if meta.len() > MAX_FILE {
            return Err(VfsError::TooLarge { path: path.to_string(), size: meta.len(), limit: MAX_FILE });
        }
        dir.read(path.fs()).map_err(|e| classify(path, "read", e))
    }

    /// Writes a file into the overlay.
    pub fn write(&self, path: &VfsPath, contents: &[u8]) -> Result<(), VfsError> {
        self.prepare_write(path, contents.len() as u64)?;
        self.upper.write(path.fs(), contents).map_err(|e| classify(path, "write", e))?;
        let mut whiteouts = self.whiteouts();
        if whiteouts.remove(path.as_str()) {
            self.save_whiteouts(&whiteouts)?;
        }
        Ok(())
    }

    /// Checks that `size` bytes may be written at `path` (never at the root, over a directory
    /// or through a link) and makes its parent directories in the overlay.
    fn prepare_write(&self, path: &VfsPath, size: u64) -> Result<(), VfsError> {
        if path.is_root() {
            return Err(VfsError::IsADirectory { path: path.to_string() });
        }
        if size > MAX_FILE {
            return Err(VfsError::TooLarge { path: path.to_string(), size, limit: MAX_FILE });
        }
        for dir in [&self.workspace, &self.upper] {
            match dir.symlink_metadata(path.fs()) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(VfsError::SymlinkRefused { path: path.to_string() });
                }
                Ok(meta) if meta.is_dir() => return Err(VfsError::IsADirectory { path: path.to_string() }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify(path, "stat", e)),
            }
        }
        if let Some(parent) = path.parent().filter(|p| !p.is_root()) {
            self.check_dir_in_workspace(&parent)?;
            self.upper.create_dir_all(parent.fs()).map_err(|e| classify(&parent, "create", e))?;
        }
        Ok(())
    }

    /// A parent that exists in the workspace must be a real directory reachable inside it
    /// (this is where a symlink planted in the middle of a path is caught).
    fn check_dir_in_workspace(&self, dir: &VfsPath) -> Result<(), VfsError> {
        match self.workspace.metadata(dir.fs()) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(VfsError::NotADirectory { path: dir.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(classify(dir, "stat", e)),
        }
    }

    /// Lists a directory, overlay merged over the workspace, sorted by name.
    pub fn readdir(&self, path: &VfsPath) -> Result<Vec<DirEntry>, VfsError> {
        let mut names = std::collections::BTreeMap::new();
        let mut found = false;
        for dir in [&self.workspace, &self.upper] {
            let entries = match dir.read_dir(path.fs()) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(classify(path, "list", e)),
            };
            found = true;
            for entry in entries {
                let entry = entry.map_err(|e| classify(path, "list", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                names.insert(name, is_dir);
            }
        }
        if !found {
            return Err(VfsError::NotFound { path: path.to_string() });
        }
        let whiteouts = self.whiteouts();
        Ok(names
            .into_iter()
            .filter(|(name, _)| !whiteouts.contains(path.join(name).as_str()))
            .map(|(name, is_dir)| DirEntry { name, is_dir })
            .collect())
    }

    /// Metadata of a path.
    pub fn stat(&self, path: &VfsPath) -> Result<Metadata, VfsError> {
        let Some((_, meta)) = self.layer(path)? else { return Err(VfsError::NotFound { path: path.to_string() }) };
        Ok(Metadata { is_dir: meta.is_dir(), is_file: meta.is_file(), size: meta.len() })
    }

    /// Whether a path exists.
    pub fn exists(&self, path: &VfsPath) -> Result<bool, VfsError> {
        Ok(self.layer(path)?.is_some())
    }

    /// Creates a directory (and its parents) in the overlay.
    pub fn mkdir(&self, path: &VfsPath) -> Result<(), VfsError> {
        self.check_dir_in_workspace(path)?;
        self.upper.create_dir_all(path.fs()).map_err(|e| classify(path, "create", e))
    }

    /// Removes a file: from the overlay, and hidden from the workspace by a whiteout.
    pub fn unlink(&self, path: &VfsPath) -> Result<(), VfsError> {
        let Some((_, meta)) = self.layer(path)? else { return Err(VfsError::NotFound { path: path.to_string() }) };
        if meta.is_dir() {
            return Err(VfsError::IsADirectory { path: path.to_string() });
        }
        match self.upper.remove_file(path.fs()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(classify(path, "remove", e)),
        }
        if self.workspace.metadata(path.fs()).is_ok() {
            let mut whiteouts = self.whiteouts();
            whiteouts.insert(path.as_str().to_owned());
            self.save_whiteouts(&whiteouts)?;
        }
        Ok(())
    }

    /// Pending changes, sorted by path. A file rewritten with its old content is no change.
    pub fn changes(&self) -> Result<Vec<Change>, VfsError> {
        let mut changes = Vec::new();
        let mut stack = vec![VfsPath::parse("").map_err(|_| VfsError::NotFound { path: ".".into() })?];
        while let Some(dir) = stack.pop() {
            let entries = self.upper.read_dir(dir.fs()).map_err(|e| classify(&dir, "list", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| classify(&dir, "list", e))?;
                let path = dir.join(&entry.file_name().to_string_lossy());
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path);
                    continue;
                }
                let new = self.upper.read(path.fs()).map_err(|e| classify(&path, "read", e))?;
                match self.workspace.read(path.fs()) {
                    Ok(old) if old == new => {}
                    Ok(_) => changes.push(Change { path: path.as_str().to_owned(), kind: ChangeKind::Modified }),
                    Err(_) => changes.push(Change { path: path.as_str().to_owned(), kind: ChangeKind::Added }),
                }
            }
        }
        for deleted in self.whiteouts().iter() {
            changes.push(Change { path: deleted.clone(), kind: ChangeKind::Deleted });
        }
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    }

    /// The pending changes as a unified diff.
    pub fn diff(&self) -> Result<String, VfsError> {
        let mut out = String::new();
        for change in self.changes()? {
            let path = VfsPath::parse(&change.path)?;
            let old = match change.kind {
                ChangeKind::Added => Vec::new(),
                _ => self.workspace.read(path.fs()).map_err(|e| classify(&path, "read", e))?,
            };
            let new = match change.kind {
                ChangeKind::Deleted => Vec::new(),
                _ => self.upper.read(path.fs()).map_err(|e| classify(&path, "read", e))?,
            };
            let (old_name, new_name) = match change.kind {
                ChangeKind::Added => ("/dev/null".to_owned(), format!("b/{}", change.path)),
                ChangeKind::Deleted => (format!("a/{}", change.path), "/dev/null".to_owned()),
                ChangeKind::Modified => (format!("a/{}", change.path), format!("b/{}", change.path)),
            };
            match (std::str::from_utf8(&old), std::str::from_utf8(&new)) {
                (Ok(old), Ok(new)) => out.push_str(&unified_diff(old, new, old_name, new_name)),
                _ => out.push_str(&format!("Binary files {old_name} and {new_name} differ\n")),
            }
        }
        Ok(out)
    }

    /// What writing `new` to `path` would change, for a person to approve: a header with
    /// the sizes, then a unified diff against what the path holds now (pending writes
    /// included), at most `max_lines` lines of it (the cut is marked).
    pub fn preview_write(&self, path: &VfsPath, new: &[u8], max_lines: usize) -> String {
        let old = self.read(path).ok();
        let header = match &old {
            None => format!("new file {path}, {} bytes", new.len()),
            Some(old) if old.as_slice() == new => format!("{path} unchanged ({} bytes)", new.len()),
            Some(old) => format!("{path}: {} → {} bytes", old.len(), new.len()),
        };
        let old = old.unwrap_or_default();
        let (Ok(old_text), Ok(new_text)) = (std::str::from_utf8(&old), std::str::from_utf8(new)) else {
            return format!("{header} (binary)");
        };
        let (old_name, new_name) = if old.is_empty() {
            ("/dev/null".to_owned(), format!("b/{path}"))
        } else {
            (format!("a/{path}"), format!("b/{path}"))
        };
        let diff = unified_diff(old_text, new_text, old_name, new_name);
        let lines: Vec<&str> = diff.lines().collect();
        let mut out = header;
        for line in lines.iter().take(max_lines) {
            out.push('\n');
            out.push_str(line);
        }
        if lines.len() > max_lines {
            out.push_str(&format!("\n[… {} more diff lines]", lines.len() - max_lines));
        }
        out
    }

    /// Applies every pending change to the workspace. Each file is replaced atomically (temp
    /// file in its directory, then rename). On failure, what was applied leaves the overlay
    /// and the rest stays pending.
    pub fn commit(&self) -> Result<Vec<Change>, VfsError> {
        let mut applied = Vec::new();
        for change in self.changes()? {
            let path = VfsPath::parse(&change.path)?;
            self.apply(&path, change.kind)?;
            applied.push(change);
        }
        // Identical rewrites and empty directories are not changes; clear them too.
        self.discard()?;
        Ok(applied)
    }

    fn apply(&self, path: &VfsPath, kind: ChangeKind) -> Result<(), VfsError> {
        // The path was real when the capsule wrote it; a link put along it since must not
        // carry the change somewhere else.
        if self.resolve(path)? != *path {
            return Err(VfsError::SymlinkRefused { path: path.to_string() });
        }
        if kind == ChangeKind::Deleted {
            match self.workspace.remove_file(path.fs()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify(path, "remove", e)),
            }
            let mut whiteouts = self.whiteouts();
            whiteouts.remove(path.as_str());
            return self.save_whiteouts(&whiteouts);
        }
        if let Ok(meta) = self.workspace.symlink_metadata(path.fs())
            && meta.file_type().is_symlink()
        {
            return Err(VfsError::SymlinkRefused { path: path.to_string() });
        }
        let contents = self.upper.read(path.fs()).map_err(|e| classify(path, "read", e))?;
        let parent = path.parent().unwrap_or_else(|| path.clone());
        if !parent.is_root() {
            self.workspace.create_dir_all(parent.fs()).map_err(|e| classify(&parent, "create", e))?;
        }
        let name = path.as_str().rsplit('/').next().unwrap_or(path.as_str());
        let temp = parent.join(&format!(".{name}.astrid-commit"));
        self.workspace.write(temp.fs(), &contents).map_err(|e| classify(&temp, "write", e))?;
        self.workspace.rename(temp.fs(), &self.workspace, path.fs()).map_err(|e| classify(path, "replace", e))?;
        self.upper.remove_file(path.fs()).map_err(|e| classify(path, "clear", e))
    }

    /// Drops every pending change; returns how many there were.
    pub fn discard(&self) -> Result<usize, VfsError> {
        let count = self.changes()?.len();
        let upper = self.overlay_dir.join("upper");
        for entry in fs::read_dir(&upper).map_err(|e| VfsError::Io {
            action: "list",
            path: upper.display().to_string(),
            source: e,
        })? {
            let entry =
                entry.map_err(|e| VfsError::Io { action: "list", path: upper.display().to_string(), source: e })?;
            let path = entry.path();
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(|e| VfsError::Io { action: "remove", path: path.display().to_string(), source: e })?;
        }
        let mut whiteouts = self.whiteouts();
        whiteouts.clear();
        self.save_whiteouts(&whiteouts)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests;
