//! The Anthropic Messages API dialect (`anthropic/<model>`): `POST {api_base}/v1/messages` with
//! `x-api-key` and `anthropic-version`, OpenAI chat requests translated to Messages requests,
//! Messages responses and typed SSE events (`message_start`, `content_block_*`,
//! `message_delta`, `message_stop`, `ping`, `error`) translated back to OpenAI shapes, and
//! Anthropic error bodies (`{"type":"error","error":{"type","message"},"request_id"}`)
//! classified by their `error.type`.
//!
//! Request translation: every `system`/`developer` message goes to the top-level `system`;
//! assistant `tool_calls` become `tool_use` blocks; `tool` messages become `tool_result` blocks
//! of a user message; consecutive messages of one role are merged (Anthropic wants user and
//! assistant turns to alternate); `image_url` parts become `image` blocks (base64 for `data:`
//! URLs, `url` sources otherwise: Anthropic fetches URLs itself). `max_tokens` is required by
//! Anthropic: without `max_tokens`/`max_completion_tokens` we send [`DEFAULT_MAX_TOKENS`].
//! `response_format` (JSON object or JSON schema) is expressed as a forced tool named
//! [`JSON_TOOL`] whose input is returned as the message content.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::openai::{self, apply_extra_headers, excerpt, json_headers, sensitive};
use super::{api_key, base_url, media, missing_key, Endpoint, Extras, PreparedRequest, Provider};
use super::{Route, Secret};
use crate::error::{Error, ErrorKind, Result};
use crate::retry::retry_hint;
use crate::streaming::sse::{SseEvent, SseParser};
use crate::streaming::{StreamDecoder, StreamEvent};
use crate::types::{
    unix_now, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, DeltaFunction,
    DeltaToolCall, FunctionCall, Message, ToolCall, Usage,
};

/// The public endpoint.
pub const DEFAULT_API_BASE: &str = "https://api.anthropic.com";
/// The `anthropic-version` header we speak.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the caller gives no output cap. Anthropic requires one; 4096 is accepted by
/// every Claude model (the smallest current output limit), where LiteLLM uses each model's
/// own maximum.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The forced tool that carries a `response_format` answer.
pub const JSON_TOOL: &str = "json_tool_call";

const KEY_ENV: &[&str] = &["ANTHROPIC_API_KEY"];
const BASE_ENV: &[&str] = &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"];

/// OpenAI parameters Anthropic cannot express (those LiteLLM 1.110's `AnthropicConfig` does not
/// list as supported).
const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "seed",
    "n",
    "functions",
    "function_call",
    "modalities",
    "audio",
    "prediction",
];

/// Parameters this module translates itself; every other key of `params` is passed through.
const OWN_KEYS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "metadata",
];

/// The Anthropic dialect as a [`Provider`].
#[derive(Debug)]
pub struct Anthropic;

/// The route for `anthropic/<model>`: the call's `api_base`, else `ANTHROPIC_API_BASE` /
/// `ANTHROPIC_BASE_URL`, else the public endpoint; the call's key, else `ANTHROPIC_API_KEY`.
pub fn route(model: &str, ep: &Endpoint) -> Result<Route> {
    let base = base_url("anthropic", ep, BASE_ENV, Some(DEFAULT_API_BASE), None)?;
    let mut r = Route::new(&Anthropic, "anthropic", "Anthropic", model, base);
    r.api_key = api_key(ep, KEY_ENV)?;
    if r.api_key.is_none() {
        return Err(missing_key("anthropic", model, KEY_ENV));
    }
    Ok(r)
}

/// `{base}/v1/messages`; a base that already ends in `/v1` or `/messages` is completed, not
/// doubled.
fn messages_url(base: &str) -> String {
    if base.ends_with("/messages") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

fn headers(key: Option<&Secret>, extra: &[(String, String)]) -> Result<HeaderMap> {
    let mut h = json_headers();
    if let Some(key) = key {
        h.insert("x-api-key", sensitive(key.expose())?);
    }
    h.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    apply_extra_headers(&mut h, extra)?;
    Ok(h)
}

impl Provider for Anthropic {
    fn unsupported_params(&self) -> &'static [&'static str] {
        UNSUPPORTED
    }

    fn chat_request(
        &self,
        route: &Route,
        req: &ChatRequest,
        stream: bool,
        x: &Extras<'_>,
    ) -> Result<PreparedRequest> {
        let body = chat_body(route, req, stream, x.body)?;
        Ok(PreparedRequest {
            url: messages_url(&route.api_base),
            headers: headers(route.api_key.as_ref(), x.headers)?,
            body: serde_json::to_vec(&body)
                .map_err(|e| Error::bad_request(format!("request is not serialisable: {e}")))?
                .into(),
        })
    }

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion> {
        parse_chat(route, body)
    }

    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicDecoder::new(route.clone()))
    }

    fn parse_error(&self, route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
        parse_error(route, status, headers, body)
    }
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

fn bad(msg: impl Into<String>) -> Error {
    Error::bad_request(msg.into())
}

