//! Client leases: who is connected right now, per principal.
//!
//! A lease is taken when a socket client authenticates and returned when its connection
//! ends, by dropping the [`ClientLease`]; no code path can forget to decrement. The total is
//! published on a watch channel so the ephemeral idle monitor reacts to the last disconnect
//! at once instead of polling. Capsules never take leases: only people keep a daemon alive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::types::kernel_api::PrincipalConnections;

#[derive(Debug)]
struct Shared {
    by_principal: Mutex<BTreeMap<String, u32>>,
    total: watch::Sender<u32>,
}

/// Counts authenticated client connections.
#[derive(Debug, Clone)]
pub struct ClientTracker {
    shared: Arc<Shared>,
}

impl Default for ClientTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientTracker {
    /// A tracker with no clients.
    pub fn new() -> Self {
        let (total, _) = watch::channel(0);
        Self { shared: Arc::new(Shared { by_principal: Mutex::new(BTreeMap::new()), total }) }
    }

    fn counts(&self) -> MutexGuard<'_, BTreeMap<String, u32>> {
        self.shared.by_principal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new connection for `principal`; the lease ends when dropped.
    pub fn open(&self, principal: &str) -> ClientLease {
        let mut counts = self.counts();
        *counts.entry(principal.to_owned()).or_insert(0) += 1;
        self.shared.total.send_replace(counts.values().sum());
        ClientLease { tracker: self.clone(), principal: principal.to_owned() }
    }

    /// Connections open right now.
    pub fn total(&self) -> u32 {
        *self.shared.total.borrow()
    }

    /// Non-zero counts per principal, in principal order.
    pub fn by_principal(&self) -> Vec<PrincipalConnections> {
        self.counts()
            .iter()
            .map(|(principal, count)| PrincipalConnections { principal: principal.clone(), count: *count })
            .collect()
    }

    /// A receiver that sees every change of the total.
    pub fn watch(&self) -> watch::Receiver<u32> {
        self.shared.total.subscribe()
    }

    fn close(&self, principal: &str) {
        let mut counts = self.counts();
        if let Some(count) = counts.get_mut(principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(principal);
            }
        }
        self.shared.total.send_replace(counts.values().sum());
    }
}

/// One authenticated connection; dropping it ends the lease.
#[derive(Debug)]
pub struct ClientLease {
    tracker: ClientTracker,
    principal: String,
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        self.tracker.close(&self.principal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_per_principal_and_end_on_drop() {
        let tracker = ClientTracker::new();
        let watch = tracker.watch();
        let a = tracker.open("default");
        let b = tracker.open("default");
        let c = tracker.open("alice");
        assert_eq!(tracker.total(), 3);
        assert_eq!(*watch.borrow(), 3);
        assert_eq!(tracker.by_principal().len(), 2);
        drop(c);
        assert_eq!(tracker.by_principal(), vec![PrincipalConnections { principal: "default".into(), count: 2 }]);
        drop(a);
        drop(b);
        assert_eq!(tracker.total(), 0);
        assert!(tracker.by_principal().is_empty());
    }
}
