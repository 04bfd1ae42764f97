//! Training and evaluation: SGD with momentum and weight decay, cosine learning rate,
//! quantization-aware fine-tuning of a policy (docs/method.md §3, §7) and top-1 evaluation.

use std::time::Instant;

use candle_core::{Tensor, Var, backprop::GradStore};
pub use seer_label::FinetuneNetwork;
use seer_policy::{Policy, SearchSpace};

use crate::data::{Augment, Batch, BatchIter, Dataset, Normalize};
use crate::eval::EvalNet;
use crate::model::Model;
use crate::{Error, Result};

/// SGD with (heavy-ball) momentum and decoupled-from-BN weight decay, written out:
/// `g ← ∇ + λ·w` (λ only on weights of rank ≥ 2), `v ← μ·v + g`, `w ← w − η·v`.
/// Variables without a gradient in a step (e.g. unused, or frozen) are skipped.
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<Var>,
    velocity: Vec<Option<Tensor>>,
    /// Momentum μ.
    pub momentum: f64,
    /// Weight decay λ.
    pub weight_decay: f64,
    /// Clip the global gradient norm (before weight decay) to this value, if set.
    pub clip_norm: Option<f64>,
}

impl Sgd {
    /// An optimizer over `vars`.
    pub fn new(vars: Vec<Var>, momentum: f64, weight_decay: f64) -> Self {
        let n = vars.len();
        Self {
            vars,
            velocity: vec![None; n],
            momentum,
            weight_decay,
            clip_norm: None,
        }
    }

    /// One update with learning rate `lr` from `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let mut scale = 1.0;
        if let Some(c) = self.clip_norm {
            let mut sq = 0f64;
            for v in &self.vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
            }
            let norm = sq.sqrt();
            if norm > c {
                scale = c / norm;
            }
        }
        for (v, vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            let mut g = if scale < 1.0 { (g * scale)? } else { g.clone() };
            if self.weight_decay > 0.0 && v.rank() >= 2 {
                g = (g + (v.as_tensor() * self.weight_decay)?)?;
            }
            let nv = match vel.take() {
                Some(old) if self.momentum > 0.0 => ((old * self.momentum)? + g)?,
                _ => g,
            };
            v.set(&(v.as_tensor() - (&nv * lr)?)?)?;
            *vel = Some(nv);
        }
        Ok(())
    }
}

/// Cosine learning rate: `η_t = η₀ · ½ (1 + cos(π t / T))`.
pub fn cosine_lr(base: f64, step: usize, total: usize) -> f64 {
    0.5 * base * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Epochs over the training data (ignored when `steps` is set).
    pub epochs: usize,
    /// Exact number of optimizer steps (overrides `epochs`).
    pub steps: Option<usize>,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Peak learning rate (cosine-decayed to 0).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Training augmentation.
    pub augment: Option<Augment>,
    /// Also learn the activation clip ranges α (QAT).
    pub train_alpha: bool,
    /// Clip the global gradient norm to this value (QAT stability), if set.
    pub clip_norm: Option<f64>,
    /// Resume at this epoch (0 = from scratch): the first `start_epoch` epochs are skipped,
    /// the learning-rate schedule and the per-epoch shuffling continue exactly where an
    /// uninterrupted run would be; only the SGD momentum restarts from zero.
    pub start_epoch: usize,
    /// Stop after this many epochs (counted from 0, so `Some(2)` ends after the second)
    /// while the learning-rate schedule still spans all `epochs`/`steps`: a long run in
    /// pieces, continued later with [`Self::start_epoch`]. `None`: run to the end.
    pub stop_epoch: Option<usize>,
    /// [`finetune_policy`] only: fine-tune the masked full-width network, or remove the
    /// pruned channels first and fine-tune the slimmed one (same result up to float
    /// rounding, cheaper by about the pruned fraction). Ignored by [`train`].
    pub network: FinetuneNetwork,
    /// Distil from a teacher (docs/method.md §7): the loss is the teacher-to-student KL
    /// divergence of the softmaxed logits instead of the cross-entropy with the labels.
    /// `None`: plain cross-entropy.
    pub distill: Option<Distill>,
    /// [`finetune_policy`] only: how weights are fake-quantized while it trains. Ignored by
    /// [`train`], which uses whatever the model holds.
    pub weight_quant: WeightQuant,
}

