//! Built-in hooks on the pipeline: the spend budget and the redacted request log.
//!
//! - [`BudgetHook`]: refuses calls once the spend of its scope (everything, or one `user`)
//!   reached `max_budget` within the window (`BudgetExceededError`, LiteLLM's
//!   `litellm.max_budget` behaviour), and adds each call's cost after it. Spend lives in the
//!   process, or in Redis (one script per update, `INCRBYFLOAT` with the window as TTL) so that
//!   every process on that Redis shares one budget. A Redis failure fails the call closed:
//!   spend limits must not be exceeded by an outage.
//! - [`RequestLog`]: one JSON line per call (model, messages, parameters, outcome, usage,
//!   latency) written to a file, with secrets redacted: keys that look like credentials
//!   (`sk-...`, `AKIA...`, bearer tokens) anywhere in the text, and the values of fields named
//!   like secrets.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::{FailurePolicy, Hook, HookContext, Pre};
use crate::error::{Error, ErrorKind, Result};
use crate::pricing;
use crate::redis::RedisPool;
use crate::types::{ChatCompletion, ChatRequest};

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// Every call of the process (or of every process on the Redis).
    Global,
    /// Per OpenAI `user` parameter; calls without one count as `""`.
    User,
}

#[derive(Debug)]
enum SpendStore {
    Local(Mutex<HashMap<String, (f64, Instant)>>),
    Redis(RedisPool),
}

/// Spend in USD per key within a window that starts with the key's first spend: in this
/// process, or in Redis (shared by every process on it, the window as the key's TTL).
#[derive(Debug)]
pub struct SpendLedger {
    store: SpendStore,
    prefix: String,
}

const ADD_SPEND: &str = r"
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
";

impl SpendLedger {
    pub fn local() -> Self {
        SpendLedger {
            store: SpendStore::Local(Mutex::new(HashMap::new())),
            prefix: String::new(),
        }
    }

    /// Spend shared through Redis under `prefix` (hash-tagged per key).
    pub fn redis(pool: RedisPool, prefix: &str) -> Self {
        SpendLedger {
            store: SpendStore::Redis(pool),
            prefix: prefix.to_owned(),
        }
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}:budget:{{{key}}}", self.prefix)
    }

    /// What `key` spent in its current window.
    pub async fn spent(&self, key: &str, window: Duration) -> Result<f64> {
        match &self.store {
            SpendStore::Local(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(match m.get(key) {
                    Some((v, start)) if start.elapsed() < window => *v,
                    Some(_) => {
                        m.remove(key);
                        0.0
                    }
                    None => 0.0,
                })
            }
            SpendStore::Redis(pool) => {
                let v: Option<String> = pool
                    .query(redis::cmd("GET").arg(self.redis_key(key)).clone())
                    .await?;
                Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0.0))
            }
        }
    }

    /// Adds `cost` to `key`'s spend (a new window starts when the last one ended).
    pub async fn add(&self, key: &str, cost: f64, window: Duration) -> Result<()> {
        match &self.store {
            SpendStore::Local(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let e = m.entry(key.to_owned()).or_insert((0.0, Instant::now()));
                if e.1.elapsed() >= window {
                    *e = (0.0, Instant::now());
                }
                e.0 += cost;
                Ok(())
            }
            SpendStore::Redis(pool) => {
                let script = redis::Script::new(ADD_SPEND);
                let ms = window.as_millis().max(1).to_string();
                let _: String = pool
                    .eval(
                        &script,
                        &[self.redis_key(key)],
                        &[format!("{cost:.12}"), ms],
                    )
                    .await?;
                Ok(())
            }
        }
    }
}

/// The error of a call refused by a budget (LiteLLM's wording).
pub fn budget_exceeded(spent: f64, max_budget: f64, whose: &str) -> Error {
    Error::new(
        ErrorKind::BudgetExceeded,
        format!("Budget has been exceeded{whose}! Current cost: {spent}, Max budget: {max_budget}"),
    )
}

/// The spend budget hook.
#[derive(Debug)]
pub struct BudgetHook {
    max_budget: f64,
    window: Duration,
    scope: BudgetScope,
    ledger: SpendLedger,
}

