//! The hook pipeline around real upstream calls (the fake upstream over sockets): a pre hook
//! that answers instead of the upstream (unary and streamed), a stream hook that rewrites and
//! drops chunks, a post hook that turns an upstream error into an answer.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use _llmux::hooks::{ChunkAction, Hook, HookContext, Pipeline, Pre};
use _llmux::pipeline::{completion, completion_stream, CallOptions};
use _llmux::providers::{Endpoint, Secret};
use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
use _llmux::types::{ChatChunk, ChatCompletion, ChatRequest};
use _llmux::{Error, Result};
use futures_util::future::BoxFuture;
use serde_json::json;

fn canned(text: &str) -> ChatCompletion {
    serde_json::from_value(json!({
        "id": "chatcmpl-canned", "object": "chat.completion", "created": 1, "model": "canned",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    }))
    .unwrap()
}

struct Answer;
impl Hook for Answer {
    fn name(&self) -> &str {
        "answer"
    }
    fn pre<'a>(
        &'a self,
        _ctx: &'a mut HookContext,
        req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, Result<Pre>> {
        Box::pin(async move {
            let last = req
                .messages
                .last()
                .and_then(|m| m["content"].as_str())
                .unwrap_or("");
            Ok(if last == "ping" {
                Pre::Respond(Box::new(canned("pong from a hook")))
            } else {
                Pre::Continue
            })
        })
    }
}

struct Shout;
impl Hook for Shout {
    fn name(&self) -> &str {
        "shout"
    }
    fn stream(&self, _ctx: &HookContext, chunk: &mut ChatChunk) -> ChunkAction {
        for c in &mut chunk.choices {
            if let Some(t) = &mut c.delta.content {
                if t.is_empty() && c.finish_reason.is_none() {
                    return ChunkAction::Drop;
                }
                *t = t.to_uppercase();
            }
        }
        ChunkAction::Keep
    }
}

struct Rescue;
impl Hook for Rescue {
    fn name(&self) -> &str {
        "rescue"
    }
    fn post<'a>(
        &'a self,
        _ctx: &'a HookContext,
        outcome: &'a mut std::result::Result<ChatCompletion, Error>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if outcome.as_ref().is_err_and(|e| e.status == Some(429)) {
                *outcome = Ok(canned("served while rate limited"));
            }
            Ok(())
        })
    }
}

fn opts(f: &FakeHandle, headers: &[(&str, &str)]) -> CallOptions {
    CallOptions {
        endpoint: Endpoint {
            api_base: Some(f.base_url()),
            api_key: Some(Secret::new("sk")),
            ..Default::default()
        },
        extra_headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        hooks: Some(Arc::new(Pipeline::new(vec![
            Arc::new(Answer),
            Arc::new(Shout),
            Arc::new(Rescue),
        ]))),
        ..Default::default()
    }
}

fn req(text: &str) -> ChatRequest {
    ChatRequest::new(
        "gpt-4o-mini",
        vec![json!({"role": "user", "content": text})],
    )
}

#[tokio::test]
async fn pre_hook_answers_without_the_upstream() {
    let f = spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let o = opts(&f, &[("x-fake-key", "k1")]);
    let done = completion(req("ping"), &o).await.unwrap();
    assert_eq!(
        done.response.choices[0].message.content.as_deref(),
        Some("pong from a hook")
    );
    let (mut s, _) = completion_stream(req("ping"), &o).await.unwrap();
    let mut text = String::new();
    while let Some(item) = s.next().await {
        for c in item.unwrap().chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(
        text, "PONG FROM A HOOK",
        "replayed as chunks, through the stream hooks too"
    );
    assert_eq!(f.stats("k1").requests, 0);
}

#[tokio::test]
async fn stream_hook_rewrites_and_drops() {
    let f = spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (mut s, _) = completion_stream(req("hi"), &opts(&f, &[])).await.unwrap();
    let mut text = String::new();
    while let Some(item) = s.next().await {
        let chunk = item.unwrap().chunk;
        // The role chunk (empty content) was dropped.
        assert!(chunk.choices.iter().all(|c| c.delta.role.is_none()));
        for c in chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(text, DEFAULT_REPLY.to_uppercase());
}

#[tokio::test]
async fn post_hook_turns_an_error_into_an_answer() {
    let f = spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let done = completion(req("hi"), &opts(&f, &[("x-fake-status", "429")]))
        .await
        .unwrap();
    assert_eq!(
        done.response.choices[0].message.content.as_deref(),
        Some("served while rate limited")
    );
    let e = completion(req("hi"), &opts(&f, &[("x-fake-status", "500")]))
        .await
        .unwrap_err();
    assert_eq!(e.status, Some(500), "other errors pass through");
}
