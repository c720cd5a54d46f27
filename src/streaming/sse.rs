//! Server-sent events framing: bytes in, events out. Knows nothing of chat or providers.
//!
//! Follows the WHATWG event-stream rules that matter for LLM APIs: lines end with LF, CRLF or
//! CR; `data:` lines of one event are joined with `\n`; an empty line dispatches; lines starting
//! with `:` are comments (keep-alives); a single space after the colon is dropped. Input may be
//! split anywhere, including inside a UTF-8 sequence or between CR and LF: bytes are buffered
//! until a whole line is there, and decoded only then.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, empty when absent (the default type, "message").
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Incremental parser. Feed it byte chunks; take events out.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A CR ended the last line; an LF at the start of the next chunk belongs to it.
    pending_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and appends every event they complete to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) {
        if chunk.is_empty() {
            return;
        }
        if self.pending_cr {
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
            self.pending_cr = false;
        }
        // Fast path: no partial line buffered, parse straight from the chunk.
        let mut start = 0;
        let src: Vec<u8>;
        let bytes: &[u8] = if self.buf.is_empty() {
            chunk
        } else {
            self.buf.extend_from_slice(chunk);
            src = std::mem::take(&mut self.buf);
            &src
        };
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
            let end = start + pos;
            let line = &bytes[start..end];
            let mut next = end + 1;
            if bytes[end] == b'\r' {
                if next < bytes.len() {
                    if bytes[next] == b'\n' {
                        next += 1;
                    }
                } else {
                    self.pending_cr = true;
                }
            }
            self.line(line, out);
            start = next;
        }
        if start < bytes.len() {
            self.buf.extend_from_slice(&bytes[start..]);
        }
    }

    /// Whether bytes of an unfinished line or event are held (a stream that ends here was cut).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.has_data
    }

    /// Flushes at end of input: an unterminated last line is processed, and a pending event with
    /// data is dispatched (some servers omit the final blank line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.line(&rest, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = value.into_owned(),
            b"id" => self.id = Some(value.into_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
                id: self.id.clone(),
            });
        } else {
            self.event.clear();
        }
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for part in parts {
            p.feed(part, &mut out);
        }
        p.finish(&mut out);
        out
    }

    const RECORDED: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"id\":\"a\",\"choices\":[{\"delta\":{\"content\":\"héllo wörld ✓\"}}]}\r\n\r\n",
        "event: message_delta\r\ndata: {\"x\":1}\r\n\r\n",
        "data: line one\ndata: line two\n\n",
        "data:nospace\r\r",
        "id: 7\ndata: [DONE]\n\n",
    );

    #[test]
    fn recorded_stream_events() {
        let evs = parse_all(&[RECORDED.as_bytes()]);
        assert_eq!(evs.len(), 5);
        assert!(evs[0].data.contains("héllo wörld ✓"));
        assert_eq!(evs[1].event, "message_delta");
        assert_eq!(evs[2].data, "line one\nline two");
        assert_eq!(evs[3].data, "nospace");
        assert_eq!(evs[4].data, "[DONE]");
        assert_eq!(evs[4].id.as_deref(), Some("7"));
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = RECORDED.as_bytes();
        let whole = parse_all(&[bytes]);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(parse_all(&[a, b]), whole, "split at {i}");
        }
        for i in 0..bytes.len() {
            for j in i..=bytes.len() {
                let got = parse_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&singles), whole, "byte by byte");
    }

    #[test]
    fn partial_is_reported() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: {\"a\":", &mut out);
        assert!(out.is_empty());
        assert!(p.has_partial());
        p.feed(b"1}\n\n", &mut out);
        assert_eq!(out.len(), 1);
        assert!(!p.has_partial());
    }
}
