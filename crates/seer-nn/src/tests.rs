//! Unit tests across the model, training and checkpoint modules (tiny nets, synthetic data).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seer_policy::{InputShape, Policy, ResidualPruning, SearchSpace, SpaceConfig, builtin};

use crate::checkpoint;
use crate::data::{Dataset, Normalize};
use crate::model::Model;
use crate::train::{self, TrainConfig};

fn input(s: &str) -> Option<InputShape> {
    Some(s.parse().unwrap())
}

fn rand_x(n: usize, shape: InputShape, seed: u64) -> Tensor {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * shape.c * shape.h * shape.w)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(v, (n, shape.c, shape.h, shape.w), &Device::Cpu).unwrap()
}

/// Eval-mode outputs of `m` on `x`, flattened.
fn outputs(m: &Model, x: &Tensor) -> Vec<f32> {
    m.forward(x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// `max |a − b|` over all elements.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn random_policy(space: &SearchSpace, seed: u64) -> Policy {
    drawn_policy(space, seed, |g, r| r.random_range(0..g.candidates.len()))
}

/// A policy of `space` whose every gene's candidate index `pick` draws from a generator seeded
/// with `seed`.
fn drawn_policy(
    space: &SearchSpace,
    seed: u64,
    mut pick: impl FnMut(&seer_policy::Gene, &mut ChaCha8Rng) -> usize,
) -> Policy {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let idx: Vec<usize> = space.genes().iter().map(|g| pick(g, &mut r)).collect();
    space.from_indices(&idx).unwrap()
}

#[test]
fn layer_shapes_and_macs_equal_the_spec() {
    for (arch, inp) in [
        ("resnet20", "28x28x1"),
        ("resnet56", "8x8x3"),
        ("vgg-small", "8x8x3"),
        ("lenet5", "28x28x1"),
        ("resnet20", "32x32x3"),
    ] {
        let spec = builtin(arch, input(inp), None).unwrap();
        let model = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
        let x = rand_x(1, spec.input, 1);
        let shapes = model.layer_shapes(&x).unwrap();
        assert_eq!(shapes.len(), spec.layers.len(), "{arch}");
        for (l, s) in spec.layers.iter().zip(&shapes) {
            let got: usize = s[1..].iter().product();
            assert_eq!(
                got,
                l.out_shape.iter().product::<usize>(),
                "{arch} {}: {s:?} vs {:?}",
                l.name,
                l.out_shape
            );
            assert_eq!(s[1], l.out_shape[0], "{arch} {}", l.name);
        }
        let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
        let cost = space.cost(&space.uniform(8, 8, 0.0).unwrap()).unwrap();
        let measured = model.measured_macs(&x).unwrap();
        assert_eq!(
            measured.iter().map(|m| m.1).sum::<u64>(),
            cost.total_macs,
            "{arch} {inp}"
        );
        for (m, lc) in measured.iter().zip(&cost.layers) {
            assert_eq!((m.0, m.1), (lc.layer, lc.macs), "{arch} {}", lc.name);
        }
    }
    let spec = builtin("resnet20", input("32x32x3"), None).unwrap();
    let model = Model::new(spec, 0, &Device::Cpu).unwrap();
    let macs: u64 = model
        .measured_macs(&rand_x(1, InputShape::new(32, 32, 3), 0))
        .unwrap()
        .iter()
        .map(|m| m.1)
        .sum();
    assert_eq!(macs, 40_551_040); // docs/method.md §2 reference
}

/// Populates BN running statistics with a few training-mode passes.
fn warm_bn(m: &Model, seed: u64) {
    for k in 0..3 {
        m.forward(&rand_x(8, m.spec().input, seed + k), true)
            .unwrap();
    }
}

#[test]
fn slimmed_equals_masked_on_random_policies() {
    let cases = [
        ("resnet20", "12x12x1", ResidualPruning::Tied),
        ("resnet20", "12x12x1", ResidualPruning::Masked),
        ("lenet5", "28x28x1", ResidualPruning::Tied),
        ("vgg-small", "8x8x3", ResidualPruning::Tied),
    ];
    for (ci, (arch, inp, mode)) in cases.into_iter().enumerate() {
        let spec = builtin(arch, input(inp), None).unwrap();
        let cfg = SpaceConfig {
            residual_pruning: mode,
            ..SpaceConfig::default()
        };
        let space = SearchSpace::new(spec.clone(), cfg).unwrap();
        let trials = if arch == "vgg-small" { 1 } else { 2 };
        for trial in 0..trials {
            let mut m = Model::new(spec.clone(), trial, &Device::Cpu).unwrap();
            warm_bn(&m, 10 * trial);
            let pol = random_policy(&space, 100 * ci as u64 + trial);
            m.apply_policy(&space, &pol).unwrap();
            let calib: Vec<Tensor> = (0..2).map(|k| rand_x(8, spec.input, 50 + k)).collect();
            m.calibrate(calib.iter()).unwrap();
            let slim = m.slim().unwrap();
            assert!(slim.num_params() < m.num_params() || pol.units.iter().all(|u| u.prune == 0.0));
            let x = rand_x(4, spec.input, 7 + trial);
            let diff = max_abs_diff(
                &m.forward(&x, false).unwrap(),
                &slim.forward(&x, false).unwrap(),
            );
            assert!(
                diff <= 1e-4,
                "{arch} {mode:?} trial {trial}: max abs diff {diff}"
            );
            // The slimmed network's real MACs are what seer-policy counts for the policy (tied);
            // with masked residuals the stream is counted at full width, but channels that no
            // branch produces (e.g. outside an option-A shortcut's range) are dropped too.
            let measured: u64 = slim
                .measured_macs(&x.narrow(0, 0, 1).unwrap())
                .unwrap()
                .iter()
                .map(|m| m.1)
                .sum();
            let counted = space.cost(&pol).unwrap().total_macs;
            if mode == ResidualPruning::Tied {
                assert_eq!(measured, counted, "{arch} {mode:?} trial {trial}");
            } else {
                assert!(
                    measured <= counted,
                    "{arch} {mode:?} trial {trial}: {measured} > {counted}"
                );
            }
        }
    }
}

#[test]
fn policy_for_another_network_is_refused() {
    let spec = builtin("lenet5", None, None).unwrap();
    let mut m = Model::new(spec, 0, &Device::Cpu).unwrap();
    let other = SearchSpace::new(
        builtin("resnet20", input("28x28x1"), None).unwrap(),
        SpaceConfig::default(),
    )
    .unwrap();
    let p = other.uniform(4, 4, 0.5).unwrap();
    let e = m.apply_policy(&other, &p).unwrap_err().to_string();
    assert!(e.contains("resnet20") && e.contains("lenet5"), "{e}");
}

/// Two-class synthetic images: class 1 has a bright square in the top-left corner.
fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let l = (i % 2) as u8;
        for y in 0..28 {
            for x in 0..28 {
                let base: u8 = r.random_range(0..60);
                images.push(if l == 1 && y < 10 && x < 10 {
                    200
                } else {
                    base
                });
            }
        }
        labels.push(l);
    }
    Dataset::new([1, 28, 28], 10, images, labels).unwrap()
}

