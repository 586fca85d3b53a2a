//! After the command: what it changed, read from the overlay's upper directory and turned
//! into what the VFS overlay can hold (staged regular files and deletions), in the helper.
//!
//! overlayfs records a change as: a regular file (written or created), a char 0/0 device
//! (a whiteout: deleted), a directory (made, or holding changes; `opaque` when it replaced
//! a directory of the lower layers). Rather than reading the opaque xattr, every directory of
//! the upper layer that also exists below is compared with the merged view: a name the lower
//! layers have and the merged view lacks was deleted, whatever recorded it. Symbolic links,
//! FIFOs, sockets and devices the command made are refused (the VFS holds regular files
//! only), as are files above the VFS's size limit.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::protocol::{Refused, StagedItem};
use crate::vfs::MAX_FILE;

/// Most changes one command may report, and most bytes of their paths; past them the rest
/// are left out and the report says so (it must fit a frame).
pub const MAX_ITEMS: usize = 100_000;
const MAX_PATH_BYTES: usize = 32 << 20;

/// What a path is in one layer, links not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        len: u64,
    },
    /// A link, a device, a FIFO…
    Other,
    /// overlayfs's deletion mark.
    Whiteout,
}

fn kind_of(meta: &fs::Metadata) -> Kind {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File { len: meta.len() }
    } else if file_type.is_char_device() && meta.rdev() == 0 {
        Kind::Whiteout
    } else {
        Kind::Other
    }
}

/// `relative` inside `base`, each directory along it a real directory (as overlayfs looks
/// paths up in a layer: a link along the way ends that layer's part).
fn lookup(base: &Path, relative: &Path) -> Option<Kind> {
    let mut path = base.to_path_buf();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        path.push(component);
        let kind = kind_of(&fs::symlink_metadata(&path).ok()?);
        if components.peek().is_none() {
            return Some(kind);
        }
        if kind != Kind::Dir {
            return None;
        }
    }
    Some(Kind::Dir)
}

/// The command's view before it ran: VFS upper, then the deletions layer, then the workspace.
struct Lower<'a> {
    vfs_upper: &'a Path,
    deletions: &'a Path,
    workspace: &'a Path,
}

impl Lower<'_> {
    fn kind(&self, relative: &Path) -> Option<Kind> {
        if let Some(kind) = lookup(self.vfs_upper, relative) {
            return Some(kind);
        }
        if lookup(self.deletions, relative) == Some(Kind::Whiteout) {
            return None;
        }
        lookup(self.workspace, relative)
    }

    fn children(&self, relative: &Path) -> BTreeSet<OsString> {
        let mut names = BTreeSet::new();
        for base in [self.vfs_upper, self.workspace] {
            if lookup(base, relative) != Some(Kind::Dir) {
                continue;
            }
            if let Ok(entries) = fs::read_dir(base.join(relative)) {
                names.extend(entries.flatten().map(|e| e.file_name()));
            }
        }
        names.retain(|name| lookup(self.deletions, &relative.join(name)) != Some(Kind::Whiteout));
        names
    }
}

/// What the command changed, staged for the daemon.
#[derive(Debug, Default)]
pub struct Collected {
    /// Deletions first, then files.
    pub items: Vec<StagedItem>,
    pub refused: Vec<Refused>,
    pub problem: Option<String>,
}

/// Where the pieces are.
#[derive(Debug)]
pub struct Layers<'a> {
    pub upper: &'a Path,
    pub merged: &'a Path,
    pub vfs_upper: &'a Path,
    pub deletions: &'a Path,
    pub workspace: &'a Path,
    /// Where changed files are copied (`<staging>/files`).
    pub staged: &'a Path,
}

/// What the walk found so far, with the budget it counts.
#[derive(Default)]
struct Found {
    deleted: Vec<StagedItem>,
    files: Vec<StagedItem>,
    refused: Vec<Refused>,
    bytes: usize,
}

impl Found {
    fn deleted(&mut self, path: String) {
        self.bytes += path.len();
        self.deleted.push(StagedItem::Deleted { path });
    }

    fn file(&mut self, path: String) {
        self.bytes += path.len();
        self.files.push(StagedItem::File { path });
    }

    fn refused(&mut self, refused: Refused) {
        self.bytes += refused.path.len() + refused.reason.len();
        self.refused.push(refused);
    }

    fn full(&self) -> bool {
        self.deleted.len() + self.files.len() + self.refused.len() > MAX_ITEMS || self.bytes > MAX_PATH_BYTES
    }
}

