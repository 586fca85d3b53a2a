//! orchestrator: one agent turn after another, per session.
//!
//! A `user_input` on `user.v1.prompt` starts a turn: the conversation so far (KV
//! `history:<session>`, see [`conversation`]), the prompt and the tools on offer (asked with
//! `tool.v1.request.describe`) go to the configured provider as an `llm_request` on
//! `llm.v1.request.generate.<provider>`, under a system prompt that carries the project's
//! instructions: the kernel hands over the text of the user's and the workspace's `AGENTS.md`
//! when asked on `astrid.v1.instructions.request` (this capsule reads no file itself). The
//! provider's `llm_stream_event`s come back to this capsule's hook: text deltas go to the
//! frontends at once (`agent.v1.stream.delta`); tool calls are assembled from their fragments. At `Done`, tool calls are sent to their tools
//! (`tool.v1.execute.<tool>`, announced on `tool.v1.request.execute`) and, once every result
//! is back (`tool.v1.execute.<tool>.result`, passed on as `tool.v1.execute.result`), the model
//! is asked again; without tool calls the turn is over.
//!
//! **The answer's wire meaning** is the reference's: a frontend concatenates the `text` of
//! every `agent_response` of the turn until `is_final`. So the final response carries only
//! what was not streamed: nothing after a streamed answer, the message itself when the turn
//! ended early (`LLM error: …`, `Cancelled.`, `Request timed out (…)`, `Stopped: …`), and an
//! `outcome` (Astrid extension) saying how it ended, so a frontend can exit non-zero on a
//! failure. The conversation keeps each round's text as the model's message of that round.
//!
//! **Tool calls are keyed by ids this capsule makes unique** (random, from the host's
//! CSPRNG), never by the model's ids, which repeat (a server that always says `call_1`, one
//! that omits them): two concurrent turns never receive each other's results. The model still
//! sees its own ids in the conversation.
//!
//! **Tools are complete from the first turn.** A describer that is still starting some of its
//! tools (the MCP bridge, while servers initialize) says so (`pending`) and answers again
//! once they are up; the first model call waits for that, up to `tools_wait_secs`, and a turn
//! that goes ahead without them says which were left out (`agent.v1.notice`).
//!
//! A turn that ends early stops what it started: the provider is told on
//! `llm.v1.request.cancel.<provider>` (`{"type": "llm_cancel_request", "request_id"}`; the
//! provider drops the HTTP request) and unfinished tool calls on `tool.v1.request.cancel`
//! (`tool_cancel_request {call_ids}`). A model silent for `stream_timeout_secs` or tools not
//! done within `tool_timeout_secs` (checked on every `astrid.v1.watchdog.tick`) end the turn.
//!
//! **Every request keeps to the context budget** (`context_budget_tokens`, about 4 bytes of
//! JSON a token; see [`budget`]): old tool outputs are shortened first, then old turns left
//! out with a line each, and the person is told once per session. A provider that still
//! refuses the conversation as too long for its model gets it again at half the size (and
//! later turns keep to that), so a long session never ends on a context-length error.
//!
//! Turns in flight live in this instance's memory (the hook entry runs one event at a time);
//! only answered turns are stored, whole (prompt, tool calls and results, answer), so a
//! restart loses a turn, never the conversation.

mod budget;
mod conversation;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use astrid_sdk::types::InstructionFiles;
use astrid_sdk::types::topics::{INSTRUCTIONS_REQUEST_TOPIC, INSTRUCTIONS_RESPONSE_TOPIC};
use astrid_sdk::{Hook, Subscription, ipc};
use serde_json::{Value, json};

use conversation::Stored;

