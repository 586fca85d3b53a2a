//! `cargo bench`: what the daemon costs, measured against a baseline taken in the same run.
//!
//! Prints, for the release binary:
//! - the baseline: the fastest honest round trip of the same frame, from the same client code,
//!   to an echo server in a process of its own (this binary again, under [`ECHO_ENV`]);
//! - `GetStatus` round trip over the Astrid protocol (p50, p99) and its ratio to the baseline,
//!   the two interleaved request by request so that a machine getting busier weighs on both;
//! - boot-to-ready of `astrid-daemon` (median of 20 boots);
//! - idle RSS of a booted daemon;
//! - `astrid status` as a whole process (median of 20 runs).
//!
//! Figures are reported, not asserted: a benchmark is not a timed test.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ROUND_TRIPS: usize = 20_000;
const WARMUP: usize = 1_000;
const BOOTS: usize = 20;
const STATUS_RUNS: usize = 20;

/// Set to a socket path, this binary is the baseline's echo server instead.
const ECHO_ENV: &str = "ASTRID_BENCH_ECHO";

fn main() {
    if let Some(path) = std::env::var_os(ECHO_ENV) {
        return echo_server(Path::new(&path));
    }
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let dir = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let exe = Path::new(env!("CARGO_BIN_EXE_astrid"));
    let daemon_link = dir.path().join("astrid-daemon");
    std::os::unix::fs::symlink(exe, &daemon_link).expect("symlink");

    println!("astrid protocol benchmark (release binary {})", exe.display());
    let home = dir.path().join("h");
    let mut daemon = spawn_daemon(&daemon_link, &home);
    wait_ready(&home);
    let echo_path = dir.path().join("echo.sock");
    let mut echo = spawn_echo(&echo_path);
    let (raw, status) = round_trips(&echo_path, &home);
    stop(&mut echo);
    report("raw unix socket round trip of the same frame, echo process (baseline)", &raw);
    report("GetStatus round trip over the astrid protocol", &status);
    let ratio = median(&status) / median(&raw);
    println!("  ratio p50 GetStatus / p50 raw: {ratio:.2}x (target <= 2.00x)");

    let rss_kib = rss_kib(daemon.id());
    println!(
        "idle RSS after boot and {} requests: {:.1} MB (target <= 10 MB)",
        ROUND_TRIPS + WARMUP,
        rss_kib as f64 / 1024.0
    );

    let cli = dir.path().join("astrid");
    std::os::unix::fs::symlink(exe, &cli).expect("symlink");
    let mut status_runs: Vec<f64> = (0..STATUS_RUNS)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(&cli).arg("status").env("ASTRID_HOME", &home).output().expect("astrid status");
            assert!(out.status.success(), "astrid status failed");
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    status_runs.sort_by(f64::total_cmp);
    println!("`astrid status` whole process: median {:.2} ms (target <= 5 ms)", median(&status_runs) / 1000.0);
    stop(&mut daemon);

    let mut boots: Vec<f64> = (0..BOOTS)
        .map(|i| {
            let home = dir.path().join(format!("b{i}"));
            std::fs::create_dir_all(home.join("run")).expect("home");
            let started = Instant::now();
            let mut child = spawn_daemon(&daemon_link, &home);
            wait_ready(&home);
            let elapsed = started.elapsed().as_secs_f64() * 1e6;
            stop(&mut child);
            elapsed
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    println!(
        "boot-to-ready (spawn until run/system.ready exists): median {:.2} ms of {BOOTS} (target <= 10 ms)",
        median(&boots) / 1000.0
    );
}

fn report(what: &str, samples_us: &[f64]) {
    println!(
        "{what}: p50 {:.1} us, p99 {:.1} us ({} samples)",
        median(samples_us),
        percentile(samples_us, 0.99),
        samples_us.len()
    );
}

fn median(sorted: &[f64]) -> f64 {
    percentile(sorted, 0.5)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn read_frame(stream: &mut UnixStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("header");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).expect("body");
    body
}

/// The baseline's server: echoes each frame on one connection until it closes.
fn echo_server(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind");
    let (mut stream, _) = listener.accept().expect("accept");
    let mut header = [0u8; 4];
    while stream.read_exact(&mut header).is_ok() {
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut body).expect("body");
        let mut reply = header.to_vec();
        reply.extend_from_slice(&body);
        stream.write_all(&reply).expect("echo");
    }
}

/// This binary as the echo server at `path`, once it listens.
fn spawn_echo(path: &Path) -> Child {
    let child = Command::new(std::env::current_exe().expect("current exe"))
        .env(ECHO_ENV, path)
        .stdin(Stdio::null())
        .spawn()
        .expect("echo server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the echo server never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// The same `GetStatus` frame, sent by the same code, to the echo process and to the daemon,
/// one after the other each time: (echo samples, GetStatus samples), sorted, in µs.
fn round_trips(echo_path: &Path, home: &Path) -> (Vec<f64>, Vec<f64>) {
    let mut echo = UnixStream::connect(echo_path).expect("connect to the echo server");
    let mut daemon = UnixStream::connect(home.join("run/system.sock")).expect("connect");
    let token = std::fs::read_to_string(home.join("run/system.token")).expect("token");
    let hello = json!({"token": token, "protocol_version": 1, "client_version": "bench"});
    daemon.write_all(&frame(&serde_json::to_vec(&hello).expect("json"))).expect("handshake");
    let reply: Value = serde_json::from_slice(&read_frame(&mut daemon)).expect("reply");
    assert_eq!(reply["status"], "ok");
    let request = json!({
        "topic": "astrid.v1.request.status",
        "payload": {"type": "raw_json", "method": "GetStatus"},
        "signature": null, "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-05-25T12:00:00Z", "seq": 0
    });
    let request = frame(&serde_json::to_vec(&request).expect("json"));
    let round_trip = |stream: &mut UnixStream| -> (f64, Vec<u8>) {
        let started = Instant::now();
        stream.write_all(&request).expect("write");
        let reply = read_frame(stream);
        (started.elapsed().as_secs_f64() * 1e6, reply)
    };
    let (mut raw, mut status) = (Vec::with_capacity(ROUND_TRIPS), Vec::with_capacity(ROUND_TRIPS));
    for i in 0..ROUND_TRIPS + WARMUP {
        let (echoed, _) = round_trip(&mut echo);
        let (answered, reply) = round_trip(&mut daemon);
        if i == 0 {
            let reply: Value = serde_json::from_slice(&reply).expect("json");
            assert_eq!(reply["payload"]["status"], "Status", "{reply}");
        }
        if i >= WARMUP {
            raw.push(echoed);
            status.push(answered);
        }
    }
    raw.sort_by(f64::total_cmp);
    status.sort_by(f64::total_cmp);
    (raw, status)
}

fn spawn_daemon(link: &Path, home: &PathBuf) -> Child {
    Command::new(link)
        .env("ASTRID_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn daemon")
}

fn wait_ready(home: &Path) {
    let ready = home.join("run/system.ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "daemon did not become ready");
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
