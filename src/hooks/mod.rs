//! The hook pipeline: ordered hooks that see every call.
//!
//! - `pre` may modify the request, reject it with a classified error, or short-circuit it with
//!   a response (a canned or cached answer; streamed as chunks when the caller streams); it may
//!   also leave typed values in [`HookContext::extensions`] for its own `post` (the cache
//!   carries its key this way);
//! - `post` may modify the response or replace an error (with another error or a response);
//! - `stream` sees each chunk and may modify or drop it.
//!
//! Hooks run in ascending `priority`. Each async hook has a deadline; a hook that fails or
//! misses its deadline is logged and counted, and then either skipped (`FailurePolicy::Open`)
//! or fails the call with an `internal` error that names it (`FailurePolicy::Closed`). A hook
//! never swallows a request silently and never crashes the process.
//!
//! The pipeline is shared by the SDK and the server; built-in features (logging with
//! redaction, the response cache, budgets) are hooks on it.

pub mod builtin;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{ChatChunk, ChatCompletion, ChatRequest};

/// What a hook knows about the call.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub request_id: String,
    /// The model name the caller asked for (a router's model group).
    pub model_group: String,
    /// The deployment chosen, once known (router).
    pub deployment: Option<String>,
    /// Who is calling (a key hash, a user), when known.
    pub caller: Option<String>,
    pub metadata: Map<String, Value>,
    pub started: Instant,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub stream: bool,
    /// The call's cost in USD, once the pipeline priced it (for `post` hooks).
    pub cost: Option<f64>,
    /// The call is answered by a `mock_response`, not by a model.
    pub mock: bool,
    /// Values hooks leave for their later stages of this call (`pre` to `post`).
    pub extensions: Extensions,
}

/// Typed values attached to one call, at most one per type. Hooks use them to carry what their
/// `pre` decided to their `post` (a private type per hook keeps them apart). Cloning is cheap:
/// the values are shared.
#[derive(Clone, Default)]
pub struct Extensions(Vec<(TypeId, Arc<dyn Any + Send + Sync>)>);

impl Extensions {
    /// Sets the value of type `T`, replacing any earlier one.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.0.retain(|(t, _)| *t != id);
        self.0.push((id, Arc::new(value)));
    }

    /// The value of type `T`, if one was set.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.0
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref::<T>())
    }

    /// Removes the value of type `T`; whether there was one.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> bool {
        let id = TypeId::of::<T>();
        let before = self.0.len();
        self.0.retain(|(t, _)| *t != id);
        self.0.len() != before
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
    }
}

impl HookContext {
    pub fn new(
        request_id: impl Into<String>,
        model_group: impl Into<String>,
        stream: bool,
    ) -> Self {
        HookContext {
            request_id: request_id.into(),
            model_group: model_group.into(),
            deployment: None,
            caller: None,
            metadata: Map::new(),
            started: Instant::now(),
            attempt: 1,
            stream,
            cost: None,
            mock: false,
            extensions: Extensions::default(),
        }
    }
}

/// What a `pre` hook decided.
#[derive(Debug)]
pub enum Pre {
    Continue,
    Reject(Error),
    /// Answer without calling the upstream.
    Respond(Box<ChatCompletion>),
    /// Answer with a response served from the response cache: like `Respond`, and the call is
    /// marked as a cache hit and costed at zero.
    CacheHit(Box<ChatCompletion>),
}

/// What a `stream` hook decided about one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkAction {
    Keep,
    Drop,
}

/// What happens when a hook fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Log, count, and go on as if the hook were not there.
    Open,
    /// Fail the call.
    Closed,
}

/// One hook. Every method has a pass-through default, so a hook implements only what it needs.
pub trait Hook: Send + Sync {
    fn name(&self) -> &str;

    /// Lower runs first.
    fn priority(&self) -> i32 {
        0
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::Open
    }

    fn pre<'a>(
        &'a self,
        _ctx: &'a mut HookContext,
        _req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, Result<Pre>> {
        Box::pin(async { Ok(Pre::Continue) })
    }

    fn post<'a>(
        &'a self,
        _ctx: &'a HookContext,
        _outcome: &'a mut Result<ChatCompletion>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Called for each chunk, inline: keep it cheap.
    fn stream(&self, _ctx: &HookContext, _chunk: &mut ChatChunk) -> ChunkAction {
        ChunkAction::Keep
    }

    /// Whether this hook's `post` needs the whole answer of this call when it is streamed.
    /// By default `post` sees a streamed call's usage only; when some hook says yes, the
    /// stream assembles the answer from its chunks (content, tool calls, finish reasons) as
    /// they pass, which costs a copy of the text.
    fn needs_streamed_response(&self, _ctx: &HookContext) -> bool {
        false
    }
}

/// Failure counters per hook, for metrics and tests.
#[derive(Debug, Default)]
pub struct HookStats {
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
}

