//! The fake upstream's Gemini API: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (SSE with `?alt=sse`), `:embedContent`, `:batchEmbedContents` and
//! Imagen's `:predict`
//! (also under `/v1/`), answering in Gemini's own camelCase JSON, validated against the
//! `google-genai` SDK's pydantic types by the Python tests.
//!
//! Like the real API it refuses request fields it does not know (an OpenAI name sent by
//! mistake is a 400 `INVALID_ARGUMENT`), and `batchEmbedContents` requests must name the
//! model of the URL. Token accounting: prompt tokens = words of every text part; completion
//! tokens = words of the reply (or of the function-call arguments).
//!
//! Controls (the shared `x-fake-*` headers): `status` → a `google.rpc.Status` body with the
//! status string of that code; `error-code` ∈ `per_day_quota` (429, `QuotaFailure` with a
//! per-day quota id, no `RetryInfo`), `per_minute_quota` (429, per-minute `QuotaFailure` and
//! `RetryInfo.retryDelay` from `x-fake-retry-after` or `2s`), `safety` (200 with
//! `promptFeedback.blockReason: SAFETY` and no candidates), `api_key_invalid` (400 with
//! `ErrorInfo` reason `API_KEY_INVALID`), `context_too_long` (400, input token count),
//! `credits_depleted` (402); `html`, `malformed`, `content`, `chunks`, `chunk-delay-ms`,
//! `tool-calls: N` (also one call when tools are given with `functionCallingConfig.mode: ANY`),
//! `cut-after: N` (body ends with an error after N fragments), `stream-error-after: N` (an SSE
//! `{"error": ...}` 503 `UNAVAILABLE` event after N fragments, then the body ends, as Gemini
//! does when it sheds load mid-stream). A request with `cachedContent` reports half its prompt
//! as cached; `thinkingConfig.includeThoughts` adds a thought part.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::fake_upstream::{
    json_response, lossy, response, word_count, Controls, FakeBody, Item, DEFAULT_REPLY, SSE,
    TOOL_LOCATIONS,
};
use super::Ctx;

const OPS: [&str; 5] = [
    ":generateContent",
    ":streamGenerateContent",
    ":embedContent",
    ":batchEmbedContents",
    ":predict",
];

const TOP_FIELDS: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
    "labels",
    "model",
    "serviceTier",
    "service_tier",
];

const GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let rest = rest.strip_prefix("models/").unwrap_or(rest);
    let op = OPS.iter().find(|op| rest.ends_with(*op))?;
    let model = &rest[..rest.len() - op.len()];
    (!model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    .then_some((model, &op[1..]))
}

pub(crate) fn serves(method: &Method, path: &str) -> bool {
    method == Method::POST && split_path(path).is_some()
}

fn rpc_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 => "FAILED_PRECONDITION",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn default_message(code: u16, model: &str) -> String {
    match code {
        400 => "Invalid JSON payload received. (x-fake-status: 400)".into(),
        401 => "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                login cookie or other valid authentication credential."
            .into(),
        402 => "Your prepayment credits are depleted. Please go to AI Studio at \
                https://ai.studio/projects to manage your project and billing."
            .into(),
        403 => "Method doesn't allow unregistered callers (callers without established identity). \
                Please use API Key or other form of API consumer identity to call this API."
            .into(),
        404 => format!(
            "models/{model} is not found for API version v1beta, or is not supported for \
             generateContent."
        ),
        429 => "Resource has been exhausted (e.g. check quota).".into(),
        503 => "The model is overloaded. Please try again later.".into(),
        504 => "Deadline expired before operation could complete.".into(),
        500 => "An internal error has occurred. Please retry or report in \
                https://developers.generativeai.google/guide/troubleshooting"
            .into(),
        s => format!("Fake upstream error (status {s})."),
    }
}

fn status_body(code: u16, message: &str, details: Vec<Value>) -> Value {
    let mut e = json!({"code": code, "message": message, "status": rpc_status(code)});
    if !details.is_empty() {
        e["details"] = Value::Array(details);
    }
    json!({ "error": e })
}

