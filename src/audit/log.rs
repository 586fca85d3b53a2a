//! Appending to a principal's log, and the trail that routes entries to principals.
//!
//! Each append is one `write` of one line to a file opened in append mode; the fixed-size
//! head is then replaced by one positional write. Both survive a SIGKILL of the daemon as
//! soon as the calls return (the page cache belongs to the OS). [`AuditTrail::sync`] also
//! fsyncs, for power loss.
//!
//! The trail writes on a thread of its own: callers hand over an entry (a channel send) and
//! go on, so auditing every request costs the request almost nothing. The writer drains
//! what is queued, appends each entry (hashed, chained and signed), then signs and writes
//! each touched head once per batch. Order is preserved; [`AuditTrail::sync`] waits until
//! everything handed over is written.
//!
//! **Verification at open.** When the writer first opens a log it takes a snapshot (the
//! head's bytes and the log's length) before it appends anything: that is the only moment
//! the verdict is free of races with our own writes, and the only moment a tail cut while
//! the daemon was down is still visible (the next head written would vouch for the
//! shortened log). It learns where to append from the end of the file alone, and a thread
//! of its own verifies the snapshot, streaming, while the writer goes on; the daemon's
//! shutdown cancels it instead of waiting for it. A break it finds is logged, kept for
//! `GetStatus`, and recorded in the log itself as an `audit.chain_broken` entry, so the
//! evidence outlives the head; it stays a finding until the operator acknowledges it
//! ([`AuditTrail::acknowledge`], itself an entry).
//!
//! **Failure.** The trail is a security control. When an entry cannot be written (the log
//! is a directory, the disk is full, a file was removed or replaced while the daemon ran),
//! the trail is *failed*: [`AuditTrail::writable`] says why, the kernel refuses every
//! decision that needs the trail, and entries handed over are counted, not written. The
//! writer tries again every second; once it can write, it reopens the logs (verifying them
//! again: a deleted log shows), records the gap as a break to acknowledge, and the trail is
//! writable again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::entry::{Actor, AuditEntry, Decision, Head, Line, NewEntry, entry_hash, head_message, hex, unhex};
use super::key::RuntimeKey;
use super::verify::{
    ACKNOWLEDGE, Backwards, Break, CHAIN_BROKEN, Cancelled, Snapshot, VerifyReport, check_end, read_head,
};
use super::{AuditError, HEAD_FILE, LOG_FILE};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};

/// The head is written in place at a fixed size, so one write replaces it whole.
const HEAD_SIZE: usize = 320;
/// The longest `action`, `resource` or `rule` an entry keeps; the rest is cut (and the cut
/// said), so every line stays far below [`super::verify::MAX_LINE`].
pub const MAX_FIELD: usize = 16 * 1024;
/// How far back from the end of a log the writer looks for the entry to chain after.
const TAIL_WINDOW: u64 = 4 * 1024 * 1024;
/// How often the writer checks its files are still in place, and a failed trail retries.
const TICK: Duration = Duration::from_secs(1);

/// A file's identity, to notice it was removed or replaced while we hold it open.
type FileId = (u64, u64);

struct Tail {
    seq: u64,
    hash: String,
    log: File,
    head: File,
    ids: [FileId; 2],
}