#[test]
fn training_learns_and_qat_and_checkpoints_roundtrip() {
    let data = synthetic(256, 1);
    let test = synthetic(128, 2);
    let norm = Normalize::new(&[0.2], &[0.3]);
    let spec = builtin("lenet5", None, None).unwrap();
    let mut m = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    let before = train::evaluate(&m, &test, &norm, 64).unwrap();
    let cfg = TrainConfig {
        steps: Some(40),
        batch_size: 32,
        lr: 0.05,
        ..TrainConfig::default()
    };
    let mut seen = 0;
    let rep = train::train(&m, &data, &norm, &cfg, &mut |_| seen += 1).unwrap();
    assert_eq!((rep.steps, seen), (40, 40));
    let after = train::evaluate(&m, &test, &norm, 64).unwrap();
    assert!(
        after.top1 >= 95.0,
        "before {} after {}",
        before.top1,
        after.top1
    );

    // QAT: w4a4 with half the channels pruned still learns the task.
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let pol = space.uniform(4, 4, 0.5).unwrap();
    let qcfg = TrainConfig {
        steps: Some(20),
        batch_size: 32,
        lr: 0.01,
        ..TrainConfig::default()
    };
    train::finetune_policy(&mut m, &space, &pol, &data, &norm, &qcfg, &mut |_| {}).unwrap();
    let q = train::evaluate(&m, &test, &norm, 64).unwrap();
    assert!(q.top1 >= 90.0, "qat top1 {}", q.top1);

    // Checkpoint round trip (masked and slimmed), bit-exact outputs.
    let td = tempfile::tempdir().unwrap();
    let x = rand_x(3, spec.input, 9);
    for (k, model) in [m.try_clone().unwrap(), m.slim().unwrap()]
        .into_iter()
        .enumerate()
    {
        let p = td.path().join(format!("m{k}.safetensors"));
        checkpoint::save(&model, &p, Some("synthetic"), &serde_json::json!({"k": k})).unwrap();
        let (back, info) = checkpoint::load(&p, Some("lenet5"), &Device::Cpu).unwrap();
        assert_eq!(info.dataset.as_deref(), Some("synthetic"));
        assert_eq!(back.policy(), Some(&pol));
        assert_eq!(outputs(&model, &x), outputs(&back, &x));
        // wrong arch, truncated file, garbage: clear errors
        let e = checkpoint::load(&p, Some("resnet20"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds a lenet5 model, not resnet20"), "{e}");
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() / 2]).unwrap();
        let e = checkpoint::load(&p, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt or truncated"), "{e}");
    }
}

#[test]
fn sgd_skips_vars_without_gradient_and_cosine_ends_at_zero() {
    use candle_core::Var;
    let a = Var::from_vec(vec![1f32, 2.0], (1, 2), &Device::Cpu).unwrap();
    let b = Var::from_vec(vec![5f32], 1, &Device::Cpu).unwrap();
    let loss = a.as_tensor().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let mut sgd = train::Sgd::new(vec![a.clone(), b.clone()], 0.9, 0.1);
    sgd.step(&g, 0.5).unwrap();
    // g = 1 + 0.1·w
    assert_eq!(
        a.as_tensor().to_vec2::<f32>().unwrap(),
        vec![vec![1.0 - 0.5 * 1.1, 2.0 - 0.5 * 1.2]]
    );
    assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![5.0]);
    assert!((train::cosine_lr(0.1, 0, 10) - 0.1).abs() < 1e-12);
    assert!(train::cosine_lr(0.1, 10, 10).abs() < 1e-12);
}

