//! Termination signals, taken on an OS thread of their own. The daemon is the only module
//! that handles signals.
//!
//! SIGTERM, SIGINT and SIGHUP all mean "shut down cleanly" (the reference ignored SIGHUP and
//! died without cleanup when its terminal closed). They are blocked in every thread of the
//! daemon (blocked before any thread is started, so all inherit it) and taken by one thread
//! that waits for them (`sigwait`). That thread needs nothing else to run: a stop signal is
//! honoured whatever the tokio workers are doing (every one blocked in a write, say), a
//! second one exits at once (130), and once shutdown has begun, for whatever reason, it ends
//! the process if the shutdown has not finished within [`SHUTDOWN_DEADLINE`] (exit 1).
//! Taking them with `sigwait` also works as a container's PID 1, which the kernel sends no
//! signal it has no handler for.
//!
//! Children the daemon starts (capsule hosts, MCP servers) inherit the blocked mask across
//! `exec`; both are started through this binary, which unblocks the signals first
//! ([`crate::lifeline::die_with_parent`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;

/// How long a shutdown may take before the process ends anyway (exit 1).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);

/// The termination signals, waited for on their own thread.
#[derive(Debug)]
pub struct Signals {
    received: watch::Receiver<Option<&'static str>>,
    shutting_down: Arc<AtomicBool>,
}

impl Signals {
    /// Blocks the termination signals in this thread (so in every thread started after) and
    /// starts the thread that takes them. Call first, before any other thread starts.
    pub fn start() -> io::Result<Self> {
        let set = crate::lifeline::termination_signals();
        set.thread_block().map_err(io::Error::from)?;
        let (sender, received) = watch::channel(None);
        let shutting_down = Arc::new(AtomicBool::new(false));
        let begun = Arc::clone(&shutting_down);
        std::thread::Builder::new().name("astrid-signals".to_owned()).spawn(move || {
            loop {
                let Ok(signal) = set.wait() else { continue };
                let name = match signal {
                    Signal::SIGINT => "SIGINT",
                    Signal::SIGHUP => "SIGHUP",
                    _ => "SIGTERM",
                };
                if begun.swap(true, Ordering::SeqCst) {
                    log::warn!("{name} during shutdown: exiting now");
                    super::logging::flush(Duration::from_millis(200));
                    std::process::exit(130);
                }
                arm_deadline();
                sender.send_replace(Some(name));
            }
        })?;
        Ok(Self { received, shutting_down })
    }

    /// Waits for the first termination signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        loop {
            if let Some(name) = *self.received.borrow_and_update() {
                return name;
            }
            if self.received.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Shutdown has begun (for a reason other than a signal, too): from now on a signal
    /// exits at once, and the shutdown gets [`SHUTDOWN_DEADLINE`].
    pub fn shutting_down(&self) {
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            arm_deadline();
        }
    }
}

/// Ends the process if it is still alive [`SHUTDOWN_DEADLINE`] from now, from a thread of
/// its own so a starved runtime cannot delay it.
fn arm_deadline() {
    let _ = std::thread::Builder::new().name("astrid-shutdown-deadline".to_owned()).spawn(|| {
        std::thread::sleep(SHUTDOWN_DEADLINE);
        log::error!("shutdown did not finish within {SHUTDOWN_DEADLINE:?}; exiting");
        super::logging::flush(Duration::from_millis(200));
        std::process::exit(1);
    });
}