/// The ordered hooks of a gateway or SDK configuration.
#[derive(Default)]
pub struct Pipeline {
    hooks: Vec<Arc<dyn Hook>>,
    stats: BTreeMap<String, Arc<HookStats>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hooks.iter().map(|h| h.name()))
            .finish()
    }
}

impl Pipeline {
    pub fn new(mut hooks: Vec<Arc<dyn Hook>>) -> Self {
        // Stable: hooks of equal priority keep their given order.
        hooks.sort_by_key(|h| h.priority());
        let stats = hooks
            .iter()
            .map(|h| (h.name().to_owned(), Arc::new(HookStats::default())))
            .collect();
        Pipeline { hooks, stats }
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    pub fn stats(&self, hook: &str) -> Option<&HookStats> {
        self.stats.get(hook).map(|s| &**s)
    }

    fn failed(&self, hook: &dyn Hook, err: Error, timed_out: bool) -> Result<()> {
        if let Some(s) = self.stats.get(hook.name()) {
            s.failures.fetch_add(1, Ordering::Relaxed);
            if timed_out {
                s.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::warn!(hook = hook.name(), error = %err, "hook failed");
        match hook.failure_policy() {
            FailurePolicy::Open => Ok(()),
            FailurePolicy::Closed => Err(Error::new(
                ErrorKind::Internal,
                format!("hook '{}' failed: {}", hook.name(), err.message),
            )),
        }
    }

    async fn guarded<T>(
        &self,
        hook: &dyn Hook,
        mut fut: BoxFuture<'_, Result<T>>,
    ) -> Result<Option<T>> {
        // Most hooks finish without waiting: poll once before paying for a deadline timer.
        let ready = match futures_util::FutureExt::now_or_never(&mut fut) {
            Some(r) => Ok(r),
            None => tokio::time::timeout(hook.deadline(), fut).await,
        };
        match ready {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) => self.failed(hook, e, false).map(|_| None),
            Err(_) => {
                let e = Error::new(
                    ErrorKind::Timeout,
                    format!("missed its {:?} deadline", hook.deadline()),
                );
                self.failed(hook, e, true).map(|_| None)
            }
        }
    }

    /// Runs the `pre` hooks in order; the first that rejects or responds ends the run.
    pub async fn pre(&self, ctx: &mut HookContext, req: &mut ChatRequest) -> Result<Pre> {
        for h in &self.hooks {
            // A hook that failed open left `req` as it was when it gave up.
            match self.guarded(&**h, h.pre(ctx, req)).await? {
                Some(Pre::Continue) | None => {}
                Some(done) => return Ok(done),
            }
        }
        Ok(Pre::Continue)
    }

    /// Runs the `post` hooks in order over the call's outcome.
    pub async fn post(
        &self,
        ctx: &HookContext,
        outcome: &mut Result<ChatCompletion>,
    ) -> Result<()> {
        for h in &self.hooks {
            self.guarded(&**h, h.post(ctx, outcome)).await?;
        }
        Ok(())
    }

    /// Whether some hook needs a streamed call's whole answer in `post`.
    pub fn needs_streamed_response(&self, ctx: &HookContext) -> bool {
        self.hooks.iter().any(|h| h.needs_streamed_response(ctx))
    }

    /// Runs the `stream` hooks over one chunk; `Drop` from any hook drops it.
    pub fn stream(&self, ctx: &HookContext, chunk: &mut ChatChunk) -> ChunkAction {
        for h in &self.hooks {
            if h.stream(ctx, chunk) == ChunkAction::Drop {
                return ChunkAction::Drop;
            }
        }
        ChunkAction::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    struct Rec {
        name: &'static str,
        prio: i32,
        log: Arc<Mutex<Vec<String>>>,
        behave: &'static str,
        policy: FailurePolicy,
    }

    impl Hook for Rec {
        fn name(&self) -> &str {
            self.name
        }
        fn priority(&self) -> i32 {
            self.prio
        }
        fn deadline(&self) -> Duration {
            Duration::from_millis(50)
        }
        fn failure_policy(&self) -> FailurePolicy {
            self.policy
        }
        fn pre<'a>(
            &'a self,
            _ctx: &'a mut HookContext,
            req: &'a mut ChatRequest,
        ) -> BoxFuture<'a, Result<Pre>> {
            Box::pin(async move {
                self.log.lock().unwrap().push(format!("pre:{}", self.name));
                match self.behave {
                    "modify" => {
                        req.params.insert("temperature".into(), json!(0.0));
                        Ok(Pre::Continue)
                    }
                    "reject" => Ok(Pre::Reject(Error::new(ErrorKind::BadRequest, "nope"))),
                    "fail" => Err(Error::new(ErrorKind::Internal, "broken hook")),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(Pre::Continue)
                    }
                    _ => Ok(Pre::Continue),
                }
            })
        }
        fn post<'a>(
            &'a self,
            _ctx: &'a HookContext,
            outcome: &'a mut Result<ChatCompletion>,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.log.lock().unwrap().push(format!("post:{}", self.name));
                if self.behave == "heal" {
                    if let Err(e) = outcome {
                        if e.kind == ErrorKind::RateLimited {
                            *outcome = Err(Error::new(ErrorKind::ServiceUnavailable, "replaced"));
                        }
                    }
                }
                Ok(())
            })
        }
        fn stream(&self, _ctx: &HookContext, chunk: &mut ChatChunk) -> ChunkAction {
            if self.behave == "drop-empty"
                && chunk
                    .choices
                    .iter()
                    .all(|c| c.delta.content.as_deref().unwrap_or("").is_empty())
            {
                return ChunkAction::Drop;
            }
            ChunkAction::Keep
        }
    }

    fn hook(
        name: &'static str,
        prio: i32,
        behave: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> Arc<dyn Hook> {
        Arc::new(Rec {
            name,
            prio,
            log: log.clone(),
            behave,
            policy: FailurePolicy::Open,
        })
    }

    fn req() -> ChatRequest {
        ChatRequest::new("m", vec![json!({"role": "user", "content": "hi"})])
    }

    #[tokio::test]
    async fn order_modify_reject() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::new(vec![
            hook("b", 10, "modify", &log),
            hook("a", -5, "", &log),
            hook("c", 20, "reject", &log),
            hook("d", 30, "", &log),
        ]);
        let mut ctx = HookContext::new("r1", "m", false);
        let mut r = req();
        match p.pre(&mut ctx, &mut r).await.unwrap() {
            Pre::Reject(e) => assert_eq!(e.message, "nope"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            *log.lock().unwrap(),
            ["pre:a", "pre:b", "pre:c"],
            "d never ran after the rejection"
        );
        assert_eq!(r.params["temperature"], 0.0);
    }

    #[tokio::test]
    async fn failure_and_deadline_policies() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::new(vec![
            hook("broken", 0, "fail", &log),
            hook("slow", 1, "slow", &log),
            hook("ok", 2, "modify", &log),
        ]);
        let mut r = req();
        assert!(matches!(
            p.pre(&mut HookContext::new("r", "m", false), &mut r)
                .await
                .unwrap(),
            Pre::Continue
        ));
        assert_eq!(
            r.params["temperature"], 0.0,
            "the hooks after the failed ones still ran"
        );
        assert_eq!(
            p.stats("broken").unwrap().failures.load(Ordering::Relaxed),
            1
        );
        assert_eq!(p.stats("slow").unwrap().timeouts.load(Ordering::Relaxed), 1);

        let closed: Arc<dyn Hook> = Arc::new(Rec {
            name: "strict",
            prio: 0,
            log: log.clone(),
            behave: "fail",
            policy: FailurePolicy::Closed,
        });
        let p = Pipeline::new(vec![closed]);
        let e = p
            .pre(&mut HookContext::new("r", "m", false), &mut req())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("strict"));
    }

    #[test]
    fn extensions_hold_one_value_per_type() {
        #[derive(Debug, PartialEq)]
        struct A(u32);
        #[derive(Debug, PartialEq)]
        struct B(&'static str);
        let mut ctx = HookContext::new("r", "m", false);
        ctx.extensions.insert(A(1));
        ctx.extensions.insert(B("b"));
        ctx.extensions.insert(A(2));
        let copy = ctx.clone();
        assert_eq!(copy.extensions.get::<A>(), Some(&A(2)));
        assert_eq!(copy.extensions.get::<B>(), Some(&B("b")));
        assert!(ctx.extensions.remove::<A>());
        assert!(!ctx.extensions.remove::<A>());
        assert_eq!(ctx.extensions.get::<A>(), None);
        assert_eq!(
            copy.extensions.get::<A>(),
            Some(&A(2)),
            "clones keep their values"
        );
    }

    #[tokio::test]
    async fn post_replaces_errors_and_stream_drops() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::new(vec![
            hook("heal", 0, "heal", &log),
            hook("filter", 0, "drop-empty", &log),
        ]);
        let ctx = HookContext::new("r", "m", true);
        let mut outcome: Result<ChatCompletion> = Err(Error::new(ErrorKind::RateLimited, "429"));
        p.post(&ctx, &mut outcome).await.unwrap();
        assert_eq!(outcome.unwrap_err().kind, ErrorKind::ServiceUnavailable);
        let mut chunk: ChatChunk =
            serde_json::from_value(json!({"choices": [{"index": 0, "delta": {"content": ""}}]}))
                .unwrap();
        assert_eq!(p.stream(&ctx, &mut chunk), ChunkAction::Drop);
        chunk.choices[0].delta.content = Some("x".into());
        assert_eq!(p.stream(&ctx, &mut chunk), ChunkAction::Keep);
    }
}
