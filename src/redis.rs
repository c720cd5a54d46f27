//! Redis connections: the one place in LLMux that builds them.
//!
//! This module owns the choice of topology ([`RedisTarget`]: one server, Redis Cluster, or a
//! Sentinel-managed master), the connection deadlines ([`RedisConfig`]), and the cheap-to-clone
//! handle every shared-state backend uses ([`RedisPool`]), with the mapping of Redis failures
//! onto the crate's [`ErrorKind`](crate::ErrorKind)s. Nothing else in the crate opens a Redis
//! connection.
//!
//! Why redis-rs (the `redis` crate) and not fred (see `reliability.md` §3):
//! - `redis::Script` sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed server),
//!   loads the script and retries by itself, so scripts cost one round trip in the steady state;
//! - `aio::ConnectionManager` multiplexes one connection and reconnects in the background after
//!   the server goes away, so a restarted Redis is picked up without restarting the process;
//! - `cluster-async` routes each key to its slot's primary (keys are hash-tagged by callers);
//! - `sentinel` resolves the current master of a Sentinel group.
//!
//! What we add on top: every connect is bounded by [`RedisConfig::connect_timeout`] and every
//! call by [`RedisConfig::command_timeout`] with `tokio::time::timeout`, because the crate can
//! hang on connect (redis-rs #392) and its own timeouts do not cover every path. A call that
//! runs out of time fails with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout); it never hangs.
//!
//! Sentinel: the master is resolved through the sentinels at connect. redis-rs does not follow
//! failover events on live connections (redis-rs #1438), so the pool asks the sentinels again
//! every [`SENTINEL_POLL_INTERVAL`] (for as long as a clone of the pool lives), and at once when
//! a call fails in a way a failover explains (the socket dropped or was refused, the call timed
//! out, or the old master answers `READONLY` as a replica); when the master moved, a connection
//! to the new one is swapped in. Until then calls go to the old address: they fail (and callers
//! degrade as for any Redis error), or, for up to one poll interval while the old master has not
//! been demoted yet, land on it and are lost with it, as Redis's asynchronous replication loses
//! them anyway. The master is reached with the sentinel URLs' TLS mode and no credentials:
//! password-protected masters behind Sentinel are not supported yet.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelServerType};
use ::redis::{Client, Cmd, FromRedisValue, RedisError, Script, ServerErrorKind};
use futures_util::Future;

use crate::error::{Error, ErrorKind, Result};

/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one command or script call, round trip included.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a Sentinel pool asks the sentinels where the master is.
pub const SENTINEL_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    Url(String),
    /// Redis Cluster: the URLs of some of its nodes (the others are discovered).
    Cluster(Vec<String>),
    /// A Sentinel group: the master's name and the URLs of the sentinels (not of Redis nodes).
    Sentinel {
        master_name: String,
        nodes: Vec<String>,
    },
}

