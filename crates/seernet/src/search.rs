//! Policy search on a trained predictor: adapters from seer-predictor and seer-policy to the
//! search engines (seer-barrier's `Objective`/`Space`, seer-evo's `Problem`) and one entry point,
//! [`find_policy`], for every method (barrier, pgd, evolutionary, random; docs/method.md §5–§6, §8).
//!
//! The predictor's features are either the docs/method.md §1 encoding itself (named
//! `<unit>.<kind>`, as `seernet predictor fit --arch ...` writes them) or raw CSV columns
//! `prune_<u>`, `bits_<u>` (shared weight and activation bit-width), `wbits_<u>`, `abits_<u>`
//! for unit `u`; [`PredictorObjective`] maps the encoding the optimizers move onto them (an
//! affine map per gene) and chains the gradient.

use std::time::Instant;

use seer_barrier::{Budget, CostKind, Objective, PolicySpace, SearchConfig};
use seer_evo::{Band, EvoConfig, Problem};
use seer_policy::{GeneKind, Policy, SearchSpace};
use seer_predictor::{Extrapolation, Predictor};

use crate::error::{Error, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a predictor feature comes from: `offset + scale · x[gene]`, or a constant.
#[derive(Debug, Clone, Copy)]
enum Feature {
    Gene {
        gene: usize,
        offset: f64,
        scale: f64,
    },
    Const(f64),
}

/// A trained predictor seen as a function of the policy encoding (docs/method.md §1).
#[derive(Debug, Clone)]
pub struct PredictorObjective<'a> {
    predictor: &'a Predictor,
    features: Vec<Feature>,
    dim: usize,
    kappa: f64,
}

impl<'a> PredictorObjective<'a> {
    /// Maps every predictor feature (`<unit>.<kind>` encodings, or raw `prune_<u>`, `bits_<u>`,
    /// `wbits_<u>`, `abits_<u>` columns) onto a gene of `space`. Errors
    /// ([`Error::PredictorMismatch`]) name a feature that matches no gene, or a gene the
    /// predictor has no feature for.
    pub fn new(predictor: &'a Predictor, space: &SearchSpace) -> Result<Self> {
        let dim = space.dim();
        let mut used = vec![false; dim];
        let mut features = Vec::with_capacity(predictor.n_features());
        let gene_names = seer_predictor::space::gene_feature_names(space);
        for name in predictor.feature_names() {
            // Trained with `--arch`: the features are the encoding itself, `<unit>.<kind>`.
            if let Some(gene) = gene_names.iter().position(|g| g == name) {
                used[gene] = true;
                features.push(Feature::Gene {
                    gene,
                    offset: 0.0,
                    scale: 1.0,
                });
                continue;
            }
            let parsed = name.rsplit_once('_').and_then(|(kind, u)| {
                let u: usize = u.parse().ok()?;
                let kind = match kind {
                    "prune" => GeneKind::Prune,
                    "bits" => GeneKind::Bits,
                    "wbits" => GeneKind::WBits,
                    "abits" => GeneKind::ABits,
                    _ => return None,
                };
                Some((kind, u))
            });
            let Some((kind, unit)) = parsed else {
                return Err(Error::PredictorMismatch(format!(
                    "feature {name:?} is neither a gene of the space (`<unit>.<kind>`, e.g. {:?}) \
                     nor one of prune_<unit>, bits_<unit>, wbits_<unit>, abits_<unit>",
                    gene_names[0]
                )));
            };
            let gene = space
                .genes()
                .iter()
                .position(|g| g.unit == unit && g.kind == kind)
                .ok_or_else(|| {
                    Error::PredictorMismatch(format!(
                        "feature {name:?} has no gene in the space ({} units, {})",
                        space.units().len(),
                        if space.config().shared_bits {
                            "shared bits: prune_<u>, bits_<u>"
                        } else {
                            "separate bits: prune_<u>, wbits_<u>, abits_<u>"
                        }
                    ))
                })?;
            used[gene] = true;
            let cand = &space.genes()[gene].candidates;
            let coords = space.gene_coords(gene);
            let n = cand.len();
            features.push(if n < 2 || coords[n - 1] == coords[0] {
                Feature::Const(cand[0])
            } else {
                let scale = (cand[n - 1] - cand[0]) / (coords[n - 1] - coords[0]);
                Feature::Gene {
                    gene,
                    offset: cand[0] - scale * coords[0],
                    scale,
                }
            });
        }
        if let Some(g) = (0..dim).find(|&g| !used[g] && space.genes()[g].candidates.len() > 1) {
            let gene = &space.genes()[g];
            return Err(Error::PredictorMismatch(format!(
                "the predictor has no feature for gene {g} ({:?} of unit {} `{}`)",
                gene.kind,
                gene.unit,
                space.units()[gene.unit].name
            )));
        }
        Ok(Self {
            predictor,
            features,
            dim,
            kappa: 0.0,
        })
    }

