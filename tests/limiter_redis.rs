//! The Redis limiter against real `redis-server` processes: exact admission under a burst,
//! all-or-nothing across scopes, TPM reserve/settle (once, and across lease periods), leases of
//! requests never settled running out, `SCRIPT FLUSH`, an outage under
//! each failure policy, Redis Cluster and a Sentinel failover. The harness is in
//! `tests/common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_harness::{raw_command, RedisCluster, RedisServer, SentinelGroup};

use _llmux::limiter::Rate;
use _llmux::limiter::{
    admit, Demand, FailPolicy, Placement, RateLimiter, RedisLimiter, RedisLimiterOptions,
    ScopeLimits,
};
use _llmux::redis::{RedisConfig, RedisTarget};
use _llmux::ErrorKind;

fn opts(policy: FailPolicy) -> RedisLimiterOptions {
    RedisLimiterOptions {
        policy,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_window: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A limiter whose Redis calls may take 2 s: on a loaded test machine a slow call must not
/// turn into a policy decision where a test counts exact admissions.
async fn limiter(target: RedisTarget, policy: FailPolicy) -> Arc<dyn RateLimiter> {
    let mut cfg = RedisConfig::new(target);
    cfg.command_timeout = Duration::from_secs(2);
    RedisLimiter::start(cfg, opts(policy)).await
}

/// A limiter with the default deadlines (250 ms a call), for the outage test.
async fn strict_limiter(target: RedisTarget, policy: FailPolicy) -> Arc<dyn RateLimiter> {
    RedisLimiter::start(RedisConfig::new(target), opts(policy)).await
}

fn url(server: &RedisServer) -> RedisTarget {
    RedisTarget::Url(server.url())
}

fn rpm(scope: &str, limit: u64) -> ScopeLimits {
    ScopeLimits {
        rpm: Some(Rate::per_minute(limit)),
        ..ScopeLimits::new(scope)
    }
}

fn demand(scopes: Vec<ScopeLimits>, tokens: u64) -> Demand {
    Demand {
        request_id: format!("r{:016x}", rand::random::<u64>()),
        scopes,
        tokens,
    }
}

/// Offers `n` admissions at once on `scopes`; how many passed.
async fn burst(l: &Arc<dyn RateLimiter>, scopes: Vec<ScopeLimits>, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let l = l.clone();
            let d = demand(scopes.clone(), 0);
            tokio::spawn(async move { admit(&l, d).await.map(|t| t.settle(0)).is_ok() })
        })
        .collect();
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_admits_exactly_the_burst() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    // 50 per minute, burst 50 (the default): 500 at once admit 50.
    assert_eq!(burst(&l, vec![rpm("burst-a", 50)], 500).await, 50);
    // A burst of 5 on a limit of 600/min: 5 at once.
    let five = ScopeLimits {
        rpm: Some(Rate::per_minute(600).with_burst(5)),
        ..ScopeLimits::new("burst-b")
    };
    assert_eq!(burst(&l, vec![five.clone()], 100).await, 5);
    // Then one every 100 ms.
    tokio::time::sleep(Duration::from_millis(230)).await;
    assert_eq!(burst(&l, vec![five], 100).await, 2);
    // The refusal says how long to wait.
    let e = admit(&l, demand(vec![rpm("burst-a", 50)], 0))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    let wait = e.retry_after.unwrap();
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_millis(1200),
        "{wait:?}"
    );
    assert_eq!(l.stats().redis_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_of_exactly_the_burst_passes_an_idle_limit() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    // 13 per minute: the tolerance 13 x (60 s / 13) is not exact in floating point.
    for limit in [13u64, 27, 41] {
        let s = ScopeLimits {
            tpm: Some(Rate::per_minute(limit)),
            ..ScopeLimits::new(format!("exact-{limit}"))
        };
        let t = admit(&l, demand(vec![s], 10_000)).await.unwrap();
        t.settle_now(limit).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_limits_of_a_request_or_none() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    let wide = rpm("aon-wide", 10);
    let narrow = rpm("aon-narrow", 2);
    assert_eq!(burst(&l, vec![wide.clone(), narrow], 10).await, 2);
    // The wide scope was charged only for the two that passed.
    assert_eq!(burst(&l, vec![wide], 20).await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refunds_readmit_and_usage_stays_within_the_limit() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    let tpm = 10_000u64;
    let scope = ScopeLimits {
        tpm: Some(Rate::per_minute(tpm)),
        ..ScopeLimits::new("tpm")
    };
    let used = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = Duration::from_secs(3);
    // 50 concurrent callers, each reserving 1000 tokens and using 100.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (l, scope, used, admitted) =
                (l.clone(), scope.clone(), used.clone(), admitted.clone());
            tokio::spawn(async move {
                while started.elapsed() < run {
                    match admit(&l, demand(vec![scope.clone()], 1000)).await {
                        Ok(t) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            t.settle_now(100).await.unwrap();
                            used.fetch_add(100, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.kind, ErrorKind::RateLimited);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (admitted, used) = (
        admitted.load(Ordering::Relaxed),
        used.load(Ordering::Relaxed),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = tpm as f64 + tpm as f64 * elapsed / 60.0;
    println!(
        "tpm: {admitted} admitted, {used} tokens used in {elapsed:.1} s, allowed {allowed:.0}"
    );
    // Without refunds only 10 reservations of 1000 would fit; with them about 100.
    assert!(admitted > 60, "refunds did not re-admit: {admitted}");
    // Usage within the limit plus one request's reservation.
    assert!((used as f64) <= allowed + 1000.0, "{used} > {allowed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_counts_once_even_when_repeated() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    let scope = ScopeLimits {
        tpm: Some(Rate::per_minute(1000)),
        max_parallel: Some(5),
        ..ScopeLimits::new("once")
    };
    // Members of the scope's open sets (every epoch's).
    let open = || {
        raw_command(
            server.port,
            "EVAL \"local n = 0 for _, k in ipairs(redis.call('KEYS', 'llmux:rl:{once}:open:*')) \
             do n = n + redis.call('SCARD', k) end return n\" 0",
        )
        .unwrap()
    };
    let d = demand(vec![scope.clone()], 100);
    let Ok(admitted) = l.admit(&d).await.unwrap() else {
        panic!("refused")
    };
    assert_eq!(open().trim(), ":1", "the admitted request is open");
    // Used 400 of the 100 reserved: a debt of 300. Settled three times (a retried settle).
    for _ in 0..3 {
        l.settle(&d.request_id, &admitted, 400, false)
            .await
            .unwrap();
    }
    // 400 used, 600 left: 600 fit once, not twice.
    let t = admit(&l, demand(vec![scope.clone()], 590)).await.unwrap();
    assert!(admit(&l, demand(vec![scope.clone()], 100)).await.is_err());
    t.settle_now(590).await.unwrap();
    // Every parallel lease was released by its settle.
    assert_eq!(open().trim(), ":0");
}

/// A limiter whose parallel leases last `lease` (open requests are kept per lease period).
async fn leased_limiter(server: &RedisServer, lease: Duration) -> Arc<dyn RateLimiter> {
    let mut cfg = RedisConfig::new(url(server));
    cfg.command_timeout = Duration::from_secs(2);
    RedisLimiter::start(
        cfg,
        RedisLimiterOptions {
            lease,
            ..opts(FailPolicy::Closed)
        },
    )
    .await
}

/// Whether one more request on `scope` is refused.
async fn refused(l: &Arc<dyn RateLimiter>, scope: &ScopeLimits) -> bool {
    l.admit(&demand(vec![scope.clone()], 0))
        .await
        .unwrap()
        .is_err()
}

/// Fails when any open-request set of `scope` is left in Redis.
fn assert_no_open_sets(server: &RedisServer, scope: &str) {
    let keys = raw_command(server.port, &format!("KEYS llmux:rl:{{{scope}}}:open:*")).unwrap();
    assert!(keys.starts_with("*0"), "open sets left: {keys}");
}

/// Sleeps until `offset` past the next multiple of `period` on Redis's clock.
async fn next_period(server: &RedisServer, period: Duration, offset: Duration) {
    let time = raw_command(server.port, "TIME").unwrap();
    let nums: Vec<u128> = time.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let now_us = nums[0] * 1_000_000 + nums[1];
    let p = period.as_micros();
    let wait = p - now_us % p + offset.as_micros();
    tokio::time::sleep(Duration::from_micros(wait as u64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_in_the_next_lease_period_still_applies() {
    let server = RedisServer::start(&[]);
    let lease = Duration::from_secs(1);
    let l = leased_limiter(&server, lease).await;
    let scope = ScopeLimits {
        tpm: Some(Rate::per_minute(1000)),
        max_parallel: Some(1),
        ..ScopeLimits::new("periods")
    };
    // Admitted early in one period, settled early in the next: found in the previous set.
    next_period(&server, lease, Duration::from_millis(50)).await;
    let d = demand(vec![scope.clone()], 900);
    let Ok(admitted) = l.admit(&d).await.unwrap() else {
        panic!("refused")
    };
    assert!(refused(&l, &scope).await, "one request may be in flight");
    next_period(&server, lease, Duration::from_millis(50)).await;
    l.settle(&d.request_id, &admitted, 100, false)
        .await
        .unwrap();
    // The slot is free and 800 of the 900 reserved came back: 850 fit now.
    let t = admit(&l, demand(vec![scope.clone()], 850)).await.unwrap();
    t.settle_now(850).await.unwrap();
    assert_no_open_sets(&server, "periods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_never_settled_runs_out_within_two_periods() {
    let server = RedisServer::start(&[]);
    let lease = Duration::from_secs(1);
    let l = leased_limiter(&server, lease).await;
    let scope = ScopeLimits {
        max_parallel: Some(1),
        ..ScopeLimits::new("crashed")
    };
    // Admitted and never settled (its process died): the slot stays taken...
    next_period(&server, lease, Duration::from_millis(50)).await;
    let Ok(_lost) = l.admit(&demand(vec![scope.clone()], 0)).await.unwrap() else {
        panic!("refused")
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        refused(&l, &scope).await,
        "the lease still counts in the next period"
    );
    // ...until its period is two behind, when its set has expired as well (at the end of the
    // next period, and a second more).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let t = admit(&l, demand(vec![scope.clone()], 0)).await.unwrap();
    t.settle_now(0).await.unwrap();
    assert_no_open_sets(&server, "crashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_under_load_fails_nothing() {
    let server = RedisServer::start(&[]);
    // What is tested is the reload after NOSCRIPT, not the deadline: a loaded test machine
    // must not turn a slow call into a failure here.
    let mut cfg = RedisConfig::new(url(&server));
    cfg.command_timeout = Duration::from_secs(3);
    let l: Arc<dyn RateLimiter> = RedisLimiter::start(cfg, opts(FailPolicy::Closed)).await;
    let scope = rpm("flush", 1_000_000);
    let port = server.port;
    let flusher = tokio::task::spawn_blocking(move || {
        let mut flushed = 0;
        for _ in 0..20 {
            if raw_command(port, "SCRIPT FLUSH").is_some_and(|r| r.starts_with("+OK")) {
                flushed += 1;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(flushed >= 10, "only {flushed} flushes went through");
    });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (l, scope) = (l.clone(), scope.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    let t = admit(&l, demand(vec![scope.clone()], 0)).await.unwrap();
                    t.settle_now(0).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    flusher.await.unwrap();
    let s = l.stats();
    assert_eq!((s.redis_errors, s.fallback_admitted), (0, 0), "{s:?}");
    assert_eq!(s.admitted, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_count_live_processes() {
    let server = RedisServer::start(&[]);
    let a = limiter(url(&server), FailPolicy::Local).await;
    let b = limiter(url(&server), FailPolicy::Local).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.stats().live_processes, 2);
    assert_eq!(b.stats().live_processes, 2);
    drop(b);
    // b stops beating: after the window it no longer counts.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(a.stats().live_processes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_follows_each_policy_and_recovers_by_itself() {
    let mut server = RedisServer::start(&[]);
    let open = strict_limiter(url(&server), FailPolicy::Open).await;
    let closed = strict_limiter(url(&server), FailPolicy::Closed).await;
    let local = strict_limiter(url(&server), FailPolicy::Local).await;
    // Two more processes beat on this Redis: `local` enforces a third of each limit.
    let _peer_a = strict_limiter(url(&server), FailPolicy::Local).await;
    let _peer_b = strict_limiter(url(&server), FailPolicy::Local).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(local.stats().live_processes, 5);
    let scope = |name: &str| rpm(name, 300);

    server.kill();
    let outage = Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut open_ok, mut closed_ok, mut local_ok) = (0, 0, 0);
    let mut closed_wait = None;
    let mut rounds = 0u64;
    while outage.elapsed() < Duration::from_secs(10) {
        rounds += 1;
        for (l, n, ok) in [
            (&open, "o", &mut open_ok),
            (&closed, "c", &mut closed_ok),
            (&local, "l", &mut local_ok),
        ] {
            let t0 = Instant::now();
            let out = admit(l, demand(vec![scope(n)], 0)).await;
            slowest = slowest.max(t0.elapsed());
            match out {
                Ok(t) => {
                    *ok += 1;
                    t.settle(0);
                }
                Err(e) => {
                    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
                    if n == "c" {
                        closed_wait = e.retry_after;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "outage: open {open_ok}, closed {closed_ok}, local {local_ok} admitted; slowest call {slowest:?}"
    );
    // Nothing waits past the command deadline (250 ms) plus scheduling.
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    assert!(open_ok > 500, "open admits everything: {open_ok}");
    assert!(
        closed_ok <= 3,
        "closed refuses (a call or two may pass before the outage is seen): {closed_ok}"
    );
    assert!(closed_wait.is_some_and(|w| w > Duration::ZERO));
    // local: 300/min shared by 5 live processes = 60/min here: a burst of 60 plus 1 a second.
    assert!(
        (60..=75).contains(&local_ok),
        "local share: {local_ok} admitted in 10 s"
    );
    for l in [&open, &closed, &local] {
        let s = l.stats();
        assert!(s.breaker_open && s.breaker_trips >= 1, "{s:?}");
        // Heartbeats (5 a second here) and one probe at a time reach Redis; calls do not.
        assert!(
            s.redis_errors * 10 < rounds,
            "the breaker spares Redis calls: {s:?} over {rounds} calls"
        );
    }

    server.restart();
    let back = Instant::now();
    for l in [&open, &closed, &local] {
        loop {
            let before = l.stats().admitted;
            let r = admit(l, demand(vec![rpm("after", 1_000_000)], 0)).await;
            if r.is_ok() && l.stats().admitted > before && !l.stats().breaker_open {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(8),
                "no recovery: {:?}",
                l.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("recovered {:?} after Redis came back", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_holds_the_limits_across_slots() {
    let cluster = RedisCluster::start();
    let l = limiter(RedisTarget::Cluster(cluster.urls()), FailPolicy::Closed).await;
    assert_eq!(burst(&l, vec![rpm("c-one", 40)], 200).await, 40);
    // Scopes in different slots, all or nothing: the narrow one's refusals are undone on the
    // wide one.
    let (wide, narrow) = (rpm("c-wide", 20), rpm("c-narrow", 5));
    assert_eq!(burst(&l, vec![wide.clone(), narrow], 30).await, 5);
    assert_eq!(burst(&l, vec![wide], 40).await, 15);
    for n in &cluster.nodes {
        assert!(raw_command(n.port, "SCRIPT FLUSH")
            .unwrap()
            .starts_with("+OK"));
    }
    assert_eq!(burst(&l, vec![rpm("c-two", 10)], 30).await, 10);
    assert_eq!(l.stats().redis_errors, 0);

    // Blocks on Cluster: a busy scope with all three limits admits from blocks fetched by its
    // own slot's calls, and every block's slots and tokens settle (1000 tokens reserved, 100
    // used a call: the bucket holds what was used, less what drained at 1000 a second).
    let scope = ScopeLimits {
        rpm: Some(Rate::per_minute(100_000_000)),
        tpm: Some(Rate::per_minute(60_000).with_burst(10_000_000)),
        max_parallel: Some(1000),
        ..ScopeLimits::new("c-blocks")
    };
    let before = l.stats();
    let started = Instant::now();
    let passed = hammer(&l, &[scope], 1000, 100, 16, Duration::from_millis(600)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = l.stats();
    let prefetched = s.prefetched - before.prefetched;
    println!("cluster blocks: {passed} admitted, {prefetched} from blocks");
    assert!(prefetched > passed / 2, "few admissions from blocks: {s:?}");
    let mut held = None;
    for n in &cluster.nodes {
        let keys = raw_command(n.port, "KEYS llmux:rl:{c-blocks}:open:*").unwrap();
        assert!(keys.starts_with("*0"), "open sets left: {keys}");
        held = held.or(tokens_held(n.port, "c-blocks"));
    }
    let held = held.expect("the tokens TAT is on one node");
    assert_bucket_holds_what_was_used(held, passed, started);
    assert_eq!((s.redis_errors, s.settles_dropped), (0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_keeps_limiting() {
    let mut group = SentinelGroup::start();
    let target = RedisTarget::Sentinel {
        master_name: SentinelGroup::MASTER_NAME.into(),
        nodes: vec![group.sentinel_url()],
    };
    let l = limiter(target, FailPolicy::Local).await;
    assert_eq!(burst(&l, vec![rpm("s-one", 30)], 100).await, 30);

    // Load through the failover: four callers admitting without pause.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (l, stop) = (l.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match admit(&l, demand(vec![rpm("s-load", 1_000_000)], 0)).await {
                        Ok(t) => t.settle(0),
                        Err(_) => failed += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The master dies; the sentinel promotes the replica.
    group.master.kill();
    let started = Instant::now();
    let scope = rpm("s-after", 1_000_000);
    loop {
        let t = admit(&l, demand(vec![scope.clone()], 0)).await.unwrap();
        let decided_by_redis = t.placement() == Some(Placement::Primary);
        t.settle(0);
        // The old master is gone: an admission decided by Redis now was decided on the new one.
        let promoted =
            raw_command(group.replica.port, "ROLE").is_some_and(|r| r.contains("master"));
        if promoted && decided_by_redis {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the limiter did not follow the failover: {:?}",
            l.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "limiting on the new master {:?} after the master died ({:?})",
        started.elapsed(),
        l.stats()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        assert_eq!(
            t.await.unwrap(),
            0,
            "policy local: no call failed during the failover"
        );
    }
    assert_eq!(burst(&l, vec![rpm("s-two", 25)], 100).await, 25);
    let keys = raw_command(group.replica.port, "EXISTS llmux:rl:{s-two}:rpm").unwrap();
    assert_eq!(keys.trim(), ":1", "the new master holds the limit's state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_database_from_a_config_block() {
    let server = RedisServer::start(&["--requirepass", "s3cr3t-pw"]);
    let block = |pw: &str| serde_json::json!({"host": "127.0.0.1", "port": server.port, "password": pw, "db": 3});
    let cfg = RedisConfig::from_json(&block("s3cr3t-pw")).unwrap();
    let l: Arc<dyn RateLimiter> = RedisLimiter::start(cfg, opts(FailPolicy::Closed)).await;
    assert_eq!(burst(&l, vec![rpm("pw", 7)], 20).await, 7);
    let in_db3 = raw_command(
        server.port,
        "AUTH s3cr3t-pw\r\nSELECT 3\r\nEXISTS llmux:rl:{pw}:rpm",
    );
    assert!(
        in_db3.is_some_and(|r| r.contains(":1")),
        "the limit lives in db 3"
    );

    // A wrong password: Redis refuses, the policy decides, and no message shows a password.
    let cfg = RedisConfig::from_json(&block("wrong-pw")).unwrap();
    let bad: Arc<dyn RateLimiter> = RedisLimiter::start(cfg, opts(FailPolicy::Closed)).await;
    let e = admit(&bad, demand(vec![rpm("pw2", 7)], 0))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(
        !e.message.contains("wrong-pw") && !e.message.contains("s3cr3t"),
        "{e}"
    );
    assert!(!format!("{bad:?}").contains("wrong-pw"));
    assert!(bad.stats().breaker_open);
}

/// Offers admissions on `scopes` from `callers` tasks without pause for `run`; the ones that
/// passed are settled at once with `used` tokens. Returns how many passed.
async fn hammer(
    l: &Arc<dyn RateLimiter>,
    scopes: &[ScopeLimits],
    tokens: u64,
    used: u64,
    callers: usize,
    run: Duration,
) -> u64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (l, scopes) = (l.clone(), scopes.to_vec());
            tokio::spawn(async move {
                let mut passed = 0u64;
                while started.elapsed() < run {
                    match admit(&l, demand(scopes.clone(), tokens)).await {
                        Ok(t) => {
                            passed += 1;
                            t.settle(used);
                        }
                        Err(e) => assert_eq!(e.kind, ErrorKind::RateLimited),
                    }
                    tokio::task::yield_now().await;
                }
                passed
            })
        })
        .collect();
    let mut passed = 0;
    for t in tasks {
        passed += t.await.unwrap();
    }
    passed
}

/// Two processes fetch blocks of admissions on a busy scope far from its limit, and admit from
/// them without a round trip; the limit holds all the same: from an idle start, the two admit
/// at most the burst plus the rate over the time run, and once the bucket is half full every
/// admission is decided in Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_admit_without_round_trips_and_keep_the_limit() {
    let server = RedisServer::start(&[]);
    let (a, b) = (
        limiter(url(&server), FailPolicy::Closed).await,
        limiter(url(&server), FailPolicy::Closed).await,
    );
    // 500 a second, a burst of 6000: blocks while under 3000 (blocks start once a whole
    // window of demand has been seen).
    let scope = ScopeLimits {
        rpm: Some(Rate::per_minute(30_000).with_burst(6000)),
        ..ScopeLimits::new("blocks")
    };
    let started = Instant::now();
    let run = Duration::from_millis(1500);
    let scopes = [scope];
    let (pa, pb) = tokio::join!(
        hammer(&a, &scopes, 0, 0, 16, run),
        hammer(&b, &scopes, 0, 0, 16, run)
    );
    let elapsed = started.elapsed().as_secs_f64();
    let (sa, sb) = (a.stats(), b.stats());
    let allowed = 6000.0 + 1.0 + elapsed * 500.0;
    println!(
        "blocks: {pa} + {pb} admitted in {elapsed:.2} s (allowed {allowed:.0}); blocks {} + {}, \
         from blocks {} + {}, script calls {} + {}",
        sa.blocks, sb.blocks, sa.prefetched, sb.prefetched, sa.script_calls, sb.script_calls
    );
    assert!(sa.blocks + sb.blocks > 0, "no blocks: {sa:?} {sb:?}");
    assert!(
        sa.prefetched + sb.prefetched > 200,
        "few admissions from blocks: {sa:?} {sb:?}"
    );
    assert!(((pa + pb) as f64) <= allowed, "{} > {allowed}", pa + pb);
    // What blocks leave unused is bounded (a fifth of each, while under half the burst):
    // most of what the limit allows was admitted.
    assert!(((pa + pb) as f64) >= 0.8 * allowed, "{} admitted", pa + pb);
    assert!(sa.denied + sb.denied > 0, "the limit was never reached");
}

/// A block's tokens settle once, with what its admissions used: reserving 1000 and using 100,
/// the bucket holds the tokens used (give or take what drained meanwhile and one window's
/// start), not the reservations; and no block stays open. On a scope with a parallel limit too
/// the tokens ride on the settles of the block's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_settles_the_tokens_its_admissions_used() {
    let server = RedisServer::start(&[]);
    let l = limiter(url(&server), FailPolicy::Closed).await;
    for (name, parallel) in [("block-tokens", None), ("block-slot-tokens", Some(1000))] {
        // 1000 tokens a second, a burst of ten million: the bucket drains slowly.
        let scope = ScopeLimits {
            tpm: Some(Rate::per_minute(60_000).with_burst(10_000_000)),
            max_parallel: parallel,
            ..ScopeLimits::new(name)
        };
        let before = l.stats();
        let started = Instant::now();
        let passed = hammer(&l, &[scope], 1000, 100, 16, Duration::from_millis(600)).await;
        // Every block's window ends, its admissions have settled: the blocks settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = l.stats();
        let held = tokens_held(server.port, name).expect("the tokens TAT");
        let prefetched = s.prefetched - before.prefetched;
        println!(
            "{name}: {passed} admitted ({prefetched} from {} blocks), bucket {held:.0}",
            s.blocks - before.blocks
        );
        assert!(prefetched > passed / 2, "few admissions from blocks: {s:?}");
        assert_bucket_holds_what_was_used(held, passed, started);
        assert_no_open_sets(&server, name);
        assert_eq!(s.settles_dropped, 0);
    }
}

/// The tokens a scope's bucket holds on the node at `port` (`None`: its TAT is not there), for
/// a limit of one token a millisecond: (TAT - Redis's now) / 1000.
fn tokens_held(port: u16, scope: &str) -> Option<f64> {
    let tat = raw_command(port, &format!("GET llmux:rl:{{{scope}}}:tpm"))?;
    let tat: f64 = tat.strip_prefix('$')?.lines().nth(1)?.parse().ok()?;
    let time = raw_command(port, "TIME")?;
    let nums: Vec<f64> = time.lines().filter_map(|l| l.trim().parse().ok()).collect();
    Some((tat - (nums[0] * 1e6 + nums[1])) / 1000.0)
}

/// Calls that each used 100 tokens (`passed` of them, since `started`) left the bucket holding
/// what they used: less what drained at 1000 a second, give or take one block started on an
/// idle bucket (50 ms: 50 tokens).
fn assert_bucket_holds_what_was_used(held: f64, passed: u64, started: Instant) {
    let used = (passed * 100) as f64;
    let drained = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        held >= used - drained - 100.0 && held <= used + 100.0,
        "bucket {held}, used {used}, drained up to {drained}"
    );
}

/// `prefetch: 0` decides every admission in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_blocks_without_a_prefetch_window() {
    let server = RedisServer::start(&[]);
    let mut cfg = RedisConfig::new(url(&server));
    cfg.command_timeout = Duration::from_secs(2);
    let l: Arc<dyn RateLimiter> = RedisLimiter::start(
        cfg,
        RedisLimiterOptions {
            prefetch: Duration::ZERO,
            ..opts(FailPolicy::Closed)
        },
    )
    .await;
    let scopes = [rpm("no-blocks", 1_000_000)];
    let passed = hammer(&l, &scopes, 0, 0, 16, Duration::from_millis(300)).await;
    let s = l.stats();
    assert!(passed > 100);
    assert_eq!((s.blocks, s.prefetched), (0, 0));
}

/// Parallel slots from blocks are exact: two processes, 10 callers each holding their
/// admission for 2 ms on a limit of 64 in flight (blocks while under half), then 30 more each:
/// never more than 64 at once, and every slot given back in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_slots_from_blocks_stay_within_the_limit() {
    let server = RedisServer::start(&[]);
    let (a, b) = (
        limiter(url(&server), FailPolicy::Closed).await,
        limiter(url(&server), FailPolicy::Closed).await,
    );
    let scope = ScopeLimits {
        rpm: Some(Rate::per_minute(100_000_000)),
        max_parallel: Some(64),
        ..ScopeLimits::new("slots")
    };
    let in_flight = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = Duration::from_millis(1500);
    let tasks: Vec<_> = [&a, &b]
        .into_iter()
        .flat_map(|l| std::iter::repeat_n(l.clone(), 40))
        .enumerate()
        .map(|(i, l)| {
            let (scope, in_flight, most) = (scope.clone(), in_flight.clone(), most.clone());
            tokio::spawn(async move {
                if i % 40 >= 10 {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                let mut refused = 0u64;
                while started.elapsed() < run {
                    match admit(&l, demand(vec![scope.clone()], 0)).await {
                        Ok(t) => {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            t.settle(0);
                        }
                        Err(e) => {
                            assert_eq!(e.kind, ErrorKind::RateLimited);
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    // Every block's window ends: free slots go back; the last settles land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "slots: at most {} in flight; {} + {} admitted ({} + {} from {} + {} blocks), {refused} \
         refused",
        most.load(Ordering::SeqCst),
        sa.admitted,
        sb.admitted,
        sa.prefetched,
        sb.prefetched,
        sa.blocks,
        sb.blocks
    );
    assert!(most.load(Ordering::SeqCst) <= 64);
    assert!(sa.blocks + sb.blocks > 0 && sa.prefetched + sb.prefetched > 0);
    assert!(refused > 0, "80 callers never met a limit of 64");
    assert_no_open_sets(&server, "slots");
    assert_eq!(sa.settles_dropped + sb.settles_dropped, 0);
}
