//! `cargo bench`: what the daemon costs, measured against a baseline taken in the same run.
//!
//! Prints, for the release binary:
//! - raw Unix socket round trip of a 64-byte frame between two threads (the baseline);
//! - `GetStatus` round trip over the Astrid protocol (p50, p99) and its ratio to the baseline;
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

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let dir = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let exe = Path::new(env!("CARGO_BIN_EXE_astrid"));
    let daemon_link = dir.path().join("astrid-daemon");
    std::os::unix::fs::symlink(exe, &daemon_link).expect("symlink");

    println!("astrid protocol benchmark (release binary {})", exe.display());
    let raw = raw_socket_round_trips(dir.path());
    report("raw unix socket round trip, 64-byte frame (baseline)", &raw);

    let home = dir.path().join("h");
    let mut daemon = spawn_daemon(&daemon_link, &home);
    wait_ready(&home);
    let status = get_status_round_trips(&home);
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

/// Baseline: a thread echoes 64-byte frames over a Unix socket.
fn raw_socket_round_trips(dir: &Path) -> Vec<f64> {
    let path = dir.join("raw.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        for _ in 0..ROUND_TRIPS + WARMUP {
            let body = read_frame(&mut stream);
            stream.write_all(&frame(&body)).expect("echo");
        }
    });
    let mut client = UnixStream::connect(&path).expect("connect");
    let message = frame(&[b'x'; 64]);
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + WARMUP {
        let started = Instant::now();
        client.write_all(&message).expect("write");
        read_frame(&mut client);
        if i >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    server.join().expect("server");
    samples.sort_by(f64::total_cmp);
    samples
}

fn get_status_round_trips(home: &Path) -> Vec<f64> {
    let mut client = UnixStream::connect(home.join("run/system.sock")).expect("connect");
    let token = std::fs::read_to_string(home.join("run/system.token")).expect("token");
    let hello = json!({"token": token, "protocol_version": 1, "client_version": "bench"});
    client.write_all(&frame(&serde_json::to_vec(&hello).expect("json"))).expect("handshake");
    let reply: Value = serde_json::from_slice(&read_frame(&mut client)).expect("reply");
    assert_eq!(reply["status"], "ok");
    let request = json!({
        "topic": "astrid.v1.request.status",
        "payload": {"type": "raw_json", "method": "GetStatus"},
        "signature": null, "source_id": "00000000-0000-0000-0000-000000000000",
        "timestamp": "2026-05-25T12:00:00Z", "seq": 0
    });
    let request = frame(&serde_json::to_vec(&request).expect("json"));
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + WARMUP {
        let started = Instant::now();
        client.write_all(&request).expect("write");
        let reply = read_frame(&mut client);
        if i >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        if i == 0 {
            let reply: Value = serde_json::from_slice(&reply).expect("json");
            assert_eq!(reply["payload"]["status"], "Status", "{reply}");
        }
    }
    samples.sort_by(f64::total_cmp);
    samples
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
