//! The context budget: fitting a conversation into what one model request may carry.
//!
//! Sizes are estimated from the JSON this capsule sends (a token is about 4 bytes of it): the
//! system prompt, the tools on offer, every message. When the conversation is over the budget,
//! in this order, each step only as far as needed:
//! 1. the oldest tool inputs and outputs of earlier turns are shortened (a long string keeps
//!    its first and last [`CUT_KEEP`] bytes, and says how much was cut between them);
//! 2. the oldest earlier turns are left out whole (a turn's tool results never lose their
//!    calls), each leaving one line, the start of its prompt, in a note at the head of the
//!    conversation ([`Earlier`]);
//! 3. the current turn's own tool inputs and outputs are shortened, oldest first, but never
//!    the results the model has not answered yet (the last round's);
//! 4. as a last resort, the current turn's long texts of the model's earlier rounds.
//!
//! The system prompt, the person's prompt and the current turn's messages are never left out.
//! Nothing here asks a model: a summary is the prompts' first lines, which costs nothing and
//! invents nothing.

use std::collections::VecDeque;

use astrid_sdk::types::sessions::title_of;
use serde_json::{Value, json};

/// Bytes kept at each end of a string that is cut.
pub const CUT_KEEP: usize = 1024;
/// Strings up to this long are not worth cutting.
const CUT_MIN: usize = 3 * CUT_KEEP;
/// Lines kept for turns left out (the most recent ones; the count covers them all).
const EARLIER_LINES: usize = 50;

/// The turns left out of a conversation so far: how many, and the first line of the prompt of
/// each of the most recent [`EARLIER_LINES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Earlier {
    pub count: u64,
    pub lines: VecDeque<String>,
}

impl Earlier {
    fn push(&mut self, line: String) {
        self.count += 1;
        self.lines.push_back(line);
        while self.lines.len() > EARLIER_LINES {
            self.lines.pop_front();
        }
    }

    /// The note that stands for them at the head of the conversation (none when nothing was
    /// left out).
    pub fn note(&self) -> Option<Value> {
        if self.count == 0 {
            return None;
        }
        let mut text = format!(
            "[Earlier in this conversation, {} turn(s) were left out to fit the context budget. Their prompts began:",
            self.count
        );
        let unlisted = self.count.saturating_sub(self.lines.len() as u64);
        if unlisted > 0 {
            text.push_str(&format!("\n- ({unlisted} more, not listed)"));
        }
        for line in &self.lines {
            text.push_str(&format!("\n- {line}"));
        }
        text.push(']');
        Some(json!({"role": "user", "content": text}))
    }

    fn note_bytes(&self) -> usize {
        self.note().map_or(0, |note| size(&note))
    }
}

/// A conversation fitted into a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// Every turn left out, those left out before included.
    pub earlier: Earlier,
    /// The earlier turns kept (some of their tool inputs and outputs shortened).
    pub history: Vec<Value>,
    /// The current turn (its tool inputs and outputs shortened only as a last resort).
    pub current: Vec<Value>,
    /// How many strings were cut.
    pub cut: usize,
    /// How many turns were left out by this fitting.
    pub dropped: usize,
    /// The estimated size of the request, in bytes.
    pub bytes: usize,
}

impl Fitted {
    /// The messages to send: the note for what was left out, the earlier turns, this turn.
    pub fn messages(&self) -> Vec<Value> {
        self.earlier
            .note()
            .into_iter()
            .chain(self.history.iter().cloned())
            .chain(self.current.iter().cloned())
            .collect()
    }

    /// Whether anything had to give.
    pub fn shortened(&self) -> bool {
        self.cut > 0 || self.dropped > 0
    }
}

/// The size of a message as sent (and a separator).
pub fn size(message: &Value) -> usize {
    serde_json::to_vec(message).map_or(0, |bytes| bytes.len()) + 1
}

/// Fits `history` (earlier turns, `earlier` already left out) and `current` (this turn) into
/// `budget` bytes, `fixed` of which the system prompt and the tools take. See the module
/// documentation for the order; the result may still be over the budget when the current
/// turn alone is.
pub fn fit(fixed: usize, earlier: &Earlier, history: &[Value], current: &[Value], budget: usize) -> Fitted {
    let mut earlier = earlier.clone();
    let mut turns: VecDeque<Vec<Value>> = split_turns(history);
    let mut current = current.to_vec();
    let sum = |messages: &[Value]| messages.iter().map(size).sum::<usize>();
    let mut total = fixed + earlier.note_bytes() + turns.iter().map(|t| sum(t)).sum::<usize>() + sum(&current);
    let (mut cut, mut dropped) = (0, 0);

    // 1. The oldest tool inputs and outputs of earlier turns.
    'earlier_tools: for message in turns.iter_mut().flatten() {
        if total <= budget {
            break 'earlier_tools;
        }
        let (strings, saved) = shorten_tool_io(message);
        cut += strings;
        total -= saved;
    }
    // 2. The oldest earlier turns, whole.
    while total > budget {
        let Some(turn) = turns.pop_front() else { break };
        let before = earlier.note_bytes();
        let prompt = turn.iter().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or_default();
        earlier.push(title_of(prompt));
        dropped += 1;
        total = total - sum(&turn) - before + earlier.note_bytes();
    }
    // 3. The current turn's own tool inputs and outputs, but not the results the model is
    // about to read (the trailing ones).
    let unread = current.iter().rev().take_while(|m| m["role"] == "tool").count();
    let seen = current.len() - unread;
    for message in current.iter_mut().take(seen) {
        if total <= budget {
            break;
        }
        let (strings, saved) = shorten_tool_io(message);
        cut += strings;
        total -= saved;
    }
    // 4. The long texts of the model's earlier rounds of this turn.
    for message in current.iter_mut().take(seen).filter(|m| m["role"] == "assistant") {
        if total <= budget {
            break;
        }
        let before = size(message);
        cut += shorten_strings(&mut message["content"]);
        total -= before.saturating_sub(size(message));
    }
    Fitted { earlier, history: turns.into_iter().flatten().collect(), current, cut, dropped, bytes: total }
}

