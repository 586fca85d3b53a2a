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
//! A log is verified when the writer first opens it, before this process appends anything:
//! that is the only moment the verdict is free of races with our own writes, and the only
//! moment a tail cut while the daemon was down is still visible (the next head written would
//! vouch for the shortened log). A broken chain is logged, kept for `GetStatus`, and recorded
//! in the log itself as an `audit.chain_broken` entry so the evidence outlives the head.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use chrono::Utc;
use uuid::Uuid;

use super::entry::{Actor, AuditEntry, Decision, Head, Line, NewEntry, entry_hash, head_message, hex, unhex};
use super::key::RuntimeKey;
use super::verify::{ChainStatus, VerifyReport, read_lines, verify_log};
use super::{AuditError, HEAD_FILE, LOG_FILE};
use crate::home::AstridHome;

/// The head is written in place at a fixed size, so one write replaces it whole.
const HEAD_SIZE: usize = 320;

struct Tail {
    seq: u64,
    hash: String,
    log: File,
    head: File,
}

/// The log of one principal.
pub struct AuditLog {
    dir: PathBuf,
    key: Arc<RuntimeKey>,
    tail: Mutex<Tail>,
    verdict_at_open: VerifyReport,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, verifying it and learning the last seq and hash.
    ///
    /// The caller must be the log's only writer (the daemon's singleton lock guarantees it).
    pub fn open(dir: &Path, key: Arc<RuntimeKey>) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io("create", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| AuditError::io("chmod", dir, e))?;
        let verdict_at_open = verify_log(dir, &key.verifying_key())?;
        let log_path = dir.join(LOG_FILE);
        let (seq, hash) = match read_lines(&log_path)?.last() {
            Some(Ok(line)) => (line.entry.seq, line.hash.clone()),
            _ => (0, hex(&[0u8; 32])),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| AuditError::io("open", &log_path, e))?;
        let head_path = dir.join(HEAD_FILE);
        let head = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&head_path)
            .map_err(|e| AuditError::io("open", &head_path, e))?;
        Ok(Self { dir: dir.to_path_buf(), key, tail: Mutex::new(Tail { seq, hash, log, head }), verdict_at_open })
    }

    /// The verdict on the log as it was found, before this process appended to it.
    pub fn verdict_at_open(&self) -> &VerifyReport {
        &self.verdict_at_open
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
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
            action: new.action,
            resource: new.resource,
            decision: new.decision,
            rule: new.rule,
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
}

/// The kernel's audit handle: one log per principal, opened on first use, written by a
/// dedicated thread.
pub struct AuditTrail {
    home: AstridHome,
    queue: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Command {
    Append(NewEntry),
    Sync(mpsc::SyncSender<Result<(), String>>),
    Verdicts(mpsc::SyncSender<Result<Vec<(String, VerifyReport)>, String>>),
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

impl AuditTrail {
    /// Loads (or creates) `keys/runtime.key` and starts the writer thread.
    pub fn open(home: &AstridHome) -> Result<Self, AuditError> {
        let key = Arc::new(RuntimeKey::load_or_create(&home.root().join("keys").join("runtime.key"))?);
        let (queue, commands) = mpsc::channel();
        let writer = Writer { home: home.clone(), key, logs: HashMap::new() };
        let handle = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(&commands))
            .map_err(|e| AuditError::io("start the writer thread for", &home.root().join("keys"), e))?;
        Ok(Self { home: home.clone(), queue: Mutex::new(Some(queue)), writer: Mutex::new(Some(handle)) })
    }

    fn send(&self, command: Command) -> Result<(), AuditError> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sender = queue.as_ref().ok_or_else(|| AuditError::Format("the audit writer has stopped".to_owned()))?;
        sender.send(command).map_err(|_| AuditError::Format("the audit writer has stopped".to_owned()))
    }

    /// Hands `entry` to the writer (in order); it is on disk once [`AuditTrail::sync`] returns.
    pub fn record(&self, entry: NewEntry) -> Result<(), AuditError> {
        self.send(Command::Append(entry))
    }

