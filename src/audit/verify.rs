//! Checking a log with nothing but the public key: every line's hash and signature, the
//! chain of `prev_hash`, consecutive `seq`s, and the signed head (which reveals a cut tail).
//!
//! The log is read as a stream, a line at a time (a line longer than [`MAX_LINE`] is a
//! break, skipped without being buffered), so memory does not grow with the log; a
//! verification can be cancelled between any two reads.
//!
//! Verification goes on past a break: the next line that is itself sound (hash and
//! signature) takes up the chain again, and only a line that does not continue where the
//! break left off (its seq, and its predecessor's hash where that is known) is a second
//! break. So every break in a log is found, not only the first, and a break that was seen
//! before can be recognised.
//!
//! A break, once seen by a daemon, is recorded in the log itself as an `audit.chain_broken`
//! entry (`entry N: reason`), and stays a finding until an `audit.acknowledge` entry names
//! that record (`entry R: …`). A break found now is matched to its record by its position
//! *and* its reason, so a second, different problem at the same place is a new finding.
//! The verdict is [`ChainStatus::Tampered`] while any break is unacknowledged, whether the
//! files still show it (a flipped byte) or only its record does (a cut tail, once new
//! entries and a new head were written after it).
//!
//! The files may be read while a daemon appends to them (`astrid audit verify` never asks
//! the daemon). The writer appends a line before it rewrites the head, so the head is read
//! first: every entry up to a sound head's seq is settled and a problem there is final at
//! once. A problem past it may be a write in flight when the log ends in it (only the last
//! line can be half written), and a head that cannot be read or does not verify may be one
//! read in the middle of its rewrite (old and new bytes mixed); either is confirmed by
//! reading again before it is reported. Otherwise the log is read once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};

use super::entry::{AuditEntry, Head, Line, entry_hash, head_message, unhex};
use super::{AuditError, HEAD_FILE, LOG_FILE};

/// The longest line a log may hold; a longer one is a break (the writer never writes one:
/// it caps the fields of an entry well below this).
pub const MAX_LINE: usize = 1 << 20;
/// The most a head file may hold (the writer's is [`HEAD_SIZE`](super::log) bytes).
const MAX_HEAD: u64 = 4096;
/// The most breaks kept in a report (more are counted in [`VerifyReport::more_breaks`]).
const MAX_BREAKS: usize = 256;
/// The most `audit.chain_broken` records and acknowledgements kept while reading.
const MAX_RECORDS: usize = 4096;
/// Bytes read per chunk; a cancel is noticed between chunks.
const CHUNK: usize = 64 * 1024;

/// The finding when a home's key shows it had a log and neither log nor head is there.
pub const DELETED: &str = "no log and no head, though keys/runtime.key shows entries were written: both were deleted";
/// The action of the entry that records a break.
pub const CHAIN_BROKEN: &str = "audit.chain_broken";
/// The action of the entry that acknowledges a recorded break.
pub const ACKNOWLEDGE: &str = "audit.acknowledge";

/// The state of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Every check passed, or every break found was acknowledged by the operator.
    Intact,
    /// The first break not acknowledged.
    Tampered {
        /// Seq of the first entry that fails (or the first one missing).
        first_bad_seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A break in a chain: found by this verification, recorded in the log by a daemon, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Seq of the first entry that fails (or the first one missing).
    pub first_bad_seq: u64,
    /// What is wrong.
    pub reason: String,
    /// Seq of the `audit.chain_broken` entry that records it (`None`: not recorded yet).
    pub recorded_at: Option<u64>,
    /// Seq of the `audit.acknowledge` entry that acknowledges it (`None`: not acknowledged).
    pub acknowledged_at: Option<u64>,
}

impl Break {
    /// `entry N: reason`, the resource of the entry that records it.
    pub fn describe(&self) -> String {
        format!("entry {}: {}", self.first_bad_seq, self.reason)
    }

    /// Whether the operator acknowledged it.
    pub fn acknowledged(&self) -> bool {
        self.acknowledged_at.is_some()
    }
}

/// The result of verifying one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read.
    pub entries: u64,
    /// The verdict: the first unacknowledged break, if any.
    pub status: ChainStatus,
    /// Every break found or recorded, acknowledged or not, in the order of their position.
    pub breaks: Vec<Break>,
    /// Breaks beyond the ones kept in `breaks` (they are all unacknowledged).
    pub more_breaks: u64,
    /// The last line read was not a sound continuation of the chain: what a reader sees of
    /// a line the writer is appending, the one thing a live log shows that may settle.
    pub ends_in_a_break: bool,
}

