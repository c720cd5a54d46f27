//! `RedisStats` and `RedisPool` against real `redis-server` processes: a standalone server, a
//! three-master Redis Cluster and a Sentinel group, started (and killed, and restarted) by the
//! harness in `tests/common` on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis_harness::{raw_command, RedisCluster, RedisServer, SentinelGroup};

use _llmux::redis::{RedisConfig, RedisPool, RedisTarget};
use _llmux::router::redis_stats::RedisStats;
use _llmux::router::stats::{ClusterStats, DeploymentStats, LocalStats, Outcome};
use _llmux::ErrorKind;

fn config(target: RedisTarget) -> RedisConfig {
    RedisConfig::new(target)
}

async fn pool(url: &str) -> RedisPool {
    RedisPool::connect(&config(RedisTarget::Url(url.to_owned())))
        .await
        .unwrap()
}

fn stats(pool: &RedisPool, lease: Duration) -> RedisStats {
    RedisStats::new(pool.clone(), "llmux:rs", lease)
}

fn ok(ms: u64, tokens: u64) -> Outcome {
    Outcome {
        latency: Duration::from_millis(ms),
        ttft: None,
        tokens,
        error: None,
    }
}

fn failed(ms: u64, kind: ErrorKind) -> Outcome {
    Outcome {
        latency: Duration::from_millis(ms),
        ttft: None,
        tokens: 0,
        error: Some(kind),
    }
}

async fn one(s: &dyn ClusterStats, id: &str) -> DeploymentStats {
    s.snapshot(&[id.to_owned()]).await.unwrap().pop().unwrap()
}

/// Waits out the end of a wall-clock minute so that a sequence of a few seconds stays in one
/// window (Redis's clock and ours are the same machine's).
async fn not_near_minute_end() {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let into = secs % 60.0;
    if into > 54.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.5 - into)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks.

