//! The fake upstream's Anthropic Messages API: `POST /v1/messages` (also `/messages`), unary
//! and streamed, with the same `x-fake-*` controls as the OpenAI routes, answered in
//! Anthropic's wire format (validated against the `anthropic` Python SDK's types).
//!
//! * Unary: a `Message` (`id` `msg_fake_<n>`, `type` `message`, `role` `assistant`, the model
//!   echoed, content blocks, `stop_reason`, `stop_sequence: null`, usage with
//!   `cache_creation_input_tokens` and `cache_read_input_tokens` at 0); `max_tokens` below the
//!   reply's word count truncates it with `stop_reason: "max_tokens"`; `request-id` and
//!   `anthropic-ratelimit-requests-remaining` headers.
//! * Tool calls: `x-fake-tool-calls: N`, or tools with `tool_choice` `any`/`tool`: `tool_use`
//!   blocks (`toolu_fake_<i>`, input `{"location": ..., "unit": "celsius"}`), `stop_reason`
//!   `tool_use`; with `x-fake-content` a text block comes first.
//! * Streams: `message_start`, `content_block_start`, `ping`, `content_block_delta`...,
//!   `content_block_stop`, `message_delta`, `message_stop`, each with its `event:` line; tool
//!   input is streamed as several `input_json_delta` pieces.
//! * Validation like the real API: `model`, `max_tokens` and `messages` required, roles only
//!   `user`/`assistant` (a `system` role in `messages` is a 400).
//! * Faults: `x-fake-status` → the Anthropic error type of that status; `x-fake-error-code`
//!   (`prompt_too_long`, `content_filter`, or any error type name such as `overloaded_error`);
//!   `x-fake-stream-error-after: N` → `event: error` (`overloaded_error`) after N content
//!   deltas, then the body ends without `message_stop`; `x-fake-cut-after`, `x-fake-html`,
//!   `x-fake-malformed`, `x-fake-retry-after(-ms)` as on the OpenAI routes.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::fake_upstream::{
    json_response, lossy, response, word_count, Controls, FakeBody, Item, DEFAULT_REPLY, JSON, SSE,
    TOOL_LOCATIONS,
};
use super::Ctx;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

const MALFORMED_BODY: &[u8] = br#"{"id": "msg_broken", "type": "message", "content": ["#;
const STREAM_ERROR: &str =
    "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";