/// The log of one principal.
pub struct AuditLog {
    dir: PathBuf,
    key: Arc<RuntimeKey>,
    tail: Mutex<Tail>,
    snapshot: Snapshot,
    /// The last readable entry as found (seq, hash), and whether the log held any line.
    end: (Option<(u64, String)>, bool),
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

/// Metadata of `path` if it exists; an error if it is anything but a regular file (a
/// directory, a FIFO, a symbolic link: none is a log).
fn regular_file(path: &Path) -> Result<Option<fs::Metadata>, AuditError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(Some(meta)),
        Ok(meta) => Err(AuditError::NotAFile { path: path.to_path_buf(), kind: kind_of(&meta) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io("stat", path, e)),
    }
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` with `options` and checks it is the regular file `before` described (or a
/// new one when there was none).
fn open_checked(path: &Path, options: &OpenOptions, before: Option<&fs::Metadata>) -> Result<File, AuditError> {
    let file = options.open(path).map_err(|e| AuditError::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| AuditError::io("stat", path, e))?;
    let swapped = before.is_some_and(|before| (before.dev(), before.ino()) != (meta.dev(), meta.ino()));
    if !meta.file_type().is_file() || swapped {
        return Err(AuditError::Moved { path: path.to_path_buf() });
    }
    Ok(file)
}

impl AuditLog {
    /// Opens (creating) the log in `dir`: takes the [`Snapshot`] a verification of the log
    /// as found needs, and learns where to append from the end of the file (never reading
    /// the whole of it). Appending starts at once; verification is the caller's business.
    ///
    /// The caller must be the log's only writer (the daemon's singleton lock guarantees it).
    pub fn open(dir: &Path, key: Arc<RuntimeKey>) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io("create", dir, e))?;
        // Only when it is not 0700 already: a chmod is a journalled metadata write even when
        // it changes nothing, and a journal write can wait behind another thread's sync.
        let mode = fs::metadata(dir).map_err(|e| AuditError::io("inspect", dir, e))?.mode() & 0o7777;
        if mode != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| AuditError::io("chmod", dir, e))?;
        }
        let log_path = dir.join(LOG_FILE);
        let head_path = dir.join(HEAD_FILE);
        let head_before = regular_file(&head_path)?;
        let log_before = regular_file(&log_path)?;
        let head_bytes = if head_before.is_some() { read_head(dir)? } else { None };
        let snapshot =
            Snapshot { head: head_bytes, log: log_before.as_ref().map(|meta| Some(meta.len())), expect_entries: false };
        let log = open_checked(
            &log_path,
            OpenOptions::new().create(true).append(true).read(true).mode(0o600),
            log_before.as_ref(),
        )?;
        let length = log_before.as_ref().map_or(0, fs::Metadata::len);
        let end = find_tail(&log, length).map_err(|e| AuditError::io("read", &log_path, e))?;
        let (seq, hash, unterminated) = (end.seq, end.hash, end.unterminated);
        let head = open_checked(
            &head_path,
            OpenOptions::new().create(true).truncate(false).write(true).mode(0o600),
            head_before.as_ref(),
        )?;
        let ids = [file_id(&log, &log_path)?, file_id(&head, &head_path)?];
        if unterminated {
            // A line cut short (a crash mid-write): ours start on a line of their own.
            (&log).write_all(b"\n").map_err(|e| AuditError::io("append to", &log_path, e))?;
        }
        let tail = Mutex::new(Tail { seq, hash, log, head, ids });
        Ok(Self { dir: dir.to_path_buf(), key, tail, snapshot, end: (end.last, end.lines) })
    }

    /// What the end of the log as found says at once (see [`super::verify::check_end`]),
    /// with `expect_entries` as in [`Snapshot::expect_entries`].
    pub fn check_end(&self, expect_entries: bool) -> Option<Break> {
        let snapshot = Snapshot { expect_entries, ..self.snapshot.clone() };
        let last = self.end.0.as_ref().map(|(seq, hash)| (*seq, hash.as_str()));
        check_end(&self.key.verifying_key(), &snapshot, last, self.end.1)
    }

    /// The log as it was found, before this process appended to it.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seq the next entry will have.
    pub fn next_seq(&self) -> u64 {
        self.tail().seq + 1
    }

    /// Appends an entry, chained to the previous one and signed, and updates the head.
    pub fn append(&self, new: NewEntry) -> Result<AuditEntry, AuditError> {
        let entry = self.append_line(new)?;
        self.write_head()?;
        Ok(entry)
    }

    /// Appends an entry without touching the head (the writer thread batches heads).
    fn append_line(&self, new: NewEntry) -> Result<AuditEntry, AuditError> {
        let mut tail = self.tail();
        let entry = AuditEntry {
            seq: tail.seq + 1,
            id: Uuid::new_v4(),
            timestamp: Utc::now(),
            session: new.session,
            principal: new.principal,
            actor: new.actor,
            action: capped(new.action),
            resource: capped(new.resource),
            decision: new.decision,
            rule: capped(new.rule),
            prev_hash: tail.hash.clone(),
        };
        let hash = entry_hash(&entry);
        let line = Line {
            entry: entry.clone(),
            hash: hash.to_hex().to_string(),
            sig: hex(&self.key.sign(hash.as_bytes()).to_bytes()),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| AuditError::Format(e.to_string()))?;
        bytes.push(b'\n');
        let log_path = self.dir.join(LOG_FILE);
        tail.log.write_all(&bytes).map_err(|e| AuditError::io("append to", &log_path, e))?;
        tail.seq = entry.seq;
        tail.hash = line.hash;
        Ok(entry)
    }

    /// Signs and writes the head for the last entry appended.
    fn write_head(&self) -> Result<(), AuditError> {
        let tail = self.tail();
        if tail.seq == 0 {
            return Ok(());
        }
        let hash = unhex(&tail.hash).unwrap_or_default();
        let head = Head {
            seq: tail.seq,
            hash: tail.hash.clone(),
            sig: hex(&self.key.sign(&head_message(tail.seq, &hash)).to_bytes()),
        };
        let mut head_bytes = serde_json::to_vec(&head).map_err(|e| AuditError::Format(e.to_string()))?;
        head_bytes.resize(HEAD_SIZE, b' ');
        let head_path = self.dir.join(HEAD_FILE);
        tail.head.write_all_at(&head_bytes, 0).map_err(|e| AuditError::io("write", &head_path, e))
    }

    /// Forces the log and head to disk.
    pub fn sync(&self) -> Result<(), AuditError> {
        let tail = self.tail();
        tail.log.sync_data().map_err(|e| AuditError::io("fsync", &self.dir.join(LOG_FILE), e))?;
        tail.head.sync_data().map_err(|e| AuditError::io("fsync", &self.dir.join(HEAD_FILE), e))
    }

    /// Whether the files we write are still the ones at the log's paths (not removed, not
    /// replaced): writes to a file nobody can find again are lost.
    fn still_in_place(&self) -> Result<(), AuditError> {
        let ids = self.tail().ids;
        for (name, id) in [(LOG_FILE, ids[0]), (HEAD_FILE, ids[1])] {
            let path = self.dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_file() && (meta.dev(), meta.ino()) == id => {}
                Ok(_) => return Err(AuditError::Moved { path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(AuditError::Moved { path }),
                Err(e) => return Err(AuditError::io("stat", &path, e)),
            }
        }
        Ok(())
    }
}

fn file_id(file: &File, path: &Path) -> Result<FileId, AuditError> {
    let meta = file.metadata().map_err(|e| AuditError::io("stat", path, e))?;
    Ok((meta.dev(), meta.ino()))
}

/// Cuts a field to [`MAX_FIELD`] bytes (at a character boundary), saying how much was cut.
fn capped(mut text: String) -> String {
    if text.len() <= MAX_FIELD {
        return text;
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} bytes cut)"));
    text
}

/// What the end of a log says: where to append, and what was there.
struct End {
    /// The seq of the last entry, counting unreadable lines after the last readable one as
    /// taking a place in the chain (so a verification resumes at our first line without a
    /// second break).
    seq: u64,
    /// The hash to chain after.
    hash: String,
    /// The file ends inside a line.
    unterminated: bool,
    /// The last readable entry: its seq and hash.
    last: Option<(u64, String)>,
    /// The log holds any line at all.
    lines: bool,
}

/// Reads the end of a log of `length` bytes, backwards, never more than [`TAIL_WINDOW`].
fn find_tail(log: &File, length: u64) -> std::io::Result<End> {
    let mut end = End { seq: 0, hash: hex(&[0u8; 32]), unterminated: false, last: None, lines: false };
    if length == 0 {
        return Ok(end);
    }
    let mut last = [0u8; 1];
    log.read_exact_at(&mut last, length - 1)?;
    end.unterminated = last[0] != b'\n';
    let mut lines = Backwards::new(log.try_clone()?, length);
    let mut unreadable = 0u64;
    loop {
        if lines.scanned > TAIL_WINDOW {
            // Nothing readable near the end: a new chain (verification reports the damage).
            end.lines = true;
            return Ok(end);
        }
        match lines.next_line()? {
            None => {
                end.seq = unreadable;
                end.lines = unreadable > 0;
                return Ok(end);
            }
            Some(Some(bytes)) => match serde_json::from_slice::<Line>(&bytes) {
                Ok(line) => {
                    end.seq = line.entry.seq + unreadable;
                    end.last = Some((line.entry.seq, line.hash.clone()));
                    end.hash = line.hash;
                    end.lines = true;
                    return Ok(end);
                }
                Err(_) => unreadable += 1,
            },
            Some(None) => unreadable += 1,
        }
    }
}

/// Why the trail cannot be written, since when, and how many entries were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When the first write failed.
    pub since: DateTime<Utc>,
    pub error: String,
    /// Entries handed over since, and not written.
    pub lost: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audit trail cannot be written since {}: {} ({} entr{} lost)",
            self.since.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.error,
            self.lost,
            if self.lost == 1 { "y" } else { "ies" }
        )
    }
}

/// What is known of one principal's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHealth {
    /// Its verification is still running.
    pub verifying: bool,
    /// The verdict on the log as this daemon found it (with the breaks it recorded since).
    pub report: Option<VerifyReport>,
    /// Breaks not acknowledged (recorded in the log, or about to be).
    pub unacknowledged: Vec<Break>,
    /// Why it could not be verified.
    pub error: Option<String>,
}

/// The trail's state, for `GetStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrailHealth {
    /// Set while entries cannot be written.
    pub failure: Option<Failure>,
    /// Every principal's log was asked to be verified.
    pub all_requested: bool,
    /// Each principal's log this daemon opened.
    pub logs: BTreeMap<String, LogHealth>,
}

impl TrailHealth {
    /// Whether a verification is still running (or was not started yet).
    pub fn verifying(&self) -> bool {
        !self.all_requested || self.logs.values().any(|log| log.verifying)
    }
}

struct Shared {
    health: Mutex<TrailHealth>,
    failed: AtomicBool,
    cancel: AtomicBool,
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, TrailHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Queue = Arc<Mutex<Option<mpsc::Sender<Command>>>>;

/// The kernel's audit handle: one log per principal, opened on first use, written by a
/// dedicated thread.
pub struct AuditTrail {
    home: AstridHome,
    queue: Queue,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
}

/// A break the operator acknowledged: whose log, and which break.
pub type Acknowledged = (String, Break);

enum Command {
    Append(NewEntry),
    Sync(mpsc::SyncSender<Result<(), String>>),
    Open(String, mpsc::SyncSender<()>),
    VerifyAll,
    Verified {
        principal: String,
        generation: u64,
        result: Result<Option<VerifyReport>, String>,
    },
    Acknowledge {
        session: Uuid,
        actor: Actor,
        note: String,
        reply: mpsc::SyncSender<Result<Vec<Acknowledged>, String>>,
    },
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail").field("home", &self.home).finish()
    }
}

/// The directory of a principal's audit log.
pub fn audit_dir(home: &AstridHome, principal: &str) -> PathBuf {
    home.principal_dir(principal).join(".local").join("audit")
}

/// The runtime key's path in a home.
pub fn key_path(home: &AstridHome) -> PathBuf {
    home.root().join("keys").join("runtime.key")
}

const STOPPED: &str = "the audit writer has stopped";

impl AuditTrail {
    /// Loads (or creates) `keys/runtime.key`, starts the writer thread and opens the
    /// default principal's log, so a trail that cannot be written is known before the
    /// first decision ([`AuditTrail::writable`]). That is not an error here: the daemon
    /// runs, refusing what needs the trail, and says why. The end of the log is checked
    /// now; the whole chain only from [`AuditTrail::start_verification`].
    pub fn open(home: &AstridHome) -> Result<Self, AuditError> {
        let path = key_path(home);
        let key_existed = path.exists();
        let key = Arc::new(RuntimeKey::load_or_create(&path)?);
        let (sender, commands) = mpsc::channel();
        let queue: Queue = Arc::new(Mutex::new(Some(sender)));
        let shared = Arc::new(Shared {
            health: Mutex::default(),
            failed: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
        });
        let writer = Writer {
            home: home.clone(),
            key,
            key_existed,
            logs: HashMap::new(),
            generations: HashMap::new(),
            shared: Arc::clone(&shared),
            queue: Arc::clone(&queue),
            failure: None,
            dirty: Vec::new(),
            held: Some(Vec::new()),
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(&commands))
            .map_err(|e| AuditError::io("start the writer thread for", &home.root().join("keys"), e))?;
        let trail = Self { home: home.clone(), queue, writer: Mutex::new(Some(handle)), shared };
        let (reply, opened) = mpsc::sync_channel(1);
        trail.send(Command::Open(DEFAULT_PRINCIPAL.to_owned(), reply))?;
        opened.recv().map_err(|_| AuditError::Format(STOPPED.to_owned()))?;
        Ok(trail)
    }

