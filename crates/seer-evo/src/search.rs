//! The evolutionary search loop ([`evolve`]) and the random-search baseline ([`random_search`]).
//!
//! Reproducibility: every child is bred from its own ChaCha8 stream, keyed by (seed, generation,
//! kind, index), in parallel; duplicates are then filtered sequentially in index order. The
//! result therefore depends on the seed only, never on the number of rayon threads. A wall-time
//! limit cuts the run at a generation boundary (the result is then a prefix of the unlimited
//! run).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::key::Keyer;
use crate::problem::{Band, Genome, Problem};

/// Settings of [`evolve`] (and, for the fields it uses, [`random_search`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EvoConfig {
    /// Genomes evaluated per generation (the first generation is all random immigrants).
    pub population: usize,
    /// Top-k: how many of the best genomes seen so far breed the next generation.
    pub parents: usize,
    /// Crossover children per generation.
    pub crossover: usize,
    /// Mutation children per generation; the rest of the population are random immigrants.
    pub mutation: usize,
    /// Probability that a mutation child changes each gene (at least one gene always changes).
    pub mutation_prob: f64,
    /// Uniform crossover: probability that a child takes each gene from the second parent.
    pub crossover_swap: f64,
    /// Generations after the initial one.
    pub generations: usize,
    /// Stop at the first generation boundary after this much wall time.
    pub time_limit: Option<Duration>,
    /// Stop when the best fitness has not improved for this many generations.
    pub patience: Option<usize>,
    /// How many of the best distinct genomes to return.
    pub results: usize,
    /// Genomes per fitness call (batches are evaluated in parallel).
    pub batch: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl EvoConfig {
    /// The population settings the SeerNet authors intended (their `PGD/search.py`):
    /// population 800, top 400 selected, 475 crossover children, 125 mutation children,
    /// 200 random immigrants, 2000 generations, crossover exchanging 30% of the genes and a
    /// mutation rate of 0.1 (they used it as the fraction of parents mutated; here it is the
    /// per-gene rate). Their loop gives up after 5 crossover draws and so breeds at most 10
    /// crossover children instead of 475; here the intended 475 are bred.
    pub fn authors(seed: u64) -> Self {
        Self {
            population: 800,
            parents: 400,
            crossover: 475,
            mutation: 125,
            mutation_prob: 0.1,
            crossover_swap: 0.3,
            generations: 2000,
            time_limit: None,
            patience: None,
            results: 10,
            batch: 200,
            seed,
        }
    }

    /// A small, quick setting (population 64) for tests, examples and the active sampler.
    pub fn small(seed: u64) -> Self {
        Self {
            population: 64,
            parents: 16,
            crossover: 32,
            mutation: 16,
            mutation_prob: 0.1,
            crossover_swap: 0.5,
            generations: 50,
            time_limit: None,
            patience: None,
            results: 10,
            batch: 64,
            seed,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, why: &str| {
            Err(Error::InvalidConfig {
                field,
                why: why.to_string(),
            })
        };
        if self.population == 0 {
            return bad("population", "must be at least 1");
        }
        if self.parents == 0 {
            return bad("parents", "must be at least 1");
        }
        if self.crossover + self.mutation > self.population {
            return bad(
                "crossover",
                &format!(
                    "crossover ({}) + mutation ({}) exceeds population ({})",
                    self.crossover, self.mutation, self.population
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.mutation_prob) {
            return bad(
                "mutation_prob",
                &format!("{} is not in [0, 1]", self.mutation_prob),
            );
        }
        if !(0.0..=1.0).contains(&self.crossover_swap) {
            return bad(
                "crossover_swap",
                &format!("{} is not in [0, 1]", self.crossover_swap),
            );
        }
        if self.results == 0 {
            return bad("results", "must be at least 1");
        }
        if self.batch == 0 {
            return bad("batch", "must be at least 1");
        }
        Ok(())
    }
}

impl Default for EvoConfig {
    /// [`EvoConfig::authors`] with seed 0.
    fn default() -> Self {
        Self::authors(0)
    }
}

/// An evaluated genome.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The genome.
    pub genome: Genome,
    /// Its fitness.
    pub fitness: f64,
    /// Its complexity (inside the band).
    pub complexity: f64,
}

/// Why the search stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// All configured generations (or evaluations, for random search) ran.
    Completed,
    /// The wall-time limit was reached.
    TimeLimit,
    /// The best fitness stopped improving (`patience`).
    Stalled,
    /// No new, unlabelled genome inside the band could be bred (small space explored).
    Exhausted,
}

/// Statistics of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Generation number (0 = the initial random population).
    pub generation: usize,
    /// New genomes evaluated in it.
    pub evaluated: usize,
    /// Best fitness seen so far.
    pub best_fitness: f64,
    /// Mean fitness of the selected parents.
    pub parents_mean_fitness: f64,
    /// Seconds since the search started.
    pub seconds: f64,
}

