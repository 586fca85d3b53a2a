//! `CallTool` and `CancelToolCall`: a client calls a tool exactly as the agent does.
//!
//! `astrid mcp serve` offers Astrid's tools to an MCP client; each of that client's calls
//! must meet what the agent's own calls meet: the tool's capability checks, the approval it
//! asks for, the audit trail, the overlay for writes. So the kernel does not run the tool
//! itself: it publishes the `tool_execute_request` the orchestrator would publish, on
//! `tool.v1.execute.<name>`, and waits for the `tool_execute_result` on `….result`, like the
//! orchestrator. A capsule tool (tools-fs, tools-shell) and the MCP bridge (`server:tool`)
//! serve it as they serve the agent, none of them able to tell the difference.
//!
//! **Whose call it is.** The request carries a [`Cause`] bound to the requesting connection
//! (its workspace, a session of its own, a fresh request id), which the kernel carries along
//! the chain as for a prompt: the tool's approval questions go to that connection (or, when
//! nobody answers there, to the other frontends: see [`super::ask`]), a command's output
//! goes to it, and "allow for the session" lasts as long as the connection. The call is on
//! the record as `tool.call`, naming the connection and the client it speaks for.
//!
//! **How it ends.** With the tool's result; with a cancel (`CancelToolCall`, or the
//! connection closing): the call's pending questions are denied, its commands killed and a
//! `tool_cancel_request` goes out (the MCP bridge cancels the call at the server), then the
//! tool's own answer ("killed", "not approved") is waited for a moment; or after
//! [`BACKSTOP`], which only a tool that never answers reaches. A name nobody serves is
//! answered at once.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Kernel;
use super::bus::{BusMessage, SubscriberId};
use super::cause::Cause;
use super::tool_listing::valid_tool_name;
use crate::audit::{Actor, Decision};
use crate::types::management::{ToolCallCancelled, ToolCalled, ToolListing};
use crate::types::topics::{TOOL_CANCEL_TOPIC, TOOL_EXECUTE_PREFIX};
use crate::types::{IpcMessage, IpcPayload};

/// The longest a call waits for its tool: the orchestrator's limit for a turn's tools, above
/// a command's own timeout and an approval's.
pub const BACKSTOP: Duration = Duration::from_secs(720);
/// How long a cancelled call waits for the tool to say how it ended.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// The session of a connection's tool calls: "allow for the session" covers its calls until
/// it disconnects.
pub const TOOL_CALL_SESSION: &str = "tool-calls";
/// Longest `call_id` taken (characters).
const MAX_CALL_ID: usize = 128;

/// One call in flight.
#[derive(Debug)]
struct InFlight {
    client: SubscriberId,
    /// The caller's id for it.
    call_id: String,
    /// Ends the wait (a cancel).
    cancel: Option<oneshot::Sender<()>>,
}

