//! A child process's tie to the daemon's life: the daemon's own helper processes (capsule
//! hosts, the start of each MCP server) must not outlive it, even when it is SIGKILLed.

/// The environment variable that carries the daemon's pid to a child it starts.
pub const PARENT_ENV: &str = "ASTRID_DAEMON_PID";

/// The signals that ask a process to end: the daemon takes them on a thread of its own and
/// keeps them blocked everywhere else (see `daemon::signals`).
pub fn termination_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in
        [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGHUP]
    {
        set.add(signal);
    }
    set
}

/// Lets the termination signals through again, then asks the OS to kill this process when
/// the daemon that started it dies (`PR_SET_PDEATHSIG`, which survives `exec`), then checks
/// the daemon did not die already. (A child inherits the daemon's blocked signals across
/// `exec`: a capsule host or an MCP server must still stop on SIGTERM.) Without
/// [`PARENT_ENV`] (not started by a daemon) there is nothing to tie to.
pub fn die_with_parent() -> Result<(), LifelineError> {
    let _ = termination_signals().thread_unblock();
    let Some(parent) = std::env::var(PARENT_ENV).ok().and_then(|pid| pid.parse::<i32>().ok()) else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(LifelineError::Tie)?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(LifelineError::ParentGone);
    }
    Ok(())
}

/// Why a child could not tie its life to the daemon's (it must not run untied).
#[derive(Debug, thiserror::Error)]
pub enum LifelineError {
    /// The OS refused the parent-death signal.
    #[error("cannot tie this process to the daemon's life: {0}")]
    Tie(#[source] nix::Error),
    /// The daemon died before the tie was made.
    #[error("the daemon that started this process is gone")]
    ParentGone,
}
