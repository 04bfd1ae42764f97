//! The constrained search of docs/method.md §6: the log-barrier interior-point path with Adam steps
//! (or the authors' hard-stop normalised-gradient ascent), then discretisation with greedy
//! repair, fill and two-gene moves.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::{Budget, Cost, CostKind, Objective, Space};

/// Which continuous optimizer runs before discretisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The log-barrier interior-point path with Adam steps (docs/method.md §6).
    Barrier,
    /// The authors' ablation: ascent along the L2-normalised gradient of μ with a fixed step,
    /// stopping at the first step whose relaxed cost would reach the budget (their
    /// `PGD/pgd_search.py`), followed by the same discretisation.
    Pgd,
}

/// Settings of [`search`]. [`SearchConfig::default`] is the tuned default.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// The continuous optimizer.
    pub method: Method,
    /// Independent starts (the best discretised one is returned).
    pub starts: usize,
    /// Starts advanced together in one batched objective call per step; groups of starts run
    /// in parallel. Fixed (not derived from the thread count) so results do not depend on it.
    pub starts_per_task: usize,
    /// Barrier stages (values of t).
    pub stages: usize,
    /// Maximum Adam steps per stage.
    pub steps_per_stage: usize,
    /// Adam step size in encoded units at the first stage.
    pub learning_rate: f64,
    /// Step-size factor per stage (the path tightens as t shrinks).
    pub lr_decay: f64,
    /// Adam's first-moment decay β₁.
    pub beta1: f64,
    /// Adam's second-moment decay β₂.
    pub beta2: f64,
    /// Adam's ε.
    pub epsilon: f64,
    /// Barrier weight factor per stage: t ← ρ·t.
    pub rho: f64,
    /// Initial barrier weight t₀; `None` balances the two gradients at each start point
    /// (t₀ = ‖∇μ‖₁ / ‖∇Σ log(B − C)‖₁).
    pub t_init: Option<f64>,
    /// A stage ends early once no coordinate of any start moves more than this in a step.
    pub tolerance: f64,
    /// Pgd: step length (L2 norm, encoded units). The authors used 0.005.
    pub pgd_step: f64,
    /// Pgd: maximum steps. The authors used 400.
    pub pgd_steps: usize,
    /// After repair, greedily spend the remaining budget with single-gene changes that raise μ
    /// (docs/method.md §6).
    pub fill: bool,
    /// With `fill`: when no single-gene change within budget raises μ, evaluate up to this
    /// many two-gene changes within budget (the most promising first, by the sum of their
    /// single-gene gains), apply the best that raises μ and fill again; at most one two-gene
    /// change per gene of the space. 0 turns two-gene changes off.
    pub pairs: usize,
    /// Seed of the random start points.
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            method: Method::Barrier,
            starts: 8,
            starts_per_task: 2,
            stages: 6,
            steps_per_stage: 40,
            learning_rate: 0.05,
            lr_decay: 0.7,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            rho: 0.2,
            t_init: None,
            tolerance: 1e-4,
            pgd_step: 0.005,
            pgd_steps: 400,
            fill: true,
            pairs: 256,
            seed: 0,
        }
    }
}

impl SearchConfig {
    /// The default settings with the authors' pgd ascent instead of the barrier.
    pub fn pgd() -> Self {
        Self {
            method: Method::Pgd,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, why: String| Err(Error::InvalidConfig { field, why });
        if self.starts == 0 {
            return bad("starts", "must be at least 1".into());
        }
        if self.starts_per_task == 0 {
            return bad("starts_per_task", "must be at least 1".into());
        }
        for (field, v) in [
            ("learning_rate", self.learning_rate),
            ("pgd_step", self.pgd_step),
            ("epsilon", self.epsilon),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("must be positive, got {v}"));
            }
        }
        for (field, v) in [
            ("rho", self.rho),
            ("lr_decay", self.lr_decay),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(field, format!("must be in (0, 1], got {v}"));
            }
        }
        if let Some(t) = self.t_init
            && !(t.is_finite() && t > 0.0)
        {
            return bad("t_init", format!("must be positive, got {t}"));
        }
        Ok(())
    }
}

/// What happened to one start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartTrace {
    /// Initial barrier weight t₀ (0 for pgd).
    pub t_init: f64,
    /// μ at the start point.
    pub start_mean: f64,
    /// μ at the end of each barrier stage (or after pgd).
    pub stage_means: Vec<f64>,
    /// Optimizer steps taken (all stages).
    pub steps: usize,
    /// Step halvings needed to stay strictly inside the budget.
    pub halvings: usize,
    /// Relaxed cost at the continuous end point.
    pub continuous_cost: Cost,
    /// μ of the policy after snapping to the nearest candidates.
    pub rounded_mean: f64,
    /// Greedy downgrades applied to get within budget.
    pub repair_moves: usize,
    /// Single-gene changes applied to spend the slack (fill).
    pub fill_moves: usize,
    /// Two-gene changes applied when no single-gene change raised μ.
    pub pair_moves: usize,
    /// μ of the discretised, within-budget policy.
    pub final_mean: f64,
}

