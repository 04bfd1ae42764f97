//! The ensemble predictor of docs/method.md §4: M small MLPs on standardised inputs and targets,
//! each trained with AdamW on its own bootstrap resample, early-stopped on its own held-out
//! slice, with its own seed; μ(x) = mean of the members, σ(x) = their standard deviation.
//! Each member's output goes through the output map of [`Output`] (by default onto
//! `[0, 100]`), and every prediction records whether it extrapolates ([`Extrapolation`]).

use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Samples, check_row};
use crate::error::{Error, Result};
use crate::features::{expand, noise_columns, noise_grad, noise_power};
use crate::mlp::{AdamW, Mlp, Workspace};
use crate::output::{Extrapolation, Output, TrainingRange};

/// Training settings. [`Config::default`] is the one set of defaults used for every dataset
/// (chosen for robustness on a few hundred noisy labels, not tuned to one file):
///
/// - **16 members**: ensembling is the most reliable variance reduction for small noisy data,
///   and σ(x) drives active sampling (docs/method.md §5); a standard deviation estimated from M
///   members has relative error ≈ 1/√(2M), so 16 members give ≈ 18% where 8 give 25%.
/// - **Two hidden layers of 32 SiLU units**: a few thousand weights for tens of inputs and
///   hundreds of samples; smooth, so ∇ₓμ is continuous for the barrier search (docs/method.md §6).
/// - **AdamW, lr 3e-3, batch 32, decoupled weight decay 0.3** (each step shrinks weights by
///   lr·λ ≈ 1e-3): strong shrinkage toward small weights, the classic remedy for small noisy
///   regression sets; accuracy labels carry fine-tuning noise of a few tenths of a point.
/// - **Early stopping** on a 20% held-out slice per member (a different slice per member, so
///   the ensemble as a whole learns from every sample), patience 50 epochs, at most 1000
///   epochs; the best-validation weights are kept.
/// - **Bootstrap**: each member trains on a resample (with replacement) of its other 80%,
///   which decorrelates the members and makes σ(x) more informative.
/// - **Noise inputs** ([`Config::noise_features`]): each bit-width column `b` also enters as
///   its quantization-noise power `2^(−2b)` (docs/method.md §4, "Noise features"), in which
///   accuracy is close to additive; on every labelled set we have this lifts Kendall's τ by
///   0.02–0.2 (docs/benchmarks.md, "seer-predictor").
/// - **Output onto `[0, 100]`** ([`Output::PERCENT`]): each member's output passes through a
///   logistic map, so no prediction leaves the range of accuracy in percent; the loss is still
///   the squared error in points (docs/method.md §4, "Bounded output").
///
/// Sensitivity (checked on the one real data set we have, so read it as a robustness check,
/// not a tuning result): weight decay anywhere in 0.1–1 gives the same quality within noise,
/// 0.01 is clearly worse (under-regularised); 8 vs 16 members differ by < 0.005 in τ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Number of ensemble members M (≥ 1).
    pub members: usize,
    /// Hidden layer widths (each ≥ 1; at least one layer).
    pub hidden: Vec<usize>,
    /// Maximum training epochs per member (≥ 1).
    pub max_epochs: usize,
    /// Minibatch size (≥ 1).
    pub batch_size: usize,
    /// Adam learning rate (> 0).
    pub learning_rate: f64,
    /// Decoupled weight decay λ (≥ 0): each step multiplies weights by (1 − lr·λ).
    pub weight_decay: f64,
    /// Stop after this many epochs without a new best validation loss (≥ 1).
    pub patience: usize,
    /// Fraction of the training samples each member holds out for early stopping, in (0, 0.5].
    pub val_frac: f64,
    /// Train each member on a bootstrap resample of its non-held-out samples.
    pub bootstrap: bool,
    /// Seed of every random choice (member `m` uses ChaCha8 stream `m` of this seed).
    pub seed: u64,
    /// The output map ([`Output::PERCENT`] by default). A configuration stored without this
    /// field (format-1 predictor files) reads as [`Output::Linear`], as those were trained.
    #[serde(default = "Output::unbounded")]
    pub output: Output,
    /// Each member adds a linear term of its inputs to the MLP's output (a linear model with
    /// an MLP on top, trained jointly; the weight decay applies to it as ridge's penalty).
    /// A configuration stored without this field reads as `false`, as those were trained.
    #[serde(default)]
    pub skip: bool,
    /// Every bit-width column (named `bits_<i>`, `wbits_<i>`, `abits_<i>` or `<unit>.wbits`, ...,
    /// with values in `[1, 32]` in every training row) also enters the members as its
    /// quantization-noise power `2^(−2b)` (docs/method.md §4, "Noise features"). Predictions
    /// and gradients still take the raw columns. A configuration stored without this field
    /// reads as `false`, as those were trained.
    #[serde(default)]
    pub noise_features: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            members: 16,
            hidden: vec![32, 32],
            max_epochs: 1000,
            batch_size: 32,
            learning_rate: 3e-3,
            weight_decay: 0.3,
            patience: 50,
            val_frac: 0.2,
            bootstrap: true,
            seed: 0,
            output: Output::PERCENT,
            skip: false,
            noise_features: true,
        }
    }
}

impl Config {
    /// Checks every field; [`Error::Config`] names the first bad one and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.members == 0 {
            return bad("members must be ≥ 1, got 0".into());
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad(format!(
                "hidden must be a non-empty list of widths ≥ 1, got {:?}",
                self.hidden
            ));
        }
        if self.max_epochs == 0 || self.batch_size == 0 || self.patience == 0 {
            return bad(format!(
                "max_epochs, batch_size and patience must be ≥ 1, got {}, {}, {}",
                self.max_epochs, self.batch_size, self.patience
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning_rate must be finite and > 0, got {}",
                self.learning_rate
            ));
        }
        if !(self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && self.learning_rate * self.weight_decay < 1.0)
        {
            return bad(format!(
                "weight_decay must be ≥ 0 with lr·λ < 1, got {}",
                self.weight_decay
            ));
        }
        if !(self.val_frac > 0.0 && self.val_frac <= 0.5) {
            return bad(format!(
                "val_frac must be in (0, 0.5], got {}",
                self.val_frac
            ));
        }
        self.output.validate()
    }
}

