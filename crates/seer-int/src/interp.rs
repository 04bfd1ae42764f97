//! The interpreter of exported integer models: runs an [`IntModel`] node by node entirely on
//! the integer kernels (docs/method.md §7), one function per node kind.
//!
//! Activations flow between nodes as NHWC unsigned codes with their quantisation step, or
//! as real (f32) values for the streams the fake-quantized model keeps in float (the graph's
//! semantics are in [`format`](mod@crate::format)). Only residual adds, max and global pooling
//! and concatenation of real streams, and the first conv's normalisation correction run in
//! f32; every GEMM is integer.
//!
//! Diagnostics: every node runs inside a `tracing` span `node` (debug level, fields `name`
//! and `op`) and ends with a debug event carrying its wall time in milliseconds (`ms`);
//! convolutions also report their weight panel + GEMM time (`gemm_ms`). Nothing is recorded
//! unless a binary installs a subscriber, e.g. `RUST_LOG=seer_int=debug seernet infer ...`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;

use crate::Isa;
use crate::error::{Error, Result, check_len, invalid};
use crate::format::{IntModel, LayerWeights, Node, NodeOp, QuantOut};
use crate::fused::{
    ASource, AccSink, RealSink, RequantSink, Residual, conv2d_requant, gemm_fused, simd_epilogue,
};
use crate::gemm::WeightPanel;
use crate::layers::{
    ConvGeom, PoolGeom, Requant, avg_pool2d, avg_pool2d_real, conv_panel, conv2d, conv2d_grouped,
    global_avg_pool, linear, max_pool2d, max_pool2d_real, round_code,
};
use crate::pack::{PackedWeights, qmax_unsigned};

impl IntModel {
    /// Runs a batch of images entirely on the integer kernels.
    ///
    /// `pixels`: `[batch, height, width, channels]` raw 8-bit pixels (NHWC; for one channel
    /// the same as NCHW). Returns f32 logits `[batch, num_classes]`. Errors: `ShapeMismatch`
    /// for a wrong pixel count; `InvalidArgument` if a node's shapes do not chain.
    pub fn forward(&self, pixels: &[u8], batch: usize, isa: Isa) -> Result<Vec<f32>> {
        let inp = &self.meta().input;
        let per_image = inp.height * inp.width * inp.channels;
        check_len("input pixels", batch * per_image, pixels.len())?;
        if batch <= MICRO_BATCH {
            return self.run(pixels, batch, isa, None, true);
        }
        // Micro-batches through the whole graph, one per rayon task: a task's activations
        // are small enough to stay in its core's cache, and the threads do not wait for each
        // other between nodes. Every image's logits depend on that image only (integer GEMMs are exact, the
        // epilogues element-wise, pooling per image), so the bits are the whole batch's.
        let parts = pixels
            .par_chunks(MICRO_BATCH * per_image)
            .map(|p| self.run(p, p.len() / per_image, isa, None, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// [`forward`](Self::forward) on the unfused layer functions ([`layers`](crate::layers):
    /// im2col + GEMM into an i32 tensor, then a separate requantisation pass, weights unpacked
    /// on every call): the same logits bit for bit, slower. Kept as the reference the fused
    /// paths are tested against, and for the `int` bench's before/after ratio.
    pub fn forward_unfused(&self, pixels: &[u8], batch: usize, isa: Isa) -> Result<Vec<f32>> {
        self.run(pixels, batch, isa, None, false)
    }

    /// [`forward`](Self::forward), calling `trace(node, real values)` after every node that
    /// produces codes (NHWC, dequantized) — for checking against the float model.
    pub fn forward_traced(
        &self,
        pixels: &[u8],
        batch: usize,
        isa: Isa,
        trace: &mut dyn FnMut(&str, Vec<f32>),
    ) -> Result<Vec<f32>> {
        self.run(pixels, batch, isa, Some(trace), true)
    }

    /// Runs the nodes in order; every output stays available by name for later residuals.
    fn run(
        &self,
        pixels: &[u8],
        batch: usize,
        isa: Isa,
        mut trace: Option<Trace>,
        fused: bool,
    ) -> Result<Vec<f32>> {
        let inp = &self.meta().input;
        check_len(
            "input pixels",
            batch * inp.height * inp.width * inp.channels,
            pixels.len(),
        )?;
        let cache = &self.cache;
        let mut input_codes = cache.take_dirty(pixels.len());
        input_codes.copy_from_slice(pixels);
        let image = Value {
            codes: input_codes,
            real: None,
            h: inp.height,
            w: inp.width,
            c: inp.channels,
            step: 1.0 / (255.0 * inp.std),
        };
        let mut values: HashMap<&str, Value> = HashMap::from([("input", image)]);
        let nodes = &self.meta().nodes;
        // The last node reading each value (as input or residual): its buffer goes back to
        // the pool after that node.
        let mut last_use: HashMap<&str, usize> = HashMap::new();
        for (ni, node) in nodes.iter().enumerate() {
            last_use.insert(node.input.as_str(), ni);
            for r in node.op.extra_inputs() {
                last_use.insert(r, ni);
            }
        }
        // Quantize nodes fused into the real-valued conv they read (fused path): by producer.
        let mut quant_of: Vec<Vec<(usize, QuantOut)>> = vec![Vec::new(); nodes.len()];
        if fused {
            let index: HashMap<&str, usize> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i))
                .collect();
            for (ni, node) in nodes.iter().enumerate() {
                if let (NodeOp::Quantize, Some(q), Some(&p)) =
                    (&node.op, node.out, index.get(node.input.as_str()))
                    && p < ni
                    && matches!(nodes[p].op, NodeOp::Conv { .. })
                    && nodes[p].out.is_none()
                {
                    quant_of[p].push((ni, q));
                }
            }
        }
        let mut precomputed: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut logits = None;
        for (ni, node) in nodes.iter().enumerate() {
            let _span =
                tracing::debug_span!("node", name = %node.name, op = node.op.kind()).entered();
            let t0 = Instant::now();
            let x = values.get(node.input.as_str()).ok_or_else(|| {
                invalid(&format!("node {}", node.name), "its input was not computed")
            })?;
            let out = if let Some(codes) = precomputed.remove(&ni) {
                // A quantize node whose codes its producer's epilogue computed.
                let q = node.out.ok_or_else(|| {
                    invalid(
                        &format!("node {}", node.name),
                        "needs an output quantisation",
                    )
                })?;
                Output::Value(Value::quantized(codes, (x.h, x.w, x.c), q))
            } else {
                let cx = Ctx {
                    model: self,
                    index: ni,
                    node,
                    x,
                    values: &values,
                    batch,
                    isa,
                    last: ni + 1 == nodes.len(),
                    fused,
                    quant_consumers: &quant_of[ni],
                    extra: Default::default(),
                };
                let out = cx.run_node()?;
                precomputed.extend(cx.extra.into_inner().unwrap_or_else(|e| e.into_inner()));
                out
            };
            tracing::debug!(ms = millis(t0), "node done");
            match out {
                Output::Logits(l) => {
                    logits = Some(l);
                    break;
                }
                Output::Value(v) => {
                    if let Some(trace) = trace.as_mut() {
                        trace(&node.name, v.dequantized());
                    }
                    values.insert(node.name.as_str(), v);
                }
            }
            values.retain(|name, v| {
                let keep = last_use.get(name).is_some_and(|&l| l > ni);
                if !keep {
                    cache.give(std::mem::take(&mut v.codes));
                    if let Some(r) = v.real.take() {
                        cache.give_real(r);
                    }
                }
                keep
            });
        }
        for (_, v) in values.drain() {
            cache.give(v.codes);
            if let Some(r) = v.real {
                cache.give_real(r);
            }
        }
        let logits = logits.ok_or_else(|| invalid("model", "the final node produced no logits"))?;
        check_len("logits", batch * self.meta().num_classes, logits.len())?;
        Ok(logits)
    }
}

/// Per-model state the interpreter keeps across calls: each conv/linear node's weight panel,
/// unpacked from the packed codes on first use (keyed by the node's input shape, which is
/// fixed by the model's input size), and a pool of activation buffers reused across nodes
/// and calls.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    panels: Vec<OnceLock<(PanelKey, Arc<WeightPanel>)>>,
    /// A first conv's per-position bias minus normalisation offset (`first_layer_shift`).
    shifts: Vec<OnceLock<(PanelKey, Arc<Vec<f32>>)>>,
    pool: Mutex<Vec<Vec<u8>>>,
    /// Real-valued stream buffers, reused likewise.
    reals: Mutex<Vec<Vec<f32>>>,
}

/// A node's input `(h, w, c)`, for which its cached panel was built.
type PanelKey = (usize, usize, usize);

/// Most buffers the pool keeps.
const POOL_MAX: usize = 32;

/// Images per micro-batch of [`IntModel::forward`]: a larger batch runs as micro-batches of
/// this many images, each through the whole graph as one rayon task. On the exported
/// ResNet-20 (batch 128, 2 threads) 16 gave 8,500 images/s against 6,400–7,300 for the
/// whole batch node by node (docs/benchmarks.md, session 17); 8 to 32 were within noise.
pub(crate) const MICRO_BATCH: usize = 16;

impl Clone for Cache {
    /// The panels are shared; the clone starts with an empty buffer pool.
    fn clone(&self) -> Self {
        Self {
            panels: self.panels.clone(),
            shifts: self.shifts.clone(),
            pool: Mutex::default(),
            reals: Mutex::default(),
        }
    }
}

