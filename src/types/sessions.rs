//! The index of conversations: what `astrid sessions list` shows and `astrid chat --resume`
//! picks from.
//!
//! The orchestrator keeps each conversation's history in its KV namespace, and beside it
//! this index (key [`SESSION_INDEX_KEY`]), newest first and bounded to
//! [`MAX_INDEXED_SESSIONS`]: a conversation that falls off the end is deleted with it, so
//! the namespace cannot grow without bound. The CLI reads it with `KvGet` (a read of the
//! capsule's namespace, as `astrid kv get --capsule orchestrator sessions` would), through
//! this type: both ends use it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The capsule whose namespace holds the index: the agent loop.
pub const SESSION_INDEX_CAPSULE: &str = "orchestrator";
/// The key of the index in that namespace.
pub const SESSION_INDEX_KEY: &str = "sessions";
/// The most conversations kept; the least recently active beyond it are forgotten.
pub const MAX_INDEXED_SESSIONS: usize = 40;
/// The longest title kept, in characters.
pub const MAX_TITLE_CHARS: usize = 80;

/// Every conversation the agent keeps, the most recently active first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionIndex {
    /// The conversations.
    pub sessions: Vec<SessionSummary>,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session id (what `astrid chat -s` and `astrid run --session` take).
    pub id: String,
    /// The first line of its first prompt (at most [`MAX_TITLE_CHARS`] characters).
    pub title: String,
    /// When its first turn was answered.
    pub started_at: DateTime<Utc>,
    /// When its last turn was answered.
    pub last_active_at: DateTime<Utc>,
    /// How many turns were answered in it.
    pub turns: u64,
}

impl SessionIndex {
    /// The most recently active conversation.
    pub fn latest(&self) -> Option<&SessionSummary> {
        self.sessions.iter().max_by_key(|s| s.last_active_at)
    }

    /// Records a turn answered in `id` at `unix_ms` (milliseconds since the epoch, as a
    /// capsule's clock gives them), its prompt `prompt`: the conversation moves to the front,
    /// a new one is added, and the ids of conversations pushed out past
    /// [`MAX_INDEXED_SESSIONS`] are returned (their history is to be deleted).
    pub fn record_turn(&mut self, id: &str, prompt: &str, unix_ms: i64) -> Vec<String> {
        let at = DateTime::from_timestamp_millis(unix_ms).unwrap_or_default();
        let summary = match self.sessions.iter().position(|s| s.id == id) {
            Some(index) => {
                let mut summary = self.sessions.remove(index);
                summary.turns += 1;
                summary.last_active_at = at;
                summary
            }
            None => SessionSummary {
                id: id.to_owned(),
                title: title_of(prompt),
                started_at: at,
                last_active_at: at,
                turns: 1,
            },
        };
        self.sessions.insert(0, summary);
        let excess = self.sessions.len().saturating_sub(MAX_INDEXED_SESSIONS);
        self.sessions.drain(self.sessions.len() - excess..).map(|s| s.id).collect()
    }
}

/// The first non-empty line of `prompt`, cut to [`MAX_TITLE_CHARS`] characters (`…` marks a
/// cut).
pub fn title_of(prompt: &str) -> String {
    let line = prompt.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if line.chars().count() <= MAX_TITLE_CHARS {
        return line.to_owned();
    }
    let mut title: String = line.chars().take(MAX_TITLE_CHARS - 1).collect();
    title.push('…');
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn ms(seconds: i64) -> i64 {
        seconds * 1000
    }

    #[test]
    fn a_turn_moves_its_conversation_to_the_front_and_the_oldest_fall_off() {
        let mut index = SessionIndex::default();
        for n in 0..MAX_INDEXED_SESSIONS {
            assert!(index.record_turn(&format!("s{n}"), "hello\nsecond line", ms(n as i64)).is_empty());
        }
        assert_eq!(index.record_turn("s0", "again", ms(1000)), Vec::<String>::new(), "an old one comes back");
        assert_eq!(index.sessions[0].id, "s0");
        assert_eq!((index.sessions[0].turns, index.sessions[0].title.as_str()), (2, "hello"));
        assert_eq!(index.sessions[0].started_at, at(0));
        assert_eq!(index.record_turn("new", "x", ms(1001)), ["s1"], "the least recently active goes");
        assert_eq!(index.sessions.len(), MAX_INDEXED_SESSIONS);
        assert_eq!(index.latest().map(|s| s.id.as_str()), Some("new"));
    }

    #[test]
    fn a_title_is_the_first_line_cut_short() {
        assert_eq!(title_of("\n  fix the build  \nand more"), "fix the build");
        let long = "x".repeat(200);
        let title = title_of(&long);
        assert_eq!(title.chars().count(), MAX_TITLE_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(title_of(""), "");
    }
}
