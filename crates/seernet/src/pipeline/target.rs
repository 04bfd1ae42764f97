//! The accuracy-first mode (`--max-drop P`, docs/method.md §6): instead of the most accurate
//! policy within a cost budget, the cheapest policy whose accuracy stays within P top-1 points
//! of the full-precision baseline — what Intel Neural Compressor (`tolerable_loss`), NNCF
//! (`max_drop`) and AIMET (`allowed_accuracy_drop`) offer.
//!
//! The predictor proposes, labels shortlist, the final fine-tune decides on the validation split,
//! the test split reports: each verification round proposes, per pessimism κ, the cheapest
//! barrier optimum whose μ − κσ reaches the label threshold (bisection on the BOPs budget); the
//! cheapest labelled policy that reached it and up to [`MAX_TRIES`] − 1 safer ones form a
//! ladder; each is fine-tuned in turn until one's validation top-1 is within P of the
//! baseline's; the test split then says whether the drop held.

use seer_predictor::Predictor;

use super::Run;
use super::choice::Fitted;
use crate::budget::{BudgetKind, ResolvedBudget};
use crate::error::{Error, Result};
use crate::report;
use crate::search::{Found, find_policy};

/// Final fine-tunes an accuracy target may spend walking up its ladder of candidates.
pub const MAX_TRIES: usize = 3;

/// Bisection steps on the log-BOPs budget (2^-14 of the log range: well below one policy's
/// BOPs step).
const BISECTION_STEPS: usize = 14;

/// The accuracy target of a run with `--max-drop`.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// Largest allowed drop P (top-1 points).
    pub(super) max_drop: f64,
    /// Validation top-1 a label must reach to be a candidate: the labelling protocol's own
    /// reference − P. The reference is the label of the unpruned uniform policy with the most
    /// bits (w8a8), capped at the baseline's validation top-1: the short labelling fine-tune
    /// costs even a near-lossless policy some accuracy, which the long final fine-tune
    /// recovers, so labels are compared with what the protocol gives such a policy.
    pub(super) threshold: f64,
    /// The baseline's validation top-1: a fine-tuned candidate is accepted within P of it.
    pub(super) reference_val: f64,
    /// The target as an unconstrained "budget" (no cost limit), labelled `max-drop-<P>`, so
    /// that the final fine-tune, export and report treat it like any budget.
    pub(super) budget: ResolvedBudget,
}

/// `max-drop-1`, `max-drop-0.5`: the target's label (file names: `[A-Za-z0-9.-]`).
pub fn label(max_drop: f64) -> String {
    format!("max-drop-{max_drop}")
}

/// Checks a `--max-drop` value: finite, > 0 and < 100 points. Errors: [`Error::Config`].
pub fn check_max_drop(p: f64) -> Result<()> {
    if !(p.is_finite() && p > 0.0 && p < 100.0) {
        return Err(Error::Config {
            what: "max-drop".into(),
            msg: format!("{p}: give the allowed top-1 drop in points, > 0 and < 100 (e.g. 1.0)"),
        });
    }
    Ok(())
}

impl Run<'_> {
    /// The run's accuracy target, if `--max-drop` was given.
    pub(super) fn target(&self) -> Option<Target> {
        let p = self.cfg.max_drop?;
        let reference = self
            .uniform
            .iter()
            .filter(|u| u.prune == 0.0)
            .max_by_key(|u| (u.wbits, u.abits))
            .and_then(|u| self.store.get(&crate::store::policy_hash(&u.policy)))
            .map_or(self.base.val_top1, |r| r.top1.min(self.base.val_top1));
        Some(Target {
            max_drop: p,
            threshold: reference - p,
            reference_val: self.base.val_top1,
            budget: ResolvedBudget {
                label: label(p),
                kind: BudgetKind::MaxBops(self.budgets.dearest.bops),
                max_bops: None,
                max_size_bits: None,
            },
        })
    }

    /// The cheapest barrier optimum (of μ − κσ) whose μ − κσ reaches `t.threshold`: bisection
    /// on the log-BOPs budget between the cheapest and the most expensive policy of the space
    /// (seed: [`Stream::Search`](super::Stream::Search)). When even the full budget's optimum falls short, that
    /// optimum (the safest proposal there is). Errors: the search's, as [`Error::Search`].
    pub(super) fn search_target(
        &self,
        t: &Target,
        predictor: &Predictor,
        kappa: f64,
    ) -> Result<Found> {
        let opts = self.search_options(kappa);
        let find = |bops: f64| {
            find_policy(
                &self.space,
                predictor,
                &seer_barrier::Budget::bops(bops),
                &opts,
            )
            .map_err(|e| Error::Search {
                budget: t.budget.label.clone(),
                source: Box::new(e),
            })
        };
        let score = |f: &Found| f.predicted_mean - kappa * f.predicted_std;
        let (mut lo, mut hi) = (
            (self.budgets.cheapest.bops as f64).ln(),
            (self.budgets.dearest.bops as f64).ln(),
        );
        let mut best = find(hi.exp())?;
        if score(&best) < t.threshold {
            return Ok(best);
        }
        for _ in 0..BISECTION_STEPS {
            let mid = 0.5 * (lo + hi);
            match find(mid.exp()) {
                Ok(f) if score(&f) >= t.threshold => {
                    hi = mid;
                    best = f;
                }
                // Below the target, or a budget too small to search: go dearer.
                _ => lo = mid,
            }
        }
        Ok(best)
    }

    /// The target's ladder among the planned labels: first the cheapest whose validation top-1
    /// reached the threshold (ties: the more accurate), else the most accurate (ties: the
    /// cheaper); then each next safer one, up to [`MAX_TRIES`] in all. With the report's view
    /// of the first (next cheaper and next safer labelled policies). `None` when nothing is
    /// labelled.
    pub(super) fn choose_target(
        &self,
        t: &Target,
        fitted: &Fitted,
    ) -> Option<(Vec<usize>, report::AccuracyTarget)> {
        let recs = &fitted.recs;
        let points: Vec<(u64, f64)> = recs.iter().map(|r| (r.bops, r.top1)).collect();
        let p = pick(&points, t.threshold)?;
        let alt = |i: usize| report::Alternative {
            bops: recs[i].bops,
            size_bits: recs[i].size_bits,
            label_val_top1: recs[i].top1,
        };
        let (next_cheaper, next_safer) = (p.next_cheaper.map(alt), p.next_safer.map(alt));
        let reached = p.reached;
        let mut ladder = vec![p.chosen];
        let mut safer = p.next_safer;
        while let Some(i) = safer.filter(|_| ladder.len() < MAX_TRIES) {
            ladder.push(i);
            safer = pick_safer(&points, i);
        }
        Some((
            ladder,
            report::AccuracyTarget {
                max_drop: t.max_drop,
                reference_test_top1: self.base.test_top1,
                reference_val_top1: t.reference_val,
                label_threshold: t.threshold,
                tried: Vec::new(),
                reached_on_labels: reached,
                next_cheaper,
                next_safer,
            },
        ))
    }
}