impl fmt::Debug for RedisTarget {
    // URLs may carry passwords: only their redacted form is ever printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &[String]| v.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        match self {
            RedisTarget::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            RedisTarget::Cluster(nodes) => f.debug_tuple("Cluster").field(&redact(nodes)).finish(),
            RedisTarget::Sentinel { master_name, nodes } => f
                .debug_struct("Sentinel")
                .field("master_name", master_name)
                .field("nodes", &redact(nodes))
                .finish(),
        }
    }
}

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Bound on establishing a connection (default 1 s).
    pub connect_timeout: Duration,
    /// Bound on one call, from sending to the answer (default 250 ms).
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// A config for `target` with the default deadlines.
    pub fn new(target: RedisTarget) -> Self {
        RedisConfig {
            target,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl RedisConfig {
    /// The keys [`RedisConfig::from_json`] accepts.
    pub const KEYS: [&'static str; 11] = [
        "url",
        "host",
        "port",
        "username",
        "password",
        "db",
        "tls",
        "cluster_nodes",
        "sentinel",
        "connect_timeout",
        "command_timeout",
    ];

    /// Reads a `redis` config block: `url`; or `host` / `port` / `username` / `password` /
    /// `db` / `tls`; or `cluster_nodes` (URLs or `host:port`); or `sentinel: {master_name,
    /// nodes}`; plus `connect_timeout` / `command_timeout` in seconds. Anything else, or a value
    /// of the wrong type, is an `invalid_config` error naming the key.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        use serde_json::Value;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid_config("redis must be a mapping"))?;
        for k in obj.keys() {
            if !Self::KEYS.contains(&k.as_str()) {
                return Err(Error::invalid_config(format!(
                    "redis.{k}: unknown key (known: {})",
                    Self::KEYS.join(", ")
                )));
            }
        }
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let text = |k: &str| -> Result<Option<String>> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(Error::invalid_config(format!("redis.{k} must be a string"))),
            }
        };
        let tls = match get("tls") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::invalid_config("redis.tls must be true or false")),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let auth = match (text("username")?, text("password")?) {
            (None, None) => String::new(),
            (u, p) => format!(
                "{}:{}@",
                percent(u.as_deref().unwrap_or("")),
                percent(p.as_deref().unwrap_or(""))
            ),
        };
        let db = match get("db") {
            None => String::new(),
            Some(v) => match v.as_u64() {
                Some(n) => format!("/{n}"),
                None => return Err(Error::invalid_config("redis.db must be a whole number")),
            },
        };
        let node_url = |n: &str| {
            if n.contains("://") {
                n.to_owned()
            } else {
                format!("{scheme}://{auth}{n}{db}")
            }
        };
        let list = |k: &str, v: &Value| -> Result<Vec<String>> {
            let items = v
                .as_array()
                .ok_or_else(|| Error::invalid_config(format!("redis.{k} must be a list")))?;
            items
                .iter()
                .map(|i| {
                    i.as_str().map(node_url).ok_or_else(|| {
                        Error::invalid_config(format!("redis.{k} must hold strings"))
                    })
                })
                .collect()
        };
        let target = if let Some(nodes) = get("cluster_nodes") {
            RedisTarget::Cluster(list("cluster_nodes", nodes)?)
        } else if let Some(sentinel) = get("sentinel") {
            let master_name = sentinel
                .get("master_name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid_config("redis.sentinel.master_name is required"))?
                .to_owned();
            let nodes = sentinel
                .get("nodes")
                .ok_or_else(|| Error::invalid_config("redis.sentinel.nodes is required"))?;
            // Sentinels are reached without the master's credentials.
            let nodes = nodes
                .as_array()
                .ok_or_else(|| Error::invalid_config("redis.sentinel.nodes must be a list"))?
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(|n| {
                            if n.contains("://") {
                                n.to_owned()
                            } else {
                                format!("{scheme}://{n}")
                            }
                        })
                        .ok_or_else(|| {
                            Error::invalid_config("redis.sentinel.nodes must hold strings")
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            RedisTarget::Sentinel { master_name, nodes }
        } else if let Some(url) = text("url")? {
            RedisTarget::Url(url)
        } else {
            let host = text("host")?.unwrap_or_else(|| "127.0.0.1".to_owned());
            let port = text("port")?.unwrap_or_else(|| "6379".to_owned());
            RedisTarget::Url(node_url(&format!("{host}:{port}")))
        };
        let mut cfg = RedisConfig::new(target);
        for (k, slot) in [
            ("connect_timeout", &mut cfg.connect_timeout),
            ("command_timeout", &mut cfg.command_timeout),
        ] {
            if let Some(v) = get(k) {
                match v.as_f64() {
                    Some(s) if s > 0.0 && Duration::try_from_secs_f64(s).is_ok() => {
                        *slot = Duration::try_from_secs_f64(s).unwrap_or(*slot)
                    }
                    _ => {
                        return Err(Error::invalid_config(format!(
                            "redis.{k} must be a positive number of seconds"
                        )))
                    }
                }
            }
        }
        Ok(cfg)
    }
}

/// Percent-encodes a URL user-info part.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A handle on Redis: cheap to clone, safe to share, every call bounded by a deadline.
#[derive(Clone)]
pub struct RedisPool {
    conn: Conn,
    config: Arc<RedisConfig>,
    command_timeout: Duration,
    /// Redacted description of the target, for messages.
    label: Arc<str>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelMaster>),
}

