//! [`KvStore`] over sled 0.34.7: the only file that knows the engine.
//!
//! Every write that changes a namespace's bytes runs in one sled transaction over the `kv`
//! and `usage` trees. sled 0.34 runs each transaction under a process-wide exclusive lock
//! (plain reads, writes and scan steps take it shared), and seals the transaction's writes as
//! one batch in its log, so the read-check-write of the quota is serialized against every
//! other access and recovered all-or-nothing after a crash. Transactions here touch a handful
//! of keys (at most [`CLEAR_CHUNK`]), so the lock is held briefly.

use std::fmt;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::error::shown;
use super::{KvError, MAX_KEY, MAX_VALUE, Namespace};
use crate::home::AstridHome;

/// How many keys one `clear_prefix` transaction removes, bounding the memory a transaction
/// buffers and the time it holds sled's transaction lock.
const CLEAR_CHUNK: usize = 512;

/// Settings of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    /// sled's page cache. Its own default is 1 GiB; the state we keep is small, and sled's RSS
    /// tracks this number.
    pub cache_bytes: u64,
    /// Most bytes (keys + values) one namespace may hold, so one capsule cannot fill the disk
    /// or the cache for everyone.
    pub namespace_quota_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self { cache_bytes: 8 * 1024 * 1024, namespace_quota_bytes: 64 * 1024 * 1024 }
    }
}

/// The KV store. Cheap to clone; clones share one database handle, which is flushed when the
/// last clone is dropped (a safety net: callers still flush at their durability points).
///
/// A store may still be opening (see [`KvStore::opening`]): every operation then waits for
/// the open to end, and fails with its error if it failed.
#[derive(Clone)]
pub struct KvStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    quota: u64,
    /// The open database, or why it could not be opened; empty while it opens.
    engine: OnceLock<Result<Engine, String>>,
    /// Starts an open that waits to be asked for ([`KvStore::opening`]); taken when it is.
    /// Dropped with the store, which ends a waiting open thread.
    start: Mutex<Option<mpsc::SyncSender<()>>>,
}

/// The open database.
struct Engine {
    db: sled::Db,
    kv: sled::Tree,
    usage: sled::Tree,
    path: PathBuf,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            log::error!("KV store {}: final flush failed: {e}", self.path.display());
        }
    }
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore").field("path", &self.shared.path).field("quota", &self.shared.quota).finish()
    }
}

/// What a transactional write found and did.
#[derive(Clone, Copy)]
struct Outcome {
    /// The key had a value before.
    existed: bool,
    /// The expectation held and the write happened.
    applied: bool,
}

