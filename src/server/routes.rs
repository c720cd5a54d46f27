//! The gateway's routes: OpenAI's `POST /v1/chat/completions` and `/v1/embeddings` (also
//! without `/v1`), `GET /v1/models`, health, `/metrics` and `POST /config/reload`.
//!
//! A model call: authenticate, read the body (at most `server.max_body_bytes`), validate the
//! fields the gateway reads, check the key may use the model, admit it against the key's own
//! limits and the `rate_limit` block (one all-or-nothing admission), route it, answer (JSON or
//! SSE) with `x-ratelimit-*` and routing headers, settle the admission with the tokens used.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::auth::{self, Principal};
use super::body::Out;
use super::errors::{self, ours};
use super::metrics::{Gauges, Record};
use super::sse::{self, AbortOnDrop};
use super::{Gateway, Live};
use crate::error::{Error, ErrorKind};
use crate::limiter::{
    self, Caller, Demand, Denial, FailPolicy, Limited as Which, Rate, RateInfo, ScopeLimits, Ticket,
};
use crate::pipeline::{self, CallMeta, CallOptions, Completed, Mock};
use crate::router::Routed;
use crate::spool;
use crate::streaming::BinaryStream;
use crate::types::{
    images_estimate, speech_estimate, ChatRequest, EmbeddingRequest, FileSource, ImageEditRequest,
    ImageRequest, Media, SpeechRequest, TranscriptionRequest, Usage,
};

/// Request fields that would point the gateway at another upstream or credential: refused,
/// so that the gateway is never an open proxy.
const CLIENT_CREDENTIALS: &[&str] = &[
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "organization",
    "custom_llm_provider",
    "azure_ad_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
    "extra_headers",
    "headers",
];

/// LiteLLM request fields the gateway reads or drops rather than sending upstream.
const CONSUMED: &[&str] = &[
    "metadata",
    "tags",
    "num_retries",
    "max_retries",
    "litellm_call_id",
];

/// Fields whose type is checked before anything is sent: whole numbers.
const WHOLE_FIELDS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "top_logprobs",
];
/// ... and numbers.
const NUMBER_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
];

