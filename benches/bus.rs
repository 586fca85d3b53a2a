//! `cargo bench --bench bus`: the event bus through the socket, against a baseline measured in
//! the same run.
//!
//! [`PUBLISHERS`] capsules publish on one custom topic while [`SUBSCRIBERS`] capsules, each
//! subscribed to it, take every message. All of them are WebAssembly capsules attached to the
//! real daemon over its socket, as a capsule-host process runs them (the bench process holds
//! their sandboxes, one thread each): every `ipc_publish` and every `ipc_recv` is a host call
//! that crosses the socket, is checked against the capsule's grant, and goes through the
//! kernel's bus. The bus contract is that nothing on a topic like this one is dropped (a
//! reader that falls behind slows its publishers down), so the bench checks that each
//! subscriber received every message, exactly.
//!
//! Prints messages delivered per second (one message reaching one subscriber is one delivery),
//! the guest host calls per second that took (a subscriber's capsule host reads ahead, so a
//! backlog crosses the socket a batch per round trip), and the baseline: as many connections making raw
//! round trips of a frame of the same size to an echo server in a process of its own (this
//! binary again: `support/echo.rs`), the most request/reply exchanges the machine manages
//! through Unix sockets with that much concurrency. Medians of [`ROUNDS`] rounds.
//!
//! Figures are reported, not asserted: a benchmark is not a timed test.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/echo.rs"]
mod echo;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use astrid::home::AstridHome;
use astrid::ipc::capsule_link::CapsuleLink;
use astrid::types::CapsuleAttach;
use astrid::wasm::{Lifecycle, Sandbox};

const PUBLISHERS: usize = 8;
const SUBSCRIBERS: usize = 8;
/// Messages each publisher sends per round.
const PER_PUBLISHER: usize = 2_000;
const ROUNDS: usize = 5;
const TOPIC: &str = "bench.v1.flood";

