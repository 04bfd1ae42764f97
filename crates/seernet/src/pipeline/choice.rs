//! The final predictor with its held-out quality, and the choice of one policy per budget
//! (plus the predicted accuracy-vs-BOPs front of the report).

use std::time::Instant;

use seer_predictor::Predictor;

use super::{Run, Stream, sampling};
use crate::budget::ResolvedBudget;
use crate::error::{Error, Result, chain};
use crate::report;
use crate::search::{Found, find_policy};
use crate::store::LabelRecord;

/// The final predictor, fitted on every planned label.
pub(super) struct Fitted {
    /// The planned labels, in plan order.
    pub(super) recs: Vec<LabelRecord>,
    /// The predictor; `None` for a method that uses none (`fit-ilp`, `random`, `uniform`).
    pub(super) predictor: Option<Predictor>,
    /// Held-out quality, when measured (≥ 10 labels).
    pub(super) quality: Option<report::PredictorQuality>,
    /// The predictor scored on the fixed held-out labels of [`Config::heldout_labels`]
    /// (`super::Config`), when given.
    pub(super) heldout: Option<report::PredictorQuality>,
}

/// One budget's chosen policy.
pub(super) struct Chosen {
    pub(super) budget: ResolvedBudget,
    pub(super) found: Found,
    /// Where the policy came from (initial set, active round, verification, ...).
    pub(super) from: String,
    /// Its label (validation top-1), when it is a labelled policy.
    pub(super) label_top1: Option<f64>,
    /// The accuracy target it answers (`--max-drop`), when it is one.
    pub(super) target: Option<report::AccuracyTarget>,
    /// For an accuracy target: the safer candidates to fine-tune in turn if this one's
    /// validation drop exceeds the target (cheapest first; see `pipeline::target`).
    pub(super) safer: Vec<Chosen>,
    /// For a budget of a predictor method: the uniform anchors within the budget (labelled,
    /// and fine-tuned anyway for the report) that the final pick compares with this policy on
    /// validation after the final fine-tune (docs/method.md §7).
    pub(super) rivals: Vec<Chosen>,
    /// Why the policy leaves more than 10% of its budget unused, when it does.
    pub(super) budget_note: Option<String>,
}

/// The share of budget `b` costs `(bops, size_bits)` use: the larger of BOPs / BOPs limit and
/// size / size limit (None when `b` has no limit).
pub(super) fn budget_used(b: &ResolvedBudget, bops: u64, size_bits: u64) -> Option<f64> {
    let shares = [
        b.max_bops.map(|m| bops as f64 / m as f64),
        b.max_size_bits.map(|m| size_bits as f64 / m as f64),
    ];
    shares.into_iter().flatten().reduce(f64::max)
}

/// Why the labelled policy `k` of `recs`, chosen for `b`, uses less than 90% of it; None when
/// it uses at least that. Either the dearer labelled policies within the budget all validated
/// lower, or none was labelled (the fill found no upgrade the predictor expected to gain).
fn budget_note(b: &ResolvedBudget, recs: &[LabelRecord], k: usize) -> Option<String> {
    let c = &recs[k];
    let used = budget_used(b, c.bops, c.size_bits)?;
    if used >= 0.9 {
        return None;
    }
    let dearer: Vec<f64> = recs
        .iter()
        .filter(|r| b.admits(r.bops, r.size_bits) && r.bops > c.bops)
        .map(|r| r.top1)
        .collect();
    Some(match dearer.iter().copied().reduce(f64::max) {
        Some(m) => format!(
            "the {} labelled {} within the budget that cost more validated at most {m:.2}%, \
             against its {:.2}%",
            dearer.len(),
            if dearer.len() == 1 {
                "policy"
            } else {
                "policies"
            },
            c.top1
        ),
        None => "no labelled policy lies between it and the limit: the fill found no upgrade \
                 the predictor expected to gain"
            .into(),
    })
}

/// The choice per budget and the predicted front.
pub(super) struct Choice {
    pub(super) chosen: Vec<Chosen>,
    pub(super) front: Vec<report::FrontPoint>,
}

