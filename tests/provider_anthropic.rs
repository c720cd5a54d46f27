//! The Anthropic dialect end to end against the fake upstream, without Python: what we send
//! (path, headers, Messages body), unary and streamed answers (text, single and parallel tool
//! calls with arguments in pieces), images, usage, every error type with its kind and retry
//! decision, the in-stream `event: error`, truncated streams.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use _llmux::pipeline::{completion, completion_stream, embedding, CallOptions};
use _llmux::providers::{Endpoint, Secret};
use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
use _llmux::types::{ChatChunk, ChatRequest, EmbeddingRequest};
use _llmux::{Error, ErrorKind};
use serde_json::{json, Value};

async fn fake() -> FakeHandle {
    spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn opts(fake: &FakeHandle, headers: &[(&str, &str)]) -> CallOptions {
    CallOptions {
        endpoint: Endpoint {
            api_base: Some(format!("http://{}", fake.addr)),
            api_key: Some(Secret::new("sk-ant-test-123456")),
            ..Default::default()
        },
        extra_headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn req() -> ChatRequest {
    ChatRequest::new(
        "anthropic/claude-sonnet-4-5",
        vec![json!({"role": "user", "content": "hello there"})],
    )
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Current weather", "parameters": {"type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"]}}}])
}

/// Every chunk of a stream, or the error that ended it.
async fn drain(r: ChatRequest, o: &CallOptions) -> (Vec<ChatChunk>, Option<Error>) {
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

#[tokio::test]
async fn unary_sends_messages_shape_and_translates_back() {
    let f = fake().await;
    let mut r = ChatRequest::new(
        "anthropic/claude-sonnet-4-5",
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hello there"}),
        ],
    );
    r.params.insert("temperature".into(), json!(0.3));
    r.params.insert("stop".into(), json!("END"));
    r.params.insert("user".into(), json!("user-7"));
    let done = completion(r, &opts(&f, &[("x-fake-key", "u1")]))
        .await
        .unwrap();
    let c = &done.response;
    assert!(c.id.starts_with("msg_fake_"), "{}", c.id);
    assert_eq!(c.model, "claude-sonnet-4-5");
    assert_eq!(c.choices[0].message.content.as_deref(), Some(DEFAULT_REPLY));
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
    let u = c.usage.as_ref().unwrap();
    assert_eq!(u.completion_tokens, 20);
    assert_eq!(u.prompt_tokens, 2 + 3 + 2);
    assert_eq!(u.total_tokens, u.prompt_tokens + 20);
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u.extra["cache_read_input_tokens"], 0);
    assert_eq!(done.meta.provider, "anthropic");

    let st = f.stats("u1");
    assert_eq!(st.last_path.as_deref(), Some("/v1/messages"));
    assert_eq!(st.last_headers["x-api-key"], "sk-ant-test-123456");
    assert_eq!(st.last_headers["anthropic-version"], "2023-06-01");
    assert!(!st.last_headers.contains_key("authorization"));
    let b = st.last_body.unwrap();
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["system"], "Be brief.");
    assert_eq!(b["max_tokens"], 4096);
    assert_eq!(b["stop_sequences"], json!(["END"]));
    assert_eq!(b["metadata"]["user_id"], "user-7");
    assert_eq!(b["temperature"], 0.3);
    assert_eq!(b["messages"][0]["role"], "user");
}

#[tokio::test]
async fn base_with_v1_and_max_tokens_truncation() {
    let f = fake().await;
    let mut o = opts(&f, &[("x-fake-key", "t1")]);
    o.endpoint.api_base = Some(f.base_url());
    let mut r = req();
    r.params.insert("max_tokens".into(), json!(5));
    let done = completion(r, &o).await.unwrap();
    assert_eq!(
        done.response.choices[0].finish_reason.as_deref(),
        Some("length")
    );
    assert_eq!(
        done.response.choices[0].message.content.as_deref(),
        Some("Hello! This is the fake")
    );
    assert_eq!(f.stats("t1").last_path.as_deref(), Some("/v1/messages"));
}

#[tokio::test]
async fn unary_tool_calls_single_forced_and_parallel() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("tools".into(), weather_tools());
    r.params.insert(
        "tool_choice".into(),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    );
    let done = completion(r.clone(), &opts(&f, &[("x-fake-key", "tc")]))
        .await
        .unwrap();
    let m = &done.response.choices[0].message;
    assert!(m.content.is_none());
    let calls = m.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].function.name, "get_weather");
    assert!(calls[0].id.starts_with("toolu_fake_"));
    let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(args["unit"], "celsius");
    assert_eq!(
        done.response.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    let b = f.stats("tc").last_body.unwrap();
    assert_eq!(b["tools"][0]["name"], "get_weather");
    assert_eq!(
        b["tools"][0]["input_schema"]["required"],
        json!(["location"])
    );
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );

    r.params.remove("tool_choice");
    let done = completion(
        r,
        &opts(
            &f,
            &[
                ("x-fake-tool-calls", "3"),
                ("x-fake-content", "Checking now."),
            ],
        ),
    )
    .await
    .unwrap();
    let m = &done.response.choices[0].message;
    assert_eq!(m.content.as_deref(), Some("Checking now."));
    let calls = m.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 3);
    let locs: Vec<String> = calls
        .iter()
        .map(|c| {
            let v: Value = serde_json::from_str(&c.function.arguments).unwrap();
            v["location"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(locs, ["Paris", "Tokyo", "Lima"]);
}

#[tokio::test]
async fn tool_history_round_trip_is_accepted() {
    let f = fake().await;
    let r = ChatRequest::new(
        "anthropic/claude-sonnet-4-5",
        vec![
            json!({"role": "user", "content": "weather in Paris and Oslo?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Oslo\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"}),
            json!({"role": "tool", "tool_call_id": "toolu_2", "content": "3C snow"}),
        ],
    );
    let done = completion(r, &opts(&f, &[("x-fake-key", "hist")]))
        .await
        .unwrap();
    assert_eq!(
        done.response.choices[0].message.content.as_deref(),
        Some(DEFAULT_REPLY)
    );
    let b = f.stats("hist").last_body.unwrap();
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["content"][1]["input"]["location"], "Oslo");
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][1]["tool_use_id"], "toolu_2");
}