/// Mean and standard deviation used to standardise one quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Scaler {
    pub mean: Vec<f64>,
    /// Standard deviation; a constant column gets 1 so it maps to 0 without dividing by 0.
    pub std: Vec<f64>,
}

impl Scaler {
    fn fit<'a>(cols: usize, rows: impl Iterator<Item = &'a [f64]> + Clone) -> Self {
        let n = rows.clone().count() as f64;
        let mut mean = vec![0.0; cols];
        for r in rows.clone() {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; cols];
        for r in rows {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        let std = var
            .into_iter()
            .map(|s| (s / n).sqrt())
            .map(|s| if s > 1e-12 { s } else { 1.0 })
            .collect();
        Self { mean, std }
    }
}

/// Mean prediction and ensemble standard deviation per input row (accuracy units, e.g. %),
/// and whether each row extrapolates.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// μ(x) per row; inside the bounds of [`Config::output`] when it has bounds.
    pub mean: Vec<f64>,
    /// σ(x) per row: standard deviation over members (divisor M; 0 for a single member).
    pub std: Vec<f64>,
    /// Per row, how it extrapolates beyond the training data ([`TrainingRange::judge`] of the
    /// row and its μ); `None` when the predictor has no recorded training range (format-1
    /// files), i.e. when it cannot tell.
    pub extrapolation: Option<Vec<Extrapolation>>,
}

impl Prediction {
    /// Whether row `i` is flagged as an extrapolation (false when it cannot be told, see
    /// [`Self::extrapolation`], or `i` is out of range).
    pub fn extrapolates(&self, i: usize) -> bool {
        self.extrapolation
            .as_ref()
            .and_then(|e| e.get(i))
            .is_some_and(Extrapolation::any)
    }
}

/// A trained ensemble (see [`fit`]). Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictor {
    pub(crate) config: Config,
    pub(crate) feature_names: Vec<String>,
    pub(crate) target_name: String,
    /// Raw columns that also enter as noise inputs ([`Config::noise_features`]), ascending;
    /// the members' input is the `d` raw columns followed by one noise input per entry.
    pub(crate) noise_cols: Vec<usize>,
    /// Standardisation of the members' input (`d + noise_cols.len()` columns).
    pub(crate) x_scaler: Scaler,
    /// The affine map of a member's output `o`: `u = y_mean + y_std·o`, in the space of the
    /// output map (target units for [`Output::Linear`], logits for [`Output::Logistic`]).
    pub(crate) y_mean: f64,
    pub(crate) y_std: f64,
    pub(crate) members: Vec<Mlp>,
    /// Best validation MSE (standardised units) and epochs trained, per member.
    pub(crate) member_stats: Vec<MemberStats>,
    /// The training rows' feature ranges and label range (`None`: a format-1 file).
    pub(crate) range: Option<TrainingRange>,
}

/// Diagnostics of one member's training run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemberStats {
    /// Epochs actually run (≤ `max_epochs`).
    pub epochs: usize,
    /// Epoch (1-based) of the best validation loss, whose weights were kept.
    pub best_epoch: usize,
    /// Best validation mean squared error in standardised target units.
    pub best_val_mse: f64,
}

/// How the members' outputs are scored in training: prediction `g(b + a·o)` against the
/// label, squared error divided by `scale²` (the labels' variance).
#[derive(Debug, Clone, Copy)]
struct Head {
    output: Output,
    a: f64,
    b: f64,
    scale: f64,
}

impl Head {
    /// Residual `(g(u) − y)/scale` and its derivative with respect to `o`.
    #[inline]
    fn residual(&self, o: f32, y: f32) -> (f64, f64) {
        let (f, df) = self.output.value_grad(self.b + self.a * f64::from(o));
        ((f - f64::from(y)) / self.scale, df * self.a / self.scale)
    }
}

/// Fits the ensemble of docs/method.md §4 to `samples` with `config`.
///
/// Members train in parallel (rayon) but each draws only from its own ChaCha8 stream and the
/// result is collected in member order, so the predictor is identical for any thread count.
/// The training rows' ranges are recorded for [`Prediction::extrapolation`].
/// Errors: [`Error::Config`] for a bad config or a label outside the bounds of
/// [`Config::output`]; [`Error::TooFewSamples`] for fewer than 4 samples.
pub fn fit(samples: &Samples, config: &Config) -> Result<Predictor> {
    config.validate()?;
    let n = samples.len();
    if n < 4 {
        return Err(Error::TooFewSamples(format!(
            "fit needs at least 4 samples, got {n}"
        )));
    }
    config.output.check_labels(samples.y())?;
    let noise_cols = if config.noise_features {
        noise_columns(samples.feature_names(), samples.x())
    } else {
        Vec::new()
    };
    let inputs: Vec<Vec<f64>> = samples.x().iter().map(|r| expand(r, &noise_cols)).collect();
    let d = samples.n_features() + noise_cols.len();
    let x_scaler = Scaler::fit(d, inputs.iter().map(|r| r.as_slice()));
    // The affine map is fitted in the output map's space; the loss is scaled by the labels' std.
    let link: Vec<f64> = samples
        .y()
        .iter()
        .map(|&y| config.output.link_target(y))
        .collect();
    let u_s = Scaler::fit(1, link.chunks(1));
    let y_s = Scaler::fit(1, samples.y().chunks(1));
    let head = Head {
        output: config.output,
        a: u_s.std[0],
        b: u_s.mean[0],
        scale: y_s.std[0],
    };
    let xs: Vec<f32> = standardise(&x_scaler, inputs.iter().map(|r| r.as_slice()));
    let ys: Vec<f32> = samples.y().iter().map(|&t| t as f32).collect();
    let mut sizes = vec![d];
    sizes.extend(&config.hidden);
    sizes.push(1);
    let trained: Vec<(Mlp, MemberStats)> = (0..config.members)
        .into_par_iter()
        .map(|m| train_member(m, &sizes, &xs, &ys, &head, config))
        .collect();
    let (members, member_stats) = trained.into_iter().unzip();
    Ok(Predictor {
        config: config.clone(),
        feature_names: samples.feature_names().to_vec(),
        target_name: samples.target_name().to_string(),
        noise_cols,
        x_scaler,
        y_mean: head.b,
        y_std: head.a,
        members,
        member_stats,
        range: Some(TrainingRange::of(samples.x(), samples.y())),
    })
}

