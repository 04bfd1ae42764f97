//! Which policies to label: the stratified initial set and the active-sampling acquisitions
//! (ensemble std, counterfactual sensitivity, random) of docs/method.md §5, plus the predictor
//! features of a policy and the predictor fit on the label store.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seer_evo::{Band, EvoConfig, Genome, Problem};
use seer_policy::{GeneKind, Policy, SearchSpace};
use seer_predictor::{Predictor, Samples};

use super::Stream;
use crate::error::{Error, Result};
use crate::search::{Complexity, Fitness, PolicyProblem, PredictorObjective};
use crate::store::LabelRecord;

/// How the active rounds choose the next policies to label (docs/method.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acquisition {
    /// Ensemble disagreement σ(x), maximised by the evolutionary sampler.
    Std,
    /// The authors' counterfactual sensitivity u(x) = mean over one-step-cheaper neighbours c
    /// of (μ(c) − μ(x))², maximised by the evolutionary sampler.
    Counterfactual,
    /// Uniformly random unlabelled policies in the complexity band (the baseline).
    Random,
    /// Pool-based σ: per stratum, [`POOL`] uniformly random unlabelled policies of the
    /// stratum, of which the one with the largest ensemble σ is labelled. The candidates are
    /// typical policies (random's distribution), the choice among them uncertainty's.
    Pool,
    /// Pool-based σ inside the budgets' bands: the K labels are dealt round-robin to the
    /// budgets ([`Request::bands`], `[limit/2, limit]` in BOPs, where the choices are made);
    /// per budget, [`POOL`] uniformly random unlabelled policies of its band per label, of
    /// which the largest-σ ones are labelled. Labels go where a budget's choice is made and
    /// are typical policies there; among those, uncertainty picks.
    Bands,
}

/// Random candidates per stratum of [`Acquisition::Pool`].
pub const POOL: usize = 16;

impl std::str::FromStr for Acquisition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "std" => Ok(Self::Std),
            "counterfactual" => Ok(Self::Counterfactual),
            "random" => Ok(Self::Random),
            "pool" => Ok(Self::Pool),
            "bands" => Ok(Self::Bands),
            _ => Err(format!(
                "unknown acquisition {s:?} (std, counterfactual, random, pool, bands)"
            )),
        }
    }
}

impl std::fmt::Display for Acquisition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Std => "std",
            Self::Counterfactual => "counterfactual",
            Self::Random => "random",
            Self::Pool => "pool",
            Self::Bands => "bands",
        })
    }
}

/// Predictor feature names of `space`: `prune_<u>`, `wbits_<u>`, `abits_<u>` or `bits_<u>` per
/// gene, in gene order (the names [`PredictorObjective`] maps back onto the genes).
pub fn feature_names(space: &SearchSpace) -> Vec<String> {
    space
        .genes()
        .iter()
        .map(|g| {
            let k = match g.kind {
                GeneKind::Prune => "prune",
                GeneKind::WBits => "wbits",
                GeneKind::ABits => "abits",
                GeneKind::Bits => "bits",
            };
            format!("{k}_{}", g.unit)
        })
        .collect()
}

/// Raw predictor features of candidate indices `idx`: the candidate values (ratio, bits).
pub fn features(space: &SearchSpace, idx: &[usize]) -> Vec<f64> {
    space
        .genes()
        .iter()
        .zip(idx)
        .map(|(g, &k)| g.candidates[k])
        .collect()
}

/// The labelled records as predictor samples (target: validation top-1 in percent).
/// Err([`Error::Predictor`]) when they do not make a sample set (none, or non-finite values).
pub fn samples(space: &SearchSpace, records: &[LabelRecord]) -> Result<Samples> {
    let x = records
        .iter()
        .map(|r| features(space, &r.indices))
        .collect();
    let y = records.iter().map(|r| r.top1).collect();
    Ok(Samples::new(feature_names(space), "top1".into(), x, y)?)
}

/// Fits the ensemble predictor (default configuration, `seed`) on `records`.
/// Err([`Error::Predictor`]) when the predictor cannot be fitted (too few records, ...).
pub fn fit(space: &SearchSpace, records: &[LabelRecord], seed: u64) -> Result<Predictor> {
    let s = samples(space, records)?;
    let cfg = seer_predictor::Config {
        seed,
        ..Default::default()
    };
    Ok(seer_predictor::fit(&s, &cfg)?)
}

