//! File host functions: the workspace through the VFS only, each call checked against the
//! capsule's `fs_read` / `fs_write` grant (audited) after the path is validated.
//!
//! Writes land in the copy-on-write overlay; a person reviews them with `astrid workspace
//! diff` and applies them with `commit`.

use serde_json::json;

use super::context::CapsuleContext;
use super::host_call::HostReply;
use crate::kernel::capability::Capability;
use std::sync::Arc;

use crate::vfs::{MAX_FILE, Vfs, VfsError, VfsPath};

/// What a file host function returns on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum FsStatus {
    /// No such file or directory.
    NotFound = -1,
    /// Malformed path (absolute, `..`, NUL, …).
    InvalidInput = -2,
    /// The grant does not cover this path (audited).
    CapabilityDenied = -3,
    /// The path leads outside the workspace (a symlink, for example).
    BoundaryEscape = -4,
    /// A directory where a file was expected, or the reverse.
    WrongKind = -5,
    /// Over 10 MiB.
    TooLarge = -6,
    /// Another I/O failure.
    Io = -7,
}

fn status(e: &VfsError) -> FsStatus {
    match e {
        VfsError::NotFound { .. } => FsStatus::NotFound,
        VfsError::InvalidPath { .. } => FsStatus::InvalidInput,
        VfsError::Escape { .. } | VfsError::SymlinkRefused { .. } | VfsError::TooManyLinks { .. } => {
            FsStatus::BoundaryEscape
        }
        VfsError::IsADirectory { .. } | VfsError::NotADirectory { .. } => FsStatus::WrongKind,
        VfsError::TooLarge { .. } => FsStatus::TooLarge,
        VfsError::Io { .. } => FsStatus::Io,
    }
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

fn reply(status: FsStatus) -> HostReply {
    HostReply::value(status as i32)
}

/// The workspace of the capsule's turn and the path the guest named, resolved to where it
/// really leads (its symlinks followed, see [`crate::vfs::Vfs::resolve`]), once the grant
/// allowed that access to *that* path; else the status. The grant is never checked against
/// the name the guest used: a link inside a granted directory would widen the grant.
fn authorize(context: &CapsuleContext, raw: &[u8], access: Access) -> Result<(Arc<Vfs>, VfsPath), FsStatus> {
    let Some(on_behalf) = &context.kernel else { return Err(FsStatus::CapabilityDenied) };
    let Some(raw) = std::str::from_utf8(raw).ok().filter(|raw| raw.len() <= crate::vfs::MAX_PATH) else {
        return Err(FsStatus::InvalidInput);
    };
    let Ok(named) = VfsPath::parse(raw) else { return Err(FsStatus::InvalidInput) };
    let vfs = context.workspace().ok_or(FsStatus::Io)?;
    let path = vfs.resolve(&named).map_err(|e| status(&e))?;
    let request = match access {
        Access::Read => Capability::FsRead(path.as_str()),
        Access::Write => Capability::FsWrite(path.as_str()),
    };
    if !on_behalf.kernel.check_capability_for(context.audit_scope(), &on_behalf.principal, &context.capsule, &request) {
        return Err(FsStatus::CapabilityDenied);
    }
    Ok((vfs, path))
}

/// Runs `act` on the authorized path; a refusal or a VFS error is the status.
fn with_path(
    context: &CapsuleContext,
    raw: &[u8],
    access: Access,
    act: impl FnOnce(&Vfs, &VfsPath) -> Result<HostReply, VfsError>,
) -> HostReply {
    match authorize(context, raw, access) {
        Ok((vfs, path)) => act(&vfs, &path).unwrap_or_else(|e| reply(status(&e))),
        Err(refused) => reply(refused),
    }
}

/// `fs_read`: the file's bytes (overlay over workspace).
pub(super) fn read(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Read, |vfs, path| vfs.read(path).map(HostReply::bytes))
}

/// `fs_write`: into the overlay; 0 when written.
pub(super) fn write(context: &CapsuleContext, path: &[u8], data: &[u8]) -> HostReply {
    with_path(context, path, Access::Write, |vfs, path| {
        if u64::try_from(data.len()).unwrap_or(u64::MAX) > MAX_FILE {
            return Ok(reply(FsStatus::TooLarge));
        }
        vfs.write(path, data).map(|()| HostReply::value(0))
    })
}

/// `fs_exists`: 1 or 0.
pub(super) fn exists(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Read, |vfs, path| vfs.exists(path).map(|e| HostReply::value(i32::from(e))))
}

/// `fs_stat`: `{is_dir, is_file, size}`.
pub(super) fn stat(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Read, |vfs, path| {
        let meta = vfs.stat(path)?;
        Ok(HostReply::bytes(json!({"is_dir": meta.is_dir, "is_file": meta.is_file, "size": meta.size}).to_string()))
    })
}

/// `fs_readdir`: `[{name, is_dir}]`.
pub(super) fn readdir(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Read, |vfs, path| {
        let entries: Vec<_> = vfs.readdir(path)?.iter().map(|e| json!({"name": e.name, "is_dir": e.is_dir})).collect();
        Ok(HostReply::bytes(serde_json::Value::Array(entries).to_string()))
    })
}

/// `fs_mkdir`: 0 when created.
pub(super) fn mkdir(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Write, |vfs, path| vfs.mkdir(path).map(|()| HostReply::value(0)))
}

/// `fs_unlink`: 0 when removed.
pub(super) fn unlink(context: &CapsuleContext, path: &[u8]) -> HostReply {
    with_path(context, path, Access::Write, |vfs, path| vfs.unlink(path).map(|()| HostReply::value(0)))
}
