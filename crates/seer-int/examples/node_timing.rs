//! Per-node wall time of the interpreter on the `int` bench's synthetic ResNet-20 (28×28×1,
//! batch 128, the global rayon pool) for 8/8 and 4/4 codes on one path (`--isa`, default
//! avx2), collected from the interpreter's `node done` tracing events (`ms`), best of
//! `ROUNDS` (default 20) calls per node, the two bit-widths interleaved call by call.
//! `cargo run -p seer-int --release --example node_timing [-- --isa avx2]`.
use std::sync::Mutex;
use std::time::Instant;

#[path = "../benches/common/resnet20.rs"]
mod net;
use net::lcg;
use seer_int::Isa;
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
    let models = [net::resnet20(hw, 8, 8).0, net::resnet20(hw, 4, 4).0];
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
