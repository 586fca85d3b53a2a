//! The capsule-host session frames against `tests/data/session-vectors.jsonl`: every frame
//! kind, every host call, failure report and reply, parsed into its type and written back
//! unchanged.

use std::collections::BTreeSet;
use std::path::Path;

use astrid::types::capsule_session::{
    CallFrame, CapsuleFailure, HostCall, HostReply, ReplyFrame, SessionRequest, SessionStart,
};
use astrid::wasm::{HOST_FUNCTIONS, Side};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const VECTORS: &str = "tests/data/session-vectors.jsonl";
/// The host calls a capsule host makes itself (the runner's steps, the link's read-ahead),
/// which no guest can import.
const RUNNER_STEPS: &[&str] = &["lifecycle_done", "next_event", "ipc_recv_many", "ipc_resume"];

/// A vector as read from the file: `(name, kind, json)`.
type Vector = (String, String, Value);

fn vectors() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS);
    let text = std::fs::read_to_string(&path).expect("vectors");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let vector: Value = serde_json::from_str(line).expect("vector line is JSON");
            let field = |key: &str| vector[key].as_str().unwrap_or_else(|| panic!("{key} in {line}")).to_owned();
            (field("name"), field("kind"), vector["json"].clone())
        })
        .collect()
}

fn round_trip<T: Serialize + DeserializeOwned>(json: &Value) -> Result<(T, Value), String> {
    let parsed: T = serde_json::from_value(json.clone()).map_err(|e| format!("parse: {e}"))?;
    let back = serde_json::to_value(&parsed).map_err(|e| format!("serialize: {e}"))?;
    Ok((parsed, back))
}

/// Which variant a call is, by position. Adding a variant to [`HostCall`] breaks this match,
/// and the test below then wants a vector for the new position: no call crosses the socket
/// without its shape pinned here.
fn call_index(call: &HostCall) -> usize {
    match call {
        HostCall::Log { .. } => 0,
        HostCall::SignalReady => 1,
        HostCall::GetConfig { .. } => 2,
        HostCall::HasConfig { .. } => 3,
        HostCall::RequestApproval { .. } => 4,
        HostCall::Elicit { .. } => 5,
        HostCall::KvGet { .. } => 6,
        HostCall::KvSet { .. } => 7,
        HostCall::KvDelete { .. } => 8,
        HostCall::KvListKeys { .. } => 9,
        HostCall::KvClearPrefix { .. } => 10,
        HostCall::KvCas { .. } => 11,
        HostCall::IpcPublish { .. } => 12,
        HostCall::IpcSubscribe { .. } => 13,
        HostCall::IpcRecv { .. } => 14,
        HostCall::IpcPoll { .. } => 15,
        HostCall::IpcUnsubscribe { .. } => 16,
        HostCall::FsRead { .. } => 17,
        HostCall::FsWrite { .. } => 18,
        HostCall::FsExists { .. } => 19,
        HostCall::FsStat { .. } => 20,
        HostCall::FsReaddir { .. } => 21,
        HostCall::FsMkdir { .. } => 22,
        HostCall::FsUnlink { .. } => 23,
        HostCall::HttpRequest { .. } => 24,
        HostCall::HttpStreamStart { .. } => 25,
        HostCall::HttpStreamOpen { .. } => 26,
        HostCall::HttpStreamHead { .. } => 27,
        HostCall::HttpStreamRead { .. } => 28,
        HostCall::HttpStreamWait { .. } => 29,
        HostCall::HttpStreamClose { .. } => 30,
        HostCall::LifecycleDone { .. } => 31,
        HostCall::NextEvent { .. } => 32,
        HostCall::ProcessSpawn { .. } => 33,
        HostCall::ProcessRead { .. } => 34,
        HostCall::ProcessWait { .. } => 35,
        HostCall::ProcessKill { .. } => 36,
        HostCall::IpcRecvMany { .. } => 37,
        HostCall::IpcResume { .. } => 38,
    }
}
const CALL_VARIANTS: usize = 39;

