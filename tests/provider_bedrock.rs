//! The Bedrock dialect end to end against the fake upstream: SigV4 and bearer auth, Converse
//! unary and event-stream answers (text, single and parallel tool calls), images, every AWS
//! error type, retries, in-stream exceptions, cut and corrupted streams, cached-token usage and
//! Titan / Cohere embeddings.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use _llmux::pipeline::{completion, completion_stream, embedding, CallOptions};
use _llmux::providers::{Endpoint, Secret};
use _llmux::retry::Backoff;
use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
use _llmux::types::{ChatRequest, EmbeddingRequest, Usage};
use _llmux::ErrorKind;
use serde_json::{json, Value};

const MODEL: &str = "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0";

async fn fake() -> FakeHandle {
    spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn opts(fake: &FakeHandle, headers: &[(&str, &str)]) -> CallOptions {
    CallOptions {
        endpoint: Endpoint {
            api_base: Some(format!("http://{}", fake.addr)),
            aws_access_key_id: Some("AKIDEXAMPLE".into()),
            aws_secret_access_key: Some(Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")),
            aws_region_name: Some("us-east-1".into()),
            ..Default::default()
        },
        extra_headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

fn req() -> ChatRequest {
    ChatRequest::new(MODEL, vec![json!({"role": "user", "content": "hi there"})])
}

fn weather_tools(r: &mut ChatRequest) {
    r.params.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]),
    );
}

#[derive(Default)]
struct Collected {
    text: String,
    args: Vec<String>,
    ids: Vec<String>,
    finish: Option<String>,
    usage: Option<Usage>,
    chunks: usize,
}

async fn collect(mut s: _llmux::ChatStream) -> Result<Collected, _llmux::Error> {
    let mut c = Collected::default();
    while let Some(item) = s.next().await {
        let item = item?;
        c.chunks += 1;
        if let Some(u) = item.chunk.usage.clone().or(item.hidden_usage.clone()) {
            c.usage = Some(u);
        }
        for ch in item.chunk.choices {
            c.text
                .push_str(ch.delta.content.as_deref().unwrap_or_default());
            c.finish = c.finish.or(ch.finish_reason);
            for tc in ch.delta.tool_calls.unwrap_or_default() {
                let i = tc.index as usize;
                if c.args.len() <= i {
                    c.args.resize(i + 1, String::new());
                }
                if let Some(id) = tc.id {
                    c.ids.push(id);
                }
                if let Some(f) = tc.function {
                    c.args[i].push_str(f.arguments.as_deref().unwrap_or_default());
                }
            }
        }
    }
    if c.usage.is_none() {
        c.usage = s.usage().cloned();
    }
    Ok(c)
}

#[tokio::test]
async fn unary_signed_request_and_shape() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("max_tokens".into(), json!(50));
    r.params.insert("top_k".into(), json!(7));
    let done = completion(r, &opts(&f, &[("x-fake-key", "u1")]))
        .await
        .unwrap();
    let resp = done.response;
    assert_eq!(
        resp.choices[0].message.content.as_deref(),
        Some(DEFAULT_REPLY)
    );
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(resp.id.starts_with("chatcmpl-"));
    let u = resp.usage.unwrap();
    assert_eq!(u.completion_tokens, 20);
    assert_eq!(u.prompt_tokens, 5);
    assert_eq!(u.total_tokens, 25);
    assert_eq!(done.meta.provider, "bedrock");

    let st = f.stats("u1");
    assert_eq!(
        st.last_path.as_deref(),
        Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")
    );
    let auth = &st.last_headers["authorization"];
    let date = &st.last_headers["x-amz-date"][..8];
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date}/us-east-1/bedrock/aws4_request"
        )),
        "{auth}"
    );
    assert!(auth.contains("SignedHeaders=") && auth.contains("Signature="));
    assert!(!st.last_headers.contains_key("x-amz-security-token"));
    let body = st.last_body.unwrap();
    assert_eq!(
        body["messages"][0],
        json!({"role": "user", "content": [{"text": "hi there"}]})
    );
    assert_eq!(body["inferenceConfig"]["maxTokens"], 50);
    assert_eq!(body["additionalModelRequestFields"]["top_k"], 7);
}