fn status_response(code: u16, body: &Value) -> Response<FakeBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, body.to_string().into_bytes())
}

fn quota_failure(quota_id: &str, metric: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{
            "quotaMetric": format!("generativelanguage.googleapis.com/{metric}"),
            "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "250",
        }],
    })
}

fn retry_info(c: &Controls) -> Value {
    let delay = c
        .retry_after
        .as_ref()
        .map(|v| format!("{}s", lossy(v).trim()))
        .unwrap_or_else(|| "2s".to_owned());
    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
}

/// The error answer the controls ask for, or `None` for a normal answer (a `safety` block
/// is a normal 200 answer, built by the caller).
fn fault(c: &Controls, model: &str, stream: bool) -> Option<Response<FakeBody>> {
    let code_header = c.error_code.as_ref().map(lossy);
    let code = code_header.as_deref();
    let error_status = c.status.filter(|s| !(200..300).contains(s));
    let message_header = c.error_message.as_ref().map(lossy);
    let mut resp = if c.html {
        let status = error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let title = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let page = format!(
            "<html><head><title>{title}</title></head><body><h1>{title}</h1><hr>GFE/2.0</body></html>"
        );
        response(status, "text/html", FakeBody::once(Bytes::from(page)))
    } else if c.malformed && error_status.is_none() && code.is_none() {
        let broken: &'static [u8] = br#"{"candidates": [{"content": {"parts": ["#;
        if stream {
            let mut b = b"data: ".to_vec();
            b.extend_from_slice(broken);
            b.extend_from_slice(b"\r\n\r\n");
            response(StatusCode::OK, SSE, FakeBody::once(Bytes::from(b)))
        } else {
            json_response(StatusCode::OK, broken.to_vec())
        }
    } else {
        let (status, message, details): (u16, String, Vec<Value>) = match code {
            Some("per_day_quota") => (
                429,
                "You exceeded your current quota, please check your plan and billing details. \
                 Quota exceeded for metric: generativelanguage.googleapis.com/\
                 generate_content_free_tier_requests, limit: 250"
                    .into(),
                vec![quota_failure(
                    "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                    "generate_content_free_tier_requests",
                )],
            ),
            Some("per_minute_quota") => (
                429,
                "You exceeded your current quota, please check your plan and billing details. \
                 Quota exceeded for metric: generativelanguage.googleapis.com/\
                 generate_content_free_tier_requests, limit: 10"
                    .into(),
                vec![
                    quota_failure(
                        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "generate_content_free_tier_requests",
                    ),
                    json!({"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
                    retry_info(c),
                ],
            ),
            Some("api_key_invalid") => (
                400,
                "API key not valid. Please pass a valid API key.".into(),
                vec![
                    json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"}}),
                    json!({"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}),
                ],
            ),
            Some("context_too_long") => (
                400,
                "The input token count (1200000) exceeds the maximum number of tokens allowed \
                 (1048576)."
                    .into(),
                Vec::new(),
            ),
            Some("credits_depleted") => (402, default_message(402, model), Vec::new()),
            Some("safety") if error_status.is_none() => return None,
            _ => match error_status {
                Some(s) => {
                    let details = if s == 429 && c.retry_after.is_some() {
                        vec![retry_info(c)]
                    } else {
                        Vec::new()
                    };
                    (s, default_message(s, model), details)
                }
                // `x-fake-fail-times` alone, or an unknown code: a server error.
                None if code.is_some()
                    || (c.fail_times.is_some()
                        && c.cut_after.is_none()
                        && c.stream_error_after.is_none()) =>
                {
                    (500, default_message(500, model), Vec::new())
                }
                None => return None,
            },
        };
        let status = error_status.unwrap_or(status);
        let message = message_header.as_deref().unwrap_or(&message);
        status_response(status, &status_body(status, message, details))
    };
    let headers = resp.headers_mut();
    if let Some(v) = &c.retry_after_ms {
        headers.insert(HeaderName::from_static("retry-after-ms"), v.clone());
    }
    if let Some(v) = &c.retry_after {
        headers.insert(RETRY_AFTER, v.clone());
    }
    Some(resp)
}

fn invalid_argument(message: &str) -> Response<FakeBody> {
    status_response(400, &status_body(400, message, Vec::new()))
}

fn words_of_parts(content: &Value) -> u64 {
    content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .map(word_count)
        .sum()
}

fn pick<'a>(o: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel).or_else(|| o.get(snake))
}

/// Unknown fields are refused like the real API does.
fn check_fields(req: &Value) -> Result<(), String> {
    let Value::Object(o) = req else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    for k in o.keys() {
        if !TOP_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
            ));
        }
    }
    if let Some(Value::Object(gc)) = pick(req, "generationConfig", "generation_config") {
        for k in gc.keys() {
            let camel = super_camel(k);
            if !GENERATION_FIELDS.contains(&camel.as_str()) {
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{k}\" at 'generation_config': \
                     Cannot find field."
                ));
            }
        }
    }
    let contents = req.get("contents").and_then(Value::as_array);
    match contents {
        Some(c) if !c.is_empty() => {}
        _ => return Err("* GenerateContentRequest.contents: contents is not specified\n".into()),
    }
    for (i, c) in contents.into_iter().flatten().enumerate() {
        match c.get("role").and_then(Value::as_str) {
            None | Some("user" | "model" | "function") => {}
            Some(r) => {
                return Err(format!(
                    "Please use a valid role: user, model. (contents[{i}] has role '{r}')"
                ))
            }
        }
        let empty = c
            .get("parts")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if empty {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
    }
    Ok(())
}

