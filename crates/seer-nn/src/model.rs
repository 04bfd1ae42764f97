//! Quantizable CNNs built from a seer-policy [`NetworkSpec`] (ResNet-20/56, VGG-small,
//! LeNet-5, or any user spec): parameters, the compressed forward pass (channel masks, weight
//! and activation fake quantization per layer from a [`Policy`]), activation-range
//! calibration and physical channel pruning (docs/method.md §3, §7).
//!
//! Every layer of the spec is executed as written, so a model's layer list, shapes and MACs
//! are the spec's by construction (checked in tests from the real tensor shapes).
//!
//! **Masked vs. slimmed.** [`Model::apply_policy`] chooses the kept output channels of each
//! searchable unit by filter L2 norm (summed over the unit's layers, docs/method.md §3) and
//! simulates pruning by zeroing them: after the conv, again after a BatchNorm (whose shift
//! would revive them) and, with `residual_pruning = tied`, after each residual add (the
//! stream itself is pruned). Weights of input channels that are physically absent are also
//! zeroed *before* weight quantization, so per-channel scales equal those of the physically
//! pruned layer. [`Model::slim`] then removes the channels from convs, BatchNorms, residual
//! partners and next-layer inputs; its outputs equal the masked model's.
//!
//! **Grouped convs** follow seer-policy's channel flow (docs/network-spec.md, "Channel
//! flow"): a conv whose groups each read one input channel (depthwise, or with channel
//! multiplier `m`) keeps the `m` outputs of every kept input and loses a group per pruned
//! input; a grouped conv keeps its groups, each with as many inputs and outputs as the
//! others, because kept channels are chosen per block (`seer_policy::Unit::blocks`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seer_policy::{LayerKind, NetworkSpec, Policy, ResidualPruning, SearchSpace};
use serde::{Deserialize, Serialize};

use crate::data::batch::mix;
use crate::ops;
use crate::{Error, Result};

/// BatchNorm epsilon (PyTorch default).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum (PyTorch default).
pub const BN_MOMENTUM: f64 = 0.1;

/// Per-layer compression settings (weighted layers only; `None` = full precision).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerComp {
    /// Kept output channels (ascending original indices); `None` = all.
    pub keep: Option<Vec<usize>>,
    /// Weight bit-width (2..=8) or `None` for f32.
    pub wbits: Option<u32>,
    /// Bit-width of the activation entering the layer (2..=8) or `None`. Never applied to
    /// the image itself (8-bit pixels already).
    pub abits: Option<u32>,
    /// Slimmed models only: per input, the source channel of each channel this layer sees
    /// (`None` = zero). Used by residual adds and option-A shortcuts after physical pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gathers: Option<Vec<Vec<Option<usize>>>>,
    /// Slimmed models only, weighted layers whose input lost channels: that input as the
    /// masked model saw it. Activation calibration and the LSQ step-size gradient scale
    /// use these full-width statistics, so a fine-tune of the slimmed model equals that of
    /// the masked one up to float rounding (docs/method.md §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_input: Option<FullInput>,
}

/// The full-width layout of a slimmed layer's input: `channels` channels (or features, for a
/// linear layer) of which those at the ascending positions `present` are the ones the
/// slimmed input holds, in order; the others were zero in the masked model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullInput {
    /// Channel (feature) count of the unpruned input.
    pub channels: usize,
    /// Full-width index of each channel present, ascending.
    pub present: Vec<usize>,
}

impl FullInput {
    /// Elements per image of the full-width input whose slimmed version holds `slim_per_image`
    /// elements per image.
    fn full_per_image(&self, slim_per_image: usize) -> usize {
        slim_per_image / self.present.len().max(1) * self.channels
    }

    /// The samples the masked model's calibration takes from this input (every `step`-th
    /// element of the full-width tensor, `step = max(1, len / 50,000)`, absent channels read
    /// as 0), read from the slimmed input `v` (`[n, present.len(), rest]` flattened).
    fn calib_samples(&self, v: &[f32], n: usize, out: &mut Vec<f32>) {
        let cs = self.present.len();
        if n == 0 || cs == 0 {
            return;
        }
        let per = v.len() / n / cs;
        let cf = self.channels;
        let mut inv = vec![None; cf];
        for (k, &c) in self.present.iter().enumerate() {
            inv[c] = Some(k);
        }
        let full_len = n * cf * per;
        let step = (full_len / 50_000).max(1);
        out.extend((0..full_len).step_by(step).map(|j| {
            let (img, c, s) = (j / (cf * per), (j / per) % cf, j % per);
            inv[c].map_or(0.0, |k| v[(img * cs + k) * per + s])
        }));
    }
}

/// Trainable parameters and buffers of one layer (all optional by kind).
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerParams {
    /// Conv/linear weight, or BatchNorm γ.
    pub weight: Option<Var>,
    /// Conv/linear bias, or BatchNorm β.
    pub bias: Option<Var>,
    /// BatchNorm running mean (buffer, not trained).
    pub running_mean: Option<Var>,
    /// BatchNorm running variance (buffer, not trained).
    pub running_var: Option<Var>,
    /// Activation clip range α of the layer's input quantizer (weighted layers).
    pub alpha: Option<Var>,
    /// Learned weight steps `[C_out]` while a fine-tune with [`WeightQuant::Lsq`]
    /// runs ([`Model::init_weight_steps`] to [`Model::fold_weight_steps`]); never saved.
    ///
    /// [`WeightQuant::Lsq`]: crate::train::WeightQuant::Lsq
    pub wsteps: Option<Var>,
}

/// Precomputed masks of the compressed forward pass.
#[derive(Debug, Default, Clone)]
pub(crate) struct Plan {
    /// Multiply the layer's output by this (`[1, C, 1, 1]` or `[1, F]`).
    pub(crate) out_mask: Vec<Option<Tensor>>,
    /// Weighted layers: multiply the weight by this before quantization (absent inputs).
    in_mask: Vec<Option<Tensor>>,
    /// Channels physically present in each layer's output (`None` = all).
    phys: Vec<Option<Vec<usize>>>,
}

/// Whether channel gather `g` (output channel `j` ← input channel `g[j]`, zero for `None`)
/// maps `c` input channels onto themselves in order, i.e. is the identity.
fn identity_gather(g: &[Option<usize>], c: usize) -> bool {
    g.len() == c && g.iter().enumerate().all(|(j, s)| *s == Some(j))
}

/// A quantizable CNN. See the module docs. Not `Clone` (candle `Var`s share storage): use
/// [`Model::try_clone`] for an independent copy.
#[derive(Debug)]
pub struct Model {
    spec: NetworkSpec,
    residual: ResidualPruning,
    pub(crate) params: Vec<LayerParams>,
    comp: Vec<LayerComp>,
    pub(crate) plan: Plan,
    slim: bool,
    policy: Option<Policy>,
    device: Device,
}

/// A weighted layer's input seen by [`Model::forward_probed`].
#[derive(Debug, Clone)]
pub struct Probe {
    /// The input as computed (`[N, C, H, W]`, or `[N, F]` for a linear layer), detached.
    pub input: Tensor,
    /// A zero variable added to the input: its gradient is the loss's gradient with respect
    /// to the input.
    pub zero: Var,
}

/// Activation samples gathered by [`Model::calibrate`], per layer.
#[derive(Debug, Default)]
struct Calib {
    samples: Vec<Vec<f32>>,
}

/// Checks one layer's compression settings as read from a file: kept channels strictly
/// ascending and below the layer's `channels`, bit-widths in 2..=8. Err(Invalid) naming the
/// layer.
fn check_comp(name: &str, channels: usize, c: &LayerComp) -> Result<()> {
    if let Some(k) = &c.keep
        && (k.windows(2).any(|w| w[0] >= w[1]) || k.last().is_some_and(|&x| x >= channels))
    {
        return Err(Error::Invalid(format!(
            "layer {name}: kept channels must be ascending and below its {channels} channels"
        )));
    }
    for b in [c.wbits, c.abits].into_iter().flatten() {
        if !(2..=8).contains(&b) {
            return Err(Error::Invalid(format!(
                "layer {name}: bit-width {b} is not in 2..=8"
            )));
        }
    }
    Ok(())
}

fn mask_tensor(len: usize, keep: &[usize], rank4: bool, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; len];
    for &k in keep {
        m[k] = 1.0;
    }
    let t = Tensor::from_vec(m, len, dev)?;
    Ok(if rank4 {
        t.reshape((1, len, 1, 1))?
    } else {
        t.reshape((1, len))?
    })
}