/// The current master of a Sentinel group and how to find the next one.
struct SentinelMaster {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The master's address and a connection to it.
    current: RwLock<(String, ConnectionManager)>,
    /// A background re-resolution is running.
    resolving: AtomicBool,
    manager_config: ConnectionManagerConfig,
    connect_timeout: Duration,
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
            Conn::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisPool")
            .field("kind", &kind)
            .field("target", &self.label)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl RedisPool {
    /// Connects to `cfg.target`, within `cfg.connect_timeout`.
    ///
    /// A URL that does not parse is [`ErrorKind::InvalidConfig`]; a server that cannot be
    /// reached is [`ErrorKind::Connection`], or [`ErrorKind::Timeout`] when it does not answer
    /// in time.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self> {
        // Boxed: the connect future is kilobytes large. Inline, it would make the future of
        // every caller that may connect lazily (each rate-limit admission, each batch, each
        // cache lookup) as large, and copied on every spawn.
        Box::pin(Self::connect_now(cfg)).await
    }

    async fn connect_now(cfg: &RedisConfig) -> Result<Self> {
        let label: Arc<str> = describe(&cfg.target).into();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = match &cfg.target {
            RedisTarget::Url(url) => {
                let client = Client::open(url.as_str()).map_err(|e| config_error(&label, &e))?;
                let manager = deadline(
                    cfg.connect_timeout,
                    &label,
                    "connect",
                    ConnectionManager::new_with_config(client, manager_config),
                )
                .await?;
                Conn::Single(manager)
            }
            RedisTarget::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::invalid_config("redis cluster: no node URLs given"));
                }
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.command_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| config_error(&label, &e))?;
                let conn = deadline(
                    cfg.connect_timeout,
                    &label,
                    "connect",
                    client.get_async_connection(),
                )
                .await?;
                Conn::Cluster(conn)
            }
            RedisTarget::Sentinel { master_name, nodes } => {
                if nodes.is_empty() {
                    return Err(Error::invalid_config(
                        "redis sentinel: no sentinel URLs given",
                    ));
                }
                if master_name.is_empty() {
                    return Err(Error::invalid_config("redis sentinel: empty master name"));
                }
                let mut sentinels = SentinelClient::build(
                    nodes.iter().map(String::as_str).collect(),
                    master_name.as_str(),
                    None,
                    SentinelServerType::Master,
                )
                .map_err(|e| config_error(&label, &e))?;
                let current = deadline(
                    cfg.connect_timeout,
                    &label,
                    "resolve the master and connect",
                    resolve_master(&mut sentinels, manager_config.clone()),
                )
                .await?;
                let master = Arc::new(SentinelMaster {
                    sentinels: tokio::sync::Mutex::new(sentinels),
                    current: RwLock::new(current),
                    resolving: AtomicBool::new(false),
                    manager_config,
                    connect_timeout: cfg.connect_timeout,
                });
                watch_master(&master, label.clone());
                Conn::Sentinel(master)
            }
        };
        Ok(RedisPool {
            conn,
            config: Arc::new(cfg.clone()),
            command_timeout: cfg.command_timeout,
            label,
        })
    }

    /// Runs a script (EVALSHA, loading it and running it again after NOSCRIPT, as after a
    /// `SCRIPT FLUSH` or a restarted Redis) with the command deadline.
    ///
    /// With Redis Cluster every key must hash to one slot (hash-tag them); the call goes to
    /// that slot's primary.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T> {
        let mut cmd = evalsha(script, keys.len());
        cmd.arg(keys).arg(args);
        self.eval_cmd(script, &cmd).await
    }

    /// Runs a command made by [`evalsha`] (keys and arguments appended by the caller, written
    /// straight into the command), like [`RedisPool::eval`].
    pub async fn eval_cmd<T: FromRedisValue>(&self, script: &Script, cmd: &Cmd) -> Result<T> {
        async fn run<C: ::redis::aio::ConnectionLike, T: FromRedisValue>(
            c: &mut C,
            script: &Script,
            cmd: &Cmd,
        ) -> ::redis::RedisResult<T> {
            match cmd.query_async(c).await {
                Err(e)
                    if e.kind()
                        == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(c).await?;
                    cmd.query_async(c).await
                }
                other => other,
            }
        }
        match &self.conn {
            Conn::Single(manager) => {
                let mut c = manager.clone();
                self.bounded("script", run(&mut c, script, cmd)).await
            }
            Conn::Cluster(cluster) => {
                let mut c = cluster.clone();
                self.bounded("script", run(&mut c, script, cmd)).await
            }
            Conn::Sentinel(master) => {
                let mut c = master.connection();
                let out = self.bounded_raw(run(&mut c, script, cmd)).await;
                self.after_sentinel_call(master, "script", out)
            }
        }
    }

    /// Runs any command with the command deadline (tests, health checks).
    pub async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T> {
        match &self.conn {
            Conn::Single(manager) => {
                let mut c = manager.clone();
                self.bounded("command", cmd.query_async(&mut c)).await
            }
            Conn::Cluster(cluster) => {
                let mut c = cluster.clone();
                self.bounded("command", cmd.query_async(&mut c)).await
            }
            Conn::Sentinel(master) => {
                let mut c = master.connection();
                let out = self.bounded_raw(cmd.query_async(&mut c)).await;
                self.after_sentinel_call(master, "command", out)
            }
        }
    }

    /// The configured per-call deadline.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// How this pool was configured.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether this is a Redis Cluster (a script's keys must then share one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T> {
        match self.bounded_raw(fut).await {
            Ok(v) => Ok(v),
            Err(Failure::Deadline) => Err(timeout_error(&self.label, what, self.command_timeout)),
            Err(Failure::Redis(e)) => Err(classify(&self.label, what, &e)),
        }
    }

    async fn bounded_raw<T>(
        &self,
        fut: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> std::result::Result<T, Failure> {
        match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Redis(e)),
            Err(_) => Err(Failure::Deadline),
        }
    }

    /// Maps a Sentinel call's outcome, starting a master re-resolution when the failure may be
    /// a failover.
    fn after_sentinel_call<T>(
        &self,
        master: &Arc<SentinelMaster>,
        what: &str,
        out: std::result::Result<T, Failure>,
    ) -> Result<T> {
        match out {
            Ok(v) => Ok(v),
            Err(Failure::Deadline) => {
                master.re_resolve(self.label.clone());
                Err(timeout_error(&self.label, what, self.command_timeout))
            }
            Err(Failure::Redis(e)) => {
                if may_be_failover(&e) {
                    master.re_resolve(self.label.clone());
                }
                Err(classify(&self.label, what, &e))
            }
        }
    }
}