/// Diagnostics of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// One entry per start, in start order.
    pub starts: Vec<StartTrace>,
    /// Index of the start whose policy was returned.
    pub best_start: usize,
    /// Batched objective calls made.
    pub objective_calls: usize,
    /// Wall time of the continuous phase (all starts) in seconds.
    pub continuous_seconds: f64,
    /// Wall time of the discretisation (all starts) in seconds.
    pub discretise_seconds: f64,
    /// Wall time of the whole search in seconds.
    pub seconds: f64,
}

/// The outcome of [`search`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// Candidate index per gene of the returned policy.
    pub indices: Vec<usize>,
    /// Its encoding (the candidates' coordinates).
    pub encoding: Vec<f64>,
    /// Its exact cost; always within the budget.
    pub cost: Cost,
    /// Predicted μ of the policy.
    pub predicted_mean: f64,
    /// Predicted σ, when the objective provides one.
    pub predicted_std: Option<f64>,
    /// The continuous end point of the best start.
    pub continuous: Vec<f64>,
    /// Diagnostics.
    pub trace: Trace,
}

/// Checked objective calls with a call counter.
struct Eval<'a, O: Objective + ?Sized> {
    obj: &'a O,
    calls: std::sync::atomic::AtomicUsize,
}

impl<O: Objective + ?Sized> Eval<'_, O> {
    fn mean(&self, xs: &[f64], out: &mut [f64]) -> Result<()> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.obj.mean(xs, out).map_err(Error::Objective)?;
        check_finite(out)
    }

    fn mean_grad(&self, xs: &[f64], mean: &mut [f64], grad: &mut [f64]) -> Result<()> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.obj
            .mean_grad(xs, mean, grad)
            .map_err(Error::Objective)?;
        check_finite(mean)?;
        check_finite(grad)
    }
}

fn check_finite(v: &[f64]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(row) => Err(Error::NonFinite { row, value: v[row] }),
        None => Ok(()),
    }
}

/// The problem with everything precomputed once per search.
struct Prepared<'a, S: Space + ?Sized> {
    space: &'a S,
    budget: Budget,
    limits: Vec<(CostKind, f64)>,
    coords: Vec<Vec<f64>>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    cheapest: Vec<usize>,
}

impl<S: Space + ?Sized> Prepared<'_, S> {
    fn dim(&self) -> usize {
        self.coords.len()
    }

    fn cost(&self, idx: &[usize]) -> Result<Cost> {
        self.space.cost(idx).map_err(Error::Cost)
    }

    fn relaxed(&self, x: &[f64], gb: &mut [f64], gs: &mut [f64]) -> Result<Cost> {
        self.space.relaxed_cost(x, gb, gs).map_err(Error::Cost)
    }

    /// Strictly inside every budget (the barrier's domain).
    fn interior(&self, c: &Cost) -> bool {
        self.limits.iter().all(|&(k, b)| c.get(k) < b)
    }

    fn encode(&self, idx: &[usize], out: &mut [f64]) {
        for (g, (&i, o)) in idx.iter().zip(out.iter_mut()).enumerate() {
            *o = self.coords[g][i];
        }
    }

    fn nearest(&self, x: &[f64]) -> Vec<usize> {
        x.iter()
            .zip(&self.coords)
            .map(|(&v, c)| {
                let mut best = 0;
                for (i, &ci) in c.iter().enumerate() {
                    if (ci - v).abs() < (c[best] - v).abs() {
                        best = i;
                    }
                }
                best
            })
            .collect()
    }
}

