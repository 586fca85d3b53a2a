//! What a client sends after the handshake: a frame as the bridge decodes it (allowlist,
//! limits, payload conversion), the wire types a reference frontend would send, and the
//! management requests. Nothing may panic; whatever decodes re-encodes.
#![no_main]

use astrid::ipc::bridge::decode_client_frame;
use astrid::types::{EgressFrame, IpcMessage, IpcPayload, KernelRequest, KernelResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_client_frame(data, uuid::Uuid::nil()) {
        let frame = EgressFrame::from_message(&message);
        serde_json::to_vec(&frame).expect("an accepted message renders");
        let _ = message.payload.session_id();
    }
    if let Ok(message) = serde_json::from_slice::<IpcMessage>(data) {
        let _ = serde_json::to_vec(&message);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let payload = IpcPayload::from_json_value(value);
        let _ = payload.to_guest_bytes();
    }
    if let Ok(request) = serde_json::from_slice::<KernelRequest>(data) {
        serde_json::to_vec(&request).expect("a request re-encodes");
    }
    let _ = serde_json::from_slice::<KernelResponse>(data);
});
