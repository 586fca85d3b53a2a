//! `cargo bench --bench agent`: the latency Astrid adds to an agent's first streamed token.
//!
//! One local OpenAI-compatible server (the tests' own, real HTTP and SSE on 127.0.0.1), asked
//! two ways in the same run:
//! - directly: connect, POST a chat completion, wait for the first content event (baseline);
//! - through Astrid: a prompt on `user.v1.prompt` over the daemon's socket, through the
//!   embedded orchestrator and `llm-openai` capsules (wasmi), the provider's HTTP request, back
//!   as the first `agent.v1.stream.delta` frame on the socket.
//!
//! Medians of many turns; the figure of interest is the difference (target ≤ 2 ms).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use std::time::{Duration, Instant};

use astrid::ipc::Client;
use astrid::types::IpcPayload;
use astrid::types::topics::{DELTA_TOPIC, PROMPT_TOPIC, RESPONSE_TOPIC};

#[path = "support/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "../tests/it/openai_server.rs"]
mod openai_server;

use daemon::Daemon;

const TURNS: usize = 60;
const WARMUP: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Milliseconds from connecting to the first content event, asking the server directly.
fn direct_first_token_ms(port: u16) -> f64 {
    let body = serde_json::json!({
        "model": "bench", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "You are the agent."}, {"role": "user", "content": "hi"}],
    })
    .to_string();
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).expect("read") > 0, "the server closed before a token");
        if line.starts_with("data:") && line.contains("content") {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
    }
}

/// Milliseconds from publishing a prompt to the first streamed delta on the socket; then
/// waits for the end of the turn.
fn astrid_first_token_ms(client: &mut Client, turn: usize) -> f64 {
    let session = format!("bench-{turn}");
    let prompt = IpcPayload::UserInput { text: "hi".to_owned(), session_id: session.clone(), context: None };
    let started = Instant::now();
    client.publish(PROMPT_TOPIC, &prompt).expect("publish");
    let mut first = None;
    loop {
        let frame = client.next_frame(Duration::from_secs(30)).expect("frame");
        match frame.topic.as_str() {
            DELTA_TOPIC if first.is_none() => first = Some(started.elapsed().as_secs_f64() * 1000.0),
            RESPONSE_TOPIC if frame.payload["is_final"] == true => break,
            _ => {}
        }
    }
    first.expect("a streamed token before the final answer")
}

fn main() {
    let server = openai_server::Server::start(vec![openai_server::Script::Text(vec!["Hel", "lo"])]);
    let root = tempfile::Builder::new().prefix("astb").tempdir_in("/tmp").expect("tempdir");
    let (_offline_daemon, mut offline) = Daemon::start(root.path(), "offline", &[]);
    let offline_ms = median((0..TURNS).map(|turn| astrid_first_token_ms(&mut offline, turn)).collect());
    let env = [
        ("OPENAI_BASE_URL", server.base_url()),
        ("OPENAI_API_KEY", "sk-bench".to_owned()),
        ("ASTRID_MODEL", "bench".to_owned()),
    ];
    let (_daemon, mut client) = Daemon::start(root.path(), "openai", &env);
    for turn in 0..WARMUP {
        astrid_first_token_ms(&mut client, turn);
        direct_first_token_ms(server.port);
    }
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for turn in 0..TURNS {
        direct.push(direct_first_token_ms(server.port));
        through.push(astrid_first_token_ms(&mut client, WARMUP + turn));
    }
    let (direct, through) = (median(direct), median(through));
    println!("astrid agent benchmark (medians of {TURNS} turns, local OpenAI-compatible server)");
    println!("first token, asking the server directly (baseline): {direct:.2} ms");
    println!(
        "first token through Astrid (socket, orchestrator and provider capsules, bus): {through:.2} ms \
         ({:.1}x baseline; +{:.2} ms added; target <= 2 ms)",
        through / direct,
        through - direct
    );
    println!("first token from the offline model (the pipeline without HTTP): {offline_ms:.2} ms");
}
