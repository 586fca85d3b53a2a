//! How far the capsule host has caught up with the registry: a change is in effect once the
//! host has applied it, not when the registry was written.
//!
//! The kernel decides which capsules should run (a rescan, an install, a removal, a grant
//! approved or revoked, new configuration) and bumps a generation; the capsule host watches
//! it and, on a thread of its own, stops what changed and starts what is new. A management
//! request that changed the registry used to be answered at once, before the host acted. A
//! client that went on (`astrid config model`, then a prompt) could reach the old instance of
//! a capsule the host was about to stop, and its prompt died with that instance. So the
//! router answers such a request once the host reports the generation it changed as applied:
//! the old instances are stopped, the new ones spawned (a prompt then waits for a new one
//! that is still starting, see [`super::prompts`]).
//!
//! A kernel no capsule host follows (tests, tools) has nothing to wait for.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The last registry generation the capsule host applied; `None` while no host follows it.
#[derive(Debug, Default)]
pub struct AppliedChanges {
    applied: Mutex<Option<u64>>,
    caught_up: Condvar,
}

impl AppliedChanges {
    /// A capsule host now follows the registry (before it first applies it): changes from now
    /// on are waited for.
    pub fn follow(&self) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.get_or_insert(0);
    }

    /// The host applied the registry as it was at `generation` (or later).
    pub fn applied(&self, generation: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        *applied = Some(applied.map_or(generation, |done| done.max(generation)));
        self.caught_up.notify_all();
    }

    /// Blocks until `generation` is applied, or nothing follows the registry, or `within`
    /// passed. Whether it was applied (or nothing follows).
    pub fn wait_for(&self, generation: u64, within: Duration) -> bool {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let (applied, _) = self
            .caught_up
            .wait_timeout_while(applied, within, |applied| applied.is_some_and(|done| done < generation))
            .unwrap_or_else(|e| e.into_inner());
        applied.is_none_or(|done| done >= generation)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn with_no_host_following_nothing_is_waited_for() {
        let changes = AppliedChanges::default();
        assert!(changes.wait_for(7, Duration::from_secs(60)));
    }

    #[test]
    fn a_change_is_waited_for_until_the_host_applies_it_or_a_later_one() {
        let changes = Arc::new(AppliedChanges::default());
        changes.follow();
        assert!(!changes.wait_for(1, Duration::from_millis(10)), "nothing applied yet");
        let host = Arc::clone(&changes);
        let applier = std::thread::spawn(move || host.applied(3));
        assert!(changes.wait_for(2, Duration::from_secs(60)), "a later generation covers an earlier one");
        applier.join().expect("applier");
        // An older report never moves it back.
        changes.applied(1);
        assert!(changes.wait_for(3, Duration::ZERO));
        changes.follow();
        assert!(changes.wait_for(3, Duration::ZERO), "following again keeps what was applied");
    }
}
