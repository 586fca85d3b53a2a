//! Socket bytes: length-prefixed frames read from an arbitrary byte stream, each judged as a
//! handshake. Nothing may panic, and no frame may exceed the limit it was read under.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use astrid::ipc::SessionToken;
use astrid::ipc::frame::{BlockingFrames, MAX_HANDSHAKE_FRAME};
use astrid::ipc::handshake::evaluate;
use libfuzzer_sys::fuzz_target;

fn token() -> &'static SessionToken {
    static TOKEN: OnceLock<SessionToken> = OnceLock::new();
    TOKEN.get_or_init(|| SessionToken::generate().expect("token"))
}

fuzz_target!(|data: &[u8]| {
    let mut stream = Cursor::new(data);
    let mut frames = BlockingFrames::default();
    while let Ok(Some(frame)) = frames.next_frame(&mut stream, MAX_HANDSHAKE_FRAME) {
        assert!(frame.len() <= MAX_HANDSHAKE_FRAME);
        let _ = evaluate(&frame, token());
    }
});
