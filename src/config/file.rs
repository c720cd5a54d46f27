//! The gateway's configuration file: LiteLLM's proxy config shape (`model_list` with
//! `litellm_params`, `router_settings`, `litellm_settings`, `general_settings`, values from the
//! environment as `os.environ/NAME`) plus LLMux's own blocks (`keys`, `rate_limit`, `redis`,
//! `cache`, `server`).
//!
//! [`GatewayConfig::parse`] reads and validates the whole file at once: an unknown key, a value
//! of the wrong type or a missing environment variable is an `invalid_config` error naming the
//! key's path, so a bad file is refused whole (at start, or on reload with the old config kept).
//! Secrets (upstream keys, the master key, virtual keys) never leave this module in clear
//! except inside [`Secret`]; virtual keys are kept only as SHA-256 digests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cache::CacheMode;
use crate::error::{Error, Result};
use crate::limiter::RateLimitConfig;
use crate::providers::Secret;
use crate::redis::RedisConfig;
use crate::router::budget::RetryBudget;
use crate::router::{Deployment, Settings};
use crate::telemetry::OtlpConfig;

fn bad(msg: impl Into<String>) -> Error {
    Error::invalid_config(msg)
}

/// The default limit on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where and how the server listens and stops.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// How long in-flight requests and streams may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Silence on a stream after which an SSE comment is sent (also how fast a gone client is
    /// noticed while the upstream is quiet).
    pub keepalive_interval: Duration,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Largest audio upload accepted by `/v1/audio/transcriptions` (413 above).
    pub max_upload_bytes: u64,
    /// How often the config file is checked for changes (`None`: not watched).
    pub watch_interval: Option<Duration>,
    /// Log every request at `info` (else at `debug`).
    pub access_log: bool,
    /// Fetch image URLs in messages even when they point at private or local addresses.
    pub allow_private_image_urls: bool,
    /// Append one redacted JSON line per chat call to this file.
    pub request_log: Option<std::path::PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: None,
            port: None,
            shutdown_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(1),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_upload_bytes: crate::pipeline::DEFAULT_MAX_UPLOAD_BYTES,
            watch_interval: Some(Duration::from_secs(1)),
            access_log: false,
            allow_private_image_urls: false,
            request_log: None,
        }
    }
}

/// A static virtual key from the `keys` block.
#[derive(Clone)]
pub struct VirtualKey {
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// A name for logs and metrics (`key_alias`, else a prefix of the digest).
    pub alias: String,
    /// Model groups the key may call (`None`: all).
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    /// Seconds since the epoch after which the key is refused.
    pub expires_at: Option<u64>,
    pub team_id: Option<String>,
    /// Spend allowed in USD per budget window (`None`: no budget).
    pub max_budget: Option<f64>,
    /// The budget window (`budget_duration`; no duration: the budget never resets).
    pub budget_window: Duration,
}

/// A team's budget from the `teams` block.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamBudget {
    pub team_id: String,
    pub max_budget: f64,
    pub budget_window: Duration,
}

/// The window of a budget without `budget_duration`: in practice, never reset.
pub const NO_RESET: Duration = Duration::from_secs(100 * 365 * 86_400);

/// LiteLLM's `budget_duration`: `30s`, `30m`, `24h`, `30d`, or a number of seconds.
pub fn parse_duration(v: &Value, path: &str) -> Result<Duration> {
    let err = || {
        bad(format!(
            "{path} must be a duration such as 30s, 15m, 24h, 30d, or seconds"
        ))
    };
    if let Some(n) = v.as_f64() {
        return (n > 0.0)
            .then(|| Duration::try_from_secs_f64(n).ok())
            .flatten()
            .ok_or_else(err);
    }
    let s = v.as_str().ok_or_else(err)?.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(err)?;
    let n: f64 = s[..split].parse().map_err(|_| err())?;
    let unit = match &s[split..] {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(err()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(err());
    }
    Duration::try_from_secs_f64(n * unit).map_err(|_| err())
}

fn budget(m: &Map<String, Value>, path: &str) -> Result<(Option<f64>, Duration)> {
    let max = match m.get("max_budget") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| bad(format!("{path}.max_budget must be a number of USD >= 0")))?,
        ),
    };
    let window = match m.get("budget_duration") {
        None | Some(Value::Null) => NO_RESET,
        Some(v) => parse_duration(v, &format!("{path}.budget_duration"))?,
    };
    Ok((max, window))
}