/// The outcome of a search.
#[derive(Debug, Clone)]
pub struct EvoResult {
    /// The best distinct genomes evaluated, best first (at most `results`), all inside the band
    /// and none from the archive.
    pub best: Vec<Scored>,
    /// Generations run, including the initial one.
    pub generations: usize,
    /// Fitness evaluations (= distinct genomes evaluated).
    pub evaluations: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Per-generation statistics.
    pub trace: Vec<GenerationStats>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// How a child is made.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Immigrant = 0,
    Mutation = 1,
    Crossover = 2,
}

/// Rounds of re-breeding when children are duplicates or cannot be repaired.
const BREED_ROUNDS: usize = 8;

/// Shared state of one search: the problem, the band and the set of genomes already used.
struct Breeder<'a, P: Problem + ?Sized> {
    problem: &'a P,
    cards: Vec<usize>,
    band: Band,
    keyer: Keyer,
    seen: HashSet<u128>,
    seed: u64,
    range: (f64, f64),
}

impl<'a, P: Problem + ?Sized> Breeder<'a, P> {
    fn new(problem: &'a P, band: Band, archive: &HashSet<Genome>, seed: u64) -> Result<Self> {
        let cards = problem.cardinalities().to_vec();
        if cards.is_empty() {
            return Err(Error::InvalidProblem("the problem has no genes".into()));
        }
        if let Some(i) = cards.iter().position(|&c| c == 0) {
            return Err(Error::InvalidProblem(format!("gene {i} has no candidates")));
        }
        if band.lo.is_nan() || band.hi.is_nan() {
            return Err(Error::InvalidConfig {
                field: "band",
                why: format!("[{}, {}] contains NaN", band.lo, band.hi),
            });
        }
        let (min, max) = problem.complexity_range();
        if band.lo > band.hi || band.hi < min || band.lo > max {
            return Err(Error::InfeasibleBand {
                lo: band.lo,
                hi: band.hi,
                min,
                max,
            });
        }
        let keyer = Keyer::new(&cards);
        let mut seen = HashSet::with_capacity(archive.len() * 2 + 1024);
        for g in archive {
            if g.len() == cards.len() {
                seen.insert(keyer.key(g));
            }
        }
        Ok(Self {
            problem,
            cards,
            band,
            keyer,
            seen,
            seed,
            range: (min, max),
        })
    }

    fn rng(&self, generation: usize, kind: Kind, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(((generation as u64) << 40) ^ ((kind as u64) << 36) ^ index);
        rng
    }