fn json_response(status: StatusCode, v: &Value, rid: &str) -> Response<Out> {
    let mut r = Response::new(Out::full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set(r.headers_mut(), "x-request-id", rid);
    r
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn secs_text(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// OpenAI's `x-ratelimit-*` headers from the tightest limits an admission saw.
fn rate_headers(h: &mut HeaderMap, info: &RateInfo) {
    if let (Some(l), Some(r)) = (info.limit_requests, info.remaining_requests) {
        set(h, "x-ratelimit-limit-requests", &l.to_string());
        set(h, "x-ratelimit-remaining-requests", &r.to_string());
        if let Some(t) = info.reset_requests {
            set(h, "x-ratelimit-reset-requests", &secs_text(t));
        }
    }
    if let (Some(l), Some(r)) = (info.limit_tokens, info.remaining_tokens) {
        set(h, "x-ratelimit-limit-tokens", &l.to_string());
        set(h, "x-ratelimit-remaining-tokens", &r.to_string());
        if let Some(t) = info.reset_tokens {
            set(h, "x-ratelimit-reset-tokens", &secs_text(t));
        }
    }
}

/// A refused admission: 429 with `Retry-After` and the limit that refused.
fn denial_response(d: Denial, model: &str, rid: &str) -> (Error, Response<Out>) {
    let which = d.limited;
    let limit = d.limit;
    let reset = d.retry_after;
    let mut e = d.into_error();
    e.model = Some(model.to_owned());
    let mut r = errors::respond(&e, rid);
    let h = r.headers_mut();
    let (l, rem, rs) = match which {
        Which::Requests | Which::Parallel => (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        Which::Tokens => (
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    };
    set(h, l, &limit.to_string());
    set(h, rem, "0");
    if let Some(t) = reset {
        set(h, rs, &secs_text(t));
    }
    (e, r)
}

/// Counts a request as in flight while it lives.
struct InFlight(Arc<Gateway>);

impl InFlight {
    fn new(gw: &Arc<Gateway>) -> Self {
        gw.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(gw.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request is in its life, for the access log and metrics.
struct Ctx {
    /// The request's trace span (exported when telemetry is on).
    span: tracing::Span,
    gw: Arc<Gateway>,
    live: Arc<Live>,
    rid: String,
    started: Instant,
    route: &'static str,
    model: String,
    who: String,
    principal: Principal,
}

impl Ctx {
    fn finish(
        &self,
        status: u16,
        deployment: &str,
        usage: Option<&Usage>,
        cost: Option<f64>,
        ttft: Option<Duration>,
    ) {
        let latency = self.started.elapsed();
        // Only configured groups become metric labels (a client's made-up names would grow the
        // series without bound).
        let label = if self.live.groups.contains(&self.model) {
            self.model.as_str()
        } else {
            "-"
        };
        self.span.record("http.response.status_code", status);
        if !deployment.is_empty() {
            self.span.record("llmux.deployment_id", deployment);
        }
        if let Some(u) = usage {
            self.span
                .record("gen_ai.usage.input_tokens", u.prompt_tokens);
            self.span
                .record("gen_ai.usage.output_tokens", u.completion_tokens);
        }
        if let Some(c) = cost {
            self.span.record("llmux.cost_usd", c);
        }
        self.gw.metrics.record(&Record {
            route: self.route,
            model: label,
            deployment: if deployment.is_empty() {
                "-"
            } else {
                deployment
            },
            status,
            latency,
            ttft,
            prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
            completion_tokens: usage.map_or(0, |u| u.completion_tokens),
            cost,
        });
        let ms = latency.as_secs_f64() * 1000.0;
        if self.live.server.access_log {
            tracing::info!(request_id = %self.rid, route = self.route, model = %self.model, key = %self.who, status, deployment, latency_ms = ms, "request");
        } else {
            tracing::debug!(request_id = %self.rid, route = self.route, model = %self.model, key = %self.who, status, deployment, latency_ms = ms, "request");
        }
    }

    /// Notes which provider and model answered, and charges the caller's budgets.
    fn answered_by(&self, meta: &CallMeta, cost: Option<f64>) {
        charge(&self.gw, &self.live, &self.principal, cost);
        self.span.record("gen_ai.system", meta.provider);
        if !meta.upstream_model.is_empty() {
            self.span
                .record("gen_ai.response.model", meta.upstream_model.as_str());
        }
    }

    fn fail(&self, e: &Error) -> Response<Out> {
        self.span.record("error.type", e.kind.code());
        let r = errors::respond(e, &self.rid);
        self.finish(r.status().as_u16(), "", None, None, None);
        if r.status().is_server_error() {
            tracing::warn!(request_id = %self.rid, model = %self.model, kind = e.kind.code(), error = %e.message, "request failed");
        }
        r
    }
}

/// The trace span of a model call, joined to the client's W3C `traceparent` when it sent one.
fn request_span(op: &'static str, req: &Request<Incoming>, rid: &str) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::telemetry::OTEL_TARGET,
        "llmux.request",
        "otel.name" = op,
        "otel.kind" = "server",
        "traceparent" = tracing::field::Empty,
        "gen_ai.operation.name" = op,
        "gen_ai.system" = tracing::field::Empty,
        "gen_ai.request.model" = tracing::field::Empty,
        "gen_ai.response.model" = tracing::field::Empty,
        "gen_ai.usage.input_tokens" = tracing::field::Empty,
        "gen_ai.usage.output_tokens" = tracing::field::Empty,
        "gen_ai.request.stream" = tracing::field::Empty,
        "http.request.method" = "POST",
        "url.path" = req.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
        "llmux.request_id" = rid,
        "llmux.deployment_id" = tracing::field::Empty,
        "llmux.key" = tracing::field::Empty,
        "llmux.cost_usd" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(tp) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            span.record("traceparent", tp);
        }
    }
    span
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Out>, Infallible> {
    let path = req.uri().path();
    let p = path
        .strip_prefix("/v1")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path)
        .trim_end_matches('/')
        .to_owned();
    let method = req.method().clone();
    let rid = pipeline::request_id();
    let r = match (&method, p.as_str()) {
        (&Method::POST, "/chat/completions") => {
            let span = request_span("chat", &req, &rid);
            model_call(gw, req, rid, "chat", span.clone())
                .instrument(span)
                .await
        }
        (&Method::POST, "/embeddings") => {
            let span = request_span("embeddings", &req, &rid);
            model_call(gw, req, rid, "embeddings", span.clone())
                .instrument(span)
                .await
        }
        (&Method::POST, "/audio/transcriptions") => {
            let span = request_span("transcriptions", &req, &rid);
            upload_call(gw, req, rid, span.clone(), "transcriptions")
                .instrument(span)
                .await
        }
        (&Method::POST, "/images/edits") => {
            let span = request_span("images", &req, &rid);
            upload_call(gw, req, rid, span.clone(), "images")
                .instrument(span)
                .await
        }
        (&Method::POST, "/audio/speech") => {
            let span = request_span("speech", &req, &rid);
            model_call(gw, req, rid, "speech", span.clone())
                .instrument(span)
                .await
        }
        (&Method::POST, "/images/generations") => {
            let span = request_span("images", &req, &rid);
            model_call(gw, req, rid, "images", span.clone())
                .instrument(span)
                .await
        }
        (&Method::GET, "/models") => models(&gw, &req, &rid),
        (&Method::GET, "/health/liveliness" | "/health/liveness") => {
            json_response(StatusCode::OK, &json!({"status": "alive"}), &rid)
        }
        (&Method::GET, "/health/readiness" | "/health") => readiness(&gw, &rid).await,
        (&Method::GET, "/metrics") => metrics(&gw).await,
        (&Method::POST, "/config/reload") => reload(&gw, &req, &rid).await,
        (
            _,
            "/chat/completions"
            | "/embeddings"
            | "/images/generations"
            | "/audio/speech"
            | "/audio/transcriptions"
            | "/images/edits"
            | "/models"
            | "/health/liveliness"
            | "/health/readiness"
            | "/metrics"
            | "/config/reload",
        ) => errors::respond(
            &ours(
                ErrorKind::BadRequest,
                format!("method {method} is not allowed on {path}"),
            )
            .with_status(405),
            &rid,
        ),
        _ => errors::respond(
            &ours(ErrorKind::NotFound, format!("no route {method} {path}")),
            &rid,
        ),
    };
    Ok(r)
}

fn models(gw: &Gateway, req: &Request<Incoming>, rid: &str) -> Response<Out> {
    let live = gw.live();
    let principal = match auth::authenticate(&live, req.headers()) {
        Ok((p, _)) => p,
        Err(e) => return errors::respond(&e, rid),
    };
    let data: Vec<Value> = live
        .group_list
        .iter()
        .filter(|g| principal.allows(g))
        .map(|g| json!({"id": g, "object": "model", "created": 0, "owned_by": "llmux"}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
        rid,
    )
}

async fn redis_up(gw: &Gateway) -> Option<bool> {
    let pool = gw.shared.redis.as_ref()?;
    let ping = pool.query::<String>(redis::cmd("PING"));
    Some(matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Ok(_))
    ))
}

async fn readiness(gw: &Gateway, rid: &str) -> Response<Out> {
    let live = gw.live();
    let redis = redis_up(gw).await;
    let closing = gw.shutting_down.load(Ordering::Relaxed);
    // Without Redis the limiter still decides under `local` and `open`; under `closed` it
    // refuses everything, so the instance is not ready.
    let limiter_blind = redis == Some(false) && gw.placement.policy == FailPolicy::Closed;
    let ready = !closing && !limiter_blind;
    let loaded = live
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last_error = gw
        .last_reload_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "shutting_down": closing,
        "redis": match redis { None => "not_configured", Some(true) => "connected", Some(false) => "unreachable" },
        "rate_limit_breaker_open": gw.shared.limiter.stats().breaker_open,
        "config": {
            "models": live.group_list,
            "deployments": live.router.deployments().len(),
            "keys": live.keys.len(),
            "loaded_at": loaded,
            "last_reload_error": last_error,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body, rid)
}

async fn metrics(gw: &Gateway) -> Response<Out> {
    let live = gw.live();
    let ls = gw.shared.limiter.stats();
    let mut g = Gauges {
        limiter_admitted: ls.admitted,
        limiter_denied: ls.denied,
        limiter_redis_errors: ls.redis_errors,
        limiter_fallback_admitted: ls.fallback_admitted,
        limiter_breaker_open: ls.breaker_open,
        live_processes: ls.live_processes,
        retries: live.router.budget().retries,
        redis_up: redis_up(gw).await,
        ..Gauges::default()
    };
    if let Ok(rows) = live.router.deployment_stats().await {
        g.deployments = rows
            .into_iter()
            .map(|(d, s)| {
                (
                    d.id.clone(),
                    d.group.clone(),
                    s.cooldown_remaining.is_some(),
                    s.in_flight,
                )
            })
            .collect();
    }
    if let Some(c) = &live.cache {
        let s = c.stats();
        g.cache_hits = Some((
            s.hits.load(Ordering::Relaxed),
            s.misses.load(Ordering::Relaxed),
        ));
    }
    let mut r = Response::new(Out::full(gw.metrics.render(&g)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn reload(gw: &Gateway, req: &Request<Incoming>, rid: &str) -> Response<Out> {
    let live = gw.live();
    match auth::authenticate(&live, req.headers()) {
        Ok((Principal::Master, _)) => {}
        Ok(_) => {
            return errors::respond(
                &ours(
                    ErrorKind::PermissionDenied,
                    "reloading the config needs the master key (general_settings.master_key)",
                ),
                rid,
            )
        }
        Err(e) => return errors::respond(&e, rid),
    }
    match gw.reload(true).await {
        Ok(_) => {
            let live = gw.live();
            json_response(
                StatusCode::OK,
                &json!({"reloaded": true, "models": live.group_list, "keys": live.keys.len()}),
                rid,
            )
        }
        Err(e) => errors::respond(&e, rid),
    }
}

/// Reads the body, refusing one larger than `max` with 413.
async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Error> {
    let too_big = || {
        ours(
            ErrorKind::BadRequest,
            format!("request body is larger than the limit of {max} bytes (server.max_body_bytes)"),
        )
        .with_status(413)
    };
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_big());
        }
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_big()),
        Err(e) => Err(ours(
            ErrorKind::BadRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

fn bad(msg: impl Into<String>) -> Error {
    ours(ErrorKind::BadRequest, msg)
}

/// The body as a JSON object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("request body must be a JSON object")),
        Err(e) => Err(bad(format!("request body is not valid JSON: {e}"))),
    }
}

/// What a model call asks for, split into the upstream request's parameters and the options
/// the gateway reads itself.
struct Parsed {
    model: String,
    params: Map<String, Value>,
    opts: CallOptions,
    tags: Vec<String>,
    stream: bool,
}

fn parse_call(mut body: Map<String, Value>, live: &Live) -> Result<Parsed, Error> {
    let model = match body.remove("model") {
        Some(Value::String(s)) if !s.is_empty() => s,
        None | Some(Value::Null) => return Err(bad("'model' is required")),
        Some(_) => return Err(bad("'model' must be a string naming a model")),
    };
    refuse_credentials(&body)?;
    let stream = match body.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad("'stream' must be true or false")),
    };
    for k in WHOLE_FIELDS {
        if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
            if v.as_u64().is_none() {
                return Err(bad(format!("'{k}' must be a whole number >= 0, got {v}")));
            }
        }
    }
    for k in NUMBER_FIELDS {
        if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(bad(format!("'{k}' must be a number, got {v}")));
            }
        }
    }
    if let Some(v) = body.get("user").filter(|v| !v.is_null()) {
        if !v.is_string() {
            return Err(bad("'user' must be a string"));
        }
    }
    let mut opts = CallOptions {
        hooks: live.hooks.clone(),
        drop_params: live.drop_params,
        ..CallOptions::default()
    };
    let mut tags = Vec::new();
    let list = |v: &Value, what: &str| -> Result<Vec<String>, Error> {
        serde_json::from_value(v.clone())
            .map_err(|_| bad(format!("'{what}' must be a list of strings")))
    };
    if let Some(m) = body.get("metadata").filter(|v| !v.is_null()) {
        let m = m
            .as_object()
            .ok_or_else(|| bad("'metadata' must be an object"))?;
        if let Some(t) = m.get("tags").filter(|v| !v.is_null()) {
            tags = list(t, "metadata.tags")?;
        }
    }
    if let Some(t) = body.get("tags").filter(|v| !v.is_null()) {
        tags.extend(list(t, "tags")?);
    }
    for k in ["timeout", "request_timeout"] {
        if let Some(v) = body.remove(k).filter(|v| !v.is_null()) {
            opts.timeout = v
                .as_f64()
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| bad(format!("'{k}' must be a positive number of seconds")))?;
        }
    }
    if let Some(v) = body.remove("drop_params").filter(|v| !v.is_null()) {
        opts.drop_params = v
            .as_bool()
            .ok_or_else(|| bad("'drop_params' must be true or false"))?;
    }
    if let Some(v) = body.remove("mock_response").filter(|v| !v.is_null()) {
        let t = v
            .as_str()
            .ok_or_else(|| bad("'mock_response' must be a string"))?;
        opts.mock = Some(Mock::parse(t));
    }
    for k in CONSUMED {
        body.remove(*k);
    }
    Ok(Parsed {
        model,
        params: body,
        opts,
        tags,
        stream,
    })
}