fn standardise<'a>(s: &Scaler, rows: impl Iterator<Item = &'a [f64]>) -> Vec<f32> {
    let mut out = Vec::new();
    for r in rows {
        push_standardised(s, r.iter().copied(), &mut out);
    }
    out
}

/// Appends one row's `values` standardised by `s` (as f32) to `out`.
fn push_standardised(s: &Scaler, values: impl Iterator<Item = f64>, out: &mut Vec<f32>) {
    out.extend(
        values
            .zip(&s.mean)
            .zip(&s.std)
            .map(|((v, m), sd)| ((v - m) / sd) as f32),
    );
}

fn gather(xs: &[f32], ys: &[f32], d: usize, idx: &[usize], bx: &mut Vec<f32>, by: &mut Vec<f32>) {
    bx.clear();
    by.clear();
    for &i in idx {
        bx.extend_from_slice(&xs[i * d..(i + 1) * d]);
        by.push(ys[i]);
    }
}

/// Trains member `m`: its own stream, hold-out slice and bootstrap resample. `ys` are the
/// labels in target units; `head` scores the outputs against them.
fn train_member(
    m: usize,
    sizes: &[usize],
    xs: &[f32],
    ys: &[f32],
    head: &Head,
    c: &Config,
) -> (Mlp, MemberStats) {
    let d = sizes[0];
    let n = ys.len();
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    rng.set_stream(m as u64);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let n_val = ((c.val_frac * n as f64).round() as usize).clamp(1, n - 2);
    let (val, pool) = perm.split_at(n_val);
    let mut train: Vec<usize> = if c.bootstrap {
        (0..pool.len())
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect()
    } else {
        pool.to_vec()
    };
    let mut net = Mlp::new(sizes.to_vec(), c.skip, &mut rng);
    let mut opt = AdamW::new(
        net.params.len(),
        c.learning_rate as f32,
        c.weight_decay as f32,
        net.weight_ranges(),
    );
    let (mut vx, mut vy) = (Vec::new(), Vec::new());
    gather(xs, ys, d, val, &mut vx, &mut vy);
    let (mut bx, mut by) = (Vec::new(), Vec::new());
    let mut ws = Workspace::default();
    let mut grad = vec![0.0f32; net.params.len()];
    let mut d_out = Vec::new();
    let mut best = (f64::INFINITY, 0usize, net.params.clone());
    let mut epochs = 0;
    for epoch in 1..=c.max_epochs {
        epochs = epoch;
        train.shuffle(&mut rng);
        for batch in train.chunks(c.batch_size) {
            gather(xs, ys, d, batch, &mut bx, &mut by);
            let out = net.forward(&bx, &mut ws);
            let scale = 1.0 / batch.len() as f64;
            d_out.clear();
            d_out.extend(out.iter().zip(&by).map(|(&o, &t)| {
                let (r, dr) = head.residual(o, t);
                (r * dr * scale) as f32
            }));
            grad.iter_mut().for_each(|g| *g = 0.0);
            net.backward(&mut ws, &d_out, Some(&mut grad), None);
            opt.step(&mut net.params, &grad);
        }
        let out = net.forward(&vx, &mut ws);
        let mse = out
            .iter()
            .zip(&vy)
            .map(|(&o, &t)| head.residual(o, t).0.powi(2))
            .sum::<f64>()
            / vy.len() as f64;
        if mse < best.0 {
            best = (mse, epoch, net.params.clone());
        } else if epoch - best.1 >= c.patience {
            break;
        }
    }
    net.params = best.2;
    (
        net,
        MemberStats {
            epochs,
            best_epoch: best.1,
            best_val_mse: best.0,
        },
    )
}

/// Rows as the members' standardised input (`[B, input_width]`): `&[Vec<f64>]`, `&[&[f64]]`, ...
fn rows_to_f32<R: AsRef<[f64]>>(p: &Predictor, rows: &[R]) -> Result<Vec<f32>> {
    let names = &p.feature_names;
    let mut z = Vec::with_capacity(rows.len() * p.input_width());
    for (i, r) in rows.iter().enumerate() {
        let r = r.as_ref();
        check_row(r, names, ("input ", i), "the predictor expects")?;
        let noise = p.noise_cols.iter().map(|&j| noise_power(r[j]));
        push_standardised(&p.x_scaler, r.iter().copied().chain(noise), &mut z);
        // The raw values are finite, so only a noise input can overflow (even in f32).
        let tail = &z[z.len() - p.noise_cols.len()..];
        if let Some(k) = tail.iter().position(|x| !x.is_finite()) {
            let j = p.noise_cols[k];
            return Err(Error::NonFinite(format!(
                "input row {i}, feature {:?}: bit-width {} has no finite noise power 2^(-2b)",
                names[j], r[j]
            )));
        }
    }
    Ok(z)
}

