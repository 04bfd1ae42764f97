//! `seernet infer`: runs an exported model (`model-<budget>.safetensors`, the integer
//! engine format of `seernet::int::format`) on a dataset split entirely on the integer
//! kernels, and compares its predictions with the fake-quantized float model it was exported
//! from (docs/method.md §7).
//!
//! The float reference is the slim fine-tuned checkpoint the main job saves beside each
//! export (`final/<policy-hash>.float.safetensors`, recorded as `float_model` in the
//! export's provenance, relative to the model's directory) or `--float-model`. It runs in
//! seer-nn with the same policy (weights and activations fake-quantized), so
//! `agreement_with_fake_quant` measures exactly what the integer arithmetic changes.
//!
//! With `--bench-baseline CKPT` it also times, in the same process and interleaved, the
//! full-precision network of `CKPT` on our own f32 kernels (seer-nn's forward pass, seer-kernels
//! conv2d) and on candle's conv2d, and reports `model_speedup` (vs candle),
//! `model_speedup_vs_own_f32` (ratios of best wall times over `--bench-reps` interleaved
//! repetitions), `cpu_model_speedup*` (ratios of total process CPU time, robust on a shared
//! machine) and `size_ratio` (f32 parameter + BatchNorm statistics bytes / packed model bytes:
//! codes, scales, folded multipliers and biases).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use seer_nn::data::batch::BatchIter;
use seer_nn::data::{DataSource, Dataset, Normalize, Split};
use seer_nn::model::{BN_EPS, Model};
use seer_nn::{checkpoint, train};
use seer_policy::LayerKind;
use seernet::int::Isa;
use seernet::int::format::IntModel;

/// Arguments of `seernet infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// Exported model (`model-<budget>.safetensors` of `seernet compress`).
    #[arg(long)]
    model: PathBuf,
    /// Dataset (e.g. fashion-mnist); its images must have the model's input shape.
    #[arg(long)]
    dataset: String,
    /// Image-folder datasets: leave undecodable images out (counted) instead of failing.
    #[arg(long)]
    skip_corrupt: bool,
    /// Split: test (final reports only) or val.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per integer-engine batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Fake-quantized float checkpoint to compare with (default: the `float_model` recorded
    /// in the model's provenance, relative to the model's directory).
    #[arg(long)]
    float_model: Option<PathBuf>,
    /// Skip the fake-quant comparison (agreement fields are null).
    #[arg(long)]
    no_compare: bool,
    /// Also time the full-precision network of this checkpoint (own f32 kernels and candle)
    /// against the integer engine on the same images.
    #[arg(long)]
    bench_baseline: Option<PathBuf>,
    /// Images timed per repetition with `--bench-baseline`.
    #[arg(long, default_value_t = 2048)]
    bench_images: usize,
    /// Interleaved repetitions with `--bench-baseline` (best of).
    #[arg(long, default_value_t = 5)]
    bench_reps: usize,
    /// Write the integer engine's top-1 prediction for every image of the split to this JSON
    /// file (`{"model", "dataset", "split", "n", "shape": [C, H, W], "predictions": [...],
    /// "labels": [...]}`), e.g. to compare another runtime on the same images
    /// (tools/check_qdq_export.py).
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Write the split's images as raw bytes to this file: `n·C·H·W` pixels, NCHW, in the
    /// order of `--predictions` (unnormalised 8-bit values).
    #[arg(long)]
    save_images: Option<PathBuf>,
    /// Print one JSON object (`top1`, `n`, `images_per_s`, `agreement_with_fake_quant`,
    /// `fake_quant_top1`, `normalisation` (the model's, which the float models are fed with),
    /// ...).
    #[arg(long)]
    json: bool,
    /// Kernel path of the integer engine: `auto` (the best this CPU has), `avx512vnni`,
    /// `avx2` or `portable` (plain Rust); every path gives the same logits bit for bit, so
    /// this only changes the speed (e.g. to time the AVX2 kernels on an AVX-512 machine).
    #[arg(long, value_enum, default_value_t = IsaArg::Auto)]
    isa: IsaArg,
}