    fn send(&self, command: Command) -> Result<(), AuditError> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sender = queue.as_ref().ok_or_else(|| AuditError::Format(STOPPED.to_owned()))?;
        sender.send(command).map_err(|_| AuditError::Format(STOPPED.to_owned()))
    }

    /// Hands `entry` to the writer (in order); it is on disk once [`AuditTrail::sync`] returns.
    pub fn record(&self, entry: NewEntry) -> Result<(), AuditError> {
        self.send(Command::Append(entry))
    }

    /// Whether entries can be written now; else why not (see the module documentation).
    pub fn writable(&self) -> Result<(), String> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &self.shared.health().failure {
            Some(failure) => Err(failure.to_string()),
            None => Ok(()),
        }
    }

    /// Waits until every entry handed over is written, heads included, and fsynced.
    pub fn sync(&self) -> Result<(), AuditError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.send(Command::Sync(reply))?;
        done.recv().map_err(|_| AuditError::Format(STOPPED.to_owned()))?.map_err(AuditError::Format)
    }

    /// Verifies, in the background, the logs opened so far (their snapshots were taken when
    /// they were opened) and every other principal's, opening it. Until this is called no
    /// chain is verified (the daemon calls it once it is ready). Returns at once;
    /// [`AuditTrail::health`] tells how it goes.
    pub fn start_verification(&self) -> Result<(), AuditError> {
        self.send(Command::VerifyAll)
    }

    /// Stops every verification still running (the daemon is shutting down); returns the
    /// principals whose verification had not finished.
    pub fn cancel_verification(&self) -> Vec<String> {
        self.shared.cancel.store(true, Ordering::SeqCst);
        let health = self.shared.health();
        health.logs.iter().filter(|(_, log)| log.verifying).map(|(principal, _)| principal.clone()).collect()
    }

    /// The trail's state now.
    pub fn health(&self) -> TrailHealth {
        self.shared.health().clone()
    }

    /// Reads the trail's state in place: what a status poll needs without copying every
    /// log's verification report. (`read` runs under the trail's lock: keep it short.)
    pub fn inspect_health<T>(&self, read: impl FnOnce(&TrailHealth) -> T) -> T {
        read(&self.shared.health())
    }

    /// Every principal's log as it was found when this process first opened it, once
    /// verified (waits for the verifications). Entries appended since were written by this
    /// process; `astrid audit verify` re-reads the files as they are now.
    pub fn verify_all(&self) -> Result<Vec<(String, VerifyReport)>, AuditError> {
        self.start_verification()?;
        loop {
            let health = self.health();
            if !health.verifying() {
                return Ok(health
                    .logs
                    .into_iter()
                    .filter_map(|(principal, log)| Some((principal, log.report?)))
                    .collect());
            }
            if self.shared.cancel.load(Ordering::SeqCst) {
                return Err(AuditError::Format("verification cancelled".to_owned()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Records that the operator (`actor`) acknowledged every break known now, with
    /// `note`: an `audit.acknowledge` entry per break, in the log that holds it. Refused
    /// while a verification runs or the trail cannot be written. Returns what was
    /// acknowledged.
    pub fn acknowledge(&self, session: Uuid, actor: Actor, note: &str) -> Result<Vec<Acknowledged>, String> {
        let (reply, done) = mpsc::sync_channel(1);
        let command = Command::Acknowledge { session, actor, note: note.to_owned(), reply };
        self.send(command).map_err(|e| e.to_string())?;
        done.recv().map_err(|_| STOPPED.to_owned())?
    }
}

impl Drop for AuditTrail {
    /// Closing the queue lets the writer finish what is queued; we wait for it.
    fn drop(&mut self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

/// The writer's record of a failure.
struct Failing {
    /// The principal whose log failed first.
    origin: String,
    since: DateTime<Utc>,
    error: String,
    /// Entries lost per principal (a principal whose log was open is listed with 0).
    lost: BTreeMap<String, u64>,
    last_attempt: Instant,
}

struct Writer {
    home: AstridHome,
    key: Arc<RuntimeKey>,
    /// The runtime key was there before this daemon: the home has had a log.
    key_existed: bool,
    logs: HashMap<String, AuditLog>,
    generations: HashMap<String, u64>,
    shared: Arc<Shared>,
    queue: Queue,
    failure: Option<Failing>,
    dirty: Vec<String>,
    /// Verifications of logs opened before [`AuditTrail::start_verification`]: held until
    /// then, so the daemon's boot (which opens the default log) does not share the CPUs with
    /// a verification of the whole chain. `None` once verification has started.
    held: Option<Vec<HeldVerification>>,
}

/// A verification waiting for [`AuditTrail::start_verification`].
struct HeldVerification {
    principal: String,
    dir: PathBuf,
    snapshot: Snapshot,
    generation: u64,
}

impl Writer {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            match commands.recv_timeout(TICK) {
                Ok(first) => {
                    let mut next = Some(first);
                    while let Some(command) = next.take() {
                        self.handle(command);
                        next = commands.try_recv().ok();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.after_batch();
        }
        self.after_batch();
        let _ = self.logs.values().try_for_each(AuditLog::sync);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append(entry) => self.append(entry),
            Command::Sync(reply) => {
                let result = match &self.failure {
                    Some(failing) => Err(self.describe(failing)),
                    None => self
                        .heads()
                        .and_then(|()| self.logs.values().try_for_each(AuditLog::sync))
                        .map_err(|e| e.to_string()),
                };
                let _ = reply.send(result);
            }
            Command::Open(principal, reply) => {
                if let Err(e) = self.log(&principal) {
                    self.fail(&principal, &e, 0);
                }
                let _ = reply.send(());
            }
            Command::VerifyAll => self.verify_all(),
            Command::Verified { principal, generation, result } => self.verified(&principal, generation, result),
            Command::Acknowledge { session, actor, note, reply } => {
                let result = self.acknowledge(session, &actor, &note);
                let _ = reply.send(result);
            }
        }
    }

    fn describe(&self, failing: &Failing) -> String {
        let failure = Failure { since: failing.since, error: failing.error.clone(), lost: failing.lost.values().sum() };
        failure.to_string()
    }

    fn append(&mut self, entry: NewEntry) {
        let principal = entry.principal.clone();
        if let Some(failing) = &mut self.failure {
            *failing.lost.entry(principal).or_default() += 1;
            self.publish_failure();
            return;
        }
        match self.log(&principal).and_then(|log| log.append_line(entry)) {
            Ok(_) => self.dirty.push(principal),
            Err(e) => self.fail(&principal, &e, 1),
        }
    }

    /// The trail cannot be written: say so once, loudly, and refuse from now on.
    fn fail(&mut self, principal: &str, error: &AuditError, lost: u64) {
        let failing = self.failure.get_or_insert_with(|| {
            log::error!(
                "AUDIT TRAIL CANNOT BE WRITTEN ({error}): capability checks, approvals and changes are refused \
                 until it can; retrying every {}s",
                TICK.as_secs()
            );
            Failing {
                origin: principal.to_owned(),
                since: Utc::now(),
                error: error.to_string(),
                lost: BTreeMap::new(),
                last_attempt: Instant::now(),
            }
        });
        *failing.lost.entry(principal.to_owned()).or_default() += lost;
        for open in self.logs.keys() {
            failing.lost.entry(open.clone()).or_default();
        }
        self.logs.clear();
        self.dirty.clear();
        self.shared.failed.store(true, Ordering::SeqCst);
        self.publish_failure();
    }

    fn publish_failure(&self) {
        let failure = self.failure.as_ref().map(|failing| Failure {
            since: failing.since,
            error: failing.error.clone(),
            lost: failing.lost.values().sum(),
        });
        self.shared.health().failure = failure;
    }

    /// Heads, then a check that our files are still in place; a failed trail tries again.
    fn after_batch(&mut self) {
        if let Err(e) = self.heads() {
            self.fail(DEFAULT_PRINCIPAL, &e, 0);
        }
        let moved =
            self.logs.iter().find_map(|(principal, log)| Some((principal.clone(), log.still_in_place().err()?)));
        if let Some((principal, e)) = moved {
            self.fail(&principal, &e, 0);
        }
        if self.failure.as_ref().is_some_and(|failing| failing.last_attempt.elapsed() >= TICK) {
            self.recover();
        }
    }

    /// Reopens every log the failure touched (verifying each again) and records the gap in
    /// each as a break to acknowledge; the trail is writable again if all of that worked.
    fn recover(&mut self) {
        let Some(failing) = self.failure.take() else { return };
        let now = Utc::now();
        let mut recorded = Vec::new();
        let touched = failing.lost.iter().filter(|(principal, lost)| **lost > 0 || **principal == failing.origin);
        let attempt = touched.into_iter().try_for_each(|(principal, lost)| {
            let log = self.log(principal)?;
            let first_bad_seq = log.next_seq();
            let reason = format!(
                "{lost} entr{} could not be written between {} and {}: {}",
                if *lost == 1 { "y" } else { "ies" },
                failing.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                now.to_rfc3339_opts(SecondsFormat::Secs, true),
                failing.error
            );
            let gap = Break { first_bad_seq, reason, recorded_at: None, acknowledged_at: None };
            let entry = log.append_line(chain_broken(principal, &gap, "the audit trail could not be written"))?;
            log.write_head()?;
            recorded.push((principal.clone(), Break { recorded_at: Some(entry.seq), ..gap }));
            Ok::<(), AuditError>(())
        });
        match attempt {
            Ok(()) => {
                let lost: u64 = failing.lost.values().sum();
                log::warn!(
                    "audit trail writable again: {lost} entries were lost since {}; the gap is recorded as a break \
                     to acknowledge (astrid audit acknowledge)",
                    failing.since.to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                self.shared.failed.store(false, Ordering::SeqCst);
                let mut health = self.shared.health();
                health.failure = None;
                for (principal, gap) in recorded {
                    health.logs.entry(principal).or_default().unacknowledged.push(gap);
                }
            }
            Err(e) => {
                self.logs.clear();
                self.failure = Some(Failing { error: e.to_string(), last_attempt: Instant::now(), ..failing });
                self.publish_failure();
            }
        }
    }

    /// The open log of `principal`, opened on first use; a log that is opened is verified
    /// in the background, as it was found.
    fn log(&mut self, principal: &str) -> Result<&AuditLog, AuditError> {
        if !self.logs.contains_key(principal) {
            let log = AuditLog::open(&audit_dir(&self.home, principal), Arc::clone(&self.key))?;
            let mut snapshot = log.snapshot().clone();
            // The home's key was made for the daemon that wrote the first entry of the default
            // log: with the key there and neither file, both were deleted.
            snapshot.expect_entries = self.key_existed && principal == DEFAULT_PRINCIPAL;
            // What the end shows (a cut tail, a head deleted or garbled) is recorded before
            // anything else is appended: the next head would vouch for the log as it is, and a
            // shutdown may cancel the full verification.
            let at_end = log.check_end(snapshot.expect_entries);
            let recorded = match at_end {
                Some(found) => {
                    log::error!(
                        "AUDIT CHAIN OF {principal} IS BROKEN at entry {}: {}",
                        found.first_bad_seq,
                        found.reason
                    );
                    let entry = log.append_line(chain_broken(principal, &found, "seen at its end when opened"))?;
                    log.write_head()?;
                    Some(Break { recorded_at: Some(entry.seq), ..found })
                }
                None => None,
            };
            self.verify(principal, log.dir().to_path_buf(), snapshot);
            if let Some(found) = recorded {
                let mut health = self.shared.health();
                let known = &mut health.logs.entry(principal.to_owned()).or_default().unacknowledged;
                if !known.iter().any(|b| b.first_bad_seq == found.first_bad_seq && b.reason == found.reason) {
                    known.push(found);
                }
            }
            self.logs.insert(principal.to_owned(), log);
        }
        self.logs.get(principal).ok_or_else(|| AuditError::Format(format!("the log of {principal} is not open")))
    }

    /// Starts the verification of `snapshot` on a thread of its own, or holds it until
    /// verification starts (see [`Writer::held`]). Either way the log shows as verifying.
    fn verify(&mut self, principal: &str, dir: PathBuf, snapshot: Snapshot) {
        let generation = {
            let generation = self.generations.entry(principal.to_owned()).or_default();
            *generation += 1;
            *generation
        };
        self.shared.health().logs.entry(principal.to_owned()).or_default().verifying = true;
        match &mut self.held {
            Some(held) => held.push(HeldVerification { principal: principal.to_owned(), dir, snapshot, generation }),
            None => self.spawn_verification(principal, dir, snapshot, generation),
        }
    }

    fn spawn_verification(&mut self, principal: &str, dir: PathBuf, snapshot: Snapshot, generation: u64) {
        let key = self.key.verifying_key();
        let shared = Arc::clone(&self.shared);
        let queue = Arc::clone(&self.queue);
        let name = principal.to_owned();
        let spawned = std::thread::Builder::new().name(format!("audit-verify-{principal}")).spawn(move || {
            let result = match super::verify::verify_snapshot(&dir, &key, &snapshot, Some(&shared.cancel)) {
                Ok(Ok(report)) => Ok(Some(report)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(Cancelled) => Ok(None),
            };
            // The writer may be gone (shutdown): then nobody needs the verdict.
            if let Some(sender) = queue.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = sender.send(Command::Verified { principal: name, generation, result });
            }
        });
        if let Err(e) = spawned {
            let mut health = self.shared.health();
            let log = health.logs.entry(principal.to_owned()).or_default();
            log.verifying = false;
            log.error = Some(format!("cannot start its verification: {e}"));
        }
    }

    /// A verification finished: its new findings are recorded in the log (unless the trail
    /// failed meanwhile: the next open verifies again).
    fn verified(&mut self, principal: &str, generation: u64, result: Result<Option<VerifyReport>, String>) {
        if self.generations.get(principal) != Some(&generation) {
            return;
        }
        let mut report = match result {
            Ok(Some(report)) => report,
            Ok(None) => {
                log::info!("audit chain of {principal}: verification cancelled");
                return;
            }
            Err(e) => {
                log::error!("cannot verify the audit chain of {principal}: {e}");
                let mut health = self.shared.health();
                let log = health.logs.entry(principal.to_owned()).or_default();
                log.verifying = false;
                log.error = Some(e);
                return;
            }
        };
        for found in report.breaks.iter_mut().filter(|b| !b.acknowledged()) {
            match found.recorded_at {
                Some(at) => log::warn!(
                    "audit chain of {principal}: the break at entry {} ({}) recorded at entry {at} is not acknowledged",
                    found.first_bad_seq,
                    found.reason
                ),
                None => {
                    let known = self.shared.health().logs.get(principal).and_then(|log| {
                        log.unacknowledged
                            .iter()
                            .find(|b| b.first_bad_seq == found.first_bad_seq && b.reason == found.reason)
                            .and_then(|b| b.recorded_at)
                    });
                    if let Some(at) = known {
                        // Recorded when the log was opened (what its end showed).
                        found.recorded_at = Some(at);
                        continue;
                    }
                    log::error!(
                        "AUDIT CHAIN OF {principal} IS BROKEN at entry {}: {}",
                        found.first_bad_seq,
                        found.reason
                    );
                    if self.failure.is_none()
                        && let Some(log) = self.logs.get(principal)
                    {
                        match log.append_line(chain_broken(principal, found, "verified when opened by this daemon")) {
                            Ok(entry) => {
                                found.recorded_at = Some(entry.seq);
                                self.dirty.push(principal.to_owned());
                            }
                            Err(e) => {
                                self.fail(principal, &e, 1);
                                break;
                            }
                        }
                    }
                }
            }
        }
        if report.unacknowledged().next().is_none() {
            log::info!("audit chain of {principal}: intact ({} entries)", report.entries);
        }
        let mut health = self.shared.health();
        let log = health.logs.entry(principal.to_owned()).or_default();
        log.verifying = false;
        log.error = None;
        // Breaks recorded since the snapshot was taken (a gap while the trail could not be
        // written) are not in the report: they stay.
        let mut unacknowledged: Vec<Break> = report.unacknowledged().cloned().collect();
        for known in std::mem::take(&mut log.unacknowledged) {
            if !unacknowledged.iter().any(|b| b.first_bad_seq == known.first_bad_seq && b.reason == known.reason) {
                unacknowledged.push(known);
            }
        }
        log.unacknowledged = unacknowledged;
        log.report = Some(report);
    }

    /// Starts the verifications held so far, then opens every principal's log (each is
    /// verified as it is opened).
    fn verify_all(&mut self) {
        for held in self.held.take().unwrap_or_default() {
            self.spawn_verification(&held.principal, held.dir, held.snapshot, held.generation);
        }
        match principals_with_logs(&self.home) {
            Ok(principals) if self.failure.is_none() => {
                for principal in principals {
                    if let Err(e) = self.log(&principal) {
                        self.fail(&principal, &e, 0);
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => log::error!("cannot list the audit logs: {e}"),
        }
        self.shared.health().all_requested = true;
    }

    fn acknowledge(&mut self, session: Uuid, actor: &Actor, note: &str) -> Result<Vec<Acknowledged>, String> {
        if let Some(failing) = &self.failure {
            return Err(self.describe(failing));
        }
        let pending: Vec<(String, Vec<Break>)> = {
            let health = self.shared.health();
            if health.verifying() {
                return Err("the audit trail is still being verified; try again once `astrid status` shows its \
                            verdict"
                    .to_owned());
            }
            health.logs.iter().map(|(principal, log)| (principal.clone(), log.unacknowledged.clone())).collect()
        };
        let mut acknowledged = Vec::new();
        for (principal, breaks) in pending.into_iter().filter(|(_, breaks)| !breaks.is_empty()) {
            let log = self.log(&principal).map_err(|e| e.to_string())?;
            for found in breaks {
                let record = match found.recorded_at {
                    Some(at) => at,
                    None => {
                        log.append_line(chain_broken(&principal, &found, "recorded when acknowledged"))
                            .map_err(|e| e.to_string())?
                            .seq
                    }
                };
                let entry = NewEntry {
                    session,
                    principal: principal.clone(),
                    actor: actor.clone(),
                    action: ACKNOWLEDGE.to_owned(),
                    resource: format!("entry {record}: {}", found.describe()),
                    decision: Decision::Allow,
                    rule: note.to_owned(),
                };
                let ack = log.append_line(entry).map_err(|e| e.to_string())?;
                acknowledged.push((
                    principal.clone(),
                    Break { recorded_at: Some(record), acknowledged_at: Some(ack.seq), ..found },
                ));
            }
            log.write_head().map_err(|e| e.to_string())?;
            log::warn!("audit chain of {principal}: the operator acknowledged its breaks ({note})");
            self.shared.health().logs.entry(principal).or_default().unacknowledged.clear();
        }
        Ok(acknowledged)
    }

    fn heads(&mut self) -> Result<(), AuditError> {
        self.dirty.sort();
        self.dirty.dedup();
        for principal in std::mem::take(&mut self.dirty) {
            if let Some(log) = self.logs.get(&principal) {
                log.write_head()?;
            }
        }
        Ok(())
    }
}

/// The entry that records `found` in the log of `principal`.
fn chain_broken(principal: &str, found: &Break, rule: &str) -> NewEntry {
    NewEntry {
        session: Uuid::nil(),
        principal: principal.to_owned(),
        actor: Actor::Kernel,
        action: CHAIN_BROKEN.to_owned(),
        resource: found.describe(),
        decision: Decision::Info,
        rule: rule.to_owned(),
    }
}

/// Principals that have an audit log or a head (of whatever kind: a directory where the
/// log should be is a finding, not an absence), sorted.
pub fn principals_with_logs(home: &AstridHome) -> Result<Vec<String>, AuditError> {
    let dir = home.root().join("home");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io("read", &dir, e)),
    };
    let mut principals: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| {
            let dir = audit_dir(home, p);
            [LOG_FILE, HEAD_FILE].iter().any(|name| fs::symlink_metadata(dir.join(name)).is_ok())
        })
        .collect();
    principals.sort();
    Ok(principals)
}