/// How a quantization-aware fine-tune ([`finetune_policy`]) sets the per-channel weight steps
/// (docs/method.md §3). Either way the result is a model whose weights quantize under the
/// max-range quantizer, so checkpoints, evaluation and the integer export are the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightQuant {
    /// `max|w_c| / (2^(b−1) − 1)`, recomputed from the weights at every step (straight-through
    /// gradient): the authors' quantizer, and every label store's before the setting existed.
    #[default]
    Max,
    /// Learned steps (LSQ, Esser et al., ICLR 2020): started at the least-squares clip
    /// ([`seer_kernels::weight_mse_steps`]), trained with the weights, then folded into them
    /// ([`Model::fold_weight_steps`]). At 2 and 3 bits the max range leaves most weights at
    /// zero; docs/benchmarks.md ("Main job", session 30) has the measurements.
    Lsq,
}

impl WeightQuant {
    /// `max` or `lsq`, as on the command line and in a label protocol.
    pub fn as_str(&self) -> &'static str {
        match self {
            WeightQuant::Max => "max",
            WeightQuant::Lsq => "lsq",
        }
    }

    /// Parses [`WeightQuant::as_str`]'s names. Err(Invalid) names the accepted ones.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(WeightQuant::Max),
            "lsq" => Ok(WeightQuant::Lsq),
            other => Err(Error::Invalid(format!(
                "weight quantizer {other:?}: expected \"max\" or \"lsq\""
            ))),
        }
    }
}

impl std::str::FromStr for WeightQuant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Logit distillation from a full-precision teacher (quantization-aware distillation, as in
/// NVIDIA ModelOpt's QAD and the KD recipes of QAT papers): per mini-batch the teacher's
/// logits `t` (evaluation mode, no gradient) and the student's `s`, loss
/// `KL(softmax(t/T) ‖ softmax(s/T)) · T²`, mean over the images (Hinton et al. 2015's scaling,
/// so gradients keep their size across temperatures).
#[derive(Debug, Clone)]
pub struct Distill {
    /// The teacher, compiled once for evaluation (its logits are bitwise those of its forward
    /// pass).
    pub teacher: std::sync::Arc<crate::eval::EvalNet>,
    /// Softmax temperature T > 0.
    pub temperature: f32,
}

/// `KL(softmax(t/T) ‖ softmax(s/T)) · T²` averaged over the rows of student logits `s` and
/// teacher logits `t` (`[N, C]`, `t` carries no gradient). See [`Distill`].
pub fn distill_loss(s: &Tensor, t: &Tensor, temperature: f32) -> Result<Tensor> {
    let tt = f64::from(temperature);
    let log_ps = candle_nn::ops::log_softmax(&(s / tt)?, 1)?;
    let log_pt = candle_nn::ops::log_softmax(&(t.detach() / tt)?, 1)?;
    let pt = log_pt.exp()?;
    let kl = (pt * (log_pt - log_ps)?)?.sum(1)?.mean(0)?;
    Ok((kl * (tt * tt))?)
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            steps: None,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            augment: None,
            train_alpha: false,
            clip_norm: None,
            start_epoch: 0,
            stop_epoch: None,
            network: FinetuneNetwork::Masked,
            distill: None,
            weight_quant: WeightQuant::Max,
        }
    }
}

/// Progress of one optimizer step, for progress bars and logs.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Step index (0-based).
    pub step: usize,
    /// Total steps.
    pub total: usize,
    /// Epoch index.
    pub epoch: usize,
    /// Mini-batch loss.
    pub loss: f32,
    /// Mini-batch top-1 accuracy in [0, 1].
    pub acc: f32,
    /// Learning rate used.
    pub lr: f64,
}

/// Summary of a training run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// Steps run.
    pub steps: usize,
    /// Images seen.
    pub images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Mean loss over the last 50 steps.
    pub final_loss: f32,
}

/// Converts a batch to `(x [N, C, H, W], y [N] u32)` tensors on `model`'s device.
pub fn batch_tensors(b: Batch, model: &Model) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = b.shape;
    let x = Tensor::from_vec(b.x, (b.n, c, h, w), model.device())?;
    let y = Tensor::from_vec(b.y, b.n, model.device())?;
    Ok((x, y))
}