impl Cache {
    /// An empty cache for `nodes` nodes.
    pub(crate) fn new(nodes: usize) -> Self {
        Self {
            panels: (0..nodes).map(|_| OnceLock::new()).collect(),
            shifts: (0..nodes).map(|_| OnceLock::new()).collect(),
            pool: Mutex::default(),
            reals: Mutex::default(),
        }
    }

    /// Bytes held by the panels built so far.
    pub(crate) fn bytes(&self) -> usize {
        self.panels
            .iter()
            .filter_map(|p| p.get())
            .map(|(_, p)| p.resident_bytes())
            .sum::<usize>()
            + self
                .shifts
                .iter()
                .filter_map(|s| s.get())
                .map(|(_, s)| 4 * s.len())
                .sum::<usize>()
    }

    /// Node `i`'s panel for input shape `key`, built by `build` on first use (and uncached
    /// for another shape than the first).
    fn panel(
        &self,
        i: usize,
        key: PanelKey,
        build: impl FnOnce() -> Result<WeightPanel>,
    ) -> Result<Arc<WeightPanel>> {
        let slot = &self.panels[i];
        if let Some((k, p)) = slot.get() {
            return if *k == key {
                Ok(p.clone())
            } else {
                build().map(Arc::new)
            };
        }
        let p = Arc::new(build()?);
        // A concurrent caller may have set it first; both panels are equal.
        let _ = slot.set((key, p.clone()));
        Ok(p)
    }

    /// Node `i`'s first-layer shift for input shape `key`, computed by `build` on first use.
    fn shift(&self, i: usize, key: PanelKey, build: impl FnOnce() -> Vec<f32>) -> Arc<Vec<f32>> {
        let slot = &self.shifts[i];
        match slot.get() {
            Some((k, v)) if *k == key => v.clone(),
            Some(_) => Arc::new(build()),
            None => {
                let v = Arc::new(build());
                let _ = slot.set((key, v.clone()));
                v
            }
        }
    }

    /// A zeroed buffer of `len` codes, reusing a pooled one when one is large enough.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.take_dirty(len);
        v.fill(0);
        v
    }

    /// A buffer of `len` codes whose contents are unspecified (a pooled buffer's old codes,
    /// zeros where it grew): for outputs every element of which the caller overwrites,
    /// without clearing 1–2 MB per layer first.
    fn take_dirty(&self, len: usize) -> Vec<u8> {
        pool_take(&self.pool, len, 0)
    }

    /// Returns a buffer to the pool.
    fn give(&self, v: Vec<u8>) {
        pool_give(&self.pool, v);
    }

    /// [`take_dirty`](Self::take_dirty) for a real-valued stream (`len` f32 values,
    /// unspecified until the caller overwrites every one).
    fn take_real_dirty(&self, len: usize) -> Vec<f32> {
        pool_take(&self.reals, len, 0.0)
    }

    /// Returns a real-valued buffer to its pool.
    fn give_real(&self, v: Vec<f32>) {
        pool_give(&self.reals, v);
    }
}

/// The smallest pooled buffer holding `len` elements (so large ones stay for large layers)
/// resized to `len` (its old contents kept, `fill` where it grows), or a new one.
fn pool_take<T: Copy>(pool: &Mutex<Vec<Vec<T>>>, len: usize, fill: T) -> Vec<T> {
    let reuse = {
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len)
            .min_by_key(|&i| pool[i].capacity())
            .map(|i| pool.swap_remove(i))
    };
    match reuse {
        Some(mut v) => {
            v.resize(len, fill);
            v
        }
        None => vec![fill; len],
    }
}

/// Puts `v` back into `pool` (up to [`POOL_MAX`] buffers; empty ones are dropped).
fn pool_give<T>(pool: &Mutex<Vec<Vec<T>>>, v: Vec<T>) {
    if v.capacity() == 0 {
        return;
    }
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(v);
    }
}

/// The callback of [`IntModel::forward_traced`]: node name and its output's real values.
type Trace<'a> = &'a mut dyn FnMut(&str, Vec<f32>);

/// Milliseconds since `t0`.
fn millis(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// An activation flowing between nodes: NHWC codes `[batch, h, w, c]` with their step (the
/// real value of one code), or real values of the same shape.
#[derive(Clone, Debug)]
struct Value {
    codes: Vec<u8>,
    /// Real values (NHWC f32) instead of codes, for streams kept in float.
    real: Option<Vec<f32>>,
    h: usize,
    w: usize,
    c: usize,
    step: f32,
}

impl Value {
    /// Codes of shape `(h, w, c)` per image, quantised to `q`.
    fn quantized(codes: Vec<u8>, (h, w, c): (usize, usize, usize), q: QuantOut) -> Value {
        Value {
            codes,
            real: None,
            h,
            w,
            c,
            step: out_step(q),
        }
    }

    /// The real values (codes times step).
    fn dequantized(&self) -> Vec<f32> {
        match &self.real {
            Some(r) => r.clone(),
            None => self.codes.iter().map(|&q| q as f32 * self.step).collect(),
        }
    }
}

/// What a node yields: an activation for later nodes, or the model's logits.
enum Output {
    Value(Value),
    Logits(Vec<f32>),
}

/// Everything a node reads: the model, the node, its input and the earlier outputs.
struct Ctx<'a> {
    model: &'a IntModel,
    /// The node's index in the graph (its panel cache slot).
    index: usize,
    node: &'a Node,
    /// The node's input.
    x: &'a Value,
    /// Outputs of earlier nodes by name (residual inputs).
    values: &'a HashMap<&'a str, Value>,
    batch: usize,
    isa: Isa,
    /// Whether this is the final node (a conv with `out = null` then yields logits).
    last: bool,
    /// Fused GEMM + epilogue paths (false: the unfused layer functions, kept as the
    /// reference the fused paths are tested against).
    fused: bool,
    /// Quantize nodes reading this node's real-valued output (fused path only): their codes
    /// are computed in the conv's epilogue, while each block of outputs is in cache.
    quant_consumers: &'a [(usize, QuantOut)],
    /// Codes computed for `quant_consumers`, by node index.
    extra: Mutex<Vec<(usize, Vec<u8>)>>,
}

/// The fields of a [`NodeOp::Conv`].
struct ConvOp<'a> {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    pad_end: usize,
    residual: Option<&'a str>,
    relu: bool,
    relu6: bool,
    groups: usize,
}

/// A convolution's integer accumulators and the affine map to its real outputs.
struct ConvAcc<'a> {
    g: ConvGeom,
    lw: &'a LayerWeights,
    /// `[batch·oh·ow, c_out]` i32 accumulators (empty for a first conv with per-channel
    /// input stds, which convolves each input channel on its own).
    acc: Vec<i32>,
    /// Real value of one accumulator unit, per output channel.
    scale: Vec<f32>,
    /// Bias per output channel, in output units.
    bias: Vec<f32>,
}