#[tokio::test]
async fn images_are_sent_as_blocks() {
    let f = fake().await;
    let r = ChatRequest::new(
        "anthropic/claude-sonnet-4-5",
        vec![json!({"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.jpg"}},
        ]})],
    );
    completion(r, &opts(&f, &[("x-fake-key", "img")]))
        .await
        .unwrap();
    let b = f.stats("img").last_body.unwrap();
    let blocks = &b["messages"][0]["content"];
    assert_eq!(
        blocks[1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    assert_eq!(
        blocks[2]["source"],
        json!({"type": "url", "url": "https://example.invalid/cat.jpg"})
    );
}

#[tokio::test]
async fn stream_text_shares_id_and_reports_usage() {
    let f = fake().await;
    let mut r = req();
    r.params
        .insert("stream_options".into(), json!({"include_usage": true}));
    let (chunks, err) = drain(r, &opts(&f, &[("x-fake-key", "s1")])).await;
    assert!(err.is_none());
    let id = &chunks[0].id;
    assert!(id.starts_with("msg_fake_"));
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    let created = chunks[0].created;
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(&c.id, id);
        assert_eq!(c.created, created);
        if let Some(ch) = c.choices.first() {
            text.push_str(ch.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(ch.finish_reason.clone());
        }
    }
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(finish.as_deref(), Some("stop"));
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 20);
    assert_eq!(f.stats("s1").last_body.unwrap()["stream"], true);

    // Without include_usage the usage chunk is hidden but still known.
    let (mut s, _) = completion_stream(req(), &opts(&f, &[("x-fake-chunks", "3")]))
        .await
        .unwrap();
    let mut n = 0;
    let mut hidden = None;
    while let Some(item) = s.next().await {
        let item = item.unwrap();
        assert!(!item.chunk.choices.is_empty());
        hidden = hidden.or(item.hidden_usage);
        n += 1;
    }
    assert_eq!(n, 1 + 3 + 1);
    assert_eq!(hidden.unwrap().completion_tokens, 20);
}

