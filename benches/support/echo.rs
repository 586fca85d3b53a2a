//! The baselines' echo server: this bench binary again, in a process of its own, answering
//! each length-prefixed frame with itself (included by `#[path]`: each bench is its own crate).
//! A round trip to it is the fastest honest one the machine does with the same client code
//! and framing as the measured path.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to the socket path) in the echo server's environment.
const ECHO_ENV: &str = "ASTRID_BENCH_ECHO";

/// When this process is the echo server, serves until the bench's pipe closes and exits;
/// otherwise returns at once. First thing in a bench's `main`.
pub fn serve_if_asked() {
    if let Some(path) = std::env::var_os(ECHO_ENV) {
        serve(Path::new(&path));
        std::process::exit(0);
    }
}

/// This binary as the echo server at `path`, once it accepts connections.
pub fn spawn(path: &Path) -> Child {
    let child = Command::new(std::env::current_exe().expect("this bench binary"))
        .env(ECHO_ENV, path)
        // Its end of the pipe closes when this process ends, however it ends: the echo
        // server then exits rather than outliving a failed run.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the echo server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "the echo server did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

/// Echoes each frame back on its connection, a thread per connection, until standard input
/// (the bench's pipe) closes.
fn serve(path: &Path) {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let listener = UnixListener::bind(path).expect("bind the echo socket");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            loop {
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).is_err() {
                    return;
                }
                let len = u32::from_be_bytes(header) as usize;
                buffer.resize(4 + len, 0);
                buffer[..4].copy_from_slice(&header);
                if stream.read_exact(&mut buffer[4..]).is_err() || stream.write_all(&buffer).is_err() {
                    return;
                }
            }
        });
    }
}