#[test]
fn resumed_training_matches_an_uninterrupted_run_without_momentum() {
    let data = synthetic(128, 3);
    let norm = Normalize::new(&[0.2], &[0.3]);
    let spec = builtin("lenet5", None, None).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        momentum: 0.0,
        seed: 4,
        ..TrainConfig::default()
    };
    let full = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    train::train(&full, &data, &norm, &cfg, &mut |_| {}).unwrap();
    // One epoch, then resume at epoch 1 for the other two: same schedule, same batches.
    let part = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    let mut steps = Vec::new();
    train::train(
        &part,
        &data,
        &norm,
        &TrainConfig {
            stop_epoch: Some(1),
            ..cfg.clone()
        },
        &mut |s| steps.push((s.step, s.epoch)),
    )
    .unwrap();
    train::train(
        &part,
        &data,
        &norm,
        &TrainConfig {
            start_epoch: 1,
            ..cfg.clone()
        },
        &mut |s| steps.push((s.step, s.epoch)),
    )
    .unwrap();
    assert_eq!(steps.len(), 12);
    assert_eq!(steps[4], (4, 1), "resumed run starts at step 4, epoch 1");
    let x = rand_x(2, spec.input, 5);
    let d = max_abs_diff(
        &full.forward(&x, false).unwrap(),
        &part.forward(&x, false).unwrap(),
    );
    assert!(d <= 1e-4, "max |full − resumed| = {d}");
    // Resuming past the end is an error.
    let e = train::train(
        &part,
        &data,
        &norm,
        &TrainConfig {
            start_epoch: 4,
            ..cfg
        },
        &mut |_| {},
    );
    assert!(e.is_err());
}

/// `stem` (fixed) → `a` (conv 8) → `g` (3×3, pad 1, `groups`, `g_out` outputs) → global
/// average pool → `fc`, on 10×10×3.
fn grouped_net(g_out: usize, groups: usize) -> seer_policy::NetworkSpec {
    use seer_policy::{ConvOpts, LayerKind, SpecBuilder};
    let mut b = SpecBuilder::new("grouped", InputShape::new(10, 10, 3), 10);
    let stem = b.conv("stem", None, ConvOpts::new(8, 3).pad(1)).unwrap();
    let a = b.conv("a", Some(stem), ConvOpts::new(8, 3).pad(1)).unwrap();
    let bn = b.op("bn", Some(a), LayerKind::BatchNorm).unwrap();
    let g = b
        .conv("g", Some(bn), ConvOpts::new(g_out, 3).pad(1).groups(groups))
        .unwrap();
    let r = b.op("relu", Some(g), LayerKind::Relu).unwrap();
    let p = b.op("pool", Some(r), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(p), 10, true).unwrap();
    b.finish().unwrap()
}