/// The limits a call passes: the key's own, and the `rate_limit` block's scope for it.
fn scopes(
    live: &Live,
    who: &Principal,
    digest: Option<&[u8; 32]>,
    user: Option<&str>,
    model: &str,
) -> Vec<ScopeLimits> {
    let hex = |d: &[u8; 32]| {
        let mut s = String::with_capacity(64);
        for b in d {
            let _ = write!(s, "{b:02x}");
        }
        s
    };
    let mut out = Vec::new();
    let mut team = None;
    if let Principal::Key(k) = who {
        team = k.team_id.clone();
        if k.has_limits() {
            out.push(ScopeLimits {
                scope: format!("vkey:{}", key_hex(&k.digest)),
                rpm: k.rpm.map(Rate::per_minute),
                tpm: k.tpm.map(Rate::per_minute),
                max_parallel: k.max_parallel_requests,
            });
        }
    }
    if let Some(cfg) = &live.rate_limit {
        let caller = Caller {
            key_hash: digest.map(hex),
            user: user.map(str::to_owned),
            team,
        };
        out.push(cfg.scope_for(&caller, model));
    }
    out
}

/// The budgets a caller spends against: `(ledger key, max USD, window, whose)`.
fn budgets(live: &Live, who: &Principal) -> Vec<(String, f64, Duration, String)> {
    let Principal::Key(k) = who else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(max) = k.max_budget {
        out.push((
            format!("vkey:{}", key_hex(&k.digest)),
            max,
            k.budget_window,
            format!(" for key '{}'", k.alias),
        ));
    }
    if let Some(t) = k.team_id.as_ref().and_then(|t| live.teams.get(t)) {
        out.push((
            format!("team:{}", t.team_id),
            t.max_budget,
            t.budget_window,
            format!(" for team '{}'", t.team_id),
        ));
    }
    out
}

