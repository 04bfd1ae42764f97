//! The labelling function of docs/method.md §3 as one reusable piece: apply a policy to the trained
//! baseline, re-estimate BatchNorm, calibrate, QAT fine-tune for the protocol's steps, measure
//! top-1 on the **validation** split. Used by `seernet label` (shards) and by the pipeline,
//! so both label under exactly the same [`Protocol`].
//!
//! The protocol pins the baseline (first 16 hex digits of SHA-256 of the checkpoint file), the
//! dataset split (hash of the recorded train/val/test index hashes) and every fine-tune
//! setting; [`Labeler::new`] refuses a checkpoint or dataset that does not match it.

use std::path::Path;

use crate::data::{Augment, DataSource, Dataset, Normalize, Splits};
use crate::train::WeightQuant;
use crate::{checkpoint, train};
use candle_core::Device;
use seer_label::Error as LabelError;
use seer_policy::{Policy, SearchSpace, SpaceConfig};

use crate::{Error, Result};
pub use seer_label::store::file_hash;
use seer_label::store::{FinetuneNetwork, Measured, Protocol, short_digest};

/// Fine-tune settings of a labelling protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelSettings {
    /// Optimizer steps per label.
    pub steps: u64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Peak learning rate (cosine decay).
    pub lr: f64,
    /// Base seed (each label's seed derives from it and the policy hash).
    pub seed: u64,
    /// Validation images each label is scored on: `None` the whole validation split, `Some(n)`
    /// the fixed sample [`Dataset::sample`]`(n, `[`VAL_SAMPLE_SEED`]`)` (recorded in the
    /// protocol as `extra.val_images`; docs/method.md §3, step 6).
    pub val_images: Option<usize>,
    /// How the fine-tune quantizes weights (recorded in the protocol as
    /// `extra.weight_quantizer` when not the default [`WeightQuant::Max`], so stores made
    /// before the setting existed keep their hash).
    pub weight_quant: WeightQuant,
}

/// Seed of the validation sample of protocols with `extra.val_images` (the subsets
/// `cargo xtask bench label-fidelity` scores on are drawn with it too).
pub const VAL_SAMPLE_SEED: u64 = 0x5EED_F1DE;

/// Wall seconds of one label by phase ([`Labeler::label_timed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LabelTimes {
    /// Loading the baseline, applying the policy (and slimming), BatchNorm re-estimation and
    /// activation calibration.
    pub prepare_s: f64,
    /// The QAT fine-tune steps.
    pub finetune_s: f64,
    /// Top-1 on the validation split.
    pub validate_s: f64,
}

impl LabelTimes {
    /// The whole label.
    pub fn total_s(&self) -> f64 {
        self.prepare_s + self.finetune_s + self.validate_s
    }
}

/// Evaluation batch size (does not change results).
const EVAL_BATCH: usize = 256;

/// Err(Invalid) unless `1 ≤ n ≤ split` (a protocol's validation sample within the split).
fn check_val_images(n: usize, split: usize) -> Result<()> {
    if n == 0 || n > split {
        return Err(Error::Invalid(format!(
            "labels scored on {n} validation images, but the validation split has {split}: \
             give 1 to {split} (`seernet compress --label-val-images N`)"
        )));
    }
    Ok(())
}

/// First 16 hex digits of SHA-256 of the three recorded split index hashes (the protocol's
/// `split_hash`).
pub fn split_hash(splits: &Splits) -> String {
    let h = &splits.manifest.index_sha256;
    let s = format!("train={};val={};test={}", h.train, h.val, h.test);
    short_digest(s.as_bytes())
}

/// The augmentation of every fine-tune from a baseline (labels and final fine-tunes): the
/// dataset's crop and flip when the baseline was trained with them, none when its checkpoint
/// records `"augment": false` (e.g. the committed LeNet-5, trained without: fine-tuning it
/// with crops cost its w8a8 policy 1.9 points of test top-1 after 600 steps, 87.66% vs
/// 89.58%). `info`: the checkpoint's free-form JSON ([`checkpoint::CheckpointInfo::info`]).
pub fn finetune_augment(info: &serde_json::Value, name: &DataSource) -> Option<Augment> {
    (info.get("augment") != Some(&serde_json::Value::Bool(false))).then(|| Augment {
        pad: name.crop_padding(),
        hflip: name.allows_hflip(),
    })
}