pub(crate) fn serves(method: &Method, path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    method == Method::POST && (path == "/v1/messages" || path == "/messages")
}

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn respond(ctx: &Ctx<'_>) -> Response<FakeBody> {
    let c = ctx.controls;
    if !serves(ctx.method, ctx.uri.path()) {
        let message = format!("Not found: {} {}", ctx.method, ctx.uri.path());
        return error_response(StatusCode::NOT_FOUND, "not_found_error", &message);
    }
    let response_fault = c.status.is_some_and(|s| !(200..300).contains(&s))
        || c.error_code.is_some()
        || c.html
        || c.malformed;
    let stream_fault = c.cut_after.is_some() || c.stream_error_after.is_some();
    if ctx.failing && (response_fault || (c.fail_times.is_some() && !stream_fault)) {
        return fault_response(c, ctx.body);
    }
    messages(c, ctx.body, ctx.failing)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn error_body(etype: &str, message: &str, request_id: &str) -> Vec<u8> {
    let v = json!({
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": request_id,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn error_response(status: StatusCode, etype: &str, message: &str) -> Response<FakeBody> {
    let request_id = format!("req_fake_{}", next_id());
    let mut resp = json_response(status, error_body(etype, message, &request_id));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

fn invalid(message: &str) -> Response<FakeBody> {
    error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// `(type, message)` of an error status.
fn status_defaults(status: u16, model: &str) -> (&'static str, Cow<'static, str>) {
    match status {
        400 => (
            "invalid_request_error",
            Cow::Borrowed("Invalid request (x-fake-status: 400)."),
        ),
        401 => ("authentication_error", Cow::Borrowed("invalid x-api-key")),
        402 => (
            "billing_error",
            Cow::Borrowed("Your credit balance is too low to access the Anthropic API."),
        ),
        403 => (
            "permission_error",
            Cow::Borrowed("Your API key does not have permission to use the specified resource."),
        ),
        404 => ("not_found_error", Cow::Owned(format!("model: {model}"))),
        413 => (
            "request_too_large",
            Cow::Borrowed("Request exceeds the maximum allowed number of bytes."),
        ),
        429 => (
            "rate_limit_error",
            Cow::Borrowed(
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
            ),
        ),
        500 => ("api_error", Cow::Borrowed("Internal server error")),
        504 => ("timeout_error", Cow::Borrowed("Request timed out")),
        529 | 503 => ("overloaded_error", Cow::Borrowed("Overloaded")),
        s if s >= 500 => (
            "api_error",
            Cow::Owned(format!("Fake upstream server error (status {s}).")),
        ),
        s => (
            "invalid_request_error",
            Cow::Owned(format!("Fake upstream error (status {s}).")),
        ),
    }
}

/// `(status, type, message)` of a known `x-fake-error-code`.
fn code_defaults(code: &str, model: &str) -> Option<(u16, &'static str, Cow<'static, str>)> {
    let specific = match code {
        "prompt_too_long" | "context_length_exceeded" => Some((
            400,
            "invalid_request_error",
            Cow::Borrowed("prompt is too long: 210000 tokens > 200000 maximum"),
        )),
        "content_filter" | "content_policy_violation" => Some((
            400,
            "invalid_request_error",
            Cow::Borrowed("Output blocked by content filtering policy"),
        )),
        _ => None,
    };
    if specific.is_some() {
        return specific;
    }
    let status = match code {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    };
    let (etype, message) = status_defaults(status, model);
    Some((status, etype, message))
}

fn model_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "claude-fake".to_owned())
}

fn fault_response(c: &Controls, body: &[u8]) -> Response<FakeBody> {
    let error_status = c.status.filter(|s| !(200..300).contains(s));
    let mut resp = if c.malformed && !c.html && error_status.is_none() && c.error_code.is_none() {
        response(
            StatusCode::OK,
            JSON,
            FakeBody::once(Bytes::from_static(MALFORMED_BODY)),
        )
    } else if c.html {
        let status = error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let title = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let page = format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
        );
        response(status, "text/html", FakeBody::once(Bytes::from(page)))
    } else {
        let model = model_of(body);
        let code = c.error_code.as_ref().map(lossy);
        let code_info = code.as_deref().and_then(|k| code_defaults(k, &model));
        let status = error_status
            .or(code_info.as_ref().map(|(s, _, _)| *s))
            .unwrap_or(500);
        let (mut etype, mut message) = status_defaults(status, &model);
        if let Some((_, t, m)) = code_info {
            etype = t;
            message = m;
        }
        let message_header = c.error_message.as_ref().map(lossy);
        let message: &str = message_header.as_deref().unwrap_or(&message);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, etype, message)
    };
    let h = resp.headers_mut();
    if let Some(v) = &c.retry_after_ms {
        h.insert(HeaderName::from_static("retry-after-ms"), v.clone());
    }
    if let Some(v) = &c.retry_after {
        h.insert(RETRY_AFTER, v.clone());
    }
    resp
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// Words of a content: a string, the `text` of blocks, and the content of `tool_result`s.
fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => word_count(s),
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o.get("text").map_or(0, words) + o.get("content").map_or(0, words),
        _ => 0,
    }
}

struct ToolUse {
    id: String,
    name: String,
    input: String,
}