/// Searches the policy with the highest predicted μ within `budget` (docs/method.md §6).
///
/// `space` gives candidates and costs, `objective` μ (and optionally σ) of encoded policies.
/// Barrier ([`Method::Barrier`]): from `starts` random points strictly inside the budget,
/// maximise J_t(x) = μ(x) + t·Σ_k log(B_k − C_k(x)) with bias-corrected Adam steps, projected
/// onto the box spanned by the candidates, halving any step that would leave the interior, for
/// `stages` values of t (t ← ρ·t). Each end point is snapped to the nearest candidates, repaired
/// (while over budget: the single-gene downgrade with the smallest predicted loss per unit of
/// normalised cost saved) and filled (while possible: the single-gene change with the best
/// predicted gain per unit of normalised cost spent that stays within budget); when no
/// single-gene change raises μ, the best two-gene change within budget that does is applied
/// and the fill resumes (`config.pairs`). The best discretised start is returned; it is always
/// within budget.
///
/// Deterministic for a given `config.seed`, whatever the number of threads.
///
/// Errors: [`Error::BudgetBelowMinimum`] (stating the minimum) when the cheapest policy is over
/// budget; [`Error::InvalidBudget`], [`Error::InvalidConfig`], [`Error::InvalidProblem`] for bad
/// input; objective and cost failures.
pub fn search<S: Space + ?Sized, O: Objective + ?Sized>(
    space: &S,
    objective: &O,
    budget: &Budget,
    config: &SearchConfig,
) -> Result<SearchResult> {
    let started = Instant::now();
    config.validate()?;
    let p = prepare(space, objective, budget)?;
    let eval = Eval {
        obj: objective,
        calls: 0.into(),
    };
    let d = p.dim();

    // Start points, strictly inside the relaxed budget.
    let cheap_x: Vec<f64> = {
        let mut x = vec![0.0; d];
        p.encode(&p.cheapest, &mut x);
        x
    };
    let (mut gb, mut gs) = (vec![0.0; d], vec![0.0; d]);
    let has_interior = p.interior(&p.relaxed(&cheap_x, &mut gb, &mut gs)?);
    let starts: Vec<Vec<f64>> = if has_interior {
        (0..config.starts)
            .map(|s| start_point(&p, &cheap_x, config.seed, s as u64))
            .collect::<Result<_>>()?
    } else {
        // The relaxation has no interior (budget at the cheapest policy's cost): discretise
        // from the cheapest policy.
        vec![cheap_x.clone()]
    };

    // Continuous phase: groups of starts in parallel, one batched call per step per group.
    let continuous = Continuous {
        p: &p,
        eval: &eval,
        cfg: config,
    };
    let groups: Vec<(Vec<Vec<f64>>, Vec<StartTrace>)> = starts
        .par_chunks(config.starts_per_task)
        .map(|chunk| {
            if has_interior {
                continuous.run(chunk)
            } else {
                let mut mean = vec![0.0; 1];
                eval.mean(&chunk[0], &mut mean)?;
                Ok((chunk.to_vec(), vec![empty_trace(mean[0])]))
            }
        })
        .collect::<Result<_>>()?;
    let (ends, mut traces): (Vec<Vec<f64>>, Vec<StartTrace>) = groups
        .into_iter()
        .flat_map(|(e, t)| e.into_iter().zip(t))
        .unzip();

    let continuous_seconds = started.elapsed().as_secs_f64();
    // Discretisation of every start, in parallel: repair and single-gene fill, then the
    // two-gene local search. Starts that round to the same policy, or that the fill brings to
    // the same policy, are processed once.
    let rounded: Vec<Vec<usize>> = ends.iter().map(|x| p.nearest(x)).collect();
    let (unique, owner) = dedupe(&rounded);
    let mut filled: Vec<Discrete> = unique
        .par_iter()
        .map(|&i| discretise(&p, &eval, rounded[i].clone(), config.fill))
        .collect::<Result<_>>()?;
    let filled_idx: Vec<Vec<usize>> = filled.iter().map(|f| f.indices.clone()).collect();
    let (unique2, owner2) = dedupe(&filled_idx);
    if config.fill && config.pairs > 0 {
        let improved: Vec<Discrete> = unique2
            .par_iter()
            .map(|&k| {
                let mut f = filled[k].clone();
                improve(&p, &eval, &mut f, config.pairs)?;
                Ok(f)
            })
            .collect::<Result<_>>()?;
        // Each start keeps its own rounding and repair; the local search is shared.
        let before: Vec<usize> = unique2.iter().map(|&k| filled[k].fill_moves).collect();
        for (k, f) in filled.iter_mut().enumerate() {
            let (j, done) = (owner2[k], &improved[owner2[k]]);
            f.fill_moves += done.fill_moves - before[j];
            f.pair_moves = done.pair_moves;
            f.indices.clone_from(&done.indices);
            f.mean = done.mean;
        }
    }
    let discrete: Vec<&Discrete> = owner.iter().map(|&k| &filled[k]).collect();
    let discretise_seconds = started.elapsed().as_secs_f64() - continuous_seconds;
    for ((t, dres), x) in traces.iter_mut().zip(&discrete).zip(&ends) {
        t.rounded_mean = dres.rounded_mean;
        t.repair_moves = dres.repair_moves;
        t.fill_moves = dres.fill_moves;
        t.pair_moves = dres.pair_moves;
        t.final_mean = dres.mean;
        t.continuous_cost = p.relaxed(x, &mut gb, &mut gs)?;
    }
    let best = (0..discrete.len())
        .max_by(|&a, &b| {
            discrete[a]
                .mean
                .total_cmp(&discrete[b].mean)
                .then(b.cmp(&a))
        })
        .expect("at least one start");
    let chosen = discrete[best];
    let mut encoding = vec![0.0; d];
    p.encode(&chosen.indices, &mut encoding);
    let mut std = [0.0];
    let predicted_std = if objective
        .std(&encoding, &mut std)
        .map_err(Error::Objective)?
    {
        check_finite(&std)?;
        Some(std[0])
    } else {
        None
    };
    let cost = p.cost(&chosen.indices)?;
    debug_assert!(p.budget.admits(&cost));
    Ok(SearchResult {
        indices: chosen.indices.clone(),
        encoding,
        cost,
        predicted_mean: chosen.mean,
        predicted_std,
        continuous: ends[best].clone(),
        trace: Trace {
            starts: traces,
            best_start: best,
            objective_calls: eval.calls.into_inner(),
            continuous_seconds,
            discretise_seconds,
            seconds: started.elapsed().as_secs_f64(),
        },
    })
}