/// The Messages request body.
pub fn chat_body(
    route: &Route,
    req: &ChatRequest,
    stream: bool,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>> {
    let p = &req.params;
    let (system, messages) = translate_messages(&req.messages)?;
    let mut body = Map::new();
    body.insert("model".into(), Value::String(route.model.clone()));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(system) = system {
        body.insert("system".into(), system);
    }

    let thinking = match p.get("reasoning_effort").and_then(Value::as_str) {
        Some("none") | None => None,
        Some(effort) => Some(match effort {
            "minimal" | "low" => 1024,
            "medium" => 2048,
            _ => 4096,
        }),
    };
    let cap = p
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| p.get("max_tokens").and_then(Value::as_u64));
    let max_tokens = match (cap, thinking) {
        (Some(c), _) => c,
        (None, Some(budget)) => budget + DEFAULT_MAX_TOKENS,
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(budget) = thinking {
        if !p.contains_key("thinking") {
            body.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
    }

    match p.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }

    let mut metadata = match p.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    if let Some(user) = p.get("user").and_then(Value::as_str) {
        metadata.insert("user_id".into(), Value::String(user.to_owned()));
    }
    if !metadata.is_empty() {
        body.insert("metadata".into(), Value::Object(metadata));
    }

    let mut tools: Vec<Value> = match p.get("tools") {
        Some(Value::Array(ts)) => ts.iter().map(translate_tool).collect::<Result<_>>()?,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(bad("tools must be a list")),
    };
    let mut tool_choice = match p.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(tc) => Some(translate_tool_choice(tc)?),
    };
    if let Some(schema) = json_mode_schema(p.get("response_format"))? {
        tools.push(json!({
            "name": JSON_TOOL,
            "description": "Respond with a JSON object that matches the input schema.",
            "input_schema": schema,
        }));
        tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    }
    if p.get("parallel_tool_calls") == Some(&Value::Bool(false)) && !tools.is_empty() {
        let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(o) = tc.as_object_mut() {
            if o.get("type").and_then(Value::as_str) != Some("none") {
                o.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = tool_choice {
            body.insert("tool_choice".into(), tc);
        }
    }

    for (k, v) in p {
        if OWN_KEYS.contains(&k.as_str()) || extra_body.is_some_and(|e| e.contains_key(k)) {
            continue;
        }
        body.insert(k.clone(), v.clone());
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    if let Some(extra) = extra_body {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    Ok(body)
}

/// The input schema of the forced JSON tool, when `response_format` asks for JSON.
fn json_mode_schema(rf: Option<&Value>) -> Result<Option<Value>> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            json!({"type": "object", "additionalProperties": true}),
        )),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "additionalProperties": true}));
            Ok(Some(schema))
        }
        _ => Err(bad(
            "response_format must have type 'text', 'json_object' or 'json_schema'",
        )),
    }
}

/// An OpenAI function tool as an Anthropic tool; other tools (Anthropic's own server tools,
/// already in Anthropic's shape) are passed as they are.
fn translate_tool(t: &Value) -> Result<Value> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Ok(t.clone());
    }
    let f = t
        .get("function")
        .ok_or_else(|| bad("a function tool has no 'function' object"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a function tool has no name"))?;
    let mut out = Map::new();
    out.insert("name".into(), Value::String(name.to_owned()));
    if let Some(d) = f.get("description").and_then(Value::as_str) {
        out.insert("description".into(), Value::String(d.to_owned()));
    }
    let schema = match f.get("parameters") {
        Some(v) if v.is_object() => v.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    out.insert("input_schema".into(), schema);
    if let Some(cc) = t.get("cache_control").or_else(|| f.get("cache_control")) {
        out.insert("cache_control".into(), cc.clone());
    }
    Ok(Value::Object(out))
}

fn translate_tool_choice(tc: &Value) -> Result<Value> {
    match tc {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" | "any" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            other => Err(bad(format!("unknown tool_choice '{other}'"))),
        },
        Value::Object(o) => {
            if let Some(name) = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Ok(json!({"type": "tool", "name": name}))
            } else if o.contains_key("type") {
                // Already Anthropic's shape ({"type": "any"}, {"type": "tool", "name": ...}).
                Ok(tc.clone())
            } else {
                Err(bad("tool_choice object names no function"))
            }
        }
        _ => Err(bad("tool_choice must be a string or an object")),
    }
}

/// A text block, keeping a part's `cache_control`.
fn text_block(text: &str, part: Option<&Value>) -> Value {
    let mut b = json!({"type": "text", "text": text});
    if let (Some(cc), Some(o)) = (part.and_then(|p| p.get("cache_control")), b.as_object_mut()) {
        o.insert("cache_control".into(), cc.clone());
    }
    b
}

/// An OpenAI content part as an Anthropic block.
fn translate_part(part: &Value) -> Result<Value> {
    if let Some(url) = media::image_url(part) {
        let source = match media::parse_data_url(url) {
            Some((mime, data)) => json!({"type": "base64", "media_type": mime, "data": data}),
            None if url.starts_with("http://") || url.starts_with("https://") => {
                json!({"type": "url", "url": url})
            }
            None => {
                return Err(bad(
                    "image_url must be an http(s) URL or a base64 data: URL",
                ))
            }
        };
        let mut b = json!({"type": "image", "source": source});
        if let (Some(cc), Some(o)) = (part.get("cache_control"), b.as_object_mut()) {
            o.insert("cache_control".into(), cc.clone());
        }
        return Ok(b);
    }
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or("");
            Ok(text_block(text, Some(part)))
        }
        Some("file") => {
            let data = part
                .get("file")
                .and_then(|f| f.get("file_data"))
                .and_then(Value::as_str)
                .and_then(media::parse_data_url);
            match data {
                Some((mime, data)) => Ok(json!({
                    "type": "document",
                    "source": {"type": "base64", "media_type": mime, "data": data},
                })),
                None => Err(bad(
                    "a file part needs file.file_data as a base64 data: URL",
                )),
            }
        }
        // Anthropic-native blocks (document, image with source, tool_result, ...) pass as is.
        Some(_) => Ok(part.clone()),
        None => Err(bad("a content part has no 'type'")),
    }
}

/// A message content (string, list of parts, or null) as blocks; empty texts are dropped.
fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s, None)]),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                !(p.get("type").and_then(Value::as_str) == Some("text")
                    && p.get("text").and_then(Value::as_str) == Some(""))
            })
            .map(translate_part)
            .collect(),
        Some(_) => Err(bad("message content must be a string or a list of parts")),
    }
}