impl Ctx<'_> {
    /// Dispatches on the node kind.
    fn run_node(&self) -> Result<Output> {
        match &self.node.op {
            NodeOp::Conv {
                c_in,
                c_out,
                kernel,
                stride,
                pad,
                pad_end,
                residual,
                relu,
                relu6,
                groups,
                ..
            } => self.conv_node(&ConvOp {
                c_in: *c_in,
                c_out: *c_out,
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                pad_end: pad_end.unwrap_or(*pad),
                residual: residual.as_deref(),
                relu: *relu,
                relu6: *relu6,
                groups: *groups,
            }),
            NodeOp::Linear {
                in_features,
                out_features,
                ..
            } => self.linear_node(*in_features, *out_features),
            NodeOp::MaxPool {
                kernel,
                stride,
                pad,
                pad_end,
            } => self
                .max_pool_node(*kernel, *stride, *pad, pad_end.unwrap_or(*pad))
                .map(Output::Value),
            NodeOp::AvgPool {
                kernel,
                stride,
                pad,
                pad_end,
            } => self
                .avg_pool_node(*kernel, *stride, *pad, pad_end.unwrap_or(*pad))
                .map(Output::Value),
            NodeOp::GlobalAvgPool => self.global_avg_pool_node().map(Output::Value),
            NodeOp::Quantize => self.quantize_node().map(Output::Value),
            NodeOp::ShortcutA { stride, gather } => {
                self.shortcut_a_node(*stride, gather).map(Output::Value)
            }
            NodeOp::Concat { others } => self.concat_node(others).map(Output::Value),
        }
    }

    /// An `InvalidArgument` error naming the node.
    fn err(&self, why: impl Into<String>) -> Error {
        invalid(&format!("node {}", self.node.name), why)
    }

    /// Fails unless the input is codes (convs, linear layers and pools read codes only).
    fn need_codes(&self) -> Result<()> {
        if self.x.real.is_some() {
            return Err(self.err("its input is real-valued: a quantize node must come first"));
        }
        Ok(())
    }

    /// The node's output quantisation (validated present for the kinds that call this).
    fn out_quant(&self) -> Result<QuantOut> {
        self.node
            .out
            .ok_or_else(|| self.err("needs an output quantisation"))
    }

    /// The node's weights (validated present for conv and linear nodes).
    fn weights(&self) -> Result<&LayerWeights> {
        self.model
            .weights()
            .get(&self.node.name)
            .ok_or_else(|| self.err("missing weights"))
    }

    /// Convolution: integer accumulators, then folded BatchNorm, optional residual and the
    /// output representation ([`conv_output`](Self::conv_output)).
    fn conv_node(&self, op: &ConvOp) -> Result<Output> {
        let x = self.x;
        self.need_codes()?;
        if x.c != op.c_in {
            return Err(self.err(format!("input has {} channels, expected {}", x.c, op.c_in)));
        }
        let g = ConvGeom {
            batch: self.batch,
            h: x.h,
            w: x.w,
            c_in: x.c,
            c_out: op.c_out,
            kh: op.kernel,
            kw: op.kernel,
            stride: op.stride,
            pad: op.pad,
            pad_end: op.pad_end,
        };
        let lw = self.weights()?;
        let first = self.node.input == "input";
        let split = first && !self.model.meta().input.std_per_channel.is_empty();
        let res = self.residual(op, &g)?;
        if op.groups > 1 {
            // Grouped (depthwise) conv: direct integer sums, then the common epilogue.
            if first {
                return Err(self.err("a conv reading the image must have one group"));
            }
            let t_gemm = Instant::now();
            let acc = conv2d_grouped(&x.codes, &g, op.groups, &lw.packed.unpack())?;
            tracing::debug!(gemm_ms = millis(t_gemm), "grouped direct conv");
            let (scale, bias) = affine(lw, x.step);
            let a = ConvAcc {
                g,
                lw,
                acc,
                scale,
                bias,
            };
            return self.conv_output(op, a, res);
        }
        // The fast path: codes in, codes out (with a residual of codes or none): one fused
        // GEMM + requantisation pass into a pooled buffer.
        if let (true, false, Some(q)) = (self.fused, first, self.node.out)
            && res.is_none_or(|rv| rv.real.is_none())
        {
            let t_gemm = Instant::now();
            let (scale, bias) = affine(lw, x.step);
            let rq = Requant::new(scale, bias, q.alpha, q.bits)?;
            let panel = self.conv_panel(lw, &g)?;
            let mut out = self.model.cache.take_dirty(g.rows() * g.c_out);
            conv2d_requant(
                &x.codes,
                &g,
                &panel,
                self.isa,
                &rq,
                res.map(|rv| (&rv.codes[..], rv.step)),
                &mut out,
            )?;
            tracing::debug!(gemm_ms = millis(t_gemm), "fused gemm + requantisation");
            let dims = (g.out_h(), g.out_w(), op.c_out);
            return Ok(Output::Value(Value::quantized(out, dims, q)));
        }
        // A one-channel first conv to a real stream (its ReLU and the codes of the quantize
        // nodes reading it in the same pass), image by image, the sums staying in cache.
        if let (true, false, None, None) = (self.fused, split, self.node.out, res)
            && first
            && !self.last
            && g.c_in == 1
            && g.stride == 1
            && !g.is_pointwise()
            && crate::fused::simd_epilogue(self.isa)
            && (g.out_h() * g.out_w() * g.c_out).is_multiple_of(8)
        {
            return self.first_layer_c1_stream(lw, &g, op).map(Output::Value);
        }
        // A one-channel first conv to codes (a grayscale network's first layer): the direct
        // conv and the requantisation image by image, the sums staying in cache.
        if let (true, false, Some(q), None) = (self.fused, split, self.node.out, res)
            && first
            && g.c_in == 1
            && g.stride == 1
            && !g.is_pointwise()
        {
            return self.first_layer_c1_codes(lw, &g, q).map(Output::Value);
        }
        // A real-valued stream (the float model's residual stream): GEMM, folded BatchNorm,
        // residual, ReLU and the codes of the quantize nodes reading it, in one pass.
        if self.fused
            && !first
            && !self.last
            && self.node.out.is_none()
            && !(g.c_in == 1 && g.stride == 1 && !g.is_pointwise())
        {
            let t_gemm = Instant::now();
            let (scale, bias) = affine(lw, x.step);
            let panel = self.conv_panel(lw, &g)?;
            let len = g.rows() * g.c_out;
            // Every element of these is written by the sink (the GEMM covers all tiles).
            let mut pre = self.model.cache.take_real_dirty(len);
            let mut codes: Vec<Vec<u8>> = self
                .quant_consumers
                .iter()
                .map(|_| self.model.cache.take_dirty(len))
                .collect();
            let residual = res.map(|rv| match &rv.real {
                Some(r) => Residual::Real(r),
                None => Residual::Codes(&rv.codes, rv.step),
            });
            let sink = RealSink::new(
                &scale,
                &bias,
                residual,
                (op.relu, op.relu6),
                &mut pre,
                codes
                    .iter_mut()
                    .zip(self.quant_consumers)
                    .map(|(c, &(_, q))| (&mut c[..], q.alpha, out_step(q)))
                    .collect(),
                self.isa,
            )?;
            gemm_fused(
                self.isa,
                crate::fused::conv_source(&x.codes, &g)?,
                &panel,
                &sink,
            )?;
            drop(sink);
            tracing::debug!(gemm_ms = millis(t_gemm), "fused gemm + real epilogue");
            self.extra
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(self.quant_consumers.iter().map(|&(ni, _)| ni).zip(codes));
            let (h, w, c) = (g.out_h(), g.out_w(), op.c_out);
            return Ok(Output::Value(Value {
                codes: Vec::new(),
                real: Some(pre),
                h,
                w,
                c,
                step: 0.0,
            }));
        }
        let t_gemm = Instant::now();
        let acc = if split {
            Vec::new() // one convolution per input channel, in first_layer_pre
        } else if self.fused {
            self.conv_acc(lw, &g)?
        } else {
            conv2d(&x.codes, &g, &conv_panel(&lw.packed, &g)?, self.isa)?
        };
        tracing::debug!(gemm_ms = millis(t_gemm), "weight panel + gemm");
        let (scale, bias) = affine(lw, x.step);
        let a = ConvAcc {
            g,
            lw,
            acc,
            scale,
            bias,
        };
        self.conv_output(op, a, res)
    }

    /// The node's cached conv panel (built on first use).
    fn conv_panel(&self, lw: &LayerWeights, g: &ConvGeom) -> Result<Arc<WeightPanel>> {
        self.model
            .cache
            .panel(self.index, (g.h, g.w, g.c_in), || conv_panel(&lw.packed, g))
    }

    /// A convolution's i32 accumulators `[rows, c_out]`: the direct one-channel path, or
    /// the fused GEMM writing raw sums.
    fn conv_acc(&self, lw: &LayerWeights, g: &ConvGeom) -> Result<Vec<i32>> {
        let x = &self.x.codes;
        if g.c_in == 1 && g.stride == 1 && !g.is_pointwise() {
            return conv2d(x, g, &*self.conv_panel(lw, g)?, self.isa);
        }
        let mut acc = vec![0i32; g.rows() * g.c_out];
        let panel = self.conv_panel(lw, g)?;
        gemm_fused(
            self.isa,
            crate::fused::conv_source(x, g)?,
            &panel,
            &AccSink::new(&mut acc, g.c_out),
        )?;
        Ok(acc)
    }

    /// The residual input of a conv node, checked against its output shape.
    fn residual(&self, op: &ConvOp, g: &ConvGeom) -> Result<Option<&Value>> {
        Ok(match op.residual {
            Some(r) => {
                let rv = self
                    .values
                    .get(r)
                    .ok_or_else(|| self.err(format!("residual {r} was not computed")))?;
                if (rv.h, rv.w, rv.c) != (g.out_h(), g.out_w(), op.c_out) {
                    return Err(
                        self.err(format!("residual {r} has shape {}x{}x{}", rv.h, rv.w, rv.c))
                    );
                }
                Some(rv)
            }
            None => None,
        })
    }

    /// A convolution's output from its accumulators: requantised codes (the fast paths: an
    /// integer input with no residual or a residual of codes), or real values (the first
    /// conv, real residuals) quantised to `out`, kept real mid-graph (`out = null`, with the
    /// optional ReLU) or returned as logits by the final node.
    fn conv_output(&self, op: &ConvOp, a: ConvAcc, res: Option<&Value>) -> Result<Output> {
        let first = self.node.input == "input";
        let dims = (a.g.out_h(), a.g.out_w(), op.c_out);
        Ok(Output::Value(match (self.node.out, res) {
            (Some(q), None) if !first => Value::quantized(
                Requant::new(a.scale, a.bias, q.alpha, q.bits)?.apply(&a.acc)?,
                dims,
                q,
            ),
            (Some(q), Some(rv)) if !first && rv.real.is_none() => Value::quantized(
                Requant::new(a.scale, a.bias, q.alpha, q.bits)?
                    .apply_residual(&a.acc, &rv.codes, rv.step)?,
                dims,
                q,
            ),
            (Some(q), None) => Value::quantized(self.first_layer_codes(&a, q)?, dims, q),
            (out, res) => {
                let mut pre = if first {
                    let mut pre = self.first_layer_pre(&a)?;
                    if let Some(rv) = res {
                        add_residual(&mut pre, 0, rv);
                    }
                    pre
                } else {
                    // `acc·scale + bias (+ residual)` in one parallel pass over rows of
                    // output channels (the same float operations, in the same order, as
                    // `Requant::dequantize` followed by the residual add).
                    // A real-valued stream also gets its ReLU here. (The fused path runs
                    // this epilogue inside the GEMM instead, `RealSink`.)
                    let c = op.c_out.max(1);
                    let (scale, bias) = (&a.scale, &a.bias);
                    check_len("conv accumulators", a.g.rows() * op.c_out, a.acc.len())?;
                    let stream = out.is_none() && !self.last;
                    let mut pre = vec![0f32; a.acc.len()];
                    let block = 256 * c;
                    pre.par_chunks_mut(block)
                        .zip(a.acc.par_chunks(block))
                        .enumerate()
                        .for_each(|(k, (o, acc))| {
                            for (orow, arow) in o.chunks_mut(c).zip(acc.chunks(c)) {
                                for j in 0..orow.len() {
                                    orow[j] = arow[j] as f32 * scale[j] + bias[j];
                                }
                            }
                            if let Some(rv) = res {
                                add_residual(o, k * block, rv);
                            }
                            if stream && op.relu6 {
                                o.iter_mut().for_each(|y| *y = y.clamp(0.0, 6.0));
                            } else if stream && op.relu {
                                o.iter_mut().for_each(|y| *y = y.max(0.0));
                            }
                        });
                    pre
                };
                match out {
                    Some(q) => {
                        Value::quantized(quantize_real(&pre, q, simd_epilogue(self.isa)), dims, q)
                    }
                    None if self.last => return Ok(Output::Logits(pre)),
                    None => {
                        // (Not the first layer: the ReLU was applied in the pass above.)
                        if first && op.relu6 {
                            pre.par_chunks_mut(1 << 14)
                                .for_each(|p| p.iter_mut().for_each(|y| *y = y.clamp(0.0, 6.0)));
                        } else if first && op.relu {
                            pre.par_chunks_mut(1 << 14)
                                .for_each(|p| p.iter_mut().for_each(|y| *y = y.max(0.0)));
                        }
                        let (h, w, c) = dims;
                        Value {
                            codes: Vec::new(),
                            real: Some(pre),
                            h,
                            w,
                            c,
                            step: 0.0,
                        }
                    }
                }
            }
        }))
    }

    /// Fully connected layer on the flattened input: codes requantised to `out`, or the
    /// logits when `out = null`.
    fn linear_node(&self, in_features: usize, out_features: usize) -> Result<Output> {
        let x = self.x;
        self.need_codes()?;
        if x.h * x.w * x.c != in_features {
            return Err(self.err(format!(
                "input has {} features, expected {in_features}",
                x.h * x.w * x.c
            )));
        }
        let lw = self.weights()?;
        let panel = self.model.cache.panel(self.index, (x.h, x.w, x.c), || {
            Ok(if x.h * x.w == 1 {
                WeightPanel::from_packed(&lw.packed)
            } else {
                WeightPanel::from_packed_permuted(&lw.packed, Some(&panel_perm(x, in_features)))
            })
        })?;
        let (scale, bias) = affine(lw, x.step);
        let rows = ASource::Rows {
            a: &x.codes,
            k: in_features,
        };
        if !self.fused {
            // As before the fused paths: the panel unpacked on every call.
            let panel = if x.h * x.w == 1 {
                WeightPanel::from_packed(&lw.packed)
            } else {
                WeightPanel::from_packed_permuted(&lw.packed, Some(&panel_perm(x, in_features)))
            };
            let acc = linear(&x.codes, self.batch, &panel, self.isa)?;
            return Ok(match self.node.out {
                None => Output::Logits(Requant::new(scale, bias, 1.0, 8)?.dequantize(&acc)),
                Some(q) => Output::Value(Value::quantized(
                    Requant::new(scale, bias, q.alpha, q.bits)?.apply(&acc)?,
                    (1, 1, out_features),
                    q,
                )),
            });
        }
        Ok(match self.node.out {
            None => {
                let mut acc = vec![0i32; self.batch * out_features];
                gemm_fused(
                    self.isa,
                    rows,
                    &panel,
                    &AccSink::new(&mut acc, out_features),
                )?;
                Output::Logits(Requant::new(scale, bias, 1.0, 8)?.dequantize(&acc))
            }
            Some(q) => {
                let rq = Requant::new(scale, bias, q.alpha, q.bits)?;
                let mut out = self.model.cache.take(self.batch * out_features);
                gemm_fused(
                    self.isa,
                    rows,
                    &panel,
                    &RequantSink::new(&rq, None, &mut out, self.isa)?,
                )?;
                Output::Value(Value::quantized(out, (1, 1, out_features), q))
            }
        })
    }

    /// The pooling window `kernel × kernel` (stride, padding) over this node's input.
    fn pool_geom(&self, kernel: usize, stride: usize, pad: usize, pad_end: usize) -> PoolGeom {
        let x = self.x;
        PoolGeom {
            batch: self.batch,
            h: x.h,
            w: x.w,
            c: x.c,
            k: kernel,
            stride,
            pad,
            pad_end,
        }
    }

    /// Max pooling; keeps the input's quantisation.
    fn max_pool_node(
        &self,
        kernel: usize,
        stride: usize,
        pad: usize,
        pad_end: usize,
    ) -> Result<Value> {
        let x = self.x;
        let g = self.pool_geom(kernel, stride, pad, pad_end);
        if let Some(r) = &x.real {
            // A real-valued stream (with the float model's zero padding).
            return Ok(Value {
                codes: Vec::new(),
                real: Some(max_pool2d_real(r, &g)?),
                h: g.out_h(),
                w: g.out_w(),
                c: x.c,
                step: x.step,
            });
        }
        Ok(Value {
            codes: max_pool2d(&x.codes, &g)?,
            real: None,
            h: g.out_h(),
            w: g.out_w(),
            c: x.c,
            step: x.step,
        })
    }

    /// Average pooling (zero padding counted in the divisor), requantised to `out`: of codes
    /// ([`avg_pool2d`]) or of a real stream, whose window means ([`avg_pool2d_real`], the
    /// float model's arithmetic) are quantized as the consumer's activation quantizer does.
    fn avg_pool_node(
        &self,
        kernel: usize,
        stride: usize,
        pad: usize,
        pad_end: usize,
    ) -> Result<Value> {
        let x = self.x;
        let q = self.out_quant()?;
        let g = self.pool_geom(kernel, stride, pad, pad_end);
        let codes = match &x.real {
            None => avg_pool2d(&x.codes, &g, x.step, q.alpha, q.bits)?,
            Some(r) => quantize_real(&avg_pool2d_real(r, &g)?, q, simd_epilogue(self.isa)),
        };
        Ok(Value::quantized(codes, (g.out_h(), g.out_w(), x.c), q))
    }

    /// Global average pooling of codes or of a real stream, requantised to `out`.
    fn global_avg_pool_node(&self) -> Result<Value> {
        let x = self.x;
        let q = self.out_quant()?;
        let codes = match &x.real {
            None => global_avg_pool(
                &x.codes,
                self.batch,
                x.h * x.w,
                x.c,
                x.step,
                q.alpha,
                q.bits,
            )?,
            Some(r) => quantize_real(
                &channel_means(r, self.batch, x.h * x.w, x.c),
                q,
                simd_epilogue(self.isa),
            ),
        };
        Ok(Value::quantized(codes, (1, 1, x.c), q))
    }

    /// Quantises a real stream to `out` codes.
    fn quantize_node(&self) -> Result<Value> {
        let x = self.x;
        let q = self.out_quant()?;
        let Some(r) = &x.real else {
            return Err(self.err("its input is already quantised"));
        };
        // Into a pooled buffer (a fresh one per call costs page faults at these sizes).
        let mut out = self.model.cache.take(r.len());
        quantize_real_into(r, q, &mut out, simd_epilogue(self.isa));
        Ok(Value::quantized(out, (x.h, x.w, x.c), q))
    }

    /// Option-A shortcut: subsample by `stride`, gather channels (absent ones zero); keeps
    /// the input's representation.
    fn shortcut_a_node(&self, stride: usize, gather: &[Option<usize>]) -> Result<Value> {
        let x = self.x;
        if let Some(&Some(bad)) = gather.iter().find(|g| g.is_some_and(|g| g >= x.c)) {
            return Err(self.err(format!("gather index {bad} ≥ {} input channels", x.c)));
        }
        let (oh, ow) = (x.h.div_ceil(stride), x.w.div_ceil(stride));
        let dims = (self.batch, x.h, x.w, x.c);
        Ok(Value {
            codes: match x.real {
                None => gather_channels(&x.codes, dims, (oh, ow), stride, gather),
                Some(_) => Vec::new(),
            },
            real: x
                .real
                .as_ref()
                .map(|r| gather_channels(r, dims, (oh, ow), stride, gather)),
            h: oh,
            w: ow,
            c: gather.len(),
            step: x.step,
        })
    }

    /// Channel concatenation (NHWC: per pixel, each input's channels in turn). Every input
    /// must have the node input's height, width and representation (codes of one step, or
    /// real values); codes must match `out`'s step.
    fn concat_node(&self, others: &[String]) -> Result<Value> {
        let mut ins = vec![self.x];
        for o in others {
            ins.push(
                self.values
                    .get(o.as_str())
                    .ok_or_else(|| self.err(format!("its input {o} was not computed")))?,
            );
        }
        let x = self.x;
        let real = x.real.is_some();
        for v in &ins {
            if (v.h, v.w) != (x.h, x.w) {
                return Err(self.err(format!(
                    "inputs of {}x{} and {}x{} pixels",
                    x.h, x.w, v.h, v.w
                )));
            }
            if v.real.is_some() != real || (!real && v.step.to_bits() != x.step.to_bits()) {
                return Err(self.err(
                    "its inputs differ in representation (codes of one quantisation, or all real)",
                ));
            }
        }
        match (self.node.out, real) {
            (None, true) => {}
            (Some(q), false) if out_step(q).to_bits() == x.step.to_bits() => {}
            _ => {
                return Err(self.err(
                    "its out must be its inputs' quantisation (null for real-valued inputs)",
                ));
            }
        }
        let c: usize = ins.iter().map(|v| v.c).sum();
        let pixels = self.batch * x.h * x.w;
        fn cat<T: Copy + Default + Send + Sync>(
            parts: &[(&[T], usize)],
            pixels: usize,
            c: usize,
        ) -> Vec<T> {
            let mut out = vec![T::default(); pixels * c];
            out.par_chunks_mut(c.max(1) * 64)
                .enumerate()
                .for_each(|(k, chunk)| {
                    for (j, o) in chunk.chunks_mut(c.max(1)).enumerate() {
                        let p = k * 64 + j;
                        let mut d = 0;
                        for &(src, n) in parts {
                            o[d..d + n].copy_from_slice(&src[p * n..(p + 1) * n]);
                            d += n;
                        }
                    }
                });
            out
        }
        if c == 0 {
            return Err(self.err("a concat of zero channels"));
        }
        Ok(if real {
            let parts: Vec<(&[f32], usize)> = ins
                .iter()
                .map(|v| (v.real.as_deref().unwrap_or(&[]), v.c))
                .collect();
            for (src, n) in &parts {
                check_len("concat input", pixels * n, src.len())?;
            }
            Value {
                codes: Vec::new(),
                real: Some(cat(&parts, pixels, c)),
                h: x.h,
                w: x.w,
                c,
                step: x.step,
            }
        } else {
            let parts: Vec<(&[u8], usize)> = ins.iter().map(|v| (&v.codes[..], v.c)).collect();
            for (src, n) in &parts {
                check_len("concat input", pixels * n, src.len())?;
            }
            Value {
                codes: cat(&parts, pixels, c),
                real: None,
                h: x.h,
                w: x.w,
                c,
                step: x.step,
            }
        })
    }

    /// First conv, real-valued outputs before activation: the image's normalisation offset
    /// `−mean_c/std_c` enters only at valid (unpadded) positions, so it is subtracted per
    /// output position exactly. `a.acc`: the integer convolution of the pixels with one
    /// input step for all channels; with per-channel stds (`a.acc` empty) each input channel
    /// is convolved on its own and weighed by its step `1/(255·std_c)`.
    fn first_layer_pre(&self, a: &ConvAcc) -> Result<Vec<f32>> {
        let (g, lw) = (&a.g, a.lw);
        let inp = &self.model.meta().input;
        let pixels = &self.x.codes;
        let codes = lw.packed.unpack();
        let (oh, ow, co) = (g.out_h(), g.out_w(), g.c_out);
        let split = !inp.std_per_channel.is_empty();
        let mut raw: Vec<f32> = Vec::new();
        if split {
            let (ci_n, kk) = (g.c_in, g.kh * g.kw);
            let g1 = ConvGeom { c_in: 1, ..*g };
            raw = vec![0f32; g.rows() * co];
            for ci in 0..ci_n {
                let xc: Vec<u8> = pixels.iter().skip(ci).step_by(ci_n).copied().collect();
                let sub: Vec<i8> = (0..co)
                    .flat_map(|o| codes[(o * ci_n + ci) * kk..(o * ci_n + ci + 1) * kk].iter())
                    .copied()
                    .collect();
                let pw = PackedWeights::from_codes(&sub, co, kk, lw.packed.bits(), vec![1.0; co])?;
                let acc = conv2d(&xc, &g1, &conv_panel(&pw, &g1)?, self.isa)?;
                let step = 1.0 / (255.0 * inp.channel_std(ci));
                let w: Vec<f32> = (0..co)
                    .map(|o| lw.packed.scales()[o] * lw.mul.as_ref().map_or(1.0, |m| m[o]) * step)
                    .collect();
                raw.par_chunks_mut(co)
                    .zip(acc.par_chunks(co))
                    .for_each(|(r, a)| {
                        for o in 0..co {
                            r[o] += a[o] as f32 * w[o];
                        }
                    });
            }
        }
        // The same per-position shift as the per-image paths, built once per input shape.
        let shift = self.model.cache.shift(self.index, (g.h, g.w, g.c_in), || {
            self.first_layer_shift(g, lw, &codes, &a.bias)
        });
        if split {
            raw.par_chunks_mut(oh * ow * co).for_each(|p| {
                for (p, s) in p.chunks_exact_mut(co).zip(shift.chunks_exact(co)) {
                    for o in 0..co {
                        p[o] += s[o];
                    }
                }
            });
            return Ok(raw);
        }
        let mut pre = vec![0f32; a.acc.len()];
        pre.par_chunks_mut(oh * ow * co)
            .zip(a.acc.par_chunks(oh * ow * co))
            .for_each(|(p, acc)| {
                for ((p, acc), s) in p
                    .chunks_exact_mut(co)
                    .zip(acc.chunks_exact(co))
                    .zip(shift.chunks_exact(co))
                {
                    for o in 0..co {
                        p[o] = acc[o] as f32 * a.scale[o] + s[o];
                    }
                }
            });
        Ok(pre)
    }

    /// Per output position and channel of the first conv: `bias − offset`, the offset being
    /// the normalisation mean's contribution over the valid (unpadded) taps,
    /// `mul_o·s_o·Σ_valid q·mean_c/std_c`. `codes`: the unpacked weights (OIHW).
    fn first_layer_shift(
        &self,
        g: &ConvGeom,
        lw: &LayerWeights,
        codes: &[i8],
        bias: &[f32],
    ) -> Vec<f32> {
        let inp = &self.model.meta().input;
        let (oh, ow, co) = (g.out_h(), g.out_w(), g.c_out);
        // offset[pos][o] = mul_o·s_o·Σ_valid q·mean_c/std_c
        let mut offset = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut s = 0f32;
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                                    s += codes[((o * g.c_in + ci) * g.kh + ky) * g.kw + kx] as f32
                                        * inp.mean[ci]
                                        / inp.channel_std(ci);
                                }
                            }
                        }
                    }
                    let mul = lw.mul.as_ref().map_or(1.0, |m| m[o]);
                    offset[(oy * ow + ox) * co + o] = s * lw.packed.scales()[o] * mul;
                }
            }
        }
        // Per image: offset[pos][o] − bias[o] is the same for every image.
        offset
            .chunks_exact(co)
            .flat_map(|row| row.iter().zip(bias).map(|(off, b)| b - off))
            .collect()
    }

    /// What both one-channel, stride-1 first-conv paths need, checked: the direct conv's
    /// weights ([`c1_weights`](crate::layers::c1_weights)), the per-channel accumulator scale
    /// tiled over one image's positions (`[out_h·out_w·c_out]`) and the cached per-position
    /// shift ([`first_layer_shift`](Self::first_layer_shift)). Errors: an invalid geometry or
    /// an input of another length.
    fn c1_setup(&self, lw: &LayerWeights, g: &ConvGeom) -> Result<C1Setup> {
        g.validate()?;
        check_len("conv input", g.input_len(), self.x.codes.len())?;
        let panel = self.conv_panel(lw, g)?;
        let wt = crate::layers::c1_weights(g, &panel);
        let (scale, bias) = affine(lw, self.x.step);
        let shift = self.model.cache.shift(self.index, (g.h, g.w, g.c_in), || {
            self.first_layer_shift(g, lw, &lw.packed.unpack(), &bias)
        });
        let hw = g.out_h() * g.out_w();
        let scale = (0..hw).flat_map(|_| scale.iter().copied()).collect();
        Ok(C1Setup { wt, scale, shift })
    }

    /// A one-channel, stride-1 first conv's codes for output quantisation `q`: per image,
    /// the direct conv into a per-thread buffer and [`first_layer_codes`](Self::first_layer_codes)'s
    /// requantisation of it (the same codes, bit for bit, without the i32 tensor of the whole
    /// batch).
    fn first_layer_c1_codes(&self, lw: &LayerWeights, g: &ConvGeom, q: QuantOut) -> Result<Value> {
        let t_gemm = Instant::now();
        let x = &self.x.codes;
        let C1Setup { wt, scale, shift } = self.c1_setup(lw, g)?;
        let (co, hw) = (g.c_out, g.out_h() * g.out_w());
        let step = out_step(q);
        let simd = crate::fused::simd_epilogue(self.isa);
        let mut out = self.model.cache.take(g.rows() * co);
        out.par_chunks_mut(hw * co).enumerate().for_each_init(
            || vec![0i32; hw * co],
            |acc, (b, o)| {
                let xb = &x[b * g.h * g.w..(b + 1) * g.h * g.w];
                crate::layers::conv2d_c1_one(xb, g, &wt, self.isa, acc);
                crate::fused::requant_into(o, acc, &scale, &shift, None, q.alpha, step, simd);
            },
        );
        tracing::debug!(gemm_ms = millis(t_gemm), "direct conv + requantisation");
        Ok(Value::quantized(out, (g.out_h(), g.out_w(), co), q))
    }

    /// A one-channel, stride-1 first conv kept as a real stream (`out = null`): per image,
    /// the direct conv into a per-thread buffer, `act(acc·scale + shift)` on AVX2
    /// ([`real_row_avx2`](crate::x86::real_row_avx2)) and the codes of every quantize node
    /// reading the stream ([`codes_row_avx2`](crate::x86::codes_row_avx2), handed to them
    /// through `extra`). The same bits as [`first_layer_pre`](Self::first_layer_pre), its
    /// ReLU pass and the quantize nodes, without the batch's i32 tensor or extra passes.
    /// Callers ensure AVX2 and an image of a multiple of 8 elements.
    fn first_layer_c1_stream(&self, lw: &LayerWeights, g: &ConvGeom, op: &ConvOp) -> Result<Value> {
        let t_gemm = Instant::now();
        let x = &self.x.codes;
        let C1Setup { wt, scale, shift } = self.c1_setup(lw, g)?;
        let (co, hw) = (g.c_out, g.out_h() * g.out_w());
        let img = hw * co;
        // Every element of these is written below (whole images, multiples of 8).
        let mut pre = self.model.cache.take_real_dirty(g.rows() * co);
        let mut codes: Vec<Vec<u8>> = self
            .quant_consumers
            .iter()
            .map(|_| self.model.cache.take_dirty(pre.len()))
            .collect();
        let quants: Vec<(f32, f32)> = self
            .quant_consumers
            .iter()
            .map(|&(_, q)| (q.alpha, out_step(q)))
            .collect();
        // Per image: its real outputs and its slice of every consumer's codes.
        let mut per_image: Vec<(&mut [f32], Vec<&mut [u8]>)> =
            pre.chunks_mut(img).map(|p| (p, Vec::new())).collect();
        for c in codes.iter_mut() {
            for ((_, cs), q) in per_image.iter_mut().zip(c.chunks_mut(img)) {
                cs.push(q);
            }
        }
        per_image.into_par_iter().enumerate().for_each_init(
            || vec![0i32; img],
            |acc, (b, (o, cs))| {
                let xb = &x[b * g.h * g.w..(b + 1) * g.h * g.w];
                crate::layers::conv2d_c1_one(xb, g, &wt, self.isa, acc);
                // SAFETY: callers ensure AVX2 (`simd_epilogue`) and img a multiple of 8, so
                // every element is written; acc, scale and shift hold img elements.
                unsafe {
                    crate::x86::real_row_avx2(o, acc, &scale, &shift, None, (op.relu, op.relu6));
                    for (q, &(alpha, step)) in cs.into_iter().zip(&quants) {
                        crate::x86::codes_row_avx2(q, o, alpha, step);
                    }
                }
            },
        );
        tracing::debug!(gemm_ms = millis(t_gemm), "direct conv + real epilogue");
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(self.quant_consumers.iter().map(|&(ni, _)| ni).zip(codes));
        Ok(Value {
            codes: Vec::new(),
            real: Some(pre),
            h: g.out_h(),
            w: g.out_w(),
            c: co,
            step: 0.0,
        })
    }

    /// The first conv's codes for output quantisation `q`, in one pass over the
    /// accumulators (the values of [`first_layer_pre`](Self::first_layer_pre), quantized).
    fn first_layer_codes(&self, a: &ConvAcc, q: QuantOut) -> Result<Vec<u8>> {
        if !self.model.meta().input.std_per_channel.is_empty() {
            let pre = self.first_layer_pre(a)?;
            return Ok(quantize_real(&pre, q, simd_epilogue(self.isa)));
        }
        let co = a.g.c_out;
        let hw = a.g.out_h() * a.g.out_w();
        let g = &a.g;
        let shift = self.model.cache.shift(self.index, (g.h, g.w, g.c_in), || {
            self.first_layer_shift(g, a.lw, &a.lw.packed.unpack(), &a.bias)
        });
        let step = out_step(q);
        let simd = self.fused && crate::fused::simd_epilogue(self.isa);
        let mut out = self.model.cache.take(a.acc.len());
        // y = acc·scale + shift: the requantisation formula with the per-position shift as
        // bias; one image (all positions and channels) per call, the scale tiled to match.
        let scale: Vec<f32> = (0..hw).flat_map(|_| a.scale.iter().copied()).collect();
        out.par_chunks_mut(hw * co)
            .zip(a.acc.par_chunks(hw * co))
            .for_each(|(o, acc)| {
                crate::fused::requant_into(o, acc, &scale, &shift, None, q.alpha, step, simd);
            });
        Ok(out)
    }
}

