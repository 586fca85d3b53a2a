//! One management request to the daemon, starting an ephemeral daemon if none runs.

use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

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

/// The data of a `Success` reply; an `Error` reply becomes an error with its message.
pub fn success(reply: KernelResponse) -> anyhow::Result<Value> {
    match reply {
        KernelResponse::Success(value) => Ok(value),
        KernelResponse::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply {other:?}"),
    }
}
