//! The socket protocol, byte for byte: framing, handshake, ingress and egress rules.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{HANG, RawClient, TestHome};

#[test]
fn good_handshake_gets_ok_without_reason() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = RawClient::connect(&t.socket());
    let reply = client.handshake(&t.token());
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["protocol_version"], 1);
    assert_eq!(reply["server_version"], env!("CARGO_PKG_VERSION"));
    assert!(reply.get("reason").is_none(), "{reply}");
}

#[test]
fn wrong_and_malformed_tokens_get_the_same_refusal_and_a_close() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let wrong = "0".repeat(64);
    for token in [json!(wrong), json!("abcd"), json!("zz".repeat(32)), json!(42)] {
        let mut client = RawClient::connect(&t.socket());
        client.send_json(&json!({"token": token, "protocol_version": 1, "client_version": "0.7.0"}));
        let reply = client.read_json().expect("reply");
        assert_eq!(reply["status"], "error", "{token}");
        assert_eq!(reply["reason"], "authentication failed", "{token}");
        assert!(client.closed(), "connection must close after a refusal");
    }
}

#[test]
fn wrong_protocol_version_is_named_exactly() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = RawClient::connect(&t.socket());
    client.send_json(&json!({"token": t.token(), "protocol_version": 2, "client_version": "9.9.9"}));
    let reply = client.read_json().expect("reply");
    assert_eq!(
        reply["reason"],
        "Protocol version mismatch (client=2, server=1). Restart the daemon with `astrid restart`."
    );
    assert!(client.closed());
}

#[test]
fn oversize_and_garbage_handshakes_are_closed_without_reply() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    // Announce 4097 bytes: refused from the header alone.
    let mut client = RawClient::connect(&t.socket());
    client.send_raw(&4097u32.to_be_bytes());
    assert!(client.closed());
    // Announce 4 GiB: no allocation, no reply.
    let mut client = RawClient::connect(&t.socket());
    client.send_raw(&u32::MAX.to_be_bytes());
    assert!(client.closed());
    let mut client = RawClient::connect(&t.socket());
    client.send_frame(b"\x00\xffnot json at all");
    assert!(client.closed());
    // The daemon is unharmed.
    let reply = t.client().request("status", json!({"method": "GetStatus"}));
    assert_eq!(reply["payload"]["status"], "Status");
}

#[test]
fn a_silent_client_is_dropped_after_five_seconds() {
    let t = TestHome::new();
    let _daemon = t.daemon(&["-v"]);
    let mut silent = RawClient::connect(&t.socket());
    let started = Instant::now();
    assert!(silent.closed());
    // Not before the handshake timeout (the daemon's clock starts at accept, after ours);
    // and the handshake timeout is what closed it, not anything else.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(4500), "{waited:?}");
    assert!(t.wait_for(|| t.log().contains("no handshake within 5s; closed"), HANG), "{}", t.log());
}

#[test]
fn partial_frames_are_buffered_and_pipelined_frames_kept() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = RawClient::connect(&t.socket());
    // Handshake and the first request in one write, the second request dribbled byte by byte.
    let hello =
        serde_json::to_vec(&json!({"token": t.token(), "protocol_version": 1, "client_version": "x"})).expect("json");
    let request = serde_json::to_vec(
        &json!({"topic": "astrid.v1.request.one", "payload": {"type": "raw_json", "method": "GetStatus"}}),
    )
    .expect("json");
    let mut bytes = Vec::new();
    for body in [&hello, &request] {
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body.iter());
    }
    client.send_raw(&bytes);
    assert_eq!(client.read_json().expect("handshake")["status"], "ok");
    assert_eq!(client.reply("one")["payload"]["status"], "Status");
    let second = serde_json::to_vec(
        &json!({"topic": "astrid.v1.request.two", "payload": {"type": "raw_json", "method": "ListCapsules"}}),
    )
    .expect("json");
    let mut framed = (second.len() as u32).to_be_bytes().to_vec();
    framed.extend(second);
    for chunk in framed.chunks(7) {
        client.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.reply("two")["payload"]["status"], "Success");
}

#[test]
fn oversize_client_frame_closes_only_that_connection() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    client.send_raw(&(10 * 1024 * 1024 + 1u32).to_be_bytes());
    assert!(client.closed());
    // A frame at the limit is read (and its oversized payload refused with a reply).
    let mut other = t.client();
    let big = "x".repeat(2 * 1024 * 1024);
    other.send_json(
        &json!({"topic": "astrid.v1.request.big", "payload": {"type": "raw_json", "method": "GetStatus", "pad": big}}),
    );
    let reply = other.reply("big");
    assert_eq!(reply["payload"]["status"], "Error");
    assert!(reply["payload"]["data"].as_str().expect("text").contains("limit"), "{reply}");
}

#[test]
fn disallowed_and_malformed_frames_are_dropped_but_the_connection_stays() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let mut client = t.client();
    client.send_json(&json!({"topic": "agent.v1.response", "payload": {"type": "agent_response", "text": "spoof", "is_final": true}}));
    client.send_json(&json!({"topic": "astrid.v1.response.status", "payload": {}}));
    client.send_json(&json!({"no_topic": true}));
    client.send_json(&json!([1, 2, 3]));
    client.send_frame(b"{not json");
    let reply = client.request("status", json!({"method": "GetStatus"}));
    assert_eq!(reply["payload"]["status"], "Status");
    assert!(t.logged("is not open to clients"), "{}", t.log());
}

