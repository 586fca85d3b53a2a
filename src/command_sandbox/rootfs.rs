//! The command's filesystem, built by the helper in its own mount namespace (as root of its
//! user namespace) on a size-limited tmpfs.
//!
//! ```text
//! <staging>/scratch/            tmpfs, size = the scratch limit: everything the command can write
//!   root/                       the new root (bind-mounted on itself, read-only at the end)
//!     usr bin sbin lib* etc     read-only binds of the host's (links on merged-/usr systems
//!                               recreated as links); /etc with every file or directory that is
//!                               not world-readable, and the known secrets, masked by empty ones
//!     dev/                      null zero full random urandom tty (binds), shm, fd links
//!     proc/                     mounted by init, in the command's pid namespace
//!     tmp/ var/tmp/             private (scratch)
//!     $HOME                     private, empty (scratch), with the operator's read-only paths
//!     <workspace>               overlayfs: lower = VFS upper : deletions : workspace,
//!                               upper/work below (scratch)
//!     (the Astrid home, ~/.ssh…)  masked wherever the workspace or a read-only path shows them
//!   upper/ work/                the overlay's writable layer: the command's changes
//!   deletions/                  a whiteout (char 0/0) per VFS pending deletion
//!   empty/ empty-file           what masks are made of
//! ```
//!
//! The overlay is mounted from paths of the helper's view, before init pivots into `root/`:
//! inside, the lower directories have no path at all, so nothing can write the real
//! workspace or the VFS overlay around the review.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, mknod};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::protocol::HelperRequest;

/// System directories every command sees read-only (those that exist).
const SYSTEM_DIRS: [&str; 8] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"];
/// Device nodes bound from the host.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Files and directories of `/etc` masked even when world-readable (a root daemon's helper
/// can read everything; the command must not see secrets by their usual names).
const ETC_SECRETS: [&str; 14] = [
    "shadow",
    "gshadow",
    "shadow-",
    "gshadow-",
    "passwd-",
    "group-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "ssl/private",
    "krb5.keytab",
    "security/opasswd",
    "wireguard",
    "NetworkManager/system-connections",
];
/// Most entries of `/etc` looked at for masking (a bound on the walk, far above any system's).
const ETC_WALK_LIMIT: usize = 100_000;

/// Where the pieces are, in the helper's view.
#[derive(Debug)]
pub struct Scratch {
    /// The new root.
    pub root: PathBuf,
    /// The overlay's upper directory: what the command changed.
    pub upper: PathBuf,
    /// The deletions layer.
    pub deletions: PathBuf,
    /// The VFS overlay's pending files as the overlay's top lower layer (a copy when the
    /// original lies inside the workspace).
    pub vfs_upper: PathBuf,
    /// The workspace as the command sees it (the overlay mount), in the helper's view.
    pub merged: PathBuf,
    /// The command's working directory, inside the new root.
    pub cwd: PathBuf,
}

/// Why the filesystem could not be built (a sentence for the operator).
pub type SetupError = String;

fn failed(action: &str, path: &Path) -> impl FnOnce(nix::Error) -> SetupError {
    let text = format!("cannot {action} {}", path.display());
    move |e| format!("{text}: {e}")
}

fn io_failed(action: &str, path: &Path) -> impl FnOnce(io::Error) -> SetupError {
    let text = format!("cannot {action} {}", path.display());
    move |e| format!("{text}: {e}")
}

/// `path` below `root`, for an absolute path of the host (`/usr` → `root/usr`).
pub fn inside(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for component in path.components() {
        if let Component::Normal(name) = component {
            out.push(name);
        }
    }
    out
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SetupError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_failed("create", path)(e)),
    }
    // The umask must not decide a sticky /tmp's mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_failed("set the mode of", path))
}

fn mkdir_all(path: &Path) -> Result<(), SetupError> {
    fs::DirBuilder::new().recursive(true).mode(0o755).create(path).map_err(io_failed("create", path))
}

/// Binds `source` on `target` read-only. A bind inherits the source mount's flags and, in a
/// user namespace, may not drop the ones the outer namespace locked (`nodev`, `noexec`,
/// `nosuid`, atime), so the remount repeats them.
fn bind_readonly(source: &Path, target: &Path) -> Result<(), SetupError> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(failed("bind", target))?;
    let locked = statvfs(target).map(|s| s.flags()).unwrap_or(FsFlags::empty());
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    for (has, flag) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if locked.contains(has) {
            flags |= flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(failed("make read-only", target))
}

fn bind(source: &Path, target: &Path) -> Result<(), SetupError> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(failed("bind", target))
}

