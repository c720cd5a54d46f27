//! Admissions per second through the limiter: in process, and through Redis (each admission
//! decided by a script call, batched on one multiplexed connection; and with blocks fetched
//! ahead, the default), at concurrency 1, 64 and 256, with the latency of one admission (p50 /
//! p99). Starts its own `redis-server` on a free port (or uses `REDIS_URL`).
//!
//!     cargo bench --bench limiter_admissions [-- --seconds 5]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use _llmux::limiter::{
    admit, Demand, FailPolicy, LocalLimiter, Rate, RateLimiter, RedisLimiter, RedisLimiterOptions,
    ScopeLimits,
};
use _llmux::redis::{RedisConfig, RedisTarget};

struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis() -> (String, Server) {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return (url, Server(None));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is needed (apt-get install redis-server), or set REDIS_URL");
    std::thread::sleep(Duration::from_millis(300));
    (format!("redis://127.0.0.1:{port}"), Server(Some(child)))
}

/// Limits high enough never to refuse: the cost of deciding, not of refusing.
fn scopes(full: bool) -> Vec<ScopeLimits> {
    let mut s = ScopeLimits {
        rpm: Some(Rate::per_minute(1_000_000_000)),
        ..ScopeLimits::new("bench")
    };
    if full {
        s.tpm = Some(Rate::per_minute(1_000_000_000_000));
        s.max_parallel = Some(1_000_000);
    }
    vec![s]
}

async fn run(
    l: Arc<dyn RateLimiter>,
    full: bool,
    concurrency: usize,
    seconds: f64,
) -> (f64, Duration, Duration) {
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    let t = Instant::now();
                    let ticket = admit(
                        &l,
                        Demand {
                            request_id: format!("{w}-{i}"),
                            scopes: scopes(full),
                            tokens: 500,
                        },
                    )
                    .await
                    .unwrap();
                    lat.push(t.elapsed());
                    ticket.settle_now(100).await.unwrap();
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (rate, pct(0.5), pct(0.99))
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, _server) = redis();
    rt.block_on(async {
        let start = |prefetch: Duration| {
            RedisLimiter::start(
                RedisConfig::new(RedisTarget::Url(url.clone())),
                RedisLimiterOptions {
                    policy: FailPolicy::Closed,
                    prefetch,
                    ..Default::default()
                },
            )
        };
        let each: Arc<dyn RateLimiter> = start(Duration::ZERO).await;
        let remote: Arc<dyn RateLimiter> = start(RedisLimiterOptions::default().prefetch).await;
        let local: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new());
        println!("# limiter admissions (admit + settle per request, {seconds} s each)\n");
        println!("| limiter | limits | concurrency | admissions/s | p50 admit | p99 admit |");
        println!("|---|---|---:|---:|---:|---:|");
        for (name, l) in [
            ("in process", &local),
            ("redis, one by one", &each),
            ("redis, blocks", &remote),
        ] {
            for (limits, full) in [("rpm", false), ("rpm+tpm+parallel", true)] {
                for c in [1, 64, 256] {
                    let (rate, p50, p99) = run(l.clone(), full, c, seconds).await;
                    println!("| {name} | {limits} | {c} | {rate:.0} | {p50:.1?} | {p99:.1?} |");
                }
            }
        }
        for l in [&each, &remote] {
            let s = l.stats();
            assert_eq!(s.redis_errors, 0, "{s:?}");
        }
    });
}
