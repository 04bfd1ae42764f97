//! The final fine-tunes (docs/method.md §7): each uniform baseline and each chosen policy
//! (then exported to the integer engine's format), fine-tuned for `final_steps` and measured on
//! the validation and test splits; with a predictor method, the final pick of each budget among
//! its choice and the choice's rivals on validation; each result cached in
//! `final/<policy hash>.json`.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use seer_nn::model::Model;
use seer_nn::{checkpoint, train};
use seer_policy::Policy;
use serde::{Deserialize, Serialize};

use super::choice::Chosen;
use super::{Run, Stream, Uniform, export, workers};
use crate::budget::BudgetKind;
use crate::error::{Error, Result, chain};
use crate::report;
use crate::store::{label_seed, policy_hash};

/// A finished final fine-tune (cached as `final/<hash>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FinalResult {
    hash: String,
    steps: usize,
    seed: u64,
    top1_test: f64,
    /// Validation top-1 after the fine-tune (None in caches written before it was recorded;
    /// such a cache is redone).
    #[serde(default)]
    top1_val: Option<f64>,
    /// Whether the fine-tune distilled from the baseline (false in caches written before).
    #[serde(default)]
    distill: bool,
    /// The weight quantizer of the fine-tune (absent, `max`, in caches written before).
    #[serde(default, skip_serializing_if = "super::is_max")]
    weight_quant: train::WeightQuant,
    seconds: f64,
}

impl FinalResult {
    /// Writes the result to `path` (atomically: an interrupted write leaves no cache).
    fn save(&self, path: &Path) -> Result<()> {
        let js = serde_json::to_string_pretty(self).expect("serializes") + "\n";
        Ok(crate::store::write_atomic(path, js.as_bytes())?)
    }
}

/// What the final fine-tunes measured, for the report.
pub(super) struct Finals {
    pub(super) outcomes: Vec<report::BudgetOutcome>,
    pub(super) uniform: Vec<report::UniformBaseline>,
    /// Per fine-tuned policy that has a label (keyed by policy hash): its label and its
    /// validation top-1 after the final fine-tune, for the label fidelity.
    pub(super) fidelity: std::collections::BTreeMap<String, (f64, f64)>,
}

impl Finals {
    /// Kendall's τ-b between labels and final validation top-1 over [`Self::fidelity`]; None
    /// with fewer than 4 policies or when it is undefined (all labels equal).
    pub(super) fn label_fidelity(&self) -> Option<report::LabelFidelity> {
        if self.fidelity.len() < 4 {
            return None;
        }
        let (a, b): (Vec<f64>, Vec<f64>) = self.fidelity.values().copied().unzip();
        let tau = seer_predictor::kendall_tau_b(&a, &b).ok()?;
        tau.is_finite().then_some(report::LabelFidelity {
            kendall_tau: tau,
            n: a.len(),
        })
    }
}

impl<'a> Run<'a> {
    /// Stage 7: the final fine-tunes of the chosen policies (each exported to
    /// `model-<label>.safetensors`) and of the uniform baselines.
    pub(super) fn final_finetunes(&mut self, chosen: &[Chosen]) -> Result<Finals> {
        let t = Instant::now();
        let final_dir = self.out.join("final");
        std::fs::create_dir_all(&final_dir).map_err(|err| Error::Io {
            path: final_dir.display().to_string(),
            err,
        })?;
        // With workers: every fine-tune the stage will need, side by side, first; the stage
        // below then collects their results (and exports) rather than fine-tuning.
        let prefetched = self.prefetch_finals(chosen)?;
        // A choice, a rival that wins its budget's final pick or an accuracy target's safer
        // candidate is exported from the model its final fine-tune made (kept below when the
        // uniform baselines' fine-tunes come first), not fine-tuned a second time.
        self.keep_models = chosen
            .iter()
            .flat_map(|c| {
                let others = if c.target.is_none() {
                    c.rivals.as_slice()
                } else {
                    c.safer.as_slice()
                };
                std::iter::once(c).chain(others)
            })
            .map(|c| policy_hash(&c.found.policy))
            .collect();
        let n_final = chosen.len() + self.uniform.len();
        self.log.stage(
            if prefetched {
                "final results"
            } else {
                "fine-tune"
            },
            (n_final * self.cfg.final_steps) as u64,
        );
        let mut fidelity = std::collections::BTreeMap::new();
        // The uniform baselines first: the final pick of each budget compares the chosen
        // policy with those within it on validation after this same fine-tune.
        let mut uniform = Vec::new();
        for u in self.uniform.clone() {
            uniform.push(self.finetune_uniform(&u)?);
        }
        let mut outcomes = Vec::new();
        for c in chosen {
            outcomes.push(self.finetune_chosen(c)?);
        }
        // Every policy fine-tuned above has its final result cached; those with a label pair.
        let policies = chosen
            .iter()
            .flat_map(|c| std::iter::once(c).chain(&c.safer))
            .map(|c| &c.found.policy)
            .chain(self.uniform.iter().map(|u| &u.policy));
        for p in policies {
            let hash = policy_hash(p);
            if let (Some(r), Some(l)) = (self.cached_final(p), self.store.get(&hash))
                && let Some(v) = r.top1_val
            {
                fidelity.insert(hash, (l.top1, v));
            }
        }
        self.keep_models.clear();
        self.prefetched.clear();
        self.log.finish();
        self.timed("final fine-tune + export", t);
        Ok(Finals {
            outcomes,
            uniform,
            fidelity,
        })
    }