impl VerifyReport {
    /// A report on an intact log of `entries` lines.
    pub fn intact(entries: u64) -> Self {
        Self { entries, status: ChainStatus::Intact, breaks: Vec::new(), more_breaks: 0, ends_in_a_break: false }
    }

    /// The breaks not acknowledged.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Break> {
        self.breaks.iter().filter(|b| !b.acknowledged())
    }

    fn settle(mut self) -> Self {
        self.breaks.sort_by_key(|b| (b.first_bad_seq, b.recorded_at));
        let first = self.unacknowledged().next().cloned();
        self.status = match first {
            Some(first) => ChainStatus::Tampered { first_bad_seq: first.first_bad_seq, reason: first.reason },
            None if self.more_breaks > 0 => ChainStatus::Tampered {
                first_bad_seq: 0,
                reason: format!("{} breaks beyond the first {MAX_BREAKS}", self.more_breaks),
            },
            None => ChainStatus::Intact,
        };
        self
    }
}

/// What a verification looks at: the head's bytes, read before the log (`None`: no head
/// file), and how much of the log (`None`: no log file; else the bytes to read, or all).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The head file's bytes.
    pub head: Option<Vec<u8>>,
    /// Whether the log file exists, and the length to read (`None` inside: to its end).
    pub log: Option<Option<u64>>,
    /// Entries must exist (the home's runtime key was made when the first one was
    /// written): a log and head that are both gone were deleted.
    pub expect_entries: bool,
}

/// The verification was cancelled (the daemon is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

