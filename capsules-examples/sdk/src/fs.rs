//! The workspace, through the kernel's copy-on-write overlay: reads see pending writes, and
//! writes wait for a person to review and commit them (`astrid workspace diff|commit`).
//! Paths are relative to the workspace; absolute paths and `..` are refused.

use serde::Deserialize;

use crate::abi;
use crate::error::{Error, Result};

fn status(code: i32) -> Result<i32> {
    if code >= 0 { Ok(code) } else { Err(Error::fs(i64::from(code))) }
}

fn packed(code: i64) -> Result<Vec<u8>> {
    abi::unpack(code).map_err(Error::fs)
}

/// What [`stat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    /// A directory.
    pub is_dir: bool,
    /// A regular file.
    pub is_file: bool,
    /// Size in bytes.
    pub size: u64,
}

/// One entry of [`read_dir`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// The contents of a file (at most 10 MiB). Needs `fs_read`.
pub fn read(path: &str) -> Result<Vec<u8>> {
    // SAFETY: a valid buffer for the duration of the call.
    packed(unsafe { abi::fs_read(path.as_ptr(), path.len()) })
}

/// Writes a file (into the overlay). Needs `fs_write`.
pub fn write(path: &str, data: &[u8]) -> Result<()> {
    // SAFETY: valid buffers for the duration of the call.
    status(unsafe { abi::fs_write(path.as_ptr(), path.len(), data.as_ptr(), data.len()) }).map(|_| ())
}

/// Whether something exists at `path`. Needs `fs_read`.
pub fn exists(path: &str) -> Result<bool> {
    // SAFETY: a valid buffer for the duration of the call.
    status(unsafe { abi::fs_exists(path.as_ptr(), path.len()) }).map(|n| n == 1)
}

/// Size and kind of `path`. Needs `fs_read`.
pub fn stat(path: &str) -> Result<Metadata> {
    // SAFETY: a valid buffer for the duration of the call.
    let bytes = packed(unsafe { abi::fs_stat(path.as_ptr(), path.len()) })?;
    serde_json::from_slice(&bytes).map_err(|_| Error::InvalidInput)
}

/// The entries of a directory. Needs `fs_read`.
pub fn read_dir(path: &str) -> Result<Vec<DirEntry>> {
    // SAFETY: a valid buffer for the duration of the call.
    let bytes = packed(unsafe { abi::fs_readdir(path.as_ptr(), path.len()) })?;
    serde_json::from_slice(&bytes).map_err(|_| Error::InvalidInput)
}

/// Creates a directory. Needs `fs_write`.
pub fn create_dir(path: &str) -> Result<()> {
    // SAFETY: a valid buffer for the duration of the call.
    status(unsafe { abi::fs_mkdir(path.as_ptr(), path.len()) }).map(|_| ())
}

/// Removes a file. Needs `fs_write`.
pub fn remove(path: &str) -> Result<()> {
    // SAFETY: a valid buffer for the duration of the call.
    status(unsafe { abi::fs_unlink(path.as_ptr(), path.len()) }).map(|_| ())
}
