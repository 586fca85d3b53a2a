//! The daemon stays available under a hostile environment: a stderr nobody reads, and a
//! crowd of connections that never say hello.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{HANG, RawClient, TestHome};

/// `astrid status` works and says the daemon runs.
fn status_answers(t: &TestHome) {
    let output = t.cli(&["status"]);
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("astrid daemon running"), "{out}");
}

#[test]
fn a_stderr_nobody_reads_never_stops_the_daemon_or_its_signals() {
    let t = TestHome::new();
    // stderr is a pipe this test never reads: it fills after 64 KiB.
    let mut daemon = t
        .command("astrid-daemon")
        .env("ASTRID_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    assert!(t.wait_for(|| t.ready().exists(), HANG), "never ready\n{}", t.log());
    // Each refused frame and each connection writes log lines: far more than a pipe holds.
    for round in 0..400 {
        let mut client = t.client();
        client.send_json(&json!({"topic": "not.allowed.here", "payload": {"round": round}}));
        client.send_json(&json!({"topic": "astrid.v1.request.x", "payload": {"type": "raw_json", "method": "Nope"}}));
        let _ = client.reply("x");
    }
    status_answers(&t);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let exited = t.wait_for(|| daemon.try_wait().expect("wait").is_some(), HANG);
    assert!(exited, "SIGTERM was not honoured with stderr blocked");
    assert_eq!(daemon.wait().expect("status").code(), Some(0), "a clean stop");
    // The file got what stderr could not take.
    assert!(t.log().contains("shutdown complete"), "the file log is complete");
}

#[test]
fn connections_that_never_say_hello_do_not_lock_real_clients_out() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    // A crowd of silent connections, reopened as soon as the daemon closes one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let crowd: Vec<_> = (0..4)
        .map(|_| {
            let (socket, stop) = (t.socket(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut open: Vec<RawClient> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    open.retain_mut(|c| {
                        c.stream.set_nonblocking(true).ok();
                        let mut byte = [0u8; 1];
                        !matches!(std::io::Read::read(&mut c.stream, &mut byte), Ok(0))
                    });
                    while open.len() < 40 {
                        open.push(RawClient::connect(&socket));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        status_answers(&t);
        let mut client = t.client();
        let reply = client.request("status", json!({"method": "GetStatus"}));
        assert_eq!(reply["payload"]["status"], "Status", "{reply}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in crowd {
        thread.join().expect("crowd");
    }
}
