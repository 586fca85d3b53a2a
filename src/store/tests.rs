//! Tests of the store against real sled databases, one fresh temp home per test (sled
//! releases its lock asynchronously, so no path is reopened quickly).

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::home::AstridHome;

const MIB: u64 = 1024 * 1024;

fn open(quota: u64) -> (tempfile::TempDir, KvStore) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KvStore::open(&AstridHome::at(tmp.path()), config(quota)).expect("open");
    (tmp, store)
}

fn config(quota: u64) -> KvConfig {
    KvConfig { cache_bytes: MIB, namespace_quota_bytes: quota }
}

fn ns(principal: &str, capsule: &str) -> Namespace {
    Namespace::capsule(principal, capsule).expect("namespace")
}

/// Bytes of keys plus values, recomputed from the entries themselves.
fn recount(kv: &KvStore, namespace: &Namespace) -> u64 {
    let keys = kv.list_keys(namespace, "").expect("list");
    keys.iter().map(|k| (k.len() + kv.get(namespace, k).expect("get").expect("listed").len()) as u64).sum()
}

#[test]
fn config_defaults_are_small() {
    assert_eq!(KvConfig::default(), KvConfig { cache_bytes: 8 * MIB, namespace_quota_bytes: 64 * MIB });
}

#[test]
fn every_operation_round_trips() {
    let (_tmp, kv) = open(MIB);
    let x = ns("default", "x");
    assert_eq!(kv.get(&x, "a").expect("get"), None);
    kv.set(&x, "b", b"2").expect("set");
    kv.set(&x, "a", b"1").expect("set");
    kv.set(&x, "a", b"one").expect("overwrite");
    kv.set(&x, "empty", b"").expect("empty value");
    assert_eq!(kv.get(&x, "a").expect("get"), Some(b"one".to_vec()));
    assert_eq!(kv.get(&x, "empty").expect("get"), Some(Vec::new()));
    assert_eq!(kv.list_keys(&x, "").expect("list"), ["a", "b", "empty"]);
    assert_eq!(kv.usage(&x).expect("usage"), (1 + 3) + (1 + 1) + 5);
    assert!(kv.delete(&x, "a").expect("delete"));
    assert!(!kv.delete(&x, "a").expect("delete is idempotent"));
    assert_eq!(kv.get(&x, "a").expect("get"), None);
    assert_eq!(kv.clear_prefix(&x, "").expect("clear"), 2);
    assert_eq!(kv.clear_prefix(&x, "").expect("clear again"), 0);
    assert_eq!(kv.usage(&x).expect("usage"), 0);
    kv.set(&x, "k", b"v").expect("set");
    assert!(kv.flush().is_ok());
}

#[test]
fn hostile_keys_round_trip_verbatim() {
    let (_tmp, kv) = open(MIB);
    let x = ns("default", "x");
    let keys = ["../..", "a:capsule:y", "\u{ff}", "ключ", "\u{1f600}", "\x01", "a\nb", " ", "\u{10ffff}"];
    for key in keys {
        kv.set(&x, key, key.as_bytes()).expect("set");
    }
    let mut sorted: Vec<_> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    assert_eq!(kv.list_keys(&x, "").expect("list"), sorted);
    for key in keys {
        assert_eq!(kv.get(&x, key).expect("get").as_deref(), Some(key.as_bytes()));
    }
    assert_eq!(kv.list_keys(&x, "\0").expect("NUL prefix matches nothing"), Vec::<String>::new());
    assert_eq!(kv.clear_prefix(&x, &"k".repeat(1000)).expect("long prefix matches nothing"), 0);
}

