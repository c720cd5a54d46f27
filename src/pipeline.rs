//! The request pipeline: `completion`, `completion_stream` and `embedding`.
//!
//! resolve the route → build the dialect's request → send on the shared pool → parse the
//! answer or open the stream → classify failures → retry what may pass (full-jitter backoff,
//! never sooner than the upstream's hint, never past the call's deadline).
//!
//! Later stages (hooks, admission, cache, router) wrap these functions; the Python bindings and
//! the HTTP server call them and hold no logic of their own. The response cache is a hook
//! ([`crate::cache::CacheHook`]): its hits come back from the `pre` hooks as
//! [`Pre::CacheHit`], answered without the upstream, marked in [`CallMeta::cache_hit`] and
//! costed at zero. Its controls (`cache`, `caching`) are stripped from every request before the
//! provider request is built, whether a cache is configured or not.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::cache;
use crate::error::{Error, ErrorKind, Result};
use crate::hooks::{self, HookContext, Pre};
use crate::http::{client, transport_error};
use crate::limiter::{self, Admission, Caller};
use crate::pricing;
use crate::providers::{media, resolve, Endpoint, Extras, PreparedRequest, Route};
use crate::retry::{decide, Backoff, Decision};
use crate::streaming::{BinaryStream, ChatStream};
use crate::types::{
    unix_now, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, EmbeddingRequest,
    EmbeddingResponse, FileSource, ImageEditRequest, ImageRequest, ImageResponse, Media,
    MediaEstimate, Message, SpeechRequest, TranscriptionRequest, TranscriptionResponse, Usage,
};

/// LiteLLM's default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A canned answer instead of an upstream call (LiteLLM's `mock_response`).
#[derive(Debug, Clone)]
pub enum Mock {
    /// Answer with this text.
    Text(String),
    /// Fail with this kind (LiteLLM's magic strings such as `"litellm.RateLimitError"`).
    Error(ErrorKind, String),
}

impl Mock {
    /// Reads a `mock_response` string: LiteLLM's magic error names, else the answer text.
    pub fn parse(text: &str) -> Mock {
        let kind = match text {
            "litellm.RateLimitError" => Some(ErrorKind::RateLimited),
            "litellm.ContextWindowExceededError" => Some(ErrorKind::ContextWindowExceeded),
            "litellm.InternalServerError" => Some(ErrorKind::Internal),
            _ => None,
        };
        match kind {
            Some(k) => Mock::Error(k, format!("mock_response: {text}")),
            None => Mock::Text(text.to_owned()),
        }
    }
}

/// Per-call options: where to send, how long to wait, how often to retry.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub endpoint: Endpoint,
    /// Deadline for the whole call, retries and backoff included.
    pub timeout: Duration,
    pub num_retries: u32,
    /// Remove parameters the provider cannot take instead of failing.
    pub drop_params: bool,
    /// Longest silence allowed between two stream chunks (default: `timeout`).
    pub stream_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub extra_headers: Vec<(String, String)>,
    pub extra_body: Option<Map<String, Value>>,
    pub mock: Option<Mock>,
    /// Hooks around the call (none by default).
    pub hooks: Option<Arc<hooks::Pipeline>>,
    /// Rate limits every call must pass (none by default).
    pub admission: Option<Arc<Admission>>,
    /// The caller's team (from `metadata`), for limits by team.
    pub team: Option<String>,
    /// The router's model group this call was routed for (hooks and the cache see the group,
    /// not the deployment's model).
    pub model_group: Option<String>,
    /// The router's deployment for this attempt (hooks see it in their context).
    pub deployment_id: Option<String>,
    /// Model groups this caller may use (`None`: all); the router's fallbacks keep to them.
    pub allowed_groups: Option<Vec<String>>,
    /// `(input, output)` USD per token that price this call instead of the price table (a
    /// deployment's own prices).
    pub price_override: Option<(f64, f64)>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            endpoint: Endpoint::default(),
            timeout: DEFAULT_TIMEOUT,
            num_retries: 0,
            drop_params: false,
            stream_timeout: None,
            backoff: Backoff::default(),
            extra_headers: Vec::new(),
            extra_body: None,
            mock: None,
            hooks: None,
            admission: None,
            team: None,
            model_group: None,
            deployment_id: None,
            allowed_groups: None,
            price_override: None,
        }
    }
}

/// What the caller learns about how the call went (LiteLLM's `_hidden_params`).
#[derive(Debug, Clone)]
pub struct CallMeta {
    pub provider: &'static str,
    pub api_base: String,
    /// The model name sent upstream.
    pub upstream_model: String,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    pub started: Instant,
    /// USD, from the price table; `None` when the model has no price (or, for streams,
    /// until the usage is known). Zero for a cache hit.
    pub cost: Option<f64>,
    /// The answer came from the response cache.
    pub cache_hit: bool,
    /// Images made or seconds of audio, for an image or audio call (what its limits count).
    pub media: Option<Media>,
}

/// Prices a call: by the route's model name, else the model the upstream reports.
fn price(provider: &str, names: [&str; 2], usage: Option<&Usage>) -> Option<f64> {
    let usage = usage?;
    let entry = names
        .iter()
        .filter(|n| !n.is_empty())
        .find_map(|n| pricing::lookup(Some(provider), n));
    match entry {
        Some(e) => Some(pricing::cost_with(&e, usage).total()),
        // Counted as unpriced.
        None => pricing::cost(Some(provider), names[0], usage).map(|c| c.total()),
    }
}

impl CallMeta {
    fn new(route: &Route, started: Instant) -> Self {
        CallMeta {
            provider: route.provider,
            api_base: route.api_base.clone(),
            upstream_model: route.model.clone(),
            attempts: 1,
            started,
            cost: None,
            cache_hit: false,
            media: None,
        }
    }

    fn mock(started: Instant) -> Self {
        Self::answered_by("mock", started)
    }