/// The conversation cut into turns: each starts at a person's message (anything before the
/// first one is a turn of its own).
fn split_turns(history: &[Value]) -> VecDeque<Vec<Value>> {
    let mut turns: VecDeque<Vec<Value>> = VecDeque::new();
    for message in history {
        match turns.back_mut() {
            Some(turn) if message["role"] != "user" => turn.push(message.clone()),
            _ => turns.push_back(vec![message.clone()]),
        }
    }
    turns
}

/// Shortens the long strings of a tool call's arguments or a tool's result; how many were
/// cut and the bytes saved. Other messages (what the person and the model said) are left
/// alone.
fn shorten_tool_io(message: &mut Value) -> (usize, usize) {
    let before = size(message);
    let content = &mut message["content"];
    let cut = match content {
        // A tool's result: {call_id, content, is_error}.
        Value::Object(result) if result.contains_key("call_id") => result.get_mut("content").map_or(0, shorten_strings),
        // The model's tool calls: [{id, name, arguments}].
        Value::Array(calls) if calls.first().is_some_and(|c| c.get("arguments").is_some()) => {
            calls.iter_mut().filter_map(|c| c.get_mut("arguments")).map(shorten_strings).sum()
        }
        _ => 0,
    };
    (cut, before.saturating_sub(size(message)))
}

/// Cuts every string longer than [`CUT_MIN`] bytes in `value` to its head and tail; how many.
fn shorten_strings(value: &mut Value) -> usize {
    match value {
        Value::String(text) if text.len() > CUT_MIN => {
            *text = head_and_tail(text);
            1
        }
        Value::Array(items) => items.iter_mut().map(shorten_strings).sum(),
        Value::Object(fields) => fields.values_mut().map(shorten_strings).sum(),
        _ => 0,
    }
}