impl std::fmt::Debug for VirtualKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualKey")
            .field("alias", &self.alias)
            .field("models", &self.models)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("max_parallel_requests", &self.max_parallel_requests)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl VirtualKey {
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_parallel_requests.is_some()
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// SHA-256 of a key: how keys are stored and compared.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The response cache the gateway runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// In this process, or on the `redis` block's server.
    pub redis: bool,
    pub mode: CacheMode,
    pub ttl: Option<Duration>,
    pub namespace: Option<String>,
    pub max_entries: usize,
}

/// The whole file, validated.
#[derive(Debug)]
pub struct GatewayConfig {
    pub deployments: Vec<Deployment>,
    pub settings: Settings,
    pub budget: RetryBudget,
    pub drop_params: bool,
    pub master_key: Option<Secret>,
    pub keys: Vec<VirtualKey>,
    /// Team budgets by team id.
    pub teams: Vec<TeamBudget>,
    pub rate_limit: Option<RateLimitConfig>,
    /// Whether `rate_limit.distributed` was written (else limits follow `redis`).
    pub rate_limit_explicit_local: bool,
    pub redis: Option<RedisConfig>,
    /// The `redis` block as written (after environment references), to tell whether it changed.
    pub redis_source: Option<Value>,
    pub cache: Option<CacheConfig>,
    pub server: ServerSettings,
    pub debug_logs: bool,
    /// OpenTelemetry export (the `telemetry` block).
    pub telemetry: Option<OtlpConfig>,
    /// Python callbacks to load (`litellm_settings.callbacks`: `module.attribute` names).
    pub callbacks: Vec<String>,
    /// The gateway's global budget (`litellm_settings.max_budget` per `budget_duration`).
    pub global_budget: Option<(f64, Duration)>,
}

const TOP_KEYS: &[&str] = &[
    "model_list",
    "router_settings",
    "litellm_settings",
    "general_settings",
    "keys",
    "teams",
    "rate_limit",
    "redis",
    "cache",
    "server",
    "telemetry",
    "environment_variables",
];

const LITELLM_KEYS: &[&str] = &[
    "drop_params",
    "num_retries",
    "request_timeout",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "cache",
    "cache_params",
    "set_verbose",
    "json_logs",
    "callbacks",
    "max_budget",
    "budget_duration",
];

const GENERAL_KEYS: &[&str] = &["master_key", "max_request_size_mb"];

const ROUTER_REDIS_KEYS: &[&str] = &["redis_host", "redis_port", "redis_password", "redis_url"];

const KEY_KEYS: &[&str] = &[
    "key",
    "key_alias",
    "models",
    "rpm",
    "requests_per_minute",
    "tpm",
    "tokens_per_minute",
    "max_parallel_requests",
    "expires",
    "team_id",
    "max_budget",
    "budget_duration",
];

const TEAM_KEYS: &[&str] = &["team_id", "max_budget", "budget_duration"];

const SERVER_KEYS: &[&str] = &[
    "host",
    "port",
    "shutdown_timeout",
    "keepalive_interval",
    "max_body_bytes",
    "max_upload_bytes",
    "watch_interval",
    "access_log",
    "allow_private_image_urls",
    "request_log",
];

const CACHE_KEYS: &[&str] = &["type", "mode", "ttl", "namespace", "max_entries"];