fn tool_use_block(call: &Value) -> Result<Value> {
    let f = call
        .get("function")
        .ok_or_else(|| bad("a tool call has no 'function'"))?;
    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let input = match f.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            bad(format!(
                "the arguments of tool call '{id}' are not valid JSON ({e})"
            ))
        })?,
        Some(v) => v.clone(),
    };
    if !input.is_object() {
        return Err(bad(format!(
            "the arguments of tool call '{id}' must be a JSON object"
        )));
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// `(system, messages)`: system texts lifted out, the rest as alternating Anthropic turns.
fn translate_messages(messages: &[Value]) -> Result<(Option<Value>, Vec<Value>)> {
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content");
        let (arole, mut blocks) = match role {
            "system" | "developer" => {
                for b in content_blocks(content)? {
                    if b.get("type").and_then(Value::as_str) != Some("text") {
                        return Err(bad(format!(
                            "messages[{i}]: system messages may contain only text"
                        )));
                    }
                    system.push(b);
                }
                continue;
            }
            "user" => ("user", content_blocks(content)?),
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(Value::Array(tb)) = m.get("thinking_blocks") {
                    blocks.extend(tb.iter().cloned());
                }
                blocks.extend(content_blocks(content)?);
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for c in calls {
                        blocks.push(tool_use_block(c)?);
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(format!("messages[{i}]: a tool message needs tool_call_id"))
                    })?;
                let result = match content {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(_)) => Value::Array(content_blocks(content)?),
                    _ => Value::String(String::new()),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
                )
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}]: role '{other}' is not supported by Anthropic"
                )))
            }
        };
        if let Some(cc) = m.get("cache_control") {
            if let Some(Value::Object(last)) = blocks.last_mut() {
                last.insert("cache_control".into(), cc.clone());
            }
        }
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, prev)) if *r == arole => prev.extend(blocks),
            _ => turns.push((arole, blocks)),
        }
    }
    let system = match system.len() {
        0 => None,
        1 if system[0].get("cache_control").is_none() => system[0].get("text").cloned(),
        _ => Some(Value::Array(system)),
    };
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Later values (a `message_delta`'s cumulative counts) win over earlier ones.
    fn merge(&mut self, later: &WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// OpenAI usage: prompt tokens include cached reads and cache writes (as LiteLLM counts
    /// them); `prompt_tokens_details.cached_tokens` is the cached read; Anthropic's own cache
    /// fields are kept.
    fn to_usage(self) -> Usage {
        let input = self.input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        let prompt = input + read + created;
        let mut extra = Map::new();
        extra.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": read, "cache_creation_tokens": created}),
        );
        extra.insert("cache_creation_input_tokens".into(), json!(created));
        extra.insert("cache_read_input_tokens".into(), json!(read));
        Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt + output,
            extra,
        }
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn invalid_response(route: &Route, what: &str, e: &dyn std::fmt::Display, body: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidResponse,
        format!(
            "{}Exception - the upstream answered 200 with an invalid {what}: {e}; body starts: {}",
            route.display,
            excerpt(body)
        ),
    )
}

/// A Messages response as a chat completion.
pub fn parse_chat(route: &Route, body: &[u8]) -> Result<ChatCompletion> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| invalid_response(route, "message", &e, body))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_from_body(route, &v, "error in a 200 answer"));
    }
    let msg: WireMessage =
        serde_json::from_value(v).map_err(|e| invalid_response(route, "message", &e, body))?;
    let mut text = String::new();
    let mut has_text = false;
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    let mut calls = Vec::new();
    let mut json_tool = false;
    for block in &msg.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
                thinking_blocks.push(block.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(block.clone()),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                let arguments = serde_json::to_string(&input).unwrap_or_else(|_| "{}".into());
                if name == JSON_TOOL {
                    json_tool = true;
                    has_text = true;
                    text.push_str(&arguments);
                    continue;
                }
                calls.push(ToolCall {
                    id: block
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.to_owned(),
                        arguments,
                    },
                });
            }
            _ => {}
        }
    }
    let mut extra = Map::new();
    if !thinking_blocks.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
        extra.insert("thinking_blocks".into(), Value::Array(thinking_blocks));
    }
    let finish = match msg.stop_reason.as_deref() {
        Some("tool_use") if json_tool && calls.is_empty() => "stop",
        Some(r) => finish_reason(r),
        None => "stop",
    };
    Ok(ChatCompletion {
        id: msg.id,
        object: "chat.completion".into(),
        created: unix_now(),
        model: msg.model,
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: has_text.then_some(text),
                tool_calls: (!calls.is_empty()).then_some(calls),
                function_call: None,
                extra,
            },
            finish_reason: Some(finish.to_owned()),
            logprobs: None,
            extra: Map::new(),
        }],
        usage: Some(msg.usage.to_usage()),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: Value,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    #[serde(other)]
    Unknown,
}

/// What a content block of the stream is, by its Anthropic index.
#[derive(Clone, Copy)]
enum Block {
    Text,
    /// A tool call with its ordinal among the message's tool calls.
    Tool(u32),
    /// The forced `response_format` tool: its input is the content.
    JsonTool,
    Thinking,
    Other,
}

/// SSE framing plus Anthropic's typed events, translated to OpenAI chunks. Keeps the message
/// id, model, usage and the tool-call ordinals across events; `Done` only at `message_stop`.
pub struct AnthropicDecoder {
    sse: SseParser,
    events: Vec<SseEvent>,
    route: Route,
    id: String,
    model: String,
    created: i64,
    usage: WireUsage,
    blocks: HashMap<u32, Block>,
    tools: u32,
    json_tool: bool,
    ended: bool,
}