/// The kept output rows and kept input columns (relative to the group) of every group of a
/// conv `[in_ch, out_ch, groups]` that keeps input channels `ins` and output channels `outs`
/// (ascending); groups that keep neither are dropped (a depthwise or channel-multiplier conv
/// whose input channel was pruned). A slimmed conv needs equal groups, so this errs when a
/// group keeps outputs but no input (or the reverse) or groups keep different numbers of
/// channels (seer-policy's blocks prevent both; docs/network-spec.md, "Channel flow").
fn group_split(
    name: &str,
    [in_ch, out_ch, groups]: [usize; 3],
    ins: &[usize],
    outs: &[usize],
) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    let (cin_g, cout_g) = (in_ch / groups, out_ch / groups);
    let mut parts = vec![(Vec::new(), Vec::new()); groups];
    for &o in outs {
        parts[o / cout_g].0.push(o);
    }
    for &c in ins {
        parts[c / cin_g].1.push(c % cin_g);
    }
    parts.retain(|(rows, cols)| !rows.is_empty() || !cols.is_empty());
    let first = parts.first().map(|(r, c)| (r.len(), c.len()));
    if let Some((j, (rows, cols))) = parts
        .iter()
        .enumerate()
        .find(|(_, (r, c))| r.is_empty() || c.is_empty() || Some((r.len(), c.len())) != first)
    {
        return Err(Error::Invalid(format!(
            "layer {name}: kept channels are not spread evenly over its {groups} groups \
             (a kept group holds {} outputs and {} inputs, group {j} of the kept ones {} and {})",
            first.map_or(0, |f| f.0),
            first.map_or(0, |f| f.1),
            rows.len(),
            cols.len()
        )));
    }
    Ok(parts)
}