/// Trains `model` on `data` (training split) with SGD + cosine LR, BatchNorm in training
/// mode. `on_step` is called after every step. Errors: an empty dataset, a non-finite loss
/// (diverged: lower the learning rate), a distillation temperature that is not finite and
/// > 0, a teacher with another number of classes or input shape.
pub fn train(
    model: &Model,
    data: &Dataset,
    norm: &Normalize,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<TrainReport> {
    let _span = tracing::info_span!(
        "train",
        images = data.len(),
        batch = cfg.batch_size,
        steps = ?cfg.steps,
        lr = cfg.lr
    )
    .entered();
    let per_epoch = data.len() / cfg.batch_size.max(1);
    if per_epoch == 0 {
        return Err(Error::Invalid(format!(
            "{} training images are fewer than one batch of {}",
            data.len(),
            cfg.batch_size
        )));
    }
    if let Some(d) = &cfg.distill {
        let t = d.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::Invalid(format!(
                "distillation temperature {t}: give a finite value > 0"
            )));
        }
    }
    let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
    if cfg.start_epoch * per_epoch > total {
        return Err(Error::Invalid(format!(
            "cannot resume at epoch {} of a {}-step run ({per_epoch} steps per epoch)",
            cfg.start_epoch, total
        )));
    }
    let mut sgd = Sgd::new(
        model.trainable_vars(cfg.train_alpha),
        cfg.momentum,
        cfg.weight_decay,
    );
    sgd.clip_norm = cfg.clip_norm;
    let t0 = Instant::now();
    let (mut step, mut images) = (cfg.start_epoch * per_epoch, 0usize);
    let mut recent: Vec<f32> = Vec::new();
    let mut epoch = cfg.start_epoch;
    let end = cfg
        .stop_epoch
        .map_or(total, |e| total.min(e.saturating_mul(per_epoch)));
    while step < end {
        for b in BatchIter::shuffled(
            data,
            cfg.batch_size,
            norm.clone(),
            cfg.augment,
            cfg.seed,
            epoch as u64,
            true,
        ) {
            if step >= end {
                break;
            }
            let n = b.n;
            // The teacher reads the batch before `batch_tensors` takes it.
            let teacher = match &cfg.distill {
                Some(d) => Some((d, d.teacher.logits(&b.x, n)?)),
                None => None,
            };
            let (x, y) = batch_tensors(b, model)?;
            let logits = model.forward(&x, true)?;
            let loss = match teacher {
                Some((d, t)) => {
                    let classes = logits.dim(1)?;
                    if d.teacher.classes() != classes {
                        return Err(Error::Invalid(format!(
                            "the teacher has {} classes, the model {classes}",
                            d.teacher.classes()
                        )));
                    }
                    let t = Tensor::from_vec(t, (n, classes), model.device())?;
                    distill_loss(&logits, &t, d.temperature)?
                }
                None => candle_nn::loss::cross_entropy(&logits, &y)?,
            };
            let lv = loss.to_scalar::<f32>()?;
            if !lv.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged at step {step} (loss {lv}); lower the learning rate"
                )));
            }
            let grads = loss.backward()?;
            let lr = cosine_lr(cfg.lr, step, total);
            sgd.step(&grads, lr)?;
            let pred = logits.argmax(1)?;
            let correct = pred
                .eq(&y)?
                .to_dtype(candle_core::DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            recent.push(lv);
            if recent.len() > 50 {
                recent.remove(0);
            }
            on_step(StepInfo {
                step,
                total,
                epoch,
                loss: lv,
                acc: correct / n as f32,
                lr,
            });
            step += 1;
            images += n;
        }
        epoch += 1;
    }
    Ok(TrainReport {
        steps: step,
        images,
        seconds: t0.elapsed().as_secs_f64(),
        final_loss: recent.iter().sum::<f32>() / recent.len().max(1) as f32,
    })
}

/// Result of [`evaluate`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EvalReport {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Images evaluated.
    pub n: usize,
    /// Throughput of the forward passes (images per second, wall time).
    pub images_per_s: f64,
}