/// The target's choice among labelled points `(bops, top1)`, as indices.
#[derive(Debug, PartialEq)]
struct Pick {
    chosen: usize,
    /// Whether the chosen point reached the threshold.
    reached: bool,
    next_cheaper: Option<usize>,
    next_safer: Option<usize>,
}

/// The cheapest point whose top-1 reached `threshold` (ties: the more accurate), else the most
/// accurate (ties: the cheaper); the next cheaper point is the most accurate of those with fewer
/// BOPs, the next safer the cheapest of those with more BOPs and a higher top-1. None for no
/// points.
fn pick(points: &[(u64, f64)], threshold: f64) -> Option<Pick> {
    let n = points.len();
    // Orders: by BOPs then top-1 descending; by top-1 then BOPs descending.
    let cheaper_first = |&a: &usize, &b: &usize| {
        points[a]
            .0
            .cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    };
    let more_accurate = |&a: &usize, &b: &usize| {
        points[a]
            .1
            .total_cmp(&points[b].1)
            .then(points[b].0.cmp(&points[a].0))
    };
    let reached = (0..n)
        .filter(|&i| points[i].1 >= threshold)
        .min_by(cheaper_first);
    let chosen = reached.or_else(|| (0..n).max_by(more_accurate))?;
    let bops = points[chosen].0;
    Some(Pick {
        chosen,
        reached: reached.is_some(),
        next_cheaper: (0..n).filter(|&i| points[i].0 < bops).max_by(more_accurate),
        next_safer: pick_safer(points, chosen),
    })
}

/// The cheapest point dearer and more accurate than point `i` (ties: the more accurate).
fn pick_safer(points: &[(u64, f64)], i: usize) -> Option<usize> {
    let (bops, top1) = points[i];
    (0..points.len())
        .filter(|&j| points[j].0 > bops && points[j].1 > top1)
        .min_by(|&a, &b| {
            points[a]
                .0
                .cmp(&points[b].0)
                .then(points[b].1.total_cmp(&points[a].1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheapest_label_within_the_drop_wins() {
        // (BOPs, validation top-1); threshold 87.8 (baseline 88.8 − 1.0).
        let pts = [
            (100, 80.0),
            (300, 87.9), // cheapest that reaches
            (200, 87.5), // next cheaper: the most accurate below 300 BOPs
            (500, 88.6), // dearer and more accurate ...
            (400, 88.1), // ... the cheapest such: next safer
            (300, 87.8), // same BOPs, less accurate
        ];
        assert_eq!(
            pick(&pts, 87.8),
            Some(Pick {
                chosen: 1,
                reached: true,
                next_cheaper: Some(2),
                next_safer: Some(4),
            })
        );
        // Nothing reaches 95: the most accurate is taken, nothing is safer.
        assert_eq!(
            pick(&pts, 95.0),
            Some(Pick {
                chosen: 3,
                reached: false,
                next_cheaper: Some(4),
                next_safer: None,
            })
        );
        assert_eq!(pick(&[], 50.0), None);
        // The ladder above the first candidate: 300 -> 400 -> 500 BOPs.
        assert_eq!(pick_safer(&pts, 1), Some(4));
        assert_eq!(pick_safer(&pts, 4), Some(3));
        assert_eq!(pick_safer(&pts, 3), None);
    }

    #[test]
    fn max_drop_values_are_checked_and_labelled() {
        assert_eq!(label(1.0), "max-drop-1");
        assert_eq!(label(0.5), "max-drop-0.5");
        for bad in [0.0, -1.0, 100.0, f64::NAN, f64::INFINITY] {
            let e = check_max_drop(bad).unwrap_err().to_string();
            assert!(e.contains("max-drop"), "{e}");
        }
        check_max_drop(1.0).unwrap();
    }
}