    /// A call answered without an upstream (a mock, a hook, a cache).
    fn answered_by(provider: &'static str, started: Instant) -> Self {
        CallMeta {
            provider,
            api_base: String::new(),
            upstream_model: String::new(),
            attempts: 1,
            started,
            cost: None,
            cache_hit: false,
            media: None,
        }
    }

    /// A call answered from the response cache: the provider the request would have gone to
    /// (when it resolves), at no cost.
    fn cache_hit(req: &ChatRequest, opts: &CallOptions, started: Instant) -> Self {
        let mut meta = match resolve(&req.model, &opts.endpoint) {
            Ok(route) => CallMeta::new(&route, started),
            Err(_) => CallMeta::answered_by("cache", started),
        };
        meta.cost = Some(0.0);
        meta.cache_hit = true;
        meta
    }
}

/// A finished unary call.
#[derive(Debug)]
pub struct Completed<T> {
    pub response: T,
    pub meta: CallMeta,
    pub elapsed: Duration,
}

impl<T: Priced> Completed<T> {
    /// Tokens the upstream reported for the call, when it reported usage.
    pub fn total_tokens(&self) -> Option<u64> {
        self.response.usage().map(|u| u.total_tokens)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
async fn with_retries<T, F, Fut>(
    opts: &CallOptions,
    started: Instant,
    mut attempt: F,
) -> Result<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = started + opts.timeout;
    let mut retries: u32 = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut err = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(v)) => return Ok((v, retries + 1)),
            Ok(Err(e)) => e,
            Err(_) => Error::new(
                ErrorKind::Timeout,
                format!("request timed out after {:.3}s", opts.timeout.as_secs_f64()),
            ),
        };
        let delay = opts
            .backoff
            .delay(retries, rand::random::<f64>(), err.retry_after);
        let remaining = deadline.saturating_duration_since(Instant::now());
        match decide(err.retryable(), retries, opts.num_retries, delay, remaining) {
            Decision::Retry(d) => {
                tracing::debug!(
                    kind = err.kind.code(),
                    retry = retries + 1,
                    delay_ms = d.as_millis() as u64,
                    "retrying"
                );
                tokio::time::sleep(d).await;
                retries += 1;
            }
            Decision::GiveUp => {
                err.attempts = retries + 1;
                return Err(err);
            }
        }
    }
}

/// Sends one prepared request; non-2xx answers become classified errors.
/// `timeout` bounds the whole exchange, body included; streams pass `None` and are bounded by
/// the retry loop's deadline until headers arrive, then by the idle timeout between chunks.
async fn send(
    route: &Route,
    prepared: &PreparedRequest,
    timeout: Option<Duration>,
) -> Result<reqwest::Response> {
    let mut builder = client()?
        .post(&prepared.url)
        .headers(prepared.headers.clone())
        .body(prepared.body.clone());
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    let resp = builder
        .send()
        .await
        .map_err(|e| transport_error(&e, &route.api_base))?;
    checked(route, resp).await
}

/// A 2xx answer, or the classified error of any other.
async fn checked(route: &Route, resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let headers = resp.headers().clone();
    let body = read_capped(resp, 64 * 1024).await;
    Err(route.dialect.parse_error(route, status, &headers, &body))
}

/// Reads at most `cap` bytes of an error body; a body that fails midway keeps what arrived.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

fn remaining(started: Instant, opts: &CallOptions) -> Duration {
    (started + opts.timeout).saturating_duration_since(Instant::now())
}

fn mock_id() -> String {
    format!("chatcmpl-{:032x}", rand::random::<u128>())
}

fn n_choices(req: &ChatRequest) -> u32 {
    req.params
        .get("n")
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, 128) as u32)
}

fn mock_completion(req: &ChatRequest, text: &str) -> ChatCompletion {
    let choices = (0..n_choices(req))
        .map(|i| Choice {
            index: i,
            message: Message {
                role: "assistant".into(),
                content: Some(text.to_owned()),
                tool_calls: None,
                function_call: None,
                extra: Map::new(),
            },
            finish_reason: Some("stop".into()),
            logprobs: None,
            extra: Map::new(),
        })
        .collect();
    ChatCompletion {
        id: mock_id(),
        object: "chat.completion".into(),
        created: unix_now(),
        model: req.model.clone(),
        choices,
        usage: Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            total_tokens: 30,
            extra: Map::new(),
        }),
        system_fingerprint: None,
        extra: Map::new(),
    }
}

fn mock_chunks(req: &ChatRequest, text: &str) -> Vec<ChatChunk> {
    let id = mock_id();
    let created = unix_now();
    let chunk = |delta: Delta, finish: Option<&str>| ChatChunk {
        id: id.clone(),
        object: "chat.completion.chunk".into(),
        created,
        model: req.model.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            logprobs: None,
        }],
        usage: None,
        system_fingerprint: None,
        extra: Map::new(),
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<ChatChunk> = chars
        .chunks(3)
        .enumerate()
        .map(|(i, piece)| {
            let role = (i == 0).then(|| "assistant".to_owned());
            chunk(
                Delta {
                    role,
                    content: Some(piece.iter().collect()),
                    ..Default::default()
                },
                None,
            )
        })
        .collect();
    out.push(chunk(Delta::default(), Some("stop")));
    out
}

fn extras(opts: &CallOptions) -> Extras<'_> {
    Extras {
        headers: &opts.extra_headers,
        body: opts.extra_body.as_ref(),
    }
}

/// OpenAI parameters the route's dialect cannot express: dropped with `drop_params`, else an
/// `unsupported_params` error naming them (LiteLLM's `UnsupportedParamsError`).
fn check_params(route: &Route, req: &mut ChatRequest, drop: bool) -> Result<()> {
    let unsupported = route.dialect.unsupported_params();
    let found: Vec<String> = req
        .params
        .keys()
        .filter(|k| unsupported.contains(&k.as_str()))
        .cloned()
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    if drop {
        for k in &found {
            req.params.remove(k);
        }
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::UnsupportedParams,
        format!(
            "{} does not support parameters: {:?}, for model={}. To drop these, pass drop_params=True \
             (or set llmux.drop_params = True).",
            route.provider, found, route.model
        ),
    ))
}