#[tokio::test]
async fn stream_tool_calls_in_pieces_single_and_parallel() {
    let f = fake().await;
    for count in [1usize, 3] {
        let mut r = req();
        r.params.insert("tools".into(), weather_tools());
        let n = count.to_string();
        let (chunks, err) = drain(r, &opts(&f, &[("x-fake-tool-calls", &n)])).await;
        assert!(err.is_none());
        let mut args = vec![String::new(); count];
        let mut ids = vec![None; count];
        let mut pieces = vec![0; count];
        let mut finish = None;
        for c in &chunks {
            let Some(ch) = c.choices.first() else {
                continue;
            };
            finish = finish.or(ch.finish_reason.clone());
            for tc in ch.delta.tool_calls.iter().flatten() {
                let i = tc.index as usize;
                if let Some(id) = &tc.id {
                    assert!(ids[i].is_none(), "tool {i} started twice");
                    ids[i] = Some(id.clone());
                    assert_eq!(
                        tc.function.as_ref().unwrap().name.as_deref(),
                        Some("get_weather")
                    );
                }
                let a = tc
                    .function
                    .as_ref()
                    .unwrap()
                    .arguments
                    .as_deref()
                    .unwrap_or("");
                if !a.is_empty() {
                    pieces[i] += 1;
                }
                args[i].push_str(a);
            }
        }
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        for i in 0..count {
            assert!(ids[i].as_deref().unwrap().starts_with("toolu_fake_"));
            assert!(pieces[i] > 1, "arguments of tool {i} came in one piece");
            let v: Value = serde_json::from_str(&args[i]).unwrap();
            assert_eq!(v["unit"], "celsius");
        }
    }
}

/// `x-fake-*` headers of one case.
type Faults = &'static [(&'static str, &'static str)];

#[tokio::test]
async fn every_error_type_maps_to_its_kind() {
    let f = fake().await;
    let cases: &[(Faults, ErrorKind, u16)] = &[
        (&[("x-fake-status", "400")], ErrorKind::BadRequest, 400),
        (
            &[("x-fake-error-code", "prompt_too_long")],
            ErrorKind::ContextWindowExceeded,
            400,
        ),
        (
            &[("x-fake-error-code", "content_filter")],
            ErrorKind::ContentPolicyViolation,
            400,
        ),
        (&[("x-fake-status", "401")], ErrorKind::Authentication, 401),
        (&[("x-fake-status", "402")], ErrorKind::QuotaExceeded, 402),
        (
            &[("x-fake-status", "403")],
            ErrorKind::PermissionDenied,
            403,
        ),
        (&[("x-fake-status", "404")], ErrorKind::NotFound, 404),
        (&[("x-fake-status", "413")], ErrorKind::BadRequest, 413),
        (&[("x-fake-status", "429")], ErrorKind::RateLimited, 429),
        (&[("x-fake-status", "500")], ErrorKind::Internal, 500),
        (&[("x-fake-status", "504")], ErrorKind::Timeout, 504),
        (
            &[("x-fake-error-code", "overloaded_error")],
            ErrorKind::ServiceUnavailable,
            529,
        ),
        (&[("x-fake-html", "1")], ErrorKind::BadGateway, 502),
        (
            &[("x-fake-html", "1"), ("x-fake-status", "504")],
            ErrorKind::Timeout,
            504,
        ),
        (&[("x-fake-malformed", "1")], ErrorKind::InvalidResponse, 0),
    ];
    for (headers, kind, status) in cases {
        let e = completion(req(), &opts(&f, headers)).await.unwrap_err();
        assert_eq!(e.kind, *kind, "{headers:?}: {}", e.message);
        if *status != 0 {
            assert_eq!(e.status, Some(*status), "{headers:?}");
        }
        assert_eq!(e.provider.as_deref(), Some("anthropic"));
        assert!(
            e.message.starts_with("AnthropicException - "),
            "{}",
            e.message
        );
        assert!(!e.message.contains("sk-ant-test-123456"));
    }
    let e = completion(req(), &opts(&f, &[("x-fake-html", "1")]))
        .await
        .unwrap_err();
    assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
    let e = completion(
        req(),
        &opts(&f, &[("x-fake-error-code", "prompt_too_long")]),
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("prompt is too long"));
    assert_eq!(e.upstream_code.as_deref(), Some("invalid_request_error"));
}

