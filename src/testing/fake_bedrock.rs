//! The fake upstream's AWS Bedrock dialect: `POST /model/{modelId}/converse`,
//! `/model/{modelId}/converse-stream` (AWS event-stream frames with correct CRCs) and
//! `/model/{modelId}/invoke` (Titan and Cohere embeddings), shaped like the real service
//! (validated against botocore's `bedrock-runtime` model in the Python tests).
//!
//! Signatures are not verified; the request's headers are recorded like any other's, so tests
//! check the `Authorization: AWS4-HMAC-SHA256 ...` header themselves.
//!
//! Controls (the shared `x-fake-*` headers, in Bedrock's dialect):
//! * `x-fake-status: S`: the AWS error of that status (`x-amzn-errortype` header and
//!   `{"message": ...}` body): 400 ValidationException, 401 UnrecognizedClientException,
//!   403 AccessDeniedException, 404 ResourceNotFoundException, 408 ModelTimeoutException,
//!   424 ModelErrorException, 429 ThrottlingException, 500 InternalServerException,
//!   503 ServiceUnavailableException; other statuses carry no error type.
//! * `x-fake-error-code: C`: an AWS error type (`ThrottlingException`,
//!   `ServiceQuotaExceededException`, `ModelNotReadyException`, `ExpiredTokenException`, ...)
//!   with its status, or `context_too_long` (ValidationException "Input is too long for
//!   requested model."). With `x-fake-stream-error-after`, it names the in-stream exception
//!   (`throttlingException` by default, e.g. `modelStreamErrorException`) instead.
//! * `x-fake-stream-error-after: N`: an `exception` frame after N deltas, then the body ends.
//! * `x-fake-cut-after: N`: the body is cut after N deltas.
//! * `x-fake-malformed`: a 200 whose JSON is broken (unary) or whose frame CRC is wrong (stream).
//! * `x-fake-html`, `x-fake-content`, `x-fake-chunks`, `x-fake-chunk-delay-ms`,
//!   `x-fake-tool-calls: N` (also one call when `toolChoice` is `any` or names a tool), as for
//!   OpenAI. A request holding a `cachePoint` block reports `cacheReadInputTokens: 100` and
//!   `cacheWriteInputTokens: 50`.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::fake_upstream::{
    json_response, lossy, response, word_count, Controls, FakeBody, Item, DEFAULT_REPLY,
    TOOL_LOCATIONS,
};
use super::Ctx;

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
const HTML: &str = "text/html";
const ERROR_NAMESPACE: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
const REQUEST_ID: &str = "5b0d0b2a-fa6e-4a1b-9c2e-fa4e0c1d2e3f";
/// Padding field real Bedrock adds to stream events (`p`), so decoders must ignore it.
const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGH";

pub(crate) fn serves(method: &Method, path: &str) -> bool {
    method == Method::POST && op_of(path).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Converse,
    Stream,
    Invoke,
}

