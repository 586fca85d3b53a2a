//! Checking a log with nothing but the public key: every line's hash and signature, the
//! chain of `prev_hash`, consecutive `seq`s, and the signed head (which reveals a cut tail).
//!
//! The files may be read while a daemon appends to them (`astrid audit verify` never asks
//! the daemon). The writer appends a line before it rewrites the head, so the head is read
//! first: every entry up to the head's seq is settled and a problem there is final at once.
//! A problem past it (or an unreadable head) may be a write in flight, so it is confirmed by
//! reading again before it is reported.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};

use super::entry::{AuditEntry, Head, Line, entry_hash, head_message, hex, unhex};
use super::{AuditError, HEAD_FILE, LOG_FILE};

/// The state of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Every check passed.
    Intact,
    /// The first problem found.
    Tampered {
        /// Seq of the first entry that fails (or the first one missing).
        first_bad_seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The result of verifying one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries read.
    pub entries: u64,
    /// The verdict.
    pub status: ChainStatus,
}

/// Each line of the log, parsed (or the parse error). No file → no lines.
pub fn read_lines(path: &Path) -> Result<Vec<Result<Line, String>>, AuditError> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io("read", path, e)),
    };
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice::<Line>(line).map_err(|e| e.to_string()))
        .collect())
}

fn signature_ok(key: &VerifyingKey, message: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = unhex(sig_hex) else { return false };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
    key.verify_strict(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// How often a verdict about unsettled entries is confirmed by reading the files again.
const CONFIRMATIONS: u32 = 10;
/// The pause between readings: long enough for a writer's batch to finish.
const CONFIRMATION_PAUSE: Duration = Duration::from_millis(25);

/// Verifies the log in `dir`. Tampering is reported in the `Ok` value; `Err` is for I/O.
pub fn verify_log(dir: &Path, key: &VerifyingKey) -> Result<VerifyReport, AuditError> {
    let mut attempt = 0;
    loop {
        let head = read_head(dir)?;
        let settled = head.as_ref().and_then(|h| serde_json::from_slice::<Head>(h.trim_ascii()).ok()).map(|h| h.seq);
        let report = check(dir, key, head)?;
        let final_verdict = match (&report.status, settled) {
            (ChainStatus::Intact, _) => true,
            (ChainStatus::Tampered { first_bad_seq, .. }, Some(settled)) => *first_bad_seq <= settled,
            (ChainStatus::Tampered { .. }, None) => false,
        };
        attempt += 1;
        if final_verdict || attempt >= CONFIRMATIONS {
            return Ok(report);
        }
        std::thread::sleep(CONFIRMATION_PAUSE);
    }
}

/// The head file's bytes (`None` if it does not exist).
fn read_head(dir: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    match fs::read(dir.join(HEAD_FILE)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io("read", &dir.join(HEAD_FILE), e)),
    }
}

/// One reading: the log as it is now against the head read just before it.
fn check(dir: &Path, key: &VerifyingKey, head_text: Option<Vec<u8>>) -> Result<VerifyReport, AuditError> {
    let lines = read_lines(&dir.join(LOG_FILE))?;
    let tampered = |seq: u64, reason: String, entries: u64| VerifyReport {
        entries,
        status: ChainStatus::Tampered { first_bad_seq: seq, reason },
    };
    let mut previous = hex(&[0u8; 32]);
    let mut hashes = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let entries = lines.len() as u64;
        let line = match line {
            Ok(line) => line,
            Err(e) => return Ok(tampered(expected_seq, format!("unreadable entry: {e}"), entries)),
        };
        let entry: &AuditEntry = &line.entry;
        if entry.seq != expected_seq {
            return Ok(tampered(expected_seq, format!("expected entry {expected_seq}, found {}", entry.seq), entries));
        }
        let hash = entry_hash(entry);
        if hash.to_hex().as_str() != line.hash {
            return Ok(tampered(expected_seq, "content does not match its hash".to_owned(), entries));
        }
        if !signature_ok(key, hash.as_bytes(), &line.sig) {
            return Ok(tampered(expected_seq, "bad signature".to_owned(), entries));
        }
        if entry.prev_hash != previous {
            return Ok(tampered(expected_seq, "does not follow the previous entry".to_owned(), entries));
        }
        previous = line.hash.clone();
        hashes.push(hash);
    }
    let entries = lines.len() as u64;
    let head_text = match head_text {
        Some(bytes) => bytes,
        None if entries == 0 => return Ok(VerifyReport { entries, status: ChainStatus::Intact }),
        None => return Ok(tampered(entries, "head missing".to_owned(), entries)),
    };
    if head_text.iter().all(u8::is_ascii_whitespace) && entries == 0 {
        return Ok(VerifyReport { entries, status: ChainStatus::Intact });
    }
    let head: Head = match serde_json::from_slice(head_text.trim_ascii()) {
        Ok(head) => head,
        Err(e) => return Ok(tampered(entries.max(1), format!("unreadable head: {e}"), entries)),
    };
    let head_hash = unhex(&head.hash).unwrap_or_default();
    if !signature_ok(key, &head_message(head.seq, &head_hash), &head.sig) {
        return Ok(tampered(head.seq, "bad head signature".to_owned(), entries));
    }
    if head.seq > entries {
        return Ok(tampered(
            entries + 1,
            format!("log truncated: head names entry {}, log ends at {entries}", head.seq),
            entries,
        ));
    }
    // The head may trail the log: the writer signs it once per batch of appends, and a
    // daemon killed mid-batch leaves signed, chained entries past it. Those are as authentic
    // as the rest; what the head guards is everything up to its seq.
    let matches =
        head.seq == 0 || hashes.get(head.seq as usize - 1).is_some_and(|h| h.as_bytes().as_slice() == head_hash);
    if !matches {
        return Ok(tampered(head.seq.max(1), "head does not match the log".to_owned(), entries));
    }
    Ok(VerifyReport { entries, status: ChainStatus::Intact })
}

/// The last `n` entries of the log in `dir` (unreadable lines skipped).
pub fn tail(dir: &Path, n: usize) -> Result<Vec<AuditEntry>, AuditError> {
    let lines = read_lines(&dir.join(LOG_FILE))?;
    let skip = lines.len().saturating_sub(n);
    Ok(lines.into_iter().skip(skip).filter_map(Result::ok).map(|line| line.entry).collect())
}
