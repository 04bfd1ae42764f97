//! Per-node wall time of the interpreter on the `int` bench's synthetic ResNet-20 (28×28×1,
//! batch 128, the global rayon pool) for 8/8 and 4/4 codes on one path (`--isa`, default
//! avx2), collected from the interpreter's `node done` tracing events (`ms`), best of
//! `ROUNDS` (default 20) calls per node, the two bit-widths interleaved call by call.
//! `cargo run -p seer-int --release --example node_timing [-- --isa avx2]`.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use seer_int::Isa;
use seer_int::format::{InputSpec, IntModel, LayerWeights, ModelMeta, Node, NodeOp, QuantOut};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// `(node name, ms)` of every `node done` event since the last drain (`name gemm` for a
/// conv's GEMM part, reported before the node's total).
static TIMES: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// A span's `name` field.
struct NodeName(String);

/// Records the `node` spans' names and the `ms` field of their events.
struct Collect;

struct NameVisit(Option<String>);
impl Visit for NameVisit {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "name" {
            self.0 = Some(format!("{v:?}"));
        }
    }
}

/// `ms` (a node's wall time) or `gemm_ms` (its GEMM part) of an event.
struct MsVisit(Option<(bool, f64)>);
impl Visit for MsVisit {
    fn record_f64(&mut self, f: &Field, v: f64) {
        match f.name() {
            "ms" => self.0 = Some((false, v)),
            "gemm_ms" => self.0 = Some((true, v)),
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collect {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut v = NameVisit(None);
        attrs.record(&mut v);
        if let (Some(n), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(NodeName(n));
        }
    }
    fn on_event(&self, ev: &Event<'_>, ctx: Context<'_, S>) {
        let mut v = MsVisit(None);
        ev.record(&mut v);
        let Some((gemm, ms)) = v.0 else { return };
        let Some(span) = ctx.event_span(ev) else {
            return;
        };
        if let Some(n) = span.extensions().get::<NodeName>() {
            let name = if gemm {
                format!("{} gemm", n.0)
            } else {
                n.0.clone()
            };
            TIMES.lock().unwrap().push((name, ms));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let isa = args
        .windows(2)
        .find(|w| w[0] == "--isa")
        .map_or(Isa::Avx2, |w| {
            Isa::ALL
                .into_iter()
                .find(|i| i.name() == w[1])
                .expect("unknown --isa")
        });
    assert!(isa.is_available(), "{} not available", isa.name());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let filter =
        tracing_subscriber::filter::Targets::new().with_target("seer_int", tracing::Level::DEBUG);
    let sub = tracing_subscriber::registry().with(Collect.with_filter(filter));
    tracing::subscriber::set_global_default(sub).expect("subscriber");

    let (hw, batch) = (28, 128);
    let models = [resnet20(hw, 8, 8), resnet20(hw, 4, 4)];
    let mut r = lcg(3);
    let pixels: Vec<u8> = (0..batch * hw * hw).map(|_| (r() % 256) as u8).collect();
    // best[m][node] = (name, best ms); wall[m] = best total.
    let mut best: [Vec<(String, f64)>; 2] = [Vec::new(), Vec::new()];
    let mut wall = [f64::INFINITY; 2];
    // Least time of a forward outside its nodes (input copy, value bookkeeping).
    let mut outside = [f64::INFINITY; 2];
    for round in 0..=rounds {
        for (m, model) in models.iter().enumerate() {
            TIMES.lock().unwrap().clear();
            let t = Instant::now();
            let _ = model.forward(&pixels, batch, isa).expect("forward");
            let el = t.elapsed().as_secs_f64() * 1e3;
            if round == 0 {
                continue; // warm-up: panels, buffer pool
            }
            wall[m] = wall[m].min(el);
            // One `node done` per node; convs also report `gemm_ms` (no `ms`): skipped.
            let times = std::mem::take(&mut *TIMES.lock().unwrap());
            let in_nodes: f64 = times
                .iter()
                .filter(|t| !t.0.ends_with(" gemm"))
                .map(|t| t.1)
                .sum();
            outside[m] = outside[m].min(el - in_nodes);
            if best[m].is_empty() {
                best[m] = times;
            } else {
                for (b, t) in best[m].iter_mut().zip(times) {
                    assert_eq!(b.0, t.0);
                    b.1 = b.1.min(t.1);
                }
            }
        }
    }
    println!(
        "isa {}, batch {batch}, {} threads, best of {rounds}",
        isa.name(),
        rayon::current_num_threads()
    );
    println!(
        "{:<14} {:>9} {:>9} {:>7}",
        "node", "8/8 ms", "4/4 ms", "ratio"
    );
    let mut sums = [0.0; 2];
    for (a, b) in best[0].iter().zip(&best[1]) {
        if !a.0.ends_with(" gemm") {
            sums[0] += a.1;
            sums[1] += b.1;
        }
        println!("{:<14} {:>9.3} {:>9.3} {:>7.2}", a.0, a.1, b.1, a.1 / b.1);
    }
    println!(
        "{:<14} {:>9.3} {:>9.3} {:>7.2}",
        "sum nodes",
        sums[0],
        sums[1],
        sums[0] / sums[1]
    );
    println!("{:<14} {:>9.3} {:>9.3}", "outside", outside[0], outside[1]);
    println!(
        "{:<14} {:>9.3} {:>9.3} {:>7.2}   ({:.0} vs {:.0} img/s)",
        "forward",
        wall[0],
        wall[1],
        wall[0] / wall[1],
        batch as f64 / wall[0] * 1e3,
        batch as f64 / wall[1] * 1e3
    );
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

fn he_weights(r: &mut impl FnMut() -> u64, rows: usize, cols: usize) -> Vec<f32> {
    let std = (2.0 / cols as f32).sqrt();
    (0..rows * cols)
        .map(|_| {
            let u: f32 = (0..4)
                .map(|_| (r() % 10_000) as f32 / 10_000.0)
                .sum::<f32>()
                - 2.0;
            u * std * 1.7
        })
        .collect()
}

fn resnet20(hw: usize, wbits: u32, abits: u32) -> IntModel {
    let mut r = lcg(11);
    let mut nodes = Vec::new();
    let mut weights = BTreeMap::new();
    let out = |bits| Some(QuantOut { alpha: 3.0, bits });
    let mut conv = |name: String,
                    input: &str,
                    c_in,
                    c_out,
                    stride,
                    wb: u32,
                    residual: Option<String>,
                    nodes: &mut Vec<Node>| {
        let w = he_weights(&mut r, c_out, c_in * 9);
        let packed =
            seer_int::pack::PackedWeights::quantize(&w, c_out, c_in * 9, wb).expect("quantize");
        weights.insert(
            name.clone(),
            LayerWeights {
                packed,
                mul: None,
                bias: Some(vec![0.05; c_out]),
            },
        );
        nodes.push(Node {
            name: name.clone(),
            input: input.into(),
            op: NodeOp::Conv {
                c_in,
                c_out,
                kernel: 3,
                stride,
                pad: 1,
                pad_end: None,
                w_bits: wb,
                residual,
                relu: false,
            },
            out: out(abits),
        });
        name
    };
    let mut x = conv("conv1".into(), "input", 1, 16, 1, 8, None, &mut nodes);
    let mut c_in = 16;
    for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
        for b in 0..3 {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let shortcut = if stride == 2 {
                let pad = (c - c_in) / 2;
                let gather = (0..c)
                    .map(|j| {
                        if j >= pad && j < pad + c_in {
                            Some(j - pad)
                        } else {
                            None
                        }
                    })
                    .collect();
                let name = format!("s{s}b{b}.sc");
                nodes.push(Node {
                    name: name.clone(),
                    input: x.clone(),
                    op: NodeOp::ShortcutA { stride: 2, gather },
                    out: out(abits),
                });
                name
            } else {
                x.clone()
            };
            let a = conv(
                format!("s{s}b{b}.a"),
                &x,
                c_in,
                c,
                stride,
                wbits,
                None,
                &mut nodes,
            );
            x = conv(
                format!("s{s}b{b}.b"),
                &a,
                c,
                c,
                1,
                wbits,
                Some(shortcut),
                &mut nodes,
            );
            c_in = c;
        }
    }
    nodes.push(Node {
        name: "gap".into(),
        input: x,
        op: NodeOp::GlobalAvgPool,
        out: Some(QuantOut {
            alpha: 3.0,
            bits: 8,
        }),
    });
    let fc = he_weights(&mut r, 10, 64);
    let packed = seer_int::pack::PackedWeights::quantize(&fc, 10, 64, 8).expect("quantize");
    weights.insert(
        "fc".into(),
        LayerWeights {
            packed,
            mul: None,
            bias: None,
        },
    );
    nodes.push(Node {
        name: "fc".into(),
        input: "gap".into(),
        op: NodeOp::Linear {
            in_features: 64,
            out_features: 10,
            w_bits: 8,
        },
        out: None,
    });
    let meta = ModelMeta {
        format: seer_int::format::FORMAT.into(),
        version: seer_int::format::VERSION,
        arch: "resnet20".into(),
        input: InputSpec {
            channels: 1,
            height: hw,
            width: hw,
            mean: vec![0.286],
            std: 0.353,
            std_per_channel: Vec::new(),
        },
        num_classes: 10,
        policy: serde_json::json!({ "uniform": { "w_bits": wbits, "a_bits": abits } }),
        provenance: serde_json::Value::Null,
        nodes,
    };
    IntModel::new(meta, weights).expect("valid model")
}