/// `EVALSHA <the script's SHA> <nkeys>`: append the keys, then the arguments, and run it with
/// [`RedisPool::eval_cmd`].
pub fn evalsha(script: &Script, nkeys: usize) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(nkeys);
    cmd
}

enum Failure {
    Deadline,
    Redis(RedisError),
}

impl SentinelMaster {
    fn connection(&self) -> ConnectionManager {
        // A ConnectionManager is a handle: a poisoned lock still holds a usable one.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn current_addr(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Asks the sentinels for the master again, in the background.
    fn re_resolve(self: &Arc<Self>, label: Arc<str>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(self);
        handle.spawn(async move { me.refresh(&label).await });
    }

    /// Asks the sentinels for the master and, when it moved, connects to the new one. One at a
    /// time; bounded by the connect timeout.
    async fn refresh(&self, label: &str) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let found = tokio::time::timeout(self.connect_timeout, async {
            let client = self.sentinels.lock().await.async_get_client().await?;
            let addr = client.get_connection_info().addr().to_string();
            if addr == self.current_addr() {
                return Ok(None);
            }
            let manager =
                ConnectionManager::new_with_config(client, self.manager_config.clone()).await?;
            Ok::<_, RedisError>(Some((addr, manager)))
        })
        .await;
        match found {
            Ok(Ok(Some((addr, manager)))) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (addr.clone(), manager);
                tracing::info!(target = %label, master = %addr, "redis sentinel: moved to the new master");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(target = %label, error = %classify(label, "resolve the master", &e), "redis sentinel: master re-resolution failed");
            }
            Err(_) => {
                tracing::warn!(target = %label, "redis sentinel: master re-resolution timed out");
            }
        }
        self.resolving.store(false, Ordering::Release);
    }
}

/// Re-resolves the master every [`SENTINEL_POLL_INTERVAL`] for as long as the pool lives.
fn watch_master(master: &Arc<SentinelMaster>, label: Arc<str>) {
    let weak = Arc::downgrade(master);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SENTINEL_POLL_INTERVAL).await;
            let Some(master) = weak.upgrade() else {
                break;
            };
            master.refresh(&label).await;
        }
    });
}