/// Refuses a caller whose key or team spent its budget (400 `budget_exceeded`, as LiteLLM's
/// proxy answers). Budgets fail closed: a spend store that does not answer refuses the call.
async fn check_budgets(gw: &Gateway, live: &Live, who: &Principal) -> Result<(), Error> {
    for (key, max, window, whose) in budgets(live, who) {
        let spent = gw.spend.spent(&key, window).await.map_err(|e| {
            ours(
                ErrorKind::ServiceUnavailable,
                format!("cannot check the budget{whose}: {}", e.message),
            )
            .with_status(503)
        })?;
        if spent >= max {
            let mut e = crate::hooks::builtin::budget_exceeded(spent, max, &whose);
            e.provider = Some("llmux".into());
            return Err(e);
        }
    }
    Ok(())
}

/// Adds a call's cost to its key's and team's spend, off the response path.
fn charge(gw: &Arc<Gateway>, live: &Live, who: &Principal, cost: Option<f64>) {
    let Some(cost) = cost.filter(|c| *c > 0.0) else {
        return;
    };
    let budgets = budgets(live, who);
    if budgets.is_empty() {
        return;
    }
    let gw = gw.clone();
    tokio::spawn(async move {
        for (key, _, window, whose) in budgets {
            if let Err(e) = gw.spend.add(&key, cost, window).await {
                tracing::warn!(error = %e.message, "cannot record spend{whose}");
            }
        }
    });
}

fn key_hex(d: &[u8; 32]) -> String {
    let mut s = String::with_capacity(24);
    for b in &d[..12] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Settles an admission after the call: refunded whole when the router refused to send it,
/// else charged with the tokens used.
fn settle(ticket: Ticket, e: Option<&Error>, used: u64) {
    match e {
        Some(e) if e.kind == ErrorKind::RateLimited && e.provider.as_deref() == Some("router") => {
            ticket.undo_later()
        }
        _ => ticket.settle(used),
    }
}

/// The context of a model call on `route`; the caller is known once [`Ctx::authenticate`] ran.
fn new_ctx(
    gw: &Arc<Gateway>,
    live: &Arc<Live>,
    rid: String,
    route: &'static str,
    span: tracing::Span,
) -> Ctx {
    Ctx {
        span,
        gw: gw.clone(),
        live: live.clone(),
        rid,
        started: Instant::now(),
        route,
        model: String::new(),
        who: String::new(),
        principal: Principal::Open,
    }
}

impl Ctx {
    /// Authenticates the request and notes the caller.
    fn authenticate(
        &mut self,
        headers: &HeaderMap,
    ) -> Result<(Principal, Option<[u8; 32]>), Error> {
        let (who, digest) = auth::authenticate(&self.live, headers)?;
        self.who = who.name().to_owned();
        self.principal = who.clone();
        self.span.record("llmux.key", self.who.as_str());
        Ok((who, digest))
    }
}

/// Refuses a model this gateway does not serve (404) or the caller may not use (403).
fn check_model(live: &Live, who: &Principal, model: &str) -> Result<(), Error> {
    if !live.groups.contains(model) {
        return Err(ours(
            ErrorKind::NotFound,
            format!(
                "The model '{model}' does not exist on this gateway (GET /v1/models lists the models)"
            ),
        )
        .with_upstream_code(Some("model_not_found".into())));
    }
    if !who.allows(model) {
        return Err(ours(
            ErrorKind::PermissionDenied,
            format!("API key '{}' may not use model '{model}'", who.name()),
        ));
    }
    Ok(())
}

/// Admits a call against its limits; a refusal is already the answer (429, or 503 when the
/// limiter cannot decide: Redis down under policy `closed`).
async fn admit(ctx: &Ctx, demand: Demand, model: &str) -> Result<Ticket, Response<Out>> {
    match limiter::admit_or_deny(&ctx.gw.shared.limiter, demand).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(denial)) => {
            let (_, r) = denial_response(denial, model, &ctx.rid);
            ctx.finish(429, "", None, None, None);
            Err(r)
        }
        Err(e) => {
            let mut e = e;
            e.kind = ErrorKind::ServiceUnavailable;
            e.status = Some(503);
            Err(ctx.fail(&e))
        }
    }
}

/// The answer as JSON.
fn as_json<T: serde::Serialize>(v: &T) -> Result<(Vec<u8>, &'static str), Error> {
    serde_json::to_vec(v)
        .map(|b| (b, "application/json"))
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot encode the answer: {e}"),
            )
        })
}

