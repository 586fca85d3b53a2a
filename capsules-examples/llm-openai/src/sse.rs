//! The response body as an event stream, per the WHATWG server-sent events spec, decoded by
//! `sse-core`: lines end with LF, CRLF or CR (also split across reads); bytes wait until
//! their line is complete (so a UTF-8 character split across reads stays whole); `data:`
//! lines are joined with `\n`; comments (`:`) and unknown fields are ignored; `event:` and
//! `id:` belong to the event (the provider reads every event's data: an OpenAI-compatible
//! server names none, and an error event carries its error in its data); `retry:` only
//! matters to a client that reconnects, which this one never does. An event is dispatched
//! at its blank line; one the body ends in the middle of is not.

use sse_core::{SseDecoder, SseEvent};

/// The events of one response body so far.
#[derive(Debug, Default)]
pub struct EventStream {
    decoder: SseDecoder,
    dispatched: usize,
}

impl EventStream {
    /// Feeds the next bytes of the body; the data of each event they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut data = Vec::new();
        while let Some(event) = self.decoder.next(&mut bytes) {
            match event {
                Ok(SseEvent::Message(message)) => {
                    self.dispatched += 1;
                    data.push(message.data);
                }
                // The server's reconnection delay: this client never reconnects.
                Ok(SseEvent::Retry(_)) => {}
                Err(too_large) => return Err(format!("malformed stream: {too_large}")),
            }
        }
        Ok(data)
    }

    /// How many events the body held so far.
    pub fn dispatched(&self) -> usize {
        self.dispatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of every event in `chunks`, fed one after the other.
    fn data(chunks: &[&[u8]]) -> Vec<String> {
        let mut stream = EventStream::default();
        chunks.iter().flat_map(|chunk| stream.feed(chunk).expect("feed")).collect()
    }

    /// Every split of `body` into two reads gives the same events as the whole.
    fn same_whatever_the_split(body: &[u8], expected: &[&str]) {
        assert_eq!(data(&[body]), expected, "whole: {:?}", String::from_utf8_lossy(body));
        for cut in 0..=body.len() {
            assert_eq!(data(&[&body[..cut], &body[cut..]]), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(data(&bytes), expected, "byte by byte");
    }

    #[test]
    fn lines_end_with_lf_crlf_or_cr() {
        same_whatever_the_split(b"data: a\n\ndata: b\n\n", &["a", "b"]);
        same_whatever_the_split(b"data: a\r\n\r\ndata: b\r\n\r\n", &["a", "b"]);
        same_whatever_the_split(b"data: a\r\rdata: b\r\r", &["a", "b"]);
        same_whatever_the_split(b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", &["a", "b", "c"]);
    }

    #[test]
    fn data_lines_are_joined_with_lf_and_one_leading_space_is_dropped() {
        same_whatever_the_split(b"data: first\ndata:second\ndata:  third\n\n", &["first\nsecond\n third"]);
        same_whatever_the_split(b"data\ndata: x\n\n", &["\nx"]);
        same_whatever_the_split(b"data: {\"a\":\r\ndata: 1}\r\n\r\n", &["{\"a\":\n1}"]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        same_whatever_the_split(b": keep-alive\n\n:\ndata: x\n: in between\ndata: y\nfoo: bar\n\n", &["x\ny"]);
        same_whatever_the_split(b"dat: no\ndatas: no\nDATA: no\n\n", &[]);
    }

    #[test]
    fn event_id_and_retry_fields_do_not_change_the_data() {
        same_whatever_the_split(b"event: message\nid: 7\nretry: 1000\ndata: x\n\n", &["x"]);
        same_whatever_the_split(b"retry: 50\n\nid: 1\n\nevent: error\ndata: {}\n\n", &["{}"]);
    }

    #[test]
    fn an_event_without_data_or_unfinished_at_the_end_is_not_dispatched() {
        let mut stream = EventStream::default();
        assert!(stream.feed(b"event: ping\n\nid: 3\n\n").expect("feed").is_empty());
        assert!(stream.feed(b"data: [DONE]").expect("feed").is_empty(), "no line end yet");
        assert!(stream.feed(b"\n").expect("feed").is_empty(), "no blank line yet");
        assert_eq!(stream.feed(b"\n").expect("feed"), ["[DONE]"]);
        assert_eq!(stream.dispatched(), 1);
    }

    #[test]
    fn a_character_split_across_reads_stays_whole() {
        let body = "data: caf\u{e9} \u{1f980} \u{65e5}\u{672c}\n\n".as_bytes();
        same_whatever_the_split(body, &["caf\u{e9} \u{1f980} \u{65e5}\u{672c}"]);
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        same_whatever_the_split(b"\xef\xbb\xbfdata: x\n\n", &["x"]);
    }
}