/// Mask `[out_ch, in_ch/groups, 1, 1]` of a grouped conv's weight: 1 where the input channel a
/// weight reads is in `present`.
fn group_in_mask(
    [in_ch, out_ch, groups]: [usize; 3],
    present: &[usize],
    dev: &Device,
) -> Result<Tensor> {
    let (cin_g, cout_g) = (in_ch / groups, out_ch / groups);
    let mut has = vec![false; in_ch];
    for &c in present {
        has[c] = true;
    }
    let m: Vec<f32> = (0..out_ch)
        .flat_map(|o| (0..cin_g).map(move |k| (o / cout_g) * cin_g + k))
        .map(|c| if has[c] { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(m, (out_ch, cin_g, 1, 1), dev)?)
}

impl Model {
    /// A freshly initialised full-precision model for `spec` (Kaiming-uniform weights
    /// `U(±√(6/fan_in))`, zero biases, BN γ = 1, β = 0), all randomness from `seed`.
    ///
    /// Errors: a conv with different strides/paddings/dilations per axis (candle's conv2d
    /// takes one value), or a spec that fails `NetworkSpec::check`.
    pub fn new(spec: NetworkSpec, seed: u64, device: &Device) -> Result<Self> {
        spec.check()?;
        let mut params = Vec::with_capacity(spec.layers.len());
        for (i, l) in spec.layers.iter().enumerate() {
            let mut p = LayerParams::default();
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, i as u64, 0x5EE5));
            match l.kind {
                LayerKind::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups,
                    bias,
                    padding_end,
                } => {
                    let pe = padding_end.unwrap_or(padding);
                    if stride[0] != stride[1]
                        || padding[0] != padding[1]
                        || pe[0] != pe[1]
                        || dilation[0] != dilation[1]
                    {
                        return Err(Error::Invalid(format!(
                            "layer {}: per-axis stride/padding/dilation differ; only square ones are supported",
                            l.name
                        )));
                    }
                    let fan_in = in_ch / groups * kernel[0] * kernel[1];
                    let shape = (out_ch, in_ch / groups, kernel[0], kernel[1]);
                    p.weight = Some(uniform_var(
                        &mut rng,
                        shape.0 * shape.1 * shape.2 * shape.3,
                        fan_in,
                        &[shape.0, shape.1, shape.2, shape.3],
                        device,
                    )?);
                    if bias {
                        p.bias = Some(Var::zeros(out_ch, DType::F32, device)?);
                    }
                    p.alpha = Some(Var::zeros(1, DType::F32, device)?);
                }
                LayerKind::Linear {
                    in_features,
                    out_features,
                    bias,
                } => {
                    p.weight = Some(uniform_var(
                        &mut rng,
                        in_features * out_features,
                        in_features,
                        &[out_features, in_features],
                        device,
                    )?);
                    if bias {
                        p.bias = Some(Var::zeros(out_features, DType::F32, device)?);
                    }
                    p.alpha = Some(Var::zeros(1, DType::F32, device)?);
                }
                LayerKind::BatchNorm => {
                    let c = l.out_shape[0];
                    p.weight = Some(Var::ones(c, DType::F32, device)?);
                    p.bias = Some(Var::zeros(c, DType::F32, device)?);
                    p.running_mean = Some(Var::zeros(c, DType::F32, device)?);
                    p.running_var = Some(Var::ones(c, DType::F32, device)?);
                }
                _ => {}
            }
            params.push(p);
        }
        let mut m = Self::unplanned(spec, params, device);
        m.rebuild_plan()?;
        Ok(m)
    }

    /// A dense, uncompressed model of `spec` with these parameters (one entry per layer),
    /// before its execution plan is built.
    fn unplanned(spec: NetworkSpec, params: Vec<LayerParams>, device: &Device) -> Self {
        let n = spec.layers.len();
        Self {
            spec,
            residual: ResidualPruning::Tied,
            params,
            comp: vec![LayerComp::default(); n],
            plan: Plan::default(),
            slim: false,
            policy: None,
            device: device.clone(),
        }
    }

    /// An independent deep copy (parameters, buffers and α's copied), e.g. to label many
    /// policies from one trained baseline.
    pub fn try_clone(&self) -> Result<Model> {
        let cp = |v: &Option<Var>| -> Result<Option<Var>> {
            v.as_ref()
                .map(|v| Ok(Var::from_tensor(&v.as_tensor().copy()?)?))
                .transpose()
        };
        let params = self
            .params
            .iter()
            .map(|p| {
                Ok(LayerParams {
                    weight: cp(&p.weight)?,
                    bias: cp(&p.bias)?,
                    running_mean: cp(&p.running_mean)?,
                    running_var: cp(&p.running_var)?,
                    alpha: cp(&p.alpha)?,
                    wsteps: cp(&p.wsteps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            spec: self.spec.clone(),
            residual: self.residual,
            params,
            comp: self.comp.clone(),
            plan: self.plan.clone(),
            slim: self.slim,
            policy: self.policy.clone(),
            device: self.device.clone(),
        })
    }

    /// The network spec (for a slimmed model: with the reduced channel counts).
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }
    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The policy applied, if any.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }
    /// Per-layer compression settings (index = spec layer).
    pub fn comp(&self) -> &[LayerComp] {
        &self.comp
    }
    /// Whether pruned channels have been physically removed ([`Model::slim`]).
    pub fn is_slim(&self) -> bool {
        self.slim
    }
    /// How residual adds were treated when the policy was applied.
    pub fn residual_pruning(&self) -> ResidualPruning {
        self.residual
    }

    /// Trainable variables: weights, biases, BN γ/β, and (when `with_alpha`) the activation
    /// clip ranges of quantized inputs and the learned weight steps, where
    /// [`Model::init_weight_steps`] made them. BN running statistics are never included.
    pub fn trainable_vars(&self, with_alpha: bool) -> Vec<Var> {
        let mut v = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            v.extend(p.weight.iter().cloned());
            v.extend(p.bias.iter().cloned());
            if with_alpha && self.comp[i].abits.is_some() && !self.spec.layers[i].inputs.is_empty()
            {
                v.extend(p.alpha.iter().cloned());
            }
            if with_alpha {
                v.extend(p.wsteps.iter().cloned());
            }
        }
        v
    }

    /// Starts learned weight steps (LSQ; docs/method.md §3, "Learned weight steps"): every
    /// weighted layer with quantized weights gets per-output-channel steps, initialised by
    /// [`seer_kernels::weight_mse_steps`] on its weight as the forward pass reads it (absent
    /// input channels zeroed). From then on the forward pass quantizes with
    /// [`seer_kernels::fake_quant_weight_lsq`], and [`Model::trainable_vars`] includes the
    /// steps. Call after the policy is applied (and the model slimmed); errors from the
    /// kernels (non-finite weights).
    pub fn init_weight_steps(&mut self) -> Result<()> {
        for i in 0..self.params.len() {
            let Some(bits) = self.comp[i].wbits else {
                continue;
            };
            if self.params[i].weight.is_none() {
                continue;
            }
            let w = self.masked_weight(i, false)?;
            let steps = seer_kernels::weight_mse_steps(&w, bits)?;
            self.params[i].wsteps = Some(Var::from_tensor(&steps)?);
        }
        Ok(())
    }

    /// Ends learned weight steps: each weight becomes its quantized value under its learned
    /// steps, and the steps are dropped. The step in use is capped at `max|w_c|/qmax`
    /// ([`seer_kernels::fake_quant_weight_lsq`]), so every channel's largest code is `±qmax`
    /// and the max-range quantizer that evaluation, checkpoints and the integer export use
    /// reads the same codes from the folded weight (to f32 rounding of the step). A no-op
    /// without learned steps.
    pub fn fold_weight_steps(&mut self) -> Result<()> {
        for i in 0..self.params.len() {
            if self.params[i].wsteps.is_none() {
                continue;
            }
            let q = self.eff_weight(i, false)?;
            self.params[i]
                .weight
                .as_ref()
                .expect("learned steps belong to a weighted layer")
                .set(&q)?;
            self.params[i].wsteps = None;
        }
        Ok(())
    }

    /// Whether learned weight steps are in use ([`Model::init_weight_steps`]).
    pub fn has_weight_steps(&self) -> bool {
        self.params.iter().any(|p| p.wsteps.is_some())
    }

    /// Number of parameters (weights, biases, BN γ/β), as stored.
    pub fn num_params(&self) -> usize {
        self.params
            .iter()
            .flat_map(|p| p.weight.iter().chain(p.bias.iter()))
            .map(|v| v.elem_count())
            .sum()
    }

    /// Applies a policy (docs/method.md §1, §3): per weighted layer, weight/activation bit-widths
    /// and kept output channels (top filter-L2 norms, summed over each searchable unit, the
    /// same number in each of the unit's blocks, `Unit::kept`); depthwise and multiplier
    /// convs keep the outputs of their kept inputs. Replaces any earlier policy; α's must be
    /// (re)calibrated afterwards.
    ///
    /// Errors: the space's network differs from this model's (another arch or input size);
    /// an invalid policy (seer-policy's message, naming the unit and value); bit-widths
    /// outside 2..=8; a slimmed model; a grouped conv whose kept inputs or outputs would not
    /// spread evenly over its groups (possible only where a `masked` add or a `pad_shortcut`
    /// hands on fewer channels than seer-policy counts).
    pub fn apply_policy(&mut self, space: &SearchSpace, policy: &Policy) -> Result<()> {
        if self.slim {
            return Err(Error::Invalid(
                "cannot apply a policy to a slimmed (physically pruned) model".into(),
            ));
        }
        if space.spec() != &self.spec {
            return Err(Error::Invalid(format!(
                "the policy's search space is for {} at {}, but the model is {} at {}",
                space.spec().name,
                space.spec().input,
                self.spec.name,
                self.spec.input
            )));
        }
        space.validate(policy)?;
        let costs = space.cost(policy)?;
        let mut comp = vec![LayerComp::default(); self.spec.layers.len()];
        for lc in &costs.layers {
            for (b, what) in [(lc.wbits, "weight"), (lc.abits, "activation")] {
                if !(2..=8).contains(&b) {
                    return Err(Error::Invalid(format!(
                        "layer {}: {what} bit-width {b} is outside the supported 2..=8",
                        lc.name
                    )));
                }
            }
            comp[lc.layer].wbits = Some(lc.wbits);
            comp[lc.layer].abits = Some(lc.abits);
        }
        for (unit, up) in space.units().iter().zip(&policy.units) {
            let c = unit.channels;
            let k = unit.kept(up.prune);
            if !unit.prunable || k >= c {
                continue;
            }
            let keep = self.filter_keep(unit, k)?;
            for &l in &unit.layers {
                // Layers that follow the domain take their channels from their input.
                if self.spec.layers[l].kind.channel_multiplier().is_none() {
                    comp[l].keep = Some(keep.clone());
                }
            }
        }
        self.comp = comp;
        self.residual = space.config().residual_pruning;
        self.policy = Some(policy.clone());
        for p in &self.params {
            if let Some(a) = &p.alpha {
                a.set(&Tensor::zeros(1, DType::F32, &self.device)?)?;
            }
        }
        self.rebuild_plan()
    }

    /// The output channels of `unit` kept at `k` (of its `channels`) by the filter ranking of
    /// docs/method.md §3: per domain channel the sum over the unit's layers of its weight
    /// rows' L2 norms (a layer following the domain with multiplier m contributes its m rows),
    /// the top `k / blocks` in every block of a grouped domain; ascending. Errors: a layer
    /// whose output channels are not a multiple of the unit's.
    pub(crate) fn filter_keep(&self, unit: &seer_policy::Unit, k: usize) -> Result<Vec<usize>> {
        let c = unit.channels;
        // One score per domain channel. A layer that follows the domain with multiplier
        // m holds m consecutive weight rows per domain channel: reshaping to c rows sums
        // them.
        let mut score = vec![0f64; c];
        for &l in &unit.layers {
            let w = self.params[l]
                .weight
                .as_ref()
                .expect("weighted layer has weights")
                .as_tensor();
            if w.dim(0)? % c != 0 {
                return Err(Error::Invalid(format!(
                    "layer {}: {} output channels are not a multiple of its unit's {c}",
                    self.spec.layers[l].name,
                    w.dim(0)?
                )));
            }
            let rows = w
                .reshape((c, ()))?
                .sqr()?
                .sum(1)?
                .sqrt()?
                .to_vec1::<f32>()?;
            for (s, r) in score.iter_mut().zip(rows) {
                *s += r as f64;
            }
        }
        // Grouped convs: every block of consecutive channels keeps the same number.
        let size = c / unit.blocks;
        let keep: Vec<usize> = (0..unit.blocks)
            .flat_map(|b| {
                top_k(&score[b * size..(b + 1) * size], k / unit.blocks)
                    .into_iter()
                    .map(move |i| b * size + i)
            })
            .collect();
        Ok(keep)
    }

    /// Physical channel sets and masks from `comp` (see module docs).
    fn rebuild_plan(&mut self) -> Result<()> {
        let n = self.spec.layers.len();
        let mut plan = Plan {
            out_mask: vec![None; n],
            in_mask: vec![None; n],
            phys: vec![None; n],
        };
        if self.slim {
            // A slimmed model has no masks: every channel it holds is real.
            self.plan = plan;
            return Ok(());
        }
        let tied = self.residual == ResidualPruning::Tied;
        // Pruning constraint of each output (tied adds intersect them).
        let mut constraint: Vec<Option<Vec<usize>>> = vec![None; n];
        for i in 0..n {
            let l = &self.spec.layers[i];
            let c = l.out_shape[0];
            let prod = l.inputs.first().copied();
            let prod_phys = prod.and_then(|p| plan.phys[p].clone());
            let rank4 = !matches!(l.kind, LayerKind::Linear { .. } | LayerKind::Flatten);
            match l.kind {
                LayerKind::Conv2d { .. } | LayerKind::Linear { .. } => {
                    let (in_ch, groups) = match l.kind {
                        LayerKind::Conv2d { in_ch, groups, .. } => (in_ch, groups),
                        LayerKind::Linear { in_features, .. } => (in_features, 1),
                        _ => unreachable!("matched conv or linear"),
                    };
                    let mult = l.kind.channel_multiplier();
                    let keep = match mult {
                        // Output c·m + r reads input c alone: it exists iff input c does.
                        Some(m) => prod_phys
                            .as_ref()
                            .map(|pp| pp.iter().flat_map(|&ch| ch * m..(ch + 1) * m).collect()),
                        None => self.comp[i].keep.clone(),
                    };
                    if groups > 1 && (keep.is_some() || prod_phys.is_some()) {
                        // Refuses kept sets that no smaller grouped conv computes.
                        group_split(
                            &l.name,
                            [in_ch, c, groups],
                            &prod_phys.clone().unwrap_or_else(|| (0..in_ch).collect()),
                            &keep.clone().unwrap_or_else(|| (0..c).collect()),
                        )?;
                    }
                    if let Some(k) = &keep {
                        plan.out_mask[i] = Some(mask_tensor(c, k, rank4, &self.device)?);
                    }
                    if mult.is_none()
                        && let Some(pp) = &prod_phys
                    {
                        plan.in_mask[i] = Some(if groups > 1 {
                            group_in_mask([in_ch, c, groups], pp, &self.device)?
                        } else {
                            let wshape_rank4 = matches!(l.kind, LayerKind::Conv2d { .. });
                            mask_tensor(in_ch, pp, wshape_rank4, &self.device)?
                        });
                    }
                    plan.phys[i] = keep.clone();
                    constraint[i] = keep;
                }
                LayerKind::BatchNorm => {
                    if let Some(pp) = &prod_phys {
                        plan.out_mask[i] = Some(mask_tensor(c, pp, true, &self.device)?);
                    }
                    plan.phys[i] = prod_phys;
                    constraint[i] = prod.and_then(|p| constraint[p].clone());
                }
                LayerKind::Relu
                | LayerKind::Relu6
                | LayerKind::MaxPool { .. }
                | LayerKind::AvgPool { .. }
                | LayerKind::GlobalAvgPool => {
                    plan.phys[i] = prod_phys;
                    constraint[i] = prod.and_then(|p| constraint[p].clone());
                }
                LayerKind::Flatten => {
                    let [pc, ph, pw] = prod
                        .map(|p| self.spec.layers[p].out_shape)
                        .unwrap_or([c, 1, 1]);
                    let hw = ph * pw;
                    plan.phys[i] = prod_phys
                        .map(|s| s.iter().flat_map(|&ch| ch * hw..(ch + 1) * hw).collect());
                    let _ = pc;
                }
                LayerKind::PadShortcut { out_ch, .. } => {
                    let in_c = prod
                        .map(|p| self.spec.layers[p].out_shape[0])
                        .unwrap_or(self.spec.input.c);
                    let before = (out_ch - in_c) / 2;
                    let src: Vec<usize> = prod_phys.unwrap_or_else(|| (0..in_c).collect());
                    plan.phys[i] = Some(src.iter().map(|&s| s + before).collect());
                }
                LayerKind::Concat => {
                    // Present channels: each input's, shifted by the channels before it.
                    // Pruning never reaches a concat (seer-policy locks its domains), but an
                    // input may still hold fewer channels (an option-A shortcut's zeros).
                    let mut set = Vec::with_capacity(c);
                    let mut offset = 0;
                    for &p in &l.inputs {
                        let pc = self.spec.layers[p].out_shape[0];
                        match &plan.phys[p] {
                            Some(s) => set.extend(s.iter().map(|&ch| ch + offset)),
                            None => set.extend(offset..offset + pc),
                        }
                        offset += pc;
                    }
                    if set.len() < c {
                        plan.phys[i] = Some(set);
                    }
                }
                LayerKind::Add => {
                    let all =
                        |s: &Option<Vec<usize>>| s.clone().unwrap_or_else(|| (0..c).collect());
                    let mut union = vec![false; c];
                    for &p in &l.inputs {
                        for ch in all(&plan.phys[p]) {
                            union[ch] = true;
                        }
                    }
                    let mut present = union;
                    if tied {
                        for &p in &l.inputs {
                            if let Some(k) = &constraint[p] {
                                let mut m = vec![false; c];
                                for &ch in k {
                                    m[ch] = true;
                                }
                                for (a, b) in present.iter_mut().zip(m) {
                                    *a &= b;
                                }
                            }
                        }
                    }
                    let set: Vec<usize> = (0..c).filter(|&ch| present[ch]).collect();
                    if set.len() < c {
                        if tied {
                            plan.out_mask[i] = Some(mask_tensor(c, &set, true, &self.device)?);
                            constraint[i] = Some(set.clone());
                        }
                        plan.phys[i] = Some(set);
                    }
                }
            }
        }
        self.plan = plan;
        Ok(())
    }

    fn param(&self, v: &Option<Var>, train: bool) -> Option<Tensor> {
        v.as_ref().map(|v| {
            if train {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            }
        })
    }

    /// Logits `[N, classes]` for images `x` `[N, C, H, W]` (normalised). In training mode
    /// BatchNorm uses batch statistics and updates its running estimates; in evaluation mode
    /// it uses the running estimates and the result is detached from the parameters.
    ///
    /// **Batch size.** In evaluation mode every image's logits are bitwise the same whatever
    /// batch it is evaluated in (every op acts per image, and convs and linear layers sum in
    /// an order fixed by the layer's shape; docs/method.md §3), so labels and reports do not
    /// depend on the evaluation batch. Training mode does: BatchNorm's batch statistics are
    /// batch-dependent by definition.
    ///
    /// **Fusions.** In training mode a BatchNorm or two-input add whose only consumer is a
    /// ReLU runs fused with it (one pass forward and backward), and a convolution with
    /// symmetric padding quantizes its input itself ([`seer_kernels::conv2d_fq_input`]);
    /// [`Model::forward_unfused`] is the reference, equal up to float rounding.
    ///
    /// Errors: shape mismatch with the spec's input; an activation quantizer whose range was
    /// never calibrated ([`Model::calibrate`]).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, None, None, None)
    }

    /// [`Model::forward`] without the fusions (every layer its own op): the slow reference the
    /// fused forward is tested against.
    pub fn forward_unfused(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_layers(x, train, None, None, None, false)
    }

    /// The output shape of every layer (`[N, ...]` as computed, index = spec layer) for
    /// input `x`, from an evaluation-mode forward pass.
    pub fn layer_shapes(&self, x: &Tensor) -> Result<Vec<Vec<usize>>> {
        let mut shapes = Vec::new();
        self.forward_impl(x, false, None, Some(&mut shapes), None)?;
        Ok(shapes)
    }

    /// MACs per weighted layer computed from real tensor shapes (output `[N, C_out, H, W]`
    /// of the pass and the stored weight `[C_out, C_in/g, k_h, k_w]`), for one image:
    /// `(layer index, MACs)`. Used to check the spec's analytic counts (docs/method.md §2).
    pub fn measured_macs(&self, x: &Tensor) -> Result<Vec<(usize, u64)>> {
        let shapes = self.layer_shapes(x)?;
        let mut v = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let l = &self.spec.layers[i];
            if !l.kind.is_weighted() {
                continue;
            }
            let w = p.weight.as_ref().expect("weighted").dims().to_vec();
            let macs = if w.len() == 4 {
                let o = &shapes[i];
                (o[1] * o[2] * o[3] * w[1] * w[2] * w[3]) as u64
            } else {
                (w[0] * w[1]) as u64
            };
            v.push((i, macs));
        }
        Ok(v)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        calib: Option<&mut Calib>,
        shapes: Option<&mut Vec<Vec<usize>>>,
        probes: Option<&mut Vec<Option<Probe>>>,
    ) -> Result<Tensor> {
        self.forward_layers(x, train, calib, shapes, probes, true)
    }

    fn forward_layers(
        &self,
        x: &Tensor,
        train: bool,
        mut calib: Option<&mut Calib>,
        mut shapes: Option<&mut Vec<Vec<usize>>>,
        mut probes: Option<&mut Vec<Option<Probe>>>,
        fuse: bool,
    ) -> Result<Tensor> {
        // With probes: BatchNorm on its running statistics, parameters attached (gradients).
        let attach = train || probes.is_some();
        if let Some(p) = probes.as_deref_mut() {
            p.clear();
            p.resize(self.spec.layers.len(), None);
        }
        let inp = self.spec.input;
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != inp.c || dims[2] != inp.h || dims[3] != inp.w {
            return Err(Error::Invalid(format!(
                "model {} expects input [N, {}, {}, {}], got {:?}",
                self.spec.name, inp.c, inp.h, inp.w, dims
            )));
        }
        let n = self.spec.layers.len();
        // Free each output after its last consumer (only when not training: autograd keeps
        // what it needs anyway).
        let mut last_use = vec![0usize; n];
        for (i, l) in self.spec.layers.iter().enumerate() {
            for &p in &l.inputs {
                last_use[p] = i;
            }
        }
        last_use[n - 1] = n;
        // Training mode fuses a BatchNorm or a two-input residual add into the ReLU that is
        // its only consumer (seer-kernels' one-pass ops, forward and backward): `fused[i]`
        // marks such a producer, whose output is then already the ReLU's.
        let fused = if fuse && train && calib.is_none() {
            self.relu_fusions()
        } else {
            vec![false; n]
        };
        let mut outs: Vec<Option<Tensor>> = vec![None; n];
        for i in 0..n {
            let l = &self.spec.layers[i];
            let input = |k: usize| -> Tensor {
                match l.inputs.get(k) {
                    Some(&p) => outs[p].clone().expect("producer computed before consumer"),
                    None => x.clone(),
                }
            };
            let p = &self.params[i];
            let c = &self.comp[i];
            let mut y = match l.kind {
                LayerKind::Conv2d {
                    stride,
                    dilation,
                    groups,
                    ..
                } => {
                    let xin = Self::probe(i, input(0), probes.as_deref_mut())?;
                    let pads = l.kind.conv_pads().expect("a conv has pads");
                    let (b, e) = pads;
                    let fused_quant = self.comp[i].abits.filter(|_| {
                        fuse && calib.is_none() && !l.inputs.is_empty() && b == [b[0]; 2] && e == b
                    });
                    let mut y = if let Some(bits) = fused_quant {
                        // The input's fake quantization inside the conv (one op).
                        let per_image = xin.elem_count() / xin.dim(0)?.max(1);
                        let a = self.scaled_alpha(i, bits, per_image)?;
                        let w = self.eff_weight(i, attach)?;
                        let p = (stride[0], b[0], dilation[0], groups);
                        ops::conv2d_fq_input(&xin, &w, &a, bits, p)?
                    } else {
                        let xin = self.quant_input(i, xin, calib.as_deref_mut())?;
                        let w = self.eff_weight(i, attach)?;
                        ops::conv2d_padded(&xin, &w, stride[0], pads, dilation[0], groups)?
                    };
                    if let Some(b) = self.param(&p.bias, attach) {
                        let co = b.dim(0)?;
                        y = y.broadcast_add(&b.reshape((1, co, 1, 1))?)?;
                    }
                    y
                }
                LayerKind::Linear { .. } => {
                    let mut xin = input(0);
                    if xin.rank() > 2 {
                        xin = xin.flatten_from(1)?;
                    }
                    let xin = Self::probe(i, xin, probes.as_deref_mut())?;
                    let xin = self.quant_input(i, xin, calib.as_deref_mut())?;
                    let w = self.eff_weight(i, attach)?;
                    let mut y = ops::linear(&xin, &w)?;
                    if let Some(b) = self.param(&p.bias, attach) {
                        y = y.broadcast_add(&b.unsqueeze(0)?)?;
                    }
                    y
                }
                LayerKind::BatchNorm => {
                    let xin = input(0);
                    let g = self.param(&p.weight, attach).expect("bn gamma");
                    let b = self.param(&p.bias, attach).expect("bn beta");
                    let (rm, rv) = (
                        p.running_mean.as_ref().expect("bn mean"),
                        p.running_var.as_ref().expect("bn var"),
                    );
                    if train {
                        let (y, mean, var) = if fused[i] {
                            ops::batch_norm_relu_train(&xin, &g, &b, BN_EPS)?
                        } else {
                            ops::batch_norm_train(&xin, &g, &b, BN_EPS)?
                        };
                        let m = xin.elem_count() / xin.dim(1)?;
                        let unbiased = (var * (m as f64 / (m.max(2) - 1) as f64))?;
                        let mom = BN_MOMENTUM;
                        rm.set(&((rm.as_tensor() * (1.0 - mom))? + (mean * mom)?)?)?;
                        rv.set(&((rv.as_tensor() * (1.0 - mom))? + (unbiased * mom)?)?)?;
                        y
                    } else {
                        ops::batch_norm_eval(&xin, &g, &b, rm.as_tensor(), rv.as_tensor(), BN_EPS)?
                    }
                }
                LayerKind::Relu if l.inputs.first().is_some_and(|&p| fused[p]) => input(0),
                LayerKind::Relu => ops::relu(&input(0))?,
                LayerKind::Relu6 => input(0).clamp(0f32, 6f32)?,
                LayerKind::Add if fused[i] => ops::add_relu(&input(0), &input(1))?,
                LayerKind::Add => {
                    let mut acc: Option<Tensor> = None;
                    for k in 0..l.inputs.len() {
                        let mut t = input(k);
                        if let Some(g) = c.gathers.as_ref().and_then(|g| g.get(k))
                            && !(fuse && identity_gather(g, t.dim(1)?))
                        {
                            t = ops::gather_channels(&t, g, [1, 1])?;
                        }
                        acc = Some(match acc {
                            None => t,
                            Some(a) => (a + t)?,
                        });
                    }
                    acc.ok_or_else(|| Error::Invalid(format!("add {} has no inputs", l.name)))?
                }
                LayerKind::Concat => {
                    let parts: Vec<Tensor> = (0..l.inputs.len()).map(&input).collect();
                    Tensor::cat(&parts, 1)?
                }
                LayerKind::Flatten => input(0).flatten_from(1)?,
                LayerKind::MaxPool { kernel, stride, .. }
                | LayerKind::AvgPool { kernel, stride, .. } => {
                    // For max pooling, zero padding equals -inf padding after ReLU
                    // (non-negative inputs).
                    let (b, e) = l.kind.pads().expect("a pool has pads");
                    let t = input(0)
                        .pad_with_zeros(2, b[0], e[0])?
                        .pad_with_zeros(3, b[1], e[1])?;
                    if matches!(l.kind, LayerKind::MaxPool { .. }) {
                        ops::max_pool2d(&t, kernel, stride)?
                    } else {
                        ops::avg_pool2d(&t, kernel, stride)?
                    }
                }
                LayerKind::GlobalAvgPool => input(0).mean_keepdim(2)?.mean_keepdim(3)?,
                LayerKind::PadShortcut { stride, out_ch } => {
                    let x0 = input(0);
                    let cin = x0.dim(1)?;
                    let gather = c.gathers.as_ref().and_then(|g| g.first());
                    // A slimmed shortcut whose gather keeps its channels is the subsampling
                    // alone; stride 2 (ResNet's) runs as one op (seer-kernels' `shortcut_a`).
                    let same = fuse && gather.is_some_and(|g| identity_gather(g, cin));
                    if fuse && stride == [2, 2] && (same || gather.is_none()) {
                        ops::shortcut_a(&x0, if same { cin } else { out_ch })?
                    } else {
                        match gather {
                            Some(_) if same => ops::subsample(&x0, stride)?,
                            Some(g) => ops::gather_channels(&x0, g, stride)?,
                            None => {
                                let t = ops::subsample(&x0, stride)?;
                                let before = (out_ch - cin) / 2;
                                t.pad_with_zeros(1, before, out_ch - cin - before)?
                            }
                        }
                    }
                }
            };
            if let Some(m) = &self.plan.out_mask[i] {
                y = y.broadcast_mul(m)?;
            }
            if let Some(s) = shapes.as_deref_mut() {
                s.push(y.dims().to_vec());
            }
            outs[i] = Some(y);
            if !train {
                for &pi in &l.inputs {
                    if last_use[pi] == i {
                        outs[pi] = None;
                    }
                }
            }
        }
        let out = outs[n - 1].take().expect("last layer computed");
        Ok(if out.rank() > 2 {
            out.flatten_from(1)?
        } else {
            out
        })
    }

    /// With `probes`: replaces weighted layer `i`'s input `x` by `x + z` for a zero variable
    /// `z` of its shape (so the loss's gradient with respect to the input is kept, as `z`'s)
    /// and records `x` and `z` ([`Model::forward_probed`]).
    fn probe(i: usize, x: Tensor, probes: Option<&mut Vec<Option<Probe>>>) -> Result<Tensor> {
        let Some(p) = probes else { return Ok(x) };
        let z = Var::zeros(x.shape(), x.dtype(), x.device())?;
        let y = (&x + z.as_tensor())?;
        p[i] = Some(Probe {
            input: x.detach(),
            zero: z,
        });
        Ok(y)
    }

    /// Logits `[N, classes]` of an evaluation-mode pass (BatchNorm on its running statistics)
    /// whose result stays attached to the parameters, with a [`Probe`] on the input of every
    /// weighted layer (index = spec layer; `None` for other layers): `loss.backward()` then
    /// holds the gradient with respect to each weighted layer's input as its probe's `zero`
    /// (seer-nn `sensitivity`). Errors: as [`Model::forward`].
    pub fn forward_probed(&self, x: &Tensor) -> Result<(Tensor, Vec<Option<Probe>>)> {
        let mut probes = Vec::new();
        let y = self.forward_impl(x, false, None, None, Some(&mut probes))?;
        Ok((y, probes))
    }

    /// Per layer, whether it is a BatchNorm, or an add of two inputs without channel
    /// gathers (or with gathers that keep every channel in place), that has no output mask
    /// and whose only consumer is a ReLU: the training forward computes it with that ReLU in
    /// one fused op (same values; the ReLU gradient is `[y > 0]`).
    fn relu_fusions(&self) -> Vec<bool> {
        let layers = &self.spec.layers;
        let mut consumers = vec![Vec::new(); layers.len()];
        for (i, l) in layers.iter().enumerate() {
            for &p in &l.inputs {
                consumers[p].push(i);
            }
        }
        (0..layers.len())
            .map(|i| {
                let fusable = match layers[i].kind {
                    LayerKind::BatchNorm => true,
                    LayerKind::Add => {
                        let ins = &layers[i].inputs;
                        ins.len() == 2
                            && self.comp[i].gathers.as_ref().is_none_or(|g| {
                                g.iter()
                                    .zip(ins)
                                    .all(|(g, &p)| identity_gather(g, layers[p].out_shape[0]))
                            })
                    }
                    _ => false,
                };
                fusable
                    && i + 1 < layers.len()
                    && self.plan.out_mask[i].is_none()
                    && consumers[i].len() == 1
                    && matches!(layers[consumers[i][0]].kind, LayerKind::Relu)
            })
            .collect()
    }

    /// The weight as used in the forward pass: absent input channels zeroed, then
    /// fake-quantized per output channel.
    pub(crate) fn eff_weight(&self, i: usize, train: bool) -> Result<Tensor> {
        let w = self.masked_weight(i, train)?;
        let Some(b) = self.comp[i].wbits else {
            return Ok(w);
        };
        match self.param(&self.params[i].wsteps, train) {
            Some(steps) => Ok(seer_kernels::fake_quant_weight_lsq(&w, &steps, b)?),
            None => ops::fake_quant_weight(&w, b),
        }
    }

    /// The weight with absent input channels zeroed, before quantization.
    fn masked_weight(&self, i: usize, train: bool) -> Result<Tensor> {
        let mut w = self
            .param(&self.params[i].weight, train)
            .expect("weighted layer");
        if let Some(m) = &self.plan.in_mask[i] {
            w = w.broadcast_mul(m)?;
        }
        Ok(w)
    }

    fn quant_input(&self, i: usize, x: Tensor, calib: Option<&mut Calib>) -> Result<Tensor> {
        let Some(bits) = self.comp[i].abits else {
            return Ok(x);
        };
        if self.spec.layers[i].inputs.is_empty() {
            return Ok(x); // the image: already 8-bit pixels
        }
        let full = self.comp[i].full_input.as_ref();
        if let Some(c) = calib {
            let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            match full {
                Some(f) => f.calib_samples(&v, x.dim(0)?, &mut c.samples[i]),
                None => {
                    let step = (v.len() / 50_000).max(1);
                    c.samples[i].extend(v.iter().step_by(step).copied());
                }
            }
            return Ok(x);
        }
        let per_image = x.elem_count() / x.dim(0)?.max(1);
        let a_scaled = self.scaled_alpha(i, bits, per_image)?;
        ops::fake_quant_act(&x, &a_scaled, bits)
    }

    /// The clip range α of layer `i`'s input quantizer as the forward pass uses it, for an
    /// input of `per_image` elements per image: `α·g + (α − α·g)` with the second term
    /// detached, LSQ's gradient scale `g` (forward value α up to rounding). Err(Invalid) when
    /// α was never calibrated.
    pub(crate) fn scaled_alpha(&self, i: usize, bits: u32, per_image: usize) -> Result<Tensor> {
        let alpha = self.params[i]
            .alpha
            .as_ref()
            .expect("weighted layer has alpha");
        let a = alpha.as_tensor().to_vec1::<f32>()?[0];
        if a.is_nan() || a <= 0.0 {
            return Err(Error::Invalid(format!(
                "layer {}: activation range not calibrated (call calibrate first)",
                self.spec.layers[i].name
            )));
        }
        // LSQ's gradient scale for the step size: the α gradient is a sum over every
        // activation of a sample, so scale it by 1/√(features · levels) (forward unchanged).
        // (Of the full-width input for a slimmed layer, as the masked model counts them.)
        let full = self.comp[i].full_input.as_ref();
        let feats = full.map_or(per_image, |f| f.full_per_image(per_image)) as f64;
        let g = 1.0 / (feats * ops::act_levels(bits) as f64).sqrt();
        let a = alpha.as_tensor();
        Ok(((a * g)? + (a - (a * g)?)?.detach())?)
    }

    /// Activation-range calibration: runs `batches` through the model (evaluation mode,
    /// activations unquantized) and sets each quantized input's clip range α to the value
    /// minimising the quantization MSE on the sampled activations (grid of 100 fractions of
    /// the maximum). Returns the α's chosen, by layer name.
    pub fn calibrate<'a>(
        &self,
        batches: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<BTreeMap<String, f32>> {
        let n = self.spec.layers.len();
        let mut calib = Calib {
            samples: vec![Vec::new(); n],
        };
        for x in batches {
            self.forward_impl(x, false, Some(&mut calib), None, None)?;
        }
        let mut out = BTreeMap::new();
        for (i, s) in calib.samples.iter().enumerate() {
            let Some(bits) = self.comp[i].abits else {
                continue;
            };
            if self.spec.layers[i].inputs.is_empty() {
                continue;
            }
            let alpha = best_clip(s, bits);
            self.params[i]
                .alpha
                .as_ref()
                .expect("alpha")
                .set(&Tensor::from_vec(vec![alpha], 1, &self.device)?)?;
            out.insert(self.spec.layers[i].name.clone(), alpha);
        }
        Ok(out)
    }

    /// Re-estimates BatchNorm running statistics (e.g. after pruning, docs/method.md §3): resets
    /// them and averages the batch statistics of `batches` equally (no parameter update).
    pub fn reestimate_bn<'a>(&self, batches: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
        let bns: Vec<&LayerParams> = self
            .params
            .iter()
            .filter(|p| p.running_mean.is_some())
            .collect();
        let mut sums: Vec<Option<(Tensor, Tensor)>> = vec![None; bns.len()];
        let mut k = 0usize;
        for x in batches {
            for p in &bns {
                p.running_mean
                    .as_ref()
                    .expect("bn")
                    .set(&p.running_mean.as_ref().expect("bn").zeros_like()?)?;
                p.running_var
                    .as_ref()
                    .expect("bn")
                    .set(&p.running_var.as_ref().expect("bn").zeros_like()?)?;
            }
            // With running stats zeroed, one training-mode pass leaves momentum·batch stats.
            self.forward_impl(&x.detach(), true, None, None, None)?;
            for (s, p) in sums.iter_mut().zip(&bns) {
                let m = (p.running_mean.as_ref().expect("bn").as_tensor() / BN_MOMENTUM)?;
                let v = (p.running_var.as_ref().expect("bn").as_tensor() / BN_MOMENTUM)?;
                *s = Some(match s.take() {
                    None => (m, v),
                    Some((a, b)) => ((a + m)?, (b + v)?),
                });
            }
            k += 1;
        }
        if k == 0 {
            return Err(Error::Invalid(
                "reestimate_bn needs at least one batch".into(),
            ));
        }
        for (s, p) in sums.into_iter().zip(&bns) {
            let (m, v) = s.expect("one batch at least");
            p.running_mean.as_ref().expect("bn").set(&(m / k as f64)?)?;
            p.running_var.as_ref().expect("bn").set(&(v / k as f64)?)?;
        }
        Ok(())
    }

    /// Physically removes pruned channels (docs/method.md §7): from each conv/linear (output rows
    /// and input columns), its BatchNorm, the residual partners, and the next layers' inputs.
    /// Residual adds and option-A shortcuts get channel gathers where their inputs hold
    /// different channel sets. The slimmed model's outputs equal this model's.
    pub fn slim(&self) -> Result<Model> {
        let n = self.spec.layers.len();
        let idx = |s: &[usize]| {
            Tensor::from_vec(
                s.iter().map(|&v| v as u32).collect::<Vec<_>>(),
                s.len(),
                &self.device,
            )
        };
        let mut spec = self.spec.clone();
        let mut params = Vec::with_capacity(n);
        let mut comp = self.comp.clone();
        let phys = &self.plan.phys;
        let full = |i: usize| -> Vec<usize> {
            phys[i]
                .clone()
                .unwrap_or_else(|| (0..self.spec.layers[i].out_shape[0]).collect())
        };
        #[allow(clippy::needless_range_loop)] // `i` indexes the spec, params and plan alike
        for i in 0..n {
            let l = &self.spec.layers[i];
            let p = &self.params[i];
            let mut np = LayerParams::default();
            let prod = l.inputs.first().copied();
            let in_set: Option<Vec<usize>> = prod.map(full);
            let out_set = full(i);
            let sl = &mut spec.layers[i];
            sl.out_shape[0] = out_set.len();
            let sel =
                |v: &Option<Var>, rows: &[usize], cols: Option<&[usize]>| -> Result<Option<Var>> {
                    match v {
                        None => Ok(None),
                        Some(v) => {
                            let mut t = v.as_tensor().index_select(&idx(rows)?, 0)?;
                            if let Some(c) = cols {
                                t = t.index_select(&idx(c)?, 1)?;
                            }
                            Ok(Some(Var::from_tensor(&t)?))
                        }
                    }
                };
            match &mut sl.kind {
                LayerKind::Conv2d {
                    in_ch,
                    out_ch,
                    groups,
                    ..
                } => {
                    let ins = in_set.clone().unwrap_or_else(|| (0..*in_ch).collect());
                    // Per kept group: its kept outputs and its kept inputs (group-relative).
                    let parts = group_split(&l.name, [*in_ch, *out_ch, *groups], &ins, &out_set)?;
                    np.weight = if *groups == 1 {
                        sel(&p.weight, &out_set, Some(&ins))?
                    } else if *in_ch == *groups {
                        // One input per group: the rows alone (weight [out, 1, k, k]).
                        sel(&p.weight, &out_set, None)?
                    } else {
                        let w = p.weight.as_ref().expect("conv has a weight").as_tensor();
                        let blocks = parts
                            .iter()
                            .map(|(rows, cols)| {
                                w.index_select(&idx(rows)?, 0)?
                                    .index_select(&idx(cols)?, 1)
                                    .map_err(Error::from)
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Some(Var::from_tensor(&Tensor::cat(&blocks, 0)?)?)
                    };
                    np.bias = sel(&p.bias, &out_set, None)?;
                    if prod.is_some() && ins.len() < *in_ch {
                        comp[i].full_input = Some(FullInput {
                            channels: *in_ch,
                            present: ins.clone(),
                        });
                    }
                    *in_ch = ins.len();
                    *out_ch = out_set.len();
                    *groups = parts.len();
                    np.alpha = p
                        .alpha
                        .as_ref()
                        .map(|a| Var::from_tensor(a.as_tensor()))
                        .transpose()?;
                }
                LayerKind::Linear {
                    in_features,
                    out_features,
                    ..
                } => {
                    let ins = in_set
                        .clone()
                        .unwrap_or_else(|| (0..*in_features).collect());
                    np.weight = sel(&p.weight, &out_set, Some(&ins))?;
                    np.bias = sel(&p.bias, &out_set, None)?;
                    if prod.is_some() && ins.len() < *in_features {
                        comp[i].full_input = Some(FullInput {
                            channels: *in_features,
                            present: ins.clone(),
                        });
                    }
                    *in_features = ins.len();
                    *out_features = out_set.len();
                    np.alpha = p
                        .alpha
                        .as_ref()
                        .map(|a| Var::from_tensor(a.as_tensor()))
                        .transpose()?;
                }
                LayerKind::BatchNorm => {
                    np.weight = sel(&p.weight, &out_set, None)?;
                    np.bias = sel(&p.bias, &out_set, None)?;
                    np.running_mean = sel(&p.running_mean, &out_set, None)?;
                    np.running_var = sel(&p.running_var, &out_set, None)?;
                }
                LayerKind::Add => {
                    let g: Vec<Vec<Option<usize>>> = l
                        .inputs
                        .iter()
                        .map(|&q| {
                            let s = full(q);
                            out_set
                                .iter()
                                .map(|ch| s.iter().position(|x| x == ch))
                                .collect()
                        })
                        .collect();
                    comp[i].gathers = Some(g);
                }
                LayerKind::PadShortcut { out_ch, .. } => {
                    *out_ch = out_set.len();
                    comp[i].gathers = Some(vec![(0..out_set.len()).map(Some).collect()]);
                }
                _ => {}
            }
            params.push(np);
            comp[i].keep = None;
        }
        let mut m = Model {
            spec,
            residual: self.residual,
            params,
            comp,
            plan: Plan::default(),
            slim: true,
            policy: self.policy.clone(),
            device: self.device.clone(),
        };
        m.rebuild_plan()?;
        Ok(m)
    }

    /// All named tensors (PyTorch-style names: `<layer>.weight`, `.bias`, `.running_mean`,
    /// `.running_var`, `.act_alpha`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (l, p) in self.spec.layers.iter().zip(&self.params) {
            for (suffix, t) in [
                ("weight", &p.weight),
                ("bias", &p.bias),
                ("running_mean", &p.running_mean),
                ("running_var", &p.running_var),
                ("act_alpha", &p.alpha),
            ] {
                if let Some(t) = t {
                    v.push((format!("{}.{suffix}", l.name), t.as_tensor().clone()));
                }
            }
        }
        v
    }

    /// Replaces the parameters from named tensors (see [`Model::named_tensors`]). Errors name
    /// a missing tensor or a shape mismatch.
    pub fn load_named(
        &mut self,
        mut get: impl FnMut(&str) -> Option<Tensor>,
        source: &Path,
    ) -> Result<()> {
        let bad = |m: String| Error::Checkpoint {
            path: source.to_path_buf(),
            msg: m,
        };
        for (l, p) in self.spec.layers.iter().zip(&mut self.params) {
            for (suffix, slot) in [
                ("weight", &mut p.weight),
                ("bias", &mut p.bias),
                ("running_mean", &mut p.running_mean),
                ("running_var", &mut p.running_var),
                ("act_alpha", &mut p.alpha),
            ] {
                let Some(v) = slot else { continue };
                let name = format!("{}.{suffix}", l.name);
                let t = get(&name).ok_or_else(|| bad(format!("tensor {name} is missing")))?;
                if t.dims() != v.dims() {
                    return Err(bad(format!(
                        "tensor {name} has shape {:?}, the network needs {:?}",
                        t.dims(),
                        v.dims()
                    )));
                }
                *slot = Some(Var::from_tensor(
                    &t.to_dtype(DType::F32)?.to_device(&self.device)?,
                )?);
            }
        }
        Ok(())
    }

    /// Restores compression state read from a checkpoint.
    pub(crate) fn set_state(
        &mut self,
        comp: Vec<LayerComp>,
        residual: ResidualPruning,
        slim: bool,
        policy: Option<Policy>,
    ) -> Result<()> {
        if comp.len() != self.spec.layers.len() {
            return Err(Error::Invalid(format!(
                "{} layer settings for {} layers",
                comp.len(),
                self.spec.layers.len()
            )));
        }
        for (l, c) in self.spec.layers.iter().zip(&comp) {
            check_comp(&l.name, l.out_shape[0], c)?;
        }
        self.comp = comp;
        self.residual = residual;
        self.slim = slim;
        self.policy = policy;
        self.rebuild_plan()
    }

    /// A model for a (possibly slimmed) spec without `check` (slimmed specs hold gathers),
    /// its parameters zero, shaped by [`param_shapes`].
    pub(crate) fn skeleton(spec: NetworkSpec, device: &Device) -> Result<Self> {
        let mut params = Vec::with_capacity(spec.layers.len());
        for l in &spec.layers {
            let mut p = LayerParams::default();
            for (suffix, shape) in param_shapes(&l.kind, l.out_shape) {
                let v = Some(Var::zeros(shape, DType::F32, device)?);
                match suffix {
                    "weight" => p.weight = v,
                    "bias" => p.bias = v,
                    "running_mean" => p.running_mean = v,
                    "running_var" => p.running_var = v,
                    _ => p.alpha = v,
                }
            }
            params.push(p);
        }
        Ok(Self::unplanned(spec, params, device))
    }
}

