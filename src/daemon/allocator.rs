//! The C allocator's settings for the daemon: memory a removed capsule freed goes back to the
//! system.
//!
//! glibc's malloc keeps what a thread frees in that thread's arena, and once there are as
//! many arenas as it allows (8 per core) it hands new threads existing arenas round-robin.
//! The daemon has more long-lived threads than that (tokio workers, sled's I/O pool, the
//! log and signal threads), and every capsule start runs on a fresh thread: each install of
//! a big module landed in another arena, and the memory the last removal freed was never
//! reused. Installing and removing an 8 MB module grew the daemon by ~19 MiB a cycle,
//! without bound. glibc also raises its mmap threshold after the first big block is freed,
//! so later module-sized blocks come from arenas too, where they stay resident.
//!
//! Both are settings glibc reads only at process start, from `GLIBC_TUNABLES` (changing
//! them at run time needs `mallopt`, an `unsafe` FFI call this crate does not make). So the
//! daemon role, before it starts any thread, re-executes itself once with
//! [`TUNABLES`] set: the same pid, argv and environment otherwise. With them, five
//! install/remove cycles of that module end within 1 MiB of where the first left off, and
//! the daemon's resident size after boot is lower (43 MiB against 60 MiB in that test).
//!
//! An operator's own `GLIBC_TUNABLES` is left alone, as is a C library that is not glibc
//! (it ignores the variable). Should the re-execution fail, the daemon runs as it is.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The variable glibc reads its tunables from.
const VARIABLE: &str = "GLIBC_TUNABLES";

/// One arena (freed memory is found again by whichever thread allocates next; each thread's
/// tcache still serves most small blocks without the arena's lock), and blocks of 128 KiB or
/// more mapped directly, so freeing one returns it (a fixed threshold, which also turns off
/// glibc's raising of it). Five install/remove cycles beside stress-ng grew the daemon by
/// 2 MiB with one arena, by up to 9 MiB with two and up to 15 MiB with four.
pub const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=131072";

/// Gives a daemon about to be spawned [`TUNABLES`] in its environment, so that it need not
/// re-execute itself (a second process start, about 1.7 ms of its boot); an operator's own
/// `GLIBC_TUNABLES` is passed on instead.
pub fn set_tunables(daemon: &mut Command) {
    if std::env::var_os(VARIABLE).is_none() {
        daemon.env(VARIABLE, TUNABLES);
    }
}

/// Re-executes this process with [`TUNABLES`] unless `GLIBC_TUNABLES` is already set. Call
/// first thing in the daemon role, before any thread exists. Returns only if nothing was
/// done: the variable was set already, or the re-execution failed (the reason is returned
/// for the log, which does not exist yet).
pub fn tune_or_reexec() -> Option<String> {
    if std::env::var_os(VARIABLE).is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| OsString::from("astrid"));
    let error = Command::new("/proc/self/exe").arg0(&argv0).args(args).env(VARIABLE, TUNABLES).exec();
    Some(format!(
        "could not re-execute with {VARIABLE}={TUNABLES} ({error}); memory freed by removed capsules may stay resident"
    ))
}