impl AnthropicDecoder {
    pub fn new(route: Route) -> Self {
        AnthropicDecoder {
            sse: SseParser::new(),
            events: Vec::new(),
            model: route.model.clone(),
            route,
            id: String::new(),
            created: unix_now(),
            usage: WireUsage::default(),
            blocks: HashMap::new(),
            tools: 0,
            json_tool: false,
            ended: false,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
            }],
            usage: None,
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    fn content(&self, text: String) -> StreamEvent {
        StreamEvent::Chunk(Box::new(self.chunk(
            Delta {
                content: Some(text),
                ..Default::default()
            },
            None,
        )))
    }

    fn tool_delta(&self, call: DeltaToolCall) -> StreamEvent {
        StreamEvent::Chunk(Box::new(self.chunk(
            Delta {
                tool_calls: Some(vec![call]),
                ..Default::default()
            },
            None,
        )))
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<Result<StreamEvent>>) {
        let data = ev.data.trim();
        if data.is_empty() {
            return;
        }
        if self.ended {
            // Anything after message_stop is ignored.
            return;
        }
        let parsed: WireEvent = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(invalid_response(
                    &self.route,
                    "stream event",
                    &e,
                    data.as_bytes(),
                )));
                return;
            }
        };
        match parsed {
            WireEvent::MessageStart { message } => {
                self.id = message.id;
                if !message.model.is_empty() {
                    self.model = message.model;
                }
                self.usage.merge(&message.usage);
                let delta = Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                };
                out.push(Ok(StreamEvent::Chunk(Box::new(self.chunk(delta, None)))));
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let kind = content_block.get("type").and_then(Value::as_str);
                let block = match kind {
                    Some("text") => {
                        let t = content_block.get("text").and_then(Value::as_str);
                        if let Some(t) = t.filter(|t| !t.is_empty()) {
                            out.push(Ok(self.content(t.to_owned())));
                        }
                        Block::Text
                    }
                    Some("tool_use")
                        if content_block.get("name").and_then(Value::as_str) == Some(JSON_TOOL) =>
                    {
                        self.json_tool = true;
                        Block::JsonTool
                    }
                    Some("tool_use") => {
                        let ordinal = self.tools;
                        self.tools += 1;
                        let field = |k: &str| {
                            content_block
                                .get(k)
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned()
                        };
                        out.push(Ok(self.tool_delta(DeltaToolCall {
                            index: ordinal,
                            id: Some(field("id")),
                            kind: Some("function".into()),
                            function: Some(DeltaFunction {
                                name: Some(field("name")),
                                arguments: Some(String::new()),
                            }),
                        })));
                        Block::Tool(ordinal)
                    }
                    Some("thinking") => Block::Thinking,
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                let block = self.blocks.get(&index).copied().unwrap_or(Block::Other);
                match (delta, block) {
                    (WireDelta::TextDelta { text }, _) if !text.is_empty() => {
                        out.push(Ok(self.content(text)));
                    }
                    (WireDelta::InputJsonDelta { partial_json }, Block::Tool(ordinal))
                        if !partial_json.is_empty() =>
                    {
                        out.push(Ok(self.tool_delta(DeltaToolCall {
                            index: ordinal,
                            id: None,
                            kind: None,
                            function: Some(DeltaFunction {
                                name: None,
                                arguments: Some(partial_json),
                            }),
                        })));
                    }
                    (WireDelta::InputJsonDelta { partial_json }, Block::JsonTool)
                        if !partial_json.is_empty() =>
                    {
                        out.push(Ok(self.content(partial_json)));
                    }
                    (WireDelta::ThinkingDelta { thinking }, _) if !thinking.is_empty() => {
                        let mut delta = Delta::default();
                        delta
                            .extra
                            .insert("reasoning_content".into(), Value::String(thinking));
                        out.push(Ok(StreamEvent::Chunk(Box::new(self.chunk(delta, None)))));
                    }
                    _ => {}
                }
            }
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.merge(&u);
                }
                if let Some(reason) = delta.stop_reason {
                    let finish = if reason == "tool_use" && self.json_tool && self.tools == 0 {
                        "stop"
                    } else {
                        finish_reason(&reason)
                    };
                    out.push(Ok(StreamEvent::Chunk(Box::new(
                        self.chunk(Delta::default(), Some(finish)),
                    ))));
                }
            }
            WireEvent::MessageStop {} => {
                let mut c = self.chunk(Delta::default(), None);
                c.choices.clear();
                c.usage = Some(self.usage.to_usage());
                out.push(Ok(StreamEvent::Chunk(Box::new(c))));
                out.push(Ok(StreamEvent::Done));
                self.ended = true;
            }
            WireEvent::Error { error } => {
                let body = json!({"type": "error", "error": error});
                out.push(Err(error_from_body(&self.route, &body, "error in stream")));
            }
            WireEvent::ContentBlockStop {} | WireEvent::Ping {} | WireEvent::Unknown => {}
        }
    }

    fn translate(&mut self, out: &mut Vec<Result<StreamEvent>>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.event(ev, out);
        }
        self.events = events;
        self.events.clear();
    }
}