/// Pruned, calibrated, slimmed: the slimmed model computes the masked one's logits and
/// costs the counted MACs per layer. Returns the slimmed model.
fn prune_and_slim(spec: &seer_policy::NetworkSpec, space: &SearchSpace, p: &Policy) -> Model {
    let mut m = Model::new(spec.clone(), 1, &Device::Cpu).unwrap();
    warm_bn(&m, 3);
    m.apply_policy(space, p).unwrap();
    m.calibrate([&rand_x(8, spec.input, 4)]).unwrap();
    let slim = m.slim().unwrap();
    let x = rand_x(4, spec.input, 5);
    let d = max_abs_diff(
        &m.forward(&x, false).unwrap(),
        &slim.forward(&x, false).unwrap(),
    );
    assert!(d <= 1e-4, "masked vs slimmed max |diff| {d}");
    let measured = slim.measured_macs(&x.narrow(0, 0, 1).unwrap()).unwrap();
    let counted: Vec<(usize, u64)> = space
        .cost(p)
        .unwrap()
        .layers
        .iter()
        .map(|l| (l.layer, l.macs))
        .collect();
    assert_eq!(measured, counted);
    slim
}

/// Issue 13, case 2: `apply_policy` refused every policy that pruned a grouped conv or its
/// producer ("pruning grouped convolutions is not supported"). Cutting one of 8 input
/// channels of a multiplier-2 conv (in 8, out 16, groups 8) removes the pair of outputs that
/// read it: in 7, out 14, groups 7, 12,600 MACs (14,400 unpruned).
#[test]
fn multiplier_conv_loses_the_outputs_of_a_pruned_input() {
    let spec = grouped_net(16, 8);
    let space = SearchSpace::new(
        spec.clone(),
        SpaceConfig {
            prune_ratios: vec![0.0, 0.125],
            ..SpaceConfig::default()
        },
    )
    .unwrap();
    let g = spec.layer_index("g").unwrap();
    for (prune, want, macs) in [(0.0, (8, 16, 8), 14_400), (0.125, (7, 14, 7), 12_600)] {
        let p = space.uniform(4, 4, prune).unwrap();
        let slim = prune_and_slim(&spec, &space, &p);
        let seer_policy::LayerKind::Conv2d {
            in_ch,
            out_ch,
            groups,
            ..
        } = slim.spec().layers[g].kind
        else {
            panic!("g is a conv");
        };
        assert_eq!((in_ch, out_ch, groups), want);
        let x = rand_x(1, spec.input, 0);
        let m = slim.measured_macs(&x).unwrap();
        assert_eq!(m.iter().find(|m| m.0 == g).unwrap().1, macs);
    }
}

/// A grouped conv with two inputs per group (in 8, out 8, groups 4) keeps the same number of
/// channels in every group, of its outputs and of its producer's.
#[test]
fn grouped_conv_keeps_channels_evenly_per_group() {
    let spec = grouped_net(8, 4);
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let (a, g) = (
        spec.layer_index("a").unwrap(),
        spec.layer_index("g").unwrap(),
    );
    for (pa, pg) in [(0.5, 0.5), (0.5, 0.0), (0.0, 0.5), (0.25, 0.75)] {
        let mut p = space.uniform(5, 6, 0.0).unwrap();
        p.units[0].prune = pa;
        p.units[1].prune = pg;
        let slim = prune_and_slim(&spec, &space, &p);
        let seer_policy::LayerKind::Conv2d {
            in_ch,
            out_ch,
            groups,
            ..
        } = slim.spec().layers[g].kind
        else {
            panic!("g is a conv");
        };
        // 4 blocks of 2 channels: round(2·(1 − p)) ≥ 1 per block.
        let kept = |p: f64| 4 * (2.0 * (1.0 - p)).round().max(1.0) as usize;
        assert_eq!(
            (in_ch, out_ch, groups),
            (kept(pa), kept(pg), 4),
            "{pa} {pg}"
        );
        assert_eq!(slim.spec().layers[a].out_shape[0], kept(pa));
    }
}

/// Issue 13, case 5: ResNet-20 at 16×16×3 with a uniform w4a8 policy, calibrated, gave
/// different logits for 512 images evaluated in one batch and in batches of 1 or 7 (4,255 of
/// the 5,120 logits, up to 1.3e-5 apart; batch 64 matched): candle's matmul in the classifier
/// changed its kernel with the batch size. Every batch must now give the same bits.
#[test]
fn eval_logits_do_not_depend_on_the_batch() {
    let spec = builtin("resnet20", input("16x16x3"), None).unwrap();
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let mut m = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    warm_bn(&m, 10);
    m.apply_policy(&space, &space.uniform(4, 8, 0.0).unwrap())
        .unwrap();
    m.calibrate([&rand_x(64, spec.input, 5)]).unwrap();
    let n = 512;
    let x = rand_x(n, spec.input, 7);
    let full = outputs(&m, &x);
    assert_eq!(full.len(), 5_120);
    for b in [1usize, 7, 64] {
        let mut got = Vec::with_capacity(full.len());
        for s in (0..n).step_by(b) {
            got.extend(outputs(&m, &x.narrow(0, s, b.min(n - s)).unwrap()));
        }
        let differ = got
            .iter()
            .zip(&full)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "batch {b} vs {n}: {differ} of 5,120 logits differ"
        );
    }
}

