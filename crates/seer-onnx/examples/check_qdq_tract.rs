//! Runs an ONNX QDQ export (`model-<budget>.onnx`, docs/export.md) in tract over a whole
//! dataset split and checks its top-1 predictions against the integer engine's on the
//! `model-<budget>.safetensors` beside it (issue 20: at least 99.9% agreement). The tract
//! side of `tools/check_qdq_export.py` (ONNX Runtime); `.ci/run` runs both on the quick ONNX
//! job's exports.
//!
//! ```text
//! cargo run -p seer-onnx --example check_qdq_tract -- MODEL.onnx MODEL.safetensors DATASET \
//!     [--split test] [--min-agreement 99.9]
//! ```
//!
//! `DATASET` is what `seernet compress --dataset` took (a built-in name or an image folder,
//! read at the integer model's input size). The images are normalised with the export's own
//! metadata (`input_mean`, `input_std`), as a user of the ONNX file would. Exit status 0 when
//! the agreement reaches the threshold, 1 when it falls short, 2 on any error. tract is a
//! dev-dependency of seer-onnx, so this is an example, not a binary users build.

use std::path::PathBuf;
use std::process::ExitCode;

use prost::Message;
use seer_int::Isa;
use seer_int::format::IntModel;
use seer_nn::data::{DataSource, Dataset, Split};
use seer_onnx::proto::ModelProto;
use tract_onnx::prelude::*;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Images per tract run (the last batch is padded with zeros and its extra rows ignored).
const BATCH: usize = 256;

struct Args {
    onnx: PathBuf,
    int: PathBuf,
    dataset: String,
    split: Split,
    /// The split as given (`test`), for the report line.
    split_name: String,
    min_agreement: f64,
}

fn parse_args() -> Res<Args> {
    let mut pos = Vec::new();
    let (mut split_name, mut min_agreement) = ("test".to_string(), 99.9);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--split" => split_name = it.next().ok_or("--split needs a value")?,
            "--min-agreement" => {
                min_agreement = it
                    .next()
                    .ok_or("--min-agreement needs a value")?
                    .parse()
                    .map_err(|e| format!("--min-agreement: {e}"))?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: check_qdq_tract MODEL.onnx MODEL.safetensors DATASET \
                            [--split test] [--min-agreement 99.9]"
                        .into(),
                );
            }
            _ => pos.push(a),
        }
    }
    let [onnx, int, dataset]: [String; 3] = pos.try_into().map_err(|p: Vec<String>| {
        format!("expected MODEL.onnx MODEL.safetensors DATASET, got {p:?}")
    })?;
    Ok(Args {
        onnx: onnx.into(),
        int: int.into(),
        dataset,
        split: Split::parse(&split_name)?,
        split_name,
        min_agreement,
    })
}

/// A JSON array of numbers from the export's metadata property `key`.
fn meta_floats(m: &ModelProto, key: &str) -> Res<Vec<f32>> {
    let v = m
        .metadata_props
        .iter()
        .find(|p| p.key.as_deref() == Some(key))
        .and_then(|p| p.value.as_deref())
        .ok_or_else(|| format!("the export has no metadata property {key}"))?;
    Ok(serde_json::from_str(v).map_err(|e| format!("metadata {key} = {v}: {e}"))?)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&i, &j| row[i].total_cmp(&row[j]).then(j.cmp(&i)))
        .unwrap_or(0)
}

/// The split's images, read at the integer model's input size.
fn load(dataset: &str, im: &IntModel, split: Split) -> Res<Dataset> {
    let i = &im.meta().input;
    let src = match DataSource::parse(dataset)? {
        DataSource::Folder { .. } => {
            DataSource::from_arg(dataset, Some([i.channels, i.height, i.width]), false)?
        }
        b => b,
    };
    let data = src.load()?.get(split).clone();
    if data.shape != [i.channels, i.height, i.width] {
        return Err(format!(
            "{dataset} images are {:?} [C, H, W], the model takes [{}, {}, {}]",
            data.shape, i.channels, i.height, i.width
        )
        .into());
    }
    if data.labels.is_empty() {
        return Err(format!("the split of {dataset} is empty").into());
    }
    Ok(data)
}