/// Walks the upper layer; stages changed files under `layers.staged`.
pub fn collect(layers: &Layers<'_>) -> Collected {
    let lower = Lower { vfs_upper: layers.vfs_upper, deletions: layers.deletions, workspace: layers.workspace };
    let mut found = Found::default();
    let mut problem = None;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        if found.full() {
            problem = Some(format!("the command changed more than {MAX_ITEMS} paths; the rest were left out"));
            break;
        }
        if dir.as_os_str().is_empty() || lower.kind(&dir) == Some(Kind::Dir) {
            for name in lower.children(&dir) {
                let path = dir.join(&name);
                if fs::symlink_metadata(layers.merged.join(&path)).is_err() {
                    match text(&path) {
                        Some(path) => found.deleted(path),
                        None => found.refused(not_utf8(&path)),
                    }
                }
            }
        }
        let entries = match fs::read_dir(layers.upper.join(&dir)) {
            Ok(entries) => entries,
            Err(e) => {
                problem = Some(format!("cannot list the changes in {}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = dir.join(entry.file_name());
            let Ok(meta) = entry.metadata() else { continue };
            let Some(name) = text(&path) else {
                if kind_of(&meta) != Kind::Whiteout {
                    found.refused(not_utf8(&path));
                }
                continue;
            };
            let before = lower.kind(&path);
            match kind_of(&meta) {
                Kind::Whiteout => {}
                Kind::Dir => {
                    if before.is_some_and(|k| k != Kind::Dir) {
                        found.deleted(name);
                    }
                    stack.push(path);
                }
                Kind::File { len } => {
                    if before == Some(Kind::Dir) {
                        found.deleted(name.clone());
                    }
                    if len > MAX_FILE {
                        found.refused(Refused {
                            path: name,
                            reason: format!("{len} bytes, above the workspace overlay's limit of {MAX_FILE}"),
                        });
                        continue;
                    }
                    if let Some(Kind::File { len: old_len }) = before
                        && old_len == len
                        && same_content(&layers.upper.join(&path), &lower_file(&lower, &path))
                    {
                        continue;
                    }
                    match stage(&layers.upper.join(&path), &layers.staged.join(&path)) {
                        Ok(()) => found.file(name),
                        Err(e) => found.refused(Refused { path: name, reason: format!("cannot be staged: {e}") }),
                    }
                }
                Kind::Other => {
                    let what = if meta.file_type().is_symlink() {
                        "a symbolic link"
                    } else if meta.file_type().is_fifo() {
                        "a FIFO"
                    } else if meta.file_type().is_socket() {
                        "a socket"
                    } else {
                        "a device"
                    };
                    found.refused(Refused {
                        path: name,
                        reason: format!("{what}: the workspace overlay holds regular files only"),
                    });
                }
            }
        }
    }
    found.deleted.sort_by(|a, b| item_path(a).cmp(item_path(b)));
    found.files.sort_by(|a, b| item_path(a).cmp(item_path(b)));
    let mut items = found.deleted;
    items.extend(found.files);
    Collected { items, refused: found.refused, problem }
}

fn item_path(item: &StagedItem) -> &str {
    match item {
        StagedItem::File { path } | StagedItem::Deleted { path } => path,
    }
}

fn text(path: &Path) -> Option<String> {
    path.to_str().map(str::to_owned)
}

fn not_utf8(path: &Path) -> Refused {
    Refused { path: path.to_string_lossy().into_owned(), reason: "its name is not UTF-8".to_owned() }
}

/// The lower file the command saw at `path` (the first layer that has it).
fn lower_file(lower: &Lower<'_>, path: &Path) -> PathBuf {
    if lookup(lower.vfs_upper, path).is_some() { lower.vfs_upper.join(path) } else { lower.workspace.join(path) }
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), fs::File::open(b)) else { return false };
    let mut left = [0u8; 64 * 1024];
    let mut right = [0u8; 64 * 1024];
    loop {
        let Ok(n) = read_full(&mut a, &mut left) else { return false };
        let Ok(m) = read_full(&mut b, &mut right) else { return false };
        if n != m || left[..n] != right[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(file: &mut fs::File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn stage(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_do_not_follow_links_along_the_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path();
        fs::create_dir_all(base.join("real/sub")).expect("dirs");
        fs::write(base.join("real/sub/f"), b"x").expect("file");
        std::os::unix::fs::symlink("real", base.join("link")).expect("link");
        assert_eq!(lookup(base, Path::new("real/sub/f")), Some(Kind::File { len: 1 }));
        assert_eq!(lookup(base, Path::new("link")), Some(Kind::Other));
        assert_eq!(lookup(base, Path::new("link/sub/f")), None);
        assert_eq!(lookup(base, Path::new("missing")), None);
        assert_eq!(lookup(base, Path::new("")), Some(Kind::Dir));
    }

    #[test]
    fn identical_content_is_no_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        fs::write(&a, &big).expect("a");
        fs::write(&b, &big).expect("b");
        let mut other = big.clone();
        other[150_000] ^= 1;
        fs::write(&c, &other).expect("c");
        assert!(same_content(&a, &b));
        assert!(!same_content(&a, &c));
        assert!(!same_content(&a, &tmp.path().join("missing")));
    }
}
