//! The KV store: one sled database (`var/state.db`), opened once, behind a narrow API that
//! exposes no sled type, so the engine can be swapped in one module.
//!
//! Layout: tree `kv` holds `namespace ‖ 0x00 ‖ key → value` (namespaces and keys contain no
//! NUL, so a prefix scan of one namespace never reaches another); tree `usage` holds the
//! bytes used per namespace (u64 big-endian), updated in the same transaction as every
//! write, so the quota is exact under concurrency.
//!
//! Durability: sled buffers writes; [`KvStore::flush`] blocks until they are on disk. Callers
//! flush at durability points and before acknowledging a write that must survive a crash.

mod namespace;

use std::path::PathBuf;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use namespace::Namespace;

use crate::home::AstridHome;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1024 * 1024;

/// Why a KV operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Another process holds the database.
    #[error("another astrid daemon owns {}", home.display())]
    Locked {
        /// The home whose database is locked.
        home: PathBuf,
    },
    /// A namespace part is not valid.
    #[error("invalid {what} {part:?} for a KV namespace")]
    InvalidNamespace {
        /// The offending part.
        part: String,
        /// Which part.
        what: &'static str,
    },
    /// The key is empty or contains NUL.
    #[error("invalid key {key:?} in {namespace}: keys are 1-{MAX_KEY} bytes without NUL")]
    KeyInvalid {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
    },
    /// The key is too long.
    #[error("key of {len} bytes in {namespace} exceeds {MAX_KEY} bytes")]
    KeyTooLong {
        /// The namespace.
        namespace: String,
        /// Its length.
        len: usize,
    },
    /// The value is too large.
    #[error("value of {len} bytes for {namespace}/{key} exceeds {MAX_VALUE} bytes")]
    ValueTooLarge {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// Its length.
        len: usize,
    },
    /// The namespace would exceed its quota.
    #[error("quota of {namespace} exceeded: {used} bytes used, {requested} more requested, quota {quota}")]
    QuotaExceeded {
        /// The namespace.
        namespace: String,
        /// Bytes in use.
        used: u64,
        /// Bytes the write would add.
        requested: u64,
        /// The quota.
        quota: u64,
    },
    /// The engine failed.
    #[error("KV storage error: {0}")]
    Storage(String),
}

impl From<sled::Error> for KvError {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

/// Settings of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    /// sled page cache (its default is 1 GiB; we need little).
    pub cache_bytes: u64,
    /// Most bytes (keys + values) one namespace may hold.
    pub namespace_quota_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self { cache_bytes: 8 * 1024 * 1024, namespace_quota_bytes: 64 * 1024 * 1024 }
    }
}

/// The store. Cheap to clone; clones share the database.
#[derive(Debug, Clone)]
pub struct KvStore {
    db: sled::Db,
    kv: sled::Tree,
    usage: sled::Tree,
    quota: u64,
}

