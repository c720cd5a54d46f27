//! `llmux serve`: the engine behind an OpenAI-compatible HTTP API (feature `server`).
//!
//! Owns the listener, the live configuration and its reloads, and shutdown:
//! - [`Gateway`] holds the live config ([`Live`]: router, keys, limits, hooks) behind a lock
//!   that a reload swaps whole, plus what outlives reloads: the shared state (routing stats,
//!   the limiter, Redis) and the metrics. In-flight requests keep the `Live` they started with.
//! - [`run`] binds, serves HTTP/1.1 and h2c, watches the config file, and on SIGTERM / SIGINT
//!   stops accepting, lets in-flight requests and streams finish up to
//!   `server.shutdown_timeout`, then returns.
//!
//! Routes live in [`routes`], auth in [`auth`], error bodies in [`errors`], the SSE writer in
//! [`sse`], metrics in [`metrics`].

pub mod auth;
pub mod body;
pub mod errors;
pub mod metrics;
pub mod routes;
pub mod sse;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::cache::{CacheBackend, CacheHook, CacheSettings, MemoryCache, RedisCache};
use crate::config::file::{CacheConfig, GatewayConfig, ServerSettings, TeamBudget, VirtualKey};
use crate::config::{self, SharedState};
use crate::error::{Error, Result};
use crate::hooks;
use crate::hooks::builtin::{BudgetHook, BudgetScope, RequestLog, SpendLedger};
use crate::limiter::{MediaWeights, RateLimitConfig};
use crate::router::Router;
use crate::telemetry::otlp::OtlpLayer;
use crate::telemetry::OtlpConfig;

/// How long a stats lease lives in Redis (a crashed process's in-flight counts expire).
const STATS_LEASE: Duration = Duration::from_secs(120);

/// Builds hooks from `litellm_settings.callbacks` names (`module.attribute`). The Python
/// package provides one; the Rust binary has none and refuses such a config.
pub type HookLoader = Arc<dyn Fn(&[String]) -> Result<Vec<Arc<dyn hooks::Hook>>> + Send + Sync>;

/// One complete configuration, live until a reload replaces it.
#[derive(Debug)]
pub struct Live {
    pub router: Arc<Router>,
    pub groups: HashSet<String>,
    /// Model groups in config order (for `/v1/models`).
    pub group_list: Vec<String>,
    /// Virtual keys by SHA-256 digest.
    pub keys: HashMap<[u8; 32], Arc<VirtualKey>>,
    /// Team budgets by team id.
    pub teams: HashMap<String, TeamBudget>,
    pub master_digest: Option<[u8; 32]>,
    pub rate_limit: Option<RateLimitConfig>,
    /// How images and audio count toward tpm limits (`rate_limit.tokens_per_*`).
    pub media: MediaWeights,
    pub hooks: Option<Arc<hooks::Pipeline>>,
    pub cache: Option<Arc<CacheHook>>,
    pub drop_params: bool,
    pub server: ServerSettings,
    pub loaded_at: SystemTime,
}

/// The global budget's settings (max USD, window) and its hook.
type GlobalBudget = (f64, Duration, Arc<dyn hooks::Hook>);

/// The gateway: the live config and what outlives reloads.
pub struct Gateway {
    live: RwLock<Arc<Live>>,
    pub shared: SharedState,
    /// Spend per key and team (in Redis when the gateway has one), kept across reloads.
    pub spend: SpendLedger,
    /// Limits placement fixed at start.
    placement: config::LimitPlacement,
    redis_source: Option<Value>,
    telemetry: Option<OtlpConfig>,
    pub metrics: metrics::Metrics,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    /// The digest of the file text last applied or refused (the watcher reloads on change).
    file_digest: Mutex<Option<[u8; 32]>>,
    pub last_reload_error: Mutex<Option<String>>,
    cache_cfg: Mutex<Option<(CacheConfig, Arc<CacheHook>)>>,
    budget_cfg: Mutex<Option<GlobalBudget>>,
    log_cfg: Mutex<Option<(PathBuf, Arc<dyn hooks::Hook>)>>,
    hook_loader: Option<HookLoader>,
    pub shutting_down: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl Gateway {
    /// Builds the gateway from a parsed config (connecting to Redis when configured).
    pub async fn new(
        cfg: GatewayConfig,
        config_path: Option<PathBuf>,
        hook_loader: Option<HookLoader>,
    ) -> Result<Arc<Self>> {
        let placement =
            config::limit_placement(cfg.rate_limit.as_ref(), cfg.rate_limit_explicit_local);
        let shared = config::shared_state(cfg.redis.as_ref(), &placement, STATS_LEASE).await?;
        let gw = Gateway {
            live: RwLock::new(Arc::new(Live {
                router: Arc::new(Router::new(
                    Vec::new(),
                    Default::default(),
                    shared.stats.clone(),
                    Default::default(),
                )?),
                groups: HashSet::new(),
                group_list: Vec::new(),
                keys: HashMap::new(),
                teams: HashMap::new(),
                master_digest: None,
                rate_limit: None,
                media: MediaWeights::default(),
                hooks: None,
                cache: None,
                drop_params: false,
                server: ServerSettings::default(),
                loaded_at: SystemTime::now(),
            })),
            spend: match &shared.redis {
                Some(pool) => SpendLedger::redis(pool.clone(), "llmux"),
                None => SpendLedger::local(),
            },
            shared,
            placement,
            redis_source: cfg.redis_source.clone(),
            telemetry: cfg.telemetry.clone(),
            metrics: metrics::Metrics::default(),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            file_digest: Mutex::new(None),
            last_reload_error: Mutex::new(None),
            cache_cfg: Mutex::new(None),
            budget_cfg: Mutex::new(None),
            log_cfg: Mutex::new(None),
            hook_loader,
            shutting_down: AtomicBool::new(false),
        };
        let live = gw.build_live(cfg)?;
        gw.swap(live);
        Ok(Arc::new(gw))
    }

    /// The live config (a request holds it for its whole life).
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, live: Live) {
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
    }