#[tokio::test]
async fn overloaded_is_retried_with_hint() {
    let f = fake().await;
    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "ovl"),
            ("x-fake-error-code", "overloaded_error"),
            ("x-fake-fail-times", "2"),
            ("x-fake-retry-after", "0.1"),
        ],
    );
    o.num_retries = 3;
    let t0 = Instant::now();
    let done = completion(req(), &o).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(done.meta.attempts, 3);
    assert_eq!(f.stats("ovl").requests, 3);

    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "rl"),
            ("x-fake-status", "429"),
            ("x-fake-retry-after", "0.05"),
        ],
    );
    o.num_retries = 1;
    let e = completion(req(), &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.attempts, 2);
    assert_eq!(f.stats("rl").requests, 2);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let f = fake().await;
    for (key, h) in [
        ("nr1", ("x-fake-status", "401")),
        ("nr2", ("x-fake-error-code", "prompt_too_long")),
        ("nr3", ("x-fake-status", "402")),
        ("nr4", ("x-fake-error-code", "content_filter")),
    ] {
        let mut o = opts(&f, &[("x-fake-key", key), h]);
        o.num_retries = 3;
        let e = completion(req(), &o).await.unwrap_err();
        assert_eq!(e.attempts, 1, "{h:?}");
        assert_eq!(f.stats(key).requests, 1);
    }
}

#[tokio::test]
async fn in_stream_error_event_is_overloaded() {
    let f = fake().await;
    let (chunks, err) = drain(req(), &opts(&f, &[("x-fake-stream-error-after", "2")])).await;
    let e = err.expect("the error event must surface");
    assert_eq!(e.kind, ErrorKind::ServiceUnavailable);
    assert_eq!(e.status, Some(529));
    assert!(e.retryable());
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.content.clone())
        .collect();
    assert_eq!(text, "Hello! This ");
}

#[tokio::test]
async fn truncated_stream_is_a_connection_error() {
    let f = fake().await;
    let (chunks, err) = drain(req(), &opts(&f, &[("x-fake-cut-after", "4")])).await;
    assert_eq!(err.unwrap().kind, ErrorKind::Connection);
    let pieces = chunks
        .iter()
        .filter(|c| {
            c.choices
                .first()
                .and_then(|ch| ch.delta.content.as_deref())
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(pieces, 4);
}

#[tokio::test]
async fn unsupported_params_fail_or_drop() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("presence_penalty".into(), json!(0.5));
    r.params.insert("seed".into(), json!(1));
    let e = completion(r.clone(), &opts(&f, &[])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedParams);
    assert!(e.message.contains("presence_penalty") && e.message.contains("seed"));
    let mut o = opts(&f, &[("x-fake-key", "drop")]);
    o.drop_params = true;
    completion(r, &o).await.unwrap();
    let b = f.stats("drop").last_body.unwrap();
    assert!(b.get("presence_penalty").is_none() && b.get("seed").is_none());
}

#[tokio::test]
async fn response_format_json_schema_via_forced_tool() {
    let f = fake().await;
    let mut r = req();
    r.params.insert(
        "response_format".into(),
        json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object",
            "properties": {"location": {"type": "string"}}}}}),
    );
    let done = completion(r.clone(), &opts(&f, &[])).await.unwrap();
    let content = done.response.choices[0].message.content.clone().unwrap();
    let v: Value = serde_json::from_str(&content).unwrap();
    assert_eq!(v["location"], "Paris");
    assert_eq!(
        done.response.choices[0].finish_reason.as_deref(),
        Some("stop")
    );
    let (chunks, err) = drain(r, &opts(&f, &[])).await;
    assert!(err.is_none());
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.content.clone())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["unit"],
        "celsius"
    );
    assert!(chunks.iter().all(|c| c
        .choices
        .first()
        .is_none_or(|ch| ch.delta.tool_calls.is_none())));
}

#[tokio::test]
async fn embeddings_are_refused() {
    let f = fake().await;
    let e = embedding(
        EmbeddingRequest {
            model: "anthropic/claude-sonnet-4-5".into(),
            input: json!("hi"),
            ..Default::default()
        },
        &opts(&f, &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("embeddings"));
}