fn train_config(
    p: &Protocol,
    seed: u64,
    augment: Option<Augment>,
    weight_quant: WeightQuant,
) -> train::TrainConfig {
    train::TrainConfig {
        steps: Some(p.finetune_steps as usize),
        batch_size: p.batch_size,
        lr: p.lr,
        seed,
        augment,
        network: p.network,
        weight_quant,
        ..train::TrainConfig::default()
    }
}

/// The protocol key of [`LabelSettings::weight_quant`].
const WEIGHT_QUANTIZER: &str = "weight_quantizer";

fn extra(
    p: &Protocol,
    augment: Option<Augment>,
    val_images: Option<usize>,
    weight_quant: WeightQuant,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let c = train_config(p, 0, augment, weight_quant);
    let aug = match augment {
        Some(a) => serde_json::json!({"crop_pad": a.pad, "hflip": a.hflip}),
        None => serde_json::json!("none (the baseline was trained without)"),
    };
    let val = val_images.map(|n| ("val_images", serde_json::json!(n)));
    let wq = (weight_quant != WeightQuant::Max)
        .then(|| (WEIGHT_QUANTIZER, serde_json::json!(weight_quant.as_str())));
    [
        (
            "calibration",
            serde_json::json!({
                "batches": train::CALIBRATION_BATCHES,
                "batch_size": train::CALIBRATION_BATCH,
            }),
        ),
        (
            "labeler",
            serde_json::json!("seer-nn finetune_policy; top-1 on val"),
        ),
        ("momentum", serde_json::json!(c.momentum)),
        ("weight_decay", serde_json::json!(c.weight_decay)),
        ("augment", aug),
    ]
    .into_iter()
    .chain(val)
    .chain(wq)
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The weight quantizer a protocol labels with: `extra.weight_quantizer`, [`WeightQuant::Max`]
/// when absent. Err(Label(Protocol)) for any other value than `"lsq"` or `"max"`.
fn weight_quant_of(protocol: &Protocol) -> Result<WeightQuant> {
    match protocol.extra.get(WEIGHT_QUANTIZER) {
        None => Ok(WeightQuant::Max),
        Some(v) => v
            .as_str()
            .and_then(|s| WeightQuant::parse(s).ok())
            .ok_or_else(|| {
                LabelError::Protocol {
                    what: "labeller settings".into(),
                    diff: format!("extra.{WEIGHT_QUANTIZER} is {v}, not \"max\" or \"lsq\""),
                }
                .into()
            }),
    }
}

/// A loaded baseline and dataset, ready to label policies under one protocol.
pub struct Labeler {
    protocol: Protocol,
    checkpoint: std::path::PathBuf,
    space: SearchSpace,
    splits: Splits,
    norm: Normalize,
    /// Augmentation of the fine-tunes ([`finetune_augment`]).
    augment: Option<Augment>,
    /// The validation images labels are scored on: the split's, or its protocol's sample.
    val: Dataset,
    /// The protocol's weight quantizer (`extra.weight_quantizer`, default max).
    weight_quant: WeightQuant,
}

impl std::fmt::Debug for Labeler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labeler")
            .field("checkpoint", &self.checkpoint)
            .field("protocol", &self.protocol.hash())
            .finish()
    }
}