#[test]
fn namespaces_sharing_bytes_never_see_each_other() {
    let (_tmp, kv) = open(MIB);
    let (x, xy, other, op) = (ns("a", "x"), ns("a", "xy"), ns("b", "x"), Namespace::operator("a").expect("ns"));
    for namespace in [&x, &xy, &other, &op] {
        kv.set(namespace, "k1", namespace.as_str().as_bytes()).expect("set");
        kv.set(namespace, "k2", b"v").expect("set");
    }
    kv.set(&xy, "other", b"v").expect("set");
    assert_eq!(kv.get(&x, "k1").expect("get").as_deref(), Some(b"a:capsule:x".as_slice()));
    assert_eq!(kv.get(&x, "other").expect("get"), None);
    assert_eq!(kv.list_keys(&x, "").expect("list"), ["k1", "k2"]);
    assert_eq!(kv.list_keys(&x, "k").expect("list"), ["k1", "k2"]);
    assert_eq!(kv.list_keys(&x, "k2").expect("list"), ["k2"]);
    assert_eq!(kv.list_keys(&x, "o").expect("list"), Vec::<String>::new());
    assert_eq!(kv.clear_prefix(&x, "").expect("clear"), 2);
    assert_eq!(kv.list_keys(&x, "").expect("list"), Vec::<String>::new());
    assert_eq!(kv.list_keys(&xy, "").expect("list"), ["k1", "k2", "other"]);
    assert_eq!(kv.clear_prefix(&xy, "k").expect("clear"), 2);
    assert_eq!(kv.list_keys(&xy, "").expect("list"), ["other"]);
    for namespace in [&other, &op] {
        assert_eq!(kv.list_keys(namespace, "").expect("list"), ["k1", "k2"]);
        assert_eq!(kv.usage(namespace).expect("usage"), recount(&kv, namespace));
    }
    assert_eq!(kv.usage(&x).expect("usage"), 0);
    assert_eq!(kv.usage(&xy).expect("usage"), 6);
}

#[test]
fn clear_prefix_spans_several_transactions() {
    let (_tmp, kv) = open(MIB);
    let (x, y) = (ns("default", "x"), ns("default", "y"));
    for i in 0..1200 {
        kv.set(&x, &format!("p{i:04}"), b"v").expect("set");
    }
    kv.set(&x, "q", b"v").expect("set");
    kv.set(&y, "p0001", b"v").expect("set");
    assert_eq!(kv.clear_prefix(&x, "p").expect("clear"), 1200);
    assert_eq!(kv.list_keys(&x, "").expect("list"), ["q"]);
    assert_eq!(kv.usage(&x).expect("usage"), 2);
    assert_eq!(kv.list_keys(&y, "").expect("list"), ["p0001"]);
}