fn prepare_chat(
    route: &Route,
    req: &mut ChatRequest,
    stream: bool,
    opts: &CallOptions,
) -> Result<PreparedRequest> {
    validate(req)?;
    // Cache controls are for the cache (a hook), never for the upstream.
    cache::strip_controls(&mut req.params);
    check_params(route, req, opts.drop_params)?;
    route
        .dialect
        .chat_request(route, req, stream, &extras(opts))
}

fn validate(req: &ChatRequest) -> Result<()> {
    if req.messages.is_empty() {
        return Err(Error::bad_request("messages must be a non-empty list"));
    }
    for (i, m) in req.messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some(_) => {}
            None => {
                return Err(Error::bad_request(format!(
                    "messages[{i}] has no 'role' string"
                )))
            }
        }
    }
    Ok(())
}

pub fn request_id() -> String {
    format!("req-{:016x}", rand::random::<u64>())
}

/// The hooks' view of a call: its id, model, caller (the OpenAI `user`), and whether a mock
/// answers it.
fn hook_context(req: &ChatRequest, stream: bool, opts: &CallOptions) -> HookContext {
    let group = opts.model_group.clone();
    let mut ctx = HookContext::new(
        request_id(),
        group.unwrap_or_else(|| req.model.clone()),
        stream,
    );
    ctx.deployment = opts.deployment_id.clone();
    ctx.caller = req
        .params
        .get("user")
        .and_then(Value::as_str)
        .map(str::to_owned);
    ctx.mock = opts.mock.is_some();
    ctx
}

/// Whether the caller asked for the usage chunk (`stream_options.include_usage`).
fn wants_usage_chunk(req: &ChatRequest) -> bool {
    req.params
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The pipeline's hooks, when any are configured.
fn hooks(opts: &CallOptions) -> Option<&Arc<hooks::Pipeline>> {
    opts.hooks.as_ref().filter(|h| !h.is_empty())
}

/// A unary chat completion: pre hooks, the upstream call, post hooks.
pub async fn completion(req: ChatRequest, opts: &CallOptions) -> Result<Completed<ChatCompletion>> {
    let Some(pipeline) = hooks(opts) else {
        return admitted_unary(req, opts).await;
    };
    let started = Instant::now();
    let mut ctx = hook_context(&req, false, opts);
    let mut req = req;
    let (response, meta) = match pipeline.pre(&mut ctx, &mut req).await? {
        Pre::Continue => (None, None),
        Pre::Reject(e) => return Err(e.with_context("openai", &req.model)),
        Pre::Respond(response) => (Some(response), Some(CallMeta::answered_by("hook", started))),
        Pre::CacheHit(response) => (
            Some(response),
            Some(CallMeta::cache_hit(&req, opts, started)),
        ),
    };
    if let (Some(response), Some(meta)) = (response, meta) {
        return Ok(Completed {
            response: *response,
            meta,
            elapsed: started.elapsed(),
        });
    }
    let (mut outcome, meta) = match admitted_unary(req, opts).await {
        Ok(done) => {
            ctx.cost = done.meta.cost;
            (Ok(done.response), Some(done.meta))
        }
        Err(e) => (Err(e), None),
    };
    pipeline.post(&ctx, &mut outcome).await?;
    let response = outcome?;
    let meta = meta.unwrap_or_else(|| CallMeta::answered_by("hook", started));
    Ok(Completed {
        response,
        meta,
        elapsed: started.elapsed(),
    })
}

/// Who is calling, for rate limits: the API key (hashed), the OpenAI `user`, the team.
pub(crate) fn caller_of(params: &Map<String, Value>, opts: &CallOptions) -> Caller {
    limiter::caller_of(
        params,
        opts.endpoint.api_key.as_ref().map(|k| k.expose()),
        opts.team.as_deref(),
    )
}

/// A denial names the model the caller asked for.
pub(crate) fn denied(e: Error, model: &str) -> Error {
    let mut e = e;
    e.model = Some(model.to_owned());
    e
}

/// A unary completion behind the rate limits: admitted (tokens reserved), then settled with
/// the real usage (refunded when it failed).
async fn admitted_unary(req: ChatRequest, opts: &CallOptions) -> Result<Completed<ChatCompletion>> {
    let Some(admission) = &opts.admission else {
        return unary(req, opts).await;
    };
    let ticket = admit_chat(admission, &req, opts).await?;
    let out = unary(req, opts).await;
    ticket.settle(
        out.as_ref()
            .ok()
            .and_then(Completed::total_tokens)
            .unwrap_or(0),
    );
    out
}

/// Admits a chat request by its caller.
async fn admit_chat(
    admission: &Admission,
    req: &ChatRequest,
    opts: &CallOptions,
) -> Result<limiter::Ticket> {
    let caller = caller_of(&req.params, opts);
    admission
        .admit_chat(&request_id(), &caller, req)
        .await
        .map_err(|e| denied(e, &req.model))
}

/// A stream behind the rate limits: settled when it ends with its usage, or, when the caller
/// leaves early, with the prompt estimate plus what was streamed.
async fn admitted_stream(req: ChatRequest, opts: &CallOptions) -> Result<(ChatStream, CallMeta)> {
    let Some(admission) = &opts.admission else {
        return open_stream(req, opts).await;
    };
    let ticket = admit_chat(admission, &req, opts).await?;
    let prompt = limiter::estimate_prompt_tokens(&req.messages);
    match open_stream(req, opts).await {
        Ok((mut s, meta)) => {
            settle_when_done(&mut s, ticket, prompt);
            Ok((s, meta))
        }
        Err(e) => {
            ticket.settle(0);
            Err(e)
        }
    }
}

/// Settles `ticket` when `s` ends, fails, or is dropped.
pub fn settle_when_done(s: &mut ChatStream, ticket: limiter::Ticket, prompt_estimate: u64) {
    s.on_finish(move |summary| {
        let used = summary.usage.as_ref().map_or_else(
            || limiter::streamed_usage(prompt_estimate, summary.streamed_chars),
            |u| u.total_tokens,
        );
        ticket.settle(used);
    });
}

/// The upstream part of a unary completion (or its mock).
async fn unary(req: ChatRequest, opts: &CallOptions) -> Result<Completed<ChatCompletion>> {
    let started = Instant::now();
    match &opts.mock {
        Some(Mock::Text(t)) => {
            let response = mock_completion(&req, t);
            let mut meta = CallMeta::mock(started);
            // Priced like the model it stands in for, as LiteLLM does.
            meta.cost = price("openai", [&req.model, ""], response.usage.as_ref());
            return Ok(Completed {
                response,
                meta,
                elapsed: started.elapsed(),
            });
        }
        Some(Mock::Error(k, m)) => {
            return Err(Error::new(*k, m.clone()).with_context("openai", &req.model))
        }
        None => {}
    }
    let route =
        resolve(&req.model, &opts.endpoint).map_err(|e| e.with_context("openai", &req.model))?;
    let mut req = req;
    if route.dialect.needs_inline_images() {
        media::inline_remote_images(&mut req.messages)
            .await
            .map_err(|e| e.with_context(route.provider, &route.model))?;
    }
    let prepared = prepare_chat(&route, &mut req, false, opts)
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    exchange(&route, &prepared, opts, started, |body| {
        route.dialect.parse_chat(&route, body)
    })
    .await
}

/// What the pipeline needs from a unary answer to price it (and to settle its limits).
pub trait Priced {
    fn usage(&self) -> Option<&Usage>;
    fn model(&self) -> &str;
}

impl Priced for ChatCompletion {
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
    fn model(&self) -> &str {
        &self.model
    }
}

impl Priced for TranscriptionResponse {
    /// Transcriptions are priced per second of audio (see [`transcription`]).
    fn usage(&self) -> Option<&Usage> {
        None
    }
    fn model(&self) -> &str {
        ""
    }
}

impl Priced for ImageResponse {
    /// Images are priced per image, not per token (see [`image_generation`]).
    fn usage(&self) -> Option<&Usage> {
        None
    }
    fn model(&self) -> &str {
        ""
    }
}

impl Priced for EmbeddingResponse {
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
    fn model(&self) -> &str {
        &self.model
    }
}

/// Sends a prepared unary request with retries, parses the answer, and prices it.
async fn exchange<T: Priced>(
    route: &Route,
    prepared: &PreparedRequest,
    opts: &CallOptions,
    started: Instant,
    parse: impl Fn(&[u8]) -> Result<T>,
) -> Result<Completed<T>> {
    let result = with_retries(opts, started, || async {
        let resp = send(route, prepared, Some(remaining(started, opts))).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&e, &route.api_base))?;
        parse(&body)
    })
    .await;
    match result {
        Ok((response, attempts)) => {
            let mut meta = CallMeta::new(route, started);
            meta.attempts = attempts;
            meta.cost = match (opts.price_override, response.usage()) {
                (Some((i, o)), Some(u)) => {
                    Some(u.prompt_tokens as f64 * i + u.completion_tokens as f64 * o)
                }
                _ => price(
                    route.provider,
                    [&route.model, response.model()],
                    response.usage(),
                ),
            };
            Ok(Completed {
                response,
                meta,
                elapsed: started.elapsed(),
            })
        }
        Err(e) => Err(e.with_context(route.provider, &route.model)),
    }
}

