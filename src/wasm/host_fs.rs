//! File host functions: the workspace through the VFS only, each call checked against the
//! capsule's `fs_read` / `fs_write` grant (audited) after the path is validated.
//!
//! Writes land in the copy-on-write overlay; a person reviews them with `astrid workspace
//! diff` and applies them with `commit`.

use serde_json::json;
use wasmi::{Caller, Linker};

use super::sandbox::{HOST_MODULE, HostState, KernelAccess, read_guest, write_guest};
use crate::kernel::capability::Capability;
use crate::vfs::{MAX_FILE, VfsError, VfsPath};

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
        VfsError::Escape { .. } | VfsError::SymlinkRefused { .. } => FsStatus::BoundaryEscape,
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

/// The kernel and the validated path, once the grant allowed the access; else the status.
fn authorize(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    access: Access,
) -> Result<Result<(KernelAccess, VfsPath), FsStatus>, wasmi::Error> {
    let Some(kernel) = caller.data().kernel.clone() else { return Ok(Err(FsStatus::CapabilityDenied)) };
    let Ok(raw) = String::from_utf8(read_guest(caller, ptr, len, crate::vfs::MAX_PATH)?) else {
        return Ok(Err(FsStatus::InvalidInput));
    };
    let Ok(path) = VfsPath::parse(&raw) else { return Ok(Err(FsStatus::InvalidInput)) };
    let request = match access {
        Access::Read => Capability::FsRead(path.as_str()),
        Access::Write => Capability::FsWrite(path.as_str()),
    };
    if !kernel.kernel.check_capability(&kernel.principal, caller.data().capsule(), &request) {
        return Ok(Err(FsStatus::CapabilityDenied));
    }
    Ok(Ok((kernel, path)))
}

/// Adds the file functions to the linker.
pub(super) fn link(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap(
        HOST_MODULE,
        "fs_read",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Read)?, i64);
            match access.kernel.vfs().read(&path) {
                Ok(bytes) => write_guest(&mut caller, &bytes),
                Err(e) => Ok(status(&e) as i64),
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_write",
        |mut caller: Caller<'_, HostState>,
         ptr: i32,
         len: i32,
         data_ptr: i32,
         data_len: i32|
         -> Result<i32, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Write)?, i32);
            let limit = usize::try_from(MAX_FILE).unwrap_or(usize::MAX);
            if usize::try_from(data_len).is_ok_and(|n| n > limit) {
                return Ok(FsStatus::TooLarge as i32);
            }
            let data = read_guest(&mut caller, data_ptr, data_len, limit)?;
            Ok(access.kernel.vfs().write(&path, &data).map_or_else(|e| status(&e) as i32, |()| 0))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_exists",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Read)?, i32);
            Ok(access.kernel.vfs().exists(&path).map_or_else(|e| status(&e) as i32, i32::from))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_stat",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Read)?, i64);
            match access.kernel.vfs().stat(&path) {
                Ok(meta) => {
                    let json = json!({"is_dir": meta.is_dir, "is_file": meta.is_file, "size": meta.size});
                    write_guest(&mut caller, json.to_string().as_bytes())
                }
                Err(e) => Ok(status(&e) as i64),
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_readdir",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i64, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Read)?, i64);
            match access.kernel.vfs().readdir(&path) {
                Ok(entries) => {
                    let json: Vec<_> = entries.iter().map(|e| json!({"name": e.name, "is_dir": e.is_dir})).collect();
                    write_guest(&mut caller, serde_json::Value::Array(json).to_string().as_bytes())
                }
                Err(e) => Ok(status(&e) as i64),
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_mkdir",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Write)?, i32);
            Ok(access.kernel.vfs().mkdir(&path).map_or_else(|e| status(&e) as i32, |()| 0))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        "fs_unlink",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32, wasmi::Error> {
            let (access, path) = or_status!(authorize(&mut caller, ptr, len, Access::Write)?, i32);
            Ok(access.kernel.vfs().unlink(&path).map_or_else(|e| status(&e) as i32, |()| 0))
        },
    )?;
    Ok(())
}