/// The calls in flight, and the tools known to be served (the last `ListTools`).
#[derive(Debug, Default)]
pub struct ToolCalls {
    in_flight: Mutex<Vec<InFlight>>,
    known: Mutex<Option<ToolListing>>,
    /// What the caller should read beside a tool's answer, by request ([`Cause::turn`]): why
    /// nobody was asked, and how to allow it (the tool only learns "not approved").
    notes: Mutex<Vec<(Uuid, String)>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ToolCalls {
    /// Remembers what the last listing offered: a call of a tool in it is made at once.
    pub(super) fn remember(&self, listing: &ToolListing) {
        *locked(&self.known) = Some(listing.clone());
    }

    fn listed(&self, name: &str) -> bool {
        locked(&self.known).as_ref().is_some_and(|listing| listing.tools.iter().any(|tool| tool.name == name))
    }

    /// Notes `text` for the call the request `turn` made, if it is one in flight.
    pub fn note(&self, turn: Uuid, text: &str) {
        let mut notes = locked(&self.notes);
        if notes.len() < 1024 && !notes.iter().any(|(t, n)| *t == turn && n == text) {
            notes.push((turn, text.to_owned()));
        }
    }

    fn take_notes(&self, turn: Uuid) -> Vec<String> {
        let mut notes = locked(&self.notes);
        let (taken, kept) = std::mem::take(&mut *notes).into_iter().partition(|(t, _)| *t == turn);
        *notes = kept;
        taken.into_iter().map(|(_, text)| text).collect::<Vec<_>>()
    }

    /// Cancels `client`'s call `call_id`; whether it was in flight.
    pub fn cancel(&self, client: SubscriberId, call_id: &str) -> bool {
        let mut in_flight = locked(&self.in_flight);
        let Some(call) = in_flight.iter_mut().find(|c| c.client == client && c.call_id == call_id) else {
            return false;
        };
        call.cancel.take().is_some_and(|cancel| cancel.send(()).is_ok())
    }

    /// Cancels every call of `client` (its connection closed); returns how many.
    pub fn connection_closed(&self, client: SubscriberId) -> usize {
        let mut in_flight = locked(&self.in_flight);
        in_flight
            .iter_mut()
            .filter(|c| c.client == client)
            .filter_map(|c| c.cancel.take())
            .map(|cancel| cancel.send(()))
            .filter(Result::is_ok)
            .count()
    }
}

/// Forgets a call however its wait ends.
struct Forget<'a> {
    calls: &'a ToolCalls,
    client: SubscriberId,
    call_id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        locked(&self.calls.in_flight).retain(|c| !(c.client == self.client && c.call_id == self.call_id));
    }
}

/// What a call is, as the router hands it over.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) name: String,
    pub(super) arguments: Value,
    pub(super) call_id: String,
    /// The requesting connection.
    pub(super) client: SubscriberId,
    pub(super) principal: String,
    pub(super) actor: Actor,
    pub(super) workspace: Option<Arc<std::path::PathBuf>>,
}

/// Makes the call and says how it went; audits it (`tool.call`).
pub(super) async fn call(kernel: &Kernel, request: Request) -> ToolCalled {
    // A tool served by a capsule still starting at boot would not hear the call.
    kernel.start_gate().passed().await;
    let outcome = match refusal(kernel, &request).await {
        Some(refused) => Err(refused),
        None => made(kernel, &request).await,
    };
    let (content, is_error, decision, rule) = match outcome {
        Ok(Made { content, is_error, how }) => (content, is_error, Decision::Allow, how),
        Err(refused) => (refused.clone(), true, Decision::Deny, refused),
    };
    kernel.record(&request.principal, request.actor.clone(), "tool.call", &request.name, decision, &rule);
    ToolCalled { call_id: request.call_id, content, is_error }
}

/// Why the call cannot be made at all, if it cannot.
async fn refusal(kernel: &Kernel, request: &Request) -> Option<String> {
    let name = &request.name;
    if !valid_tool_name(name) {
        return Some(format!("{name:?} is not a tool name (letters, digits, _ - and one : for server:tool)"));
    }
    if !request.arguments.is_object() {
        return Some(format!("the arguments of {name} must be a JSON object"));
    }
    if request.call_id.is_empty() || request.call_id.chars().count() > MAX_CALL_ID {
        return Some(format!("a call_id is 1 to {MAX_CALL_ID} characters"));
    }
    if locked(&kernel.tool_calls.in_flight).iter().any(|c| c.client == request.client && c.call_id == request.call_id) {
        return Some(format!("a call {} of this connection is already in flight", request.call_id));
    }
    // A name nobody serves would never be answered: known from the last listing (what a
    // client calls from), else asked for afresh, as the agent would.
    if !kernel.tool_calls.listed(name) {
        let listing = super::tool_listing::list(kernel).await;
        if !listing.tools.iter().any(|tool| tool.name == *name) {
            return Some(format!("no tool called {name} is offered (astrid tools list)"));
        }
    }
    None
}

/// A call that was made, and how it ended.
struct Made {
    content: String,
    is_error: bool,
    /// For the audit trail.
    how: String,
}