/// A uniformly random genome (candidate index per gene).
fn random_indices(space: &SearchSpace, rng: &mut ChaCha8Rng) -> Vec<usize> {
    space
        .genes()
        .iter()
        .map(|g| rng.random_range(0..g.candidates.len()))
        .collect()
}

/// Uniformly random policies drawn with `rng` (at most `draws` draws): each one not in `seen`
/// whose BOPs lie in `band` is added to `seen` and handed to `take` with its stratum among `n`
/// equal-width log-BOPs strata of the band, until `take` answers that every stratum is
/// filled. Nothing is drawn for `n` = 0.
fn draw_strata(
    space: &SearchSpace,
    band: (f64, f64),
    n: usize,
    draws: usize,
    rng: &mut ChaCha8Rng,
    seen: &mut HashSet<Vec<usize>>,
    mut take: impl FnMut(usize, Vec<usize>) -> bool,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (lo, hi) = (band.0.max(1.0).ln(), band.1.max(1.0).ln());
    let width = ((hi - lo) / n as f64).max(1e-12);
    for _ in 0..draws {
        let idx = random_indices(space, rng);
        if seen.contains(&idx) {
            continue;
        }
        let b = space.totals_indices(&idx)?.bops as f64;
        if b < band.0 || b > band.1 {
            continue;
        }
        seen.insert(idx.clone());
        let k = (((b.ln() - lo) / width) as usize).min(n - 1);
        if take(k, idx) {
            break;
        }
    }
    Ok(())
}

/// `n` distinct policies stratified over log-BOPs in `band` (docs/method.md §5): `n` equal-width
/// bins of log BOPs over the band, one uniformly random policy per bin (the first of up to
/// 400·n seeded draws that lands there); bins nobody reached are filled with further in-band
/// draws (the draws' stream: [`Stream::StratifiedDraws`] of `seed`). Policies in `exclude`
/// (candidate indices) are skipped. Err([`Error::EmptyBand`]) when not one draw lands in the
/// band.
pub fn stratified(
    space: &SearchSpace,
    band: (f64, f64),
    n: usize,
    seed: u64,
    exclude: &HashSet<Vec<usize>>,
) -> Result<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(Stream::StratifiedDraws.seed(seed));
    let mut bins: Vec<Option<Vec<usize>>> = vec![None; n];
    let mut spare: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashSet<Vec<usize>> = exclude.clone();
    let draws = 400 * n.max(1);
    draw_strata(space, band, n, draws, &mut rng, &mut seen, |k, idx| {
        if bins[k].is_none() {
            bins[k] = Some(idx);
        } else if spare.len() < n {
            spare.push(idx);
        }
        bins.iter().all(Option::is_some)
    })?;
    let mut out: Vec<Vec<usize>> = bins.into_iter().flatten().collect();
    let mut spare = spare.into_iter();
    while out.len() < n {
        match spare.next() {
            Some(s) => out.push(s),
            None => break,
        }
    }
    if out.is_empty() {
        return Err(Error::EmptyBand {
            lo: band.0,
            hi: band.1,
        });
    }
    Ok(out)
}

/// The counterfactual-sensitivity acquisition as a seer-evo problem (genome mapping and
/// complexity from [`PolicyProblem`]).
struct CounterfactualProblem<'a> {
    inner: PolicyProblem<'a>,
    space: &'a SearchSpace,
    predictor: &'a Predictor,
}

impl Problem for CounterfactualProblem<'_> {
    fn cardinalities(&self) -> &[usize] {
        self.inner.cardinalities()
    }

    fn fitness(&self, genomes: &[Genome]) -> std::result::Result<Vec<f64>, seer_evo::BoxError> {
        let rows: Vec<Vec<usize>> = genomes.iter().map(|g| self.inner.indices(g)).collect();
        let feats: Vec<Vec<f64>> = rows.iter().map(|i| features(self.space, i)).collect();
        let cheapest = self.space.cheapest();
        let genes = self.space.genes();
        let scores = self.predictor.counterfactual_scores(&feats, |i, _| {
            // One-step-cheaper neighbours: move one gene one candidate towards its cheapest.
            let idx = &rows[i];
            let mut out = Vec::new();
            for (g, gene) in genes.iter().enumerate() {
                let k = idx[g];
                let step = match cheapest[g].cmp(&k) {
                    std::cmp::Ordering::Less => k - 1,
                    std::cmp::Ordering::Greater => k + 1,
                    std::cmp::Ordering::Equal => continue,
                };
                if gene.candidates.len() < 2 {
                    continue;
                }
                let mut n = idx.clone();
                n[g] = step;
                out.push(features(self.space, &n));
            }
            out
        })?;
        Ok(scores)
    }

    fn complexity(&self, genome: &[usize]) -> f64 {
        self.inner.complexity(genome)
    }
}