impl KvStore {
    /// Opens `var/state.db` of `home`.
    pub fn open(home: &AstridHome, config: KvConfig) -> Result<Self, KvError> {
        let path = home.root().join("var").join("state.db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match &e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                KvError::Locked { home: home.root().to_path_buf() }
            }
            _ => KvError::Storage(format!("cannot open {}: {e}", path.display())),
        })?;
        let kv = db.open_tree("kv")?;
        let usage = db.open_tree("usage")?;
        Ok(Self { db, kv, usage, quota: config.namespace_quota_bytes })
    }

    /// The value of `key`, if any.
    pub fn get(&self, namespace: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.kv.get(full_key(namespace, key)?)?.map(|v| v.to_vec()))
    }

    /// Sets `key` to `value` (atomic replace), within the namespace quota.
    pub fn set(&self, namespace: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError> {
        check_value(namespace, key, value)?;
        self.swap(namespace, key, None, Some(value)).map(|_| ())
    }

    /// Deletes `key`; `false` when it was absent.
    pub fn delete(&self, namespace: &Namespace, key: &str) -> Result<bool, KvError> {
        let existed = self.get(namespace, key)?.is_some();
        self.swap(namespace, key, None, None)?;
        Ok(existed)
    }

    /// Sets `key` to `new` (or deletes it) only if its value is `expected` (absent = `None`).
    pub fn compare_and_swap(
        &self,
        namespace: &Namespace,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        if let Some(value) = new {
            check_value(namespace, key, value)?;
        }
        self.swap(namespace, key, Some(expected), new)
    }

    /// One transaction over the value and the namespace's usage. With `expected = Some(e)`,
    /// the write happens only if the current value equals `e`.
    fn swap(
        &self,
        namespace: &Namespace,
        key: &str,
        expected: Option<Option<&[u8]>>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        let full = full_key(namespace, key)?;
        let quota = self.quota;
        let result = (&self.kv, &self.usage).transaction(|(kv, usage)| {
            let current = kv.get(&full)?;
            if let Some(expected) = expected
                && current.as_deref() != expected
            {
                return Ok(false);
            }
            let used = usage.get(namespace.as_str())?.map_or(0, |v| decode_u64(&v));
            let old = current.as_ref().map_or(0, |v| (key.len() + v.len()) as u64);
            let added = new.map_or(0, |v| (key.len() + v.len()) as u64);
            let next = used.saturating_sub(old) + added;
            if added > old && next > quota {
                return Err(ConflictableTransactionError::Abort(KvError::QuotaExceeded {
                    namespace: namespace.to_string(),
                    used,
                    requested: added - old,
                    quota,
                }));
            }
            match new {
                Some(value) => kv.insert(full.as_slice(), value)?,
                None => kv.remove(full.as_slice())?,
            };
            usage.insert(namespace.as_str(), &next.to_be_bytes())?;
            Ok(true)
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        })
    }

    /// Keys of `namespace` starting with `prefix`, sorted.
    pub fn list_keys(&self, namespace: &Namespace, prefix: &str) -> Result<Vec<String>, KvError> {
        let scan = scan_prefix(namespace, prefix);
        let skip = namespace.as_str().len() + 1;
        self.kv.scan_prefix(scan).keys().map(|k| Ok(String::from_utf8_lossy(&k?[skip..]).into_owned())).collect()
    }

    /// Deletes every key of `namespace` starting with `prefix`; returns how many.
    pub fn clear_prefix(&self, namespace: &Namespace, prefix: &str) -> Result<u64, KvError> {
        let mut removed = 0;
        for key in self.list_keys(namespace, prefix)? {
            if self.delete(namespace, &key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes (keys + values) held by `namespace`.
    pub fn usage(&self, namespace: &Namespace) -> Result<u64, KvError> {
        Ok(self.usage.get(namespace.as_str())?.map_or(0, |v| decode_u64(&v)))
    }

    /// Blocks until every write so far is on disk; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, KvError> {
        Ok(self.db.flush()?)
    }
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn full_key(namespace: &Namespace, key: &str) -> Result<Vec<u8>, KvError> {
    if key.is_empty() || key.contains('\0') {
        return Err(KvError::KeyInvalid { namespace: namespace.to_string(), key: key.to_owned() });
    }
    if key.len() > MAX_KEY {
        return Err(KvError::KeyTooLong { namespace: namespace.to_string(), len: key.len() });
    }
    Ok(scan_prefix(namespace, key))
}

fn scan_prefix(namespace: &Namespace, prefix: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(namespace.as_str().len() + 1 + prefix.len());
    bytes.extend_from_slice(namespace.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(prefix.as_bytes());
    bytes
}

fn check_value(namespace: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE {
        return Err(KvError::ValueTooLarge { namespace: namespace.to_string(), key: key.to_owned(), len: value.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(quota: u64) -> (tempfile::TempDir, KvStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path());
        let store =
            KvStore::open(&home, KvConfig { cache_bytes: 1 << 20, namespace_quota_bytes: quota }).expect("open");
        (tmp, store)
    }

    fn ns(capsule: &str) -> Namespace {
        Namespace::capsule("default", capsule).expect("ns")
    }

    #[test]
    fn operations_stay_inside_their_namespace() {
        let (_tmp, kv) = store(1 << 20);
        let (x, xy) = (ns("x"), ns("xy"));
        kv.set(&x, "a", b"1").expect("set");
        kv.set(&x, "ab", b"2").expect("set");
        kv.set(&xy, "a", b"3").expect("set");
        assert_eq!(kv.get(&x, "a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.list_keys(&x, "").expect("list"), vec!["a", "ab"]);
        assert_eq!(kv.list_keys(&x, "ab").expect("list"), vec!["ab"]);
        assert_eq!(kv.clear_prefix(&x, "a").expect("clear"), 2);
        assert_eq!(kv.get(&xy, "a").expect("get"), Some(b"3".to_vec()));
        assert!(!kv.delete(&x, "a").expect("delete"));
        assert!(kv.delete(&xy, "a").expect("delete"));
        assert!(kv.flush().is_ok());
    }

    #[test]
    fn limits_are_typed_errors() {
        let (_tmp, kv) = store(100);
        let x = ns("x");
        assert!(matches!(kv.set(&x, "", b"v"), Err(KvError::KeyInvalid { .. })));
        assert!(matches!(kv.set(&x, "a\0b", b"v"), Err(KvError::KeyInvalid { .. })));
        assert!(matches!(kv.set(&x, &"k".repeat(257), b"v"), Err(KvError::KeyTooLong { len: 257, .. })));
        let big = vec![0u8; MAX_VALUE + 1];
        assert!(matches!(kv.set(&x, "k", &big), Err(KvError::ValueTooLarge { .. })));
        kv.set(&x, "k", &[0u8; 90]).expect("fits");
        assert!(matches!(kv.set(&x, "j", &[0u8; 20]), Err(KvError::QuotaExceeded { used: 91, .. })));
        kv.set(&x, "k", &[0u8; 10]).expect("shrinking is fine");
        assert_eq!(kv.usage(&x).expect("usage"), 11);
        kv.set(&x, "j", &[0u8; 20]).expect("now it fits");
        assert_eq!(kv.clear_prefix(&x, "").expect("clear"), 2);
        assert_eq!(kv.usage(&x).expect("usage"), 0);
    }

    #[test]
    fn compare_and_swap_counts_exactly_under_contention() {
        let (_tmp, kv) = store(1 << 20);
        let x = ns("x");
        assert!(kv.compare_and_swap(&x, "n", None, Some(b"0")).expect("create"));
        assert!(!kv.compare_and_swap(&x, "n", None, Some(b"0")).expect("exists"));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (kv, x) = (kv.clone(), x.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        loop {
                            let current = kv.get(&x, "n").expect("get").expect("present");
                            let next = (String::from_utf8_lossy(&current).parse::<u64>().expect("num") + 1).to_string();
                            if kv.compare_and_swap(&x, "n", Some(&current), Some(next.as_bytes())).expect("cas") {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(kv.get(&x, "n").expect("get"), Some(b"400".to_vec()));
        assert_eq!(kv.usage(&x).expect("usage"), 4);
        assert!(kv.compare_and_swap(&x, "n", Some(b"400"), None).expect("delete"));
        assert_eq!(kv.usage(&x).expect("usage"), 0);
    }

    #[test]
    fn a_second_open_reports_the_owning_daemon() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = AstridHome::at(tmp.path());
        let _first = KvStore::open(&home, KvConfig::default()).expect("open");
        let err = KvStore::open(&home, KvConfig::default()).expect_err("locked");
        assert_eq!(err.to_string(), format!("another astrid daemon owns {}", tmp.path().display()));
    }
}
