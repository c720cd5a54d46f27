//! The response cache: the in-process LRU/TTL store, the cache key's normalisation, the Redis
//! store against a real `redis-server` (killed and restarted by the harness in
//! `tests/common`), and, over the fake upstream, the cache hook on the pipeline: hits that never
//! reach the upstream, the per-request controls, TTLs, streams replayed from the cache and
//! streams stored when they complete, tenant isolation, and Redis outages that cost misses only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use _llmux::cache::{
    cache_key, CacheBackend, MemoryCache, RedisCache, DEFAULT_PREFIX, RETRY_AFTER_FAILURE,
};
use _llmux::redis::{RedisConfig, RedisTarget};
use _llmux::types::ChatRequest;
use common::redis_harness::{raw_command, RedisServer};
use serde_json::{json, Map, Value};

fn request(model: &str, text: &str, params: Value) -> ChatRequest {
    let mut r = ChatRequest::new(model, vec![json!({"role": "user", "content": text})]);
    if let Value::Object(p) = params {
        r.params = p;
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The in-process store.

#[test]
fn memory_evicts_the_least_recently_used() {
    let m = MemoryCache::new(2);
    m.set_now("a", "A".into(), None);
    m.set_now("b", "B".into(), None);
    assert_eq!(
        m.get_now("a").as_deref(),
        Some("A"),
        "a is now the most recent"
    );
    m.set_now("c", "C".into(), None);
    assert_eq!(m.len(), 2);
    assert_eq!(m.get_now("b"), None, "b was the least recently used");
    assert_eq!(m.get_now("a").as_deref(), Some("A"));
    assert_eq!(m.get_now("c").as_deref(), Some("C"));
    // Replacing a key does not grow the map or evict another.
    m.set_now("c", "C2".into(), None);
    assert_eq!(m.len(), 2);
    assert_eq!(m.get_now("a").as_deref(), Some("A"));
    assert_eq!(m.get_now("c").as_deref(), Some("C2"));
    let none = MemoryCache::new(0);
    none.set_now("a", "A".into(), None);
    assert!(none.is_empty());
}

#[tokio::test]
async fn memory_entries_expire_after_their_ttl() {
    let m = MemoryCache::new(10);
    m.set("short", "S".into(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    m.set("long", "L".into(), None).await.unwrap();
    assert_eq!(m.get("short").await.unwrap().as_deref(), Some("S"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(m.get("short").await.unwrap(), None);
    assert_eq!(m.get("long").await.unwrap().as_deref(), Some("L"));
    assert_eq!(m.len(), 1, "the expired entry was removed when looked up");
}

// ---------------------------------------------------------------------------------------------
// The key.

/// The key of a direct call: the model is the one the request names.
fn key_of(namespace: Option<&str>, tenant: Option<&str>, r: &ChatRequest) -> String {
    cache_key(namespace, tenant, &r.model, r)
}

#[test]
fn key_ignores_order_and_bookkeeping_and_sees_the_rest() {
    let base = json!({"temperature": 0.2, "max_tokens": 50, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]});
    let k = key_of(None, None, &request("gpt-4o", "hi", base.clone()));

    // The same request written in another order: parameters, nested keys, message keys.
    let mut p = Map::new();
    p.insert(
        "tools".into(),
        json!([{"function": {"parameters": {"properties": {"a": {"type": "string"}}, "type": "object"}, "name": "f"}, "type": "function"}]),
    );
    p.insert("max_tokens".into(), json!(50));
    p.insert("temperature".into(), json!(0.2));
    let mut r = ChatRequest::new("gpt-4o", vec![json!({"content": "hi", "role": "user"})]);
    r.params = p;
    assert_eq!(key_of(None, None, &r), k, "order never matters");

    // Transport and bookkeeping keys are not part of the answer.
    let mut noisy = base.clone();
    for (name, v) in [
        ("stream", json!(true)),
        ("stream_options", json!({"include_usage": true})),
        ("metadata", json!({"trace": "x"})),
        ("timeout", json!(30)),
        ("num_retries", json!(3)),
        ("api_key", json!("sk-secret")),
        ("cache", json!({"ttl": 5})),
        ("caching", json!(true)),
    ] {
        noisy[name] = v;
    }
    assert_eq!(key_of(None, None, &request("gpt-4o", "hi", noisy)), k);

    // Everything that changes the answer changes the key.
    let mut seen = vec![k.clone()];
    let mut differs = |r: ChatRequest, tenant: Option<&str>, ns: Option<&str>, what: &str| {
        let other = key_of(ns, tenant, &r);
        assert!(!seen.contains(&other), "{what} must change the key");
        seen.push(other);
    };
    for (name, v) in [
        ("temperature", json!(0.3)),
        ("max_tokens", json!(51)),
        ("seed", json!(7)),
        ("stop", json!(["\n"])),
        ("n", json!(2)),
        ("top_p", json!(0.9)),
        ("response_format", json!({"type": "json_object"})),
        ("tools", json!([])),
    ] {
        let mut p = base.clone();
        p[name] = v;
        differs(request("gpt-4o", "hi", p), None, None, name);
    }
    differs(
        request("gpt-4o-mini", "hi", base.clone()),
        None,
        None,
        "model",
    );
    differs(
        request("gpt-4o", "hi!", base.clone()),
        None,
        None,
        "message",
    );
    differs(
        request("gpt-4o", "hi", base.clone()),
        Some("alice"),
        None,
        "tenant",
    );
    differs(
        request("gpt-4o", "hi", base.clone()),
        Some("bob"),
        None,
        "another tenant",
    );
    differs(
        request("gpt-4o", "hi", base.clone()),
        None,
        Some("ns"),
        "namespace",
    );
    // The tenant is the caller, given apart: a `user` parameter alone is not hashed twice.
    let mut with_user = base;
    with_user["user"] = json!("alice");
    assert_eq!(
        key_of(None, Some("alice"), &request("gpt-4o", "hi", with_user)),
        key_of(
            None,
            Some("alice"),
            &request(
                "gpt-4o",
                "hi",
                json!({"temperature": 0.2, "max_tokens": 50, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]})
            )
        )
    );
}

// ---------------------------------------------------------------------------------------------
// The Redis store.

fn redis_config(url: &str) -> RedisConfig {
    let mut cfg = RedisConfig::new(RedisTarget::Url(url.to_owned()));
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.command_timeout = Duration::from_millis(250);
    cfg
}

#[tokio::test]
async fn redis_store_keys_values_and_ttls() {
    let server = RedisServer::start(&[]);
    let cache = RedisCache::new(redis_config(&server.url()), "test:cache");
    assert_eq!(cache.get("ns:abc").await.unwrap(), None);
    cache
        .set("ns:abc", "{\"v\":1}".into(), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    cache.set("forever", "F".into(), None).await.unwrap();
    assert_eq!(
        cache.get("ns:abc").await.unwrap().as_deref(),
        Some("{\"v\":1}")
    );
    let raw = raw_command(server.port, "GET test:cache:ns:abc").unwrap();
    assert!(raw.contains("{\"v\":1}"), "{raw}");
    let pttl: i64 = raw_command(server.port, "PTTL test:cache:ns:abc")
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((29_000..=30_000).contains(&pttl), "SET PX: {pttl}");
    assert_eq!(
        raw_command(server.port, "PTTL test:cache:forever")
            .unwrap()
            .trim(),
        ":-1"
    );
    cache
        .set("short", "S".into(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert_eq!(cache.degraded_ops(), 0);
    assert_eq!(DEFAULT_PREFIX, "llmux:cache");
}

#[tokio::test]
async fn redis_store_misses_while_redis_is_down_and_recovers() {
    let mut server = RedisServer::start(&[]);
    let cache = RedisCache::new(redis_config(&server.url()), DEFAULT_PREFIX);
    cache.set("k", "V".into(), None).await.unwrap();
    server.kill();
    // A lookup is a miss and a store is skipped, quickly, without an error.
    let started = std::time::Instant::now();
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache.set("k2", "V2".into(), None).await.unwrap();
    assert_eq!(cache.get("k2").await.unwrap(), None);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(cache.degraded_ops() >= 3);
    server.restart();
    tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(100)).await;
    // The first call after the pause reaches Redis again (the dataset was lost with it).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        cache.set("k3", "V3".into(), None).await.unwrap();
        if cache.get("k3").await.unwrap().as_deref() == Some("V3") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_configured_while_down_connects_when_it_comes_up() {
    let port = common::redis_harness::free_port();
    let cache = RedisCache::new(
        redis_config(&format!("redis://127.0.0.1:{port}")),
        DEFAULT_PREFIX,
    );
    assert_eq!(cache.get("k").await.unwrap(), None);
    assert_eq!(cache.degraded_ops(), 1);
    let _server = RedisServer::start_on(port, &[]);
    tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(50)).await;
    cache.set("k", "V".into(), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("V"));
}

// ---------------------------------------------------------------------------------------------
// The cache hook on the pipeline, over the fake upstream.

#[cfg(feature = "server")]
mod pipeline {
    use super::*;

    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use _llmux::cache::{CacheHook, CacheMode, CacheSettings};
    use _llmux::hooks::{Hook, Pipeline};
    use _llmux::pipeline::{completion, completion_stream, CallOptions};
    use _llmux::providers::{Endpoint, Secret};
    use _llmux::testing::fake_upstream::{spawn, FakeHandle, DEFAULT_REPLY};
    use _llmux::types::ChatCompletion;
    use _llmux::ErrorKind;

    struct Setup {
        fake: FakeHandle,
        hook: Arc<CacheHook>,
    }

    impl Setup {
        async fn new(backend: Arc<dyn CacheBackend>, settings: CacheSettings) -> Self {
            Setup {
                fake: spawn("127.0.0.1:0".parse().unwrap()).await.unwrap(),
                hook: Arc::new(CacheHook::new(backend, settings)),
            }
        }

        async fn memory() -> Self {
            Self::new(Arc::new(MemoryCache::new(100)), CacheSettings::default()).await
        }

        fn opts(&self, key: &str) -> CallOptions {
            let hook: Arc<dyn Hook> = self.hook.clone();
            CallOptions {
                endpoint: Endpoint {
                    api_base: Some(self.fake.base_url()),
                    api_key: Some(Secret::new("sk-test")),
                    ..Default::default()
                },
                extra_headers: vec![("x-fake-key".into(), key.into())],
                hooks: Some(Arc::new(Pipeline::new(vec![hook]))),
                ..Default::default()
            }
        }

        fn upstream_calls(&self, key: &str) -> u64 {
            self.fake.stats(key).requests
        }

        fn hits(&self) -> u64 {
            self.hook.stats().hits.load(Ordering::Relaxed)
        }
    }

    fn req(text: &str, params: Value) -> ChatRequest {
        request("gpt-4o-mini", text, params)
    }

    fn text(r: &ChatCompletion) -> &str {
        r.choices[0].message.content.as_deref().unwrap_or("")
    }

    async fn stream_text(
        req: ChatRequest,
        opts: &CallOptions,
    ) -> (String, _llmux::pipeline::CallMeta) {
        let (mut s, meta) = completion_stream(req, opts).await.unwrap();
        let mut out = String::new();
        while let Some(item) = s.next().await {
            for c in item.unwrap().chunk.choices {
                out.push_str(c.delta.content.as_deref().unwrap_or(""));
            }
        }
        (out, meta)
    }

    #[tokio::test]
    async fn a_hit_does_not_reach_the_upstream_and_costs_nothing() {
        let s = Setup::memory().await;
        let o = s.opts("hit");
        let first = completion(req("hello", json!({"temperature": 0})), &o)
            .await
            .unwrap();
        assert!(!first.meta.cache_hit);
        assert!(first.meta.cost.unwrap() > 0.0);
        let second = completion(req("hello", json!({"temperature": 0})), &o)
            .await
            .unwrap();
        assert_eq!(
            s.upstream_calls("hit"),
            1,
            "the second call was served by the cache"
        );
        assert!(second.meta.cache_hit);
        assert_eq!(second.meta.cost, Some(0.0));
        assert_eq!(second.meta.provider, "openai");
        assert_eq!(second.response, first.response);
        assert_eq!(text(&second.response), DEFAULT_REPLY);
        // Different parameters are another request.
        completion(req("hello", json!({"temperature": 1})), &o)
            .await
            .unwrap();
        assert_eq!(s.upstream_calls("hit"), 2);
        let st = s.hook.stats();
        assert_eq!(
            (
                st.hits.load(Ordering::Relaxed),
                st.misses.load(Ordering::Relaxed),
                st.stores.load(Ordering::Relaxed)
            ),
            (1, 2, 2)
        );
    }

    #[tokio::test]
    async fn no_cache_no_store_and_caching_false() {
        let s = Setup::memory().await;
        let o = s.opts("ctl");
        // no-store: answered, not stored.
        completion(req("q", json!({"cache": {"no-store": true}})), &o)
            .await
            .unwrap();
        completion(req("q", json!({"cache": {"no-store": true}})), &o)
            .await
            .unwrap();
        assert_eq!(s.upstream_calls("ctl"), 2);
        // Stored now; no-cache skips the lookup but stores again.
        completion(req("q", json!({})), &o).await.unwrap();
        assert_eq!(s.upstream_calls("ctl"), 3);
        let fresh = completion(req("q", json!({"cache": {"no-cache": true}})), &o)
            .await
            .unwrap();
        assert!(!fresh.meta.cache_hit);
        assert_eq!(s.upstream_calls("ctl"), 4);
        // caching=False: neither looked up nor stored.
        completion(req("q", json!({"caching": false})), &o)
            .await
            .unwrap();
        assert_eq!(s.upstream_calls("ctl"), 5);
        let hit = completion(req("q", json!({})), &o).await.unwrap();
        assert!(hit.meta.cache_hit);
        assert_eq!(
            hit.response.id, fresh.response.id,
            "the no-cache answer was stored"
        );
        assert_eq!(s.upstream_calls("ctl"), 5);
    }

    #[tokio::test]
    async fn ttl_and_s_maxage() {
        let s = Setup::new(
            Arc::new(MemoryCache::new(100)),
            CacheSettings {
                default_ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await;
        let o = s.opts("ttl");
        completion(req("t", json!({"cache": {"ttl": 0.3}})), &o)
            .await
            .unwrap();
        assert!(
            completion(req("t", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !completion(req("t", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit,
            "the entry expired after its own ttl"
        );
        assert_eq!(s.upstream_calls("ttl"), 2);
        // That miss stored the answer with the default TTL; it is young enough for a generous
        // s-maxage, too old for a tiny one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            completion(req("t", json!({"cache": {"s-maxage": 10}})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert!(
            !completion(req("t", json!({"cache": {"s-maxage": 0.01}})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert_eq!(s.upstream_calls("ttl"), 3);
    }

    #[tokio::test]
    async fn tenants_and_namespaces_are_isolated() {
        let s = Setup::memory().await;
        let o = s.opts("tenant");
        completion(req("x", json!({"user": "alice"})), &o)
            .await
            .unwrap();
        let bob = completion(req("x", json!({"user": "bob"})), &o)
            .await
            .unwrap();
        assert!(
            !bob.meta.cache_hit,
            "another tenant never sees alice's answers"
        );
        let anon = completion(req("x", json!({})), &o).await.unwrap();
        assert!(!anon.meta.cache_hit);
        assert!(
            completion(req("x", json!({"user": "alice"})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        let other_ns = completion(
            req("x", json!({"user": "alice", "cache": {"namespace": "b"}})),
            &o,
        )
        .await
        .unwrap();
        assert!(!other_ns.meta.cache_hit);
        assert_eq!(s.upstream_calls("tenant"), 4);
    }

    #[tokio::test]
    async fn a_stream_after_a_unary_call_is_replayed_as_chunks() {
        let s = Setup::memory().await;
        let o = s.opts("replay");
        let first = completion(req("r", json!({})), &o).await.unwrap();
        let (mut st, meta) = completion_stream(
            req("r", json!({"stream_options": {"include_usage": true}})),
            &o,
        )
        .await
        .unwrap();
        assert!(meta.cache_hit);
        assert_eq!(meta.cost, Some(0.0));
        let mut text = String::new();
        let mut chunks = 0;
        let mut usage = None;
        let mut finish = None;
        while let Some(item) = st.next().await {
            let c = item.unwrap().chunk;
            chunks += 1;
            usage = usage.or(c.usage.clone());
            for ch in c.choices {
                text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                finish = finish.or(ch.finish_reason);
            }
        }
        assert!(
            chunks >= 3,
            "role, content, finish (and usage) chunks: {chunks}"
        );
        assert_eq!(text, DEFAULT_REPLY);
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(usage, first.response.usage, "the usage chunk, as asked for");
        assert_eq!(s.upstream_calls("replay"), 1);
    }

    #[tokio::test]
    async fn a_completed_stream_is_stored_and_served() {
        let s = Setup::memory().await;
        let o = s.opts("stored");
        let (streamed, meta) = stream_text(req("s", json!({})), &o).await;
        assert!(!meta.cache_hit);
        assert_eq!(streamed, DEFAULT_REPLY);
        // The store ran before the stream reported its end: the next call hits at once.
        let unary = completion(req("s", json!({})), &o).await.unwrap();
        assert!(unary.meta.cache_hit);
        assert_eq!(text(&unary.response), DEFAULT_REPLY);
        assert_eq!(
            unary.response.choices[0].finish_reason.as_deref(),
            Some("stop")
        );
        let u = unary
            .response
            .usage
            .as_ref()
            .expect("the stream's usage was kept");
        assert!(u.completion_tokens > 0 && u.total_tokens == u.prompt_tokens + u.completion_tokens);
        let (again, meta) = stream_text(req("s", json!({})), &o).await;
        assert!(meta.cache_hit);
        assert_eq!(again, DEFAULT_REPLY);
        assert_eq!(s.upstream_calls("stored"), 1);
    }

    #[tokio::test]
    async fn streamed_tool_calls_are_assembled() {
        let s = Setup::memory().await;
        let mut o = s.opts("tools");
        o.extra_headers
            .push(("x-fake-tool-calls".into(), "2".into()));
        let (mut st, _) = completion_stream(req("use tools", json!({})), &o)
            .await
            .unwrap();
        while let Some(item) = st.next().await {
            item.unwrap();
        }
        drop(st);
        let direct = completion(req("use tools", json!({"caching": false})), &o)
            .await
            .unwrap();
        let hit = completion(req("use tools", json!({})), &o).await.unwrap();
        assert!(hit.meta.cache_hit);
        let calls = hit.response.choices[0].message.tool_calls.as_ref().unwrap();
        let want = direct.response.choices[0]
            .message
            .tool_calls
            .as_ref()
            .unwrap();
        assert_eq!(calls.len(), 2);
        for (a, b) in calls.iter().zip(want) {
            assert_eq!(a.function.name, b.function.name);
            assert_eq!(a.function.arguments, b.function.arguments);
            assert!(!a.id.is_empty());
        }
        assert_eq!(
            hit.response.choices[0].finish_reason,
            direct.response.choices[0].finish_reason
        );
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_stream_is_not_stored() {
        let s = Setup::memory().await;
        let mut o = s.opts("cut");
        o.extra_headers
            .push(("x-fake-cut-after".into(), "3".into()));
        let (mut st, _) = completion_stream(req("c", json!({})), &o).await.unwrap();
        let mut failed = false;
        while let Some(item) = st.next().await {
            failed |= item.is_err();
        }
        assert!(failed);
        let o = s.opts("cut");
        let (mut st, _) = completion_stream(req("c", json!({})), &o).await.unwrap();
        st.next().await.unwrap().unwrap();
        drop(st);
        assert!(
            !completion(req("c", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert_eq!(s.upstream_calls("cut"), 3);
    }

    #[tokio::test]
    async fn controls_never_reach_the_upstream_and_malformed_ones_are_refused() {
        let s = Setup::memory().await;
        completion(
            req("m", json!({"caching": true, "cache": {"ttl": 5}})),
            &s.opts("strip"),
        )
        .await
        .unwrap();
        let body = s.fake.stats("strip").last_body.unwrap();
        assert!(
            body.get("cache").is_none() && body.get("caching").is_none(),
            "{body}"
        );
        // Without any cache configured too.
        let mut bare = s.opts("strip-bare");
        bare.hooks = None;
        completion(
            req("m", json!({"caching": true, "cache": {"no-cache": true}})),
            &bare,
        )
        .await
        .unwrap();
        let (mut st, _) = completion_stream(req("m", json!({"cache": {"no-store": true}})), &bare)
            .await
            .unwrap();
        while st.next().await.is_some() {}
        let body = s.fake.stats("strip-bare").last_body.unwrap();
        assert!(
            body.get("cache").is_none() && body.get("caching").is_none(),
            "{body}"
        );

        let e = completion(req("m", json!({"cache": {"ttl": "soon"}})), &s.opts("bad"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("ttl"), "{}", e.message);
        assert_eq!(s.upstream_calls("bad"), 0);
    }

    #[tokio::test]
    async fn default_off_caches_only_calls_that_ask() {
        let s = Setup::new(
            Arc::new(MemoryCache::new(100)),
            CacheSettings {
                mode: CacheMode::DefaultOff,
                ..Default::default()
            },
        )
        .await;
        let o = s.opts("off");
        completion(req("o", json!({})), &o).await.unwrap();
        assert!(
            !completion(req("o", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        completion(req("o", json!({"caching": true})), &o)
            .await
            .unwrap();
        assert!(
            completion(req("o", json!({"cache": {"use-cache": true}})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert!(
            !completion(req("o", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert_eq!(s.upstream_calls("off"), 4);
    }

    #[tokio::test]
    async fn mock_answers_are_neither_served_nor_stored() {
        let s = Setup::memory().await;
        let mut o = s.opts("mock");
        o.mock = Some(_llmux::pipeline::Mock::Text("canned".into()));
        completion(req("m", json!({})), &o).await.unwrap();
        let again = completion(req("m", json!({})), &o).await.unwrap();
        assert!(!again.meta.cache_hit);
        assert_eq!(s.hits(), 0);
        assert_eq!(s.hook.stats().stores.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn redis_backed_hits_and_an_outage_costs_misses_only() {
        let mut server = RedisServer::start(&[]);
        let backend = Arc::new(RedisCache::new(redis_config(&server.url()), "t:cache"));
        let s = Setup::new(
            backend.clone(),
            CacheSettings {
                namespace: Some("app".into()),
                default_ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await;
        let o = s.opts("redis");
        completion(req("r", json!({})), &o).await.unwrap();
        let hit = completion(req("r", json!({})), &o).await.unwrap();
        assert!(hit.meta.cache_hit);
        let keys = raw_command(server.port, "KEYS t:cache:app:*").unwrap();
        assert!(
            keys.starts_with("*1\r\n"),
            "one key under prefix:namespace: {keys}"
        );
        // A streamed answer is stored in Redis too.
        stream_text(req("streamed", json!({})), &o).await;
        assert!(
            completion(req("streamed", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
        );
        assert_eq!(s.upstream_calls("redis"), 2);

        server.kill();
        for _ in 0..3 {
            let done = completion(req("r", json!({})), &o).await.unwrap();
            assert!(!done.meta.cache_hit);
            assert_eq!(text(&done.response), DEFAULT_REPLY);
        }
        let (t, _) = stream_text(req("r", json!({})), &o).await;
        assert_eq!(t, DEFAULT_REPLY);
        assert_eq!(s.upstream_calls("redis"), 6);
        assert!(backend.degraded_ops() >= 4);
        assert_eq!(
            s.hook.stats().errors.load(Ordering::Relaxed),
            0,
            "the Redis store degrades by itself: the hook saw plain misses"
        );

        server.restart();
        tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(100)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            completion(req("back", json!({})), &o).await.unwrap();
            if completion(req("back", json!({})), &o)
                .await
                .unwrap()
                .meta
                .cache_hit
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cache did not recover"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