/// `publish(n)` publishes a small JSON payload on [`TOPIC`] `n` times and returns how many
/// publications the host accepted (status 0).
const PUBLISHER: &str = r#"(module
    (import "astrid" "ipc_publish" (func $publish (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 0) "bench.v1.flood")
    (data (i32.const 32) "{\"type\":\"raw_json\",\"reading\":42,\"unit\":\"bench\"}")
    (func (export "astrid_alloc") (param i32) (result i32) i32.const 1024)
    (func (export "publish") (param $n i32) (result i32) (local $i i32) (local $ok i32)
        (block $done
            (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                (if (i32.eqz (call $publish (i32.const 0) (i32.const 14) (i32.const 32) (i32.const 47)))
                    (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))
        local.get $ok))"#;

/// `subscribe()` subscribes to [`TOPIC`] and returns the handle (`unsubscribe(handle)` drops
/// it); `drain(handle, n)` takes
/// messages until it has `n` or none comes for ten seconds, and returns how many it took;
/// `last()` is what its last `ipc_recv` returned (a status when it stopped early).
/// Each message is written to the same scratch area: only the count matters.
const SUBSCRIBER: &str = r#"(module
    (import "astrid" "ipc_subscribe" (func $subscribe (param i32 i32) (result i32)))
    (import "astrid" "ipc_recv" (func $recv (param i32 i32) (result i64)))
    (import "astrid" "ipc_unsubscribe" (func $unsubscribe (param i32) (result i32)))
    (memory (export "memory") 2)
    (data (i32.const 0) "bench.v1.flood")
    (func (export "astrid_alloc") (param i32) (result i32) i32.const 4096)
    (func (export "subscribe") (result i32) (call $subscribe (i32.const 0) (i32.const 14)))
    (func (export "unsubscribe") (param i32) (result i32) (call $unsubscribe (local.get 0)))
    (global $last (mut i64) (i64.const 0))
    (func (export "drain") (param $handle i32) (param $n i32) (result i32) (local $count i32)
        (block $done
            (loop $next
                (br_if $done (i32.ge_u (local.get $count) (local.get $n)))
                (global.set $last (call $recv (local.get $handle) (i32.const 10000)))
                (br_if $done (i64.le_s (global.get $last) (i64.const 0)))
                (local.set $count (i32.add (local.get $count) (i32.const 1)))
                (br $next)))
        local.get $count)
    (func (export "last") (result i64) global.get $last))"#;

fn main() {
    echo::serve_if_asked();
    let root = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let (_daemon, _client) = daemon::Daemon::start(root.path(), "h", &[("ASTRID_DEFAULT_CAPSULES", "0".into())]);
    let home = AstridHome::at(root.path().join("h"));
    let publishers: Vec<Sandbox> = (0..PUBLISHERS)
        .map(|i| attach(root.path(), &home, &format!("bench-pub-{i}"), PUBLISHER, "ipc_publish"))
        .collect();
    let subscribers: Vec<Sandbox> = (0..SUBSCRIBERS)
        .map(|i| attach(root.path(), &home, &format!("bench-sub-{i}"), SUBSCRIBER, "ipc_subscribe"))
        .collect();

    let echo_path = root.path().join("echo.sock");
    let mut echo = echo::spawn(&echo_path);

    println!(
        "astrid bus benchmark: {PUBLISHERS} publishers, {SUBSCRIBERS} subscribers on {TOPIC}, capsules attached over \
         the socket (medians of {ROUNDS} rounds)"
    );
    let (mut publishers, mut subscribers) = (publishers, subscribers);
    let mut delivered_per_second = Vec::with_capacity(ROUNDS);
    let mut calls_per_second = Vec::with_capacity(ROUNDS);
    let mut raw_per_second = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        // Interleaved with the measured path, so a machine getting busier weighs on both.
        raw_per_second.push(raw_round_trips_per_second(&echo_path, PUBLISHERS + SUBSCRIBERS));
        let (round, p, s) = flood(publishers, subscribers);
        (publishers, subscribers) = (p, s);
        delivered_per_second.push(round.delivered as f64 / round.seconds);
        calls_per_second.push(round.host_calls as f64 / round.seconds);
    }
    let raw = median(raw_per_second);
    let delivered = median(delivered_per_second);
    let calls = median(calls_per_second);
    println!(
        "raw unix socket round trips, {} connections to an echo process (baseline): {raw:.0}/s",
        PUBLISHERS + SUBSCRIBERS
    );
    println!("guest host calls (ipc_publish + ipc_recv; a recv is served from a batch read ahead): {calls:.0}/s");
    println!(
        "messages delivered: {delivered:.0}/s, none lost ({:.2}x the baseline's round trips; target >= 100,000/s)",
        delivered / raw
    );
    stop(&mut echo);
}

/// One round's outcome.
struct Round {
    delivered: usize,
    host_calls: usize,
    seconds: f64,
}

