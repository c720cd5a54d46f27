//! LiteLLM's routing strategies, as pure functions over candidate deployments and their stats.
//!
//! This module owns the choice of one deployment out of a model group: [`Strategy`] (parsed
//! from LiteLLM's `routing_strategy` names) and [`pick`]. It does no I/O and draws no random
//! numbers: the caller passes a uniform sample `u`, so every choice is reproducible in tests.
//!
//! Every strategy first drops ineligible candidates:
//! - cooling down (`cooldown_remaining.is_some()`);
//! - `rpm` set and `requests_this_minute >= rpm` (exactly `rpm` requests are admitted per
//!   minute; LiteLLM issue #33032 stops one early with `+1 >=`);
//! - `tpm` set and `tokens_this_minute + min(est_tokens, tpm) > tpm`.
//!
//! A deployment's declared limits are hard for every strategy, not only usage-based routing,
//! when the candidate asks for them to be checked here (`check_limits`); the router leaves them
//! to its limiter instead.
//! Ties are broken by `u` among the tied candidates, in candidate order.

use crate::error::{Error, Result};
use crate::router::stats::DeploymentStats;

/// The latency band used when `latency-based-routing` is parsed without arguments: pick at
/// random among deployments within 10% of the best latency, so load spreads across
/// near-equals instead of piling onto the single fastest one.
pub const DEFAULT_LATENCY_BAND: f64 = 0.1;

/// The names [`Strategy::parse`] accepts, as LiteLLM spells them.
pub const STRATEGY_NAMES: [&str; 6] = [
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "usage-based-routing-v2",
    "cost-based-routing",
];

/// How a router picks a deployment within a model group.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Weighted random by `weight`, else `rpm`, else `tpm`, else uniform.
    SimpleShuffle,
    /// Fewest requests in flight.
    LeastBusy,
    /// Lowest latency EWMA; untried deployments first; random among those within `band`
    /// (a fraction: 0.1 = within 10%) of the best.
    LatencyBased { band: f64 },
    /// Fewest tokens this minute, then fewest requests (LiteLLM's v1 and v2 alike).
    UsageBased,
    /// Lowest input + output price per token; unknown prices last.
    CostBased,
}

impl Strategy {
    /// Parses LiteLLM's `routing_strategy` names: `simple-shuffle`, `least-busy`,
    /// `latency-based-routing` (band [`DEFAULT_LATENCY_BAND`]), `usage-based-routing`,
    /// `usage-based-routing-v2` (both [`Strategy::UsageBased`]) and `cost-based-routing`.
    pub fn parse(name: &str) -> Result<Strategy> {
        match name {
            "simple-shuffle" => Ok(Strategy::SimpleShuffle),
            "least-busy" => Ok(Strategy::LeastBusy),
            "latency-based-routing" => Ok(Strategy::LatencyBased {
                band: DEFAULT_LATENCY_BAND,
            }),
            "usage-based-routing" | "usage-based-routing-v2" => Ok(Strategy::UsageBased),
            "cost-based-routing" => Ok(Strategy::CostBased),
            other => Err(Error::invalid_config(format!(
                "unknown routing_strategy '{other}'; valid: {}",
                STRATEGY_NAMES.join(", ")
            ))),
        }
    }

    /// The LiteLLM name; `UsageBased` answers `usage-based-routing-v2`, the variant LiteLLM
    /// recommends (both names parse to it).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
            Strategy::LeastBusy => "least-busy",
            Strategy::LatencyBased { .. } => "latency-based-routing",
            Strategy::UsageBased => "usage-based-routing-v2",
            Strategy::CostBased => "cost-based-routing",
        }
    }
}

impl Default for Strategy {
    /// LiteLLM's default, `simple-shuffle`.
    fn default() -> Self {
        Strategy::SimpleShuffle
    }
}

/// One deployment of the model group, as the strategy sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub weight: Option<f64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// (input, output) USD per token from the price table or the deployment's overrides
    pub cost_per_token: Option<(f64, f64)>,
    pub stats: &'a DeploymentStats,
    /// Whether `rpm` / `tpm` are checked here against this minute's stats. The router leaves
    /// them to its limiter (exact, atomic), and they only weigh and score candidates then.
    pub check_limits: bool,
}

