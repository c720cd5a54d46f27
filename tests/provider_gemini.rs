//! The Gemini dialect end to end against the fake upstream: unary, streams (text, tool calls,
//! thoughts), images, usage with cached and reasoning tokens, every error type with its kind
//! and retry decision, in-stream errors, truncated streams, embeddings, unsupported params.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use std::time::Duration;

use _llmux::pipeline::{completion, completion_stream, embedding, CallOptions};
use _llmux::providers::{Endpoint, Secret};
use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
use _llmux::types::{ChatChunk, ChatRequest, EmbeddingRequest};
use _llmux::ErrorKind;
use serde_json::{json, Value};

const KEY: &str = "AIza-fake-gemini-key-0001";

/// `x-fake-*` headers of one case.
type Faults = &'static [(&'static str, &'static str)];

async fn fake() -> FakeHandle {
    spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn opts(f: &FakeHandle, key: &str, headers: &[(&str, &str)]) -> CallOptions {
    let mut extra: Vec<(String, String)> = vec![("x-fake-key".into(), key.into())];
    extra.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    CallOptions {
        endpoint: Endpoint {
            api_base: Some(format!("http://{}", f.addr)),
            api_key: Some(Secret::new(KEY)),
            ..Default::default()
        },
        extra_headers: extra,
        backoff: _llmux::retry::Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

fn req() -> ChatRequest {
    ChatRequest::new(
        "gemini/gemini-2.5-flash",
        vec![
            json!({"role": "system", "content": "Be nice."}),
            json!({"role": "user", "content": "hello there"}),
        ],
    )
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
        "required": ["location"], "additionalProperties": false}}}])
}

async fn collect(
    f: &FakeHandle,
    r: ChatRequest,
    o: &CallOptions,
) -> (Vec<ChatChunk>, Option<_llmux::Error>) {
    let _ = f;
    let (mut s, _) = completion_stream(r, o).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(i) => chunks.push(i.chunk),
            Err(e) => return (chunks, Some(e)),
        }
    }
    (chunks, None)
}

fn text_of(chunks: &[ChatChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.content.clone())
        .collect()
}

#[tokio::test]
async fn unary_text_usage_and_wire_shape() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("max_tokens".into(), json!(100));
    r.params.insert("temperature".into(), json!(0.3));
    r.params.insert("stop".into(), json!(["END"]));
    let done = completion(r, &opts(&f, "unary", &[])).await.unwrap();
    let c = &done.response;
    assert_eq!(c.choices[0].message.content.as_deref(), Some(DEFAULT_REPLY));
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(c.id.starts_with("fake-gem-"));
    assert_eq!(c.model, "gemini-2.5-flash");
    let u = c.usage.as_ref().unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (4, 20));
    assert_eq!(u.total_tokens, 24);
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(done.meta.provider, "gemini");

    let st = f.state().stats("unary");
    assert_eq!(
        st.last_path.as_deref(),
        Some("/v1beta/models/gemini-2.5-flash:generateContent")
    );
    assert_eq!(st.last_headers["x-goog-api-key"], KEY);
    assert!(!st.last_headers.contains_key("authorization"));
    let b = st.last_body.unwrap();
    assert_eq!(
        b["systemInstruction"],
        json!({"parts": [{"text": "Be nice."}]})
    );
    assert_eq!(
        b["contents"],
        json!([{"role": "user", "parts": [{"text": "hello there"}]}])
    );
    assert_eq!(b["generationConfig"]["maxOutputTokens"], 100);
    assert_eq!(b["generationConfig"]["stopSequences"], json!(["END"]));
}

#[tokio::test]
async fn max_tokens_candidates_cached_and_reasoning() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("max_completion_tokens".into(), json!(5));
    r.params.insert("n".into(), json!(2));
    r.params
        .insert("cached_content".into(), json!("cachedContents/abc"));
    r.params.insert("reasoning_effort".into(), json!("low"));
    let c = completion(r, &opts(&f, "caps", &[]))
        .await
        .unwrap()
        .response;
    assert_eq!(c.choices.len(), 2);
    assert_eq!(c.choices[1].index, 1);
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(
        c.choices[0].message.content.as_deref(),
        Some("Hello! This is the fake")
    );
    assert_eq!(
        c.choices[0].message.extra["reasoning_content"],
        "Considering the question."
    );
    let u = c.usage.unwrap();
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(u.extra["completion_tokens_details"]["reasoning_tokens"], 6);
    assert_eq!(u.completion_tokens, 10 + 6);
    let b = f.state().stats("caps").last_body.unwrap();
    assert_eq!(b["cachedContent"], "cachedContents/abc");
    assert_eq!(b["generationConfig"]["candidateCount"], 2);
}