/// A streamed chat completion: pre hooks (a hook's answer is replayed as chunks), the upstream
/// stream, and the stream hooks on every chunk.
pub async fn completion_stream(
    req: ChatRequest,
    opts: &CallOptions,
) -> Result<(ChatStream, CallMeta)> {
    let Some(pipeline) = hooks(opts) else {
        return admitted_stream(req, opts).await;
    };
    let started = Instant::now();
    let mut ctx = hook_context(&req, true, opts);
    let mut req = req;
    let (response, meta) = match pipeline.pre(&mut ctx, &mut req).await? {
        Pre::Continue => (None, None),
        Pre::Reject(e) => return Err(e.with_context("openai", &req.model)),
        Pre::Respond(response) => (Some(response), Some(CallMeta::answered_by("hook", started))),
        Pre::CacheHit(response) => (
            Some(response),
            Some(CallMeta::cache_hit(&req, opts, started)),
        ),
    };
    if let (Some(response), Some(meta)) = (response, meta) {
        // Replayed as the chunks a stream of it would have carried, through the stream hooks.
        let chunks = crate::streaming::completion_to_chunks(&response);
        let mut s = ChatStream::from_chunks(chunks, meta.provider, req.model.clone());
        s.show_usage_chunk(wants_usage_chunk(&req));
        s.set_hooks(pipeline.clone(), ctx);
        return Ok((s, meta));
    }
    let (mut s, meta) = admitted_stream(req, opts).await?;
    settle_stream_with_post_hooks(&mut s, pipeline, &ctx, meta.provider, &meta.upstream_model);
    s.set_hooks(pipeline.clone(), ctx);
    Ok((s, meta))
}

