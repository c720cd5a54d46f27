//! The Router: LiteLLM's `Router` over routing statistics shared through [`ClusterStats`].
//!
//! A call names a model group; the router filters the group's deployments (cooled down, tags),
//! picks one with the configured [`Strategy`], admits the attempt against the deployment's own
//! rpm / tpm / `max_parallel_requests` with its limiter (a deployment that refuses is skipped
//! for another), and calls the pipeline with that deployment's model and credentials. It is the
//! only retry loop (the pipeline's own retries are off): a retryable failure is retried, on
//! another deployment when one is available, while the [`RetryBudget`] allows; the deployment
//! that failed may cool down (`allowed_fails` failures in a minute, or at once on 429, 401,
//! 404; quota and authentication failures for longer). When a group fails for good, the
//! fallback groups for that kind of failure are tried in order, each with its own retries.
//! Streams are routed the same way until their first chunk; after it, a failure ends the
//! stream with its classified error.
//!
//! Knows deployments and stats, not wire formats.

pub mod budget;
pub mod redis_stats;
pub mod stats;
pub mod strategy;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::limiter::{
    self, Demand, MediaWeights, Rate, RateLimitConfig, RateLimiter, ScopeLimits, Ticket,
};
use crate::pipeline::{self, CallMeta, CallOptions, Completed, Mock};
use crate::providers::Endpoint;
use crate::retry::Backoff;
use crate::streaming::{BinaryStream, ChatStream};
use crate::types::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ImageEditRequest,
    ImageRequest, ImageResponse, Media, MediaEstimate, SpeechRequest, TranscriptionRequest,
    TranscriptionResponse, Usage,
};
use budget::{BudgetSnapshot, RetryBudget};
use stats::{ClusterStats, DeploymentStats, Outcome};
use strategy::{Candidate, Strategy};

/// One deployment of a model group (a `model_list` entry).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `model_info.id`, or a stable hash of the entry.
    pub id: String,
    /// The group name callers use (`model_name`).
    pub group: String,
    /// `litellm_params.model`: `provider/model`.
    pub model: String,
    pub endpoint: Endpoint,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub max_parallel_requests: Option<u64>,
    pub timeout: Option<Duration>,
    pub tags: Vec<String>,
    /// `(input, output)` USD per token, from the entry or the price table.
    pub cost_per_token: Option<(f64, f64)>,
    /// `(input, output)` USD per token written in the entry itself: what its calls cost,
    /// whatever the price table says.
    pub price_override: Option<(f64, f64)>,
    /// Other `litellm_params` sent as request parameters (`temperature`, vendor options).
    pub params: Map<String, Value>,
    pub mock: Option<Mock>,
    pub extra_headers: Vec<(String, String)>,
}

/// Fallback lists: for a group, the groups to try next, in order.
pub type Fallbacks = Vec<(String, Vec<String>)>;

/// The router's settings (LiteLLM's constructor parameters).
#[derive(Debug, Clone)]
pub struct Settings {
    pub strategy: Strategy,
    pub num_retries: u32,
    pub timeout: Duration,
    pub fallbacks: Fallbacks,
    pub context_window_fallbacks: Fallbacks,
    pub content_policy_fallbacks: Fallbacks,
    pub max_fallbacks: usize,
    pub allowed_fails: u64,
    pub cooldown_time: Duration,
    pub disable_cooldowns: bool,
    pub backoff: Backoff,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            strategy: Strategy::SimpleShuffle,
            num_retries: 2,
            timeout: pipeline::DEFAULT_TIMEOUT,
            fallbacks: Vec::new(),
            context_window_fallbacks: Vec::new(),
            content_policy_fallbacks: Vec::new(),
            max_fallbacks: 5,
            allowed_fails: 3,
            cooldown_time: Duration::from_secs(5),
            disable_cooldowns: false,
            backoff: Backoff::default(),
        }
    }
}

/// How long a deployment cools down for failures that waiting will not fix soon.
const LONG_COOLDOWN: Duration = Duration::from_secs(60);

/// A routed result with where it went.
#[derive(Debug)]
pub struct Routed<T> {
    pub value: T,
    pub deployment_id: String,
    pub model_group: String,
    /// Fallback groups tried before the one that answered.
    pub attempted_fallbacks: u32,
    /// Attempts in the group that answered.
    pub attempts: u32,
}