    /// Moves a genome into the band by single-gene steps (down when too complex, up when too
    /// simple) on randomly chosen genes; `None` if it does not get there in a bounded number
    /// of steps. Returns the final complexity.
    fn repair(&self, g: &mut [usize], rng: &mut ChaCha8Rng) -> Option<f64> {
        let max_steps = 2 * self.cards.iter().map(|c| c - 1).sum::<usize>() + 8;
        for _ in 0..=max_steps {
            let c = self.problem.complexity(g);
            if self.band.contains(c) {
                return Some(c);
            }
            if c.is_nan() {
                return None;
            }
            let down = c > self.band.hi;
            let movable = |i: usize| {
                if down {
                    g[i] > 0
                } else {
                    g[i] + 1 < self.cards[i]
                }
            };
            let n = (0..g.len()).filter(|&i| movable(i)).count();
            if n == 0 {
                return None;
            }
            let mut k = rng.random_range(0..n);
            #[allow(clippy::needless_range_loop)] // `movable` reads `g` by index too
            for i in 0..g.len() {
                if movable(i) {
                    if k == 0 {
                        if down {
                            g[i] -= 1;
                        } else {
                            g[i] += 1;
                        }
                        break;
                    }
                    k -= 1;
                }
            }
        }
        None
    }

    fn child(
        &self,
        kind: Kind,
        rng: &mut ChaCha8Rng,
        parents: &[Scored],
        cfg: &EvoConfig,
    ) -> Genome {
        let cards = &self.cards;
        match kind {
            Kind::Immigrant => cards.iter().map(|&c| rng.random_range(0..c)).collect(),
            Kind::Mutation => {
                let mut g = parents[rng.random_range(0..parents.len())].genome.clone();
                let mutable: Vec<usize> = (0..g.len()).filter(|&i| cards[i] > 1).collect();
                if mutable.is_empty() {
                    return g;
                }
                let mut changed = false;
                for &i in &mutable {
                    if rng.random_bool(cfg.mutation_prob) {
                        g[i] = other_candidate(g[i], cards[i], rng);
                        changed = true;
                    }
                }
                if !changed {
                    let i = mutable[rng.random_range(0..mutable.len())];
                    g[i] = other_candidate(g[i], cards[i], rng);
                }
                g
            }
            Kind::Crossover => {
                let a = rng.random_range(0..parents.len());
                let mut b = rng.random_range(0..parents.len());
                if parents.len() > 1 {
                    while b == a {
                        b = rng.random_range(0..parents.len());
                    }
                }
                let (pa, pb) = (&parents[a].genome, &parents[b].genome);
                pa.iter()
                    .zip(pb)
                    .map(|(&x, &y)| {
                        if rng.random_bool(cfg.crossover_swap) {
                            y
                        } else {
                            x
                        }
                    })
                    .collect()
            }
        }
    }

    /// Breeds up to `want[k]` new genomes of each kind (immigrants fill any shortfall up to
    /// `total`), all inside the band, distinct from each other and from everything seen.
    fn breed(
        &mut self,
        generation: usize,
        want: &[(Kind, usize)],
        total: usize,
        parents: &[Scored],
        cfg: &EvoConfig,
    ) -> Vec<(Genome, f64)> {
        let mut out: Vec<(Genome, f64)> = Vec::with_capacity(total);
        let mut next_index = [0u64; 3];
        let mut plan: Vec<(Kind, usize)> = want.to_vec();
        plan.push((Kind::Immigrant, usize::MAX));
        for (kind, wanted) in plan {
            if matches!(kind, Kind::Mutation | Kind::Crossover) && parents.is_empty() {
                continue;
            }
            let wanted = wanted.min(total - out.len());
            let mut got = 0;
            for _ in 0..BREED_ROUNDS {
                if got >= wanted {
                    break;
                }
                let need = (wanted - got) as u64;
                let start = next_index[kind as usize];
                next_index[kind as usize] += need;
                let this = &*self;
                let cands: Vec<Option<(Genome, f64)>> = (start..start + need)
                    .into_par_iter()
                    .map(|i| {
                        let mut rng = this.rng(generation, kind, i);
                        let mut g = this.child(kind, &mut rng, parents, cfg);
                        this.repair(&mut g, &mut rng).map(|c| (g, c))
                    })
                    .collect();
                for (g, c) in cands.into_iter().flatten() {
                    if got < wanted && self.seen.insert(self.keyer.key(&g)) {
                        out.push((g, c));
                        got += 1;
                    }
                }
            }
        }
        out
    }
}