/// The first and last [`CUT_KEEP`] bytes of `text` (at character boundaries), with what was
/// cut between them said in place.
pub fn head_and_tail(text: &str) -> String {
    let mut head = CUT_KEEP.min(text.len());
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len().saturating_sub(CUT_KEEP).max(head);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}\n[… {} bytes cut here to fit the context budget …]\n{}", &text[..head], tail - head, &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(n: usize, output: &str) -> Vec<Value> {
        vec![
            json!({"role": "user", "content": format!("prompt {n}\nmore")}),
            json!({"role": "assistant", "content": [{"id": "c", "name": "read_file", "arguments": {"path": "a"}}]}),
            json!({"role": "tool", "content": {"call_id": "c", "content": output, "is_error": false}}),
            json!({"role": "assistant", "content": format!("answer {n}")}),
        ]
    }

    fn total(fitted: &Fitted, fixed: usize) -> usize {
        fixed + fitted.messages().iter().map(size).sum::<usize>()
    }

    #[test]
    fn a_conversation_within_the_budget_is_left_as_it_is() {
        let history: Vec<Value> = (0..3).flat_map(|n| turn(n, "short")).collect();
        let current = vec![json!({"role": "user", "content": "now"})];
        let fitted = fit(100, &Earlier::default(), &history, &current, 1_000_000);
        assert!(!fitted.shortened());
        assert_eq!(fitted.messages(), [history, current].concat());
        assert_eq!(fitted.bytes, total(&fitted, 100));
    }

    #[test]
    fn old_tool_outputs_are_cut_first_keeping_head_and_tail() {
        let big = format!("HEAD{}TAIL", "x".repeat(20_000));
        let history: Vec<Value> = [turn(0, &big), turn(1, &big)].concat();
        let current = vec![json!({"role": "user", "content": "now"})];
        let full: usize = history.iter().chain(&current).map(size).sum();
        // Room for everything but about one output: only the oldest is cut.
        let fitted = fit(0, &Earlier::default(), &history, &current, full - 10_000);
        assert_eq!((fitted.cut, fitted.dropped), (1, 0));
        let first = fitted.history[2]["content"]["content"].as_str().expect("text");
        assert!(first.starts_with("HEAD") && first.ends_with("TAIL"), "head and tail kept");
        assert!(first.contains("bytes cut here to fit the context budget"), "the cut is marked");
        assert_eq!(fitted.history[6]["content"]["content"], big.as_str(), "the newer one is whole");
        assert!(fitted.bytes <= full - 10_000);
        assert_eq!(fitted.bytes, total(&fitted, 0));
    }

    #[test]
    fn then_the_oldest_turns_go_whole_leaving_a_line_each_and_never_the_current_turn() {
        let history: Vec<Value> = (0..20).flat_map(|n| turn(n, &"y".repeat(500))).collect();
        let current = vec![
            json!({"role": "user", "content": "the current prompt"}),
            json!({"role": "assistant", "content": [{"id": "d", "name": "read_file", "arguments": {"path": "b"}}]}),
            json!({"role": "tool", "content": {"call_id": "d", "content": "fresh", "is_error": false}}),
        ];
        let budget = 4_000;
        let fitted = fit(200, &Earlier::default(), &history, &current, budget);
        assert!(fitted.dropped > 0 && fitted.bytes <= budget, "{} bytes, {} dropped", fitted.bytes, fitted.dropped);
        assert_eq!(fitted.bytes, total(&fitted, 200));
        assert_eq!(fitted.current, current, "the current turn is whole");
        let messages = fitted.messages();
        assert_eq!(messages[1]["content"], format!("prompt {}\nmore", fitted.dropped), "whole turns, in order");
        let note = messages[0]["content"].as_str().expect("a note");
        assert!(note.contains(&format!("{} turn(s) were left out", fitted.dropped)), "{note}");
        assert!(note.contains("- prompt 0\n- prompt 1"), "a line per turn: {note}");
        // A tool result never loses its call.
        for i in (0..messages.len()).filter(|&i| messages[i]["role"] == "tool") {
            assert!(messages[i - 1]["content"].is_array(), "{messages:?}");
        }
    }

    #[test]
    fn what_was_left_out_before_is_counted_on_and_its_lines_are_bounded() {
        let mut earlier = Earlier::default();
        for n in 0..(EARLIER_LINES + 5) {
            earlier.push(format!("old {n}"));
        }
        let history: Vec<Value> = (0..4).flat_map(|n| turn(n, "z")).collect();
        let fitted = fit(0, &earlier, &history, &[], 1);
        assert_eq!(fitted.earlier.count, EARLIER_LINES as u64 + 5 + 4);
        assert_eq!(fitted.earlier.lines.len(), EARLIER_LINES);
        assert_eq!(fitted.earlier.lines.back().map(String::as_str), Some("prompt 3"));
        let note = fitted.messages()[0]["content"].as_str().expect("note").to_owned();
        assert!(note.contains("(9 more, not listed)"), "{note}");
    }

    #[test]
    fn the_current_turns_outputs_are_cut_last_and_long_arguments_too() {
        let big = "w".repeat(50_000);
        let current = vec![
            json!({"role": "user", "content": "write it"}),
            json!({"role": "assistant", "content": [{"id": "e", "name": "write_file", "arguments": {"path": "f", "content": big}}]}),
            json!({"role": "tool", "content": {"call_id": "e", "content": "wrote", "is_error": false}}),
        ];
        let fitted = fit(0, &Earlier::default(), &[], &current, 10_000);
        assert_eq!(fitted.cut, 1);
        assert!(fitted.bytes <= 10_000);
        assert_eq!(fitted.current[0], current[0], "what the person said is never cut");
        let content = fitted.current[1]["content"][0]["arguments"]["content"].as_str().expect("text");
        assert!(content.len() < 3 * CUT_KEEP);
    }

    #[test]
    fn the_results_the_model_has_not_read_are_never_cut_and_earlier_rounds_texts_go_last() {
        let page = "p".repeat(100_000);
        let current = vec![
            json!({"role": "user", "content": "read it all"}),
            json!({"role": "assistant", "content": page}),
            json!({"role": "assistant", "content": [{"id": "f", "name": "read_file", "arguments": {"path": "big"}}]}),
            json!({"role": "tool", "content": {"call_id": "f", "content": page, "is_error": false}}),
        ];
        let fitted = fit(0, &Earlier::default(), &[], &current, 10_000);
        assert_eq!(fitted.current[3], current[3], "the unread result is whole");
        assert!(fitted.current[1]["content"].as_str().is_some_and(|t| t.len() < 3 * CUT_KEEP), "the echo is cut");
        assert_eq!(fitted.cut, 1);
        assert!(fitted.bytes > 10_000, "over the budget: nothing else may give");
    }

    #[test]
    fn a_cut_keeps_whole_characters() {
        let text = "é".repeat(4000);
        let cut = head_and_tail(&text);
        assert!(cut.starts_with('é') && cut.ends_with('é'));
        assert!(cut.contains("bytes cut here"));
    }
}