/// What one acquisition asks for (see [`acquire`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// How to choose.
    pub acquisition: Acquisition,
    /// The BOPs band the policies must fall in, `(lo, hi)`.
    pub band: (f64, f64),
    /// The budgets' BOPs bands `(lo, hi)` ([`Acquisition::Bands`]; empty: `band` alone).
    pub bands: Vec<(f64, f64)>,
    /// The active round (0-based): [`Acquisition::Bands`] deals this round's first label to
    /// band `round mod bands`, so that with K smaller than the number of budgets every
    /// budget still gets labels over the rounds.
    pub round: usize,
    /// How many policies.
    pub k: usize,
    /// Generations of each evolutionary run (`Std`, `Counterfactual`).
    pub generations: usize,
    /// The acquisition's seed (the base of its sub-streams, see [`Stream`]).
    pub seed: u64,
}

/// The next `req.k` policies to label (candidate indices), none of them in `labelled`, with BOPs
/// in `req.band`. `Std`/`Counterfactual` run the evolutionary sampler (seer-evo, small
/// population, `req.generations` generations: deterministic for a seed) on the acquisition
/// score once per each of `k` equal log-BOPs strata of the band and take each run's best;
/// `Random` draws uniformly. Returns fewer than `k` only when the band holds fewer unlabelled
/// policies. Seeds: the sub-streams [`Stream::RandomAcquisition`], [`Stream::SamplerStratum`]
/// and [`Stream::SamplerFill`] of `req.seed`. Errors: [`Error::PredictorMismatch`] when the
/// predictor does not fit `space`, [`Error::Evo`] when the fill run fails,
/// [`Error::EmptyBand`] (random acquisition).
pub fn acquire(
    space: &SearchSpace,
    predictor: &Predictor,
    labelled: &HashSet<Vec<usize>>,
    req: &Request,
) -> Result<Vec<Vec<usize>>> {
    let Request {
        acquisition,
        band,
        k,
        generations,
        seed,
        ..
    } = *req;
    if acquisition == Acquisition::Random {
        let seed = Stream::RandomAcquisition.seed(seed);
        return stratified(space, band, k, seed, labelled).map(|mut v| {
            v.truncate(k);
            v
        });
    }
    if acquisition == Acquisition::Pool {
        return pool(space, predictor, labelled, band, k, seed);
    }
    if acquisition == Acquisition::Bands {
        let bands = if req.bands.is_empty() {
            vec![band]
        } else {
            req.bands.clone()
        };
        return band_pools(space, predictor, labelled, &bands, k, req.round, seed);
    }
    let objective = PredictorObjective::new(predictor, space)?;
    let problem = PolicyProblem::new(space, &objective, Fitness::Std, Complexity::Bops);
    let archive: HashSet<Genome> = labelled.iter().map(|i| problem.genome(i)).collect();
    let cf;
    let p: &dyn ProblemRef = match acquisition {
        Acquisition::Std => &problem,
        Acquisition::Counterfactual => {
            cf = CounterfactualProblem {
                inner: PolicyProblem::new(space, &objective, Fitness::Mean, Complexity::Bops),
                space,
                predictor,
            };
            &cf
        }
        Acquisition::Random | Acquisition::Pool | Acquisition::Bands => {
            unreachable!("handled above")
        }
    };
    // Stratified: one evolutionary run per equal-width log-BOPs stratum of the band, each
    // returning its most uncertain unlabelled policy. A single run over the whole band returns
    // k near-copies of one corner (measured: 30 σ-picked labels were clusters differing in one
    // gene, all 2-bit, at the band's top, and made the predictor worse on held-out policies
    // than 30 random ones; docs/benchmarks.md "Active vs random acquisition").
    let (lo, hi) = (band.0.max(1.0).ln(), band.1.max(1.0).ln());
    let width = (hi - lo) / k.max(1) as f64;
    let mut archive = archive;
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(k);
    for i in 0..k {
        let b = Band::new(
            (lo + width * i as f64).exp(),
            (lo + width * (i + 1) as f64).exp(),
        );
        let cfg = EvoConfig {
            results: 1,
            generations,
            ..EvoConfig::small(Stream::SamplerStratum(i).seed(seed))
        };
        // A stratum may hold no feasible unlabelled policy (seer-evo's NoFeasibleGenome); it is
        // then left to the fill below, whose errors do propagate.
        if let Some(r) = p
            .run(b, &archive, &cfg)
            .ok()
            .and_then(|v| v.into_iter().next())
        {
            archive.insert(problem.genome(&r));
            out.push(r);
        }
    }
    // Strata nobody could fill (no unlabelled policy there): the most uncertain of the band.
    if out.len() < k {
        let cfg = EvoConfig {
            results: k - out.len(),
            generations,
            ..EvoConfig::small(Stream::SamplerFill.seed(seed))
        };
        out.extend(p.run(Band::new(band.0, band.1), &archive, &cfg)?);
    }
    Ok(out)
}

