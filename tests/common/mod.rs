//! Shared test harness: real `redis-server` processes (standalone, a three-master Cluster, a
//! Sentinel group) started on free ports, killed and restarted by the tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod redis_harness;
