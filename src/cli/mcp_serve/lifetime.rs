//! No orphan: `astrid mcp serve` ends with the program that started it.
//!
//! A client normally closes the server's stdin (the service then ends), but one that is
//! killed may leave the pipe held by a grandchild, and a server that outlived its client
//! would pin the ephemeral daemon forever (the reference found a four-day-old one). So the
//! process also asks the OS for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), checks the
//! parent did not die before that, and watches its parent id besides: the signal follows the
//! *thread* that started the process, and some clients start servers from a thread that ends
//! early, so the watch is what this process relies on, the signal what makes it quick.

use std::time::Duration;

use nix::unistd::{Pid, getppid};

/// How often the parent is looked for.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Why this process cannot tie its life to its parent's.
#[derive(Debug, thiserror::Error)]
pub enum TieError {
    /// The OS refused the parent-death signal.
    #[error("cannot tie astrid mcp serve to its client's life: {0}")]
    Signal(#[source] nix::Error),
    /// The parent was gone before the tie was made.
    #[error("the program that started astrid mcp serve is gone")]
    ParentGone,
}

/// Ties this process to its parent (see the module documentation); the parent's pid.
pub fn tie_to_parent() -> Result<Pid, TieError> {
    let parent = getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(TieError::Signal)?;
    if getppid() != parent {
        return Err(TieError::ParentGone);
    }
    Ok(parent)
}

/// Completes once `parent` is no longer this process's parent (it died: the process was
/// handed to a reaper).
pub async fn parent_gone(parent: Pid) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if getppid() != parent {
            return;
        }
    }
}
