//! AWS Bedrock: the Converse API (`POST {base}/model/{modelId}/converse` and
//! `/converse-stream`) and Titan / Cohere embeddings through `InvokeModel`
//! (`POST {base}/model/{modelId}/invoke`).
//!
//! Routing: `bedrock/<modelId>` or `bedrock/converse/<modelId>`; the base is the call's
//! `api_base`, else `AWS_BEDROCK_RUNTIME_ENDPOINT`, else
//! `https://bedrock-runtime.{region}.amazonaws.com`. Credentials: a Bedrock API key (the call's
//! `api_key`, else `AWS_BEARER_TOKEN_BEDROCK`) sent as a bearer, or AWS keys (the call's
//! `aws_access_key_id` / `aws_secret_access_key` / `aws_session_token`, else the `AWS_*`
//! variables) with which every request is SigV4-signed (service `bedrock`) when it is built.
//!
//! Requests: OpenAI messages become Converse messages (system blocks, text, image bytes, toolUse,
//! toolResult, cache points), consecutive same-role messages are merged, sampling parameters go
//! to `inferenceConfig`, tools to `toolConfig`, `response_format` to a forced `json_tool_call`
//! tool whose input comes back as the message text, and every other parameter to
//! `additionalModelRequestFields` (e.g. `top_k`).
//!
//! Streams are AWS event-stream frames (`application/vnd.amazon.eventstream`), decoded here with
//! both CRCs checked; `exception` frames become classified errors. Error answers are classified by
//! their AWS error type (`x-amzn-errortype`, `__type`), then by status.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use super::media::{image_url, parse_data_url};
use super::openai::{apply_extra_headers, excerpt, json_headers, sensitive};
use super::{
    deref_env, env_first, AwsCredentials, Endpoint, Extras, PreparedRequest, Provider, Route,
    Secret,
};
use crate::error::{Error, ErrorKind, Result};
use crate::retry::retry_hint;
use crate::streaming::{StreamDecoder, StreamEvent};
use crate::types::{
    unix_now, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, DeltaFunction,
    DeltaToolCall, EmbeddingRequest, EmbeddingResponse, FunctionCall, Message, ToolCall, Usage,
};

/// Used in error messages: `BedrockException - ...`.
pub const DISPLAY: &str = "Bedrock";
/// The tool through which `response_format` is asked for; its input is the JSON answer.
pub const JSON_TOOL: &str = "json_tool_call";
/// The event-stream content type of `converse-stream` answers.
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

const REGION_ENV: &[&str] = &["AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"];
const BEARER_ENV: &str = "AWS_BEARER_TOKEN_BEDROCK";
const ENDPOINT_ENV: &str = "AWS_BEDROCK_RUNTIME_ENDPOINT";

/// OpenAI parameters Converse has no field for (LiteLLM's Converse config does not list them
/// either).
const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "n",
    "seed",
    "user",
    "audio",
    "modalities",
    "prediction",
];

/// Parameters mapped to Converse fields (or consumed) rather than passed through.
const MAPPED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "thinking",
    "reasoning_effort",
    "service_tier",
    "additionalModelRequestFields",
    "aws_bedrock_runtime_endpoint",
];

/// Converse request fields a caller may give directly (params or `extra_body`).
const TOP_LEVEL: &[&str] = &[
    "guardrailConfig",
    "promptVariables",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "outputConfig",
    "inferenceConfig",
    "toolConfig",
    "system",
];

/// AWS options LiteLLM accepts that need credential sources LLMux does not read.
const UNSUPPORTED_AWS: &[&str] = &[
    "aws_profile_name",
    "aws_role_name",
    "aws_session_name",
    "aws_web_identity_token",
    "aws_sts_endpoint",
    "aws_external_id",
];

#[derive(Debug)]
pub struct Bedrock;

fn region(ep: &Endpoint) -> Option<String> {
    ep.aws_region_name
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| env_first(REGION_ENV))
}

fn check_base(base: &str) -> Result<String> {
    let base = base.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::invalid_config(format!(
            "api_base must be an http(s) URL, got '{base}'"
        )));
    }
    Ok(base)
}

fn missing_region(model: &str) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        "no AWS region for provider 'bedrock': pass aws_region_name or set AWS_REGION_NAME / \
         AWS_REGION / AWS_DEFAULT_REGION",
    )
    .with_context("bedrock", model)
}

/// The route for `bedrock/<modelId>` (also `bedrock/converse/<modelId>`).
pub fn route(model: &str, ep: &Endpoint) -> Result<Route> {
    let model = model.strip_prefix("converse/").unwrap_or(model);
    if model.is_empty() {
        return Err(Error::bad_request("bedrock: the model id is empty"));
    }
    if let Some(rest) = model.strip_prefix("invoke/") {
        return Err(Error::invalid_config(format!(
            "bedrock: the InvokeModel chat route ('bedrock/invoke/...') is not supported; use \
             'bedrock/{rest}' (the Converse API)"
        ))
        .with_context("bedrock", model));
    }
    let region = region(ep);
    let explicit_base = match &ep.api_base {
        Some(b) => Some(deref_env(b)?),
        None => env_first(&[ENDPOINT_ENV]),
    };

    // Credentials: the call's key or AWS keys first, then the environment's.
    let call_key = match &ep.api_key {
        Some(k) => Some(Secret::new(deref_env(k.expose())?)),
        None => None,
    };
    let call_aws = match (&ep.aws_access_key_id, &ep.aws_secret_access_key) {
        (Some(ak), Some(sk)) => Some((ak.clone(), sk.clone(), ep.aws_session_token.clone())),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::new(
                ErrorKind::Authentication,
                "bedrock: aws_access_key_id and aws_secret_access_key must be given together",
            )
            .with_context("bedrock", model));
        }
        (None, None) => None,
    };
    let (bearer, aws) = match (call_key, call_aws) {
        (Some(k), _) => (Some(k), None),
        (None, Some(a)) => (None, Some(a)),
        (None, None) => match env_first(&[BEARER_ENV]) {
            Some(k) => (Some(Secret::new(k)), None),
            None => match (
                env_first(&["AWS_ACCESS_KEY_ID"]),
                env_first(&["AWS_SECRET_ACCESS_KEY"]),
            ) {
                (Some(ak), Some(sk)) => (
                    None,
                    Some((
                        ak,
                        Secret::new(sk),
                        env_first(&["AWS_SESSION_TOKEN"]).map(Secret::new),
                    )),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Authentication,
                        "no credentials for provider 'bedrock': pass aws_access_key_id and \
                         aws_secret_access_key (or api_key for a Bedrock API key), or set \
                         AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) or \
                         AWS_BEARER_TOKEN_BEDROCK",
                    )
                    .with_context("bedrock", model));
                }
            },
        },
    };

    let base = match (&explicit_base, &region) {
        (Some(b), _) => check_base(b)?,
        (None, Some(r)) => format!("https://bedrock-runtime.{r}.amazonaws.com"),
        (None, None) => return Err(missing_region(model)),
    };
    let mut r = Route::new(&Bedrock, "bedrock", DISPLAY, model, base);
    r.api_key = bearer;
    if let Some((access_key_id, secret_access_key, session_token)) = aws {
        let region = match region {
            Some(r) => r,
            None => return Err(missing_region(model)),
        };
        r.aws = Some(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
            region,
        });
    }
    Ok(r)
}

/// Percent-encodes one URL path segment (every byte but RFC 3986's unreserved ones).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn op_url(base: &str, model: &str, op: &str) -> String {
    format!("{base}/model/{}/{op}", encode_segment(model))
}

/// The base for this call: `aws_bedrock_runtime_endpoint` given as a call parameter wins.
fn call_base(route: &Route, params: &Map<String, Value>) -> Result<String> {
    match params
        .get("aws_bedrock_runtime_endpoint")
        .and_then(Value::as_str)
    {
        Some(b) => check_base(&deref_env(b)?),
        None => Ok(route.api_base.clone()),
    }
}

fn reject_unsupported_aws(params: &Map<String, Value>) -> Result<()> {
    match UNSUPPORTED_AWS.iter().find(|k| params.contains_key(**k)) {
        Some(k) => Err(Error::invalid_config(format!(
            "bedrock: '{k}' is not supported; pass aws_access_key_id / aws_secret_access_key \
             (/ aws_session_token) or a Bedrock API key"
        ))),
        None => Ok(()),
    }
}