/// Builds everything under `<staging>/scratch`. Runs in the helper after `unshare`, as root
/// of its user namespace, with its mounts private.
pub fn build(request: &HelperRequest) -> Result<Scratch, SetupError> {
    // overlayfs refuses layers inside one another (ELOOP). When the Astrid home, and so the
    // staging directory and the VFS overlay, lie inside the workspace, the scratch tmpfs is
    // mounted on /dev/shm instead (in this mount namespace only) and the VFS overlay's
    // pending files are copied into it.
    let nested = request.staging.starts_with(&request.workspace);
    let scratch = if nested {
        let shm = PathBuf::from("/dev/shm");
        if !shm.is_dir() || request.workspace.starts_with(&shm) {
            return Err(
                "the Astrid home lies inside the workspace, and /dev/shm cannot hold the scratch space".to_owned()
            );
        }
        shm
    } else {
        let scratch = request.staging.join("scratch");
        mkdir(&scratch, 0o700)?;
        scratch
    };
    let options = format!("size={},mode=0700", request.limits.scratch);
    mount(Some("tmpfs"), &scratch, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options.as_str()))
        .map_err(failed("mount the scratch tmpfs on", &scratch))?;
    let root = scratch.join("root");
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    let deletions = scratch.join("deletions");
    let empty = scratch.join("empty");
    let empty_file = scratch.join("empty-file");
    for (dir, mode) in [
        (&root, 0o755),
        (&upper, 0o755),
        (&work, 0o700),
        (&deletions, 0o755),
        (&empty, 0o555),
        (&scratch.join("tmp"), 0o1777),
        (&scratch.join("var-tmp"), 0o1777),
        (&scratch.join("shm"), 0o1777),
        (&scratch.join("home"), 0o700),
    ] {
        mkdir(dir, mode)?;
    }
    fs::write(&empty_file, b"").map_err(io_failed("create", &empty_file))?;
    fs::set_permissions(&empty_file, fs::Permissions::from_mode(0o444)).map_err(io_failed("chmod", &empty_file))?;
    // pivot_root needs the new root to be a mount point.
    bind(&root, &root)?;

    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let Ok(meta) = fs::symlink_metadata(&host) else { continue };
        let target = root.join(name);
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&host).map_err(io_failed("read", &host))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_failed("create", &target))?;
        } else if meta.is_dir() {
            mkdir(&target, 0o755)?;
            bind_readonly(&host, &target)?;
        }
    }
    mask_etc(&root.join("etc"), &empty, &empty_file)?;

    let dev = root.join("dev");
    mkdir(&dev, 0o755)?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if fs::metadata(&host).is_err() {
            continue;
        }
        let target = dev.join(name);
        fs::write(&target, b"").map_err(io_failed("create", &target))?;
        bind(&host, &target)?;
    }
    mkdir(&dev.join("shm"), 0o1777)?;
    bind(&scratch.join("shm"), &dev.join("shm"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(io_failed("create", &dev.join(name)))?;
    }
    mkdir(&root.join("proc"), 0o555)?;
    mkdir(&root.join("tmp"), 0o1777)?;
    bind(&scratch.join("tmp"), &root.join("tmp"))?;
    mkdir_all(&root.join("var/tmp"))?;
    bind(&scratch.join("var-tmp"), &root.join("var/tmp"))?;

    if let Some(home) = &request.home {
        let target = inside(&root, home);
        mkdir_all(&target)?;
        bind(&scratch.join("home"), &target)?;
    }
    for path in &request.read_only_paths {
        let Ok(meta) = fs::metadata(path) else { continue };
        let target = inside(&root, path);
        if meta.is_dir() {
            mkdir_all(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir_all(parent)?;
            }
            fs::write(&target, b"").map_err(io_failed("create", &target))?;
        }
        bind_readonly(path, &target)?;
    }

    let vfs_upper = if nested {
        let copy = scratch.join("vfs-upper");
        copy_tree(&request.vfs_upper, &copy)?;
        copy
    } else {
        request.vfs_upper.clone()
    };
    build_deletions(&deletions, &request.whiteouts)?;
    let merged = inside(&root, &request.workspace);
    mkdir_all(&merged)?;
    let layers = [&vfs_upper, &deletions, &request.workspace, &upper, &work];
    if let Some(bad) = layers.iter().find(|p| p.to_str().is_none_or(|s| s.contains([',', ':', '\\']))) {
        return Err(format!(
            "{} has a character overlayfs cannot take in a layer path (`,`, `:` or `\\`) or is not UTF-8",
            bad.display()
        ));
    }
    let options = format!(
        "userxattr,lowerdir={}:{}:{},upperdir={},workdir={}",
        vfs_upper.display(),
        deletions.display(),
        request.workspace.display(),
        upper.display(),
        work.display()
    );
    mount(Some("overlay"), &merged, Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options.as_str()))
        .map_err(failed("mount the workspace overlay on", &merged))?;
    // A secret the workspace or a read-only path brought in is masked where the command
    // would find it: at its real path (the host resolves the links along it).
    for hidden in &request.hidden {
        let Ok(real) = fs::canonicalize(hidden) else { continue };
        if real == request.workspace || real == Path::new("/") {
            continue;
        }
        let target = inside(&root, &real);
        let Ok(meta) = fs::symlink_metadata(&target) else { continue };
        bind_readonly(if meta.is_dir() { &empty } else { &empty_file }, &target)?;
    }

    let cwd = request.workspace.join(&request.cwd);
    let seen = inside(&root, &cwd);
    if !fs::symlink_metadata(&seen).is_ok_and(|m| m.is_dir()) {
        return Err(format!("the working directory {} is not a directory of the workspace", request.cwd));
    }
    mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(failed("make read-only", &root))?;
    Ok(Scratch { root, upper, deletions, vfs_upper, merged, cwd })
}

