//! The label stages of a run: the initial set with the uniform anchors, the active rounds, the
//! verification rounds and the fill rounds, with what they share (labelling a batch, the planned labels, the
//! barrier search for a budget).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use seer_policy::Policy;
use seer_predictor::Predictor;

use super::setup::ARRIVED_STORE;
use super::{Executor, Run, Stream, sampling, workers};
use crate::budget::ResolvedBudget;
use crate::error::{Error, Result};
use crate::label::cluster::{self, SlurmSettings};
use crate::search::{Found, find_policy};
use crate::store::{LabelRecord, LabelStore, pending_labels, policy_hash};

impl Run<'_> {
    /// Records the time since `t` as stage `name` of the report's timings.
    pub(super) fn timed(&mut self, name: &str, t: Instant) {
        self.timings.record(name, t);
    }

    /// Labels the policies of `rows` that the store lacks,
    /// [`Config::workers`](super::Config::workers) at a time (largest networks started first;
    /// each logged when it finishes and stored, in plan order, once it and every earlier one
    /// are finished; one that must wait for an earlier one is kept in `labels.arrived.jsonl`
    /// meanwhile, and a resumed run takes it from there) and counts them
    /// in [`Run::computed`]; policies already stored only advance the
    /// progress. With the Slurm executor the batch runs as one job array named after `batch`
    /// ([`Run::label_batch_slurm`]). With a label cache ([`Config::label_cache`](super::Config::label_cache))
    /// the labels it holds are copied first and those computed are added to it afterwards.
    /// Errors: the label stores' and the labeller's (or the scheduler's), as [`Error::Label`].
    pub(super) fn label_batch(&mut self, batch: &str, rows: &[Vec<usize>]) -> Result<()> {
        let _span = tracing::info_span!("label_batch", batch, policies = rows.len()).entered();
        let pols = sampling::policies(&self.space, rows)?;
        self.take_cached_labels(&pols)?;
        for p in &pols {
            if self.store.contains(&policy_hash(p)) {
                self.log.inc(1);
            }
        }
        if let Executor::Slurm(settings) = &self.cfg.executor {
            self.label_batch_slurm(batch, &pols, settings)?;
        } else {
            self.label_batch_local(batch, &pols)?;
        }
        self.share_labels(&pols)
    }

    /// Copies into the run's store, in plan order, the labels of `pols` that it lacks and the
    /// shared store of [`Config::label_cache`](super::Config::label_cache) holds (same
    /// protocol, so the same label the run would compute). Errors: the store's.
    fn take_cached_labels(&mut self, pols: &[Policy]) -> Result<()> {
        let Some(cache) = &self.label_cache else {
            return Ok(());
        };
        let mut taken = 0;
        for p in pols {
            let hash = policy_hash(p);
            if !self.store.contains(&hash)
                && let Some(r) = cache.get(&hash)
            {
                self.store.append(r.clone())?;
                taken += 1;
            }
        }
        if taken > 0 {
            self.log.line(&format!(
                "{taken} labels taken from the label cache {}",
                cache.path().display()
            ));
        }
        Ok(())
    }

    /// Adds to the shared store of [`Config::label_cache`](super::Config::label_cache), in
    /// plan order, the labels of `pols` the run holds and it lacks. Errors: the store's.
    fn share_labels(&mut self, pols: &[Policy]) -> Result<()> {
        let Some(cache) = &mut self.label_cache else {
            return Ok(());
        };
        for p in pols {
            let hash = policy_hash(p);
            if !cache.contains(&hash)
                && let Some(r) = self.store.get(&hash)
            {
                cache.append(r.clone())?;
            }
        }
        Ok(())
    }

    /// [`Run::label_batch`] in this process, [`Config::workers`](super::Config::workers) at a
    /// time.
    fn label_batch_local(&mut self, batch: &str, pols: &[Policy]) -> Result<()> {
        let (pending, _) = pending_labels(&self.store, &self.space, pols)?;
        let (workers, threads) = workers::plan(self.cfg.workers, pending.len());
        if workers > 1 {
            let what = workers::describe(pending.len(), "labels", workers, threads);
            self.log.line(&format!("batch {batch}: {what}"));
        }
        let (space, labeler, store, log) =
            (&self.space, &self.labeler, &mut self.store, &mut self.log);
        let (arrived, arrived_path) = (&mut self.arrived, self.out.join(ARRIVED_STORE));
        // Labels a killed run finished out of plan order: taken, not computed, in their turn.
        let earlier: HashMap<String, LabelRecord> = pending
            .iter()
            .filter_map(|p| {
                arrived
                    .as_ref()?
                    .get(&p.hash)
                    .map(|r| (p.hash.clone(), r.clone()))
            })
            .collect();
        if !earlier.is_empty() {
            log.line(&format!(
                "{} labels taken from {} (finished before the run stopped)",
                earlier.len(),
                arrived_path.display()
            ));
        }
        let protocol = store.protocol().clone();
        let w8a8 = self.budgets.w8a8;
        let mut labelled = 0;
        // The largest networks first, so that a batch does not end on one large label beside
        // an idle worker.
        let order = workers::largest_networks_first(space, pending.iter().map(|p| &p.policy))?;
        workers::map_ordered(
            &pending,
            workers,
            threads,
            &order,
            |p| {
                if let Some(r) = earlier.get(&p.hash) {
                    return Ok((r.clone(), false));
                }
                let _span = tracing::info_span!("label", hash = %p.hash, seed = p.seed).entered();
                let t = Instant::now();
                let m = labeler
                    .label(&p.policy, p.seed, &mut |_, _| {})
                    .map_err(|e| seer_label::Error::Labeller {
                        hash: p.hash.clone(),
                        err: Box::new(e),
                    })?;
                let seconds = t.elapsed().as_secs_f64();
                let rec = LabelRecord::new(space, &protocol, p.policy.clone(), m.top1, seconds)?;
                Ok((rec, true))
            },
            // Logged as it finishes; stored at once in `labels.arrived.jsonl` when an earlier
            // label of the batch still runs (labels.jsonl takes it, in plan order, once they
            // are all done), so that a killed run keeps it.
            |_, (rec, computed), waits| {
                if waits && *computed {
                    let a = match arrived {
                        Some(a) => a,
                        None => arrived.insert(LabelStore::open(&arrived_path, &protocol)?.0),
                    };
                    a.append(rec.clone())?;
                }
                log.inc(1);
                log.line(&format!(
                    "label {}: {} BOPs ({:.1}% of w8a8), val top-1 {:.2}% in {:.1} s",
                    rec.hash,
                    rec.bops,
                    100.0 * rec.bops as f64 / w8a8 as f64,
                    rec.top1,
                    rec.seconds
                ));
                log.message(&format!("last {:.2}%", rec.top1));
                Ok(())
            },
            |_, (rec, computed)| {
                labelled += usize::from(computed);
                store.append(rec)?;
                Ok(())
            },
            || {},
        )?;
        self.computed += labelled;
        // Once labels.jsonl holds every label the arrived store does (this batch's, and a
        // killed run's when this was the batch it stopped in), a resume needs nothing from it.
        let covered = |a: &LabelStore| a.records().iter().all(|r| self.store.contains(&r.hash));
        if let Some(a) = self.arrived.take_if(|a| covered(a)) {
            let path = a.path().to_path_buf();
            drop(a);
            std::fs::remove_file(&path).map_err(|err| Error::Io {
                path: path.display().to_string(),
                err,
            })?;
        }
        Ok(())
    }

    /// [`Run::label_batch`] on Slurm: the policies the store lacks become the manifest of
    /// `<run>/cluster/<batch>/`, labelled by one job array of `seernet label` tasks
    /// ([`cluster::label_batch`]); the results are merged in plan order and logged like local
    /// labels. Paths handed to the tasks are absolute.
    fn label_batch_slurm(
        &mut self,
        batch: &str,
        pols: &[Policy],
        settings: &SlurmSettings,
    ) -> Result<()> {
        let abs = |p: &Path| {
            std::path::absolute(p).map_err(|e| Error::Io {
                path: p.display().to_string(),
                err: e,
            })
        };
        let out = abs(&self.out)?;
        let spec = cluster::Batch {
            label: batch.into(),
            dir: out.join("cluster").join(batch),
            job_name: cluster::job_name(&out, batch),
            command: vec![
                settings.program.display().to_string(),
                "label".into(),
                "--model".into(),
                abs(&self.base.path)?.display().to_string(),
            ],
            workdir: out.clone(),
            labels_per_task: settings.labels_per_task,
            retries: settings.retries,
        };
        let mut sched = cluster::Slurm::new(settings.clone())?;
        let log = &mut self.log;
        let rep = cluster::label_batch(
            &mut self.store,
            &self.space,
            pols,
            &spec,
            &mut sched,
            &mut |l| log.line(l),
        )?;
        let w8a8 = self.budgets.w8a8;
        for r in &rep.merged {
            self.log.inc(1);
            self.log.line(&format!(
                "label {}: {} BOPs ({:.1}% of w8a8), val top-1 {:.2}% in {:.1} s (slurm)",
                r.hash,
                r.bops,
                100.0 * r.bops as f64 / w8a8 as f64,
                r.top1,
                r.seconds
            ));
        }
        if let Some(r) = rep.merged.last() {
            self.log.message(&format!("last {:.2}%", r.top1));
        }
        self.computed += rep.merged.len();
        Ok(())
    }

    /// The labels of the planned policies, in plan order (not whatever else the store holds).
    /// Err([`Error::MissingLabel`]) when one is not in the store.
    pub(super) fn planned_records(&self) -> Result<Vec<LabelRecord>> {
        self.planned
            .iter()
            .map(|i| {
                let hash = policy_hash(&self.space.from_indices(i)?);
                match self.store.get(&hash) {
                    Some(r) => Ok(r.clone()),
                    None => Err(Error::MissingLabel { hash }),
                }
            })
            .collect()
    }

    /// The search's policy for budget `b` on `predictor`, maximising μ − κσ (the method's
    /// engine, [`Run::search_options`]; seed: [`Stream::Search`]). Err([`Error::Search`])
    /// naming the budget, the reason as its source.
    pub(super) fn search(
        &self,
        b: &ResolvedBudget,
        predictor: &Predictor,
        kappa: f64,
    ) -> Result<Found> {
        let opts = self.search_options(kappa);
        find_policy(&self.space, predictor, &super::limits(b), &opts).map_err(|e| Error::Search {
            budget: b.label.clone(),
            source: Box::new(e),
        })
    }

    /// Stage 2: N₀ policies stratified over log-BOPs in the sampling band (seed:
    /// [`Stream::InitialSet`]), then the uniform baselines as anchors (labelled like any policy,
    /// so that the predictor sees them and the choice compares against them on validation),
    /// then, with [`Config::fit_anchors`](super::Config::fit_anchors), the fit-ilp optimum of
    /// every budget ([`Run::fit_optima`]) likewise.
    pub(super) fn initial_set(&mut self) -> Result<()> {
        let anchors: Vec<(Vec<usize>, String)> = self
            .uniform
            .iter()
            .map(|u| {
                let name = format!("uniform anchor {}", u.name());
                Ok((self.space.to_indices(&u.policy)?, name))
            })
            .collect::<Result<_>>()?;
        let cfg = self.cfg;
        let fit_planned = if cfg.fit_anchors {
            self.budgets.resolved.len()
        } else {
            0
        };
        let total_planned = cfg.n0 + anchors.len() + fit_planned + cfg.rounds * cfg.k;
        self.log.stage("labels", total_planned as u64);
        let t = Instant::now();
        let seed = Stream::InitialSet.seed(cfg.seed);
        let band = self.budgets.band;
        let initial = sampling::stratified(&self.space, band, cfg.n0, seed, &HashSet::new())?;
        self.log.line(&format!(
            "initial set: {} policies stratified over log-BOPs",
            initial.len()
        ));
        self.label_batch("initial", &initial)?;
        for i in &initial {
            self.origin
                .insert(i.clone(), "initial stratified set".into());
        }
        self.planned.extend(initial);
        let rows: Vec<Vec<usize>> = anchors
            .iter()
            .filter(|(i, _)| !self.planned.contains(i))
            .map(|(i, _)| i.clone())
            .collect();
        if rows.len() < anchors.len() {
            self.log.inc((anchors.len() - rows.len()) as u64);
        }
        self.log.line(&format!(
            "uniform anchors: {} uniform policies (the uniform baselines of the budgets)",
            rows.len()
        ));
        self.label_batch("anchors", &rows)?;
        for (i, name) in anchors {
            self.origin.entry(i).or_insert(name);
        }
        self.planned.extend(rows);
        if cfg.fit_anchors {
            // The sensitivity baseline's optimum of every budget (docs/method.md §5): the
            // predictor sees it, and the choice compares against it on validation.
            let optima = self.fit_optima(true)?;
            let rows: Vec<Vec<usize>> = optima
                .iter()
                .filter(|(i, _)| !self.planned.contains(i))
                .map(|(i, _)| i.clone())
                .collect();
            if rows.len() < fit_planned {
                self.log.inc((fit_planned - rows.len()) as u64);
            }
            self.log.line(&format!(
                "fit-ilp anchors: {} new policies (the fit-ilp optimum of each budget)",
                rows.len()
            ));
            self.label_batch("fit-anchors", &rows)?;
            for (i, name) in optima {
                self.origin.entry(i).or_insert(format!("{name} (anchor)"));
            }
            self.planned.extend(rows);
        }
        self.timed("initial labels", t);
        Ok(())
    }

    /// Stage 3: the active rounds.
    pub(super) fn active_rounds(&mut self) -> Result<()> {
        let t = Instant::now();
        for r in 0..self.cfg.rounds {
            self.active_round(r)?;
        }
        self.timed("active rounds", t);
        Ok(())
    }

    /// Active round `r` (0-based): the predictor fitted on the labels planned so far (seed:
    /// [`Stream::ActiveFit`]) chooses K new policies by the acquisition (seed:
    /// [`Stream::ActiveSampler`]), which are labelled.
    fn active_round(&mut self, r: usize) -> Result<()> {
        let cfg = self.cfg;
        let recs = self.planned_records()?;
        let predictor = sampling::fit(&self.space, &recs, Stream::ActiveFit(r).seed(cfg.seed))?;
        let seen: HashSet<Vec<usize>> = self.planned.iter().cloned().collect();
        let rows = sampling::acquire(
            &self.space,
            &predictor,
            &seen,
            &sampling::Request {
                acquisition: cfg.acquisition,
                band: self.budgets.band,
                bands: self.budget_bands(),
                round: r,
                k: cfg.k,
                generations: cfg.sampler_generations,
                seed: Stream::ActiveSampler(r).seed(cfg.seed),
            },
        )?;
        self.log.line(&format!(
            "round {}/{}: predictor fitted on {} labels; {} policies chosen by {} acquisition",
            r + 1,
            cfg.rounds,
            recs.len(),
            rows.len(),
            cfg.acquisition
        ));
        self.label_batch(&format!("active-{}", r + 1), &rows)?;
        for i in &rows {
            self.origin.insert(
                i.clone(),
                format!("active round {} ({} acquisition)", r + 1, cfg.acquisition),
            );
        }
        self.planned.extend(rows);
        Ok(())
    }

    /// The budgets' BOPs bands `[limit/2, limit]` (the lower end at least the cheapest
    /// policy's BOPs), in budget order, for the budgets with a BOPs limit.
    fn budget_bands(&self) -> Vec<(f64, f64)> {
        let floor = self.budgets.cheapest.bops as f64;
        self.budgets
            .resolved
            .iter()
            .filter_map(|b| b.max_bops)
            .map(|m| ((0.5 * m as f64).max(floor), m as f64))
            .collect()
    }

    /// Stage 4: the verification rounds. For every budget and pessimism κ, the barrier search
    /// on the current predictor proposes a policy (maximising μ − κσ); the new ones are
    /// labelled and the predictor refitted. The final choice per budget is then the labelled
    /// policy within the budget with the best validation top-1: the predictor proposes, the
    /// validation split decides (docs/method.md §6; our choice — the authors take the predictor's
    /// optimum as is).
    pub(super) fn verification_rounds(&mut self) -> Result<()> {
        let t = Instant::now();
        for v in 0..self.cfg.verify_rounds {
            self.verification_round(v)?;
        }
        self.timed("verification rounds", t);
        Ok(())
    }

    /// Verification round `v` (0-based; predictor seed: [`Stream::VerifyFit`]).
    fn verification_round(&mut self, v: usize) -> Result<()> {
        let cfg = self.cfg;
        let recs = self.planned_records()?;
        let predictor = sampling::fit(&self.space, &recs, Stream::VerifyFit(v).seed(cfg.seed))?;
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let target = self.target();
        let searches = self
            .budgets
            .resolved
            .iter()
            .map(|b| (b.label.clone(), None))
            .chain(target.iter().map(|t| (t.budget.label.clone(), Some(t))));
        for (i, (label, t)) in searches.enumerate() {
            for &kappa in &cfg.kappas {
                let f = match t {
                    Some(t) => self.search_target(t, &predictor, kappa)?,
                    None => self.search(&self.budgets.resolved[i], &predictor, kappa)?,
                };
                if !self.planned.contains(&f.indices) && !rows.contains(&f.indices) {
                    let from = format!(
                        "{} search for {label}, κ = {kappa}, verification round {}",
                        self.search_options(kappa).method,
                        v + 1
                    );
                    self.origin.insert(f.indices.clone(), from);
                    rows.push(f.indices);
                }
            }
        }
        self.log.line(&format!(
            "verification round {}/{}: predictor fitted on {} labels; {} new policies proposed by the {} search (κ ∈ {:?})",
            v + 1,
            cfg.verify_rounds,
            recs.len(),
            rows.len(),
            self.search_options(0.0).method,
            cfg.kappas
        ));
        self.log.add_total(rows.len() as u64);
        self.label_batch(&format!("verify-{}", v + 1), &rows)?;
        self.planned.extend(rows);
        Ok(())
    }

    /// Stage 4b: the fill rounds (docs/method.md §6, "fill"). For every budget, the labelled
    /// policy within it with the best validation top-1 (what the choice would take); when it
    /// leaves budget unused, [`fill_policy`](crate::search::fill_policy) upgrades it within the
    /// budget while the predictor's μ gains (predictor seed: [`Stream::FillFit`]), and the
    /// upgrade is labelled. A budget leaves the rounds once its fill proposes nothing new or its
    /// last upgrade validated no higher than the policy it started from: the predictor
    /// proposes, the labels decide.
    pub(super) fn fill_rounds(&mut self) -> Result<()> {
        if self.cfg.fill_rounds == 0 || self.budgets.resolved.is_empty() {
            // The label stage ends here (it began with the initial set).
            self.log.finish();
            return Ok(());
        }
        let t = Instant::now();
        let mut open: Vec<bool> = vec![true; self.budgets.resolved.len()];
        // Per budget, the label the last upgrade started from.
        let mut last_start: Vec<Option<f64>> = vec![None; open.len()];
        for f in 0..self.cfg.fill_rounds {
            let recs = self.planned_records()?;
            let predictor =
                sampling::fit(&self.space, &recs, Stream::FillFit(f).seed(self.cfg.seed))?;
            let mut rows: Vec<Vec<usize>> = Vec::new();
            for (i, b) in self.budgets.resolved.clone().iter().enumerate() {
                if !open[i] {
                    continue;
                }
                let Some((k, best)) = best_within(b, &recs) else {
                    open[i] = false;
                    continue;
                };
                // The previous upgrade did not validate higher: stop here.
                if last_start[i].is_some_and(|s| best <= s) {
                    open[i] = false;
                    continue;
                }
                let start = self.planned[k].clone();
                let found = crate::search::fill_policy(
                    &self.space,
                    &predictor,
                    &super::limits(b),
                    &start,
                    0.0,
                )
                .map_err(|e| Error::Search {
                    budget: b.label.clone(),
                    source: Box::new(e),
                })?;
                if found.indices == start
                    || self.planned.contains(&found.indices)
                    || rows.contains(&found.indices)
                {
                    open[i] = false;
                    continue;
                }
                self.log.line(&format!(
                    "fill round {}/{} for {}: from the best labelled policy ({} BOPs, \
                     validation {best:.2}%), {} upgrades within the budget -> {} BOPs, \
                     predicted {:.2}%",
                    f + 1,
                    self.cfg.fill_rounds,
                    b.label,
                    recs[k].bops,
                    found.evaluations,
                    found.bops,
                    found.predicted_mean
                ));
                last_start[i] = Some(best);
                self.origin.insert(
                    found.indices.clone(),
                    format!("fill for {}, round {}", b.label, f + 1),
                );
                rows.push(found.indices);
            }
            if rows.is_empty() {
                break;
            }
            self.log.add_total(rows.len() as u64);
            self.label_batch(&format!("fill-{}", f + 1), &rows)?;
            self.planned.extend(rows);
        }
        self.log.finish();
        self.timed("fill rounds", t);
        Ok(())
    }
}

/// The labelled policy within `b` with the best validation top-1 (ties: fewer BOPs), as its
/// index in `recs` (plan order) and its label; what [`Run::choose`] takes for `b`.
pub(super) fn best_within(b: &ResolvedBudget, recs: &[LabelRecord]) -> Option<(usize, f64)> {
    ranked_within(b, recs).first().map(|&k| (k, recs[k].top1))
}

/// The labelled policies within `b`, best validation top-1 first (ties: fewer BOPs, then plan
/// order), as indices into `recs`.
pub(super) fn ranked_within(b: &ResolvedBudget, recs: &[LabelRecord]) -> Vec<usize> {
    let mut ks: Vec<usize> = (0..recs.len())
        .filter(|&k| b.admits(recs[k].bops, recs[k].size_bits))
        .collect();
    ks.sort_by(|&x, &y| {
        let (rx, ry) = (&recs[x], &recs[y]);
        ry.top1
            .total_cmp(&rx.top1)
            .then(rx.bops.cmp(&ry.bops))
            .then(x.cmp(&y))
    });
    ks
}