/// When a stream completes, runs the `post` hooks over what it amounted to, so that hooks that
/// account for calls (the budget, the request log) and the cache see streamed calls too. The
/// answer is its usage (priced) and no choices, unless some hook needs the whole answer
/// ([`hooks::Pipeline::needs_streamed_response`]): then the stream assembles it from its chunks
/// as they pass. The hooks run before the caller is told that the stream ended; a failure there
/// is logged.
fn settle_stream_with_post_hooks(
    s: &mut ChatStream,
    pipeline: &Arc<hooks::Pipeline>,
    ctx: &HookContext,
    provider: &'static str,
    upstream_model: &str,
) {
    if pipeline.needs_streamed_response(ctx) {
        s.assemble_response();
    }
    let pipeline = pipeline.clone();
    let mut ctx = ctx.clone();
    let model = upstream_model.to_owned();
    s.on_complete(move |summary| {
        ctx.cost = price(provider, [&model, ""], summary.usage.as_ref());
        let response = match summary.response {
            Some(r) => Arc::try_unwrap(r).unwrap_or_else(|shared| (*shared).clone()),
            None => ChatCompletion {
                id: ctx.request_id.clone(),
                object: "chat.completion".into(),
                created: unix_now(),
                model,
                choices: Vec::new(),
                usage: summary.usage,
                system_fingerprint: None,
                extra: Map::new(),
            },
        };
        Box::pin(async move {
            let mut outcome = Ok(response);
            if let Err(e) = pipeline.post(&ctx, &mut outcome).await {
                tracing::warn!(error = %e, "post hooks failed after a stream");
            }
        })
    });
}

/// The upstream part of a stream. Connecting, the status and the first error body are retried
/// like unary calls; once chunks flow, a failure ends the stream with a classified error.
async fn open_stream(req: ChatRequest, opts: &CallOptions) -> Result<(ChatStream, CallMeta)> {
    let started = Instant::now();
    match &opts.mock {
        Some(Mock::Text(t)) => {
            let chunks = mock_chunks(&req, t);
            return Ok((
                ChatStream::from_chunks(chunks, "mock", req.model.clone()),
                CallMeta::mock(started),
            ));
        }
        Some(Mock::Error(k, m)) => {
            return Err(Error::new(*k, m.clone()).with_context("openai", &req.model))
        }
        None => {}
    }
    let route =
        resolve(&req.model, &opts.endpoint).map_err(|e| e.with_context("openai", &req.model))?;
    let mut req = req;
    if route.dialect.needs_inline_images() {
        media::inline_remote_images(&mut req.messages)
            .await
            .map_err(|e| e.with_context(route.provider, &route.model))?;
    }
    let prepared = prepare_chat(&route, &mut req, true, opts)
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    let show_usage = wants_usage_chunk(&req);
    let result = with_retries(opts, started, || send(&route, &prepared, None)).await;
    match result {
        Ok((resp, attempts)) => {
            let mut meta = CallMeta::new(&route, started);
            meta.attempts = attempts;
            let body = Box::pin(resp.bytes_stream());
            let idle = opts.stream_timeout.unwrap_or(opts.timeout);
            Ok((
                ChatStream::from_http(body, route, req.model, show_usage, idle),
                meta,
            ))
        }
        Err(e) => Err(e.with_context(route.provider, &route.model)),
    }
}

/// Embeddings.
pub async fn embedding(
    req: EmbeddingRequest,
    opts: &CallOptions,
) -> Result<Completed<EmbeddingResponse>> {
    let ticket = match &opts.admission {
        Some(admission) => {
            let caller = caller_of(&req.params, opts);
            admission
                .admit_embedding(&request_id(), &caller, &req.model, &req.input)
                .await
                .map_err(|e| denied(e, &req.model))?
        }
        None => limiter::Ticket::none(),
    };
    let out = embedding_call(req, opts).await;
    ticket.settle(
        out.as_ref()
            .ok()
            .and_then(Completed::total_tokens)
            .unwrap_or(0),
    );
    out
}

async fn embedding_call(
    req: EmbeddingRequest,
    opts: &CallOptions,
) -> Result<Completed<EmbeddingResponse>> {
    let started = Instant::now();
    let mut req = req;
    cache::strip_controls(&mut req.params);
    let route =
        resolve(&req.model, &opts.endpoint).map_err(|e| e.with_context("openai", &req.model))?;
    let prepared = route
        .dialect
        .embedding_request(&route, &req, &extras(opts))
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    exchange(&route, &prepared, opts, started, |body| {
        route.dialect.parse_embedding(&route, &req, body)
    })
    .await
}

/// Admits an image or audio call, when the call has limits: one request, and the tokens its
/// estimate counts for under the limits' [`limiter::MediaWeights`].
async fn admit_media(
    opts: &CallOptions,
    params: &Map<String, Value>,
    model: &str,
    estimate: Media,
) -> Result<limiter::Ticket> {
    match &opts.admission {
        Some(admission) => admission
            .admit_media(&request_id(), &caller_of(params, opts), model, estimate)
            .await
            .map_err(|e| denied(e, model)),
        None => Ok(limiter::Ticket::none()),
    }
}

/// Settles a media call's admission with what it consumed (nothing, if it failed).
fn settle_media(opts: &CallOptions, ticket: limiter::Ticket, meta: Option<&CallMeta>) {
    let used = match (&opts.admission, meta.and_then(|m| m.media)) {
        (Some(a), Some(m)) => a.config.media.tokens(m),
        _ => 0,
    };
    ticket.settle(used);
}

/// Image generation: one request, priced per image from the price table.
pub async fn image_generation(
    req: ImageRequest,
    opts: &CallOptions,
) -> Result<Completed<ImageResponse>> {
    let ticket = admit_media(opts, &req.params, &req.model, req.media_estimate()).await?;
    let out = image_call(req, opts).await;
    settle_media(opts, ticket, out.as_ref().ok().map(|d| &d.meta));
    out
}