#[test]
fn key_and_value_limits_are_typed_errors_naming_namespace_and_key() {
    let (_tmp, kv) = open(4 * MIB);
    let x = ns("default", "x");
    for key in ["", "a\0b", "\0"] {
        assert!(matches!(kv.set(&x, key, b"v"), Err(KvError::KeyInvalid { .. })), "{key:?}");
        assert!(matches!(kv.get(&x, key), Err(KvError::KeyInvalid { .. })), "{key:?}");
        assert!(matches!(kv.delete(&x, key), Err(KvError::KeyInvalid { .. })), "{key:?}");
        assert!(matches!(kv.compare_and_swap(&x, key, None, None), Err(KvError::KeyInvalid { .. })));
    }
    let err = kv.set(&x, "a\0b", b"v").expect_err("NUL");
    assert_eq!(
        err.to_string(),
        "invalid key \"a\\0b\" in namespace default:capsule:x: keys are 1-256 bytes without NUL"
    );

    kv.set(&x, &"k".repeat(MAX_KEY), b"v").expect("256-byte key fits");
    kv.set(&x, &"é".repeat(MAX_KEY / 2), b"v").expect("256 bytes of 2-byte characters fit");
    let long = "k".repeat(MAX_KEY + 1);
    assert!(matches!(kv.set(&x, &long, b"v"), Err(KvError::KeyTooLong { len: 257, .. })));
    let err = kv.get(&x, &long).expect_err("257 bytes");
    assert!(matches!(err, KvError::KeyTooLong { len: 257, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("key \"kkkk"), "{message}");
    assert!(message.ends_with("k…\" of 257 bytes in namespace default:capsule:x exceeds 256 bytes"), "{message}");
    assert!(message.len() < 200, "the key is shortened: {message}");

    let mut value = vec![7u8; MAX_VALUE];
    kv.set(&x, "big", &value).expect("1 MiB fits");
    value.push(7);
    let err = kv.set(&x, "bigger", &value).expect_err("1 MiB + 1");
    assert!(
        matches!(&err, KvError::ValueTooLarge { len, limit, key, .. }
            if *len == MAX_VALUE + 1 && *limit == MAX_VALUE && key == "bigger"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "value of 1048577 bytes for key \"bigger\" in namespace default:capsule:x exceeds 1048576 bytes"
    );
    assert!(matches!(kv.compare_and_swap(&x, "big", None, Some(&value)), Err(KvError::ValueTooLarge { .. })));
    assert_eq!(kv.get(&x, "bigger").expect("get"), None);
}

#[test]
fn the_quota_is_enforced_and_freed() {
    let (_tmp, kv) = open(100);
    let (x, y) = (ns("default", "x"), ns("default", "y"));
    kv.set(&x, "a", &[0; 89]).expect("fits: 90 bytes");
    kv.set(&x, "b", &[0; 9]).expect("fits: 100 bytes exactly");
    let err = kv.set(&x, "c", b"").expect_err("over quota");
    assert!(
        matches!(&err, KvError::QuotaExceeded { namespace, key, used: 100, requested: 1, quota: 100 }
            if namespace == "default:capsule:x" && key == "c"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "writing key \"c\" would take namespace default:capsule:x over its quota: \
         100 bytes used, 1 more requested, quota 100"
    );
    assert!(matches!(kv.set(&x, "a", &[0; 90]), Err(KvError::QuotaExceeded { requested: 1, .. })));
    assert!(matches!(kv.compare_and_swap(&x, "c", None, Some(b"")), Err(KvError::QuotaExceeded { .. })));
    assert_eq!(kv.get(&x, "c").expect("get"), None, "a refused write changes nothing");
    assert_eq!(kv.get(&x, "a").expect("get"), Some(vec![0; 89]), "a refused write changes nothing");
    kv.set(&x, "a", &[1; 89]).expect("same size at a full quota");
    kv.set(&y, "a", &[0; 99]).expect("quotas are per namespace");

    kv.set(&x, "a", &[0; 9]).expect("shrinking");
    assert_eq!(kv.usage(&x).expect("usage"), 20);
    kv.set(&x, "c", &[0; 79]).expect("fits again");
    assert_eq!(kv.usage(&x).expect("usage"), 100);
    assert!(kv.delete(&x, "c").expect("delete"));
    assert_eq!(kv.usage(&x).expect("usage"), 20);
    kv.set(&x, "c", &[0; 79]).expect("delete freed it");
    assert_eq!(kv.clear_prefix(&x, "").expect("clear"), 3);
    assert_eq!(kv.usage(&x).expect("usage"), 0);
    kv.set(&x, "d", &[0; 99]).expect("clear freed it");
    assert_eq!(kv.usage(&x).expect("usage"), recount(&kv, &x));
}

#[test]
fn compare_and_swap_checks_the_current_value() {
    let (_tmp, kv) = open(MIB);
    let x = ns("default", "x");
    assert!(!kv.compare_and_swap(&x, "n", Some(b"0"), Some(b"1")).expect("absent is not 0"));
    assert!(kv.compare_and_swap(&x, "n", None, None).expect("absent stays absent"));
    assert_eq!(kv.usage(&x).expect("usage"), 0);
    assert!(kv.compare_and_swap(&x, "n", None, Some(b"0")).expect("create when absent"));
    assert!(!kv.compare_and_swap(&x, "n", None, Some(b"9")).expect("present is not absent"));
    assert!(!kv.compare_and_swap(&x, "n", Some(b"1"), Some(b"9")).expect("mismatch"));
    assert!(!kv.compare_and_swap(&x, "n", Some(b""), Some(b"9")).expect("empty is not 0"));
    assert_eq!(kv.get(&x, "n").expect("get"), Some(b"0".to_vec()));
    assert!(kv.compare_and_swap(&x, "n", Some(b"0"), Some(b"10")).expect("match"));
    assert_eq!(kv.get(&x, "n").expect("get"), Some(b"10".to_vec()));
    assert_eq!(kv.usage(&x).expect("usage"), 3);
    assert!(kv.compare_and_swap(&x, "n", Some(b"10"), None).expect("match deletes"));
    assert_eq!(kv.get(&x, "n").expect("get"), None);
    assert_eq!(kv.usage(&x).expect("usage"), 0);
}

#[test]
fn concurrent_compare_and_swap_increments_are_exact() {
    let (_tmp, kv) = open(MIB);
    let x = ns("default", "x");
    let retries = AtomicUsize::new(0);
    let start = Barrier::new(8);
    thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                start.wait();
                for _ in 0..100 {
                    loop {
                        let current = kv.get(&x, "n").expect("get");
                        let n: u64 = current.as_deref().map_or(0, |v| String::from_utf8_lossy(v).parse().expect("n"));
                        let next = (n + 1).to_string();
                        thread::yield_now(); // widen the race between the read and the swap
                        if kv.compare_and_swap(&x, "n", current.as_deref(), Some(next.as_bytes())).expect("cas") {
                            break;
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(kv.get(&x, "n").expect("get"), Some(b"800".to_vec()));
    assert_eq!(kv.usage(&x).expect("usage"), 4);
    eprintln!("{} CAS retries", retries.load(Ordering::Relaxed));
}

#[test]
fn usage_stays_exact_under_concurrent_writers() {
    const QUOTA: u64 = 5 * 1024;
    let (_tmp, kv) = open(QUOTA);
    let x = ns("default", "x");
    let refused = AtomicUsize::new(0);
    let start = Barrier::new(6);
    thread::scope(|s| {
        for t in 0..6u64 {
            let (kv, x, refused, start) = (&kv, &x, &refused, &start);
            s.spawn(move || {
                start.wait();
                let mut seed = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..300 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // 16 keys shared by every thread, values up to 1 KiB against a 5 KiB quota.
                    let key = format!("k{}", seed % 16);
                    match (seed >> 8) % 4 {
                        0 => drop(kv.delete(x, &key).expect("delete")),
                        1 => drop(kv.clear_prefix(x, &key).expect("clear")),
                        _ => match kv.set(x, &key, &vec![1; (seed >> 16) as usize % 1024]) {
                            Ok(()) => {}
                            Err(KvError::QuotaExceeded { .. }) => drop(refused.fetch_add(1, Ordering::Relaxed)),
                            Err(e) => panic!("set: {e}"),
                        },
                    }
                }
            });
        }
    });
    let usage = kv.usage(&x).expect("usage");
    assert_eq!(usage, recount(&kv, &x));
    assert!(usage <= QUOTA);
    eprintln!("usage {usage}, {} writes refused by the quota", refused.load(Ordering::Relaxed));
}

#[test]
fn a_second_open_reports_the_owning_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    let first = KvStore::open(&home, KvConfig::default()).expect("open");
    let err = KvStore::open(&home, KvConfig::default()).expect_err("locked");
    assert!(matches!(&err, KvError::Locked { home } if home == tmp.path()), "{err:?}");
    assert_eq!(err.to_string(), format!("another astrid daemon owns {}", tmp.path().display()));
    first.set(&ns("default", "x"), "k", b"v").expect("the first handle still works");
}

#[test]
fn other_open_failures_are_not_reported_as_a_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("var")).expect("var");
    std::fs::write(tmp.path().join("var/state.db"), b"not a directory").expect("file");
    let err = KvStore::open(&AstridHome::at(tmp.path()), KvConfig::default()).expect_err("not a db");
    assert!(matches!(err, KvError::Storage(_)), "{err:?}");
    assert!(err.to_string().starts_with("KV storage error: cannot open the KV database /"), "{err}");
    assert!(err.to_string().contains("var/state.db"), "{err}");
}

#[test]
fn open_creates_a_private_database_directory() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, _kv) = open(MIB);
    for dir in ["var", "var/state.db"] {
        let mode = std::fs::metadata(tmp.path().join(dir)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir}");
    }
}

/// The daemon's open: the handle exists at once, and waits for the database. A store an
/// exiting daemon still holds is waited for (here: the first handle, dropped later), and
/// what it wrote is there.
#[test]
fn a_store_opening_in_the_background_waits_for_the_holder_and_then_answers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    let x = ns("default", "x");
    let first = KvStore::open(&home, KvConfig::default()).expect("open");
    first.set(&x, "k", b"kept").expect("set");
    first.flush().expect("flush");
    let second = KvStore::opening(&home, KvConfig::default(), Duration::from_secs(30)).expect("opening");
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        drop(first);
    });
    assert_eq!(second.get(&x, "k").expect("get waits for the open"), Some(b"kept".to_vec()));
    second.opened().expect("open");
    release.join().expect("release");
}