#[tokio::test]
async fn session_token_bearer_key_and_converse_prefix() {
    let f = fake().await;
    let mut o = opts(&f, &[("x-fake-key", "s1")]);
    o.endpoint.aws_session_token = Some(Secret::new("FQoGZXIvYXdzEXAMPLE"));
    let mut r = req();
    r.model = "bedrock/converse/amazon.nova-pro-v1:0".into();
    completion(r, &o).await.unwrap();
    let st = f.stats("s1");
    assert_eq!(
        st.last_headers["x-amz-security-token"],
        "FQoGZXIvYXdzEXAMPLE"
    );
    assert_eq!(
        st.last_path.as_deref(),
        Some("/model/amazon.nova-pro-v1%3A0/converse")
    );

    let mut o = opts(&f, &[("x-fake-key", "b1")]);
    o.endpoint.api_key = Some(Secret::new("bedrock-api-key-abc"));
    completion(req(), &o).await.unwrap();
    let st = f.stats("b1");
    assert_eq!(
        st.last_headers["authorization"],
        "Bearer bedrock-api-key-abc"
    );
    assert!(!st.last_headers.contains_key("x-amz-date"));
}

#[tokio::test]
async fn max_tokens_truncates_with_length() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("max_completion_tokens".into(), json!(3));
    let resp = completion(r, &opts(&f, &[])).await.unwrap().response;
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(resp.usage.unwrap().completion_tokens, 3);
}

#[tokio::test]
async fn unary_tool_calls_single_and_parallel() {
    let f = fake().await;
    let mut r = req();
    weather_tools(&mut r);
    r.params.insert("tool_choice".into(), json!("required"));
    let resp = completion(r, &opts(&f, &[("x-fake-key", "t1")]))
        .await
        .unwrap()
        .response;
    let m = &resp.choices[0].message;
    let calls = m.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].function.name, "get_weather");
    assert!(calls[0].id.starts_with("tooluse_"));
    let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(args["location"], "Paris");
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    let body = f.stats("t1").last_body.unwrap();
    assert_eq!(body["toolConfig"]["toolChoice"], json!({"any": {}}));

    let mut r = req();
    weather_tools(&mut r);
    let resp = completion(r, &opts(&f, &[("x-fake-tool-calls", "3")]))
        .await
        .unwrap()
        .response;
    let calls = resp.choices[0].message.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 3);
    let locs: Vec<String> = calls
        .iter()
        .map(|c| {
            serde_json::from_str::<Value>(&c.function.arguments).unwrap()["location"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(locs, ["Paris", "Tokyo", "Lima"]);
}

#[tokio::test]
async fn tool_round_trip_history() {
    let f = fake().await;
    let mut r = ChatRequest::new(
        MODEL,
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "tooluse_a", "content": "{\"temp\": 21}"}),
        ],
    );
    weather_tools(&mut r);
    let resp = completion(r, &opts(&f, &[("x-fake-key", "h1")]))
        .await
        .unwrap()
        .response;
    assert_eq!(
        resp.choices[0].message.content.as_deref(),
        Some(DEFAULT_REPLY)
    );
    let body = f.stats("h1").last_body.unwrap();
    assert_eq!(body["system"], json!([{"text": "Be brief."}]));
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["content"][0]["toolUse"]["toolUseId"], "tooluse_a");
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(
        msgs[2]["content"][0]["toolResult"]["content"][0]["json"]["temp"],
        21
    );
}

#[tokio::test]
async fn image_is_sent_as_bytes() {
    let f = fake().await;
    let r = ChatRequest::new(
        MODEL,
        vec![json!({"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}}
        ]})],
    );
    completion(r, &opts(&f, &[("x-fake-key", "i1")]))
        .await
        .unwrap();
    let body = f.stats("i1").last_body.unwrap();
    assert_eq!(
        body["messages"][0]["content"][1],
        json!({"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQSkZJRg=="}}})
    );
}

#[tokio::test]
async fn stream_text_and_usage() {
    let f = fake().await;
    let mut r = req();
    r.params
        .insert("stream_options".into(), json!({"include_usage": true}));
    let (s, _) = completion_stream(r, &opts(&f, &[("x-fake-key", "st")]))
        .await
        .unwrap();
    let c = collect(s).await.unwrap();
    assert_eq!(c.text, DEFAULT_REPLY);
    assert_eq!(c.finish.as_deref(), Some("stop"));
    assert_eq!(c.usage.unwrap().completion_tokens, 20);
    assert!(f
        .stats("st")
        .last_path
        .unwrap()
        .ends_with("/converse-stream"));

    // Without include_usage the usage chunk is hidden but still known.
    let (s, _) = completion_stream(req(), &opts(&f, &[("x-fake-chunks", "3")]))
        .await
        .unwrap();
    let c = collect(s).await.unwrap();
    assert_eq!(c.text, DEFAULT_REPLY);
    assert_eq!(c.usage.unwrap().total_tokens, 25);
}

#[tokio::test]
async fn stream_tool_calls_single_and_parallel() {
    let f = fake().await;
    for n in [1usize, 3] {
        let mut r = req();
        weather_tools(&mut r);
        let (s, _) = completion_stream(r, &opts(&f, &[("x-fake-tool-calls", &n.to_string())]))
            .await
            .unwrap();
        let c = collect(s).await.unwrap();
        assert_eq!(c.args.len(), n);
        assert_eq!(c.ids.len(), n);
        for a in &c.args {
            let v: Value = serde_json::from_str(a).unwrap();
            assert_eq!(v["unit"], "celsius");
        }
        assert_eq!(c.finish.as_deref(), Some("tool_calls"));
        // Arguments arrive in several pieces.
        assert!(c.chunks >= 2 + 4 * n);
    }
}