/// The parameter tensors of a layer of kind `kind` with output shape `out_shape`, as
/// `(suffix, shape)`: the suffixes of [`Model::named_tensors`] (`weight`, `bias`,
/// `running_mean`, `running_var`, `act_alpha`), in that order. Conv weights are
/// `[out, in/groups, k_h, k_w]`, linear weights `[out, in]`, BatchNorm vectors `[C]`.
pub(crate) fn param_shapes(
    kind: &LayerKind,
    out_shape: [usize; 3],
) -> Vec<(&'static str, Vec<usize>)> {
    match *kind {
        LayerKind::Conv2d {
            in_ch,
            out_ch,
            kernel,
            groups,
            bias,
            ..
        } => {
            let mut v = vec![(
                "weight",
                vec![out_ch, in_ch / groups.max(1), kernel[0], kernel[1]],
            )];
            if bias {
                v.push(("bias", vec![out_ch]));
            }
            v.push(("act_alpha", vec![1]));
            v
        }
        LayerKind::Linear {
            in_features,
            out_features,
            bias,
        } => {
            let mut v = vec![("weight", vec![out_features, in_features])];
            if bias {
                v.push(("bias", vec![out_features]));
            }
            v.push(("act_alpha", vec![1]));
            v
        }
        LayerKind::BatchNorm => {
            let c = out_shape[0];
            ["weight", "bias", "running_mean", "running_var"]
                .into_iter()
                .map(|s| (s, vec![c]))
                .collect()
        }
        _ => Vec::new(),
    }
}