/// [`Acquisition::Pool`]: `k` equal log-BOPs strata of `band`; in each, up to [`POOL`]
/// distinct unlabelled policies from uniformly random draws (at most `400·k·POOL` draws, stream
/// [`Stream::PoolDraws`] of `seed`); per stratum the candidate with the largest σ (ties: the
/// first drawn). Strata no draw reached are filled with the largest-σ candidates left over.
/// Errors: [`Error::EmptyBand`] when not one draw lands in the band; the predictor's.
fn pool(
    space: &SearchSpace,
    predictor: &Predictor,
    labelled: &HashSet<Vec<usize>>,
    band: (f64, f64),
    k: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(Stream::PoolDraws.seed(seed));
    let mut strata: Vec<Vec<Vec<usize>>> = vec![Vec::new(); k];
    let mut seen: HashSet<Vec<usize>> = labelled.clone();
    let draws = 400 * k.max(1) * POOL;
    draw_strata(space, band, k, draws, &mut rng, &mut seen, |s, idx| {
        if strata[s].len() < POOL {
            strata[s].push(idx);
        }
        strata.iter().all(|c| c.len() >= POOL)
    })?;
    let cands: Vec<(usize, Vec<usize>)> = strata
        .into_iter()
        .enumerate()
        .flat_map(|(s, c)| c.into_iter().map(move |i| (s, i)))
        .collect();
    if cands.is_empty() {
        return Err(Error::EmptyBand {
            lo: band.0,
            hi: band.1,
        });
    }
    let feats: Vec<Vec<f64>> = cands.iter().map(|(_, i)| features(space, i)).collect();
    let std = predictor.predict(&feats)?.std;
    // Candidates by σ, largest first (ties: draw order).
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| std[b].total_cmp(&std[a]).then(a.cmp(&b)));
    let mut taken = vec![false; cands.len()];
    let mut filled = vec![false; k];
    let mut out = Vec::with_capacity(k);
    for &c in &order {
        let s = cands[c].0;
        if !filled[s] {
            filled[s] = true;
            taken[c] = true;
            out.push(c);
        }
    }
    for &c in &order {
        if out.len() >= k {
            break;
        }
        if !taken[c] {
            taken[c] = true;
            out.push(c);
        }
    }
    // In stratum order, as the other acquisitions return them.
    out.sort_by_key(|&c| (cands[c].0, c));
    Ok(out.into_iter().map(|c| cands[c].1.clone()).collect())
}