fn other_candidate(current: usize, card: usize, rng: &mut ChaCha8Rng) -> usize {
    let r = rng.random_range(0..card - 1);
    if r >= current { r + 1 } else { r }
}

/// Scores genomes in parallel batches of `batch`, checking count and finiteness.
fn evaluate<P: Problem + ?Sized>(
    problem: &P,
    genomes: &[Genome],
    batch: usize,
) -> Result<Vec<f64>> {
    let parts: Vec<Vec<f64>> = genomes
        .par_chunks(batch)
        .map(|chunk| {
            let f = problem.fitness(chunk).map_err(Error::Fitness)?;
            if f.len() != chunk.len() {
                return Err(Error::FitnessLength {
                    expected: chunk.len(),
                    got: f.len(),
                });
            }
            Ok(f)
        })
        .collect::<Result<_>>()?;
    let scores: Vec<f64> = parts.into_iter().flatten().collect();
    if let Some(i) = scores.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteFitness {
            genome: genomes[i].clone(),
            value: scores[i],
        });
    }
    Ok(scores)
}

/// Best first; ties broken by genome so the order is total and reproducible.
fn sort_best(v: &mut [Scored]) {
    v.sort_by(|a, b| {
        b.fitness
            .total_cmp(&a.fitness)
            .then_with(|| a.genome.cmp(&b.genome))
    });
}

fn merge_top(into: &mut Vec<Scored>, new: &[Scored], k: usize) {
    into.extend_from_slice(new);
    sort_best(into);
    into.truncate(k);
}

fn score_all<P: Problem + ?Sized>(
    problem: &P,
    bred: Vec<(Genome, f64)>,
    batch: usize,
) -> Result<Vec<Scored>> {
    let (genomes, cx): (Vec<Genome>, Vec<f64>) = bred.into_iter().unzip();
    let fit = evaluate(problem, &genomes, batch)?;
    Ok(genomes
        .into_iter()
        .zip(fit)
        .zip(cx)
        .map(|((genome, fitness), complexity)| Scored {
            genome,
            fitness,
            complexity,
        })
        .collect())
}