impl BudgetHook {
    pub fn local(max_budget: f64, window: Duration, scope: BudgetScope) -> Self {
        BudgetHook {
            max_budget,
            window,
            scope,
            ledger: SpendLedger::local(),
        }
    }

    /// Spend shared through Redis under `prefix` (hash-tagged per scope key).
    pub fn redis(
        max_budget: f64,
        window: Duration,
        scope: BudgetScope,
        pool: RedisPool,
        prefix: &str,
    ) -> Self {
        BudgetHook {
            max_budget,
            window,
            scope,
            ledger: SpendLedger::redis(pool, prefix),
        }
    }

    fn key(&self, req: &ChatRequest) -> String {
        match self.scope {
            BudgetScope::Global => "global".to_owned(),
            BudgetScope::User => format!(
                "user:{}",
                req.params.get("user").and_then(Value::as_str).unwrap_or("")
            ),
        }
    }

    /// The current spend of the global scope (or of one user), for reporting.
    pub async fn current(&self, user: Option<&str>) -> Result<f64> {
        let key = match (self.scope, user) {
            (BudgetScope::User, Some(u)) => format!("user:{u}"),
            (BudgetScope::User, None) => "user:".to_owned(),
            (BudgetScope::Global, _) => "global".to_owned(),
        };
        self.ledger.spent(&key, self.window).await
    }
}

impl Hook for BudgetHook {
    fn name(&self) -> &str {
        "budget"
    }

    fn priority(&self) -> i32 {
        -100
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::Closed
    }

    fn pre<'a>(
        &'a self,
        _ctx: &'a mut HookContext,
        req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, Result<Pre>> {
        Box::pin(async move {
            let key = self.key(req);
            let spent = self.ledger.spent(&key, self.window).await?;
            if spent >= self.max_budget {
                let mut e = budget_exceeded(spent, self.max_budget, "");
                e.model = Some(req.model.clone());
                return Ok(Pre::Reject(e));
            }
            Ok(Pre::Continue)
        })
    }

    fn post<'a>(
        &'a self,
        ctx: &'a HookContext,
        outcome: &'a mut Result<ChatCompletion>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Ok(resp) = outcome else { return Ok(()) };
            let Some(usage) = resp.usage.as_ref() else {
                return Ok(());
            };
            let cost = match ctx.cost {
                Some(c) => c,
                None => pricing::cost(None, &ctx.model_group, usage)
                    .or_else(|| pricing::cost(None, &resp.model, usage))
                    .map_or(0.0, |c| c.total()),
            };
            if cost > 0.0 {
                let user = ctx.caller.as_deref().unwrap_or("");
                let key = match self.scope {
                    BudgetScope::Global => "global".to_owned(),
                    BudgetScope::User => format!("user:{user}"),
                };
                self.ledger.add(&key, cost, self.window).await?;
            }
            Ok(())
        })
    }
}

/// Fields whose values are replaced wholesale.
const SECRET_FIELDS: &[&str] = &[
    "api_key",
    "authorization",
    "api-key",
    "x-api-key",
    "password",
    "secret",
    "token",
    "aws_secret_access_key",
];

/// Replaces credential-looking words in a text.
pub fn redact_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut redact_next = false;
    for (i, word) in s.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
        let looks_secret = redact_next
            || (w.starts_with("sk-") && w.len() >= 12)
            || (w.starts_with("AKIA") && w.len() >= 16)
            || (w.starts_with("ghp_") && w.len() >= 20)
            || (w.starts_with("xoxb-") && w.len() >= 12);
        redact_next = w.eq_ignore_ascii_case("bearer");
        if looks_secret && !w.is_empty() {
            out.push_str(&word.replace(w, "[REDACTED]"));
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Redacts a JSON value: secret-named fields, and credential-looking words in strings.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact_text(s)),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let secret = SECRET_FIELDS.iter().any(|f| k.eq_ignore_ascii_case(f));
                    (
                        k.clone(),
                        if secret {
                            Value::String("[REDACTED]".into())
                        } else {
                            redact(v)
                        },
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Writes one redacted JSON line per call to a file.
#[derive(Debug)]
pub struct RequestLog {
    file: Mutex<std::fs::File>,
    requests: Mutex<HashMap<String, Value>>,
}

impl RequestLog {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cannot open the request log {}: {e}", path.display()),
                )
            })?;
        Ok(RequestLog {
            file: Mutex::new(file),
            requests: Mutex::new(HashMap::new()),
        })
    }

    fn write(&self, line: &Value) -> Result<()> {
        let mut f = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        writeln!(f, "{line}")
            .map_err(|e| Error::new(ErrorKind::Internal, format!("request log: {e}")))
    }
}