/// Two-class synthetic `h×h×1` images (class 1: a bright top-left square).
fn synthetic_sized(n: usize, h: usize, seed: u64) -> Dataset {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let l = (i % 2) as u8;
        for y in 0..h {
            for x in 0..h {
                let base: u8 = r.random_range(0..60);
                let bright = l == 1 && y < h / 3 && x < h / 3;
                images.push(if bright { 200 } else { base });
            }
        }
        labels.push(l);
    }
    Dataset::new([1, h, h], 10, images, labels).unwrap()
}

/// The fine-tune of a label on the slimmed network (pruned channels removed before BN
/// re-estimation, calibration and QAT) equals the masked full-width fine-tune up to float
/// rounding, for a fixed seed; and it is deterministic.
#[test]
fn slim_finetune_equals_masked_finetune() {
    use seer_label::FinetuneNetwork;
    let cases = [
        ("resnet20", 12, ResidualPruning::Tied, 3),
        ("resnet20", 12, ResidualPruning::Masked, 4),
        ("lenet5", 28, ResidualPruning::Tied, 5),
    ];
    for (arch, h, mode, seed) in cases {
        let spec = builtin(arch, input(&format!("{h}x{h}x1")), None).unwrap();
        let space = SearchSpace::new(
            spec.clone(),
            SpaceConfig {
                residual_pruning: mode,
                ..SpaceConfig::default()
            },
        )
        .unwrap();
        let data = synthetic_sized(128, h, seed);
        let val = synthetic_sized(64, h, seed + 100);
        let norm = Normalize::new(&[0.2], &[0.3]);
        let base = Model::new(spec.clone(), seed, &Device::Cpu).unwrap();
        warm_bn(&base, seed);
        // A policy that prunes every prunable unit (a random non-zero ratio), random bits.
        let pol = drawn_policy(&space, seed, |g, r| match g.kind {
            seer_policy::GeneKind::Prune if g.candidates.len() > 1 => {
                r.random_range(1..g.candidates.len())
            }
            _ => r.random_range(0..g.candidates.len()),
        });
        let cfg = |network| TrainConfig {
            steps: Some(4),
            batch_size: 16,
            lr: 0.02,
            seed: 11,
            network,
            ..TrainConfig::default()
        };
        let run = |network| {
            let mut m = base.try_clone().unwrap();
            let rep = train::finetune_policy(
                &mut m,
                &space,
                &pol,
                &data,
                &norm,
                &cfg(network),
                &mut |_| {},
            )
            .unwrap();
            (m, rep.final_loss)
        };
        let (masked, loss_m) = run(FinetuneNetwork::Masked);
        let (slim, loss_s) = run(FinetuneNetwork::Slim);
        assert!(!masked.is_slim() && slim.is_slim(), "{arch}");
        assert!(slim.num_params() < masked.num_params(), "{arch}");
        assert!(
            (loss_m - loss_s).abs() <= 1e-4 * loss_m.abs().max(1.0),
            "{arch} {mode:?}: mean loss masked {loss_m} slim {loss_s}"
        );
        let x = rand_x(8, spec.input, seed + 7);
        let (a, b) = (outputs(&masked, &x), outputs(&slim, &x));
        let scale = a.iter().fold(1f32, |s, v| s.max(v.abs()));
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |s, (p, q)| s.max((p - q).abs()));
        assert!(
            d <= 1e-3 * scale,
            "{arch} {mode:?}: logits differ by {d} (scale {scale})"
        );
        // Validation top-1, as a label measures it.
        let (tm, ts) = (
            train::evaluate(&masked, &val, &norm, 32).unwrap().top1,
            train::evaluate(&slim, &val, &norm, 32).unwrap().top1,
        );
        assert!(
            (tm - ts).abs() <= 100.0 / 64.0,
            "{arch}: top-1 {tm} vs {ts}"
        );
        // Deterministic for a seed: a second slim run is bitwise the same.
        let (again, _) = run(FinetuneNetwork::Slim);
        assert_eq!(outputs(&again, &x), b, "{arch}");
        // The calibrated clip ranges agree (the slim model samples the masked layout).
        let alphas = |m: &Model| -> Vec<f32> {
            m.named_tensors()
                .into_iter()
                .filter(|(n, _)| n.ends_with("act_alpha"))
                .map(|(_, t)| t.to_vec1::<f32>().unwrap()[0])
                .collect()
        };
        for (p, q) in alphas(&masked).iter().zip(alphas(&slim)) {
            assert!(
                (p - q).abs() <= 1e-3 * p.abs().max(1e-3),
                "{arch}: α {p} vs {q}"
            );
        }
    }
}