    /// Maximise the lower confidence bound μ − κσ instead of μ (κ ≥ 0; 0 is plain μ). A
    /// predictor fitted on tens of labels extrapolates optimistically away from them (seen on
    /// the default run: μ above the full-precision accuracy with σ ≈ 10 points); κ > 0 keeps
    /// the search where the ensemble agrees. Err([`Error::Config`]) for κ < 0 or NaN.
    pub fn with_kappa(mut self, kappa: f64) -> Result<Self> {
        if !(kappa.is_finite() && kappa >= 0.0) {
            return Err(Error::Config {
                what: "kappa".into(),
                msg: format!("must be finite and ≥ 0, got {kappa}"),
            });
        }
        self.kappa = kappa;
        Ok(self)
    }

    /// The predictor's feature row (length `n_features`) for one encoded policy `x` (length
    /// `dim`, docs/method.md §1), e.g. for [`Predictor::features_outside`].
    pub fn raw_row(&self, x: &[f64]) -> Vec<f64> {
        self.raw(x)
    }

    /// Raw predictor rows (`[n, n_features]`) for encoded rows `xs` (`[n, dim]`).
    fn raw(&self, xs: &[f64]) -> Vec<f64> {
        let f = self.features.len();
        let n = xs.len() / self.dim;
        let mut out = Vec::with_capacity(n * f);
        for row in xs.chunks(self.dim) {
            out.extend(self.features.iter().map(|ft| match *ft {
                Feature::Gene {
                    gene,
                    offset,
                    scale,
                } => offset + scale * row[gene],
                Feature::Const(c) => c,
            }));
        }
        out
    }
}

impl Objective for PredictorObjective<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn mean(&self, xs: &[f64], mean: &mut [f64]) -> std::result::Result<(), BoxError> {
        let p = self.predictor.predict_matrix(&self.raw(xs))?;
        for ((o, m), s) in mean.iter_mut().zip(&p.mean).zip(&p.std) {
            *o = m - self.kappa * s;
        }
        Ok(())
    }

    fn mean_grad(
        &self,
        xs: &[f64],
        mean: &mut [f64],
        grad: &mut [f64],
    ) -> std::result::Result<(), BoxError> {
        let raw = self.raw(xs);
        let rows: Vec<&[f64]> = raw.chunks(self.features.len()).collect();
        let (p, g) = if self.kappa == 0.0 {
            self.predictor.predict_grad(&rows)?
        } else {
            let (p, score, g) = self.predictor.predict_lcb_grad(&rows, self.kappa)?;
            (seer_predictor::Prediction { mean: score, ..p }, g)
        };
        mean.copy_from_slice(&p.mean);
        for (out, gr) in grad.chunks_mut(self.dim).zip(&g) {
            out.iter_mut().for_each(|v| *v = 0.0);
            for (ft, &gf) in self.features.iter().zip(gr) {
                if let Feature::Gene { gene, scale, .. } = *ft {
                    out[gene] += gf * scale;
                }
            }
        }
        Ok(())
    }

    fn std(&self, xs: &[f64], std: &mut [f64]) -> std::result::Result<bool, BoxError> {
        let p = self.predictor.predict_matrix(&self.raw(xs))?;
        std.copy_from_slice(&p.std);
        Ok(true)
    }
}

/// What an evolutionary genome is scored by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fitness {
    /// Predicted accuracy μ (the evolutionary-search baseline under a budget).
    Mean,
    /// Ensemble disagreement σ (the active sampler's acquisition, docs/method.md §5).
    Std,
}

/// What an evolutionary genome's complexity is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Complexity {
    /// Exact BOPs.
    Bops,
    /// Exact model size in bits.
    SizeBits,
    /// max over the budget's limits of cost / limit: within budget ⇔ ≤ 1.
    BudgetFraction(Budget),
}