impl KvStore {
    /// Opens `var/state.db` of `home`, creating it (mode 0700) if needed. Open it once per
    /// process and clone the handle: a second open fails with [`KvError::Locked`], and sled
    /// releases its lock only some time after the last handle is dropped.
    pub fn open(home: &AstridHome, config: KvConfig) -> Result<Self, KvError> {
        let path = database_dir(home)?;
        let engine = Engine::open(home, &path, config)?;
        let shared = Shared {
            path,
            quota: config.namespace_quota_bytes,
            engine: OnceLock::from(Ok(engine)),
            start: Mutex::new(None),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// [`KvStore::open`] on a thread of its own, begun by the first operation that needs the
    /// store or by [`KvStore::start_opening`], whichever comes first. The store is returned
    /// at once; its operations wait for the open, and [`KvStore::opened`] says how it ended.
    /// The directory is made (or refused) before this returns.
    ///
    /// Why not at once: sled's recovery reads its last segment, then writes and syncs the
    /// rest of it (512 KiB). Run beside the daemon's boot, that sync held up the boot's own
    /// small file operations behind it in the file system's journal (restarts measured
    /// 5–12 ms, against 3–4 ms without it), so the daemon starts it once ready.
    ///
    /// While another process still holds the database (a daemon that is exiting releases
    /// sled's lock last), the open is retried for up to `release_wait`.
    pub fn opening(home: &AstridHome, config: KvConfig, release_wait: Duration) -> Result<Self, KvError> {
        let path = database_dir(home)?;
        let (start, asked) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            path: path.clone(),
            quota: config.namespace_quota_bytes,
            engine: OnceLock::new(),
            start: Mutex::new(Some(start)),
        });
        // Weak while it waits: a store dropped unopened ends the thread (`recv` fails).
        let (home, waiting) = (home.clone(), Arc::downgrade(&shared));
        let open = move || {
            if asked.recv().is_err() {
                return;
            }
            let Some(filled) = waiting.upgrade() else { return };
            let started = Instant::now();
            let mut waited = false;
            let engine = loop {
                // A panic in sled must end the open too: every operation waits for it.
                let attempt = std::panic::catch_unwind(|| Engine::open(&home, &path, config))
                    .unwrap_or_else(|_| Err(open_error(&path, "sled panicked while opening it".to_owned())));
                match attempt {
                    Err(KvError::Locked { .. }) if started.elapsed() < release_wait => {
                        waited = true;
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    other => break other,
                }
            };
            if waited {
                log::info!("the previous daemon released the KV store after {:.0?}", started.elapsed());
            }
            let _ = filled.engine.set(engine.map_err(|e| match e {
                KvError::Storage(message) => message,
                other => other.to_string(),
            }));
        };
        if let Err(e) = std::thread::Builder::new().name("kv-open".to_owned()).spawn(open) {
            let message =
                format!("cannot open the KV database {}: no thread to open it on: {e}", shared.path.display());
            let _ = shared.engine.set(Err(message));
        }
        Ok(Self { shared })
    }

    /// Begins an open that [`KvStore::opening`] left waiting; nothing if it has begun.
    pub fn start_opening(&self) {
        let start = self.shared.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(start) = start {
            // The thread waits for exactly this; if it is gone, `engine` was set as it went.
            let _ = start.send(());
        }
    }

    /// Waits until the store is open; the error is why it could not be opened.
    pub fn opened(&self) -> Result<(), KvError> {
        self.engine().map(|_| ())
    }

    /// The open database, once it is.
    fn engine(&self) -> Result<&Engine, KvError> {
        let engine = match self.shared.engine.get() {
            Some(engine) => engine,
            None => {
                self.start_opening();
                crate::blocking::off_the_worker(|| self.shared.engine.wait())
            }
        };
        engine.as_ref().map_err(|message| KvError::Storage(message.clone()))
    }

    /// The value of `key`, if any.
    pub fn get(&self, namespace: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let entry = entry_key(namespace, key)?;
        let value =
            self.engine()?.kv.get(entry).map_err(|e| KvError::storage("get key", namespace.as_str(), Some(key), e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Sets `key` to `value` (an atomic replace), within the namespace quota.
    pub fn set(&self, namespace: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.write(namespace, key, None, Some(value)).map(|_| ())
    }

    /// Deletes `key`; `false` when it was already absent (deleting is idempotent).
    pub fn delete(&self, namespace: &Namespace, key: &str) -> Result<bool, KvError> {
        self.write(namespace, key, None, None).map(|outcome| outcome.existed)
    }

    /// Sets `key` to `new` (`None` deletes it) only if its value is `expected` (`None` =
    /// absent); `false` when the current value differs. The quota applies as for `set`.
    pub fn compare_and_swap(
        &self,
        namespace: &Namespace,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        self.write(namespace, key, Some(expected), new).map(|outcome| outcome.applied)
    }

    /// Keys of `namespace` that start with `prefix`, sorted by bytes (which is `str` order).
    pub fn list_keys(&self, namespace: &Namespace, prefix: &str) -> Result<Vec<String>, KvError> {
        let skip = namespace.as_str().len() + 1;
        let mut keys = Vec::new();
        for entry in self.engine()?.kv.scan_prefix(scan_key(namespace, prefix)).keys() {
            let entry =
                entry.map_err(|e| KvError::storage("list keys starting with", namespace.as_str(), Some(prefix), e))?;
            keys.push(String::from_utf8_lossy(entry.get(skip..).unwrap_or_default()).into_owned());
        }
        Ok(keys)
    }

    /// Deletes every key of `namespace` that starts with `prefix`; returns how many it
    /// removed. Runs in transactions of at most 512 keys, so a crash may leave a prefix
    /// partly cleared, but never the usage wrong.
    pub fn clear_prefix(&self, namespace: &Namespace, prefix: &str) -> Result<u64, KvError> {
        let fail = |e: sled::Error| KvError::storage("clear keys starting with", namespace.as_str(), Some(prefix), e);
        let mut keys = self.engine()?.kv.scan_prefix(scan_key(namespace, prefix)).keys();
        let mut removed = 0;
        loop {
            let chunk: Result<Vec<_>, _> = keys.by_ref().take(CLEAR_CHUNK).map(|k| k.map(|k| k.to_vec())).collect();
            let chunk = chunk.map_err(fail)?;
            if chunk.is_empty() {
                return Ok(removed);
            }
            removed += self.remove_entries(namespace, prefix, &chunk)?;
        }
    }

    /// Bytes (keys + values) `namespace` holds.
    pub fn usage(&self, namespace: &Namespace) -> Result<u64, KvError> {
        let fail = |message: String| KvError::storage("read the usage", namespace.as_str(), None, message);
        let raw = self.engine()?.usage.get(namespace.as_str()).map_err(|e| fail(e.to_string()))?;
        decode_usage(raw.as_deref()).map_err(fail)
    }

    /// Blocks until every write so far is on disk; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, KvError> {
        let engine = self.engine()?;
        crate::blocking::off_the_worker(|| engine.db.flush())
            .map_err(|e| KvError::Storage(format!("failed to flush the KV database: {e}")))
    }

    /// One transaction over the entry and its namespace's usage. With `expected = Some(e)`,
    /// the write happens only if the current value equals `e`.
    fn write(
        &self,
        namespace: &Namespace,
        key: &str,
        expected: Option<Option<&[u8]>>,
        new: Option<&[u8]>,
    ) -> Result<Outcome, KvError> {
        let entry = entry_key(namespace, key)?;
        if let Some(value) = new
            && value.len() > MAX_VALUE
        {
            return Err(KvError::ValueTooLarge {
                namespace: namespace.to_string(),
                key: shown(key),
                len: value.len(),
                limit: MAX_VALUE,
            });
        }
        let quota = self.shared.quota;
        let engine = self.engine()?;
        let result = (&engine.kv, &engine.usage).transaction(|(kv, usage)| {
            let current = kv.get(&entry)?;
            let existed = current.is_some();
            if expected.is_some_and(|expected| current.as_deref() != expected) {
                return Ok(Outcome { existed, applied: false });
            }
            if !existed && new.is_none() {
                return Ok(Outcome { existed, applied: true });
            }
            let used = read_usage(usage, namespace)?;
            let old = current.as_ref().map_or(0, |v| entry_size(key.len(), v.len()));
            let added = new.map_or(0, |v| entry_size(key.len(), v.len()));
            let next = used.saturating_sub(old).saturating_add(added);
            if added > old && next > quota {
                return Err(ConflictableTransactionError::Abort(KvError::QuotaExceeded {
                    namespace: namespace.to_string(),
                    key: shown(key),
                    used,
                    requested: added - old,
                    quota,
                }));
            }
            match new {
                Some(value) => kv.insert(entry.as_slice(), value)?,
                None => kv.remove(entry.as_slice())?,
            };
            write_usage(usage, namespace, next)?;
            Ok(Outcome { existed, applied: true })
        });
        result.map_err(|e| transaction_error(e, "write key", namespace, key))
    }

    /// Removes `entries` (full keys of `namespace`) in one transaction; returns how many
    /// existed.
    fn remove_entries(&self, namespace: &Namespace, prefix: &str, entries: &[Vec<u8>]) -> Result<u64, KvError> {
        let skip = namespace.as_str().len() + 1;
        let engine = self.engine()?;
        let result = (&engine.kv, &engine.usage).transaction(|(kv, usage)| {
            let (mut removed, mut freed) = (0u64, 0u64);
            for entry in entries {
                if let Some(value) = kv.remove(entry.as_slice())? {
                    removed += 1;
                    freed = freed.saturating_add(entry_size(entry.len().saturating_sub(skip), value.len()));
                }
            }
            if removed > 0 {
                let used = read_usage(usage, namespace)?;
                write_usage(usage, namespace, used.saturating_sub(freed))?;
            }
            Ok(removed)
        });
        result.map_err(|e| transaction_error(e, "clear keys starting with", namespace, prefix))
    }
}

/// `var/state.db` of `home`, made if needed: the directory is 0700 whatever the umask
/// (nothing inside is reachable by anyone else); what sled makes inside is tightened when
/// it is open.
fn database_dir(home: &AstridHome) -> Result<PathBuf, KvError> {
    let path = home.root().join("var").join("state.db");
    crate::home::private_dir_all(&path).map_err(|e| open_error(&path, e.to_string()))?;
    Ok(path)
}

fn open_error(path: &std::path::Path, message: String) -> KvError {
    KvError::Storage(format!("cannot open the KV database {}: {message}", path.display()))
}

impl Engine {
    fn open(home: &AstridHome, path: &std::path::Path, config: KvConfig) -> Result<Self, KvError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if is_lock_error(&io) => KvError::Locked { home: home.root().to_path_buf() },
                other => open_error(path, other.to_string()),
            })?;
        let kv = db.open_tree("kv").map_err(|e| open_error(path, e.to_string()))?;
        let usage = db.open_tree("usage").map_err(|e| open_error(path, e.to_string()))?;
        for tightened in crate::home::tighten_below(path) {
            log::debug!("KV store: {tightened}");
        }
        Ok(Self { db, kv, usage, path: path.to_path_buf() })
    }
}

