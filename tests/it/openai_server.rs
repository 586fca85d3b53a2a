//! A local OpenAI-compatible server for the tests: real HTTP/1.1 and server-sent events on
//! 127.0.0.1, scripted per test, recording every request it gets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What the server answers to `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub enum Script {
    /// A streamed answer, one SSE event per piece, then usage and `[DONE]`.
    Text(Vec<&'static str>),
    /// An error status with a JSON body.
    Status(u16),
    /// A stream that is not JSON.
    Malformed,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A running server; it stops with the test process.
pub struct Server {
    pub port: u16,
    script: Arc<Mutex<Vec<Script>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    /// Serves `scripts` in order, one per request (the last one repeats).
    pub fn start(scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let script = Arc::new(Mutex::new(scripts));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&script), Arc::clone(&received));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                std::thread::spawn(move || serve(stream, &s, &r));
            }
        });
        Self { port, script, received }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn set(&self, scripts: Vec<Script>) {
        *self.script.lock().expect("lock") = scripts;
    }
}

fn serve(stream: TcpStream, script: &Mutex<Vec<Script>>, received: &Mutex<Vec<Received>>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    received.lock().expect("lock").push(Received { path, headers, body });
    let next = {
        let mut scripts = script.lock().expect("lock");
        if scripts.len() > 1 { scripts.remove(0) } else { scripts.first().cloned().unwrap_or(Script::Status(500)) }
    };
    let mut out = stream;
    match next {
        Script::Status(code) => {
            let body = json!({"error": {"message": format!("scripted {code}"), "type": "test"}}).to_string();
            let _ = write!(
                out,
                "HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Script::Malformed => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let _ = out.write_all(b"data: {this is not json\n\n");
        }
        Script::Text(pieces) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            for piece in pieces {
                send(&mut out, &json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}));
            }
            send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
            send(&mut out, &json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}));
            let _ = out.write_all(b"data: [DONE]\n\n");
        }
    }
    let _ = out.flush();
}

fn send(out: &mut TcpStream, chunk: &Value) {
    let _ = out.write_all(format!("data: {chunk}\n\n").as_bytes());
    let _ = out.flush();
    std::thread::sleep(Duration::from_millis(2));
}
