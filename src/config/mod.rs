//! Configuration that turns plain data into engine parts: `model_list` entries into
//! [`Deployment`]s, router settings into [`Settings`], the `rate_limit` / `redis` blocks into
//! shared state (stats and limiter). Python's `Router(...)` and the gateway's YAML file
//! ([`file`]) both read through here, so a key means the same thing in both.
//!
//! Every refusal is an `invalid_config` error that names the key.

pub mod file;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::limiter::distributed::DEFAULT_PREFETCH;
use crate::limiter::{
    FailPolicy, LocalLimiter, RateLimitConfig, RateLimiter, RedisLimiter, RedisLimiterOptions,
};
use crate::pipeline::Mock;
use crate::pricing;
use crate::providers::{Endpoint, Secret};
use crate::redis::{RedisConfig, RedisPool};
use crate::router::budget::RetryBudget;
use crate::router::redis_stats::RedisStats;
use crate::router::stats::{ClusterStats, LocalStats};
use crate::router::strategy::Strategy;
use crate::router::{Deployment, Fallbacks, Settings};

fn bad(msg: impl Into<String>) -> Error {
    Error::invalid_config(msg)
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A positive number of seconds.
pub fn secs(v: &Value, what: &str) -> Result<Duration> {
    v.as_f64()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| bad(format!("{what} must be a positive number of seconds")))
}

/// One `model_list` entry.
pub fn deployment(entry: &Value, index: usize) -> Result<Deployment> {
    let group = entry
        .get("model_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("model_list[{index}] needs a 'model_name'")))?
        .to_owned();
    let lp = entry
        .get("litellm_params")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(format!(
                "model_list[{index}] ('{group}') needs 'litellm_params'"
            ))
        })?;
    let model = lp
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(format!(
                "model_list[{index}] ('{group}') needs litellm_params.model"
            ))
        })?
        .to_owned();
    let info = entry.get("model_info").and_then(Value::as_object);
    let id = match info.and_then(|i| i.get("id")).and_then(as_str) {
        Some(id) => id,
        None => {
            // Stable across processes: the same entry gets the same id everywhere.
            let mut h = DefaultHasher::new();
            group.hash(&mut h);
            serde_json::to_string(lp).unwrap_or_default().hash(&mut h);
            format!("{:016x}", h.finish())
        }
    };
    let mut d = Deployment {
        id,
        group,
        model,
        endpoint: Endpoint::default(),
        rpm: entry.get("rpm").and_then(Value::as_u64),
        tpm: entry.get("tpm").and_then(Value::as_u64),
        weight: None,
        max_parallel_requests: None,
        timeout: None,
        tags: Vec::new(),
        cost_per_token: None,
        price_override: None,
        params: Map::new(),
        mock: None,
        extra_headers: Vec::new(),
    };
    let (mut cin, mut cout) = (None, None);
    for (k, v) in lp {
        if v.is_null() {
            continue;
        }
        let s = || as_str(v).ok_or_else(|| bad(format!("litellm_params.{k} must be a string")));
        match k.as_str() {
            "model" => {}
            "api_base" | "base_url" => d.endpoint.api_base = Some(s()?),
            "api_key" => d.endpoint.api_key = Some(Secret::new(s()?)),
            "api_version" => d.endpoint.api_version = Some(s()?),
            "organization" => d.endpoint.organization = Some(s()?),
            "custom_llm_provider" => d.endpoint.custom_llm_provider = Some(s()?),
            "azure_ad_token" => d.endpoint.azure_ad_token = Some(Secret::new(s()?)),
            "aws_access_key_id" => d.endpoint.aws_access_key_id = Some(s()?),
            "aws_secret_access_key" => d.endpoint.aws_secret_access_key = Some(Secret::new(s()?)),
            "aws_session_token" => d.endpoint.aws_session_token = Some(Secret::new(s()?)),
            "aws_region_name" => d.endpoint.aws_region_name = Some(s()?),
            "rpm" => d.rpm = v.as_u64(),
            "tpm" => d.tpm = v.as_u64(),
            "weight" => d.weight = v.as_f64(),
            "max_parallel_requests" => d.max_parallel_requests = v.as_u64(),
            "timeout" => d.timeout = Some(secs(v, "litellm_params.timeout")?),
            "tags" => {
                d.tags = serde_json::from_value(v.clone())
                    .map_err(|_| bad("litellm_params.tags must be a list of strings"))?
            }
            "input_cost_per_token" => cin = v.as_f64(),
            "output_cost_per_token" => cout = v.as_f64(),
            "mock_response" => {
                if let Some(t) = v.as_str() {
                    d.mock = Some(Mock::parse(t));
                }
            }
            "extra_headers" => {
                let m: Map<String, Value> = serde_json::from_value(v.clone())
                    .map_err(|_| bad("litellm_params.extra_headers must be a mapping"))?;
                d.extra_headers = m
                    .into_iter()
                    .filter_map(|(k, v)| as_str(&v).map(|v| (k, v)))
                    .collect();
            }
            // Retries and timeouts belong to the router.
            "max_retries" | "num_retries" | "stream_timeout" => {}
            _ => {
                d.params.insert(k.clone(), v.clone());
            }
        }
    }
    d.price_override = match (cin, cout) {
        (Some(i), Some(o)) => Some((i, o)),
        (Some(i), None) => Some((i, 0.0)),
        (None, Some(o)) => Some((0.0, o)),
        (None, None) => None,
    };
    d.cost_per_token = match d.price_override {
        Some(p) => Some(p),
        None => pricing::lookup(None, &d.model).map(|e| {
            let f = |k: &str| e.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            (f("input_cost_per_token"), f("output_cost_per_token"))
        }),
    };
    Ok(d)
}