/// Replaces every `os.environ/NAME` string with the variable's value.
pub fn resolve_env(v: &mut Value, path: &str) -> Result<()> {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("os.environ/") {
                match std::env::var(name) {
                    Ok(val) => *s = val,
                    Err(_) => {
                        return Err(bad(format!(
                            "{path}: environment variable {name} is not set"
                        )))
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_env(item, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                resolve_env(item, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn section<'a>(root: &'a Map<String, Value>, name: &str) -> Result<Option<&'a Map<String, Value>>> {
    match root.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(format!("{name} must be a mapping"))),
    }
}

fn only_known(m: &Map<String, Value>, known: &[&str], path: &str) -> Result<()> {
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            return Err(bad(format!(
                "{path}.{k}: unknown key (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn opt_bool(m: &Map<String, Value>, k: &str, path: &str) -> Result<Option<bool>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("{path}.{k} must be true or false"))),
    }
}

fn opt_u64(m: &Map<String, Value>, k: &str, path: &str) -> Result<Option<u64>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{path}.{k} must be a whole number >= 0, got {v}"))),
    }
}

fn opt_secs(m: &Map<String, Value>, k: &str, path: &str) -> Result<Option<Duration>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => super::secs(v, &format!("{path}.{k}")).map(Some),
    }
}

fn opt_string(m: &Map<String, Value>, k: &str, path: &str) -> Result<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{path}.{k} must be a string"))),
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of `2026-12-31`, `2026-12-31T23:59:59Z` or with an offset
/// (`+02:00`), or of a number of seconds.
pub fn parse_expiry(v: &Value, path: &str) -> Result<u64> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    let err = || {
        bad(format!(
            "{path} must be a date (2026-12-31), an RFC 3339 time (2026-12-31T23:59:59Z) or seconds since the epoch"
        ))
    };
    let s = v.as_str().ok_or_else(err)?.trim();
    if !s.is_ascii() {
        return Err(err());
    }
    let num = |a: usize, b: usize| -> Result<i64> {
        s.get(a..b)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(err)
    };
    if s.len() < 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return Err(err());
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(err());
    }
    let mut secs = days_from_civil(y, mo as u32, d as u32) * 86_400;
    if s.len() > 10 {
        let b = s.as_bytes();
        if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || s.len() < 19 {
            return Err(err());
        }
        let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if h > 23 || mi > 59 || se > 60 {
            return Err(err());
        }
        secs += h * 3600 + mi * 60 + se;
        // Skip fractional seconds.
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            rest = &frac[digits..];
        }
        match rest {
            "Z" | "z" | "" => {}
            off if off.len() == 6
                && off.is_ascii()
                && (off.starts_with('+') || off.starts_with('-')) =>
            {
                let oh: i64 = off[1..3].parse().map_err(|_| err())?;
                let om: i64 = off[4..6].parse().map_err(|_| err())?;
                let delta = oh * 3600 + om * 60;
                secs += if off.starts_with('+') { -delta } else { delta };
            }
            _ => return Err(err()),
        }
    }
    u64::try_from(secs).map_err(|_| err())
}

fn virtual_key(v: &Value, i: usize) -> Result<VirtualKey> {
    let path = format!("keys[{i}]");
    let m = v
        .as_object()
        .ok_or_else(|| bad(format!("{path} must be a mapping")))?;
    only_known(m, KEY_KEYS, &path)?;
    let key = opt_string(m, "key", &path)?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "{path}.key is required (the key itself, or os.environ/NAME)"
            ))
        })?;
    let digest = key_digest(&key);
    let alias = opt_string(m, "key_alias", &path)?.unwrap_or_else(|| {
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("key-{hex}")
    });
    let models = match m.get("models") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<Vec<String>>(v.clone())
                .map_err(|_| bad(format!("{path}.models must be a list of model names")))?,
        ),
    };
    let (max_budget, budget_window) = budget(m, &path)?;
    let either = |a: &str, b: &str| -> Result<Option<u64>> {
        Ok(opt_u64(m, a, &path)?.or(opt_u64(m, b, &path)?))
    };
    Ok(VirtualKey {
        digest,
        alias,
        models,
        rpm: either("rpm", "requests_per_minute")?,
        tpm: either("tpm", "tokens_per_minute")?,
        max_parallel_requests: opt_u64(m, "max_parallel_requests", &path)?,
        expires_at: m
            .get("expires")
            .filter(|v| !v.is_null())
            .map(|v| parse_expiry(v, &format!("{path}.expires")))
            .transpose()?,
        team_id: opt_string(m, "team_id", &path)?,
        max_budget,
        budget_window,
    })
}