    fn cache_hook(&self, cfg: Option<&CacheConfig>) -> Option<Arc<CacheHook>> {
        let mut slot = self
            .cache_cfg
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(cfg) = cfg else {
            *slot = None;
            return None;
        };
        // The same cache config keeps its entries across reloads.
        if let Some((old, hook)) = slot.as_ref() {
            if old == cfg {
                return Some(hook.clone());
            }
        }
        let backend: Arc<dyn CacheBackend> = match (&self.shared.redis, cfg.redis) {
            (Some(pool), true) => Arc::new(RedisCache::new(
                pool.config().clone(),
                crate::cache::DEFAULT_PREFIX,
            )),
            _ => Arc::new(MemoryCache::new(cfg.max_entries)),
        };
        let hook = Arc::new(CacheHook::new(
            backend,
            CacheSettings {
                mode: cfg.mode,
                namespace: cfg.namespace.clone(),
                default_ttl: cfg.ttl,
            },
        ));
        *slot = Some((cfg.clone(), hook.clone()));
        Some(hook)
    }

    /// The global budget hook, kept (with its spend) while its settings do not change.
    fn budget_hook(&self, max: f64, window: Duration) -> Arc<dyn hooks::Hook> {
        let mut slot = self
            .budget_cfg
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((m, w, hook)) = slot.as_ref() {
            if *m == max && *w == window {
                return hook.clone();
            }
        }
        let hook: Arc<dyn hooks::Hook> = Arc::new(match &self.shared.redis {
            Some(pool) => {
                BudgetHook::redis(max, window, BudgetScope::Global, pool.clone(), "llmux")
            }
            None => BudgetHook::local(max, window, BudgetScope::Global),
        });
        *slot = Some((max, window, hook.clone()));
        hook
    }