impl StreamDecoder for AnthropicDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<StreamEvent>>) {
        self.sse.feed(bytes, &mut self.events);
        self.translate(out);
    }

    fn finish(&mut self, out: &mut Vec<Result<StreamEvent>>) -> bool {
        let partial = self.sse.has_partial();
        self.sse.finish(&mut self.events);
        self.translate(out);
        partial
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// `(kind, canonical status)` of an Anthropic `error.type`.
fn kind_of_type(etype: &str) -> Option<(ErrorKind, u16)> {
    Some(match etype {
        "invalid_request_error" => (ErrorKind::BadRequest, 400),
        "authentication_error" => (ErrorKind::Authentication, 401),
        "billing_error" => (ErrorKind::QuotaExceeded, 402),
        "permission_error" => (ErrorKind::PermissionDenied, 403),
        "not_found_error" => (ErrorKind::NotFound, 404),
        "request_too_large" => (ErrorKind::BadRequest, 413),
        "rate_limit_error" => (ErrorKind::RateLimited, 429),
        "api_error" => (ErrorKind::Internal, 500),
        "timeout_error" => (ErrorKind::Timeout, 504),
        "overloaded_error" => (ErrorKind::ServiceUnavailable, 529),
        _ => return None,
    })
}

/// A more precise kind stated by the message of an `invalid_request_error`.
fn refine(kind: ErrorKind, message: &str) -> ErrorKind {
    if kind != ErrorKind::BadRequest {
        return kind;
    }
    let m = message.to_ascii_lowercase();
    if m.contains("prompt is too long")
        || m.contains("exceed context limit")
        || m.contains("context window")
        || m.contains("too many total text bytes")
    {
        ErrorKind::ContextWindowExceeded
    } else if m.contains("content filtering")
        || m.contains("content policy")
        || m.contains("usage policy")
        || m.contains("usage policies")
    {
        ErrorKind::ContentPolicyViolation
    } else {
        kind
    }
}

/// `(type, message)` of an Anthropic error body, `{"type":"error","error":{...}}` or a bare
/// `{"error":{"type":...}}`.
fn anthropic_fields(v: &Value) -> Option<(String, String)> {
    let err = v.get("error")?.as_object()?;
    let etype = err.get("type")?.as_str()?.to_owned();
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)")
        .to_owned();
    Some((etype, message))
}

/// An error carried in a body after a 200 (stream `event: error`): classified by its type,
/// with the type's canonical status (529 for `overloaded_error`), so retry and fallback logic
/// keyed on statuses sees what really happened.
fn error_from_body(route: &Route, v: &Value, what: &str) -> Error {
    let (etype, message) = anthropic_fields(v)
        .unwrap_or_else(|| ("api_error".into(), excerpt(v.to_string().as_bytes())));
    let (kind, status) = kind_of_type(&etype).unwrap_or((ErrorKind::Internal, 500));
    Error::new(
        refine(kind, &message),
        format!("{}Exception - {what}: {message}", route.display),
    )
    .with_status(status)
    .with_upstream_code(Some(etype))
}

/// Classifies a non-2xx answer by its `error.type` (falling back to the status), refined by
/// the message (context window, content filtering); the retry hint from `retry-after`, else
/// from `anthropic-ratelimit-*-reset` on a 429. Bodies that are not Anthropic's (an HTML page
/// from Cloudflare, a proxy's JSON) are read by the OpenAI parser: status kind and an excerpt.
pub fn parse_error(route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some((etype, message)) = parsed.as_ref().and_then(anthropic_fields) else {
        let mut e = openai::parse_error(route, status, headers, body);
        if e.retry_after.is_none() && status == 429 {
            e = e.with_retry_after(reset_hint(headers));
        }
        return e;
    };
    let kind = match kind_of_type(&etype) {
        Some((k, _)) => k,
        None => ErrorKind::from_status(status),
    };
    let kind = refine(kind, &message);
    let mut hint = retry_hint(headers);
    if hint.is_none() && kind == ErrorKind::RateLimited {
        hint = reset_hint(headers);
    }
    let mut message = format!("{}Exception - {message}", route.display);
    if let Some(key) = &route.api_key {
        if key.expose().len() >= 8 && message.contains(key.expose()) {
            message = message.replace(key.expose(), "***");
        }
    }
    Error::new(kind, message)
        .with_status(status)
        .with_retry_after(hint)
        .with_upstream_code(Some(etype))
}

/// The wait until the earliest `anthropic-ratelimit-{requests,tokens,input-tokens,
/// output-tokens}-reset` (RFC 3339) that is in the future.
fn reset_hint(headers: &HeaderMap) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .iter()
    .filter_map(|h| headers.get(*h)?.to_str().ok())
    .filter_map(parse_rfc3339)
    .filter_map(|t| t.checked_sub(now).filter(|d| !d.is_zero()))
    .min()
}