    /// The final fine-tune and export of one budget's chosen policy.
    fn finetune_chosen(&mut self, c: &Chosen) -> Result<report::BudgetOutcome> {
        let model_file = c.budget.model_file();
        let path = self.out.join(&model_file);
        let limit = match c.budget.kind {
            BudgetKind::MaxSizeBits(bits) => Some(bits / 8),
            _ => None,
        };
        let (c, r, target, pick) = match &c.target {
            Some(t) => {
                let (c, r, target) = self.walk_ladder(c, t, &path)?;
                (c, r, target, None)
            }
            None => {
                let r = self.final_run(&c.found.policy, Some((&path, limit)))?;
                let (c, r, pick) = self.final_pick(c, r, &path, limit)?;
                (c, r, None, pick)
            }
        };
        let (b, f) = (&c.budget, &c.found);
        // None when the integer export was skipped (logged above with its reason).
        let written = path.is_file().then_some(model_file);
        self.log.line(&format!(
            "budget {}: test top-1 {:.2}% after {} fine-tune steps -> {}",
            b.label,
            r.top1_test,
            self.cfg.final_steps,
            written
                .as_deref()
                .unwrap_or("no integer model (export skipped, see above)")
        ));
        Ok(report::BudgetOutcome {
            label: b.label.clone(),
            max_bops: b.max_bops,
            // The user's limit (the search kept the file's header free of it).
            max_size_bits: limit.map(|bytes| 8 * bytes),
            policy: f.policy.clone(),
            macs: self.space.cost(&f.policy)?.total_macs,
            bops: f.bops,
            size_bits: f.size_bits,
            predicted_top1: f.predicted_mean,
            predicted_std: Some(f.predicted_std).filter(|s| s.is_finite()),
            measured_top1: Some(r.top1_test),
            policy_file: Some(b.policy_file()),
            // Stat rather than trust the exporter's figure: the file is what the user ships
            // (none when the export was skipped).
            file_bytes: std::fs::metadata(&path).ok().map(|m| m.len()),
            onnx_bytes: std::fs::metadata(onnx_path(&path)).ok().map(|m| m.len()),
            onnx_file: written
                .as_ref()
                .filter(|_| onnx_path(&path).is_file())
                .map(|m| onnx_path(Path::new(m)).display().to_string()),
            model_file: written,
            label_val_top1: c.label_top1,
            selected_from: Some(match &pick {
                Some(p) => format!("{}; {p}", c.from),
                None => c.from.clone(),
            }),
            extrapolation: f.extrapolation.filter(|e| e.any()).map(|e| e.describe()),
            budget_used: if target.is_some() {
                None
            } else {
                super::choice::budget_used(b, f.bops, f.size_bits)
            },
            budget_note: match (&pick, super::choice::budget_used(b, f.bops, f.size_bits)) {
                (Some(p), Some(used)) if used < 0.9 => Some(p.clone()),
                _ => c.budget_note.clone(),
            },
            accuracy_target: target,
            final_val_top1: r.top1_val,
        })
    }