/// The operands of a one-channel first conv's per-image paths ([`Ctx::c1_setup`]).
struct C1Setup {
    /// Weights of the direct conv (`[c_out][kh·kw]` i32).
    wt: Vec<i32>,
    /// Accumulator scale per element of one image (`[out_h·out_w·c_out]`).
    scale: Vec<f32>,
    /// Bias minus normalisation offset per element of one image (same shape).
    shift: Arc<Vec<f32>>,
}

/// The panel column order of a linear layer on a spatial input: activations are
/// HWC-flattened, weights CHW.
fn panel_perm(x: &Value, in_features: usize) -> Vec<usize> {
    (0..in_features)
        .map(|j| {
            let (pix, ch) = (j / x.c, j % x.c);
            ch * x.h * x.w + pix
        })
        .collect()
}

/// The step (real value of one code) of output quantisation `q`: `α / (2^bits − 1)`.
fn out_step(q: QuantOut) -> f32 {
    q.alpha / qmax_unsigned(q.bits) as f32
}

/// Per-channel real value of one accumulator unit (`scale·mul·in_step`), and the bias.
fn affine(lw: &LayerWeights, in_step: f32) -> (Vec<f32>, Vec<f32>) {
    let rows = lw.packed.rows();
    let scale = (0..rows)
        .map(|c| lw.packed.scales()[c] * lw.mul.as_ref().map_or(1.0, |m| m[c]) * in_step)
        .collect();
    let bias = lw.bias.clone().unwrap_or_else(|| vec![0.0; rows]);
    (scale, bias)
}

