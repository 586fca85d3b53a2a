//! `cargo bench --bench state`: the kernel's state paths, each beside a baseline measured
//! in the same run.
//!
//! - bus publish→deliver throughput with 1 and 8 subscribers, against a bare tokio mpsc
//!   channel carrying the same messages;
//! - KV `set` + `flush` latency against a raw sled insert + flush, and KV `get` against a
//!   raw sled get;
//! - audit append latency.
//!
//! Reported, never asserted.

use std::sync::Arc;
use std::time::Instant;

use astrid::audit::{Actor, AuditTrail, Decision, NewEntry};
use astrid::home::AstridHome;
use astrid::kernel::bus::{Bus, BusMessage};
use astrid::store::{KvConfig, KvStore, Namespace};
use astrid::types::{IpcMessage, IpcPayload, SYSTEM_SESSION_UUID};

const MESSAGES: usize = 200_000;
const KV_OPS: usize = 2_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("astrid state benchmark");
    let baseline = runtime.block_on(mpsc_throughput());
    println!("tokio mpsc, 1 receiver (baseline): {:.0} msg/s", baseline);
    for subscribers in [1, 8] {
        let rate = runtime.block_on(bus_throughput(subscribers));
        println!(
            "bus publish->deliver, {subscribers} subscriber(s): {rate:.0} deliveries/s ({:.2}x the baseline)",
            rate / baseline
        );
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let home = AstridHome::at(tmp.path().join("h"));
    home.ensure().expect("home");
    let kv = KvStore::open(&home, KvConfig::default()).expect("kv");
    let raw = sled::Config::new().path(tmp.path().join("raw.db")).cache_capacity(8 << 20).open().expect("sled");
    let ns = Namespace::capsule("default", "bench").expect("ns");
    let value = [7u8; 64];
    let raw_set = percentiles((0..KV_OPS).map(|i| {
        let t = Instant::now();
        raw.insert(format!("k{i}"), &value[..]).expect("insert");
        raw.flush().expect("flush");
        t.elapsed().as_secs_f64() * 1e6
    }));
    let kv_set = percentiles((0..KV_OPS).map(|i| {
        let t = Instant::now();
        kv.set(&ns, &format!("k{i}"), &value).expect("set");
        kv.flush().expect("flush");
        t.elapsed().as_secs_f64() * 1e6
    }));
    let raw_get = percentiles((0..KV_OPS).map(|i| {
        let t = Instant::now();
        raw.get(format!("k{i}")).expect("get");
        t.elapsed().as_secs_f64() * 1e6
    }));
    let kv_get = percentiles((0..KV_OPS).map(|i| {
        let t = Instant::now();
        kv.get(&ns, &format!("k{i}")).expect("get");
        t.elapsed().as_secs_f64() * 1e6
    }));
    println!("raw sled insert+flush (baseline): p50 {:.1} us, p99 {:.1} us", raw_set.0, raw_set.1);
    println!("KV set+flush: p50 {:.1} us, p99 {:.1} us ({:.2}x)", kv_set.0, kv_set.1, kv_set.0 / raw_set.0);
    println!("raw sled get (baseline): p50 {:.2} us, p99 {:.2} us", raw_get.0, raw_get.1);
    println!("KV get: p50 {:.2} us, p99 {:.2} us ({:.2}x)", kv_get.0, kv_get.1, kv_get.0 / raw_get.0);

    let audit = AuditTrail::open(&home).expect("audit");
    let append = percentiles((0..KV_OPS).map(|i| {
        let entry = NewEntry {
            session: SYSTEM_SESSION_UUID,
            principal: "default".into(),
            actor: Actor::Capsule { name: "bench".into() },
            action: "capability.check".into(),
            resource: format!("fs_read src/{i}.rs"),
            decision: Decision::Allow,
            rule: "grant".into(),
        };
        let t = Instant::now();
        audit.record(entry).expect("record");
        t.elapsed().as_secs_f64() * 1e6
    }));
    println!("audit append (hash, sign, write, head): p50 {:.1} us, p99 {:.1} us", append.0, append.1);
}

fn percentiles(samples: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut samples: Vec<f64> = samples.collect();
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn message() -> BusMessage {
    let payload = IpcPayload::Custom { data: serde_json::json!({"n": 1}) };
    BusMessage::from_kernel(IpcMessage::new("bench.v1.event", payload, SYSTEM_SESSION_UUID))
}

async fn mpsc_throughput() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<BusMessage>>(1024);
    let template = Arc::new(message());
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    for _ in 0..MESSAGES {
        let mut m = (*template).clone();
        m.message.seq += 1;
        tx.send(Arc::new(m)).await.expect("send");
    }
    drop(tx);
    let received = consumer.await.expect("consumer");
    received as f64 / started.elapsed().as_secs_f64()
}

/// Publishes paced, as capsules do: the bus holds the publisher back while a subscriber is at
/// its pace mark, so the figure counts deliveries at the speed of the slowest subscriber,
/// with zero losses asserted.
async fn bus_throughput(subscribers: usize) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let bus = Bus::new();
    let progress: Vec<Arc<AtomicUsize>> = (0..subscribers).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut consumers = Vec::new();
    for (i, counter) in progress.iter().enumerate() {
        let mut subscription = bus.subscribe(format!("s{i}"), &["bench.v1.*"]);
        let counter = Arc::clone(counter);
        consumers.push(tokio::spawn(async move {
            while counter.load(Ordering::Relaxed) < MESSAGES {
                if subscription.recv().await.is_none() {
                    break;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            subscription.dropped()
        }));
    }
    let started = Instant::now();
    for _ in 0..MESSAGES {
        bus.publish_paced(message()).await;
    }
    for consumer in consumers {
        assert_eq!(consumer.await.expect("consumer"), 0, "messages were dropped");
    }
    (MESSAGES * subscribers) as f64 / started.elapsed().as_secs_f64()
}
