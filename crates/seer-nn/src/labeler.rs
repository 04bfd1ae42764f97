//! The labelling function of docs/method.md §3 as one reusable piece: apply a policy to the trained
//! baseline, re-estimate BatchNorm, calibrate, QAT fine-tune for the protocol's steps, measure
//! top-1 on the **validation** split. Used by `seernet label` (shards) and by the pipeline,
//! so both label under exactly the same [`Protocol`].
//!
//! The protocol pins the baseline (first 16 hex digits of SHA-256 of the checkpoint file), the
//! dataset split (hash of the recorded train/val/test index hashes) and every fine-tune
//! setting; [`Labeler::new`] refuses a checkpoint or dataset that does not match it.

use std::path::Path;

use crate::data::{Augment, DataSource, Normalize, Splits};
use crate::{checkpoint, train};
use candle_core::Device;
use seer_label::Error as LabelError;
use seer_policy::{Policy, SearchSpace, SpaceConfig};

use crate::{Error, Result};
pub use seer_label::store::file_hash;
use seer_label::store::{Measured, Protocol, short_digest};

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
}

/// Evaluation batch size (does not change results).
const EVAL_BATCH: usize = 256;

/// First 16 hex digits of SHA-256 of the three recorded split index hashes (the protocol's
/// `split_hash`).
pub fn split_hash(splits: &Splits) -> String {
    let h = &splits.manifest.index_sha256;
    let s = format!("train={};val={};test={}", h.train, h.val, h.test);
    short_digest(s.as_bytes())
}

fn train_config(p: &Protocol, name: &DataSource, seed: u64) -> train::TrainConfig {
    train::TrainConfig {
        steps: Some(p.finetune_steps as usize),
        batch_size: p.batch_size,
        lr: p.lr,
        seed,
        augment: Some(Augment {
            pad: name.crop_padding(),
            hflip: name.allows_hflip(),
        }),
        ..train::TrainConfig::default()
    }
}

fn extra(p: &Protocol, name: &DataSource) -> std::collections::BTreeMap<String, serde_json::Value> {
    let c = train_config(p, name, 0);
    let a = c.augment.expect("set above");
    [
        (
            "labeler",
            serde_json::json!("seer-nn finetune_policy; top-1 on val"),
        ),
        ("momentum", serde_json::json!(c.momentum)),
        ("weight_decay", serde_json::json!(c.weight_decay)),
        (
            "augment",
            serde_json::json!({"crop_pad": a.pad, "hflip": a.hflip}),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A loaded baseline and dataset, ready to label policies under one protocol.
pub struct Labeler {
    protocol: Protocol,
    checkpoint: std::path::PathBuf,
    space: SearchSpace,
    splits: Splits,
    norm: Normalize,
    name: DataSource,
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
    /// `settings`; the dataset is the checkpoint's unless `dataset` is given. Err(Nn) for an
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
        p.extra = extra(&p, &name);
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
        let want = extra(protocol, &name);
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
        Ok(Labeler {
            protocol: protocol.clone(),
            checkpoint: checkpoint.to_path_buf(),
            space,
            splits,
            norm,
            name,
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
    /// of the baseline, policy applied, fine-tuned for the protocol's steps on the training
    /// split, top-1 (percent) on the validation split. `on_step` sees each optimizer step
    /// (index, loss). Err(Policy) for a policy outside the space, Err(Label(Protocol)) when the
    /// checkpoint file changed since [`new`](Self::new), Err(Nn) for training errors.
    pub fn label(
        &self,
        policy: &Policy,
        seed: u64,
        on_step: &mut dyn FnMut(usize, f32),
    ) -> Result<Measured> {
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
        let cfg = train_config(&self.protocol, &self.name, seed);
        train::finetune_policy(
            &mut model,
            &self.space,
            policy,
            &self.splits.train,
            &self.norm,
            &cfg,
            &mut |s| on_step(s.step, s.loss),
        )?;
        let r = train::evaluate(&model, &self.splits.val, &self.norm, EVAL_BATCH)?;
        Ok(Measured { top1: r.top1 })
    }
}
