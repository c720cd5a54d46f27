//! The OpenAI dialect: Chat Completions and Embeddings requests, responses, stream events and
//! error bodies, for OpenAI and every OpenAI-compatible vendor in `openai_compat`.
//!
//! Error bodies: `{"error": {"message", "type", "code", "param"}}`, also the looser shapes
//! vendors use (`{"error": "text"}`, `{"message": ...}`, `{"detail": ...}`), and bodies that are
//! not JSON at all (an HTML page from a load balancer), reported with status and a short excerpt.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};

use bytes::Bytes;

use super::{Extras, PreparedRequest, Provider, Route};
use crate::error::{Error, ErrorKind, Result};
use crate::retry::retry_hint;
use crate::streaming::sse::{SseEvent, SseParser};
use crate::streaming::{StreamDecoder, StreamEvent};
use crate::types::{
    ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageRequest,
    ImageResponse, SpeechRequest,
};

/// Keys LLMux writes itself; a caller's value for them in `params` is not copied twice.
const OWN_KEYS: &[&str] = &["model", "messages", "stream", "stream_options", "input"];

/// `content-type`, the bearer key, the organization and the caller's extra headers.
pub fn headers(route: &Route, extra: &[(String, String)]) -> Result<HeaderMap> {
    let mut h = json_headers();
    if let Some(key) = &route.api_key {
        h.insert(
            AUTHORIZATION,
            sensitive(&format!("Bearer {}", key.expose()))?,
        );
    }
    if let Some(org) = &route.organization {
        if let Ok(v) = HeaderValue::from_str(org) {
            h.insert("openai-organization", v);
        }
    }
    apply_extra_headers(&mut h, extra)?;
    Ok(h)
}

/// A header value that is never logged.
pub fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            "a credential contains characters not allowed in a header",
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// `content-type: application/json`.
pub fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(6);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

/// Adds the caller's `extra_headers`; they win over ours (LiteLLM's behaviour).
pub fn apply_extra_headers(h: &mut HeaderMap, extra: &[(String, String)]) -> Result<()> {
    for (k, v) in extra {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Error::bad_request(format!("extra_headers: invalid header name '{k}'")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Error::bad_request(format!("extra_headers: invalid value for '{k}'")))?;
        h.insert(name, value);
    }
    Ok(())
}

fn push_json(out: &mut Vec<u8>, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, v)
        .map_err(|e| Error::bad_request(format!("request is not serialisable as JSON: {e}")))
}

fn push_field(out: &mut Vec<u8>, key: &str, v: &impl serde::Serialize) -> Result<()> {
    out.push(b',');
    push_json(out, &key)?;
    out.push(b':');
    push_json(out, v)
}

/// Writes `params` (less our own keys and those `extra_body` overrides), then `extra_body`.
fn push_params(
    out: &mut Vec<u8>,
    params: &Map<String, Value>,
    extra_body: Option<&Map<String, Value>>,
) -> Result<()> {
    for (k, v) in params {
        if OWN_KEYS.contains(&k.as_str()) || extra_body.is_some_and(|e| e.contains_key(k)) {
            continue;
        }
        push_field(out, k, v)?;
    }
    if let Some(extra) = extra_body {
        for (k, v) in extra {
            push_field(out, k, v)?;
        }
    }
    Ok(())
}

/// The Chat Completions body. When streaming and the vendor supports it, usage is always
/// requested (`stream_options.include_usage`), whatever the caller asked, so that every stream
/// can be costed; the pipeline hides the usage chunk from callers who did not ask.
pub fn chat_body(
    route: &Route,
    req: &ChatRequest,
    stream: bool,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Bytes> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"model\":");
    push_json(&mut body, &route.model)?;
    push_field(&mut body, "messages", &req.messages)?;
    push_params(&mut body, &req.params, extra_body)?;
    if stream {
        body.extend_from_slice(b",\"stream\":true");
        let mut opts = match req.params.get("stream_options") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        if route.stream_usage {
            opts.insert("include_usage".into(), Value::Bool(true));
        }
        if !opts.is_empty() {
            push_field(&mut body, "stream_options", &opts)?;
        }
    }
    body.push(b'}');
    Ok(body.into())
}

