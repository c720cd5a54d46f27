//! Prefetched admissions: while a scope is far from its limits, a process fetches a block of
//! requests and tokens from Redis ahead of its demand and admits from it by itself, with no round
//! trip, for a short window ([`super::RedisLimiterOptions::prefetch`], 50 ms by default).
//!
//! This module owns the blocks a process holds, the demand that sizes them, and the tallies that
//! settle a block's tokens in Redis once. Redis decides whether to grant a block, and how large
//! (`scripts/limits.lua`).
//!
//! Why the limits stay exact: a block is charged in Redis as if all of its admissions came at
//! the end of its window (its TAT starts no earlier than that), and it is used only within the
//! window, counted from before the call that fetched it was sent (so the two clocks need not
//! agree). An admission from a block is thus never later than the time it was charged for, nor
//! earlier than one window before; and the blocks charged in the window before any period
//! started have pushed the TAT past the period's start by as much as they admit in it. Any
//! period of a limit therefore admits at most what GCRA allows one by one: the limit plus the
//! burst, whatever the number of processes.
//!
//! A block is granted only while the scope's bucket stays at most half full after it, so near
//! a limit every admission is decided in Redis, one by one. What blocks cost: the requests of
//! a block that its window leaves unused stay charged (blocks are sized at 1.25x the demand of
//! the last window), and a block started on an idle scope uses up to one window of the rate;
//! both come out of the burst of a scope that is far from its limit. Tokens are exact: a block's
//! tokens are settled like one request's, with the tokens its admissions really used, once its
//! window has ended and its last admission has settled.
//!
//! Scopes with a parallel limit never get blocks: the requests in flight are counted in Redis,
//! one by one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Charge, Demand, RateInfo, ScopeLimits, KEEP_RESERVATION};

/// Admissions a scope must see in one window before it asks for blocks.
const MIN_DEMAND: u64 = 16;
/// The largest block asked for, in requests.
const MAX_BLOCK: u64 = 1 << 20;
/// Scopes remembered before idle ones are forgotten.
const MAX_SCOPES: usize = 10_000;

/// What one script call asks Redis for on one scope.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub requests: u64,
    pub tokens: u64,
    /// Names the block in the open sets (a scope with a token limit settles it).
    pub id: String,
}

/// A block as granted by the script: requests (-1: no requests limit), remaining requests, µs
/// until requests reset, tokens (-1: no token limit), remaining tokens, µs until tokens reset.
pub(crate) type Granted = [i64; 6];

/// The token account of one block, settled in Redis once: when its window has ended and its
/// last admission has settled.
#[derive(Debug)]
pub struct Tally {
    id: String,
    /// The scope's charge; its tokens are the block's.
    charge: Charge,
    state: Mutex<TallyState>,
}

#[derive(Debug, Default)]
struct TallyState {
    /// Admissions from the block not settled yet.
    open: u64,
    /// Tokens used minus tokens granted, so far (admissions count their reservation until they
    /// settle).
    delta: i128,
    expired: bool,
    closed: bool,
}

/// A block's settle, to queue like a request's: the tokens its admissions used, against the
/// block's charge.
#[derive(Debug)]
pub(crate) struct Close {
    pub id: String,
    pub charge: Charge,
    pub used: u64,
}

