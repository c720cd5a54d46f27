//! GCRA (the generic cell rate algorithm) and the in-process limiter built on it.
//!
//! A limit of `limit` per `period` with a burst of `burst` is one number of state per key, the
//! theoretical arrival time (TAT). With the emission interval `T = period / limit` and the
//! tolerance `τ = burst · T`, a request of cost `c` arriving at `now` is admitted when
//! `max(TAT, now) + c·T − now ≤ τ`, and then `TAT = max(TAT, now) + c·T`; otherwise it may
//! retry after `max(TAT, now) + c·T − τ − now`. So at most `burst` units pass at once, at most
//! `limit + burst` in any window of one `period`, and `burst + limit·t/period` over a long run
//! of length `t`. Refunds move the TAT back (never before `now`), debts move it forward.
//!
//! The Redis limiter runs the same arithmetic in Lua (`scripts/limits.lua`) with Redis's
//! clock; [`LocalLimiter`] runs it here with a monotonic clock. Times are microseconds held in `f64` (exact to well below a microsecond for any
//! Unix time in µs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Charge, Demand, Denial, Limited, LimiterStats, RateInfo};

/// The outcome of one GCRA check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Admitted: the new TAT and how many units are left at once.
    Pass { new_tat: f64, remaining: u64 },
    /// Denied: wait this long (µs); `None` when the cost can never pass.
    Deny { retry_after_us: Option<f64> },
}

/// Slack in µs for float rounding: `τ = burst·T` is rarely exact, and a cost of exactly the
/// burst must pass an idle limit.
pub const EPSILON_US: f64 = 1e-3;

/// One GCRA check of `cost` units against a limit with emission interval `t` and tolerance
/// `tau` (µs), given the stored `tat` (µs, 0 when there is none).
pub fn check(tat: f64, now: f64, t: f64, tau: f64, cost: f64) -> Check {
    if !t.is_finite() {
        // A limit of zero admits nothing, ever.
        return Check::Deny {
            retry_after_us: None,
        };
    }
    if cost * t > tau + EPSILON_US {
        return Check::Deny {
            retry_after_us: None,
        };
    }
    let base = tat.max(now);
    let new_tat = base + cost * t;
    let over = new_tat - now - tau;
    if over > EPSILON_US {
        return Check::Deny {
            retry_after_us: Some(over),
        };
    }
    let remaining = if t > 0.0 {
        ((tau - (new_tat - now) + EPSILON_US) / t).floor().max(0.0) as u64
    } else {
        u64::MAX
    };
    Check::Pass { new_tat, remaining }
}

/// The TAT after settling a charge of `reserved` units that really used `used`.
pub fn settle(tat: f64, now: f64, t: f64, reserved: f64, used: f64) -> f64 {
    if !t.is_finite() {
        return tat;
    }
    let delta = used - reserved;
    if delta < 0.0 {
        // A refund never creates credit older than now.
        (tat + delta * t).max(now)
    } else {
        tat.max(now) + delta * t
    }
}

/// The state of one scope in the in-process limiter.
#[derive(Debug, Default)]
struct ScopeState {
    rpm_tat: f64,
    tpm_tat: f64,
    in_flight: u64,
}

