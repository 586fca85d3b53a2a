//! The KV store: every piece of state the kernel and capsules keep between restarts, in one
//! database `var/state.db`, opened once per daemon.
//!
//! What this module owns and promises:
//! - **Isolation.** Data lives in [`Namespace`]s that only the host builds, from validated
//!   parts, so a capsule can never name another capsule's (or the kernel's) namespace.
//! - **Limits.** Keys are 1–[`MAX_KEY`] bytes without NUL, values at most
//!   [`MAX_VALUE`], and each namespace holds at most
//!   [`KvConfig::namespace_quota_bytes`] of keys plus values. Each refusal is a typed
//!   [`KvError`] that names the namespace and the key; hostile input never panics.
//! - **Exact accounting.** A namespace's usage is updated in the same transaction as the
//!   write that changes it, so it is exact under concurrency and after a crash.
//! - **Durability on request.** Writes are buffered; [`KvStore::flush`] blocks until they are
//!   on disk (enough to survive a SIGKILL of the daemon, not a power cut: sled 0.34 uses
//!   `sync_file_range` on Linux). Callers flush at durability points and before acknowledging
//!   a write that must survive a crash.
//! - **A narrow surface.** No public item mentions a sled type, so replacing the engine
//!   touches `kv.rs` alone.
//!
//! On-disk layout (sled 0.34.7):
//! - tree `kv`: `namespace ‖ 0x00 ‖ key → value`. Neither namespaces nor keys contain NUL, so
//!   the scan of `namespace ‖ 0x00 ‖ prefix` never reaches another namespace, even one whose
//!   name extends this one (`a:capsule:x` vs `a:capsule:xy`);
//! - tree `usage`: `namespace → u64 big-endian` bytes of keys plus values (the namespace
//!   itself is not counted); absent means 0.

mod error;
mod kv;
mod namespace;

#[cfg(test)]
mod tests;

pub use error::KvError;
pub use kv::{KvConfig, KvStore};
pub use namespace::Namespace;

/// Longest key, in bytes: keys are names, not payloads.
pub const MAX_KEY: usize = 256;

/// Largest value, in bytes: bigger blobs (capsule wasm, files) belong in files, because sled
/// keeps hot values in its page cache and amplifies space.
pub const MAX_VALUE: usize = 1024 * 1024;