/// Subscribes every subscriber, then lets every publisher send [`PER_PUBLISHER`] messages at
/// once; the round ends when the last subscriber has taken all of them. Panics if a single
/// message is missing: the bus must not drop any.
fn flood(publishers: Vec<Sandbox>, subscribers: Vec<Sandbox>) -> (Round, Vec<Sandbox>, Vec<Sandbox>) {
    let expected = PUBLISHERS * PER_PUBLISHER;
    let start = Arc::new(Barrier::new(PUBLISHERS + SUBSCRIBERS + 1));
    let subscribed = Arc::new(Barrier::new(SUBSCRIBERS + 1));
    let subscriber_threads: Vec<_> = subscribers
        .into_iter()
        .map(|mut sandbox| {
            let (start, subscribed) = (Arc::clone(&start), Arc::clone(&subscribed));
            std::thread::spawn(move || {
                let handle = sandbox.call::<(), i32>("subscribe", ()).expect("subscribe");
                assert!(handle >= 0, "subscription refused: status {handle}");
                subscribed.wait();
                start.wait();
                let taken = sandbox.call::<(i32, i32), i32>("drain", (handle, expected as i32)).expect("drain");
                let finished = Instant::now();
                let last = sandbox.call::<(), i64>("last", ()).expect("last");
                if usize::try_from(taken).unwrap_or(0) != expected {
                    eprintln!("subscriber stopped after {taken} messages: ipc_recv returned {last}");
                }
                // The next round subscribes afresh. Left alone, this subscription would fill up
                // and, as the bus promises, hold the publishers back until it was cut off.
                let dropped = sandbox.call::<i32, i32>("unsubscribe", handle).expect("unsubscribe");
                assert_eq!(dropped, 0, "unsubscribe failed");
                (usize::try_from(taken).unwrap_or(0), finished, sandbox)
            })
        })
        .collect();
    // Every subscription exists before the first message is published.
    subscribed.wait();
    let publisher_threads: Vec<_> = publishers
        .into_iter()
        .map(|mut sandbox| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let sent = sandbox.call::<i32, i32>("publish", PER_PUBLISHER as i32).expect("publish");
                assert_eq!(sent as usize, PER_PUBLISHER, "a publication was refused");
                sandbox
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    let publishers: Vec<Sandbox> = publisher_threads.into_iter().map(|t| t.join().expect("publisher")).collect();
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    let mut last = started;
    let mut delivered = 0;
    for thread in subscriber_threads {
        let (taken, finished, sandbox) = thread.join().expect("subscriber");
        assert_eq!(taken, expected, "a subscriber missed messages the bus must deliver");
        delivered += taken;
        last = last.max(finished);
        subscribers.push(sandbox);
    }
    let host_calls = PUBLISHERS * PER_PUBLISHER + delivered;
    (Round { delivered, host_calls, seconds: (last - started).as_secs_f64() }, publishers, subscribers)
}

/// A capsule named `name` running `wat`, granted `grant` on [`TOPIC`], attached to the daemon
/// of `home` over its socket; its host calls go through that connection.
fn attach(root: &Path, home: &AstridHome, name: &str, wat: &str, grant: &str) -> Sandbox {
    let module = wat::parse_str(wat).expect("wat");
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("capsule dir");
    std::fs::write(dir.join("bench.wasm"), &module).expect("module");
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n[[component]]\nfile = \"bench.wasm\"\n\
             [capabilities]\n{grant} = [\"{TOPIC}\"]\n"
        ),
    )
    .expect("manifest");
    let attach = CapsuleAttach { dir: Some(dir.display().to_string()), approve: true, ticket: None };
    let (link, attached) = CapsuleLink::attach(home, attach).expect("attach");
    let compiled = astrid::wasm::compile(&module).expect("valid module");
    Sandbox::instantiate_with(
        &attached.capsule,
        &compiled,
        attached.limits,
        Box::new(link),
        Arc::new(Lifecycle::default()),
    )
    .expect("instantiate")
}

/// Round trips per second that `connections` connections to the echo server at `path` make
/// together, each sending a frame of a publish call's size back to back for a fixed time.
fn raw_round_trips_per_second(path: &Path, connections: usize) -> f64 {
    const SPAN: Duration = Duration::from_millis(500);
    let body = format!(
        r#"{{"id":1,"call":{{"fn":"ipc_publish","topic":"{TOPIC}","payload":"eyJ0eXBlIjoicmF3X2pzb24iLCJyZWFkaW5nIjo0Mn0="}}}}"#
    );
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    let start = Arc::new(Barrier::new(connections + 1));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let mut stream = UnixStream::connect(path).expect("connect to the echo server");
            let (frame, start) = (frame.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut reply = vec![0u8; frame.len()];
                start.wait();
                let began = Instant::now();
                let mut exchanges = 0usize;
                while began.elapsed() < SPAN {
                    stream.write_all(&frame).expect("write");
                    stream.read_exact(&mut reply).expect("read");
                    exchanges += 1;
                }
                exchanges as f64 / began.elapsed().as_secs_f64()
            })
        })
        .collect();
    start.wait();
    threads.into_iter().map(|t| t.join().expect("echo client")).sum()
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