fn uniform_var(
    rng: &mut ChaCha8Rng,
    n: usize,
    fan_in: usize,
    shape: &[usize],
    dev: &Device,
) -> Result<Var> {
    let bound = (6.0 / fan_in.max(1) as f64).sqrt() as f32;
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
}

/// Indices of the `k` largest scores, ascending (ties: lower index wins).
pub fn top_k(score: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

/// The clip range α in (0, max] minimising the `bits`-bit unsigned quantization MSE of the
/// samples (grid of 100 fractions of the maximum). 1.0 when every sample is ≤ 0.
///
/// Each candidate's error is an f64 sum in sample order, as a serial loop gives, so α does
/// not depend on the thread count or the CPU. The candidates are scored eight at a time in
/// one pass over the samples, side by side in vector lanes, where one candidate at a
/// time waited for each add (docs/benchmarks.md, session 24).
pub fn best_clip(samples: &[f32], bits: u32) -> f32 {
    use rayon::prelude::*;
    let max = samples.iter().copied().fold(0f32, f32::max);
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let levels = ops::act_levels(bits) as f32;
    let pos: Vec<f32> = samples.iter().copied().filter(|&v| v > 0.0).collect();
    let clip = |k: usize| max * k as f32 / 100.0;
    let errs: Vec<[f64; CLIP_LANES]> = (0..100usize.div_ceil(CLIP_LANES))
        .into_par_iter()
        .map(|g| {
            let a: [f32; CLIP_LANES] = std::array::from_fn(|j| clip(g * CLIP_LANES + j + 1));
            let s: [f32; CLIP_LANES] = std::array::from_fn(|j| a[j] / levels);
            clip_errors(&pos, &a, &s)
        })
        .collect();
    let mut best = (f64::INFINITY, max);
    for (k, &err) in errs.iter().flatten().enumerate().take(100) {
        if err < best.0 {
            best = (err, clip(k + 1));
        }
    }
    best.1
}

/// Clip candidates [`best_clip`] scores side by side: one AVX2 vector of f32.
const CLIP_LANES: usize = 8;

/// Per lane `j`, `Σ_v (q_j(v) − v)²` in f64, summed in the order of `pos`, with
/// `q_j(v) = round(min(v, a_j) / s_j) · s_j` (ties away from zero). The same bits on every
/// path: each lane's operations are IEEE-exact steps in a fixed order (no fused
/// multiply-add), whatever the vector width.
fn clip_errors(pos: &[f32], a: &[f32; CLIP_LANES], s: &[f32; CLIP_LANES]) -> [f64; CLIP_LANES] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { clip_errors_avx2(pos, a, s) };
    }
    clip_errors_lanes(pos, a, s)
}

