//! The audit trail: append-only, hash-chained, signed, one log per principal, kept outside
//! the KV store so its integrity does not depend on a database engine and the binary alone
//! can verify it (`astrid audit verify`).
//!
//! Files, in `home/<principal>/.local/audit/`: `audit.jsonl` (one signed entry per line,
//! each naming the BLAKE3 of its predecessor) and `audit.head` (the last seq and hash,
//! signed), signed with `keys/runtime.key`. A flipped byte, a deleted or reordered entry
//! and a cut tail are all detected, and the first bad entry is named.

mod entry;
mod key;
mod log;
mod verify;

use std::path::{Path, PathBuf};

pub use entry::{Actor, AuditEntry, Decision, NewEntry};
pub use key::RuntimeKey;
pub use log::{AuditLog, AuditTrail, audit_dir, principals_with_logs};
pub use verify::{ChainStatus, VerifyReport, tail, verify_log};

/// The log file in a principal's audit directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// The signed head beside it.
pub const HEAD_FILE: &str = "audit.head";

/// Why the audit trail could not be read or written (tampering is not an error: see
/// [`ChainStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime key is missing, malformed or unusable.
    #[error("{0}")]
    Key(String),
    /// An entry could not be encoded.
    #[error("cannot encode an audit entry: {0}")]
    Format(String),
}

