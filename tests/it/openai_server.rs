//! A local OpenAI-compatible server for the tests: real HTTP/1.1 and server-sent events on
//! 127.0.0.1, scripted per test, recording every request it gets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// `piece` every `every`, until the client hangs up (a model that goes on and on); the
    /// server records when it noticed.
    Drip { piece: &'static str, every: Duration },
    /// The pieces, then silence with the connection open (a model that hangs).
    Stall(Vec<&'static str>),
    /// A tool call streamed as OpenAI does: id and name first, the arguments in fragments.
    ToolCall { name: &'static str, arguments: Value },
    // The stream's own corner cases (llm-openai's event stream and its errors).
    /// As `Text`, with CRLF line endings (valid server-sent events).
    StreamCrlf(Vec<&'static str>),
    /// A 200 with a whole chat-completions JSON body: a server that ignored `stream: true`.
    StreamJsonBody(&'static str),
    /// The pieces, then the connection closes without `[DONE]`.
    StreamCutShort(Vec<&'static str>),
    /// Reads the request and never sends a response head, until the client hangs up (recorded
    /// in `hangups`) or a minute passed.
    StreamNoHead,
    /// The text as one event, written in two parts cut inside a multi-byte UTF-8 character.
    StreamSplitUtf8(&'static str),
    // Whole turns, whatever their size and however many at once.
    /// A long answer: the text in 100-byte events, written as fast as the client takes them.
    Bulk(&'static str),
    /// A model that uses the tools from the last message alone, so concurrent turns get
    /// consistent answers: a user's `write PATH: TEXT` becomes a `write_file` call (`read PATH`
    /// a `read_file` call, `run_command {JSON}` a `run_command` call with those arguments)
    /// under the id `id` (none: the id is left out), and a tool's result becomes the answer
    /// `tool said: <content>`.
    ToolEcho { id: Option<&'static str> },
    /// A model with a context window: a request larger than `max_bytes` (see
    /// [`request_bytes`]) is refused as OpenAI refuses it (400, `context_length_exceeded`);
    /// a smaller one is answered by `then`.
    ContextLimit { max_bytes: usize, then: Box<Script> },
}

/// The size of what a request asks the model to read: its messages (the system prompt is
/// the first) and its tools, as JSON.
pub fn request_bytes(body: &Value) -> usize {
    body["messages"].to_string().len() + body["tools"].to_string().len()
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
    hangups: Arc<Mutex<Vec<Instant>>>,
}

impl Server {
    /// Serves `scripts` in order, one per request (the last one repeats).
    pub fn start(scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let script = Arc::new(Mutex::new(scripts));
        let received = Arc::new(Mutex::new(Vec::new()));
        let hangups = Arc::new(Mutex::new(Vec::new()));
        let (s, r, h) = (Arc::clone(&script), Arc::clone(&received), Arc::clone(&hangups));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r, h) = (Arc::clone(&s), Arc::clone(&r), Arc::clone(&h));
                std::thread::spawn(move || serve(stream, &s, &r, &h));
            }
        });
        Self { port, script, received, hangups }
    }

    /// When the server noticed a client hang up in the middle of a `Drip`, or while it
    /// withheld the head (`StreamNoHead`).
    pub fn hangups(&self) -> Vec<Instant> {
        self.hangups.lock().expect("lock").clone()
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

fn serve(
    stream: TcpStream,
    script: &Mutex<Vec<Script>>,
    received: &Mutex<Vec<Received>>,
    hangups: &Mutex<Vec<Instant>>,
) {
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
    received.lock().expect("lock").push(Received { path, headers, body: body.clone() });
    let next = {
        let mut scripts = script.lock().expect("lock");
        if scripts.len() > 1 { scripts.remove(0) } else { scripts.first().cloned().unwrap_or(Script::Status(500)) }
    };
    let next = match next {
        Script::ContextLimit { max_bytes, then } if request_bytes(&body) <= max_bytes => *then,
        Script::ContextLimit { max_bytes, .. } => {
            let (limit, got) = (max_bytes / 4, request_bytes(&body) / 4);
            let body = json!({"error": {
                "message": format!("This model's maximum context length is {limit} tokens. However, your messages resulted in {got} tokens. Please reduce the length of the messages."),
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
            .to_string();
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        other => other,
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
        Script::Drip { piece, every } => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let started = Instant::now();
            // A hang-up shows as a failed write (RST after the client closed), at the latest a
            // few writes later; give up after a minute.
            while started.elapsed() < Duration::from_secs(60) {
                if !send(
                    &mut out,
                    &json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
                ) {
                    hangups.lock().expect("lock").push(Instant::now());
                    return;
                }
                std::thread::sleep(every);
            }
        }
        Script::Stall(pieces) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            for piece in pieces {
                send(&mut out, &json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}));
            }
            std::thread::sleep(Duration::from_secs(60));
        }
        Script::ToolCall { name, arguments } => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let call = |function: Value| {
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_abc", "type": "function", "function": function}]}, "finish_reason": null}]})
            };
            send(&mut out, &call(json!({"name": name, "arguments": ""})));
            let arguments = arguments.to_string();
            let (first, rest) = arguments.split_at(arguments.len() / 3);
            let (second, third) = rest.split_at(rest.len() / 2);
            for fragment in [first, second, third] {
                let delta = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": fragment}}]}, "finish_reason": null}]});
                send(&mut out, &delta);
            }
            send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
            let _ = out.write_all(b"data: [DONE]\n\n");
        }
        Script::StreamCrlf(pieces) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let _ = out.write_all(b": a comment, CRLF too\r\n\r\n");
            for piece in pieces {
                let chunk = json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                let _ = out.write_all(format!("data: {chunk}\r\n\r\n").as_bytes());
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = out.write_all(b"data: [DONE]\r\n\r\n");
        }
        Script::StreamJsonBody(text) => {
            let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
            .to_string();
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Script::StreamCutShort(pieces) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            for piece in pieces {
                send(&mut out, &json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}));
            }
        }
        Script::StreamNoHead => {
            let started = Instant::now();
            let _ = out.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buffer = [0u8; 256];
            while started.elapsed() < Duration::from_secs(60) {
                match out.read(&mut buffer) {
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Ok(n) if n > 0 => {}
                    // End of stream or a reset: the client hung up.
                    _ => {
                        hangups.lock().expect("lock").push(Instant::now());
                        return;
                    }
                }
            }
        }
        Script::Bulk(text) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let mut rest = text;
            while !rest.is_empty() {
                let mut cut = rest.len().min(100);
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                let (piece, tail) = rest.split_at(cut);
                let chunk = json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                if out.write_all(format!("data: {chunk}\n\n").as_bytes()).is_err() {
                    return;
                }
                rest = tail;
            }
            send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
            let _ = out.write_all(b"data: [DONE]\n\n");
        }
        Script::ToolEcho { id } => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            // This request's own conversation (others may be in flight at the same time).
            let last = body["messages"].as_array().and_then(|m| m.last().cloned()).unwrap_or(Value::Null);
            let said = last["content"].as_str().unwrap_or_default().to_owned();
            let call = if last["role"] == "user" {
                if let Some((path, text)) = said.strip_prefix("write ").and_then(|r| r.split_once(':')) {
                    Some(("write_file", json!({"path": path.trim(), "content": text.trim()})))
                } else if let Some(arguments) = said.strip_prefix("run_command ") {
                    Some(("run_command", serde_json::from_str(arguments).expect("run_command's arguments as JSON")))
                } else {
                    said.strip_prefix("read ").map(|path| ("read_file", json!({"path": path.trim()})))
                }
            } else {
                None
            };
            match call {
                Some((name, arguments)) => {
                    let mut start =
                        json!({"index": 0, "type": "function", "function": {"name": name, "arguments": ""}});
                    if let Some(id) = id {
                        start["id"] = json!(id);
                    }
                    send(
                        &mut out,
                        &json!({"choices": [{"index": 0, "delta": {"tool_calls": [start]}, "finish_reason": null}]}),
                    );
                    let fragment = json!({"index": 0, "function": {"arguments": arguments.to_string()}});
                    send(
                        &mut out,
                        &json!({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": null}]}),
                    );
                    send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
                }
                None => {
                    let answer = format!("tool said: {said}");
                    send(
                        &mut out,
                        &json!({"choices": [{"index": 0, "delta": {"content": answer}, "finish_reason": null}]}),
                    );
                    send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
                }
            }
            let _ = out.write_all(b"data: [DONE]\n\n");
        }
        Script::StreamSplitUtf8(text) => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let chunk = json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
            let event = format!("data: {chunk}\n\n");
            // Inside the first multi-byte character: its first byte goes alone.
            let cut = event.find(|c: char| c.len_utf8() > 1).map_or(event.len() / 2, |at| at + 1);
            let (first, second) = event.as_bytes().split_at(cut);
            let _ = out.write_all(first).and_then(|()| out.flush());
            std::thread::sleep(Duration::from_millis(100));
            let _ = out.write_all(second).and_then(|()| out.flush());
            std::thread::sleep(Duration::from_millis(2));
            send(&mut out, &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
            let _ = out.write_all(b"data: [DONE]\n\n");
        }
        // A limit inside a limit is a test's mistake: the request fails loudly.
        Script::ContextLimit { .. } => {
            let _ =
                out.write_all(b"HTTP/1.1 500 Nested ContextLimit\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let _ = out.flush();
}

/// Sends one event; false once the client is gone.
fn send(out: &mut TcpStream, chunk: &Value) -> bool {
    let sent = out.write_all(format!("data: {chunk}\n\n").as_bytes()).and_then(|()| out.flush()).is_ok();
    std::thread::sleep(Duration::from_millis(2));
    sent
}
