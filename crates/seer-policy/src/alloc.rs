//! Exact budgeted allocation of a separable score (docs/method.md §9): the policy minimising
//! `Σ_g score[g][idx_g]` (one score per gene and candidate, e.g. a predicted loss increase)
//! subject to BOPs and/or size limits, by dynamic programming over discretised cost.
//!
//! This is the solver behind the `fit-ilp` method: per-unit sensitivities in the manner of
//! FIT (Zandonati et al., "FIT: A Metric for Model Sensitivity", ICLR 2023: empirical Fisher
//! trace × quantization noise) and HAWQ-V3 (Yao et al., ICML 2021: Hessian-trace sensitivity,
//! then an integer linear program under size/BOPs limits). HAWQ-V3 and FIT price each layer's
//! bits alone; with structured pruning a layer's cost also depends on how many input channels
//! its producer keeps, so the cost is not separable per unit. The program here is still exact
//! (up to the discretisation): it visits the units in order and keeps, as its state, the
//! choices of earlier units that a later cost term still reads (the producer's pruning ratio
//! in a chain, plus a residual tie group's choice while the group is open), together with the
//! cost spent so far in whole steps.
//!
//! **Discretisation.** A limit `L` is counted in steps of `s = max(1, ⌊L / bins⌋)`; each unit's
//! cost is rounded *up* to whole steps, so a policy the program accepts is always within the
//! limit (`Σ ⌈c_u / s⌉ ≤ ⌊L / s⌋ ⇒ Σ c_u ≤ L`). It may miss a policy whose cost lies within
//! `units · s` of the limit; with `bins ≥ L` (steps of 1) the result is the exact optimum.

use std::collections::BTreeMap;

use crate::cost::Totals;
use crate::error::{Error, Result};
use crate::space::{SearchSpace, Term};

/// The limits of [`SearchSpace::allocate`] (at least one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocLimits {
    /// Most BOPs allowed.
    pub max_bops: Option<u64>,
    /// Most model bits allowed (the integer engine's storage, [`SearchSpace::cost`]).
    pub max_size_bits: Option<u64>,
}

/// The result of [`SearchSpace::allocate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// Candidate index per gene.
    pub indices: Vec<usize>,
    /// The minimised score `Σ_g score[g][indices[g]]`.
    pub score: f64,
    /// Exact totals of the chosen policy (within every limit).
    pub totals: Totals,
    /// Partial states the program kept, summed over units (a measure of its work).
    pub states: usize,
}

/// One option of a unit: candidate indices of its prune, wbits and abits genes.
#[derive(Clone, Copy, Debug)]
struct UnitOption {
    p: usize,
    w: usize,
    a: usize,
}

/// Which parts of an earlier unit's choice a later term reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Need {
    prune: bool,
    bits: bool,
}

/// The choices of the open units (prune, wbits, abits candidate indices, reduced to what later
/// terms read), in unit order: the state of the dynamic program besides the cost.
type Open = Vec<(usize, usize, usize)>;

/// One kept partial solution after a unit.
#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f64,
    /// Index of the entry it extends in the previous layer.
    prev: usize,
    /// The option of this unit.
    opt: usize,
}