/// sled reports a held lock as an `Other` I/O error "could not acquire lock on …" wrapping
/// the OS `WouldBlock`; accept either form.
fn is_lock_error(error: &std::io::Error) -> bool {
    error.kind() == ErrorKind::WouldBlock || error.to_string().contains("could not acquire lock")
}

/// The bytes an entry counts against its namespace's quota.
fn entry_size(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64).saturating_add(value_len as u64)
}

type TxResult<T> = Result<T, ConflictableTransactionError<KvError>>;

fn read_usage(usage: &TransactionalTree, namespace: &Namespace) -> TxResult<u64> {
    let raw = usage.get(namespace.as_str())?;
    decode_usage(raw.as_deref()).map_err(|message| {
        ConflictableTransactionError::Abort(KvError::storage("read the usage", namespace.as_str(), None, message))
    })
}

/// Stores `bytes` as the usage of `namespace`; 0 removes the record, so emptied namespaces
/// leave nothing behind.
fn write_usage(usage: &TransactionalTree, namespace: &Namespace, bytes: u64) -> TxResult<()> {
    match bytes {
        0 => usage.remove(namespace.as_str())?,
        _ => usage.insert(namespace.as_str(), &bytes.to_be_bytes())?,
    };
    Ok(())
}

/// A usage record: absent is 0; anything but 8 bytes is corruption, refused rather than read
/// as 0 (which would lift the quota).
fn decode_usage(raw: Option<&[u8]>) -> Result<u64, String> {
    match raw {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| format!("corrupt usage record of {} bytes", bytes.len())),
    }
}

fn transaction_error(error: TransactionError<KvError>, operation: &str, namespace: &Namespace, key: &str) -> KvError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => KvError::storage(operation, namespace.as_str(), Some(key), e),
    }
}

/// `namespace ‖ 0x00 ‖ key`, after checking the key.
fn entry_key(namespace: &Namespace, key: &str) -> Result<Vec<u8>, KvError> {
    if key.is_empty() || key.contains('\0') {
        return Err(KvError::KeyInvalid { namespace: namespace.to_string(), key: shown(key) });
    }
    if key.len() > MAX_KEY {
        return Err(KvError::KeyTooLong { namespace: namespace.to_string(), key: shown(key), len: key.len() });
    }
    Ok(scan_key(namespace, key))
}

/// `namespace ‖ 0x00 ‖ prefix`: every entry of `namespace` whose key starts with `prefix`
/// starts with these bytes, and no entry of another namespace does.
fn scan_key(namespace: &Namespace, prefix: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(namespace.as_str().len() + 1 + prefix.len());
    bytes.extend_from_slice(namespace.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(prefix.as_bytes());
    bytes
}