/// The daemon's open waits to be asked: nothing touches the database (sled's recovery writes
/// and syncs half a MiB) until `start_opening` or the first operation.
#[test]
fn a_store_opening_waits_until_it_is_asked_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    let db = tmp.path().join("var/state.db");
    let sled_files = || std::fs::read_dir(&db).expect("the directory is made at once").count();
    let store = KvStore::opening(&home, KvConfig::default(), Duration::from_secs(30)).expect("opening");
    // The open thread is blocked on the request, so this holds however long we look.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(sled_files(), 0, "sled was opened before anyone asked");
    store.start_opening();
    store.opened().expect("open");
    assert!(sled_files() > 0, "sled made its files");
    store.start_opening();

    // An operation asks by itself; a store dropped unasked ends its thread and leaves no lock.
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    let x = ns("default", "x");
    let asked = KvStore::opening(&home, KvConfig::default(), Duration::from_secs(30)).expect("opening");
    assert_eq!(asked.get(&x, "k").expect("get opens the store"), None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    drop(KvStore::opening(&home, KvConfig::default(), Duration::from_secs(30)).expect("opening"));
    KvStore::open(&home, KvConfig::default()).expect("nothing holds the database");
}

/// A store sled cannot open: the handle is still made, and every operation fails with the
/// reason (the daemon stops on it: see `boot::watch_state`).
#[test]
fn a_store_that_cannot_be_opened_fails_every_operation_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    std::fs::create_dir_all(tmp.path().join("var/state.db/db")).expect("sled's log file is a directory");
    let store = KvStore::opening(&home, KvConfig::default(), Duration::from_secs(30)).expect("opening");
    let err = store.opened().expect_err("cannot be opened");
    assert!(err.to_string().starts_with("KV storage error: cannot open the KV database /"), "{err}");
    let again = store.get(&ns("default", "x"), "k").expect_err("every operation fails");
    assert_eq!(again.to_string(), err.to_string());
    assert!(store.flush().is_err());
}

