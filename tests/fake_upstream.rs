#![cfg(feature = "server")]
// Test helpers outside #[test] functions are not covered by clippy.toml allow-*-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the fake OpenAI-compatible upstream.

use std::time::{Duration, Instant};

use _llmux::testing::fake_upstream::{self, FakeHandle, KeyStats, DEFAULT_REPLY};
use serde_json::{json, Value};

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(v).unwrap())
    }
}

trait JsonResponse {
    async fn js(self) -> Value;
}

impl JsonResponse for reqwest::Response {
    async fn js(self) -> Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

/// reqwest is built without a default TLS provider; install ring (plain http only needs it to build).
fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

async fn start() -> (FakeHandle, reqwest::Client) {
    let handle = fake_upstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (handle, client_builder().build().unwrap())
}

fn url(h: &FakeHandle, path: &str) -> String {
    format!("http://{}{}", h.addr, path)
}

fn chat_body() -> Value {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello please"}]}
        ]
    })
}

async fn post(
    c: &reqwest::Client,
    h: &FakeHandle,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut req = c.post(url(h, path)).json_body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The JSON payloads of the SSE `data:` events (`[DONE]` kept as the string "[DONE]").
fn events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\n\n") || text.is_empty(), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap();
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str())
        .collect()
}

async fn wait_stats(h: &FakeHandle, key: &str, pred: impl Fn(&KeyStats) -> bool) -> KeyStats {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = h.stats(key);
        if pred(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_shape_and_usage() {
    let (h, c) = start().await;
    let resp = post(&c, &h, "/v1/chat/completions", &[], &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.js().await;
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["system_fingerprint"], "fp_fake");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": DEFAULT_REPLY, "refusal": null}, "logprobs": null, "finish_reason": "stop"}])
    );
    // prompt: 3 + 3 words, 2 messages * 3.
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );
    assert_eq!(DEFAULT_REPLY.split_whitespace().count(), 20);

    // Without /v1, n = 3, max_tokens truncation.
    let mut body = chat_body();
    body["n"] = json!(3);
    body["max_tokens"] = json!(5);
    let v: Value = post(&c, &h, "/chat/completions", &[], &body)
        .await
        .js()
        .await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert_eq!(ch["finish_reason"], "length");
        assert_eq!(ch["message"]["content"], "Hello! This is the fake");
    }
    assert_eq!(v["usage"]["completion_tokens"], 15);
    assert_eq!(v["usage"]["total_tokens"], 27);

    // max_completion_tokens wins; custom content.
    let mut body = chat_body();
    body["max_completion_tokens"] = json!(2);
    let v: Value = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-content", "one two three")],
        &body,
    )
    .await
    .js()
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "one two");
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // Distinct ids.
    let a: Value = post(&c, &h, "/v1/chat/completions", &[], &chat_body())
        .await
        .js()
        .await;
    let b: Value = post(&c, &h, "/v1/chat/completions", &[], &chat_body())
        .await
        .js()
        .await;
    assert_ne!(a["id"], b["id"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_and_with_usage() {
    let (h, c) = start().await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    let resp = post(&c, &h, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.len(), 1 + 20 + 1 + 1);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks = &ev[..ev.len() - 1];
    let id = chunks[0]["id"].clone();
    for ch in chunks {
        assert_eq!(ch["id"], id);
        assert_eq!(ch["created"], chunks[0]["created"]);
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["model"], "gpt-test");
        assert_eq!(ch["system_fingerprint"], "fp_fake");
        assert!(ch.get("usage").is_none(), "{ch}");
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello! "})
    );
    assert_eq!(content_of(chunks), DEFAULT_REPLY);
    let last = &chunks[chunks.len() - 1];
    assert_eq!(
        last["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );

    body["stream_options"] = json!({"include_usage": true});
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-chunks", "5")],
        &body,
    )
    .await;
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.len(), 1 + 5 + 1 + 1 + 1);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let usage_chunk = &ev[ev.len() - 2];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 12);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 20);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 32);
    for ch in &ev[..ev.len() - 2] {
        assert_eq!(ch["usage"], Value::Null);
        assert!(ch.get("usage").is_some());
    }
    assert_eq!(content_of(&ev[..ev.len() - 1]), DEFAULT_REPLY);

    // n = 2: per-index chunks.
    body["n"] = json!(2);
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-content", "a b c")],
        &body,
    )
    .await;
    let ev = events(&resp.text().await.unwrap());
    for idx in 0..2 {
        let text: String = ev
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter(|c| c["index"] == idx)
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "a b c");
    }
    assert_eq!(ev[ev.len() - 2]["usage"]["completion_tokens"], 6);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_unary_and_stream() {
    let (h, c) = start().await;
    let mut body = chat_body();
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
    body["tool_choice"] = json!("required");
    let v: Value = post(&c, &h, "/v1/chat/completions", &[], &body)
        .await
        .js()
        .await;
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], "call_fake_0");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"location": "Paris", "unit": "celsius"}));

    // tool_choice "auto" does not force tool calls.
    body["tool_choice"] = json!("auto");
    let v: Value = post(&c, &h, "/v1/chat/completions", &[], &body)
        .await
        .js()
        .await;
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_REPLY);

    // Header-forced, streamed, 3 calls.
    let mut body = chat_body();
    body["stream"] = json!(true);
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-tool-calls", "3")],
        &body,
    )
    .await;
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let mut args = vec![String::new(); 3];
    let mut pieces = [0usize; 3];
    let mut headers = 0;
    for ch in &ev[..ev.len() - 1] {
        let Some(choice) = ch["choices"].get(0) else {
            continue;
        };
        if let Some(tcs) = choice["delta"]["tool_calls"].as_array() {
            for tc in tcs {
                let i = tc["index"].as_u64().unwrap() as usize;
                if tc.get("id").is_some() {
                    headers += 1;
                    assert_eq!(tc["id"], format!("call_fake_{i}"));
                    assert_eq!(tc["type"], "function");
                    assert_eq!(tc["function"]["name"], "get_weather");
                    assert_eq!(tc["function"]["arguments"], "");
                } else {
                    assert_eq!(tc.as_object().unwrap().len(), 2, "{tc}");
                    assert_eq!(tc["function"].as_object().unwrap().len(), 1, "{tc}");
                    pieces[i] += 1;
                    args[i].push_str(tc["function"]["arguments"].as_str().unwrap());
                }
            }
        }
    }
    assert_eq!(headers, 3);
    assert!(pieces.iter().all(|p| *p >= 3), "{pieces:?}");
    let locations: Vec<String> = args
        .iter()
        .map(|a| {
            serde_json::from_str::<Value>(a).unwrap()["location"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(locations, ["Paris", "Tokyo", "Lima"]);
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        ev[ev.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    h.shutdown().await;
}

fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let mut n = 0u32;
        for c in chunk {
            n = (n << 6) | if *c == b'=' { 0 } else { val(*c) };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_misc_routes() {
    let (h, c) = start().await;
    let body = json!({"model": "emb-1", "input": ["hello world", "foo"], "dimensions": 16});
    let v: Value = post(&c, &h, "/v1/embeddings", &[], &body).await.js().await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb-1");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let first: Vec<f32> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(first.len(), 16);
    let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["object"], "embedding");
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    // Deterministic, base64 = same floats little-endian.
    let body = json!({"model": "emb-1", "input": "hello world", "dimensions": 16, "encoding_format": "base64"});
    let v: Value = post(&c, &h, "/embeddings", &[], &body).await.js().await;
    let bytes = b64decode(v["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, first);

    // Tokens and token lists; default 8 dimensions.
    for input in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
        let v: Value = post(
            &c,
            &h,
            "/v1/embeddings",
            &[],
            &json!({"model": "m", "input": input}),
        )
        .await
        .js()
        .await;
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    }

    let v: Value = c
        .get(url(&h, "/v1/models"))
        .send()
        .await
        .unwrap()
        .js()
        .await;
    assert_eq!(
        v,
        json!({"object":"list","data":[{"id":"fake-model","object":"model","created":0,"owned_by":"llmux"}]})
    );
    let v: Value = c.get(url(&h, "/health")).send().await.unwrap().js().await;
    assert_eq!(v, json!({"status": "ok"}));

    let resp = c.get(url(&h, "/v1/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.js().await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "Invalid URL (GET /v1/nope)");

    let resp = c
        .post(url(&h, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.js().await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], Value::Null);
    assert_eq!(v["error"]["code"], Value::Null);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_faults() {
    let (h, c) = start().await;
    let body = chat_body();
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[
            ("x-fake-status", "429"),
            ("x-fake-retry-after-ms", "150"),
            ("x-fake-retry-after", "1"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after-ms"], "150");
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.js().await;
    assert_eq!(
        v,
        json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );

    let v: Value = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-status", "401")],
        &body,
    )
    .await
    .js()
    .await;
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(
        v["error"]["message"],
        "Incorrect API key provided: sk-fa***"
    );

    let v: Value = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-status", "404")],
        &body,
    )
    .await
    .js()
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-test"));

    for status in [502u16, 503] {
        let resp = post(
            &c,
            &h,
            "/v1/chat/completions",
            &[("x-fake-status", &status.to_string())],
            &body,
        )
        .await;
        assert_eq!(resp.status(), status);
        let v: Value = resp.js().await;
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(
            v["error"]["message"],
            "The server is overloaded or not ready yet."
        );
    }

    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[
            ("x-fake-status", "429"),
            ("x-fake-error-code", "insufficient_quota"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.js().await;
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(
        v["error"]["message"],
        "You exceeded your current quota, please check your plan and billing details."
    );

    // Code alone implies its status.
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-error-code", "context_length_exceeded")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.js().await;
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("This model's maximum context length"));

    let resp = post(
        &c,
        &h,
        "/v1/embeddings",
        &[
            ("x-fake-status", "400"),
            ("x-fake-error-code", "content_policy_violation"),
            ("x-fake-error-message", "custom msg"),
        ],
        &json!({"input": "x"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.js().await;
    assert_eq!(v["error"]["message"], "custom msg");
    assert_eq!(v["error"]["code"], "content_policy_violation");

    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-html", "1"), ("x-fake-status", "503")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "text/html");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("<title>503 Service Unavailable</title>"),
        "{text}"
    );
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-html", "1")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("502 Bad Gateway"));

    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-malformed", "1")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_times_and_stats() {
    let (h, c) = start().await;
    let hdrs = [
        ("x-fake-key", "ft"),
        ("x-fake-fail-times", "2"),
        ("x-fake-status", "503"),
    ];
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            post(&c, &h, "/v1/chat/completions", &hdrs, &chat_body())
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [503, 503, 200, 200]);
    let s = wait_stats(&h, "ft", |s| s.completed == 4).await;
    assert_eq!((s.requests, s.completed, s.aborted), (4, 4, 0));

    // Recorded request details.
    let resp = c
        .post(url(&h, "/v1/chat/completions?x=1"))
        .header("x-fake-key", "rec")
        .header("authorization", "Bearer sk-test")
        .header("X-Custom", "Yes")
        .json_body(&chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let s = h.stats("rec");
    assert_eq!(s.last_authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(
        s.last_headers.get("x-custom").map(String::as_str),
        Some("Yes")
    );
    assert_eq!(s.last_path.as_deref(), Some("/v1/chat/completions?x=1"));
    assert_eq!(s.last_body, Some(chat_body()));

    // api-key fallback and the HTTP stats endpoint.
    post(
        &c,
        &h,
        "/v1/embeddings",
        &[("x-fake-key", "a b/c"), ("api-key", "azure-key")],
        &json!({"input": "x"}),
    )
    .await;
    let v: Value = c
        .get(url(&h, "/__stats?key=a%20b%2Fc"))
        .send()
        .await
        .unwrap()
        .js()
        .await;
    assert_eq!(v["requests"], 1);
    assert_eq!(v["last_authorization"], "azure-key");
    assert_eq!(v["last_path"], "/v1/embeddings");

    // Requests without a key count under "".
    c.get(url(&h, "/v1/models")).send().await.unwrap();
    assert!(h.stats("").requests >= 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_faults() {
    let (h, c) = start().await;
    let mut body = chat_body();
    body["stream"] = json!(true);

    // Cut: the body ends with an error after 3 content chunks.
    let mut resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-cut-after", "3"), ("x-fake-key", "cut")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(err.is_some(), "the body must end with an error");
    let ev = events(std::str::from_utf8(&got).unwrap());
    assert_eq!(ev.len(), 4);
    assert_eq!(content_of(&ev), "Hello! This is ");
    let s = wait_stats(&h, "cut", |s| s.completed == 1).await;
    assert_eq!((s.completed, s.aborted), (1, 0));

    // Stream error event then clean end.
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-stream-error-after", "2")],
        &body,
    )
    .await;
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.len(), 4);
    assert_eq!(
        ev[3],
        json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}})
    );

    // Fail-times applies to stream faults too.
    let hdrs = [
        ("x-fake-stream-error-after", "1"),
        ("x-fake-key", "sft"),
        ("x-fake-fail-times", "1"),
    ];
    let first = post(&c, &h, "/v1/chat/completions", &hdrs, &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(!first.contains("[DONE]"));
    let second = post(&c, &h, "/v1/chat/completions", &hdrs, &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(second.ends_with("data: [DONE]\n\n"));

    // Chunk delay.
    let t = Instant::now();
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-chunk-delay-ms", "20"), ("x-fake-chunks", "5")],
        &body,
    )
    .await;
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.len(), 8);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_counting() {
    let (h, c) = start().await;
    // Client gives up while the server delays the headers.
    let t = Instant::now();
    let res = c
        .post(url(&h, "/v1/chat/completions"))
        .header("x-fake-key", "ab")
        .header("x-fake-delay-ms", "3000")
        .timeout(Duration::from_millis(200))
        .json_body(&chat_body())
        .send()
        .await;
    assert!(res.is_err());
    let s = wait_stats(&h, "ab", |s| s.aborted == 1).await;
    assert_eq!((s.requests, s.completed, s.aborted), (1, 0, 1));
    assert!(t.elapsed() < Duration::from_secs(2));

    // Client drops a slow stream midway.
    let mut body = chat_body();
    body["stream"] = json!(true);
    let mut resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-key", "ab2"), ("x-fake-chunk-delay-ms", "100")],
        &body,
    )
    .await;
    resp.chunk().await.unwrap();
    drop(resp);
    let s = wait_stats(&h, "ab2", |s| s.aborted == 1).await;
    assert_eq!((s.requests, s.completed, s.aborted), (1, 0, 1));

    // A short delay completes normally.
    let resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-key", "ok"), ("x-fake-delay-ms", "50")],
        &chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let s = wait_stats(&h, "ok", |s| s.completed == 1).await;
    assert_eq!((s.completed, s.aborted), (1, 0));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_shutdown() {
    let (h, _) = start().await;
    let c = client_builder().http2_prior_knowledge().build().unwrap();
    let mut body = chat_body();
    body["stream"] = json!(true);
    let resp = post(&c, &h, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(ev.last().unwrap(), "[DONE]");

    // A cut over h2 still delivers the chunks before the error.
    let mut resp = post(
        &c,
        &h,
        "/v1/chat/completions",
        &[("x-fake-cut-after", "2")],
        &body,
    )
    .await;
    let mut got = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(err.is_some());
    assert_eq!(
        content_of(&events(std::str::from_utf8(&got).unwrap())),
        "Hello! This "
    );

    let addr = h.addr;
    h.shutdown().await;
    let fresh = client_builder().build().unwrap();
    assert!(fresh
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .is_err());
}
