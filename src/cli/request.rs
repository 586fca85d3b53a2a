//! One management request to the daemon, starting an ephemeral daemon if none runs.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::spawn;
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::types::{KernelRequest, KernelResponse};

/// How long a command waits for the daemon's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ensures a daemon, sends `request` on `astrid.v1.request.<suffix>`, returns the reply.
pub fn send(home: &AstridHome, suffix: &str, request: &KernelRequest) -> anyhow::Result<KernelResponse> {
    spawn::ensure_daemon(home)?;
    let mut client = Client::connect(home)?;
    Ok(client.request(suffix, request, REQUEST_TIMEOUT)?)
}

/// [`send`], and the `Success` data as the type `request` answers with (see
/// [`crate::types::management`]); an `Error` reply becomes an error with its message.
pub fn call<T: DeserializeOwned>(home: &AstridHome, suffix: &str, request: &KernelRequest) -> anyhow::Result<T> {
    Ok(send(home, suffix, request)?.into_data()?)
}

/// A reply's data as JSON text for `--json`: keys sorted at every level, as the daemon sends
/// them (it encodes through a JSON value), so the output is what it always was.
pub fn json_text<T: Serialize>(data: &T, pretty: bool) -> serde_json::Result<String> {
    let value = serde_json::to_value(data)?;
    if pretty { serde_json::to_string_pretty(&value) } else { Ok(value.to_string()) }
}