async fn made(kernel: &Kernel, request: &Request) -> Result<Made, String> {
    let internal = format!("call-{}", Uuid::new_v4());
    let cause = Cause::for_call(request.client, TOOL_CALL_SESSION, request.workspace.clone(), &request.call_id);
    let topic = format!("{TOOL_EXECUTE_PREFIX}{}", request.name);
    let mut results = kernel.bus().subscribe(format!("tool call {internal}"), &[&format!("{topic}.result")]);
    let (cancel, cancelled) = oneshot::channel();
    locked(&kernel.tool_calls.in_flight).push(InFlight {
        client: request.client,
        call_id: request.call_id.clone(),
        cancel: Some(cancel),
    });
    let _forget = Forget { calls: &kernel.tool_calls, client: request.client, call_id: request.call_id.clone() };
    let payload = IpcPayload::ToolExecuteRequest {
        call_id: internal.clone(),
        tool_name: request.name.clone(),
        arguments: request.arguments.clone(),
    };
    let mut message = IpcMessage::new(&topic, payload, kernel.session());
    message.principal = Some(request.principal.clone());
    let delivered =
        kernel.bus().publish_paced(BusMessage::from_kernel(message).caused_by(Some(Arc::clone(&cause)))).await;
    if delivered == 0 {
        return Err(format!("nobody serves {} now (astrid tools list)", request.name));
    }
    let result = async {
        while let Some(message) = results.recv().await {
            if let IpcPayload::ToolExecuteResult { call_id, result } = &message.message.payload
                && *call_id == internal
            {
                return Some((result.content.clone(), result.is_error));
            }
        }
        None
    };
    tokio::pin!(result);
    let answered = tokio::select! {
        answered = &mut result => answered,
        _ = cancelled => {
            let withdrawn = kernel.questions().withdraw_cause(cause.turn);
            let killed = kernel.running_commands().cancel_cause(cause.turn);
            let cancel = IpcPayload::ToolCancelRequest { call_ids: vec![internal.clone()] };
            let message = IpcMessage::new(TOOL_CANCEL_TOPIC, cancel, kernel.session());
            kernel.bus().publish(BusMessage::from_kernel(message).caused_by(Some(Arc::clone(&cause))));
            log::info!(
                "tool call {} ({}) cancelled: {withdrawn} question(s) denied, {killed} command(s) killed",
                request.call_id,
                request.name
            );
            let last_word = tokio::time::timeout(CANCEL_GRACE, &mut result).await.ok().flatten();
            let content = match last_word {
                Some((content, _)) => format!("cancelled: {content}"),
                None => "cancelled".to_owned(),
            };
            return Ok(Made { content, is_error: true, how: "cancelled by the caller".to_owned() });
        }
        () = tokio::time::sleep(BACKSTOP) => {
            kernel.running_commands().cancel_cause(cause.turn);
            kernel.questions().withdraw_cause(cause.turn);
            return Err(format!("{} did not answer within {} s", request.name, BACKSTOP.as_secs()));
        }
    };
    let notes = kernel.tool_calls.take_notes(cause.turn);
    match answered {
        Some((mut content, is_error)) => {
            for note in notes {
                content.push_str(&format!("\n\n({note})"));
            }
            let how = if is_error {
                format!("the tool answered with an error: {}", first_line(&content))
            } else {
                "ok".to_owned()
            };
            Ok(Made { content, is_error, how })
        }
        None => Err("the bus closed".to_owned()),
    }
}

/// The first line of `text`, cut at 200 characters: enough for the audit trail.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(200).collect()
}

/// `CancelToolCall`: cancels the connection's call; the call answers its own request.
pub(super) fn cancel(kernel: &Kernel, client: Option<SubscriberId>, call_id: &str) -> ToolCallCancelled {
    let cancelled = client.is_some_and(|client| kernel.tool_calls.cancel(client, call_id));
    ToolCallCancelled { call_id: call_id.to_owned(), cancelled }
}
