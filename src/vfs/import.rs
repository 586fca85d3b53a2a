//! Changes made outside the VFS (by a command in the sandbox), brought into the overlay
//! under the same rules as a capsule's writes: regular files only, never written through a
//! link, deletions as whiteouts of files.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::{Change, ChangeKind, MAX_FILE, Vfs, VfsError, VfsPath, classify};

/// One change to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Import {
    /// The file's new content is staged at the same relative path below the staging
    /// directory; it is moved (renamed) into the overlay.
    File(VfsPath),
    /// The path is gone: a file, or a directory with every file below it.
    Deleted(VfsPath),
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Each path whose content changed for the agent, as it was before the import
    /// (`Added`: it did not exist; `Modified`; `Deleted`), sorted.
    pub changes: Vec<Change>,
    /// Changes the overlay refused (a link along the path, a directory replaced by a
    /// file…), with the reason.
    pub refused: Vec<(String, VfsError)>,
}

impl Vfs {
    /// Applies `items` in order: deletions hide files (whiteouts for what the workspace has,
    /// removal from the overlay for what it holds), files move from `staged` into the
    /// overlay by rename (same filesystem: the staging directory is inside the overlay's).
    /// A file whose content is what the agent already sees is no change. One item's refusal
    /// does not stop the others; a failure to save the whiteouts does.
    pub fn import(&self, staged: &Path, items: &[Import]) -> Result<Imported, VfsError> {
        let io_err = |source| VfsError::Io { action: "open", path: staged.display().to_string(), source };
        let staged_dir = match Dir::open_ambient_dir(staged, ambient_authority()) {
            Ok(dir) => Some(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e)),
        };
        let mut out = Imported::default();
        let mut whiteouts_changed = false;
        for item in items {
            let result = match item {
                Import::Deleted(path) => self.import_deletion(path, &mut out.changes, &mut whiteouts_changed),
                Import::File(path) => match &staged_dir {
                    Some(staged) => self.import_file(staged, path, &mut out.changes, &mut whiteouts_changed),
                    None => Err(VfsError::NotFound { path: path.to_string() }),
                },
            };
            if let Err(e) = result {
                let path = match item {
                    Import::File(path) | Import::Deleted(path) => path.to_string(),
                };
                out.refused.push((path, e));
            }
        }
        if whiteouts_changed {
            let whiteouts = self.whiteouts().clone();
            self.save_whiteouts(&whiteouts)?;
        }
        out.changes.sort_by(|a, b| a.path.cmp(&b.path));
        out.changes.dedup_by(|a, b| a.path == b.path);
        Ok(out)
    }

    fn import_file(
        &self,
        staged: &Dir,
        path: &VfsPath,
        changes: &mut Vec<Change>,
        whiteouts_changed: &mut bool,
    ) -> Result<(), VfsError> {
        let meta = staged.symlink_metadata(path.fs()).map_err(|e| classify(path, "stat", e))?;
        if !meta.is_file() {
            return Err(VfsError::SymlinkRefused { path: path.to_string() });
        }
        if meta.len() > MAX_FILE {
            return Err(VfsError::TooLarge { path: path.to_string(), size: meta.len(), limit: MAX_FILE });
        }
        let before = match self.read(path) {
            Ok(old) => Some(old),
            Err(VfsError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(old) = &before
            && old.len() as u64 == meta.len()
            && staged.read(path.fs()).is_ok_and(|new| &new == old)
        {
            return Ok(());
        }
        self.prepare_write(path, meta.len())?;
        staged.rename(path.fs(), &self.upper, path.fs()).map_err(|e| classify(path, "move", e))?;
        if self.whiteouts().remove(path.as_str()) {
            *whiteouts_changed = true;
        }
        let kind = if before.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        changes.push(Change { path: path.as_str().to_owned(), kind });
        Ok(())
    }

    fn import_deletion(
        &self,
        path: &VfsPath,
        changes: &mut Vec<Change>,
        whiteouts_changed: &mut bool,
    ) -> Result<(), VfsError> {
        if path.is_root() {
            return Err(VfsError::InvalidPath { path: ".".into(), reason: "the workspace root cannot be deleted" });
        }
        if self.whiteouts().contains(path.as_str()) {
            return Ok(());
        }
        // Links are never followed here: a link the command removed is the link, not its target.
        let in_upper = self.upper.symlink_metadata(path.fs()).ok();
        let in_workspace = self.workspace.symlink_metadata(path.fs()).ok();
        let is_dir = |m: &Option<cap_std::fs::Metadata>| m.as_ref().is_some_and(|m| m.is_dir());
        if !is_dir(&in_upper) && !is_dir(&in_workspace) {
            if in_upper.is_none() && in_workspace.is_none() {
                return Ok(());
            }
            self.hide(path, in_upper.is_some(), in_workspace.is_some(), whiteouts_changed)?;
            changes.push(Change { path: path.as_str().to_owned(), kind: ChangeKind::Deleted });
            return Ok(());
        }
        // A directory: every file below it, in either layer.
        let mut files = BTreeSet::new();
        for (dir, present) in [(&self.upper, is_dir(&in_upper)), (&self.workspace, is_dir(&in_workspace))] {
            if present {
                collect_files(dir, path, &mut files)?;
            }
        }
        for file in files {
            if self.whiteouts().contains(file.as_str()) {
                continue;
            }
            let in_upper = self.upper.symlink_metadata(file.fs()).is_ok();
            let in_workspace = self.workspace.symlink_metadata(file.fs()).is_ok();
            self.hide(&file, in_upper, in_workspace, whiteouts_changed)?;
            changes.push(Change { path: file.as_str().to_owned(), kind: ChangeKind::Deleted });
        }
        if is_dir(&in_upper) {
            self.upper.remove_dir_all(path.fs()).map_err(|e| classify(path, "remove", e))?;
        }
        Ok(())
    }

    /// Removes `path` from the overlay and whites it out of the workspace.
    fn hide(&self, path: &VfsPath, in_upper: bool, in_workspace: bool, changed: &mut bool) -> Result<(), VfsError> {
        if in_upper {
            match self.upper.remove_file(path.fs()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify(path, "remove", e)),
            }
        }
        if in_workspace && self.whiteouts().insert(path.as_str().to_owned()) {
            *changed = true;
        }
        Ok(())
    }
}

/// Every non-directory below `path` in `dir` (links included, never followed).
fn collect_files(dir: &Dir, path: &VfsPath, files: &mut BTreeSet<VfsPath>) -> Result<(), VfsError> {
    let mut stack = vec![path.clone()];
    while let Some(current) = stack.pop() {
        let entries = dir.read_dir(current.fs()).map_err(|e| classify(&current, "list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| classify(&current, "list", e))?;
            let child = current.join(&entry.file_name().to_string_lossy());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child);
            } else {
                files.insert(child);
            }
        }
    }
    Ok(())
}
