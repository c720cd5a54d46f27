//! The Google Gemini API dialect (`gemini/<model>`, Google AI Studio): `generateContent`,
//! `streamGenerateContent?alt=sse`, `embedContent` and `batchEmbedContents` under
//! `{base}/v1beta/models/{model}`, with the key in the `x-goog-api-key` header (never in the
//! URL, so it never reaches a log line).
//!
//! Requests: OpenAI messages become `contents` (`assistant` → `model`, tool results →
//! `functionResponse` parts of a user turn, consecutive turns of one role merged), system
//! messages become `systemInstruction`, sampling options `generationConfig`, tools
//! `functionDeclarations` with their JSON schemas reduced to the OpenAPI subset Gemini takes.
//! Parameters that are not OpenAI's are passed on: Gemini's top-level fields (`safetySettings`,
//! `cachedContent`, ..., snake_case accepted) at the top, anything else in `generationConfig`.
//!
//! Answers: candidates become choices (thought parts → `reasoning_content`, `functionCall`
//! parts → tool calls whose ids carry Gemini's thought signature after `__thought__`, as
//! LiteLLM does), `usageMetadata` becomes OpenAI usage. A blocked prompt or an answer blocked
//! before any content is a `content_policy_violation` error. Streams are SSE fragments that
//! are each a whole `GenerateContentResponse`; there is no `[DONE]`: the stream ends with the
//! fragment that finishes every candidate. An `{"error": ...}` object inside a stream (as an
//! SSE event or as a raw JSON tail) is a classified error.
//!
//! Errors are `google.rpc.Status` bodies: classified by their `status` string and details
//! (`QuotaFailure` per-day quota ids are `quota_exceeded`, `RetryInfo.retryDelay` is the retry
//! hint, `ErrorInfo` reason `API_KEY_INVALID` is `authentication`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{json, Map, Value};

use super::media::{image_url, parse_data_url};
use super::openai::{self, apply_extra_headers, excerpt, json_headers, sensitive};
use super::{api_key, base_url, missing_key, Endpoint, Extras, PreparedRequest, Provider, Route};
use crate::error::{Error, ErrorKind, Result};
use crate::retry::retry_hint;
use crate::streaming::sse::{SseEvent, SseParser};
use crate::streaming::{StreamDecoder, StreamEvent};
use crate::types::{
    unix_now, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, DeltaFunction,
    DeltaToolCall, EmbeddingRequest, EmbeddingResponse, FunctionCall, ImageRequest, ImageResponse,
    Message, ToolCall, Usage,
};

/// Google AI Studio's endpoint.
pub const DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com";
const BASE_ENV: &[&str] = &["GEMINI_API_BASE"];
const KEY_ENV: &[&str] = &["GEMINI_API_KEY", "GOOGLE_API_KEY"];
/// Between a tool call id and Gemini's thought signature (LiteLLM's convention).
pub const THOUGHT_SEPARATOR: &str = "__thought__";

/// OpenAI parameters Gemini cannot express (consistent with LiteLLM's gemini config:
/// `parallel_tool_calls` and `user` are accepted and not sent; Gemini decides itself).
const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "function_call",
    "prediction",
    "audio",
    "verbosity",
    "store",
    "metadata",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "context_management",
    "include_server_side_tool_invocations",
];

/// Parameters handled by name, or accepted and not sent.
const IGNORED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "parallel_tool_calls",
];

/// Gemini's top-level request fields; other provider-specific keys go in `generationConfig`.
const TOP_LEVEL: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "labels",
    "serviceTier",
];

/// Fields of Gemini's `Schema` (the OpenAPI subset function parameters and `responseSchema`
/// accept); everything else is removed.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

#[derive(Debug)]
pub struct Gemini;

/// The route for `gemini/<model>`: base from the call, `GEMINI_API_BASE` or Google's; the key
/// from the call, `GEMINI_API_KEY` or `GOOGLE_API_KEY` (required).
pub fn route(model: &str, ep: &Endpoint) -> Result<Route> {
    let base = base_url("gemini", ep, BASE_ENV, Some(DEFAULT_BASE), None)?;
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(Error::bad_request("model name is empty in 'gemini/'"));
    }
    let mut r = Route::new(&Gemini, "gemini", "Gemini", model, base);
    r.api_key = api_key(ep, KEY_ENV)?;
    if r.api_key.is_none() {
        return Err(missing_key("gemini", model, KEY_ENV));
    }
    Ok(r)
}

/// `{base}/v1beta/models/{model}:{op}`; a base that already ends with an API version
/// (`/v1beta`, `/v1`, `/v1alpha`) is used as it is.
fn url(route: &Route, op: &str) -> String {
    let base = &route.api_base;
    let versioned = ["/v1beta", "/v1", "/v1alpha"]
        .iter()
        .any(|v| base.ends_with(v));
    if versioned {
        format!("{base}/models/{}:{op}", route.model)
    } else {
        format!("{base}/v1beta/models/{}:{op}", route.model)
    }
}

fn headers(route: &Route, extra: &[(String, String)]) -> Result<HeaderMap> {
    let mut h = json_headers();
    if let Some(key) = &route.api_key {
        h.insert("x-goog-api-key", sensitive(key.expose())?);
    }
    apply_extra_headers(&mut h, extra)?;
    Ok(h)
}

/// An Imagen `predict` body: the prompt as the instance; `n` as `sampleCount`, an OpenAI
/// `size` as the nearest `aspectRatio`; Imagen's own parameters (`aspectRatio`,
/// `personGeneration`, ...) pass as given.
pub fn image_body(req: &ImageRequest, extra: Option<&Map<String, Value>>) -> Value {
    let mut params = Map::new();
    params.insert("sampleCount".into(), Value::from(req.count()));
    if let Some(size) = req.size() {
        let ratio = match size {
            "1792x1024" | "1536x1024" => Some("16:9"),
            "1024x1792" | "1024x1536" => Some("9:16"),
            "1024x1024" | "512x512" | "256x256" => Some("1:1"),
            _ => None,
        };
        if let Some(r) = ratio {
            params.insert("aspectRatio".into(), Value::from(r));
        }
    }
    for (k, v) in &req.params {
        if !matches!(
            k.as_str(),
            "n" | "size" | "quality" | "style" | "response_format" | "user"
        ) {
            params.insert(k.clone(), v.clone());
        }
    }
    let mut body = json!({"instances": [{"prompt": req.prompt}], "parameters": params});
    if let (Some(extra), Some(obj)) = (extra, body.as_object_mut()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Imagen's `predictions` (`bytesBase64Encoded`) as OpenAI's `data` (`b64_json`).
pub fn parse_image(route: &Route, body: &[u8]) -> Result<ImageResponse> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_response(route, "image response", &e.to_string(), body))?;
    let preds = v
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_response(route, "image response", "no predictions", body))?;
    let data = preds
        .iter()
        .filter_map(|p| p.get("bytesBase64Encoded").and_then(Value::as_str))
        .map(|b| crate::types::ImageData {
            b64_json: Some(b.to_owned()),
            ..Default::default()
        })
        .collect();
    Ok(ImageResponse {
        created: crate::types::unix_now(),
        data,
        usage: None,
        extra: Map::new(),
    })
}

fn to_bytes(v: &Value) -> Result<bytes::Bytes> {
    serde_json::to_vec(v)
        .map(bytes::Bytes::from)
        .map_err(|e| Error::bad_request(format!("request is not serialisable as JSON: {e}")))
}