impl AuditError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use uuid::Uuid;

    fn entry(i: usize) -> NewEntry {
        NewEntry {
            session: Uuid::nil(),
            principal: "default".into(),
            actor: Actor::Capsule { name: "fs".into() },
            action: format!("capability.check.{i}"),
            resource: format!("fs_read src/{i}.rs"),
            decision: if i.is_multiple_of(2) { Decision::Allow } else { Decision::Deny },
            rule: "default deny".into(),
        }
    }

    fn setup(n: usize) -> (tempfile::TempDir, std::path::PathBuf, ed25519_dalek::VerifyingKey) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let key = Arc::new(RuntimeKey::load_or_create(&tmp.path().join("runtime.key")).expect("key"));
        let dir = tmp.path().join("audit");
        let log = AuditLog::open(&dir, Arc::clone(&key)).expect("open");
        for i in 0..n {
            log.append(entry(i)).expect("append");
        }
        (tmp, dir, key.verifying_key())
    }

    fn status(dir: &Path, key: &ed25519_dalek::VerifyingKey) -> ChainStatus {
        verify_log(dir, key).expect("verify").status
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE)).expect("read").lines().map(str::to_owned).collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(LOG_FILE), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    }

    #[test]
    fn an_untouched_log_is_intact_and_reopening_continues_the_chain() {
        let (tmp, dir, key) = setup(20);
        assert_eq!(verify_log(&dir, &key).expect("verify"), VerifyReport { entries: 20, status: ChainStatus::Intact });
        let signer = Arc::new(RuntimeKey::load(&tmp.path().join("runtime.key")).expect("key"));
        let log = AuditLog::open(&dir, signer).expect("reopen");
        assert_eq!(log.append(entry(20)).expect("append").seq, 21);
        assert_eq!(verify_log(&dir, &key).expect("verify").entries, 21);
        assert_eq!(status(&dir, &key), ChainStatus::Intact);
    }

    #[test]
    fn a_flipped_byte_names_its_entry() {
        let (_tmp, dir, key) = setup(20);
        let original = lines(&dir);
        for needle in ["capability.check.9", "\"hash\":\"", "\"sig\":\"", "\"seq\":10"] {
            let mut tampered = original.clone();
            let line = &mut tampered[9];
            let at = line.find(needle).expect("needle") + needle.len();
            let mut bytes = line.clone().into_bytes();
            bytes[at - 1] = if bytes[at - 1] == b'a' { b'b' } else { b'a' };
            *line = String::from_utf8_lossy(&bytes).into_owned();
            write_lines(&dir, &tampered);
            match status(&dir, &key) {
                ChainStatus::Tampered { first_bad_seq, .. } => assert_eq!(first_bad_seq, 10, "{needle}"),
                ChainStatus::Intact => panic!("flip after {needle:?} not detected"),
            }
        }
    }

    #[test]
    fn a_deleted_entry_and_a_cut_tail_are_detected() {
        let (_tmp, dir, key) = setup(20);
        let original = lines(&dir);
        let mut deleted = original.clone();
        deleted.remove(4);
        write_lines(&dir, &deleted);
        assert!(matches!(status(&dir, &key), ChainStatus::Tampered { first_bad_seq: 5, .. }));
        write_lines(&dir, &original[..17]);
        match status(&dir, &key) {
            ChainStatus::Tampered { first_bad_seq, reason } => {
                assert_eq!(first_bad_seq, 18);
                assert!(reason.contains("truncated"), "{reason}");
            }
            ChainStatus::Intact => panic!("truncation not detected"),
        }
        std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head");
        write_lines(&dir, &original);
        assert!(matches!(status(&dir, &key), ChainStatus::Tampered { .. }), "a missing head is tampering");
    }

    #[test]
    fn another_key_cannot_vouch_for_the_log() {
        let (tmp, dir, _key) = setup(3);
        let other = RuntimeKey::load_or_create(&tmp.path().join("other.key")).expect("key");
        assert!(matches!(status(&dir, &other.verifying_key()), ChainStatus::Tampered { first_bad_seq: 1, .. }));
    }

    #[test]
    fn a_head_trailing_a_killed_batch_is_not_tampering() {
        let (_tmp, dir, key) = setup(5);
        let head = std::fs::read(dir.join(HEAD_FILE)).expect("head");
        // Entries 6..=9 appended by a batch whose head write never happened.
        let signer = Arc::new(RuntimeKey::load(&dir.parent().expect("parent").join("runtime.key")).expect("key"));
        let log = AuditLog::open(&dir, signer).expect("reopen");
        for i in 5..9 {
            log.append(entry(i)).expect("append");
        }
        std::fs::write(dir.join(HEAD_FILE), head).expect("restore old head");
        assert_eq!(status(&dir, &key), ChainStatus::Intact);
    }

    #[test]
    fn a_trail_finds_a_tail_cut_while_it_was_down_and_records_it_in_the_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = crate::home::AstridHome::at(tmp.path());
        let trail = AuditTrail::open(&home).expect("trail");
        for i in 0..10 {
            trail.record(entry(i)).expect("record");
        }
        trail.sync().expect("sync");
        drop(trail);
        let dir = audit_dir(&home, "default");
        let kept = lines(&dir)[..6].to_vec();
        write_lines(&dir, &kept);

        let trail = AuditTrail::open(&home).expect("reopen");
        trail.record(entry(10)).expect("record");
        let verdicts = trail.verify_all().expect("verdicts");
        match &verdicts[0].1.status {
            ChainStatus::Tampered { first_bad_seq, reason } => {
                assert_eq!(*first_bad_seq, 7);
                assert!(reason.contains("truncated"), "{reason}");
            }
            ChainStatus::Intact => panic!("a cut tail went unnoticed once new entries were written"),
        }
        drop(trail);
        let entries = tail(&dir, 10).expect("tail");
        let broken = entries.iter().find(|e| e.action == "audit.chain_broken").expect("finding recorded");
        assert_eq!(broken.seq, 7);
        assert!(broken.resource.starts_with("entry 7: log truncated"), "{}", broken.resource);
    }

    #[test]
    fn verifying_while_the_daemon_appends_never_reports_tampering() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = crate::home::AstridHome::at(tmp.path());
        let trail = Arc::new(AuditTrail::open(&home).expect("trail"));
        trail.record(entry(0)).expect("record");
        trail.sync().expect("sync");
        let key = RuntimeKey::load(&home.root().join("keys").join("runtime.key")).expect("key").verifying_key();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (trail, stop) = (Arc::clone(&trail), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    trail.record(entry(i)).expect("record");
                    i += 1;
                    if i % 8 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        };
        let dir = audit_dir(&home, "default");
        for _ in 0..20 {
            assert_eq!(status(&dir, &key), ChainStatus::Intact);
            assert!(trail.verify_all().expect("verdicts").iter().all(|(_, r)| r.status == ChainStatus::Intact));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer");
        trail.sync().expect("sync");
        assert_eq!(status(&dir, &key), ChainStatus::Intact);
    }
}