/// JSON headers, the caller's extra headers, then the credentials: a bearer key, or a SigV4
/// signature over the method, URL, headers and body.
fn signed_headers(
    route: &Route,
    url: &str,
    body: &[u8],
    accept: Option<&'static str>,
    extra: &[(String, String)],
) -> Result<HeaderMap> {
    let mut h = json_headers();
    if let Some(a) = accept {
        h.insert(reqwest::header::ACCEPT, HeaderValue::from_static(a));
    }
    apply_extra_headers(&mut h, extra)?;
    if let Some(key) = &route.api_key {
        h.insert(
            AUTHORIZATION,
            sensitive(&format!("Bearer {}", key.expose()))?,
        );
        return Ok(h);
    }
    let Some(aws) = &route.aws else {
        return Err(Error::new(
            ErrorKind::Authentication,
            "no credentials for provider 'bedrock'",
        ));
    };
    let creds = Credentials::new(
        aws.access_key_id.clone(),
        aws.secret_access_key.expose().to_owned(),
        aws.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "llmux",
    );
    let identity: Identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Error::invalid_config(format!("bedrock: cannot sign the request: {e}")))?
        .into();
    let to_sign: Vec<(&str, &str)> = h
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable =
        SignableRequest::new("POST", url, to_sign.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| Error::invalid_config(format!("bedrock: cannot sign the request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| Error::invalid_config(format!("bedrock: cannot sign the request: {e}")))?
        .into_parts();
    let (new_headers, _query) = instructions.into_parts();
    for header in new_headers {
        let name = HeaderName::from_static(header.name());
        let value = if header.sensitive() || name == AUTHORIZATION {
            sensitive(header.value())?
        } else {
            HeaderValue::from_str(header.value()).map_err(|_| {
                Error::invalid_config("bedrock: a signing header is not a valid header value")
            })?
        };
        h.insert(name, value);
    }
    Ok(h)
}

// ---------------------------------------------------------------------------
// Request translation
// ---------------------------------------------------------------------------

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn has_cache_control(part: &Value) -> bool {
    part.get("cache_control").is_some_and(|c| !c.is_null())
}

fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

fn image_block(url: &str) -> Result<Value> {
    let Some((mime, data)) = parse_data_url(url) else {
        return Err(Error::bad_request(
            "bedrock: images must be data: URLs or http(s) URLs (fetched and inlined)",
        ));
    };
    let format = match mime.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(Error::bad_request(format!(
                "bedrock: image type '{other}' is not supported (png, jpeg, gif, webp)"
            )))
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// The content blocks of a user or system message.
fn content_blocks(content: &Value, role: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    match content {
        Value::String(s) => {
            if !s.is_empty() {
                out.push(json!({"text": s}));
            }
        }
        Value::Null => {}
        Value::Array(parts) => {
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
                match kind {
                    "text" => {
                        let t = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.is_empty() {
                            out.push(json!({"text": t}));
                        }
                    }
                    "image_url" => {
                        if role == "system" {
                            return Err(Error::bad_request(
                                "bedrock: system messages cannot contain images",
                            ));
                        }
                        let url = image_url(part).ok_or_else(|| {
                            Error::bad_request("bedrock: an image_url part has no url")
                        })?;
                        out.push(image_block(url)?);
                    }
                    other => {
                        return Err(Error::bad_request(format!(
                            "bedrock: content parts of type '{other}' are not supported"
                        )))
                    }
                }
                if has_cache_control(part) {
                    out.push(cache_point());
                }
            }
        }
        other => out.push(json!({"text": other.to_string()})),
    }
    Ok(out)
}

fn tool_use_block(call: &Value) -> Result<(Value, String)> {
    let id = call.get("id").and_then(Value::as_str).unwrap_or("");
    let f = call.get("function").unwrap_or(&Value::Null);
    let name = f.get("name").and_then(Value::as_str).unwrap_or("");
    let input = match f.get("arguments") {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            Error::bad_request(format!(
                "bedrock: the arguments of tool call '{id}' are not valid JSON: {e}"
            ))
        })?,
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => json!({}),
    };
    Ok((
        json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
        name.to_owned(),
    ))
}

fn tool_result_block(m: &Value) -> Value {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    let text = text_of(m.get("content").unwrap_or(&Value::Null));
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => json!([{"json": v}]),
        _ => json!([{"text": text}]),
    };
    json!({"toolResult": {"toolUseId": id, "content": content}})
}

/// Converse's `system` blocks and `messages`, plus the tool names used in the history.
struct Translated {
    system: Vec<Value>,
    messages: Vec<Value>,
    history_tools: Vec<String>,
}

fn translate_messages(messages: &[Value]) -> Result<Translated> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut history_tools: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(content_blocks(content, "system")?);
                if has_cache_control(m) {
                    system.push(cache_point());
                }
                continue;
            }
            "user" => {
                let mut b = content_blocks(content, "user")?;
                if has_cache_control(m) {
                    b.push(cache_point());
                }
                ("user", b)
            }
            "assistant" => {
                let mut b = Vec::new();
                let text = text_of(content);
                if !text.trim().is_empty() {
                    b.push(json!({"text": text}));
                }
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for call in calls {
                        let (block, name) = tool_use_block(call)?;
                        if !history_tools.contains(&name) {
                            history_tools.push(name);
                        }
                        b.push(block);
                    }
                }
                if has_cache_control(m) && !b.is_empty() {
                    b.push(cache_point());
                }
                ("assistant", b)
            }
            "tool" | "function" => ("user", vec![tool_result_block(m)]),
            other => {
                return Err(Error::bad_request(format!(
                    "bedrock: messages[{i}] has role '{other}', which Converse cannot express"
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    Ok(Translated {
        system,
        messages: turns
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect(),
        history_tools,
    })
}

fn tool_spec(name: &str, description: Option<&str>, schema: Value) -> Value {
    let mut spec = Map::new();
    spec.insert("name".into(), Value::String(name.to_owned()));
    if let Some(d) = description.filter(|d| !d.is_empty()) {
        spec.insert("description".into(), Value::String(d.to_owned()));
    }
    spec.insert("inputSchema".into(), json!({ "json": schema }));
    json!({ "toolSpec": spec })
}

fn user_tools(params: &Map<String, Value>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    if let Some(Value::Array(tools)) = params.get("tools") {
        for t in tools {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(Error::bad_request(format!(
                    "bedrock: tools of type '{kind}' are not supported"
                )));
            }
            let f = t.get("function").unwrap_or(t);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_request("bedrock: a tool has no function name"))?;
            let schema = match f.get("parameters") {
                Some(p @ Value::Object(_)) => p.clone(),
                _ => json!({"type": "object", "properties": {}}),
            };
            out.push(tool_spec(
                name,
                f.get("description").and_then(Value::as_str),
                schema,
            ));
        }
    }
    Ok(out)
}

fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>> {
    Ok(match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"auto": {}})),
            "required" | "any" => Some(json!({"any": {}})),
            "none" => None,
            other => {
                return Err(Error::bad_request(format!(
                    "bedrock: tool_choice '{other}' is not supported (auto, required, none, or a \
                     named function)"
                )))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_request("bedrock: tool_choice names no function"))?;
            Some(json!({"tool": {"name": name}}))
        }
    })
}