impl Provider for Gemini {
    fn unsupported_params(&self) -> &'static [&'static str] {
        UNSUPPORTED
    }

    fn needs_inline_images(&self) -> bool {
        true
    }

    fn chat_request(
        &self,
        route: &Route,
        req: &ChatRequest,
        stream: bool,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        let body = chat_body(route, req, x.body)?;
        let url = if stream {
            url(route, "streamGenerateContent?alt=sse")
        } else {
            url(route, "generateContent")
        };
        Ok(PreparedRequest {
            url,
            headers: headers(route, x.headers)?,
            body: to_bytes(&body)?,
        })
    }

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion> {
        parse_chat(route, body)
    }

    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder> {
        Box::new(GeminiDecoder::new(route.clone()))
    }

    fn parse_error(&self, route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
        parse_error(route, status, headers, body)
    }

    /// Imagen through the Gemini API: `models/{model}:predict`.
    fn image_request(
        &self,
        route: &Route,
        req: &ImageRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        Ok(PreparedRequest {
            url: url(route, "predict"),
            headers: headers(route, x.headers)?,
            body: to_bytes(&image_body(req, x.body))?,
        })
    }

    fn parse_image(&self, route: &Route, body: &[u8]) -> Result<ImageResponse> {
        parse_image(route, body)
    }

    fn embedding_request(
        &self,
        route: &Route,
        req: &EmbeddingRequest,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        let (op, body) = embedding_body(route, req, x.body)?;
        Ok(PreparedRequest {
            url: url(route, op),
            headers: headers(route, x.headers)?,
            body: to_bytes(&body)?,
        })
    }

    fn parse_embedding(
        &self,
        route: &Route,
        req: &EmbeddingRequest,
        body: &[u8],
    ) -> Result<EmbeddingResponse> {
        parse_embedding(route, body, Some(req))
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `snake_case` → `camelCase` (Gemini's JSON names).
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                p => p.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn guess_mime(uri: &str) -> &'static str {
    let path = uri
        .split(['?', '#'])
        .next()
        .unwrap_or(uri)
        .to_ascii_lowercase();
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// A `data:` URL as `inlineData`, any other URI as `fileData`.
fn media_part(url: &str, mime_hint: Option<&str>) -> Value {
    match parse_data_url(url) {
        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
        None => json!({"fileData": {
            "mimeType": mime_hint.unwrap_or_else(|| guess_mime(url)),
            "fileUri": url,
        }}),
    }
}

/// The Gemini parts of an OpenAI message content.
fn content_parts(content: &Value, out: &mut Vec<Value>) -> Result<()> {
    match content {
        Value::Null => {}
        Value::String(s) => {
            if !s.is_empty() {
                out.push(json!({ "text": s }));
            }
        }
        Value::Array(parts) => {
            for part in parts {
                if let Some(url) = image_url(part) {
                    out.push(media_part(url, None));
                    continue;
                }
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.is_empty() {
                            out.push(json!({ "text": t }));
                        }
                    }
                    Some("input_audio") => {
                        let a = part.get("input_audio").unwrap_or(&Value::Null);
                        let data = a.get("data").and_then(Value::as_str).unwrap_or("");
                        let format = a.get("format").and_then(Value::as_str).unwrap_or("wav");
                        out.push(json!({"inlineData": {
                            "mimeType": format!("audio/{format}"),
                            "data": data,
                        }}));
                    }
                    Some("file") => {
                        let f = part.get("file").unwrap_or(&Value::Null);
                        let format = f.get("format").and_then(Value::as_str);
                        let src = f
                            .get("file_data")
                            .or_else(|| f.get("file_id"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                Error::bad_request(
                                    "a 'file' content part needs file_data or file_id",
                                )
                            })?;
                        out.push(media_part(src, format));
                    }
                    other => {
                        return Err(Error::bad_request(format!(
                            "gemini: unsupported content part type {}",
                            other.map_or_else(|| "(none)".to_owned(), |t| format!("'{t}'"))
                        )))
                    }
                }
            }
        }
        other => out.push(json!({ "text": other.to_string() })),
    }
    Ok(())
}

fn push_content(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(existing)) = last.get_mut("parts") {
                existing.extend(parts);
                return;
            }
        }
    }
    contents.push(json!({ "role": role, "parts": parts }));
}

/// `contents` and `systemInstruction` of the messages.
fn translate_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut contents: Vec<Value> = Vec::with_capacity(messages.len());
    let mut system: Vec<Value> = Vec::new();
    let mut tool_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let t = text_of(content);
                if !t.is_empty() {
                    system.push(json!({ "text": t }));
                }
            }
            "user" => {
                let mut parts = Vec::new();
                content_parts(content, &mut parts)?;
                push_content(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                content_parts(content, &mut parts)?;
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for call in calls {
                        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
                        let f = call.get("function").unwrap_or(&Value::Null);
                        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                        let args = match f.get("arguments") {
                            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                                Error::bad_request(format!(
                                    "messages[{i}]: tool call '{name}' has arguments that are \
                                     not JSON: {e}"
                                ))
                            })?,
                            Some(v @ Value::Object(_)) => v.clone(),
                            _ => json!({}),
                        };
                        tool_names.insert(id.to_owned(), name.to_owned());
                        let mut part = json!({"functionCall": {"name": name, "args": args}});
                        if let Some((_, sig)) = id.split_once(THOUGHT_SEPARATOR) {
                            part["thoughtSignature"] = Value::String(sig.to_owned());
                        }
                        parts.push(part);
                    }
                }
                push_content(&mut contents, "model", parts);
            }
            "tool" | "function" => {
                let by_id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .and_then(|id| tool_names.get(id).cloned());
                let name = by_id
                    .or_else(|| m.get("name").and_then(Value::as_str).map(str::to_owned))
                    .ok_or_else(|| {
                        Error::bad_request(format!(
                            "messages[{i}]: tool message whose tool_call_id matches no earlier \
                             assistant tool call (and no 'name')"
                        ))
                    })?;
                let text = text_of(content);
                let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let part = json!({"functionResponse": {
                    "name": name,
                    "response": { "content": value },
                }});
                push_content(&mut contents, "user", vec![part]);
            }
            other => {
                return Err(Error::bad_request(format!(
                    "messages[{i}]: role '{other}' is not supported by gemini"
                )))
            }
        }
    }
    if contents.is_empty() {
        // Only system text: Gemini needs at least one turn, so the instructions become it.
        if system.is_empty() {
            return Err(Error::bad_request(
                "gemini: the messages have no content to send",
            ));
        }
        contents.push(json!({"role": "user", "parts": std::mem::take(&mut system)}));
    }
    Ok((contents, system))
}

/// A JSON schema reduced to Gemini's `Schema`: `$ref`s inlined, `type: [T, "null"]` →
/// `nullable`, `const` → `enum`, unknown keywords removed.
pub fn clean_schema(schema: &Value) -> Value {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object);
    clean_node(schema, defs, 0)
}