    /// The final pick (docs/method.md §7) of a budget's choice `c`, whose final result is
    /// `r` and whose export is at `path`: when one of `c`'s rivals (the uniform anchors within
    /// the budget, already fine-tuned, and the runner-ups by label, fine-tuned here) validated
    /// strictly higher after the final fine-tune, the best of them replaces it (policy file
    /// rewritten; exported from the model its final fine-tune made, kept for this, or from
    /// its stored float model or the same seeded fine-tune again when an earlier invocation
    /// made it) and the returned note says so; otherwise `c` and `r` unchanged.
    /// The test split plays no part.
    fn final_pick<'c>(
        &mut self,
        c: &'c Chosen,
        r: FinalResult,
        path: &Path,
        limit: Option<u64>,
    ) -> Result<(&'c Chosen, FinalResult, Option<String>)> {
        let own = r.top1_val.unwrap_or(f64::NEG_INFINITY);
        let mut best: Option<(&'c Chosen, f64)> = None;
        let mut seen = Vec::new();
        for rival in &c.rivals {
            // The uniform anchors are fine-tuned already; a runner-up is fine-tuned now. Either
            // way its model is kept (`keep_models`), so that the winner is exported without a
            // second fine-tune (should it win another budget too, that export is made from the
            // float model the first one stored).
            let f = match self.cached_final(&rival.found.policy) {
                Some(f) => f,
                None => {
                    self.log.add_total(self.cfg.final_steps as u64);
                    let (f, model) = self.final_run_keep(&rival.found.policy, None)?;
                    if let Some(model) = model {
                        self.prefetched.insert(f.hash.clone(), model);
                    }
                    f
                }
            };
            let Some(v) = f.top1_val else { continue };
            seen.push(format!("{} {v:.2}%", rival.from));
            if v > own && best.as_ref().is_none_or(|(_, b)| v > *b) {
                best = Some((rival, v));
            }
        }
        if !c.rivals.is_empty() {
            self.log.line(&format!(
                "budget {}: final pick on validation after the final fine-tune: the choice \
                 {own:.2}%; {}",
                c.budget.label,
                seen.join("; ")
            ));
        }
        let Some((rival, v)) = best else {
            return Ok((c, r, None));
        };
        let note = format!(
            "final pick: validation top-1 {v:.2}% after the final fine-tune, above the \
             search's choice ({}, {} BOPs) at {own:.2}%",
            c.from, c.found.bops
        );
        self.log
            .line(&format!("budget {}: {} {note}", c.budget.label, rival.from));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(onnx_path(path));
        // Exported from its kept model; when a rival was fine-tuned by an earlier invocation
        // or another run sharing the final cache, from its stored float model when there is
        // one, else from the same seeded fine-tune made again.
        self.log.add_total(self.cfg.final_steps as u64);
        let r = self.final_run(&rival.found.policy, Some((path, limit)))?;
        rival
            .found
            .policy
            .save(self.out.join(rival.budget.policy_file()))?;
        Ok((rival, r, Some(note)))
    }

    /// The cached final result of `policy` under this run's final fine-tune (steps, seed and
    /// distillation), when it exists and records a validation top-1.
    ///
    /// With a shared final cache ([`Config::final_cache`](super::Config::final_cache)) a result
    /// found only there is copied into the run's own cache and returned.
    fn cached_final(&self, policy: &Policy) -> Option<FinalResult> {
        let hash = policy_hash(policy);
        let valid = |path: &Path| -> Option<FinalResult> {
            let text = std::fs::read_to_string(path).ok()?;
            let r: FinalResult = serde_json::from_str(&text).ok()?;
            (r.steps == self.cfg.final_steps
                && r.seed == self.final_seed(&hash)
                && r.top1_val.is_some()
                && r.distill == self.cfg.final_distill
                && r.weight_quant == self.cfg.weight_quant)
                .then_some(r)
        };
        let own = self.final_cache(&hash);
        if let Some(r) = valid(&own) {
            return Some(r);
        }
        let r = valid(&self.shared_final_dir()?.join(format!("{hash}.json")))?;
        // The copy only saves a later lookup; without it the shared file is read again.
        let _ = r.save(&own);
        Some(r)
    }

    /// The directory of this run's protocol in the shared final cache
    /// ([`Config::final_cache`](super::Config::final_cache)): `DIR/<labelling protocol hash>`.
    fn shared_final_dir(&self) -> Option<std::path::PathBuf> {
        let dir = self.cfg.final_cache.as_ref()?;
        Some(dir.join(self.protocol.hash()))
    }

    /// The fine-tuned float model of `r` stored by an earlier fine-tune (the run's own
    /// `final/<hash>.float.safetensors`, written with an export, or the shared final cache's),
    /// when its provenance names the same policy, seed and steps. None when there is none or
    /// it does not load (the fine-tune is then made again).
    fn stored_model(&self, r: &FinalResult) -> Option<Model> {
        let name = format!("{}.float.safetensors", r.hash);
        let own = self.out.join("final").join(&name);
        let shared = self.shared_final_dir().map(|d| d.join(&name));
        for path in std::iter::once(own).chain(shared) {
            if !path.is_file() {
                continue;
            }
            let Ok((model, info)) = checkpoint::load(&path, None, &Device::Cpu) else {
                continue;
            };
            let i = &info.info;
            let same = i.get("policy_hash").and_then(|v| v.as_str()) == Some(r.hash.as_str())
                && i.get("seed").and_then(|v| v.as_u64()) == Some(r.seed)
                && i.get("final_steps").and_then(|v| v.as_u64()) == Some(r.steps as u64)
                && i.get("labelling_protocol").and_then(|v| v.as_str())
                    == Some(self.protocol.hash().as_str());
            if same && model.policy().is_some() {
                return Some(model);
            }
        }
        None
    }

    /// An accuracy target's final fine-tunes (docs/method.md §6, `pipeline::target`): the
    /// candidates of `c`'s ladder in turn, each exported to `path`, until one's validation
    /// top-1 is within P of the baseline's; if none is, the one with the best validation top-1
    /// (exported again if a later try overwrote its file). Returns the accepted candidate, its
    /// result and the target's report with every try. The test split only reports.
    fn walk_ladder<'c>(
        &mut self,
        c: &'c Chosen,
        t: &report::AccuracyTarget,
        path: &Path,
    ) -> Result<(&'c Chosen, FinalResult, Option<report::AccuracyTarget>)> {
        let ladder: Vec<&Chosen> = std::iter::once(c).chain(&c.safer).collect();
        let mut tried: Vec<(usize, FinalResult)> = Vec::new();
        let mut accepted = None;
        for (k, cand) in ladder.iter().enumerate() {
            if k > 0 {
                self.log.add_total(self.cfg.final_steps as u64);
            }
            // The file may hold another candidate's export (an earlier try, or an earlier
            // invocation): without it the cached result is not taken and the export is made.
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(onnx_path(path));
            let r = self.final_run(&cand.found.policy, Some((path, None)))?;
            let val = r.top1_val.unwrap_or(f64::NAN);
            // The validation split's own sampling error as a safety margin: one standard
            // error of the candidate's top-1 on `n` images (binomial, in points). Without it a
            // candidate at 0.68 points on validation landed 1.02 below on test (P = 1).
            let n = self.splits.val.len().max(1) as f64;
            let a = (val / 100.0).clamp(0.0, 1.0);
            let margin = 100.0 * (a * (1.0 - a) / n).sqrt();
            let ok = t.reference_val_top1 - val + margin <= t.max_drop;
            self.log.line(&format!(
                "{} try {}/{}: {} BOPs, validation top-1 {val:.2}% after the final fine-tune \
                 (baseline {:.2}%; drop {:.2} + {margin:.2} standard error): {}",
                cand.budget.label,
                k + 1,
                ladder.len(),
                cand.found.bops,
                t.reference_val_top1,
                t.reference_val_top1 - val,
                if ok {
                    "within the allowed drop, accepted"
                } else {
                    "too far below"
                }
            ));
            tried.push((k, r));
            if ok {
                accepted = Some(tried.len() - 1);
                break;
            }
        }
        let pick = match accepted {
            Some(i) => i,
            None => {
                let best = (0..tried.len())
                    .max_by(|&a, &b| {
                        let v = |i: usize| tried[i].1.top1_val.unwrap_or(f64::NEG_INFINITY);
                        v(a).total_cmp(&v(b))
                    })
                    .unwrap_or(0);
                if best + 1 != tried.len() {
                    // A later try overwrote the export: make it again (same seed, same model).
                    let _ = std::fs::remove_file(path);
                    let _ = std::fs::remove_file(onnx_path(path));
                    let cand = ladder[tried[best].0];
                    tried[best].1 = self.final_run(&cand.found.policy, Some((path, None)))?;
                }
                best
            }
        };
        let chosen = ladder[tried[pick].0];
        if pick > 0 {
            chosen
                .found
                .policy
                .save(self.out.join(chosen.budget.policy_file()))?;
        }
        let mut info = t.clone();
        info.tried = tried
            .iter()
            .map(|(k, r)| report::Tried {
                bops: ladder[*k].found.bops,
                label_val_top1: ladder[*k].label_top1.unwrap_or(f64::NAN),
                final_val_top1: r.top1_val.unwrap_or(f64::NAN),
                test_top1: r.top1_test,
                accepted: accepted.is_some_and(|a| tried[a].0 == *k),
            })
            .collect();
        let r = tried.swap_remove(pick).1;
        Ok((chosen, r, Some(info)))
    }

    /// The final fine-tune of one uniform baseline (not exported).
    fn finetune_uniform(&mut self, u: &Uniform) -> Result<report::UniformBaseline> {
        let (r, model) = self.final_run_keep(&u.policy, None)?;
        let hash = policy_hash(&u.policy);
        if let Some(model) = model
            && self.keep_models.contains(&hash)
        {
            // A choice, a final pick's rival or a target's safer candidate: kept for its
            // export.
            self.prefetched.insert(hash, model);
        }
        let c = self.space.cost(&u.policy)?;
        let name = u.name();
        self.log.line(&format!(
            "uniform {name}: {} BOPs, test top-1 {:.2}%",
            c.total_bops, r.top1_test
        ));
        Ok(report::UniformBaseline {
            name,
            wbits: u.wbits,
            abits: u.abits,
            prune: u.prune,
            bops: c.total_bops,
            size_bits: c.total_size_bits,
            measured_top1: r.top1_test,
            final_val_top1: r.top1_val,
        })
    }

    /// Fine-tunes `policy` for `final_steps` (same quantizers as the labels, docs/method.md §7;
    /// seed: `label_seed(`[`Stream::FinalFinetune`]`, policy hash)`), evaluates on the test
    /// split, exports to `export` when given; cached in `final/<hash>.json` (written last, so an
    /// interrupted export is redone).
    fn final_run(
        &mut self,
        policy: &Policy,
        export: Option<(&Path, Option<u64>)>,
    ) -> Result<FinalResult> {
        Ok(self.final_run_keep(policy, export)?.0)
    }

    /// [`Self::final_run`], also returning the fine-tuned model when it was fine-tuned now
    /// (None when the result came from the cache).
    fn final_run_keep(
        &mut self,
        policy: &Policy,
        export: Option<(&Path, Option<u64>)>,
    ) -> Result<(FinalResult, Option<Model>)> {
        let cfg = self.cfg;
        let hash = policy_hash(policy);
        let cache = self.final_cache(&hash);
        let seed = self.final_seed(&hash);
        // Read once: every way out below but the fine-tune starts from the cached result.
        if let Some(r) = self.cached_final(policy) {
            match export {
                // Fine-tuned by this invocation's workers (`prefetch_finals`): its model is
                // taken for the export.
                Some((path, limit)) if self.prefetched.contains_key(&hash) => {
                    let model = self.prefetched.remove(&hash).expect("checked above");
                    self.log.inc(cfg.final_steps as u64);
                    self.export(&model, &r, path, limit)?;
                    return Ok((r, Some(model)));
                }
                // Fine-tuned before (an earlier invocation, or another run sharing the final
                // cache) and not exported here yet: exported from its stored float model, not
                // fine-tuned again (without one, fine-tuned again below).
                Some((path, limit)) if !path.is_file() => {
                    if let Some(model) = self.stored_model(&r) {
                        self.log.line(&format!(
                            "final fine-tune of {hash}: found in the cache, exported from its \
                             stored model"
                        ));
                        self.log.inc(cfg.final_steps as u64);
                        self.export(&model, &r, path, limit)?;
                        return Ok((r, Some(model)));
                    }
                    self.log.line(&format!(
                        "final fine-tune of {hash}: cached without its model; fine-tuned \
                         again (same seed) for the export"
                    ));
                }
                _ => {
                    // One the workers just fine-tuned was logged when it finished; its model
                    // is not needed (no export), unless it is a choice or a final pick's rival
                    // (`keep_models`).
                    let fetched = if self.keep_models.contains(&hash) {
                        self.prefetched.contains_key(&hash)
                    } else {
                        self.prefetched.remove(&hash).is_some()
                    };
                    if !fetched {
                        self.log.line(&format!(
                            "final fine-tune of {hash}: found in {}",
                            cache.display()
                        ));
                    }
                    self.log.inc(cfg.final_steps as u64);
                    // A run directory from before the ONNX export: write it from the kept
                    // export.
                    if let Some((path, _)) = export
                        && !onnx_path(path).is_file()
                    {
                        self.export_onnx(path);
                    }
                    return Ok((r, None));
                }
            }
        }
        let (ctx, log, _) = self.finetune_parts();
        let start = log.position();
        let (r, model) = ctx.run(policy, &hash, seed, &mut |step| {
            log.set_position(start + step as u64)
        })?;
        if let Some((path, limit)) = export {
            self.export(&model, &r, path, limit)?;
        }
        r.save(&cache)?;
        if let Some(dir) = self.shared_final_dir() {
            share_final(&dir, &r, &model, &self.final_provenance(&r))?;
        }
        Ok((r, Some(model)))
    }

    /// The provenance of `r`'s float model and export ([`provenance`] of this run).
    fn final_provenance(&self, r: &FinalResult) -> serde_json::Value {
        provenance(
            &self.protocol,
            &self.dname.id(),
            self.cfg.final_steps,
            &r.hash,
            r.seed,
        )
    }

    /// The seed of `hash`'s final fine-tune: `label_seed(`[`Stream::FinalFinetune`]`, hash)`.
    fn final_seed(&self, hash: &str) -> u64 {
        label_seed(Stream::FinalFinetune.seed(self.cfg.seed), hash)
    }

    /// Where `hash`'s final result is cached: `<run>/final/<hash>.json`.
    fn final_cache(&self, hash: &str) -> std::path::PathBuf {
        self.out.join("final").join(format!("{hash}.json"))
    }

    /// What a final fine-tune reads (shared by the workers), beside the run's log and its
    /// prefetched models, borrowed apart.
    fn finetune_parts(
        &mut self,
    ) -> (
        FinetuneCtx<'_>,
        &mut super::RunLog<'a>,
        &mut std::collections::HashMap<String, Model>,
    ) {
        let ctx = FinetuneCtx {
            cfg: self.cfg,
            base: &self.base.path,
            space: &self.space,
            splits: &self.splits,
            norm: &self.norm,
            dname: &self.dname,
            network: self.protocol.network,
        };
        (ctx, &mut self.log, &mut self.prefetched)
    }

    /// With more than one worker (`--workers`, [`workers::plan`]): fine-tunes every policy
    /// the final stage needs and lacks a cached result for (the uniform baselines, each
    /// choice and, for a budget, its rivals; for an accuracy target only the first of its
    /// ladder), side by side, caching each result as it finishes and keeping its model for an
    /// export. The stage then reads them as cached; the results are those of one fine-tune
    /// after another (same seeds, same bits). With one worker: nothing (the stage fine-tunes
    /// as it goes, and only the rivals it needs). Returns whether the workers ran.
    fn prefetch_finals(&mut self, chosen: &[Chosen]) -> Result<bool> {
        // (hash, policy, seed, cache file) of each fine-tune to make.
        let mut todo: Vec<(String, Policy, u64, std::path::PathBuf)> = Vec::new();
        let wanted = self
            .uniform
            .iter()
            .map(|u| &u.policy)
            .chain(chosen.iter().flat_map(|c| {
                let rivals = if c.target.is_none() {
                    c.rivals.as_slice()
                } else {
                    &[]
                };
                std::iter::once(&c.found.policy).chain(rivals.iter().map(|r| &r.found.policy))
            }));
        for p in wanted {
            let h = policy_hash(p);
            if self.cached_final(p).is_none() && !todo.iter().any(|t| t.0 == h) {
                todo.push((
                    h.clone(),
                    p.clone(),
                    self.final_seed(&h),
                    self.final_cache(&h),
                ));
            }
        }
        let (workers, threads) = workers::plan(self.cfg.workers, todo.len());
        if workers <= 1 {
            return Ok(false);
        }
        let steps = self.cfg.final_steps as u64;
        let t = Instant::now();
        let what = workers::describe(todo.len(), "fine-tunes", workers, threads);
        self.log.line(&format!("final fine-tunes: {what}"));
        self.log
            .stage("fine-tune (workers)", todo.len() as u64 * steps);
        let done_steps = std::sync::atomic::AtomicU64::new(0);
        // The largest networks first, so that the stage does not end on one long fine-tune
        // beside an idle worker.
        let order = workers::largest_networks_first(&self.space, todo.iter().map(|t| &t.1))?;
        let shared = self
            .shared_final_dir()
            .map(|d| (d, self.protocol.clone(), self.dname.id()));
        let (ctx, log, prefetched) = self.finetune_parts();
        // `done` and `tick` both write to the log, one at a time on this thread.
        let log = std::cell::RefCell::new(log);
        workers::map_ordered(
            &todo,
            workers,
            threads,
            &order,
            |(hash, policy, seed, _)| {
                // `on_step` gives the steps done so far (and the total once more at the end):
                // count each step once.
                let mut last = 0;
                ctx.run(policy, hash, *seed, &mut |k| {
                    if k > last {
                        let new = (k - last) as u64;
                        done_steps.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
                        last = k;
                    }
                })
            },
            // Cached and logged as each finishes (not in item order), so that a killed run
            // keeps every finished fine-tune.
            |i, (r, model), _| {
                let (hash, _, _, cache) = &todo[i];
                r.save(cache)?;
                if let Some((dir, protocol, dataset)) = &shared {
                    let prov = provenance(protocol, dataset, r.steps, &r.hash, r.seed);
                    share_final(dir, r, model, &prov)?;
                }
                log.borrow_mut().line(&format!(
                    "final fine-tune of {hash}: validation top-1 {:.2}%, test {:.2}% in {:.1} s",
                    r.top1_val.unwrap_or(f64::NAN),
                    r.top1_test,
                    r.seconds
                ));
                Ok(())
            },
            |i, (_, model)| {
                prefetched.insert(todo[i].0.clone(), model);
                Ok(())
            },
            || {
                let done = done_steps.load(std::sync::atomic::Ordering::Relaxed);
                log.borrow_mut().set_position(done);
            },
        )?;
        self.log.finish();
        // (Timed as part of the stage's "final fine-tune + export".)
        tracing::debug!(
            seconds = t.elapsed().as_secs_f64(),
            "final fine-tunes on the workers"
        );
        Ok(true)
    }

    /// Writes the slim fine-tuned float model (`final/<hash>.float.safetensors`, the
    /// fake-quant reference of `seernet infer`) and its integer export to `path`, both with
    /// provenance. An export the engine cannot represent is logged (with its whole error chain)
    /// and skipped; failing to write the float model is an error. A file over
    /// `size_limit_bytes` (the budget's, when it limits size) is logged as a warning.
    fn export(
        &mut self,
        model: &Model,
        r: &FinalResult,
        path: &Path,
        size_limit_bytes: Option<u64>,
    ) -> Result<()> {
        let _span = tracing::info_span!("export", policy = %r.hash).entered();
        let cfg = self.cfg;
        let dname = self.dname.id();
        let mut prov = self.final_provenance(r);
        prov["test_top1"] = r.top1_test.into();
        // An imported network's own input normalisation travels with its compressed copies.
        let (_, base_info) = checkpoint::load(&self.base.path, None, &Device::Cpu)?;
        if let Some((m, s)) = checkpoint::input_norm(&base_info) {
            prov["input_mean"] = m.into();
            prov["input_std"] = s.into();
        }
        let float_name = prov["float_model"].take();
        let float_name = float_name.as_str().unwrap_or_default().to_string();
        let slim = slim_copy(model)?;
        checkpoint::save(&slim, &cfg.out_dir.join(&float_name), Some(&dname), &prov)?;
        prov["float_model"] = float_name.into();
        let m = &self.splits.manifest;
        match export::export_int(&slim, &m.mean, &m.std, path, &prov) {
            Ok(s) => {
                self.log.line(&format!(
                    "exported {}: {} bytes ({} packed weight tensors: {} bytes vs {} bytes f32)",
                    path.display(),
                    s.file_bytes,
                    s.packed_layers,
                    s.packed_weight_bytes,
                    s.f32_weight_bytes
                ));
                if let Some(limit) = size_limit_bytes
                    && s.file_bytes > limit
                {
                    self.log.line(&format!(
                        "WARNING: {} is {} bytes, over its size budget of {limit} bytes",
                        path.display(),
                        s.file_bytes
                    ));
                }
                self.export_onnx(path);
            }
            Err(e) => self
                .log
                .line(&format!("integer export skipped: {}", chain(&e))),
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Writes the ONNX QDQ form (`model-<budget>.onnx`, docs/export.md) of the integer export
    /// at `path` beside it, from the file itself (so the two always describe one model). A
    /// failure is logged with its error chain and the ONNX file skipped: the integer export
    /// stands on its own.
    fn export_onnx(&mut self, path: &Path) {
        let onnx = onnx_path(path);
        let written = crate::int::format::IntModel::load(path)
            .map_err(Error::from)
            .and_then(|m| crate::onnx::write_qdq(&m, &onnx).map_err(Error::from));
        match written {
            Ok(s) => self.log.line(&format!(
                "exported {}: {} bytes (ONNX QDQ, opset {}: {} nodes, {} QuantizeLinear, {} int8 weights)",
                onnx.display(),
                s.file_bytes,
                crate::onnx::qdq::OPSET,
                s.nodes,
                s.quantize_nodes,
                s.weight_codes
            )),
            Err(e) => self
                .log
                .line(&format!("ONNX export skipped: {}", chain(&e))),
        }
    }
}

/// The pieces of a run one final fine-tune reads ([`Run::finetune_parts`]); shared by the
/// workers of [`Run::prefetch_finals`].
struct FinetuneCtx<'r> {
    cfg: &'r super::Config,
    base: &'r Path,
    space: &'r seer_policy::SearchSpace,
    splits: &'r seer_nn::data::Splits,
    norm: &'r seer_nn::data::Normalize,
    dname: &'r seer_nn::data::DataSource,
    network: crate::store::FinetuneNetwork,
}