impl Hook for RequestLog {
    fn name(&self) -> &str {
        "request_log"
    }

    fn priority(&self) -> i32 {
        100
    }

    fn pre<'a>(
        &'a self,
        ctx: &'a mut HookContext,
        req: &'a mut ChatRequest,
    ) -> BoxFuture<'a, Result<Pre>> {
        Box::pin(async move {
            let entry = json!({
                "model": req.model,
                "messages": redact(&Value::Array(req.messages.clone())),
                "params": redact(&Value::Object(req.params.clone())),
            });
            self.requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ctx.request_id.clone(), entry);
            Ok(Pre::Continue)
        })
    }

    fn post<'a>(
        &'a self,
        ctx: &'a HookContext,
        outcome: &'a mut Result<ChatCompletion>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let request = self
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&ctx.request_id)
                .unwrap_or(Value::Null);
            let mut line = Map::new();
            line.insert("request_id".into(), json!(ctx.request_id));
            line.insert(
                "latency_ms".into(),
                json!(ctx.started.elapsed().as_secs_f64() * 1000.0),
            );
            line.insert("request".into(), request);
            line.insert("stream".into(), json!(ctx.stream));
            match outcome {
                Ok(r) => {
                    line.insert("status".into(), json!("success"));
                    line.insert(
                        "response".into(),
                        redact(&serde_json::to_value(&*r).unwrap_or(Value::Null)),
                    );
                }
                Err(e) => {
                    line.insert("status".into(), json!("failure"));
                    line.insert(
                        "error".into(),
                        json!({"kind": e.kind.code(), "message": redact_text(&e.message)}),
                    );
                }
            }
            self.write(&Value::Object(line))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_text("my key is sk-abcdef1234567890, ok"),
            "my key is [REDACTED], ok"
        );
        assert_eq!(
            redact_text("Authorization: Bearer abc.def.ghi"),
            "Authorization: Bearer [REDACTED]"
        );
        assert_eq!(redact_text("AKIAABCDEFGHIJKLMNOP here"), "[REDACTED] here");
        assert_eq!(redact_text("nothing to see"), "nothing to see");
        let v = redact(
            &json!({"api_key": "x", "nested": [{"Authorization": "Bearer y"}], "note": "sk-1234567890abcd"}),
        );
        assert_eq!(
            v,
            json!({"api_key": "[REDACTED]", "nested": [{"Authorization": "[REDACTED]"}], "note": "[REDACTED]"})
        );
    }

    #[tokio::test]
    async fn local_budget_refuses_after_the_limit() {
        let hook = BudgetHook::local(0.001, Duration::from_secs(60), BudgetScope::Global);
        let mut ctx = HookContext::new("r", "gpt-4o", false);
        let mut req = ChatRequest::new("gpt-4o", vec![json!({"role": "user", "content": "hi"})]);
        assert!(matches!(
            hook.pre(&mut ctx, &mut req).await.unwrap(),
            Pre::Continue
        ));
        let resp: ChatCompletion = serde_json::from_value(json!({
            "model": "gpt-4o", "choices": [],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}
        }))
        .unwrap();
        let mut outcome = Ok(resp);
        hook.post(&ctx, &mut outcome).await.unwrap();
        assert!((hook.current(None).await.unwrap() - 0.0025).abs() < 1e-12);
        match hook.pre(&mut ctx, &mut req).await.unwrap() {
            Pre::Reject(e) => assert_eq!(e.kind, ErrorKind::BudgetExceeded),
            other => panic!("{other:?}"),
        }
    }
}