impl SearchSpace {
    /// The policy minimising the separable score `Σ_g scores[g][idx_g]` under `limits`, by
    /// dynamic programming over discretised cost (module docs): `scores[g]` has one finite
    /// entry per candidate of gene `g` (lower is better; e.g. the predicted loss increase of
    /// that choice); each limit is counted in `bins` steps (rounded up per unit, so the result
    /// never exceeds a limit; `bins ≥ limit` is exact). Ties go to the lower cost, then to the
    /// first option in candidate order.
    ///
    /// Errors: [`Error::InvalidConfig`] for `bins == 0`, no limit, or scores that do not match
    /// the genes or are not finite; [`Error::Infeasible`] (labelled `label`) when no policy
    /// fits, stating the cheapest policy's cost, or when only the rounding leaves nothing
    /// (then with the advice to raise `bins`).
    pub fn allocate(
        &self,
        scores: &[Vec<f64>],
        limits: AllocLimits,
        bins: usize,
        label: &str,
    ) -> Result<Allocation> {
        let lims: Vec<(usize, u64)> = [limits.max_bops, limits.max_size_bits]
            .iter()
            .enumerate()
            .filter_map(|(k, l)| l.map(|l| (k, l)))
            .collect();
        if lims.is_empty() {
            return Err(Error::InvalidConfig(
                "allocate needs a BOPs or size limit".into(),
            ));
        }
        if bins == 0 {
            return Err(Error::InvalidConfig("allocate needs bins ≥ 1".into()));
        }
        self.check_scores(scores)?;
        let cheapest = self.totals_indices(&self.cheapest())?;
        for &(k, l) in &lims {
            let (min, what) = if k == 0 {
                (cheapest.bops, "BOPs")
            } else {
                (cheapest.size_bits, "bits")
            };
            if min > l {
                return Err(Error::Infeasible {
                    label: label.into(),
                    msg: format!(
                        "{l} {what} is below the cheapest policy of the search space ({min} {what})"
                    ),
                });
            }
        }
        let steps: Vec<u64> = lims
            .iter()
            .map(|&(_, l)| (l / bins as u64).max(1))
            .collect();
        let caps: Vec<u64> = lims.iter().zip(&steps).map(|(&(_, l), &s)| l / s).collect();
        let nu = self.units().len();
        let opts: Vec<Vec<UnitOption>> = (0..nu).map(|u| self.unit_options(u)).collect();
        // Each term is settled at the last unit it reads; terms reading no unit are constant.
        let settle: Vec<Option<usize>> = self
            .terms
            .iter()
            .map(|t| self.term_units(t).max())
            .collect();
        let mut needs: Vec<Vec<Need>> = vec![vec![Need::default(); nu]; nu];
        for (t, s) in self.terms.iter().zip(&settle) {
            let Some(s) = *s else { continue };
            for after in needs.iter_mut().take(s) {
                if let Some(u) = t.unit {
                    after[u].bits = true;
                }
                for d in [t.out_dom, t.in_dom] {
                    if let Some(u) = self.dom_unit[d] {
                        after[u].prune = true;
                    }
                }
            }
        }
        // needs[u][v]: what of unit v (≤ u) must be remembered after deciding unit u.
        for (u, n) in needs.iter_mut().enumerate() {
            for x in n.iter_mut().skip(u + 1) {
                *x = Need::default();
            }
        }
        let open: Vec<Vec<usize>> = needs
            .iter()
            .map(|n| (0..nu).filter(|&v| n[v] != Need::default()).collect())
            .collect();
        // The constant terms.
        let mut idx = self.cheapest();
        let constant: Vec<u64> = {
            let mut c = vec![0u64; lims.len()];
            for (t, s) in self.terms.iter().zip(&settle) {
                if s.is_none() {
                    add_cost(&mut c, &self.term_totals(t, &idx), &lims);
                }
            }
            c.iter().zip(&steps).map(|(&c, &s)| c.div_ceil(s)).collect()
        };
        if constant.iter().zip(&caps).any(|(c, m)| c > m) {
            return Err(rounding_infeasible(label, bins));
        }
        // Layer u holds the entries after deciding units 0..=u, keyed by (open choices, bins).
        type Key = (Open, Vec<u64>);
        let mut layers: Vec<Vec<(Key, Entry)>> = Vec::with_capacity(nu);
        let mut prev: Vec<(Key, Entry)> = vec![(
            (Vec::new(), constant),
            Entry {
                score: 0.0,
                prev: 0,
                opt: 0,
            },
        )];
        let mut prev_open: Vec<usize> = Vec::new();
        let mut states = 0usize;
        // An open unit's choice, reduced to the parts later terms read.
        let project = |n: Need, o: (usize, usize, usize)| {
            (
                if n.prune { o.0 } else { 0 },
                if n.bits { o.1 } else { 0 },
                if n.bits { o.2 } else { 0 },
            )
        };
        for u in 0..nu {
            let settled: Vec<&Term> = self
                .terms
                .iter()
                .zip(&settle)
                .filter(|(_, s)| **s == Some(u))
                .map(|(t, _)| t)
                .collect();
            let mut next: BTreeMap<Key, Entry> = BTreeMap::new();
            // Unit u's cost in steps and score, per (open choices of the previous layer, option),
            // computed once per distinct open choice.
            let mut cache: BTreeMap<Open, Vec<Vec<u64>>> = BTreeMap::new();
            for (ei, ((okey, obins), e)) in prev.iter().enumerate() {
                let costs = cache.entry(okey.clone()).or_insert_with(|| {
                    for (&v, &(p, w, a)) in prev_open.iter().zip(okey) {
                        self.set_option(&mut idx, v, UnitOption { p, w, a });
                    }
                    opts[u]
                        .iter()
                        .map(|&o| {
                            self.set_option(&mut idx, u, o);
                            let mut c = vec![0u64; lims.len()];
                            for t in &settled {
                                add_cost(&mut c, &self.term_totals(t, &idx), &lims);
                            }
                            c.iter().zip(&steps).map(|(&c, &s)| c.div_ceil(s)).collect()
                        })
                        .collect()
                });
                for (oi, c) in costs.iter().enumerate() {
                    let nb: Vec<u64> = obins.iter().zip(c).map(|(a, b)| a + b).collect();
                    if nb.iter().zip(&caps).any(|(b, m)| b > m) {
                        continue;
                    }
                    let o = opts[u][oi];
                    let score = e.score + self.option_score(scores, u, o);
                    let nkey: Open = open[u]
                        .iter()
                        .map(|&v| {
                            let full = if v == u {
                                (o.p, o.w, o.a)
                            } else {
                                let pos = prev_open.iter().position(|&x| x == v);
                                okey[pos.expect("an open unit stays open until its last term")]
                            };
                            project(needs[u][v], full)
                        })
                        .collect();
                    let entry = Entry {
                        score,
                        prev: ei,
                        opt: oi,
                    };
                    match next.entry((nkey, nb)) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(entry);
                        }
                        std::collections::btree_map::Entry::Occupied(mut o) => {
                            if score < o.get().score {
                                o.insert(entry);
                            }
                        }
                    }
                }
            }
            if next.is_empty() {
                return Err(rounding_infeasible(label, bins));
            }
            // One limit: per open choice, drop entries no cheaper-or-better than an earlier one
            // (a dominated partial solution never completes to a better policy).
            let mut kept: Vec<(Key, Entry)> = Vec::with_capacity(next.len());
            let mut best: Option<(Open, f64)> = None;
            for (k, e) in next {
                if lims.len() == 1 {
                    if let Some((bk, bs)) = &best
                        && *bk == k.0
                        && e.score >= *bs
                    {
                        continue;
                    }
                    best = Some((k.0.clone(), e.score));
                }
                kept.push((k, e));
            }
            states += kept.len();
            // Keys hold the open units' choices only; the full option of each unit is kept in
            // the back pointers.
            layers.push(prev);
            prev = kept;
            prev_open = open[u].clone();
        }
        layers.push(prev);
        let last = layers.last().expect("one layer per unit plus the start");
        let (best_i, best) = last
            .iter()
            .enumerate()
            .min_by(|a, b| {
                a.1.1
                    .score
                    .total_cmp(&b.1.1.score)
                    .then_with(|| a.1.0.1.cmp(&b.1.0.1))
            })
            .map(|(i, (_, e))| (i, *e))
            .ok_or_else(|| rounding_infeasible(label, bins))?;
        let mut indices = vec![0usize; self.dim()];
        let mut at = best_i;
        for u in (0..nu).rev() {
            let e = layers[u + 1][at].1;
            self.set_option(&mut indices, u, opts[u][e.opt]);
            at = e.prev;
        }
        let totals = self.totals_indices(&indices)?;
        let within = limits.max_bops.is_none_or(|l| totals.bops <= l)
            && limits.max_size_bits.is_none_or(|l| totals.size_bits <= l);
        if !within {
            return Err(Error::InvalidConfig(format!(
                "allocate: internal error, the chosen policy ({} BOPs, {} bits) exceeds the limits",
                totals.bops, totals.size_bits
            )));
        }
        Ok(Allocation {
            indices,
            score: best.score,
            totals,
            states,
        })
    }

    /// Checks `scores` against the genes (one finite value per candidate).
    fn check_scores(&self, scores: &[Vec<f64>]) -> Result<()> {
        if scores.len() != self.dim() {
            return Err(Error::InvalidConfig(format!(
                "{} score rows for {} genes",
                scores.len(),
                self.dim()
            )));
        }
        for (g, (s, gene)) in scores.iter().zip(self.genes()).enumerate() {
            if s.len() != gene.candidates.len() {
                return Err(Error::InvalidConfig(format!(
                    "gene {g}: {} scores for {} candidates",
                    s.len(),
                    gene.candidates.len()
                )));
            }
            if let Some(v) = s.iter().find(|v| !v.is_finite()) {
                return Err(Error::InvalidConfig(format!(
                    "gene {g}: score {v} is not finite"
                )));
            }
        }
        Ok(())
    }

    /// Every option of unit `u` (prune × wbits × abits; abits omitted with shared bits).
    fn unit_options(&self, u: usize) -> Vec<UnitOption> {
        let ug = self.unit_genes[u];
        let n = |g: usize| self.genes()[g].candidates.len();
        let mut v = Vec::new();
        for p in 0..n(ug.prune) {
            for w in 0..n(ug.wbits) {
                if ug.abits == ug.wbits {
                    v.push(UnitOption { p, w, a: w });
                } else {
                    for a in 0..n(ug.abits) {
                        v.push(UnitOption { p, w, a });
                    }
                }
            }
        }
        v
    }

    fn set_option(&self, idx: &mut [usize], u: usize, o: UnitOption) {
        let ug = self.unit_genes[u];
        idx[ug.prune] = o.p;
        idx[ug.wbits] = o.w;
        idx[ug.abits] = o.a;
    }

    fn option_score(&self, scores: &[Vec<f64>], u: usize, o: UnitOption) -> f64 {
        let ug = self.unit_genes[u];
        let mut s = scores[ug.prune][o.p] + scores[ug.wbits][o.w];
        if ug.abits != ug.wbits {
            s += scores[ug.abits][o.a];
        }
        s
    }

    /// The units a term's cost reads: its own (bits) and its domains' owners (pruning).
    fn term_units(&self, t: &Term) -> impl Iterator<Item = usize> + '_ {
        t.unit
            .into_iter()
            .chain(self.dom_unit[t.out_dom])
            .chain(self.dom_unit[t.in_dom])
    }

    /// One term's exact totals at candidate indices `idx` (only the genes it reads matter).
    fn term_totals(&self, t: &Term, idx: &[usize]) -> Totals {
        let g = self.genes();
        let keep = |d: usize| {
            self.dom_unit[d].map_or(1.0, |u| {
                let pg = self.unit_genes[u].prune;
                1.0 - g[pg].candidates[idx[pg]]
            })
        };
        let bits = |u: usize| {
            let ug = self.unit_genes[u];
            (
                g[ug.wbits].candidates[idx[ug.wbits]] as u32,
                g[ug.abits].candidates[idx[ug.abits]] as u32,
            )
        };
        let n = self.layer_nums(t, &keep, &bits);
        Totals {
            macs: n.macs,
            bops: n.bops,
            size_bits: n.size,
        }
    }
}