/// Every entry of a `model_list`.
pub fn deployments(entries: &[Value]) -> Result<Vec<Deployment>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| deployment(e, i))
        .collect()
}

/// `[{"gpt-4o": ["claude"]}, ...]` as pairs.
pub fn fallbacks(v: Option<&Value>, what: &str) -> Result<Fallbacks> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or_else(|| {
        bad(format!(
            "{what} must be a list of {{group: [fallback groups]}}"
        ))
    })?;
    let mut out = Vec::new();
    for item in list {
        let m = item
            .as_object()
            .ok_or_else(|| bad(format!("{what}: each item must be a mapping")))?;
        for (k, to) in m {
            let to: Vec<String> = match to {
                Value::String(s) => vec![s.clone()],
                other => serde_json::from_value(other.clone())
                    .map_err(|_| bad(format!("{what}: '{k}' must map to a list of group names")))?,
            };
            out.push((k.clone(), to));
        }
    }
    Ok(out)
}

/// The router settings keys [`router_settings`] reads.
pub const ROUTER_KEYS: &[&str] = &[
    "routing_strategy",
    "num_retries",
    "timeout",
    "allowed_fails",
    "cooldown_time",
    "max_fallbacks",
    "disable_cooldowns",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "retry_budget",
];

fn whole(s: &Map<String, Value>, k: &str) -> Result<Option<u64>> {
    match s.get(k).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{k} must be a whole number >= 0, got {v}"))),
    }
}

/// The router's settings and retry budget from LiteLLM's constructor keys.
pub fn router_settings(s: &Map<String, Value>) -> Result<(Settings, RetryBudget)> {
    let mut out = Settings::default();
    if let Some(v) = s.get("routing_strategy").filter(|v| !v.is_null()) {
        let name = v
            .as_str()
            .ok_or_else(|| bad("routing_strategy must be a string"))?;
        out.strategy = Strategy::parse(name)?;
    }
    if let Some(v) = whole(s, "num_retries")? {
        out.num_retries = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = s.get("timeout").filter(|v| !v.is_null()) {
        out.timeout = secs(v, "timeout")?;
    }
    if let Some(v) = whole(s, "allowed_fails")? {
        out.allowed_fails = v;
    }
    if let Some(v) = s.get("cooldown_time").filter(|v| !v.is_null()) {
        out.cooldown_time = v
            .as_f64()
            .and_then(|f| Duration::try_from_secs_f64(f).ok())
            .ok_or_else(|| bad("cooldown_time must be a number of seconds >= 0"))?;
    }
    if let Some(v) = whole(s, "max_fallbacks")? {
        out.max_fallbacks = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = s.get("disable_cooldowns").filter(|v| !v.is_null()) {
        out.disable_cooldowns = v
            .as_bool()
            .ok_or_else(|| bad("disable_cooldowns must be true or false"))?;
    }
    out.fallbacks = fallbacks(s.get("fallbacks"), "fallbacks")?;
    out.context_window_fallbacks = fallbacks(
        s.get("context_window_fallbacks"),
        "context_window_fallbacks",
    )?;
    out.content_policy_fallbacks = fallbacks(
        s.get("content_policy_fallbacks"),
        "content_policy_fallbacks",
    )?;
    let budget = match s.get("retry_budget").filter(|v| !v.is_null()) {
        None => RetryBudget::default(),
        Some(b) => {
            let b = b
                .as_object()
                .ok_or_else(|| bad("retry_budget must be a mapping"))?;
            RetryBudget::new(
                b.get("ratio").and_then(Value::as_f64).unwrap_or(0.2),
                b.get("min_per_window").and_then(Value::as_u64).unwrap_or(3),
                b.get("window").and_then(Value::as_f64).map_or(
                    Ok(Duration::from_secs(10)),
                    |w| {
                        Duration::try_from_secs_f64(w)
                            .ok()
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                bad("retry_budget.window must be a positive number of seconds")
                            })
                    },
                )?,
            )
        }
    };
    Ok((out, budget))
}

