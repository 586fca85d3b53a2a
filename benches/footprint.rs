//! `cargo bench --bench footprint`: whether the daemon's memory stays flat under use.
//!
//! A real daemon with the default capsule set is measured idle after boot, then after a
//! warm-up of each workload (so one-time growth, caches filling and the allocator settling,
//! is not counted as a leak), then after each full workload in turn:
//! - [`REQUESTS`] `GetStatus` requests over [`CONNECTIONS_AT_ONCE`] connections;
//! - [`CONNECTIONS`] connections, each opened, handshaken and closed;
//! - [`TURN_ROUNDS`] rounds of [`TURNS`] agent turns with the offline model, each turn in a
//!   session of its own, measured after each round.
//!
//! Resident size is read from `/proc/<pid>/status` a moment after each phase, when the daemon
//! is idle again, and once more after two minutes of rest, when the kernel has written its
//! audit counts and forgotten the finished turns. The figure of interest is the growth from the warm-up to the end (target:
//! none, within the allocator's noise); a leak shows as growth proportional to the work.
//!
//! Figures are reported, not asserted: a benchmark is not a timed test.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/proc_stats.rs"]
#[allow(dead_code)] // CPU time is the protocol bench's figure
mod proc_stats;

use std::path::Path;
use std::time::Duration;

use astrid::home::AstridHome;
use astrid::ipc::Client;
use astrid::kernel::routine::SUMMARY_INTERVAL;
use astrid::types::topics::{PROMPT_TOPIC, RESPONSE_TOPIC};
use astrid::types::{IpcPayload, KernelRequest, KernelResponse};

const REQUESTS: usize = 100_000;
const CONNECTIONS_AT_ONCE: usize = 8;
const CONNECTIONS: usize = 10_000;
const TURNS: usize = 100;
/// Rounds of [`TURNS`] turns, each measured.
const TURN_ROUNDS: usize = 4;
/// What each workload does in the warm-up.
const WARMUP_REQUESTS: usize = 5_000;
const WARMUP_CONNECTIONS: usize = 500;
const WARMUP_TURNS: usize = 5;
/// How long the daemon is left alone before its size is read.
const SETTLE: Duration = Duration::from_millis(1_500);

fn main() {
    let root = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let (_daemon, _client) = daemon::Daemon::start(root.path(), "h", &[]);
    let home = AstridHome::at(root.path().join("h"));
    let pid = daemon_pid(&root.path().join("h"));
    println!("astrid footprint benchmark (default capsule set; resident size {} after each phase)", humanize(SETTLE));
    let idle = settled_rss_kib(pid);
    println!("idle after boot: {}", mib(idle));

    requests(&home, WARMUP_REQUESTS);
    connections(&home, WARMUP_CONNECTIONS);
    turns(&home, 0, WARMUP_TURNS);
    let warm = settled_rss_kib(pid);
    println!(
        "after the warm-up ({WARMUP_REQUESTS} requests, {WARMUP_CONNECTIONS} connections, {WARMUP_TURNS} turns; baseline): {}",
        mib(warm)
    );

    requests(&home, REQUESTS);
    let after_requests = settled_rss_kib(pid);
    println!(
        "after {REQUESTS} GetStatus requests on {CONNECTIONS_AT_ONCE} connections: {}",
        grown(warm, after_requests)
    );
    connections(&home, CONNECTIONS);
    let after_connections = settled_rss_kib(pid);
    println!("after {CONNECTIONS} connections opened and closed: {}", grown(warm, after_connections));
    // The turns in rounds: a leak grows by about the same each round, a cache filling up
    // grows less each round until it stops.
    let mut after_turns = after_connections;
    for round in 0..TURN_ROUNDS {
        turns(&home, WARMUP_TURNS + round * TURNS, TURNS);
        let before = after_turns;
        after_turns = settled_rss_kib(pid);
        println!(
            "after {} agent turns (offline model, a session each): {}, {:+} KiB in the last {TURNS}",
            (round + 1) * TURNS,
            grown(warm, after_turns),
            i64::try_from(after_turns).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
        );
    }
    // What the kernel keeps per turn for the audit trail's counts lasts until the summary after
    // a whole interval without the turn: idle that long, the daemon is where it would stay.
    std::thread::sleep(2 * SUMMARY_INTERVAL + Duration::from_secs(1));
    let at_rest = settled_rss_kib(pid);
    println!(
        "after {} s idle (the audit counts' summaries): {}",
        (2 * SUMMARY_INTERVAL).as_secs(),
        grown(warm, at_rest)
    );
    println!(
        "growth since the warm-up: {:+} KiB (target: flat; a leak grows with the work)",
        i64::try_from(at_rest).unwrap_or(i64::MAX) - i64::try_from(warm).unwrap_or(i64::MAX)
    );
}

/// `count` `GetStatus` requests, spread over [`CONNECTIONS_AT_ONCE`] connections sending
/// back to back.
fn requests(home: &AstridHome, count: usize) {
    let threads: Vec<_> = (0..CONNECTIONS_AT_ONCE)
        .map(|_| {
            let mut client = Client::connect(home).expect("connect");
            std::thread::spawn(move || {
                for _ in 0..count / CONNECTIONS_AT_ONCE {
                    let reply =
                        client.request("status", &KernelRequest::GetStatus, Duration::from_secs(30)).expect("status");
                    assert!(matches!(reply, KernelResponse::Status(_)), "{reply:?}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client");
    }
}

/// `count` connections, one after the other: connect, handshake, close.
fn connections(home: &AstridHome, count: usize) {
    for _ in 0..count {
        drop(Client::connect(home).expect("connect"));
    }
}

/// Turns `first..first + count`, each a prompt to the offline model in a session of its own,
/// waited for until the final answer.
fn turns(home: &AstridHome, first: usize, count: usize) {
    let mut client = Client::connect(home).expect("connect");
    for turn in first..first + count {
        let prompt =
            IpcPayload::UserInput { text: "hello".to_owned(), session_id: format!("footprint-{turn}"), context: None };
        client.publish(PROMPT_TOPIC, &prompt).expect("prompt");
        loop {
            let frame = client.next_frame(Duration::from_secs(60)).expect("the turn's frames");
            if frame.topic == RESPONSE_TOPIC && frame.payload["is_final"] == true {
                break;
            }
        }
    }
}

/// The daemon's pid, as its lock file names it.
fn daemon_pid(home: &Path) -> u32 {
    let text = std::fs::read_to_string(home.join("run/system.lock")).expect("lock file");
    text.trim().parse().expect("a pid in the lock file")
}

/// Resident size in KiB once the daemon has been left alone for [`SETTLE`].
fn settled_rss_kib(pid: u32) -> u64 {
    std::thread::sleep(SETTLE);
    proc_stats::rss_kib(pid)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

fn grown(from: u64, to: u64) -> String {
    format!("{} ({:+} KiB)", mib(to), i64::try_from(to).unwrap_or(i64::MAX) - i64::try_from(from).unwrap_or(i64::MAX))
}

fn humanize(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}