/// Top-1 of the integer engine on all of `data` (NHWC pixels, in batches).
fn engine_top1(im: &IntModel, data: &Dataset) -> Res<Vec<usize>> {
    let [c, h, w] = data.shape;
    let k = im.meta().num_classes;
    let n = data.labels.len();
    let mut out = Vec::with_capacity(n);
    for lo in (0..n).step_by(BATCH) {
        let hi = (lo + BATCH).min(n);
        let mut px = Vec::with_capacity((hi - lo) * c * h * w);
        for i in lo..hi {
            let img = data.image(i);
            for p in 0..h * w {
                px.extend((0..c).map(|ch| img[ch * h * w + p]));
            }
        }
        let logits = im.forward(&px, hi - lo, Isa::detect())?;
        out.extend(logits.chunks_exact(k).map(argmax));
    }
    Ok(out)
}

/// Top-1 of the ONNX file in tract on all of `data` (NCHW f32, normalised with `mean`/`std`).
fn tract_top1(bytes: &[u8], data: &Dataset, mean: &[f32], std: &[f32]) -> Res<Vec<usize>> {
    let [c, h, w] = data.shape;
    if mean.len() != c || std.len() != c {
        return Err(format!(
            "metadata has {} means and {} stds for {c} channels",
            mean.len(),
            std.len()
        )
        .into());
    }
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .with_input_fact(0, f32::fact([BATCH, c, h, w]).into())?
        .into_optimized()?
        .into_runnable()?;
    let n = data.labels.len();
    let mut out = Vec::with_capacity(n);
    for lo in (0..n).step_by(BATCH) {
        let hi = (lo + BATCH).min(n);
        let mut x = vec![0f32; BATCH * c * h * w];
        for (i, xi) in (lo..hi).zip(x.chunks_exact_mut(c * h * w)) {
            for (j, (&p, v)) in data.image(i).iter().zip(xi.iter_mut()).enumerate() {
                let ch = j / (h * w);
                *v = (p as f32 / 255.0 - mean[ch]) / std[ch];
            }
        }
        let input = tract_onnx::prelude::Tensor::from_shape(&[BATCH, c, h, w], &x)?;
        let res = plan.run(tvec!(input.into()))?;
        let logits = res[0].to_plain_array_view::<f32>()?;
        let v: Vec<f32> = logits.iter().copied().collect();
        let k = v.len() / BATCH;
        out.extend(v.chunks_exact(k).take(hi - lo).map(argmax));
    }
    Ok(out)
}

fn run(a: &Args) -> Res<bool> {
    let bytes = std::fs::read(&a.onnx).map_err(|e| format!("{}: {e}", a.onnx.display()))?;
    let proto = ModelProto::decode(&bytes[..])
        .map_err(|e| format!("{}: not an ONNX model: {e}", a.onnx.display()))?;
    let im = IntModel::load(&a.int).map_err(|e| format!("{}: {e}", a.int.display()))?;
    let data = load(&a.dataset, &im, a.split)?;
    let (mean, std) = (
        meta_floats(&proto, "input_mean")?,
        meta_floats(&proto, "input_std")?,
    );
    let engine = engine_top1(&im, &data)?;
    let ours = tract_top1(&bytes, &data, &mean, &std)?;
    let n = engine.len();
    let same = engine.iter().zip(&ours).filter(|(a, b)| a == b).count();
    let correct = |p: &[usize]| {
        100.0
            * p.iter()
                .zip(&data.labels)
                .filter(|(p, y)| **p == **y as usize)
                .count() as f64
            / n as f64
    };
    let agree = 100.0 * same as f64 / n as f64;
    let ok = agree >= a.min_agreement;
    println!(
        "{}: tract, {} bytes; top-1 agrees with the integer engine on {same}/{n} {} images \
         ({agree:.3}%), tract top-1 {:.2}%, engine top-1 {:.2}% {}",
        a.onnx.file_name().unwrap_or_default().to_string_lossy(),
        bytes.len(),
        a.split_name,
        correct(&ours),
        correct(&engine),
        if ok {
            "ok".to_string()
        } else {
            format!("BELOW {}%", a.min_agreement)
        }
    );
    Ok(ok)
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("check_qdq_tract: {e}");
            ExitCode::from(2)
        }
    }
}