fn clean_node(v: &Value, defs: Option<&Map<String, Value>>, depth: u32) -> Value {
    let Value::Object(o) = v else {
        return v.clone();
    };
    if depth > 32 {
        return json!({ "type": "object" });
    }
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .or_else(|| r.strip_prefix("#/definitions/"));
        if let Some(target) = name.and_then(|n| defs.and_then(|d| d.get(n))) {
            let mut resolved = clean_node(target, defs, depth + 1);
            if let (Some(d), Value::Object(ro)) = (o.get("description"), &mut resolved) {
                ro.insert("description".into(), d.clone());
            }
            return resolved;
        }
        return json!({ "type": "object" });
    }
    let mut out = Map::new();
    let mut nullable = false;
    for (k, val) in o {
        match k.as_str() {
            "type" => match val {
                Value::Array(types) => {
                    nullable |= types.iter().any(|t| t == "null");
                    if let Some(t) = types.iter().find(|t| *t != "null") {
                        out.insert("type".into(), t.clone());
                    }
                }
                t => {
                    out.insert("type".into(), t.clone());
                }
            },
            "properties" => {
                if let Value::Object(props) = val {
                    let cleaned: Map<String, Value> = props
                        .iter()
                        .map(|(name, p)| (name.clone(), clean_node(p, defs, depth + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(cleaned));
                }
            }
            "items" => {
                out.insert("items".into(), clean_node(val, defs, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(alts) = val {
                    let mut kept: Vec<Value> = Vec::new();
                    for alt in alts {
                        if alt.get("type").and_then(Value::as_str) == Some("null") {
                            nullable = true;
                        } else {
                            kept.push(clean_node(alt, defs, depth + 1));
                        }
                    }
                    if kept.len() == 1 {
                        if let Some(Value::Object(only)) = kept.pop() {
                            for (k2, v2) in only {
                                out.entry(k2).or_insert(v2);
                            }
                        }
                    } else if !kept.is_empty() {
                        out.insert("anyOf".into(), Value::Array(kept));
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([val]));
            }
            "nullable" => nullable |= val.as_bool().unwrap_or(false),
            k if SCHEMA_KEYS.contains(&k) => {
                out.insert(k.to_owned(), val.clone());
            }
            _ => {}
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    Value::Object(out)
}

fn function_declaration(f: &Value) -> Result<Value> {
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_request("gemini: a tool function has no 'name'"))?;
    let mut decl = Map::new();
    decl.insert("name".into(), Value::String(name.to_owned()));
    if let Some(d) = f.get("description").and_then(Value::as_str) {
        decl.insert("description".into(), Value::String(d.to_owned()));
    }
    if let Some(p) = f.get("parameters") {
        let cleaned = clean_schema(p);
        let has_props = cleaned
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty());
        // An OBJECT without properties is refused; a function without arguments omits it.
        if has_props || cleaned.get("type").and_then(Value::as_str) != Some("object") {
            decl.insert("parameters".into(), cleaned);
        }
    }
    Ok(Value::Object(decl))
}

fn tools(params: &Map<String, Value>) -> Result<Vec<Value>> {
    let mut decls = Vec::new();
    let mut native = Vec::new();
    if let Some(Value::Array(ts)) = params.get("tools") {
        for t in ts {
            match (t.get("type").and_then(Value::as_str), t.get("function")) {
                (Some("function") | None, Some(f)) => decls.push(function_declaration(f)?),
                // Gemini's own tools (`googleSearch`, `codeExecution`, ...) pass as they are.
                (None, None) => native.push(t.clone()),
                (Some(other), _) => {
                    return Err(Error::bad_request(format!(
                        "gemini: tools of type '{other}' are not supported"
                    )))
                }
            }
        }
    }
    if let Some(Value::Array(fs)) = params.get("functions") {
        for f in fs {
            decls.push(function_declaration(f)?);
        }
    }
    if params
        .get("web_search_options")
        .is_some_and(|v| !v.is_null())
    {
        native.push(json!({ "googleSearch": {} }));
    }
    let mut out = Vec::with_capacity(1 + native.len());
    if !decls.is_empty() {
        out.push(json!({ "functionDeclarations": decls }));
    }
    out.extend(native);
    Ok(out)
}

fn tool_config(choice: &Value) -> Result<Value> {
    let cfg = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" | "any" => json!({"mode": "ANY"}),
            other => {
                return Err(Error::bad_request(format!(
                    "gemini: tool_choice '{other}' is not one of auto, none, required"
                )))
            }
        },
        Value::Object(_) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| choice.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_request("gemini: tool_choice names no function"))?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
        _ => {
            return Err(Error::bad_request(
                "gemini: tool_choice must be a string or object",
            ))
        }
    };
    Ok(json!({ "functionCallingConfig": cfg }))
}

/// Whether the model only takes `responseSchema` (Gemini 1.x), not `responseJsonSchema`.
fn legacy_schema_model(model: &str) -> bool {
    model.contains("gemini-1.") || model == "gemini-pro" || model.starts_with("gemini-pro-")
}

fn response_format(route: &Route, rf: &Value, gc: &mut Map<String, Value>) -> Result<()> {
    match rf.get("type").and_then(Value::as_str) {
        Some("text") | None => {}
        Some("json_object") => {
            gc.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            gc.insert("responseMimeType".into(), json!("application/json"));
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .or_else(|| rf.get("response_schema"));
            if let Some(s) = schema {
                if legacy_schema_model(&route.model) {
                    gc.insert("responseSchema".into(), clean_schema(s));
                } else {
                    gc.insert("responseJsonSchema".into(), s.clone());
                }
            }
        }
        Some(other) => {
            return Err(Error::bad_request(format!(
                "gemini: response_format type '{other}' is not supported"
            )))
        }
    }
    Ok(())
}

fn thinking_config(route: &Route, effort: &str) -> Result<Value> {
    let model = route.model.as_str();
    let off = matches!(effort, "none" | "disable");
    if model.contains("gemini-3") && !off {
        let level = match effort {
            "minimal" | "low" => "low",
            _ => "high",
        };
        return Ok(json!({"thinkingLevel": level, "includeThoughts": true}));
    }
    let budget = match effort {
        "minimal" if model.contains("flash-lite") => 512,
        "minimal" => 128,
        "low" => 1024,
        "medium" => 2048,
        "high" => 4096,
        "xhigh" => 8192,
        "none" | "disable" => 0,
        other => {
            return Err(Error::bad_request(format!(
                "gemini: reasoning_effort '{other}' is not one of none, minimal, low, medium, high"
            )))
        }
    };
    Ok(json!({"thinkingBudget": budget, "includeThoughts": budget > 0}))
}

/// The `generateContent` body.
pub fn chat_body(
    route: &Route,
    req: &ChatRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Value> {
    let (contents, system) = translate_messages(&req.messages)?;
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let mut gc = Map::new();
    let p = &req.params;
    if let Some(cap) = req.output_cap() {
        gc.insert("maxOutputTokens".into(), json!(cap));
    }
    let tools = tools(p)?;
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    for (k, v) in p {
        if v.is_null() || IGNORED.contains(&k.as_str()) {
            continue;
        }
        match k.as_str() {
            "max_tokens"
            | "max_completion_tokens"
            | "tools"
            | "functions"
            | "web_search_options" => {}
            "temperature" => {
                gc.insert("temperature".into(), v.clone());
            }
            "top_p" => {
                gc.insert("topP".into(), v.clone());
            }
            "top_k" => {
                gc.insert("topK".into(), v.clone());
            }
            "n" => {
                gc.insert("candidateCount".into(), v.clone());
            }
            "stop" => {
                let stops = match v {
                    Value::String(s) => json!([s]),
                    v => v.clone(),
                };
                gc.insert("stopSequences".into(), stops);
            }
            "presence_penalty" => {
                gc.insert("presencePenalty".into(), v.clone());
            }
            "frequency_penalty" => {
                gc.insert("frequencyPenalty".into(), v.clone());
            }
            "seed" => {
                gc.insert("seed".into(), v.clone());
            }
            "logprobs" => {
                gc.insert(
                    "responseLogprobs".into(),
                    json!(v.as_bool().unwrap_or(false)),
                );
            }
            "top_logprobs" => {
                gc.insert("logprobs".into(), v.clone());
                gc.insert("responseLogprobs".into(), json!(true));
            }
            "response_format" => response_format(route, v, &mut gc)?,
            "tool_choice" => {
                body.insert("toolConfig".into(), tool_config(v)?);
            }
            "modalities" => {
                if let Value::Array(ms) = v {
                    let up: Vec<Value> = ms
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|m| Value::String(m.to_ascii_uppercase()))
                        .collect();
                    gc.insert("responseModalities".into(), Value::Array(up));
                }
            }
            "reasoning_effort" => {
                let effort = v.as_str().ok_or_else(|| {
                    Error::bad_request("gemini: reasoning_effort must be a string")
                })?;
                gc.insert("thinkingConfig".into(), thinking_config(route, effort)?);
            }
            "thinking" => {
                let enabled = v.get("type").and_then(Value::as_str) != Some("disabled");
                let budget = if enabled {
                    v.get("budget_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(1024)
                } else {
                    0
                };
                gc.insert(
                    "thinkingConfig".into(),
                    json!({"thinkingBudget": budget, "includeThoughts": enabled}),
                );
            }
            "service_tier" => {
                let tier = v.as_str().unwrap_or("").to_ascii_lowercase();
                let tier = match tier.as_str() {
                    "default" => "standard".to_owned(),
                    "auto" => "priority".to_owned(),
                    _ => tier,
                };
                body.insert("serviceTier".into(), Value::String(tier));
            }
            other => {
                // Provider-specific: Gemini's own names, snake_case or camelCase.
                let name = camel(other);
                if TOP_LEVEL.contains(&name.as_str()) {
                    body.insert(name, v.clone());
                } else {
                    gc.insert(name, v.clone());
                }
            }
        }
    }
    if !gc.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gc));
    }
    if let Some(extra) = extra_body {
        for (k, v) in extra {
            match (body.get_mut(k), v) {
                (Some(Value::Object(mine)), Value::Object(theirs)) if k == "generationConfig" => {
                    for (k2, v2) in theirs {
                        mine.insert(k2.clone(), v2.clone());
                    }
                }
                _ => {
                    body.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Ok(Value::Object(body))
}

/// The operation and body of an embedding request: one string → `embedContent`, a list →
/// `batchEmbedContents`.
pub fn embedding_body(
    route: &Route,
    req: &EmbeddingRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<(&'static str, Value)> {
    let mut options = Map::new();
    for (k, v) in &req.params {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "dimensions" => {
                options.insert("outputDimensionality".into(), v.clone());
            }
            // Gemini answers floats; `parse_embedding` encodes them when base64 was asked for.
            "encoding_format" => match v.as_str() {
                Some("float" | "base64") => {}
                other => {
                    return Err(Error::new(
                        ErrorKind::UnsupportedParams,
                        format!(
                            "gemini does not support encoding_format {:?}; use 'float' or 'base64'",
                            other.unwrap_or("")
                        ),
                    ))
                }
            },
            "user" | "model" | "input" => {}
            other => {
                options.insert(camel(other), v.clone());
            }
        }
    }
    let model = format!("models/{}", route.model);
    let one = |text: &str| {
        let mut r = options.clone();
        r.insert("model".into(), Value::String(model.clone()));
        r.insert("content".into(), json!({"parts": [{"text": text}]}));
        r
    };
    let (op, mut body) = match &req.input {
        Value::String(s) => ("embedContent", one(s)),
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => {
            let requests: Vec<Value> = items
                .iter()
                .map(|t| Value::Object(one(t.as_str().unwrap_or(""))))
                .collect();
            let mut b = Map::new();
            b.insert("requests".into(), Value::Array(requests));
            ("batchEmbedContents", b)
        }
        _ => {
            return Err(Error::bad_request(
                "gemini: embedding input must be a string or a non-empty list of strings \
                 (token arrays are not supported)",
            ))
        }
    };
    if let Some(extra) = extra_body {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    Ok((op, Value::Object(body)))
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

fn invalid_response(route: &Route, what: &str, why: &str, body: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidResponse,
        format!(
            "{}Exception - the upstream answered 200 with an invalid {what}: {why}; body starts: {}",
            route.display,
            excerpt(body)
        ),
    )
}

fn random_hex() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// OpenAI finish reason of a Gemini `finishReason`.
pub fn finish_reason(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn is_blocking(reason: &str) -> bool {
    finish_reason(reason, false) == "content_filter"
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// OpenAI usage of a `usageMetadata`.
pub fn usage(meta: &Value) -> Usage {
    let prompt = u(meta, "promptTokenCount") + u(meta, "toolUsePromptTokenCount");
    let thoughts = u(meta, "thoughtsTokenCount");
    let completion = u(meta, "candidatesTokenCount") + thoughts;
    let total = match u(meta, "totalTokenCount") {
        0 => prompt + completion,
        t => t,
    };
    let mut extra = Map::new();
    extra.insert(
        "prompt_tokens_details".into(),
        json!({ "cached_tokens": u(meta, "cachedContentTokenCount") }),
    );
    extra.insert(
        "completion_tokens_details".into(),
        json!({ "reasoning_tokens": thoughts }),
    );
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
        extra,
    }
}

/// OpenAI `logprobs` of a candidate's `logprobsResult`.
fn logprobs(result: &Value) -> Option<Value> {
    let chosen = result.get("chosenCandidates")?.as_array()?;
    let top = result.get("topCandidates").and_then(Value::as_array);
    let entry = |c: &Value| {
        json!({
            "token": c.get("token").and_then(Value::as_str).unwrap_or(""),
            "logprob": c.get("logProbability").and_then(Value::as_f64).unwrap_or(0.0),
            "bytes": null,
        })
    };
    let content: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = entry(c);
            let alts: Vec<Value> = top
                .and_then(|t| t.get(i))
                .and_then(|t| t.get("candidates"))
                .and_then(Value::as_array)
                .map(|cs| cs.iter().map(entry).collect())
                .unwrap_or_default();
            e["top_logprobs"] = Value::Array(alts);
            e
        })
        .collect();
    Some(json!({ "content": content }))
}

/// What one candidate (or one streamed fragment of it) says.
#[derive(Default)]
struct Parts {
    text: Option<String>,
    reasoning: Option<String>,
    calls: Vec<(String, String, String)>,
}

fn read_parts(candidate: &Value) -> Parts {
    let mut out = Parts::default();
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    for p in parts.into_iter().flatten() {
        if let Some(fc) = p.get("functionCall") {
            let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
            let args = fc.get("args").cloned().unwrap_or_else(|| json!({}));
            let mut id = format!("call_{}", random_hex());
            if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                id.push_str(THOUGHT_SEPARATOR);
                id.push_str(sig);
            }
            out.calls.push((id, name.to_owned(), args.to_string()));
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            let slot = if p.get("thought").and_then(Value::as_bool) == Some(true) {
                &mut out.reasoning
            } else {
                &mut out.text
            };
            slot.get_or_insert_with(String::new).push_str(t);
        }
    }
    out
}

fn blocked_error(route: &Route, what: &str, reason: &str) -> Error {
    Error::new(
        ErrorKind::ContentPolicyViolation,
        format!(
            "{}Exception - the {what} was blocked by Gemini's safety system (reason: {reason})",
            route.display
        ),
    )
    .with_upstream_code(Some(reason.to_owned()))
}

/// A prompt blocked before any candidate, or every candidate blocked with no content.
fn check_blocked(route: &Route, v: &Value, candidates: &[Value]) -> Result<()> {
    if candidates.is_empty() {
        if let Some(reason) = v
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .and_then(Value::as_str)
        {
            return Err(blocked_error(route, "prompt", reason));
        }
    }
    let all_blocked = !candidates.is_empty()
        && candidates.iter().all(|c| {
            let reason = c.get("finishReason").and_then(Value::as_str).unwrap_or("");
            let empty = c
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            is_blocking(reason) && empty
        });
    if all_blocked {
        let reason = candidates[0]
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("SAFETY");
        return Err(blocked_error(route, "response", reason));
    }
    Ok(())
}

/// A `{"error": ...}` object where an answer was expected (also inside streams).
fn embedded_error(route: &Route, v: &Value) -> Option<Error> {
    let e = v.get("error")?;
    e.is_object().then(|| {
        let code = e.get("code").and_then(Value::as_u64).unwrap_or(500) as u16;
        let mut err = classify(route, code, &HeaderMap::new(), v);
        err.message = err
            .message
            .replacen("Exception - ", "Exception - error in stream: ", 1);
        err
    })
}

pub fn parse_chat(route: &Route, body: &[u8]) -> Result<ChatCompletion> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_response(route, "GenerateContentResponse", &e.to_string(), body))?;
    if let Some(e) = embedded_error(route, &v) {
        return Err(e);
    }
    let empty = Vec::new();
    let candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    check_blocked(route, &v, candidates)?;
    if candidates.is_empty() {
        return Err(invalid_response(
            route,
            "GenerateContentResponse",
            "no candidates",
            body,
        ));
    }
    let choices = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let parts = read_parts(c);
            let reason = c
                .get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("STOP");
            let has_calls = !parts.calls.is_empty();
            let mut extra = Map::new();
            if let Some(r) = parts.reasoning {
                extra.insert("reasoning_content".into(), Value::String(r));
            }
            let tool_calls = has_calls.then(|| {
                parts
                    .calls
                    .into_iter()
                    .map(|(id, name, arguments)| ToolCall {
                        id,
                        kind: "function".into(),
                        function: FunctionCall { name, arguments },
                    })
                    .collect()
            });
            Choice {
                index: c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32,
                message: Message {
                    role: "assistant".into(),
                    content: parts.text,
                    tool_calls,
                    function_call: None,
                    extra,
                },
                finish_reason: Some(finish_reason(reason, has_calls).to_owned()),
                logprobs: c.get("logprobsResult").and_then(logprobs),
                extra: Map::new(),
            }
        })
        .collect();
    Ok(ChatCompletion {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .map_or_else(|| format!("chatcmpl-{}", random_hex()), str::to_owned),
        object: "chat.completion".into(),
        created: unix_now(),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or(&route.model)
            .to_owned(),
        choices,
        usage: v.get("usageMetadata").map(usage),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

fn f32_base64(values: &[Value]) -> Value {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|f| (f.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
        .collect();
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The OpenAI-shaped answer of `embedContent` / `batchEmbedContents`. `inputs` (when known)
/// estimates `prompt_tokens` (4 characters a token), which Gemini does not report.
pub fn parse_embedding(
    route: &Route,
    body: &[u8],
    request: Option<&EmbeddingRequest>,
) -> Result<EmbeddingResponse> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_response(route, "embedding response", &e.to_string(), body))?;
    let vectors: Vec<&Value> = if let Some(one) = v.get("embedding") {
        vec![one]
    } else if let Some(Value::Array(many)) = v.get("embeddings") {
        many.iter().collect()
    } else {
        return Err(invalid_response(
            route,
            "embedding response",
            "neither 'embedding' nor 'embeddings'",
            body,
        ));
    };
    let base64 = request
        .and_then(|r| r.params.get("encoding_format"))
        .and_then(Value::as_str)
        == Some("base64");
    let mut data = Vec::with_capacity(vectors.len());
    for (index, e) in vectors.into_iter().enumerate() {
        let values = e.get("values").and_then(Value::as_array).ok_or_else(|| {
            invalid_response(
                route,
                "embedding response",
                "an embedding has no values",
                body,
            )
        })?;
        let embedding = if base64 {
            f32_base64(values)
        } else {
            Value::Array(values.clone())
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let chars: usize = match request.map(|r| &r.input) {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.chars().count())
            .sum(),
        _ => 0,
    };
    let reported = v
        .get("usageMetadata")
        .map(|m| u(m, "promptTokenCount"))
        .filter(|n| *n > 0);
    let prompt = reported.unwrap_or(chars.div_ceil(4) as u64);
    Ok(EmbeddingResponse {
        object: "list".into(),
        data,
        model: route.model.clone(),
        usage: Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: 0,
            total_tokens: prompt,
            extra: Map::new(),
        }),
        extra: Map::new(),
    })
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// SSE fragments → chunks. Keeps the id, which candidates have started and finished, how
/// many tool calls each has streamed, and the last usage.
pub struct GeminiDecoder {
    sse: SseParser,
    events: Vec<SseEvent>,
    route: Route,
    id: Option<String>,
    model: Option<String>,
    created: i64,
    started: HashSet<u32>,
    finished: HashSet<u32>,
    tool_index: HashMap<u32, u32>,
    usage: Option<Value>,
    done: bool,
    /// Lines that are not SSE fields (a raw JSON error tail some failures leave).
    stray: Vec<u8>,
    line_start: bool,
    in_stray: bool,
}

const STRAY_CAP: usize = 64 * 1024;

impl GeminiDecoder {
    pub fn new(route: Route) -> Self {
        GeminiDecoder {
            sse: SseParser::new(),
            events: Vec::new(),
            route,
            id: None,
            model: None,
            created: unix_now(),
            started: HashSet::new(),
            finished: HashSet::new(),
            tool_index: HashMap::new(),
            usage: None,
            done: false,
            stray: Vec::new(),
            line_start: true,
            in_stray: false,
        }
    }

    /// Keeps bytes of lines that do not start like an SSE field or comment.
    fn scan_stray(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if self.in_stray && self.stray.len() < STRAY_CAP {
                    self.stray.push(b'\n');
                }
                self.line_start = true;
                self.in_stray = false;
                continue;
            }
            if self.line_start {
                self.line_start = false;
                self.in_stray = !matches!(b, b'd' | b'e' | b'i' | b'r' | b':');
            }
            if self.in_stray && self.stray.len() < STRAY_CAP {
                self.stray.push(b);
            }
        }
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone().unwrap_or_default(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self
                .model
                .clone()
                .unwrap_or_else(|| self.route.model.clone()),
            choices,
            usage,
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    fn fragment(&mut self, data: &str, out: &mut Vec<Result<StreamEvent>>) {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(invalid_response(
                    &self.route,
                    "stream fragment",
                    &e.to_string(),
                    data.as_bytes(),
                )));
                return;
            }
        };
        if let Some(e) = embedded_error(&self.route, &v) {
            out.push(Err(e));
            return;
        }
        if self.id.is_none() {
            self.id = Some(
                v.get("responseId")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("chatcmpl-{}", random_hex()), str::to_owned),
            );
        }
        if self.model.is_none() {
            self.model = v
                .get("modelVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        if let Some(m) = v.get("usageMetadata") {
            self.usage = Some(m.clone());
        }
        let empty = Vec::new();
        let candidates = v
            .get("candidates")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        // Blocked before anything was said: the same error as a unary call.
        if self.started.is_empty() {
            if let Err(e) = check_blocked(&self.route, &v, candidates) {
                out.push(Err(e));
                return;
            }
        }
        let mut content = Vec::new();
        let mut finishes = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
            let parts = read_parts(c);
            let first = self.started.insert(index);
            let mut delta = Delta {
                role: first.then(|| "assistant".to_owned()),
                content: parts.text,
                ..Default::default()
            };
            if let Some(r) = parts.reasoning {
                delta
                    .extra
                    .insert("reasoning_content".into(), Value::String(r));
            }
            if !parts.calls.is_empty() {
                let next = self.tool_index.entry(index).or_insert(0);
                let calls = parts
                    .calls
                    .into_iter()
                    .map(|(id, name, arguments)| {
                        let tc = DeltaToolCall {
                            index: *next,
                            id: Some(id),
                            kind: Some("function".into()),
                            function: Some(DeltaFunction {
                                name: Some(name),
                                arguments: Some(arguments),
                            }),
                        };
                        *next += 1;
                        tc
                    })
                    .collect();
                delta.tool_calls = Some(calls);
            }
            let has_delta = delta.role.is_some()
                || delta.content.is_some()
                || delta.tool_calls.is_some()
                || !delta.extra.is_empty();
            let lp = c.get("logprobsResult").and_then(logprobs);
            if has_delta || lp.is_some() {
                content.push(ChunkChoice {
                    index,
                    delta,
                    finish_reason: None,
                    logprobs: lp,
                });
            }
            if let Some(reason) = c.get("finishReason").and_then(Value::as_str) {
                if self.finished.insert(index) {
                    let calls = self.tool_index.get(&index).is_some_and(|n| *n > 0);
                    finishes.push(ChunkChoice {
                        index,
                        delta: Delta::default(),
                        finish_reason: Some(finish_reason(reason, calls).to_owned()),
                        logprobs: None,
                    });
                }
            }
        }
        if !content.is_empty() {
            let chunk = self.chunk(content, None);
            out.push(Ok(StreamEvent::Chunk(Box::new(chunk))));
        }
        if !finishes.is_empty() {
            let chunk = self.chunk(finishes, None);
            out.push(Ok(StreamEvent::Chunk(Box::new(chunk))));
        }
        let all_done = !self.started.is_empty() && self.started.is_subset(&self.finished);
        if all_done && !self.done {
            self.done = true;
            let usage_chunk = self
                .usage
                .as_ref()
                .map(|m| self.chunk(Vec::new(), Some(usage(m))));
            if let Some(c) = usage_chunk {
                out.push(Ok(StreamEvent::Chunk(Box::new(c))));
            }
            out.push(Ok(StreamEvent::Done));
        }
    }

    fn translate(&mut self, out: &mut Vec<Result<StreamEvent>>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let data = ev.data.trim();
            if self.done || data.is_empty() {
                continue;
            }
            self.fragment(data, out);
        }
    }
}