impl Labeler {
    /// The protocol for labelling policies of `space_config` on the baseline `checkpoint` with
    /// `settings`, fine-tuning the slimmed network ([`FinetuneNetwork::Slim`]; [`Labeler`]
    /// also labels under masked protocols, those of stores written before the field existed);
    /// the dataset is the checkpoint's unless `dataset` is given. Err(Nn) for an
    /// unreadable checkpoint or a missing dataset (the message says how to fetch it).
    pub fn protocol(
        checkpoint: &Path,
        dataset: Option<&str>,
        space_config: SpaceConfig,
        settings: LabelSettings,
    ) -> Result<Protocol> {
        let (model, info) = checkpoint::load(checkpoint, None, &Device::Cpu)?;
        let dname = dataset
            .map(str::to_string)
            .or(info.dataset.clone())
            .ok_or_else(|| Error::Checkpoint {
                path: checkpoint.to_path_buf(),
                msg: "the checkpoint records no dataset: give one".into(),
            })?;
        let name = DataSource::parse(&dname)?;
        let splits = name.load()?;
        let space = SearchSpace::new(model.spec().clone(), space_config)?;
        let mut p = Protocol::for_space(
            &space,
            &name.id(),
            &split_hash(&splits),
            &file_hash(checkpoint)?,
            settings.steps,
            settings.batch_size,
            settings.lr,
            settings.seed,
        );
        if let Some(n) = settings.val_images {
            check_val_images(n, splits.val.len())?;
        }
        p.extra = extra(
            &p,
            finetune_augment(&info.info, &name),
            settings.val_images,
            settings.weight_quant,
        );
        p.network = FinetuneNetwork::Slim;
        Ok(p)
    }