fn signature_ok(key: &VerifyingKey, message: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = unhex(sig_hex) else { return false };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
    key.verify_strict(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// How often a verdict about unsettled entries is confirmed by reading the files again.
const CONFIRMATIONS: u32 = 10;
/// The pause between readings: long enough for a writer's batch to finish.
const CONFIRMATION_PAUSE: Duration = Duration::from_millis(25);

/// Verifies the log in `dir` as it is now, while a daemon may be appending to it.
/// Tampering is reported in the `Ok` value; `Err` is for I/O (a log that is a directory,
/// an unreadable file).
/// With `expect_entries`, a log and head that are both missing are a break (see
/// [`Snapshot::expect_entries`]).
pub fn verify_log(dir: &Path, key: &VerifyingKey, expect_entries: bool) -> Result<VerifyReport, AuditError> {
    let mut attempt = 0;
    loop {
        let head = read_head(dir)?;
        // Only a head whose signature holds settles anything: the head is rewritten in place,
        // so a reading that overlaps that write can see a mix of old and new bytes that still
        // parses (equal lengths) but does not verify. Such a head is confirmed like a missing one.
        let settled = match parse_head(key, head.as_deref()) {
            ParsedHead::Sound(seq, _) => Some(seq),
            _ => None,
        };
        // The bytes there are now: a line being appended past them is for the next reading.
        let length = log_length(dir)?;
        let snapshot = Snapshot { head: head.clone(), log: length.map(Some), expect_entries };
        // Without a cancel flag there is no cancel.
        let report = verify_snapshot(dir, key, &snapshot, None).unwrap_or_else(|Cancelled| {
            Err(AuditError::Format("a verification without a cancel flag was cancelled".to_owned()))
        })?;
        // A break past the head may be an append in flight, but only when the log ends in a
        // break (a writer appends whole lines: only the last one can be half there) or the
        // head itself could not be read or verified (it is rewritten in place); a recorded break is
        // final. Anything else is final at once.
        let may_settle = report.ends_in_a_break || settled.is_none();
        let final_verdict = !may_settle
            || report
                .unacknowledged()
                .all(|b| b.recorded_at.is_some() || settled.is_some_and(|settled| b.first_bad_seq <= settled));
        attempt += 1;
        if final_verdict || attempt >= CONFIRMATIONS {
            return Ok(report);
        }
        std::thread::sleep(CONFIRMATION_PAUSE);
        // Nothing moved meanwhile: no write was in flight, and what was read is what there is
        // (a long tampered log is read once, not once per confirmation).
        if read_head(dir)? == head && log_length(dir)? == length {
            return Ok(report);
        }
    }
}

/// The log file's length, `None` if there is none (of any type: a directory in its place is
/// an I/O error when it is read).
fn log_length(dir: &Path) -> Result<Option<u64>, AuditError> {
    let path = dir.join(LOG_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io("stat", &path, e)),
    }
}

/// The head file's bytes (`None` if it does not exist); at most [`MAX_HEAD`] of them.
pub fn read_head(dir: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    let path = dir.join(HEAD_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io("read", &path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_HEAD + 1).read_to_end(&mut bytes).map_err(|e| AuditError::io("read", &path, e))?;
    Ok(Some(bytes))
}

/// Verifies what `snapshot` names of the log in `dir`, streaming, checking `cancel`
/// between reads. The outer `Err` is a cancel; the inner one, I/O.
pub fn verify_snapshot(
    dir: &Path,
    key: &VerifyingKey,
    snapshot: &Snapshot,
    cancel: Option<&AtomicBool>,
) -> Result<Result<VerifyReport, AuditError>, Cancelled> {
    let head = parse_head(key, snapshot.head.as_deref());
    let sound = match &head {
        ParsedHead::Sound(seq, hash) => Some((*seq, hash.clone())),
        _ => None,
    };
    let mut scan = Scan::new(key, sound);
    scan.expect_entries = snapshot.expect_entries;
    if let Some(limit) = snapshot.log {
        let path = dir.join(LOG_FILE);
        let file = match File::open(&path) {
            Ok(file) => Some(file),
            // Removed since it was seen: as if it had never been there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Ok(Err(AuditError::io("read", &path, e))),
        };
        if let Some(file) = file {
            let reader: Box<dyn Read> = match limit {
                Some(limit) => Box::new(file.take(limit)),
                None => Box::new(file),
            };
            let mut reader = BufReader::with_capacity(CHUNK, reader);
            let mut buffer = Vec::new();
            loop {
                match next_line(&mut reader, &mut buffer, cancel) {
                    Ok(Some(LineRead::Whole)) => scan.line(Ok(&buffer)),
                    Ok(Some(LineRead::TooLong)) => scan.line(Err(format!("line longer than {MAX_LINE} bytes"))),
                    Ok(None) => break,
                    Err(ReadError::Cancelled) => return Err(Cancelled),
                    Err(ReadError::Io(e)) => return Ok(Err(AuditError::io("read", &path, e))),
                }
            }
        } else {
            scan.missing = true;
        }
    } else {
        scan.missing = true;
    }
    Ok(Ok(scan.finish(head)))
}

/// What the end of a log as found says at once, without reading the rest of it: a cut
/// tail, a missing, garbled or foreign head, a deleted log. `last` is the last readable
/// entry's seq and hash, `lines` whether the log holds any line at all. The finding (position
/// and reason) is the one a full verification of the same snapshot makes, so a daemon can
/// record it before it appends anything (after which the next head would vouch for the
/// shortened log) and the full verification recognises that record as its own finding.
pub fn check_end(key: &VerifyingKey, snapshot: &Snapshot, last: Option<(u64, &str)>, lines: bool) -> Option<Break> {
    let end = last.map_or(0, |(seq, _)| seq);
    let (first_bad_seq, reason) = match parse_head(key, snapshot.head.as_deref()) {
        ParsedHead::Missing if !lines => {
            if !snapshot.expect_entries {
                return None;
            }
            (1, DELETED.to_owned())
        }
        ParsedHead::Empty if !lines => return None,
        ParsedHead::Missing => (end.max(1), "head missing".to_owned()),
        ParsedHead::Empty => (end.max(1), "unreadable head: empty".to_owned()),
        ParsedHead::Unsound(seq, reason) => (if seq == 0 { end.max(1) } else { seq }, reason),
        ParsedHead::Sound(seq, _) if seq > end && snapshot.log.is_none() => {
            (1, format!("log missing: the head names entry {seq}"))
        }
        ParsedHead::Sound(seq, _) if seq > end => {
            (end + 1, format!("log truncated: head names entry {seq}, log ends at {end}"))
        }
        ParsedHead::Sound(seq, hash)
            if seq > 0 && seq == end && last.is_some_and(|(_, h)| !h.eq_ignore_ascii_case(&hash)) =>
        {
            (seq, "head does not match the log".to_owned())
        }
        // A head behind the end (a batch killed before its head was written) is checked by
        // the full verification, which reads the entry it names.
        ParsedHead::Sound(..) => return None,
    };
    Some(Break { first_bad_seq, reason, recorded_at: None, acknowledged_at: None })
}

/// The head as the verification sees it.
enum ParsedHead {
    /// No head file.
    Missing,
    /// An empty head file: created by a writer that has not signed a head yet.
    Empty,
    /// A sound head: its seq and (lowercase) hash.
    Sound(u64, String),
    /// A head that cannot vouch for anything: the seq it names (0: unknown), and why.
    Unsound(u64, String),
}

fn parse_head(key: &VerifyingKey, bytes: Option<&[u8]>) -> ParsedHead {
    let Some(bytes) = bytes else { return ParsedHead::Missing };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return ParsedHead::Empty;
    }
    let head: Head = match serde_json::from_slice(bytes.trim_ascii()) {
        Ok(head) => head,
        Err(e) => return ParsedHead::Unsound(0, format!("unreadable head: {e}")),
    };
    let hash = unhex(&head.hash).unwrap_or_default();
    if !signature_ok(key, &head_message(head.seq, &hash), &head.sig) {
        return ParsedHead::Unsound(head.seq, "bad head signature".to_owned());
    }
    ParsedHead::Sound(head.seq, head.hash.to_ascii_lowercase())
}

/// The walk over the lines.
struct Scan<'k> {
    key: &'k VerifyingKey,
    /// The head's seq and hash, when it is sound.
    head: Option<(u64, String)>,
    /// Whether the line the head names was seen, and matched.
    head_matched: Option<bool>,
    /// Following the chain (else looking for a line to take it up again).
    in_sync: bool,
    /// The seq the next line should have.
    expected: u64,
    /// The hash the next line should name as its predecessor (`None`: unknown, after a line
    /// that could not be read).
    previous: Option<String>,
    /// The seq of the last sound line.
    last_seq: u64,
    lines: u64,
    /// No log file at all.
    missing: bool,
    /// See [`Snapshot::expect_entries`].
    expect_entries: bool,
    found: Vec<(u64, String)>,
    more_found: u64,
    /// `audit.chain_broken` entries: (their seq, first bad seq, reason).
    records: Vec<(u64, u64, String)>,
    /// `audit.acknowledge` entries: (the record they name, their seq).
    acks: Vec<(u64, u64)>,
    /// The last line read was broken (see [`VerifyReport::ends_in_a_break`]).
    last_line_bad: bool,
}