    /// The request log hook for `path`, kept open across reloads.
    fn request_log(&self, path: &std::path::Path) -> Result<Arc<dyn hooks::Hook>> {
        let mut slot = self.log_cfg.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, hook)) = slot.as_ref() {
            if p == path {
                return Ok(hook.clone());
            }
        }
        let hook: Arc<dyn hooks::Hook> = Arc::new(RequestLog::open(path)?);
        *slot = Some((path.to_owned(), hook.clone()));
        Ok(hook)
    }

    fn build_live(&self, cfg: GatewayConfig) -> Result<Live> {
        let placement =
            config::limit_placement(cfg.rate_limit.as_ref(), cfg.rate_limit_explicit_local);
        if placement != self.placement || cfg.redis_source != self.redis_source {
            return Err(Error::invalid_config(
                "redis / rate_limit.distributed / rate_limit.on_redis_failure / rate_limit.prefetch_ms changed: these need a restart",
            ));
        }
        if cfg.telemetry != self.telemetry {
            return Err(Error::invalid_config(
                "telemetry changed: OpenTelemetry export is set up at start and needs a restart",
            ));
        }
        let mut group_list = Vec::new();
        for d in &cfg.deployments {
            if !group_list.contains(&d.group) {
                group_list.push(d.group.clone());
            }
        }
        let media = cfg.rate_limit.as_ref().map(|c| c.media).unwrap_or_default();
        let router = Router::new(
            cfg.deployments,
            cfg.settings,
            self.shared.stats.clone(),
            cfg.budget,
        )?
        .with_limits(self.shared.limiter.clone(), None)
        .with_media(media);
        let mut all: Vec<Arc<dyn hooks::Hook>> = Vec::new();
        if !cfg.callbacks.is_empty() {
            let Some(load) = &self.hook_loader else {
                return Err(Error::invalid_config(
                    "litellm_settings.callbacks: Python callbacks need the Python package; start the gateway with `llmux serve` from `pip install llmux`",
                ));
            };
            all.extend(load(&cfg.callbacks)?);
        }
        if let Some((max, window)) = cfg.global_budget {
            let hook = self.budget_hook(max, window);
            all.push(hook);
        }
        if let Some(path) = &cfg.server.request_log {
            all.push(self.request_log(path)?);
        }
        let cache = self.cache_hook(cfg.cache.as_ref());
        if let Some(c) = &cache {
            all.push(c.clone());
        }
        let hooks = (!all.is_empty()).then(|| Arc::new(hooks::Pipeline::new(all)));
        Ok(Live {
            router: Arc::new(router),
            groups: group_list.iter().cloned().collect(),
            group_list,
            teams: cfg
                .teams
                .into_iter()
                .map(|t| (t.team_id.clone(), t))
                .collect(),
            keys: cfg
                .keys
                .into_iter()
                .map(|k| (k.digest, Arc::new(k)))
                .collect(),
            master_digest: cfg
                .master_key
                .as_ref()
                .map(|k| crate::config::file::key_digest(k.expose())),
            rate_limit: cfg.rate_limit.filter(RateLimitConfig::is_active),
            media,
            hooks,
            cache,
            drop_params: cfg.drop_params,
            server: cfg.server,
            loaded_at: SystemTime::now(),
        })
    }

    /// Applies a config text: all of it, or nothing (the old config stays live).
    pub fn apply(&self, text: &str) -> Result<()> {
        let cfg = GatewayConfig::parse(text)?;
        let live = self.build_live(cfg)?;
        self.swap(live);
        Ok(())
    }

    /// Reloads the config file. `force`: even when its text did not change.
    pub async fn reload(&self, force: bool) -> Result<bool> {
        let Some(path) = &self.config_path else {
            return Err(Error::invalid_config(
                "the gateway was not started from a config file",
            ));
        };
        let _one_at_a_time = self.reload_lock.lock().await;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Error::invalid_config(format!("cannot read {}: {e}", path.display())))?;
        let d = digest(&text);
        {
            let mut last = self
                .file_digest
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !force && *last == Some(d) {
                return Ok(false);
            }
            *last = Some(d);
        }
        match self.apply(&text) {
            Ok(()) => {
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                *self
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                tracing::info!(path = %path.display(), "config reloaded");
                Ok(true)
            }
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                *self
                    .last_reload_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.message.clone());
                tracing::error!(path = %path.display(), error = %e.message, "config reload refused; the previous config stays live");
                Err(e)
            }
        }
    }

    fn note_file(&self, text: &str) {
        *self
            .file_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(digest(text));
    }

    /// Checks the file every `interval` and reloads it when its text changed.
    async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        while !self.shutting_down.load(Ordering::Relaxed) {
            tick.tick().await;
            // Errors are logged and counted by `reload`.
            let _ = self.reload(false).await;
        }
    }
}

/// How to start the gateway.
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub config_path: Option<PathBuf>,
    /// The config text when there is no file (tests, embedded use).
    pub config_text: Option<String>,
    /// Overrides `server.host` (default 0.0.0.0).
    pub host: Option<String>,
    /// Overrides `server.port` (default 4000; 0 picks a free port).
    pub port: Option<u16>,
    /// Loads `litellm_settings.callbacks` (the Python package sets it).
    pub hook_loader: Option<HookLoader>,
}