async fn image_call(req: ImageRequest, opts: &CallOptions) -> Result<Completed<ImageResponse>> {
    let started = Instant::now();
    let mut req = req;
    cache::strip_controls(&mut req.params);
    if req.prompt.trim().is_empty() {
        return Err(
            Error::bad_request("image generation needs a non-empty prompt")
                .with_context("openai", &req.model),
        );
    }
    let route =
        resolve(&req.model, &opts.endpoint).map_err(|e| e.with_context("openai", &req.model))?;
    let prepared = route
        .dialect
        .image_request(&route, &req, &extras(opts))
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    let mut done = exchange(&route, &prepared, opts, started, |body| {
        route.dialect.parse_image(&route, body)
    })
    .await?;
    let n = u64::try_from(done.response.data.len()).unwrap_or(0).max(1);
    done.meta.cost = pricing::image_cost(
        Some(route.provider),
        &route.model,
        req.size(),
        req.quality(),
        n,
    );
    done.meta.media = Some(Media {
        images: n,
        seconds: 0.0,
    });
    Ok(done)
}

/// Text to speech: the upstream's audio body, handed out as it arrives. Connecting and the
/// status are retried like unary calls; the cost (per input character) is known at once.
pub async fn speech(req: SpeechRequest, opts: &CallOptions) -> Result<(BinaryStream, CallMeta)> {
    let started = Instant::now();
    let mut req = req;
    cache::strip_controls(&mut req.params);
    if req.input.is_empty() {
        return Err(
            Error::bad_request("speech needs a non-empty input").with_context("openai", &req.model)
        );
    }
    let route =
        resolve(&req.model, &opts.endpoint).map_err(|e| e.with_context("openai", &req.model))?;
    let prepared = route
        .dialect
        .speech_request(&route, &req, &extras(opts))
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    // The audio's length is estimated from the input (its body is not read here).
    let estimate = req.media_estimate();
    let ticket = admit_media(opts, &req.params, &req.model, estimate).await?;
    let result = with_retries(opts, started, || send(&route, &prepared, None)).await;
    let mut meta = CallMeta::new(&route, started);
    meta.media = Some(estimate);
    settle_media(opts, ticket, result.is_ok().then_some(&meta));
    match result {
        Ok((resp, attempts)) => {
            meta.attempts = attempts;
            meta.cost = pricing::speech_cost(Some(route.provider), &route.model, &req.input);
            let idle = opts.stream_timeout.unwrap_or(opts.timeout);
            Ok((
                BinaryStream::from_response(resp, idle, route.api_base.clone()),
                meta,
            ))
        }
        Err(e) => Err(e.with_context(route.provider, &route.model)),
    }
}

/// The largest audio file a transcription sends unless the call says otherwise
/// (`max_upload_bytes`).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;

/// The multipart body of one transcription attempt: the form fields, then the file, streamed
/// from disk (or from memory) as the request is written.
async fn transcription_form(
    route: &Route,
    req: &TranscriptionRequest,
) -> Result<reqwest::multipart::Form> {
    let form = reqwest::multipart::Form::new().text("model", route.model.clone());
    let form = form_fields(form, &req.params);
    Ok(form.part("file", file_part(&req.file, &req.filename).await?))
}

/// A file part of a multipart body, streamed from disk (or from memory).
async fn file_part(src: &FileSource, filename: &str) -> Result<reqwest::multipart::Part> {
    use reqwest::multipart::Part;
    let part = match src {
        FileSource::Path(p) => Part::file(p).await.map_err(|e| {
            Error::bad_request(format!("cannot read the file {}: {e}", p.display()))
        })?,
        FileSource::Bytes(b) => {
            Part::stream_with_length(reqwest::Body::from(b.clone()), b.len() as u64)
        }
        // Still arriving, perhaps: sent as it is written, without a length (chunked).
        FileSource::Spool(s) => match s.complete_len() {
            Some(n) => Part::stream_with_length(reqwest::Body::wrap_stream(s.stream()), n),
            None => Part::stream(reqwest::Body::wrap_stream(s.stream())),
        },
    };
    Ok(part.file_name(filename.to_owned()))
}

/// The form fields of a multipart body: strings as they are, lists as repeated `key[]`.
fn form_fields(
    mut form: reqwest::multipart::Form,
    params: &Map<String, Value>,
) -> reqwest::multipart::Form {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (k, v) in params {
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    form = form.text(format!("{k}[]"), text(item));
                }
            }
            other => form = form.text(k.clone(), text(other)),
        }
    }
    form
}

/// Posts a multipart body, built afresh for each attempt (files are read again from disk),
/// with the call's retries; the answer's body and the attempts made.
async fn post_form<F, Fut>(
    route: &Route,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    opts: &CallOptions,
    started: Instant,
    build: F,
) -> Result<(bytes::Bytes, u32)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::multipart::Form>>,
{
    with_retries(opts, started, || async {
        let form = build().await?;
        let resp = client()?
            .post(url)
            .headers(headers.clone())
            .multipart(form)
            .timeout(remaining(started, opts))
            .send()
            .await
            .map_err(|e| transport_error(&e, &route.api_base))?;
        checked(route, resp)
            .await?
            .bytes()
            .await
            .map_err(|e| transport_error(&e, &route.api_base))
    })
    .await
}

/// Checks an upload's size against `max_upload_bytes` (a request parameter, removed; default
/// [`DEFAULT_MAX_UPLOAD_BYTES`]). A spool still being written is not checked here: its writer
/// holds it to the limit as it arrives.
async fn upload_size(src: &FileSource, limit: u64, what: &str) -> Result<()> {
    let size = match file_len(src).await {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(()),
        Err(e) => {
            let name = match src {
                FileSource::Path(p) => p.display().to_string(),
                FileSource::Bytes(_) | FileSource::Spool(_) => String::new(),
            };
            return Err(Error::bad_request(format!(
                "cannot read the {what} {name}: {e}"
            )));
        }
    };
    if size == 0 {
        return Err(Error::bad_request(format!("the {what} is empty")));
    }
    if size > limit {
        return Err(Error::bad_request(format!(
            "the {what} is {size} bytes, over the upload limit of {limit} bytes (max_upload_bytes)"
        ))
        .with_status(413));
    }
    Ok(())
}