/// What [`fill_from`] returns: the filled policy and how it got there.
#[derive(Clone, Debug, PartialEq)]
pub struct Filled {
    /// Candidate index per gene of the filled policy (within budget).
    pub indices: Vec<usize>,
    /// μ of the objective at the start policy.
    pub start_mean: f64,
    /// μ at the filled policy (≥ `start_mean` when the start was within budget).
    pub mean: f64,
    /// Its exact cost.
    pub cost: Cost,
    /// Single-gene changes applied to repair a start over budget (0 for a start within it).
    pub repair_moves: usize,
    /// Single-gene changes applied to spend the slack.
    pub fill_moves: usize,
    /// Two-gene changes applied by the local search.
    pub pair_moves: usize,
}

/// The discretisation phase of [`search`] from a given discrete policy `start` (candidate
/// indices, one per gene): greedy repair if it is over budget, then, while some single-gene
/// change within budget raises μ, the best one (largest gain per unit of normalised cost), and
/// the two-gene local search with `pairs` candidate pairs per step (0: none). Used to spend the
/// budget a labelled policy leaves unused (docs/method.md §6, "fill"): the result never leaves
/// the budget and, from a start within it, never lowers μ.
///
/// Deterministic. Errors: as [`search`], and [`Error::InvalidProblem`] when `start` has the
/// wrong length or an index outside its gene's candidates.
pub fn fill_from<S: Space + ?Sized, O: Objective + ?Sized>(
    space: &S,
    objective: &O,
    budget: &Budget,
    start: &[usize],
    pairs: usize,
) -> Result<Filled> {
    let p = prepare(space, objective, budget)?;
    if start.len() != p.dim() {
        return Err(Error::InvalidProblem(format!(
            "the start policy has {} genes, the space {}",
            start.len(),
            p.dim()
        )));
    }
    if let Some(g) = (0..start.len()).find(|&g| start[g] >= p.coords[g].len()) {
        return Err(Error::InvalidProblem(format!(
            "gene {g}: candidate index {} is outside 0..{}",
            start[g],
            p.coords[g].len()
        )));
    }
    let eval = Eval {
        obj: objective,
        calls: 0.into(),
    };
    let mut enc = vec![0.0; p.dim()];
    let mut mu = [0.0];
    p.encode(start, &mut enc);
    eval.mean(&enc, &mut mu)?;
    let mut d = discretise(&p, &eval, start.to_vec(), true)?;
    if pairs > 0 {
        improve(&p, &eval, &mut d, pairs)?;
    }
    debug_assert!(p.budget.admits(&d.cost));
    Ok(Filled {
        indices: d.indices,
        start_mean: mu[0],
        mean: d.mean,
        cost: d.cost,
        repair_moves: d.repair_moves,
        fill_moves: d.fill_moves,
        pair_moves: d.pair_moves,
    })
}

/// Validates the inputs and precomputes coordinates, bounds and the cheapest policy.
fn prepare<'a, S: Space + ?Sized, O: Objective + ?Sized>(
    space: &'a S,
    objective: &O,
    budget: &Budget,
) -> Result<Prepared<'a, S>> {
    let limits = budget.limits()?;
    let d = space.dim();
    if d == 0 {
        return Err(Error::InvalidProblem("the space has no genes".into()));
    }
    if objective.dim() != d {
        return Err(Error::InvalidProblem(format!(
            "the objective takes {} inputs but the space has {d} genes",
            objective.dim()
        )));
    }
    let coords: Vec<Vec<f64>> = (0..d).map(|g| space.coords(g).to_vec()).collect();
    for (g, c) in coords.iter().enumerate() {
        if c.is_empty()
            || c.windows(2)
                .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
            || c.iter().any(|v| !v.is_finite())
        {
            return Err(Error::InvalidProblem(format!(
                "gene {g}: candidate coordinates must be finite and strictly ascending, got {c:?}"
            )));
        }
    }
    let cheapest = space.cheapest();
    if cheapest.len() != d {
        return Err(Error::InvalidProblem(format!(
            "cheapest policy has {} genes, expected {d}",
            cheapest.len()
        )));
    }
    let min_cost = space.cost(&cheapest).map_err(Error::Cost)?;
    for &(kind, b) in &limits {
        if min_cost.get(kind) > b {
            return Err(Error::BudgetBelowMinimum {
                kind,
                budget: b,
                minimum: min_cost.get(kind),
            });
        }
    }
    Ok(Prepared {
        space,
        budget: *budget,
        limits,
        lo: coords.iter().map(|c| c[0]).collect(),
        hi: coords.iter().map(|c| c[c.len() - 1]).collect(),
        coords,
        cheapest,
    })
}