#[tokio::test]
async fn cached_tokens_in_usage() {
    let f = fake().await;
    let r = ChatRequest::new(
        MODEL,
        vec![
            json!({"role": "system", "content": [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]}),
            json!({"role": "user", "content": "hi"}),
        ],
    );
    let resp = completion(r, &opts(&f, &[("x-fake-key", "c1")]))
        .await
        .unwrap()
        .response;
    let u = resp.usage.unwrap();
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(u.extra["cache_creation_input_tokens"], 50);
    assert_eq!(u.prompt_tokens, 6 + 150);
    let body = f.stats("c1").last_body.unwrap();
    assert_eq!(
        body["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
}

#[tokio::test]
async fn every_error_type_is_classified() {
    let f = fake().await;
    let cases: &[(&str, &str, ErrorKind, u16)] = &[
        ("x-fake-status", "429", ErrorKind::RateLimited, 429),
        ("x-fake-status", "400", ErrorKind::BadRequest, 400),
        ("x-fake-status", "401", ErrorKind::Authentication, 401),
        ("x-fake-status", "403", ErrorKind::PermissionDenied, 403),
        ("x-fake-status", "404", ErrorKind::NotFound, 404),
        ("x-fake-status", "408", ErrorKind::Timeout, 408),
        ("x-fake-status", "424", ErrorKind::Internal, 424),
        ("x-fake-status", "500", ErrorKind::Internal, 500),
        ("x-fake-status", "503", ErrorKind::ServiceUnavailable, 503),
        (
            "x-fake-error-code",
            "ThrottlingException",
            ErrorKind::RateLimited,
            429,
        ),
        (
            "x-fake-error-code",
            "ServiceQuotaExceededException",
            ErrorKind::QuotaExceeded,
            400,
        ),
        (
            "x-fake-error-code",
            "ModelNotReadyException",
            ErrorKind::ServiceUnavailable,
            429,
        ),
        (
            "x-fake-error-code",
            "context_too_long",
            ErrorKind::ContextWindowExceeded,
            400,
        ),
        (
            "x-fake-error-code",
            "ExpiredTokenException",
            ErrorKind::Authentication,
            403,
        ),
        (
            "x-fake-error-code",
            "UnrecognizedClientException",
            ErrorKind::Authentication,
            403,
        ),
        (
            "x-fake-error-code",
            "InvalidSignatureException",
            ErrorKind::Authentication,
            403,
        ),
        (
            "x-fake-error-code",
            "AccessDeniedException",
            ErrorKind::PermissionDenied,
            403,
        ),
        (
            "x-fake-error-code",
            "ResourceNotFoundException",
            ErrorKind::NotFound,
            404,
        ),
        (
            "x-fake-error-code",
            "ModelTimeoutException",
            ErrorKind::Timeout,
            408,
        ),
        (
            "x-fake-error-code",
            "ModelErrorException",
            ErrorKind::Internal,
            424,
        ),
    ];
    for (h, v, kind, status) in cases {
        let e = completion(req(), &opts(&f, &[(h, v)])).await.unwrap_err();
        assert_eq!(e.kind, *kind, "{h}: {v}: {}", e.message);
        assert_eq!(e.status, Some(*status), "{v}");
        assert_eq!(e.provider.as_deref(), Some("bedrock"));
        assert!(
            e.message.starts_with("BedrockException - "),
            "{}",
            e.message
        );
        // Streams fail the same way before the first event.
        let e = completion_stream(req(), &opts(&f, &[(h, v)]))
            .await
            .unwrap_err();
        assert_eq!(e.kind, *kind, "stream {v}");
    }
    let e = completion(req(), &opts(&f, &[("x-fake-html", "1")]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadGateway);
    assert!(e.message.contains("502 Bad Gateway") && !e.message.contains('<'));
    let e = completion(req(), &opts(&f, &[("x-fake-malformed", "1")]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse);
}

#[tokio::test]
async fn throttling_is_retried_quota_is_not() {
    let f = fake().await;
    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "r1"),
            ("x-fake-error-code", "ThrottlingException"),
            ("x-fake-fail-times", "2"),
            ("x-fake-retry-after-ms", "20"),
        ],
    );
    o.num_retries = 3;
    let done = completion(req(), &o).await.unwrap();
    assert_eq!(done.meta.attempts, 3);
    assert_eq!(f.stats("r1").requests, 3);

    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "q1"),
            ("x-fake-error-code", "ServiceQuotaExceededException"),
        ],
    );
    o.num_retries = 3;
    let e = completion(req(), &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::QuotaExceeded);
    assert_eq!(e.attempts, 1);
    assert_eq!(f.stats("q1").requests, 1);

    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "v1"),
            ("x-fake-error-code", "context_too_long"),
        ],
    );
    o.num_retries = 3;
    let e = completion(req(), &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextWindowExceeded);
    assert_eq!(f.stats("v1").requests, 1);
}