/// Answers a routed unary call: settles its admission (the tokens `usage` reports, else
/// `reserved`; a failure refunds them), encodes the answer with `encode`, adds the routing and
/// rate headers, and records the call.
fn answer<T>(
    ctx: &Ctx,
    out: crate::Result<Routed<Completed<T>>>,
    ticket: Ticket,
    info: &RateInfo,
    reserved: u64,
    usage: impl FnOnce(&T) -> Option<Usage>,
    encode: impl FnOnce(&T) -> Result<(Vec<u8>, &'static str), Error>,
) -> Response<Out> {
    let routed = match out {
        Ok(r) => r,
        Err(e) => {
            settle(ticket, Some(&e), 0);
            return ctx.fail(&e);
        }
    };
    let done = &routed.value;
    let usage = usage(&done.response);
    let used = match (&usage, done.meta.media) {
        (Some(u), _) => u.total_tokens,
        (None, Some(m)) => ctx.live.media.tokens(m),
        (None, None) => reserved,
    };
    settle(ticket, None, used);
    let (body, content_type) = match encode(&done.response) {
        Ok(b) => b,
        Err(e) => return ctx.fail(&e),
    };
    let mut r = Response::new(Out::full(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    set(h, "x-request-id", &ctx.rid);
    routing_headers(
        h,
        &routed.deployment_id,
        routed.attempted_fallbacks,
        done.meta.cost,
        info,
    );
    ctx.answered_by(&done.meta, done.meta.cost);
    ctx.finish(
        200,
        &routed.deployment_id,
        usage.as_ref(),
        done.meta.cost,
        None,
    );
    r
}

async fn model_call(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    rid: String,
    route: &'static str,
    span: tracing::Span,
) -> Response<Out> {
    let _in_flight = InFlight::new(&gw);
    let live = gw.live();
    let mut ctx = new_ctx(&gw, &live, rid, route, span);
    let (who, digest) = match ctx.authenticate(req.headers()) {
        Ok(a) => a,
        Err(e) => return ctx.fail(&e),
    };
    let body = match read_body(req, live.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return ctx.fail(&e),
    };
    let mut body = match parse_object(&body) {
        Ok(b) => b,
        Err(e) => return ctx.fail(&e),
    };
    if let Some(Value::String(m)) = body.get("model") {
        ctx.model = m.clone();
        if !ctx.span.is_disabled() {
            ctx.span.record("gen_ai.request.model", m.as_str());
            ctx.span.record("otel.name", format!("{route} {m}"));
        }
    }
    // The payload field each route needs.
    let payload = match route {
        "chat" => match body.remove("messages") {
            Some(Value::Array(m)) if !m.is_empty() && m.iter().all(Value::is_object) => {
                Value::Array(m)
            }
            Some(Value::Array(m)) if m.is_empty() => {
                return ctx.fail(&bad("'messages' must not be empty"))
            }
            None | Some(Value::Null) => return ctx.fail(&bad("'messages' is required")),
            Some(_) => return ctx.fail(&bad("'messages' must be a list of message objects")),
        },
        "speech" => match body.remove("input") {
            Some(Value::String(p)) if !p.is_empty() => Value::String(p),
            Some(Value::String(_)) => return ctx.fail(&bad("'input' must not be empty")),
            None | Some(Value::Null) => return ctx.fail(&bad("'input' is required")),
            Some(_) => return ctx.fail(&bad("'input' must be a string")),
        },
        "images" => match body.remove("prompt") {
            Some(Value::String(p)) if !p.trim().is_empty() => Value::String(p),
            Some(Value::String(_)) => return ctx.fail(&bad("'prompt' must not be empty")),
            None | Some(Value::Null) => return ctx.fail(&bad("'prompt' is required")),
            Some(_) => return ctx.fail(&bad("'prompt' must be a string")),
        },
        _ => match body.remove("input") {
            Some(v @ (Value::String(_) | Value::Array(_))) => v,
            None | Some(Value::Null) => return ctx.fail(&bad("'input' is required")),
            Some(_) => return ctx.fail(&bad("'input' must be a string or a list")),
        },
    };
    let mut call = match parse_call(body, &live) {
        Ok(c) => c,
        Err(e) => return ctx.fail(&e),
    };
    if let Err(e) = check_model(&live, &who, &call.model) {
        return ctx.fail(&e);
    }
    if let Principal::Key(k) = &who {
        call.opts.allowed_groups = k.models.clone();
    }
    // Mocked answers and forced failures feed cooldowns and fallbacks: the operator's only.
    let mocked =
        call.opts.mock.is_some() || call.params.keys().any(|k| k.starts_with("mock_testing_"));
    if mocked && !matches!(who, Principal::Master | Principal::Open) {
        return ctx.fail(&ours(
            ErrorKind::PermissionDenied,
            "'mock_response' and 'mock_testing_*' need the master key",
        ));
    }
    if let Err(e) = check_budgets(&gw, &live, &who).await {
        return ctx.fail(&e);
    }
    let user = call
        .params
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let scopes = scopes(&live, &who, digest.as_ref(), user.as_deref(), &call.model);
    let (messages, input) = match payload {
        Value::Array(m) if route == "chat" => (m, Value::Null),
        other => (Vec::new(), other),
    };
    let tokens = match route {
        "chat" => limiter::reservation(&ChatRequest {
            model: call.model.clone(),
            messages: messages.clone(),
            params: call.params.clone(),
        }),
        // An image or a speech counts as a request, and as tokens if so configured.
        "images" => live.media.tokens(images_estimate(&call.params)),
        "speech" => live
            .media
            .tokens(speech_estimate(input.as_str().unwrap_or_default())),
        _ => limiter::embedding_reservation(&input),
    };
    let demand = Demand {
        request_id: ctx.rid.clone(),
        scopes,
        tokens,
    };
    let ticket = match admit(&ctx, demand, &call.model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let info = ticket.info();
    if route == "speech" {
        let req = SpeechRequest {
            model: call.model.clone(),
            input: input.as_str().unwrap_or_default().to_owned(),
            params: call.params,
        };
        return match live.router.speech(req, &call.opts, &call.tags).await {
            Ok(routed) => {
                let used = routed.value.1.media.map_or(0, |m| live.media.tokens(m));
                settle(ticket, None, used);
                let deployment = routed.deployment_id.clone();
                let (stream, meta) = routed.value;
                audio_response(
                    ctx,
                    stream,
                    meta,
                    deployment,
                    routed.attempted_fallbacks,
                    &info,
                )
            }
            Err(e) => {
                settle(ticket, Some(&e), 0);
                ctx.fail(&e)
            }
        };
    }
    if route == "images" {
        let req = ImageRequest {
            model: call.model.clone(),
            prompt: input.as_str().unwrap_or_default().to_owned(),
            params: call.params,
        };
        let out = live
            .router
            .image_generation(req, &call.opts, &call.tags)
            .await;
        return answer(&ctx, out, ticket, &info, 0, |_| None, as_json);
    }
    if route == "embeddings" {
        let req = EmbeddingRequest {
            model: call.model.clone(),
            input,
            params: call.params,
        };
        let out = live.router.embedding(req, &call.opts, &call.tags).await;
        return answer(
            &ctx,
            out,
            ticket,
            &info,
            tokens,
            |r| r.usage.clone(),
            as_json,
        );
    }
    let req = ChatRequest {
        model: call.model.clone(),
        messages,
        params: call.params,
    };
    if !call.stream {
        let out = live.router.completion(req, &call.opts, &call.tags).await;
        return answer(
            &ctx,
            out,
            ticket,
            &info,
            tokens,
            |r| r.usage.clone(),
            as_json,
        );
    }
    stream_call(ctx, req, call.opts, call.tags, ticket, info).await
}

fn routing_headers(
    h: &mut HeaderMap,
    deployment: &str,
    fallbacks: u32,
    cost: Option<f64>,
    info: &RateInfo,
) {
    set(h, "x-litellm-model-id", deployment);
    if fallbacks > 0 {
        set(h, "x-litellm-attempted-fallbacks", &fallbacks.to_string());
    }
    if let Some(c) = cost {
        set(h, "x-litellm-response-cost", &c.to_string());
    }
    rate_headers(h, info);
}

/// The longest text field of a multipart form.
const MAX_FORM_FIELD: usize = 64 * 1024;

/// A multipart request body being read, part by part, with the server's upload limit.
struct Form {
    parts: multer::Multipart<'static>,
    /// File bytes read so far, over all parts.
    total: u64,
    max: u64,
}

/// One part of a form: a text field (read whole, capped) or a file (not read yet).
enum Part {
    Text(String, String),
    File {
        name: String,
        filename: String,
        field: Box<multer::Field<'static>>,
    },
}

fn malformed(e: &multer::Error) -> Error {
    bad(format!("the multipart body is malformed: {e}"))
}

fn spool_error(e: &std::io::Error) -> Error {
    Error::new(ErrorKind::Internal, format!("cannot spool the upload: {e}"))
}

/// A new spool file for an upload, in the temporary directory.
fn new_spool() -> Result<(spool::SpoolWriter, spool::Spool), Error> {
    spool::create(&std::env::temp_dir(), &pipeline::request_id()).map_err(|e| spool_error(&e))
}

impl Form {
    fn open(req: Request<Incoming>, max: u64) -> Result<Self, Error> {
        use futures_util::StreamExt;
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let boundary = multer::parse_boundary(&ct)
            .map_err(|_| bad("the request must be multipart/form-data, with its files as parts"))?;
        let body = http_body_util::BodyStream::new(req.into_body())
            .filter_map(|f| async move { f.map(|f| f.into_data().ok()).transpose() });
        Ok(Self {
            parts: multer::Multipart::new(body, boundary),
            total: 0,
            max,
        })
    }

    async fn next(&mut self) -> Result<Option<Part>, Error> {
        let Some(mut field) = self.parts.next_field().await.map_err(|e| malformed(&e))? else {
            return Ok(None);
        };
        let name = field.name().unwrap_or_default().to_owned();
        if field.file_name().is_some()
            || matches!(name.as_str(), "file" | "image" | "image[]" | "mask")
        {
            let filename = field.file_name().unwrap_or("upload").to_owned();
            return Ok(Some(Part::File {
                name,
                filename,
                field: Box::new(field),
            }));
        }
        // Text fields are small: read with a cap, never whole.
        let mut raw = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| malformed(&e))? {
            if raw.len() + chunk.len() > MAX_FORM_FIELD {
                return Err(bad(format!(
                    "form field '{name}' is longer than {MAX_FORM_FIELD} bytes"
                )));
            }
            raw.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(raw)
            .map_err(|_| bad(format!("form field '{name}' is not UTF-8 text")))?;
        Ok(Some(Part::Text(name, text)))
    }

    /// Writes a file part to `out` as it arrives, held to the upload limit.
    async fn copy(
        &mut self,
        mut field: multer::Field<'static>,
        out: &mut spool::SpoolWriter,
    ) -> Result<(), Error> {
        while let Some(chunk) = field.chunk().await.map_err(|e| malformed(&e))? {
            self.total += chunk.len() as u64;
            if self.total > self.max {
                return Err(bad(format!(
                    "the upload is over the limit of {} bytes (server.max_upload_bytes)",
                    self.max
                ))
                .with_status(413));
            }
            out.write(&chunk).await.map_err(|e| spool_error(&e))?;
        }
        Ok(())
    }

    /// Spools a file part whole.
    async fn spool(&mut self, field: multer::Field<'static>) -> Result<spool::Spool, Error> {
        let (mut w, s) = new_spool()?;
        self.copy(field, &mut w).await?;
        w.finish();
        Ok(s)
    }
}

/// Puts a text field in `fields`; `name[]` fields make a list.
fn put_field(fields: &mut Map<String, Value>, name: String, text: String) {
    match name.strip_suffix("[]") {
        Some(list) => {
            let entry = fields
                .entry(list.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = entry {
                a.push(Value::String(text));
            }
        }
        None => {
            fields.insert(name, Value::String(text));
        }
    }
}

/// Checks the text fields that came after a streamed file. The model and the caller were
/// settled before the call started: a different `model` or `user` is refused, the same one
/// dropped (sent once); the upload limit is the server's.
fn trailing_fields(trailing: &mut Map<String, Value>, model: &str) -> Result<(), Error> {
    refuse_credentials(trailing)?;
    trailing.remove("max_upload_bytes");
    if let Some(m) = trailing.remove("model") {
        if m.as_str() != Some(model) {
            return Err(bad(
                "'model' came after the file with another value: send the form's fields before its file",
            ));
        }
    }
    if trailing.contains_key("user") {
        return Err(bad(
            "'user' came after the file: send it before the file, where the limits can see it",
        ));
    }
    Ok(())
}

/// Refuses a request that names its own upstream or credentials.
fn refuse_credentials(fields: &Map<String, Value>) -> Result<(), Error> {
    for k in CLIENT_CREDENTIALS {
        if fields.get(*k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "'{k}' may not be set by clients: this gateway sends requests only to its configured deployments"
            )));
        }
    }
    Ok(())
}

/// The form of an upload: its text fields and its files, spooled to disk.
#[derive(Default)]
struct Upload {
    fields: Map<String, Value>,
    /// `(form field, spool, file name)` of every file part.
    files: Vec<(String, spool::Spool, String)>,
}

impl Upload {
    fn take(&mut self, field: &str) -> Vec<(spool::Spool, String)> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|(f, _, _)| f == field);
        self.files = rest;
        mine.into_iter().map(|(_, s, n)| (s, n)).collect()
    }

    /// Reads the rest of `form`, spooling each file whole.
    async fn read_rest(&mut self, form: &mut Form) -> Result<(), Error> {
        while let Some(part) = form.next().await? {
            match part {
                Part::Text(name, text) => put_field(&mut self.fields, name, text),
                Part::File {
                    name,
                    filename,
                    field,
                } => {
                    let s = form.spool(*field).await?;
                    self.files.push((name, s, filename));
                }
            }
        }
        Ok(())
    }
}