/// A search space and a predictor as a seer-evo [`Problem`].
///
/// Genome index k of a gene whose cheapest candidate is its last (pruning ratios) maps to
/// candidate `card − 1 − k`, so complexity is non-decreasing in every genome index, as
/// seer-evo's repair assumes.
pub struct PolicyProblem<'a> {
    space: &'a SearchSpace,
    objective: &'a dyn Objective,
    coords: Vec<Vec<f64>>,
    cards: Vec<usize>,
    reversed: Vec<bool>,
    fitness: Fitness,
    complexity: Complexity,
}

impl std::fmt::Debug for PolicyProblem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyProblem")
            .field("cards", &self.cards)
            .field("fitness", &self.fitness)
            .field("complexity", &self.complexity)
            .finish_non_exhaustive()
    }
}

impl<'a> PolicyProblem<'a> {
    /// The problem of maximising `fitness` over `space`'s policies, with `complexity` as the
    /// quantity the band constrains.
    pub fn new(
        space: &'a SearchSpace,
        objective: &'a dyn Objective,
        fitness: Fitness,
        complexity: Complexity,
    ) -> Self {
        let cheapest = space.cheapest();
        Self {
            coords: (0..space.dim()).map(|g| space.gene_coords(g)).collect(),
            cards: space.genes().iter().map(|g| g.candidates.len()).collect(),
            reversed: cheapest.iter().map(|&c| c != 0).collect(),
            space,
            objective,
            fitness,
            complexity,
        }
    }

    /// Candidate indices (as seer-policy numbers them) of a genome.
    pub fn indices(&self, genome: &[usize]) -> Vec<usize> {
        genome
            .iter()
            .zip(&self.cards)
            .zip(&self.reversed)
            .map(|((&k, &c), &r)| if r { c - 1 - k } else { k })
            .collect()
    }

    /// The genome of candidate indices `idx` (inverse of [`Self::indices`]).
    pub fn genome(&self, idx: &[usize]) -> Vec<usize> {
        self.indices(idx)
    }
}

impl Problem for PolicyProblem<'_> {
    fn cardinalities(&self) -> &[usize] {
        &self.cards
    }

    fn fitness(&self, genomes: &[Vec<usize>]) -> std::result::Result<Vec<f64>, BoxError> {
        let d = self.coords.len();
        let mut xs = Vec::with_capacity(genomes.len() * d);
        for g in genomes {
            let idx = self.indices(g);
            xs.extend(idx.iter().enumerate().map(|(j, &k)| self.coords[j][k]));
        }
        let mut out = vec![0.0; genomes.len()];
        match self.fitness {
            Fitness::Mean => self.objective.mean(&xs, &mut out)?,
            Fitness::Std => {
                if !self.objective.std(&xs, &mut out)? {
                    return Err("the objective has no predictive std (Fitness::Std)".into());
                }
            }
        }
        Ok(out)
    }

    fn complexity(&self, genome: &[usize]) -> f64 {
        let Ok(t) = self.space.totals_indices(&self.indices(genome)) else {
            return f64::NAN;
        };
        match self.complexity {
            Complexity::Bops => t.bops as f64,
            Complexity::SizeBits => t.size_bits as f64,
            Complexity::BudgetFraction(b) => {
                let bo = b.max_bops.map_or(0.0, |m| t.bops as f64 / m);
                let si = b.max_size_bits.map_or(0.0, |m| t.size_bits as f64 / m);
                bo.max(si)
            }
        }
    }
}

/// A search method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Log-barrier interior-point path with Adam steps (docs/method.md §6), the default.
    Barrier,
    /// The authors' hard-stop normalised-gradient ascent (ablation).
    Pgd,
    /// Evolutionary search on μ under the budget (the authors' population settings).
    Evo,
    /// Random search under the budget.
    Random,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "barrier" => Ok(Self::Barrier),
            "pgd" => Ok(Self::Pgd),
            "evo" => Ok(Self::Evo),
            "random" => Ok(Self::Random),
            _ => Err(format!(
                "unknown search method {s:?} (barrier, pgd, evo, random)"
            )),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Barrier => "barrier",
            Self::Pgd => "pgd",
            Self::Evo => "evo",
            Self::Random => "random",
        })
    }
}

/// Settings of [`find_policy`].
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// The method.
    pub method: Method,
    /// Barrier / pgd settings (its `method` field is set from [`Self::method`]).
    pub barrier: SearchConfig,
    /// Evolutionary settings (also seed, batch and time limit of random search).
    pub evo: EvoConfig,
    /// Predictor evaluations of random search.
    pub random_evaluations: usize,
    /// Pessimism κ: every method maximises μ − κσ (see [`PredictorObjective::with_kappa`]);
    /// 0 (the default) is the plain predicted accuracy of docs/method.md §6.
    pub kappa: f64,
}

