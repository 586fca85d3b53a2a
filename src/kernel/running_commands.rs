//! The commands capsules are running, by the turn they run for, so that the person's "stop"
//! reaches them: a cancelled turn (Ctrl-C in the chat) or a connection that closes kills every
//! command of that turn or connection at once, whatever the capsule that started it does.
//!
//! The kernel knows a command only as a way to kill it (the command sandbox lives outside the
//! kernel); the capsule's host-call side registers it and the registration ends when the
//! command is waited for or dropped.

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::bus::SubscriberId;
use super::cause::Cause;

/// Ends a command and everything it started.
pub type Kill = Box<dyn Fn() + Send + Sync>;

struct Entry {
    id: u64,
    /// The connection and session of the turn it runs for; `None` outside any turn.
    turn: Option<(SubscriberId, String)>,
    /// The request it descends from ([`Cause::turn`]).
    cause: Option<Uuid>,
    kill: Kill,
}

/// How many cancelled requests are remembered, so that a command one of them starts after
/// its cancel (it was being approved or set up) is killed at once.
const REMEMBERED_CANCELS: usize = 256;

#[derive(Default)]
struct Inner {
    next: u64,
    entries: Vec<Entry>,
    /// Requests cancelled lately ([`RunningCommands::cancel_cause`]), newest last.
    cancelled: std::collections::VecDeque<Uuid>,
}

/// The running commands (see the module documentation).
#[derive(Default)]
pub struct RunningCommands {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for RunningCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCommands").field("running", &self.len()).finish()
    }
}

fn locked(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunningCommands {
    /// Registers a command started for `cause`; it stays registered while the returned
    /// guard lives.
    pub fn register(&self, cause: Option<&Cause>, kill: Kill) -> Registration {
        let mut inner = locked(&self.inner);
        inner.next += 1;
        let id = inner.next;
        let cancelled = cause.is_some_and(|c| inner.cancelled.contains(&c.turn));
        if cancelled {
            // Cancelled while it was being set up: it ends as soon as it begins.
            kill();
        }
        inner.entries.push(Entry {
            id,
            turn: cause.map(|c| (c.client, c.session.clone())),
            cause: cause.map(|c| c.turn),
            kill,
        });
        Registration { inner: Arc::clone(&self.inner), id }
    }

    /// Kills the commands of `client`'s turns in `session` (the turn was cancelled); returns
    /// how many.
    pub fn cancel_turn(&self, client: SubscriberId, session: &str) -> usize {
        self.kill_where(|turn| turn.is_some_and(|(c, s)| *c == client && s == session))
    }

    /// Kills the commands the request `turn` ([`Cause::turn`]) started (one tool call was
    /// cancelled); returns how many.
    /// A command the request starts later (it was being approved) is killed as it starts.
    pub fn cancel_cause(&self, turn: Uuid) -> usize {
        let mut inner = locked(&self.inner);
        if inner.cancelled.len() >= REMEMBERED_CANCELS {
            inner.cancelled.pop_front();
        }
        inner.cancelled.push_back(turn);
        let mut killed = 0;
        for entry in inner.entries.iter().filter(|e| e.cause == Some(turn)) {
            (entry.kill)();
            killed += 1;
        }
        killed
    }

    /// Kills the commands of every turn of `client` (its connection closed); returns how many.
    pub fn connection_closed(&self, client: SubscriberId) -> usize {
        self.kill_where(|turn| turn.is_some_and(|(c, _)| *c == client))
    }

    /// How many commands run now.
    pub fn len(&self) -> usize {
        locked(&self.inner).entries.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kill_where(&self, matches: impl Fn(Option<&(SubscriberId, String)>) -> bool) -> usize {
        let inner = locked(&self.inner);
        let mut killed = 0;
        // Killing only signals: the entries go when their owners wait for or drop them.
        for entry in inner.entries.iter().filter(|e| matches(e.turn.as_ref())) {
            (entry.kill)();
            killed += 1;
        }
        killed
    }
}

/// A command's place in [`RunningCommands`]; dropping it unregisters the command.
pub struct Registration {
    inner: Arc<Mutex<Inner>>,
    id: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("id", &self.id).finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        locked(&self.inner).entries.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::kernel::bus::{Bus, SubscriberKind};

    fn counter() -> (Arc<AtomicUsize>, Kill) {
        let count = Arc::new(AtomicUsize::new(0));
        let kill = {
            let count = Arc::clone(&count);
            Box::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
            }) as Kill
        };
        (count, kill)
    }

    #[test]
    fn a_cancelled_turn_kills_its_commands_and_a_closed_connection_all_of_its_own() {
        let bus = Bus::new();
        let (alice, bob) = (
            bus.subscribe_as("alice", SubscriberKind::Client, &["x"]).id(),
            bus.subscribe_as("bob", SubscriberKind::Client, &["x"]).id(),
        );
        let commands = RunningCommands::default();
        let (alice_s1, kill) = counter();
        let _a1 = commands.register(Some(&Cause::new(alice, "s1", None)), kill);
        let (alice_s2, kill) = counter();
        let _a2 = commands.register(Some(&Cause::new(alice, "s2", None)), kill);
        let (bobs, kill) = counter();
        let bobs_cause = Cause::new(bob, "s1", None);
        let _b = commands.register(Some(&bobs_cause), kill);
        let (no_turn, kill) = counter();
        let _k = commands.register(None, kill);
        assert_eq!(commands.len(), 4);

        assert_eq!(commands.cancel_turn(alice, "s1"), 1);
        assert_eq!((alice_s1.load(Ordering::SeqCst), alice_s2.load(Ordering::SeqCst)), (1, 0));
        assert_eq!(commands.connection_closed(alice), 2, "both of alice's turns");
        assert_eq!(alice_s2.load(Ordering::SeqCst), 1);
        assert_eq!((bobs.load(Ordering::SeqCst), no_turn.load(Ordering::SeqCst)), (0, 0), "nobody else's");
        // One request of bob's session, by the kernel's id of it: that one only.
        assert_eq!(commands.cancel_cause(Cause::new(bob, "s1", None).turn), 0, "another request of the same session");
        assert_eq!(commands.cancel_cause(bobs_cause.turn), 1);
        assert_eq!((bobs.load(Ordering::SeqCst), no_turn.load(Ordering::SeqCst)), (1, 0));
        // A command that request starts after its cancel ends as it begins.
        let (late, kill) = counter();
        let _late = commands.register(Some(&bobs_cause), kill);
        assert_eq!(late.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_registration_ends_with_its_guard() {
        let commands = RunningCommands::default();
        let (count, kill) = counter();
        let guard = commands.register(None, kill);
        assert_eq!(commands.len(), 1);
        drop(guard);
        assert!(commands.is_empty());
        assert_eq!(count.load(Ordering::SeqCst), 0, "unregistering does not kill");
    }
}