/// The JSON schema `response_format` asks for, if it asks for JSON.
fn response_schema(rf: Option<&Value>) -> Option<(Value, Option<String>)> {
    let rf = rf?;
    match rf.get("type").and_then(Value::as_str)? {
        "json_schema" => {
            let js = rf.get("json_schema")?;
            let schema = js
                .get("schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let desc = js
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((schema, desc))
        }
        "json_object" => Some((json!({"type": "object"}), None)),
        _ => None,
    }
}

fn tool_config(
    params: &Map<String, Value>,
    history_tools: &[String],
    has_tool_blocks: bool,
) -> Result<Option<Value>> {
    let mut tools = user_tools(params)?;
    let user_had_tools = !tools.is_empty();
    let choice_value = params.get("tool_choice");
    let none = matches!(choice_value, Some(Value::String(s)) if s == "none");
    let mut choice = tool_choice(choice_value)?;
    if let Some((schema, desc)) = response_schema(params.get("response_format")) {
        tools.push(tool_spec(
            JSON_TOOL,
            Some(desc.as_deref().unwrap_or("Respond with a JSON object.")),
            schema,
        ));
        if !user_had_tools {
            choice = Some(json!({"tool": {"name": JSON_TOOL}}));
        }
    }
    if none && !has_tool_blocks && !tools.iter().any(|t| t["toolSpec"]["name"] == JSON_TOOL) {
        // tool_choice "none": Converse cannot forbid tool use; the tools are not offered.
        return Ok(None);
    }
    if tools.is_empty() && has_tool_blocks {
        // Converse needs a toolConfig when the history holds toolUse / toolResult blocks.
        for name in history_tools.iter().filter(|n| !n.is_empty()) {
            tools.push(tool_spec(
                name,
                None,
                json!({"type": "object", "properties": {}}),
            ));
        }
    }
    if tools.is_empty() {
        return Ok(None);
    }
    let mut cfg = Map::new();
    cfg.insert("tools".into(), Value::Array(tools));
    if let Some(c) = choice {
        cfg.insert("toolChoice".into(), c);
    }
    Ok(Some(Value::Object(cfg)))
}

fn is_anthropic(model: &str) -> bool {
    model.contains("anthropic.")
}

fn reasoning_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(2048),
        "high" => Some(4096),
        _ => None,
    }
}

/// The Converse request body.
pub fn converse_body(
    route: &Route,
    req: &ChatRequest,
    extra_body: Option<&Map<String, Value>>,
) -> Result<Value> {
    let p = &req.params;
    reject_unsupported_aws(p)?;
    let t = translate_messages(&req.messages)?;
    let has_tool_blocks = t.messages.iter().any(|m| {
        m["content"].as_array().is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        })
    });
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(t.messages));
    if !t.system.is_empty() {
        body.insert("system".into(), Value::Array(t.system));
    }

    let mut inference = Map::new();
    if let Some(n) = req.output_cap() {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(v) = p.get("temperature").filter(|v| !v.is_null()) {
        inference.insert("temperature".into(), v.clone());
    }
    if let Some(v) = p.get("top_p").filter(|v| !v.is_null()) {
        inference.insert("topP".into(), v.clone());
    }
    match p.get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(cfg) = tool_config(p, &t.history_tools, has_tool_blocks)? {
        body.insert("toolConfig".into(), cfg);
    }

    let mut additional = Map::new();
    if let Some(Value::Object(o)) = p.get("additionalModelRequestFields") {
        additional.extend(o.clone());
    }
    if let Some(th) = p.get("thinking").filter(|v| !v.is_null()) {
        additional.insert("thinking".into(), th.clone());
    }
    if let Some(effort) = p.get("reasoning_effort").and_then(Value::as_str) {
        if is_anthropic(&route.model) {
            if let Some(budget) = reasoning_budget(effort) {
                additional.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
            }
        } else {
            additional.insert("reasoning_effort".into(), json!(effort));
        }
    }
    if let Some(Value::String(tier)) = p.get("service_tier") {
        let tier = if tier == "auto" { "default" } else { tier };
        body.insert("serviceTier".into(), json!({ "type": tier }));
    }
    let mut put = |k: &String, v: &Value, body: &mut Map<String, Value>| {
        if TOP_LEVEL.contains(&k.as_str()) {
            match (body.get_mut(k), v) {
                (Some(Value::Object(have)), Value::Object(add)) => {
                    have.extend(add.clone());
                }
                _ => {
                    body.insert(k.clone(), v.clone());
                }
            }
        } else if k == "additionalModelRequestFields" {
            if let Value::Object(o) = v {
                additional.extend(o.clone());
            }
        } else {
            additional.insert(k.clone(), v.clone());
        }
    };
    for (k, v) in p {
        if MAPPED.contains(&k.as_str()) || k.starts_with("aws_") || v.is_null() {
            continue;
        }
        if extra_body.is_some_and(|e| e.contains_key(k)) {
            continue;
        }
        put(k, v, &mut body);
    }
    if let Some(extra) = extra_body {
        for (k, v) in extra {
            put(k, v, &mut body);
        }
    }
    if !additional.is_empty() {
        body.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    Ok(Value::Object(body))
}

fn to_bytes(v: &Value) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::bad_request(format!("request is not serialisable as JSON: {e}")))
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

fn new_id() -> String {
    format!("chatcmpl-{:032x}", rand::random::<u128>())
}

/// The OpenAI finish reason of a Converse `stopReason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// OpenAI usage from Converse's `usage`: prompt tokens include cache reads and writes (as
/// LiteLLM counts them), `prompt_tokens_details.cached_tokens` is the cache read.
pub fn usage_from(u: &Value) -> Usage {
    let input = count(u, "inputTokens");
    let output = count(u, "outputTokens");
    let read = count(u, "cacheReadInputTokens");
    let write = count(u, "cacheWriteInputTokens");
    let prompt = input + read + write;
    let total = u
        .get("totalTokens")
        .and_then(Value::as_u64)
        .unwrap_or(prompt + output);
    let mut extra = Map::new();
    if u.get("cacheReadInputTokens").is_some() || u.get("cacheWriteInputTokens").is_some() {
        extra.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": read, "cache_creation_tokens": write}),
        );
        extra.insert("cache_read_input_tokens".into(), json!(read));
        extra.insert("cache_creation_input_tokens".into(), json!(write));
    }
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: total,
        extra,
    }
}

fn invalid(route: &Route, what: &str, detail: &str, body: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidResponse,
        format!(
            "{}Exception - the upstream answered 200 with an invalid {what}: {detail}; body \
             starts: {}",
            route.display,
            excerpt(body)
        ),
    )
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned())
}

/// A Converse answer as an OpenAI chat completion.
pub fn parse_converse(route: &Route, body: &[u8]) -> Result<ChatCompletion> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(route, "Converse response", &e.to_string(), body))?;
    let Some(blocks) = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
    else {
        return Err(invalid(
            route,
            "Converse response",
            "no output.message.content",
            body,
        ));
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut json_answer = false;
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = b.get("toolUse") {
            let name = tu.get("name").and_then(Value::as_str).unwrap_or("");
            let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
            if name == JSON_TOOL {
                text.push_str(&json_text(&input));
                json_answer = true;
                continue;
            }
            calls.push(ToolCall {
                id: tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: name.to_owned(),
                    arguments: json_text(&input),
                },
            });
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(t) = r.pointer("/reasoningText/text").and_then(Value::as_str) {
                reasoning.push_str(t);
            }
        }
    }
    let stop = v.get("stopReason").and_then(Value::as_str).unwrap_or("");
    let mut finish = finish_reason(stop);
    if json_answer && calls.is_empty() && finish == "tool_calls" {
        finish = "stop";
    }
    let mut extra = Map::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let content = if text.is_empty() && !calls.is_empty() {
        None
    } else {
        Some(text)
    };
    let mut top = Map::new();
    if let Some(m) = v.get("metrics") {
        top.insert("metrics".into(), m.clone());
    }
    Ok(ChatCompletion {
        id: new_id(),
        object: "chat.completion".into(),
        created: unix_now(),
        model: route.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content,
                tool_calls: (!calls.is_empty()).then_some(calls),
                function_call: None,
                extra,
            },
            finish_reason: Some(finish.to_owned()),
            logprobs: None,
            extra: Map::new(),
        }],
        usage: v.get("usage").map(usage_from),
        system_fingerprint: None,
        extra: top,
    })
}

// ---------------------------------------------------------------------------
// Event-stream framing
// ---------------------------------------------------------------------------

/// A header value of an event-stream message (only strings are kept; others are skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Largest frame accepted (AWS limits event-stream messages to 16 MiB).
const MAX_FRAME: usize = 16 * 1024 * 1024 + 1024;

/// Splits an AWS event-stream body, fed in arbitrary pieces, into frames; checks both CRCs.
#[derive(Debug, Default)]
pub struct FrameParser {
    buf: Vec<u8>,
    failed: bool,
}

