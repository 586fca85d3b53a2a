//! Capsule-host connections: a capsule running in another process, served by the daemon.
//!
//! A capsule host authenticates like any client (peer UID, token) and names, in its
//! handshake, the capsule it serves ([`CapsuleAttach`]). The daemon attaches it
//! ([`CapsuleSupervisor::attach`]: ticket, pins, configuration, grant, audit) and answers with a
//! [`SessionStart`]: the module, the limits and the plan, or why not. From then on the
//! connection carries the capsule's host calls, strictly one at a time (the frames are wire
//! types, [`crate::types::capsule_session`]):
//!
//! ```text
//! host   → daemon  {"id": 7, "call": {"fn": "kv_get", "key": "<base64>"}}
//! daemon → host    {"id": 7, "reply": {"reply": "bytes", "value": "<base64>"}}
//! ```
//!
//! Calls are performed by the capsule's [`crate::wasm::context::CapsuleContext`] on a thread
//! of the daemon (they block: `ipc_recv`, approvals, HTTP), with the same checks and audit
//! as a capsule on a daemon thread. A capsule host whose capsule failed says why in a last
//! frame; the reason goes to the supervisor that started the process (the attachment's
//! report), which records the crash from it. When the connection ends the session's lifecycle is
//! stopped, which wakes a call that is waiting, and the context (subscriptions, streams) is
//! dropped with its thread.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::bridge::WRITE_TIMEOUT;
use super::frame::{FrameReader, write_frame};
use crate::types::CapsuleAttach;
use crate::types::capsule_session::{
    Attached, Blob, CallFrame, HostCall, HostReply, ReplyFrame, SessionRequest, SessionStart,
};
use crate::wasm::development::Refusal;
use crate::wasm::host_call::HostBackend;
use crate::wasm::supervisor::{Attachment, CapsuleSupervisor};

/// Largest frame either side of a session sends: the session start carries a module of up to
/// 64 MiB in base64; calls carry at most a 10 MiB file or body.
pub const MAX_SESSION_FRAME: usize = 96 * 1024 * 1024;

/// Serves one capsule-host connection until it closes or the daemon stops.
pub(super) async fn serve(
    capsules: Arc<CapsuleSupervisor>,
    id: u64,
    attach: CapsuleAttach,
    mut reader: FrameReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    mut stop: watch::Receiver<bool>,
) {
    let attached = tokio::task::spawn_blocking(move || capsules.attach(&attach)).await;
    let Attachment { prepared, lifecycle, limits, registration, report } = match attached {
        Ok(Ok(attachment)) => attachment,
        Ok(Err(Refusal::Refused(reason))) => {
            log::warn!("client#{id}: capsule host refused: {reason}");
            let _ = send(&mut writer, &SessionStart::Refused { reason }).await;
            return;
        }
        Ok(Err(Refusal::ConsentRequired { capsule, capabilities })) => {
            let _ = send(&mut writer, &SessionStart::ConsentRequired { capsule, capabilities }).await;
            return;
        }
        Err(e) => return log::error!("client#{id}: attaching a capsule host failed: {e}"),
    };
    let name = prepared.context.capsule().to_owned();
    let start = Attached { capsule: name.clone(), module: Blob(prepared.wasm), limits, plan: prepared.plan };
    if let Err(e) = send(&mut writer, &SessionStart::Attached(start)).await {
        return log::warn!("client#{id}: cannot start the session of capsule {name}: {e}");
    }
    log::info!("client#{id}: capsule host attached for capsule {name}");
    let (calls, calls_rx) = std::sync::mpsc::channel::<(u64, HostCall)>();
    let (replies_tx, mut replies) = mpsc::channel::<ReplyFrame>(1);
    let mut context = prepared.context;
    let worker = std::thread::Builder::new().name(format!("capsule-session:{name}")).spawn(move || {
        while let Ok((call_id, call)) = calls_rx.recv() {
            // As in-process: a kernel-side bug costs the guest its call, not the session.
            let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| context.call(call)))
                .unwrap_or_else(|_| HostReply::Trap("the host failed while serving this call (a bug)".to_owned()));
            let reply = ReplyFrame { id: call_id, reply };
            if replies_tx.blocking_send(reply).is_err() {
                return;
            }
        }
    });
    if let Err(e) = worker {
        return log::error!("client#{id}: cannot start a session thread for capsule {name}: {e}");
    }
    reader.set_max(MAX_SESSION_FRAME);
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopping);
    let ended = loop {
        tokio::select! {
            () = &mut stopping => break "daemon shutting down".to_owned(),
            reply = replies.recv() => match reply {
                Some(reply) => {
                    if let Err(e) = send(&mut writer, &reply).await {
                        break format!("write failed: {e}");
                    }
                }
                None => break "session thread ended".to_owned(),
            },
            frame = reader.next_frame() => match frame {
                Ok(Some(frame)) => match serde_json::from_slice::<CallFrame>(&frame) {
                    Ok(CallFrame { id: call_id, request: SessionRequest::Call(call) }) => {
                        if calls.send((call_id, call)).is_err() {
                            break "session thread ended".to_owned();
                        }
                    }
                    Ok(CallFrame { id: call_id, request: SessionRequest::Failed(failure) }) => {
                        // Recorded before the answer: the process exits once it has it.
                        log::info!("client#{id}: capsule {name} reports that it failed: {failure}");
                        if let Some(report) = &report {
                            report.failed(failure);
                        }
                        if let Err(e) = send(&mut writer, &ReplyFrame { id: call_id, reply: HostReply::value(0) }).await {
                            break format!("write failed: {e}");
                        }
                    }
                    Err(e) => {
                        // A malformed call still gets an answer when it names its id: the
                        // guest that made it traps, the session goes on.
                        let Some(call_id) = serde_json::from_slice::<Value>(&frame).ok().and_then(|v| v.get("id")?.as_u64())
                        else {
                            break format!("frame is not a host call: {e}");
                        };
                        let reply = ReplyFrame { id: call_id, reply: HostReply::Trap(format!("malformed host call: {e}")) };
                        if let Err(e) = send(&mut writer, &reply).await {
                            break format!("write failed: {e}");
                        }
                    }
                },
                Ok(None) => break "capsule host disconnected".to_owned(),
                Err(e) => break format!("read error: {e}"),
            },
        }
    };
    lifecycle.stop();
    drop(calls);
    drop(registration);
    log::info!("client#{id}: capsule {name} session ended ({ended})");
}

async fn send<T: Serialize>(writer: &mut OwnedWriteHalf, frame: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    match timeout(WRITE_TIMEOUT, write_frame(writer, &bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "capsule host is not reading")),
    }
}
