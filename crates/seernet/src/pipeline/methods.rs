//! The methods of `seernet compress --method` (docs/method.md §9): the default `seernet` and the
//! baselines it is compared with at equal cost. Every method labels at most the label budget
//! of the default ([`Run::label_budget`]), chooses per budget the labelled policy within the
//! budget with the best validation top-1, and shares the final fine-tune, test evaluation and
//! export; only where the labelled policies come from differs:
//! - `seernet`: stratified initial set, the uniform anchors and (by default) the fit-ilp
//!   optimum of every budget as anchors, active rounds, barrier search on the predictor in the
//!   verification rounds;
//! - `evo` / `hardstop`: the same, with the evolutionary search (seer-evo) or the authors'
//!   hard-stop normalised-gradient ascent instead of the barrier;
//! - `random`: N uniformly random policies within each budget's band `[budget/2, budget]`;
//! - `uniform`: every uniform policy (same bits and ratio on every unit) within a budget;
//! - `fit-ilp`: no label for the search: per-unit Fisher × noise sensitivities
//!   (`seer_nn::sensitivity`, after FIT, Zandonati et al. ICLR 2023, and HAWQ-V3) and the exact
//!   budgeted optimum of their sum (`SearchSpace::allocate`); each budget's optimum is then
//!   labelled (the same verification as the others).

use std::collections::HashSet;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seer_nn::checkpoint;
use seer_nn::sensitivity::{SensitivityConfig, fisher_sensitivity};
use seer_policy::AllocLimits;
use serde::{Deserialize, Serialize};

use super::{Run, Stream};
use crate::error::{Error, Result};
use crate::search::{Method, SearchOptions};

/// How `seernet compress` chooses each budget's policy (`--method`; docs/method.md §9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressMethod {
    /// The predictor with active sampling and the barrier search (the default).
    #[default]
    Seernet,
    /// Fisher-trace × quantization-noise sensitivities, exact allocation under the budget.
    FitIlp,
    /// Random policies within each budget's band, best validated.
    Random,
    /// As `seernet`, with the evolutionary search on the predictor instead of the barrier.
    Evo,
    /// As `seernet`, with the authors' hard-stop normalised-gradient ascent.
    Hardstop,
    /// The best validated uniform policy within each budget.
    Uniform,
}

impl CompressMethod {
    /// Every method, in the order of the docs.
    pub const ALL: [CompressMethod; 6] = [
        Self::Seernet,
        Self::FitIlp,
        Self::Random,
        Self::Evo,
        Self::Hardstop,
        Self::Uniform,
    ];

    /// Whether the method fits the accuracy predictor and searches on it.
    pub fn uses_predictor(self) -> bool {
        matches!(self, Self::Seernet | Self::Evo | Self::Hardstop)
    }

    /// The name `--method` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seernet => "seernet",
            Self::FitIlp => "fit-ilp",
            Self::Random => "random",
            Self::Evo => "evo",
            Self::Hardstop => "hardstop",
            Self::Uniform => "uniform",
        }
    }
}