fn team(v: &Value, i: usize) -> Result<TeamBudget> {
    let path = format!("teams[{i}]");
    let m = v
        .as_object()
        .ok_or_else(|| bad(format!("{path} must be a mapping")))?;
    only_known(m, TEAM_KEYS, &path)?;
    let team_id = opt_string(m, "team_id", &path)?
        .ok_or_else(|| bad(format!("{path}.team_id is required")))?;
    let (max, budget_window) = budget(m, &path)?;
    let max_budget = max.ok_or_else(|| bad(format!("{path}.max_budget is required")))?;
    Ok(TeamBudget {
        team_id,
        max_budget,
        budget_window,
    })
}

fn cache_config(m: &Map<String, Value>, path: &str) -> Result<CacheConfig> {
    only_known(m, CACHE_KEYS, path)?;
    let redis = match opt_string(m, "type", path)?.as_deref() {
        None | Some("local") => false,
        Some("redis") => true,
        Some(other) => {
            return Err(bad(format!(
                "{path}.type must be 'local' or 'redis', got '{other}'"
            )))
        }
    };
    let mode = match opt_string(m, "mode", path)? {
        None => CacheMode::default(),
        Some(s) => CacheMode::parse(&s).map_err(|e| bad(format!("{path}.mode: {}", e.message)))?,
    };
    Ok(CacheConfig {
        redis,
        mode,
        ttl: opt_secs(m, "ttl", path)?,
        namespace: opt_string(m, "namespace", path)?.filter(|n| !n.is_empty()),
        max_entries: opt_u64(m, "max_entries", path)?.map_or(1000, |n| n.max(1) as usize),
    })
}

fn server_settings(m: &Map<String, Value>) -> Result<ServerSettings> {
    let p = "server";
    only_known(m, SERVER_KEYS, p)?;
    let mut s = ServerSettings {
        host: opt_string(m, "host", p)?,
        ..ServerSettings::default()
    };
    if let Some(port) = opt_u64(m, "port", p)? {
        s.port = Some(
            u16::try_from(port)
                .map_err(|_| bad(format!("server.port must be below 65536, got {port}")))?,
        );
    }
    if let Some(d) = opt_secs(m, "shutdown_timeout", p)? {
        s.shutdown_timeout = d;
    }
    if let Some(d) = opt_secs(m, "keepalive_interval", p)? {
        s.keepalive_interval = d;
    }
    if let Some(n) = opt_u64(m, "max_body_bytes", p)? {
        s.max_body_bytes = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    }
    if let Some(n) = opt_u64(m, "max_upload_bytes", p)? {
        s.max_upload_bytes = n.max(1);
    }
    match m.get("watch_interval") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(false)) => s.watch_interval = None,
        Some(v) => s.watch_interval = Some(super::secs(v, "server.watch_interval")?),
    }
    if let Some(b) = opt_bool(m, "access_log", p)? {
        s.access_log = b;
    }
    if let Some(b) = opt_bool(m, "allow_private_image_urls", p)? {
        s.allow_private_image_urls = b;
    }
    s.request_log = opt_string(m, "request_log", p)?.map(std::path::PathBuf::from);
    Ok(s)
}