/// Rows per parallel chunk in batched prediction (small batches stay on the calling thread).
const CHUNK: usize = 256;

impl Predictor {
    /// Number of input features `d` (the raw columns; see [`Self::noise_columns`]).
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The raw columns that also enter the members as their quantization-noise power
    /// ([`Config::noise_features`]), ascending; empty when the option is off.
    pub fn noise_columns(&self) -> &[usize] {
        &self.noise_cols
    }

    /// Width of the members' input: `d` raw columns plus one per noise column.
    pub(crate) fn input_width(&self) -> usize {
        self.x_scaler.mean.len()
    }

    /// Input feature names (length `d`), as in the training samples.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The target column the predictor was trained on.
    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// The training configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Per-member training diagnostics.
    pub fn member_stats(&self) -> &[MemberStats] {
        &self.member_stats
    }

    /// The output map of the members ([`Config::output`]).
    pub fn output(&self) -> Output {
        self.config.output
    }

    /// The training rows' per-feature ranges and label range, `None` for a predictor read from
    /// a format-1 file (which did not record them).
    pub fn training_range(&self) -> Option<&TrainingRange> {
        self.range.as_ref()
    }

    /// Names of the features of `row` outside the training range (empty when inside, or when
    /// the range is unknown). Errors: as [`Self::predict`].
    pub fn features_outside(&self, row: &[f64]) -> Result<Vec<String>> {
        rows_to_f32(self, &[row])?;
        Ok(self.range.as_ref().map_or_else(Vec::new, |r| {
            r.features_outside(row)
                .into_iter()
                .map(|j| self.feature_names[j].clone())
                .collect()
        }))
    }

    /// A member's prediction and its derivative with respect to the raw output `o`.
    #[inline]
    fn head(&self, o: f32) -> (f64, f64) {
        let (f, df) = self
            .config
            .output
            .value_grad(self.y_mean + self.y_std * f64::from(o));
        (f, df * self.y_std)
    }

    /// The extrapolation flags of `rows` with means `mean` (`None` without a training range).
    fn judge<R: AsRef<[f64]>>(&self, rows: &[R], mean: &[f64]) -> Option<Vec<Extrapolation>> {
        let r = self.range.as_ref()?;
        Some(
            rows.iter()
                .zip(mean)
                .map(|(x, &m)| r.judge(x.as_ref(), m))
                .collect(),
        )
    }

    /// Per-member outputs in target units, `[M][B]`, for standardised rows `z` (`[B, d]`).
    fn member_outputs(&self, z: &[f32]) -> Vec<Vec<f64>> {
        let d = self.input_width();
        let b = z.len() / d;
        let run = |chunk: &[f32]| -> Vec<Vec<f32>> {
            let mut ws = Workspace::default();
            self.members
                .iter()
                .map(|m| m.forward(chunk, &mut ws).to_vec())
                .collect()
        };
        let parts: Vec<Vec<Vec<f32>>> = if b <= CHUNK {
            vec![run(z)]
        } else {
            z.par_chunks(CHUNK * d).map(run).collect()
        };
        (0..self.members.len())
            .map(|m| {
                parts
                    .iter()
                    .flat_map(|p| p[m].iter())
                    .map(|&o| self.head(o).0)
                    .collect()
            })
            .collect()
    }

    /// Batched prediction: μ(x) and σ(x) for every row (docs/method.md §4), in target units,
    /// and whether each row extrapolates ([`Prediction::extrapolation`]).
    ///
    /// `rows`: B rows of `d` raw (unstandardised) features. Errors: [`Error::Shape`] for a row
    /// of the wrong length, [`Error::NonFinite`] for NaN/inf. Deterministic; large batches run
    /// in parallel chunks of 256 rows.
    pub fn predict<R: AsRef<[f64]>>(&self, rows: &[R]) -> Result<Prediction> {
        let z = rows_to_f32(self, rows)?;
        let outs = self.member_outputs(&z);
        let (mean, std) = mean_std(&outs, rows.len());
        Ok(Prediction {
            extrapolation: self.judge(rows, &mean),
            mean,
            std,
        })
    }

    /// [`Self::predict`] on a row-major matrix `x` of shape `[B, d]` (`x.len()` a multiple of `d`).
    pub fn predict_matrix(&self, x: &[f64]) -> Result<Prediction> {
        self.predict(&self.matrix_rows(x)?)
    }