fn super_camel(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut up = false;
    for ch in k.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn truncate(text: &str, limit: Option<u64>) -> (String, bool) {
    match limit {
        Some(n) if word_count(text) > n => {
            let kept: Vec<&str> = text.split_whitespace().take(n as usize).collect();
            (kept.join(" "), true)
        }
        _ => (text.to_owned(), false),
    }
}

/// `text` in `k` pieces (default: one per word, spaces kept), concatenating to `text`.
fn pieces(text: &str, k: Option<usize>) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for (i, w) in text.split_inclusive(' ').enumerate() {
        if i == 0 || !w.trim().is_empty() {
            words.push(w.to_owned());
        } else if let Some(last) = words.last_mut() {
            last.push_str(w);
        }
    }
    let Some(k) = k else {
        return words;
    };
    let chars: Vec<char> = text.chars().collect();
    let k = k.clamp(1, chars.len().max(1));
    (0..k)
        .map(|i| {
            let a = i * chars.len() / k;
            let b = (i + 1) * chars.len() / k;
            chars[a..b].iter().collect()
        })
        .collect()
}

struct Call {
    name: String,
    args: Value,
}

fn usage(prompt: u64, completion: u64, thoughts: u64, cached: u64, last: bool) -> Value {
    let mut u = json!({
        "promptTokenCount": prompt,
        "totalTokenCount": prompt + if last { completion + thoughts } else { 0 },
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if last {
        u["candidatesTokenCount"] = json!(completion);
        if thoughts > 0 {
            u["thoughtsTokenCount"] = json!(thoughts);
        }
    }
    if cached > 0 {
        u["cachedContentTokenCount"] = json!(cached);
        u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": cached}]);
    }
    u
}

fn safety_ratings() -> Value {
    json!([
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"}
    ])
}

fn sse(v: &Value) -> Bytes {
    let mut b = b"data: ".to_vec();
    b.extend_from_slice(v.to_string().as_bytes());
    b.extend_from_slice(b"\r\n\r\n");
    Bytes::from(b)
}

pub(crate) fn respond(ctx: &Ctx<'_>) -> Response<FakeBody> {
    if ctx.method != Method::POST {
        let body = status_body(405, "Method not allowed.", Vec::new());
        return status_response(405, &body);
    }
    let Some((model, op)) = split_path(ctx.uri.path()) else {
        return status_response(404, &status_body(404, "Not found", Vec::new()));
    };
    let stream = op == "streamGenerateContent";
    let c = ctx.controls;
    if ctx.failing {
        if let Some(resp) = fault(c, model, stream) {
            return resp;
        }
    }
    let req: Value = match serde_json::from_slice(ctx.body) {
        Ok(v) => v,
        Err(e) => {
            return invalid_argument(&format!(
                "Invalid JSON payload received. Unexpected token. ({e})"
            ))
        }
    };
    match op {
        "embedContent" | "batchEmbedContents" => embeddings(model, op, &req),
        "predict" => imagen(&req),
        _ => generate(ctx, model, stream, &req),
    }
}

/// Imagen's `:predict`: `sampleCount` 1x1 PNGs for the prompt of the first instance.
fn imagen(req: &Value) -> Response<FakeBody> {
    let prompt = req
        .pointer("/instances/0/prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.trim().is_empty());
    if prompt.is_none() {
        return invalid_argument("instances[0].prompt is required.");
    }
    let n = req
        .pointer("/parameters/sampleCount")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if !(1..=4).contains(&n) {
        return invalid_argument("sampleCount must be between 1 and 4.");
    }
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        super::fake_upstream::PIXEL_PNG,
    );
    let preds: Vec<Value> = (0..n)
        .map(|_| json!({"bytesBase64Encoded": b64, "mimeType": "image/png"}))
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&json!({"predictions": preds})).unwrap_or_default(),
    )
}

