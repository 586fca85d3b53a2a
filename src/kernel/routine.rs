//! What a routine event costs in the audit trail: the first one is an entry, the repeats
//! are a count.
//!
//! A routine event is an *allow* that changes nothing by itself and repeats: a capability a
//! capsule instance already used under the same grant on the same resource for the same
//! turn (a streamed answer publishes one `agent.v1.stream.delta` per piece), or a read-only
//! management request (a status bar polling `GetStatus`). The first of each kind is recorded in full;
//! identical ones after it are counted, and the counts are written as one
//! `<action>.repeated` entry per kind (`N more since T`) every [`SUMMARY_INTERVAL`], when
//! the capsule instance ends, and at shutdown. So the trail grows with what happens that
//! is new, not with traffic, and every kind of event stays findable with its first
//! occurrence, its grant and its count.
//!
//! Never routine: a deny, a write (`fs_write`), a program started (`host_process`, `process`),
//! approvals, grants, installs, commits, anything that changes state. Those are recorded
//! one entry each, always.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::audit::Actor;

/// How often the counts of repeated routine events are written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// The most kinds of routine event remembered at once; past it, the counts are written and
/// the memory starts over (first occurrences are recorded again).
const MAX_KINDS: usize = 4096;

/// What is remembered of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Repeats not yet written.
    repeats: Option<Repeats>,
    /// Whether it happened since the last summary. A kind of one turn that did not is
    /// forgotten at the summary: turn ids never come back, so a finished turn's kinds would
    /// otherwise stay until [`MAX_KINDS`] (megabytes after a few hundred turns). A turn that
    /// was only quiet for a whole interval has its next use recorded as a first again.
    active: bool,
}

/// One kind of routine event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kind {
    /// The capsule instance (a capability check), or `None` (management, kernel-side checks).
    pub instance: Option<Uuid>,
    /// The turn (client request) the instance works for, when it works for one: each turn
    /// shows each capability it used at least once.
    pub turn: Option<Uuid>,
    /// The principal acted for.
    pub principal: String,
    /// Who acted, as recorded (management requests of any client share a kind).
    pub actor: Actor,
    /// The action recorded: one of a fixed set, so a kind costs no allocation for it.
    pub action: &'static str,
    /// On what.
    pub resource: String,
    /// The rule (for a capability, the grant's fingerprint and entry; for a management
    /// read, a fixed text, borrowed).
    pub rule: Cow<'static, str>,
}

/// Who uses a capability: a capsule instance, and the turn it works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The instance (its `source_id`).
    pub instance: Uuid,
    /// The turn, when it works for one.
    pub turn: Option<Uuid>,
}

/// The count of repeats of one kind since its last summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    /// How many.
    pub count: u64,
    /// When the first of them happened.
    pub since: DateTime<Utc>,
}

