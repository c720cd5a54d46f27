//! Prefetched admissions: while a scope is far from its limits, a process fetches a block of
//! requests, tokens and parallel slots from Redis ahead of its demand and admits from it by
//! itself, with no round trip, for a short window ([`super::RedisLimiterOptions::prefetch`],
//! 50 ms by default).
//!
//! This module owns the blocks a process holds, the demand that sizes them, and each block's
//! account ([`Tally`]): its tokens, settled in Redis once, and its parallel slots, given back
//! one by one. Redis decides whether to grant a block, and how large (`scripts/limits.lua`).
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
//! A block is granted only while the scope's buckets stay at most half full after it (and its
//! parallel slots keep the open requests at most half the parallel limit), and only when it is
//! worth it (16 requests, 4 slots), so near a limit, or on a small one, every admission is
//! decided in Redis, one by one. What blocks cost: the requests of a block that its window
//! leaves unused stay charged (a block is sized for the demand of the last window, over the
//! part of its own window left after the round trip that fetched the last one), and a
//! block started on an idle scope uses up to one window of the rate; both come out of the burst
//! of a scope far from its limit. Tokens are exact: a block's are settled in Redis with the
//! tokens its admissions really used, each difference once (see [`Tally`]), the unused rest of
//! the block when its window ends (on a scope with a parallel limit) or when its last admission
//! has settled (without one).
//!
//! Parallel slots are exact too: each is a member of the scope's open sets, counted by every
//! process, held by at most one request at a time. A slot freed within the window serves the
//! next admission here; at the end of the window the free slots are given back, and a slot
//! still in use is given back when its request settles. A process thus holds idle slots for at
//! most a window, and only while the scope is under half its parallel limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Charge, Demand, RateInfo, ScopeLimits, KEEP_RESERVATION};

/// Admissions a scope must have seen in the last whole window before it asks for blocks.
const MIN_DEMAND: u64 = 16;
/// The largest block asked for, in requests.
const MAX_BLOCK: u64 = 1 << 20;
/// Parallel slots asked for a scope's first block, and the fewest ever asked.
const FIRST_SLOTS: u64 = 8;
/// The most parallel slots asked for at once.
const MAX_SLOTS: u64 = 4096;
/// Scopes remembered before idle ones are forgotten.
const MAX_SCOPES: usize = 10_000;

/// What one script call asks Redis for on one scope.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub requests: u64,
    pub tokens: u64,
    pub slots: u64,
    /// The block's first open-set member; its parallel slots are the members from it up.
    pub member: i64,
}

/// A block as granted by the script: requests (-1: no requests limit), remaining requests, µs
/// until requests reset, tokens (-1: no token limit), remaining tokens, µs until tokens reset,
/// parallel slots (-1: no parallel limit).
pub(crate) type Granted = [i64; 7];

/// The account of one block: its tokens and its parallel slots.
///
/// A block with parallel slots has one open-set member per slot (from `member` up), each given
/// back on its own: at the end of the window when free, else when its admission settles. Its
/// tokens ride on those settles: the first one after the window carries what the block's
/// admissions used so far minus the block, and each later one its admission's own difference.
/// A block without slots has one member, settled once with all its tokens when its window has
/// ended and its last admission has settled.
#[derive(Debug)]
pub struct Tally {
    /// The block's first member.
    member: i64,
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
    /// Parallel slots free for the next admission (indexes from the first member).
    free: Vec<u32>,
    /// The most slots in use at once.
    peak: u32,
    slots: u32,
    /// Tokens owed to Redis after the window, with no free slot to carry them yet.
    pending: i128,
    expired: bool,
    closed: bool,
}

/// A member of the open sets to settle in Redis, with a token difference (used minus reserved)
/// to apply if it is still open: a block's, or one of its parallel slots.
#[derive(Debug)]
pub(crate) struct Release {
    pub member: i64,
    pub charge: Charge,
    pub used: u64,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles member `member + i` in Redis with `delta` tokens.
    fn release(&self, i: u32, delta: i128, out: &mut Vec<Release>) {
        // As the script sees it: used minus the charge's tokens (the block's).
        let used = (i128::from(self.charge.tokens) + delta).clamp(0, i128::from(u64::MAX - 1));
        out.push(Release {
            member: self.member + i64::from(i),
            charge: self.charge.clone(),
            used: used as u64,
        });
    }

    /// A block without slots settles once: when its window is over and its admissions have
    /// settled.
    fn close_if_done(&self, st: &mut TallyState, out: &mut Vec<Release>) {
        if st.slots > 0 || !st.expired || st.open > 0 || st.closed {
            return;
        }
        st.closed = true;
        self.release(0, st.delta, out);
    }
}

/// An admission's part of a block: its tokens and its parallel slot, given back when it
/// settles.
#[derive(Debug)]
pub struct BlockUse {
    tally: Arc<Tally>,
    tokens: u64,
    slot: Option<u32>,
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
    /// Parallel slots to ask for next.
    slots: u64,
    /// How long the last block took to arrive: the part of a window it cannot be used.
    rtt: Duration,
    /// A call asking for a block is in flight.
    asking: bool,
    block: Option<Block>,
}