/// [`Acquisition::Bands`]: label `i` of `k` goes to band `(i + round) mod bands.len()`; per
/// band with
/// `m` labels, up to `m·`[`POOL`] distinct unlabelled policies from uniformly random draws
/// landing in it (at most `400·m·POOL` draws, stream [`Stream::PoolDraws`] of `seed`, bands in
/// order), of which the `m` with the largest σ (ties: the first drawn). Returns fewer than `k`
/// only when the bands hold fewer unlabelled policies. Errors: [`Error::EmptyBand`] when not
/// one draw lands in any band; the predictor's.
fn band_pools(
    space: &SearchSpace,
    predictor: &Predictor,
    labelled: &HashSet<Vec<usize>>,
    bands: &[(f64, f64)],
    k: usize,
    round: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(Stream::PoolDraws.seed(seed));
    let mut seen: HashSet<Vec<usize>> = labelled.clone();
    let mut out = Vec::with_capacity(k);
    for (j, &band) in bands.iter().enumerate() {
        let m = (0..k).filter(|i| (i + round) % bands.len() == j).count();
        if m == 0 {
            continue;
        }
        let mut cands: Vec<Vec<usize>> = Vec::new();
        let want = m * POOL;
        draw_strata(space, band, 1, 400 * want, &mut rng, &mut seen, |_, idx| {
            cands.push(idx);
            cands.len() >= want
        })?;
        if cands.is_empty() {
            continue;
        }
        let feats: Vec<Vec<f64>> = cands.iter().map(|i| features(space, i)).collect();
        let std = predictor.predict(&feats)?.std;
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|&a, &b| std[b].total_cmp(&std[a]).then(a.cmp(&b)));
        out.extend(order.into_iter().take(m).map(|c| cands[c].clone()));
    }
    if out.is_empty() && k > 0 {
        let (lo, hi) = bands.iter().fold((f64::INFINITY, 0.0f64), |(l, h), b| {
            (l.min(b.0), h.max(b.1))
        });
        return Err(Error::EmptyBand { lo, hi });
    }
    Ok(out)
}

/// Object-safe runner over the two evolutionary acquisition problems.
trait ProblemRef {
    fn run(
        &self,
        band: Band,
        archive: &HashSet<Genome>,
        cfg: &EvoConfig,
    ) -> Result<Vec<Vec<usize>>>;
}

impl ProblemRef for PolicyProblem<'_> {
    fn run(
        &self,
        band: Band,
        archive: &HashSet<Genome>,
        cfg: &EvoConfig,
    ) -> Result<Vec<Vec<usize>>> {
        let r = seer_evo::evolve(self, band, archive, cfg)?;
        Ok(r.best.iter().map(|s| self.indices(&s.genome)).collect())
    }
}

impl ProblemRef for CounterfactualProblem<'_> {
    fn run(
        &self,
        band: Band,
        archive: &HashSet<Genome>,
        cfg: &EvoConfig,
    ) -> Result<Vec<Vec<usize>>> {
        let r = seer_evo::evolve(self, band, archive, cfg)?;
        Ok(r.best
            .iter()
            .map(|s| self.inner.indices(&s.genome))
            .collect())
    }
}