#[tokio::test]
async fn stream_text_usage_hidden_or_shown() {
    let f = fake().await;
    let o = opts(&f, "stream", &[("x-fake-chunks", "5")]);
    let (chunks, err) = collect(&f, req(), &o).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&chunks), DEFAULT_REPLY);
    assert!(chunks.iter().all(|c| !c.choices.is_empty()));
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    let fins: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.finish_reason.clone())
        .collect();
    assert_eq!(fins, vec!["stop"]);
    assert_eq!(
        f.state().stats("stream").last_path.as_deref(),
        Some("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    );

    let mut r = req();
    r.params
        .insert("stream_options".into(), json!({"include_usage": true}));
    let (chunks, err) = collect(&f, r, &o).await;
    assert!(err.is_none());
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 20);
    // Gemini SSE has no stream_options: it must not be sent.
    assert!(f
        .state()
        .stats("stream")
        .last_body
        .unwrap()
        .get("stream_options")
        .is_none());
}

#[tokio::test]
async fn tool_calls_unary_forced_and_streamed_parallel() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("tools".into(), weather_tools());
    r.params.insert("tool_choice".into(), json!("required"));
    let c = completion(r.clone(), &opts(&f, "tools", &[]))
        .await
        .unwrap()
        .response;
    let ch = &c.choices[0];
    assert_eq!(ch.finish_reason.as_deref(), Some("tool_calls"));
    let calls = ch.message.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].function.name, "get_weather");
    let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(args["location"], "Paris");
    let b = f.state().stats("tools").last_body.unwrap();
    assert_eq!(b["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    let params = &b["tools"][0]["functionDeclarations"][0]["parameters"];
    assert!(params.get("additionalProperties").is_none());

    // The follow-up turn: the tool result goes back as a functionResponse.
    let mut follow = req();
    follow
        .messages
        .push(json!({"role": "assistant", "content": null,
        "tool_calls": [{"id": calls[0].id, "type": "function", "function": calls[0].function}]}));
    follow
        .messages
        .push(json!({"role": "tool", "tool_call_id": calls[0].id, "content": "{\"temp\": 21}"}));
    follow.params.insert("tools".into(), weather_tools());
    let c = completion(follow, &opts(&f, "tools2", &[]))
        .await
        .unwrap()
        .response;
    assert_eq!(c.choices[0].message.content.as_deref(), Some(DEFAULT_REPLY));
    let b = f.state().stats("tools2").last_body.unwrap();
    assert_eq!(
        b["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
            "response": {"content": {"temp": 21}}}}]})
    );

    for n in [1usize, 3] {
        let o = opts(&f, "tools-stream", &[("x-fake-tool-calls", &n.to_string())]);
        let (chunks, err) = collect(&f, r.clone(), &o).await;
        assert!(err.is_none());
        let mut seen = Vec::new();
        for c in &chunks {
            for ch in &c.choices {
                for tc in ch.delta.tool_calls.iter().flatten() {
                    let func = tc.function.as_ref().unwrap();
                    let args: Value =
                        serde_json::from_str(func.arguments.as_deref().unwrap()).unwrap();
                    seen.push((tc.index, tc.id.clone().unwrap(), args["location"].clone()));
                }
            }
        }
        assert_eq!(seen.len(), n);
        for (i, (index, id, _)) in seen.iter().enumerate() {
            assert_eq!(*index as usize, i);
            assert!(id.starts_with("call_"));
        }
        if n == 3 {
            assert_eq!(seen[2].2, "Lima");
        }
        let fin = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .find_map(|c| c.finish_reason.clone());
        assert_eq!(fin.as_deref(), Some("tool_calls"));
    }
}