/// The Embeddings body.
pub fn embedding_body(
    route: &Route,
    req: &EmbeddingRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Bytes> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"model\":");
    push_json(&mut body, &route.model)?;
    push_field(&mut body, "input", &req.input)?;
    push_params(&mut body, &req.params, extra_body)?;
    body.push(b'}');
    Ok(body.into())
}

/// The OpenAI dialect as a [`Provider`]: `{base}/chat/completions`, `{base}/embeddings`,
/// `Authorization: Bearer`.
#[derive(Debug)]
pub struct OpenAi;

impl Provider for OpenAi {
    fn chat_request(
        &self,
        route: &Route,
        req: &ChatRequest,
        stream: bool,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: format!("{}/chat/completions", route.api_base),
            headers: headers(route, x.headers)?,
            body: chat_body(route, req, stream, x.body)?,
        })
    }

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion> {
        parse_chat(route, body)
    }

    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(route.clone()))
    }

    fn parse_error(&self, route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
        parse_error(route, status, headers, body)
    }

    fn embedding_request(
        &self,
        route: &Route,
        req: &EmbeddingRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: format!("{}/embeddings", route.api_base),
            headers: headers(route, x.headers)?,
            body: embedding_body(route, req, x.body)?,
        })
    }

    fn image_request(
        &self,
        route: &Route,
        req: &ImageRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: format!("{}/images/generations", route.api_base),
            headers: headers(route, x.headers)?,
            body: image_body(route, req, x.body)?,
        })
    }

    fn parse_image(&self, route: &Route, body: &[u8]) -> Result<ImageResponse> {
        parse_image(route, body)
    }

    fn image_edit_target(&self, route: &Route, x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Ok((
            format!("{}/images/edits", route.api_base),
            headers(route, x.headers)?,
        ))
    }

    fn transcription_target(&self, route: &Route, x: &Extras<'_>) -> Result<(String, HeaderMap)> {
        Ok((
            format!("{}/audio/transcriptions", route.api_base),
            headers(route, x.headers)?,
        ))
    }

    fn speech_request(
        &self,
        route: &Route,
        req: &SpeechRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: format!("{}/audio/speech", route.api_base),
            headers: headers(route, x.headers)?,
            body: speech_body(route, req, x.body)?,
        })
    }

    fn parse_embedding(
        &self,
        route: &Route,
        _req: &EmbeddingRequest,
        body: &[u8],
    ) -> Result<EmbeddingResponse> {
        parse_embedding(route, body)
    }
}

/// SSE framing plus [`parse_stream_event`]: the stream decoder of the OpenAI dialect.
pub struct SseDecoder {
    sse: SseParser,
    events: Vec<SseEvent>,
    route: Route,
}

impl SseDecoder {
    pub fn new(route: Route) -> Self {
        SseDecoder {
            sse: SseParser::new(),
            events: Vec::new(),
            route,
        }
    }

    fn translate(&mut self, out: &mut Vec<Result<StreamEvent>>) {
        for ev in self.events.drain(..) {
            out.push(parse_stream_event(&self.route, &ev));
        }
    }
}

impl StreamDecoder for SseDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<StreamEvent>>) {
        self.sse.feed(bytes, &mut self.events);
        self.translate(out);
    }

    fn finish(&mut self, out: &mut Vec<Result<StreamEvent>>) -> bool {
        // Complete events were already translated by `feed`. What is left is a cut event, which
        // must not be parsed as if whole (the stream raises a cut error), except a final
        // `[DONE]` sent without its blank line.
        if !self.sse.has_partial() {
            return false;
        }
        let mut rest = Vec::new();
        self.sse.finish(&mut rest);
        if let [ev] = rest.as_slice() {
            if ev.data.trim() == "[DONE]" {
                out.push(Ok(StreamEvent::Done));
                return false;
            }
        }
        true
    }
}

pub(crate) fn invalid_response(
    route: &Route,
    what: &str,
    e: &serde_json::Error,
    body: &[u8],
) -> Error {
    Error::new(
        ErrorKind::InvalidResponse,
        format!(
            "{}Exception - the upstream answered 200 with an invalid {what}: {e}; body starts: {}",
            route.display,
            excerpt(body)
        ),
    )
}

