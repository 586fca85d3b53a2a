//! The capsule start gate: the daemon is ready before its capsules have started.
//!
//! Compiling and instantiating the default capsule set takes most of a boot (three quarters
//! of it on two cores), and none of it is needed to answer a management request. So boot
//! closes this gate, writes `run/system.ready` once the kernel answers, and starts the
//! capsules in the background. Whatever would reach a capsule waits here until that first
//! start is over: a client's prompt, command or other publication, a tool listing or call,
//! and the management requests that describe or change capsules. Nothing is published to a
//! capsule that has not subscribed yet, and no answer shows a capsule as not running when it
//! is only starting.
//!
//! The gate opens once every capsule has signalled ready or given up, or when the boot's
//! wait for them ends (a slow capsule is logged then, as before readiness was moved), and it
//! never closes again. Later starts (a reload, an install, a restart) are not gated: a prompt
//! waits for a starting agent itself ([`super::prompts`]). A kernel built without a daemon
//! boot (tests, tools) has nothing starting: its gate is open from the start.

use std::sync::Arc;

use tokio::sync::watch;

/// Open, or closed while the boot's capsules start. Cheap to pass when open.
#[derive(Debug)]
pub struct StartGate {
    open: Arc<watch::Sender<bool>>,
}

impl Default for StartGate {
    fn default() -> Self {
        Self { open: Arc::new(watch::channel(true).0) }
    }
}

impl StartGate {
    /// Closes the gate until the returned guard opens it (or is dropped: a start that fails
    /// or panics must not hold every prompt forever).
    pub fn close(&self) -> Opener {
        self.open.send_replace(false);
        Opener { open: Arc::clone(&self.open) }
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Completes once the gate is open (at once when it is).
    pub async fn passed(&self) {
        if self.is_open() {
            return;
        }
        let mut open = self.open.subscribe();
        // The sender lives as long as the kernel, which outlives every waiter.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Opens the gate it closed when dropped.
#[derive(Debug)]
#[must_use = "the gate opens when this is dropped"]
pub struct Opener {
    open: Arc<watch::Sender<bool>>,
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.open.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_open_gate_is_passed_at_once() {
        let gate = StartGate::default();
        assert!(gate.is_open());
        tokio::time::timeout(Duration::from_secs(10), gate.passed()).await.expect("an open gate is passed");
    }

    #[tokio::test]
    async fn a_waiter_passes_only_when_the_start_is_over() {
        let gate = Arc::new(StartGate::default());
        let opener = gate.close();
        assert!(!gate.is_open());
        let passed = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (gate, passed) = (Arc::clone(&gate), Arc::clone(&passed));
            async move {
                gate.passed().await;
                passed.store(true, Ordering::SeqCst);
            }
        });
        // However long the start takes, nobody passes while it lasts.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!passed.load(Ordering::SeqCst), "passed a closed gate");
        drop(opener);
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the waiter passes").expect("no panic");
        assert!(passed.load(Ordering::SeqCst));
        assert!(gate.is_open());
    }
}