/// `--isa` of `seernet infer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum IsaArg {
    Auto,
    Avx512vnni,
    Avx2,
    Portable,
}

impl IsaArg {
    /// The engine path; an error when this CPU lacks it.
    fn resolve(self) -> Result<Isa> {
        let isa = match self {
            IsaArg::Auto => return Ok(Isa::detect()),
            IsaArg::Avx512vnni => Isa::Avx512Vnni,
            IsaArg::Avx2 => Isa::Avx2,
            IsaArg::Portable => Isa::Portable,
        };
        if !isa.is_available() {
            bail!(
                "--isa {}: this CPU does not support it (best available: {})",
                isa.name(),
                Isa::detect().name()
            );
        }
        Ok(isa)
    }
}

/// `[n, H, W, C]` pixels of images `lo..hi` (the dataset stores `[C, H, W]`).
fn nhwc(data: &Dataset, lo: usize, hi: usize) -> Vec<u8> {
    let [c, h, w] = data.shape;
    if c == 1 {
        return data.images[lo * h * w..hi * h * w].to_vec();
    }
    let mut out = Vec::with_capacity((hi - lo) * c * h * w);
    for i in lo..hi {
        let img = data.image(i);
        for p in 0..h * w {
            for ch in 0..c {
                out.push(img[ch * h * w + p]);
            }
        }
    }
    out
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best as u32
}

/// Top-1 predictions of the integer engine on images `lo..hi`, in batches.
fn int_predict(
    m: &IntModel,
    data: &Dataset,
    lo: usize,
    hi: usize,
    bs: usize,
    isa: Isa,
) -> Result<Vec<u32>> {
    let k = m.meta().num_classes;
    let mut preds = Vec::with_capacity(hi - lo);
    let mut s = lo;
    while s < hi {
        let e = (s + bs).min(hi);
        let logits = m
            .forward(&nhwc(data, s, e), e - s, isa)
            .with_context(|| format!("integer engine on images {s}..{e}"))?;
        preds.extend(logits.chunks_exact(k).map(argmax));
        s = e;
    }
    Ok(preds)
}