#[test]
fn egress_frames_carry_exactly_topic_payload_and_source_id() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let reply = t.client().request("status", json!({"method": "GetStatus"}));
    let keys: Vec<&String> = reply.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["payload", "source_id", "topic"]);
    assert!(reply["payload"].get("type").is_none(), "raw_json is unwrapped on egress: {reply}");
    assert_eq!(reply["source_id"], "00000000-0000-0000-0000-000000000000");
}

#[test]
fn connection_cap_refuses_with_a_reason() {
    let t = TestHome::new();
    let _daemon = t.daemon(&["--max-clients", "2"]);
    let _a = t.client();
    let _b = t.client();
    let mut third = RawClient::connect(&t.socket());
    let reply = third.handshake(&t.token());
    assert_eq!(reply["status"], "error");
    assert!(reply["reason"].as_str().expect("reason").contains("at most 2"), "{reply}");
    drop(_a);
    assert!(t.wait_for(|| RawClient::connect(&t.socket()).handshake(&t.token())["status"] == "ok", HANG));
}

#[test]
fn five_hundred_connect_disconnect_cycles_leave_the_daemon_responsive() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let token = t.token();
    for i in 0..500 {
        let mut client = RawClient::connect(&t.socket());
        if i % 2 == 0 {
            assert_eq!(client.handshake(&token)["status"], "ok");
        }
    }
    let mut client = t.client();
    let status = client.request("status", json!({"method": "GetStatus"}));
    assert_eq!(status["payload"]["status"], "Status");
    // Leases are returned: only this client remains (allow the last closes to land).
    assert!(t.wait_for(
        || client.request("status", json!({"method": "GetStatus"}))["payload"]["data"]["connected_clients"] == 1,
        HANG
    ));
}

#[test]
fn sixteen_concurrent_clients_each_get_their_own_replies() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let socket = t.socket();
    let token = t.token();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (barrier, socket, token) = (barrier.clone(), socket.clone(), token.clone());
            std::thread::spawn(move || {
                let mut client = RawClient::connect(&socket);
                assert_eq!(client.handshake(&token)["status"], "ok");
                barrier.wait();
                let suffix = format!("c{i}");
                let mut seen = 0;
                for _ in 0..20 {
                    client.send_request(&suffix, json!({"method": "GetStatus"}));
                    let reply = client.reply(&suffix);
                    assert_eq!(reply["payload"]["status"], "Status");
                    seen = seen.max(reply["payload"]["data"]["connected_clients"].as_u64().expect("count"));
                }
                barrier.wait();
                // Nothing else is queued for us: replies to the others never reached us.
                client.stream.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
                let mut buf = [0u8; 1];
                let extra = std::io::Read::read(&mut client.stream, &mut buf);
                assert!(extra.is_err(), "client {i} received someone else's frame");
                seen
            })
        })
        .collect();
    let max_seen = handles.into_iter().map(|h| h.join().expect("client thread")).max().expect("max");
    assert_eq!(max_seen, 16, "all 16 clients were counted at once");
}

#[test]
fn silent_connections_do_not_block_the_accept_loop() {
    let t = TestHome::new();
    let _daemon = t.daemon(&[]);
    let _silent: Vec<RawClient> = (0..32).map(|_| RawClient::connect(&t.socket())).collect();
    // An accept loop that waited on each connection's handshake would serve this client only
    // after 32 handshake timeouts (160 s): the harness's read guard (60 s) fails it as hung.
    let reply = t.client().request("status", json!({"method": "GetStatus"}));
    assert_eq!(reply["payload"]["status"], "Status");
}

#[test]
fn a_peer_with_another_uid_is_closed_before_the_handshake() {
    use std::os::unix::fs::PermissionsExt;
    // The daemon runs as `nobody`; the test (root) can still reach the socket through the
    // 0700 directories, so only the peer-UID check stands in its way.
    if !nix::unistd::geteuid().is_root() || std::process::Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs root and setpriv to run the daemon as another user");
        return;
    }
    let t = TestHome::new();
    let dir = t.home.parent().expect("parent");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir_all(&t.home).expect("home");
    std::os::unix::fs::chown(&t.home, Some(65534), Some(65534)).expect("chown");
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(t.bin.join("astrid-daemon"))
        .env("ASTRID_HOME", &t.home)
        .current_dir(&t.workspace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn as nobody");
    let booted = t.wait_for(|| t.ready().exists(), HANG);
    if !booted {
        let _ = child.kill();
        let _ = child.wait();
        panic!("daemon as nobody did not boot:\n{}", t.log());
    }
    let mut client = RawClient::connect(&t.socket());
    // The daemon may close before we finish writing: a broken pipe is the refusal too.
    let hello =
        serde_json::to_vec(&json!({"token": t.token(), "protocol_version": 1, "client_version": "x"})).expect("json");
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend(hello);
    let _ = std::io::Write::write_all(&mut client.stream, &frame);
    let closed = client.closed();
    // Before the kill: the line may still be on its way to the file.
    let logged = t.logged("is not ours");
    let _ = child.kill();
    let _ = child.wait();
    assert!(closed, "a client with another uid must get no reply");
    assert!(logged, "{}", t.log());
}