fn failure_index(failure: &CapsuleFailure) -> usize {
    match failure {
        CapsuleFailure::Load { .. } => 0,
        CapsuleFailure::LifecycleHook { .. } => 1,
        CapsuleFailure::Guest { .. } => 2,
        CapsuleFailure::Host { .. } => 3,
    }
}
const FAILURE_VARIANTS: usize = 4;

fn reply_index(reply: &HostReply) -> usize {
    match reply {
        HostReply::Value(_) => 0,
        HostReply::Bytes(_) => 1,
        HostReply::Trap(_) => 2,
        HostReply::Messages(_) => 3,
    }
}
const REPLY_VARIANTS: usize = 4;

fn start_index(start: &SessionStart) -> usize {
    match start {
        SessionStart::Attached(_) => 0,
        SessionStart::Refused { .. } => 1,
        SessionStart::ConsentRequired { .. } => 2,
    }
}
const START_VARIANTS: usize = 3;

#[test]
fn every_session_frame_round_trips_exactly_and_every_variant_has_a_vector() {
    let mut failures = Vec::new();
    let mut calls = BTreeSet::new();
    let mut failures_seen = BTreeSet::new();
    let mut replies = BTreeSet::new();
    let mut starts = BTreeSet::new();
    let mut names = BTreeSet::new();
    let vectors = vectors();
    for (name, kind, json) in &vectors {
        assert!(names.insert(name.clone()), "vector {name} appears twice");
        let back = match kind.as_str() {
            "SessionStart" => round_trip::<SessionStart>(json).map(|(start, back)| {
                starts.insert(start_index(&start));
                back
            }),
            "CallFrame" => round_trip::<CallFrame>(json).map(|(frame, back)| {
                match &frame.request {
                    SessionRequest::Call(call) => calls.insert(call_index(call)),
                    SessionRequest::Failed(failure) => failures_seen.insert(failure_index(failure)),
                };
                back
            }),
            "ReplyFrame" => round_trip::<ReplyFrame>(json).map(|(frame, back)| {
                replies.insert(reply_index(&frame.reply));
                back
            }),
            other => Err(format!("unknown kind {other}")),
        };
        match back {
            Ok(back) if &back == json => {}
            Ok(back) => failures.push(format!("{name} ({kind}): got {back}, want {json}")),
            Err(e) => failures.push(format!("{name} ({kind}): {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), vectors.len(), failures.join("\n"));
    let missing: Vec<usize> = (0..CALL_VARIANTS).filter(|i| !calls.contains(i)).collect();
    assert!(missing.is_empty(), "host calls without a vector (positions in call_index): {missing:?}");
    assert_eq!(failures_seen.len(), FAILURE_VARIANTS, "every failure a capsule host reports has a vector");
    assert_eq!(replies.len(), REPLY_VARIANTS, "every reply kind has a vector");
    assert_eq!(starts.len(), START_VARIANTS, "every session start has a vector");
}

#[test]
fn every_host_function_the_kernel_answers_is_a_host_call_of_its_name() {
    let called: BTreeSet<String> = vectors()
        .into_iter()
        .filter(|(_, kind, _)| kind == "CallFrame")
        .filter_map(|(_, _, json)| json["call"]["fn"].as_str().map(str::to_owned))
        .collect();
    let mut expected: BTreeSet<String> =
        HOST_FUNCTIONS.iter().filter(|f| f.side == Side::Kernel).map(|f| f.name.to_owned()).collect();
    expected.extend(RUNNER_STEPS.iter().map(|s| (*s).to_owned()));
    // Every vector parses into a `HostCall` (the test above), so each name here is a variant.
    // Functions answered in the guest (the clock, random bytes) never cross, so none is here.
    assert_eq!(called, expected, "host calls on the wire against the declared host functions");
}