#[derive(Debug)]
pub struct Router {
    deployments: Vec<Arc<Deployment>>,
    settings: Settings,
    stats: Arc<dyn ClusterStats>,
    budget: RetryBudget,
    /// Enforces deployments' rpm / tpm / max_parallel_requests and the router's `rate_limit`.
    limiter: Arc<dyn RateLimiter>,
    /// Limits on every call through the router, by caller (`rate_limit`).
    request_limits: Option<RateLimitConfig>,
    /// How images and audio count toward tpm limits (`rate_limit.tokens_per_*`).
    media: MediaWeights,
}

/// When an attempt's stats are settled: now (with its tokens), or by the attempt itself later
/// (a stream settles when it ends).
enum Settle {
    Now(Option<u64>),
    Later,
}

/// The per-call inputs of one attempt.
struct Call<'a> {
    group: &'a str,
    tags: &'a [String],
    est_tokens: u64,
    deadline: Instant,
    /// Streams are routed on time to first token where it is known.
    stream: bool,
}

impl Router {
    pub fn new(
        deployments: Vec<Deployment>,
        settings: Settings,
        stats: Arc<dyn ClusterStats>,
        budget: RetryBudget,
    ) -> Result<Self> {
        let mut ids = HashSet::new();
        for d in &deployments {
            if !ids.insert(d.id.clone()) {
                return Err(Error::invalid_config(format!(
                    "model_list: duplicate deployment id '{}'",
                    d.id
                )));
            }
        }
        let groups: HashSet<&str> = deployments.iter().map(|d| d.group.as_str()).collect();
        for (name, list) in [
            ("fallbacks", &settings.fallbacks),
            (
                "context_window_fallbacks",
                &settings.context_window_fallbacks,
            ),
            (
                "content_policy_fallbacks",
                &settings.content_policy_fallbacks,
            ),
        ] {
            for (from, to) in list {
                for g in std::iter::once(from).chain(to) {
                    if !groups.contains(g.as_str()) {
                        return Err(Error::invalid_config(format!(
                            "{name}: model group '{g}' is not in model_list"
                        )));
                    }
                }
            }
        }
        Ok(Router {
            deployments: deployments.into_iter().map(Arc::new).collect(),
            settings,
            stats,
            budget,
            limiter: Arc::new(limiter::LocalLimiter::new()),
            request_limits: None,
            media: MediaWeights::default(),
        })
    }

    /// Enforces limits with `limiter` (a Redis limiter shares them between processes):
    /// deployments' own rpm / tpm / max_parallel_requests, and `request_limits` on every call.
    pub fn with_limits(
        mut self,
        limiter: Arc<dyn RateLimiter>,
        request_limits: Option<RateLimitConfig>,
    ) -> Self {
        self.limiter = limiter;
        self.media = request_limits.as_ref().map(|c| c.media).unwrap_or_default();
        self.request_limits = request_limits.filter(RateLimitConfig::is_active);
        self
    }