    /// Waits until every entry handed over is written, heads included, and fsynced.
    pub fn sync(&self) -> Result<(), AuditError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.send(Command::Sync(reply))?;
        done.recv()
            .map_err(|_| AuditError::Format("the audit writer has stopped".to_owned()))?
            .map_err(AuditError::Format)
    }

    /// Every principal's log as it was found when this process first opened it (the writer
    /// opens, and so verifies, any log it has not touched yet). Entries appended since were
    /// written by this process; `astrid audit verify` re-reads the files as they are now.
    pub fn verify_all(&self) -> Result<Vec<(String, VerifyReport)>, AuditError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.send(Command::Verdicts(reply))?;
        done.recv()
            .map_err(|_| AuditError::Format("the audit writer has stopped".to_owned()))?
            .map_err(AuditError::Format)
    }
}

impl Drop for AuditTrail {
    /// Closing the queue lets the writer finish what is queued; we wait for it.
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

struct Writer {
    home: AstridHome,
    key: Arc<RuntimeKey>,
    logs: HashMap<String, AuditLog>,
}

impl Writer {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            let mut dirty = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(entry) => {
                        let principal = entry.principal.clone();
                        match self.append(entry) {
                            Ok(()) => dirty.push(principal),
                            Err(e) => log::error!("AUDIT WRITE FAILED for {principal}: {e}"),
                        }
                    }
                    Command::Sync(reply) => {
                        let result =
                            self.heads(&mut dirty).and_then(|()| self.logs.values().try_for_each(AuditLog::sync));
                        let _ = reply.send(result.map_err(|e| e.to_string()));
                    }
                    Command::Verdicts(reply) => {
                        let result = self.heads(&mut dirty).and_then(|()| self.verdicts());
                        let _ = reply.send(result.map_err(|e| e.to_string()));
                    }
                }
                next = commands.try_recv().ok();
            }
            if let Err(e) = self.heads(&mut dirty) {
                log::error!("AUDIT HEAD WRITE FAILED: {e}");
            }
        }
        let _ = self.logs.values().try_for_each(AuditLog::sync);
    }

    fn append(&mut self, entry: NewEntry) -> Result<(), AuditError> {
        self.log(&entry.principal)?.append_line(entry).map(|_| ())
    }

    /// The open log of `principal`, opened (and verified) on first use. A broken chain is
    /// recorded in the log itself, so the finding survives the heads written after it.
    fn log(&mut self, principal: &str) -> Result<&AuditLog, AuditError> {
        if !self.logs.contains_key(principal) {
            let log = AuditLog::open(&audit_dir(&self.home, principal), Arc::clone(&self.key))?;
            if let ChainStatus::Tampered { first_bad_seq, reason } = &log.verdict_at_open().status {
                log::error!("AUDIT CHAIN OF {principal} IS BROKEN at entry {first_bad_seq}: {reason}");
                log.append_line(NewEntry {
                    session: Uuid::nil(),
                    principal: principal.to_owned(),
                    actor: Actor::Kernel,
                    action: "audit.chain_broken".to_owned(),
                    resource: format!("entry {first_bad_seq}: {reason}"),
                    decision: Decision::Info,
                    rule: "verified when first opened by this daemon".to_owned(),
                })?;
                log.write_head()?;
            }
            self.logs.insert(principal.to_owned(), log);
        }
        self.logs.get(principal).ok_or_else(|| AuditError::Format(format!("the log of {principal} is not open")))
    }

    /// The verdict at open of every principal with a log, opening the ones not yet open.
    fn verdicts(&mut self) -> Result<Vec<(String, VerifyReport)>, AuditError> {
        principals_with_logs(&self.home)?
            .into_iter()
            .map(|principal| Ok((principal.clone(), self.log(&principal)?.verdict_at_open().clone())))
            .collect()
    }

    fn heads(&mut self, dirty: &mut Vec<String>) -> Result<(), AuditError> {
        dirty.sort();
        dirty.dedup();
        for principal in dirty.drain(..) {
            if let Some(log) = self.logs.get(&principal) {
                log.write_head()?;
            }
        }
        Ok(())
    }
}

/// Principals that have an audit log, sorted.
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
        .filter(|p| audit_dir(home, p).join(LOG_FILE).is_file())
        .collect();
    principals.sort();
    Ok(principals)
}
