//! Termination signals. The daemon is the only module that installs signal handlers.
//!
//! SIGTERM, SIGINT and SIGHUP all mean "shut down cleanly" (the reference ignored SIGHUP and
//! died without cleanup when its terminal closed). Installing a handler also matters for a
//! container: PID 1 ignores any signal it has no handler for, so `docker stop` would have to
//! wait for its SIGKILL.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The three termination signals, installed once.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers. Must be called inside the tokio runtime.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next termination signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
