//! The core pipeline against the fake upstream, without Python: unary, stream, retries with
//! hints, never-retried kinds, truncated streams, hidden usage.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use _llmux::pipeline::{completion, completion_stream, CallOptions};
use _llmux::providers::{Endpoint, Secret};
use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
use _llmux::types::ChatRequest;
use _llmux::ErrorKind;

async fn fake() -> FakeHandle {
    spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn opts(fake: &FakeHandle, headers: &[(&str, &str)]) -> CallOptions {
    CallOptions {
        endpoint: Endpoint {
            api_base: Some(fake.base_url()),
            api_key: Some(Secret::new("sk-test")),
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
        "openai/gpt-4o-mini",
        vec![serde_json::json!({"role": "user", "content": "hi"})],
    )
}

#[tokio::test]
async fn unary_and_meta() {
    let f = fake().await;
    let done = completion(req(), &opts(&f, &[])).await.unwrap();
    assert_eq!(
        done.response.choices[0].message.content.as_deref(),
        Some(DEFAULT_REPLY)
    );
    assert_eq!(done.response.usage.as_ref().unwrap().completion_tokens, 20);
    assert_eq!(done.meta.provider, "openai");
    assert_eq!(done.meta.attempts, 1);
}

#[tokio::test]
async fn stream_hides_usage_chunk_unless_asked() {
    let f = fake().await;
    let (mut s, _) = completion_stream(req(), &opts(&f, &[])).await.unwrap();
    let mut text = String::new();
    let mut hidden = None;
    while let Some(item) = s.next().await {
        let item = item.unwrap();
        assert!(!item.chunk.choices.is_empty(), "usage-only chunk leaked");
        text.push_str(item.chunk.choices[0].delta.content.as_deref().unwrap_or(""));
        hidden = hidden.or(item.hidden_usage);
    }
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(hidden.unwrap().completion_tokens, 20);
    assert_eq!(s.usage().unwrap().completion_tokens, 20);

    let mut r = req();
    r.params.insert(
        "stream_options".into(),
        serde_json::json!({"include_usage": true}),
    );
    let (mut s, _) = completion_stream(r, &opts(&f, &[])).await.unwrap();
    let mut last = None;
    while let Some(item) = s.next().await {
        last = Some(item.unwrap().chunk);
    }
    let last = last.unwrap();
    assert!(last.choices.is_empty() && last.usage.is_some());
}

#[tokio::test]
async fn retry_honours_hint_and_counts_attempts() {
    let f = fake().await;
    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "r1"),
            ("x-fake-status", "429"),
            ("x-fake-fail-times", "2"),
            ("x-fake-retry-after-ms", "150"),
        ],
    );
    o.num_retries = 3;
    let t0 = Instant::now();
    let done = completion(req(), &o).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(done.meta.attempts, 3);
    assert_eq!(f.stats("r1").requests, 3);
}

#[tokio::test]
async fn quota_is_not_retried() {
    let f = fake().await;
    let mut o = opts(
        &f,
        &[
            ("x-fake-key", "q"),
            ("x-fake-status", "429"),
            ("x-fake-error-code", "insufficient_quota"),
        ],
    );
    o.num_retries = 3;
    let e = completion(req(), &o).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::QuotaExceeded);
    assert_eq!(e.attempts, 1);
    assert_eq!(f.stats("q").requests, 1);
}

#[tokio::test]
async fn truncated_stream_is_an_error() {
    let f = fake().await;
    let (mut s, _) = completion_stream(req(), &opts(&f, &[("x-fake-cut-after", "4")]))
        .await
        .unwrap();
    let mut content_chunks = 0;
    let err = loop {
        match s.next().await {
            Some(Ok(item)) => {
                if item.chunk.choices[0]
                    .delta
                    .content
                    .as_deref()
                    .is_some_and(|c| !c.is_empty())
                {
                    content_chunks += 1;
                }
            }
            Some(Err(e)) => break e,
            None => panic!("a cut stream ended as if complete"),
        }
    };
    assert_eq!(content_chunks, 4);
    assert_eq!(err.kind, ErrorKind::Connection);
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn in_stream_error_event_is_classified() {
    let f = fake().await;
    let (mut s, _) = completion_stream(req(), &opts(&f, &[("x-fake-stream-error-after", "2")]))
        .await
        .unwrap();
    let mut got_err = None;
    while let Some(item) = s.next().await {
        if let Err(e) = item {
            got_err = Some(e);
        }
    }
    assert_eq!(got_err.unwrap().kind, ErrorKind::Internal);
}