fn be32(b: &[u8], at: usize) -> usize {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize,
        None => 0,
    }
}

fn parse_headers(mut h: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while !h.is_empty() {
        let name_len = usize::from(h[0]);
        let name = h
            .get(1..1 + name_len)
            .ok_or("header name runs past the headers")?;
        let name = String::from_utf8_lossy(name).into_owned();
        h = &h[1 + name_len..];
        let (&kind, rest) = h.split_first().ok_or("header has no value type")?;
        h = rest;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            other => return Err(format!("unknown header value type {other}")),
        };
        match fixed {
            Some(n) => {
                if h.len() < n {
                    return Err("header value runs past the headers".into());
                }
                h = &h[n..];
            }
            None => {
                if h.len() < 2 {
                    return Err("header value length runs past the headers".into());
                }
                let len = usize::from(u16::from_be_bytes([h[0], h[1]]));
                let value = h
                    .get(2..2 + len)
                    .ok_or("header value runs past the headers")?;
                if kind == 7 {
                    out.push((name, String::from_utf8_lossy(value).into_owned()));
                }
                h = &h[2 + len..];
            }
        }
    }
    Ok(out)
}

impl FrameParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether bytes of an unfinished frame are buffered.
    pub fn has_partial(&self) -> bool {
        !self.failed && !self.buf.is_empty()
    }

    /// Adds bytes; appends every complete frame, or one error (after which input is ignored).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<std::result::Result<Frame, String>>) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            if rest.len() < 12 {
                break;
            }
            let total = be32(rest, 0);
            let headers_len = be32(rest, 4);
            let prelude_crc = be32(rest, 8) as u32;
            if crc32fast::hash(&rest[..8]) != prelude_crc {
                self.fail(out, "event-stream prelude checksum mismatch".into());
                return;
            }
            if !(16..=MAX_FRAME).contains(&total) || headers_len > total - 16 {
                self.fail(
                    out,
                    format!("event-stream frame has impossible lengths ({total}, {headers_len})"),
                );
                return;
            }
            if rest.len() < total {
                break;
            }
            let msg_crc = be32(rest, total - 4) as u32;
            if crc32fast::hash(&rest[..total - 4]) != msg_crc {
                self.fail(out, "event-stream message checksum mismatch".into());
                return;
            }
            match parse_headers(&rest[12..12 + headers_len]) {
                Ok(headers) => out.push(Ok(Frame {
                    headers,
                    payload: rest[12 + headers_len..total - 4].to_vec(),
                })),
                Err(e) => {
                    self.fail(out, format!("event-stream headers are malformed: {e}"));
                    return;
                }
            }
            at += total;
        }
        if at > 0 {
            self.buf.drain(..at);
        }
    }

    fn fail(&mut self, out: &mut Vec<std::result::Result<Frame, String>>, msg: String) {
        self.failed = true;
        self.buf.clear();
        out.push(Err(msg));
    }
}

// ---------------------------------------------------------------------------
// Stream events
// ---------------------------------------------------------------------------

/// Event-stream frames to OpenAI chunks: the decoder of `converse-stream` bodies.
pub struct EventStreamDecoder {
    frames: FrameParser,
    pending: Vec<std::result::Result<Frame, String>>,
    route: Route,
    id: String,
    created: i64,
    /// contentBlockIndex → OpenAI tool-call index (`None` for the JSON-answer tool).
    blocks: Vec<(u64, Option<u32>)>,
    next_tool: u32,
    json_answer: bool,
    done: bool,
}

impl EventStreamDecoder {
    pub fn new(route: Route) -> Self {
        EventStreamDecoder {
            frames: FrameParser::new(),
            pending: Vec::new(),
            route,
            id: new_id(),
            created: unix_now(),
            blocks: Vec::new(),
            next_tool: 0,
            json_answer: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> StreamEvent {
        StreamEvent::Chunk(Box::new(ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.route.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                logprobs: None,
            }],
            usage: None,
            system_fingerprint: None,
            extra: Map::new(),
        }))
    }

    fn tool_slot(&mut self, block: u64, name: Option<&str>) -> Option<u32> {
        if let Some((_, slot)) = self.blocks.iter().find(|(b, _)| *b == block) {
            return *slot;
        }
        let slot = if name == Some(JSON_TOOL) {
            self.json_answer = true;
            None
        } else {
            let i = self.next_tool;
            self.next_tool += 1;
            Some(i)
        };
        self.blocks.push((block, slot));
        slot
    }

    fn event(&mut self, frame: &Frame) -> Result<Option<StreamEvent>> {
        let mtype = frame.header(":message-type").unwrap_or("event");
        match mtype {
            "event" => {}
            "exception" => {
                let etype = frame.header(":exception-type").unwrap_or("exception");
                let v: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
                let msg = message_of(&v).unwrap_or_else(|| excerpt(&frame.payload));
                return Err(stream_error(&self.route, etype, &v, &msg));
            }
            "error" => {
                let code = frame.header(":error-code").unwrap_or("error");
                let msg = frame.header(":error-message").unwrap_or("(no message)");
                return Err(stream_error(&self.route, code, &Value::Null, msg));
            }
            _ => return Ok(None),
        }
        let etype = frame.header(":event-type").unwrap_or("");
        let v: Value = serde_json::from_slice(&frame.payload).map_err(|e| {
            invalid(
                &self.route,
                "stream event",
                &format!("{etype}: {e}"),
                &frame.payload,
            )
        })?;
        Ok(match etype {
            "messageStart" => Some(self.chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            )),
            "contentBlockStart" => {
                let block = count(&v, "contentBlockIndex");
                match v.pointer("/start/toolUse") {
                    Some(tu) => {
                        let name = tu.get("name").and_then(Value::as_str).unwrap_or("");
                        let id = tu.get("toolUseId").and_then(Value::as_str).unwrap_or("");
                        self.tool_slot(block, Some(name)).map(|index| {
                            self.chunk(
                                Delta {
                                    tool_calls: Some(vec![DeltaToolCall {
                                        index,
                                        id: Some(id.to_owned()),
                                        kind: Some("function".into()),
                                        function: Some(DeltaFunction {
                                            name: Some(name.to_owned()),
                                            arguments: Some(String::new()),
                                        }),
                                    }]),
                                    ..Default::default()
                                },
                                None,
                            )
                        })
                    }
                    None => None,
                }
            }
            "contentBlockDelta" => {
                let block = count(&v, "contentBlockIndex");
                let delta = v.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    Some(self.chunk(
                        Delta {
                            content: Some(t.to_owned()),
                            ..Default::default()
                        },
                        None,
                    ))
                } else if let Some(tu) = delta.get("toolUse") {
                    let piece = tu.get("input").and_then(Value::as_str).unwrap_or("");
                    Some(match self.tool_slot(block, None) {
                        None => self.chunk(
                            Delta {
                                content: Some(piece.to_owned()),
                                ..Default::default()
                            },
                            None,
                        ),
                        Some(index) => self.chunk(
                            Delta {
                                tool_calls: Some(vec![DeltaToolCall {
                                    index,
                                    id: None,
                                    kind: None,
                                    function: Some(DeltaFunction {
                                        name: None,
                                        arguments: Some(piece.to_owned()),
                                    }),
                                }]),
                                ..Default::default()
                            },
                            None,
                        ),
                    })
                } else if let Some(r) = delta.get("reasoningContent") {
                    r.get("text").and_then(Value::as_str).map(|t| {
                        let mut extra = Map::new();
                        extra.insert("reasoning_content".into(), Value::String(t.to_owned()));
                        self.chunk(
                            Delta {
                                extra,
                                ..Default::default()
                            },
                            None,
                        )
                    })
                } else {
                    None
                }
            }
            "messageStop" => {
                let stop = v.get("stopReason").and_then(Value::as_str).unwrap_or("");
                let mut finish = finish_reason(stop);
                if self.json_answer && self.next_tool == 0 && finish == "tool_calls" {
                    finish = "stop";
                }
                Some(self.chunk(Delta::default(), Some(finish)))
            }
            "metadata" => {
                self.done = true;
                v.get("usage").map(|u| {
                    StreamEvent::Chunk(Box::new(ChatChunk {
                        id: self.id.clone(),
                        object: "chat.completion.chunk".into(),
                        created: self.created,
                        model: self.route.model.clone(),
                        choices: Vec::new(),
                        usage: Some(usage_from(u)),
                        system_fingerprint: None,
                        extra: Map::new(),
                    }))
                })
            }
            _ => None,
        })
    }

    fn translate(&mut self, out: &mut Vec<Result<StreamEvent>>) {
        let frames = std::mem::take(&mut self.pending);
        for f in frames {
            if self.done {
                break;
            }
            match f {
                Err(msg) => {
                    out.push(Err(Error::new(
                        ErrorKind::InvalidResponse,
                        format!(
                            "{}Exception - invalid event stream: {msg}",
                            self.route.display
                        ),
                    )));
                    self.done = true;
                }
                Ok(frame) => match self.event(&frame) {
                    Ok(Some(ev)) => out.push(Ok(ev)),
                    Ok(None) => {}
                    Err(e) => {
                        out.push(Err(e));
                        self.done = true;
                    }
                },
            }
        }
    }
}