/// Asks the sentinels for the master's address and connects to it.
async fn resolve_master(
    sentinels: &mut SentinelClient,
    config: ConnectionManagerConfig,
) -> ::redis::RedisResult<(String, ConnectionManager)> {
    let client = sentinels.async_get_client().await?;
    let addr = client.get_connection_info().addr().to_string();
    Ok((
        addr,
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

/// Bounds a connect-time future.
async fn deadline<T>(
    limit: Duration,
    label: &str,
    what: &str,
    fut: impl Future<Output = ::redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(label, what, &e)),
        Err(_) => Err(timeout_error(label, what, limit)),
    }
}

/// Whether a master-side failure is explained by a failover (or a dead master).
fn may_be_failover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::ReadOnly)
        || e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::MasterDown)
}

fn timeout_error(label: &str, what: &str, limit: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("redis {label}: {what} took longer than {limit:?}"),
    )
}

fn config_error(label: &str, e: &RedisError) -> Error {
    Error::invalid_config(format!("redis {label}: {}", e.category()))
}

/// Maps a Redis failure onto the crate's taxonomy. Messages carry the error's category and
/// server code, never the URL's credentials.
fn classify(label: &str, what: &str, e: &RedisError) -> Error {
    use ::redis::ErrorKind as K;
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else {
        match e.kind() {
            K::InvalidClientConfig => ErrorKind::InvalidConfig,
            K::AuthenticationFailed | K::Server(ServerErrorKind::NoPerm) => {
                ErrorKind::Authentication
            }
            K::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            )
            | K::ClusterConnectionNotFound
            | K::MasterNameNotFoundBySentinel
            | K::NoValidReplicasFoundBySentinel
            | K::EmptySentinelList => ErrorKind::ServiceUnavailable,
            K::Io => ErrorKind::Connection,
            _ => ErrorKind::Internal,
        }
    };
    let detail = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        (None, _) => e.category().to_owned(),
    };
    Error::new(kind, format!("redis {label}: {what} failed: {detail}"))
}

/// `scheme://host:port/db` without user or password.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => "<unparsable url>".to_owned(),
    }
}

fn describe(target: &RedisTarget) -> String {
    match target {
        RedisTarget::Url(url) => redact_url(url),
        RedisTarget::Cluster(nodes) => format!(
            "cluster [{}]",
            nodes
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RedisTarget::Sentinel { master_name, nodes } => format!(
            "sentinel '{master_name}' [{}]",
            nodes
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_credentials() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/2"),
            "redis://host:6379/2"
        );
        assert_eq!(redact_url("rediss://:p@w@h:1"), "rediss://h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let t = RedisTarget::Url("redis://u:s3cret@h:1".into());
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn config_blocks() {
        use serde_json::json;
        let c = RedisConfig::from_json(
            &json!({"host": "h", "port": 7000, "password": "p@ss", "db": 2, "tls": true}),
        )
        .unwrap();
        assert_eq!(
            c.target,
            RedisTarget::Url("rediss://:p%40ss@h:7000/2".into())
        );
        assert!(!format!("{c:?}").contains("p%40ss"));
        let c = RedisConfig::from_json(
            &json!({"cluster_nodes": ["a:1", "redis://b:2"], "command_timeout": 0.05}),
        )
        .unwrap();
        assert_eq!(
            c.target,
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(c.command_timeout, Duration::from_millis(50));
        let c = RedisConfig::from_json(
            &json!({"sentinel": {"master_name": "m", "nodes": ["s:26379"]}}),
        )
        .unwrap();
        assert!(matches!(c.target, RedisTarget::Sentinel { .. }));
        for bad in [
            json!({"hots": "x"}),
            json!({"db": "two"}),
            json!({"sentinel": {"nodes": []}}),
            json!({"command_timeout": -1}),
        ] {
            assert_eq!(
                RedisConfig::from_json(&bad).unwrap_err().kind,
                ErrorKind::InvalidConfig,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn bad_url_is_invalid_config() {
        let cfg = RedisConfig::new(RedisTarget::Url("nonsense://x:s3cret@h".into()));
        let err = RedisPool::connect(&cfg).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
        assert!(!err.message.contains("s3cret"));
        let cfg = RedisConfig::new(RedisTarget::Cluster(Vec::new()));
        let err = RedisPool::connect(&cfg).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
    }

    #[tokio::test]
    async fn unreachable_server_fails_fast() {
        // Port 1 on localhost: refused at once on any sane machine.
        let mut cfg = RedisConfig::new(RedisTarget::Url("redis://127.0.0.1:1".into()));
        cfg.connect_timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let err = RedisPool::connect(&cfg).await.unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Connection | ErrorKind::Timeout),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
    }
}