impl Repeats {
    /// The rule of the summary entry: `N more since T: rule`.
    pub fn rule(&self, rule: &str) -> String {
        format!("{} more since {}: {rule}", self.count, self.since.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// The routine events seen, and their repeats not yet written.
#[derive(Debug, Default)]
pub struct Routine {
    seen: Mutex<HashMap<Kind, Entry>>,
}

/// What to do with a routine event.
#[derive(Debug)]
pub enum Seen {
    /// The first of its kind: record it.
    First {
        /// Counts to write first, when the memory was full (it starts over).
        flushed: Vec<(Kind, Repeats)>,
        /// The event, to record (the memory keeps a copy; a repeat, the common case of a
        /// polled `GetStatus`, copies nothing).
        kind: Kind,
    },
    /// Counted.
    Repeat,
}

impl Routine {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Kind, Entry>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes one event of `kind`.
    pub fn note(&self, kind: Kind) -> Seen {
        let mut seen = self.seen();
        if let Some(entry) = seen.get_mut(&kind) {
            entry.active = true;
            match &mut entry.repeats {
                Some(repeats) => repeats.count += 1,
                None => entry.repeats = Some(Repeats { count: 1, since: Utc::now() }),
            }
            return Seen::Repeat;
        }
        let flushed = if seen.len() >= MAX_KINDS {
            let flushed = seen.drain().filter_map(|(kind, entry)| Some((kind, entry.repeats?))).collect();
            seen.shrink_to_fit();
            flushed
        } else {
            Vec::new()
        };
        seen.insert(kind.clone(), Entry { repeats: None, active: true });
        Seen::First { flushed, kind }
    }

    /// Takes the counts not yet written, at a summary. Every kind is still remembered, but
    /// those of a turn that did not happen since the last summary (see [`Entry::active`]).
    pub fn take_repeats(&self) -> Vec<(Kind, Repeats)> {
        let mut seen = self.seen();
        let mut taken: Vec<(Kind, Repeats)> = Vec::new();
        seen.retain(|kind, entry| {
            if let Some(repeats) = entry.repeats.take() {
                taken.push((kind.clone(), repeats));
            }
            let keep = entry.active || kind.turn.is_none();
            entry.active = false;
            keep
        });
        if seen.capacity() > 4 * seen.len().max(64) {
            seen.shrink_to_fit();
        }
        taken.sort_by_key(|(_, repeats)| repeats.since);
        taken
    }

    /// Forgets the kinds of a capsule instance that ended, returning their counts.
    pub fn end_instance(&self, instance: Uuid) -> Vec<(Kind, Repeats)> {
        let mut seen = self.seen();
        let ended: Vec<Kind> = seen.keys().filter(|kind| kind.instance == Some(instance)).cloned().collect();
        let mut taken: Vec<(Kind, Repeats)> = ended
            .into_iter()
            .filter_map(|kind| {
                let repeats = seen.remove(&kind)?.repeats?;
                Some((kind, repeats))
            })
            .collect();
        taken.sort_by_key(|(_, repeats)| repeats.since);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(instance: Option<Uuid>, resource: &str) -> Kind {
        Kind {
            instance,
            turn: None,
            principal: "default".into(),
            actor: Actor::Capsule { name: "orchestrator".into() },
            action: "capability.check",
            resource: resource.into(),
            rule: "grant x".into(),
        }
    }

    #[test]
    fn the_first_is_recorded_repeats_are_counted_and_taken_once() {
        let routine = Routine::default();
        let one = Uuid::new_v4();
        assert!(matches!(routine.note(kind(Some(one), "ipc_publish a")), Seen::First { .. }));
        for _ in 0..1000 {
            assert!(matches!(routine.note(kind(Some(one), "ipc_publish a")), Seen::Repeat));
        }
        assert!(matches!(routine.note(kind(Some(one), "ipc_publish b")), Seen::First { .. }), "another resource");
        let other = Uuid::new_v4();
        assert!(matches!(routine.note(kind(Some(other), "ipc_publish a")), Seen::First { .. }), "another instance");
        let taken = routine.take_repeats();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.count, 1000);
        assert!(routine.take_repeats().is_empty(), "counts are written once");
        assert!(matches!(routine.note(kind(Some(one), "ipc_publish a")), Seen::Repeat), "still known");
        let ended = routine.end_instance(one);
        assert_eq!(ended.len(), 1);
        assert!(matches!(routine.note(kind(Some(one), "ipc_publish a")), Seen::First { .. }), "forgotten");
    }

    #[test]
    fn a_turns_kinds_are_forgotten_once_a_whole_interval_passes_without_them() {
        let routine = Routine::default();
        let of_turn = |turn: Uuid| Kind { turn: Some(turn), ..kind(Some(Uuid::nil()), "ipc_publish a") };
        let (ended, going_on) = (Uuid::new_v4(), Uuid::new_v4());
        routine.note(of_turn(ended));
        routine.note(of_turn(ended));
        routine.note(of_turn(going_on));
        routine.note(kind(None, "management GetStatus"));
        // The first summary writes the count and forgets nothing: all happened since the last.
        let taken = routine.take_repeats();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.count, 1);
        assert_eq!(routine.seen().len(), 3);
        // One turn goes on; by the next summary the other has been quiet for a whole interval.
        assert!(matches!(routine.note(of_turn(going_on)), Seen::Repeat));
        let taken = routine.take_repeats();
        assert_eq!(taken.len(), 1, "the repeat of the turn going on is written");
        assert_eq!(routine.seen().len(), 2, "the ended turn's kind is forgotten");
        assert!(matches!(routine.note(of_turn(going_on)), Seen::Repeat), "the turn going on is remembered");
        // Kinds of no turn (a status bar's polling) are never forgotten this way.
        routine.take_repeats();
        routine.take_repeats();
        assert!(matches!(routine.note(kind(None, "management GetStatus")), Seen::Repeat));
        // A quiet turn that comes back is recorded in full again.
        assert!(matches!(routine.note(of_turn(ended)), Seen::First { .. }));
    }

    #[test]
    fn memory_is_bounded() {
        let routine = Routine::default();
        for i in 0..MAX_KINDS {
            routine.note(kind(None, &format!("fs_read {i}")));
            routine.note(kind(None, &format!("fs_read {i}")));
        }
        match routine.note(kind(None, "fs_read one more")) {
            Seen::First { flushed, .. } => assert_eq!(flushed.len(), MAX_KINDS, "every count is written first"),
            Seen::Repeat => panic!("a new kind"),
        }
        assert_eq!(routine.seen().len(), 1);
    }
}