/// A random point of the box, pulled towards the cheapest policy until its relaxed cost is at
/// most a random fraction (20–90%) of the budget (bisection on the segment).
fn start_point<S: Space + ?Sized>(
    p: &Prepared<'_, S>,
    cheap_x: &[f64],
    seed: u64,
    index: u64,
) -> Result<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let d = p.dim();
    let u: Vec<f64> = (0..d)
        .map(|g| rng.random_range(p.lo[g]..=p.hi[g]))
        .collect();
    let frac = rng.random_range(0.2..0.9);
    let (mut gb, mut gs) = (vec![0.0; d], vec![0.0; d]);
    let mut x = vec![0.0; d];
    let mut at = |lambda: f64, x: &mut [f64]| -> Result<bool> {
        for g in 0..d {
            x[g] = cheap_x[g] + lambda * (u[g] - cheap_x[g]);
        }
        let c = p.relaxed(x, &mut gb, &mut gs)?;
        Ok(p.limits.iter().all(|&(k, b)| c.get(k) < frac * b) || (lambda == 0.0 && p.interior(&c)))
    };
    if at(1.0, &mut x)? {
        return Ok(x);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..30 {
        let mid = 0.5 * (lo + hi);
        if at(mid, &mut x)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    at(lo, &mut x)?;
    Ok(x)
}

fn empty_trace(mean: f64) -> StartTrace {
    StartTrace {
        t_init: 0.0,
        start_mean: mean,
        stage_means: Vec::new(),
        steps: 0,
        halvings: 0,
        continuous_cost: Cost::default(),
        rounded_mean: mean,
        repair_moves: 0,
        fill_moves: 0,
        pair_moves: 0,
        final_mean: mean,
    }
}

/// Gradient of Σ_k log(B_k − C_k(x)) given the relaxed cost and its gradients.
fn barrier_grad(limits: &[(CostKind, f64)], c: &Cost, gb: &[f64], gs: &[f64], out: &mut [f64]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for &(k, b) in limits {
        let g = match k {
            CostKind::Bops => gb,
            CostKind::SizeBits => gs,
        };
        let w = 1.0 / (b - c.get(k));
        for (o, gi) in out.iter_mut().zip(g) {
            *o -= w * gi;
        }
    }
}

/// What the continuous phase needs: the prepared problem, the counted objective and the
/// configuration.
struct Continuous<'a, S: Space + ?Sized, O: Objective + ?Sized> {
    p: &'a Prepared<'a, S>,
    eval: &'a Eval<'a, O>,
    cfg: &'a SearchConfig,
}

/// A group of starts moved together, one batched objective call per step: the points `xs`
/// (`n × d`, row-major) and buffers for their μ and ∇μ.
struct Group {
    n: usize,
    d: usize,
    xs: Vec<f64>,
    mean: Vec<f64>,
    grad: Vec<f64>,
}