    /// Counts images and audio toward tpm limits with `media` (set by [`Router::with_limits`]
    /// from its `rate_limit`; this sets it alone, for a caller that admits calls itself).
    pub fn with_media(mut self, media: MediaWeights) -> Self {
        self.media = media;
        self
    }

    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.limiter
    }

    /// A deployment's own limits.
    fn deployment_limits(d: &Deployment) -> ScopeLimits {
        ScopeLimits {
            scope: format!("deployment:{}", d.id),
            rpm: d.rpm.map(Rate::per_minute),
            tpm: d.tpm.map(Rate::per_minute),
            max_parallel: d.max_parallel_requests,
        }
    }

    /// Admits a call through the router by its caller (the `rate_limit` block).
    async fn admit_call(
        &self,
        opts: &CallOptions,
        params: &Map<String, Value>,
        group: &str,
        tokens: u64,
    ) -> Result<Ticket> {
        let Some(cfg) = &self.request_limits else {
            return Ok(Ticket::none());
        };
        let caller = pipeline::caller_of(params, opts);
        limiter::admit(
            &self.limiter,
            Demand {
                request_id: pipeline::request_id(),
                scopes: vec![cfg.scope_for(&caller, group)],
                tokens,
            },
        )
        .await
        .map_err(|e| pipeline::denied(e, group))
    }

    /// The price written in a deployment's entry, if any (for costs computed after the call,
    /// such as a stream's).
    pub fn price_override(&self, deployment_id: &str) -> Option<(f64, f64)> {
        self.deployments
            .iter()
            .find(|d| d.id == deployment_id)
            .and_then(|d| d.price_override)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    pub fn budget(&self) -> BudgetSnapshot {
        self.budget.snapshot()
    }

    /// Every deployment with its current stats.
    pub async fn deployment_stats(&self) -> Result<Vec<(Arc<Deployment>, DeploymentStats)>> {
        let ids: Vec<String> = self.deployments.iter().map(|d| d.id.clone()).collect();
        let snap = self.stats.snapshot(&ids).await?;
        Ok(self.deployments.iter().cloned().zip(snap).collect())
    }

    fn group_exists(&self, group: &str) -> bool {
        self.deployments.iter().any(|d| d.group == group)
    }

    /// The fallback groups for `group` after a failure of kind `kind`.
    fn fallbacks_for(&self, group: &str, kind: ErrorKind) -> Vec<String> {
        let list = match kind {
            ErrorKind::ContextWindowExceeded
                if !self.settings.context_window_fallbacks.is_empty() =>
            {
                &self.settings.context_window_fallbacks
            }
            ErrorKind::ContentPolicyViolation
                if !self.settings.content_policy_fallbacks.is_empty() =>
            {
                &self.settings.content_policy_fallbacks
            }
            _ => &self.settings.fallbacks,
        };
        list.iter()
            .find(|(from, _)| from == group || from == "*")
            .map(|(_, to)| to.clone())
            .unwrap_or_default()
    }

    /// Picks a deployment of the group, or explains why none is available.
    async fn pick(
        &self,
        call: &Call<'_>,
        excluded: &HashSet<String>,
        limited: &HashSet<String>,
    ) -> Result<Option<Arc<Deployment>>> {
        let in_group: Vec<&Arc<Deployment>> = self
            .deployments
            .iter()
            .filter(|d| d.group == call.group)
            .filter(|d| call.tags.is_empty() || call.tags.iter().any(|t| d.tags.contains(t)))
            .collect();
        if in_group.is_empty() {
            return Err(Error::bad_request(if call.tags.is_empty() {
                format!("no deployment for model group '{}'", call.group)
            } else {
                format!(
                    "no deployment of '{}' has any of the tags {:?}",
                    call.group, call.tags
                )
            }));
        }
        // Deployments whose limits refused this call are out of it.
        let in_group: Vec<&Arc<Deployment>> = in_group
            .into_iter()
            .filter(|d| !limited.contains(&d.id))
            .collect();
        if in_group.is_empty() {
            return Ok(None);
        }
        // Prefer deployments not yet tried in this call; fall back to all when none is left.
        let fresh: Vec<&Arc<Deployment>> = in_group
            .iter()
            .copied()
            .filter(|d| !excluded.contains(&d.id))
            .collect();
        let pool = if fresh.is_empty() { in_group } else { fresh };
        let ids: Vec<String> = pool.iter().map(|d| d.id.clone()).collect();
        let snap = self.stats.snapshot(&ids).await?;
        let mut snap = snap;
        if self.settings.disable_cooldowns {
            for s in &mut snap {
                s.cooldown_remaining = None;
            }
        }
        if call.stream {
            for s in &mut snap {
                if let Some(t) = s.ttft_ewma_ms {
                    s.latency_ewma_ms = Some(t);
                }
            }
        }
        let candidates: Vec<(usize, Candidate<'_>)> = pool
            .iter()
            .zip(&snap)
            .enumerate()
            .map(|(i, (d, s))| {
                (
                    i,
                    Candidate {
                        id: &d.id,
                        weight: d.weight,
                        rpm: d.rpm,
                        tpm: d.tpm,
                        cost_per_token: d.cost_per_token,
                        stats: s,
                        // The limiter admits each attempt against the deployment's limits.
                        check_limits: false,
                    },
                )
            })
            .collect();
        let only: Vec<Candidate<'_>> = candidates.iter().map(|(_, c)| c.clone()).collect();
        match strategy::pick(
            &self.settings.strategy,
            &only,
            call.est_tokens,
            rand::random::<f64>(),
        ) {
            Some(k) => Ok(Some(pool[candidates[k].0].clone())),
            None => {
                // Only cooldowns make candidates ineligible here (limits are the limiter's).
                let wait = snap.iter().filter_map(|s| s.cooldown_remaining).min();
                let mut e = Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "No deployments available for selected model, Try again in {} seconds. Passed model={}. \
                         All deployments are cooling down.",
                        wait.map_or(1, |w| w.as_secs().max(1)),
                        call.group,
                    ),
                )
                .with_retry_after(wait);
                e.provider = Some("router".into());
                e.model = Some(call.group.to_owned());
                Err(e)
            }
        }
    }

    /// Records a failure and cools the deployment down when it should.
    async fn on_failure(&self, d: &Deployment, e: &Error, fails_before: u64) {
        if self.settings.disable_cooldowns {
            return;
        }
        let base = self.settings.cooldown_time;
        let cooldown = match e.kind {
            ErrorKind::QuotaExceeded | ErrorKind::Authentication | ErrorKind::PermissionDenied => {
                Some(base.max(LONG_COOLDOWN))
            }
            ErrorKind::RateLimited | ErrorKind::NotFound => Some(base),
            k if k.retryable() && fails_before + 1 > self.settings.allowed_fails => Some(base),
            _ => None,
        };
        if let Some(c) = cooldown {
            let c = e.retry_after.map_or(c, |hint| c.max(hint));
            if let Err(err) = self.stats.set_cooldown(&d.id, c).await {
                tracing::warn!(deployment = %d.id, error = %err, "cannot record a cooldown");
            }
        }
    }

    fn options_for(&self, d: &Deployment, base: &CallOptions, deadline: Instant) -> CallOptions {
        let mut o = base.clone();
        o.endpoint = merge_endpoint(&d.endpoint, &base.endpoint);
        o.num_retries = 0;
        o.model_group = Some(d.group.clone());
        o.price_override = d.price_override;
        o.deployment_id = Some(d.id.clone());
        // The router admits calls itself (its `rate_limit` and deployment limits).
        o.admission = None;
        let left = deadline.saturating_duration_since(Instant::now());
        o.timeout = d.timeout.map_or(left, |t| t.min(left));
        if o.mock.is_none() {
            o.mock = d.mock.clone();
        }
        if !d.extra_headers.is_empty() {
            let mut h = d.extra_headers.clone();
            h.extend(base.extra_headers.iter().cloned());
            o.extra_headers = h;
        }
        o
    }

    fn request_for(d: &Deployment, req: &ChatRequest) -> ChatRequest {
        let mut r = req.clone();
        r.model = d.model.clone();
        for (k, v) in &d.params {
            r.params.entry(k.clone()).or_insert_with(|| v.clone());
        }
        r
    }

    /// Runs `attempt` on the group's deployments with retries, then on fallback groups.
    #[allow(clippy::too_many_arguments)]
    async fn route<T, F, Fut>(
        &self,
        group: &str,
        tags: &[String],
        allowed: Option<&[String]>,
        est_tokens: u64,
        timeout: Duration,
        stream: bool,
        mut attempt: F,
    ) -> Result<Routed<T>>
    where
        F: FnMut(Arc<Deployment>, Instant, Ticket) -> Fut,
        Fut: std::future::Future<Output = (Result<T>, Settle)>,
    {
        if !self.group_exists(group) {
            return Err(unknown_group(group));
        }
        let deadline = Instant::now() + timeout;
        self.budget.record_request();
        let mut groups = vec![group.to_owned()];
        let mut tried_fallbacks = false;
        let mut last_err: Option<Error> = None;
        let mut index = 0;
        while index < groups.len() {
            let g = groups[index].clone();
            let call = Call {
                group: &g,
                tags,
                est_tokens,
                deadline,
                stream,
            };
            match self.route_group(&call, &mut attempt).await {
                Ok((value, deployment_id, attempts)) => {
                    return Ok(Routed {
                        value,
                        deployment_id,
                        model_group: g,
                        attempted_fallbacks: index as u32,
                        attempts,
                    });
                }
                Err(e) => {
                    if !tried_fallbacks {
                        tried_fallbacks = true;
                        let fb = self.fallbacks_for(group, e.kind);
                        // A caller limited to some groups falls back only within them.
                        groups.extend(
                            fb.into_iter()
                                .filter(|g| allowed.is_none_or(|a| a.contains(g)))
                                .take(self.settings.max_fallbacks),
                        );
                    }
                    last_err = Some(e);
                }
            }
            index += 1;
        }
        Err(last_err
            .unwrap_or_else(|| Error::new(ErrorKind::Internal, "router: no attempt was made")))
    }

    async fn route_group<T, F, Fut>(
        &self,
        call: &Call<'_>,
        attempt: &mut F,
    ) -> Result<(T, String, u32)>
    where
        F: FnMut(Arc<Deployment>, Instant, Ticket) -> Fut,
        Fut: std::future::Future<Output = (Result<T>, Settle)>,
    {
        let mut excluded = HashSet::new();
        let mut limited = HashSet::new();
        let mut refusal: Option<Error> = None;
        let mut retries: u32 = 0;
        loop {
            let Some(d) = self.pick(call, &excluded, &limited).await? else {
                // Every deployment of the group refused on its own limits.
                let wait = refusal.as_ref().and_then(|e| e.retry_after);
                let mut e = Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "No deployments available for selected model, Try again in {} seconds. Passed model={}. \
                         All deployments are at their rpm/tpm or parallel-request limits.",
                        wait.map_or(1, |w| w.as_secs().max(1)),
                        call.group
                    ),
                )
                .with_retry_after(wait);
                e.provider = Some("router".into());
                e.model = Some(call.group.to_owned());
                return Err(e);
            };
            let own = Self::deployment_limits(&d);
            let ticket = if own.is_empty() {
                Ticket::none()
            } else {
                let demand = Demand {
                    request_id: pipeline::request_id(),
                    scopes: vec![own],
                    tokens: call.est_tokens,
                };
                match limiter::admit(&self.limiter, demand).await {
                    Ok(t) => t,
                    Err(e) if e.kind == ErrorKind::RateLimited => {
                        limited.insert(d.id.clone());
                        let shorter = match (&refusal, e.retry_after) {
                            (Some(prev), Some(w)) => prev.retry_after.is_some_and(|p| w < p),
                            (None, _) => true,
                            _ => false,
                        };
                        if shorter {
                            refusal = Some(e);
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let begun = async {
                let before = self
                    .stats
                    .snapshot(std::slice::from_ref(&d.id))
                    .await?
                    .pop()
                    .unwrap_or_default();
                self.stats.begin(&d.id).await?;
                Ok::<_, Error>(before)
            }
            .await;
            let before = match begun {
                Ok(b) => b,
                Err(e) => {
                    // Nothing was sent: the deployment's admission is given back.
                    ticket.undo_later();
                    return Err(e);
                }
            };
            let started = Instant::now();
            let span = tracing::info_span!(
                target: crate::telemetry::OTEL_TARGET,
                "llmux.attempt",
                "otel.name" = %format_args!("attempt {}", d.model),
                "otel.kind" = "client",
                "gen_ai.system" = crate::telemetry::gen_ai_system(&d.model),
                "gen_ai.request.model" = %d.model,
                "llmux.deployment_id" = %d.id,
                "llmux.model_group" = %d.group,
                "llmux.retry" = retries,
                "error.type" = tracing::field::Empty,
            );
            let (result, settle) = attempt(d.clone(), call.deadline, ticket)
                .instrument(span.clone())
                .await;
            if let Err(e) = &result {
                span.record("error.type", e.kind.code());
            }
            drop(span);
            let tokens = match settle {
                Settle::Later if result.is_ok() => None,
                Settle::Later => Some(0),
                Settle::Now(t) => Some(t.unwrap_or(0)),
            };
            if let Some(tokens) = tokens {
                let outcome = Outcome {
                    latency: started.elapsed(),
                    ttft: None,
                    tokens,
                    error: result.as_ref().err().map(|e| e.kind),
                };
                if let Err(err) = self.stats.end(&d.id, &outcome).await {
                    tracing::warn!(deployment = %d.id, error = %err, "cannot record stats");
                }
            }
            let mut e = match result {
                Ok(v) => return Ok((v, d.id.clone(), retries + 1)),
                Err(e) => e,
            };
            self.on_failure(&d, &e, before.fails_this_minute).await;
            excluded.insert(d.id.clone());
            let left = call.deadline.saturating_duration_since(Instant::now());
            if !e.retryable() || retries >= self.settings.num_retries || left.is_zero() {
                e.attempts = retries + 1;
                return Err(e);
            }
            if !self.budget.try_acquire_retry() {
                e.attempts = retries + 1;
                e.message = format!("{} (retry budget exhausted)", e.message);
                return Err(e);
            }
            // Another deployment may answer at once; the same one only after its hint.
            let others = self
                .deployments
                .iter()
                .any(|o| o.group == call.group && !excluded.contains(&o.id));
            let delay = if others {
                Duration::ZERO
            } else {
                self.settings
                    .backoff
                    .delay(retries, rand::random::<f64>(), e.retry_after)
            };
            if delay >= left {
                e.attempts = retries + 1;
                return Err(e);
            }
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }

    /// A routed unary completion. `opts` carries call-level settings (extra headers, hooks...).
    /// LiteLLM's `mock_testing_fallbacks` / `mock_testing_context_fallbacks` /
    /// `mock_testing_content_policy_fallbacks` make the requested group fail with that kind, so
    /// that fallbacks can be exercised.
    pub async fn completion(
        &self,
        req: ChatRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<Completed<ChatCompletion>>> {
        let mut req = req;
        let forced = take_mock_failure(&mut req.params);
        let est = limiter::reservation(&req);
        let group = req.model.clone();
        let timeout = self.timeout_for(opts);
        if !self.group_exists(&group) {
            return Err(unknown_group(&group));
        }
        let call_ticket = self.admit_call(opts, &req.params, &group, est).await?;
        let out = self
            .route(
                &group,
                tags,
                opts.allowed_groups.as_deref(),
                est,
                timeout,
                false,
                |d, deadline, ticket| {
                    let r = Self::request_for(&d, &req);
                    let mut o = self.options_for(&d, opts, deadline);
                    if let Some(kind) = forced.filter(|_| d.group == group) {
                        o.mock = Some(Mock::Error(
                            kind,
                            format!(
                                "mock_testing fallback: forced {} on '{}'",
                                kind.code(),
                                d.group
                            ),
                        ));
                    }
                    let price = d.price_override;
                    async move {
                        let mut out = pipeline::completion(r, &o).await;
                        if let (Some(p), Ok(done)) = (price, out.as_mut()) {
                            reprice(&mut done.meta, done.response.usage.as_ref(), p);
                        }
                        let tokens = out.as_ref().ok().and_then(Completed::total_tokens);
                        ticket.settle(tokens.unwrap_or(0));
                        (out, Settle::Now(tokens))
                    }
                },
            )
            .await;
        let used = out.as_ref().ok().and_then(|r| r.value.total_tokens());
        settle_call(call_ticket, &out, used.unwrap_or(0));
        out
    }

    /// A routed stream: retried and fallen back until its first chunk.
    pub async fn completion_stream(
        &self,
        req: ChatRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<(ChatStream, CallMeta)>> {
        let est = limiter::reservation(&req);
        let prompt = limiter::estimate_prompt_tokens(&req.messages);
        let group = req.model.clone();
        let timeout = self.timeout_for(opts);
        let stats = self.stats.clone();
        if !self.group_exists(&group) {
            return Err(unknown_group(&group));
        }
        let call_ticket = self.admit_call(opts, &req.params, &group, est).await?;
        let out = self
            .route(
                &group,
                tags,
                opts.allowed_groups.as_deref(),
                est,
                timeout,
                true,
                |d, deadline, ticket| {
                    let r = Self::request_for(&d, &req);
                    let o = self.options_for(&d, opts, deadline);
                    let stats = stats.clone();
                    async move {
                        let started = Instant::now();
                        let opened = match pipeline::completion_stream(r, &o).await {
                            Ok(v) => v,
                            Err(e) => {
                                ticket.settle(0);
                                return (Err(e), Settle::Now(None));
                            }
                        };
                        let (mut s, meta) = opened;
                        if let Err(e) = s.prefetch_first().await {
                            ticket.settle(0);
                            return (Err(e), Settle::Now(None));
                        }
                        pipeline::settle_when_done(&mut s, ticket, prompt);
                        // The attempt stays in flight until the stream ends, and settles then.
                        let id = d.id.clone();
                        // Captured now: the stream may end (be dropped) on a thread outside the runtime.
                        let rt = tokio::runtime::Handle::try_current().ok();
                        s.on_finish(move |summary| {
                            let outcome = Outcome {
                                latency: started.elapsed(),
                                ttft: summary
                                    .first_chunk_at
                                    .map(|t| t.saturating_duration_since(started)),
                                tokens: summary
                                    .usage
                                    .as_ref()
                                    .map_or(0, |u: &Usage| u.total_tokens),
                                error: summary.error,
                            };
                            match &rt {
                                Some(rt) => {
                                    rt.spawn(async move {
                                        let _ = stats.end(&id, &outcome).await;
                                    });
                                }
                                // No runtime to run on: settle in place (the in-process stats need
                                // no I/O; a Redis lease expires by itself).
                                None => {
                                    let _ = futures_util::FutureExt::now_or_never(
                                        stats.end(&id, &outcome),
                                    );
                                }
                            }
                        });
                        (Ok((s, meta)), Settle::Later)
                    }
                },
            )
            .await;
        match out {
            Ok(mut routed) => {
                pipeline::settle_when_done(&mut routed.value.0, call_ticket, prompt);
                Ok(routed)
            }
            Err(e) => {
                let out = Err(e);
                settle_call(call_ticket, &out, 0);
                out
            }
        }
    }

    pub async fn embedding(
        &self,
        req: EmbeddingRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<Completed<EmbeddingResponse>>> {
        let group = req.model.clone();
        let timeout = self.timeout_for(opts);
        let est = limiter::embedding_reservation(&req.input);
        if !self.group_exists(&group) {
            return Err(unknown_group(&group));
        }
        let call_ticket = self.admit_call(opts, &req.params, &group, est).await?;
        let out = self
            .route(
                &group,
                tags,
                opts.allowed_groups.as_deref(),
                est,
                timeout,
                false,
                |d, deadline, ticket| {
                    let mut r = req.clone();
                    r.model = d.model.clone();
                    let o = self.options_for(&d, opts, deadline);
                    let price = d.price_override;
                    async move {
                        let mut out = pipeline::embedding(r, &o).await;
                        if let (Some(p), Ok(done)) = (price, out.as_mut()) {
                            reprice(&mut done.meta, done.response.usage.as_ref(), p);
                        }
                        let tokens = out.as_ref().ok().and_then(Completed::total_tokens);
                        ticket.settle(tokens.unwrap_or(0));
                        (out, Settle::Now(tokens))
                    }
                },
            )
            .await;
        let used = out.as_ref().ok().and_then(|r| r.value.total_tokens());
        settle_call(call_ticket, &out, used.unwrap_or(0));
        out
    }

    /// A routed image or audio call: one request, plus the tokens its images or seconds of
    /// audio count for (`rate_limit.tokens_per_image` / `tokens_per_audio_second`), reserved
    /// from the request's estimate and settled with what the answer says; retries, fallbacks
    /// and cooldowns as for chat. `call` makes one attempt with the deployment's model,
    /// parameters and options.
    async fn route_request<R, T, F, Fut>(
        &self,
        req: R,
        opts: &CallOptions,
        tags: &[String],
        call: F,
    ) -> Result<Routed<T>>
    where
        R: Routable + MediaEstimate,
        T: Metered,
        F: Fn(R, CallOptions) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let group = req.model().to_owned();
        let timeout = self.timeout_for(opts);
        if !self.group_exists(&group) {
            return Err(unknown_group(&group));
        }
        let media = self.media;
        let estimate = media.tokens(req.media_estimate());
        let call_ticket = self
            .admit_call(opts, req.params(), &group, estimate)
            .await?;
        let out = self
            .route(
                &group,
                tags,
                opts.allowed_groups.as_deref(),
                estimate,
                timeout,
                false,
                |d, deadline, ticket| {
                    let mut r = req.clone();
                    r.set_model(d.model.clone());
                    for (k, v) in &d.params {
                        r.params_mut().entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    let attempt = call(r, self.options_for(&d, opts, deadline));
                    async move {
                        let out = attempt.await;
                        let used = out
                            .as_ref()
                            .ok()
                            .and_then(Metered::media)
                            .map_or(0, |m| media.tokens(m));
                        ticket.settle(used);
                        (out, Settle::Now(Some(used)))
                    }
                },
            )
            .await;
        let used = out
            .as_ref()
            .ok()
            .and_then(|r| r.value.media())
            .map_or(0, |m| media.tokens(m));
        settle_call(call_ticket, &out, used);
        out
    }

    /// A routed image generation; an image counts toward a deployment's rpm.
    pub async fn image_generation(
        &self,
        req: ImageRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<Completed<ImageResponse>>> {
        self.route_request(req, opts, tags, |r, o| async move {
            pipeline::image_generation(r, &o).await
        })
        .await
    }

    /// Routed text to speech: retried and fallen back until the upstream answers with audio;
    /// the body then streams from that deployment.
    pub async fn speech(
        &self,
        req: SpeechRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<(BinaryStream, CallMeta)>> {
        self.route_request(req, opts, tags, |r, o| async move {
            pipeline::speech(r, &o).await
        })
        .await
    }

    /// A routed transcription (the file is sent again from disk on each attempt).
    pub async fn transcription(
        &self,
        req: TranscriptionRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<Completed<TranscriptionResponse>>> {
        self.route_request(req, opts, tags, |r, o| async move {
            pipeline::transcription(r, &o).await
        })
        .await
    }

    /// A routed image edit (files are sent again from disk on each attempt).
    pub async fn image_edit(
        &self,
        req: ImageEditRequest,
        opts: &CallOptions,
        tags: &[String],
    ) -> Result<Routed<Completed<ImageResponse>>> {
        self.route_request(req, opts, tags, |r, o| async move {
            pipeline::image_edit(r, &o).await
        })
        .await
    }

    fn timeout_for(&self, opts: &CallOptions) -> Duration {
        // A call's own timeout (anything but the default) wins over the router's.
        if opts.timeout != pipeline::DEFAULT_TIMEOUT {
            opts.timeout
        } else {
            self.settings.timeout
        }
    }
}

/// Prices a call with a deployment's own per-token prices (a cache hit stays free).
pub fn reprice(meta: &mut CallMeta, usage: Option<&Usage>, (input, output): (f64, f64)) {
    if meta.cache_hit {
        return;
    }
    if let Some(u) = usage {
        meta.cost = Some(u.prompt_tokens as f64 * input + u.completion_tokens as f64 * output);
    }
}

/// A request routed by [`Router::route_request`]: its model names the group, and each attempt
/// takes the deployment's model and parameters.
trait Routable: Clone {
    fn model(&self) -> &str;
    fn set_model(&mut self, model: String);
    fn params(&self) -> &Map<String, Value>;
    fn params_mut(&mut self) -> &mut Map<String, Value>;
}

macro_rules! routable {
    ($($t:ty),*) => {$(
        impl Routable for $t {
            fn model(&self) -> &str {
                &self.model
            }
            fn set_model(&mut self, model: String) {
                self.model = model;
            }
            fn params(&self) -> &Map<String, Value> {
                &self.params
            }
            fn params_mut(&mut self) -> &mut Map<String, Value> {
                &mut self.params
            }
        }
    )*};
}

routable!(
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
    ImageEditRequest
);

/// The answer of a media call: what it consumed.
trait Metered {
    fn media(&self) -> Option<Media>;
}

impl<T> Metered for Completed<T> {
    fn media(&self) -> Option<Media> {
        self.meta.media
    }
}

impl Metered for (BinaryStream, CallMeta) {
    fn media(&self) -> Option<Media> {
        self.1.media
    }
}

fn unknown_group(group: &str) -> Error {
    Error::bad_request(format!(
        "Invalid model name passed in model={group}. Call `router.get_model_names()` for the available groups."
    ))
}

/// Settles a call's own admission: a call refused by every deployment's limits was never sent,
/// so it is given back whole; any other call is charged with what it used.
fn settle_call<T>(ticket: Ticket, out: &Result<T>, used: u64) {
    match out {
        Err(e) if e.kind == ErrorKind::RateLimited && e.provider.as_deref() == Some("router") => {
            ticket.undo_later()
        }
        _ => ticket.settle(used),
    }
}

/// Removes LiteLLM's fallback-testing switches from `params`; the kind of failure to force.
fn take_mock_failure(params: &mut Map<String, Value>) -> Option<ErrorKind> {
    let mut forced = None;
    for (key, kind) in [
        ("mock_testing_fallbacks", ErrorKind::Internal),
        (
            "mock_testing_context_fallbacks",
            ErrorKind::ContextWindowExceeded,
        ),
        (
            "mock_testing_content_policy_fallbacks",
            ErrorKind::ContentPolicyViolation,
        ),
    ] {
        if params
            .remove(key)
            .is_some_and(|v| v.as_bool().unwrap_or(false))
        {
            forced = Some(kind);
        }
    }
    forced
}

/// The deployment's credentials, with what the call itself gives winning.
fn merge_endpoint(d: &Endpoint, call: &Endpoint) -> Endpoint {
    Endpoint {
        api_base: call.api_base.clone().or_else(|| d.api_base.clone()),
        api_key: call.api_key.clone().or_else(|| d.api_key.clone()),
        custom_llm_provider: call
            .custom_llm_provider
            .clone()
            .or_else(|| d.custom_llm_provider.clone()),
        organization: call.organization.clone().or_else(|| d.organization.clone()),
        api_version: call.api_version.clone().or_else(|| d.api_version.clone()),
        azure_ad_token: call
            .azure_ad_token
            .clone()
            .or_else(|| d.azure_ad_token.clone()),
        aws_access_key_id: call
            .aws_access_key_id
            .clone()
            .or_else(|| d.aws_access_key_id.clone()),
        aws_secret_access_key: call
            .aws_secret_access_key
            .clone()
            .or_else(|| d.aws_secret_access_key.clone()),
        aws_session_token: call
            .aws_session_token
            .clone()
            .or_else(|| d.aws_session_token.clone()),
        aws_region_name: call
            .aws_region_name
            .clone()
            .or_else(|| d.aws_region_name.clone()),
    }
}