fn upload_limit(params: &mut Map<String, Value>) -> Result<u64> {
    match params.remove("max_upload_bytes") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Error::bad_request("max_upload_bytes must be a whole number of bytes")),
        None => Ok(DEFAULT_MAX_UPLOAD_BYTES),
    }
}

/// Image edits (`images/edits`): the prompt and the image(s), plus a mask, as multipart
/// streamed from disk; priced and limited per image like generations.
pub async fn image_edit(
    req: ImageEditRequest,
    opts: &CallOptions,
) -> Result<Completed<ImageResponse>> {
    let ticket = admit_media(opts, &req.params, &req.model, req.media_estimate()).await?;
    let out = image_edit_call(req, opts).await;
    settle_media(opts, ticket, out.as_ref().ok().map(|d| &d.meta));
    out
}

async fn image_edit_call(
    req: ImageEditRequest,
    opts: &CallOptions,
) -> Result<Completed<ImageResponse>> {
    let started = Instant::now();
    let mut req = req;
    cache::strip_controls(&mut req.params);
    let ctx = |e: Error| e.with_context("openai", &req.model);
    if req.prompt.trim().is_empty() {
        return Err(ctx(Error::bad_request(
            "an image edit needs a non-empty prompt",
        )));
    }
    if req.images.is_empty() {
        return Err(ctx(Error::bad_request("an image edit needs an image")));
    }
    let limit = upload_limit(&mut req.params).map_err(ctx)?;
    for (img, _) in req.images.iter().chain(req.mask.iter()) {
        upload_size(img, limit, "image").await.map_err(ctx)?;
    }
    let route = resolve(&req.model, &opts.endpoint).map_err(ctx)?;
    let (url, mut headers) = route
        .dialect
        .image_edit_target(&route, &extras(opts))
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    headers.remove(reqwest::header::CONTENT_TYPE);
    let build = || async {
        let form = reqwest::multipart::Form::new()
            .text("model", route.model.clone())
            .text("prompt", req.prompt.clone());
        let mut form = form_fields(form, &req.params);
        let field = if req.images.len() > 1 {
            "image[]"
        } else {
            "image"
        };
        for (img, name) in &req.images {
            form = form.part(field, file_part(img, name).await?);
        }
        if let Some((mask, name)) = &req.mask {
            form = form.part("mask", file_part(mask, name).await?);
        }
        Ok(form)
    };
    let (body, attempts) = post_form(&route, &url, &headers, opts, started, build)
        .await
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    let response = route
        .dialect
        .parse_image(&route, &body)
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    let mut meta = CallMeta::new(&route, started);
    meta.attempts = attempts;
    let n = u64::try_from(response.data.len()).unwrap_or(0).max(1);
    let size = req.params.get("size").and_then(Value::as_str);
    let quality = req.params.get("quality").and_then(Value::as_str);
    meta.cost = pricing::image_cost(Some(route.provider), &route.model, size, quality, n);
    meta.media = Some(Media {
        images: n,
        seconds: 0.0,
    });
    Ok(Completed {
        response,
        meta,
        elapsed: started.elapsed(),
    })
}

/// Bytes a second of compressed audio takes when nothing else tells the length (128 kbit/s).
const ESTIMATED_AUDIO_BYTES_PER_SECOND: f64 = 16_000.0;

/// Whether an upload is a spool its writer has not finished.
fn still_arriving(src: &FileSource) -> bool {
    matches!(src, FileSource::Spool(s) if s.complete_len().is_none())
}

/// The size of an upload; `None` while a spool is still being written.
async fn file_len(src: &FileSource) -> std::io::Result<Option<u64>> {
    Ok(match src {
        FileSource::Bytes(b) => Some(b.len() as u64),
        FileSource::Spool(s) => s.complete_len(),
        FileSource::Path(p) => Some(tokio::fs::metadata(p).await?.len()),
    })
}

/// The end of the last cue of an SRT or WebVTT transcript, in seconds.
fn subtitle_seconds(text: &str) -> Option<f64> {
    let stamp = |t: &str| -> Option<f64> {
        let mut secs = 0.0;
        for part in t.replace(',', ".").split(':') {
            secs = secs * 60.0 + part.parse::<f64>().ok()?;
        }
        Some(secs)
    };
    text.lines()
        .filter_map(|l| l.split_once("-->"))
        .filter_map(|(_, end)| stamp(end.split_whitespace().next()?))
        .reduce(f64::max)
}

/// Seconds of audio in a WAV file's header, when the file is a plain PCM WAV.
fn wav_seconds(head: &[u8]) -> Option<f64> {
    if head.len() < 44 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let rate = u32::from_le_bytes(head[28..32].try_into().ok()?);
    let data = u32::from_le_bytes(head[40..44].try_into().ok()?);
    (rate > 0).then(|| f64::from(data) / f64::from(rate))
}

async fn audio_head(file: &FileSource) -> Vec<u8> {
    match file {
        FileSource::Bytes(b) => b[..b.len().min(44)].to_vec(),
        FileSource::Spool(s) => s.head(44).await.unwrap_or_default(),
        FileSource::Path(p) => {
            use tokio::io::AsyncReadExt;
            let mut head = vec![0u8; 44];
            match tokio::fs::File::open(p).await {
                Ok(mut f) => {
                    let n = f.read(&mut head).await.unwrap_or(0);
                    head.truncate(n);
                    head
                }
                Err(_) => Vec::new(),
            }
        }
    }
}