#[derive(Debug)]
struct Block {
    /// The limits it was granted for (a scope whose limits change asks again).
    limits: (Option<super::Rate>, Option<super::Rate>, Option<u64>),
    until: Instant,
    /// Left to admit (`None`: the scope has no such limit).
    requests: Option<u64>,
    tokens: Option<u64>,
    info: RateInfo,
    tally: Option<Arc<Tally>>,
}

impl Block {
    /// Whether the block can admit one more request on `s` costing `cost` tokens now.
    fn covers(&self, now: Instant, s: &ScopeLimits, cost: u64) -> bool {
        now < self.until
            && self.limits == (s.rpm, s.tpm, s.max_parallel)
            && self.requests.is_none_or(|r| r >= 1)
            && self.tokens.is_none_or(|t| t >= cost)
            && (s.max_parallel.is_none()
                || self
                    .tally
                    .as_ref()
                    .is_some_and(|t| !t.lock().free.is_empty()))
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
            slots: FIRST_SLOTS,
            rtt: Duration::ZERO,
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
    /// Blocks are named by a random base and a counter: members below 2^52 (exact in Lua).
    next: AtomicU64,
    pub blocks: AtomicU64,
    pub admitted: AtomicU64,
}

impl Prefetch {
    pub fn new(window: Duration) -> Self {
        Prefetch {
            window,
            credits: Mutex::new(HashMap::new()),
            next: AtomicU64::new(rand::random::<u64>()),
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
        let scopes = || demand.scopes.iter().filter(|s| !s.is_empty());
        // A scope named twice in one demand is left to Redis (one block cannot cover it twice).
        let repeated = scopes()
            .enumerate()
            .any(|(i, s)| scopes().take(i).any(|o| o.scope == s.scope));
        if self.window.is_zero() || scopes().next().is_none() || repeated {
            return None;
        }
        let mut credits = self.lock();
        // Read after the lock: a block is never used past its window.
        let now = Instant::now();
        if credits.len() > MAX_SCOPES {
            let idle = self.window * 2;
            credits.retain(|_, c| {
                c.asking
                    || c.block.as_ref().is_some_and(|b| b.tally.is_some())
                    || now.saturating_duration_since(c.window_start) < idle
            });
        }
        let mut covered = true;
        for s in scopes() {
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
            covered &= match &c.block {
                Some(b) if b.covers(now, s, cost) => true,
                Some(b) if s.max_parallel.is_some() && now < b.until => {
                    // Out of slots while the block lasts: ask for more next time.
                    let slots = b.tally.as_ref().map_or(0, |t| u64::from(t.lock().slots));
                    c.slots = c.slots.max(slots.saturating_mul(2)).min(MAX_SLOTS);
                    false
                }
                _ => false,
            };
        }
        if !covered {
            return None;
        }
        // Every scope's block covers this demand, and nothing can take from a block in between:
        // the scopes stay locked, a block ends only with them locked, settles only add slots.
        let mut charges = Vec::with_capacity(demand.scopes.len());
        let mut uses = Vec::new();
        let mut info = RateInfo::default();
        for s in scopes() {
            let cost = s.token_cost(demand.tokens);
            let b = credits.get_mut(&s.scope)?.block.as_mut()?;
            b.requests = b.requests.map(|r| r.saturating_sub(1));
            b.tokens = b.tokens.map(|t| t.saturating_sub(cost));
            if let Some(t) = &b.tally {
                let mut st = t.lock();
                st.open += 1;
                st.delta += i128::from(cost);
                let slot = if s.max_parallel.is_some() {
                    let slot = st.free.pop();
                    st.peak = st.peak.max(st.slots - st.free.len() as u32);
                    slot
                } else {
                    None
                };
                uses.push(BlockUse {
                    tally: t.clone(),
                    tokens: cost,
                    slot,
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
        if self.window.is_zero() || s.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut credits = self.lock();
        let c = credits.get_mut(&s.scope)?;
        c.roll(now, self.window);
        // The demand of the last whole window: a burst within one window (all of it on its way
        // to Redis already) asks for nothing, a block would go unused.
        let (n, tokens) = (c.last, c.last_tokens);
        // A block is used from its arrival to the end of its window: sized for that part of the
        // window's demand (what it leaves unused stays charged), and not asked for when the
        // round trip takes most of the window.
        let usable = self.window.saturating_sub(c.rtt);
        // A block that can still admit an average request is kept: the calls queued while it
        // was on its way are no reason to replace it.
        let per = tokens.div_ceil(n.max(1));
        let live = c
            .block
            .as_ref()
            .is_some_and(|b| b.covers(now, s, s.token_cost(per)));
        if c.asking || n < MIN_DEMAND || live {
            return None;
        }
        if usable < self.window / 4 {
            // Ask again once slow round trips may have passed.
            c.rtt /= 2;
            return None;
        }
        c.asking = true;
        let share = u128::from(n) * usable.as_micros() / self.window.as_micros().max(1);
        let requests = (share as u64 + 1).min(MAX_BLOCK);
        let tokens = if s.tpm.is_some() {
            // The demand's tokens per admission, for as many admissions.
            per.max(1).saturating_mul(requests)
        } else {
            0
        };
        let slots = if s.max_parallel.is_some() { c.slots } else { 0 };
        // Below 2^52, with room above it for the slots (MAX_SLOTS = 2^12).
        let member = ((self.next.fetch_add(MAX_SLOTS, Ordering::Relaxed) >> 12) % (1 << 40)) << 12;
        Some(Ask {
            requests,
            tokens,
            slots,
            member: member as i64,
        })
    }

    /// Takes what Redis granted for `ask` (sent at `sent`). Returns the block's account when it
    /// has tokens or slots: the caller ends its window at the instant returned.
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
        c.rtt = sent.elapsed();
        if g[0] == 0 {
            return None;
        }
        self.blocks.fetch_add(1, Ordering::Relaxed);
        let until = sent + self.window;
        let count = |v: i64| u64::try_from(v).ok();
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        let tokens = count(g[3]).filter(|_| s.tpm.is_some());
        let slots = count(g[6])
            .filter(|_| s.max_parallel.is_some())
            .map_or(0, |p| p.min(MAX_SLOTS) as u32);
        let tally = (tokens.is_some() || slots > 0).then(|| {
            let t = tokens.unwrap_or(0);
            Arc::new(Tally {
                member: ask.member,
                charge: Charge::of(s, t),
                state: Mutex::new(TallyState {
                    delta: -i128::from(t),
                    free: (0..slots).rev().collect(),
                    slots,
                    ..TallyState::default()
                }),
            })
        });
        let info = RateInfo {
            limit_requests: s.rpm.filter(|_| g[0] > 0).map(|r| r.limit),
            remaining_requests: count(g[1]).filter(|_| g[0] > 0),
            reset_requests: (g[0] > 0).then(|| us(g[2])),
            limit_tokens: s.tpm.filter(|_| g[3] > 0).map(|r| r.limit),
            remaining_tokens: count(g[4]).filter(|_| g[3] > 0),
            reset_tokens: (g[3] > 0).then(|| us(g[5])),
        };
        c.block = Some(Block {
            limits: (s.rpm, s.tpm, s.max_parallel),
            until,
            requests: count(g[0]),
            tokens,
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

    /// The end of a block's window: no more admissions from it; its free slots go back, and
    /// its settle when its admissions have all settled. Locks in the order admissions do (the
    /// scopes, then the block): once the block is out of its scope, no admission can take from
    /// it.
    pub fn expire(&self, scope: &str, tally: &Arc<Tally>) -> Vec<Release> {
        let mut out = Vec::new();
        let mut credits = self.lock();
        let credit = credits.get_mut(scope);
        let mut st = tally.lock();
        st.expired = true;
        if st.slots > 0 {
            // The tokens so far ride on the first slot given back.
            let mut delta = std::mem::take(&mut st.delta);
            for i in std::mem::take(&mut st.free) {
                tally.release(i, std::mem::take(&mut delta), &mut out);
            }
            st.pending = delta;
        }
        tally.close_if_done(&mut st, &mut out);
        if let Some(c) = credit {
            let current = c
                .block
                .as_ref()
                .and_then(|b| b.tally.as_ref())
                .is_some_and(|t| Arc::ptr_eq(t, tally));
            if current {
                c.block = None;
                // The next block's slots: the most this one had in use, and a quarter more.
                if st.slots > 0 {
                    let peak = u64::from(st.peak);
                    c.slots = (peak + peak / 4 + 1).clamp(FIRST_SLOTS, MAX_SLOTS);
                }
            }
        }
        out
    }

    /// Settles admissions from blocks: their tokens count in their blocks, their slots serve
    /// again while their block lasts. Returns what is now due in Redis.
    pub fn settle(uses: &[BlockUse], used: u64, undo: bool) -> Vec<Release> {
        let mut out = Vec::new();
        for u in uses {
            let mut st = u.tally.lock();
            st.open = st.open.saturating_sub(1);
            let delta = if undo {
                -i128::from(u.tokens)
            } else if used == KEEP_RESERVATION {
                0
            } else {
                i128::from(used) - i128::from(u.tokens)
            };
            match u.slot {
                Some(i) if st.expired => {
                    let owed = std::mem::take(&mut st.pending);
                    u.tally.release(i, owed + delta, &mut out);
                }
                Some(i) => {
                    st.delta += delta;
                    st.free.push(i);
                }
                None => st.delta += delta,
            }
            u.tally.close_if_done(&mut st, &mut out);
        }
        out
    }
}
