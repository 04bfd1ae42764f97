//! Per-unit sensitivities of a full-precision network to quantization and pruning, for the
//! `fit-ilp` baseline (docs/method.md §9): empirical Fisher traces times quantization noise,
//! after FIT (Zandonati et al., "FIT: A Metric for Model Sensitivity", ICLR 2023) and in the
//! spirit of HAWQ-V3 (Yao et al., ICML 2021, which uses Hessian traces).
//!
//! For a perturbation δ of a block of values (a layer's weights, or its input activations),
//! the expected squared first-order change of a minibatch loss `L_m` is `E_m[(∇L_m · δ)²] =
//! δᵀ F δ` with the empirical Fisher `F = E_m[∇L_m ∇L_mᵀ]`. For independent zero-mean noise of
//! variance σ² per element this is `σ² · Tr F`. So, per unit:
//! - weights at `b` bits: `Ω_w(b) = Σ_l Tr F_w,l · E[(Q_b(w) − w)²]` over the unit's layers,
//!   the mean taken over layer `l`'s weights with the model's per-channel quantizer;
//! - activations at `b` bits: `Ω_a(b) = Σ_l Tr F_a,l · E[(Q_b(x) − x)²]` over the unit's
//!   layers that do not read the image, with `x` the layer's input on the sampled images and
//!   the clip range calibrated for `b` bits as the labeller does (`best_clip`); `Tr F_a,l`
//!   sums over every element of the minibatch's input;
//! - pruning ratio `p`: `Ω_p(p) = Σ_{removed rows r} Σ_j F_rj · w_rj²`, the Fisher-weighted
//!   energy of the filters the filter-L2 ranking of docs/method.md §3 removes (δ = −w on
//!   them; diagonal Fisher per weight).
//!
//! `F` is estimated from per-minibatch gradients (`L_m` the mean cross-entropy of minibatch
//! `m`; the three scores use the same estimator, so their relative scale is consistent),
//! with the network in evaluation mode (BatchNorm on its running statistics).
//! `Σ_u Ω_w + Ω_a + Ω_p` is the predicted loss increase that `SearchSpace::allocate`
//! minimises under the budget.

use candle_core::{DType, Tensor};
use seer_policy::{GeneKind, SearchSpace};
use serde::Serialize;

use crate::data::{BatchIter, Dataset, Normalize};
use crate::model::Model;
use crate::{Error, Result, ops, train};

/// Settings of [`fisher_sensitivity`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SensitivityConfig {
    /// Training images used (whole minibatches; at least one minibatch).
    pub images: usize,
    /// Images per minibatch gradient.
    pub batch: usize,
    /// Seed of the images' order.
    pub seed: u64,
}

impl Default for SensitivityConfig {
    /// 256 images in minibatches of 8 (32 gradients).
    fn default() -> Self {
        Self {
            images: 256,
            batch: 8,
            seed: 0,
        }
    }
}

/// One unit's sensitivities (see the module docs; units of loss², summed over minibatch
/// gradients and divided by their number).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnitSensitivity {
    /// Unit name.
    pub name: String,
    /// `Σ_l Tr F_w,l` over the unit's layers.
    pub weight_trace: f64,
    /// `Σ_l Tr F_a,l` over the unit's layers that do not read the image.
    pub act_trace: f64,
    /// `(bits, Ω_w)` per weight candidate of the space.
    pub wbits: Vec<(u32, f64)>,
    /// `(bits, Ω_a)` per activation candidate (0 for a unit that reads only the image).
    pub abits: Vec<(u32, f64)>,
    /// `(ratio, Ω_p)` per pruning candidate (0 for ratio 0 and unprunable units).
    pub prune: Vec<(f64, f64)>,
}

/// Sensitivities of every unit of a space (see [`fisher_sensitivity`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sensitivity {
    /// Per unit, in the space's order.
    pub units: Vec<UnitSensitivity>,
    /// Minibatch gradients averaged.
    pub batches: usize,
    /// Images seen.
    pub images: usize,
}

