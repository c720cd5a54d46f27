//! The in-process backend: a map bounded by entry count, least recently used evicted first,
//! each entry with its own time to live.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::CacheBackend;
use crate::error::Result;

/// LiteLLM's default bound of its in-memory cache.
pub const DEFAULT_MAX_ENTRIES: usize = 200;

struct Slot {
    value: String,
    expires: Option<Instant>,
    /// Position in the recency order (higher = used more recently).
    tick: u64,
}

#[derive(Default)]
struct Lru {
    map: HashMap<String, Slot>,
    /// tick -> key, oldest first.
    order: BTreeMap<u64, String>,
    next_tick: u64,
}

impl Lru {
    fn touch(&mut self, key: &str) -> u64 {
        self.next_tick += 1;
        let tick = self.next_tick;
        if let Some(slot) = self.map.get_mut(key) {
            self.order.remove(&slot.tick);
            slot.tick = tick;
            self.order.insert(tick, key.to_owned());
        }
        tick
    }

    fn remove(&mut self, key: &str) {
        if let Some(slot) = self.map.remove(key) {
            self.order.remove(&slot.tick);
        }
    }
}

/// Answers kept in this process: at most `max_entries`, the least recently used evicted first;
/// an entry past its TTL is gone (removed when next looked up, or evicted).
pub struct MemoryCache {
    max_entries: usize,
    inner: Mutex<Lru>,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryCache {
    pub fn new(max_entries: usize) -> Self {
        MemoryCache {
            max_entries,
            inner: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Plain maps: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries held (expired ones included until they are looked up or evicted).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value under `key`, unless absent or expired; marks it as recently used.
    pub fn get_now(&self, key: &str) -> Option<String> {
        let mut lru = self.lock();
        let expired = match lru.map.get(key) {
            None => return None,
            Some(slot) => slot.expires.is_some_and(|t| Instant::now() >= t),
        };
        if expired {
            lru.remove(key);
            return None;
        }
        lru.touch(key);
        lru.map.get(key).map(|s| s.value.clone())
    }

    /// Stores `value` under `key` for `ttl` (forever when `None`), evicting the least recently
    /// used entries beyond the bound.
    pub fn set_now(&self, key: &str, value: String, ttl: Option<Duration>) {
        if self.max_entries == 0 {
            return;
        }
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        let mut lru = self.lock();
        lru.remove(key);
        lru.next_tick += 1;
        let tick = lru.next_tick;
        lru.map.insert(
            key.to_owned(),
            Slot {
                value,
                expires,
                tick,
            },
        );
        lru.order.insert(tick, key.to_owned());
        while lru.map.len() > self.max_entries {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.map.remove(&oldest);
        }
    }
}

impl CacheBackend for MemoryCache {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move { Ok(self.get_now(key)) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_now(key, value, ttl);
            Ok(())
        })
    }
}