/// [`clip_errors`] with the lanes in one AVX2 vector: per sample, the eight candidates'
/// quantizations side by side and two vectors of f64 sums. `round_half_away` of
/// `x = min(v, a) / s` is `⌊x⌋ + (x − ⌊x⌋ ≥ ½)` here: its value for every `x ≥ 0`, +∞
/// included, and NaN where `x` is NaN, as there; `x` is never negative (`v > 0`, `a ≥ 0`,
/// `s ≥ 0`).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn clip_errors_avx2(
    pos: &[f32],
    a: &[f32; CLIP_LANES],
    s: &[f32; CLIP_LANES],
) -> [f64; CLIP_LANES] {
    use std::arch::x86_64::*;
    const _: () = assert!(CLIP_LANES == 8);
    // SAFETY: `a` and `s` hold 8 f32 each.
    let (av, sv) = unsafe { (_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(s.as_ptr())) };
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for &v in pos {
        let vv = _mm256_set1_ps(v);
        let x = _mm256_div_ps(_mm256_min_ps(vv, av), sv);
        let fl = _mm256_floor_ps(x);
        let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(x, fl), half), one);
        let r = _mm256_add_ps(fl, up);
        let d = _mm256_sub_ps(_mm256_mul_ps(r, sv), vv);
        let (dl, dh) = (
            _mm256_cvtps_pd(_mm256_castps256_ps128(d)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(d)),
        );
        lo = _mm256_add_pd(lo, _mm256_mul_pd(dl, dl));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(dh, dh));
    }
    let mut err = [0f64; CLIP_LANES];
    // SAFETY: `err` holds 8 f64: 4 from each pointer.
    unsafe {
        _mm256_storeu_pd(err.as_mut_ptr(), lo);
        _mm256_storeu_pd(err.as_mut_ptr().add(4), hi);
    }
    err
}