/// The context budget, in tokens, unless `context_budget_tokens` says otherwise...
const CONTEXT_BUDGET_TOKENS: usize = 100_000;
/// ...and the smallest it may be set to (a smaller value is taken as a mistake).
const MIN_BUDGET_TOKENS: usize = 1_000;
/// Bytes of the request's JSON a token stands for, in the estimate.
const BYTES_PER_TOKEN: usize = 4;
/// Of the budget, the share the estimate may fill (in tenths): the rest is kept for the
/// provider's own encoding (a tool call's arguments become an escaped string, each tool a
/// wrapped schema).
const BUDGET_TENTHS: usize = 9;
/// Times one turn's request is sent again, smaller, after a context-length error.
const MAX_CONTEXT_RETRIES: u32 = 3;
/// How long a turn waits for the kernel to hand over the instruction files.
const INSTRUCTIONS_WAIT: Duration = Duration::from_secs(2);
/// Sessions remembered as told about the budget (past it, one may be told again).
const MAX_TOLD: usize = 1024;
/// Rounds of tool calls one turn may take.
const MAX_TOOL_ROUNDS: u32 = 10;
/// The longest tools get to describe themselves (a loaded machine may be slow to answer)...
const DESCRIBE_WINDOW: i64 = 1000;
/// ...and the quiet after the last answer that ends the wait early.
const DESCRIBE_QUIET: i64 = 50;
/// How long the first model call waits for tools that are still starting (MCP servers).
const TOOLS_WAIT_SECS: i64 = 30;
/// The phase timeouts of the reference: a model silent this long since its last token...
const STREAM_TIMEOUT_SECS: i64 = 120;
/// ...or tools that have not all answered this long after they were called, end the turn.
/// A backstop for a tool that never answers: each tool bounds itself first (a command by its
/// own timeout, at most 600 s by default, after up to 60 s waiting for the person's
/// approval), so this is above the longest of those.
const TOOL_TIMEOUT_SECS: i64 = 720;
const DELTA: &str = "agent.v1.stream.delta";
const RESPONSE: &str = "agent.v1.response";
const NOTICE: &str = "agent.v1.notice";
const SYSTEM_PROMPT: &str = "You are the agent of Astrid, a secure runtime. Answer plainly. \
    You can act only through the tools you are offered, and only within what the user granted.";

/// A tool call of the current model response.
struct Call {
    /// Our id for it, unique: what the tool and the frontends see.
    id: String,
    /// The model's id for it: what the model sees.
    model_id: String,
    name: String,
    arguments: String,
    result: Option<Value>,
}

/// What a turn waits for.
#[derive(Clone, Copy)]
enum Phase {
    /// The model's streamed answer.
    Model,
    /// The results of the tool calls it made.
    Tools,
}

/// How a turn ended (the final response's `outcome`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Failed,
    Cancelled,
    TimedOut,
    Stopped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Stopped => "stopped",
        }
    }
}

/// A turn in flight.
struct Turn {
    session_id: String,
    prompt: String,
    /// The conversation before this turn, as stored.
    stored: Stored,
    /// This turn's messages: the prompt, then each round's text, tool calls and results.
    current: Vec<Value>,
    /// The system prompt, with the instruction files of the turn's workspace.
    system: String,
    /// What a request may take, in bytes of its estimate (lowered after a context error).
    budget: usize,
    /// The estimated size of the last request sent.
    sent_bytes: usize,
    /// Requests sent again, smaller, after a context-length error.
    retries: u32,
    /// The provider answering, and the request it is answering.
    provider: String,
    request_id: String,
    phase: Phase,
    /// When the turn last made progress (a token, a tool result), host clock in ms.
    since_ms: i64,
    /// Text of the current response.
    text: String,
    /// Text of every response of the turn: the answer, all of it streamed already.
    answer: String,
    calls: Vec<Call>,
    /// Names of the tools offered in the current request.
    offered: Vec<String>,
    rounds: u32,
    /// How the turn ended and what the final response still has to say, once it is over
    /// (sent and removed by [`sweep`]).
    done: Option<(Outcome, String)>,
}

impl Turn {
    /// Ends the turn with `message` (shown after what streamed, on a line of its own).
    fn end(&mut self, outcome: Outcome, message: &str) {
        let separator = if self.answer.is_empty() || self.answer.ends_with('\n') { "" } else { "\n" };
        self.done = Some((outcome, format!("{separator}{message}")));
    }
}