/// Top-1 predictions of a seer-nn model (own f32 kernels; fake-quantized when it carries a
/// policy) on all of `data`.
fn nn_predict(model: &Model, data: &Dataset, norm: &Normalize, bs: usize) -> Result<Vec<u32>> {
    let mut preds = Vec::with_capacity(data.len());
    for b in BatchIter::sequential(data, bs, norm.clone()) {
        let (x, _) = train::batch_tensors(b, model)?;
        preds.extend(model.forward(&x, false)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(preds)
}

/// Zero-pads `x` (`[N, C, H, W]`) by `pads` (`(begin, end)`: `[top, left]`, `[bottom,
/// right]`), then max- (`max`) or average-pools it over `kernel` windows at `stride`.
fn pool2d(
    x: &Tensor,
    max: bool,
    kernel: [usize; 2],
    stride: [usize; 2],
    (b, e): ([usize; 2], [usize; 2]),
) -> candle_core::Result<Tensor> {
    let x = x
        .pad_with_zeros(2, b[0], e[0])?
        .pad_with_zeros(3, b[1], e[1])?;
    let (k, s) = ((kernel[0], kernel[1]), (stride[0], stride[1]));
    if max {
        x.max_pool2d_with_stride(k, s)
    } else {
        x.avg_pool2d_with_stride(k, s)
    }
}

fn candle_forward(
    model: &Model,
    params: &HashMap<String, Tensor>,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let spec = model.spec();
    let mut outs: Vec<Tensor> = Vec::with_capacity(spec.layers.len());
    for l in &spec.layers {
        let inp = |k: usize| match l.inputs.get(k) {
            Some(&p) => outs[p].clone(),
            None => x.clone(),
        };
        let p = |s: &str| params[&format!("{}.{s}", l.name)].clone();
        let bias = params.get(&format!("{}.bias", l.name));
        let y = match l.kind {
            LayerKind::Conv2d {
                stride,
                padding,
                dilation,
                groups,
                padding_end,
                ..
            } => {
                // Asymmetric padding: the zeros beyond the smallest side explicitly, then a
                // symmetric conv.
                let (x, pad) = match padding_end {
                    None => (inp(0), padding[0]),
                    Some(e) => {
                        let m = padding[0].min(padding[1]).min(e[0]).min(e[1]);
                        let x = inp(0)
                            .pad_with_zeros(2, padding[0] - m, e[0] - m)?
                            .pad_with_zeros(3, padding[1] - m, e[1] - m)?;
                        (x, m)
                    }
                };
                let y = x.conv2d(&p("weight"), pad, stride[0], dilation[0], groups)?;
                match bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                    None => y,
                }
            }
            LayerKind::Linear { .. } => {
                let mut xi = inp(0);
                if xi.rank() > 2 {
                    xi = xi.flatten_from(1)?;
                }
                let y = xi.matmul(&p("weight").t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(&b.unsqueeze(0)?)?,
                    None => y,
                }
            }
            LayerKind::BatchNorm => {
                let k = (p("weight") / (p("running_var") + BN_EPS)?.sqrt()?)?;
                let b = (p("bias") - (p("running_mean") * &k)?)?;
                inp(0)
                    .broadcast_mul(&k.reshape((1, (), 1, 1))?)?
                    .broadcast_add(&b.reshape((1, (), 1, 1))?)?
            }
            LayerKind::Relu => inp(0).relu()?,
            LayerKind::Relu6 => inp(0).clamp(0f32, 6f32)?,
            LayerKind::Flatten => inp(0).flatten_from(1)?,
            LayerKind::MaxPool { kernel, stride, .. }
            | LayerKind::AvgPool { kernel, stride, .. } => {
                let max = matches!(l.kind, LayerKind::MaxPool { .. });
                let pads = l.kind.pads().expect("a pool has pads");
                pool2d(&inp(0), max, kernel, stride, pads)?
            }
            LayerKind::GlobalAvgPool => inp(0).mean_keepdim(2)?.mean_keepdim(3)?,
            LayerKind::Add => {
                let mut a = inp(0);
                for k in 1..l.inputs.len() {
                    a = (a + inp(k))?;
                }
                a
            }
            LayerKind::Concat => {
                let parts: Vec<Tensor> = (0..l.inputs.len()).map(inp).collect();
                Tensor::cat(&parts, 1)?
            }
            LayerKind::PadShortcut { stride, out_ch } => {
                let t = inp(0);
                let (h, w) = (t.dim(2)?, t.dim(3)?);
                let sub = |n: usize, s: usize| -> candle_core::Result<Tensor> {
                    let idx: Vec<u32> = (0..n).step_by(s).map(|i| i as u32).collect();
                    let len = idx.len();
                    Tensor::from_vec(idx, len, x.device())
                };
                let t = t
                    .index_select(&sub(h, stride[0])?, 2)?
                    .index_select(&sub(w, stride[1])?, 3)?;
                let c = t.dim(1)?;
                let before = (out_ch - c) / 2;
                t.pad_with_zeros(1, before, out_ch - c - before)?
            }
        };
        outs.push(y);
    }
    let out = outs.pop().expect("a network has layers");
    if out.rank() > 2 {
        out.flatten_from(1)
    } else {
        Ok(out)
    }
}

/// Resolves the fake-quant reference checkpoint: `--float-model`, else the provenance's
/// `float_model` relative to the model file's directory.
fn float_model_path(a: &InferArgs, m: &IntModel) -> Option<PathBuf> {
    if let Some(p) = &a.float_model {
        return Some(p.clone());
    }
    let rel = m.meta().provenance.get("float_model")?.as_str()?;
    let dir = a.model.parent().unwrap_or(Path::new("."));
    Some(dir.join(rel))
}

/// Runs `seernet infer`.
pub fn run(a: InferArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let split = Split::parse(&a.split)?;
    if !a.model.is_file() {
        bail!("model file {} does not exist", a.model.display());
    }
    let m = IntModel::load(&a.model)
        .with_context(|| format!("loading the integer model {}", a.model.display()))?;
    let meta = m.meta();
    let name = match DataSource::parse(&a.dataset)? {
        DataSource::Folder { .. } => {
            let i = &meta.input;
            let hwc = format!("{}x{}x{}", i.height, i.width, i.channels);
            super::nn_util::data_source(&a.dataset, Some(&hwc), a.skip_corrupt)?
        }
        b => b,
    };
    let [c, h, w] = name.shape();
    let inp = &meta.input;
    if (inp.channels, inp.height, inp.width) != (c, h, w) {
        bail!(
            "{} takes {}x{}x{} images but {name} images are {h}x{w}x{c}",
            a.model.display(),
            inp.height,
            inp.width,
            inp.channels
        );
    }
    if meta.num_classes != name.num_classes() {
        bail!(
            "{} has {} classes but {name} has {}",
            a.model.display(),
            meta.num_classes,
            name.num_classes()
        );
    }
    // Other images of the same shape and classes are a user's right (new data, a moved
    // folder): a note, not an error.
    if let Some(d) = meta.provenance.get("dataset").and_then(|d| d.as_str())
        && DataSource::parse(d).is_ok_and(|r| r != name)
    {
        eprintln!(
            "note: {} was exported from a model trained on {d}; running it on {}",
            a.model.display(),
            name.id()
        );
    }
    let splits = name
        .load()
        .with_context(|| format!("loading dataset {name}"))?;
    let data = splits.get(split);
    let n = data.len();
    if n == 0 {
        bail!("the {} split of {name} is empty", a.split);
    }
    let isa = a.isa.resolve()?;

    // Integer engine on the whole split.
    let t0 = Instant::now();
    let preds = int_predict(&m, data, 0, n, a.batch_size, isa)?;
    let secs = t0.elapsed().as_secs_f64();
    let correct = |p: &[u32]| {
        p.iter()
            .zip(&data.labels)
            .filter(|(p, y)| **p == **y as u32)
            .count()
    };
    let top1 = 100.0 * correct(&preds) as f64 / n as f64;
    let images_per_s = n as f64 / secs.max(1e-9);
    if let Some(p) = &a.predictions {
        let v = serde_json::json!({
            "model": a.model.display().to_string(), "dataset": name.id(), "split": a.split,
            "n": n, "shape": data.shape, "predictions": preds, "labels": data.labels,
        });
        std::fs::write(p, format!("{v}\n")).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.save_images {
        std::fs::write(p, &data.images).with_context(|| format!("writing {}", p.display()))?;
    }

    // The normalisation the model was exported with, as the engine applies it: an imported
    // ONNX model keeps its own (`--input-mean/--input-std`), not the dataset's.
    let inp = &meta.input;
    let norm_mean: Vec<f64> = inp.mean.iter().map(|&v| v as f64).collect();
    let norm_std: Vec<f64> = (0..inp.channels)
        .map(|c| inp.channel_std(c) as f64)
        .collect();
    let model_norm = Normalize::new(&norm_mean, &norm_std);

    // The fake-quantized float model.
    let mut fq: Option<(f64, f64, PathBuf)> = None;
    if !a.no_compare {
        let Some(fp) = float_model_path(&a, &m) else {
            bail!(
                "{} records no float model to compare with: pass --float-model CKPT or --no-compare",
                a.model.display()
            );
        };
        let (fm, _) = checkpoint::load(&fp, Some(&meta.arch), &Device::Cpu).with_context(|| {
            format!(
                "loading the fake-quant reference {} (pass --float-model CKPT or --no-compare)",
                fp.display()
            )
        })?;
        let fpol = fm
            .policy()
            .map(|p| serde_json::from_str::<serde_json::Value>(&p.to_json()));
        match fpol {
            Some(Ok(p)) if p == meta.policy => {}
            _ => bail!(
                "{} does not carry the policy of {}: not the model it was exported from",
                fp.display(),
                a.model.display()
            ),
        }
        let fpreds = nn_predict(&fm, data, &model_norm, 256)?;
        let agree = preds.iter().zip(&fpreds).filter(|(a, b)| a == b).count();
        fq = Some((
            agree as f64 / n as f64,
            100.0 * correct(&fpreds) as f64 / n as f64,
            fp,
        ));
    }

    // Optional speed comparison against the full-precision network.
    let mut bench = serde_json::Value::Null;
    if let Some(bp) = &a.bench_baseline {
        bench = run_bench(&a, &m, bp, data, &model_norm, isa)?;
    }

    let (agree, fq_top1) = (fq.as_ref().map(|f| f.0), fq.as_ref().map(|f| f.1));
    if a.json {
        let mut v = serde_json::json!({
            "top1": top1, "n": n, "images_per_s": images_per_s,
            "agreement_with_fake_quant": agree, "fake_quant_top1": fq_top1,
            "top1_diff_points": fq_top1.map(|f| top1 - f),
            "split": a.split, "dataset": name.id(), "model": a.model.display().to_string(),
            "arch": meta.arch, "batch_size": a.batch_size, "isa": isa.name(),
            "model_bytes": m.storage_bytes(),
            "float_model": fq.as_ref().map(|f| f.2.display().to_string()),
            "normalisation": {"mean": norm_mean, "std": norm_std},
        });
        if let serde_json::Value::Object(b) = bench {
            v.as_object_mut().expect("object").extend(b);
        }
        super::emit(&format!("{v}\n"))?;
    } else {
        let mut s = format!(
            "{} ({}) on {name} {}: integer engine top-1 {top1:.2}% ({n} images, {images_per_s:.0} images/s, {}, batch {})\n",
            a.model.display(),
            meta.arch,
            a.split,
            isa.name(),
            a.batch_size
        );
        if let Some((ag, ft, fp)) = &fq {
            s += &format!(
                "fake-quantized float model ({}): top-1 {ft:.2}%; identical top-1 predictions on {:.3}% of images (top-1 difference {:+.2} points)\n",
                fp.display(),
                100.0 * ag,
                top1 - ft
            );
        }
        if let serde_json::Value::Object(b) = &bench {
            s += &format!(
                "speed: integer {:.0} images/s, own f32 {:.0}, candle f32 {:.0} -> {:.2}x vs own f32, {:.2}x vs candle; {:.2}x smaller ({} vs {} bytes)\n",
                b["bench_int_images_per_s"].as_f64().unwrap_or(0.0),
                b["bench_own_f32_images_per_s"].as_f64().unwrap_or(0.0),
                b["bench_candle_f32_images_per_s"].as_f64().unwrap_or(0.0),
                b["model_speedup_vs_own_f32"].as_f64().unwrap_or(0.0),
                b["model_speedup"].as_f64().unwrap_or(0.0),
                b["size_ratio"].as_f64().unwrap_or(0.0),
                b["model_bytes"].as_u64().unwrap_or(0),
                b["f32_bytes"].as_u64().unwrap_or(0),
            );
        }
        super::emit(&s)?;
    }
    Ok(())
}

/// Interleaved best-of timing of the integer engine, the full-precision baseline on our own
/// f32 kernels and on candle, on the first `bench_images` images.
fn run_bench(
    a: &InferArgs,
    m: &IntModel,
    baseline: &Path,
    data: &Dataset,
    norm: &Normalize,
    isa: Isa,
) -> Result<serde_json::Value> {
    let (base, _) = checkpoint::load(baseline, Some(&m.meta().arch), &Device::Cpu)
        .with_context(|| format!("loading the baseline {}", baseline.display()))?;
    if base.policy().is_some() || base.is_slim() {
        bail!(
            "{} carries a compression policy: --bench-baseline needs the full-precision checkpoint",
            baseline.display()
        );
    }
    let k = a.bench_images.clamp(1, data.len());
    let sub: Vec<u32> = (0..k as u32).collect();
    let sub = data.subset(&sub);
    let bs = a.batch_size;
    let batches: Vec<Tensor> = BatchIter::sequential(&sub, bs, norm.clone())
        .map(|b| train::batch_tensors(b, &base).map(|(x, _)| x))
        .collect::<seer_nn::Result<_>>()?;
    let params: HashMap<String, Tensor> = base.named_tensors().into_iter().collect();
    // The candle network must compute what seer-nn computes (checked on the first batch).
    let want = base
        .forward(&batches[0], false)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    let got = candle_forward(&base, &params, &batches[0])?
        .argmax(1)?
        .to_vec1::<u32>()?;
    let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
    if same * 100 < want.len() * 99 {
        bail!(
            "the candle baseline disagrees with seer-nn on {} of {} images",
            want.len() - same,
            want.len()
        );
    }
    // Best wall time per method, and total process CPU time (robust when other processes
    // share the cores: their load inflates wall time, not our CPU time).
    let (mut t_int, mut t_own, mut t_candle) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let (mut c_int, mut c_own, mut c_candle) = (0.0, 0.0, 0.0);
    for _ in 0..a.bench_reps.max(1) {
        let (t, c) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        int_predict(m, &sub, 0, k, bs, isa)?;
        t_int = t_int.min(t.elapsed().as_secs_f64());
        c_int += seer_bench::cpu_seconds_or_zero() - c;
        let (t, c) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        for x in &batches {
            base.forward(x, false)?.argmax(1)?.to_vec1::<u32>()?;
        }
        t_own = t_own.min(t.elapsed().as_secs_f64());
        c_own += seer_bench::cpu_seconds_or_zero() - c;
        let (t, c) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        for x in &batches {
            candle_forward(&base, &params, x)?
                .argmax(1)?
                .to_vec1::<u32>()?;
        }
        t_candle = t_candle.min(t.elapsed().as_secs_f64());
        c_candle += seer_bench::cpu_seconds_or_zero() - c;
    }
    let cpu_ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let f32_bytes = 4 * base.num_params()
        + 4 * base
            .named_tensors()
            .iter()
            .filter(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var"))
            .map(|(_, t)| t.elem_count())
            .sum::<usize>();
    let model_bytes = m.storage_bytes();
    let file_bytes = std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0);
    let ips = |t: f64| k as f64 / t;
    Ok(serde_json::json!({
        "bench_images": k, "bench_reps": a.bench_reps.max(1),
        "bench_int_images_per_s": ips(t_int),
        "bench_own_f32_images_per_s": ips(t_own),
        "bench_candle_f32_images_per_s": ips(t_candle),
        "model_speedup": t_candle / t_int,
        "model_speedup_vs_own_f32": t_own / t_int,
        "cpu_model_speedup": cpu_ratio(c_candle, c_int),
        "cpu_model_speedup_vs_own_f32": cpu_ratio(c_own, c_int),
        "size_ratio": f32_bytes as f64 / model_bytes as f64,
        "f32_bytes": f32_bytes, "model_bytes": model_bytes, "model_file_bytes": file_bytes,
        "baseline": baseline.display().to_string(),
        "threads": seer_bench::threads(),
    }))
}