impl<'k> Scan<'k> {
    fn new(key: &'k VerifyingKey, head: Option<(u64, String)>) -> Self {
        Self {
            key,
            head,
            head_matched: None,
            in_sync: true,
            expected: 1,
            previous: Some(super::entry::hex(&[0u8; 32])),
            last_seq: 0,
            lines: 0,
            missing: false,
            expect_entries: false,
            found: Vec::new(),
            more_found: 0,
            records: Vec::new(),
            acks: Vec::new(),
            last_line_bad: false,
        }
    }

    fn found(&mut self, seq: u64, reason: String) {
        if self.found.len() < MAX_BREAKS {
            self.found.push((seq, reason));
        } else {
            self.more_found += 1;
        }
    }

    fn line(&mut self, bytes: Result<&[u8], String>) {
        self.lines += 1;
        // Until the line proves sound and in its place.
        self.last_line_bad = true;
        let parsed = bytes.and_then(|bytes| serde_json::from_slice::<Line>(bytes).map_err(|e| e.to_string()));
        let line = match parsed {
            Ok(line) => line,
            Err(e) => {
                if self.in_sync {
                    self.found(self.expected, format!("unreadable entry: {e}"));
                    self.in_sync = false;
                }
                // It took a place in the chain, whose hash is unknown.
                self.expected += 1;
                self.previous = None;
                return;
            }
        };
        let entry: &AuditEntry = &line.entry;
        let hash = entry_hash(entry);
        let sound = if hash.to_hex().as_str() != line.hash {
            Err("content does not match its hash".to_owned())
        } else if !signature_ok(self.key, hash.as_bytes(), &line.sig) {
            Err("bad signature".to_owned())
        } else {
            Ok(())
        };
        let follows = if entry.seq != self.expected {
            Err(format!("expected entry {}, found {}", self.expected, entry.seq))
        } else if self.previous.as_ref().is_some_and(|previous| *previous != entry.prev_hash) {
            Err("does not follow the previous entry".to_owned())
        } else {
            Ok(())
        };
        match (sound, follows) {
            (Ok(()), Ok(())) => self.last_line_bad = false,
            (Ok(()), Err(reason)) => {
                // A sound line in the wrong place: a break here, and the chain goes on from it.
                self.found(self.expected, reason);
            }
            (Err(reason), _) => {
                if self.in_sync {
                    self.found(self.expected, reason);
                    self.in_sync = false;
                }
                self.expected = entry.seq.saturating_add(1);
                self.previous = Some(line.hash.clone());
                return;
            }
        }
        self.in_sync = true;
        self.expected = entry.seq.saturating_add(1);
        self.previous = Some(line.hash.clone());
        self.last_seq = entry.seq;
        if let Some((seq, head_hash)) = &self.head
            && *seq == entry.seq
        {
            self.head_matched = Some(line.hash.eq_ignore_ascii_case(head_hash));
        }
        self.note(entry);
    }