thread_local! {
    static TURNS: RefCell<Vec<Turn>> = const { RefCell::new(Vec::new()) };
    static TOOLS: RefCell<Option<Vec<Value>>> = const { RefCell::new(None) };
    /// Sessions whose person was told that the conversation outgrew the budget.
    static TOLD: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
    /// What the provider showed it takes at most (bytes of the estimate), once it refused a
    /// request as too long: later turns keep to it.
    static LEARNED_BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A fresh id (a version 4 UUID from the host's CSPRNG).
fn new_id() -> String {
    let mut bytes = astrid_sdk::random_bytes(16).unwrap_or_else(|_| vec![0; 16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn publish(topic: &str, payload: &Value) {
    if let Err(e) = ipc::publish(topic, payload) {
        astrid_sdk::log(&format!("cannot publish on {topic}: {e}"));
    }
}

fn stream(session_id: &str, text: &str) {
    publish(DELTA, &json!({"type": "agent_response", "text": text, "is_final": false, "session_id": session_id}));
}

fn finish(session_id: &str, outcome: Outcome, text: &str) {
    let mut payload = json!({"type": "agent_response", "text": text, "is_final": true, "session_id": session_id});
    if outcome != Outcome::Answered {
        payload["outcome"] = json!(outcome.as_str());
    }
    publish(RESPONSE, &payload);
}

fn notice(session_id: &str, text: &str) {
    publish(NOTICE, &json!({"type": "notice", "session_id": session_id, "text": text}));
}

/// What one describer (`tool.v1.response.describe.<name>`) offers, and what it is still
/// starting.
#[derive(Default)]
struct Described {
    tools: Vec<Value>,
    pending: Vec<String>,
}

/// The tools on offer: asked of every tool capsule once, and again after the capsules change
/// (`astrid.v1.capsules_loaded`). A describer still starting some of its tools is waited for
/// (up to `tools_wait_secs`, telling the person once); a list with such gaps is not kept.
fn tools(session_id: &str) -> Vec<Value> {
    if let Some(tools) = TOOLS.with(|t| t.borrow().clone()) {
        return tools;
    }
    let Ok(replies) = Subscription::new("tool.v1.response.describe.*") else { return Vec::new() };
    if ipc::publish("tool.v1.request.describe", &json!({})).is_err() {
        return Vec::new();
    }
    let started = astrid_sdk::clock_ms();
    let wait_limit = seconds("tools_wait_secs", TOOLS_WAIT_SECS) * 1000;
    let mut described: BTreeMap<String, Described> = BTreeMap::new();
    let mut last_answer: Option<i64> = None;
    let mut told = false;
    loop {
        let now = astrid_sdk::clock_ms();
        let pending: Vec<String> = described.values().flat_map(|d| d.pending.iter().cloned()).collect();
        let left = if !pending.is_empty() {
            if !told {
                notice(session_id, &format!("waiting for tools that are still starting: {}", pending.join(", ")));
                told = true;
            }
            wait_limit - (now - started)
        } else {
            let window = DESCRIBE_WINDOW - (now - started);
            last_answer.map_or(window, |last| window.min(DESCRIBE_QUIET - (now - last)))
        };
        if left <= 0 {
            break;
        }
        let Ok(Some(reply)) = replies.recv(Duration::from_millis(left as u64)) else {
            if pending.is_empty() {
                break;
            }
            continue;
        };
        last_answer = Some(astrid_sdk::clock_ms());
        // A describer's latest answer replaces its earlier one.
        let entry = described.entry(reply.topic.clone()).or_default();
        entry.tools = reply.payload["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|tool| valid_tool_name(tool["name"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
        entry.pending = reply.payload["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
    }
    let mut tools: Vec<Value> = Vec::new();
    for tool in described.values().flat_map(|d| d.tools.iter()) {
        if !tools.iter().any(|t| t["name"] == tool["name"]) {
            tools.push(tool.clone());
        }
    }
    let left_out: Vec<String> = described.values().flat_map(|d| d.pending.iter().cloned()).collect();
    if left_out.is_empty() {
        TOOLS.with(|t| *t.borrow_mut() = Some(tools.clone()));
    } else {
        notice(
            session_id,
            &format!("not ready in time, so not offered this turn: the tools of {}", left_out.join(", ")),
        );
    }
    tools
}

/// Tool names become a topic segment: no dots, no wildcards, nothing else odd.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

/// The system prompt for a turn: Astrid's, then the instruction files of the turn's
/// workspace, as the kernel hands them over (none when it does not answer in time).
fn system_prompt() -> String {
    let mut system = SYSTEM_PROMPT.to_owned();
    if let Some(files) = instructions() {
        system.push_str(&files.prompt_text());
    }
    system
}

/// Asks the kernel for the instruction files of the turn's workspace (the kernel knows the
/// workspace from the prompt this hook is handling). A subscription per request, so a late
/// answer can never be taken for the next turn's.
fn instructions() -> Option<InstructionFiles> {
    let answers = Subscription::new(INSTRUCTIONS_RESPONSE_TOPIC)
        .map_err(|e| astrid_sdk::log(&format!("cannot wait for the instruction files: {e}")))
        .ok()?;
    ipc::publish(INSTRUCTIONS_REQUEST_TOPIC, &json!({}))
        .map_err(|e| astrid_sdk::log(&format!("cannot ask for the instruction files: {e}")))
        .ok()?;
    let answer = answers.recv(INSTRUCTIONS_WAIT).ok().flatten()?;
    serde_json::from_value(answer.payload).ok()
}

/// The configured budget in tokens (a bad, missing or too small value is the default).
fn budget_tokens() -> usize {
    astrid_sdk::config("context_budget_tokens")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&tokens| tokens >= MIN_BUDGET_TOKENS)
        .unwrap_or(CONTEXT_BUDGET_TOKENS)
}

/// What a request may take, in bytes of the estimate: the share of the configured budget
/// the estimate may fill, or less if the provider showed it takes less.
fn request_budget() -> usize {
    let configured = budget_tokens().saturating_mul(BYTES_PER_TOKEN) / 10 * BUDGET_TENTHS;
    LEARNED_BUDGET.with(|learned| learned.get()).map_or(configured, |learned| configured.min(learned))
}

/// Tells the person, once per session, that the conversation outgrew the budget.
fn tell_once(session_id: &str) {
    let first = TOLD.with(|told| {
        let mut told = told.borrow_mut();
        if told.len() >= MAX_TOLD {
            told.clear();
        }
        told.insert(session_id.to_owned())
    });
    if first {
        notice(
            session_id,
            &format!(
                "this conversation has outgrown the context budget (about {} tokens): older tool outputs are \
                 shortened and the oldest turns left out, a line of each kept (the orchestrator's \
                 context_budget_tokens sets the budget)",
                budget_tokens()
            ),
        );
    }
}

/// Sends the turn's conversation, fitted into its budget, to the provider under a new
/// request id. With `smaller_than`, only a request smaller than that goes out (a retry after
/// a context-length error); otherwise that is the error.
fn ask_model(turn: &mut Turn, smaller_than: Option<usize>) -> Result<(), String> {
    let provider = astrid_sdk::config("provider").unwrap_or_else(|| "offline".to_owned());
    let model = astrid_sdk::config("model").filter(|m| !m.is_empty()).unwrap_or_else(|| provider.clone());
    let tools = tools(&turn.session_id);
    let fixed = turn.system.len() + serde_json::to_vec(&tools).map_or(0, |bytes| bytes.len());
    let fitted = budget::fit(fixed, &turn.stored.earlier, &turn.stored.messages, &turn.current, turn.budget);
    if smaller_than.is_some_and(|limit| fitted.bytes >= limit) {
        return Err("nothing more of the conversation can be left out".to_owned());
    }
    if fitted.shortened() {
        tell_once(&turn.session_id);
    }
    turn.sent_bytes = fitted.bytes;
    turn.offered = tools.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect();
    turn.request_id = new_id();
    turn.provider = provider.clone();
    turn.phase = Phase::Model;
    turn.since_ms = astrid_sdk::clock_ms();
    turn.text.clear();
    turn.calls.clear();
    let request = json!({
        "type": "llm_request",
        "request_id": turn.request_id,
        "model": model,
        "messages": fitted.messages(),
        "tools": tools,
        "system": turn.system,
    });
    ipc::publish(&format!("llm.v1.request.generate.{provider}"), &request)
        .map_err(|e| format!("LLM error: cannot reach provider {provider}: {e}"))
}

/// Whether a provider's error says the request was too long for the model's context (in the
/// words of OpenAI, Anthropic, vLLM or llama.cpp servers, or a 413).
fn is_context_error(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "context size",
        "maximum context",
        "prompt is too long",
        "input is too long",
        "too many tokens",
        "reduce the length",
        "http 413",
    ]
    .iter()
    .any(|words| error.contains(words))
}

/// A provider refused the turn's request as too long for its model: sends it again at half
/// its size (and later turns keep to that), or ends the turn when nothing more can give.
fn retry_smaller(turn: &mut Turn, error: &str) {
    let previous = turn.sent_bytes;
    let smaller = previous / 2;
    turn.retries += 1;
    turn.budget = turn.budget.min(smaller);
    LEARNED_BUDGET.with(|learned| learned.set(Some(learned.get().map_or(smaller, |known| known.min(smaller)))));
    match ask_model(turn, Some(previous)) {
        Ok(()) => notice(
            &turn.session_id,
            &format!(
                "the model refused the conversation as too long for its context; it was sent again, shortened to \
                 about {} tokens (later turns keep to that until the orchestrator restarts)",
                turn.sent_bytes / BYTES_PER_TOKEN
            ),
        ),
        Err(why) => turn.end(Outcome::Failed, &format!("LLM error: {error} ({why})")),
    }
}

/// Stores an answered turn and records it in the session index.
fn remember(turn: &mut Turn) {
    let mut stored = std::mem::take(&mut turn.stored);
    stored.told = TOLD.with(|told| told.borrow().contains(&turn.session_id));
    // Twice the configured budget: more would never be sent (a smaller learned budget does
    // not shorten what is kept).
    let limit = budget_tokens().saturating_mul(BYTES_PER_TOKEN).saturating_mul(2);
    conversation::remember(&turn.session_id, &turn.prompt, stored, &turn.current, limit);
}

/// Stops what a turn that ends early has started: the model's request (if it is still
/// answering) and the tool calls without a result.
fn stop_work(turn: &Turn) {
    match turn.phase {
        Phase::Model => {
            let cancel = json!({"type": "llm_cancel_request", "request_id": turn.request_id});
            publish(&format!("llm.v1.request.cancel.{}", turn.provider), &cancel);
        }
        Phase::Tools => {
            let pending: Vec<&str> = turn.calls.iter().filter(|c| c.result.is_none()).map(|c| c.id.as_str()).collect();
            publish("tool.v1.request.cancel", &json!({"type": "tool_cancel_request", "call_ids": pending}));
        }
    }
}

fn on_prompt(payload: &[u8]) {
    let Some(input) = ipc::user_input(payload) else { return };
    if input.context.as_ref().is_some_and(|c| c["action"] == "cancel_turn") {
        TURNS.with(|turns| {
            for turn in turns.borrow_mut().iter_mut().filter(|t| t.session_id == input.session_id && t.done.is_none()) {
                stop_work(turn);
                turn.end(Outcome::Cancelled, "Cancelled.");
            }
        });
        return;
    }
    if input.text.trim().is_empty() {
        return;
    }
    let stored = conversation::load(&input.session_id);
    if stored.told {
        TOLD.with(|told| told.borrow_mut().insert(input.session_id.clone()));
    }
    let mut turn = Turn {
        current: vec![json!({"role": "user", "content": input.text})],
        session_id: input.session_id,
        prompt: input.text,
        stored,
        system: system_prompt(),
        budget: request_budget(),
        sent_bytes: 0,
        retries: 0,
        provider: String::new(),
        request_id: String::new(),
        phase: Phase::Model,
        since_ms: 0,
        text: String::new(),
        answer: String::new(),
        calls: Vec::new(),
        offered: Vec::new(),
        rounds: 0,
        done: None,
    };
    if let Err(message) = ask_model(&mut turn, None) {
        turn.end(Outcome::Failed, &message);
    }
    TURNS.with(|turns| turns.borrow_mut().push(turn));
}

/// What to do once a response is complete.
enum Next {
    Wait,
    RunTools,
}

fn on_stream(payload: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
    let Some(id) = event["request_id"].as_str().filter(|_| event["type"] == "llm_stream_event") else { return };
    TURNS.with(|turns| {
        let mut turns = turns.borrow_mut();
        let Some(turn) = turns.iter_mut().find(|turn| turn.request_id == id && turn.done.is_none()) else { return };
        turn.since_ms = astrid_sdk::clock_ms();
        let next = match &event["event"] {
            Value::Object(map) if map.contains_key("TextDelta") => {
                let delta = map["TextDelta"].as_str().unwrap_or_default();
                if !delta.is_empty() {
                    turn.text.push_str(delta);
                    turn.answer.push_str(delta);
                    stream(&turn.session_id, delta);
                }
                Next::Wait
            }
            Value::Object(map) if map.contains_key("ToolCallStart") => {
                let start = &map["ToolCallStart"];
                turn.calls.push(Call {
                    id: new_id(),
                    model_id: start["id"].as_str().unwrap_or_default().to_owned(),
                    name: start["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: String::new(),
                    result: None,
                });
                Next::Wait
            }
            Value::Object(map) if map.contains_key("ToolCallDelta") => {
                let delta = &map["ToolCallDelta"];
                // The latest call the model gave this id (a model may repeat ids).
                if let Some(call) = turn.calls.iter_mut().rev().find(|c| c.model_id == delta["id"]) {
                    call.arguments.push_str(delta["args_delta"].as_str().unwrap_or_default());
                }
                Next::Wait
            }
            Value::Object(map) if map.contains_key("Error") => {
                let error = map["Error"].as_str().unwrap_or("unknown error");
                if error == "cancelled" {
                    turn.end(Outcome::Cancelled, "Cancelled.");
                } else if is_context_error(error)
                    && turn.text.is_empty()
                    && turn.calls.is_empty()
                    && turn.retries < MAX_CONTEXT_RETRIES
                {
                    retry_smaller(turn, error);
                } else {
                    turn.end(Outcome::Failed, &format!("LLM error: {error}"));
                }
                Next::Wait
            }
            Value::String(done) if done == "Done" && turn.calls.is_empty() => {
                turn.current.push(json!({"role": "assistant", "content": turn.text}));
                remember(turn);
                turn.done = Some((Outcome::Answered, String::new()));
                Next::Wait
            }
            Value::String(done) if done == "Done" => Next::RunTools,
            _ => Next::Wait,
        };
        if let Next::RunTools = next {
            run_tools(turn);
        }
    });
}

/// Sends each tool call to its tool (a malformed one is answered here, as a tool error).
fn run_tools(turn: &mut Turn) {
    if !turn.text.is_empty() {
        turn.current.push(json!({"role": "assistant", "content": turn.text}));
    }
    let arguments: Vec<Value> =
        turn.calls.iter().map(|c| serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| json!({}))).collect();
    let calls: Vec<Value> = turn
        .calls
        .iter()
        .zip(&arguments)
        .map(|(c, arguments)| json!({"id": c.model_id, "name": c.name, "arguments": arguments}))
        .collect();
    turn.current.push(json!({"role": "assistant", "content": calls}));
    turn.phase = Phase::Tools;
    turn.since_ms = astrid_sdk::clock_ms();
    for (call, arguments) in turn.calls.iter_mut().zip(arguments) {
        let request =
            json!({"type": "tool_execute_request", "call_id": call.id, "tool_name": call.name, "arguments": arguments});
        publish("tool.v1.request.execute", &request);
        // A name no tool offered (a model's invention) is answered at once rather than left to
        // the tool timeout: nobody would answer it.
        if !valid_tool_name(&call.name) || !turn.offered.contains(&call.name) {
            call.result = Some(json!({"content": format!("no tool called {:?}", call.name), "is_error": true}));
            continue;
        }
        if let Err(e) = ipc::publish(&format!("tool.v1.execute.{}", call.name), &request) {
            call.result = Some(json!({"content": format!("cannot call {}: {e}", call.name), "is_error": true}));
        }
    }
    continue_if_complete(turn);
}

fn on_tool_result(payload: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
    if event["type"] != "tool_execute_result" {
        return;
    }
    let Some(call_id) = event["call_id"].as_str() else { return };
    TURNS.with(|turns| {
        let mut turns = turns.borrow_mut();
        let Some(turn) = turns
            .iter_mut()
            .find(|t| t.done.is_none() && t.calls.iter().any(|c| c.id == call_id && c.result.is_none()))
        else {
            return;
        };
        turn.since_ms = astrid_sdk::clock_ms();
        if let Some(call) = turn.calls.iter_mut().find(|c| c.id == call_id) {
            call.result = Some(event["result"].clone());
        }
        publish("tool.v1.execute.result", &event);
        continue_if_complete(turn);
    });
}

/// Once every call of the round has its result: the results go to the model (under the
/// model's own ids), which is asked again (within the turn's rounds).
fn continue_if_complete(turn: &mut Turn) {
    if turn.calls.iter().any(|c| c.result.is_none()) {
        return;
    }
    for call in &turn.calls {
        let result = call.result.as_ref().unwrap_or(&Value::Null);
        let content = json!({
            "call_id": call.model_id,
            "content": result["content"].as_str().unwrap_or_default(),
            "is_error": result["is_error"].as_bool().unwrap_or(false),
        });
        turn.current.push(json!({"role": "tool", "content": content}));
    }
    turn.rounds += 1;
    if turn.rounds > MAX_TOOL_ROUNDS {
        let message = format!("Stopped: the turn used all of its {MAX_TOOL_ROUNDS} rounds of tool calls.");
        turn.end(Outcome::Stopped, &message);
        return;
    }
    if let Err(message) = ask_model(turn, None) {
        turn.end(Outcome::Failed, &message);
    }
}

/// A setting in whole seconds (a bad or missing value is the default).
fn seconds(name: &str, default: i64) -> i64 {
    astrid_sdk::config(name).and_then(|v| v.trim().parse::<i64>().ok()).filter(|&s| s > 0).unwrap_or(default)
}

/// The watchdog's tick: a turn whose model or tools went quiet for too long is ended (what it
/// started is cancelled).
fn on_tick() {
    let now = astrid_sdk::clock_ms();
    let stream_limit = seconds("stream_timeout_secs", STREAM_TIMEOUT_SECS);
    let tool_limit = seconds("tool_timeout_secs", TOOL_TIMEOUT_SECS);
    TURNS.with(|turns| {
        for turn in turns.borrow_mut().iter_mut().filter(|t| t.done.is_none()) {
            let (limit, what) = match turn.phase {
                Phase::Model => (stream_limit, "no answer from the model"),
                Phase::Tools => (tool_limit, "tools still running"),
            };
            if now - turn.since_ms >= limit * 1000 {
                stop_work(turn);
                turn.end(Outcome::TimedOut, &format!("Request timed out ({what} for {limit} s)."));
            }
        }
    });
}

/// Sends the final response of every turn that is over, and forgets it.
fn sweep() {
    TURNS.with(|turns| {
        let mut turns = turns.borrow_mut();
        while let Some(index) = turns.iter().position(|t| t.done.is_some()) {
            let turn = turns.remove(index);
            if let Some((outcome, text)) = &turn.done {
                finish(&turn.session_id, *outcome, text);
            }
        }
    });
}

fn hook(action: &str, payload: &[u8]) -> Hook {
    match action {
        "prompt" => on_prompt(payload),
        "stream" => on_stream(payload),
        "tool_result" => on_tool_result(payload),
        // Capsules came or went: ask the tools again at the next turn.
        "capsules_loaded" => TOOLS.with(|t| *t.borrow_mut() = None),
        "tick" => on_tick(),
        _ => {}
    }
    sweep();
    Hook::Continue(None)
}

astrid_sdk::capsule!(hook = hook);