/// Top-1 accuracy of `model` (evaluation mode) on all of `data`, on the evaluation path
/// without autograd ([`EvalNet`]: BatchNorm folded, weights quantized once, one image per
/// task). Equals [`evaluate_reference`] up to float rounding (an image whose two largest
/// logits are within rounding of each other may count differently). Ties in the logits go
/// to the lower class index.
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    norm: &Normalize,
    batch: usize,
) -> Result<EvalReport> {
    let _span = tracing::info_span!("evaluate", images = data.len()).entered();
    let t0 = Instant::now();
    let net = EvalNet::compile(model)?;
    let k = net.classes();
    let mut correct = 0usize;
    for b in BatchIter::sequential(data, batch, norm.clone()) {
        let logits = net.logits(&b.x, b.n)?;
        for (row, &y) in logits.chunks(k.max(1)).zip(&b.y) {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |m, (j, &v)| if v > m.1 { (j, v) } else { m },
                );
            correct += usize::from(best.0 as u32 == y);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = data.len();
    Ok(EvalReport {
        top1: 100.0 * correct as f64 / n.max(1) as f64,
        n,
        images_per_s: n as f64 / secs.max(1e-9),
    })
}

/// The slow reference of [`evaluate`]: [`Model::forward`] in evaluation mode on candle
/// tensors, batch by batch. Labels under masked protocols (written before issue 14) use it,
/// so they reproduce bit for bit.
pub fn evaluate_reference(
    model: &Model,
    data: &Dataset,
    norm: &Normalize,
    batch: usize,
) -> Result<EvalReport> {
    let _span = tracing::info_span!("evaluate_reference", images = data.len()).entered();
    let t0 = Instant::now();
    let mut correct = 0usize;
    for b in BatchIter::sequential(data, batch, norm.clone()) {
        let (x, y) = batch_tensors(b, model)?;
        let pred = model.forward(&x, false)?.argmax(1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = data.len();
    Ok(EvalReport {
        top1: 100.0 * correct as f64 / n.max(1) as f64,
        n,
        images_per_s: n as f64 / secs.max(1e-9),
    })
}

/// `k` batches of `data` for calibration / BN re-estimation (shuffled with `seed`, not
/// augmented), as input tensors.
pub fn sample_batches(
    model: &Model,
    data: &Dataset,
    norm: &Normalize,
    k: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<Tensor>> {
    BatchIter::shuffled(data, batch, norm.clone(), None, seed, 0, false)
        .take(k)
        .map(|b| batch_tensors(b, model).map(|(x, _)| x))
        .collect()
}

/// Default global gradient-norm clip of [`finetune_policy`]: pruning and low-bit quantization
/// can make the first fine-tuning gradients very large.
pub const QAT_CLIP_NORM: f64 = 5.0;

/// Quantization-aware fine-tuning of a policy (docs/method.md §3): apply the policy (filter-L2
/// channel choice, fake quantization), with `cfg.network` slim replace `model` by its
/// physically pruned version ([`Model::slim`]), re-estimate BatchNorm statistics and
/// calibrate the activation ranges on training batches, then train (weights and α; with
/// [`WeightQuant::Lsq`] also the weight steps, folded into the weights at the end) for
/// `cfg`, with the gradient norm clipped to [`QAT_CLIP_NORM`] unless `cfg.clip_norm` says
/// otherwise. The slimmed model computes what the masked one does up to float rounding
/// (calibration and the α gradient scale use the masked model's full-width statistics).
pub fn finetune_policy(
    model: &mut Model,
    space: &SearchSpace,
    policy: &Policy,
    train_data: &Dataset,
    norm: &Normalize,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<TrainReport> {
    let _span = tracing::info_span!("fine-tune", seed = cfg.seed).entered();
    model.apply_policy(space, policy)?;
    if cfg.network == FinetuneNetwork::Slim {
        *model = model.slim()?;
    }
    prepare_quantized(model, train_data, norm, cfg.seed)?;
    tracing::debug!("policy applied, BatchNorm re-estimated, activation ranges calibrated");
    let mut c = cfg.clone();
    c.train_alpha = true;
    if c.clip_norm.is_none() {
        c.clip_norm = Some(QAT_CLIP_NORM);
    }
    if cfg.weight_quant == WeightQuant::Lsq {
        model.init_weight_steps()?;
    }
    let report = train(model, train_data, norm, &c, on_step);
    // Folded on error too: the model never leaves with steps it would not save.
    model.fold_weight_steps()?;
    report
}

/// Batches of [`CALIBRATION_BATCH`] training images that [`prepare_quantized`] re-estimates
/// BatchNorm and calibrates activation ranges on. 4 × 128 = 512 images: the label's fine-tune
/// (≥ 25 steps with BatchNorm momentum 0.1) replaces the running statistics and trains α
/// anyway, so more images only cost time (8 batches took 4.5 s of a 17 s ResNet-20 label;
/// docs/benchmarks.md, "Label speed").
pub const CALIBRATION_BATCHES: usize = 4;
/// Images per calibration batch ([`CALIBRATION_BATCHES`]).
pub const CALIBRATION_BATCH: usize = 128;

/// Activation-range calibration, BatchNorm re-estimation after pruning (activations
/// fake-quantized with the first calibration's ranges), then calibration again on the
/// re-estimated network, all on the same [`CALIBRATION_BATCHES`] batches of
/// [`CALIBRATION_BATCH`] training images drawn with `seed` (docs/method.md §3).
pub fn prepare_quantized(
    model: &Model,
    train_data: &Dataset,
    norm: &Normalize,
    seed: u64,
) -> Result<()> {
    let batches = sample_batches(
        model,
        train_data,
        norm,
        CALIBRATION_BATCHES,
        CALIBRATION_BATCH,
        seed ^ 0xCA11B,
    )?;
    // BN statistics of the pruned network (activations unquantized: α not set yet).
    let needs_calib = model.comp().iter().any(|c| c.abits.is_some());
    if needs_calib {
        model.calibrate(batches.iter())?;
    }
    model.reestimate_bn(batches.iter())?;
    if needs_calib {
        model.calibrate(batches.iter())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Plain-Rust reference of [`distill_loss`] in f64, and its gradient with respect to the
    /// student's logits: `T · (softmax(s/T) − softmax(t/T)) / N`.
    fn reference(s: &[f32], t: &[f32], c: usize, temp: f64) -> (f64, Vec<f64>) {
        let n = s.len() / c;
        let softmax = |v: &[f32]| -> Vec<f64> {
            let m = v.iter().map(|&x| x as f64 / temp).fold(f64::MIN, f64::max);
            let e: Vec<f64> = v.iter().map(|&x| (x as f64 / temp - m).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let (mut loss, mut grad) = (0.0, vec![0.0; s.len()]);
        for i in 0..n {
            let (ps, pt) = (softmax(&s[i * c..][..c]), softmax(&t[i * c..][..c]));
            for j in 0..c {
                loss += pt[j] * (pt[j].ln() - ps[j].ln());
                grad[i * c + j] = temp * (ps[j] - pt[j]) / n as f64;
            }
        }
        (loss * temp * temp / n as f64, grad)
    }

    #[test]
    fn weight_quant_names_round_trip() {
        for q in [WeightQuant::Max, WeightQuant::Lsq] {
            assert_eq!(q.as_str().parse::<WeightQuant>().unwrap(), q);
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.as_str())
            );
        }
        assert_eq!(WeightQuant::default(), WeightQuant::Max);
        let e = "LSQ".parse::<WeightQuant>().unwrap_err().to_string();
        assert!(e.contains("\"LSQ\"") && e.contains("\"lsq\""), "{e}");
    }

    #[test]
    fn distill_loss_matches_the_reference_value_and_gradient() {
        let (n, c) = (5, 7);
        let s: Vec<f32> = (0..n * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let t: Vec<f32> = (0..n * c)
            .map(|i| ((i * 53 % 29) as f32 - 14.0) / 4.0)
            .collect();
        for temp in [1.0f32, 2.5] {
            let sv = Var::from_vec(s.clone(), (n, c), &Device::Cpu).unwrap();
            let tt = Tensor::from_vec(t.clone(), (n, c), &Device::Cpu).unwrap();
            let loss = distill_loss(sv.as_tensor(), &tt, temp).unwrap();
            let (want, want_grad) = reference(&s, &t, c, temp as f64);
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
            let g = loss.backward().unwrap();
            let gs: Vec<f32> = g
                .get(&sv)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in gs.iter().zip(&want_grad) {
                assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        // Zero when the student already matches the teacher; no gradient reaches the teacher.
        let tt = Tensor::from_vec(t.clone(), (n, c), &Device::Cpu).unwrap();
        let same = distill_loss(&tt, &tt, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(same.abs() < 1e-6, "{same}");
        let tv = Var::from_vec(t, (n, c), &Device::Cpu).unwrap();
        let sv = Var::from_vec(s, (n, c), &Device::Cpu).unwrap();
        let g = distill_loss(sv.as_tensor(), tv.as_tensor(), 1.0)
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&tv).is_none(), "the teacher's logits got a gradient");
    }
}