    fn matrix_rows<'a>(&self, x: &'a [f64]) -> Result<Vec<&'a [f64]>> {
        let d = self.n_features();
        if !x.len().is_multiple_of(d) {
            return Err(Error::Shape(format!(
                "matrix of {} values is not a multiple of d = {d}",
                x.len()
            )));
        }
        Ok(x.chunks(d).collect())
    }

    /// Batched analytic gradient ∇ₓμ(x) (in target units per raw feature unit), one `d`-vector
    /// per row: the mean over members of the back-propagated input gradient, chained through
    /// the input standardisation and the output map. Same errors as [`Self::predict`].
    pub fn grad<R: AsRef<[f64]>>(&self, rows: &[R]) -> Result<Vec<Vec<f64>>> {
        Ok(self.predict_grad(rows)?.1)
    }

    /// μ, σ and ∇ₓμ together (one forward pass per member), for gradient-based search.
    pub fn predict_grad<R: AsRef<[f64]>>(&self, rows: &[R]) -> Result<(Prediction, Vec<Vec<f64>>)> {
        let (pred, _, grads) = self.predict_lcb_grad(rows, 0.0)?;
        Ok((pred, grads))
    }

    /// The pessimistic score s(x) = μ(x) − κ·σ(x) (a lower confidence bound) and its analytic
    /// gradient ∇ₓs, per row, in target units (per raw feature unit for the gradient).
    ///
    /// With per-member predictions f_m, ∇σ = (1 / (M σ)) Σ_m (f_m − μ) ∇f_m (σ with divisor M);
    /// where σ = 0 (one member, or all members agree) the gradient of σ is taken as 0. Each
    /// ∇f_m is the member's back-propagated input gradient times the derivative of the output
    /// map, so both stay exact with a bounded output.
    /// Maximising s instead of μ keeps a search near policies the ensemble agrees on: an
    /// ensemble fitted on few labels extrapolates optimistically far from them (docs/method.md §6,
    /// our choice; κ = 0 gives [`Self::predict_grad`]'s μ and ∇μ). Returns (μ, σ, s) per row and
    /// ∇s per row. Errors: as [`Self::predict`], and [`Error::Config`] for κ negative or not finite.
    pub fn predict_lcb_grad<R: AsRef<[f64]>>(
        &self,
        rows: &[R],
        kappa: f64,
    ) -> Result<(Prediction, Vec<f64>, Vec<Vec<f64>>)> {
        if !(kappa.is_finite() && kappa >= 0.0) {
            return Err(Error::Config(format!(
                "kappa must be finite and ≥ 0, got {kappa}"
            )));
        }
        let z = rows_to_f32(self, rows)?;
        let d = self.input_width();
        let d_raw = self.n_features();
        let b = rows.len();
        let m_count = self.members.len();
        // Per chunk: member predictions [M][rb] (target units) and member input gradients
        // [M][rb*d] (standardised inputs, target units).
        type Part = (Vec<Vec<f64>>, Vec<Vec<f32>>);
        let run = |chunk: &[f32]| -> Part {
            let rb = chunk.len() / d;
            let mut ws = Workspace::default();
            let mut outs = Vec::with_capacity(m_count);
            let mut grads = Vec::with_capacity(m_count);
            let mut d_out = Vec::with_capacity(rb);
            for m in &self.members {
                let mut f = Vec::with_capacity(rb);
                d_out.clear();
                for &o in m.forward(chunk, &mut ws) {
                    let (v, dv) = self.head(o);
                    f.push(v);
                    d_out.push(dv as f32);
                }
                outs.push(f);
                let mut dx = vec![0.0f32; chunk.len()];
                m.backward(&mut ws, &d_out, None, Some(&mut dx));
                grads.push(dx);
            }
            (outs, grads)
        };
        let parts: Vec<Part> = if b <= CHUNK {
            vec![run(&z)]
        } else {
            z.par_chunks(CHUNK * d).map(run).collect()
        };
        let mut mean = Vec::with_capacity(b);
        let mut std = Vec::with_capacity(b);
        let mut score = Vec::with_capacity(b);
        let mut grads = Vec::with_capacity(b);
        let mf = m_count as f64;
        let mut row = 0;
        for (outs, mgrads) in &parts {
            let rb = outs[0].len();
            for r in 0..rb {
                let raw = rows[row].as_ref();
                row += 1;
                let mu = outs.iter().map(|o| o[r]).sum::<f64>() / mf;
                let sd = (outs.iter().map(|o| (o[r] - mu) * (o[r] - mu)).sum::<f64>() / mf).sqrt();
                let mut g = vec![0.0f64; d];
                for (o, gm) in outs.iter().zip(mgrads) {
                    // d s / d f_m = 1/M − κ (f_m − μ) / (M σ).
                    let w = if sd > 1e-12 {
                        1.0 / mf - kappa * (o[r] - mu) / (mf * sd)
                    } else {
                        1.0 / mf
                    };
                    for (gj, &v) in g.iter_mut().zip(&gm[r * d..(r + 1) * d]) {
                        *gj += w * f64::from(v);
                    }
                }
                for (gj, sj) in g.iter_mut().zip(&self.x_scaler.std) {
                    *gj /= sj;
                }
                // Chain rule through the noise inputs onto their raw bit-width columns.
                for (k, &j) in self.noise_cols.iter().enumerate() {
                    g[j] += g[d_raw + k] * noise_grad(raw[j]);
                }
                g.truncate(d_raw);
                mean.push(mu);
                std.push(sd);
                score.push(mu - kappa * sd);
                grads.push(g);
            }
        }
        let extrapolation = self.judge(rows, &mean);
        Ok((
            Prediction {
                mean,
                std,
                extrapolation,
            },
            score,
            grads,
        ))
    }

    /// The counterfactual sensitivity score of docs/method.md §5 for one policy encoding `x`:
    /// u(x) = mean over neighbours c of (μ(c) − μ(x))², where `neighbours` are the encodings
    /// of the one-step-cheaper policies (computed by the caller from its search space).
    /// No neighbours (the cheapest policy) gives 0. Units: target units squared.
    pub fn counterfactual_score<R: AsRef<[f64]>>(
        &self,
        x: &[f64],
        neighbours: &[R],
    ) -> Result<f64> {
        Ok(self.counterfactual_scores(&[x], |_, _| {
            neighbours.iter().map(|c| c.as_ref().to_vec()).collect()
        })?[0])
    }

    /// Batched [`Self::counterfactual_score`]: `neighbours(i, x_i)` returns the one-step-cheaper
    /// neighbours of row `i`; all rows and neighbours are predicted in one batch.
    pub fn counterfactual_scores<R, F>(&self, rows: &[R], neighbours: F) -> Result<Vec<f64>>
    where
        R: AsRef<[f64]>,
        F: Fn(usize, &[f64]) -> Vec<Vec<f64>>,
    {
        let mut all: Vec<Vec<f64>> = rows.iter().map(|r| r.as_ref().to_vec()).collect();
        let mut spans = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let nb = neighbours(i, r.as_ref());
            spans.push(all.len()..all.len() + nb.len());
            all.extend(nb);
        }
        let mu = self.predict(&all)?.mean;
        Ok(spans
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                if s.is_empty() {
                    0.0
                } else {
                    let k = s.len() as f64;
                    mu[s].iter().map(|c| (c - mu[i]).powi(2)).sum::<f64>() / k
                }
            })
            .collect())
    }
}