    /// Remembers the records of breaks and their acknowledgements.
    fn note(&mut self, entry: &AuditEntry) {
        if self.records.len() + self.acks.len() >= MAX_RECORDS {
            return;
        }
        if entry.action == CHAIN_BROKEN
            && let Some((seq, reason)) = parse_reference(&entry.resource)
        {
            self.records.push((entry.seq, seq, reason.to_owned()));
        } else if entry.action == ACKNOWLEDGE
            && let Some((record, _)) = parse_reference(&entry.resource)
            && record < entry.seq
        {
            self.acks.push((record, entry.seq));
        }
    }

    fn finish(mut self, head: ParsedHead) -> VerifyReport {
        let end = self.last_seq;
        match head {
            ParsedHead::Missing if self.lines == 0 && self.expect_entries => {
                self.found(1, DELETED.to_owned());
            }
            ParsedHead::Missing | ParsedHead::Empty if self.lines == 0 => {}
            ParsedHead::Missing => self.found(end.max(1), "head missing".to_owned()),
            ParsedHead::Empty => self.found(end.max(1), "unreadable head: empty".to_owned()),
            ParsedHead::Unsound(seq, reason) => self.found(if seq == 0 { end.max(1) } else { seq }, reason),
            ParsedHead::Sound(seq, _) if seq > end && self.missing => {
                self.found(1, format!("log missing: the head names entry {seq}"));
            }
            ParsedHead::Sound(seq, _) if seq > end => {
                self.found(end + 1, format!("log truncated: head names entry {seq}, log ends at {end}"));
            }
            // The head may trail the log: the writer signs it once per batch of appends, and
            // a daemon killed mid-batch leaves signed, chained entries past it. Those are as
            // authentic as the rest; what the head guards is everything up to its seq.
            ParsedHead::Sound(seq, _) if seq > 0 && self.head_matched != Some(true) => {
                self.found(seq, "head does not match the log".to_owned());
            }
            ParsedHead::Sound(..) => {}
        }
        let acknowledged = |record: u64| self.acks.iter().find(|(named, _)| *named == record).map(|(_, at)| *at);
        let mut breaks: Vec<Break> = self
            .records
            .iter()
            .map(|(at, seq, reason)| Break {
                first_bad_seq: *seq,
                reason: reason.clone(),
                recorded_at: Some(*at),
                acknowledged_at: acknowledged(*at),
            })
            .collect();
        for (seq, reason) in &self.found {
            if !breaks.iter().any(|b| b.first_bad_seq == *seq && b.reason == *reason) {
                breaks.push(Break {
                    first_bad_seq: *seq,
                    reason: reason.clone(),
                    recorded_at: None,
                    acknowledged_at: None,
                });
            }
        }
        VerifyReport {
            entries: self.lines,
            status: ChainStatus::Intact,
            breaks,
            more_breaks: self.more_found,
            ends_in_a_break: self.last_line_bad,
        }
        .settle()
    }
}

/// `entry N: rest` → (N, rest).
pub fn parse_reference(resource: &str) -> Option<(u64, &str)> {
    let (seq, rest) = resource.strip_prefix("entry ")?.split_once(": ")?;
    Some((seq.parse().ok()?, rest))
}

/// What [`next_line`] read.
enum LineRead {
    /// A line, in the buffer, without its newline.
    Whole,
    /// A line longer than [`MAX_LINE`], skipped.
    TooLong,
}

enum ReadError {
    Cancelled,
    Io(std::io::Error),
}