impl SearchOptions {
    /// Defaults for `method` with `seed`: the tuned barrier, the authors' evolutionary
    /// population bounded to 60 s, random search with 100,000 evaluations.
    pub fn new(method: Method, seed: u64) -> Self {
        Self {
            method,
            barrier: SearchConfig {
                seed,
                ..SearchConfig::default()
            },
            evo: EvoConfig {
                time_limit: Some(std::time::Duration::from_secs(60)),
                results: 1,
                ..EvoConfig::authors(seed)
            },
            random_evaluations: 100_000,
            kappa: 0.0,
        }
    }
}

/// The policy a search returned.
#[derive(Debug, Clone)]
pub struct Found {
    /// The method used.
    pub method: Method,
    /// Candidate index per gene.
    pub indices: Vec<usize>,
    /// The policy.
    pub policy: Policy,
    /// Exact BOPs.
    pub bops: u64,
    /// Exact model size in bits.
    pub size_bits: u64,
    /// Predicted top-1 μ (not the pessimistic score μ − κσ when κ > 0).
    pub predicted_mean: f64,
    /// Predicted σ (NaN when the objective has none; a predictor always has one).
    pub predicted_std: f64,
    /// Whether the prediction extrapolates beyond the predictor's training data
    /// (docs/method.md §4); None when it cannot be told (a predictor from a format-1 file, or
    /// an objective that is not a predictor: [`find_policy_with`]).
    pub extrapolation: Option<Extrapolation>,
    /// Wall time of the search in seconds.
    pub seconds: f64,
    /// Policies scored by the predictor (evo / random) or batched predictor calls (barrier).
    pub evaluations: usize,
}

/// Finds the policy with the highest predicted accuracy within `budget` with `options.method`.
/// The result carries μ, σ and the extrapolation flag of the predictor at that policy.
///
/// Errors: [`Error::Barrier`] (`BudgetBelowMinimum`, stating the minimum) for a budget below the
/// cheapest policy, whatever the method; [`Error::PredictorMismatch`] for a predictor that does
/// not fit the space; [`Error::Config`] for an invalid κ; [`Error::Predictor`],
/// [`Error::Barrier`] or [`Error::Evo`] for failures of the predictor or the search engine.
pub fn find_policy(
    space: &SearchSpace,
    predictor: &Predictor,
    budget: &Budget,
    options: &SearchOptions,
) -> Result<Found> {
    let start = Instant::now();
    let objective = PredictorObjective::new(predictor, space)?.with_kappa(options.kappa)?;
    let mut f = find_policy_with(space, &objective, budget, options)?;
    // Report μ and σ themselves, not the pessimistic score the search maximised.
    // (The feature map does not depend on κ, so the objective's own map serves.)
    let p = predictor.predict(&[objective.raw(&space.encode_indices(&f.indices)?)])?;
    f.predicted_mean = p.mean[0];
    f.predicted_std = p.std[0];
    f.extrapolation = p.extrapolation.and_then(|e| e.first().copied());
    f.seconds = start.elapsed().as_secs_f64();
    Ok(f)
}