/// [`clip_errors`], portable: per block of samples, each lane's squared errors (a loop over
/// samples, which vectorises), then the lanes' sums side by side (independent add chains),
/// each in sample order.
fn clip_errors_lanes(
    pos: &[f32],
    a: &[f32; CLIP_LANES],
    s: &[f32; CLIP_LANES],
) -> [f64; CLIP_LANES] {
    const BLOCK: usize = 256;
    let mut sq = [[0f64; BLOCK]; CLIP_LANES];
    let mut err = [0f64; CLIP_LANES];
    for c in pos.chunks(BLOCK) {
        for (j, sq) in sq.iter_mut().enumerate() {
            let (a, s) = (a[j], s[j]);
            for (e, &v) in sq.iter_mut().zip(c) {
                let q = seer_kernels::round_half_away(v.min(a) / s) * s;
                *e = ((q - v) as f64).powi(2);
            }
        }
        for t in 0..c.len() {
            for (e, sq) in err.iter_mut().zip(&sq) {
                *e += sq[t];
            }
        }
    }
    err
}

#[cfg(test)]
mod clip_tests {
    use super::*;
    use proptest::prelude::*;

    /// One candidate's error, one sample at a time in order: what [`clip_errors`] must give
    /// bit for bit in every lane.
    fn serial_error(pos: &[f32], a: f32, s: f32) -> f64 {
        let mut err = 0f64;
        for &v in pos {
            let q = seer_kernels::round_half_away(v.min(a) / s) * s;
            err += ((q - v) as f64).powi(2);
        }
        err
    }