impl Run<'_> {
    /// Stage 5: the final predictor on every planned label (seed: [`Stream::FinalFit`]; only
    /// for a method that uses one) and, with at least 10 labels, the quality of a predictor on
    /// held-out labels (a diagnostic: when it cannot be computed the run logs why and goes on).
    pub(super) fn final_predictor(&mut self) -> Result<Fitted> {
        let t = Instant::now();
        let recs = self.planned_records()?;
        let seed = Stream::FinalFit.seed(self.cfg.seed);
        let predictor = if self.cfg.method.uses_predictor() {
            Some(sampling::fit(&self.space, &recs, seed)?)
        } else {
            None
        };
        let quality = if recs.len() >= 10 {
            self.quality(&recs)?
        } else {
            self.log
                .line("fewer than 10 labels: predictor quality not measured");
            None
        };
        let heldout = match &predictor {
            Some(p) => self.heldout_quality(p, recs.len())?,
            None => None,
        };
        self.timed("predictor", t);
        Ok(Fitted {
            recs,
            predictor,
            quality,
            heldout,
        })
    }

    /// The final predictor `p` (fitted on `n_train` labels) scored on the held-out labels
    /// ([`Config::heldout_labels`](super::Config::heldout_labels), read at setup) whose
    /// policies this run did not plan: Kendall's τ-b, Spearman's ρ and RMSE (points) between
    /// μ and the labels. One fixed set scores runs that planned different labels alike
    /// (issue 16: acquisitions compared on one held-out set). `None` without held-out labels,
    /// and (logged, the run goes on, as for [`Run::quality`]) when fewer than 4 labels are
    /// left or they cannot be ranked (all equal). Errors: a held-out policy outside the space (the policy crate's).
    fn heldout_quality(
        &mut self,
        p: &Predictor,
        n_train: usize,
    ) -> Result<Option<report::PredictorQuality>> {
        let Some((path, records)) = &self.heldout else {
            return Ok(None);
        };
        let planned: std::collections::HashSet<&[usize]> =
            self.planned.iter().map(|i| i.as_slice()).collect();
        let mut rows = Vec::new();
        let mut truth = Vec::new();
        for r in records {
            let idx = self.space.to_indices(&r.policy)?;
            if !planned.contains(idx.as_slice()) {
                rows.push(sampling::features(&self.space, &idx));
                truth.push(r.top1);
            }
        }
        let not_measured = |log: &mut super::progress::RunLog<'_>, why: String| {
            log.line(&format!(
                "predictor on the held-out labels of {} not measured: {why}",
                path.display()
            ));
            Ok(None)
        };
        if truth.len() < 4 {
            let why = format!("{} labels this run did not plan, 4 needed", truth.len());
            return not_measured(&mut self.log, why);
        }
        let pred = p.predict(&rows)?.mean;
        let metrics = (|| -> std::result::Result<_, seer_predictor::Error> {
            Ok((
                seer_predictor::kendall_tau_b(&pred, &truth)?,
                seer_predictor::spearman(&pred, &truth)?,
                seer_predictor::rmse(&pred, &truth)?,
            ))
        })();
        let (kendall_tau, spearman, rmse) = match metrics {
            Ok(m) => m,
            Err(e) => return not_measured(&mut self.log, chain(&e)),
        };
        let q = report::PredictorQuality {
            kendall_tau,
            spearman: Some(spearman),
            rmse,
            n_train,
            n_test: truth.len(),
        };
        self.log.line(&format!(
            "predictor on the {} held-out labels of {}: Kendall tau {:.3}, RMSE {:.3} points",
            q.n_test,
            path.display(),
            q.kendall_tau,
            q.rmse
        ));
        Ok(Some(q))
    }

    /// Kendall τ, Spearman and RMSE of the predictor over 5 random 80/20 splits of `recs`
    /// (members' seed: [`Stream::FinalFit`]; splits: [`Stream::QualitySplits`]). `None` when
    /// they cannot be computed (e.g. a held-out split whose labels are all equal).
    fn quality(&mut self, recs: &[LabelRecord]) -> Result<Option<report::PredictorQuality>> {
        let s = sampling::samples(&self.space, recs)?;
        let pc = seer_predictor::Config {
            seed: Stream::FinalFit.seed(self.cfg.seed),
            ..Default::default()
        };
        let cv = seer_predictor::CvOptions {
            splits: 5,
            test_frac: 0.2,
            seed: Stream::QualitySplits.seed(self.cfg.seed),
        };
        let cv = match seer_predictor::cross_validate(&s, &pc, &cv) {
            Ok(cv) => cv,
            Err(e) => {
                let why = chain(&e);
                self.log
                    .line(&format!("predictor quality not measured: {why}"));
                return Ok(None);
            }
        };
        let q = report::PredictorQuality {
            kendall_tau: cv.summary(|s| s.kendall_tau).mean,
            spearman: Some(cv.summary(|s| s.spearman).mean),
            rmse: cv.summary(|s| s.rmse).mean,
            n_train: cv.n_samples - cv.n_test,
            n_test: cv.n_test,
        };
        self.log.line(&format!(
            "predictor on held-out labels (5 random 80/20 splits): Kendall tau {:.3}, Spearman {:.3}, RMSE {:.3} points",
            q.kendall_tau,
            q.spearman.unwrap_or(f64::NAN),
            q.rmse
        ));
        Ok(Some(q))
    }

    /// Stage 6: the policy of each budget (written to its policy file) and the predicted front.
    pub(super) fn choose(&mut self, fitted: &Fitted) -> Result<Choice> {
        let _span = tracing::info_span!("choose").entered();
        let t = Instant::now();
        let mut chosen = Vec::new();
        for b in self.budgets.resolved.clone() {
            chosen.push(self.choose_for(b, fitted)?);
        }
        if let Some(t) = self.target() {
            chosen.extend(self.choose_for_target(&t, fitted)?);
        }
        let front = match &fitted.predictor {
            Some(p) => self.front(p),
            None => Vec::new(),
        };
        self.timed("search", t);
        Ok(Choice { chosen, front })
    }

    /// The labelled policy within budget `b` with the best validation top-1 (ties: fewer BOPs);
    /// without one (no verification rounds), the barrier optimum of μ. Writes it to
    /// `policy-<label>.json`.
    fn choose_for(&mut self, b: ResolvedBudget, fitted: &Fitted) -> Result<Chosen> {
        let best = super::stages::best_within(&b, &fitted.recs);
        let note = best.and_then(|(k, _)| budget_note(&b, &fitted.recs, k));
        let (found, from, label_top1) = match best {
            Some((k, _)) => {
                let r = &fitted.recs[k];
                let (found, from) = self.labelled(&self.planned[k], r, fitted)?;
                (found, from, Some(r.top1))
            }
            None => {
                let Some(predictor) = &fitted.predictor else {
                    return Err(Error::Config {
                        what: "method".into(),
                        msg: format!(
                            "budget {}: method {} labelled no policy within the budget",
                            b.label, self.cfg.method
                        ),
                    });
                };
                let found = self.search(&b, predictor, 0.0)?;
                let from = format!("{} search (unlabelled)", found.method);
                (found, from, None)
            }
        };
        let mut c = self.save_choice(b, found, from, label_top1, None)?;
        c.budget_note = note;
        if self.cfg.method.uses_predictor() {
            c.rivals = self.rivals(&c, fitted)?;
        }
        Ok(c)
    }

    /// The final pick's rivals of `c` (docs/method.md §7): the labelled uniform anchors within
    /// its budget (from: `uniform anchor <name>`) in anchor order, the uniform policy within it
    /// with the best predicted μ, then the
    /// [`Config::final_rivals`](super::Config::final_rivals) best-labelled other policies
    /// within it; never `c`'s own policy, none twice.
    fn rivals(&self, c: &Chosen, fitted: &Fitted) -> Result<Vec<Chosen>> {
        let mut out: Vec<Chosen> = Vec::new();
        // Adds a rival unless it is `c` or already in; whether it was added.
        let push = |found: Found, from: String, top1: Option<f64>, out: &mut Vec<Chosen>| {
            let new = found.policy != c.found.policy
                && out.iter().all(|o| o.found.policy != found.policy);
            if new {
                out.push(Chosen {
                    budget: c.budget.clone(),
                    found,
                    from,
                    label_top1: top1,
                    target: None,
                    safer: Vec::new(),
                    rivals: Vec::new(),
                    budget_note: None,
                });
            }
            new
        };
        for u in &self.uniform {
            let cost = self.space.cost(&u.policy)?;
            if !c.budget.admits(cost.total_bops, cost.total_size_bits) {
                continue;
            }
            let Some(r) = self.store.get(&crate::store::policy_hash(&u.policy)) else {
                continue;
            };
            let idx = self.space.to_indices(&u.policy)?;
            let (found, _) = self.labelled(&idx, r, fitted)?;
            let from = format!("uniform anchor {}", u.name());
            push(found, from, Some(r.top1), &mut out);
        }
        if let Some((found, from, top1)) = self.predicted_best_uniform(&c.budget, fitted)? {
            push(found, from, top1, &mut out);
        }
        let mut next = 0;
        for k in super::stages::ranked_within(&c.budget, &fitted.recs) {
            if next == self.cfg.final_rivals {
                break;
            }
            let r = &fitted.recs[k];
            let (found, from) = self.labelled(&self.planned[k], r, fitted)?;
            if push(found, from, Some(r.top1), &mut out) {
                next += 1;
            }
        }
        Ok(out)
    }

    /// The uniform policy within `b` (any of the space's, not only the anchors) with the
    /// highest predicted μ (ties: the first, most bits first), as a search result, where it
    /// came from and its label if it has one; None without a predictor or without a uniform
    /// policy within `b`.
    fn predicted_best_uniform(
        &self,
        b: &ResolvedBudget,
        fitted: &Fitted,
    ) -> Result<Option<(Found, String, Option<f64>)>> {
        let Some(pr) = &fitted.predictor else {
            return Ok(None);
        };
        let mut cands = Vec::new();
        for u in super::setup::all_uniform(&self.space) {
            let cost = self.space.cost(&u.policy)?;
            if b.admits(cost.total_bops, cost.total_size_bits) {
                let idx = self.space.to_indices(&u.policy)?;
                cands.push((u, cost, idx));
            }
        }
        let rows: Vec<_> = cands
            .iter()
            .map(|(_, _, idx)| sampling::features(&self.space, idx))
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let p = pr.predict(&rows)?;
        let best = (0..rows.len())
            .max_by(|&x, &y| p.mean[x].total_cmp(&p.mean[y]).then(y.cmp(&x)))
            .expect("non-empty");
        let (u, cost, idx) = cands.swap_remove(best);
        let label = self
            .store
            .get(&crate::store::policy_hash(&u.policy))
            .map(|r| r.top1);
        let found = Found {
            method: self.search_options(0.0).method,
            indices: idx,
            policy: u.policy.clone(),
            bops: cost.total_bops,
            size_bits: cost.total_size_bits,
            predicted_mean: p.mean[best],
            predicted_std: p.std[best],
            extrapolation: p.extrapolation.and_then(|e| e.get(best).copied()),
            seconds: 0.0,
            evaluations: rows.len(),
        };
        let from = format!(
            "uniform {} (the best predicted uniform policy within {})",
            u.name(),
            b.label
        );
        Ok(Some((found, from, label)))
    }

    /// A labelled policy (candidate indices `idx`, record `r`) as a search result with the
    /// final predictor's μ, σ and extrapolation flag, and where it came from. Without a
    /// predictor (a method that uses none) μ is the label itself and σ is NaN.
    fn labelled(&self, idx: &[usize], r: &LabelRecord, fitted: &Fitted) -> Result<(Found, String)> {
        let (mean, std, extrapolation) = match &fitted.predictor {
            Some(pr) => {
                let p = pr.predict(&[sampling::features(&self.space, idx)])?;
                let e = p.extrapolation.and_then(|e| e.first().copied());
                (p.mean[0], p.std[0], e)
            }
            None => (r.top1, f64::NAN, None),
        };
        let found = Found {
            method: self.search_options(0.0).method,
            indices: idx.to_vec(),
            policy: r.policy.clone(),
            bops: r.bops,
            size_bits: r.size_bits,
            predicted_mean: mean,
            predicted_std: std,
            extrapolation,
            seconds: 0.0,
            evaluations: 0,
        };
        let from = self.origin.get(idx).cloned();
        Ok((found, from.unwrap_or_else(|| "label store".into())))
    }

    /// The accuracy target's choice (see [`Run::choose_target`]), written to its policy file;
    /// none when nothing is labelled.
    fn choose_for_target(
        &mut self,
        t: &super::target::Target,
        fitted: &Fitted,
    ) -> Result<Option<Chosen>> {
        let Some((ladder, info)) = self.choose_target(t, fitted) else {
            return Ok(None);
        };
        let i = ladder[0];
        let r = &fitted.recs[i];
        let (found, from) = self.labelled(&self.planned[i].clone(), r, fitted)?;
        let mut safer = Vec::new();
        for &j in &ladder[1..] {
            let (f, from) = self.labelled(&self.planned[j].clone(), &fitted.recs[j], fitted)?;
            safer.push(Chosen {
                budget: t.budget.clone(),
                found: f,
                from,
                label_top1: Some(fitted.recs[j].top1),
                target: Some(info.clone()),
                safer: Vec::new(),
                rivals: Vec::new(),
                budget_note: None,
            });
        }
        self.log.line(&format!(
            "{}: {} (validation top-1 {:.2}% vs threshold {:.2}% = reference {:.2}% − {}; the \
             reference is the lower of the baseline's validation top-1, {:.2}%, and the label of \
             the widest unpruned uniform policy)",
            t.budget.label,
            if info.reached_on_labels {
                "cheapest labelled policy within the allowed drop"
            } else {
                "NO labelled policy within the allowed drop; taking the most accurate"
            },
            r.top1,
            t.threshold,
            t.threshold + t.max_drop,
            t.max_drop,
            self.base.val_top1,
        ));
        let top1 = r.top1;
        let mut c = self.save_choice(t.budget.clone(), found, from, Some(top1), Some(info))?;
        c.safer = safer;
        Ok(Some(c))
    }

    /// Writes the choice for budget `b` to `policy-<label>.json` and logs it.
    fn save_choice(
        &mut self,
        b: ResolvedBudget,
        found: Found,
        from: String,
        label_top1: Option<f64>,
        target: Option<report::AccuracyTarget>,
    ) -> Result<Chosen> {
        let file = b.policy_file();
        found.policy.save(self.out.join(&file))?;
        self.log.line(&format!(
            "budget {}: policy with {} BOPs ({:.2}% of w8a8), {} bits, {}{}, labelled val top-1 {}; from {from} -> {file}",
            b.label,
            found.bops,
            100.0 * found.bops as f64 / self.budgets.w8a8 as f64,
            found.size_bits,
            if found.predicted_std.is_finite() {
                format!(
                    "predicted val top-1 {:.2}% ± {:.2}",
                    found.predicted_mean, found.predicted_std
                )
            } else {
                "no predictor".to_string()
            },
            found
                .extrapolation
                .filter(|e| e.any())
                .map_or(String::new(), |e| format!(" (extrapolates: {})", e.describe())),
            label_top1.map_or("—".into(), |v| format!("{v:.2}%")),
        ));
        Ok(Chosen {
            budget: b,
            found,
            from,
            label_top1,
            target,
            safer: Vec::new(),
            rivals: Vec::new(),
            budget_note: None,
        })
    }

    /// The predicted accuracy-vs-BOPs front for the report: the method's search optimum of μ − σ at 10
    /// log-spaced BOPs budgets from just above the cheapest policy to the band's top (a budget
    /// whose search fails is left out).
    fn front(&self, predictor: &Predictor) -> Vec<report::FrontPoint> {
        let opts = self.search_options(1.0);
        let cheapest = self.budgets.cheapest.bops as f64;
        let levels = 10;
        let mut front = Vec::new();
        for i in 0..levels {
            let frac = i as f64 / (levels - 1) as f64;
            let lo = (cheapest * 1.02).ln();
            let hi = self.budgets.band.1.max(cheapest * 1.05).ln();
            let bb = seer_barrier::Budget::bops((lo + frac * (hi - lo)).exp());
            match find_policy(&self.space, predictor, &bb, &opts) {
                Ok(f) => front.push(report::FrontPoint {
                    bops: f.bops,
                    predicted_top1: f.predicted_mean,
                    extrapolates: f.extrapolation.is_some_and(|e| e.any()),
                }),
                Err(e) => tracing::debug!(error = %chain(&e), "front point left out"),
            }
        }
        front
    }
}
