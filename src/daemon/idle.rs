//! Ephemeral mode: exit when nobody has been connected for a while.
//!
//! Only authenticated client connections count (see [`crate::kernel::ClientTracker`]); a
//! capsule never keeps the daemon alive. The daemon exits once it has had no client for
//! `idle`, measured from the later of "grace period over" and "last client left". A daemon
//! that no client ever reaches therefore exits after `grace + idle`. Persistent daemons
//! never run this monitor.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The environment variable that overrides the idle part (whole seconds).
pub const IDLE_ENV: &str = "ASTRID_IDLE_TIMEOUT_SECS";
/// Time after readiness during which the daemon never idles out.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Idle time after which an ephemeral daemon exits.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// When an ephemeral daemon gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Never idle out before this much time after readiness.
    pub grace: Duration,
    /// How long without clients before exiting.
    pub idle: Duration,
}

impl IdlePolicy {
    /// The defaults, with the idle part taken from `ASTRID_IDLE_TIMEOUT_SECS` when set.
    pub fn from_env() -> Result<Self, String> {
        let idle = match std::env::var(IDLE_ENV) {
            Err(_) => DEFAULT_IDLE,
            Ok(text) => Duration::from_secs(
                text.trim().parse().map_err(|e| format!("{IDLE_ENV}={text:?} is not a number of seconds: {e}"))?,
            ),
        };
        Ok(Self { grace: DEFAULT_GRACE, idle })
    }
}

/// Returns once the daemon has been idle long enough. `clients` carries the number of
/// connected clients; `start` is when the daemon became ready.
pub async fn wait_until_idle(mut clients: watch::Receiver<u32>, policy: IdlePolicy, start: Instant) {
    let grace_over = start + policy.grace;
    loop {
        if *clients.borrow_and_update() > 0 {
            if clients.changed().await.is_err() {
                return;
            }
            continue;
        }
        let deadline = grace_over.max(Instant::now()) + policy.idle;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            changed = clients.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn exits_after_grace_plus_idle_when_nobody_comes() {
        let (_tx, rx) = watch::channel(0);
        let start = Instant::now();
        let policy = IdlePolicy { grace: Duration::from_secs(5), idle: Duration::from_secs(30) };
        wait_until_idle(rx, policy, start).await;
        assert_eq!(start.elapsed().as_secs(), 35);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_holds_the_daemon_and_its_departure_starts_the_clock() {
        let (tx, rx) = watch::channel(0);
        let start = Instant::now();
        let policy = IdlePolicy { grace: Duration::from_secs(5), idle: Duration::from_secs(1) };
        let monitor = tokio::spawn(wait_until_idle(rx, policy, start));
        tx.send_replace(1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!monitor.is_finished(), "a connected client keeps the daemon alive");
        tx.send_replace(0);
        monitor.await.expect("monitor");
        assert_eq!(start.elapsed().as_secs(), 61);
    }
}