/// Routing stats and the limiter, in this process or shared by every process on one Redis.
#[derive(Debug, Clone)]
pub struct SharedState {
    pub stats: Arc<dyn ClusterStats>,
    pub limiter: Arc<dyn RateLimiter>,
    /// The Redis connection, when there is one (health checks use it).
    pub redis: Option<RedisPool>,
}

/// Builds the shared state: in process without `redis`; with it, stats in Redis and the limiter
/// in Redis too unless `local_limits` (the `rate_limit` block said `distributed: false`).
pub async fn shared_state(
    redis: Option<&RedisConfig>,
    placement: &LimitPlacement,
    stats_lease: Duration,
) -> Result<SharedState> {
    let Some(cfg) = redis else {
        return Ok(SharedState {
            stats: Arc::new(LocalStats::new()),
            limiter: Arc::new(LocalLimiter::new()),
            redis: None,
        });
    };
    let pool = RedisPool::connect(cfg).await?;
    let limiter: Arc<dyn RateLimiter> = if placement.local {
        Arc::new(LocalLimiter::new())
    } else {
        let opts = RedisLimiterOptions {
            policy: placement.policy,
            prefetch: placement.prefetch,
            ..Default::default()
        };
        RedisLimiter::with_pool(pool.clone(), opts).await
    };
    Ok(SharedState {
        stats: Arc::new(RedisStats::new(pool.clone(), "llmux", stats_lease)),
        limiter,
        redis: Some(pool),
    })
}

/// Where limits are kept and how, fixed when the shared state is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPlacement {
    /// What to do when Redis cannot decide.
    pub policy: FailPolicy,
    /// Limits stay in this process (`rate_limit.distributed: false`).
    pub local: bool,
    /// How long blocks of admissions fetched ahead from Redis may be used.
    pub prefetch: Duration,
}

/// The limits' placement from an optional `rate_limit` block.
pub fn limit_placement(
    rate_limit: Option<&RateLimitConfig>,
    explicit_local: bool,
) -> LimitPlacement {
    LimitPlacement {
        policy: rate_limit.map_or(FailPolicy::Local, |r| r.on_redis_failure),
        local: rate_limit.is_some_and(|r| !r.distributed) && explicit_local,
        prefetch: rate_limit.map_or(DEFAULT_PREFETCH, |r| r.prefetch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_reads_litellm_params_and_hides_the_key() {
        let d = deployment(
            &json!({"model_name": "g", "litellm_params": {"model": "openai/x", "api_key": "sk-secret", "rpm": 5, "temperature": 0.2}}),
            0,
        )
        .unwrap();
        assert_eq!(d.group, "g");
        assert_eq!(d.rpm, Some(5));
        assert_eq!(d.params.get("temperature"), Some(&json!(0.2)));
        assert!(!format!("{d:?}").contains("sk-secret"));
        let again = deployment(
            &json!({"model_name": "g", "litellm_params": {"model": "openai/x", "api_key": "sk-secret", "rpm": 5, "temperature": 0.2}}),
            0,
        )
        .unwrap();
        assert_eq!(d.id, again.id, "ids are stable across processes");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = deployment(&json!({"model_name": "g"}), 3).unwrap_err();
        assert!(e.message.contains("model_list[3]"), "{}", e.message);
        let e = router_settings(json!({"num_retries": "two"}).as_object().unwrap()).unwrap_err();
        assert!(e.message.contains("num_retries"), "{}", e.message);
        let e = router_settings(json!({"fallbacks": {"a": "b"}}).as_object().unwrap()).unwrap_err();
        assert!(e.message.contains("fallbacks"), "{}", e.message);
    }
}