/// Speech to text. The file is sent as multipart/form-data streamed from disk (memory stays
/// flat whatever its size), again on each retry; a file over `max_upload_bytes` (default
/// [`DEFAULT_MAX_UPLOAD_BYTES`]) is refused before anything is sent. `text`, `srt` and `vtt`
/// answers come back as the `text` of the response. The cost, and what the call counts
/// toward limits, is per second of audio: from the answer's `duration` (or `usage.seconds`),
/// else a WAV header. The seconds are charged once known, after the answer.
pub async fn transcription(
    req: TranscriptionRequest,
    opts: &CallOptions,
) -> Result<Completed<TranscriptionResponse>> {
    let ticket = admit_media(opts, &req.params, &req.model, req.media_estimate()).await?;
    let out = transcription_call(req, opts).await;
    settle_media(opts, ticket, out.as_ref().ok().map(|d| &d.meta));
    out
}

async fn transcription_call(
    req: TranscriptionRequest,
    opts: &CallOptions,
) -> Result<Completed<TranscriptionResponse>> {
    let started = Instant::now();
    let mut req = req;
    cache::strip_controls(&mut req.params);
    let ctx = |e: Error| e.with_context("openai", &req.model);
    let limit = upload_limit(&mut req.params).map_err(ctx)?;
    upload_size(&req.file, limit, "audio file")
        .await
        .map_err(ctx)?;
    let route = resolve(&req.model, &opts.endpoint).map_err(ctx)?;
    let (url, mut headers) = route
        .dialect
        .transcription_target(&route, &extras(opts))
        .map_err(|e| e.with_context(route.provider, &route.model))?;
    headers.remove(reqwest::header::CONTENT_TYPE);
    let plain = matches!(
        req.params.get("response_format").and_then(Value::as_str),
        Some("text" | "srt" | "vtt")
    );
    let result = post_form(&route, &url, &headers, opts, started, || {
        transcription_form(&route, &req)
    })
    .await
    .and_then(|(body, attempts)| {
        if plain {
            return Ok((
                TranscriptionResponse {
                    text: String::from_utf8_lossy(&body).into_owned(),
                    extra: Map::new(),
                },
                attempts,
            ));
        }
        serde_json::from_slice::<TranscriptionResponse>(&body)
            .map(|r| (r, attempts))
            .map_err(|e| {
                crate::providers::openai::invalid_response(&route, "transcription", &e, &body)
            })
    });
    match result {
        Ok((response, attempts)) => {
            let mut meta = CallMeta::new(&route, started);
            meta.attempts = attempts;
            let told = response
                .extra
                .get("duration")
                .or_else(|| response.extra.get("usage").and_then(|u| u.get("seconds")))
                .and_then(Value::as_f64);
            let seconds = match told.or_else(|| subtitle_seconds(&response.text)) {
                Some(d) => Some(d),
                None => wav_seconds(&audio_head(&req.file).await),
            };
            meta.cost = seconds
                .and_then(|s| pricing::transcription_cost(Some(route.provider), &route.model, s));
            // For limits, an audio whose length nothing says (a plain-text answer of an MP3)
            // is estimated from its size at 128 kbit/s.
            let counted = match seconds {
                Some(s) => s,
                None => {
                    let size = file_len(&req.file).await.ok().flatten().unwrap_or(0);
                    size as f64 / ESTIMATED_AUDIO_BYTES_PER_SECOND
                }
            };
            meta.media = Some(Media {
                images: 0,
                seconds: counted,
            });
            Ok(Completed {
                response,
                meta,
                elapsed: started.elapsed(),
            })
        }
        // A call that ended while the file was still arriving (a client uploading more
        // slowly than the timeout allows) is the client's doing, not the deployment's: no
        // retry, fallback or cooldown.
        Err(e) if e.retryable() && still_arriving(&req.file) => Err(Error::bad_request(format!(
            "the upload was still arriving when the call ended ({}): send the file faster, or set a longer timeout",
            e.message
        ))
        .with_status(408)
        .with_context(route.provider, &route.model)),
        Err(e) => Err(e.with_context(route.provider, &route.model)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_lengths() {
        let srt =
            "1\n00:00:00,000 --> 00:00:02,500\nhello\n\n2\n00:00:02,500 --> 00:01:03,250\nworld\n";
        assert_eq!(subtitle_seconds(srt), Some(63.25));
        let vtt = "WEBVTT\n\n00:01.000 --> 00:04.500 align:start\nhi\n";
        assert_eq!(subtitle_seconds(vtt), Some(4.5));
        assert_eq!(subtitle_seconds("just text"), None);
    }

    #[test]
    fn mock_strings() {
        assert!(matches!(Mock::parse("hello"), Mock::Text(t) if t == "hello"));
        assert!(matches!(
            Mock::parse("litellm.RateLimitError"),
            Mock::Error(ErrorKind::RateLimited, _)
        ));
    }

    #[tokio::test]
    async fn mock_stream_reassembles() {
        let req = ChatRequest::new(
            "gpt-4o",
            vec![serde_json::json!({"role":"user","content":"x"})],
        );
        let opts = CallOptions {
            mock: Some(Mock::Text("hello world".into())),
            ..Default::default()
        };
        let (mut s, _) = completion_stream(req, &opts).await.unwrap();
        let mut text = String::new();
        let mut finish = None;
        while let Some(item) = s.next().await {
            let c = item.unwrap().chunk;
            text.push_str(c.choices[0].delta.content.as_deref().unwrap_or(""));
            finish = finish.or(c.choices[0].finish_reason.clone());
        }
        assert_eq!(text, "hello world");
        assert_eq!(finish.as_deref(), Some("stop"));
    }

    #[tokio::test]
    async fn validation_and_unknown_provider() {
        let opts = CallOptions::default();
        let e = completion(ChatRequest::new("nosuch/x", vec![]), &opts)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidConfig);
        let opts = CallOptions {
            endpoint: Endpoint {
                api_key: Some(crate::providers::Secret::new("k")),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = completion(ChatRequest::new("gpt-4o", vec![]), &opts)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.provider.as_deref(), Some("openai"));
    }
}