/// The operation and the (still encoded) model id of a path.
fn op_of(path: &str) -> Option<(Op, &str)> {
    let rest = path.strip_prefix("/model/")?;
    let (model, op) = rest.rsplit_once('/')?;
    if model.is_empty() {
        return None;
    }
    let op = match op {
        "converse" => Op::Converse,
        "converse-stream" => Op::Stream,
        "invoke" => Op::Invoke,
        _ => return None,
    };
    Some((op, model))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|x| char::from(*x).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn respond(ctx: &Ctx<'_>) -> Response<FakeBody> {
    let Some((op, model)) = op_of(ctx.uri.path()) else {
        return aws_error(
            404,
            "UnknownOperationException",
            "Unknown operation",
            ctx.controls,
        );
    };
    let model = percent_decode(model);
    let c = ctx.controls;
    if ctx.method != Method::POST {
        return aws_error(405, "UnknownOperationException", "Method not allowed", c);
    }
    let status_fault = c.status.is_some_and(|s| !(200..300).contains(&s));
    let code_fault = c.error_code.is_some() && c.stream_error_after.is_none();
    let stream_fault = c.cut_after.is_some() || c.stream_error_after.is_some();
    if ctx.failing {
        if c.html {
            return html_page(c);
        }
        if status_fault || code_fault {
            return fault(c);
        }
        if c.malformed && op != Op::Stream {
            return response(
                StatusCode::OK,
                super::fake_upstream::JSON,
                FakeBody::once(Bytes::from_static(br#"{"output": {"message": {"#)),
            );
        }
        if c.fail_times.is_some() && !stream_fault && !c.malformed {
            return aws_error(
                500,
                "InternalServerException",
                "The server encountered an internal error.",
                c,
            );
        }
    }
    let body: Value = match serde_json::from_slice(ctx.body) {
        Ok(v) => v,
        Err(e) => {
            return aws_error(
                400,
                "SerializationException",
                &format!("Could not parse the request body: {e}"),
                c,
            )
        }
    };
    match op {
        Op::Invoke => invoke(&model, &body, c),
        Op::Converse | Op::Stream => converse(&body, c, op == Op::Stream, ctx.failing),
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn status_type(status: u16) -> Option<(&'static str, &'static str)> {
    Some(match status {
        400 => (
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ),
        401 => (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
        ),
        424 => (
            "ModelErrorException",
            "The model encountered an error processing the request.",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        500 => (
            "InternalServerException",
            "The server encountered an internal error.",
        ),
        503 => (
            "ServiceUnavailableException",
            "The service is temporarily unable to handle the request.",
        ),
        _ => return None,
    })
}

/// `(status, type, message)` of a known `x-fake-error-code`.
fn code_type(code: &str) -> (u16, String, &'static str) {
    let (status, message) = match code {
        "context_too_long" => {
            return (
                400,
                "ValidationException".into(),
                "Input is too long for requested model.",
            )
        }
        "ThrottlingException" => (429, "Too many requests, please wait before trying again."),
        "ServiceQuotaExceededException" => (
            400,
            "Your request exceeded the service quota for your account. Contact AWS support.",
        ),
        "ModelNotReadyException" => (
            429,
            "The model is not ready to serve inference requests. Try again later.",
        ),
        "ExpiredTokenException" => (403, "The security token included in the request is expired"),
        "UnrecognizedClientException" => (
            403,
            "The security token included in the request is invalid.",
        ),
        "InvalidSignatureException" => (
            403,
            "The request signature we calculated does not match the signature you provided.",
        ),
        "AccessDeniedException" => (
            403,
            "You don't have access to the model with the specified model ID.",
        ),
        "ResourceNotFoundException" => (404, "Could not resolve the foundation model."),
        "ValidationException" => (400, "Malformed input request."),
        "ModelTimeoutException" => (408, "Model has timed out in processing the request."),
        "ModelErrorException" => (
            424,
            "The model encountered an error processing the request.",
        ),
        "InternalServerException" => (500, "The server encountered an internal error."),
        "ServiceUnavailableException" => (503, "The service is temporarily unavailable."),
        "ConflictException" => (400, "The request conflicts with another one."),
        _ => (400, "Fake Bedrock error."),
    };
    (status, code.to_owned(), message)
}

fn fault(c: &Controls) -> Response<FakeBody> {
    let custom = c.error_message.as_ref().map(lossy);
    match (&c.error_code, c.status) {
        (Some(code), status) => {
            let (s, t, m) = code_type(&lossy(code));
            let status = status.filter(|s| !(200..300).contains(s)).unwrap_or(s);
            aws_error(status, &t, custom.as_deref().unwrap_or(m), c)
        }
        (None, Some(status)) => match status_type(status) {
            Some((t, m)) => aws_error(status, t, custom.as_deref().unwrap_or(m), c),
            None => {
                let m = format!("Fake Bedrock error (status {status}).");
                plain_error(status, custom.as_deref().unwrap_or(&m), c)
            }
        },
        (None, None) => aws_error(500, "InternalServerException", "Internal error.", c),
    }
}

fn with_hints(mut resp: Response<FakeBody>, c: &Controls) -> Response<FakeBody> {
    let h = resp.headers_mut();
    if let Some(v) = &c.retry_after_ms {
        h.insert(HeaderName::from_static("retry-after-ms"), v.clone());
    }
    if let Some(v) = &c.retry_after {
        h.insert(HeaderName::from_static("retry-after"), v.clone());
    }
    h.insert(
        HeaderName::from_static("x-amzn-requestid"),
        HeaderValue::from_static(REQUEST_ID),
    );
    resp
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn aws_error(status: u16, etype: &str, message: &str, c: &Controls) -> Response<FakeBody> {
    let body = serde_json::to_vec(&json!({ "message": message })).unwrap_or_default();
    let mut resp = json_response(status_code(status), body);
    if let Ok(v) = HeaderValue::from_str(&format!("{etype}:{ERROR_NAMESPACE}")) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-amzn-errortype"), v);
    }
    with_hints(resp, c)
}

fn plain_error(status: u16, message: &str, c: &Controls) -> Response<FakeBody> {
    let body = serde_json::to_vec(&json!({ "message": message })).unwrap_or_default();
    with_hints(json_response(status_code(status), body), c)
}

fn html_page(c: &Controls) -> Response<FakeBody> {
    let status = c.status.filter(|s| !(200..300).contains(s)).unwrap_or(502);
    let page = format!(
        "<html><head><title>{status} Bad Gateway</title></head><body><h1>{status} Bad \
         Gateway</h1><hr>awselb/2.0</body></html>"
    );
    with_hints(
        response(status_code(status), HTML, FakeBody::once(Bytes::from(page))),
        c,
    )
}

// ---------------------------------------------------------------------------
// Event-stream frames
// ---------------------------------------------------------------------------

/// One AWS event-stream message with string headers.
pub(crate) fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn event(etype: &str, mut payload: Value) -> Bytes {
    if let Value::Object(o) = &mut payload {
        o.insert(
            "p".into(),
            Value::String(PADDING[..(etype.len() % 20) + 4].to_owned()),
        );
    }
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    Bytes::from(frame(
        &[
            (":event-type", etype),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        &body,
    ))
}

fn exception(etype: &str, message: &str) -> Bytes {
    let body = if etype == "modelStreamErrorException" {
        json!({"message": message, "originalStatusCode": 500, "originalMessage": message})
    } else {
        json!({ "message": message })
    };
    Bytes::from(frame(
        &[
            (":exception-type", etype),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &serde_json::to_vec(&body).unwrap_or_default(),
    ))
}

// ---------------------------------------------------------------------------
// Converse
// ---------------------------------------------------------------------------

fn block_words(blocks: Option<&Value>) -> u64 {
    blocks
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    b.get("text").and_then(Value::as_str).map_or(0, word_count)
                        + b.pointer("/toolResult/content")
                            .map_or(0, |c| block_words(Some(c)))
                })
                .sum()
        })
        .unwrap_or(0)
}

fn has_cache_point(body: &Value) -> bool {
    let any = |v: Option<&Value>| {
        v.and_then(Value::as_array)
            .is_some_and(|bs| bs.iter().any(|b| b.get("cachePoint").is_some()))
    };
    any(body.get("system"))
        || body
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|ms| ms.iter().any(|m| any(m.get("content"))))
}

/// Words with their trailing whitespace, or `k` pieces of about equal length.
fn pieces(text: &str, k: Option<usize>) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    match k {
        Some(k) if k > 0 => {
            let k = k.min(chars.len().max(1));
            (0..k)
                .map(|i| {
                    chars[i * chars.len() / k..(i + 1) * chars.len() / k]
                        .iter()
                        .collect()
                })
                .collect()
        }
        _ => {
            let mut out: Vec<String> = Vec::new();
            let mut cur = String::new();
            let mut in_space = false;
            for ch in chars {
                if !ch.is_whitespace() && in_space {
                    out.push(std::mem::take(&mut cur));
                    in_space = false;
                }
                if ch.is_whitespace() {
                    in_space = true;
                }
                cur.push(ch);
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out
        }
    }
}

struct Tool {
    id: String,
    name: String,
    input: Value,
}

fn converse(body: &Value, c: &Controls, stream: bool, failing: bool) -> Response<FakeBody> {
    let messages = body.get("messages").and_then(Value::as_array);
    let n_messages = messages.map_or(0, Vec::len) as u64;
    let prompt = block_words(body.get("system"))
        + messages.map_or(0, |ms| {
            ms.iter().map(|m| block_words(m.get("content"))).sum()
        })
        + 3 * n_messages;
    let tools = body
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    let choice = body.pointer("/toolConfig/toolChoice");
    let forced_name = choice
        .and_then(|c| c.pointer("/tool/name"))
        .and_then(Value::as_str);
    let forced = tools.is_some()
        && choice.is_some_and(|c| c.get("any").is_some() || c.get("tool").is_some());
    let n_tools = if c.tool_calls > 0 {
        c.tool_calls.min(1024)
    } else if forced {
        1
    } else {
        0
    };
    let name = forced_name
        .or_else(|| {
            tools
                .and_then(|t| t.first())
                .and_then(|t| t.pointer("/toolSpec/name"))
                .and_then(Value::as_str)
        })
        .unwrap_or("get_weather")
        .to_owned();
    let calls: Vec<Tool> = (0..n_tools)
        .map(|i| Tool {
            id: format!("tooluse_fake{i:014}"),
            name: name.clone(),
            input: json!({
                "location": TOOL_LOCATIONS.get(i % TOOL_LOCATIONS.len()).copied().unwrap_or("Paris"),
                "unit": "celsius"
            }),
        })
        .collect();
    let text_header = c.content.as_ref().map(lossy);
    let full = text_header.as_deref().unwrap_or(DEFAULT_REPLY);
    let limit = body
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    let (text, stop) = if calls.is_empty() {
        let words: Vec<&str> = full.split_whitespace().collect();
        match limit {
            Some(l) if (l as usize) < words.len() => (words[..l as usize].join(" "), "max_tokens"),
            _ => (full.to_owned(), "end_turn"),
        }
    } else {
        (String::new(), "tool_use")
    };
    let output = if calls.is_empty() {
        word_count(&text)
    } else {
        calls.iter().map(|t| word_count(&t.input.to_string())).sum()
    };
    let mut usage = json!({
        "inputTokens": prompt,
        "outputTokens": output,
        "totalTokens": prompt + output,
    });
    if has_cache_point(body) {
        usage["cacheReadInputTokens"] = json!(100);
        usage["cacheWriteInputTokens"] = json!(50);
        usage["totalTokens"] = json!(prompt + output + 150);
    }
    let metrics = json!({"latencyMs": 42});

    if !stream {
        let mut content = Vec::new();
        if !text.is_empty() {
            content.push(json!({ "text": text }));
        }
        for t in &calls {
            content.push(json!({"toolUse": {"toolUseId": t.id, "name": t.name, "input": t.input}}));
        }
        let out = json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": usage,
            "metrics": metrics,
        });
        let bytes = serde_json::to_vec(&out).unwrap_or_default();
        return with_hints(json_response(StatusCode::OK, bytes), c);
    }

    let mut items: Vec<Item> = Vec::new();
    let mut deltas = 0usize;
    let cut = if failing { c.cut_after } else { None };
    let err_after = if failing { c.stream_error_after } else { None };
    let err_type = c
        .error_code
        .as_ref()
        .map(|v| lossy(v).into_owned())
        .unwrap_or_else(|| "throttlingException".to_owned());
    // Returns false once a fault fired (the body ends there).
    let mut push_delta = |items: &mut Vec<Item>, b: Bytes| -> bool {
        if cut == Some(deltas) {
            items.push(Item::Cut);
            return false;
        }
        if err_after == Some(deltas) {
            items.push(Item::Data(exception(
                &err_type,
                "The system encountered an unexpected error during processing. Try your request again.",
            )));
            return false;
        }
        items.push(Item::Delayed(b));
        deltas += 1;
        true
    };
    items.push(Item::Data(event(
        "messageStart",
        json!({"role": "assistant"}),
    )));
    if c.malformed && failing {
        let mut bad = event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "x"}}),
        )
        .to_vec();
        if let Some(last) = bad.last_mut() {
            *last ^= 0xff;
        }
        items.push(Item::Data(Bytes::from(bad)));
        return stream_response(items, c);
    }
    if calls.is_empty() {
        for piece in pieces(&text, c.chunks) {
            let ev = event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
            );
            if !push_delta(&mut items, ev) {
                return stream_response(items, c);
            }
        }
        items.push(Item::Data(event(
            "contentBlockStop",
            json!({"contentBlockIndex": 0}),
        )));
    } else {
        for (i, t) in calls.iter().enumerate() {
            items.push(Item::Data(event(
                "contentBlockStart",
                json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": t.id, "name": t.name}}}),
            )));
            let args = t.input.to_string();
            for piece in pieces(&args, Some(4)) {
                let ev = event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": piece}}}),
                );
                if !push_delta(&mut items, ev) {
                    return stream_response(items, c);
                }
            }
            items.push(Item::Data(event(
                "contentBlockStop",
                json!({"contentBlockIndex": i}),
            )));
        }
    }
    if cut.is_some_and(|n| n >= deltas) {
        items.push(Item::Cut);
        return stream_response(items, c);
    }
    if err_after.is_some_and(|n| n >= deltas) {
        items.push(Item::Data(exception(
            &err_type,
            "The system encountered an unexpected error.",
        )));
        return stream_response(items, c);
    }
    items.push(Item::Data(event(
        "messageStop",
        json!({ "stopReason": stop }),
    )));
    items.push(Item::Data(event(
        "metadata",
        json!({"usage": usage, "metrics": metrics}),
    )));
    stream_response(items, c)
}