/// A transcription's audio that is still arriving: the form, the file part being read, and
/// the spool it goes to.
struct Arriving {
    form: Form,
    field: Box<multer::Field<'static>>,
    writer: spool::SpoolWriter,
}

impl Arriving {
    /// Reads the file to its end, then the rest of the form; the text fields that came after
    /// the file. The spool is finished as soon as the file is whole, or failed with the error.
    async fn finish(self) -> Result<Map<String, Value>, Error> {
        let Self {
            mut form,
            field,
            mut writer,
        } = self;
        if let Err(e) = form.copy(*field, &mut writer).await {
            writer.fail(e.message.clone());
            return Err(e);
        }
        if writer.written() == 0 {
            writer.fail("the file is empty");
            return Err(bad("'file' is empty"));
        }
        writer.finish();
        let mut trailing = Map::new();
        while let Some(part) = form.next().await? {
            match part {
                Part::Text(name, text) => put_field(&mut trailing, name, text),
                Part::File { name, .. } => {
                    return Err(bad(format!(
                        "a transcription takes one file; '{name}' is another"
                    )))
                }
            }
        }
        Ok(trailing)
    }
}

/// `POST /v1/audio/transcriptions` and `/v1/images/edits`. A transcription whose `model` comes
/// before its file (as the OpenAI SDKs send it) is streamed through: the call starts as the
/// file starts arriving, and the upstream reads it from the spool as it is written. Anything
/// else (image edits, a model named after the file) is spooled whole first. Either way memory
/// stays flat and a retry or a fallback reads the file again from disk.
async fn upload_call(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    rid: String,
    span: tracing::Span,
    route: &'static str,
) -> Response<Out> {
    let _in_flight = InFlight::new(&gw);
    let live = gw.live();
    let mut ctx = new_ctx(&gw, &live, rid, route, span);
    let (who, digest) = match ctx.authenticate(req.headers()) {
        Ok(a) => a,
        Err(e) => return ctx.fail(&e),
    };
    let mut form = match Form::open(req, live.server.max_upload_bytes) {
        Ok(f) => f,
        Err(e) => return ctx.fail(&e),
    };
    let mut up = Upload::default();
    // The text fields before the first file.
    let first = loop {
        match form.next().await {
            Err(e) => return ctx.fail(&e),
            Ok(None) => break None,
            Ok(Some(Part::Text(name, text))) => put_field(&mut up.fields, name, text),
            Ok(Some(Part::File {
                name,
                filename,
                field,
            })) => break Some((name, filename, field)),
        }
    };
    let mut arriving = None;
    match first {
        Some((name, filename, field))
            if route == "transcriptions" && name == "file" && up.fields.contains_key("model") =>
        {
            let (writer, s) = match new_spool() {
                Ok(w) => w,
                Err(e) => return ctx.fail(&e),
            };
            up.files.push((name, s, filename));
            arriving = Some(Arriving {
                form,
                field,
                writer,
            });
        }
        Some((name, filename, field)) => {
            let s = match form.spool(*field).await {
                Ok(s) => s,
                Err(e) => return ctx.fail(&e),
            };
            up.files.push((name, s, filename));
            if let Err(e) = up.read_rest(&mut form).await {
                return ctx.fail(&e);
            }
        }
        None => {}
    }
    let (files, mask) = if route == "transcriptions" {
        (up.take("file"), None)
    } else {
        let mut images = up.take("image");
        images.extend(up.take("image[]"));
        (images, up.take("mask").pop())
    };
    if files.is_empty() {
        let field = if route == "transcriptions" {
            "file"
        } else {
            "image"
        };
        return ctx.fail(&bad(format!("'{field}' is required")));
    }
    let model = match up.fields.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return ctx.fail(&bad("'model' is required")),
    };
    ctx.model = model.clone();
    ctx.span.record("gen_ai.request.model", model.as_str());
    if let Err(e) = refuse_credentials(&up.fields) {
        return ctx.fail(&e);
    }
    if let Err(e) = check_model(&live, &who, &model) {
        return ctx.fail(&e);
    }
    // An edit's prompt is required; a transcription's (a hint) goes upstream as a field.
    let prompt = if route == "images" {
        match up.fields.remove("prompt") {
            Some(Value::String(p)) if !p.trim().is_empty() => p,
            _ => return ctx.fail(&bad("'prompt' is required")),
        }
    } else {
        String::new()
    };
    if let Err(e) = check_budgets(&gw, &live, &who).await {
        return ctx.fail(&e);
    }
    let user = up
        .fields
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // An edit reserves its images' tokens; a transcription's seconds are charged once known.
    let estimate = if route == "images" {
        images_estimate(&up.fields)
    } else {
        Media::default()
    };
    let demand = Demand {
        request_id: ctx.rid.clone(),
        scopes: scopes(&live, &who, digest.as_ref(), user.as_deref(), &model),
        tokens: live.media.tokens(estimate),
    };
    let ticket = match admit(&ctx, demand, &model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let info = ticket.info();
    let opts = CallOptions {
        drop_params: live.drop_params,
        allowed_groups: match &who {
            Principal::Key(k) => k.models.clone(),
            Principal::Open | Principal::Master => None,
        },
        ..CallOptions::default()
    };
    // The server's upload limit, never the client's.
    up.fields.insert(
        "max_upload_bytes".into(),
        Value::from(live.server.max_upload_bytes),
    );
    if route == "images" {
        for k in WHOLE_FIELDS {
            if let Some(Value::String(v)) = up.fields.get(*k) {
                if let Ok(n) = v.parse::<u64>() {
                    up.fields.insert((*k).to_owned(), Value::from(n));
                }
            }
        }
        let ereq = ImageEditRequest {
            model: model.clone(),
            prompt,
            images: files
                .into_iter()
                .map(|(s, n)| (FileSource::Spool(s), n))
                .collect(),
            mask: mask.map(|(s, n)| (FileSource::Spool(s), n)),
            params: up.fields,
        };
        let out = live.router.image_edit(ereq, &opts, &[]).await;
        return answer(&ctx, out, ticket, &info, 0, |_| None, as_json);
    }
    let Some((file, filename)) = files.into_iter().next() else {
        return ctx.fail(&bad("'file' is required"));
    };
    let mut treq = TranscriptionRequest {
        model: model.clone(),
        file: FileSource::Spool(file),
        filename,
        params: up.fields,
    };
    let out = match arriving {
        None => live.router.transcription(treq.clone(), &opts, &[]).await,
        Some(arriving) => {
            let mut call = Box::pin(live.router.transcription(treq.clone(), &opts, &[]));
            let upload = arriving.finish();
            tokio::pin!(upload);
            tokio::select! {
                biased;
                rest = &mut upload => match rest {
                    Err(e) => return ctx.fail(&e),
                    Ok(trailing) if trailing.is_empty() => call.await,
                    Ok(mut trailing) => {
                        // Fields after the file: the call already sent lacks them, so it is
                        // dropped and made again with the whole form (the file is on disk).
                        drop(call);
                        if let Err(e) = trailing_fields(&mut trailing, &model) {
                            return ctx.fail(&e);
                        }
                        treq.params.extend(trailing);
                        live.router.transcription(treq.clone(), &opts, &[]).await
                    }
                },
                // Answered before the upload was over (an upstream that refused it early).
                out = &mut call => out,
            }
        }
    };
    // `text`, `srt` and `vtt` are answered as text, as OpenAI does.
    let plain = matches!(
        treq.params.get("response_format").and_then(Value::as_str),
        Some("text" | "srt" | "vtt")
    );
    answer(
        &ctx,
        out,
        ticket,
        &info,
        0,
        |_| None,
        |r| {
            if plain {
                Ok((r.text.clone().into_bytes(), "text/plain; charset=utf-8"))
            } else {
                as_json(r)
            }
        },
    )
}