pub fn parse_chat(route: &Route, body: &[u8]) -> Result<ChatCompletion> {
    serde_json::from_slice(body).map_err(|e| invalid_response(route, "chat completion", &e, body))
}

/// An `images/generations` body: the route's model, the prompt, the parameters.
pub fn image_body(
    route: &Route,
    req: &ImageRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Bytes> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"model\":");
    push_json(&mut body, &route.model)?;
    push_field(&mut body, "prompt", &Value::String(req.prompt.clone()))?;
    push_params(&mut body, &req.params, extra_body)?;
    body.push(b'}');
    Ok(body.into())
}

/// An `audio/speech` body: the route's model, the text, the parameters (`voice`, ...).
pub fn speech_body(
    route: &Route,
    req: &SpeechRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Bytes> {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"model\":");
    push_json(&mut body, &route.model)?;
    push_field(&mut body, "input", &Value::String(req.input.clone()))?;
    push_params(&mut body, &req.params, extra_body)?;
    body.push(b'}');
    Ok(body.into())
}

pub fn parse_image(route: &Route, body: &[u8]) -> Result<ImageResponse> {
    serde_json::from_slice(body).map_err(|e| invalid_response(route, "image response", &e, body))
}

pub fn parse_embedding(route: &Route, body: &[u8]) -> Result<EmbeddingResponse> {
    serde_json::from_slice(body)
        .map_err(|e| invalid_response(route, "embedding response", &e, body))
}

/// Parses one SSE event of a chat stream. An in-stream `{"error": ...}` event (which OpenAI
/// sends when it fails after the 200) becomes a classified error.
pub fn parse_stream_event(route: &Route, ev: &SseEvent) -> Result<StreamEvent> {
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Ok(StreamEvent::Done);
    }
    let chunk: ChatChunk = match serde_json::from_str(data) {
        Ok(c) => c,
        Err(e) => {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                if v.get("error").is_some() {
                    return Err(in_stream_error(route, &v));
                }
            }
            return Err(invalid_response(route, "stream chunk", &e, data.as_bytes()));
        }
    };
    if chunk.choices.is_empty() && chunk.usage.is_none() {
        if let Some(err) = chunk.extra.get("error") {
            let v = serde_json::json!({ "error": err });
            return Err(in_stream_error(route, &v));
        }
    }
    Ok(StreamEvent::Chunk(Box::new(chunk)))
}

fn in_stream_error(route: &Route, v: &Value) -> Error {
    let fields = ErrorFields::from_json(v);
    let kind = match fields.kind_hint() {
        Some(k) => k,
        None => match fields.etype.as_deref() {
            Some("rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens") => {
                ErrorKind::RateLimited
            }
            Some("overloaded_error" | "service_unavailable") => ErrorKind::ServiceUnavailable,
            Some("invalid_request_error") => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        },
    };
    Error::new(
        kind,
        format!(
            "{}Exception - error in stream: {}",
            route.display,
            fields.message.as_deref().unwrap_or("(no message)")
        ),
    )
    .with_upstream_code(fields.code.or(fields.etype))
}

/// The parts of an error body that classify it.
#[derive(Debug, Default)]
struct ErrorFields {
    message: Option<String>,
    etype: Option<String>,
    code: Option<String>,
}

fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl ErrorFields {
    fn from_json(v: &Value) -> Self {
        let inner = v.get("error").unwrap_or(v);
        match inner {
            Value::String(s) => ErrorFields {
                message: Some(s.clone()),
                ..Default::default()
            },
            Value::Object(o) => ErrorFields {
                message: as_text(o.get("message"))
                    .or_else(|| as_text(o.get("detail")))
                    .or_else(|| as_text(v.get("message")))
                    .or_else(|| as_text(v.get("detail"))),
                etype: as_text(o.get("type")),
                code: as_text(o.get("code")),
            },
            _ => ErrorFields::default(),
        }
    }

    /// A kind the body states more precisely than the status does.
    fn kind_hint(&self) -> Option<ErrorKind> {
        let code = self.code.as_deref().unwrap_or("");
        let etype = self.etype.as_deref().unwrap_or("");
        let msg = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        if code == "insufficient_quota"
            || etype == "insufficient_quota"
            || msg.contains("exceeded your current quota")
        {
            Some(ErrorKind::QuotaExceeded)
        } else if code == "context_length_exceeded"
            || msg.contains("maximum context length")
            || msg.contains("context_length_exceeded")
            || msg.contains("exceeds the context window")
            || msg.contains("prompt is too long")
        {
            Some(ErrorKind::ContextWindowExceeded)
        } else if code == "content_policy_violation"
            || code == "content_filter"
            || msg.contains("safety system")
            || msg.contains("content management policy")
        {
            Some(ErrorKind::ContentPolicyViolation)
        } else if code == "model_not_found" || code == "DeploymentNotFound" {
            Some(ErrorKind::NotFound)
        } else {
            None
        }
    }
}