/// Reads the next line into `buffer` (the last one may lack its newline), never holding
/// more than [`MAX_LINE`] bytes of it; `None` at the end. Empty lines are skipped.
fn next_line(
    reader: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    cancel: Option<&AtomicBool>,
) -> Result<Option<LineRead>, ReadError> {
    buffer.clear();
    let mut too_long = false;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(ReadError::Cancelled);
        }
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if available.is_empty() {
            return Ok(match (too_long, buffer.is_empty()) {
                (true, _) => Some(LineRead::TooLong),
                (false, true) => None,
                (false, false) => Some(LineRead::Whole),
            });
        }
        let (taken, ended) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at, true),
            None => (available.len(), false),
        };
        if !too_long {
            if buffer.len() + taken > MAX_LINE {
                too_long = true;
                buffer.clear();
            } else {
                buffer.extend_from_slice(&available[..taken]);
            }
        }
        reader.consume(taken + usize::from(ended));
        if ended {
            if too_long {
                return Ok(Some(LineRead::TooLong));
            }
            if buffer.is_empty() {
                continue;
            }
            return Ok(Some(LineRead::Whole));
        }
    }
}

/// The lines of a file read from its end: each is `Some(bytes)`, or `None` for one longer
/// than [`MAX_LINE`]. Memory stays within a chunk and a line.
pub struct Backwards {
    file: File,
    pos: u64,
    carry: Vec<u8>,
    overlong: bool,
    ready: Vec<Option<Vec<u8>>>,
    /// Bytes read so far.
    pub scanned: u64,
}

impl Backwards {
    /// Opens `file` for reading from its end (`len`).
    pub fn new(file: File, len: u64) -> Self {
        Self { file, pos: len, carry: Vec::new(), overlong: false, ready: Vec::new(), scanned: 0 }
    }

    /// The previous line (`None` at the start of the file). Empty lines are skipped.
    pub fn next_line(&mut self) -> std::io::Result<Option<Option<Vec<u8>>>> {
        loop {
            if let Some(line) = self.ready.pop() {
                return Ok(Some(line));
            }
            if self.pos == 0 {
                let line = std::mem::take(&mut self.carry);
                if std::mem::take(&mut self.overlong) {
                    return Ok(Some(None));
                }
                return Ok((!line.is_empty()).then_some(Some(line)));
            }
            let size = u64::try_from(CHUNK).unwrap_or(u64::MAX).min(self.pos);
            self.pos -= size;
            let mut chunk = vec![0u8; usize::try_from(size).unwrap_or(CHUNK)];
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.file.read_exact(&mut chunk)?;
            self.scanned += size;
            let mut pieces: Vec<&[u8]> = chunk.split(|b| *b == b'\n').collect();
            let first = pieces.remove(0);
            if pieces.is_empty() {
                // No newline in this chunk: all of it belongs to the line being carried.
                if !self.overlong {
                    let mut carry = first.to_vec();
                    carry.extend_from_slice(&self.carry);
                    self.carry = carry;
                    if self.carry.len() > MAX_LINE {
                        self.overlong = true;
                        self.carry.clear();
                    }
                }
                continue;
            }
            // The last piece ends where the carried line ends: it is complete now.
            let last_index = pieces.len() - 1;
            let mut complete: Vec<Option<Vec<u8>>> = Vec::with_capacity(pieces.len());
            for (index, piece) in pieces.iter().enumerate() {
                if index == last_index {
                    if std::mem::take(&mut self.overlong) {
                        complete.push(None);
                    } else {
                        let mut line = piece.to_vec();
                        line.extend_from_slice(&self.carry);
                        complete.push((line.len() <= MAX_LINE).then_some(line));
                    }
                } else {
                    complete.push((piece.len() <= MAX_LINE).then(|| piece.to_vec()));
                }
            }
            self.ready.extend(complete.into_iter().filter(|line| line.as_ref().is_none_or(|l| !l.is_empty())));
            self.carry = first.to_vec();
            if self.carry.len() > MAX_LINE {
                self.overlong = true;
                self.carry.clear();
            }
        }
    }
}

/// The last `n` entries of the log in `dir` (unreadable lines skipped), read from its end.
pub fn tail(dir: &Path, n: usize) -> Result<Vec<AuditEntry>, AuditError> {
    let path = dir.join(LOG_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io("read", &path, e)),
    };
    let len = file.metadata().map_err(|e| AuditError::io("stat", &path, e))?.len();
    let mut lines = Backwards::new(file, len);
    let mut entries = Vec::new();
    while entries.len() < n {
        match lines.next_line().map_err(|e| AuditError::io("read", &path, e))? {
            None => break,
            Some(Some(bytes)) => {
                if let Ok(line) = serde_json::from_slice::<Line>(&bytes) {
                    entries.push(line.entry);
                }
            }
            Some(None) => {}
        }
    }
    entries.reverse();
    Ok(entries)
}