/// Reopen in the same process after a drop: sled releases its lock only when its background
/// threads notice, so retry for a while. (The SIGKILL case, a new process, is covered by the
/// integration test `acknowledged_kv_writes_survive_a_sigkill`.)
#[test]
fn flushed_writes_and_usage_survive_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path());
    let (x, y) = (ns("default", "x"), Namespace::system("grants"));
    {
        let kv = KvStore::open(&home, config(100)).expect("open");
        kv.set(&x, "a", b"1").expect("set");
        kv.set(&x, "b", &[0; 90]).expect("set");
        kv.set(&y, "g", b"granted").expect("set");
        assert!(kv.delete(&x, "a").expect("delete"));
        kv.flush().expect("flush");
        let clone = kv.clone();
        drop(kv);
        clone.set(&x, "c", b"3").expect("a clone outlives the original");
        clone.flush().expect("flush");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let kv = loop {
        match KvStore::open(&home, config(100)) {
            Ok(kv) => break kv,
            Err(KvError::Locked { .. }) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(kv.list_keys(&x, "").expect("list"), ["b", "c"]);
    assert_eq!(kv.get(&y, "g").expect("get"), Some(b"granted".to_vec()));
    assert_eq!(kv.usage(&x).expect("usage"), 93);
    assert!(matches!(kv.set(&x, "d", &[0; 10]), Err(KvError::QuotaExceeded { used: 93, .. })));
}

#[derive(Debug, Clone)]
enum Op {
    Set(String, Vec<u8>),
    Delete(String),
    Cas(String, Option<Vec<u8>>, Option<Vec<u8>>),
    Clear(String),
}

fn op() -> impl Strategy<Value = Op> {
    // A small alphabet (NUL and a multi-byte character included) so keys collide and share
    // prefixes; values up to 40 bytes against a 200-byte quota so the quota bites.
    let key = "[ab\u{e9}\0]{0,3}";
    let value = proptest::collection::vec(0u8..3, 0..40);
    prop_oneof![
        (key, value.clone()).prop_map(|(k, v)| Op::Set(k, v)),
        key.prop_map(Op::Delete),
        (key, proptest::option::of(value.clone()), proptest::option::of(value)).prop_map(|(k, e, n)| Op::Cas(k, e, n)),
        "[ab]{0,2}".prop_map(Op::Clear),
    ]
}

/// Applies `op` to the model; `None` when the store must refuse it.
fn model_apply(model: &mut BTreeMap<String, Vec<u8>>, op: &Op, quota: u64) -> Option<u64> {
    let size = |m: &BTreeMap<String, Vec<u8>>| m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
    let key_ok = |k: &str| !k.is_empty() && !k.contains('\0');
    let mut next = model.clone();
    let result = match op {
        Op::Set(k, _) | Op::Delete(k) | Op::Cas(k, ..) if !key_ok(k) => return None,
        Op::Set(k, v) => {
            next.insert(k.clone(), v.clone());
            1
        }
        Op::Delete(k) => u64::from(next.remove(k).is_some()),
        Op::Cas(k, expected, _) if next.get(k) != expected.as_ref() => return Some(0),
        Op::Cas(k, _, new) => {
            match new {
                Some(v) => next.insert(k.clone(), v.clone()),
                None => next.remove(k),
            };
            1
        }
        Op::Clear(prefix) => {
            let before = next.len();
            next.retain(|k, _| !k.starts_with(prefix.as_str()));
            (before - next.len()) as u64
        }
    };
    if size(&next) > quota && size(&next) > size(model) {
        return None;
    }
    *model = next;
    Some(result)
}

fn store_apply(kv: &KvStore, x: &Namespace, op: &Op) -> Result<u64, KvError> {
    match op {
        Op::Set(k, v) => kv.set(x, k, v).map(|()| 1),
        Op::Delete(k) => kv.delete(x, k).map(u64::from),
        Op::Cas(k, e, n) => kv.compare_and_swap(x, k, e.as_deref(), n.as_deref()).map(u64::from),
        Op::Clear(prefix) => kv.clear_prefix(x, prefix),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of operations behaves like a sorted map with a quota, and the recorded
    /// usage always equals the bytes actually stored.
    #[test]
    fn the_store_behaves_like_a_map_with_a_quota(ops in proptest::collection::vec(op(), 1..40)) {
        const QUOTA: u64 = 200;
        let (_tmp, kv) = open(QUOTA);
        let x = ns("p", "c");
        let mut model = BTreeMap::new();
        for op in &ops {
            let expected = model_apply(&mut model, op, QUOTA);
            let actual = store_apply(&kv, &x, op);
            prop_assert_eq!(expected, actual.as_ref().ok().copied(), "{:?} -> {:?}", op, actual);
            prop_assert_eq!(kv.list_keys(&x, "").expect("list"), model.keys().cloned().collect::<Vec<_>>());
            prop_assert_eq!(kv.usage(&x).expect("usage"), recount(&kv, &x));
        }
        for (k, v) in &model {
            prop_assert_eq!(kv.get(&x, k).expect("get"), Some(v.clone()));
        }
    }
}