impl<S: Space + ?Sized, O: Objective + ?Sized> Continuous<'_, S, O> {
    /// Moves the group of `starts` with the configured method; returns the end points and
    /// the traces, one per start.
    fn run(&self, starts: &[Vec<f64>]) -> Result<(Vec<Vec<f64>>, Vec<StartTrace>)> {
        let (n, d) = (starts.len(), self.p.dim());
        let mut g = Group {
            n,
            d,
            xs: starts.concat(),
            mean: vec![0.0; n],
            grad: vec![0.0; n * d],
        };
        let traces = match self.cfg.method {
            Method::Barrier => self.barrier_path(&mut g)?,
            Method::Pgd => self.pgd_path(&mut g)?,
        };
        Ok((g.xs.chunks(d).map(<[f64]>::to_vec).collect(), traces))
    }

    /// The barrier path for a group of starts (docs/method.md §6).
    fn barrier_path(&self, g: &mut Group) -> Result<Vec<StartTrace>> {
        let Self { p, eval, cfg } = *self;
        let (n, d) = (g.n, g.d);
        let Group { xs, mean, grad, .. } = g;
        let (mut m, mut v) = (vec![0.0; n * d], vec![0.0; n * d]);
        let (mut gb, mut gs, mut gphi, mut trial) =
            (vec![0.0; d], vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        let mut traces: Vec<StartTrace> = Vec::with_capacity(n);

        // t₀ per start.
        eval.mean_grad(xs, mean, grad)?;
        let mut t = vec![0.0; n];
        for i in 0..n {
            let x = &xs[i * d..(i + 1) * d];
            let c = p.relaxed(x, &mut gb, &mut gs)?;
            barrier_grad(&p.limits, &c, &gb, &gs, &mut gphi);
            let gmu: f64 = grad[i * d..(i + 1) * d].iter().map(|g| g.abs()).sum();
            let gb1: f64 = gphi.iter().map(|g| g.abs()).sum();
            t[i] = cfg.t_init.unwrap_or(if gb1 > 0.0 && gmu > 0.0 {
                gmu / gb1
            } else {
                1.0
            });
            let mut tr = empty_trace(mean[i]);
            tr.t_init = t[i];
            traces.push(tr);
        }

        for stage in 0..cfg.stages {
            let lr = cfg.learning_rate * cfg.lr_decay.powi(stage as i32);
            m.iter_mut().for_each(|a| *a = 0.0);
            v.iter_mut().for_each(|a| *a = 0.0);
            let (mut b1t, mut b2t) = (1.0, 1.0);
            for step in 0..cfg.steps_per_stage {
                if step > 0 || stage > 0 {
                    eval.mean_grad(xs, mean, grad)?;
                }
                b1t *= cfg.beta1;
                b2t *= cfg.beta2;
                let mut moved: f64 = 0.0;
                for i in 0..n {
                    let x = &mut xs[i * d..(i + 1) * d];
                    let c = p.relaxed(x, &mut gb, &mut gs)?;
                    barrier_grad(&p.limits, &c, &gb, &gs, &mut gphi);
                    let (mi, vi) = (&mut m[i * d..(i + 1) * d], &mut v[i * d..(i + 1) * d]);
                    let gi = &grad[i * d..(i + 1) * d];
                    // Ascent direction: Adam on ∇J = ∇μ + t·∇Σ log(B − C); `trial` holds the step.
                    for j in 0..d {
                        let g = gi[j] + t[i] * gphi[j];
                        mi[j] = cfg.beta1 * mi[j] + (1.0 - cfg.beta1) * g;
                        vi[j] = cfg.beta2 * vi[j] + (1.0 - cfg.beta2) * g * g;
                        let mh = mi[j] / (1.0 - b1t);
                        let vh = vi[j] / (1.0 - b2t);
                        gphi[j] = lr * mh / (vh.sqrt() + cfg.epsilon);
                    }
                    let mut scale = 1.0;
                    let mut accepted = false;
                    for _ in 0..40 {
                        for j in 0..d {
                            trial[j] = (x[j] + scale * gphi[j]).clamp(p.lo[j], p.hi[j]);
                        }
                        if p.interior(&p.relaxed(&trial, &mut gb, &mut gs)?) {
                            accepted = true;
                            break;
                        }
                        scale *= 0.5;
                        traces[i].halvings += 1;
                    }
                    if accepted {
                        for j in 0..d {
                            moved = moved.max((trial[j] - x[j]).abs());
                            x[j] = trial[j];
                        }
                    }
                    traces[i].steps += 1;
                }
                if moved < cfg.tolerance {
                    break;
                }
            }
            eval.mean(xs, mean)?;
            for i in 0..n {
                traces[i].stage_means.push(mean[i]);
                t[i] *= cfg.rho;
            }
        }
        Ok(traces)
    }

    /// The authors' hard-stop normalised-gradient ascent for a group of starts.
    fn pgd_path(&self, g: &mut Group) -> Result<Vec<StartTrace>> {
        let Self { p, eval, cfg } = *self;
        let (n, d) = (g.n, g.d);
        let Group { xs, mean, grad, .. } = g;
        let (mut gb, mut gs, mut trial) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        let mut alive = vec![true; n];
        let mut traces: Vec<StartTrace> = Vec::with_capacity(n);
        for step in 0..cfg.pgd_steps {
            eval.mean_grad(xs, mean, grad)?;
            if step == 0 {
                traces = mean.iter().map(|&m| empty_trace(m)).collect();
            }
            for i in 0..n {
                if !alive[i] {
                    continue;
                }
                let gi = &grad[i * d..(i + 1) * d];
                let norm = gi.iter().map(|g| g * g).sum::<f64>().sqrt();
                if norm == 0.0 {
                    alive[i] = false;
                    continue;
                }
                let x = &mut xs[i * d..(i + 1) * d];
                for j in 0..d {
                    trial[j] = (x[j] + cfg.pgd_step * gi[j] / norm).clamp(p.lo[j], p.hi[j]);
                }
                if p.interior(&p.relaxed(&trial, &mut gb, &mut gs)?) {
                    x.copy_from_slice(&trial);
                    traces[i].steps += 1;
                } else {
                    alive[i] = false; // hard stop at the budget
                }
            }
            if !alive.iter().any(|&a| a) {
                break;
            }
        }
        eval.mean(xs, mean)?;
        for (tr, &m) in traces.iter_mut().zip(mean.iter()) {
            tr.stage_means.push(m);
        }
        Ok(traces)
    }
}

/// Indices of the first occurrence of each distinct policy in `items`, and for every item the
/// position of its policy among those.
fn dedupe(items: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let mut unique: Vec<usize> = Vec::new();
    let owner = items
        .iter()
        .enumerate()
        .map(|(i, r)| match unique.iter().position(|&u| items[u] == *r) {
            Some(k) => k,
            None => {
                unique.push(i);
                unique.len() - 1
            }
        })
        .collect();
    (unique, owner)
}

/// A discretised start.
#[derive(Clone)]
struct Discrete {
    indices: Vec<usize>,
    mean: f64,
    cost: Cost,
    rounded_mean: f64,
    repair_moves: usize,
    fill_moves: usize,
    pair_moves: usize,
}

/// A change of one or two genes: `(gene, candidate)` pairs (`second` is `None` for a single
/// move) and the exact cost of the policy after it.
#[derive(Clone, Copy)]
struct Move {
    first: (usize, usize),
    second: Option<(usize, usize)>,
    cost: Cost,
}

impl Move {
    fn apply(&self, cur: &mut [usize]) {
        cur[self.first.0] = self.first.1;
        if let Some((g, k)) = self.second {
            cur[g] = k;
        }
    }
}

