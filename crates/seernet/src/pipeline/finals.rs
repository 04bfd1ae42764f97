//! The final fine-tunes (docs/method.md §7): each chosen policy (then exported to the integer
//! engine's format) and each uniform baseline, fine-tuned for `final_steps` and measured on the
//! test split; each cached in `final/<policy hash>.json`.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use seer_nn::data::Augment;
use seer_nn::model::Model;
use seer_nn::{checkpoint, train};
use seer_policy::Policy;
use serde::{Deserialize, Serialize};

use super::choice::Chosen;
use super::{Run, Stream, Uniform, export};
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
    seconds: f64,
}

/// What the final fine-tunes measured, for the report.
pub(super) struct Finals {
    pub(super) outcomes: Vec<report::BudgetOutcome>,
    pub(super) uniform: Vec<report::UniformBaseline>,
}

impl Run<'_> {
    /// Stage 7: the final fine-tunes of the chosen policies (each exported to
    /// `model-<label>.safetensors`) and of the uniform baselines.
    pub(super) fn final_finetunes(&mut self, chosen: &[Chosen]) -> Result<Finals> {
        let t = Instant::now();
        let final_dir = self.out.join("final");
        std::fs::create_dir_all(&final_dir).map_err(|err| Error::Io {
            path: final_dir.display().to_string(),
            err,
        })?;
        let n_final = chosen.len() + self.uniform.len();
        self.log
            .stage("fine-tune", (n_final * self.cfg.final_steps) as u64);
        let mut outcomes = Vec::new();
        for c in chosen {
            outcomes.push(self.finetune_chosen(c)?);
        }
        let mut uniform = Vec::new();
        for u in self.uniform.clone() {
            uniform.push(self.finetune_uniform(&u)?);
        }
        self.log.finish();
        self.timed("final fine-tune + export", t);
        Ok(Finals { outcomes, uniform })
    }

    /// The final fine-tune and export of one budget's chosen policy.
    fn finetune_chosen(&mut self, c: &Chosen) -> Result<report::BudgetOutcome> {
        let (b, f) = (&c.budget, &c.found);
        let model_file = b.model_file();
        let path = self.out.join(&model_file);
        let limit = match b.kind {
            BudgetKind::MaxSizeBits(bits) => Some(bits / 8),
            _ => None,
        };
        let r = self.final_run(&f.policy, Some((&path, limit)))?;
        self.log.line(&format!(
            "budget {}: test top-1 {:.2}% after {} fine-tune steps -> {model_file}",
            b.label, r.top1_test, self.cfg.final_steps
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
            predicted_std: Some(f.predicted_std),
            measured_top1: Some(r.top1_test),
            policy_file: Some(b.policy_file()),
            // Stat rather than trust the exporter's figure: the file is what the user ships
            // (none when the export was skipped).
            file_bytes: std::fs::metadata(&path).ok().map(|m| m.len()),
            model_file: Some(model_file),
            label_val_top1: c.label_top1,
            selected_from: Some(c.from.clone()),
            extrapolation: f.extrapolation.filter(|e| e.any()).map(|e| e.describe()),
            accuracy_target: c.target.clone(),
        })
    }

    /// The final fine-tune of one uniform baseline (not exported).
    fn finetune_uniform(&mut self, u: &Uniform) -> Result<report::UniformBaseline> {
        let r = self.final_run(&u.policy, None)?;
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
        let cfg = self.cfg;
        let hash = policy_hash(policy);
        let cache = cfg.out_dir.join("final").join(format!("{hash}.json"));
        let seed = label_seed(Stream::FinalFinetune.seed(cfg.seed), &hash);
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Ok(r) = serde_json::from_str::<FinalResult>(&text)
            && r.steps == cfg.final_steps
            && r.seed == seed
            && export.is_none_or(|(p, _)| p.is_file())
        {
            self.log.line(&format!(
                "final fine-tune of {hash}: found in {}",
                cache.display()
            ));
            self.log.inc(cfg.final_steps as u64);
            return Ok(r);
        }
        let t = Instant::now();
        let model = self.finetune(policy, &hash, seed)?;
        let test = train::evaluate(&model, &self.splits.test, &self.norm, 256)?;
        let r = FinalResult {
            hash: hash.clone(),
            steps: cfg.final_steps,
            seed,
            top1_test: test.top1,
            seconds: t.elapsed().as_secs_f64(),
        };
        if let Some((path, limit)) = export {
            self.export(&model, &r, path, limit)?;
        }
        let js = serde_json::to_string_pretty(&r).expect("serializes") + "\n";
        crate::store::write_atomic(&cache, js.as_bytes())?;
        Ok(r)
    }

    /// A fresh copy of the baseline with `policy` applied, fine-tuned for `final_steps` with
    /// `seed` (progress: one unit per step).
    fn finetune(&mut self, policy: &Policy, hash: &str, seed: u64) -> Result<Model> {
        let _span = tracing::info_span!("finetune", policy = hash, seed).entered();
        let cfg = self.cfg;
        let (mut model, _) = checkpoint::load(&self.base.path, None, &Device::Cpu)?;
        let tc = train::TrainConfig {
            steps: Some(cfg.final_steps),
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            seed,
            augment: Some(Augment {
                pad: self.dname.crop_padding(),
                hflip: self.dname.allows_hflip(),
            }),
            ..train::TrainConfig::default()
        };
        let log = &mut self.log;
        let start = log.position();
        train::finetune_policy(
            &mut model,
            &self.space,
            policy,
            &self.splits.train,
            &self.norm,
            &tc,
            &mut |s| log.set_position(start + s.step as u64 + 1),
        )?;
        log.set_position(start + cfg.final_steps as u64);
        Ok(model)
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
        let mut prov = provenance(&self.protocol, &dname, cfg.final_steps, &r.hash, r.seed);
        prov["test_top1"] = r.top1_test.into();
        // An imported network's own input normalisation travels with its compressed copies.
        let (_, base_info) = checkpoint::load(&self.base.path, None, &Device::Cpu)?;
        if let Some((m, s)) = checkpoint::input_norm(&base_info) {
            prov["input_mean"] = m.into();
            prov["input_std"] = s.into();
        }
        let float_name = prov["float_model"].take();
        let float_name = float_name.as_str().unwrap_or_default().to_string();
        let slim = model.slim()?;
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
            }
            Err(e) => self
                .log
                .line(&format!("integer export skipped: {}", chain(&e))),
        }
        Ok(())
    }
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