impl FinetuneCtx<'_> {
    /// A fresh copy of the baseline with `policy` applied, fine-tuned for `final_steps` with
    /// `seed` on the protocol's network (slimmed or masked), then measured on the test and
    /// validation splits; `on_step(k)` after step k (1-based). Returns the result (not yet
    /// cached) and the model. Errors: loading the baseline, the fine-tune, the evaluations.
    fn run(
        &self,
        policy: &Policy,
        hash: &str,
        seed: u64,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<(FinalResult, Model)> {
        let _span = tracing::info_span!("finetune", policy = hash, seed).entered();
        let t = Instant::now();
        let cfg = self.cfg;
        let (mut model, info) = checkpoint::load(self.base, None, &Device::Cpu)?;
        // The full-precision baseline as the teacher (docs/method.md §7), compiled before the
        // policy is applied.
        let distill = if cfg.final_distill {
            Some(train::Distill {
                teacher: std::sync::Arc::new(seer_nn::eval::EvalNet::compile(&model)?),
                temperature: 1.0,
            })
        } else {
            None
        };
        let tc = train::TrainConfig {
            distill,
            steps: Some(cfg.final_steps),
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            seed,
            // As the labels: the baseline's own augmentation (docs/method.md §3).
            augment: seer_nn::labeler::finetune_augment(&info.info, self.dname),
            // The labels' network (slimmed under current protocols): same function, cheaper.
            network: self.network,
            weight_quant: cfg.weight_quant,
            ..train::TrainConfig::default()
        };
        train::finetune_policy(
            &mut model,
            self.space,
            policy,
            &self.splits.train,
            self.norm,
            &tc,
            &mut |s| on_step(s.step + 1),
        )?;
        on_step(cfg.final_steps);
        let test = train::evaluate(&model, &self.splits.test, self.norm, 256)?;
        let val = train::evaluate(&model, &self.splits.val, self.norm, 256)?;
        let r = FinalResult {
            hash: hash.to_string(),
            steps: cfg.final_steps,
            seed,
            top1_test: test.top1,
            top1_val: Some(val.top1),
            distill: cfg.final_distill,
            weight_quant: cfg.weight_quant,
            seconds: t.elapsed().as_secs_f64(),
        };
        Ok((r, model))
    }
}