    /// Loads the baseline and dataset of `protocol`. Err(Label(Protocol)) when the checkpoint's
    /// hash, its network, the dataset split or the labeller settings differ from the protocol's;
    /// Err(Label(Io)) for an unreadable checkpoint file.
    pub fn new(protocol: &Protocol, checkpoint: &Path) -> Result<Self> {
        let mismatch = |what: &str, diff: String| {
            Error::from(LabelError::Protocol {
                what: what.to_string(),
                diff,
            })
        };
        let got = file_hash(checkpoint)?;
        if got != protocol.baseline_hash {
            return Err(mismatch(
                &format!("checkpoint {}", checkpoint.display()),
                format!(
                    "its hash is {got}, the protocol's baseline_hash is {}",
                    protocol.baseline_hash
                ),
            ));
        }
        let (model, info) = checkpoint::load(checkpoint, Some(&protocol.arch), &Device::Cpu)?;
        let space = SearchSpace::new(model.spec().clone(), protocol.space.clone())?;
        protocol.check_space(&space)?;
        let name = DataSource::parse(&protocol.dataset)?;
        let mut splits = name.load()?;
        if let Some((m, s)) = checkpoint::input_norm(&info) {
            splits.use_norm(&m, &s)?;
        }
        let sh = split_hash(&splits);
        if sh != protocol.split_hash {
            return Err(mismatch(
                &format!("dataset {name}"),
                format!(
                    "its split hash is {sh}, the protocol's is {}",
                    protocol.split_hash
                ),
            ));
        }
        let augment = finetune_augment(&info.info, &name);
        let val_images = match protocol.extra.get("val_images") {
            None => None,
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    mismatch(
                        "labeller settings",
                        format!("extra.val_images is {v}, not a count of images"),
                    )
                })?;
                check_val_images(n as usize, splits.val.len())?;
                Some(n as usize)
            }
        };
        let weight_quant = weight_quant_of(protocol)?;
        let want = extra(protocol, augment, val_images, weight_quant);
        if protocol.extra != want {
            return Err(mismatch(
                "labeller settings",
                format!(
                    "protocol has {:?}, this build labels with {:?}",
                    protocol.extra, want
                ),
            ));
        }
        let norm = splits.normalize();
        let val = match val_images {
            Some(n) => splits.val.sample(n, VAL_SAMPLE_SEED),
            None => splits.val.clone(),
        };
        Ok(Labeler {
            protocol: protocol.clone(),
            checkpoint: checkpoint.to_path_buf(),
            space,
            splits,
            norm,
            augment,
            val,
            weight_quant,
        })
    }

    /// The search space of the protocol.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// The protocol.
    pub fn protocol_ref(&self) -> &Protocol {
        &self.protocol
    }

    /// Labels one policy with `seed` (use [`label_seed`](seer_label::store::label_seed)): a fresh copy
    /// of the baseline, policy applied, slimmed when the protocol's `network` says so, fine-tuned for the protocol's steps on the training
    /// split, top-1 (percent) on the validation split. `on_step` sees each optimizer step
    /// (index, loss). Err(Policy) for a policy outside the space, Err(Label(Protocol)) when the
    /// checkpoint file changed since [`new`](Self::new), Err(Nn) for training errors.
    pub fn label(
        &self,
        policy: &Policy,
        seed: u64,
        on_step: &mut dyn FnMut(usize, f32),
    ) -> Result<Measured> {
        self.label_timed(policy, seed, on_step).map(|(m, _)| m)
    }

    /// [`label`](Self::label), also returning where the wall time went.
    pub fn label_timed(
        &self,
        policy: &Policy,
        seed: u64,
        on_step: &mut dyn FnMut(usize, f32),
    ) -> Result<(Measured, LabelTimes)> {
        let t0 = std::time::Instant::now();
        self.space.validate(policy)?;
        // The baseline is re-read for every label (policies mutate the model); a checkpoint
        // replaced during the run would silently change the protocol, so check it each time.
        let h = file_hash(&self.checkpoint)?;
        if h != self.protocol.baseline_hash {
            return Err(LabelError::Protocol {
                what: format!("checkpoint {}", self.checkpoint.display()),
                diff: format!(
                    "it changed during the run: hash {h}, the protocol's baseline_hash is {}",
                    self.protocol.baseline_hash
                ),
            }
            .into());
        }
        let (mut model, _) =
            checkpoint::load(&self.checkpoint, Some(&self.protocol.arch), &Device::Cpu)?;
        let cfg = train_config(&self.protocol, seed, self.augment, self.weight_quant);
        let rep = train::finetune_policy(
            &mut model,
            &self.space,
            policy,
            &self.splits.train,
            &self.norm,
            &cfg,
            &mut |s| on_step(s.step, s.loss),
        )?;
        let t1 = std::time::Instant::now();
        let r = match self.protocol.network {
            FinetuneNetwork::Slim => train::evaluate(&model, &self.val, &self.norm, EVAL_BATCH)?,
            // Masked protocols predate the evaluation path without autograd: keep their bits.
            FinetuneNetwork::Masked => {
                train::evaluate_reference(&model, &self.val, &self.norm, EVAL_BATCH)?
            }
        };
        let before_val = t1.duration_since(t0).as_secs_f64();
        let times = LabelTimes {
            prepare_s: (before_val - rep.seconds).max(0.0),
            finetune_s: rep.seconds,
            validate_s: t1.elapsed().as_secs_f64(),
        };
        Ok((Measured { top1: r.top1 }, times))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(weight_quant: WeightQuant) -> Protocol {
        let spec = seer_policy::builtin("lenet5", None, None).unwrap();
        let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
        let mut p = Protocol::for_space(&space, "fashion-mnist", "s", "b", 100, 64, 0.01, 0);
        p.network = FinetuneNetwork::Slim;
        p.extra = extra(&p, None, None, weight_quant);
        p
    }

    /// The weight quantizer is part of the protocol (so a store never mixes the two), and a
    /// protocol without the key, as every store before it existed, reads as `max`.
    #[test]
    fn weight_quantizer_is_part_of_the_protocol() {
        let (max, lsq) = (protocol(WeightQuant::Max), protocol(WeightQuant::Lsq));
        assert!(!max.extra.contains_key(WEIGHT_QUANTIZER));
        assert_eq!(lsq.extra[WEIGHT_QUANTIZER], serde_json::json!("lsq"));
        assert_ne!(max.hash(), lsq.hash());
        assert_eq!(weight_quant_of(&max).unwrap(), WeightQuant::Max);
        assert_eq!(weight_quant_of(&lsq).unwrap(), WeightQuant::Lsq);
        let mut bad = lsq.clone();
        bad.extra
            .insert(WEIGHT_QUANTIZER.into(), serde_json::json!("minmax"));
        match weight_quant_of(&bad) {
            Err(Error::Label(LabelError::Protocol { diff, .. })) => {
                assert!(diff.contains("minmax") && diff.contains("lsq"), "{diff}")
            }
            other => panic!("{other:?}"),
        }
        bad.extra
            .insert(WEIGHT_QUANTIZER.into(), serde_json::json!(3));
        assert!(weight_quant_of(&bad).is_err());
    }
}