/// Two instances (two "processes") on one Redis see each other's in-flight, tokens and
/// cooldowns.
async fn two_instances_share(pool_a: &RedisPool, pool_b: &RedisPool) {
    not_near_minute_end().await;
    let a = stats(pool_a, Duration::from_secs(120));
    let b = stats(pool_b, Duration::from_secs(120));
    let ids: Vec<String> = ["dep-1", "dep-2", "dep-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    a.begin("dep-1").await.unwrap();
    a.begin("dep-1").await.unwrap();
    b.begin("dep-1").await.unwrap();
    b.begin("dep-2").await.unwrap();
    let seen_by_a = a.snapshot(&ids).await.unwrap();
    let seen_by_b = b.snapshot(&ids).await.unwrap();
    assert_eq!(seen_by_a, seen_by_b);
    assert_eq!(seen_by_a[0].in_flight, 3);
    assert_eq!(seen_by_a[0].requests_this_minute, 3);
    assert_eq!(seen_by_a[1].in_flight, 1);
    assert_eq!(seen_by_a[2], DeploymentStats::default());

    // B ends one of its own; A's two stay in flight.
    b.end("dep-1", &ok(100, 30)).await.unwrap();
    a.add_tokens("dep-1", 12).await.unwrap();
    let st = one(&a, "dep-1").await;
    assert_eq!(st.in_flight, 2);
    assert_eq!(st.tokens_this_minute, 42);
    assert_eq!(st.successes, 1);
    assert_eq!(st.latency_ewma_ms, Some(100.0));

    // A cooldown set by one is visible to the other at once; shorter ones do not shorten it.
    a.set_cooldown("dep-2", Duration::from_secs(30))
        .await
        .unwrap();
    b.set_cooldown("dep-2", Duration::from_secs(1))
        .await
        .unwrap();
    let left = one(&b, "dep-2").await.cooldown_remaining.unwrap();
    assert!(
        left > Duration::from_secs(29) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    b.clear_cooldown("dep-2").await.unwrap();
    assert_eq!(one(&a, "dep-2").await.cooldown_remaining, None);

    assert_eq!(a.degraded_ops() + b.degraded_ops(), 0);
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_picture() {
    let server = RedisServer::start(&[]);
    let (pa, pb) = (pool(&server.url()).await, pool(&server.url()).await);
    two_instances_share(&pa, &pb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_semantics_as_local_stats() {
    let server = RedisServer::start(&[]);
    let p = pool(&server.url()).await;
    let redis = stats(&p, Duration::from_secs(120));
    let local = LocalStats::new();
    not_near_minute_end().await;

    let mut with_ttft = ok(900, 7);
    with_ttft.ttft = Some(Duration::from_micros(50_500));
    let steps: Vec<(&str, Option<Outcome>)> = vec![
        ("begin", None),
        ("begin", None),
        ("begin", None),
        ("end", Some(ok(100, 5))),
        ("end", Some(ok(200, 0))),
        ("end", Some(failed(1, ErrorKind::RateLimited))),
        ("begin", None),
        ("end", Some(failed(600, ErrorKind::Timeout))),
        ("begin", None),
        ("end", Some(with_ttft.clone())),
        // An unmatched end: in-flight saturates at zero.
        ("end", Some(ok(20, 0))),
        ("tokens", None),
    ];
    for (op, outcome) in &steps {
        for s in [&redis as &dyn ClusterStats, &local] {
            match (*op, outcome) {
                ("begin", _) => s.begin("d").await.unwrap(),
                ("end", Some(o)) => s.end("d", o).await.unwrap(),
                ("tokens", _) => s.add_tokens("d", 70).await.unwrap(),
                _ => unreachable!(),
            }
        }
        let (r, l) = (one(&redis, "d").await, one(&local, "d").await);
        assert_eq!(r.in_flight, l.in_flight, "after {op}");
        assert_eq!(r.requests_this_minute, l.requests_this_minute, "after {op}");
        assert_eq!(r.tokens_this_minute, l.tokens_this_minute, "after {op}");
        assert_eq!(r.fails_this_minute, l.fails_this_minute, "after {op}");
        assert_eq!((r.successes, r.failures), (l.successes, l.failures));
        for (x, y) in [
            (r.latency_ewma_ms, l.latency_ewma_ms),
            (r.ttft_ewma_ms, l.ttft_ewma_ms),
        ] {
            match (x, y) {
                (None, None) => {}
                (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{x} vs {y} after {op}"),
                other => panic!("EWMA mismatch after {op}: {other:?}"),
            }
        }
    }
    let r = one(&redis, "d").await;
    // 100, then 0.2*200+0.8*100 = 120, the 429 ignored, then the 600 ms timeout, then 900.
    let lat = 0.2 * 900.0 + 0.8 * (0.2 * 600.0 + 0.8 * 120.0);
    let lat = 0.2 * 20.0 + 0.8 * lat;
    assert!((r.latency_ewma_ms.unwrap() - lat).abs() < 1e-9);
    assert_eq!(r.ttft_ewma_ms, Some(50.5));
    assert_eq!(
        (
            r.requests_this_minute,
            r.tokens_this_minute,
            r.fails_this_minute
        ),
        (5, 82, 2)
    );

    // The window keys carry a TTL; the lifetime hash does not.
    let mut ttl = redis::cmd("PTTL");
    ttl.arg("llmux:rs:{d}:m");
    let ms: i64 = p.query(ttl).await.unwrap();
    assert!(ms > 100_000 && ms <= 120_000, "{ms}");
    let mut ttl = redis::cmd("PTTL");
    ttl.arg("llmux:rs:{d}:h");
    assert_eq!(p.query::<i64>(ttl).await.unwrap(), -1);

    // Overflowing cooldowns are refused as LocalStats refuses them.
    let err = redis.set_cooldown("d", Duration::MAX).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidConfig);
    assert_eq!(redis.degraded_ops(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_dead_process_expire() {
    let server = RedisServer::start(&[]);
    let p = pool(&server.url()).await;
    not_near_minute_end().await;
    let crashed = stats(&p, Duration::from_secs(1));
    let alive = stats(&p, Duration::from_secs(120));
    crashed.begin("d").await.unwrap();
    crashed.begin("d").await.unwrap();
    alive.begin("d").await.unwrap();
    drop(crashed); // never ends its requests
    assert_eq!(one(&alive, "d").await.in_flight, 3);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let st = one(&alive, "d").await;
    assert_eq!(st.in_flight, 1);
    // The requests still count in the minute.
    assert_eq!(st.requests_this_minute, 3);
    alive.end("d", &ok(5, 0)).await.unwrap();
    assert_eq!(one(&alive, "d").await.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_reloads_scripts() {
    let server = RedisServer::start(&[]);
    let p = pool(&server.url()).await;
    let s = stats(&p, Duration::from_secs(120));
    s.begin("d").await.unwrap();
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    let _: String = p.query(flush).await.unwrap();
    s.end("d", &ok(10, 3)).await.unwrap();
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    let _: String = p.query(flush).await.unwrap();
    let st = one(&s, "d").await;
    assert_eq!(
        (st.in_flight, st.successes, st.tokens_this_minute),
        (0, 1, 3)
    );
    assert_eq!(s.degraded_ops(), 0);
}

/// Runs `f`, asserting it stays within the command deadline plus a margin.
async fn timed<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    let took = start.elapsed();
    assert!(took <= limit, "{what} took {took:?} (limit {limit:?})");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_degrades_locally_and_recovers() {
    let mut server = RedisServer::start(&[]);
    let p = pool(&server.url()).await;
    let s = stats(&p, Duration::from_secs(120));
    let limit = p.command_timeout() + Duration::from_millis(150);
    s.begin("d").await.unwrap();
    assert_eq!(s.degraded_ops(), 0);

    // A hung server (SIGSTOP): calls give up at the deadline and are served locally.
    let stop = Command::new("kill")
        .args(["-STOP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    timed("begin on a hung server", limit, s.begin("d"))
        .await
        .unwrap();
    assert_eq!(s.degraded_ops(), 1);
    // A dead server: refused or dropped, same policy.
    server.kill();
    for i in 0..10 {
        timed("end while down", limit, s.end("d", &ok(10, 1)))
            .await
            .unwrap();
        timed("snapshot while down", limit, one(&s, "d")).await;
        if i == 4 {
            // Past the 1 s pause: the next calls probe Redis (and fail again, in time).
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    timed(
        "cooldown while down",
        limit,
        s.set_cooldown("d", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let during = s.degraded_ops();
    assert!(during >= 21, "{during}");
    // Served locally: the locally begun request was ended locally, and the cooldown holds.
    let st = one(&s, "d").await;
    assert!(st.cooldown_remaining.is_some());
    assert_eq!(st.in_flight, 0);

    // Redis comes back on the same port: the same instance goes back to it by itself.
    server.restart();
    let other = stats(&pool(&server.url()).await, Duration::from_secs(120));
    other.begin("shared").await.unwrap();
    let start = Instant::now();
    loop {
        let st = timed("snapshot after restart", limit, one(&s, "shared")).await;
        if st.in_flight == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "did not go back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = s.degraded_ops();
    s.begin("shared").await.unwrap();
    assert_eq!(one(&other, "shared").await.in_flight, 2);
    assert_eq!(s.degraded_ops(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_shares_one_picture() {
    let cluster = RedisCluster::start();
    let connect = || async {
        RedisPool::connect(&config(RedisTarget::Cluster(cluster.urls())))
            .await
            .unwrap()
    };
    let (pa, pb) = (connect().await, connect().await);
    two_instances_share(&pa, &pb).await;
    // The deployments really are spread over the masters (one slot per id).
    let slots: std::collections::HashSet<i64> = ["dep-1", "dep-2", "dep-3", "x", "y"]
        .iter()
        .map(|id| {
            let out = raw_command(
                cluster.nodes[0].port,
                &format!("CLUSTER KEYSLOT llmux:rs:{{{id}}}:h"),
            )
            .unwrap();
            out.trim().trim_start_matches(':').parse().unwrap()
        })
        .collect();
    assert!(slots.len() > 1);
    // SCRIPT FLUSH on every master: still reloaded on the right node.
    for n in &cluster.nodes {
        assert!(raw_command(n.port, "SCRIPT FLUSH")
            .unwrap()
            .starts_with("+OK"));
    }
    let s = stats(&pa, Duration::from_secs(120));
    s.begin("dep-3").await.unwrap();
    assert_eq!(one(&s, "dep-3").await.in_flight, 1);
    assert_eq!(s.degraded_ops(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let group = SentinelGroup::start();
    let replica_port = group.replica.port;
    let sentinel_port = group.sentinel_port;
    let cfg = config(RedisTarget::Sentinel {
        master_name: SentinelGroup::MASTER_NAME.into(),
        nodes: vec![format!("redis://127.0.0.1:{sentinel_port}")],
    });
    let (pa, pb) = (
        RedisPool::connect(&cfg).await.unwrap(),
        RedisPool::connect(&cfg).await.unwrap(),
    );
    two_instances_share(&pa, &pb).await;

    // A failover: the replica becomes the master, the old master a replica (READONLY).
    group.failover();
    let s = stats(&pa, Duration::from_secs(120));
    let start = Instant::now();
    loop {
        // The pool keeps writing to the old master until it is demoted (READONLY), then asks
        // the sentinel again and moves to the new one.
        let before = s.degraded_ops();
        s.begin("after-failover").await.unwrap();
        let mut port = redis::cmd("CONFIG");
        port.arg("GET").arg("port");
        let port: Vec<String> = pa.query(port).await.unwrap_or_default();
        let on_new_master = port.get(1) == Some(&replica_port.to_string())
            && raw_command(replica_port, "ROLE").is_some_and(|r| r.contains("master"))
            && s.degraded_ops() == before;
        if on_new_master {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the pool did not follow the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new master holds the shared state written through the pool after the failover.
    let mut count = redis::cmd("ZCARD");
    count.arg("llmux:rs:{after-failover}:lease");
    let n: i64 = pa.query(count).await.unwrap();
    assert!(n >= 1);
    let direct = pool(&format!("redis://127.0.0.1:{replica_port}")).await;
    let mut count = redis::cmd("ZCARD");
    count.arg("llmux:rs:{after-failover}:lease");
    assert_eq!(direct.query::<i64>(count).await.unwrap(), n);
    drop(group);
}