impl Sensitivity {
    /// The scores of `space`'s genes for `SearchSpace::allocate`: per gene one entry per
    /// candidate, `Ω_p`, `Ω_w`, `Ω_a`, or `Ω_w + Ω_a` for a shared bit-width gene. Errors: a
    /// space other than the one measured (a unit or candidate missing).
    pub fn gene_scores(&self, space: &SearchSpace) -> Result<Vec<Vec<f64>>> {
        if space.units().len() != self.units.len() {
            return Err(Error::Invalid(format!(
                "sensitivities of {} units for a space of {}",
                self.units.len(),
                space.units().len()
            )));
        }
        let find = |table: &[(u32, f64)], b: f64, unit: &str| {
            table
                .iter()
                .find(|(x, _)| *x as f64 == b)
                .map(|(_, v)| *v)
                .ok_or_else(|| Error::Invalid(format!("unit {unit}: no sensitivity for {b} bits")))
        };
        space
            .genes()
            .iter()
            .map(|g| {
                let u = &self.units[g.unit];
                g.candidates
                    .iter()
                    .map(|&c| match g.kind {
                        GeneKind::Prune => u
                            .prune
                            .iter()
                            .find(|(p, _)| *p == c)
                            .map(|(_, v)| *v)
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "unit {}: no sensitivity for ratio {c}",
                                    u.name
                                ))
                            }),
                        GeneKind::WBits => find(&u.wbits, c, &u.name),
                        GeneKind::ABits => find(&u.abits, c, &u.name),
                        GeneKind::Bits => {
                            Ok(find(&u.wbits, c, &u.name)? + find(&u.abits, c, &u.name)?)
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Per-unit sensitivities of the full-precision `model` over `space` (module docs), from
/// `cfg.images` training images of `data` (shuffled with `cfg.seed`, not augmented) in
/// minibatches of `cfg.batch`. The model is not changed.
///
/// Errors: a model that carries a policy (compressed) or whose network is not the space's;
/// fewer images than one minibatch; a zero batch; candle failures.
pub fn fisher_sensitivity(
    model: &Model,
    space: &SearchSpace,
    data: &Dataset,
    norm: &Normalize,
    cfg: &SensitivityConfig,
) -> Result<Sensitivity> {
    let _span = tracing::info_span!("fisher_sensitivity", images = cfg.images).entered();
    if model.policy().is_some() || model.is_slim() {
        return Err(Error::Invalid(
            "sensitivities are measured on the full-precision model (it carries a policy)".into(),
        ));
    }
    if space.spec() != model.spec() {
        return Err(Error::Invalid(format!(
            "the search space is for {}, the model is {}",
            space.spec().name,
            model.spec().name
        )));
    }
    if cfg.batch == 0 || cfg.images < cfg.batch || data.len() < cfg.batch {
        return Err(Error::Invalid(format!(
            "sensitivities need at least one minibatch: {} images in minibatches of {} from {} \
             training images",
            cfg.images,
            cfg.batch,
            data.len()
        )));
    }
    let n_batches = (cfg.images / cfg.batch).min(data.len() / cfg.batch);
    let nl = model.spec().layers.len();
    let weighted: Vec<usize> = model.spec().weighted_layers();
    // Σ_m g_m² per weight (diagonal Fisher, summed), Σ_m ‖∂L_m/∂x_l‖², activation samples.
    let mut fw: Vec<Option<Tensor>> = vec![None; nl];
    let mut fa = vec![0f64; nl];
    let mut samples: Vec<Vec<f32>> = vec![Vec::new(); nl];
    let iter = BatchIter::shuffled(data, cfg.batch, norm.clone(), None, cfg.seed, 0, false);
    let mut m = 0usize;
    for b in iter.take(n_batches) {
        let (x, y) = train::batch_tensors(b, model)?;
        let (logits, probes) = model.forward_probed(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        for &l in &weighted {
            let w = model.params[l].weight.as_ref().expect("weighted layer");
            let g2 = match grads.get(w.as_tensor()) {
                Some(g) => g.sqr()?,
                None => w.as_tensor().zeros_like()?,
            };
            fw[l] = Some(match fw[l].take() {
                None => g2,
                Some(a) => (a + g2)?,
            });
            if let Some(p) = &probes[l] {
                if let Some(g) = grads.get(p.zero.as_tensor()) {
                    fa[l] += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
                let v: Vec<f32> = p.input.flatten_all()?.to_vec1()?;
                let step = (v.len() * n_batches / 50_000).max(1);
                samples[l].extend(v.iter().step_by(step).copied());
            }
        }
        m += 1;
    }
    let mf = m as f64;
    let cfgs = space.config();
    let mut units = Vec::with_capacity(space.units().len());
    for (ui, unit) in space.units().iter().enumerate() {
        let mut wt = 0f64;
        let mut at = 0f64;
        let mut wbits: Vec<(u32, f64)> = cfgs.wbits.iter().map(|&b| (b, 0.0)).collect();
        let mut abits: Vec<(u32, f64)> = cfgs.abits.iter().map(|&b| (b, 0.0)).collect();
        for &l in &unit.layers {
            let w = model.params[l]
                .weight
                .as_ref()
                .expect("weighted layer")
                .as_tensor();
            let tr = (fw[l].as_ref().expect("every weighted layer").sum_all()?)
                .to_scalar::<f32>()? as f64
                / mf;
            wt += tr;
            for (b, v) in wbits.iter_mut() {
                *v += tr * weight_noise(w, *b)?;
            }
            if !model.spec().layers[l].inputs.is_empty() {
                let tra = fa[l] / mf;
                at += tra;
                for (b, v) in abits.iter_mut() {
                    *v += tra * act_noise(&samples[l], *b)?;
                }
            }
        }
        if space.reads_only_image(ui) && !abits.iter().any(|(b, _)| *b == seer_policy::IMAGE_BITS) {
            abits.push((seer_policy::IMAGE_BITS, 0.0));
        }
        let mut prune = Vec::new();
        if !cfgs.prune_ratios.contains(&0.0) {
            prune.push((0.0, 0.0));
        }
        for &p in &cfgs.prune_ratios {
            let k = unit.kept(p);
            let v = if !unit.prunable || k >= unit.channels {
                0.0
            } else {
                let keep = model.filter_keep(unit, k)?;
                let mut kept = vec![false; unit.channels];
                for &c in &keep {
                    kept[c] = true;
                }
                let mut e = 0f64;
                for &l in &unit.layers {
                    let w = model.params[l]
                        .weight
                        .as_ref()
                        .expect("weighted layer")
                        .as_tensor();
                    let f = fw[l].as_ref().expect("every weighted layer");
                    let c = unit.channels;
                    let rows = (f * w.sqr()?)?.reshape((c, ()))?.sum(1)?.to_vec1::<f32>()?;
                    e += rows
                        .iter()
                        .zip(&kept)
                        .filter(|(_, k)| !**k)
                        .map(|(r, _)| *r as f64)
                        .sum::<f64>();
                }
                e / mf
            };
            prune.push((p, v));
        }
        units.push(UnitSensitivity {
            name: unit.name.clone(),
            weight_trace: wt,
            act_trace: at,
            wbits,
            abits,
            prune,
        });
    }
    Ok(Sensitivity {
        units,
        batches: m,
        images: m * cfg.batch,
    })
}

/// `E[(Q_b(w) − w)²]` over the weights `w` with the model's per-output-channel symmetric
/// quantizer at `bits`.
pub fn weight_noise(w: &Tensor, bits: u32) -> Result<f64> {
    let q = ops::fake_quant_weight(&w.detach(), bits)?;
    let d = (q - w.detach())?.sqr()?.mean_all()?.to_scalar::<f32>()?;
    Ok(d as f64)
}

/// `E[(Q_b(x) − x)²]` over activation samples `x` with the clip range calibrated for `bits`
/// (`best_clip`, as the labeller calibrates) and the model's unsigned quantizer. 0 for no
/// samples.
pub fn act_noise(samples: &[f32], bits: u32) -> Result<f64> {
    if samples.is_empty() {
        return Ok(0.0);
    }
    let alpha = crate::model::best_clip(samples, bits);
    let dev = candle_core::Device::Cpu;
    let x = Tensor::from_vec(samples.to_vec(), samples.len(), &dev)?;
    let a = Tensor::from_vec(vec![alpha], 1, &dev)?.to_dtype(DType::F32)?;
    let q = ops::fake_quant_act(&x, &a, bits)?;
    Ok((q - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seer_policy::{ConvOpts, InputShape, LayerKind, SpaceConfig, SpecBuilder};

    /// conv1(1→2, 3×3, pad 1) relu conv2(2→3, 3×3, pad 1) relu flatten fc(48→3), 4×4 input.
    fn tiny() -> (Model, SearchSpace, Dataset) {
        let mut b = SpecBuilder::new("tiny", InputShape::new(4, 4, 1), 3);
        let c1 = b
            .conv("conv1", None, ConvOpts::new(2, 3).pad(1).bias(true))
            .unwrap();
        let r1 = b.op("relu1", Some(c1), LayerKind::Relu).unwrap();
        let c2 = b
            .conv("conv2", Some(r1), ConvOpts::new(3, 3).pad(1).bias(true))
            .unwrap();
        let r2 = b.op("relu2", Some(c2), LayerKind::Relu).unwrap();
        let f = b.op("flatten", Some(r2), LayerKind::Flatten).unwrap();
        b.linear("fc", Some(f), 3, true).unwrap();
        let spec = b.finish().unwrap();
        let model = Model::new(spec.clone(), 7, &Device::Cpu).unwrap();
        // Non-zero biases: with zero ones a unit whose inputs are all zero sits exactly on
        // ReLU's kink, where finite differences and the subgradient disagree.
        for l in [0usize, 2, 5] {
            let b = model.params[l].bias.as_ref().unwrap();
            let n = b.as_tensor().dim(0).unwrap();
            let v: Vec<f32> = (0..n).map(|i| 0.03 + 0.02 * i as f32).collect();
            b.set(&Tensor::from_vec(v, n, &Device::Cpu).unwrap())
                .unwrap();
        }
        let space = SearchSpace::new(
            spec,
            SpaceConfig {
                prune_ratios: vec![0.0, 0.5],
                wbits: vec![2, 4],
                abits: vec![2, 4],
                fix_first: false,
                ..SpaceConfig::default()
            },
        )
        .unwrap();
        // 12 images with pixels from a fixed pattern and labels 0..3.
        let images: Vec<u8> = (0..12 * 16)
            .map(|i| ((i * 37 + i / 7 * 11) % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..12).map(|i| (i % 3) as u8).collect();
        (
            model,
            space,
            Dataset::new([1, 4, 4], 3, images, labels).unwrap(),
        )
    }

    /// Plain f64 weights of the tiny model: conv1 w, b, conv2 w, b, fc w, b.
    type Params = [Vec<f64>; 6];

    fn params(model: &Model) -> Params {
        let v = |l: usize, bias: bool| -> Vec<f64> {
            let p = &model.params[l];
            let t = if bias { &p.bias } else { &p.weight };
            let t = t.as_ref().unwrap().as_tensor().flatten_all().unwrap();
            t.to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        [
            v(0, false),
            v(0, true),
            v(2, false),
            v(2, true),
            v(5, false),
            v(5, true),
        ]
    }

    /// 3×3 convolution with padding 1 of `[cin, 4, 4]` into `[cout, 4, 4]`, then ReLU.
    fn conv_relu(x: &[f64], cin: usize, w: &[f64], b: &[f64], cout: usize) -> Vec<f64> {
        let mut y = vec![0f64; cout * 16];
        for o in 0..cout {
            for i in 0..4i64 {
                for j in 0..4i64 {
                    let mut s = b[o];
                    for c in 0..cin {
                        for di in 0..3i64 {
                            for dj in 0..3i64 {
                                let (yi, xj) = (i + di - 1, j + dj - 1);
                                if (0..4).contains(&yi) && (0..4).contains(&xj) {
                                    let xv = x[c * 16 + (yi * 4 + xj) as usize];
                                    s +=
                                        w[((o * cin + c) * 3 + di as usize) * 3 + dj as usize] * xv;
                                }
                            }
                        }
                    }
                    y[o * 16 + (i * 4 + j) as usize] = s.max(0.0);
                }
            }
        }
        y
    }

    /// Cross-entropy of one image from conv2's input `a1` onwards.
    fn loss_from_a1(p: &Params, a1: &[f64], y: usize) -> f64 {
        let a2 = conv_relu(a1, 2, &p[2], &p[3], 3);
        let z: Vec<f64> = (0..3)
            .map(|k| p[5][k] + (0..48).map(|j| p[4][k * 48 + j] * a2[j]).sum::<f64>())
            .collect();
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        lse - z[y]
    }

    fn batch_loss(p: &Params, xs: &[Vec<f64>], ys: &[usize]) -> f64 {
        let n = xs.len() as f64;
        xs.iter()
            .zip(ys)
            .map(|(x, &y)| loss_from_a1(p, &conv_relu(x, 1, &p[0], &p[1], 2), y))
            .sum::<f64>()
            / n
    }

    /// The module's quantities by central finite differences on the plain forward above.
    #[test]
    fn fisher_and_noise_match_a_slow_reference() {
        let (model, space, data) = tiny();
        let norm = Normalize::unit(1);
        let cfg = SensitivityConfig {
            images: 8,
            batch: 2,
            seed: 3,
        };
        let s = fisher_sensitivity(&model, &space, &data, &norm, &cfg).unwrap();
        assert_eq!((s.batches, s.images), (4, 8));
        let p0 = params(&model);
        let h = 1e-5;
        // Σ_m g_m² per weight of conv1 (p[0]) and conv2 (p[2]); Σ_m ‖∂L_m/∂a1‖².
        let mut fw = [vec![0f64; p0[0].len()], vec![0f64; p0[2].len()]];
        let mut fa = 0f64;
        let mut acts: Vec<f32> = Vec::new();
        let batches = BatchIter::shuffled(&data, 2, norm.clone(), None, 3, 0, false).take(4);
        for b in batches {
            let xs: Vec<Vec<f64>> =
                b.x.chunks(16)
                    .map(|c| c.iter().map(|&v| v as f64).collect())
                    .collect();
            let ys: Vec<usize> = b.y.iter().map(|&v| v as usize).collect();
            for (slot, which) in [(0usize, 0usize), (1, 2)] {
                for k in 0..p0[which].len() {
                    let (mut pp, mut pm) = (p0.clone(), p0.clone());
                    pp[which][k] += h;
                    pm[which][k] -= h;
                    let g = (batch_loss(&pp, &xs, &ys) - batch_loss(&pm, &xs, &ys)) / (2.0 * h);
                    fw[slot][k] += g * g;
                }
            }
            for (x, &y) in xs.iter().zip(&ys) {
                let a1 = conv_relu(x, 1, &p0[0], &p0[1], 2);
                acts.extend(a1.iter().map(|&v| v as f32));
                for k in 0..a1.len() {
                    let (mut ap, mut am) = (a1.clone(), a1.clone());
                    ap[k] += h;
                    am[k] -= h;
                    // L_m is the mean over the minibatch's 2 images.
                    let g =
                        (loss_from_a1(&p0, &ap, y) - loss_from_a1(&p0, &am, y)) / (2.0 * h) / 2.0;
                    fa += g * g;
                }
            }
        }
        let m = 4.0;
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 2e-3 * b.abs().max(1e-12) + 1e-9,
                "{what}: {a} vs reference {b}"
            );
        };
        let tr = [fw[0].iter().sum::<f64>() / m, fw[1].iter().sum::<f64>() / m];
        assert!(tr[0] > 0.0 && tr[1] > 0.0 && fa > 0.0);
        close(s.units[0].weight_trace, tr[0], "conv1 weight trace");
        close(s.units[1].weight_trace, tr[1], "conv2 weight trace");
        assert_eq!(s.units[0].act_trace, 0.0, "conv1 reads the image");
        close(s.units[1].act_trace, fa / m, "conv2 input trace");
        // Quantization noise: per-output-channel symmetric weights, calibrated activations.
        let wnoise = |w: &[f64], rows: usize, bits: u32| {
            let qmax = ops::weight_qmax(bits) as f64;
            let per = w.len() / rows;
            let mut e = 0f64;
            for r in w.chunks(per) {
                let mx = r.iter().fold(0f64, |a, v| a.max(v.abs()));
                let sc = if mx > 0.0 { mx / qmax } else { 1.0 };
                for &v in r {
                    let q = ((v / sc).round()).clamp(-qmax, qmax) * sc;
                    e += (q - v) * (q - v);
                }
            }
            e / w.len() as f64
        };
        for (bi, bits) in [2u32, 4].into_iter().enumerate() {
            close(
                s.units[0].wbits[bi].1,
                tr[0] * wnoise(&p0[0], 2, bits),
                "conv1 Ω_w",
            );
            close(
                s.units[1].wbits[bi].1,
                tr[1] * wnoise(&p0[2], 3, bits),
                "conv2 Ω_w",
            );
            let alpha = crate::model::best_clip(&acts, bits) as f64;
            let st = alpha / ops::act_levels(bits) as f64;
            let an = acts
                .iter()
                .map(|&v| {
                    let v = v as f64;
                    let q = (v.clamp(0.0, alpha) / st).round() * st;
                    (q - v) * (q - v)
                })
                .sum::<f64>()
                / acts.len() as f64;
            close(s.units[1].abits[bi].1, fa / m * an, "conv2 Ω_a");
        }
        // Pruning half: conv1 keeps 1 of 2 filters, conv2 2 of 3, by filter L2 norm.
        for (u, which, rows) in [(0usize, 0usize, 2usize), (1, 2, 3)] {
            let w = &p0[which];
            let per = w.len() / rows;
            let norms: Vec<f64> = w
                .chunks(per)
                .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
                .collect();
            let kept = seer_policy::kept_channels(0.5, rows);
            let keep = crate::model::top_k(&norms, kept);
            let e: f64 = (0..rows)
                .filter(|r| !keep.contains(r))
                .flat_map(|r| (r * per..(r + 1) * per).map(|k| fw[u][k] * w[k] * w[k]))
                .sum::<f64>()
                / m;
            assert!(e > 0.0);
            assert_eq!(s.units[u].prune[0], (0.0, 0.0));
            close(s.units[u].prune[1].1, e, "pruning energy");
        }
        let scores = s.gene_scores(&space).unwrap();
        assert_eq!(scores.len(), space.dim());
        for (g, row) in space.genes().iter().zip(&scores) {
            assert_eq!(row.len(), g.candidates.len());
        }
    }

    #[test]
    fn refuses_a_compressed_model_and_too_few_images() {
        let (mut model, space, data) = tiny();
        let norm = Normalize::unit(1);
        let few = SensitivityConfig {
            images: 1,
            batch: 2,
            seed: 0,
        };
        assert!(fisher_sensitivity(&model, &space, &data, &norm, &few).is_err());
        let p = space.uniform(4, 4, 0.0).unwrap();
        model.apply_policy(&space, &p).unwrap();
        let e = fisher_sensitivity(&model, &space, &data, &norm, &SensitivityConfig::default());
        assert!(e.unwrap_err().to_string().contains("full-precision"));
    }
}
