//! What the capsule host and a running instance share: readiness and the stop request.
//!
//! wasmi cannot be interrupted from outside, so stopping is cooperative on the host's side:
//! a call that is running guest code sees the request at its next fuel slice, and a call
//! waiting in a host function (`ipc_recv`) wakes at once, because its wait races
//! [`Lifecycle::stopped`].

use std::sync::Mutex;

use tokio::sync::watch;

type ReadyHook = Box<dyn FnOnce() + Send>;

/// Readiness and stop flags of one capsule instance.
pub struct Lifecycle {
    /// A watch rather than a flag, so that the host can wait for readiness without polling.
    ready: watch::Sender<bool>,
    on_ready: Mutex<Vec<ReadyHook>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("ready", &self.is_ready()).field("stopping", &self.is_stopping()).finish()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { ready: watch::channel(false).0, on_ready: Mutex::new(Vec::new()), stop: watch::channel(false).0 }
    }
}

impl Lifecycle {
    /// Runs `hook` once, when the guest signals readiness (at once if it already has). Hooks
    /// not run yet are dropped by [`Lifecycle::reset_ready`].
    pub fn on_ready(&self, hook: impl FnOnce() + Send + 'static) {
        let mut slot = self.on_ready.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_ready() {
            drop(slot);
            hook();
        } else {
            slot.push(Box::new(hook));
        }
    }

    /// The guest called `signal_ready`. The hooks run first and readiness is announced after,
    /// so whoever waits for it (the boot's start gate) sees what they did: the capsule is
    /// recorded as running. (They run under the hooks' lock, so a hook never registers one.)
    pub fn signal_ready(&self) {
        let mut slot = self.on_ready.lock().unwrap_or_else(|e| e.into_inner());
        for hook in std::mem::take(&mut *slot) {
            hook();
        }
        self.ready.send_replace(true);
    }

    /// Forgets readiness (a restarted instance must signal again).
    pub fn reset_ready(&self) {
        let mut slot = self.on_ready.lock().unwrap_or_else(|e| e.into_inner());
        slot.clear();
        self.ready.send_replace(false);
    }

    /// Whether the guest has signalled readiness.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Completes once the guest has signalled readiness (at once if it has). Needs no runtime.
    pub fn ready(&self) -> impl Future<Output = ()> + use<> {
        let mut receiver = self.ready.subscribe();
        async move {
            let _ = receiver.wait_for(|ready| *ready).await;
        }
    }

    /// Asks the instance to stop (idempotent).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Completes once a stop is asked for (at once if it already was). Needs no runtime.
    pub fn stopped(&self) -> impl Future<Output = ()> + use<> {
        let mut receiver = self.stop.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::wait::block_on_timeout;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_stop_wakes_a_waiter_and_is_seen_by_later_ones() {
        let lifecycle = Arc::new(Lifecycle::default());
        let stopper = Arc::clone(&lifecycle);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            stopper.stop();
        });
        // Some: the stop woke it (the timeout is only a hang guard).
        assert_eq!(block_on_timeout(lifecycle.stopped(), Duration::from_secs(60)), Some(()));
        thread.join().expect("stopper");
        assert!(lifecycle.is_stopping());
        assert_eq!(block_on_timeout(lifecycle.stopped(), Duration::ZERO), Some(()));
        assert!(!lifecycle.is_ready());
        lifecycle.signal_ready();
        assert!(lifecycle.is_ready());
    }

    #[test]
    fn readiness_wakes_a_waiter_and_a_reset_makes_the_next_one_wait() {
        let lifecycle = Arc::new(Lifecycle::default());
        let guest = Arc::clone(&lifecycle);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            guest.signal_ready();
        });
        // Some: the signal woke it (the timeout is only a hang guard).
        assert_eq!(block_on_timeout(lifecycle.ready(), Duration::from_secs(60)), Some(()));
        thread.join().expect("guest");
        lifecycle.reset_ready();
        assert_eq!(block_on_timeout(lifecycle.ready(), Duration::ZERO), None, "a restarted instance must signal again");
    }
}