impl StreamDecoder for GeminiDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<StreamEvent>>) {
        self.scan_stray(bytes);
        self.sse.feed(bytes, &mut self.events);
        self.translate(out);
    }

    fn finish(&mut self, out: &mut Vec<Result<StreamEvent>>) -> bool {
        let partial = self.sse.has_partial();
        self.sse.finish(&mut self.events);
        self.translate(out);
        if !self.done && !self.stray.is_empty() {
            let tail: Option<Value> = serde_json::from_slice(&self.stray).ok();
            let tail = match tail {
                Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
                other => other,
            };
            if let Some(e) = tail.and_then(|t| embedded_error(&self.route, &t)) {
                out.push(Err(e));
            }
        }
        partial
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Parses a `google.rpc.Duration` string such as `"36s"` or `"1.5s"`.
pub fn parse_retry_delay(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn detail_type(d: &Value) -> &str {
    d.get("@type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
}

/// Classifies a `google.rpc.Status` body (already parsed).
fn classify(route: &Route, status: u16, headers: &HeaderMap, v: &Value) -> Error {
    let v = match v {
        Value::Array(items) => items.first().unwrap_or(v),
        v => v,
    };
    let e = v.get("error").unwrap_or(v);
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)")
        .to_owned();
    let rpc = e.get("status").and_then(Value::as_str).unwrap_or("");
    let empty = Vec::new();
    let details = e.get("details").and_then(Value::as_array).unwrap_or(&empty);
    let mut reason: Option<String> = None;
    let mut per_day = false;
    let mut hint = retry_hint(headers);
    for d in details {
        match detail_type(d) {
            "ErrorInfo" => {
                reason = d.get("reason").and_then(Value::as_str).map(str::to_owned);
            }
            "QuotaFailure" => {
                let violations = d.get("violations").and_then(Value::as_array);
                per_day |= violations.into_iter().flatten().any(|q| {
                    ["quotaId", "quotaMetric"].iter().any(|k| {
                        q.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.to_ascii_lowercase().contains("perday"))
                    })
                });
            }
            "RetryInfo" => {
                if let Some(d) = d
                    .get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(parse_retry_delay)
                {
                    hint = Some(d);
                }
            }
            _ => {}
        }
    }
    let lower = message.to_ascii_lowercase();
    // Not "billing": per-minute limits also say "check your plan and billing details".
    let credits = lower.contains("prepayment credits") || lower.contains("credits are depleted");
    let context = lower.contains("exceeds the maximum number of tokens")
        || lower.contains("input token count")
        || lower.contains("exceeds the context");
    let key_invalid = reason.as_deref() == Some("API_KEY_INVALID")
        || lower.contains("api key not valid")
        || lower.contains("api key expired");
    let kind = match rpc {
        _ if status == 402 => ErrorKind::QuotaExceeded,
        "RESOURCE_EXHAUSTED" if per_day || credits => ErrorKind::QuotaExceeded,
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" if key_invalid => {
            ErrorKind::Authentication
        }
        "INVALID_ARGUMENT" | "OUT_OF_RANGE" if context => ErrorKind::ContextWindowExceeded,
        "FAILED_PRECONDITION" if credits => ErrorKind::QuotaExceeded,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" | "UNIMPLEMENTED" => {
            ErrorKind::BadRequest
        }
        "UNAUTHENTICATED" => ErrorKind::Authentication,
        "PERMISSION_DENIED" => ErrorKind::PermissionDenied,
        "NOT_FOUND" => ErrorKind::NotFound,
        "ALREADY_EXISTS" => ErrorKind::Api,
        "ABORTED" | "UNAVAILABLE" => ErrorKind::ServiceUnavailable,
        "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
        "CANCELLED" => ErrorKind::Connection,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => ErrorKind::Internal,
        _ => match ErrorKind::from_status(status) {
            ErrorKind::BadRequest if key_invalid => ErrorKind::Authentication,
            ErrorKind::BadRequest if context => ErrorKind::ContextWindowExceeded,
            ErrorKind::RateLimited if per_day => ErrorKind::QuotaExceeded,
            k => k,
        },
    };
    let code = reason.or_else(|| (!rpc.is_empty()).then(|| rpc.to_owned()));
    let mut message = format!("{}Exception - {message}", route.display);
    if let Some(key) = &route.api_key {
        if key.expose().len() >= 8 && message.contains(key.expose()) {
            message = message.replace(key.expose(), "***");
        }
    }
    let mut err = Error::new(kind, message)
        .with_status(status)
        .with_upstream_code(code);
    if kind == ErrorKind::RateLimited {
        err = err.with_retry_after(hint);
    } else {
        err = err.with_retry_after(retry_hint(headers));
    }
    err
}