impl GatewayConfig {
    /// Reads a YAML (or JSON) config text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut root: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| bad(format!("config is not valid YAML: {e}")))?;
        if root.is_null() {
            root = Value::Object(Map::new());
        }
        resolve_env(&mut root, "")?;
        Self::from_value(&root)
    }

    /// Reads an already parsed config (environment references resolved).
    pub fn from_value(root: &Value) -> Result<Self> {
        let root = root
            .as_object()
            .ok_or_else(|| bad("config must be a mapping of sections"))?;
        only_known(root, TOP_KEYS, "config")
            .map_err(|e| bad(e.message.replacen("config.", "", 1)))?;

        let entries = match root.get("model_list") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(bad("model_list must be a list")),
        };
        let deployments = super::deployments(&entries)?;

        // Router settings: LiteLLM's `router_settings`, with retries, timeout and fallbacks also
        // accepted from `litellm_settings` (router_settings wins).
        let mut router = Map::new();
        let litellm = section(root, "litellm_settings")?;
        let mut drop_params = false;
        let mut debug_logs = false;
        let mut cache = None;
        let mut callbacks = Vec::new();
        let mut global_budget = None;
        if let Some(l) = litellm {
            if let (Some(max), window) = budget(l, "litellm_settings")? {
                global_budget = Some((max, window));
            }
            callbacks = match l.get("callbacks") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                    bad("litellm_settings.callbacks must be a module.attribute name or a list of them")
                })?,
            };
            if let Some(name) = callbacks.iter().find(|n| !n.contains('.')) {
                return Err(bad(format!(
                    "litellm_settings.callbacks: '{name}' must name an object as module.attribute"
                )));
            }
            only_known(l, LITELLM_KEYS, "litellm_settings")?;
            drop_params = opt_bool(l, "drop_params", "litellm_settings")?.unwrap_or(false);
            debug_logs = opt_bool(l, "set_verbose", "litellm_settings")?.unwrap_or(false);
            if opt_bool(l, "json_logs", "litellm_settings")? == Some(false) {
                return Err(bad(
                    "litellm_settings.json_logs: the gateway always logs JSON; remove the key or set it to true",
                ));
            }
            for (from, to) in [
                ("num_retries", "num_retries"),
                ("request_timeout", "timeout"),
                ("fallbacks", "fallbacks"),
                ("context_window_fallbacks", "context_window_fallbacks"),
                ("content_policy_fallbacks", "content_policy_fallbacks"),
            ] {
                if let Some(v) = l.get(from).filter(|v| !v.is_null()) {
                    router.insert(to.to_owned(), v.clone());
                }
            }
            if opt_bool(l, "cache", "litellm_settings")? == Some(true) {
                let params = match l.get("cache_params") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => return Err(bad("litellm_settings.cache_params must be a mapping")),
                };
                cache = Some(cache_config(&params, "litellm_settings.cache_params")?);
            }
        }
        let mut router_redis = Map::new();
        if let Some(r) = section(root, "router_settings")? {
            for (k, v) in r {
                if ROUTER_REDIS_KEYS.contains(&k.as_str()) {
                    router_redis.insert(k.clone(), v.clone());
                } else if super::ROUTER_KEYS.contains(&k.as_str()) {
                    router.insert(k.clone(), v.clone());
                } else {
                    let mut known: Vec<&str> = super::ROUTER_KEYS.to_vec();
                    known.extend_from_slice(ROUTER_REDIS_KEYS);
                    return Err(bad(format!(
                        "router_settings.{k}: unknown key (known: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        let (settings, budget) = super::router_settings(&router)
            .map_err(|e| bad(format!("router_settings: {}", e.message)))?;

        let mut master_key = None;
        let mut server = match section(root, "server")? {
            Some(m) => server_settings(m)?,
            None => ServerSettings::default(),
        };
        if let Some(g) = section(root, "general_settings")? {
            only_known(g, GENERAL_KEYS, "general_settings")?;
            master_key = opt_string(g, "master_key", "general_settings")?
                .filter(|k| !k.is_empty())
                .map(Secret::new);
            if let Some(v) = g.get("max_request_size_mb").filter(|v| !v.is_null()) {
                let mb = v
                    .as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| {
                        bad("general_settings.max_request_size_mb must be a positive number")
                    })?;
                server.max_body_bytes = (mb * 1024.0 * 1024.0) as usize;
            }
        }

        let keys = match root.get("keys") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, k)| virtual_key(k, i))
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("keys must be a list")),
        };
        let mut seen = std::collections::HashSet::new();
        for k in &keys {
            if !seen.insert(k.digest) {
                return Err(bad(format!("keys: the key of '{}' appears twice", k.alias)));
            }
        }
        let groups: std::collections::HashSet<&str> =
            deployments.iter().map(|d| d.group.as_str()).collect();
        for k in &keys {
            for m in k.models.iter().flatten() {
                if !groups.contains(m.as_str()) {
                    return Err(bad(format!(
                        "keys: '{}' allows model '{m}', which is not in model_list",
                        k.alias
                    )));
                }
            }
        }
        if !keys.is_empty() && master_key.is_none() {
            return Err(bad(
                "keys: virtual keys need general_settings.master_key (the key that manages the gateway)",
            ));
        }

        let teams = match root.get("teams") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| team(t, i))
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("teams must be a list")),
        };
        let mut team_ids = std::collections::HashSet::new();
        for t in &teams {
            if !team_ids.insert(t.team_id.as_str()) {
                return Err(bad(format!("teams: team '{}' appears twice", t.team_id)));
            }
        }

        let rate_limit_src = root.get("rate_limit").filter(|v| !v.is_null());
        let rate_limit = rate_limit_src.map(RateLimitConfig::from_json).transpose()?;
        let rate_limit_explicit_local = rate_limit_src.and_then(|r| r.get("distributed")).is_some();

        let mut redis_source = root.get("redis").filter(|v| !v.is_null()).cloned();
        if redis_source.is_none() && !router_redis.is_empty() {
            let mut m = Map::new();
            for (k, v) in router_redis {
                let name = k.trim_start_matches("redis_");
                let name = if name == "url" { "url" } else { name };
                m.insert(name.to_owned(), v);
            }
            redis_source = Some(Value::Object(m));
        }
        let redis = redis_source
            .as_ref()
            .map(RedisConfig::from_json)
            .transpose()?;
        if rate_limit.as_ref().is_some_and(|r| r.distributed) && redis.is_none() {
            return Err(bad(
                "rate_limit.distributed is true but no redis is configured (a redis block)",
            ));
        }

        if let Some(c) = section(root, "cache")? {
            if cache.is_some() {
                return Err(bad(
                    "cache: configured twice (cache and litellm_settings.cache); keep one",
                ));
            }
            cache = Some(cache_config(c, "cache")?);
        }
        if cache.as_ref().is_some_and(|c| c.redis) && redis.is_none() {
            return Err(bad(
                "cache.type is redis but no redis is configured (a redis block)",
            ));
        }
        if root
            .get("environment_variables")
            .is_some_and(|v| !v.is_null())
        {
            return Err(bad(
                "environment_variables: not read by the gateway; set variables in its environment and refer to them as os.environ/NAME",
            ));
        }

        let telemetry = root
            .get("telemetry")
            .filter(|v| !v.is_null())
            .map(OtlpConfig::from_json)
            .transpose()?;

        Ok(GatewayConfig {
            global_budget,
            callbacks,
            telemetry,
            deployments,
            settings,
            budget,
            drop_params,
            master_key,
            keys,
            teams,
            rate_limit,
            rate_limit_explicit_local,
            redis,
            redis_source,
            cache,
            server,
            debug_logs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:1/v1
      api_key: os.environ/LLMUX_TEST_KEY_A
general_settings:
  master_key: sk-master
keys:
  - key: sk-user-1
    key_alias: alice
    models: [gpt-4o]
    rpm: 10
    expires: 2030-01-01T00:00:00Z
router_settings:
  routing_strategy: least-busy
  num_retries: 1
";

    #[test]
    fn reads_litellm_shape_with_env_references() {
        std::env::set_var("LLMUX_TEST_KEY_A", "sk-upstream-secret");
        let c = GatewayConfig::parse(BASE).unwrap();
        assert_eq!(c.deployments.len(), 1);
        assert_eq!(
            c.deployments[0]
                .endpoint
                .api_key
                .as_ref()
                .map(Secret::expose),
            Some("sk-upstream-secret")
        );
        assert_eq!(c.settings.num_retries, 1);
        assert_eq!(c.keys[0].alias, "alice");
        assert_eq!(c.keys[0].rpm, Some(10));
        assert_eq!(c.keys[0].expires_at, Some(1_893_456_000));
        assert_eq!(c.keys[0].digest, key_digest("sk-user-1"));
        let dump = format!("{c:?}");
        for secret in ["sk-upstream-secret", "sk-master", "sk-user-1"] {
            assert!(!dump.contains(secret), "{secret} leaked into {dump}");
        }
    }

    #[test]
    fn refusals_name_the_path() {
        std::env::set_var("LLMUX_TEST_KEY_A", "x");
        let cases = [
            (
                BASE.replace("LLMUX_TEST_KEY_A", "LLMUX_SURELY_UNSET_VAR"),
                "model_list[0].litellm_params.api_key: environment variable LLMUX_SURELY_UNSET_VAR",
            ),
            (BASE.replace("rpm: 10", "rpm: ten"), "keys[0].rpm"),
            (
                BASE.replace("routing_strategy", "routing_strategee"),
                "router_settings.routing_strategee",
            ),
            (
                BASE.replace("models: [gpt-4o]", "models: [gpt-5]"),
                "model 'gpt-5'",
            ),
            (format!("{BASE}\nbogus: 1\n"), "bogus: unknown key"),
            (
                format!("{BASE}\nrate_limit:\n  rpm: 5\n  distributed: true\n"),
                "no redis",
            ),
            (format!("{BASE}\nserver:\n  port: 70000\n"), "server.port"),
            ("model_list: [".to_owned(), "not valid YAML"),
        ];
        for (text, want) in cases {
            let e = GatewayConfig::parse(&text).unwrap_err();
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
        }
    }

    #[test]
    fn budgets_and_durations() {
        let d = |v: Value| parse_duration(&v, "x");
        assert_eq!(d(json!("30s")).unwrap(), Duration::from_secs(30));
        assert_eq!(d(json!("1.5h")).unwrap(), Duration::from_secs(5400));
        assert_eq!(d(json!("30d")).unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(d(json!(90)).unwrap(), Duration::from_secs(90));
        assert!(d(json!("30w")).is_err() && d(json!("h")).is_err() && d(json!(-1)).is_err());
        let text =
            format!("{BASE}teams:\n  - {{team_id: t1, max_budget: 5, budget_duration: 1d}}\n")
                .replace(
                    "key_alias: alice",
                    "key_alias: alice\n    team_id: t1\n    max_budget: 0.5",
                );
        std::env::set_var("LLMUX_TEST_KEY_A", "x");
        let c = GatewayConfig::parse(&text).unwrap();
        assert_eq!(c.keys[0].max_budget, Some(0.5));
        assert_eq!(c.keys[0].budget_window, NO_RESET);
        assert_eq!(c.teams[0].budget_window, Duration::from_secs(86_400));
        let e = GatewayConfig::parse(&text.replace("max_budget: 5,", "")).unwrap_err();
        assert!(
            e.message.contains("teams[0].max_budget is required"),
            "{}",
            e.message
        );
    }

    #[test]
    fn expiry_formats() {
        let p = |v: Value| parse_expiry(&v, "x");
        assert_eq!(p(json!("1970-01-02")).unwrap(), 86_400);
        assert_eq!(
            p(json!("2026-11-29T20:00:00+01:00")).unwrap(),
            p(json!("2026-11-29T19:00:00Z")).unwrap()
        );
        assert_eq!(
            p(json!("2026-11-29T19:00:00.250Z")).unwrap(),
            p(json!("2026-11-29T19:00:00Z")).unwrap()
        );
        assert_eq!(p(json!(12)).unwrap(), 12);
        assert!(p(json!("tomorrow")).is_err());
        assert!(p(json!("2026-13-01")).is_err());
    }
}