/// [`find_policy`] for any objective over `space`'s encoding (μ to maximise; σ optional).
/// Errors as [`find_policy`]; [`Error::PredictorMismatch`] when the objective's dimension is not
/// the space's.
pub fn find_policy_with(
    space: &SearchSpace,
    objective: &dyn Objective,
    budget: &Budget,
    options: &SearchOptions,
) -> Result<Found> {
    let _span =
        tracing::info_span!("search", method = %options.method, kappa = options.kappa).entered();
    let start = Instant::now();
    if objective.dim() != space.dim() {
        return Err(Error::PredictorMismatch(format!(
            "the objective takes {} inputs, the space has {} genes",
            objective.dim(),
            space.dim()
        )));
    }
    let pspace = PolicySpace::new(space);
    // Budget checks (minimum) are shared by all methods.
    let limits = budget.limits()?;
    let min = space.totals_indices(&space.cheapest())?;
    for &(kind, b) in &limits {
        let m = match kind {
            CostKind::Bops => min.bops,
            CostKind::SizeBits => min.size_bits,
        } as f64;
        if m > b {
            return Err(seer_barrier::Error::BudgetBelowMinimum {
                kind,
                budget: b,
                minimum: m,
            }
            .into());
        }
    }
    let (indices, evaluations) = match options.method {
        Method::Barrier | Method::Pgd => {
            let cfg = SearchConfig {
                method: if options.method == Method::Barrier {
                    seer_barrier::Method::Barrier
                } else {
                    seer_barrier::Method::Pgd
                },
                ..options.barrier.clone()
            };
            let r = seer_barrier::search(&pspace, objective, budget, &cfg)?;
            (r.indices, r.trace.objective_calls)
        }
        Method::Evo | Method::Random => {
            let problem = PolicyProblem::new(
                space,
                objective,
                Fitness::Mean,
                Complexity::BudgetFraction(*budget),
            );
            let archive = Default::default();
            let r = if options.method == Method::Evo {
                seer_evo::evolve(&problem, Band::at_most(1.0), &archive, &options.evo)?
            } else {
                seer_evo::random_search(
                    &problem,
                    Band::at_most(1.0),
                    &archive,
                    options.random_evaluations,
                    &options.evo,
                )?
            };
            (problem.indices(&r.best[0].genome), r.evaluations)
        }
    };
    let x = space.encode_indices(&indices)?;
    let mut mean = [0.0];
    objective
        .mean(&x, &mut mean)
        .map_err(seer_barrier::Error::Objective)?;
    let mut std = [0.0];
    let has_std = objective
        .std(&x, &mut std)
        .map_err(seer_barrier::Error::Objective)?;
    let t = space.totals_indices(&indices)?;
    Ok(Found {
        method: options.method,
        policy: space.from_indices(&indices)?,
        indices,
        bops: t.bops,
        size_bits: t.size_bits,
        predicted_mean: mean[0],
        predicted_std: if has_std { std[0] } else { f64::NAN },
        extrapolation: None,
        seconds: start.elapsed().as_secs_f64(),
        evaluations,
    })
}