/// Unsigned `q.bits` codes of real values over `[0, q.alpha]` (the fake quantizer's rounding:
/// half away from zero).
/// Adds the residual `rv` (real values, or codes times their step) to `pre`, which holds
/// the output elements from `offset` on.
fn add_residual(pre: &mut [f32], offset: usize, rv: &Value) {
    match &rv.real {
        Some(r) => pre.iter_mut().zip(&r[offset..]).for_each(|(y, r)| *y += r),
        None => pre
            .iter_mut()
            .zip(&rv.codes[offset..])
            .for_each(|(y, &r)| *y += r as f32 * rv.step),
    }
}

/// The codes of quantizer `q` for the real values `x`: `round(clamp(x, 0, α)/step)`, on
/// AVX2 when `simd` (the same codes; see [`quantize_real_into`]).
fn quantize_real(x: &[f32], q: QuantOut, simd: bool) -> Vec<u8> {
    let mut out = vec![0u8; x.len()];
    quantize_real_into(x, q, &mut out, simd);
    out
}

/// [`quantize_real`] into `out` (`x.len()` codes); `simd` (set only where AVX2 is
/// available) runs [`codes_row_avx2`](crate::x86::codes_row_avx2), the tail in plain Rust.
fn quantize_real_into(x: &[f32], q: QuantOut, out: &mut [u8], simd: bool) {
    let step = out_step(q);
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(o, x)| {
            let done = if simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `simd` only where AVX2 is available; `x` is as long as `o`.
                unsafe {
                    crate::x86::codes_row_avx2(o, x, q.alpha, step)
                }
                #[cfg(not(target_arch = "x86_64"))]
                0
            } else {
                0
            };
            for (o, &y) in o[done..].iter_mut().zip(&x[done..]) {
                *o = round_code(y.clamp(0.0, q.alpha) / step);
            }
        });
}