/// A short, single-line, tag-free excerpt of a body, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let mut out = String::with_capacity(MAX + 3);
    let mut in_tag = false;
    let mut last_space = true;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
        if out.len() >= MAX {
            out.push_str("...");
            break;
        }
    }
    out.trim().to_owned()
}

/// Classifies a non-2xx answer: kind from the status, refined by the body; the retry hint from
/// the headers; a non-JSON body reported with its content type and an excerpt. The caller's key
/// is masked if an upstream echoes it.
pub fn parse_error(route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let hint = retry_hint(headers);
    let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let (kind, message, code) = match parsed {
        Some(v) => {
            let f = ErrorFields::from_json(&v);
            let mut kind = f.kind_hint().unwrap_or(ErrorKind::from_status(status));
            // A kind hint must not turn a server failure into a client one, nor a rate limit
            // into a context error: only refine 4xx answers.
            if !(400..500).contains(&status) {
                kind = ErrorKind::from_status(status);
            }
            let msg = f.message.unwrap_or_else(|| excerpt(body));
            (kind, msg, f.code.or(f.etype))
        }
        None => {
            let ctype = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type");
            let msg = if body.is_empty() {
                format!("upstream answered HTTP {status} with an empty body")
            } else {
                format!(
                    "upstream answered HTTP {status} with a non-JSON body ({ctype}): {}",
                    excerpt(body)
                )
            };
            (ErrorKind::from_status(status), msg, None)
        }
    };
    let mut message = format!("{}Exception - {}", route.display, message);
    if let Some(key) = &route.api_key {
        if key.expose().len() >= 8 && message.contains(key.expose()) {
            message = message.replace(key.expose(), "***");
        }
    }
    Error::new(kind, message)
        .with_status(status)
        .with_retry_after(hint)
        .with_upstream_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{resolve, Endpoint, Secret};
    use std::time::Duration;

    fn route() -> Route {
        resolve(
            "gpt-4o",
            &Endpoint {
                api_key: Some(Secret::new("sk-abcdefghijkl")),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn err(status: u16, body: &str) -> Error {
        parse_error(&route(), status, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn openai_bodies() {
        let e = err(
            429,
            r#"{"error":{"message":"You exceeded your current quota, please check your plan","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::QuotaExceeded);
        assert!(!e.retryable());
        let e = err(
            429,
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.upstream_code.as_deref(), Some("rate_limit_exceeded"));
        assert!(e.message.starts_with("OpenAIException - Rate limit"));
        let e = err(
            400,
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
        let e = err(
            400,
            r#"{"error":{"message":"rejected by our safety system","code":"content_policy_violation"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::ContentPolicyViolation);
        let e = err(
            404,
            r#"{"error":{"message":"The model does not exist","code":"model_not_found"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = err(503, r#"{"error":"overloaded"}"#);
        assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
        assert!(e.message.contains("overloaded"));
        let e = err(422, r#"{"detail":"bad value"}"#);
        assert_eq!(e.kind, ErrorKind::UnprocessableEntity);
        assert!(e.message.contains("bad value"));
    }

    #[test]
    fn html_bodies_and_hints() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        let body = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>";
        let e = parse_error(&route(), 502, &h, body.as_bytes());
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert_eq!(e.status, Some(502));
        assert_eq!(e.retry_after, Some(Duration::from_millis(250)));
        assert!(
            e.message.contains("non-JSON body (text/html)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("502 Bad Gateway"));
        assert!(!e.message.contains('<'));
    }

    #[test]
    fn echoed_key_is_masked() {
        let e = err(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-abcdefghijkl"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert!(!e.message.contains("sk-abcdefghijkl"));
    }

    #[test]
    fn request_body_has_model_messages_params_once() {
        let mut req = ChatRequest::new(
            "gpt-4o",
            vec![serde_json::json!({"role":"user","content":"hi"})],
        );
        req.params
            .insert("temperature".into(), serde_json::json!(0.5));
        req.params.insert("stream".into(), serde_json::json!(false));
        req.params.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": false}),
        );
        let mut extra = Map::new();
        extra.insert("temperature".into(), serde_json::json!(0.9));
        extra.insert("vendor_flag".into(), serde_json::json!(true));
        let hdrs = [("x-test".to_string(), "1".to_string())];
        let x = Extras {
            headers: &hdrs,
            body: Some(&extra),
        };
        let p = OpenAi.chat_request(&route(), &req, true, &x).unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["temperature"], 0.9);
        assert_eq!(v["vendor_flag"], true);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let text = String::from_utf8(p.body.to_vec()).unwrap();
        assert_eq!(text.matches("\"temperature\"").count(), 1);
        assert_eq!(text.matches("\"stream\"").count(), 1);
        assert_eq!(p.url, "https://api.openai.com/v1/chat/completions");
        assert!(p.headers.get(AUTHORIZATION).unwrap().is_sensitive());
        assert_eq!(p.headers.get("x-test").unwrap(), "1");
    }

    #[test]
    fn in_stream_error_is_classified() {
        let ev = SseEvent {
            data: r#"{"error":{"message":"boom","type":"server_error"}}"#.into(),
            ..Default::default()
        };
        let e = parse_stream_event(&route(), &ev).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        let ev = SseEvent {
            data: "[DONE]".into(),
            ..Default::default()
        };
        assert!(matches!(
            parse_stream_event(&route(), &ev),
            Ok(StreamEvent::Done)
        ));
        let ev = SseEvent {
            data: "{not json".into(),
            ..Default::default()
        };
        assert_eq!(
            parse_stream_event(&route(), &ev).unwrap_err().kind,
            ErrorKind::InvalidResponse
        );
    }

    const RECORDED_STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\r\n\r\n",
        ": keep-alive\r\n\r\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüße, 世界 🌍\"},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );

    /// Decodes `parts` in order; returns the chunks (as JSON), whether `[DONE]` was seen, and
    /// whether the decoder reported an unfinished event at the end.
    fn decode(parts: &[&[u8]]) -> (Vec<String>, bool, bool) {
        let mut d = SseDecoder::new(route());
        let mut out = Vec::new();
        for p in parts {
            d.feed(p, &mut out);
        }
        let partial = d.finish(&mut out);
        let mut chunks = Vec::new();
        let mut done = false;
        for ev in out {
            match ev.unwrap() {
                StreamEvent::Chunk(c) => chunks.push(serde_json::to_string(&c).unwrap()),
                StreamEvent::Done => done = true,
            }
        }
        (chunks, done, partial)
    }

    #[test]
    fn recorded_stream_same_chunks_at_every_split() {
        let bytes = RECORDED_STREAM.as_bytes();
        let whole = decode(&[bytes]);
        assert_eq!(whole.0.len(), 5);
        assert!(whole.0[1].contains("Grüße, 世界 🌍"));
        assert!(whole.1 && !whole.2);
        for i in 0..=bytes.len() {
            assert_eq!(decode(&[&bytes[..i], &bytes[i..]]), whole, "split at {i}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&singles), whole, "byte by byte");
        // A final [DONE] without its blank line still ends the stream properly.
        let lenient = RECORDED_STREAM.trim_end_matches("\r\n\r\n").to_owned() + "\r\n";
        assert_eq!(decode(&[lenient.as_bytes()]), whole);
    }

    #[test]
    fn every_truncation_is_detectable() {
        // Cut anywhere before the end marker: either no [DONE] was seen, or (never) a partial
        // event is reported; the stream layer turns both into a connection error.
        let bytes = RECORDED_STREAM.as_bytes();
        let done_at = RECORDED_STREAM.find("data: [DONE]").unwrap();
        for cut in 0..done_at + "data: [DONE]".len() {
            let (_, done, _) = decode(&[&bytes[..cut]]);
            assert!(!done, "cut at {cut} looked complete");
        }
    }
}
