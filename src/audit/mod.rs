//! The audit trail: append-only, hash-chained, signed, one log per principal, kept outside
//! the KV store so its integrity does not depend on a database engine and the binary alone
//! can verify it (`astrid audit verify`).
//!
//! Files, in `home/<principal>/.local/audit/`: `audit.jsonl` (one signed entry per line,
//! each naming the BLAKE3 of its predecessor) and `audit.head` (the last seq and hash,
//! signed), signed with `keys/runtime.key`. A flipped byte, a deleted or reordered entry,
//! a cut tail, a deleted log or head are all detected, and every bad entry is named. A
//! break a daemon saw is recorded in the log and stays a finding until the operator
//! acknowledges it (itself an entry).

mod entry;
mod key;
mod log;
mod verify;

use std::path::{Path, PathBuf};

pub use entry::{Actor, AuditEntry, Decision, NewEntry};
pub use key::RuntimeKey;
pub use log::{
    Acknowledged, AuditLog, AuditTrail, Failure, LogHealth, MAX_FIELD, TrailHealth, audit_dir, key_path,
    principals_with_logs,
};
pub use verify::{ACKNOWLEDGE, Break, CHAIN_BROKEN, ChainStatus, DELETED, VerifyReport, tail, verify_log};

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
    /// An entry could not be encoded, or the writer is gone.
    #[error("cannot encode an audit entry: {0}")]
    Format(String),
    /// Something other than a regular file is where a log or head should be.
    #[error("{} is {kind}, not a log file", path.display())]
    NotAFile {
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file the writer holds open was removed or replaced: what it writes is lost.
    #[error("{} was removed or replaced while the daemon was writing it", path.display())]
    Moved { path: PathBuf },
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
    use std::time::Duration;
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

    /// A home whose trail a daemon filled with `n` entries and closed: the home, and its
    /// default principal's audit directory.
    fn closed_trail(n: usize) -> (tempfile::TempDir, crate::home::AstridHome, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = crate::home::AstridHome::at(tmp.path());
        let trail = AuditTrail::open(&home).expect("trail");
        for i in 0..n {
            trail.record(entry(i)).expect("record");
        }
        trail.sync().expect("sync");
        drop(trail);
        let dir = audit_dir(&home, "default");
        (tmp, home, dir)
    }

    fn report(dir: &Path, key: &ed25519_dalek::VerifyingKey) -> VerifyReport {
        verify_log(dir, key, false).expect("verify")
    }

    fn status(dir: &Path, key: &ed25519_dalek::VerifyingKey) -> ChainStatus {
        report(dir, key).status
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE)).expect("read").lines().map(str::to_owned).collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(LOG_FILE), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    }

    fn tampered_at(status: &ChainStatus) -> Option<(u64, &str)> {
        match status {
            ChainStatus::Tampered { first_bad_seq, reason } => Some((*first_bad_seq, reason)),
            ChainStatus::Intact => None,
        }
    }

    /// Waits (polling) until `condition` holds; false after 10 s.
    /// Opening a trail checks the end of the default log at once, but verifies the whole
    /// chain only when asked (the daemon asks once it is ready: the signatures of a long
    /// chain are CPU its boot needs); until then, and while it runs, it shows as verifying.
    #[test]
    fn the_chain_is_verified_when_asked_not_when_the_trail_opens() {
        let (_tmp, home, _dir) = closed_trail(20);
        let trail = AuditTrail::open(&home).expect("reopen");
        // Nothing was started: this holds however long we look.
        std::thread::sleep(Duration::from_millis(50));
        let health = trail.health();
        let default = health.logs.get("default").expect("the default log is open");
        assert!(default.verifying && default.report.is_none(), "{health:?}");
        assert!(health.verifying());
        trail.start_verification().expect("start");
        let verified = eventually(|| {
            let health = trail.health();
            !health.verifying() && health.logs.get("default").is_some_and(|log| log.report.is_some())
        });
        assert!(verified, "{:?}", trail.health());
        let report = trail.health().logs.get("default").and_then(|log| log.report.clone()).expect("report");
        assert!(matches!(report.status, ChainStatus::Intact) && report.entries == 20, "{report:?}");
    }

    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        condition()
    }

    #[test]
    fn an_untouched_log_is_intact_and_reopening_continues_the_chain() {
        let (tmp, dir, key) = setup(20);
        assert_eq!(report(&dir, &key), VerifyReport::intact(20));
        let signer = Arc::new(RuntimeKey::load(&tmp.path().join("runtime.key")).expect("key"));
        let log = AuditLog::open(&dir, signer).expect("reopen");
        assert_eq!(log.append(entry(20)).expect("append").seq, 21);
        assert_eq!(report(&dir, &key).entries, 21);
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
            let found = report(&dir, &key);
            assert_eq!(tampered_at(&found.status).map(|t| t.0), Some(10), "{needle}");
            assert_eq!(found.breaks.len(), 1, "one flipped byte is one break, and the chain goes on: {found:?}");
        }
    }

    #[test]
    fn a_deleted_entry_and_a_cut_tail_are_detected() {
        let (_tmp, dir, key) = setup(20);
        let original = lines(&dir);
        let mut deleted = original.clone();
        deleted.remove(4);
        write_lines(&dir, &deleted);
        assert_eq!(tampered_at(&status(&dir, &key)).map(|t| t.0), Some(5));
        write_lines(&dir, &original[..17]);
        let cut = status(&dir, &key);
        let (seq, reason) = tampered_at(&cut).expect("truncation detected");
        assert_eq!(seq, 18);
        assert!(reason.contains("truncated"), "{reason}");
        std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head");
        write_lines(&dir, &original);
        assert_eq!(tampered_at(&status(&dir, &key)).map(|t| t.1), Some("head missing"), "a missing head is tampering");
    }

    #[test]
    fn every_break_is_found_not_only_the_first() {
        let (_tmp, dir, key) = setup(20);
        let mut tampered = lines(&dir);
        tampered[2] = tampered[2].replacen("fs_read", "fs_reed", 1);
        tampered.remove(11);
        write_lines(&dir, &tampered);
        let found = report(&dir, &key);
        let at: Vec<u64> = found.breaks.iter().map(|b| b.first_bad_seq).collect();
        assert_eq!(at, [3, 12], "{found:?}");
        assert_eq!(tampered_at(&found.status).map(|t| t.0), Some(3));
    }

    #[test]
    fn a_deleted_or_emptied_log_or_head_is_a_break() {
        let (_tmp, dir, key) = setup(5);
        let original = lines(&dir);
        std::fs::remove_file(dir.join(LOG_FILE)).expect("rm log");
        let missing = status(&dir, &key);
        assert_eq!(tampered_at(&missing), Some((1, "log missing: the head names entry 5")), "{missing:?}");
        std::fs::write(dir.join(LOG_FILE), "").expect("empty log");
        let emptied = status(&dir, &key);
        assert_eq!(tampered_at(&emptied), Some((1, "log truncated: head names entry 5, log ends at 0")));
        write_lines(&dir, &original);
        std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head");
        assert_eq!(tampered_at(&status(&dir, &key)).map(|t| t.1), Some("head missing"));
        std::fs::remove_file(dir.join(LOG_FILE)).expect("rm log");
        assert_eq!(status(&dir, &key), ChainStatus::Intact, "nothing at all, and nothing expected");
        let expected = verify_log(&dir, &key, true).expect("verify").status;
        assert_eq!(tampered_at(&expected), Some((1, DELETED)), "nothing at all, though the key says there was");
        std::fs::create_dir(dir.join(LOG_FILE)).expect("a directory instead");
        assert!(verify_log(&dir, &key, false).is_err(), "a log that cannot be read is an error, not a verdict");
    }

    #[test]
    fn another_key_cannot_vouch_for_the_log() {
        let (tmp, dir, _key) = setup(3);
        let other = RuntimeKey::load_or_create(&tmp.path().join("other.key")).expect("key");
        assert_eq!(tampered_at(&status(&dir, &other.verifying_key())).map(|t| t.0), Some(1));
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
    fn a_line_cut_by_a_crash_is_one_break_and_the_writer_goes_on_after_it() {
        let (tmp, dir, key) = setup(5);
        let mut text = std::fs::read(dir.join(LOG_FILE)).expect("log");
        let cut = lines(&dir)[4].clone();
        text.extend_from_slice(&cut.as_bytes()[..cut.len() / 2]);
        std::fs::write(dir.join(LOG_FILE), &text).expect("half a line, no newline");
        let signer = Arc::new(RuntimeKey::load(&tmp.path().join("runtime.key")).expect("key"));
        let log = AuditLog::open(&dir, signer).expect("reopen");
        assert_eq!(log.append(entry(5)).expect("append").seq, 7, "the cut line took a place in the chain");
        log.append(entry(6)).expect("append");
        let found = report(&dir, &key);
        assert_eq!(found.breaks.len(), 1, "{found:?}");
        assert_eq!(found.breaks[0].first_bad_seq, 6);
        assert!(found.breaks[0].reason.starts_with("unreadable entry"), "{found:?}");
    }

    #[test]
    fn overlong_lines_are_skipped_without_being_kept_and_read_backwards_too() {
        let (_tmp, dir, key) = setup(3);
        let mut text = std::fs::read(dir.join(LOG_FILE)).expect("log");
        text.extend(std::iter::repeat_n(b'x', verify::MAX_LINE * 3));
        text.push(b'\n');
        std::fs::write(dir.join(LOG_FILE), &text).expect("write");
        let found = report(&dir, &key);
        assert_eq!(found.breaks[0].first_bad_seq, 4);
        assert!(found.breaks[0].reason.contains("longer than"), "{found:?}");
        let shown = tail(&dir, 10).expect("tail");
        assert_eq!(shown.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(tail(&dir, 2).expect("tail").iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_cancelled_verification_says_so() {
        let (_tmp, dir, key) = setup(3);
        let cancel = std::sync::atomic::AtomicBool::new(true);
        let snapshot = verify::Snapshot { head: None, log: Some(None), expect_entries: false };
        assert!(verify::verify_snapshot(&dir, &key, &snapshot, Some(&cancel)).is_err());
    }

    #[test]
    fn a_tail_cut_while_the_daemon_was_down_stays_a_finding_until_acknowledged() {
        let (_tmp, home, dir) = closed_trail(10);
        let kept = lines(&dir)[..6].to_vec();
        write_lines(&dir, &kept);

        let trail = AuditTrail::open(&home).expect("reopen");
        trail.record(entry(10)).expect("record");
        let verdicts = trail.verify_all().expect("verdicts");
        let (seq, reason) = tampered_at(&verdicts[0].1.status).expect("a cut tail went unnoticed");
        assert_eq!(seq, 7);
        assert!(reason.contains("truncated"), "{reason}");
        trail.sync().expect("sync");
        let key = RuntimeKey::load(&key_path(&home)).expect("key").verifying_key();
        // New entries and a new head were written after the cut: the files alone look whole,
        // the record of the break does not let it heal.
        let found = report(&dir, &key);
        assert_eq!(tampered_at(&found.status).map(|t| t.0), Some(7), "{found:?}");
        assert!(found.breaks[0].recorded_at.is_some(), "{found:?}");
        let recorded = tail(&dir, 20).expect("tail");
        let broken = recorded.iter().find(|e| e.action == CHAIN_BROKEN).expect("finding recorded");
        assert!(broken.resource.starts_with("entry 7: log truncated"), "{}", broken.resource);
        drop(trail);

        // Another daemon sees it again, and does not record it twice.
        let trail = AuditTrail::open(&home).expect("reopen");
        let verdicts = trail.verify_all().expect("verdicts");
        assert_eq!(tampered_at(&verdicts[0].1.status).map(|t| t.0), Some(7));
        let operator = Actor::Client { id: "client#1".into() };
        let acknowledged = trail.acknowledge(Uuid::nil(), operator, "restored from backup").expect("acknowledge");
        assert_eq!(acknowledged.len(), 1);
        assert_eq!(acknowledged[0].1.first_bad_seq, 7);
        trail.sync().expect("sync");
        let after = report(&dir, &key);
        assert_eq!(after.status, ChainStatus::Intact, "{after:?}");
        assert!(after.breaks.iter().all(Break::acknowledged), "{after:?}");
        let all = tail(&dir, 100).expect("tail");
        assert_eq!(all.iter().filter(|e| e.action == CHAIN_BROKEN).count(), 1);
        let ack = all.iter().find(|e| e.action == ACKNOWLEDGE).expect("acknowledgement recorded");
        assert!(ack.resource.contains("entry 7: log truncated"), "{}", ack.resource);
        assert_eq!(ack.rule, "restored from backup");
        assert!(trail.health().logs.values().all(|log| log.unacknowledged.is_empty()));
    }

    #[test]
    fn a_cut_tail_or_a_lost_head_is_recorded_before_anything_is_appended() {
        for damage in ["cut", "no head", "garbled head"] {
            let (_tmp, home, dir) = closed_trail(10);
            match damage {
                "cut" => write_lines(&dir, &lines(&dir)[..9]),
                "no head" => std::fs::remove_file(dir.join(HEAD_FILE)).expect("rm head"),
                _ => std::fs::write(dir.join(HEAD_FILE), "{ garbage").expect("garble head"),
            }
            // A daemon that starts and stops at once, its full verification cancelled.
            let trail = AuditTrail::open(&home).expect("reopen");
            trail.cancel_verification();
            trail.record(entry(10)).expect("record");
            trail.sync().expect("sync");
            drop(trail);
            let key = RuntimeKey::load(&key_path(&home)).expect("key").verifying_key();
            let found = report(&dir, &key);
            assert!(matches!(found.status, ChainStatus::Tampered { .. }), "{damage} healed: {found:?}");
            assert!(found.unacknowledged().all(|b| b.recorded_at.is_some()), "{damage}: {found:?}");
            // The next daemon's full verification recognises the record as its own finding.
            let trail = AuditTrail::open(&home).expect("reopen");
            let verdicts = trail.verify_all().expect("verdicts");
            assert!(matches!(verdicts[0].1.status, ChainStatus::Tampered { .. }), "{damage}");
            trail.sync().expect("sync");
            let records = tail(&dir, 100).expect("tail").iter().filter(|e| e.action == CHAIN_BROKEN).count();
            assert_eq!(records, 1, "{damage}: recorded once");
        }
    }

    #[test]
    fn a_trail_that_cannot_be_written_says_so_counts_what_it_lost_and_recovers() {
        let (_tmp, home, dir) = closed_trail(3);
        std::fs::remove_file(dir.join(LOG_FILE)).expect("rm");
        std::fs::create_dir(dir.join(LOG_FILE)).expect("a directory where the log was");

        let trail = AuditTrail::open(&home).expect("the trail opens, failed");
        let why = trail.writable().expect_err("not writable");
        assert!(why.contains("is a directory"), "{why}");
        trail.record(entry(3)).expect("handed over");
        assert!(eventually(|| trail.health().failure.is_some_and(|f| f.lost == 1)), "{:?}", trail.health());
        assert!(trail.sync().is_err(), "nothing is durable");

        std::fs::remove_dir(dir.join(LOG_FILE)).expect("rmdir");
        assert!(eventually(|| trail.writable().is_ok()), "recovers once the log can be written");
        trail.sync().expect("sync");
        let key = RuntimeKey::load(&key_path(&home)).expect("key").verifying_key();
        assert!(eventually(|| {
            let breaks = trail.health().logs.get("default").map(|log| log.unacknowledged.len()).unwrap_or(0);
            breaks == 2
        }));
        trail.sync().expect("sync");
        let found = report(&dir, &key);
        let reasons: Vec<&str> = found.unacknowledged().map(|b| b.reason.as_str()).collect();
        assert!(reasons.iter().any(|r| r.starts_with("log missing: the head names entry 3")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("1 entry could not be written between")), "{reasons:?}");
    }

    #[test]
    fn a_log_removed_under_a_running_writer_is_noticed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = crate::home::AstridHome::at(tmp.path());
        let trail = AuditTrail::open(&home).expect("trail");
        trail.record(entry(0)).expect("record");
        trail.sync().expect("sync");
        let dir = audit_dir(&home, "default");
        std::fs::remove_file(dir.join(LOG_FILE)).expect("rm");
        trail.record(entry(1)).expect("record");
        let key = RuntimeKey::load(&key_path(&home)).expect("key").verifying_key();
        let noticed = eventually(|| {
            let _ = trail.sync();
            verify_log(&dir, &key, false).is_ok_and(|r| {
                r.unacknowledged().any(|b| b.reason.contains("removed or replaced while the daemon was writing"))
            })
        });
        assert!(noticed, "{:?}", verify_log(&dir, &key, false));
    }

    #[test]
    fn verifying_while_the_daemon_appends_never_reports_tampering() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = crate::home::AstridHome::at(tmp.path());
        let trail = Arc::new(AuditTrail::open(&home).expect("trail"));
        trail.record(entry(0)).expect("record");
        trail.sync().expect("sync");
        let key = RuntimeKey::load(&key_path(&home)).expect("key").verifying_key();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (trail, stop) = (Arc::clone(&trail), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    trail.record(entry(i)).expect("record");
                    i += 1;
                    // Paced, so each verification (which reads the whole log) keeps up.
                    std::thread::sleep(std::time::Duration::from_millis(1));
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