/// Writes `r` and its fine-tuned `model` (slimmed, with `prov`) into the shared final cache
/// directory `dir` ([`Config::final_cache`](super::Config::final_cache)): the float model
/// first, then the result, so a result there always has its model. Errors: writing either.
fn share_final(dir: &Path, r: &FinalResult, model: &Model, prov: &serde_json::Value) -> Result<()> {
    let slim = slim_copy(model)?;
    let dataset = prov["dataset"].as_str().map(str::to_string);
    let float = dir.join(format!("{}.float.safetensors", r.hash));
    checkpoint::save(&slim, &float, dataset.as_deref(), prov)?;
    r.save(&dir.join(format!("{}.json", r.hash)))
}

/// A physically pruned copy of `model` (a clone when it is already slim): the float model a
/// checkpoint of a final fine-tune holds. Errors: the slimming's.
fn slim_copy(model: &Model) -> Result<Model> {
    Ok(if model.is_slim() {
        model.try_clone()?
    } else {
        model.slim()?
    })
}

/// The ONNX QDQ file beside the integer export `path` (`model-<budget>.onnx`).
pub(super) fn onnx_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("onnx")
}

/// The provenance written into a final export and its float checkpoint (`float_model`
/// included; `test_top1` added by the caller once measured).
pub(super) fn provenance(
    protocol: &crate::store::Protocol,
    dataset: &str,
    final_steps: usize,
    policy_hash: &str,
    seed: u64,
) -> serde_json::Value {
    serde_json::json!({
        "writer": crate::store::WRITER,
        "baseline_hash": protocol.baseline_hash,
        "labelling_protocol": protocol.hash(),
        "policy_hash": policy_hash,
        "dataset": dataset,
        "final_steps": final_steps,
        "seed": seed,
        "float_model": format!("final/{policy_hash}.float.safetensors"),
    })
}