/// A future that resolves on SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A bound gateway, ready to serve.
pub struct Bound {
    pub gateway: Arc<Gateway>,
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// Reads the config, builds the gateway and binds its address.
pub async fn bind(opts: &ServeOptions) -> Result<Bound> {
    let text = match (&opts.config_text, &opts.config_path) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => tokio::fs::read_to_string(p).await.map_err(|e| {
            Error::invalid_config(format!("cannot read config {}: {e}", p.display()))
        })?,
        (None, None) => String::new(),
    };
    let cfg = GatewayConfig::parse(&text)?;
    init_logging(cfg.debug_logs, cfg.telemetry.as_ref());
    let host = opts
        .host
        .clone()
        .or_else(|| cfg.server.host.clone())
        .unwrap_or_else(|| "0.0.0.0".to_owned());
    let port = opts.port.or(cfg.server.port).unwrap_or(4000);
    // A server must not fetch callers' image URLs inside its own network.
    crate::providers::media::block_private_networks(!cfg.server.allow_private_image_urls);
    let gateway = Gateway::new(cfg, opts.config_path.clone(), opts.hook_loader.clone()).await?;
    gateway.note_file(&text);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| Error::invalid_config(format!("host must be an IP address, got '{host}'")))?;
    let listener = TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .map_err(|e| Error::invalid_config(format!("cannot listen on {host}:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::invalid_config(format!("cannot read the bound address: {e}")))?;
    let live = gateway.live();
    if live.master_digest.is_none() {
        tracing::warn!(
            "no general_settings.master_key: the gateway accepts requests without a key"
        );
    }
    tracing::info!(%addr, models = live.group_list.len(), keys = live.keys.len(), "llmux gateway listening");
    Ok(Bound {
        gateway,
        listener,
        addr,
    })
}

/// Serves until `shutdown` resolves, then drains in-flight requests (up to
/// `server.shutdown_timeout`).
pub async fn serve(bound: Bound, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let Bound {
        gateway, listener, ..
    } = bound;
    let watch_every = gateway.live().server.watch_interval;
    let watcher = match (watch_every, &gateway.config_path) {
        (Some(every), Some(_)) => Some(tokio::spawn(gateway.clone().watch(every))),
        _ => None,
    };
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
    // Connection tasks, so that those still running at the shutdown deadline are aborted.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let service = hyper::service::service_fn(move |req| routes::handle(gw.clone(), req));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let fut = graceful.watch(conn);
        conns.spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    gateway.shutting_down.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        w.abort();
    }
    let deadline = gateway.live().server.shutdown_timeout;
    tracing::info!(
        in_flight = gateway.metrics.in_flight.load(Ordering::Relaxed),
        "shutting down: finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(deadline) => tracing::warn!(
            in_flight = gateway.metrics.in_flight.load(Ordering::Relaxed),
            "shutdown deadline passed; closing what is left"
        ),
    }
    conns.abort_all();
    Ok(())
}

/// Binds, writes `LISTENING <port>` on stdout (for whoever started the process), and serves
/// until SIGTERM or SIGINT.
pub async fn run(opts: ServeOptions) -> Result<()> {
    let bound = bind(&opts).await?;
    announce(bound.addr);
    serve(bound, termination()).await
}

/// Writes `LISTENING <port>` on stdout: how a parent process learns a port picked with 0.
pub fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LISTENING {}", addr.port());
    let _ = out.flush();
}

/// Sets up JSON logs on stderr once per process (`LLMUX_LOG` filters, default `info`), and the
/// OTLP span exporter when `telemetry` is configured. Call it on the runtime.
pub fn init_logging(debug: bool, telemetry: Option<&OtlpConfig>) {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::prelude::*;

    let default = if debug { "debug" } else { "info" };
    let mut env = EnvFilter::try_from_env("LLMUX_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    if let Ok(d) = format!("{}=off", crate::telemetry::OTEL_TARGET).parse() {
        env = env.add_directive(d);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .with_span_list(false)
        .with_filter(env);
    let otel = telemetry.map(|c| {
        let (layer, _stats) = OtlpLayer::start(c.clone());
        layer.with_filter(filter_fn(OtlpLayer::wants))
    });
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_err()
        && telemetry.is_some()
    {
        tracing::warn!("a log subscriber was already installed: OpenTelemetry export is off");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
model_list:
  - model_name: m
    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1', api_key: k}
litellm_settings:
  callbacks: [my_hooks.handler]
";

    #[tokio::test]
    async fn python_callbacks_need_a_loader() {
        let cfg = GatewayConfig::parse(CONFIG).unwrap();
        let e = Gateway::new(cfg, None, None).await.unwrap_err();
        assert!(
            e.message.contains("need the Python package"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_reload_is_all_or_nothing() {
        let ok = CONFIG.replace("litellm_settings:\n  callbacks: [my_hooks.handler]\n", "");
        let gw = Gateway::new(GatewayConfig::parse(&ok).unwrap(), None, None)
            .await
            .unwrap();
        assert!(gw
            .apply(&ok.replace("model_name: m", "model_name: n"))
            .is_ok());
        assert!(gw.live().groups.contains("n"));
        let e = gw
            .apply(&format!("{ok}\nredis: {{url: 'redis://127.0.0.1:1'}}\n"))
            .unwrap_err();
        assert!(e.message.contains("need a restart"), "{}", e.message);
        assert!(gw.apply("model_list: 7").is_err());
        assert!(
            gw.live().groups.contains("n"),
            "a refused config leaves the old one live"
        );
    }
}