/// Checks the request as the real API does; `Err` is the message of the 400 answer.
fn validate(req: &Value) -> Result<(), String> {
    if !req.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".to_owned());
    }
    if !req.get("max_tokens").is_some_and(Value::is_u64) {
        return Err("max_tokens: Field required".to_owned());
    }
    let Some(msgs) = req.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required".to_owned());
    };
    if msgs.is_empty() {
        return Err("messages: at least one message is required".to_owned());
    }
    for (i, m) in msgs.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ))
            }
        }
        if let Some(Value::Array(blocks)) = m.get("content") {
            for (j, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) == Some("tool_use")
                    && !b.get("input").is_some_and(Value::is_object)
                {
                    return Err(format!(
                        "messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn truncate_words(text: &str, limit: u64) -> (&str, bool) {
    let mut seen = 0u64;
    let mut in_word = false;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            if seen == limit {
                return (text[..i].trim_end(), true);
            }
            seen += 1;
        }
    }
    (text, false)
}

fn messages(c: &Controls, body: &[u8], failing: bool) -> Response<FakeBody> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid(&format!("There was an error parsing the body: {e}")),
    };
    if let Err(message) = validate(&req) {
        return invalid(&message);
    }
    let n = next_id();
    let id = format!("msg_fake_{n}");
    let model = req.get("model").and_then(Value::as_str).unwrap_or("claude");
    let max_tokens = req.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let input_tokens = req.get("system").map_or(0, words)
        + msgs
            .iter()
            .map(|m| m.get("content").map_or(0, words) + 3)
            .sum::<u64>();

    let tools = req.get("tools").and_then(Value::as_array);
    let first_tool = tools
        .and_then(|t| t.iter().find_map(|t| t.get("name")?.as_str()))
        .unwrap_or("get_weather");
    let choice = req.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let forced =
        tools.is_some_and(|t| !t.is_empty()) && matches!(choice_type, Some("any" | "tool"));
    let tool_name = match choice_type {
        Some("tool") => choice
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(first_tool),
        _ => first_tool,
    };
    let count = if c.tool_calls > 0 {
        c.tool_calls.min(1024)
    } else {
        usize::from(forced)
    };
    let calls: Vec<ToolUse> = (0..count)
        .map(|i| ToolUse {
            id: format!("toolu_fake_{n}_{i}"),
            name: tool_name.to_owned(),
            input: format!(
                "{{\"location\": \"{}\", \"unit\": \"celsius\"}}",
                TOOL_LOCATIONS[i % TOOL_LOCATIONS.len()]
            ),
        })
        .collect();

    let content_header = c.content.as_ref().map(lossy);
    let (text, stop_reason) = if calls.is_empty() {
        let full = content_header.as_deref().unwrap_or(DEFAULT_REPLY);
        match truncate_words(full, max_tokens) {
            (t, true) => (t, "max_tokens"),
            (t, false) => (t, "end_turn"),
        }
    } else {
        (content_header.as_deref().unwrap_or(""), "tool_use")
    };
    let output_tokens = word_count(text) + calls.iter().map(|t| word_count(&t.input)).sum::<u64>();

    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let mut resp = if stream {
        let fault = if failing {
            c.cut_after
                .map(Fault::Cut)
                .or(c.stream_error_after.map(Fault::Error))
        } else {
            None
        };
        let items = stream_items(&StreamSpec {
            id: &id,
            model,
            text,
            chunks: c.chunks,
            calls: &calls,
            stop_reason,
            input_tokens,
            output_tokens,
            fault,
            delayed: c.chunk_delay_ms > 0,
        });
        response(
            StatusCode::OK,
            SSE,
            FakeBody::events(items, Duration::from_millis(c.chunk_delay_ms)),
        )
    } else {
        let mut content = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for t in &calls {
            let input: Value = serde_json::from_str(&t.input).unwrap_or_else(|_| json!({}));
            content.push(json!({"type": "tool_use", "id": t.id, "name": t.name, "input": input}));
        }
        let message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage(input_tokens, output_tokens),
        });
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&message).unwrap_or_default(),
        )
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("req_fake_{n}")) {
        h.insert("request-id", v);
    }
    h.insert(
        "anthropic-ratelimit-requests-remaining",
        HeaderValue::from_static("999"),
    );
    resp
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    })
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Fault {
    Cut(usize),
    Error(usize),
}

struct StreamSpec<'a> {
    id: &'a str,
    model: &'a str,
    text: &'a str,
    chunks: Option<usize>,
    calls: &'a [ToolUse],
    stop_reason: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    fault: Option<Fault>,
    delayed: bool,
}

/// Text pieces: `k` even pieces when asked, else one per word (with its trailing spaces).
fn pieces(text: &str, k: Option<usize>) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    match k {
        Some(k) => split_chars(text, k),
        None => {
            let mut out = Vec::new();
            let mut start = 0;
            let mut prev_space = false;
            for (i, ch) in text.char_indices() {
                let space = ch.is_whitespace();
                if !space && prev_space && i > start {
                    out.push(&text[start..i]);
                    start = i;
                }
                prev_space = space;
            }
            out.push(&text[start..]);
            out
        }
    }
}

/// `k` pieces of near-equal character counts (fewer when the text is shorter).
fn split_chars(text: &str, k: usize) -> Vec<&str> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = bounds.len() - 1;
    let k = k.clamp(1, chars.max(1));
    (0..k)
        .filter_map(|p| text.get(bounds[p * chars / k]..bounds[(p + 1) * chars / k]))
        .filter(|s| !s.is_empty())
        .collect()
}