/// Evolutionary search maximising `problem`'s fitness inside `band` (docs/method.md §5).
///
/// Generation 0 is `population` random genomes; each later generation breeds `mutation`
/// per-gene mutants and `crossover` uniform-crossover children from the `parents` best genomes
/// seen so far (elitist: parents are chosen from the previous parents and the new children),
/// and fills the population with random immigrants. Every genome is repaired into the band by
/// single-gene steps or rejected; duplicates (within the generation, of any genome evaluated
/// before, or of `archive`, e.g. the already-labelled policies) are never evaluated.
///
/// Errors: [`Error::InfeasibleBand`] (naming the achievable range) if the band excludes
/// `problem.complexity_range()`; [`Error::NoFeasibleGenome`] if repair finds nothing in it;
/// [`Error::InvalidConfig`] / [`Error::InvalidProblem`] for bad settings; fitness errors.
pub fn evolve<P: Problem + ?Sized>(
    problem: &P,
    band: Band,
    archive: &HashSet<Genome>,
    config: &EvoConfig,
) -> Result<EvoResult> {
    config.validate()?;
    let start = Instant::now();
    let mut breeder = Breeder::new(problem, band, archive, config.seed)?;

    let initial = breeder.breed(0, &[], config.population, &[], config);
    if initial.is_empty() {
        return Err(no_feasible(&breeder, config.population));
    }
    let mut evaluations = initial.len();
    let mut parents = score_all(problem, initial, config.batch)?;
    let mut best = Vec::new();
    merge_top(&mut best, &parents, config.results);
    sort_best(&mut parents);
    parents.truncate(config.parents);

    let stats = |generation, evaluated, best: &[Scored], parents: &[Scored]| GenerationStats {
        generation,
        evaluated,
        best_fitness: best[0].fitness,
        parents_mean_fitness: parents.iter().map(|s| s.fitness).sum::<f64>() / parents.len() as f64,
        seconds: start.elapsed().as_secs_f64(),
    };
    let mut trace = vec![stats(0, evaluations, &best, &parents)];
    let mut stop = StopReason::Completed;
    let mut since_improved = 0;
    let mut generations = 1;

    for generation in 1..=config.generations {
        if config.time_limit.is_some_and(|t| start.elapsed() >= t) {
            stop = StopReason::TimeLimit;
            break;
        }
        let bred = breeder.breed(
            generation,
            &[
                (Kind::Mutation, config.mutation),
                (Kind::Crossover, config.crossover),
            ],
            config.population,
            &parents,
            config,
        );
        if bred.is_empty() {
            stop = StopReason::Exhausted;
            break;
        }
        evaluations += bred.len();
        let children = score_all(problem, bred, config.batch)?;
        let previous_best = best[0].fitness;
        merge_top(&mut best, &children, config.results);
        merge_top(&mut parents, &children, config.parents);
        generations += 1;
        trace.push(stats(generation, children.len(), &best, &parents));
        if best[0].fitness > previous_best {
            since_improved = 0;
        } else {
            since_improved += 1;
            if config.patience.is_some_and(|p| since_improved >= p) {
                stop = StopReason::Stalled;
                break;
            }
        }
    }
    Ok(EvoResult {
        best,
        generations,
        evaluations,
        stop,
        trace,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn no_feasible<P: Problem + ?Sized>(b: &Breeder<'_, P>, per_round: usize) -> Error {
    Error::NoFeasibleGenome {
        lo: b.band.lo,
        hi: b.band.hi,
        min: b.range.0,
        max: b.range.1,
        attempts: per_round * BREED_ROUNDS,
    }
}

/// Random search: `evaluations` distinct random genomes repaired into `band` (none from
/// `archive`), scored in batches of `config.batch`; returns the best `config.results`.
///
/// The baseline of docs/method.md §8 (same machinery and the same repair as [`evolve`], so the two
/// differ only in how candidates are proposed). Uses `config.seed`, `results`, `batch`,
/// `time_limit` and `population` (genomes bred per round); errors as [`evolve`].
pub fn random_search<P: Problem + ?Sized>(
    problem: &P,
    band: Band,
    archive: &HashSet<Genome>,
    evaluations: usize,
    config: &EvoConfig,
) -> Result<EvoResult> {
    config.validate()?;
    let start = Instant::now();
    let mut breeder = Breeder::new(problem, band, archive, config.seed)?;
    let mut best: Vec<Scored> = Vec::new();
    let mut trace = Vec::new();
    let mut done = 0;
    let mut round = 0;
    let mut stop = StopReason::Completed;
    while done < evaluations {
        if config.time_limit.is_some_and(|t| start.elapsed() >= t) {
            stop = StopReason::TimeLimit;
            break;
        }
        let n = config.population.min(evaluations - done);
        let bred = breeder.breed(round, &[], n, &[], config);
        if bred.is_empty() {
            if done == 0 {
                return Err(no_feasible(&breeder, n));
            }
            stop = StopReason::Exhausted;
            break;
        }
        done += bred.len();
        let scored = score_all(problem, bred, config.batch)?;
        merge_top(&mut best, &scored, config.results);
        trace.push(GenerationStats {
            generation: round,
            evaluated: scored.len(),
            best_fitness: best[0].fitness,
            parents_mean_fitness: f64::NAN,
            seconds: start.elapsed().as_secs_f64(),
        });
        round += 1;
    }
    Ok(EvoResult {
        best,
        generations: round,
        evaluations: done,
        stop,
        trace,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BoxError;
    use proptest::prelude::*;
    use rand::Rng;

    /// Separable weighted problem: fitness Σ v_i(g_i), complexity Σ w_i·g_i.
    struct Sep {
        cards: Vec<usize>,
        value: Vec<Vec<f64>>,
        weight: Vec<f64>,
    }

    impl Problem for Sep {
        fn cardinalities(&self) -> &[usize] {
            &self.cards
        }
        fn fitness(&self, genomes: &[Genome]) -> std::result::Result<Vec<f64>, BoxError> {
            Ok(genomes
                .iter()
                .map(|g| g.iter().enumerate().map(|(i, &k)| self.value[i][k]).sum())
                .collect())
        }
        fn complexity(&self, g: &[usize]) -> f64 {
            g.iter().zip(&self.weight).map(|(&k, w)| k as f64 * w).sum()
        }
    }

    fn sep(seed: u64, genes: usize, card: usize) -> Sep {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cards = vec![card; genes];
        let value = (0..genes)
            .map(|_| {
                let mut acc = 0.0;
                (0..card)
                    .map(|_| {
                        acc += rng.random_range(0.0..1.0);
                        acc
                    })
                    .collect()
            })
            .collect();
        let weight = (0..genes).map(|_| rng.random_range(1.0..5.0)).collect();
        Sep {
            cards,
            value,
            weight,
        }
    }

    /// Exhaustive optimum for tiny instances.
    fn brute(p: &Sep, band: Band) -> f64 {
        let n: usize = p.cards.iter().product();
        let mut best = f64::NEG_INFINITY;
        for mut code in 0..n {
            let g: Vec<usize> = p
                .cards
                .iter()
                .map(|&c| {
                    let d = code % c;
                    code /= c;
                    d
                })
                .collect();
            if band.contains(p.complexity(&g)) {
                best = best.max(p.fitness(&[g]).unwrap()[0]);
            }
        }
        best
    }

    #[test]
    fn finds_the_exhaustive_optimum_on_a_small_instance() {
        let p = sep(1, 6, 4);
        let band = Band::new(5.0, 20.0);
        let out = evolve(&p, band, &HashSet::new(), &EvoConfig::small(3)).unwrap();
        assert!((out.best[0].fitness - brute(&p, band)).abs() < 1e-12);
    }

    #[test]
    fn same_seed_same_result_different_seed_different_path() {
        let p = sep(2, 12, 5);
        let band = Band::new(10.0, 30.0);
        let cfg = EvoConfig {
            generations: 10,
            ..EvoConfig::small(11)
        };
        let a = evolve(&p, band, &HashSet::new(), &cfg).unwrap();
        let b = evolve(&p, band, &HashSet::new(), &cfg).unwrap();
        assert_eq!(a.best, b.best);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = pool.install(|| evolve(&p, band, &HashSet::new(), &cfg).unwrap());
        assert_eq!(a.best, c.best);
        let d = evolve(&p, band, &HashSet::new(), &EvoConfig { seed: 12, ..cfg }).unwrap();
        assert_ne!(a.trace, d.trace);
    }

    #[test]
    fn infeasible_band_names_the_achievable_range() {
        let p = sep(3, 4, 3);
        let (min, max) = p.complexity_range();
        assert_eq!(min, 0.0);
        let err = evolve(
            &p,
            Band::at_most(-1.0),
            &HashSet::new(),
            &EvoConfig::small(0),
        )
        .unwrap_err();
        match err {
            Error::InfeasibleBand { min: m, max: x, .. } => assert_eq!((m, x), (min, max)),
            e => panic!("unexpected {e}"),
        }
        let msg = evolve(
            &p,
            Band::new(max + 1.0, max + 2.0),
            &HashSet::new(),
            &EvoConfig::small(0),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("achievable complexity is [0,"), "{msg}");
    }

    #[test]
    fn archive_genomes_are_never_returned_and_small_spaces_exhaust() {
        let p = sep(4, 3, 3); // 27 genomes
        let mut archive = HashSet::new();
        for a in 0..3 {
            archive.insert(vec![a, 2, 2]);
            archive.insert(vec![2, a, 2]);
        }
        let cfg = EvoConfig {
            results: 100,
            ..EvoConfig::small(5)
        };
        let out = evolve(&p, Band::unbounded(), &archive, &cfg).unwrap();
        assert_eq!(out.stop, StopReason::Exhausted);
        assert_eq!(out.evaluations, 27 - archive.len());
        assert_eq!(out.best.len(), 27 - archive.len());
        assert!(out.best.iter().all(|s| !archive.contains(&s.genome)));
        let distinct: HashSet<_> = out.best.iter().map(|s| s.genome.clone()).collect();
        assert_eq!(distinct.len(), out.best.len());
    }

    #[test]
    fn bad_fitness_and_config_are_errors() {
        struct Nan;
        impl Problem for Nan {
            fn cardinalities(&self) -> &[usize] {
                &[2, 2]
            }
            fn fitness(&self, g: &[Genome]) -> std::result::Result<Vec<f64>, BoxError> {
                Ok(vec![f64::NAN; g.len()])
            }
            fn complexity(&self, _: &[usize]) -> f64 {
                0.0
            }
        }
        let e = evolve(
            &Nan,
            Band::unbounded(),
            &HashSet::new(),
            &EvoConfig::small(0),
        )
        .unwrap_err();
        assert!(matches!(e, Error::NonFiniteFitness { .. }), "{e}");
        let cfg = EvoConfig {
            mutation: 60,
            crossover: 60,
            ..EvoConfig::small(0)
        };
        let e = evolve(&sep(0, 2, 2), Band::unbounded(), &HashSet::new(), &cfg).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "crossover",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn authors_preset_breeds_the_intended_crossover_count() {
        let p = sep(6, 18, 12);
        let cfg = EvoConfig {
            generations: 2,
            ..EvoConfig::authors(0)
        };
        assert_eq!(cfg.population - cfg.crossover - cfg.mutation, 200);
        let out = evolve(&p, Band::new(40.0, 200.0), &HashSet::new(), &cfg).unwrap();
        assert!(out.trace.iter().all(|t| t.evaluated == 800));
    }

    #[test]
    fn random_search_respects_count_and_band() {
        let p = sep(7, 8, 4);
        let band = Band::new(5.0, 15.0);
        let out = random_search(&p, band, &HashSet::new(), 300, &EvoConfig::small(1)).unwrap();
        assert_eq!(out.evaluations, 300);
        assert!(out.best.iter().all(|s| band.contains(s.complexity)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_returned_genome_is_inside_the_band(
            seed in 0u64..1000, genes in 1usize..7, card in 1usize..5, lo_f in 0.0f64..0.6, w in 0.05f64..0.6,
        ) {
            let p = sep(seed, genes, card);
            let (min, max) = p.complexity_range();
            let lo = min + lo_f * (max - min);
            let band = Band::new(lo, lo + w * (max - min) + 4.0);
            let cfg = EvoConfig { generations: 5, ..EvoConfig::small(seed) };
            match evolve(&p, band, &HashSet::new(), &cfg) {
                Ok(out) => {
                    prop_assert!(!out.best.is_empty());
                    for s in &out.best {
                        prop_assert!(band.contains(s.complexity));
                        prop_assert!((p.complexity(&s.genome) - s.complexity).abs() < 1e-9);
                        prop_assert!(s.genome.iter().zip(&p.cards).all(|(&g, &c)| g < c));
                    }
                }
                Err(Error::NoFeasibleGenome { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
    }
}
