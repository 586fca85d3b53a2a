//! Appending to a principal's log, and the trail that routes entries to principals.
//!
//! Each append is one `write` of one line to a file opened in append mode, followed by one
//! positional write of the fixed-size head; both survive a SIGKILL of the daemon as soon as
//! the calls return (the page cache belongs to the kernel). [`AuditTrail::sync`] fsyncs, at
//! shutdown, for power loss.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use uuid::Uuid;

use super::entry::{AuditEntry, Head, Line, NewEntry, entry_hash, head_message, hex};
use super::key::RuntimeKey;
use super::verify::{VerifyReport, read_lines, verify_log};
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
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, learning the last seq and hash.
    pub fn open(dir: &Path, key: Arc<RuntimeKey>) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io("create", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| AuditError::io("chmod", dir, e))?;
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
        Ok(Self { dir: dir.to_path_buf(), key, tail: Mutex::new(Tail { seq, hash, log, head }) })
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an entry, chained to the previous one and signed.
    pub fn append(&self, new: NewEntry) -> Result<AuditEntry, AuditError> {
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
        let head = Head {
            seq: entry.seq,
            hash: line.hash.clone(),
            sig: hex(&self.key.sign(&head_message(entry.seq, hash.as_bytes())).to_bytes()),
        };
        let mut head_bytes = serde_json::to_vec(&head).map_err(|e| AuditError::Format(e.to_string()))?;
        head_bytes.resize(HEAD_SIZE, b' ');
        let head_path = self.dir.join(HEAD_FILE);
        tail.head.write_all_at(&head_bytes, 0).map_err(|e| AuditError::io("write", &head_path, e))?;
        tail.seq = entry.seq;
        tail.hash = line.hash;
        Ok(entry)
    }

    /// Forces the log and head to disk.
    pub fn sync(&self) -> Result<(), AuditError> {
        let tail = self.tail();
        tail.log.sync_data().map_err(|e| AuditError::io("fsync", &self.dir.join(LOG_FILE), e))?;
        tail.head.sync_data().map_err(|e| AuditError::io("fsync", &self.dir.join(HEAD_FILE), e))
    }
}

/// The kernel's audit handle: one log per principal, opened on first use.
pub struct AuditTrail {
    home: AstridHome,
    key: Arc<RuntimeKey>,
    logs: Mutex<HashMap<String, Arc<AuditLog>>>,
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
    /// Loads (or creates) `keys/runtime.key`.
    pub fn open(home: &AstridHome) -> Result<Self, AuditError> {
        let key = RuntimeKey::load_or_create(&home.root().join("keys").join("runtime.key"))?;
        Ok(Self { home: home.clone(), key: Arc::new(key), logs: Mutex::new(HashMap::new()) })
    }

    fn log_for(&self, principal: &str) -> Result<Arc<AuditLog>, AuditError> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = logs.get(principal) {
            return Ok(Arc::clone(log));
        }
        let log = Arc::new(AuditLog::open(&audit_dir(&self.home, principal), Arc::clone(&self.key))?);
        logs.insert(principal.to_owned(), Arc::clone(&log));
        Ok(log)
    }

    /// Appends `entry` to its principal's log.
    pub fn record(&self, entry: NewEntry) -> Result<AuditEntry, AuditError> {
        self.log_for(&entry.principal.clone())?.append(entry)
    }

    /// Verifies every principal's log.
    pub fn verify_all(&self) -> Result<Vec<(String, VerifyReport)>, AuditError> {
        let key = self.key.verifying_key();
        principals_with_logs(&self.home)?
            .into_iter()
            .map(|principal| Ok((principal.clone(), verify_log(&audit_dir(&self.home, &principal), &key)?)))
            .collect()
    }

    /// fsyncs every open log.
    pub fn sync(&self) -> Result<(), AuditError> {
        let logs: Vec<Arc<AuditLog>> = self.logs.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        logs.iter().try_for_each(|log| log.sync())
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