/// Mean and standard deviation (divisor M) over members of `[M][B]` outputs.
fn mean_std(outs: &[Vec<f64>], b: usize) -> (Vec<f64>, Vec<f64>) {
    let m = outs.len() as f64;
    let mut mean = vec![0.0; b];
    for o in outs {
        mean.iter_mut().zip(o).for_each(|(a, v)| *a += v);
    }
    mean.iter_mut().for_each(|a| *a /= m);
    let mut var = vec![0.0; b];
    for o in outs {
        var.iter_mut()
            .zip(o)
            .zip(&mean)
            .for_each(|((s, v), mu)| *s += (v - mu) * (v - mu));
    }
    let std = var.into_iter().map(|s| (s / m).sqrt()).collect();
    (mean, std)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A smooth nonlinear target on 4 features in [0, 1] (pure function of the seed).
    pub(crate) fn synthetic(n: usize, seed: u64) -> Samples {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..4).map(|_| rng.random_range(0.0..1.0)).collect())
            .collect();
        let y = x
            .iter()
            .map(|r| 80.0 + 3.0 * r[0] * r[1] + 2.0 * (3.0 * r[2]).sin() - r[3])
            .collect();
        Samples::new(
            (0..4).map(|j| format!("f{j}")).collect(),
            "top1".into(),
            x,
            y,
        )
        .unwrap()
    }

    pub(crate) fn small_with_epochs(max_epochs: usize) -> Config {
        Config {
            max_epochs,
            ..small()
        }
    }

    pub(crate) fn small() -> Config {
        Config {
            members: 3,
            hidden: vec![16, 16],
            max_epochs: 150,
            patience: 30,
            ..Config::default()
        }
    }

    /// `synthetic(n, seed)` and the [`small`] ensemble fitted to it for `max_epochs`.
    pub(crate) fn fitted(n: usize, seed: u64, max_epochs: usize) -> (Samples, Predictor) {
        let s = synthetic(n, seed);
        let p = fit(
            &s,
            &Config {
                max_epochs,
                ..small()
            },
        )
        .unwrap();
        (s, p)
    }

    /// Checks `grad` (one row per row of `rows`) against central differences of `f` with a
    /// relative tolerance `tol` (f32 internals carry ~1e-4 absolute noise).
    fn check_fd(rows: &[Vec<f64>], grad: &[Vec<f64>], tol: f64, f: impl Fn(Vec<f64>) -> f64) {
        let h = 1e-3;
        for (r, gr) in rows.iter().zip(grad) {
            for j in 0..r.len() {
                let (mut a, mut b) = (r.clone(), r.clone());
                a[j] += h;
                b[j] -= h;
                let fd = (f(a) - f(b)) / (2.0 * h);
                assert!(
                    (fd - gr[j]).abs() < tol * (1.0 + fd.abs()),
                    "feature {j}: fd {fd} vs analytic {}",
                    gr[j]
                );
            }
        }
    }

    #[test]
    fn learns_a_nonlinear_function() {
        let s = synthetic(300, 1);
        let test = synthetic(100, 2);
        let p = fit(&s, &small()).unwrap();
        let pred = p.predict(test.x()).unwrap();
        let r = crate::metrics::rmse(&pred.mean, test.y()).unwrap();
        let ridge = crate::Ridge::fit_cv(&s, 0).unwrap();
        let rr = crate::metrics::rmse(&ridge.predict(test.x()).unwrap(), test.y()).unwrap();
        assert!(
            r < 0.5 * rr,
            "MLP RMSE {r} should beat ridge {rr} clearly on a nonlinear target"
        );
        assert!(pred.std.iter().all(|s| s.is_finite() && *s >= 0.0));
    }

    #[test]
    fn same_result_for_any_thread_count() {
        let s = synthetic(120, 3);
        let cfg = small_with_epochs(40);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fit(&s, &cfg).unwrap())
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a, b);
        // Large batches run in parallel chunks: also identical.
        let rows: Vec<Vec<f64>> = (0..700).map(|i| s.x()[i % s.len()].clone()).collect();
        let pa = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| a.predict(&rows).unwrap());
        let pb = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| a.predict(&rows).unwrap());
        assert_eq!(pa, pb);
        // Different seed, different model.
        assert_ne!(
            fit(
                &s,
                &Config {
                    seed: 9,
                    ..cfg.clone()
                }
            )
            .unwrap(),
            a
        );
    }

    #[test]
    fn grad_matches_finite_differences() {
        let (s, p) = fitted(120, 4, 60);
        let rows: Vec<Vec<f64>> = s.x()[..5].to_vec();
        let g = p.grad(&rows).unwrap();
        check_fd(&rows, &g, 2e-2, |x| p.predict(&[x]).unwrap().mean[0]);
        let (pred, g2) = p.predict_grad(&rows).unwrap();
        assert_eq!(g, g2);
        assert_eq!(pred, p.predict(&rows).unwrap());
    }

    #[test]
    fn lcb_gradient_matches_finite_differences() {
        let (s, p) = fitted(120, 4, 60);
        let rows: Vec<Vec<f64>> = s.x()[..4].to_vec();
        let kappa = 1.5;
        let (pred, score, g) = p.predict_lcb_grad(&rows, kappa).unwrap();
        let plain = p.predict(&rows).unwrap();
        for (r, sc) in score.iter().enumerate() {
            assert!((pred.mean[r] - plain.mean[r]).abs() < 1e-9);
            assert!((pred.std[r] - plain.std[r]).abs() < 1e-9);
            assert!((sc - (plain.mean[r] - kappa * plain.std[r])).abs() < 1e-9);
        }
        check_fd(&rows, &g, 3e-2, |x| {
            let q = p.predict(&[x]).unwrap();
            q.mean[0] - kappa * q.std[0]
        });
        // κ = 0 is the plain mean gradient.
        let (_, s0, g0) = p.predict_lcb_grad(&rows, 0.0).unwrap();
        let gm = p.grad(&rows).unwrap();
        for r in 0..rows.len() {
            assert!((s0[r] - plain.mean[r]).abs() < 1e-9);
            for j in 0..gm[r].len() {
                assert!((g0[r][j] - gm[r][j]).abs() < 1e-6 * (1.0 + gm[r][j].abs()));
            }
        }
        assert!(p.predict_lcb_grad(&rows, -1.0).is_err());
        assert!(p.predict_lcb_grad(&rows, f64::NAN).is_err());
    }

    /// Policies of two units (`prune_0`, `wbits_0`, `abits_0`, `prune_1`, `bits_1`; bits in
    /// 2..=8) with an accuracy additive in the quantization-noise powers 2^(−2b) and linear in
    /// the pruning ratios (pure function of the seed).
    pub(crate) fn bit_width_samples(n: usize, seed: u64) -> Samples {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let mut bits = || f64::from(rng.random_range(2u8..=8));
                let (w0, a0, b1) = (bits(), bits(), bits());
                let mut prune = || 0.25 * f64::from(rng.random_range(0u8..4));
                vec![prune(), w0, a0, prune(), b1]
            })
            .collect();
        let y = x
            .iter()
            .map(|r| {
                let q = |b: f64| (-2.0 * b).exp2();
                92.0 - 300.0 * q(r[1]) - 200.0 * q(r[2]) - 400.0 * q(r[4]) - 3.0 * r[0] - 2.0 * r[3]
            })
            .collect();
        let names = ["prune_0", "wbits_0", "abits_0", "prune_1", "bits_1"];
        Samples::new(names.map(String::from).into(), "top1".into(), x, y).unwrap()
    }

    #[test]
    fn noise_inputs_fit_bit_widths_better_with_exact_gradients() {
        let train = bit_width_samples(80, 21);
        let test = bit_width_samples(200, 22);
        let with = fit(&train, &small()).unwrap();
        assert_eq!(with.noise_columns(), &[1, 2, 4]);
        assert_eq!(with.n_features(), 5);
        let without = fit(
            &train,
            &Config {
                noise_features: false,
                ..small()
            },
        )
        .unwrap();
        assert!(without.noise_columns().is_empty());
        let score = |p: &Predictor| {
            let m = p.predict(test.x()).unwrap().mean;
            (
                crate::metrics::rmse(&m, test.y()).unwrap(),
                crate::metrics::kendall_tau_b(&m, test.y()).unwrap(),
            )
        };
        let ((rw, tw), (ro, to)) = (score(&with), score(&without));
        assert!(
            rw < 0.7 * ro && tw > to,
            "noise inputs: RMSE {rw} τ {tw}; without: RMSE {ro} τ {to}"
        );
        // ∇μ is with respect to the raw bit-widths (chain rule through 2^(−2b)).
        let rows: Vec<Vec<f64>> = test.x()[..4].to_vec();
        let g = with.grad(&rows).unwrap();
        assert!(g.iter().all(|r| r.len() == 5));
        check_fd(&rows, &g, 2e-2, |x| with.predict(&[x]).unwrap().mean[0]);
        let kappa = 1.0;
        let (_, _, gl) = with.predict_lcb_grad(&rows, kappa).unwrap();
        check_fd(&rows, &gl, 3e-2, |x| {
            let q = with.predict(&[x]).unwrap();
            q.mean[0] - kappa * q.std[0]
        });
        // A bit-width whose noise power overflows is a clear error, not an inf or NaN.
        let e = with
            .predict(&[vec![0.0, -600.0, 4.0, 0.0, 4.0]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("wbits_0") && e.contains("-600"), "{e}");
    }

    #[test]
    fn columns_named_bits_but_not_bit_widths_get_no_noise_input() {
        let mut rows = bit_width_samples(40, 23).x().to_vec();
        rows[7][2] = 0.5; // abits_0 is no bit-width column now
        let y: Vec<f64> = (0..rows.len()).map(|i| 80.0 + i as f64 * 0.1).collect();
        let names = ["prune_0", "wbits_0", "abits_0", "prune_1", "bits_1"];
        let s = Samples::new(names.map(String::from).into(), "top1".into(), rows, y).unwrap();
        let p = fit(&s, &small_with_epochs(5)).unwrap();
        assert_eq!(p.noise_columns(), &[1, 4]);
    }

    #[test]
    fn counterfactual_is_mean_squared_change() {
        let (s, p) = fitted(60, 5, 20);
        let x = s.x()[0].clone();
        let nb = vec![s.x()[1].clone(), s.x()[2].clone()];
        let mu = p
            .predict(&[x.clone(), nb[0].clone(), nb[1].clone()])
            .unwrap()
            .mean;
        let want = ((mu[1] - mu[0]).powi(2) + (mu[2] - mu[0]).powi(2)) / 2.0;
        assert!((p.counterfactual_score(&x, &nb).unwrap() - want).abs() < 1e-12);
        assert_eq!(
            p.counterfactual_score(&x, &Vec::<Vec<f64>>::new()).unwrap(),
            0.0
        );
        let batch = p
            .counterfactual_scores(&[x.clone(), x.clone()], |i, _| {
                if i == 0 { nb.clone() } else { vec![] }
            })
            .unwrap();
        assert_eq!(batch.len(), 2);
        assert!((batch[0] - want).abs() < 1e-12 && batch[1] == 0.0);
    }

    /// Issue 13, case 4: labels up to 97.1% from policies with 2–5 bits; w8a8 (8 bits, no
    /// pruning) and a policy far beyond it. Six units, features `prune_u` in {0, 0.25, 0.5}
    /// and `bits_u` in {2, 3, 4, 5}; top-1 falls by 0.9 points per missing bit and 3 points per
    /// unit of pruning, shifted so that the best label is exactly 97.1.
    fn issue_13_case_4() -> (Samples, Vec<f64>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let units = 6;
        let x: Vec<Vec<f64>> = (0..160)
            .map(|_| {
                let mut r: Vec<f64> = (0..units)
                    .map(|_| [0.0, 0.25, 0.5][rng.random_range(0..3)])
                    .collect();
                r.extend((0..units).map(|_| [2.0, 3.0, 4.0, 5.0][rng.random_range(0..4)]));
                r
            })
            .collect();
        let pen: Vec<f64> = x
            .iter()
            .map(|r| {
                r[..units].iter().map(|p| 3.0 * p).sum::<f64>()
                    + r[units..].iter().map(|b| 0.9 * (5.0 - b)).sum::<f64>()
            })
            .collect();
        let best = pen.iter().copied().fold(f64::INFINITY, f64::min);
        let y = pen.iter().map(|p| 97.1 - (p - best)).collect();
        let mut names: Vec<String> = (0..units).map(|u| format!("prune_{u}")).collect();
        names.extend((0..units).map(|u| format!("bits_{u}")));
        let s = Samples::new(names, "top1".into(), x, y).unwrap();
        let w8a8 = [vec![0.0; units], vec![8.0; units]].concat();
        let far = [vec![0.0; units], vec![64.0; units]].concat();
        (s, w8a8, far)
    }

    #[test]
    fn issue_13_case_4_predictions_stay_in_range_and_are_flagged() {
        let (s, w8a8, far) = issue_13_case_4();
        let ymax = s.y().iter().copied().fold(f64::MIN, f64::max);
        assert!((ymax - 97.1).abs() < 1e-9, "{ymax}");
        let cfg = Config {
            max_epochs: 300,
            ..small()
        };
        // The unbounded map reproduces the report: w8a8 above 100%, the far policy far above.
        let linear = fit(
            &s,
            &Config {
                output: Output::Linear,
                ..cfg.clone()
            },
        )
        .unwrap();
        let ql = linear.predict(&[&w8a8, &far]).unwrap();
        assert!(ql.mean[0] > 100.0 && ql.mean[1] > 150.0, "{:?}", ql.mean);
        // The default (logistic onto [0, 100]): bounded, and both flagged.
        let p = fit(&s, &cfg).unwrap();
        let q = p.predict(&[&w8a8, &far]).unwrap();
        for r in 0..2 {
            assert!((0.0..=100.0).contains(&q.mean[r]), "{:?}", q.mean);
            assert!(q.std[r].is_finite() && q.std[r] >= 0.0);
            assert!(q.extrapolates(r));
        }
        let e = q.extrapolation.as_ref().unwrap();
        assert_eq!(e[0].features_outside, 6, "the six bits_u = 8");
        assert!(e[0].above_labels && e[1].above_labels, "{e:?}");
        assert_eq!(
            p.features_outside(&w8a8).unwrap(),
            (0..6).map(|u| format!("bits_{u}")).collect::<Vec<_>>()
        );
        // Inside the data: not flagged, and as good as the unbounded fit.
        let inside = p.predict(s.x()).unwrap();
        assert!((0..s.len()).all(|i| !inside.extrapolates(i)));
        let rl = crate::metrics::rmse(&linear.predict(s.x()).unwrap().mean, s.y()).unwrap();
        let rb = crate::metrics::rmse(&inside.mean, s.y()).unwrap();
        assert!(rb < 1.5 * rl + 0.05, "bounded RMSE {rb} vs unbounded {rl}");
        // The gradient stays useful at w8a8: finite, and more bits still help.
        let g = p.grad(&[&w8a8]).unwrap();
        assert!(g[0].iter().all(|v| v.is_finite()));
        assert!(g[0][6..].iter().sum::<f64>() > 0.0, "{:?}", g[0]);
    }

    #[test]
    fn bounded_output_refuses_labels_outside_and_linear_takes_any() {
        let s = synthetic(30, 8);
        let shifted = Samples::new(
            s.feature_names().to_vec(),
            "y".into(),
            s.x().to_vec(),
            s.y().iter().map(|v| v - 200.0).collect(),
        )
        .unwrap();
        let e = fit(&shifted, &small_with_epochs(5)).unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("outside the output range [0, 100]")),
            "{e}"
        );
        let cfg = Config {
            output: Output::Linear,
            ..small_with_epochs(5)
        };
        assert!(fit(&shifted, &cfg).unwrap().predict(s.x()).unwrap().mean[0] < 0.0);
        let bad = Config {
            output: Output::Logistic { lo: 5.0, hi: 5.0 },
            ..small_with_epochs(5)
        };
        assert!(matches!(fit(&s, &bad), Err(Error::Config(_))));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (s, p) = fitted(30, 6, 5);
        assert!(matches!(p.predict(&[vec![0.0; 3]]), Err(Error::Shape(_))));
        assert!(matches!(
            p.grad(&[vec![0.0, f64::NAN, 0.0, 0.0]]),
            Err(Error::NonFinite(_))
        ));
        assert!(matches!(p.predict_matrix(&[0.0; 7]), Err(Error::Shape(_))));
        assert_eq!(p.predict_matrix(&[0.5; 8]).unwrap().mean.len(), 2);
        assert!(matches!(
            fit(&s.subset(&[0, 1, 2]), &small()),
            Err(Error::TooFewSamples(_))
        ));
        for bad in [
            Config {
                members: 0,
                ..small()
            },
            Config {
                hidden: vec![],
                ..small()
            },
            Config {
                learning_rate: f64::NAN,
                ..small()
            },
            Config {
                val_frac: 0.0,
                ..small()
            },
        ] {
            assert!(matches!(fit(&s, &bad), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