/// Streams an audio body to the client as it arrives. A gone client drops the upstream body;
/// an upstream that breaks midway cuts the client's body with an error.
fn audio_response(
    ctx: Ctx,
    mut stream: BinaryStream,
    meta: CallMeta,
    deployment: String,
    fallbacks: u32,
    info: &RateInfo,
) -> Response<Out> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let mut r = Response::new(Out::Binary(rx));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(stream.content_type()) {
        h.insert(CONTENT_TYPE, v);
    }
    set(h, "x-request-id", &ctx.rid);
    routing_headers(h, &deployment, fallbacks, meta.cost, info);
    ctx.answered_by(&meta, meta.cost);
    let in_flight = InFlight::new(&ctx.gw);
    tokio::spawn(async move {
        let mut status = 200;
        loop {
            let item = tokio::select! {
                () = tx.closed() => {
                    status = 499;
                    break;
                }
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(b)) => {
                    if tx.send(Ok(b)).await.is_err() {
                        status = 499;
                        break;
                    }
                }
                Some(Err(e)) => {
                    status = errors::status_of(&e).as_u16();
                    ctx.span.record("error.type", e.kind.code());
                    tracing::warn!(request_id = %ctx.rid, model = %ctx.model, error = %e.message, bytes = stream.bytes_read(), "audio stream broke");
                    let _ = tx.send(Err(std::io::Error::other(e.message.clone()))).await;
                    break;
                }
            }
        }
        drop(stream);
        drop(in_flight);
        ctx.finish(status, &deployment, None, meta.cost, None);
    });
    r
}