/// Single-gene moves from `cur` that `keep` accepts (by the cost after the move).
fn moves<S: Space + ?Sized>(
    p: &Prepared<'_, S>,
    cur: &mut [usize],
    mut keep: impl FnMut(&Cost) -> bool,
) -> Result<Vec<Move>> {
    let mut out = Vec::new();
    for g in 0..cur.len() {
        let orig = cur[g];
        for k in 0..p.coords[g].len() {
            if k == orig {
                continue;
            }
            cur[g] = k;
            let c = p.cost(cur);
            cur[g] = orig;
            let c = c?;
            if keep(&c) {
                out.push(Move {
                    first: (g, k),
                    second: None,
                    cost: c,
                });
            }
        }
    }
    Ok(out)
}

/// Evaluations per batch of two-gene changes (see [`best_pair`]).
const PAIR_CHUNK: usize = 32;

/// The best two-gene change from the policy `at` that stays within budget and raises μ, with
/// its μ; `None` when none of those examined does (`at` is left as it was). `singles` are all
/// single-gene changes from `at` with their μ `single_means` (within budget or not): a pair
/// is ranked by the sum of its two single gains, and the pairs within budget are evaluated in
/// that order, [`PAIR_CHUNK`] at a time, until a batch holds an improvement (the best of that
/// batch is returned, by [`best_gain`]) or `limit` pairs were evaluated. So a change that loses
/// μ alone but gains with a second one (a local dip of the predictor), or a downgrade that
/// frees the budget for an upgrade, is found without scoring every pair.
fn best_pair<S: Space + ?Sized, O: Objective + ?Sized>(
    p: &Prepared<'_, S>,
    eval: &Eval<'_, O>,
    at: &mut Discrete,
    singles: &[Move],
    single_means: &[f64],
    limit: usize,
) -> Result<Option<(Move, f64)>> {
    let mut order: Vec<(usize, usize)> = Vec::new();
    for i in 0..singles.len() {
        for j in i + 1..singles.len() {
            if singles[i].first.0 != singles[j].first.0 {
                order.push((i, j));
            }
        }
    }
    let est = |&(i, j): &(usize, usize)| single_means[i] + single_means[j];
    // Stable: equal estimates keep the enumeration order.
    order.sort_by(|a, b| est(b).total_cmp(&est(a)));
    let (mut batch, mut evaluated) = (Vec::with_capacity(PAIR_CHUNK), 0);
    let mut pos = 0;
    while evaluated < limit && pos < order.len() {
        batch.clear();
        while batch.len() < PAIR_CHUNK.min(limit - evaluated) && pos < order.len() {
            let (i, j) = order[pos];
            pos += 1;
            let (first, second) = (singles[i].first, singles[j].first);
            let cur = &mut at.indices;
            let (o1, o2) = (cur[first.0], cur[second.0]);
            cur[first.0] = first.1;
            cur[second.0] = second.1;
            let c = p.cost(cur);
            cur[first.0] = o1;
            cur[second.0] = o2;
            let c = c?;
            if p.budget.admits(&c) {
                batch.push(Move {
                    first,
                    second: Some(second),
                    cost: c,
                });
            }
        }
        evaluated += batch.len();
        let means = move_means(p, eval, &at.indices, &batch)?;
        if let Some(b) = best_gain(p, &at.cost, at.mean, &batch, &means, |_| true) {
            return Ok(Some((batch[b], means[b])));
        }
    }
    Ok(None)
}

/// μ of `cur` with each move applied (one batched call).
fn move_means<S: Space + ?Sized, O: Objective + ?Sized>(
    p: &Prepared<'_, S>,
    eval: &Eval<'_, O>,
    cur: &[usize],
    mv: &[Move],
) -> Result<Vec<f64>> {
    if mv.is_empty() {
        return Ok(Vec::new());
    }
    let d = p.dim();
    let mut base = vec![0.0; d];
    p.encode(cur, &mut base);
    let mut xs = Vec::with_capacity(mv.len() * d);
    for m in mv {
        let at = xs.len();
        xs.extend_from_slice(&base);
        for (g, k) in std::iter::once(m.first).chain(m.second) {
            xs[at + g] = p.coords[g][k];
        }
    }
    let mut out = vec![0.0; mv.len()];
    eval.mean(&xs, &mut out)?;
    Ok(out)
}

/// The move of `mv` (with μ `means`) that raises μ above `cur_mean` best: a gain at no extra
/// normalised cost first (largest gain), else the largest gain per unit of normalised cost
/// spent; ties go to the earlier move. `None` when no move raises μ by more than a relative
/// 1e-12.
fn best_gain<S: Space + ?Sized>(
    p: &Prepared<'_, S>,
    cur_cost: &Cost,
    cur_mean: f64,
    mv: &[Move],
    means: &[f64],
    admitted: impl Fn(usize) -> bool,
) -> Option<usize> {
    let spent = |c: &Cost| -> f64 {
        p.limits
            .iter()
            .map(|&(k, b)| (c.get(k) - cur_cost.get(k)) / b)
            .sum()
    };
    let score = |i: usize| -> (bool, f64) {
        let gain = means[i] - cur_mean;
        let s = spent(&mv[i].cost);
        if s <= 0.0 {
            (true, gain)
        } else {
            (false, gain / s)
        }
    };
    (0..mv.len())
        .filter(|&i| admitted(i) && means[i] - cur_mean > 1e-12 * cur_mean.abs().max(1.0))
        .max_by(|&a, &b| {
            let (sa, sb) = (score(a), score(b));
            sa.0.cmp(&sb.0).then(sa.1.total_cmp(&sb.1)).then(b.cmp(&a))
        })
}