/// Per image and channel, the mean over `hw` positions of a real NHWC stream `r`
/// (`[batch, hw, c]` → `[batch, c]`).
fn channel_means(r: &[f32], batch: usize, hw: usize, c: usize) -> Vec<f32> {
    let mut mean = vec![0f32; batch * c];
    for b in 0..batch {
        for p in 0..hw {
            let row = &r[(b * hw + p) * c..(b * hw + p + 1) * c];
            for (m, v) in mean[b * c..(b + 1) * c].iter_mut().zip(row) {
                *m += v;
            }
        }
    }
    mean.iter_mut().for_each(|m| *m /= hw as f32);
    mean
}

/// The option-A shortcut on NHWC `src` of shape `(batch, h, w, cin)`: every `stride`-th
/// position (output `(oh, ow)`), output channel `j` = input channel `gather[j]` or zero.
fn gather_channels<T: Copy + Default + Send + Sync>(
    src: &[T],
    (batch, h, w, cin): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    stride: usize,
    gather: &[Option<usize>],
) -> Vec<T> {
    let c = gather.len();
    // Runs of consecutive source channels landing in consecutive output channels
    // `(output channel, source channel, length)`: one copy each per pixel (option A's zero
    // padding of the channels is a single run).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (j, g) in gather.iter().enumerate() {
        if let Some(g) = *g {
            match runs.last_mut() {
                Some((d, s, n)) if *d + *n == j && *s + *n == g => *n += 1,
                _ => runs.push((j, g, 1)),
            }
        }
    }
    let mut out = vec![T::default(); batch * oh * ow * c];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(oh * ow * c)
        .enumerate()
        .for_each(|(b, out)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let s = ((b * h + oy * stride) * w + ox * stride) * cin;
                    let d = (oy * ow + ox) * c;
                    for &(dj, sj, n) in &runs {
                        out[d + dj..d + dj + n].copy_from_slice(&src[s + sj..s + sj + n]);
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::InputSpec;
    use crate::reference;
    use crate::testutil::{
        build_with, conv, head, lcg, toy_concat, toy_grouped, toy_int8, toy_model, toy_real_stream,
    };

    /// The fake-quantized float network, in f64 from dequantized weights.
    /// With `engine` given, every node reads its inputs (and residuals) from the engine's
    /// values instead of its own, so each node is checked in isolation.
    fn float_forward(
        m: &IntModel,
        pixels: &[u8],
        batch: usize,
        engine: Option<&HashMap<String, Vec<f64>>>,
        trace: &mut HashMap<String, Vec<f64>>,
    ) -> Vec<f64> {
        let inp = &m.meta().input;
        let fq = |y: f64, q: QuantOut| {
            let s = (q.alpha / qmax_unsigned(q.bits) as f32) as f64;
            (y.clamp(0.0, q.alpha as f64) / s).round() * s
        };
        let mut vals: HashMap<String, (Vec<f64>, usize, usize, usize)> = HashMap::new();
        let x: Vec<f64> = pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = i % inp.channels;
                // Independent of `channel_std`, which the engine uses.
                let sd = if inp.std_per_channel.is_empty() {
                    inp.std
                } else {
                    inp.std_per_channel[c]
                };
                (p as f64 / 255.0 - inp.mean[c] as f64) / sd as f64
            })
            .collect();
        vals.insert("input".into(), (x, inp.height, inp.width, inp.channels));
        for n in &m.meta().nodes {
            let (mut x, h, w, c) = vals[&n.input].clone();
            if let Some(e) = engine.and_then(|e| e.get(&n.input)) {
                x = e.clone();
            }
            let out = match &n.op {
                NodeOp::Conv {
                    c_out,
                    stride,
                    residual,
                    kernel,
                    pad,
                    pad_end,
                    relu,
                    relu6,
                    groups,
                    ..
                } => {
                    let lw = &m.weights()[&n.name];
                    let cols = lw.packed.cols();
                    let wd: Vec<f32> = lw
                        .packed
                        .dequantize()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * lw.mul.as_ref().unwrap()[i / cols])
                        .collect();
                    let g = ConvGeom {
                        batch,
                        h,
                        w,
                        c_in: c,
                        c_out: *c_out,
                        kh: *kernel,
                        kw: *kernel,
                        stride: *stride,
                        pad: *pad,
                        pad_end: pad_end.unwrap_or(*pad),
                    };
                    let bias = lw.bias.as_ref().unwrap();
                    let mut y = if *groups == 1 {
                        reference::conv2d_f64(&x, &g, &wd, bias)
                    } else {
                        // Group by group on the group's channels, dense.
                        let (cin_g, cout_g) = (c / groups, c_out / groups);
                        let gg = ConvGeom {
                            c_in: cin_g,
                            c_out: cout_g,
                            ..g
                        };
                        let mut y = vec![0.0; g.rows() * c_out];
                        for gi in 0..*groups {
                            let sub: Vec<f64> = x
                                .chunks(c)
                                .flat_map(|p| p[gi * cin_g..(gi + 1) * cin_g].to_vec())
                                .collect();
                            let wg = &wd[gi * cout_g * cols..(gi + 1) * cout_g * cols];
                            let bg = &bias[gi * cout_g..(gi + 1) * cout_g];
                            let yg = reference::conv2d_f64(&sub, &gg, wg, bg);
                            for p in 0..g.rows() {
                                y[p * c_out + gi * cout_g..p * c_out + (gi + 1) * cout_g]
                                    .copy_from_slice(&yg[p * cout_g..(p + 1) * cout_g]);
                            }
                        }
                        y
                    };
                    if let Some(r) = residual {
                        let rv = engine.and_then(|e| e.get(r)).unwrap_or(&vals[r].0);
                        y.iter_mut().zip(rv).for_each(|(y, r)| *y += r);
                    }
                    (
                        y.into_iter()
                            .map(|y| match n.out {
                                Some(q) => fq(y, q),
                                None if *relu6 => y.clamp(0.0, 6.0),
                                None if *relu => y.max(0.0),
                                None => y,
                            })
                            .collect(),
                        g.out_h(),
                        g.out_w(),
                        *c_out,
                    )
                }
                NodeOp::Quantize => (x.iter().map(|&v| fq(v, n.out.unwrap())).collect(), h, w, c),
                NodeOp::Concat { others } => {
                    let mut parts = vec![(x, c)];
                    for o in others {
                        let v = engine.and_then(|e| e.get(o)).unwrap_or(&vals[o].0);
                        parts.push((v.clone(), vals[o].3));
                    }
                    let ct: usize = parts.iter().map(|p| p.1).sum();
                    let mut out = Vec::with_capacity(batch * h * w * ct);
                    for p in 0..batch * h * w {
                        for (v, n) in &parts {
                            out.extend_from_slice(&v[p * n..(p + 1) * n]);
                        }
                    }
                    (out, h, w, ct)
                }
                NodeOp::ShortcutA { stride, gather } => {
                    let (oh, ow) = (h.div_ceil(*stride), w.div_ceil(*stride));
                    let mut o = vec![0.0; batch * oh * ow * gather.len()];
                    for b in 0..batch {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                for (j, g) in gather.iter().enumerate() {
                                    if let Some(g) = g {
                                        o[((b * oh + oy) * ow + ox) * gather.len() + j] =
                                            x[((b * h + oy * stride) * w + ox * stride) * c + g];
                                    }
                                }
                            }
                        }
                    }
                    (o, oh, ow, gather.len())
                }
                NodeOp::MaxPool {
                    kernel,
                    stride,
                    pad,
                    pad_end,
                } => {
                    let pads = [*pad, pad_end.unwrap_or(*pad)];
                    pool_f64(&x, batch, h, w, c, *kernel, *stride, pads, |v| {
                        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    })
                }
                NodeOp::AvgPool {
                    kernel,
                    stride,
                    pad,
                    pad_end,
                } => {
                    let q = n.out.unwrap();
                    let pads = [*pad, pad_end.unwrap_or(*pad)];
                    pool_f64(&x, batch, h, w, c, *kernel, *stride, pads, |v| {
                        fq(v.iter().sum::<f64>() / v.len() as f64, q)
                    })
                }
                NodeOp::GlobalAvgPool => {
                    let mut o = vec![0.0; batch * c];
                    for b in 0..batch {
                        for ch in 0..c {
                            let s: f64 = (0..h * w).map(|p| x[(b * h * w + p) * c + ch]).sum();
                            o[b * c + ch] = fq(s / (h * w) as f64, n.out.unwrap());
                        }
                    }
                    (o, 1, 1, c)
                }
                NodeOp::Linear { out_features, .. } => {
                    let lw = &m.weights()[&n.name];
                    let cols = lw.packed.cols();
                    let wd = lw.packed.dequantize();
                    let mut o = vec![0.0; batch * out_features];
                    for b in 0..batch {
                        for j in 0..*out_features {
                            let s: f64 = (0..cols)
                                .map(|t| x[b * cols + t] * wd[j * cols + t] as f64)
                                .sum();
                            o[b * out_features + j] = s * lw.mul.as_ref().unwrap()[j] as f64
                                + lw.bias.as_ref().unwrap()[j] as f64;
                        }
                    }
                    return o;
                }
            };
            trace.insert(n.name.clone(), out.0.clone());
            vals.insert(n.name.clone(), out);
        }
        unreachable!("no logits")
    }

    #[allow(clippy::too_many_arguments)]
    fn pool_f64(
        x: &[f64],
        batch: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        stride: usize,
        [pad, pad_end]: [usize; 2],
        f: impl Fn(&[f64]) -> f64,
    ) -> (Vec<f64>, usize, usize, usize) {
        let (oh, ow) = (
            (h + pad + pad_end - k) / stride + 1,
            (w + pad + pad_end - k) / stride + 1,
        );
        let mut o = vec![0.0; batch * oh * ow * c];
        for b in 0..batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut cells = Vec::new();
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    cells.push(
                                        x[((b * h + iy as usize) * w + ix as usize) * c + ch],
                                    );
                                } else {
                                    cells.push(0.0); // zero padding, as the float model
                                }
                            }
                        }
                        o[((b * oh + oy) * ow + ox) * c + ch] = f(&cells);
                    }
                }
            }
        }
        (o, oh, ow, c)
    }

    /// The run-wise, per-image parallel gather equals the element-wise loop for gathers
    /// with runs, gaps, repeats and reversals, at strides 1–3 and odd sizes.
    #[test]
    fn gather_channels_matches_elementwise() {
        let mut r = lcg(17);
        let gathers: [&[Option<usize>]; 5] = [
            &[None, Some(0), Some(1), Some(2), None],
            &[Some(0), None, Some(2), Some(3), None, Some(1)],
            &[Some(3), Some(2), Some(1), Some(0)],
            &[Some(1), Some(1), Some(2), Some(3), Some(0), Some(1)],
            &[None, None],
        ];
        for (batch, h, w, stride) in [
            (3usize, 5usize, 7usize, 2usize),
            (2, 4, 4, 1),
            (1, 7, 5, 3),
            (0, 3, 3, 2),
        ] {
            let cin = 4;
            let src: Vec<u8> = (0..batch * h * w * cin)
                .map(|_| (r() * 255.0) as u8)
                .collect();
            let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
            for gather in gathers {
                let c = gather.len();
                let mut want = vec![0u8; batch * oh * ow * c];
                for b in 0..batch {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for (j, g) in gather.iter().enumerate() {
                                if let Some(g) = g {
                                    want[((b * oh + oy) * ow + ox) * c + j] =
                                        src[((b * h + oy * stride) * w + ox * stride) * cin + g];
                                }
                            }
                        }
                    }
                }
                let got = gather_channels(&src, (batch, h, w, cin), (oh, ow), stride, gather);
                assert_eq!(got, want, "{gather:?} stride {stride}");
            }
        }
    }

    #[test]
    fn engine_matches_fake_quant_float_model_and_round_trips() {
        check_engine(toy_model());
    }

    /// Three input channels with different normalisation stds: the first conv runs one
    /// integer convolution per channel (direct path at stride 1, GEMM at stride 2).
    #[test]
    fn per_channel_input_std_matches_the_float_model() {
        for stride in [1, 2] {
            let input = InputSpec {
                channels: 3,
                height: 8,
                width: 8,
                mean: vec![0.49, 0.48, 0.45],
                std: 0.25,
                std_per_channel: vec![0.247, 0.243, 0.261],
            };
            let m = build_with(
                [
                    vec![
                        conv("c1", "input", 3, 4, stride, 8, None, Some((2.0, 4))),
                        conv("c2", "c1", 4, 4, 1, 5, None, Some((1.5, 3))),
                    ],
                    head("c2", 4),
                ]
                .concat(),
                input,
            );
            check_engine(m.clone());
            let mut meta = m.meta().clone();
            meta.input.std_per_channel = vec![0.2, 0.0, 0.3];
            assert!(IntModel::new(meta, m.weights().clone()).is_err());
        }
    }

    #[test]
    fn real_valued_residual_streams_match_the_float_model() {
        let m = toy_real_stream();
        check_engine(m.clone());
        // A conv cannot read a real-valued stream directly.
        let mut meta = m.meta().clone();
        meta.nodes[2].input = "c1".into();
        let bad = IntModel::new(meta, m.weights().clone()).unwrap();
        let e = bad
            .forward(&[0; 64], 1, Isa::Portable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c2") && e.contains("quantize"), "{e}");
    }

    /// Concatenations of codes (three inputs, then max pooling) and of real values (then max
    /// pooling, padded average pooling requantised to codes, and a residual read) equal the
    /// float model; inputs that differ in
    /// quantisation or size, or an `out` other than the inputs', are clear errors.
    #[test]
    fn concat_nodes_match_the_float_model_and_refuse_mixed_inputs() {
        let m = toy_concat();
        check_engine(m.clone());
        let run = |edit: &dyn Fn(&mut Vec<Node>)| {
            let mut meta = m.meta().clone();
            edit(&mut meta.nodes);
            IntModel::new(meta, m.weights().clone())
                .and_then(|bad| bad.forward(&[7; 64], 1, Isa::Portable))
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let at =
            |nodes: &mut Vec<Node>, name: &str| nodes.iter().position(|n| n.name == name).unwrap();
        // Codes of another quantisation.
        let e = run(&|n| {
            let b = at(n, "b");
            n[b].out = Some(QuantOut {
                alpha: 1.4,
                bits: 5,
            });
        });
        assert!(e.contains("cat") && e.contains("representation"), "{e}");
        // A concat node `name` reading `others` after its own input.
        let rewire = |name: &str, others: &[&str]| {
            run(&|n| {
                let c = at(n, name);
                n[c].op = NodeOp::Concat {
                    others: others.iter().map(|o| o.to_string()).collect(),
                };
            })
        };
        // Codes concatenated with real values.
        let e = rewire("rcat", &["b"]);
        assert!(e.contains("representation"), "{e}");
        // An `out` that is not the inputs' quantisation.
        let e = run(&|n| {
            let c = at(n, "cat");
            n[c].out = Some(QuantOut {
                alpha: 1.5,
                bits: 4,
            });
        });
        assert!(e.contains("cat") && e.contains("out"), "{e}");
        // An unknown input, one input only, the image.
        let e = rewire("cat", &["nope"]);
        assert!(e.contains("unknown input"), "{e}");
        let e = rewire("cat", &[]);
        assert!(e.contains("two inputs"), "{e}");
        let e = rewire("cat", &["input"]);
        assert!(e.contains("image"), "{e}");
    }

    /// Depthwise, channel-multiplier and two-group convs (with a residual after them) equal
    /// the float model; groups not dividing the channels, or not matching the weights, are
    /// refused when the file is read.
    #[test]
    fn grouped_convs_match_the_float_model() {
        let m = toy_grouped();
        check_engine(m.clone());
        let bad = |node: usize, groups: usize| {
            let mut meta = m.meta().clone();
            if let NodeOp::Conv { groups: g, .. } = &mut meta.nodes[node].op {
                *g = groups;
            }
            IntModel::new(meta, m.weights().clone())
                .unwrap_err()
                .to_string()
        };
        let e = bad(1, 3);
        assert!(
            e.contains("dw") && e.contains("groups 3 must divide"),
            "{e}"
        );
        let e = bad(2, 0);
        assert!(e.contains("mult") && e.contains("groups 0"), "{e}");
        // Dense weights for a node that claims groups: the weight shape no longer fits.
        let e = bad(3, 1);
        assert!(e.contains("g2") && e.contains("weights are"), "{e}");
    }

    /// The fused paths (GEMM + requantisation in one pass, cached panels, pooled buffers)
    /// give bit-identical logits to the unfused layer functions, on every ISA, over repeated
    /// calls (reused buffers holding another input's activations) and batch sizes that leave
    /// partial row blocks or split into micro-batches (24 = 16 + 8, 37 = 16 + 16 + 5).
    #[test]
    fn fused_paths_equal_the_unfused_engine() {
        for m in [
            toy_model(),
            toy_real_stream(),
            toy_int8(),
            toy_concat(),
            toy_grouped(),
        ] {
            let mut r = lcg(17);
            for batch in [1, 3, 24, 37] {
                let pixels: Vec<u8> = (0..batch * 64 * m.meta().input.channels)
                    .map(|_| (r() * 256.0) as u8)
                    .collect();
                let other: Vec<u8> = pixels.iter().map(|p| p.wrapping_mul(7) ^ 0x5A).collect();
                for isa in Isa::available() {
                    let want = m.forward_unfused(&pixels, batch, isa).unwrap();
                    for _ in 0..2 {
                        // Pooled buffers (reused without clearing where every element is
                        // overwritten) first hold another input's activations.
                        m.forward(&other, batch, isa).unwrap();
                        let got = m.forward(&pixels, batch, isa).unwrap();
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} batch {batch}"
                        );
                    }
                    // An image's logits do not depend on the rest of its batch (nor on which
                    // micro-batch or kernel it ran in): one image at a time gives the same bits.
                    let per = pixels.len() / batch;
                    let single: Vec<f32> = pixels
                        .chunks(per)
                        .flat_map(|p| m.forward(p, 1, isa).unwrap())
                        .collect();
                    assert_eq!(
                        single.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} batch {batch}, one image at a time"
                    );
                }
            }
            assert!(m.resident_bytes() > m.storage_bytes());
        }
    }

    #[test]
    fn wrong_pixel_count_is_an_error() {
        let m = toy_model();
        assert!(m.forward(&[0; 10], 1, Isa::Portable).is_err());
    }

    /// Checks the engine against the f64 fake-quantized float model, node by node and end to
    /// end, on every available ISA, and the file round trip.
    fn check_engine(m: IntModel) {
        let batch = 24;
        let mut r = lcg(9);
        let pixels: Vec<u8> = (0..batch * 64 * m.meta().input.channels)
            .map(|_| (r() * 256.0) as u8)
            .collect();
        // Node by node: each integer node, fed the engine's own inputs, equals the float
        // node except for rounding ties (f32 engine vs f64 reference): at most one step off,
        // and rarely (exact ties do occur: e.g. 4-cell means whose code sum is 31 or 93 land
        // exactly on .5 when requantised from α=2/5 bits to α=1.8/6 bits).
        let mut etrace = HashMap::new();
        m.forward_traced(&pixels, batch, Isa::detect(), &mut |name, v| {
            etrace.insert(
                name.to_string(),
                v.iter().map(|&x| x as f64).collect::<Vec<f64>>(),
            );
        })
        .unwrap();
        let steps: HashMap<&str, f64> = m
            .meta()
            .nodes
            .iter()
            .filter_map(|n| {
                n.out.map(|q| {
                    (
                        n.name.as_str(),
                        (q.alpha / qmax_unsigned(q.bits) as f32) as f64,
                    )
                })
            })
            .collect();
        let mut ftrace = HashMap::new();
        float_forward(&m, &pixels, batch, Some(&etrace), &mut ftrace);
        for (name, e) in &etrace {
            let f = &ftrace[name];
            let Some(&step) = steps.get(name.as_str()) else {
                // A real-valued node: equal up to f32 rounding.
                let scale = f.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
                assert!(
                    e.iter().zip(f).all(|(a, b)| (a - b).abs() <= 1e-4 * scale),
                    "node {name}: real values differ"
                );
                continue;
            };
            let off: Vec<f64> = e
                .iter()
                .zip(f)
                .map(|(a, b)| (a - b).abs())
                .filter(|d| *d > 1e-4 * step)
                .collect();
            assert!(
                off.iter().all(|d| *d <= step * 1.0001),
                "node {name}: a value is more than one step off"
            );
            assert!(
                off.len() * 40 <= e.len().max(40),
                "node {name}: {}/{} values differ",
                off.len(),
                e.len()
            );
        }
        // End to end the flips propagate a little; predictions must still agree.
        let want = float_forward(&m, &pixels, batch, None, &mut HashMap::new());
        let bytes = m.to_bytes().unwrap();
        let m2 = IntModel::from_bytes(&bytes, "<test>").unwrap();
        assert_eq!(m2.meta(), m.meta());
        assert_eq!(m2.weights(), m.weights());
        let scale = want.iter().fold(0f64, |a, &b| a.max(b.abs()));
        let mut agree = 0;
        for isa in Isa::available() {
            let got = m2.forward(&pixels, batch, isa).unwrap();
            assert_eq!(got.len(), batch * 3);
            let mut close = 0;
            for b in 0..batch {
                let row = |v: &[f64]| {
                    (0..3)
                        .max_by(|&i, &j| v[b * 3 + i].total_cmp(&v[b * 3 + j]))
                        .unwrap()
                };
                let g64: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                agree += (row(&g64) == row(&want)) as usize;
                close += (0..3).all(|j| (g64[b * 3 + j] - want[b * 3 + j]).abs() <= 1e-3 * scale)
                    as usize;
            }
            // Rounding-tie flips propagate end to end (pooling spreads them); the logits of
            // most images still match closely.
            assert!(
                close * 2 >= batch,
                "{isa:?}: only {close}/{batch} images have matching logits"
            );
        }
        assert!(
            agree * 5 >= Isa::available().len() * batch * 4,
            "argmax agreement {agree}"
        );
        assert!(m.storage_bytes() > 0);
    }
}
