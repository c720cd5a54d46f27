//! `redis-server` processes for tests: started on free ports, killed on drop. A test never
//! skips when Redis is missing: it fails and says what to install.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Harness: real redis-server processes.

pub fn binary(name: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        panic!(
            "`{name}` is not installed: these tests need a real Redis. \
             Install it (Debian/Ubuntu: `apt-get install redis-server`, which also provides \
             redis-cli and sentinel mode)."
        );
    }
    name.to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("llmux-redis-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends one inline command and returns the raw reply (enough for PING / INFO checks).
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            dir: scratch_dir(&port.to_string()),
        };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(5),
            || {
                raw_command(port, "PING")
                    .is_some_and(|r| r.starts_with("+PONG") || r.contains("NOAUTH"))
            },
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (an empty dataset: nothing is saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            let port = n.port;
            wait_until("cluster_state:ok", Duration::from_secs(10), || {
                raw_command(port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A Sentinel group: a master, one replica, and one sentinel watching them (quorum 1, a
/// master is declared down after one second).
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_port: u16,
    sentinel: Option<Child>,
    dir: PathBuf,
}

impl SentinelGroup {
    pub const MASTER_NAME: &'static str = "mymaster";

    pub fn start() -> Self {
        let master = RedisServer::start(&["--repl-diskless-sync-delay", "0"]);
        let replica_port = free_port();
        let replica = RedisServer::start_on(
            replica_port,
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        );
        wait_until("replication link", Duration::from_secs(10), || {
            raw_command(replica.port, "INFO replication")
                .is_some_and(|r| r.contains("master_link_status:up"))
        });
        let sentinel_port = free_port();
        let dir = scratch_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {} 1000\n\
                 sentinel failover-timeout {} 5000\n",
                dir.display(),
                Self::MASTER_NAME,
                master.port,
                Self::MASTER_NAME,
                Self::MASTER_NAME,
            ),
        )
        .unwrap();
        let sentinel = Command::new(binary("redis-server"))
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        wait_until(
            "the sentinel to see the replica",
            Duration::from_secs(10),
            || {
                raw_command(
                    sentinel_port,
                    &format!("SENTINEL REPLICAS {}", Self::MASTER_NAME),
                )
                .is_some_and(|r| r.contains(&replica_port.to_string()))
            },
        );
        SentinelGroup {
            master,
            replica,
            sentinel_port,
            sentinel: Some(sentinel),
            dir,
        }
    }

    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// Asks the sentinel for a failover until it accepts (it refuses until it has a good
    /// link to the replica).
    pub fn failover(&self) {
        let port = self.sentinel_port;
        wait_until(
            "the sentinel to start a failover",
            Duration::from_secs(10),
            || {
                raw_command(port, &format!("SENTINEL FAILOVER {}", Self::MASTER_NAME))
                    .is_some_and(|r| r.starts_with("+OK"))
            },
        );
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.sentinel.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