fn generate(ctx: &Ctx<'_>, model: &str, stream: bool, req: &Value) -> Response<FakeBody> {
    let c = ctx.controls;
    if let Err(m) = check_fields(req) {
        return invalid_argument(&m);
    }
    let id = format!("fake-gem-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let mut prompt: u64 = req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(words_of_parts)
        .sum();
    if let Some(s) = pick(req, "systemInstruction", "system_instruction") {
        prompt += words_of_parts(s);
    }
    let cached = if pick(req, "cachedContent", "cached_content").is_some() {
        prompt / 2
    } else {
        0
    };
    let gc = pick(req, "generationConfig", "generation_config")
        .cloned()
        .unwrap_or(Value::Null);
    let n = gc
        .get("candidateCount")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8);
    let limit = gc.get("maxOutputTokens").and_then(Value::as_u64);
    let thoughts = gc
        .get("thinkingConfig")
        .and_then(|t| t.get("includeThoughts"))
        .and_then(Value::as_bool)
        == Some(true);
    let thought_text = "Considering the question.";

    if ctx.failing
        && c.error_code
            .as_ref()
            .is_some_and(|v| v.as_bytes() == b"safety")
    {
        let blocked = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]},
            "usageMetadata": usage(prompt, 0, 0, 0, false),
            "modelVersion": model,
            "responseId": id,
        });
        return if stream {
            response(StatusCode::OK, SSE, FakeBody::once(sse(&blocked)))
        } else {
            json_response(StatusCode::OK, blocked.to_string().into_bytes())
        };
    }

    // Function calls: asked by header, or forced by the tool config.
    let decls: Vec<&str> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| pick(t, "functionDeclarations", "function_declarations"))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .collect();
    let fcc = pick(req, "toolConfig", "tool_config")
        .and_then(|t| pick(t, "functionCallingConfig", "function_calling_config"));
    let forced =
        !decls.is_empty() && fcc.and_then(|f| f.get("mode")).and_then(Value::as_str) == Some("ANY");
    let allowed = fcc
        .and_then(|f| pick(f, "allowedFunctionNames", "allowed_function_names"))
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let count = if c.tool_calls > 0 {
        c.tool_calls.min(64)
    } else {
        usize::from(forced)
    };
    let name = allowed
        .or_else(|| decls.first().copied())
        .unwrap_or("get_weather");
    let calls: Vec<Call> = (0..count)
        .map(|i| Call {
            name: name.to_owned(),
            args: json!({"location": TOOL_LOCATIONS[i % TOOL_LOCATIONS.len()], "unit": "celsius"}),
        })
        .collect();

    let text_header = c.content.as_ref().map(lossy);
    let text = text_header.as_deref().unwrap_or(DEFAULT_REPLY);
    let (text, truncated) = truncate(text, limit);
    let finish = if truncated { "MAX_TOKENS" } else { "STOP" };
    let per_candidate = if calls.is_empty() {
        word_count(&text)
    } else {
        calls
            .iter()
            .map(|c| word_count(&c.args.to_string().replace([',', ':'], " ")))
            .sum()
    };
    let completion = per_candidate * n;
    let thought_tokens = if thoughts {
        word_count(thought_text) * n
    } else {
        0
    };

    if !stream {
        let candidates: Vec<Value> = (0..n)
            .map(|i| {
                let mut parts = Vec::new();
                if thoughts {
                    parts.push(json!({"text": thought_text, "thought": true}));
                }
                if calls.is_empty() {
                    parts.push(json!({ "text": text }));
                } else {
                    for call in &calls {
                        parts.push(json!({"functionCall": {"name": call.name, "args": call.args}}));
                    }
                }
                json!({
                    "content": {"parts": parts, "role": "model"},
                    "finishReason": finish,
                    "index": i,
                    "safetyRatings": safety_ratings(),
                })
            })
            .collect();
        let body = json!({
            "candidates": candidates,
            "usageMetadata": usage(prompt, completion, thought_tokens, cached, true),
            "modelVersion": model,
            "responseId": id,
        });
        return json_response(StatusCode::OK, body.to_string().into_bytes());
    }

    // Streams: fragments of every candidate; the last carries finishReason and full usage.
    let mut fragments: Vec<Vec<Value>> = Vec::new();
    if thoughts {
        fragments.push(vec![json!({"text": thought_text, "thought": true})]);
    }
    if calls.is_empty() {
        for p in pieces(&text, c.chunks) {
            fragments.push(vec![json!({ "text": p })]);
        }
    } else {
        for call in &calls {
            fragments.push(vec![
                json!({"functionCall": {"name": call.name, "args": call.args}}),
            ]);
        }
    }
    if fragments.is_empty() {
        fragments.push(vec![json!({"text": ""})]);
    }
    let total = fragments.len();
    let fault_after = if ctx.failing {
        c.cut_after
            .map(|k| (k, true))
            .or(c.stream_error_after.map(|k| (k, false)))
    } else {
        None
    };
    let mut items = Vec::with_capacity(total + 1);
    for (k, parts) in fragments.into_iter().enumerate() {
        if let Some((after, cut)) = fault_after {
            if k == after {
                items.push(stream_fault(cut));
                break;
            }
        }
        let last = k + 1 == total;
        let candidates: Vec<Value> = (0..n)
            .map(|i| {
                let mut cand = json!({
                    "content": {"parts": parts, "role": "model"},
                    "index": i,
                });
                if last {
                    cand["finishReason"] = json!(finish);
                    cand["safetyRatings"] = safety_ratings();
                }
                cand
            })
            .collect();
        let frag = json!({
            "candidates": candidates,
            "usageMetadata": usage(prompt, completion, thought_tokens, cached, last),
            "modelVersion": model,
            "responseId": id,
        });
        items.push(Item::Delayed(sse(&frag)));
        if last {
            if let Some((after, cut)) = fault_after {
                if after >= total {
                    // Asked after more fragments than there are: fire it instead of the end.
                    items.pop();
                    items.push(stream_fault(cut));
                }
            }
        }
    }
    response(
        StatusCode::OK,
        SSE,
        FakeBody::events(items, Duration::from_millis(c.chunk_delay_ms)),
    )
}