impl std::str::FromStr for CompressMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown method {s:?} ({})",
                    Self::ALL.map(|m| m.name()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for CompressMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dynamic-programming steps per limit of `fit-ilp` (docs/method.md §9): each unit's cost is
/// rounded up to 1/4000 of the limit, so at most `units/4000` of the budget goes unused.
pub const FIT_BINS: usize = 4000;

impl Run<'_> {
    /// The label budget N every method may spend: the default method's plan at most, N₀ +
    /// the uniform anchors (+ one fit-ilp anchor per budget with
    /// [`Config::fit_anchors`](super::Config::fit_anchors)) + R·K + one label per verification round, budget (and target) and
    /// κ + one label per fill round and budget.
    pub(super) fn label_budget(&self) -> usize {
        let cfg = self.cfg;
        let searches = self.budgets.resolved.len() + usize::from(cfg.max_drop.is_some());
        cfg.n0
            + self.uniform.len()
            + cfg.rounds * cfg.k
            + cfg.verify_rounds * searches * cfg.kappas.len()
            + cfg.fill_rounds * self.budgets.resolved.len()
            + if cfg.fit_anchors {
                self.budgets.resolved.len()
            } else {
                0
            }
    }

    /// The search options of the predictor methods (seed: [`Stream::Search`]): the barrier for
    /// `seernet`, the authors' hard-stop ascent for `hardstop`, the evolutionary search for
    /// `evo` (the authors' population for at most 60 generations, stopping after 15 without
    /// gain; no time limit, so the result does not depend on the machine's speed).
    pub(super) fn search_options(&self, kappa: f64) -> SearchOptions {
        let method = match self.cfg.method {
            super::CompressMethod::Evo => Method::Evo,
            super::CompressMethod::Hardstop => Method::Pgd,
            _ => Method::Barrier,
        };
        let mut opts = SearchOptions::new(method, Stream::Search.seed(self.cfg.seed));
        opts.kappa = kappa;
        opts.evo.time_limit = None;
        opts.evo.generations = 60;
        opts.evo.patience = Some(15);
        opts
    }

    /// `--method random`: N = [`Run::label_budget`] policies, split evenly over the budgets
    /// (the first ones take the remainder), each drawn uniformly over the space (seed:
    /// [`Stream::RandomMethod`]) until it lands in its budget's band `[limit/2, limit]` (BOPs,
    /// or size for a size budget; at most 20,000 draws per policy); all labelled.
    pub(super) fn random_set(&mut self) -> Result<()> {
        let t = Instant::now();
        let n = self.label_budget();
        let nb = self.budgets.resolved.len();
        self.log.stage("labels", n as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(Stream::RandomMethod.seed(self.cfg.seed));
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut seen: HashSet<Vec<usize>> = HashSet::new();
        let cards: Vec<usize> = self
            .space
            .genes()
            .iter()
            .map(|g| g.candidates.len())
            .collect();
        for (i, b) in self.budgets.resolved.clone().iter().enumerate() {
            let want = n / nb + usize::from(i < n % nb);
            let mut got = 0usize;
            let mut draws = 0usize;
            while got < want && draws < 20_000 * want {
                draws += 1;
                let idx: Vec<usize> = cards.iter().map(|&c| rng.random_range(0..c)).collect();
                let tot = self.space.totals_indices(&idx)?;
                let inside = |v: u64, l: Option<u64>| l.is_none_or(|l| 2 * v >= l && v <= l);
                if inside(tot.bops, b.max_bops)
                    && inside(tot.size_bits, b.max_size_bits)
                    && seen.insert(idx.clone())
                {
                    self.origin
                        .insert(idx.clone(), format!("random policy for {}", b.label));
                    rows.push(idx);
                    got += 1;
                }
            }
            if got < want {
                self.log.line(&format!(
                    "budget {}: only {got} of {want} random policies landed in [limit/2, limit] in {draws} draws",
                    b.label
                ));
            }
        }
        self.log.line(&format!(
            "method random: {} random policies within the budgets' bands (label budget {n})",
            rows.len()
        ));
        self.label_batch("random", &rows)?;
        self.planned.extend(rows);
        self.log.finish();
        self.timed("labels", t);
        Ok(())
    }

    /// `--method uniform`: every uniform policy of the space (bits common to weights and
    /// activations × pruning ratios) within at least one budget, most bits first, at most
    /// [`Run::label_budget`] of them; all labelled.
    pub(super) fn uniform_set(&mut self) -> Result<()> {
        let t = Instant::now();
        let mut rows: Vec<Vec<usize>> = Vec::new();
        for u in super::setup::all_uniform(&self.space) {
            let cost = self.space.cost(&u.policy)?;
            let fits = self
                .budgets
                .resolved
                .iter()
                .any(|r| r.admits(cost.total_bops, cost.total_size_bits));
            let idx = self.space.to_indices(&u.policy)?;
            if fits && !rows.contains(&idx) && rows.len() < self.label_budget() {
                self.origin
                    .insert(idx.clone(), format!("uniform {}", u.name()));
                rows.push(idx);
            }
        }
        self.log.stage("labels", rows.len() as u64);
        self.log.line(&format!(
            "method uniform: {} uniform policies within the budgets",
            rows.len()
        ));
        self.label_batch("uniform", &rows)?;
        self.planned.extend(rows);
        self.log.finish();
        self.timed("labels", t);
        Ok(())
    }

    /// The fit-ilp optimum of every budget, deduplicated, each with its origin: sensitivities
    /// of the full-precision baseline from 256 training images in minibatches of 8 (seed:
    /// [`Stream::Sensitivity`]), then per budget the exact optimum of their sum under the
    /// budget ([`FIT_BINS`] steps per limit). Writes `fit-sensitivity.json`. Errors: the
    /// sensitivity computation's, and [`seer_policy::Error::Infeasible`] for a budget the
    /// allocation cannot meet (with `skip_infeasible`, such a budget is logged and has no
    /// optimum instead).
    pub(super) fn fit_optima(
        &mut self,
        skip_infeasible: bool,
    ) -> Result<Vec<(Vec<usize>, String)>> {
        let t = Instant::now();
        let (model, _) = checkpoint::load(&self.base.path, None, &Device::Cpu)?;
        let cfg = SensitivityConfig {
            seed: Stream::Sensitivity.seed(self.cfg.seed),
            ..SensitivityConfig::default()
        };
        let sens = fisher_sensitivity(&model, &self.space, &self.splits.train, &self.norm, &cfg)?;
        let path = self.out.join("fit-sensitivity.json");
        let js = serde_json::to_string_pretty(&sens).expect("serializes") + "\n";
        crate::store::write_atomic(&path, js.as_bytes())?;
        self.log.line(&format!(
            "fit-ilp: Fisher traces from {} minibatch gradients of {} images -> {}",
            sens.batches,
            sens.images / sens.batches.max(1),
            path.display()
        ));
        let scores = sens.gene_scores(&self.space)?;
        self.timed("sensitivities", t);
        let t = Instant::now();
        let mut rows: Vec<(Vec<usize>, String)> = Vec::new();
        for b in self.budgets.resolved.clone() {
            let lim = AllocLimits {
                max_bops: b.max_bops,
                max_size_bits: b.max_size_bits,
            };
            let a = match self.space.allocate(&scores, lim, FIT_BINS, &b.label) {
                Ok(a) => a,
                Err(e @ seer_policy::Error::Infeasible { .. }) if skip_infeasible => {
                    self.log
                        .line(&format!("budget {}: no fit-ilp anchor ({e})", b.label));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.log.line(&format!(
                "budget {}: fit-ilp optimum {} BOPs, {} bits, predicted loss increase {:.4e} ({} DP states)",
                b.label, a.totals.bops, a.totals.size_bits, a.score, a.states
            ));
            if !rows.iter().any(|(r, _)| r == &a.indices) {
                rows.push((a.indices, format!("fit-ilp optimum for {}", b.label)));
            }
        }
        self.timed("allocation", t);
        Ok(rows)
    }

    /// `--method fit-ilp`: the fit-ilp optimum of every budget ([`Run::fit_optima`]), each
    /// labelled (the same verification as the other methods).
    pub(super) fn fit_ilp(&mut self) -> Result<()> {
        let optima = self.fit_optima(false)?;
        let t = Instant::now();
        let mut rows = Vec::new();
        for (idx, name) in optima {
            self.origin.insert(idx.clone(), name);
            rows.push(idx);
        }
        self.log.stage("labels", rows.len() as u64);
        self.label_batch("fit-ilp", &rows)?;
        self.planned.extend(rows);
        self.log.finish();
        self.timed("labels", t);
        Ok(())
    }
}

/// Refuses settings a method cannot run with: an accuracy target (`--max-drop`) and held-out
/// labels (`--heldout-labels`, which must be an existing file) need a predictor method.
pub(super) fn check_method(cfg: &super::Config) -> Result<()> {
    if let Some(p) = &cfg.heldout_labels {
        let msg = if !cfg.method.uses_predictor() {
            format!(
                "--heldout-labels scores a predictor: method {} fits none",
                cfg.method
            )
        } else if !p.is_file() {
            format!(
                "{} is not a label store (a labels.jsonl of a run of this labelling protocol)",
                p.display()
            )
        } else {
            String::new()
        };
        if !msg.is_empty() {
            return Err(Error::Config {
                what: "heldout_labels".into(),
                msg,
            });
        }
    }
    if cfg.max_drop.is_some() && !cfg.method.uses_predictor() {
        return Err(Error::Config {
            what: "method".into(),
            msg: format!(
                "--max-drop needs a predictor method (seernet, evo, hardstop), not {}",
                cfg.method
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_methods() {
        for m in CompressMethod::ALL {
            assert_eq!(m.name().parse::<CompressMethod>(), Ok(m));
            let js = serde_json::to_string(&m).unwrap();
            assert_eq!(js, format!("\"{}\"", m.name()));
        }
        assert_eq!(CompressMethod::default(), CompressMethod::Seernet);
        let e = "fit".parse::<CompressMethod>().unwrap_err();
        assert!(e.contains("fit-ilp") && e.contains("hardstop"), "{e}");
    }

    #[test]
    fn accuracy_targets_and_heldout_labels_need_a_predictor_method() {
        let mut cfg = super::super::Config::quick("unused".into());
        cfg.max_drop = Some(1.0);
        for m in CompressMethod::ALL {
            cfg.method = m;
            assert_eq!(check_method(&cfg).is_ok(), m.uses_predictor(), "{m}");
        }
        cfg.max_drop = None;
        cfg.method = CompressMethod::FitIlp;
        assert!(check_method(&cfg).is_ok());
        cfg.heldout_labels = Some("/nonexistent/labels.jsonl".into());
        cfg.method = CompressMethod::Seernet;
        let e = check_method(&cfg).unwrap_err().to_string();
        assert!(e.contains("is not a label store"), "{e}");
        cfg.method = CompressMethod::Uniform;
        let e = check_method(&cfg).unwrap_err().to_string();
        assert!(e.contains("method uniform fits none"), "{e}");
    }
}