fn stream_response(items: Vec<Item>, c: &Controls) -> Response<FakeBody> {
    with_hints(
        response(
            StatusCode::OK,
            EVENT_STREAM,
            FakeBody::events(items, Duration::from_millis(c.chunk_delay_ms)),
        ),
        c,
    )
}

// ---------------------------------------------------------------------------
// InvokeModel: embeddings
// ---------------------------------------------------------------------------

/// A deterministic unit vector from a text (FNV-1a seed, splitmix64 steps).
fn vector(text: &str, dims: usize, normalize: bool) -> Vec<f64> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut v: Vec<f64> = (0..dims)
        .map(|_| {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f64) / 16_777_216.0 * 2.0 - 1.0
        })
        .collect();
    if normalize {
        let norm = v.iter().map(|f| f * f).sum::<f64>().sqrt();
        if norm > 0.0 {
            for f in &mut v {
                *f /= norm;
            }
        }
    }
    v
}

fn invoke(model: &str, body: &Value, c: &Controls) -> Response<FakeBody> {
    let ok = |v: Value| {
        with_hints(
            json_response(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
            c,
        )
    };
    if model.contains("amazon.titan-embed") {
        let Some(text) = body.get("inputText").and_then(Value::as_str) else {
            return aws_error(
                400,
                "ValidationException",
                "Malformed input request: #: required key [inputText] not found",
                c,
            );
        };
        let v2 = model.contains("titan-embed-text-v2");
        let dims = body
            .get("dimensions")
            .and_then(Value::as_u64)
            .unwrap_or(if v2 { 1024 } else { 1536 }) as usize;
        if v2 && ![256, 512, 1024].contains(&dims) {
            return aws_error(
                400,
                "ValidationException",
                "Malformed input request: #/dimensions: 7 is not a valid enum value",
                c,
            );
        }
        let normalize = body
            .get("normalize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        return ok(json!({
            "embedding": vector(text, dims, normalize),
            "inputTextTokenCount": word_count(text),
        }));
    }
    if model.contains("cohere.embed") {
        let Some(texts) = body.get("texts").and_then(Value::as_array) else {
            return aws_error(
                400,
                "ValidationException",
                "Malformed input request: #: required key [texts] not found",
                c,
            );
        };
        let texts: Vec<&str> = texts.iter().filter_map(Value::as_str).collect();
        let dims = body
            .get("output_dimension")
            .and_then(Value::as_u64)
            .unwrap_or(1024) as usize;
        let vectors: Vec<Vec<f64>> = texts.iter().map(|t| vector(t, dims, true)).collect();
        let embeddings = if body.get("embedding_types").is_some() {
            json!({ "float": vectors })
        } else {
            json!(vectors)
        };
        return ok(json!({
            "embeddings": embeddings,
            "id": "fake-cohere-embedding",
            "response_type": if body.get("embedding_types").is_some() { "embeddings_by_type" } else { "embeddings_floats" },
            "texts": texts,
        }));
    }
    aws_error(
        400,
        "ValidationException",
        "The provided model identifier is invalid.",
        c,
    )
}