#[tokio::test]
async fn in_stream_exception_cut_and_bad_crc() {
    let f = fake().await;
    let (s, _) = completion_stream(req(), &opts(&f, &[("x-fake-stream-error-after", "3")]))
        .await
        .unwrap();
    let e = collect(s).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.message.contains("throttlingException"), "{}", e.message);

    let (s, _) = completion_stream(
        req(),
        &opts(
            &f,
            &[
                ("x-fake-stream-error-after", "2"),
                ("x-fake-error-code", "modelStreamErrorException"),
            ],
        ),
    )
    .await
    .unwrap();
    let e = collect(s).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Internal);

    let (s, _) = completion_stream(req(), &opts(&f, &[("x-fake-cut-after", "4")]))
        .await
        .unwrap();
    let e = collect(s).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Connection);

    let (s, _) = completion_stream(req(), &opts(&f, &[("x-fake-malformed", "1")]))
        .await
        .unwrap();
    let e = collect(s).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidResponse);
    assert!(e.message.contains("checksum"), "{}", e.message);
}

#[tokio::test]
async fn unsupported_params_fail_or_drop() {
    let f = fake().await;
    let mut r = req();
    r.params.insert("presence_penalty".into(), json!(0.5));
    let e = completion(r.clone(), &opts(&f, &[])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnsupportedParams);
    assert!(e.message.contains("presence_penalty"));
    let mut o = opts(&f, &[("x-fake-key", "d1")]);
    o.drop_params = true;
    completion(r, &o).await.unwrap();
    let body = f.stats("d1").last_body.unwrap();
    assert!(!body.to_string().contains("presence_penalty"));
}

#[tokio::test]
async fn response_format_uses_the_json_tool() {
    let f = fake().await;
    let mut r = req();
    r.params.insert(
        "response_format".into(),
        json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object", "properties": {"location": {"type": "string"}}}}}),
    );
    let resp = completion(r.clone(), &opts(&f, &[]))
        .await
        .unwrap()
        .response;
    let m = &resp.choices[0].message;
    assert!(m.tool_calls.is_none());
    let v: Value = serde_json::from_str(m.content.as_deref().unwrap()).unwrap();
    assert_eq!(v["location"], "Paris");
    assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("stop"));

    let (s, _) = completion_stream(r, &opts(&f, &[])).await.unwrap();
    let c = collect(s).await.unwrap();
    assert!(c.args.is_empty());
    let v: Value = serde_json::from_str(&c.text).unwrap();
    assert_eq!(v["unit"], "celsius");
    assert_eq!(c.finish.as_deref(), Some("stop"));
}

#[tokio::test]
async fn embeddings_titan_and_cohere() {
    let f = fake().await;
    let mut q = EmbeddingRequest {
        model: "bedrock/amazon.titan-embed-text-v2:0".into(),
        input: json!("hello embedding world"),
        ..Default::default()
    };
    q.params.insert("dimensions".into(), json!(256));
    let o = opts(&f, &[("x-fake-key", "e1")]);
    let resp = embedding(q.clone(), &o).await.unwrap().response;
    assert_eq!(resp.data.len(), 1);
    assert_eq!(resp.data[0]["embedding"].as_array().unwrap().len(), 256);
    assert_eq!(resp.usage.unwrap().prompt_tokens, 3);
    let st = f.stats("e1");
    assert_eq!(
        st.last_path.as_deref(),
        Some("/model/amazon.titan-embed-text-v2%3A0/invoke")
    );
    assert!(st.last_headers["authorization"].starts_with("AWS4-HMAC-SHA256 "));
    let again = embedding(q.clone(), &o).await.unwrap().response;
    assert_eq!(again.data[0]["embedding"], resp.data[0]["embedding"]);

    q.input = json!(["a", "b"]);
    let e = embedding(q, &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);

    let q = EmbeddingRequest {
        model: "bedrock/cohere.embed-english-v3".into(),
        input: json!(["first text", "second text"]),
        ..Default::default()
    };
    let resp = embedding(q, &o).await.unwrap().response;
    assert_eq!(resp.data.len(), 2);
    assert_eq!(resp.data[1]["index"], 1);
    assert_eq!(resp.data[0]["embedding"].as_array().unwrap().len(), 1024);
}