#[tokio::test]
async fn images_are_inline_data() {
    let f = fake().await;
    let r = ChatRequest::new(
        "gemini/gemini-2.5-flash",
        vec![json!({"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]})],
    );
    completion(r, &opts(&f, "img", &[])).await.unwrap();
    let b = f.state().stats("img").last_body.unwrap();
    assert_eq!(
        b["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
}

async fn unary_err(f: &FakeHandle, key: &str, headers: &[(&str, &str)]) -> _llmux::Error {
    let mut o = opts(f, key, headers);
    o.num_retries = 2;
    completion(req(), &o).await.unwrap_err()
}

#[tokio::test]
async fn every_error_type_kind_and_retry() {
    let f = fake().await;
    let cases: &[(Faults, ErrorKind, u16)] = &[
        (&[("x-fake-status", "400")], ErrorKind::BadRequest, 400),
        (&[("x-fake-status", "401")], ErrorKind::Authentication, 401),
        (
            &[("x-fake-status", "403")],
            ErrorKind::PermissionDenied,
            403,
        ),
        (&[("x-fake-status", "404")], ErrorKind::NotFound, 404),
        (
            &[("x-fake-error-code", "per_day_quota")],
            ErrorKind::QuotaExceeded,
            429,
        ),
        (
            &[("x-fake-error-code", "api_key_invalid")],
            ErrorKind::Authentication,
            400,
        ),
        (
            &[("x-fake-error-code", "context_too_long")],
            ErrorKind::ContextWindowExceeded,
            400,
        ),
        (
            &[("x-fake-error-code", "credits_depleted")],
            ErrorKind::QuotaExceeded,
            402,
        ),
        (
            &[("x-fake-error-code", "safety")],
            ErrorKind::ContentPolicyViolation,
            400,
        ),
        (
            &[("x-fake-malformed", "1")],
            ErrorKind::InvalidResponse,
            502,
        ),
    ];
    for (i, (headers, kind, status)) in cases.iter().enumerate() {
        let key = format!("never-{i}");
        let e = unary_err(&f, &key, headers).await;
        assert_eq!(e.kind, *kind, "{headers:?}: {}", e.message);
        assert_eq!(e.status_code(), *status, "{headers:?}");
        assert!(e.message.starts_with("GeminiException - "), "{}", e.message);
        assert_eq!(e.provider.as_deref(), Some("gemini"));
        assert!(!e.message.contains(KEY));
        assert_eq!(f.state().stats(&key).requests, 1, "{headers:?} was retried");
    }
    let e = unary_err(&f, "safety-msg", &[("x-fake-error-code", "safety")]).await;
    assert!(e.message.contains("SAFETY"));
    // Retryable kinds are retried until the attempts run out.
    let retried: &[(Faults, ErrorKind)] = &[
        (&[("x-fake-status", "429")], ErrorKind::RateLimited),
        (&[("x-fake-status", "500")], ErrorKind::Internal),
        (&[("x-fake-status", "503")], ErrorKind::ServiceUnavailable),
        (&[("x-fake-status", "504")], ErrorKind::Timeout),
        (&[("x-fake-html", "1")], ErrorKind::BadGateway),
    ];
    for (i, (headers, kind)) in retried.iter().enumerate() {
        let key = format!("retried-{i}");
        let e = unary_err(&f, &key, headers).await;
        assert_eq!(e.kind, *kind, "{headers:?}: {}", e.message);
        assert_eq!(f.state().stats(&key).requests, 3, "{headers:?}");
        assert_eq!(e.attempts, 3);
    }
    let e = unary_err(
        &f,
        "html",
        &[("x-fake-html", "1"), ("x-fake-status", "502")],
    )
    .await;
    assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
}

#[tokio::test]
async fn per_minute_quota_retries_with_retry_delay() {
    let f = fake().await;
    let mut o = opts(
        &f,
        "per-minute",
        &[
            ("x-fake-error-code", "per_minute_quota"),
            ("x-fake-retry-after", "0.3"),
            ("x-fake-fail-times", "1"),
        ],
    );
    o.num_retries = 2;
    let started = std::time::Instant::now();
    let done = completion(req(), &o)
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(done.meta.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "hint not honoured"
    );
    // Without retries the error carries the hint from RetryInfo.
    let o = opts(
        &f,
        "per-minute-2",
        &[("x-fake-error-code", "per_minute_quota")],
    );
    let e = completion(req(), &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(e.upstream_code.as_deref(), Some("RESOURCE_EXHAUSTED"));
}

#[tokio::test]
async fn stream_errors_cut_and_safety() {
    let f = fake().await;
    let o = opts(&f, "s-err", &[("x-fake-stream-error-after", "3")]);
    let (chunks, err) = collect(&f, req(), &o).await;
    assert_eq!(text_of(&chunks), "Hello! This is ");
    let e = err.unwrap();
    assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
    assert!(e.message.contains("high demand"), "{}", e.message);

    let o = opts(&f, "s-cut", &[("x-fake-cut-after", "4")]);
    let (chunks, err) = collect(&f, req(), &o).await;
    assert_eq!(chunks.len(), 4);
    assert_eq!(err.unwrap().kind, ErrorKind::Connection);

    // A stream whose body ends cleanly but before any finishReason is still an error.
    let o = opts(&f, "s-cut-all", &[("x-fake-cut-after", "100")]);
    let (_, err) = collect(&f, req(), &o).await;
    assert_eq!(err.unwrap().kind, ErrorKind::Connection);

    let o = opts(&f, "s-safety", &[("x-fake-error-code", "safety")]);
    let (chunks, err) = collect(&f, req(), &o).await;
    assert!(chunks.is_empty());
    assert_eq!(err.unwrap().kind, ErrorKind::ContentPolicyViolation);

    // Stream faults before the first byte are retried like unary calls.
    let mut o = opts(
        &f,
        "s-retry",
        &[("x-fake-status", "503"), ("x-fake-fail-times", "1")],
    );
    o.num_retries = 1;
    let (chunks, err) = collect(&f, req(), &o).await;
    assert!(err.is_none());
    assert_eq!(text_of(&chunks), DEFAULT_REPLY);
    assert_eq!(f.state().stats("s-retry").requests, 2);
}

#[tokio::test]
async fn unsupported_params_and_drop() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("logit_bias".into(), json!({"1": 2}));
    let e = completion(r.clone(), &opts(&f, "unsup", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedParams);
    assert!(e.message.contains("logit_bias"));
    let mut o = opts(&f, "unsup", &[]);
    o.drop_params = true;
    completion(r, &o).await.unwrap();
    assert!(f
        .state()
        .stats("unsup")
        .last_body
        .unwrap()
        .get("logit_bias")
        .is_none());
}

#[tokio::test]
async fn embeddings_single_and_batch() {
    let f = fake().await;
    let mut r = EmbeddingRequest {
        model: "gemini/text-embedding-004".into(),
        input: json!("hello world"),
        ..Default::default()
    };
    let e = embedding(r.clone(), &opts(&f, "emb", &[]))
        .await
        .unwrap()
        .response;
    assert_eq!(e.data.len(), 1);
    assert_eq!(e.data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(e.data[0]["object"], "embedding");
    assert_eq!(e.model, "text-embedding-004");
    assert_eq!(
        f.state().stats("emb").last_path.as_deref(),
        Some("/v1beta/models/text-embedding-004:embedContent")
    );

    r.input = json!(["a b", "c", "d e f"]);
    r.params.insert("dimensions".into(), json!(4));
    let e = embedding(r.clone(), &opts(&f, "emb-b", &[]))
        .await
        .unwrap()
        .response;
    assert_eq!(e.data.len(), 3);
    assert_eq!(e.data[2]["index"], 2);
    assert_eq!(e.data[2]["embedding"].as_array().unwrap().len(), 4);
    let st = f.state().stats("emb-b");
    assert!(st.last_path.unwrap().ends_with(":batchEmbedContents"));
    let b = st.last_body.unwrap();
    assert_eq!(b["requests"][0]["outputDimensionality"], 4);
    // Deterministic: the same text gives the same vector.
    let again = embedding(r.clone(), &opts(&f, "emb-b", &[]))
        .await
        .unwrap()
        .response;
    assert_eq!(again.data[1], e.data[1]);

    // Asked as base64: the floats come back encoded (little-endian f32), and usage is
    // estimated from the input since Gemini reports none.
    r.params.insert("encoding_format".into(), json!("base64"));
    let b64 = embedding(r.clone(), &opts(&f, "emb-64", &[]))
        .await
        .unwrap()
        .response;
    let encoded = b64.data[1]["embedding"].as_str().expect("base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let floats: Vec<f64> = bytes
        .chunks(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let plain: Vec<f64> = e.data[1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), plain.len());
    assert!(floats.iter().zip(&plain).all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(b64.usage.unwrap().prompt_tokens > 0);
    r.params.insert("encoding_format".into(), json!("int8"));
    let err = embedding(r, &opts(&f, "emb-64", &[])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedParams);
    let err = embedding(
        EmbeddingRequest {
            model: "gemini/text-embedding-004".into(),
            input: json!("x"),
            ..Default::default()
        },
        &opts(&f, "emb-err", &[("x-fake-status", "404")]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}