/// Classifies a non-2xx answer: a `google.rpc.Status` body by its status string and details;
/// any other body by the HTTP status, with an excerpt.
pub fn parse_error(route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let status_like = |v: &Value| v.get("error").is_some_and(Value::is_object);
    match parsed {
        Some(v)
            if status_like(&v)
                || matches!(&v, Value::Array(a) if a.first().is_some_and(status_like)) =>
        {
            classify(route, status, headers, &v)
        }
        _ => openai::parse_error(route, status, headers, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Secret;
    use reqwest::header::{HeaderValue, CONTENT_TYPE};

    fn route_for(model: &str) -> Route {
        route(
            model,
            &Endpoint {
                api_key: Some(Secret::new("AIza-test-key-123456")),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn r() -> Route {
        route_for("gemini-2.5-flash")
    }

    fn body_of(req: &ChatRequest) -> Value {
        chat_body(&r(), req, None).unwrap()
    }

    #[test]
    fn urls_and_key_header() {
        let rt = r();
        let req = ChatRequest::new(
            "gemini/gemini-2.5-flash",
            vec![json!({"role":"user","content":"hi"})],
        );
        let p = Gemini
            .chat_request(&rt, &req, false, &Extras::default())
            .unwrap();
        assert_eq!(
            p.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        let h = p.headers.get("x-goog-api-key").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h, "AIza-test-key-123456");
        assert!(!p.url.contains("key="));
        let p = Gemini
            .chat_request(&rt, &req, true, &Extras::default())
            .unwrap();
        assert!(p
            .url
            .ends_with("/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
        let ep = Endpoint {
            api_base: Some("http://h:1/v1beta/".into()),
            api_key: Some(Secret::new("k")),
            ..Default::default()
        };
        let rt = route("models/gemini-2.0-flash", &ep).unwrap();
        assert_eq!(
            url(&rt, "embedContent"),
            "http://h:1/v1beta/models/gemini-2.0-flash:embedContent"
        );
        assert!(!format!("{rt:?}").contains("AIza"));
    }

    #[test]
    fn missing_key_names_variables() {
        if std::env::var("GEMINI_API_KEY").is_err() && std::env::var("GOOGLE_API_KEY").is_err() {
            let e = route("gemini-2.5-flash", &Endpoint::default()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Authentication);
            assert!(e.message.contains("GEMINI_API_KEY"));
        }
    }

    #[test]
    fn messages_roles_system_tools_merge() {
        let msgs = vec![
            json!({"role":"system","content":"be brief"}),
            json!({"role":"developer","content":[{"type":"text","text":"and kind"}]}),
            json!({"role":"user","content":"weather?"}),
            json!({"role":"user","content":[{"type":"text","text":"in Paris"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}}]}),
            json!({"role":"assistant","content":null,"tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2__thought__c2lnbg==","type":"function","function":{"name":"get_time","arguments":""}}]}),
            json!({"role":"tool","tool_call_id":"call_1","content":"{\"temp\":21}"}),
            json!({"role":"tool","tool_call_id":"call_2__thought__c2lnbg==","content":"noon"}),
            json!({"role":"assistant","content":"It is 21C."}),
        ];
        let mut req = ChatRequest::new("gemini/x", msgs);
        req.params.insert("temperature".into(), json!(0.2));
        req.params.insert("top_p".into(), json!(0.9));
        req.params.insert("top_k".into(), json!(40));
        req.params.insert("max_tokens".into(), json!(100));
        req.params.insert("stop".into(), json!("END"));
        req.params.insert("n".into(), json!(2));
        req.params.insert("presence_penalty".into(), json!(0.1));
        req.params.insert("frequency_penalty".into(), json!(0.3));
        req.params.insert("seed".into(), json!(7));
        req.params.insert("logprobs".into(), json!(true));
        req.params.insert("top_logprobs".into(), json!(3));
        req.params.insert("user".into(), json!("u1"));
        req.params.insert("parallel_tool_calls".into(), json!(true));
        req.params.insert(
            "safety_settings".into(),
            json!([{"category":"HARM_CATEGORY_HATE_SPEECH","threshold":"BLOCK_NONE"}]),
        );
        req.params
            .insert("response_mime_type".into(), json!("text/plain"));
        let b = body_of(&req);
        assert_eq!(
            b["systemInstruction"]["parts"],
            json!([{"text":"be brief"},{"text":"and kind"}])
        );
        let c = b["contents"].as_array().unwrap();
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[0]["role"], "user");
        assert_eq!(c[0]["parts"].as_array().unwrap().len(), 3);
        assert_eq!(
            c[0]["parts"][2]["inlineData"],
            json!({"mimeType":"image/png","data":"iVBOR"})
        );
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"][0]["functionCall"],
            json!({"name":"get_weather","args":{"city":"Paris"}})
        );
        assert_eq!(
            c[1]["parts"][1]["functionCall"],
            json!({"name":"get_time","args":{}})
        );
        assert_eq!(c[1]["parts"][1]["thoughtSignature"], "c2lnbg==");
        assert_eq!(c[2]["role"], "user");
        assert_eq!(
            c[2]["parts"][0]["functionResponse"],
            json!({"name":"get_weather","response":{"content":{"temp":21}}})
        );
        assert_eq!(
            c[2]["parts"][1]["functionResponse"],
            json!({"name":"get_time","response":{"content":"noon"}})
        );
        assert_eq!(
            c[3],
            json!({"role":"model","parts":[{"text":"It is 21C."}]})
        );
        let gc = &b["generationConfig"];
        assert_eq!(gc["temperature"], 0.2);
        assert_eq!(gc["topP"], 0.9);
        assert_eq!(gc["topK"], 40);
        assert_eq!(gc["maxOutputTokens"], 100);
        assert_eq!(gc["stopSequences"], json!(["END"]));
        assert_eq!(gc["candidateCount"], 2);
        assert_eq!(gc["presencePenalty"], 0.1);
        assert_eq!(gc["frequencyPenalty"], 0.3);
        assert_eq!(gc["seed"], 7);
        assert_eq!(gc["responseLogprobs"], true);
        assert_eq!(gc["logprobs"], 3);
        assert_eq!(gc["responseMimeType"], "text/plain");
        assert!(b["safetySettings"].is_array());
        for k in [
            "user",
            "parallel_tool_calls",
            "parallelToolCalls",
            "max_tokens",
            "temperature",
        ] {
            assert!(b.get(k).is_none(), "{k} leaked to the top level");
        }
    }

    #[test]
    fn unknown_tool_call_id_is_a_bad_request() {
        let req = ChatRequest::new(
            "gemini/x",
            vec![
                json!({"role":"user","content":"x"}),
                json!({"role":"tool","tool_call_id":"nope","content":"1"}),
            ],
        );
        assert_eq!(
            chat_body(&r(), &req, None).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let req = ChatRequest::new("gemini/x", vec![json!({"role":"system","content":"only"})]);
        let b = chat_body(&r(), &req, None).unwrap();
        assert_eq!(b["contents"][0]["parts"][0]["text"], "only");
        assert!(b.get("systemInstruction").is_none());
    }

    #[test]
    fn tools_choice_and_schemas() {
        let mut req = ChatRequest::new("gemini/x", vec![json!({"role":"user","content":"x"})]);
        req.params.insert("tools".into(), json!([
            {"type":"function","function":{"name":"get_weather","description":"Weather",
             "parameters":{"type":"object","additionalProperties":false,"$schema":"x",
                "properties":{"city":{"type":["string","null"]},"unit":{"$ref":"#/$defs/Unit"},
                    "when":{"anyOf":[{"type":"string"},{"type":"null"}]}},
                "required":["city"],"$defs":{"Unit":{"type":"string","enum":["c","f"]}}}}},
            {"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}}}}
        ]));
        req.params.insert(
            "tool_choice".into(),
            json!({"type":"function","function":{"name":"get_weather"}}),
        );
        let b = body_of(&req);
        let decls = &b["tools"][0]["functionDeclarations"];
        let p = &decls[0]["parameters"];
        assert_eq!(p["type"], "object");
        assert!(
            p.get("additionalProperties").is_none()
                && p.get("$schema").is_none()
                && p.get("$defs").is_none()
        );
        assert_eq!(
            p["properties"]["city"],
            json!({"type":"string","nullable":true})
        );
        assert_eq!(
            p["properties"]["unit"],
            json!({"type":"string","enum":["c","f"]})
        );
        assert_eq!(
            p["properties"]["when"],
            json!({"type":"string","nullable":true})
        );
        assert!(decls[1].get("parameters").is_none());
        assert_eq!(
            b["toolConfig"],
            json!({"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_weather"]}})
        );
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            req.params.insert("tool_choice".into(), json!(choice));
            assert_eq!(
                body_of(&req)["toolConfig"]["functionCallingConfig"]["mode"],
                mode
            );
        }
    }

    #[test]
    fn response_formats_and_thinking() {
        let mut req = ChatRequest::new("gemini/x", vec![json!({"role":"user","content":"x"})]);
        req.params
            .insert("response_format".into(), json!({"type":"json_object"}));
        assert_eq!(
            body_of(&req)["generationConfig"]["responseMimeType"],
            "application/json"
        );
        let schema = json!({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":false});
        req.params.insert(
            "response_format".into(),
            json!({"type":"json_schema","json_schema":{"name":"s","schema":schema,"strict":true}}),
        );
        let gc = body_of(&req)["generationConfig"].clone();
        assert_eq!(gc["responseJsonSchema"], schema);
        let old = chat_body(&route_for("gemini-1.5-pro"), &req, None).unwrap();
        assert_eq!(
            old["generationConfig"]["responseSchema"],
            json!({"type":"object","properties":{"a":{"type":"integer"}}})
        );
        req.params.insert("reasoning_effort".into(), json!("low"));
        assert_eq!(
            body_of(&req)["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget":1024,"includeThoughts":true})
        );
        let mut extra = Map::new();
        extra.insert("generationConfig".into(), json!({"temperature": 1.5}));
        extra.insert("cachedContent".into(), json!("cachedContents/abc"));
        let b = chat_body(&r(), &req, Some(&extra)).unwrap();
        assert_eq!(b["generationConfig"]["temperature"], 1.5);
        assert!(b["generationConfig"]["thinkingConfig"].is_object());
        assert_eq!(b["cachedContent"], "cachedContents/abc");
    }

    const UNARY: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Let me think.","thought":true},{"text":"Hello "},{"text":"world"}],"role":"model"},"finishReason":"STOP","index":0}],
        "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"totalTokenCount":22,"cachedContentTokenCount":4,"thoughtsTokenCount":7},
        "modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#;

    #[test]
    fn unary_answer() {
        let c = parse_chat(&r(), UNARY.as_bytes()).unwrap();
        assert_eq!(c.id, "resp-1");
        assert_eq!(c.model, "gemini-2.5-flash");
        let ch = &c.choices[0];
        assert_eq!(ch.message.content.as_deref(), Some("Hello world"));
        assert_eq!(ch.message.extra["reasoning_content"], "Let me think.");
        assert_eq!(ch.finish_reason.as_deref(), Some("stop"));
        let u = c.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 12, 22)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(u.extra["completion_tokens_details"]["reasoning_tokens"], 7);
    }

    #[test]
    fn tool_calls_and_finish_reasons() {
        let body = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"U0lH"},{"functionCall":{"name":"get_time","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}]}"#;
        let c = parse_chat(&r(), body.as_bytes()).unwrap();
        let ch = &c.choices[0];
        assert_eq!(ch.finish_reason.as_deref(), Some("tool_calls"));
        assert!(ch.message.content.is_none());
        let calls = ch.message.tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[0].id.starts_with("call_") && calls[0].id.ends_with("__thought__U0lH"));
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(calls[0].function.name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
        assert_eq!(args, json!({"city":"Paris"}));
        assert!(c.id.starts_with("chatcmpl-"));
        for (reason, want) in [
            ("MAX_TOKENS", "length"),
            ("RECITATION", "content_filter"),
            ("SPII", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("OTHER", "stop"),
            ("STOP", "stop"),
        ] {
            assert_eq!(finish_reason(reason, false), want);
        }
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"partial"}],"role":"model"},"finishReason":"SAFETY"}]}"#;
        let c = parse_chat(&r(), body.as_bytes()).unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    #[test]
    fn safety_blocks_are_content_policy_errors() {
        let body = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":3}}"#;
        let e = parse_chat(&r(), body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContentPolicyViolation);
        assert!(e.message.contains("SAFETY"), "{}", e.message);
        let body = br#"{"candidates":[{"finishReason":"PROHIBITED_CONTENT","index":0}]}"#;
        let e = parse_chat(&r(), body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContentPolicyViolation);
        assert!(e.message.contains("PROHIBITED_CONTENT"));
        assert!(!e.retryable());
        assert_eq!(
            parse_chat(&r(), b"{\"candidates\":[").unwrap_err().kind,
            ErrorKind::InvalidResponse
        );
    }

    #[test]
    fn logprobs_are_openai_shaped() {
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP",
            "logprobsResult":{"topCandidates":[{"candidates":[{"token":"Hi","logProbability":-0.1},{"token":"Hey","logProbability":-2.5}]}],
            "chosenCandidates":[{"token":"Hi","logProbability":-0.1}]}}]}"#;
        let c = parse_chat(&r(), body.as_bytes()).unwrap();
        let lp = c.choices[0].logprobs.as_ref().unwrap();
        assert_eq!(lp["content"][0]["token"], "Hi");
        assert_eq!(lp["content"][0]["top_logprobs"][1]["token"], "Hey");
    }

    fn err(status: u16, body: &str) -> Error {
        parse_error(&r(), status, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn error_statuses() {
        let cases: &[(u16, &str, &str, ErrorKind)] = &[
            (400, "INVALID_ARGUMENT", "Invalid value at 'contents'", ErrorKind::BadRequest),
            (400, "FAILED_PRECONDITION", "User location is not supported for the API use.", ErrorKind::BadRequest),
            (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", ErrorKind::ContextWindowExceeded),
            (401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", ErrorKind::Authentication),
            (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers", ErrorKind::PermissionDenied),
            (404, "NOT_FOUND", "models/nope is not found for API version v1beta", ErrorKind::NotFound),
            (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted", ErrorKind::RateLimited),
            (500, "INTERNAL", "An internal error has occurred.", ErrorKind::Internal),
            (503, "UNAVAILABLE", "The model is overloaded.", ErrorKind::ServiceUnavailable),
            (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.", ErrorKind::Timeout),
            (402, "FAILED_PRECONDITION", "Your prepayment credits are depleted.", ErrorKind::QuotaExceeded),
        ];
        for (status, rpc, msg, kind) in cases {
            let body = json!({"error":{"code":status,"message":msg,"status":rpc}}).to_string();
            let e = err(*status, &body);
            assert_eq!(e.kind, *kind, "{rpc} {msg}");
            assert_eq!(e.status, Some(*status));
            assert_eq!(e.upstream_code.as_deref(), Some(*rpc));
            assert!(e.message.starts_with("GeminiException - "), "{}", e.message);
            assert_eq!(e.retryable(), kind.retryable());
        }
    }

    #[test]
    fn quota_and_retry_info() {
        let per_min = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#;
        let e = err(429, per_min);
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
        let per_day = per_min.replace("PerMinute", "PerDay");
        let e = err(429, &per_day);
        assert_eq!(e.kind, ErrorKind::QuotaExceeded);
        assert!(!e.retryable());
        assert_eq!(parse_retry_delay("36s"), Some(Duration::from_secs(36)));
        assert_eq!(
            parse_retry_delay("0.250s"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_delay("36"), None);
        // A retry-after header is used when there is no RetryInfo.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        let body = r#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#;
        let e = parse_error(&r(), 429, &h, body.as_bytes());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn api_key_invalid_and_echo_masked() {
        let body = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key. AIza-test-key-123456","status":"INVALID_ARGUMENT","details":[
            {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let e = err(400, body);
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert_eq!(e.upstream_code.as_deref(), Some("API_KEY_INVALID"));
        assert!(!e.message.contains("AIza-test-key-123456"));
        // The older array envelope.
        let e = err(
            503,
            r#"[{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}]"#,
        );
        assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
    }

    #[test]
    fn non_json_errors() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let e = parse_error(
            &r(),
            502,
            &h,
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        );
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
        let e = parse_error(&r(), 503, &HeaderMap::new(), b"");
        assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
        let e = parse_error(&r(), 429, &HeaderMap::new(), br#"{"message":"x"}"#);
        assert_eq!(e.kind, ErrorKind::RateLimited);
    }

    fn frag(text: &str, extra: &str) -> String {
        format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":{}}}],\"role\":\"model\"}},\"index\":0{extra}}}],\"usageMetadata\":{{\"promptTokenCount\":4,\"totalTokenCount\":4}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r-9\"}}\r\n\r\n",
            serde_json::to_string(text).unwrap()
        )
    }

    fn recorded() -> String {
        let mut s = frag("Héllo ", "");
        s.push_str(&frag("wörld ✓ ", ""));
        s.push_str(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"done\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":3,\"totalTokenCount\":7,\"cachedContentTokenCount\":2},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r-9\"}\r\n\r\n",
        );
        s
    }

    /// (text, finish reasons, usage, saw done, errors, partial)
    fn run(parts: &[&[u8]]) -> (String, Vec<String>, Option<Usage>, bool, Vec<Error>, bool) {
        let mut d = GeminiDecoder::new(r());
        let mut out = Vec::new();
        for p in parts {
            d.feed(p, &mut out);
        }
        let partial = d.finish(&mut out);
        let (mut text, mut fins, mut usage, mut done, mut errs) =
            (String::new(), vec![], None, false, vec![]);
        for ev in out {
            match ev {
                Ok(StreamEvent::Chunk(c)) => {
                    assert_eq!(c.id, "r-9");
                    for ch in &c.choices {
                        text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                        if let Some(f) = &ch.finish_reason {
                            fins.push(f.clone());
                        }
                    }
                    if c.usage.is_some() {
                        assert!(c.choices.is_empty());
                        usage = c.usage;
                    }
                }
                Ok(StreamEvent::Done) => done = true,
                Err(e) => errs.push(e),
            }
        }
        (text, fins, usage, done, errs, partial)
    }

    #[test]
    fn stream_every_split_point() {
        let rec = recorded();
        let bytes = rec.as_bytes();
        let whole = run(&[bytes]);
        assert_eq!(whole.0, "Héllo wörld ✓ done");
        assert_eq!(whole.1, vec!["stop"]);
        let u = whole.2.clone().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (4, 3, 7)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 2);
        assert!(whole.3 && whole.4.is_empty() && !whole.5);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            let got = run(&[a, b]);
            assert_eq!(
                (&got.0, &got.1, &got.2, got.3),
                (&whole.0, &whole.1, &whole.2, whole.3),
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let got = run(&singles);
        assert_eq!((&got.0, got.3), (&whole.0, true), "byte by byte");
    }

    #[test]
    fn stream_cut_before_finish_has_no_done() {
        let rec = recorded();
        let cut = rec
            .find("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"done\"")
            .unwrap();
        let got = run(&[&rec.as_bytes()[..cut]]);
        assert!(!got.3, "no Done before a finishReason");
        assert!(got.1.is_empty());
        let got = run(&[&rec.as_bytes()[..cut + 20]]);
        assert!(!got.3 && got.5, "cut mid-event is partial");
    }

    #[test]
    fn stream_tool_calls_and_errors() {
        let s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"a\",\"args\":{\"x\":1}}}],\"role\":\"model\"},\"index\":0}],\"responseId\":\"r-9\"}\r\n\r\n\
                 data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"b\",\"args\":{}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"responseId\":\"r-9\"}\r\n\r\n";
        let mut d = GeminiDecoder::new(r());
        let mut out = Vec::new();
        d.feed(s.as_bytes(), &mut out);
        let mut idx = vec![];
        let mut fin = None;
        for ev in &out {
            if let Ok(StreamEvent::Chunk(c)) = ev {
                for ch in &c.choices {
                    for tc in ch.delta.tool_calls.iter().flatten() {
                        idx.push((
                            tc.index,
                            tc.function.as_ref().unwrap().name.clone().unwrap(),
                        ));
                        assert!(tc.id.as_ref().unwrap().starts_with("call_"));
                    }
                    fin = fin.or(ch.finish_reason.clone());
                }
            }
        }
        assert_eq!(idx, vec![(0, "a".to_owned()), (1, "b".to_owned())]);
        assert_eq!(fin.as_deref(), Some("tool_calls"));
        assert!(matches!(out.last(), Some(Ok(StreamEvent::Done))));

        // An error event after some text.
        let mut s = frag("Hi ", "");
        s.push_str("data: {\"error\":{\"code\":503,\"message\":\"high demand\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n");
        let got = run(&[s.as_bytes()]);
        assert_eq!(got.4.len(), 1);
        assert_eq!(got.4[0].kind, ErrorKind::ServiceUnavailable);
        assert!(!got.3);
        // A raw JSON tail that is not an SSE event.
        let mut s = frag("Hi ", "");
        s.push_str("{\n  \"error\": {\n    \"code\": 429,\n    \"message\": \"quota\",\n    \"status\": \"RESOURCE_EXHAUSTED\"\n  }\n}\n");
        let got = run(&[s.as_bytes()]);
        assert_eq!(got.4.len(), 1, "{:?}", got.4);
        assert_eq!(got.4[0].kind, ErrorKind::RateLimited);
        // A prompt blocked at the start of a stream.
        let s = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"responseId\":\"r-9\"}\r\n\r\n";
        let got = run(&[s.as_bytes()]);
        assert_eq!(got.4[0].kind, ErrorKind::ContentPolicyViolation);
    }

    #[test]
    fn embeddings() {
        let rt = route_for("text-embedding-004");
        let mut req = EmbeddingRequest {
            model: "gemini/text-embedding-004".into(),
            input: json!("hello world"),
            params: Map::new(),
        };
        req.params.insert("dimensions".into(), json!(4));
        req.params
            .insert("task_type".into(), json!("RETRIEVAL_QUERY"));
        let (op, b) = embedding_body(&rt, &req, None).unwrap();
        assert_eq!(op, "embedContent");
        assert_eq!(b["content"], json!({"parts":[{"text":"hello world"}]}));
        assert_eq!(b["outputDimensionality"], 4);
        assert_eq!(b["taskType"], "RETRIEVAL_QUERY");
        req.input = json!(["a b", "c"]);
        let (op, b) = embedding_body(&rt, &req, None).unwrap();
        assert_eq!(op, "batchEmbedContents");
        assert_eq!(b["requests"][1]["model"], "models/text-embedding-004");
        assert_eq!(b["requests"][1]["content"]["parts"][0]["text"], "c");
        req.input = json!([1, 2, 3]);
        assert_eq!(
            embedding_body(&rt, &req, None).unwrap_err().kind,
            ErrorKind::BadRequest
        );

        req.input = json!(["abcdefgh", "c"]);
        let body = br#"{"embeddings":[{"values":[0.5,-1.0]},{"values":[0.25,0.0]}]}"#;
        let e = parse_embedding(&rt, body, Some(&req)).unwrap();
        assert_eq!(e.data.len(), 2);
        assert_eq!(e.data[1]["index"], 1);
        assert_eq!(e.data[0]["embedding"], json!([0.5, -1.0]));
        assert_eq!(e.usage.as_ref().unwrap().prompt_tokens, 3);
        req.params.insert("encoding_format".into(), json!("base64"));
        let e = parse_embedding(&rt, br#"{"embedding":{"values":[1.0]}}"#, Some(&req)).unwrap();
        assert_eq!(e.data[0]["embedding"], "AACAPw==");
    }
}
