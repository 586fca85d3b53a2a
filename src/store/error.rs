//! Why a KV operation was refused or failed.
//!
//! Messages name the namespace and the key so a log line says whose state and which entry.
//! Keys come from capsules, so they are shown escaped (`{:?}`) and cut to [`SHOWN_KEY_CHARS`]
//! characters: a hostile key cannot forge log lines or make an error message huge.

use std::fmt;
use std::path::PathBuf;

use super::MAX_KEY;

/// How many characters of a key an error keeps.
const SHOWN_KEY_CHARS: usize = 64;

/// Why a KV operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Another process (or an earlier handle in this one) holds the database's lock.
    #[error("another astrid daemon owns {}", home.display())]
    Locked {
        /// The home whose database is locked.
        home: PathBuf,
    },
    /// A part of a namespace is empty, too long or has a character outside its alphabet.
    #[error("invalid {what} {part:?} for a KV namespace: 1-64 characters of {alphabet}")]
    InvalidNamespace {
        /// Which part (`principal` or `capsule`).
        what: &'static str,
        /// The offending part (shortened).
        part: String,
        /// The characters the part may use.
        alphabet: &'static str,
    },
    /// The key is empty or contains NUL.
    #[error("invalid key {key:?} in namespace {namespace}: keys are 1-{MAX_KEY} bytes without NUL")]
    KeyInvalid {
        namespace: String,
        /// The key (shortened).
        key: String,
    },
    /// The key is longer than [`MAX_KEY`].
    #[error("key {key:?} of {len} bytes in namespace {namespace} exceeds {MAX_KEY} bytes")]
    KeyTooLong {
        namespace: String,
        /// The key (shortened).
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The value is larger than [`MAX_VALUE`](super::MAX_VALUE).
    #[error("value of {len} bytes for key {key:?} in namespace {namespace} exceeds {limit} bytes")]
    ValueTooLarge {
        namespace: String,
        /// The key (shortened).
        key: String,
        /// The value's length in bytes.
        len: usize,
        /// The limit ([`MAX_VALUE`](super::MAX_VALUE)).
        limit: usize,
    },
    /// The write would take the namespace over its quota. Writes that do not grow the
    /// namespace are always allowed, so a namespace over a lowered quota can still shrink.
    #[error(
        "writing key {key:?} would take namespace {namespace} over its quota: \
         {used} bytes used, {requested} more requested, quota {quota}"
    )]
    QuotaExceeded {
        namespace: String,
        /// The key (shortened).
        key: String,
        /// Bytes (keys + values) the namespace holds.
        used: u64,
        /// Bytes the write would add.
        requested: u64,
        /// The namespace quota.
        quota: u64,
    },
    /// The engine failed (cannot open the database, I/O error, corruption). The text says
    /// what we were doing, to which namespace and key, and the engine's own description; it
    /// is a string so that no engine type leaks through the API.
    #[error("KV storage error: {0}")]
    Storage(String),
}

impl KvError {
    /// An engine failure while doing `operation` (a verb phrase that `key` completes, when
    /// given) in `namespace`.
    pub(super) fn storage(operation: &str, namespace: &str, key: Option<&str>, message: impl fmt::Display) -> Self {
        match key {
            Some(key) => {
                Self::Storage(format!("failed to {operation} {:?} in namespace {namespace}: {message}", shown(key)))
            }
            None => Self::Storage(format!("failed to {operation} of namespace {namespace}: {message}")),
        }
    }
}

/// At most [`SHOWN_KEY_CHARS`] characters of `text`, with `…` when cut.
pub(super) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_KEY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shortened_on_a_character_boundary() {
        assert_eq!(shown("short"), "short");
        let exact = "é".repeat(SHOWN_KEY_CHARS);
        assert_eq!(shown(&exact), exact);
        assert_eq!(shown(&"é".repeat(300)), format!("{exact}…"));
    }

    #[test]
    fn storage_errors_say_what_failed_where() {
        let err = KvError::storage("get key", "default:capsule:x", Some("a\nb"), "disk on fire");
        assert_eq!(
            err.to_string(),
            "KV storage error: failed to get key \"a\\nb\" in namespace default:capsule:x: disk on fire"
        );
        let err = KvError::storage("read the usage", "system:grants", None, "corrupt");
        assert_eq!(err.to_string(), "KV storage error: failed to read the usage of namespace system:grants: corrupt");
    }
}