impl StreamDecoder for EventStreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<StreamEvent>>) {
        if self.done {
            return;
        }
        self.frames.feed(bytes, &mut self.pending);
        let start = out.len();
        self.translate(out);
        // `metadata` is the last event of a Converse stream: a clean end gets `Done`; an
        // error already ends the stream.
        if self.done
            && out
                .get(start..)
                .is_some_and(|o| o.iter().all(Result::is_ok))
        {
            out.push(Ok(StreamEvent::Done));
        }
    }

    fn finish(&mut self, _out: &mut Vec<Result<StreamEvent>>) -> bool {
        self.frames.has_partial()
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn message_of(v: &Value) -> Option<String> {
    ["message", "Message", "errorMessage"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

/// `ThrottlingException:http://internal.amazon.com/...` or `com.amazon...#ThrottlingException`
/// → `ThrottlingException`.
fn error_type_name(raw: &str) -> &str {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim()
}

fn too_long(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "input is too long",
        "too many input tokens",
        "prompt is too long",
        "too long for requested model",
        "maximum context length",
        "context window",
        "exceeds the maximum number of tokens",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// The kind of an AWS error type (case-insensitive; stream exceptions are camelCase), with the
/// status and message for what the type alone does not settle.
pub fn classify(etype: &str, status: u16, message: &str) -> ErrorKind {
    let t = error_type_name(etype).to_ascii_lowercase();
    match t.as_str() {
        "throttlingexception" => ErrorKind::RateLimited,
        "servicequotaexceededexception" => ErrorKind::QuotaExceeded,
        "validationexception" => {
            if too_long(message) {
                ErrorKind::ContextWindowExceeded
            } else {
                ErrorKind::BadRequest
            }
        }
        "conflictexception" => ErrorKind::BadRequest,
        "accessdeniedexception" => ErrorKind::PermissionDenied,
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "expiredtokenexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception"
        | "invalidclienttokenidexception" => ErrorKind::Authentication,
        "resourcenotfoundexception" => ErrorKind::NotFound,
        "modelnotreadyexception" | "serviceunavailableexception" => ErrorKind::ServiceUnavailable,
        "modeltimeoutexception" => ErrorKind::Timeout,
        "internalserverexception" | "modelerrorexception" => ErrorKind::Internal,
        "modelstreamerrorexception" => match status {
            0 => ErrorKind::Internal,
            s => match ErrorKind::from_status(s) {
                ErrorKind::Api => ErrorKind::Internal,
                k => k,
            },
        },
        _ => {
            let k = ErrorKind::from_status(status);
            if matches!(k, ErrorKind::BadRequest) && too_long(message) {
                ErrorKind::ContextWindowExceeded
            } else {
                k
            }
        }
    }
}

fn stream_error(route: &Route, etype: &str, v: &Value, msg: &str) -> Error {
    let status = v
        .get("originalStatusCode")
        .and_then(Value::as_u64)
        .map_or(0, |s| s as u16);
    let kind = classify(etype, status, msg);
    let name = error_type_name(etype);
    Error::new(
        kind,
        format!(
            "{}Exception - error in stream: {name}: {msg}",
            route.display
        ),
    )
    .with_upstream_code(Some(name.to_owned()))
}

fn mask(route: &Route, mut message: String) -> String {
    if let Some(key) = &route.api_key {
        if key.expose().len() >= 8 && message.contains(key.expose()) {
            message = message.replace(key.expose(), "***");
        }
    }
    if let Some(aws) = &route.aws {
        let sk = aws.secret_access_key.expose();
        if sk.len() >= 8 && message.contains(sk) {
            message = message.replace(sk, "***");
        }
    }
    message
}

/// Classifies a non-2xx answer by its AWS error type (header `x-amzn-errortype`, else body
/// `__type` / `code`), else by status; non-JSON bodies are reported with an excerpt.
pub fn parse_error(route: &Route, status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let hint = retry_hint(headers);
    let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    let header_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|s| error_type_name(s).to_owned())
        .filter(|s| !s.is_empty());
    let body_type = parsed.as_ref().and_then(|v| {
        ["__type", "code", "Code"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(|s| error_type_name(s).to_owned())
    });
    let etype = header_type.or(body_type);
    let message = match &parsed {
        Some(v) => message_of(v).unwrap_or_else(|| excerpt(body)),
        None => {
            let ctype = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type");
            if body.is_empty() {
                format!("upstream answered HTTP {status} with an empty body")
            } else {
                format!(
                    "upstream answered HTTP {status} with a non-JSON body ({ctype}): {}",
                    excerpt(body)
                )
            }
        }
    };
    let kind = match (&etype, &parsed) {
        (Some(t), _) => classify(t, status, &message),
        (None, Some(_)) => classify("", status, &message),
        (None, None) => ErrorKind::from_status(status),
    };
    let text = match &etype {
        Some(t) => format!("{}Exception - {t}: {message}", route.display),
        None => format!("{}Exception - {message}", route.display),
    };
    Error::new(kind, mask(route, text))
        .with_status(status)
        .with_retry_after(hint)
        .with_upstream_code(etype)
}

// ---------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------

enum EmbedFamily {
    Titan,
    Cohere,
}

fn embed_family(model: &str) -> Option<EmbedFamily> {
    // Cross-region profiles (`us.cohere.embed-...`) carry a region prefix.
    if model.contains("amazon.titan-embed") {
        Some(EmbedFamily::Titan)
    } else if model.contains("cohere.embed") {
        Some(EmbedFamily::Cohere)
    } else {
        None
    }
}

fn input_texts(input: &Value) -> Result<Vec<String>> {
    match input {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| {
                    Error::bad_request("bedrock: embedding inputs must be strings (not tokens)")
                })
            })
            .collect(),
        _ => Err(Error::bad_request(
            "bedrock: embedding input must be a string or a list of strings",
        )),
    }
}

fn embedding_body(route: &Route, req: &EmbeddingRequest, x: &Extras<'_>) -> Result<Value> {
    let texts = input_texts(&req.input)?;
    let mut body = Map::new();
    match embed_family(&route.model) {
        Some(EmbedFamily::Titan) => {
            let [text] = texts.as_slice() else {
                return Err(Error::bad_request(format!(
                    "bedrock: Titan embedding models take one input text per call, got {}; \
                     call once per text or use a cohere.embed-* model",
                    texts.len()
                )));
            };
            body.insert("inputText".into(), Value::String(text.clone()));
            if route.model.contains("titan-embed-text-v2") {
                if let Some(d) = req.params.get("dimensions").filter(|d| !d.is_null()) {
                    body.insert("dimensions".into(), d.clone());
                }
                let normalize = req
                    .params
                    .get("normalize")
                    .cloned()
                    .unwrap_or(Value::Bool(true));
                body.insert("normalize".into(), normalize);
            } else if let Some(d) = req.params.get("dimensions").filter(|d| !d.is_null()) {
                // Titan multimodal takes `embeddingConfig.outputEmbeddingLength`.
                body.insert(
                    "embeddingConfig".into(),
                    json!({ "outputEmbeddingLength": d }),
                );
            }
        }
        Some(EmbedFamily::Cohere) => {
            body.insert("texts".into(), json!(texts));
            let input_type = req
                .params
                .get("input_type")
                .cloned()
                .unwrap_or_else(|| json!("search_document"));
            body.insert("input_type".into(), input_type);
            for k in ["truncate", "embedding_types"] {
                if let Some(v) = req.params.get(k) {
                    body.insert(k.into(), v.clone());
                }
            }
            if let Some(d) = req.params.get("dimensions").filter(|d| !d.is_null()) {
                body.insert("output_dimension".into(), d.clone());
            }
        }
        None => {
            return Err(Error::bad_request(format!(
                "bedrock: embedding model '{}' is not supported (amazon.titan-embed-*, \
                 cohere.embed-*)",
                route.model
            )))
        }
    }
    if let Some(extra) = x.body {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

/// Titan `{"embedding": [...], "inputTextTokenCount": n}` or Cohere
/// `{"embeddings": [[...]] | {"float": [[...]]}}` as an OpenAI embedding response.
pub fn parse_embedding(route: &Route, body: &[u8]) -> Result<EmbeddingResponse> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(route, "embedding response", &e.to_string(), body))?;
    let (vectors, tokens): (Vec<Value>, u64) = if let Some(e) = v.get("embedding") {
        (vec![e.clone()], count(&v, "inputTextTokenCount"))
    } else if let Some(e) = v.get("embeddings") {
        let list = match e {
            Value::Array(a) => a.clone(),
            Value::Object(o) => o
                .get("float")
                .or_else(|| o.values().next())
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        (list, 0)
    } else {
        return Err(invalid(
            route,
            "embedding response",
            "no 'embedding' or 'embeddings'",
            body,
        ));
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    Ok(EmbeddingResponse {
        object: "list".into(),
        data,
        model: route.model.clone(),
        usage: Some(Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            total_tokens: tokens,
            extra: Map::new(),
        }),
        extra: Map::new(),
    })
}

impl Provider for Bedrock {
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
        let base = call_base(route, &req.params)?;
        let op = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        let url = op_url(&base, &route.model, op);
        let body = to_bytes(&converse_body(route, req, x.body)?)?;
        let accept = stream.then_some(EVENT_STREAM);
        let headers = signed_headers(route, &url, &body, accept, x.headers)?;
        Ok(PreparedRequest { url, headers, body })
    }

    fn parse_chat(&self, route: &Route, body: &[u8]) -> Result<ChatCompletion> {
        parse_converse(route, body)
    }

    fn stream_decoder(&self, route: &Route) -> Box<dyn StreamDecoder> {
        Box::new(EventStreamDecoder::new(route.clone()))
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
        reject_unsupported_aws(&req.params)?;
        let base = call_base(route, &req.params)?;
        let url = op_url(&base, &route.model, "invoke");
        let body = to_bytes(&embedding_body(route, req, x)?)?;
        let headers = signed_headers(route, &url, &body, Some("application/json"), x.headers)?;
        Ok(PreparedRequest { url, headers, body })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            api_base: Some("http://127.0.0.1:9".into()),
            aws_access_key_id: Some("AKIDEXAMPLE".into()),
            aws_secret_access_key: Some(Secret::new("secret-key-123456")),
            aws_region_name: Some("us-west-2".into()),
            ..Default::default()
        }
    }

    fn r() -> Route {
        route("anthropic.claude-3-5-sonnet-20240620-v1:0", &ep()).unwrap()
    }

    fn req(messages: Value) -> ChatRequest {
        ChatRequest::new(
            "bedrock/x",
            messages.as_array().cloned().unwrap_or_default(),
        )
    }

    /// One frame with string headers (the test twin of the fake's encoder).
    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (n, v) in headers {
            h.push(n.len() as u8);
            h.extend_from_slice(n.as_bytes());
            h.push(7);
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend_from_slice(v.as_bytes());
        }
        let total = 16 + h.len() + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32fast::hash(&out);
        out.extend_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        let c = crc32fast::hash(&out);
        out.extend_from_slice(&c.to_be_bytes());
        out
    }

    fn ev(t: &str, payload: Value) -> Vec<u8> {
        frame(
            &[
                (":event-type", t),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        )
    }

    fn recorded_stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(ev("messageStart", json!({"role": "assistant", "p": "abc"})));
        s.extend(ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Héllo 🌍 "}}),
        ));
        s.extend(ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "wörld"}}),
        ));
        s.extend(ev("contentBlockStop", json!({"contentBlockIndex": 0})));
        for (i, id) in [(1, "tu_a"), (2, "tu_b")] {
            s.extend(ev(
                "contentBlockStart",
                json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": id, "name": "get_weather"}}}),
            ));
            for piece in ["{\"location\":", " \"Paris\"}"] {
                s.extend(ev(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": piece}}}),
                ));
            }
            s.extend(ev("contentBlockStop", json!({"contentBlockIndex": i})));
        }
        s.extend(ev("messageStop", json!({"stopReason": "tool_use"})));
        s.extend(ev(
            "metadata",
            json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 165, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50}, "metrics": {"latencyMs": 3}}),
        ));
        s
    }

    struct Summary {
        text: String,
        args: Vec<String>,
        ids: Vec<String>,
        finish: Option<String>,
        usage: Option<Usage>,
        done: bool,
        errors: Vec<Error>,
    }

    fn run(pieces: &[&[u8]]) -> Summary {
        let mut d = EventStreamDecoder::new(r());
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut out);
        }
        let partial = d.finish(&mut out);
        let mut s = Summary {
            text: String::new(),
            args: Vec::new(),
            ids: Vec::new(),
            finish: None,
            usage: None,
            done: false,
            errors: Vec::new(),
        };
        assert!(!partial || !out.iter().any(|e| matches!(e, Ok(StreamEvent::Done))));
        for e in out {
            match e {
                Ok(StreamEvent::Done) => s.done = true,
                Ok(StreamEvent::Chunk(c)) => {
                    if let Some(u) = c.usage {
                        s.usage = Some(u);
                    }
                    for ch in c.choices {
                        s.text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                        if let Some(f) = ch.finish_reason {
                            s.finish = Some(f);
                        }
                        for tc in ch.delta.tool_calls.unwrap_or_default() {
                            let i = tc.index as usize;
                            if s.args.len() <= i {
                                s.args.resize(i + 1, String::new());
                            }
                            if let Some(id) = tc.id {
                                s.ids.push(id);
                            }
                            if let Some(f) = tc.function {
                                s.args[i].push_str(f.arguments.as_deref().unwrap_or(""));
                            }
                        }
                    }
                }
                Err(e) => s.errors.push(e),
            }
        }
        s
    }

    #[test]
    fn route_urls_and_credentials() {
        let r = route("converse/anthropic.claude-3-5-sonnet-20240620-v1:0", &ep()).unwrap();
        assert_eq!(r.model, "anthropic.claude-3-5-sonnet-20240620-v1:0");
        assert_eq!(r.provider, "bedrock");
        let p = Bedrock
            .chat_request(
                &r,
                &req(json!([{"role": "user", "content": "hi"}])),
                false,
                &Extras::default(),
            )
            .unwrap();
        assert_eq!(
            p.url,
            "http://127.0.0.1:9/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        let auth = p.headers.get(AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        let auth = auth.to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-west-2/bedrock/aws4_request"));
        assert!(p.headers.get("x-amz-date").is_some());
        assert!(p.headers.get("x-amz-security-token").is_none());
        assert!(!format!("{r:?}").contains("secret-key"));

        let e = Endpoint {
            aws_session_token: Some(Secret::new("session-tok")),
            api_base: None,
            ..ep()
        };
        let r = route("m", &e).unwrap();
        assert_eq!(
            r.api_base,
            "https://bedrock-runtime.us-west-2.amazonaws.com"
        );
        let p = Bedrock
            .chat_request(
                &r,
                &req(json!([{"role": "user", "content": "hi"}])),
                true,
                &Extras::default(),
            )
            .unwrap();
        assert!(p.url.ends_with("/model/m/converse-stream"));
        assert_eq!(
            p.headers.get("x-amz-security-token").unwrap(),
            "session-tok"
        );

        let e = Endpoint {
            api_key: Some(Secret::new("bedrock-api-key")),
            ..ep()
        };
        let r = route("arn:aws:bedrock:us-east-1:1:inference-profile/x", &e).unwrap();
        let p = Bedrock
            .chat_request(
                &r,
                &req(json!([{"role": "user", "content": "hi"}])),
                false,
                &Extras::default(),
            )
            .unwrap();
        assert_eq!(
            p.headers.get(AUTHORIZATION).unwrap(),
            "Bearer bedrock-api-key"
        );
        assert!(p
            .url
            .contains("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/"));
    }

    #[test]
    fn missing_credentials_and_partial_keys() {
        let e = route(
            "m",
            &Endpoint {
                aws_access_key_id: Some("AKID".into()),
                aws_region_name: Some("us-east-1".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Authentication);
        let no_env = ["AWS_ACCESS_KEY_ID", "AWS_BEARER_TOKEN_BEDROCK"]
            .iter()
            .all(|v| std::env::var(v).is_err());
        if no_env {
            let e = route("m", &Endpoint::default()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Authentication);
            assert!(e.message.contains("AWS_ACCESS_KEY_ID"));
            assert!(e.message.contains("AWS_BEARER_TOKEN_BEDROCK"));
        }
        let no_region = REGION_ENV.iter().all(|v| std::env::var(v).is_err());
        if no_region && std::env::var(ENDPOINT_ENV).is_err() {
            let e = route(
                "m",
                &Endpoint {
                    aws_region_name: None,
                    api_base: None,
                    ..ep()
                },
            )
            .unwrap_err();
            assert!(e.message.contains("AWS_REGION_NAME"));
        }
    }

    #[test]
    fn request_translation() {
        let mut q = req(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "user", "content": "and weather?", "cache_control": {"type": "ephemeral"}},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "t1", "content": "{\"temp\": 20}"},
            {"role": "tool", "tool_call_id": "t2", "content": "sunny"},
        ]));
        q.params.insert("max_tokens".into(), json!(100));
        q.params.insert("temperature".into(), json!(0.2));
        q.params.insert("top_p".into(), json!(0.9));
        q.params.insert("stop".into(), json!("END"));
        q.params.insert("top_k".into(), json!(5));
        q.params.insert("aws_region_name".into(), json!("x"));
        q.params.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]),
        );
        q.params.insert("tool_choice".into(), json!("required"));
        let b = converse_body(&r(), &q, None).unwrap();
        assert_eq!(b["system"], json!([{"text": "Be brief."}]));
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{b}");
        assert_eq!(msgs[0]["role"], "user");
        assert_eq!(msgs[0]["content"][1]["image"]["format"], "png");
        assert_eq!(
            msgs[0]["content"][1]["image"]["source"]["bytes"],
            "iVBORw0KGgo="
        );
        assert_eq!(msgs[0]["content"][2]["text"], "and weather?");
        assert!(msgs[0]["content"][3].get("cachePoint").is_some());
        assert_eq!(msgs[1]["role"], "assistant");
        assert_eq!(
            msgs[1]["content"][0]["toolUse"]["input"]["location"],
            "Paris"
        );
        assert_eq!(msgs[1]["content"][1]["toolUse"]["input"], json!({}));
        assert_eq!(msgs[2]["role"], "user");
        assert_eq!(
            msgs[2]["content"][0]["toolResult"]["content"][0]["json"]["temp"],
            20
        );
        assert_eq!(
            msgs[2]["content"][1]["toolResult"]["content"][0]["text"],
            "sunny"
        );
        assert_eq!(
            b["inferenceConfig"],
            json!({"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert_eq!(b["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            b["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]
                ["location"]["type"],
            "string"
        );
        assert_eq!(b["additionalModelRequestFields"], json!({"top_k": 5}));

        // Named choice, none, history without tools, response_format, reasoning.
        q.params.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        );
        let b = converse_body(&r(), &q, None).unwrap();
        assert_eq!(
            b["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "get_weather"}})
        );
        q.params.remove("tools");
        q.params.insert("tool_choice".into(), json!("none"));
        let b = converse_body(&r(), &q, None).unwrap();
        assert_eq!(
            b["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "get_weather"
        );
        assert!(b["toolConfig"].get("toolChoice").is_none());
        let mut q = req(json!([{"role": "user", "content": "json please"}]));
        q.params.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "f"}}]),
        );
        q.params.insert("tool_choice".into(), json!("none"));
        assert!(converse_body(&r(), &q, None)
            .unwrap()
            .get("toolConfig")
            .is_none());
        let mut q = req(json!([{"role": "user", "content": "json please"}]));
        q.params.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}),
        );
        q.params.insert("reasoning_effort".into(), json!("low"));
        let b = converse_body(&r(), &q, None).unwrap();
        assert_eq!(
            b["toolConfig"]["toolChoice"],
            json!({"tool": {"name": JSON_TOOL}})
        );
        assert_eq!(
            b["additionalModelRequestFields"]["thinking"]["budget_tokens"],
            1024
        );
        let mut extra = Map::new();
        extra.insert(
            "guardrailConfig".into(),
            json!({"guardrailIdentifier": "g"}),
        );
        extra.insert("top_k".into(), json!(3));
        let b = converse_body(&r(), &q, Some(&extra)).unwrap();
        assert_eq!(b["guardrailConfig"]["guardrailIdentifier"], "g");
        assert_eq!(b["additionalModelRequestFields"]["top_k"], 3);

        let bad = req(
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]),
        );
        assert_eq!(
            converse_body(&r(), &bad, None).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let mut q = req(json!([{"role": "user", "content": "x"}]));
        q.params.insert("aws_profile_name".into(), json!("dev"));
        assert_eq!(
            converse_body(&r(), &q, None).unwrap_err().kind,
            ErrorKind::InvalidConfig
        );
        assert!(Bedrock.unsupported_params().contains(&"presence_penalty"));
        assert!(Bedrock.needs_inline_images());
    }

    #[test]
    fn response_translation() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "thinking...", "signature": "s"}}},
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"location": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 7, "totalTokens": 167, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50},
            "metrics": {"latencyMs": 12}
        });
        let c = parse_converse(&r(), body.to_string().as_bytes()).unwrap();
        assert!(c.id.starts_with("chatcmpl-"));
        let m = &c.choices[0].message;
        assert_eq!(m.content.as_deref(), Some("Let me check."));
        let calls = m.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].id, "tooluse_1");
        let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
        assert_eq!(args["location"], "Paris");
        assert_eq!(m.extra["reasoning_content"], "thinking...");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let u = c.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (160, 7, 167)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(u.extra["cache_creation_input_tokens"], 50);

        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
        ] {
            let body = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": stop, "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}});
            let c = parse_converse(&r(), body.to_string().as_bytes()).unwrap();
            assert_eq!(c.choices[0].finish_reason.as_deref(), Some(want));
            assert!(c.usage.unwrap().extra.is_empty());
        }
        let json_answer = json!({"output": {"message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": JSON_TOOL, "input": {"a": 1}}}]}}, "stopReason": "tool_use"});
        let c = parse_converse(&r(), json_answer.to_string().as_bytes()).unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some("{\"a\":1}"));
        assert!(c.choices[0].message.tool_calls.is_none());
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            parse_converse(&r(), b"{\"output\": 1}").unwrap_err().kind,
            ErrorKind::InvalidResponse
        );
        assert_eq!(
            parse_converse(&r(), b"<html>").unwrap_err().kind,
            ErrorKind::InvalidResponse
        );
    }

    #[test]
    fn stream_whole_and_split_at_every_byte() {
        let s = recorded_stream();
        let want = run(&[&s]);
        assert!(want.errors.is_empty());
        assert!(want.done);
        assert_eq!(want.text, "Héllo 🌍 wörld");
        assert_eq!(want.args, vec!["{\"location\": \"Paris\"}"; 2]);
        assert_eq!(want.ids, vec!["tu_a", "tu_b"]);
        assert_eq!(want.finish.as_deref(), Some("tool_calls"));
        let u = want.usage.as_ref().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (160, 5, 165)
        );
        assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 100);
        for at in 0..=s.len() {
            let got = run(&[&s[..at], &s[at..]]);
            assert_eq!(got.text, want.text, "split at {at}");
            assert_eq!(got.args, want.args);
            assert!(got.done && got.errors.is_empty());
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        let got = run(&bytes);
        assert_eq!(got.text, want.text);
        assert!(got.done);
    }

    #[test]
    fn truncated_stream_and_bad_crcs() {
        let s = recorded_stream();
        // Cut mid-frame: partial bytes are reported, no Done.
        let mut d = EventStreamDecoder::new(r());
        let mut out = Vec::new();
        d.feed(&s[..s.len() - 7], &mut out);
        assert!(d.finish(&mut out));
        assert!(!out.iter().any(|e| matches!(e, Ok(StreamEvent::Done))));
        // Cut between frames before metadata: no partial, no Done.
        let first = ev("messageStart", json!({"role": "assistant"}));
        let got = run(&[&first]);
        assert!(!got.done);

        let mut bad = first.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let got = run(&[&bad]);
        assert_eq!(got.errors.len(), 1);
        assert_eq!(got.errors[0].kind, ErrorKind::InvalidResponse);
        let mut bad = first.clone();
        bad[9] ^= 1;
        let got = run(&[&bad, &s]);
        assert_eq!(got.errors.len(), 1);
        assert!(!got.done);
        assert!(got.errors[0].message.contains("prelude"));
    }

    #[test]
    fn in_stream_exceptions() {
        for (t, kind, payload) in [
            (
                "throttlingException",
                ErrorKind::RateLimited,
                json!({"message": "slow down"}),
            ),
            (
                "modelStreamErrorException",
                ErrorKind::Internal,
                json!({"message": "boom", "originalStatusCode": 500}),
            ),
            (
                "validationException",
                ErrorKind::BadRequest,
                json!({"message": "bad"}),
            ),
            (
                "validationException",
                ErrorKind::ContextWindowExceeded,
                json!({"message": "Input is too long for requested model."}),
            ),
            (
                "serviceUnavailableException",
                ErrorKind::ServiceUnavailable,
                json!({"message": "x"}),
            ),
            (
                "internalServerException",
                ErrorKind::Internal,
                json!({"message": "x"}),
            ),
        ] {
            let mut s = ev("messageStart", json!({"role": "assistant"}));
            s.extend(frame(
                &[
                    (":exception-type", t),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                payload.to_string().as_bytes(),
            ));
            let got = run(&[&s]);
            assert_eq!(got.errors.len(), 1, "{t}");
            assert_eq!(got.errors[0].kind, kind, "{t}");
            assert!(got.errors[0].message.starts_with("BedrockException - "));
            assert!(!got.done);
        }
    }

    #[test]
    fn error_types_kinds_and_retry() {
        let cases: &[(u16, &str, &str, ErrorKind, bool)] = &[
            (
                429,
                "ThrottlingException",
                "Too many requests",
                ErrorKind::RateLimited,
                true,
            ),
            (
                400,
                "ServiceQuotaExceededException",
                "quota",
                ErrorKind::QuotaExceeded,
                false,
            ),
            (
                400,
                "ValidationException",
                "Malformed input",
                ErrorKind::BadRequest,
                false,
            ),
            (
                400,
                "ValidationException",
                "Input is too long for requested model.",
                ErrorKind::ContextWindowExceeded,
                false,
            ),
            (
                400,
                "ValidationException",
                "prompt is too long: 300000 tokens > 200000 maximum",
                ErrorKind::ContextWindowExceeded,
                false,
            ),
            (
                403,
                "AccessDeniedException",
                "no access",
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                403,
                "UnrecognizedClientException",
                "invalid token",
                ErrorKind::Authentication,
                false,
            ),
            (
                403,
                "InvalidSignatureException",
                "sig",
                ErrorKind::Authentication,
                false,
            ),
            (
                403,
                "ExpiredTokenException",
                "expired",
                ErrorKind::Authentication,
                false,
            ),
            (
                404,
                "ResourceNotFoundException",
                "nope",
                ErrorKind::NotFound,
                false,
            ),
            (
                429,
                "ModelNotReadyException",
                "not ready",
                ErrorKind::ServiceUnavailable,
                true,
            ),
            (
                408,
                "ModelTimeoutException",
                "slow",
                ErrorKind::Timeout,
                true,
            ),
            (
                503,
                "ServiceUnavailableException",
                "down",
                ErrorKind::ServiceUnavailable,
                true,
            ),
            (
                500,
                "InternalServerException",
                "oops",
                ErrorKind::Internal,
                true,
            ),
            (
                424,
                "ModelErrorException",
                "model failed",
                ErrorKind::Internal,
                true,
            ),
        ];
        for (status, t, msg, kind, retry) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(&format!(
                    "{t}:http://internal.amazon.com/coral/com.amazon.bedrock/"
                ))
                .unwrap(),
            );
            let body = json!({"message": msg}).to_string();
            let e = parse_error(&r(), *status, &h, body.as_bytes());
            assert_eq!(e.kind, *kind, "{t}");
            assert_eq!(e.retryable(), *retry, "{t}");
            assert_eq!(e.status, Some(*status));
            assert_eq!(e.upstream_code.as_deref(), Some(*t));
            assert!(
                e.message.starts_with("BedrockException - "),
                "{}",
                e.message
            );
            assert!(e.message.contains(msg));
            // The same from the body's __type alone.
            let body =
                json!({"__type": format!("com.amazon.bedrock#{t}"), "Message": msg}).to_string();
            let e = parse_error(&r(), *status, &HeaderMap::new(), body.as_bytes());
            assert_eq!(e.kind, *kind, "{t} via __type");
        }
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert("retry-after", HeaderValue::from_static("2"));
        let e = parse_error(
            &r(),
            502,
            &h,
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        );
        assert_eq!(e.kind, ErrorKind::BadGateway);
        assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(2)));
        let e = parse_error(
            &r(),
            429,
            &HeaderMap::new(),
            b"{\"message\": \"Too many tokens\"}",
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        let e = parse_error(
            &r(),
            400,
            &HeaderMap::new(),
            b"{\"message\": \"secret-key-123456 leaked\"}",
        );
        assert!(!e.message.contains("secret-key-123456"));
    }

    #[test]
    fn embeddings() {
        let titan = route("amazon.titan-embed-text-v2:0", &ep()).unwrap();
        let mut q = EmbeddingRequest {
            model: "bedrock/amazon.titan-embed-text-v2:0".into(),
            input: json!(["hello world"]),
            ..Default::default()
        };
        q.params.insert("dimensions".into(), json!(256));
        let p = Bedrock
            .embedding_request(&titan, &q, &Extras::default())
            .unwrap();
        assert!(p
            .url
            .ends_with("/model/amazon.titan-embed-text-v2%3A0/invoke"));
        let b: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(
            b,
            json!({"inputText": "hello world", "dimensions": 256, "normalize": true})
        );
        q.input = json!(["a", "b"]);
        assert_eq!(
            Bedrock
                .embedding_request(&titan, &q, &Extras::default())
                .unwrap_err()
                .kind,
            ErrorKind::BadRequest
        );
        let e = parse_embedding(
            &titan,
            br#"{"embedding": [0.1, 0.2], "inputTextTokenCount": 2}"#,
        )
        .unwrap();
        assert_eq!(e.data[0]["embedding"], json!([0.1, 0.2]));
        assert_eq!(e.usage.unwrap().prompt_tokens, 2);

        let cohere = route("cohere.embed-english-v3", &ep()).unwrap();
        let p = Bedrock
            .embedding_request(&cohere, &q, &Extras::default())
            .unwrap();
        let b: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(b["texts"], json!(["a", "b"]));
        assert_eq!(b["input_type"], "search_document");
        let e = parse_embedding(&cohere, br#"{"embeddings": [[1.0], [2.0]], "id": "x"}"#).unwrap();
        assert_eq!(e.data.len(), 2);
        assert_eq!(e.data[1]["index"], 1);
        let e = parse_embedding(&cohere, br#"{"embeddings": {"float": [[1.0]]}}"#).unwrap();
        assert_eq!(e.data.len(), 1);
        let other = route("meta.llama3", &ep()).unwrap();
        assert_eq!(
            Bedrock
                .embedding_request(&other, &q, &Extras::default())
                .unwrap_err()
                .kind,
            ErrorKind::BadRequest
        );
    }
}