fn stream_fault(cut: bool) -> Item {
    if cut {
        Item::Cut
    } else {
        let e = status_body(
            503,
            "This model is currently experiencing high demand. Spikes in demand are usually \
             temporary. Please try again later.",
            Vec::new(),
        );
        Item::Data(sse(&e))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn vector(text: &str, dims: usize) -> Vec<f64> {
    let mut h = FNV_OFFSET;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut v: Vec<f64> = (0..dims)
        .map(|_| {
            h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = h;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f64) / 16_777_216.0 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|f| f * f).sum::<f64>().sqrt();
    if norm > 0.0 {
        for f in &mut v {
            *f = ((*f / norm) * 1e6).round() / 1e6;
        }
    }
    v
}

fn embed_one(r: &Value) -> Result<Value, String> {
    let content = r.get("content").ok_or("content is not specified")?;
    let text: Vec<&str> = content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    if text.is_empty() {
        return Err("* EmbedContentRequest.content: contents is not specified".into());
    }
    let dims = match pick(r, "outputDimensionality", "output_dimensionality") {
        None => 8,
        Some(d) => match d.as_u64() {
            Some(d) if (1..=3072).contains(&d) => d as usize,
            _ => return Err("outputDimensionality must be between 1 and 3072".into()),
        },
    };
    Ok(json!({ "values": vector(&text.join(" "), dims) }))
}

fn embeddings(model: &str, op: &str, req: &Value) -> Response<FakeBody> {
    let result = if op == "embedContent" {
        embed_one(req).map(|e| json!({ "embedding": e }))
    } else {
        let requests = req.get("requests").and_then(Value::as_array);
        match requests {
            None => Err("* BatchEmbedContentsRequest.requests: requests is not specified".into()),
            Some(rs) => rs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let m = r.get("model").and_then(Value::as_str).unwrap_or("");
                    if m.strip_prefix("models/") != Some(model) {
                        return Err(format!(
                            "* BatchEmbedContentsRequest.requests[{i}].model: model is not \
                             the same as the batch request model (models/{model})"
                        ));
                    }
                    embed_one(r)
                })
                .collect::<Result<Vec<Value>, String>>()
                .map(|es| json!({ "embeddings": es })),
        }
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, body.to_string().into_bytes()),
        Err(m) => invalid_argument(&m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(serves(
            &Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ));
        assert!(serves(
            &Method::POST,
            "/v1/models/models/gemini-1.5-pro-002:streamGenerateContent"
        ));
        assert!(serves(
            &Method::POST,
            "/v1beta/models/text-embedding-004:batchEmbedContents"
        ));
        assert!(!serves(
            &Method::GET,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ));
        assert!(!serves(&Method::POST, "/v1/models/gpt-4o"));
        assert!(!serves(&Method::POST, "/v1/chat/completions"));
        assert_eq!(
            split_path("/v1beta/models/gemini-2.5-flash:embedContent"),
            Some(("gemini-2.5-flash", "embedContent"))
        );
    }

    #[test]
    fn pieces_concatenate() {
        for k in [None, Some(1), Some(3), Some(50), Some(500)] {
            assert_eq!(pieces(DEFAULT_REPLY, k).concat(), DEFAULT_REPLY, "{k:?}");
        }
        assert_eq!(pieces(DEFAULT_REPLY, None).len(), 20);
        assert_eq!(pieces(DEFAULT_REPLY, Some(3)).len(), 3);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            check_fields(&json!({"contents":[{"role":"user","parts":[{"text":"x"}]}]})).is_ok()
        );
        assert!(check_fields(
            &json!({"contents":[{"role":"user","parts":[{"text":"x"}]}],"max_tokens":3})
        )
        .is_err());
        assert!(
            check_fields(&json!({"contents":[{"role":"user","parts":[{"text":"x"}]}],
            "generationConfig":{"max_output_tokens":3}}))
            .is_ok()
        );
        assert!(
            check_fields(&json!({"contents":[{"role":"user","parts":[{"text":"x"}]}],
            "generationConfig":{"top_logprobs":3}}))
            .is_err()
        );
        assert!(check_fields(&json!({"contents":[]})).is_err());
        assert!(
            check_fields(&json!({"contents":[{"role":"assistant","parts":[{"text":"x"}]}]}))
                .is_err()
        );
    }
}