    /// [`best_clip`] one candidate at a time, serially (its form before the lanes).
    fn best_clip_serial(samples: &[f32], bits: u32) -> f32 {
        let max = samples.iter().copied().fold(0f32, f32::max);
        if max.is_nan() || max <= 0.0 {
            return 1.0;
        }
        let levels = ops::act_levels(bits) as f32;
        let pos: Vec<f32> = samples.iter().copied().filter(|&v| v > 0.0).collect();
        let mut best = (f64::INFINITY, max);
        for k in 1..=100 {
            let a = max * k as f32 / 100.0;
            let err = serial_error(&pos, a, a / levels);
            if err < best.0 {
                best = (err, a);
            }
        }
        best.1
    }

    fn samples() -> impl Strategy<Value = Vec<f32>> {
        prop_oneof![
            prop::collection::vec(-2f32..6.0, 0..1_200),
            // Many ties at zero and repeated values, as after a ReLU.
            prop::collection::vec(prop_oneof![Just(0f32), Just(1.5f32), 0f32..3.0], 0..700),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn lanes_have_the_bits_of_serial_sums(
            pos in prop::collection::vec(1e-4f32..8.0, 0..1_100),
            a in prop::array::uniform8(0.01f32..8.0),
            bits in 2u32..=8,
        ) {
            let levels = ops::act_levels(bits) as f32;
            let s: [f32; CLIP_LANES] = std::array::from_fn(|j| a[j] / levels);
            let fast = clip_errors(&pos, &a, &s);
            let portable = clip_errors_lanes(&pos, &a, &s);
            for j in 0..CLIP_LANES {
                let want = serial_error(&pos, a[j], s[j]);
                prop_assert_eq!(fast[j].to_bits(), want.to_bits(), "lane {}", j);
                prop_assert_eq!(portable[j].to_bits(), want.to_bits(), "lane {}", j);
            }
        }

        #[test]
        fn best_clip_is_the_serial_choice(v in samples(), bits in 2u32..=8) {
            prop_assert_eq!(best_clip(&v, bits).to_bits(), best_clip_serial(&v, bits).to_bits());
        }
    }

    #[test]
    fn ties_clipping_and_a_zero_range_have_the_serial_bits() {
        // Steps of 1 and ½ make every `k + ½` sample an exact tie; samples above `a` clip;
        // a lane with a = 0 divides 0 by 0 (NaN, as the serial loop gives).
        let pos: Vec<f32> = (1..80)
            .map(|k| k as f32 * 0.25)
            .chain([3e9, 1e-30])
            .collect();
        let a = [15.0f32, 7.5, 3.0, 0.0, 2.5, 1.0, 15.0, 8.0];
        let s = [1.0f32, 0.5, 0.5, 0.0, 0.5, 1.0, 0.5, 1.0];
        let fast = clip_errors(&pos, &a, &s);
        let portable = clip_errors_lanes(&pos, &a, &s);
        for j in 0..CLIP_LANES {
            let want = serial_error(&pos, a[j], s[j]);
            assert_eq!(fast[j].to_bits(), want.to_bits(), "lane {j}");
            assert_eq!(portable[j].to_bits(), want.to_bits(), "lane {j}");
        }
        assert!(fast[3].is_nan() && fast[0].is_finite());
    }

    #[test]
    fn best_clip_on_a_long_skewed_input() {
        // More samples than one block, a heavy tail: the choice is interior.
        let v: Vec<f32> = (0..70_001u32)
            .map(|i| {
                let u = (i.wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32;
                u * u * u * 10.0 - 0.5
            })
            .collect();
        for bits in [2, 4, 8] {
            let got = best_clip(&v, bits);
            assert_eq!(
                got.to_bits(),
                best_clip_serial(&v, bits).to_bits(),
                "{bits} bits"
            );
            let max = v.iter().copied().fold(0f32, f32::max);
            assert!(got > 0.0 && got <= max);
        }
        assert!(best_clip(&v, 2) < best_clip(&v, 8));
        assert_eq!(best_clip(&[-1.0, 0.0], 4), 1.0);
    }
}
