//! Prometheus metrics of the gateway, in the text exposition format: requests by route, model,
//! deployment and status; latency and time-to-first-token histograms; tokens and cost by
//! model. Scrape-time gauges (limiter decisions, retries, cooldowns, Redis health, reloads)
//! are read from their owners when `/metrics` is rendered.
//!
//! One mutex guards the per-request series; a request takes it once.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the latency and TTFT buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Series {
    requests: HashMap<(&'static str, String, String, u16), u64>,
    latency: HashMap<String, Histogram>,
    ttft: HashMap<String, Histogram>,
    tokens: HashMap<(String, &'static str), u64>,
    cost: HashMap<String, f64>,
}

/// What one finished request adds.
#[derive(Debug)]
pub struct Record<'a> {
    pub route: &'static str,
    pub model: &'a str,
    pub deployment: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
    pub in_flight: AtomicI64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// Gauges read at scrape time from their owners.
#[derive(Debug, Default)]
pub struct Gauges {
    pub limiter_admitted: u64,
    pub limiter_denied: u64,
    pub limiter_redis_errors: u64,
    pub limiter_fallback_admitted: u64,
    pub limiter_breaker_open: bool,
    pub live_processes: u64,
    pub retries: u64,
    /// `(deployment id, model group, cooling down, in flight)`.
    pub deployments: Vec<(String, String, bool, u64)>,
    pub redis_up: Option<bool>,
    pub cache_hits: Option<(u64, u64)>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn record(&self, r: &Record<'_>) {
        let mut s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        *s.requests
            .entry((
                r.route,
                r.model.to_owned(),
                r.deployment.to_owned(),
                r.status,
            ))
            .or_default() += 1;
        if r.status < 400 {
            s.latency
                .entry(r.model.to_owned())
                .or_default()
                .observe(r.latency.as_secs_f64());
            if let Some(t) = r.ttft {
                s.ttft
                    .entry(r.model.to_owned())
                    .or_default()
                    .observe(t.as_secs_f64());
            }
        }
        if r.prompt_tokens > 0 {
            *s.tokens.entry((r.model.to_owned(), "prompt")).or_default() += r.prompt_tokens;
        }
        if r.completion_tokens > 0 {
            *s.tokens
                .entry((r.model.to_owned(), "completion"))
                .or_default() += r.completion_tokens;
        }
        if let Some(c) = r.cost.filter(|c| *c > 0.0) {
            *s.cost.entry(r.model.to_owned()).or_default() += c;
        }
    }

    fn histogram(out: &mut String, name: &str, help: &str, rows: &HashMap<String, Histogram>) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut keys: Vec<_> = rows.keys().collect();
        keys.sort();
        for model in keys {
            let h = &rows[model];
            let m = esc(model);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{model=\"{m}\",le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{model=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{model=\"{m}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{model=\"{m}\"}} {}", h.count);
        }
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        {
            let s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            out.push_str("# HELP llmux_requests_total Requests answered, by route, model group, deployment and status.\n# TYPE llmux_requests_total counter\n");
            let mut rows: Vec<_> = s.requests.iter().collect();
            rows.sort();
            for ((route, model, dep, status), n) in rows {
                let _ = writeln!(
                    out,
                    "llmux_requests_total{{route=\"{route}\",model=\"{}\",deployment=\"{}\",status=\"{status}\"}} {n}",
                    esc(model),
                    esc(dep)
                );
            }
            Self::histogram(
                &mut out,
                "llmux_request_duration_seconds",
                "Time from request to the end of the answer (successful requests).",
                &s.latency,
            );
            Self::histogram(
                &mut out,
                "llmux_time_to_first_token_seconds",
                "Time from request to the first streamed chunk.",
                &s.ttft,
            );
            out.push_str("# HELP llmux_tokens_total Tokens by model group and kind.\n# TYPE llmux_tokens_total counter\n");
            let mut rows: Vec<_> = s.tokens.iter().collect();
            rows.sort();
            for ((model, kind), n) in rows {
                let _ = writeln!(
                    out,
                    "llmux_tokens_total{{model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(model)
                );
            }
            out.push_str("# HELP llmux_cost_usd_total Spend in USD by model group.\n# TYPE llmux_cost_usd_total counter\n");
            let mut rows: Vec<_> = s.cost.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (model, c) in rows {
                let _ = writeln!(out, "llmux_cost_usd_total{{model=\"{}\"}} {c}", esc(model));
            }
        }
        let mut gauge = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "llmux_in_flight_requests",
            "gauge",
            "Requests being answered.",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "llmux_rate_limit_admitted_total",
            "counter",
            "Admissions granted by the rate limiter.",
            g.limiter_admitted.to_string(),
        );
        gauge(
            "llmux_rate_limit_denied_total",
            "counter",
            "Requests refused by the rate limiter.",
            g.limiter_denied.to_string(),
        );
        gauge(
            "llmux_rate_limit_redis_errors_total",
            "counter",
            "Limiter calls to Redis that failed or timed out.",
            g.limiter_redis_errors.to_string(),
        );
        gauge(
            "llmux_rate_limit_fallback_admitted_total",
            "counter",
            "Admissions decided by the failure policy while Redis was unavailable.",
            g.limiter_fallback_admitted.to_string(),
        );
        gauge(
            "llmux_rate_limit_breaker_open",
            "gauge",
            "1 while the limiter skips an unavailable Redis.",
            u8::from(g.limiter_breaker_open).to_string(),
        );
        gauge(
            "llmux_live_processes",
            "gauge",
            "Processes sharing the limits, as last seen in Redis.",
            g.live_processes.to_string(),
        );
        gauge(
            "llmux_retries_total",
            "counter",
            "Retries made by the router.",
            g.retries.to_string(),
        );
        gauge(
            "llmux_config_reloads_total",
            "counter",
            "Config reloads applied.",
            self.reloads.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "llmux_config_reload_failures_total",
            "counter",
            "Config reloads refused (the old config stayed live).",
            self.reload_failures.load(Ordering::Relaxed).to_string(),
        );
        if let Some(up) = g.redis_up {
            gauge(
                "llmux_redis_up",
                "gauge",
                "1 when Redis answered PING at scrape time.",
                u8::from(up).to_string(),
            );
        }
        if let Some((hits, misses)) = g.cache_hits {
            gauge(
                "llmux_cache_hits_total",
                "counter",
                "Response cache hits.",
                hits.to_string(),
            );
            gauge(
                "llmux_cache_misses_total",
                "counter",
                "Response cache misses.",
                misses.to_string(),
            );
        }
        out.push_str("# HELP llmux_deployment_cooldown 1 while a deployment is cooling down.\n# TYPE llmux_deployment_cooldown gauge\n");
        for (id, group, cooling, _) in &g.deployments {
            let _ = writeln!(
                out,
                "llmux_deployment_cooldown{{deployment=\"{}\",model=\"{}\"}} {}",
                esc(id),
                esc(group),
                u8::from(*cooling)
            );
        }
        out.push_str("# HELP llmux_deployment_in_flight Requests in flight per deployment.\n# TYPE llmux_deployment_in_flight gauge\n");
        for (id, group, _, n) in &g.deployments {
            let _ = writeln!(
                out,
                "llmux_deployment_in_flight{{deployment=\"{}\",model=\"{}\"}} {n}",
                esc(id),
                esc(group)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_buckets() {
        let m = Metrics::default();
        m.record(&Record {
            route: "chat",
            model: "gpt\"4o",
            deployment: "d1",
            status: 200,
            latency: Duration::from_millis(30),
            ttft: Some(Duration::from_millis(3)),
            prompt_tokens: 7,
            completion_tokens: 20,
            cost: Some(0.5),
        });
        let text = m.render(&Gauges::default());
        assert!(text.contains(
            "llmux_requests_total{route=\"chat\",model=\"gpt\\\"4o\",deployment=\"d1\",status=\"200\"} 1"
        ));
        assert!(text
            .contains("llmux_request_duration_seconds_bucket{model=\"gpt\\\"4o\",le=\"0.025\"} 0"));
        assert!(text
            .contains("llmux_request_duration_seconds_bucket{model=\"gpt\\\"4o\",le=\"0.05\"} 1"));
        assert!(text.contains("llmux_time_to_first_token_seconds_count{model=\"gpt\\\"4o\"} 1"));
        assert!(text.contains("llmux_tokens_total{model=\"gpt\\\"4o\",kind=\"completion\"} 20"));
        assert!(text.contains("llmux_cost_usd_total{model=\"gpt\\\"4o\"} 0.5"));
    }
}