/// The training forward with BatchNorm+ReLU and add+ReLU fused equals the unfused one (every
/// layer its own op), in f32 and under a QAT policy, masked and slimmed: logits and the
/// gradients of every trainable variable (weights, BatchNorm, clip ranges α).
#[test]
fn fused_training_forward_equals_unfused() {
    let spec = builtin("resnet20", input("12x12x1"), None).unwrap();
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    for (trial, quant) in [(0u64, false), (1, true), (2, true)] {
        let mut m = Model::new(spec.clone(), trial, &Device::Cpu).unwrap();
        warm_bn(&m, 30 + trial);
        if quant {
            m.apply_policy(&space, &random_policy(&space, 200 + trial))
                .unwrap();
            let calib: Vec<Tensor> = (0..2).map(|k| rand_x(8, spec.input, 60 + k)).collect();
            m.calibrate(calib.iter()).unwrap();
            if trial == 2 {
                m = m.slim().unwrap();
            }
        }
        let x = rand_x(6, spec.input, 70 + trial);
        let vars = m.trainable_vars(quant);
        let run = |fused: bool| {
            let y = if fused {
                m.forward(&x, true).unwrap()
            } else {
                m.forward_unfused(&x, true).unwrap()
            };
            let r = rand_x(6, spec.input, 90).flatten_from(1).unwrap();
            let r = r.narrow(1, 0, y.dim(1).unwrap()).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| g.get(v.as_tensor()).unwrap().clone())
                .collect();
            (y, grads)
        };
        let (yf, gf) = run(true);
        let (yu, gu) = run(false);
        let d = max_abs_diff(&yf, &yu);
        assert!(d <= 1e-5, "trial {trial}: logits differ by {d}");
        for (i, (a, b)) in gf.iter().zip(&gu).enumerate() {
            let scale = 1.0
                + b.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            let d = max_abs_diff(a, b);
            assert!(
                d <= 1e-4 * scale,
                "trial {trial}: gradient {i} differs by {d}"
            );
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn keep_freed_memory_takes_effect_on_glibc() {
    assert!(crate::keep_freed_memory(), "mallopt refused a setting");
}

/// A user's `GLIBC_TUNABLES` arena setting is recognised among other tunables; others, and
/// look-alike names, are not.
#[test]
fn glibc_tunables_arena_max_is_recognised() {
    use crate::sets_arena_max;
    assert!(sets_arena_max("glibc.malloc.arena_max=2"));
    assert!(sets_arena_max(
        "glibc.malloc.trim_threshold=128:glibc.malloc.arena_max=4"
    ));
    assert!(!sets_arena_max("glibc.malloc.trim_threshold=128"));
    assert!(!sets_arena_max("glibc.malloc.arena_test=2"));
    assert!(!sets_arena_max("glibc.malloc.arena_max"));
    assert!(!sets_arena_max(""));
}

/// Networks with channel concatenations (ONNX `Concat`, issue 20), on 8×8×1, 10 classes:
/// - `concat-codes`: stem → {1×1 conv, 3×3 conv, 3×3 conv} (each + BN + ReLU) → concat of
///   three → max pool → conv → global pool → fc (every concat input requantised alike on
///   the integer engine);
/// - `concat-residual`: stem → {3×3 conv + BN + ReLU, 1×1 conv + BN} → concat → residual add
///   with the stem's output → ReLU → global pool → fc (a concat on a stream kept in float).
pub(crate) fn concat_nets() -> Vec<seer_policy::NetworkSpec> {
    use seer_policy::{ConvOpts, LayerKind, SpecBuilder};
    let inp = InputShape::new(8, 8, 1);
    let mut b = SpecBuilder::new("concat-codes", inp, 10);
    let stem = b.conv("stem", None, ConvOpts::new(6, 3).pad(1)).unwrap();
    let sb = b.op("stem_bn", Some(stem), LayerKind::BatchNorm).unwrap();
    let x = b.op("stem_relu", Some(sb), LayerKind::Relu).unwrap();
    let mut branches = Vec::new();
    for (name, out, k) in [("b1", 3, 1), ("b3", 4, 3), ("b3b", 2, 3)] {
        let c = b
            .conv(name, Some(x), ConvOpts::new(out, k).pad(k / 2))
            .unwrap();
        let n = b
            .op(&format!("{name}_bn"), Some(c), LayerKind::BatchNorm)
            .unwrap();
        branches.push(
            b.op(&format!("{name}_relu"), Some(n), LayerKind::Relu)
                .unwrap(),
        );
    }
    let cat = b.concat("cat", &branches).unwrap();
    let mp = b
        .op(
            "pool",
            Some(cat),
            LayerKind::MaxPool {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
                padding_end: None,
            },
        )
        .unwrap();
    let c2 = b.conv("c2", Some(mp), ConvOpts::new(8, 3).pad(1)).unwrap();
    let n2 = b.op("c2_bn", Some(c2), LayerKind::BatchNorm).unwrap();
    let r2 = b.op("c2_relu", Some(n2), LayerKind::Relu).unwrap();
    let g = b.op("gap", Some(r2), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(g), 10, true).unwrap();
    let codes = b.finish().unwrap();

    let mut b = SpecBuilder::new("concat-residual", inp, 10);
    let stem = b.conv("stem", None, ConvOpts::new(6, 3).pad(1)).unwrap();
    let sb = b.op("stem_bn", Some(stem), LayerKind::BatchNorm).unwrap();
    let x = b.op("stem_relu", Some(sb), LayerKind::Relu).unwrap();
    let a = b.conv("a", Some(x), ConvOpts::new(4, 3).pad(1)).unwrap();
    let an = b.op("a_bn", Some(a), LayerKind::BatchNorm).unwrap();
    let ar = b.op("a_relu", Some(an), LayerKind::Relu).unwrap();
    let c = b.conv("b", Some(x), ConvOpts::new(2, 1)).unwrap();
    let cn = b.op("b_bn", Some(c), LayerKind::BatchNorm).unwrap();
    let cat = b.concat("cat", &[ar, cn]).unwrap();
    let add = b.add("add", &[cat, x]).unwrap();
    let r = b.op("add_relu", Some(add), LayerKind::Relu).unwrap();
    let g = b.op("gap", Some(r), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(g), 10, true).unwrap();
    vec![codes, b.finish().unwrap()]
}

/// Pruning stops at a concat: the convs it reads keep every channel under any policy, the
/// others prune; the slimmed model computes the masked one's logits with the counted MACs.
#[test]
fn concat_inputs_keep_their_channels_and_slim_exactly() {
    for spec in concat_nets() {
        let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let mut pruned_elsewhere = false;
        for _ in 0..4 {
            let idx: Vec<usize> = space
                .genes()
                .iter()
                .map(|g| r.random_range(0..g.candidates.len()))
                .collect();
            let p = space.from_indices(&idx).unwrap();
            let slim = prune_and_slim(&spec, &space, &p);
            for l in &spec.layers {
                let feeds_concat = spec.layers.iter().any(|c| {
                    matches!(c.kind, seer_policy::LayerKind::Concat)
                        && c.inputs.iter().any(|&q| spec.layers[q].name == l.name)
                });
                let i = spec.layer_index(&l.name).unwrap();
                let (full, got) = (l.out_shape[0], slim.spec().layers[i].out_shape[0]);
                if feeds_concat {
                    assert_eq!(got, full, "{}: {} feeds the concat", spec.name, l.name);
                } else if got < full {
                    pruned_elsewhere = true;
                }
            }
            let cat = spec.layer_index("cat").unwrap();
            assert_eq!(
                slim.spec().layers[cat].out_shape,
                spec.layers[cat].out_shape
            );
        }
        if spec.name == "concat-codes" {
            assert!(pruned_elsewhere, "the stem and c2 can still prune");
        }
    }
}

/// Distillation (`TrainConfig::distill`): a fresh student trained on the teacher's logits alone
/// (the labels are not read) comes to agree with the teacher, and its logits move towards the
/// teacher's (the distillation loss on held-out images falls).
#[test]
fn distillation_pulls_the_student_towards_the_teacher() {
    let data = synthetic(256, 1);
    let test = synthetic(128, 2);
    let norm = Normalize::new(&[0.2], &[0.3]);
    let spec = builtin("lenet5", None, None).unwrap();
    let teacher = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        steps: Some(40),
        batch_size: 32,
        lr: 0.05,
        ..TrainConfig::default()
    };
    train::train(&teacher, &data, &norm, &cfg, &mut |_| {}).unwrap();
    let net = std::sync::Arc::new(crate::eval::EvalNet::compile(&teacher).unwrap());
    // Labels scrambled: only the teacher can teach the task.
    let mut labels = data.labels.clone();
    labels.rotate_left(1);
    let images: Vec<u8> = (0..data.len())
        .flat_map(|i| data.image(i).to_vec())
        .collect();
    let scrambled = Dataset::new([1, 28, 28], 10, images, labels).unwrap();
    let student = Model::new(spec, 7, &Device::Cpu).unwrap();
    let x = {
        let b = crate::data::BatchIter::sequential(&test, 128, norm.clone())
            .next()
            .unwrap();
        train::batch_tensors(b, &student).unwrap().0
    };
    let kl = |m: &Model| {
        let t = teacher.forward(&x, false).unwrap();
        let s = m.forward(&x, false).unwrap();
        train::distill_loss(&s, &t, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = kl(&student);
    let dcfg = TrainConfig {
        distill: Some(train::Distill {
            teacher: net,
            temperature: 1.0,
        }),
        ..cfg
    };
    train::train(&student, &scrambled, &norm, &dcfg, &mut |_| {}).unwrap();
    let after = kl(&student);
    assert!(
        after < 0.5 * before,
        "KL to the teacher {before} -> {after}"
    );
    let acc = train::evaluate(&student, &test, &norm, 64).unwrap().top1;
    assert!(acc >= 90.0, "distilled student top-1 {acc}");
    // Bad settings are clear errors before any step.
    let mut bad = dcfg.clone();
    bad.distill.as_mut().unwrap().temperature = 0.0;
    let e = train::train(&student, &data, &norm, &bad, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("distillation temperature 0"), "{e}");
}

/// A fine-tune with learned weight steps (`WeightQuant::Lsq`) ends with the steps folded into
/// the weights: no steps remain, and every quantized weight is already on its max-range grid
/// (what checkpoints, evaluation and the integer export read). It trains something else than
/// the max-range fine-tune, and is deterministic.
#[test]
fn learned_weight_steps_fold_into_the_weights() {
    use seer_label::FinetuneNetwork;
    use train::WeightQuant;
    for (arch, h, seed) in [("lenet5", 28, 21u64), ("resnet20", 12, 22)] {
        let spec = builtin(arch, input(&format!("{h}x{h}x1")), None).unwrap();
        let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
        let data = synthetic_sized(96, h, seed);
        let norm = Normalize::new(&[0.2], &[0.3]);
        let base = Model::new(spec.clone(), seed, &Device::Cpu).unwrap();
        warm_bn(&base, seed);
        // Low bits everywhere (2 and 3), some pruning (ratios 0 and 0.25).
        let pol = drawn_policy(&space, seed, |g, r| {
            r.random_range(0..g.candidates.len().min(2))
        });
        let run = |weight_quant| {
            let mut m = base.try_clone().unwrap();
            let cfg = TrainConfig {
                steps: Some(4),
                batch_size: 16,
                lr: 0.02,
                seed: 5,
                network: FinetuneNetwork::Slim,
                weight_quant,
                ..TrainConfig::default()
            };
            train::finetune_policy(&mut m, &space, &pol, &data, &norm, &cfg, &mut |_| {}).unwrap();
            m
        };
        let (max, lsq) = (run(WeightQuant::Max), run(WeightQuant::Lsq));
        assert!(!lsq.has_weight_steps(), "{arch}");
        let weights = |m: &Model| -> Vec<(usize, Vec<f32>, Tensor)> {
            let named: std::collections::HashMap<String, Tensor> =
                m.named_tensors().into_iter().collect();
            m.spec()
                .layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let bits = m.comp()[i].wbits?;
                    let w = named.get(&format!("{}.weight", l.name))?.clone();
                    Some((
                        bits as usize,
                        w.flatten_all().unwrap().to_vec1().unwrap(),
                        w,
                    ))
                })
                .collect()
        };
        let (wl, wm) = (weights(&lsq), weights(&max));
        assert!(!wl.is_empty(), "{arch}");
        for (bits, v, w) in &wl {
            let q: Vec<f32> = crate::ops::fake_quant_weight(w, *bits as u32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in v.iter().zip(&q) {
                assert!(
                    (a - b).abs() <= 1e-6 * a.abs().max(1e-6),
                    "{arch}, {bits} bits: {a} requantizes to {b}"
                );
            }
        }
        assert!(
            wl.iter().zip(&wm).any(|(a, b)| a.1 != b.1),
            "{arch}: learned steps changed nothing"
        );
        let x = rand_x(8, spec.input, seed + 7);
        assert_eq!(
            outputs(&run(WeightQuant::Lsq), &x),
            outputs(&lsq, &x),
            "{arch}"
        );
    }
}