/// GCRA in this process: exact for one process; what `on_redis_failure: local` falls back to.
#[derive(Debug)]
pub struct LocalLimiter {
    epoch: Instant,
    scopes: Mutex<HashMap<String, ScopeState>>,
    admitted: AtomicU64,
    denied: AtomicU64,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Microseconds of a duration, as the limiter's time unit.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl LocalLimiter {
    pub fn new() -> Self {
        LocalLimiter {
            // Start the clock a day in: a stored TAT of 0 means "no state" and is in the past.
            epoch: Instant::now()
                .checked_sub(Duration::from_secs(86_400))
                .unwrap_or_else(Instant::now),
            scopes: Mutex::new(HashMap::new()),
            admitted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    pub(crate) fn count(&self, admitted: bool) {
        let c = if admitted {
            &self.admitted
        } else {
            &self.denied
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> LimiterStats {
        LimiterStats {
            admitted: self.admitted.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            live_processes: 1,
            ..LimiterStats::default()
        }
    }

    fn now(&self) -> f64 {
        us(self.epoch.elapsed())
    }

    /// Checks every limit of every scope and charges them all, or none.
    pub fn admit(&self, demand: &Demand) -> Result<(Vec<Charge>, RateInfo), Denial> {
        let now = self.now();
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        // Idle scopes are forgotten: a TAT in the past is the same as no state.
        if scopes.len() > 10_000 {
            scopes.retain(|_, s| s.in_flight > 0 || s.rpm_tat > now || s.tpm_tat > now);
        }
        let mut plan = Vec::with_capacity(demand.scopes.len());
        let mut info = RateInfo::default();
        for limits in &demand.scopes {
            let state = scopes.get(&limits.scope);
            let (rpm_tat, tpm_tat, in_flight) =
                state.map_or((0.0, 0.0, 0), |s| (s.rpm_tat, s.tpm_tat, s.in_flight));
            let cost = limits.token_cost(demand.tokens);
            let mut new_rpm = None;
            let mut new_tpm = None;
            if let Some(r) = &limits.rpm {
                match check(rpm_tat, now, r.interval_us(), r.tolerance_us(), 1.0) {
                    Check::Pass { new_tat, remaining } => {
                        new_rpm = Some(new_tat);
                        info.note_requests(r, remaining, new_tat - now);
                    }
                    Check::Deny { retry_after_us } => {
                        return Err(Denial::new(limits, Limited::Requests, retry_after_us))
                    }
                }
            }
            if let Some(r) = &limits.tpm {
                match check(tpm_tat, now, r.interval_us(), r.tolerance_us(), cost as f64) {
                    Check::Pass { new_tat, remaining } => {
                        new_tpm = Some(new_tat);
                        info.note_tokens(r, remaining, new_tat - now);
                    }
                    Check::Deny { retry_after_us } => {
                        return Err(Denial::new(limits, Limited::Tokens, retry_after_us))
                    }
                }
            }
            if let Some(max) = limits.max_parallel {
                if in_flight >= max {
                    return Err(Denial::new(
                        limits,
                        Limited::Parallel,
                        Some(us(super::PARALLEL_RETRY_AFTER)),
                    ));
                }
            }
            plan.push((limits, new_rpm, new_tpm, cost));
        }
        let mut charges = Vec::with_capacity(plan.len());
        for (limits, new_rpm, new_tpm, cost) in plan {
            let s = scopes.entry(limits.scope.clone()).or_default();
            if let Some(t) = new_rpm {
                s.rpm_tat = t;
            }
            if let Some(t) = new_tpm {
                s.tpm_tat = t;
            }
            if limits.max_parallel.is_some() {
                s.in_flight += 1;
            }
            charges.push(Charge::of(limits, cost));
        }
        Ok((charges, info))
    }

    /// Settles charges made by [`LocalLimiter::admit`]: tokens `used` replace the reservation,
    /// and parallel slots are released. `undo` also gives the request back (a request that was
    /// admitted here but denied elsewhere).
    pub fn settle(&self, charges: &[Charge], used: u64, undo: bool) {
        let now = self.now();
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        for c in charges {
            let Some(s) = scopes.get_mut(&c.scope) else {
                continue;
            };
            if let Some(t) = c.tpm_interval_us {
                let used = if undo { 0 } else { used };
                if used != super::KEEP_RESERVATION {
                    s.tpm_tat = settle(s.tpm_tat, now, t, c.tokens as f64, used as f64);
                }
            }
            if undo {
                if let Some(t) = c.rpm_interval_us {
                    s.rpm_tat = settle(s.rpm_tat, now, t, 1.0, 0.0);
                }
            }
            if c.parallel {
                s.in_flight = s.in_flight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: f64 = 60e6;

    #[test]
    fn burst_then_pacing() {
        // 60 per minute, burst 10: T = 1 s, τ = 10 s.
        let (t, tau) = (MIN / 60.0, 10.0 * MIN / 60.0);
        let now = 1e12;
        let mut tat = 0.0;
        let mut admitted = 0;
        for _ in 0..100 {
            if let Check::Pass { new_tat, .. } = check(tat, now, t, tau, 1.0) {
                tat = new_tat;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "the burst, at once");
        match check(tat, now, t, tau, 1.0) {
            Check::Deny {
                retry_after_us: Some(w),
            } => assert!((w - 1e6).abs() < 1.0, "{w}"),
            other => panic!("{other:?}"),
        }
        // One interval later exactly one more passes.
        assert!(matches!(
            check(tat, now + 1e6, t, tau, 1.0),
            Check::Pass { .. }
        ));
    }

    #[test]
    fn a_cost_of_exactly_the_burst_passes_an_idle_limit_despite_rounding() {
        // 13 per minute: τ = 13·(60e6/13) is not exact in f64.
        for limit in [11u64, 13, 22, 26, 27, 41, 1_000_003] {
            let r = super::super::Rate::per_minute(limit);
            let c = check(0.0, 1.7e15, r.interval_us(), r.tolerance_us(), limit as f64);
            assert!(matches!(c, Check::Pass { .. }), "limit {limit}: {c:?}");
        }
    }

    #[test]
    fn cost_above_the_burst_never_passes_and_zero_limit_admits_nothing() {
        assert_eq!(
            check(0.0, 1e9, 10.0, 100.0, 11.0),
            Check::Deny {
                retry_after_us: None
            }
        );
        assert_eq!(
            check(0.0, 1e9, f64::INFINITY, f64::INFINITY, 1.0),
            Check::Deny {
                retry_after_us: None
            }
        );
    }

    #[test]
    fn refunds_and_debts_move_the_tat() {
        let now = 1e9;
        // Reserved 1000 at T=1 µs/token: TAT = now + 1000. Used 100: back to now + 100.
        assert_eq!(settle(now + 1000.0, now, 1.0, 1000.0, 100.0), now + 100.0);
        // A refund never goes before now.
        assert_eq!(settle(now + 10.0, now, 1.0, 1000.0, 0.0), now);
        // A debt pushes it forward, from now when the TAT is in the past.
        assert_eq!(settle(now - 50.0, now, 1.0, 10.0, 30.0), now + 20.0);
    }
}