/// Spends the budget a policy leaves unused (docs/method.md §6, "fill"): from `start`
/// (candidate indices, one per gene), while some single-gene change within `budget` raises the
/// predictor's μ − κσ, the best one by gain per unit of normalised cost, then the two-gene
/// local search ([`seer_barrier::fill_from`]). The result is within the budget and, from a
/// start within it, scores at least as high as the start. μ, σ and the extrapolation flag are
/// the predictor's at the result ([`Found::evaluations`]: the changes applied).
///
/// Errors: as [`find_policy`]; [`Error::Barrier`] (`InvalidProblem`) for a start that does not
/// fit the space.
pub fn fill_policy(
    space: &SearchSpace,
    predictor: &Predictor,
    budget: &Budget,
    start: &[usize],
    kappa: f64,
) -> Result<Found> {
    let t0 = Instant::now();
    let objective = PredictorObjective::new(predictor, space)?.with_kappa(kappa)?;
    let f = seer_barrier::fill_from(&PolicySpace::new(space), &objective, budget, start, 64)?;
    let p = predictor.predict(&[objective.raw(&space.encode_indices(&f.indices)?)])?;
    let t = space.totals_indices(&f.indices)?;
    Ok(Found {
        method: Method::Barrier,
        policy: space.from_indices(&f.indices)?,
        indices: f.indices,
        bops: t.bops,
        size_bits: t.size_bits,
        predicted_mean: p.mean[0],
        predicted_std: p.std[0],
        extrapolation: p.extrapolation.and_then(|e| e.first().copied()),
        seconds: t0.elapsed().as_secs_f64(),
        evaluations: f.repair_moves + f.fill_moves + f.pair_moves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seer_policy::{InputShape, ResidualPruning, SpaceConfig, builtin};
    use seer_predictor::{Config, Samples, fit};

    /// ResNet-20 (32×32×3, masked, shared bits, prune {0.25,0.5,0.75}, bits {2..5}) and a small
    /// predictor fitted to a synthetic accuracy on its raw features.
    fn setup() -> (SearchSpace, Predictor) {
        let spec = builtin(
            "resnet20",
            Some("32x32x3".parse::<InputShape>().unwrap()),
            None,
        )
        .unwrap();
        let cfg = SpaceConfig {
            prune_ratios: vec![0.25, 0.5, 0.75],
            wbits: vec![2, 3, 4, 5],
            abits: vec![2, 3, 4, 5],
            residual_pruning: ResidualPruning::Masked,
            shared_bits: true,
            ..SpaceConfig::default()
        };
        let space = SearchSpace::new(spec, cfg).unwrap();
        let l = space.units().len();
        let mut names: Vec<String> = (0..l).map(|u| format!("prune_{u}")).collect();
        names.extend((0..l).map(|u| format!("bits_{u}")));
        let mut state = 7u64;
        let mut rnd = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % n as u64) as usize
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..120 {
            let p: Vec<f64> = (0..l).map(|_| [0.25, 0.5, 0.75][rnd(3)]).collect();
            let b: Vec<f64> = (0..l).map(|_| [2.0, 3.0, 4.0, 5.0][rnd(4)]).collect();
            let acc = 90.0
                - p.iter().map(|v| v * v).sum::<f64>()
                - b.iter().map(|v| 4.0 / v).sum::<f64>();
            x.push(p.into_iter().chain(b).collect());
            y.push(acc);
        }
        let s = Samples::new(names, "top1".into(), x, y).unwrap();
        let pcfg = Config {
            members: 2,
            hidden: vec![8],
            max_epochs: 60,
            ..Config::default()
        };
        (space, fit(&s, &pcfg).unwrap())
    }

    #[test]
    fn gradient_of_the_adapter_matches_finite_differences() {
        let (space, pred) = setup();
        for kappa in [0.0, 1.0] {
            let obj = PredictorObjective::new(&pred, &space)
                .unwrap()
                .with_kappa(kappa)
                .unwrap();
            let x: Vec<f64> = (0..space.dim()).map(|g| 0.4 + 0.01 * g as f64).collect();
            let (mut m, mut g) = ([0.0], vec![0.0; space.dim()]);
            obj.mean_grad(&x, &mut m, &mut g).unwrap();
            for j in [0, 5, space.dim() - 1] {
                let h = 1e-3;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[j] += h;
                xm[j] -= h;
                let (mut a, mut b) = ([0.0], [0.0]);
                obj.mean(&xp, &mut a).unwrap();
                obj.mean(&xm, &mut b).unwrap();
                let fd = (a[0] - b[0]) / (2.0 * h);
                assert!(
                    (fd - g[j]).abs() <= 1e-2 * (1.0 + fd.abs()),
                    "kappa {kappa}, gene {j}: fd {fd} vs {}",
                    g[j]
                );
            }
        }
        assert!(
            PredictorObjective::new(&pred, &space)
                .unwrap()
                .with_kappa(-0.5)
                .is_err()
        );
    }

    #[test]
    fn every_method_is_within_budget_and_below_minimum_is_an_error() {
        let (space, pred) = setup();
        let lo = space.totals_indices(&space.cheapest()).unwrap().bops as f64;
        let hi = space.totals_indices(&space.most_expensive()).unwrap().bops as f64;
        let budget = Budget::bops(lo + 0.3 * (hi - lo));
        for method in [Method::Barrier, Method::Pgd, Method::Evo, Method::Random] {
            let mut o = SearchOptions::new(method, 1);
            o.evo.generations = 3;
            o.evo.population = 100;
            o.evo.parents = 50;
            o.evo.crossover = 60;
            o.evo.mutation = 20;
            o.random_evaluations = 300;
            let f = find_policy(&space, &pred, &budget, &o).unwrap();
            assert!(f.bops as f64 <= budget.max_bops.unwrap(), "{method}");
            // The predictor's flags at the found policy come along; a bare objective has none.
            let obj = PredictorObjective::new(&pred, &space).unwrap();
            let row = obj.raw_row(&space.encode_indices(&f.indices).unwrap());
            let want = pred.predict(&[row]).unwrap().extrapolation.unwrap()[0];
            assert_eq!(f.extrapolation, Some(want), "{method}");
            let bare = find_policy_with(&space, &obj, &budget, &o).unwrap();
            assert_eq!(bare.extrapolation, None);
        }
        let e = find_policy(
            &space,
            &pred,
            &Budget::bops(lo - 1.0),
            &SearchOptions::new(Method::Evo, 0),
        )
        .unwrap_err();
        // The engine's error is kept whole as the source.
        assert!(
            matches!(
                e,
                Error::Barrier(seer_barrier::Error::BudgetBelowMinimum { .. })
            ),
            "{e:?}"
        );
        let text = crate::error::chain(&e);
        assert!(text.contains("below the cheapest policy"), "{text}");
    }
}
