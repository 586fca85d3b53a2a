//! http-fetch: `/fetch URL` and `/stream URL` fetch a page with the capsule's API token,
//! which the host fills in from `{{secret:FETCH_TOKEN}}`: the capsule never holds it. Its
//! install hook asks a person for the token (`elicit`) when the operator gave none.

use astrid_sdk::http::Request;
use astrid_sdk::types::{IpcPayload, UserInputFields};
use astrid_sdk::{Hook, ipc};

fn fetch(url: &str, streamed: bool) -> astrid_sdk::Result<String> {
    let request = Request::new("GET", url).header("Authorization", "Bearer {{secret:FETCH_TOKEN}}");
    if !streamed {
        let response = request.send()?;
        return Ok(format!("{}: {}", response.status, String::from_utf8_lossy(&response.body)));
    }
    let mut stream = request.stream()?;
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.read()? {
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    Ok(format!("{} in {chunks} chunk(s): {}", stream.status, String::from_utf8_lossy(&body)))
}

fn hook(_action: &str, payload: &[u8]) -> Hook {
    let Some(UserInputFields { text, session_id, .. }) = ipc::user_input(payload) else {
        return Hook::Continue(None);
    };
    let (streamed, url) = match text.trim().split_once(' ') {
        Some(("/fetch", url)) => (false, url.trim()),
        Some(("/stream", url)) => (true, url.trim()),
        _ => return Hook::Continue(None),
    };
    let text = fetch(url, streamed).unwrap_or_else(|e| format!("error: {e}"));
    let _ = ipc::publish(
        "agent.v1.response",
        &IpcPayload::AgentResponse { text, is_final: true, session_id, outcome: None },
    );
    Hook::Final(serde_json::Value::Null)
}

/// On the first start after an install: ask for the token if the operator gave none. The
/// host stores it and fills it into requests; this capsule never sees it.
fn install() {
    if !astrid_sdk::has_config("FETCH_TOKEN")
        && let Err(e) = astrid_sdk::elicit("FETCH_TOKEN", Some("API token sent as a bearer token"))
    {
        astrid_sdk::log(&format!("no token: {e}; requests will be refused until one is given"));
    }
}

astrid_sdk::capsule!(hook = hook, install = install);