/// From the nearest candidates `cur`: greedy repair while over budget (the single-gene
/// change with the smallest predicted loss per unit of normalised violated cost saved), then,
/// with `fill`, the single-gene fill of [`fill_singles`] (docs/method.md §6).
fn discretise<S: Space + ?Sized, O: Objective + ?Sized>(
    p: &Prepared<'_, S>,
    eval: &Eval<'_, O>,
    mut cur: Vec<usize>,
    fill: bool,
) -> Result<Discrete> {
    let d = p.dim();
    let mut enc = vec![0.0; d];
    let mut mu = [0.0];
    p.encode(&cur, &mut enc);
    eval.mean(&enc, &mut mu)?;
    let rounded_mean = mu[0];
    let mut cur_mean = mu[0];
    let mut cur_cost = p.cost(&cur)?;
    let total_cards: usize = p.coords.iter().map(Vec::len).sum();

    // Repair: smallest predicted loss per unit of (normalised, violated) cost saved.
    let mut repair_moves = 0;
    while !p.budget.admits(&cur_cost) {
        if repair_moves > 4 * total_cards {
            // Pathological interplay of two budgets: fall back to the cheapest policy.
            cur = p.cheapest.clone();
            cur_cost = p.cost(&cur)?;
            p.encode(&cur, &mut enc);
            eval.mean(&enc, &mut mu)?;
            cur_mean = mu[0];
            break;
        }
        let violated: Vec<(CostKind, f64)> = p
            .limits
            .iter()
            .copied()
            .filter(|&(k, b)| cur_cost.get(k) > b)
            .collect();
        let saved = |c: &Cost| -> f64 {
            violated
                .iter()
                .map(|&(k, b)| (cur_cost.get(k) - c.get(k)) / b)
                .sum()
        };
        let mv = moves(p, &mut cur, |c| saved(c) > 0.0)?;
        if mv.is_empty() {
            return Err(Error::InvalidProblem(
                "no single-gene change reduces the violated cost: costs are not monotone".into(),
            ));
        }
        let means = move_means(p, eval, &cur, &mv)?;
        let best = (0..mv.len())
            .min_by(|&a, &b| {
                let ra = (cur_mean - means[a]) / saved(&mv[a].cost);
                let rb = (cur_mean - means[b]) / saved(&mv[b].cost);
                ra.total_cmp(&rb).then(a.cmp(&b))
            })
            .expect("non-empty");
        mv[best].apply(&mut cur);
        cur_cost = mv[best].cost;
        cur_mean = means[best];
        repair_moves += 1;
    }

    let mut out = Discrete {
        indices: cur,
        mean: cur_mean,
        cost: cur_cost,
        rounded_mean,
        repair_moves,
        fill_moves: 0,
        pair_moves: 0,
    };
    if fill {
        fill_singles(p, eval, &mut out)?;
    }
    Ok(out)
}

/// Fill: while some single-gene change within budget raises μ, applies the best one by
/// [`best_gain`]. `at` is within budget and stays so. Returns every single-gene change from
/// the final policy (within budget or not) with its μ, for [`best_pair`].
fn fill_singles<S: Space + ?Sized, O: Objective + ?Sized>(
    p: &Prepared<'_, S>,
    eval: &Eval<'_, O>,
    at: &mut Discrete,
) -> Result<(Vec<Move>, Vec<f64>)> {
    loop {
        let mv = moves(p, &mut at.indices, |_| true)?;
        let means = move_means(p, eval, &at.indices, &mv)?;
        let within = |i: usize| p.budget.admits(&mv[i].cost);
        let Some(b) = best_gain(p, &at.cost, at.mean, &mv, &means, within) else {
            return Ok((mv, means));
        };
        mv[b].apply(&mut at.indices);
        at.cost = mv[b].cost;
        at.mean = means[b];
        at.fill_moves += 1;
    }
}

/// Local search from a filled policy `at` (within budget): while [`best_pair`] finds a two-gene
/// change within budget that raises μ (at most `pairs` evaluated per step), applies it and
/// fills again with [`fill_singles`]; at most one two-gene change per gene of the space, so
/// the time stays bounded. `at` never leaves the budget.
fn improve<S: Space + ?Sized, O: Objective + ?Sized>(
    p: &Prepared<'_, S>,
    eval: &Eval<'_, O>,
    at: &mut Discrete,
    pairs: usize,
) -> Result<()> {
    let (mut mv, mut means) = {
        let mv = moves(p, &mut at.indices, |_| true)?;
        let means = move_means(p, eval, &at.indices, &mv)?;
        (mv, means)
    };
    while at.pair_moves < p.dim() {
        let Some((step, mean)) = best_pair(p, eval, at, &mv, &means, pairs)? else {
            break;
        };
        step.apply(&mut at.indices);
        at.cost = step.cost;
        at.mean = mean;
        at.pair_moves += 1;
        (mv, means) = fill_singles(p, eval, at)?;
    }
    Ok(())
}