/// Whether `c` may take a request of `est_tokens` now: not cooling down, under its `rpm` and
/// its `tpm`.
pub fn eligible(c: &Candidate<'_>, est_tokens: u64) -> bool {
    let s = c.stats;
    if s.cooldown_remaining.is_some() {
        return false;
    }
    if !c.check_limits {
        return true;
    }
    if let Some(rpm) = c.rpm {
        if s.requests_this_minute >= rpm {
            return false;
        }
    }
    if let Some(tpm) = c.tpm {
        // The estimate is capped at the limit, as the limiter caps its reservation: a request
        // larger than a whole minute's tokens still goes to an idle deployment.
        if s.tokens_this_minute.saturating_add(est_tokens.min(tpm)) > tpm {
            return false;
        }
    }
    true
}

/// Index into `candidates` of the deployment to use, or None if none is eligible. `u` is a uniform sample in [0,1) (the caller draws it; tests pass fixed values). `est_tokens` is the request's token estimate (prompt estimate + output cap) for TPM checks.
///
/// A `u` outside [0, 1) is clamped into it (NaN counts as 0).
pub fn pick(
    strategy: &Strategy,
    candidates: &[Candidate<'_>],
    est_tokens: u64,
    u: f64,
) -> Option<usize> {
    let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
    let ok: Vec<usize> = (0..candidates.len())
        .filter(|&i| eligible(&candidates[i], est_tokens))
        .collect();
    if ok.is_empty() {
        return None;
    }
    match strategy {
        Strategy::SimpleShuffle => shuffle(candidates, &ok, u),
        Strategy::LeastBusy => {
            let tied = min_by_key(&ok, |i| candidates[i].stats.in_flight);
            choose(&tied, u)
        }
        Strategy::LatencyBased { band } => latency(candidates, &ok, *band, u),
        Strategy::UsageBased => {
            let tied = min_by_key(&ok, |i| {
                let s = candidates[i].stats;
                (s.tokens_this_minute, s.requests_this_minute)
            });
            choose(&tied, u)
        }
        Strategy::CostBased => {
            let cost = |i: usize| {
                candidates[i]
                    .cost_per_token
                    .map(|(input, output)| input + output)
                    .filter(|c| c.is_finite())
            };
            let known: Vec<usize> = ok.iter().copied().filter(|&i| cost(i).is_some()).collect();
            if known.is_empty() {
                return choose(&ok, u);
            }
            let best = known
                .iter()
                .filter_map(|&i| cost(i))
                .fold(f64::INFINITY, f64::min);
            let tied: Vec<usize> = known
                .into_iter()
                .filter(|&i| cost(i) == Some(best))
                .collect();
            choose(&tied, u)
        }
    }
}

/// `ix[floor(u * len)]`.
fn choose(ix: &[usize], u: f64) -> Option<usize> {
    if ix.is_empty() {
        return None;
    }
    let k = ((u * ix.len() as f64) as usize).min(ix.len() - 1);
    ix.get(k).copied()
}

/// The members of `ix` with the smallest key, in order.
fn min_by_key<K: Ord + Copy>(ix: &[usize], key: impl Fn(usize) -> K) -> Vec<usize> {
    let Some(best) = ix.iter().map(|&i| key(i)).min() else {
        return Vec::new();
    };
    ix.iter().copied().filter(|&i| key(i) == best).collect()
}

/// Latency-based: untried deployments first (explore), else uniformly among those within
/// `band` of the best latency EWMA. A NaN latency counts as untried; a negative or NaN band as 0.
fn latency(candidates: &[Candidate<'_>], ok: &[usize], band: f64, u: f64) -> Option<usize> {
    let lat = |i: usize| candidates[i].stats.latency_ewma_ms.filter(|l| !l.is_nan());
    let untried: Vec<usize> = ok.iter().copied().filter(|&i| lat(i).is_none()).collect();
    if !untried.is_empty() {
        return choose(&untried, u);
    }
    let best = ok
        .iter()
        .filter_map(|&i| lat(i))
        .fold(f64::INFINITY, f64::min);
    let band = if band.is_nan() { 0.0 } else { band.max(0.0) };
    let limit = best + best.abs() * band;
    let near: Vec<usize> = ok
        .iter()
        .copied()
        .filter(|&i| lat(i).is_some_and(|l| l <= limit))
        .collect();
    choose(&near, u)
}

/// Simple shuffle: a weighted draw among the eligible candidates.
///
/// The weight field is the first of `weight`, `rpm`, `tpm` that any candidate of the group sets
/// (eligible or not, so a filtered deployment does not change the others' odds). A candidate
/// that does not set that field weighs the mean of those that do (a negative or non-finite
/// `weight` counts as not set). A weight of 0 is never drawn unless every eligible weight is 0;
/// then, as when no field is set, the draw is uniform.
fn shuffle(candidates: &[Candidate<'_>], ok: &[usize], u: f64) -> Option<usize> {
    let field = if candidates.iter().any(|c| valid_weight(c.weight).is_some()) {
        WeightField::Weight
    } else if candidates.iter().any(|c| c.rpm.is_some()) {
        WeightField::Rpm
    } else if candidates.iter().any(|c| c.tpm.is_some()) {
        WeightField::Tpm
    } else {
        return choose(ok, u);
    };
    let given: Vec<f64> = candidates.iter().filter_map(|c| field.of(c)).collect();
    let mean = if given.is_empty() {
        1.0
    } else {
        given.iter().sum::<f64>() / given.len() as f64
    };
    let weights: Vec<f64> = ok
        .iter()
        .map(|&i| field.of(&candidates[i]).unwrap_or(mean))
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return choose(ok, u);
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last_positive = None;
    for (&i, &w) in ok.iter().zip(&weights) {
        if w > 0.0 {
            acc += w;
            last_positive = Some(i);
            if target < acc {
                return Some(i);
            }
        }
    }
    // Rounding left `target` at the very top: the last candidate with weight takes it.
    last_positive
}

/// Which candidate field simple-shuffle weighs by.
#[derive(Debug, Clone, Copy)]
enum WeightField {
    Weight,
    Rpm,
    Tpm,
}

impl WeightField {
    fn of(self, c: &Candidate<'_>) -> Option<f64> {
        match self {
            WeightField::Weight => valid_weight(c.weight),
            WeightField::Rpm => c.rpm.map(|v| v as f64),
            WeightField::Tpm => c.tpm.map(|v| v as f64),
        }
    }
}

fn valid_weight(w: Option<f64>) -> Option<f64> {
    w.filter(|w| w.is_finite() && *w >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::time::Duration;

    fn cand<'a>(id: &'a str, stats: &'a DeploymentStats) -> Candidate<'a> {
        Candidate {
            id,
            weight: None,
            rpm: None,
            tpm: None,
            cost_per_token: None,
            stats,
            check_limits: true,
        }
    }

    /// How often each candidate wins as `u` sweeps [0, 1) in 1000 steps.
    fn sweep(strategy: &Strategy, cands: &[Candidate<'_>]) -> Vec<usize> {
        let mut counts = vec![0; cands.len()];
        for k in 0..1000 {
            let i = pick(strategy, cands, 0, k as f64 / 1000.0).unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn parse_names_and_errors() {
        for name in STRATEGY_NAMES {
            let s = Strategy::parse(name).unwrap();
            assert_eq!(Strategy::parse(s.name()).unwrap(), s);
        }
        assert_eq!(
            Strategy::parse("usage-based-routing").unwrap(),
            Strategy::UsageBased
        );
        assert_eq!(
            Strategy::parse("usage-based-routing-v2").unwrap(),
            Strategy::UsageBased
        );
        assert_eq!(
            Strategy::parse("latency-based-routing").unwrap(),
            Strategy::LatencyBased { band: 0.1 }
        );
        assert_eq!(Strategy::default().name(), "simple-shuffle");
        let err = Strategy::parse("round-robin").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidConfig);
        assert!(err.message.contains("round-robin"));
        for name in STRATEGY_NAMES {
            assert!(err.message.contains(name), "{}", err.message);
        }
        assert!(Strategy::parse("Simple-Shuffle").is_err());
    }

    #[test]
    fn shuffle_weights_one_to_three() {
        let s = DeploymentStats::default();
        let mut a = cand("a", &s);
        let mut b = cand("b", &s);
        a.weight = Some(1.0);
        b.weight = Some(3.0);
        assert_eq!(sweep(&Strategy::SimpleShuffle, &[a, b]), vec![250, 750]);
    }

    #[test]
    fn shuffle_falls_back_to_rpm_then_tpm_then_uniform() {
        let s = DeploymentStats::default();
        let mut a = cand("a", &s);
        let mut b = cand("b", &s);
        a.rpm = Some(100);
        b.rpm = Some(300);
        a.tpm = Some(9_000_000);
        b.tpm = Some(1_000);
        assert_eq!(
            sweep(&Strategy::SimpleShuffle, &[a.clone(), b.clone()]),
            vec![250, 750]
        );
        a.rpm = None;
        b.rpm = None;
        // tpm 9M vs 1k: b gets 1000/9001000 of the draws, i.e. none of 1000 steps.
        assert_eq!(
            sweep(&Strategy::SimpleShuffle, &[a.clone(), b.clone()]),
            vec![1000, 0]
        );
        a.tpm = None;
        b.tpm = None;
        let c = cand("c", &s);
        let d = cand("d", &s);
        assert_eq!(
            sweep(&Strategy::SimpleShuffle, &[a, b, c, d]),
            vec![250, 250, 250, 250]
        );
    }

    #[test]
    fn shuffle_mixed_weights_use_the_mean() {
        let s = DeploymentStats::default();
        let mut a = cand("a", &s);
        let mut b = cand("b", &s);
        let c = cand("c", &s);
        a.weight = Some(1.0);
        b.weight = Some(3.0);
        // c weighs the mean, 2: shares 1/6, 3/6, 2/6.
        let counts = sweep(&Strategy::SimpleShuffle, &[a, b, c]);
        assert_eq!(counts, vec![167, 500, 333]);
    }

    #[test]
    fn shuffle_zero_weight_is_never_drawn() {
        let s = DeploymentStats::default();
        let mut a = cand("a", &s);
        let mut b = cand("b", &s);
        a.weight = Some(0.0);
        b.weight = Some(1.0);
        assert_eq!(
            sweep(&Strategy::SimpleShuffle, &[a.clone(), b.clone()]),
            vec![0, 1000]
        );
        b.weight = Some(0.0);
        assert_eq!(sweep(&Strategy::SimpleShuffle, &[a, b]), vec![500, 500]);
    }

    #[test]
    fn shuffle_skips_ineligible_but_keeps_odds() {
        let cool = DeploymentStats {
            cooldown_remaining: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let s = DeploymentStats::default();
        let mut a = cand("a", &cool);
        let mut b = cand("b", &s);
        let mut c = cand("c", &s);
        a.weight = Some(10.0);
        b.weight = Some(1.0);
        c.weight = Some(3.0);
        assert_eq!(
            sweep(&Strategy::SimpleShuffle, &[a, b, c]),
            vec![0, 250, 750]
        );
    }

    #[test]
    fn least_busy_picks_fewest_in_flight_ties_by_u() {
        let s = |n| DeploymentStats {
            in_flight: n,
            ..Default::default()
        };
        let (a, b, c) = (s(4), s(1), s(1));
        let cands = [cand("a", &a), cand("b", &b), cand("c", &c)];
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, 0.0), Some(1));
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, 0.49), Some(1));
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, 0.5), Some(2));
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, 0.999), Some(2));
    }

    #[test]
    fn latency_based_explores_then_bands() {
        let s = |l: Option<f64>| DeploymentStats {
            latency_ewma_ms: l,
            ..Default::default()
        };
        let strat = Strategy::LatencyBased { band: 0.1 };
        let (a, b, c, d) = (s(Some(100.0)), s(Some(108.0)), s(Some(150.0)), s(None));
        // d has no data yet: it is tried first, whatever u.
        let cands = [cand("a", &a), cand("b", &b), cand("c", &c), cand("d", &d)];
        assert_eq!(pick(&strat, &cands, 0, 0.0), Some(3));
        assert_eq!(pick(&strat, &cands, 0, 0.9), Some(3));
        // Without d: a and b are within 10% of 100, c is not.
        let cands = [cand("a", &a), cand("b", &b), cand("c", &c)];
        assert_eq!(sweep(&strat, &cands), vec![500, 500, 0]);
        // Band 0: only the best.
        let strict = Strategy::LatencyBased { band: 0.0 };
        assert_eq!(sweep(&strict, &cands), vec![1000, 0, 0]);
        // The best cooling down: the next best and its band.
        let a_cool = DeploymentStats {
            cooldown_remaining: Some(Duration::from_secs(1)),
            ..a.clone()
        };
        let cands = [cand("a", &a_cool), cand("b", &b), cand("c", &c)];
        assert_eq!(sweep(&strat, &cands), vec![0, 1000, 0]);
    }

    #[test]
    fn usage_based_lowest_tokens_then_requests() {
        let s = |t, r| DeploymentStats {
            tokens_this_minute: t,
            requests_this_minute: r,
            ..Default::default()
        };
        let (a, b, c, d) = (s(500, 1), s(100, 9), s(100, 3), s(100, 3));
        let cands = [cand("a", &a), cand("b", &b), cand("c", &c), cand("d", &d)];
        for strat in [
            Strategy::parse("usage-based-routing").unwrap(),
            Strategy::parse("usage-based-routing-v2").unwrap(),
        ] {
            assert_eq!(sweep(&strat, &cands), vec![0, 0, 500, 500]);
        }
    }

    #[test]
    fn cost_based_cheapest_unknown_last() {
        let s = DeploymentStats::default();
        let mut a = cand("a", &s);
        let mut b = cand("b", &s);
        let mut c = cand("c", &s);
        let d = cand("d", &s);
        a.cost_per_token = Some((3e-6, 15e-6));
        b.cost_per_token = Some((1e-6, 2e-6));
        c.cost_per_token = Some((2e-6, 1e-6));
        assert_eq!(
            sweep(
                &Strategy::CostBased,
                &[a.clone(), b.clone(), c.clone(), d.clone()]
            ),
            vec![0, 500, 500, 0]
        );
        // Unknown cost is chosen only when no known-cost candidate is eligible.
        let cool = DeploymentStats {
            cooldown_remaining: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let (mut a, mut b) = (a, b);
        a.stats = &cool;
        b.stats = &cool;
        c.stats = &cool;
        assert_eq!(pick(&Strategy::CostBased, &[a, b, c, d], 0, 0.3), Some(3));
    }

    #[test]
    fn rpm_admits_exactly_rpm_per_minute_for_every_strategy() {
        let strategies = [
            Strategy::SimpleShuffle,
            Strategy::LeastBusy,
            Strategy::LatencyBased { band: 0.1 },
            Strategy::UsageBased,
            Strategy::CostBased,
        ];
        for strat in &strategies {
            let mut admitted = 0;
            let mut stats = DeploymentStats::default();
            for _ in 0..10 {
                let mut c = cand("a", &stats);
                c.rpm = Some(3);
                if pick(strat, &[c], 0, 0.5).is_some() {
                    admitted += 1;
                    stats.requests_this_minute += 1;
                }
            }
            assert_eq!(admitted, 3, "{}", strat.name());
        }
        // rpm 0 admits nothing.
        let s = DeploymentStats::default();
        let mut c = cand("a", &s);
        c.rpm = Some(0);
        assert_eq!(pick(&Strategy::SimpleShuffle, &[c], 0, 0.0), None);
    }

    #[test]
    fn tpm_counts_the_estimate() {
        let s = DeploymentStats {
            tokens_this_minute: 900,
            ..Default::default()
        };
        let fresh = DeploymentStats::default();
        let mut a = cand("a", &s);
        a.tpm = Some(1_000);
        let mut b = cand("b", &fresh);
        b.tpm = Some(1_000);
        for strat in [
            Strategy::UsageBased,
            Strategy::LeastBusy,
            Strategy::CostBased,
        ] {
            // 900 + 100 = 1000 fits exactly; 900 + 101 does not.
            assert_eq!(pick(&strat, &[a.clone()], 100, 0.0), Some(0));
            assert_eq!(pick(&strat, &[a.clone()], 101, 0.0), None);
            assert_eq!(pick(&strat, &[a.clone(), b.clone()], 101, 0.0), Some(1));
            // Larger than the whole limit: capped at it, so an idle deployment takes it.
            assert_eq!(pick(&strat, &[b.clone()], 1_001, 0.0), Some(0));
            assert_eq!(pick(&strat, &[a.clone()], 1_001, 0.0), None);
        }
    }

    #[test]
    fn cooldown_filters_for_every_strategy() {
        let cool = DeploymentStats {
            cooldown_remaining: Some(Duration::from_millis(1)),
            ..Default::default()
        };
        let s = DeploymentStats {
            in_flight: 50,
            latency_ewma_ms: Some(9_999.0),
            tokens_this_minute: 1_000_000,
            ..Default::default()
        };
        for strat in [
            Strategy::SimpleShuffle,
            Strategy::LeastBusy,
            Strategy::LatencyBased { band: 0.1 },
            Strategy::UsageBased,
            Strategy::CostBased,
        ] {
            let cands = [cand("cool", &cool), cand("busy", &s)];
            assert_eq!(sweep(&strat, &cands), vec![0, 1000], "{}", strat.name());
            assert_eq!(pick(&strat, &cands[..1], 0, 0.0), None);
            assert_eq!(pick(&strat, &[], 0, 0.0), None);
        }
    }

    #[test]
    fn out_of_range_u_is_clamped() {
        let s = DeploymentStats::default();
        let cands = [cand("a", &s), cand("b", &s)];
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, -1.0), Some(0));
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, 1.0), Some(1));
        assert_eq!(pick(&Strategy::LeastBusy, &cands, 0, f64::NAN), Some(0));
        assert_eq!(pick(&Strategy::SimpleShuffle, &cands, 0, 7.0), Some(1));
    }
}