/// Adds a term's cost to `c`, one entry per limit (`lims[k].0`: 0 BOPs, 1 size).
fn add_cost(c: &mut [u64], t: &Totals, lims: &[(usize, u64)]) {
    for (x, &(k, _)) in c.iter_mut().zip(lims) {
        *x += if k == 0 { t.bops } else { t.size_bits };
    }
}

fn rounding_infeasible(label: &str, bins: usize) -> Error {
    Error::Infeasible {
        label: label.into(),
        msg: format!(
            "no policy fits once each unit's cost is rounded up to 1/{bins} of the limit (the \
             cheapest policy is just below it): use more bins"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConvOpts, InputShape, LayerKind, ResidualPruning, SpaceConfig, SpecBuilder};

    /// A tiny chain: conv(3→6) relu conv(6→8) relu flatten linear(→10), 6×6×3 input.
    fn chain(cfg: SpaceConfig) -> SearchSpace {
        let mut b = SpecBuilder::new("tiny", InputShape::new(6, 6, 3), 10);
        let c1 = b.conv("c1", None, ConvOpts::new(6, 3).pad(1)).unwrap();
        let r1 = b.op("r1", Some(c1), LayerKind::Relu).unwrap();
        let c2 = b
            .conv("c2", Some(r1), ConvOpts::new(8, 3).stride(2).pad(1))
            .unwrap();
        let r2 = b.op("r2", Some(c2), LayerKind::Relu).unwrap();
        let f = b.op("f", Some(r2), LayerKind::Flatten).unwrap();
        b.linear("fc", Some(f), 10, true).unwrap();
        SearchSpace::new(b.finish().unwrap(), cfg).unwrap()
    }

    /// A tiny residual net (tied mode: the stem and the block's second conv share a unit).
    fn residual() -> SearchSpace {
        let mut b = SpecBuilder::new("tinyres", InputShape::new(4, 4, 2), 3);
        let s = b.conv("stem", None, ConvOpts::new(4, 3).pad(1)).unwrap();
        let r = b.op("r", Some(s), LayerKind::Relu).unwrap();
        let a = b.conv("a", Some(r), ConvOpts::new(4, 3).pad(1)).unwrap();
        let ra = b.op("ra", Some(a), LayerKind::Relu).unwrap();
        let c = b.conv("b", Some(ra), ConvOpts::new(4, 3).pad(1)).unwrap();
        let add = b.add("add", &[c, r]).unwrap();
        let g = b.op("g", Some(add), LayerKind::GlobalAvgPool).unwrap();
        let f = b.op("f", Some(g), LayerKind::Flatten).unwrap();
        b.linear("fc", Some(f), 3, true).unwrap();
        let cfg = SpaceConfig {
            prune_ratios: vec![0.0, 0.5],
            wbits: vec![2, 4],
            abits: vec![2, 4],
            residual_pruning: ResidualPruning::Tied,
            fix_first: false,
            ..SpaceConfig::default()
        };
        SearchSpace::new(b.finish().unwrap(), cfg).unwrap()
    }

    fn small_cfg() -> SpaceConfig {
        SpaceConfig {
            prune_ratios: vec![0.0, 0.25, 0.5],
            wbits: vec![2, 4, 8],
            abits: vec![2, 8],
            fix_first: false,
            ..SpaceConfig::default()
        }
    }

    /// Every policy of `space` by brute force: the best score within the limits.
    fn brute(space: &SearchSpace, scores: &[Vec<f64>], lim: AllocLimits) -> Option<f64> {
        let cards: Vec<usize> = space.genes().iter().map(|g| g.candidates.len()).collect();
        let n: usize = cards.iter().product();
        let mut best: Option<f64> = None;
        for mut code in 0..n {
            let idx: Vec<usize> = cards
                .iter()
                .map(|&c| {
                    let i = code % c;
                    code /= c;
                    i
                })
                .collect();
            let t = space.totals_indices(&idx).unwrap();
            if lim.max_bops.is_some_and(|l| t.bops > l)
                || lim.max_size_bits.is_some_and(|l| t.size_bits > l)
            {
                continue;
            }
            let s: f64 = idx.iter().enumerate().map(|(g, &i)| scores[g][i]).sum();
            best = Some(best.map_or(s, |b: f64| b.min(s)));
        }
        best
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Random scores, decreasing in bits and increasing in pruning (as sensitivities are), or
    /// arbitrary when `any`.
    fn scores(space: &SearchSpace, rng: &mut Lcg, any: bool) -> Vec<Vec<f64>> {
        space
            .genes()
            .iter()
            .map(|g| {
                let mut v: Vec<f64> = g.candidates.iter().map(|_| rng.next()).collect();
                if !any {
                    v.sort_by(|a, b| b.total_cmp(a));
                    if g.kind == crate::GeneKind::Prune {
                        v.reverse();
                    }
                }
                v
            })
            .collect()
    }

    fn check_exact(space: &SearchSpace, seed: u64, any: bool, both: bool) {
        let mut rng = Lcg(seed);
        let lo = space.totals_indices(&space.cheapest()).unwrap();
        let hi = space.totals_indices(&space.most_expensive()).unwrap();
        for _ in 0..6 {
            let s = scores(space, &mut rng, any);
            let f = rng.next();
            let bops = lo.bops + (f * (hi.bops - lo.bops) as f64) as u64;
            let size = lo.size_bits + (rng.next() * (hi.size_bits - lo.size_bits) as f64) as u64;
            let lim = AllocLimits {
                max_bops: Some(bops),
                max_size_bits: both.then_some(size),
            };
            // Steps of one BOP (and one bit): the program is exact.
            let bins = bops.max(size) as usize;
            let a = space.allocate(&s, lim, bins, "t").unwrap();
            let want = brute(space, &s, lim).unwrap();
            assert!(
                (a.score - want).abs() < 1e-9,
                "seed {seed}: dp {} vs brute force {want}",
                a.score
            );
            assert!(a.totals.bops <= bops);
            if both {
                assert!(a.totals.size_bits <= size);
            }
            let sum: f64 = a.indices.iter().enumerate().map(|(g, &i)| s[g][i]).sum();
            assert!((sum - a.score).abs() < 1e-9);
        }
    }

    #[test]
    fn exact_optimum_against_brute_force_on_a_chain() {
        let space = chain(small_cfg());
        for seed in 0..4 {
            check_exact(&space, seed, seed % 2 == 1, false);
        }
    }

    #[test]
    fn exact_optimum_with_shared_bits_and_a_residual_tie() {
        let shared = chain(SpaceConfig {
            abits: vec![2, 4, 8],
            shared_bits: true,
            ..small_cfg()
        });
        check_exact(&shared, 11, false, false);
        let res = residual();
        assert!(res.units().len() >= 2);
        for seed in 20..23 {
            check_exact(&res, seed, true, false);
        }
    }

    #[test]
    fn exact_optimum_under_two_limits() {
        let space = chain(SpaceConfig {
            prune_ratios: vec![0.0, 0.5],
            wbits: vec![2, 8],
            abits: vec![2, 8],
            fix_first: false,
            ..SpaceConfig::default()
        });
        check_exact(&space, 5, true, true);
    }

    #[test]
    fn coarse_bins_never_exceed_the_budget() {
        let space = chain(small_cfg());
        let mut rng = Lcg(99);
        let lo = space.totals_indices(&space.cheapest()).unwrap().bops;
        let hi = space.totals_indices(&space.most_expensive()).unwrap().bops;
        for bins in [1usize, 3, 10, 50, 400] {
            for _ in 0..5 {
                let s = scores(&space, &mut rng, true);
                let b = lo + ((0.05 + 0.9 * rng.next()) * (hi - lo) as f64) as u64;
                let lim = AllocLimits {
                    max_bops: Some(b),
                    max_size_bits: None,
                };
                match space.allocate(&s, lim, bins, "t") {
                    Ok(a) => {
                        assert!(a.totals.bops <= b, "bins {bins}: {} > {b}", a.totals.bops);
                        // Never better than the true optimum.
                        assert!(a.score >= brute(&space, &s, lim).unwrap() - 1e-9);
                    }
                    // Only the rounding may leave nothing, and it says so.
                    Err(e) => assert!(e.to_string().contains("more bins"), "{e}"),
                }
            }
        }
    }

    #[test]
    fn infeasible_budget_and_bad_scores_are_clear_errors() {
        let space = chain(small_cfg());
        let mut rng = Lcg(3);
        let s = scores(&space, &mut rng, false);
        let lo = space.totals_indices(&space.cheapest()).unwrap();
        let lim = AllocLimits {
            max_bops: Some(lo.bops - 1),
            max_size_bits: None,
        };
        let e = space.allocate(&s, lim, 1000, "bops-x").unwrap_err();
        assert!(matches!(e, Error::Infeasible { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("bops-x") && text.contains("below the cheapest"),
            "{text}"
        );
        assert!(text.contains(&lo.bops.to_string()), "{text}");
        // Exactly the cheapest policy's cost is feasible (and chooses it).
        let lim = AllocLimits {
            max_bops: Some(lo.bops),
            max_size_bits: None,
        };
        let a = space.allocate(&s, lim, lo.bops as usize, "t").unwrap();
        assert_eq!(a.totals.bops, lo.bops);
        let size = AllocLimits {
            max_bops: None,
            max_size_bits: Some(lo.size_bits - 1),
        };
        assert!(matches!(
            space.allocate(&s, size, 100, "s"),
            Err(Error::Infeasible { .. })
        ));
        let ok = AllocLimits {
            max_bops: Some(lo.bops * 4),
            max_size_bits: None,
        };
        assert!(space.allocate(&s, AllocLimits::default(), 10, "t").is_err());
        assert!(space.allocate(&s, ok, 0, "t").is_err());
        assert!(space.allocate(&s[1..], ok, 10, "t").is_err());
        let mut nan = s.clone();
        nan[0][0] = f64::NAN;
        let e = space.allocate(&nan, ok, 10, "t").unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
    }
}