struct Writer {
    items: Vec<Item>,
    deltas: usize,
    fault: Option<Fault>,
    delayed: bool,
    stopped: bool,
}

impl Writer {
    fn event(&mut self, name: &str, data: &Value, delayed: bool) {
        let bytes = Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        self.items.push(if delayed && self.delayed {
            Item::Delayed(bytes)
        } else {
            Item::Data(bytes)
        });
    }

    /// A content delta; `false` once a fault has ended the stream.
    fn delta(&mut self, index: usize, delta: Value) -> bool {
        if self.stopped {
            return false;
        }
        let data = json!({"type": "content_block_delta", "index": index, "delta": delta});
        self.event("content_block_delta", &data, true);
        self.deltas += 1;
        match self.fault {
            Some(Fault::Cut(n) | Fault::Error(n)) if self.deltas >= n => {
                self.fire();
                false
            }
            _ => true,
        }
    }

    fn fire(&mut self) {
        match self.fault.take() {
            Some(Fault::Cut(_)) => self.items.push(Item::Cut),
            Some(Fault::Error(_)) => self.items.push(Item::Data(Bytes::from(format!(
                "event: error\ndata: {STREAM_ERROR}\n\n"
            )))),
            None => {}
        }
        self.stopped = true;
    }
}

fn stream_items(s: &StreamSpec<'_>) -> Vec<Item> {
    let mut w = Writer {
        items: Vec::with_capacity(64),
        deltas: 0,
        fault: s.fault,
        delayed: s.delayed,
        stopped: false,
    };
    if matches!(s.fault, Some(Fault::Cut(0) | Fault::Error(0))) {
        w.fire();
        return w.items;
    }
    let start = json!({
        "type": "message_start",
        "message": {
            "id": s.id,
            "type": "message",
            "role": "assistant",
            "model": s.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(s.input_tokens, 1),
        },
    });
    w.event("message_start", &start, false);
    let mut index = 0;
    if !s.text.is_empty() || s.calls.is_empty() {
        let data = json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}});
        w.event("content_block_start", &data, false);
        w.event("ping", &json!({"type": "ping"}), false);
        for piece in pieces(s.text, s.chunks) {
            if !w.delta(index, json!({"type": "text_delta", "text": piece})) {
                return w.items;
            }
        }
        let data = json!({"type": "content_block_stop", "index": index});
        w.event("content_block_stop", &data, false);
        index += 1;
    }
    for call in s.calls {
        let data = json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}});
        w.event("content_block_start", &data, false);
        if index == 0 {
            w.event("ping", &json!({"type": "ping"}), false);
        }
        let first = json!({"type": "input_json_delta", "partial_json": ""});
        w.event(
            "content_block_delta",
            &json!({"type": "content_block_delta",
            "index": index, "delta": first}),
            false,
        );
        for piece in split_chars(&call.input, 4) {
            if !w.delta(
                index,
                json!({"type": "input_json_delta", "partial_json": piece}),
            ) {
                return w.items;
            }
        }
        let data = json!({"type": "content_block_stop", "index": index});
        w.event("content_block_stop", &data, false);
        index += 1;
    }
    if w.fault.is_some() {
        // Asked after more deltas than there are: fire it now.
        w.fire();
        return w.items;
    }
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": s.stop_reason, "stop_sequence": null},
        "usage": usage(s.input_tokens, s.output_tokens),
    });
    w.event("message_delta", &delta, false);
    w.event("message_stop", &json!({"type": "message_stop"}), false);
    w.items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_messages_paths_only() {
        assert!(serves(&Method::POST, "/v1/messages"));
        assert!(serves(&Method::POST, "/messages/"));
        assert!(!serves(&Method::GET, "/v1/messages"));
        assert!(!serves(&Method::POST, "/v1/chat/completions"));
    }

    #[test]
    fn pieces_and_truncation() {
        assert_eq!(pieces(DEFAULT_REPLY, None).concat(), DEFAULT_REPLY);
        assert_eq!(pieces(DEFAULT_REPLY, None).len(), 20);
        assert_eq!(pieces("héllo wörld", Some(3)).concat(), "héllo wörld");
        assert_eq!(split_chars("{\"a\": 1}", 4).len(), 4);
        assert_eq!(truncate_words("a b c", 2), ("a b", true));
        assert_eq!(truncate_words("a b c", 3), ("a b c", false));
    }
}