impl Tally {
    fn close_if_done(&self, st: &mut TallyState) -> Option<Close> {
        if !st.expired || st.open > 0 || st.closed {
            return None;
        }
        st.closed = true;
        let used = (i128::from(self.charge.tokens) + st.delta).clamp(0, i128::from(u64::MAX - 1));
        Some(Close {
            id: self.id.clone(),
            charge: self.charge.clone(),
            used: used as u64,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An admission's share of a block's tokens, given back when it settles.
#[derive(Debug)]
pub struct BlockUse {
    tally: Arc<Tally>,
    tokens: u64,
}

/// What a scope's process holds: its demand, and its current block.
#[derive(Debug)]
struct Credit {
    /// Demand: admissions (and the tokens they reserve) in the current window and the last.
    window_start: Instant,
    seen: u64,
    seen_tokens: u64,
    last: u64,
    last_tokens: u64,
    /// A call asking for a block is in flight.
    asking: bool,
    block: Option<Block>,
}

#[derive(Debug)]
struct Block {
    until: Instant,
    /// Left to admit (`None`: the scope has no such limit).
    requests: Option<u64>,
    tokens: Option<u64>,
    info: RateInfo,
    tally: Option<Arc<Tally>>,
}

impl Block {
    fn covers(&self, now: Instant, cost: u64) -> bool {
        now < self.until
            && self.requests.is_none_or(|r| r >= 1)
            && self.tokens.is_none_or(|t| t >= cost)
    }

    /// The limits as the block's admissions see them: what Redis had left after the block,
    /// plus what the block still holds.
    fn info(&self) -> RateInfo {
        let mut i = self.info;
        if let (Some(r), Some(left)) = (i.remaining_requests, self.requests) {
            i.remaining_requests = Some(r.saturating_add(left));
        }
        if let (Some(r), Some(left)) = (i.remaining_tokens, self.tokens) {
            i.remaining_tokens = Some(r.saturating_add(left));
        }
        i
    }
}

impl Credit {
    fn new(now: Instant) -> Self {
        Credit {
            window_start: now,
            seen: 0,
            seen_tokens: 0,
            last: 0,
            last_tokens: 0,
            asking: false,
            block: None,
        }
    }

    /// Starts a new demand window when this one is over.
    fn roll(&mut self, now: Instant, window: Duration) {
        let age = now.saturating_duration_since(self.window_start);
        if age < window {
            return;
        }
        // A window with no admission in between counts as none.
        (self.last, self.last_tokens) = if age < window * 2 {
            (self.seen, self.seen_tokens)
        } else {
            (0, 0)
        };
        self.seen = 0;
        self.seen_tokens = 0;
        self.window_start = now;
    }
}

/// The blocks of one limiter.
#[derive(Debug)]
pub(crate) struct Prefetch {
    window: Duration,
    credits: Mutex<HashMap<String, Credit>>,
    /// Names blocks uniquely: this process's instance and a counter.
    instance: String,
    next: AtomicU64,
    pub blocks: AtomicU64,
    pub admitted: AtomicU64,
}

/// Whether a scope may get blocks: a requests or tokens limit, and no parallel limit.
fn eligible(s: &ScopeLimits) -> bool {
    s.max_parallel.is_none() && (s.rpm.is_some() || s.tpm.is_some())
}

impl Prefetch {
    pub fn new(window: Duration, instance: &str) -> Self {
        Prefetch {
            window,
            credits: Mutex::new(HashMap::new()),
            instance: instance.to_owned(),
            next: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Credit>> {
        self.credits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits `demand` from the blocks this process holds, when every scope of it has one that
    /// covers it; `None` sends it to Redis. Either way its demand is counted.
    pub fn try_admit(&self, demand: &Demand) -> Option<(Vec<Charge>, RateInfo, Vec<BlockUse>)> {
        if self.window.is_zero() || !demand.scopes.iter().all(|s| s.is_empty() || eligible(s)) {
            return None;
        }
        let now = Instant::now();
        let mut credits = self.lock();
        if credits.len() > MAX_SCOPES {
            let idle = self.window * 2;
            credits.retain(|_, c| {
                c.asking
                    || c.block.as_ref().is_some_and(|b| b.tally.is_some())
                    || now.saturating_duration_since(c.window_start) < idle
            });
        }
        let mut covered = true;
        for s in demand.scopes.iter().filter(|s| !s.is_empty()) {
            let cost = s.token_cost(demand.tokens);
            let c = match credits.get_mut(&s.scope) {
                Some(c) => c,
                None => credits
                    .entry(s.scope.clone())
                    .or_insert_with(|| Credit::new(now)),
            };
            c.roll(now, self.window);
            c.seen += 1;
            c.seen_tokens = c.seen_tokens.saturating_add(cost);
            covered &= c.block.as_ref().is_some_and(|b| b.covers(now, cost));
        }
        if !covered {
            return None;
        }
        let mut charges = Vec::with_capacity(demand.scopes.len());
        let mut uses = Vec::new();
        let mut info = RateInfo::default();
        for s in demand.scopes.iter().filter(|s| !s.is_empty()) {
            let cost = s.token_cost(demand.tokens);
            let b = credits.get_mut(&s.scope)?.block.as_mut()?;
            b.requests = b.requests.map(|r| r - 1);
            b.tokens = b.tokens.map(|t| t - cost);
            if let Some(t) = &b.tally {
                let mut st = t.lock();
                st.open += 1;
                st.delta += i128::from(cost);
                uses.push(BlockUse {
                    tally: t.clone(),
                    tokens: cost,
                });
            }
            super::distributed::merge_info(&mut info, &b.info());
            charges.push(Charge::of(s, cost));
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some((charges, info, uses))
    }

    /// Whether a call that admits on `s` should ask for a block, and how large: when the scope
    /// is busy enough and no call is asking already.
    pub fn ask(&self, s: &ScopeLimits) -> Option<Ask> {
        if self.window.is_zero() || !eligible(s) {
            return None;
        }
        let now = Instant::now();
        let mut credits = self.lock();
        let c = credits.get_mut(&s.scope)?;
        c.roll(now, self.window);
        let (n, tokens) = if c.last >= c.seen {
            (c.last, c.last_tokens)
        } else {
            (c.seen, c.seen_tokens)
        };
        if c.asking || n < MIN_DEMAND {
            return None;
        }
        c.asking = true;
        let requests = (n + n / 4 + 1).min(MAX_BLOCK);
        let tokens = if s.tpm.is_some() {
            // The demand's tokens per admission, for as many admissions.
            let per = tokens.div_ceil(n).max(1);
            per.saturating_mul(requests)
        } else {
            0
        };
        let id = format!(
            "block:{}:{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        Some(Ask {
            requests,
            tokens,
            id,
        })
    }

    /// Takes what Redis granted for `ask` (sent at `sent`). Returns the block's tally when it
    /// has tokens to settle: the caller expires it at the end of its window.
    pub fn granted(
        &self,
        s: &ScopeLimits,
        ask: &Ask,
        sent: Instant,
        g: &Granted,
    ) -> Option<(Arc<Tally>, Instant)> {
        let mut credits = self.lock();
        let c = credits.get_mut(&s.scope)?;
        c.asking = false;
        if g[0] == 0 {
            return None;
        }
        self.blocks.fetch_add(1, Ordering::Relaxed);
        let until = sent + self.window;
        let count = |v: i64| u64::try_from(v).ok();
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        let tally = match (s.tpm, count(g[3])) {
            (Some(_), Some(tokens)) => Some(Arc::new(Tally {
                id: ask.id.clone(),
                charge: Charge::of(s, tokens),
                state: Mutex::new(TallyState {
                    delta: -i128::from(tokens),
                    ..TallyState::default()
                }),
            })),
            _ => None,
        };
        let info = RateInfo {
            limit_requests: s.rpm.filter(|_| g[0] > 0).map(|r| r.limit),
            remaining_requests: count(g[1]).filter(|_| g[0] > 0),
            reset_requests: (g[0] > 0).then(|| us(g[2])),
            limit_tokens: s.tpm.filter(|_| g[3] > 0).map(|r| r.limit),
            remaining_tokens: count(g[4]).filter(|_| g[3] > 0),
            reset_tokens: (g[3] > 0).then(|| us(g[5])),
        };
        c.block = Some(Block {
            until,
            requests: count(g[0]),
            tokens: count(g[3]),
            info,
            tally: tally.clone(),
        });
        tally.map(|t| (t, until))
    }

    /// An ask whose call failed: the scope may ask again.
    pub fn failed(&self, s: &ScopeLimits) {
        if let Some(c) = self.lock().get_mut(&s.scope) {
            c.asking = false;
        }
    }

    /// The end of a block's window: no more admissions from it; its settle when its
    /// admissions have all settled.
    pub fn expire(&self, scope: &str, tally: &Arc<Tally>) -> Option<Close> {
        {
            let mut credits = self.lock();
            if let Some(c) = credits.get_mut(scope) {
                let current = c
                    .block
                    .as_ref()
                    .and_then(|b| b.tally.as_ref())
                    .is_some_and(|t| Arc::ptr_eq(t, tally));
                if current {
                    c.block = None;
                }
            }
        }
        let mut st = tally.lock();
        st.expired = true;
        tally.close_if_done(&mut st)
    }

    /// Settles admissions from blocks: their tokens count in their blocks. Returns the blocks
    /// now due to settle in Redis.
    pub fn settle(uses: &[BlockUse], used: u64, undo: bool) -> Vec<Close> {
        let mut closes = Vec::new();
        for u in uses {
            let mut st = u.tally.lock();
            st.open = st.open.saturating_sub(1);
            st.delta += if undo {
                -i128::from(u.tokens)
            } else if used == KEEP_RESERVATION {
                0
            } else {
                i128::from(used) - i128::from(u.tokens)
            };
            closes.extend(u.tally.close_if_done(&mut st));
        }
        closes
    }
}