/// Policies of candidate-index rows.
pub fn policies(space: &SearchSpace, rows: &[Vec<usize>]) -> Result<Vec<Policy>> {
    rows.iter()
        .map(|i| space.from_indices(i).map_err(Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use seer_policy::{SpaceConfig, builtin};

    #[test]
    fn std_pool_and_bands_acquisitions_are_distinct_unlabelled_in_band_and_spread() {
        let space = SearchSpace::new(
            builtin("lenet5", None, None).unwrap(),
            SpaceConfig {
                fix_first: false,
                ..SpaceConfig::default()
            },
        )
        .unwrap();
        let lo = space.totals_indices(&space.cheapest()).unwrap().bops as f64;
        let hi = space.totals_indices(&space.most_expensive()).unwrap().bops as f64;
        let band = (lo * 1.5, hi * 0.5);
        let rows = stratified(&space, band, 24, 3, &HashSet::new()).unwrap();
        // A synthetic accuracy in percent (12 features: at most 30 + 4·(0.75 + 8 + 8) = 97):
        // more bits is better.
        let x: Vec<Vec<f64>> = rows.iter().map(|r| features(&space, r)).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|f| 30.0 + f.iter().map(|v| v.min(8.0)).sum::<f64>())
            .collect();
        let s = Samples::new(feature_names(&space), "top1".into(), x, y).unwrap();
        let pred = seer_predictor::fit(
            &s,
            &seer_predictor::Config {
                members: 4,
                max_epochs: 30,
                ..Default::default()
            },
        )
        .unwrap();
        let labelled: HashSet<Vec<usize>> = rows.iter().cloned().collect();
        let k = 5;
        for acquisition in [Acquisition::Std, Acquisition::Pool] {
            let req = Request {
                acquisition,
                band,
                bands: Vec::new(),
                round: 0,
                k,
                generations: 4,
                seed: 7,
            };
            let got = acquire(&space, &pred, &labelled, &req).unwrap();
            assert_eq!(got.len(), k, "{acquisition}");
            let distinct: HashSet<&Vec<usize>> = got.iter().collect();
            assert_eq!(distinct.len(), k, "duplicates in {got:?}");
            let (l, h) = (band.0.ln(), band.1.ln());
            let mut strata = HashSet::new();
            for r in &got {
                assert!(!labelled.contains(r));
                let b = space.totals_indices(r).unwrap().bops as f64;
                assert!(b >= band.0 && b <= band.1, "{b} outside {band:?}");
                strata.insert((((b.ln() - l) / (h - l)) * k as f64).min(k as f64 - 1.0) as usize);
            }
            assert!(
                strata.len() >= 4,
                "{acquisition}: acquired policies fall in strata {strata:?}"
            );
            // Same seed, same policies.
            let again = acquire(&space, &pred, &labelled, &req).unwrap();
            assert_eq!(got, again);
        }
        // A pool pick is the largest σ of 16 random candidates: with one stratum (the whole
        // band) it is more uncertain than the median of 41 other random policies (a random
        // or least-σ pick would fall below it half the time or always).
        let one = acquire(
            &space,
            &pred,
            &labelled,
            &Request {
                acquisition: Acquisition::Pool,
                band,
                bands: Vec::new(),
                round: 0,
                k: 1,
                generations: 4,
                seed: 11,
            },
        )
        .unwrap();
        let others = stratified(&space, band, 41, 99, &labelled).unwrap();
        let sd = |r: &Vec<usize>| pred.predict(&[features(&space, r)]).unwrap().std[0];
        let mut sds: Vec<f64> = others.iter().map(sd).collect();
        sds.sort_by(f64::total_cmp);
        assert!(
            sd(&one[0]) >= sds[sds.len() / 2],
            "{} vs {sds:?}",
            sd(&one[0])
        );
        // Bands: labels dealt round-robin to the bands (3, 2, 2 of 7), each inside its band,
        // distinct and unlabelled; each band's first pick the largest σ of its pool, so at
        // least the median σ of random policies of that band; same seed, same policies.
        let (lo, hi) = (band.0, band.1);
        let mid = (lo * hi).sqrt();
        let bands = vec![(lo, mid), (mid, hi), ((lo * mid).sqrt(), (mid * hi).sqrt())];
        let req = Request {
            acquisition: Acquisition::Bands,
            band,
            bands: bands.clone(),
            round: 0,
            k: 7,
            generations: 4,
            seed: 5,
        };
        let got = acquire(&space, &pred, &labelled, &req).unwrap();
        assert_eq!(got.len(), 7);
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 7, "{got:?}");
        let bops = |r: &Vec<usize>| space.totals_indices(r).unwrap().bops as f64;
        for (j, r) in got.iter().enumerate() {
            let b = [0, 0, 0, 1, 1, 2, 2][j];
            let (l, h) = bands[b];
            assert!(!labelled.contains(r));
            assert!(
                bops(r) >= l && bops(r) <= h,
                "pick {j}: {} outside {l}..{h}",
                bops(r)
            );
        }
        for (b, j) in [(0, 0), (1, 3), (2, 5)] {
            let others = stratified(&space, bands[b], 41, 99, &labelled).unwrap();
            let mut sds: Vec<f64> = others.iter().map(sd).collect();
            sds.sort_by(f64::total_cmp);
            assert!(
                sd(&got[j]) >= sds[sds.len() / 2],
                "band {b}: {} vs {sds:?}",
                sd(&got[j])
            );
        }
        assert_eq!(acquire(&space, &pred, &labelled, &req).unwrap(), got);
        // Round 1 deals 2 labels starting at band 1: bands 1 and 2 get one each, band 0 none.
        let req = Request {
            k: 2,
            round: 1,
            ..req
        };
        let got = acquire(&space, &pred, &labelled, &req).unwrap();
        assert_eq!(got.len(), 2);
        for (r, b) in got.iter().zip([1, 2]) {
            let (l, h) = bands[b];
            assert!(bops(r) >= l && bops(r) <= h, "{} outside band {b}", bops(r));
        }
    }
}