/// Masks, in the read-only `/etc` bind at `etc`, every entry of the host's `/etc` that its
/// owner did not make world-readable (shadow files, host keys, sudoers, private keys…) and
/// the known secret names, with an empty directory or file.
fn mask_etc(etc: &Path, empty: &Path, empty_file: &Path) -> Result<(), SetupError> {
    if !etc.is_dir() {
        return Ok(());
    }
    let host = Path::new("/etc");
    let mut masks: Vec<(PathBuf, bool)> = Vec::new();
    for name in ETC_SECRETS {
        if let Ok(meta) = fs::symlink_metadata(host.join(name))
            && !meta.file_type().is_symlink()
        {
            masks.push((PathBuf::from(name), meta.is_dir()));
        }
    }
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0;
    while let Some(relative) = stack.pop() {
        let Ok(entries) = fs::read_dir(host.join(&relative)) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > ETC_WALK_LIMIT {
                return Err("/etc has too many entries to check for secrets".to_owned());
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = relative.join(entry.file_name());
            let mode = meta.permissions().mode();
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                if mode & 0o005 != 0o005 {
                    masks.push((path, true));
                } else {
                    stack.push(path);
                }
            } else if meta.is_file() && mode & 0o004 == 0 {
                masks.push((path, false));
            }
        }
    }
    // Parents before children, and nothing below a masked directory.
    masks.sort();
    masks.dedup();
    let mut masked_dirs: Vec<PathBuf> = Vec::new();
    for (path, is_dir) in masks {
        if masked_dirs.iter().any(|dir| path.starts_with(dir)) {
            continue;
        }
        bind_readonly(if is_dir { empty } else { empty_file }, &etc.join(&path))?;
        if is_dir {
            masked_dirs.push(path);
        }
    }
    Ok(())
}

/// Copies the directories and regular files of `from` (all the VFS overlay holds) to `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), SetupError> {
    mkdir(to, 0o755)?;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let entries = fs::read_dir(from.join(&relative)).map_err(io_failed("list", &from.join(&relative)))?;
        for entry in entries.flatten() {
            let path = relative.join(entry.file_name());
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                mkdir(&to.join(&path), 0o755)?;
                stack.push(path);
            } else if file_type.is_file() {
                fs::copy(from.join(&path), to.join(&path)).map_err(io_failed("copy", &from.join(&path)))?;
            }
        }
    }
    Ok(())
}

/// A char 0/0 device per pending VFS deletion: overlayfs's own whiteout, hiding the
/// workspace's file below it.
fn build_deletions(deletions: &Path, whiteouts: &[String]) -> Result<(), SetupError> {
    for path in whiteouts {
        let relative = Path::new(path);
        if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            continue;
        }
        let target = deletions.join(relative);
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        match mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(failed("create the whiteout", &target)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_land_below_the_root() {
        assert_eq!(inside(Path::new("/s/root"), Path::new("/usr/lib")), PathBuf::from("/s/root/usr/lib"));
        assert_eq!(inside(Path::new("/s/root"), Path::new("/")), PathBuf::from("/s/root"));
        assert_eq!(inside(Path::new("/s/root"), Path::new("/a/../b")), PathBuf::from("/s/root/a/b"));
    }
}