/// Seconds since the epoch of an RFC 3339 time (`2025-01-01T12:00:30Z`,
/// `2025-01-01T12:00:30.5+01:00`).
fn parse_rfc3339(s: &str) -> Option<Duration> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let h: i64 = o.get(1..3)?.parse().ok()?;
            let m: i64 = o.get(4..6)?.parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(Duration::from_secs(secs) + Duration::from_secs_f64(frac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        super::route(
            "claude-sonnet-4-5",
            &Endpoint {
                api_key: Some(Secret::new("sk-ant-abcdefghijkl")),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn req(messages: Value, params: Value) -> ChatRequest {
        let mut r = ChatRequest::new(
            "anthropic/claude-sonnet-4-5",
            messages.as_array().unwrap().clone(),
        );
        if let Value::Object(p) = params {
            r.params = p;
        }
        r
    }

    fn body(messages: Value, params: Value) -> Value {
        let p = Anthropic
            .chat_request(&route(), &req(messages, params), false, &Extras::default())
            .unwrap();
        serde_json::from_slice(&p.body).unwrap()
    }

    #[test]
    fn route_url_and_headers() {
        let r = route();
        assert_eq!(r.api_base, DEFAULT_API_BASE);
        assert_eq!((r.provider, r.display), ("anthropic", "Anthropic"));
        let hdrs = [("anthropic-beta".to_string(), "x".to_string())];
        let x = Extras {
            headers: &hdrs,
            body: None,
        };
        let p = Anthropic
            .chat_request(
                &r,
                &req(json!([{"role": "user", "content": "hi"}]), json!({})),
                false,
                &x,
            )
            .unwrap();
        assert_eq!(p.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(p.headers.get("x-api-key").unwrap(), "sk-ant-abcdefghijkl");
        assert!(p.headers.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(p.headers.get("anthropic-version").unwrap(), API_VERSION);
        assert_eq!(p.headers.get("anthropic-beta").unwrap(), "x");
        assert!(!format!("{r:?}").contains("abcdefghijkl"));
        assert_eq!(messages_url("http://h:1"), "http://h:1/v1/messages");
        assert_eq!(messages_url("http://h:1/v1"), "http://h:1/v1/messages");
        assert_eq!(messages_url("http://h/v1/messages"), "http://h/v1/messages");
    }

    #[test]
    fn missing_key_names_the_variable() {
        if std::env::var("ANTHROPIC_API_KEY").is_err() {
            let e = super::route("claude", &Endpoint::default()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Authentication);
            assert!(e.message.contains("ANTHROPIC_API_KEY"));
        }
    }

    #[test]
    fn system_params_and_defaults() {
        let v = body(
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                {"role": "user", "content": "hi"},
            ]),
            json!({"stop": "END", "temperature": 0.2, "top_p": 0.9, "top_k": 5, "user": "u-1",
                   "stream_options": {"include_usage": true}}),
        );
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}])
        );
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(v["stop_sequences"], json!(["END"]));
        assert_eq!(v["temperature"], 0.2);
        assert_eq!(v["top_p"], 0.9);
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["metadata"], json!({"user_id": "u-1"}));
        assert!(v.get("stream_options").is_none() && v.get("stream").is_none());
        assert!(v.get("user").is_none() && v.get("stop").is_none());
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );

        let v = body(
            json!([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]),
            json!({"max_tokens": 10, "max_completion_tokens": 77, "stop": ["a", "b"]}),
        );
        assert_eq!(v["system"], "S");
        assert_eq!(v["max_tokens"], 77);
        assert_eq!(v["stop_sequences"], json!(["a", "b"]));
        let v = body(
            json!([{"role": "user", "content": "hi"}]),
            json!({"max_tokens": 10}),
        );
        assert_eq!(v["max_tokens"], 10);
        assert!(v.get("system").is_none());
    }

    #[test]
    fn reasoning_effort_becomes_thinking() {
        let v = body(
            json!([{"role": "user", "content": "hi"}]),
            json!({"reasoning_effort": "low"}),
        );
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );
        assert_eq!(v["max_tokens"], 1024 + DEFAULT_MAX_TOKENS);
        assert!(v.get("reasoning_effort").is_none());
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather", "parameters": {"type": "object",
            "properties": {"location": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "noargs"}}]);
        let cases = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "get_weather"}}),
                json!({"type": "tool", "name": "get_weather"}),
            ),
        ];
        for (choice, want) in cases {
            let v = body(
                json!([{"role": "user", "content": "hi"}]),
                json!({"tools": tools, "tool_choice": choice}),
            );
            assert_eq!(v["tool_choice"], want);
            assert_eq!(
                v["tools"][0],
                json!({"name": "get_weather", "description": "Weather", "input_schema":
                    {"type": "object", "properties": {"location": {"type": "string"}}}})
            );
            assert_eq!(
                v["tools"][1],
                json!({"name": "noargs", "input_schema": {"type": "object", "properties": {}}})
            );
        }
        let v = body(
            json!([{"role": "user", "content": "hi"}]),
            json!({"tools": tools, "parallel_tool_calls": false}),
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert!(v.get("parallel_tool_calls").is_none());
        let v = body(
            json!([{"role": "user", "content": "hi"}]),
            json!({"tools": tools, "tool_choice": "required", "parallel_tool_calls": false}),
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_history_images_and_merging() {
        let v = body(
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ]},
                {"role": "user", "content": "and then"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"location\": \"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "w", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "20C"}]},
                {"role": "user", "content": "thanks"},
            ]),
            json!({}),
        );
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0]["role"], "user");
        assert_eq!(
            m[0]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "and then"},
            ])
        );
        assert_eq!(
            m[1],
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {}},
            ]})
        );
        assert_eq!(
            m[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "20C"}]},
                {"type": "text", "text": "thanks"},
            ]})
        );
        assert!(!Anthropic.needs_inline_images());
    }

    #[test]
    fn bad_inputs_are_bad_requests() {
        let r = Anthropic.chat_request(
            &route(),
            &req(
                json!([{"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t", "type": "function", "function": {"name": "w", "arguments": "{oops"}}]}]),
                json!({}),
            ),
            false,
            &Extras::default(),
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::BadRequest);
        let r = Anthropic.chat_request(
            &route(),
            &req(json!([{"role": "function", "content": "x"}]), json!({})),
            false,
            &Extras::default(),
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn response_format_is_a_forced_tool() {
        let v = body(
            json!([{"role": "user", "content": "hi"}]),
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
        );
        assert_eq!(v["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));
        assert_eq!(v["tools"][0]["name"], JSON_TOOL);
        assert_eq!(
            v["tools"][0]["input_schema"]["properties"]["a"]["type"],
            "integer"
        );
        assert!(v.get("response_format").is_none());
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"tool_use","id":"toolu_1","name":"json_tool_call","input":{"a":1}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":2}}"#;
        let c = parse_chat(&route(), body).unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some(r#"{"a":1}"#));
        assert!(c.choices[0].message.tool_calls.is_none());
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn extra_body_and_stream_flag() {
        let mut extra = Map::new();
        extra.insert("top_k".into(), json!(3));
        let x = Extras {
            headers: &[],
            body: Some(&extra),
        };
        let p = Anthropic
            .chat_request(
                &route(),
                &req(
                    json!([{"role": "user", "content": "hi"}]),
                    json!({"top_k": 9}),
                ),
                true,
                &x,
            )
            .unwrap();
        let text = String::from_utf8(p.body.to_vec()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["top_k"], 3);
        assert_eq!(v["stream"], true);
        assert_eq!(text.matches("\"top_k\"").count(), 1);
    }

    #[test]
    fn unary_response() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"text","text":"Hello "},{"type":"text","text":"world"},{"type":"tool_use","id":"toolu_9","name":"get_weather","input":{"location":"Paris","unit":"celsius"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":3,"cache_read_input_tokens":20}}"#;
        let c = parse_chat(&route(), body).unwrap();
        assert_eq!(c.id, "msg_01");
        assert_eq!(c.model, "claude-sonnet-4-5-20250929");
        let m = &c.choices[0].message;
        assert_eq!(m.content.as_deref(), Some("Hello world"));
        let calls = m.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].id, "toolu_9");
        assert_eq!(calls[0].function.name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
        assert_eq!(args, json!({"location": "Paris", "unit": "celsius"}));
        assert_eq!(m.extra["reasoning_content"], "hmm");
        assert_eq!(m.extra["thinking_blocks"][0]["signature"], "sig");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let u = c.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (33, 7, 40)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 20);
        assert_eq!(u.extra["cache_read_input_tokens"], 20);
        assert_eq!(u.extra["cache_creation_input_tokens"], 3);

        for (reason, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(reason), want);
        }
        let only_tools = br#"{"id":"msg_2","type":"message","role":"assistant","model":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1}}"#;
        let c = parse_chat(&route(), only_tools).unwrap();
        assert!(c.choices[0].message.content.is_none());
        assert_eq!(
            c.choices[0].message.tool_calls.as_ref().unwrap()[0]
                .function
                .arguments,
            "{}"
        );
        let e = parse_chat(&route(), b"{\"id\": \"msg\", \"content\": [").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
    }

    /// A recorded-style stream: text with multi-byte UTF-8, thinking, two tool calls with
    /// arguments in pieces, pings, cache usage.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_abc\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQ=\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Héllo → \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"世界 😀\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Par\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"tz\\\": \\\"Europe/Oslo\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    /// A compact, comparable rendering of decoder output.
    fn run(pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut d = AnthropicDecoder::new(route());
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut out);
        }
        let partial = d.finish(&mut out);
        let rendered = out
            .into_iter()
            .map(|e| match e {
                Ok(StreamEvent::Done) => "DONE".to_string(),
                Ok(StreamEvent::Chunk(c)) => {
                    let mut c = *c;
                    c.created = 0;
                    serde_json::to_string(&c).unwrap()
                }
                Err(e) => format!("ERR {} {}", e.kind, e.message),
            })
            .collect();
        (rendered, partial)
    }

    #[test]
    fn stream_translation() {
        let mut d = AnthropicDecoder::new(route());
        let mut out = Vec::new();
        d.feed(STREAM.as_bytes(), &mut out);
        assert!(!d.finish(&mut out));
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut args: Vec<String> = vec![String::new(); 2];
        let mut finish = None;
        let mut usage = None;
        let mut done = false;
        for ev in out {
            match ev.unwrap() {
                StreamEvent::Done => done = true,
                StreamEvent::Chunk(c) => {
                    assert_eq!(c.id, "msg_abc");
                    assert_eq!(c.model, "claude-x");
                    if let Some(u) = c.usage {
                        assert!(c.choices.is_empty());
                        usage = Some(u);
                        continue;
                    }
                    let ch = &c.choices[0];
                    finish = finish.or(ch.finish_reason.clone());
                    text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                    if let Some(r) = ch.delta.extra.get("reasoning_content") {
                        reasoning.push_str(r.as_str().unwrap());
                    }
                    for tc in ch.delta.tool_calls.iter().flatten() {
                        let f = tc.function.as_ref().unwrap();
                        if let Some(id) = &tc.id {
                            assert_eq!(tc.kind.as_deref(), Some("function"));
                            let want = if tc.index == 0 {
                                ("toolu_a", "get_weather")
                            } else {
                                ("toolu_b", "get_time")
                            };
                            assert_eq!((id.as_str(), f.name.as_deref().unwrap()), want);
                        }
                        args[tc.index as usize].push_str(f.arguments.as_deref().unwrap());
                    }
                }
            }
        }
        assert!(done);
        assert_eq!(text, "Héllo → 世界 😀");
        assert_eq!(reasoning, "Let me think");
        assert_eq!(args[0], r#"{"location": "Paris"}"#);
        assert_eq!(args[1], r#"{"tz": "Europe/Oslo"}"#);
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        let u = usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (17, 42, 59)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 5);
    }

    #[test]
    fn stream_any_split_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let (whole, partial) = run(&[bytes]);
        assert!(!partial);
        assert_eq!(whole.last().map(String::as_str), Some("DONE"));
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(run(&[a, b]).0, whole, "split at {i}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).0, whole);
        let crlf = STREAM.replace('\n', "\r\n");
        let singles: Vec<&[u8]> = crlf.as_bytes().chunks(1).collect();
        assert_eq!(run(&singles).0, whole);
    }

    #[test]
    fn truncated_stream_has_no_done() {
        let bytes = STREAM.as_bytes();
        let cut = STREAM.find("event: message_delta").unwrap();
        let (events, partial) = run(&[&bytes[..cut]]);
        assert!(!partial);
        assert!(!events.iter().any(|e| e == "DONE"));
        let (events, partial) = run(&[&bytes[..cut + 30]]);
        assert!(partial);
        assert!(!events.iter().any(|e| e == "DONE"));
    }

    #[test]
    fn in_stream_errors_are_classified() {
        for (etype, kind, status) in [
            ("overloaded_error", ErrorKind::ServiceUnavailable, 529),
            ("api_error", ErrorKind::Internal, 500),
            ("rate_limit_error", ErrorKind::RateLimited, 429),
        ] {
            let s = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{{\"input_tokens\":1,\"output_tokens\":1}}}}}}\n\nevent: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"{etype}\", \"message\": \"Overloaded\"}}}}\n\n"
            );
            let mut d = AnthropicDecoder::new(route());
            let mut out = Vec::new();
            d.feed(s.as_bytes(), &mut out);
            assert!(!d.finish(&mut out));
            let e = out.pop().unwrap().unwrap_err();
            assert_eq!(e.kind, kind);
            assert_eq!(e.status, Some(status));
            assert!(e.retryable());
            assert_eq!(e.upstream_code.as_deref(), Some(etype));
            assert!(
                e.message.starts_with("AnthropicException - "),
                "{}",
                e.message
            );
        }
        let mut d = AnthropicDecoder::new(route());
        let mut out = Vec::new();
        d.feed(b"event: message_start\ndata: {not json\n\n", &mut out);
        assert_eq!(
            out.pop().unwrap().unwrap_err().kind,
            ErrorKind::InvalidResponse
        );
    }

    fn err(status: u16, etype: &str, message: &str) -> Error {
        let body = json!({"type": "error", "error": {"type": etype, "message": message},
            "request_id": "req_011"});
        parse_error(
            &route(),
            status,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn every_error_type() {
        let cases = [
            (
                400,
                "invalid_request_error",
                "messages: field required",
                ErrorKind::BadRequest,
                false,
            ),
            (
                400,
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
                ErrorKind::ContextWindowExceeded,
                false,
            ),
            (
                400,
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
                ErrorKind::ContextWindowExceeded,
                false,
            ),
            (
                400,
                "invalid_request_error",
                "Output blocked by content filtering policy",
                ErrorKind::ContentPolicyViolation,
                false,
            ),
            (
                401,
                "authentication_error",
                "invalid x-api-key",
                ErrorKind::Authentication,
                false,
            ),
            (
                402,
                "billing_error",
                "credit balance is too low",
                ErrorKind::QuotaExceeded,
                false,
            ),
            (
                403,
                "permission_error",
                "no access",
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                404,
                "not_found_error",
                "model: claude-x",
                ErrorKind::NotFound,
                false,
            ),
            (
                413,
                "request_too_large",
                "Request exceeds the maximum size",
                ErrorKind::BadRequest,
                false,
            ),
            (
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                ErrorKind::RateLimited,
                true,
            ),
            (
                500,
                "api_error",
                "Internal server error",
                ErrorKind::Internal,
                true,
            ),
            (
                504,
                "timeout_error",
                "Request timed out",
                ErrorKind::Timeout,
                true,
            ),
            (
                529,
                "overloaded_error",
                "Overloaded",
                ErrorKind::ServiceUnavailable,
                true,
            ),
            (418, "some_new_error", "teapot", ErrorKind::Api, false),
        ];
        for (status, etype, msg, kind, retry) in cases {
            let e = err(status, etype, msg);
            assert_eq!(e.kind, kind, "{etype} {msg}");
            assert_eq!(e.retryable(), retry, "{etype}");
            assert_eq!(e.status, Some(status));
            assert_eq!(e.upstream_code.as_deref(), Some(etype));
            assert_eq!(e.message, format!("AnthropicException - {msg}"));
        }
    }

    #[test]
    fn html_and_foreign_bodies() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/html"));
        let page = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>";
        let e = parse_error(&route(), 502, &h, page);
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert!(e.message.starts_with("AnthropicException - "));
        assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
        let e = parse_error(&route(), 504, &h, b"<html>Gateway Timeout</html>");
        assert_eq!(e.kind, ErrorKind::Timeout);
        let e = parse_error(&route(), 503, &HeaderMap::new(), b"");
        assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
    }

    #[test]
    fn retry_hints_and_key_masking() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = parse_error(&route(), 429, &h, body);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));

        let in_30s = SystemTime::now() + Duration::from_secs(30);
        let secs = in_30s.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let stamp = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        // Build an RFC 3339 stamp from the same instant.
        let rfc = rfc3339_of(secs);
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-requests-reset",
            HeaderValue::from_str(&rfc).unwrap(),
        );
        let hint = parse_error(&route(), 429, &h, body).retry_after.unwrap();
        assert!(
            hint > Duration::from_secs(25) && hint <= Duration::from_secs(30),
            "{hint:?} {stamp}"
        );

        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"bad key sk-ant-abcdefghijkl"}}"#;
        let e = parse_error(&route(), 401, &HeaderMap::new(), body);
        assert!(!e.message.contains("abcdefghijkl"));
    }

    fn rfc3339_of(secs: u64) -> String {
        // Inverse of the civil-days algorithm, for the test only.
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z"),
            Some(Duration::from_secs(1_709_208_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T13:00:00.5+01:00"),
            Some(Duration::from_secs_f64(1_709_208_000.5))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339_of(1_709_208_000), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn unsupported_params_match_litellm() {
        for p in [
            "logit_bias",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "n",
            "logprobs",
        ] {
            assert!(Anthropic.unsupported_params().contains(&p));
        }
        for p in [
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "response_format",
            "user",
        ] {
            assert!(!Anthropic.unsupported_params().contains(&p));
        }
    }
}