fn sse_response(
    rx: mpsc::Receiver<Bytes>,
    rid: &str,
    deployment: Option<&str>,
    info: &RateInfo,
) -> Response<Out> {
    let mut r = Response::new(Out::Stream(rx));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set(h, "x-request-id", rid);
    if let Some(d) = deployment {
        set(h, "x-litellm-model-id", d);
    }
    rate_headers(h, info);
    r
}

/// A streamed chat completion. Routing runs in its own task; when it answers (first chunk or
/// failure) within one keep-alive interval the response carries the real status, else the
/// SSE headers go out at once and keep-alive comments follow until the first chunk.
async fn stream_call(
    ctx: Ctx,
    req: ChatRequest,
    opts: CallOptions,
    tags: Vec<String>,
    ticket: Ticket,
    info: RateInfo,
) -> Response<Out> {
    let router = ctx.live.router.clone();
    let prompt = limiter::estimate_prompt_tokens(&req.messages);
    let keepalive = ctx.live.server.keepalive_interval;
    let span = ctx.span.clone();
    let opening = AbortOnDrop(tokio::spawn(
        async move {
            match router.completion_stream(req, &opts, &tags).await {
                Ok(mut o) => {
                    pipeline::settle_when_done(&mut o.value.0, ticket, prompt);
                    Ok(o)
                }
                Err(e) => {
                    settle(ticket, Some(&e), 0);
                    Err(e)
                }
            }
        }
        .instrument(span),
    ));
    let mut opening = opening;
    let early = tokio::time::timeout(keepalive, &mut opening).await;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let (opening, deployment) = match early {
        Ok(Ok(Err(e)) | Err(e)) => return ctx.fail(&e),
        Ok(Ok(Ok(opened))) => {
            let d = opened.deployment_id.clone();
            let ready = AbortOnDrop(tokio::spawn(async move { Ok(opened) }));
            (ready, Some(d))
        }
        Err(_) => (opening, None),
    };
    let response = sse_response(rx, &ctx.rid, deployment.as_deref(), &info);
    let started = ctx.started;
    let in_flight = InFlight::new(&ctx.gw);
    tokio::spawn(async move {
        let end = sse::pump(tx, opening, started, keepalive).await;
        drop(in_flight);
        let status = match (&end.error, end.disconnected) {
            (Some(e), _) => errors::status_of(e).as_u16(),
            // 499: the client closed the request (nginx's code).
            (None, true) => 499,
            (None, false) => 200,
        };
        let price = ctx.live.router.price_override(&end.deployment);
        let cost = match (&end.meta, &end.usage) {
            (Some(m), Some(u)) => {
                let mut m = m.clone();
                if let Some(p) = price {
                    crate::router::reprice(&mut m, Some(u), p);
                }
                m.cost.or_else(|| {
                    crate::pricing::cost(Some(m.provider), &m.upstream_model, u).map(|c| c.total())
                })
            }
            _ => None,
        };
        if let Some(m) = &end.meta {
            ctx.answered_by(m, cost);
        }
        if let Some(e) = &end.error {
            ctx.span.record("error.type", e.kind.code());
            tracing::warn!(request_id = %ctx.rid, model = %ctx.model, kind = e.kind.code(), error = %e.message, chunks = end.chunks, "stream ended with an error");
        }
        ctx.finish(status, &end.deployment, end.usage.as_ref(), cost, end.ttft);
    });
    response
}
