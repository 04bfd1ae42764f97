//! Fused integer layers: the GEMM of a convolution or linear layer with its A rows built per
//! row block in per-thread scratch (im2col of that block only; 1×1 convolutions and linear
//! layers copy their rows) and the epilogue (requantisation with ReLU/clip, residual add,
//! the next layer's bit-width, or real outputs) applied on the tile write-back — no im2col
//! matrix, no i32 accumulator tensor of the whole layer, no allocation once the per-thread
//! scratch has grown to the largest layer.
//!
//! Convolutions whose kernel rows are whole groups of 4 codes (`kw·c_in` a multiple of 4) run
//! as implicit GEMM: with the VNNI and AVX2 kernels (`vnni`; `avx2-wide` for 8-bit operands,
//! `avx2-i16` for low-bit ones) each task copies the input rows it needs once into
//! zero-padded rows and every window is read in place, at any stride, in strips of up to 8
//! (VNNI) or 6 output pixels with all kernel rows in one kernel call; the other kernels read
//! the interior in place at stride 1 and im2col the borders. The epilogues (requantisation,
//! and the real-valued outputs of streams the float model keeps in float with the codes of
//! their quantizers) run on AVX2 where the CPU has it, with the plain-Rust operations' bits.
//!
//! The arithmetic is the same as the unfused path (`layers::conv2d` then [`Requant::apply`]):
//! the same exact i32 sums (every micro-kernel is exact; the fused paths may use taller tiles
//! of the same instructions), then per element the same f32 operations in the same order, so
//! results are bit-identical; tests compare both with the slow references in
//! [`reference`](mod@crate::reference).
//!
//! Parallelism: one level of rayon tasks over (row block × output-panel group); the row
//! blocks are small enough that a batch of 128 gives many tasks, and small batches split the
//! output channels instead, so the pool's threads are never oversubscribed by nested loops.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::Isa;
use crate::error::{Result, check_len, invalid};
use crate::gemm::{
    APanel, I16_MR, Kernel, NR, WIDE_MR, WeightPanel, micro, micro_i16, micro_vnni, micro_wide,
};
use crate::layers::{ConvGeom, Requant, round_code};

/// Largest reduction block (codes of `k`) per pass: one panel block is ≤ 16 KiB of i8 and
/// stays in L1 while every row strip of a task reuses it.
const KC: usize = 1024;
/// Largest number of rows per task.
const MB: usize = 64;

/// Where the A rows of a fused GEMM come from.
#[derive(Clone, Copy, Debug)]
pub enum ASource<'a> {
    /// Row-major `[m, k]` codes: a linear layer or a 1×1, stride-1, unpadded convolution.
    Rows {
        /// The codes, `m·k` of them.
        a: &'a [u8],
        /// Row length.
        k: usize,
    },
    /// The im2col rows of an NHWC convolution input `x` (`[batch, h, w, c_in]`): row
    /// `(b, oy, ox)` holds the window in the order `(ky, kx, c_in)`, zero where padded.
    Im2col {
        /// The input codes.
        x: &'a [u8],
        /// Its geometry.
        g: &'a ConvGeom,
    },
}

impl ASource<'_> {
    /// Rows `m` and row length `k` (the unpadded reduction).
    fn dims(&self) -> (usize, usize) {
        match self {
            ASource::Rows { a, k } => (if *k == 0 { 0 } else { a.len() / k }, *k),
            ASource::Im2col { g, .. } => (g.rows(), g.k()),
        }
    }

    /// The largest code (an upper bound of every A entry; padding is 0).
    fn amax(&self) -> u32 {
        let s = match self {
            ASource::Rows { a, .. } => a,
            ASource::Im2col { x, .. } => x,
        };
        max_u8(s) as u32
    }

    /// Writes rows `r0..r0 + nrows` into `buf` (`nrows` rows of `kp ≥ k` codes, the tail of
    /// each row zero), as u8 or widened to i16.
    fn fill<T: Copy + From<u8>>(&self, r0: usize, nrows: usize, kp: usize, buf: &mut [T]) {
        match *self {
            ASource::Rows { a, k } => {
                for (i, row) in buf.chunks_exact_mut(kp).take(nrows).enumerate() {
                    copy_codes(&a[(r0 + i) * k..(r0 + i + 1) * k], &mut row[..k]);
                    row[k..].fill(T::from(0));
                }
            }
            ASource::Im2col { x, g } => {
                for (i, row) in buf.chunks_exact_mut(kp).take(nrows).enumerate() {
                    im2col_row(x, g, r0 + i, row);
                }
            }
        }
    }
}

/// Copies the u8 codes `src` into `dst` (same length), as u8 or zero-extended to i16.
#[inline]
fn copy_codes<T: Copy + From<u8>>(src: &[u8], dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::from(s);
    }
}

/// im2col row `r` (output pixel `(b, oy, ox)`) of NHWC input `x` into `row` (`≥ k` codes, u8
/// or widened to i16; the window in the order `(ky, kx, c_in)`, zero where padded and in the
/// tail).
fn im2col_row<T: Copy + From<u8>>(x: &[u8], g: &ConvGeom, r: usize, row: &mut [T]) {
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c_in);
    let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
    let ix0 = (ox * g.stride) as isize - g.pad as isize;
    let iy0 = (oy * g.stride) as isize - g.pad as isize;
    // The valid taps of one kernel row are contiguous in NHWC: one copy.
    let kx0 = (-ix0).max(0) as usize;
    let kx1 = (g.w as isize - ix0).clamp(0, g.kw as isize) as usize;
    let interior = kx0 == 0 && kx1 == g.kw && iy0 >= 0 && iy0 + g.kh as isize <= g.h as isize;
    // An interior window overwrites the whole row but its padding tail.
    if interior {
        row[g.k()..].fill(T::from(0));
    } else {
        row.fill(T::from(0));
    }
    if kx0 >= kx1 {
        return;
    }
    for ky in 0..g.kh {
        let iy = iy0 + ky as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let src = ((b * g.h + iy as usize) * g.w + (ix0 + kx0 as isize) as usize) * c;
        let dst = (ky * g.kw + kx0) * c;
        let len = (kx1 - kx0) * c;
        copy_codes(&x[src..src + len], &mut row[dst..dst + len]);
    }
}

/// The largest byte of `s` (0 for an empty slice); a plain loop the compiler vectorises.
fn max_u8(s: &[u8]) -> u8 {
    s.chunks(4096)
        .map(|c| c.iter().fold(0u8, |m, &v| m.max(v)))
        .max()
        .unwrap_or(0)
}

/// The consumer of a fused GEMM's accumulators, called once per task.
pub trait Sink: Sync {
    /// Output columns `n` (the GEMM's output channels).
    fn n(&self) -> usize;
    /// Rows `r0..r0 + nrows`, columns `c0..c1` of the output: `acc` holds `nrows` rows of
    /// `ld` i32, the first `c1 − c0` of each valid. Tasks call this for disjoint tiles.
    fn write(&self, r0: usize, nrows: usize, c0: usize, c1: usize, acc: &[i32], ld: usize);
}

/// A raw output pointer handed to tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct Out<T>(*mut T, usize);
// SAFETY: only used to write disjoint tiles of one buffer from rayon tasks.
unsafe impl<T: Send> Send for Out<T> {}
unsafe impl<T: Send> Sync for Out<T> {}

impl<T> Out<T> {
    fn new(s: &mut [T]) -> Self {
        Out(s.as_mut_ptr(), s.len())
    }
    /// The elements `start..start + len`. Panics when out of bounds.
    ///
    /// # Safety
    /// No other live reference may overlap that range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.1, "fused output tile out of bounds");
        // SAFETY: in bounds (asserted); disjointness by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Writes the raw i32 accumulators (`[m, n]` row-major).
pub struct AccSink<'a> {
    out: Out<i32>,
    n: usize,
    _life: std::marker::PhantomData<&'a mut [i32]>,
}

impl<'a> AccSink<'a> {
    /// A sink into `out` (`[m, n]`).
    pub fn new(out: &'a mut [i32], n: usize) -> Self {
        Self {
            out: Out::new(out),
            n,
            _life: std::marker::PhantomData,
        }
    }
}

impl Sink for AccSink<'_> {
    fn n(&self) -> usize {
        self.n
    }
    fn write(&self, r0: usize, nrows: usize, c0: usize, c1: usize, acc: &[i32], ld: usize) {
        for i in 0..nrows {
            // SAFETY: tasks write disjoint (row, column) tiles.
            let o = unsafe { self.out.slice((r0 + i) * self.n + c0, c1 - c0) };
            o.copy_from_slice(&acc[i * ld..i * ld + (c1 - c0)]);
        }
    }
}

/// Requantises to the next layer's codes: `q = round(clamp(acc·scale[c] + bias[c]
/// (+ r·r_step), 0, α)/s)`, the formula of [`Requant::apply`] /
/// [`Requant::apply_residual`], element for element.
pub struct RequantSink<'a> {
    rq: &'a Requant,
    step: f32,
    residual: Option<(&'a [u8], f32)>,
    out: Out<u8>,
    /// The AVX2 epilogue (else plain Rust; both give the same codes).
    simd: bool,
    _life: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> RequantSink<'a> {
    /// A sink into `out` (`[m, channels]`), with an optional residual of codes (same shape
    /// as the output) and its step; its epilogue is vectorised with AVX2 unless `isa` is
    /// [`Isa::Portable`] (the plain-Rust reference path). Errors: `ShapeMismatch` if the
    /// residual and the output differ in length.
    pub fn new(
        rq: &'a Requant,
        residual: Option<(&'a [u8], f32)>,
        out: &'a mut [u8],
        isa: Isa,
    ) -> Result<Self> {
        if let Some((r, _)) = residual {
            check_len("residual input", out.len(), r.len())?;
        }
        Ok(Self {
            rq,
            step: rq.step(),
            residual,
            out: Out::new(out),
            simd: simd_epilogue(isa),
            _life: std::marker::PhantomData,
        })
    }
}

impl Sink for RequantSink<'_> {
    fn n(&self) -> usize {
        self.rq.channels()
    }
    fn write(&self, r0: usize, nrows: usize, c0: usize, c1: usize, acc: &[i32], ld: usize) {
        let n = self.n();
        let (alpha, step) = (self.rq.alpha, self.step);
        let s = &self.rq.acc_scale[c0..c1];
        let b = &self.rq.bias[c0..c1];
        #[cfg(target_arch = "x86_64")]
        if self.simd && c0 == 0 && c1 == n && ld == n && n.is_multiple_of(8) {
            // Whole rows, contiguous in `acc` and in the output: one call for the tile, the
            // channel factors repeated every n (no per-row overhead for narrow layers).
            // SAFETY: tasks write disjoint row ranges (the tile has all columns).
            let o = unsafe { self.out.slice(r0 * n, nrows * n) };
            let r = self
                .residual
                .map(|(r, r_step)| (&r[r0 * n..(r0 + nrows) * n], r_step));
            // SAFETY: `simd` only where AVX2 is available; acc and r hold nrows·n elements,
            // the factors n, a multiple of 8, so every element is written (no tail).
            unsafe { crate::x86::requant_row_avx2(o, &acc[..nrows * n], s, b, r, alpha, step) };
            return;
        }
        for i in 0..nrows {
            let base = (r0 + i) * n + c0;
            // SAFETY: tasks write disjoint (row, column) tiles.
            let o = unsafe { self.out.slice(base, c1 - c0) };
            let a = &acc[i * ld..i * ld + (c1 - c0)];
            let r = self
                .residual
                .map(|(r, r_step)| (&r[base..base + (c1 - c0)], r_step));
            requant_into(o, a, s, b, r, alpha, step, self.simd);
        }
    }
}

/// The residual a [`RealSink`] adds: real values, or codes with their step.
#[derive(Clone, Copy)]
pub(crate) enum Residual<'a> {
    /// Real values (same shape as the output).
    Real(&'a [f32]),
    /// Codes and the real value of one code.
    Codes(&'a [u8], f32),
}

/// Writes a real-valued output (a stream the float model keeps in float):
/// `y = act(acc·scale[c] + bias[c] (+ residual))`, `act` a ReLU, ReLU6 or nothing, and for
/// each quantizer `(α, step)` in `codes` also `round(clamp(y, 0, α)/step)` — the same float
/// operations, in the same order, as the interpreter's unfused epilogue and its quantize
/// nodes, so the results are bitwise those.
pub(crate) struct RealSink<'a> {
    scale: &'a [f32],
    bias: &'a [f32],
    residual: Option<Residual<'a>>,
    relu: bool,
    relu6: bool,
    out: Out<f32>,
    codes: Vec<(Out<u8>, f32, f32)>,
    /// The AVX2 epilogue (else plain Rust; both give the same bits).
    simd: bool,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> RealSink<'a> {
    /// A sink into `out` (`[m, scale.len()]`) and `codes` (each `[m, n]`, with its `(α, step)`),
    /// its epilogue vectorised with AVX2 unless `isa` is [`Isa::Portable`].
    /// Errors: `ShapeMismatch` when a buffer, the residual or the bias has another length.
    pub(crate) fn new(
        scale: &'a [f32],
        bias: &'a [f32],
        residual: Option<Residual<'a>>,
        (relu, relu6): (bool, bool),
        out: &'a mut [f32],
        codes: Vec<(&'a mut [u8], f32, f32)>,
        isa: Isa,
    ) -> Result<Self> {
        check_len("bias", scale.len(), bias.len())?;
        match residual {
            Some(Residual::Real(r)) => check_len("residual input", out.len(), r.len())?,
            Some(Residual::Codes(r, _)) => check_len("residual input", out.len(), r.len())?,
            None => {}
        }
        for (c, _, _) in &codes {
            check_len("fused quantize output", out.len(), c.len())?;
        }
        Ok(Self {
            scale,
            bias,
            residual,
            relu,
            relu6,
            out: Out::new(out),
            codes: codes
                .into_iter()
                .map(|(c, a, s)| (Out::new(c), a, s))
                .collect(),
            simd: simd_epilogue(isa),
            _life: std::marker::PhantomData,
        })
    }
}

impl RealSink<'_> {
    /// Elements `base..base + o.len()` of the tile in plain Rust (`a` its accumulators, `s`
    /// and `b` its channel factors): the reference the AVX2 epilogue is tested against.
    fn write_plain(&self, base: usize, o: &mut [f32], a: &[i32], s: &[f32], b: &[f32]) {
        for j in 0..o.len() {
            o[j] = a[j] as f32 * s[j] + b[j];
        }
        match self.residual {
            Some(Residual::Real(r)) => {
                for (y, r) in o.iter_mut().zip(&r[base..]) {
                    *y += r;
                }
            }
            Some(Residual::Codes(r, step)) => {
                for (y, &r) in o.iter_mut().zip(&r[base..]) {
                    *y += r as f32 * step;
                }
            }
            None => {}
        }
        if self.relu6 {
            o.iter_mut().for_each(|y| *y = y.clamp(0.0, 6.0));
        } else if self.relu {
            o.iter_mut().for_each(|y| *y = y.max(0.0));
        }
        for (c, alpha, step) in &self.codes {
            // SAFETY: the caller's tile, in another buffer of the same shape.
            let q = unsafe { c.slice(base, o.len()) };
            for (q, &y) in q.iter_mut().zip(o.iter()) {
                *q = crate::layers::round_code(y.clamp(0.0, *alpha) / step);
            }
        }
    }

    /// Elements `base..base + o.len()` on AVX2 up to the last multiple of 8 (the factors
    /// `s`, `b` per element or repeating every `s.len()`, a multiple of 8), the tail in
    /// plain Rust: the same bits as [`write_plain`](Self::write_plain).
    #[cfg(target_arch = "x86_64")]
    fn write_simd(&self, base: usize, o: &mut [f32], a: &[i32], s: &[f32], b: &[f32]) {
        let len = o.len();
        let r = self.residual.map(|r| match r {
            Residual::Real(r) => Residual::Real(&r[base..base + len]),
            Residual::Codes(r, st) => Residual::Codes(&r[base..base + len], st),
        });
        // SAFETY: `simd` is set only where AVX2 is available; a and r hold len elements,
        // s and b len or a period that is a multiple of 8 (the callers' contract).
        let done = unsafe { crate::x86::real_row_avx2(o, a, s, b, r, (self.relu, self.relu6)) };
        for (c, alpha, step) in &self.codes {
            // SAFETY: the caller's tile, in another buffer of the same shape.
            let q = unsafe { c.slice(base, done) };
            // SAFETY: AVX2 as above; o holds at least `done` elements.
            unsafe { crate::x86::codes_row_avx2(q, &o[..done], *alpha, *step) };
        }
        if done < len {
            // A tail only where the factors are per element (a period is a multiple of 8
            // and divides the length).
            self.write_plain(
                base + done,
                &mut o[done..],
                &a[done..len],
                &s[done..],
                &b[done..],
            );
        }
    }
}

impl Sink for RealSink<'_> {
    fn n(&self) -> usize {
        self.scale.len()
    }
    fn write(&self, r0: usize, nrows: usize, c0: usize, c1: usize, acc: &[i32], ld: usize) {
        let n = self.n();
        let (s, b) = (&self.scale[c0..c1], &self.bias[c0..c1]);
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            if c0 == 0 && c1 == n && ld == n && n.is_multiple_of(8) {
                // Whole rows, contiguous: one call for the tile, factors repeated every n.
                // SAFETY: tasks write disjoint row ranges (the tile has all columns).
                let o = unsafe { self.out.slice(r0 * n, nrows * n) };
                self.write_simd(r0 * n, o, &acc[..nrows * n], s, b);
                return;
            }
            for i in 0..nrows {
                let base = (r0 + i) * n + c0;
                // SAFETY: tasks write disjoint (row, column) tiles.
                let o = unsafe { self.out.slice(base, c1 - c0) };
                self.write_simd(base, o, &acc[i * ld..i * ld + (c1 - c0)], s, b);
            }
            return;
        }
        for i in 0..nrows {
            let base = (r0 + i) * n + c0;
            // SAFETY: tasks write disjoint (row, column) tiles.
            let o = unsafe { self.out.slice(base, c1 - c0) };
            self.write_plain(base, o, &acc[i * ld..i * ld + (c1 - c0)], s, b);
        }
    }
}

/// `o[j] = round(clamp(a[j]·s[j] + b[j] (+ r[j]·r_step), 0, α)/step)`: the AVX2 epilogue when
/// `simd` (callers set it only where AVX2 is available), the plain-Rust one for the rest.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn requant_into(
    o: &mut [u8],
    a: &[i32],
    s: &[f32],
    b: &[f32],
    r: Option<(&[u8], f32)>,
    alpha: f32,
    step: f32,
    simd: bool,
) {
    let done = if simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` only where AVX2 is available; the slices are as long as `o`.
        unsafe {
            crate::x86::requant_row_avx2(o, a, s, b, r, alpha, step)
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    } else {
        0
    };
    requant_row(
        &mut o[done..],
        &a[done..],
        &s[done..],
        &b[done..],
        r.map(|(r, rs)| (&r[done..], rs)),
        alpha,
        step,
    );
}

/// Whether the epilogues of path `isa` are vectorised (AVX2 available and `isa` not the
/// plain-Rust reference path).
pub(crate) fn simd_epilogue(isa: Isa) -> bool {
    isa != Isa::Portable && Isa::Avx2.is_available()
}

/// One row of [`RequantSink`] in plain Rust: `round(clamp(a·s + b (+ r·r_step), 0, α)/step)`.
#[inline]
fn requant_row(
    o: &mut [u8],
    a: &[i32],
    s: &[f32],
    b: &[f32],
    r: Option<(&[u8], f32)>,
    alpha: f32,
    step: f32,
) {
    match r {
        None => {
            for (((o, &a), &s), &b) in o.iter_mut().zip(a).zip(s).zip(b) {
                let y = a as f32 * s + b;
                *o = round_code(y.clamp(0.0, alpha) / step);
            }
        }
        Some((r, r_step)) => {
            for j in 0..o.len() {
                let y = a[j] as f32 * s[j] + b[j] + r[j] as f32 * r_step;
                o[j] = round_code(y.clamp(0.0, alpha) / step);
            }
        }
    }
}

/// Per-thread scratch: the A rows of one task and its accumulators.
#[derive(Default)]
struct Scratch {
    a: Vec<u8>,
    acc: Vec<i32>,
    /// Rows of an implicit-GEMM task that go through im2col (borders, remainders).
    misc: Vec<usize>,
    /// The A rows (or the implicit GEMM's im2col'ed rows) widened to i16, for the
    /// `avx2-wide` kernel.
    a16: Vec<i16>,
    /// The input rows an implicit-GEMM task reads in place, zero-padded and widened to i16
    /// (`avx2-wide`).
    x16: Vec<i16>,
    /// The same as u8 codes (`avx2-i16`).
    x8: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            a: Vec::new(),
            acc: Vec::new(),
            misc: Vec::new(),
            a16: Vec::new(),
            x16: Vec::new(),
            x8: Vec::new(),
        })
    };
}

/// The geometry of a convolution whose windows the micro-kernels can read in place (implicit
/// GEMM): each kernel row's window (`kw·c_in` codes) a whole number of 4-code groups, the
/// reduction unpadded and in one block. Any stride for the padded path
/// ([`implicit_task_padded`]); [`implicit_task`] needs stride 1 (checked by the caller).
fn implicit_geom<'a>(src: &ASource<'a>, kp: usize) -> Option<(&'a [u8], &'a ConvGeom)> {
    match *src {
        ASource::Im2col { x, g }
            if (g.kw * g.c_in).is_multiple_of(4) && kp == g.k() && kp <= KC =>
        {
            Some((x, g))
        }
        _ => None,
    }
}

/// The rows per strip of the padded implicit-GEMM path ([`implicit_task_padded`]) for
/// `kernel`: `Some` for the kernels with forms of 1 row up to that many (`avx2-wide` on i16
/// rows, `avx2-i16` and `vnni` on u8 rows), `None` for those that take [`implicit_task`].
fn padded_mr(kernel: Kernel) -> Option<usize> {
    match kernel {
        Kernel::Avx2Wide => Some(WIDE_MR),
        Kernel::Avx2I16 { .. } => Some(I16_MR),
        Kernel::Vnni => Some(8),
        _ => None,
    }
}

/// Copies the input rows of padded rows `q0..q1` (`q = b·hp + py`, `py = iy + pad`) into `buf`
/// as `[q1 − q0][w + pad + pad_end][c_in]` codes (u8, or widened to i16), zero in the padding;
/// returns the number of codes written.
fn pad_rows<T: Copy + From<u8>>(
    x: &[u8],
    g: &ConvGeom,
    (q0, q1): (usize, usize),
    buf: &mut Vec<T>,
) -> usize {
    let c = g.c_in;
    let hp = g.h + g.pad + g.pad_end;
    let row_codes = (g.w + g.pad + g.pad_end) * c;
    let len = (q1 - q0) * row_codes;
    if buf.len() < len {
        buf.resize(len, T::from(0));
    }
    for (q, dst) in (q0..q1).zip(buf.chunks_exact_mut(row_codes)) {
        let (b, py) = (q / hp, q % hp);
        match py.checked_sub(g.pad).filter(|&iy| iy < g.h) {
            Some(iy) => {
                let src = (b * g.h + iy) * g.w * c;
                dst[..g.pad * c].fill(T::from(0));
                copy_codes(
                    &x[src..src + g.w * c],
                    &mut dst[g.pad * c..(g.pad + g.w) * c],
                );
                dst[(g.pad + g.w) * c..].fill(T::from(0));
            }
            None => dst.fill(T::from(0)),
        }
    }
    len
}

/// [`implicit_task`] for the kernels of [`padded_mr`]: the input rows the task needs are
/// copied once, zero-padded, into `x16` (i16 codes, `avx2-wide`) or `x8` (u8 codes,
/// `avx2-i16`) as `[rows][w + pad + pad_end][c_in]`, so every output pixel's window lies in
/// place — borders included, no im2col, at any stride (a strip's windows are `stride·c_in`
/// codes apart). Each output row (or the part of it in the task) runs
/// in strips of at most `mr` pixels of near-equal heights (the kernels have 1- to 6-row
/// forms), all `kh` kernel rows in one kernel call, so nothing is computed twice.
#[allow(clippy::too_many_arguments)]
fn implicit_task_padded(
    kernel: Kernel,
    mr: usize,
    (x, g): (&[u8], &ConvGeom),
    w: &WeightPanel,
    r0: usize,
    nrows: usize,
    pans: std::ops::Range<usize>,
    s: &mut Scratch,
    ld: usize,
) {
    let Scratch { acc, x16, x8, .. } = s;
    let acc = &mut acc[..nrows * ld];
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c_in);
    let hp = g.h + g.pad + g.pad_end;
    let row_codes = (g.w + g.pad + g.pad_end) * c;
    let st = g.stride;
    // Padded rows q = b·hp + py from the first output row's window top to the last one's
    // bottom (output row oy reads padded rows oy·stride .. oy·stride + kh).
    let last = r0 + nrows - 1;
    let q0 = (r0 / (oh * ow)) * hp + (r0 / ow) % oh * st;
    let q1 = (last / (oh * ow)) * hp + (last / ow) % oh * st + g.kh;
    // The padded codes (`len` of them, `esz` bytes each) from `base`.
    let (base, esz, len) = if kernel.wide_a() {
        let len = pad_rows(x, g, (q0, q1), x16);
        (x16.as_ptr() as *const u8, 2, len)
    } else {
        let len = pad_rows(x, g, (q0, q1), x8);
        (x8.as_ptr(), 1, len)
    };
    let row_bytes = g.kw * c;
    let groups = row_bytes / 4;
    let rend = r0 + nrows;
    let mut r = r0;
    while r < rend {
        let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
        let seg_end = rend.min(r - ox + ow);
        // Window top-left of output pixel (b, oy, sx): padded row b·hp + oy·stride, column
        // sx·stride; the strip's rows are stride·c_in codes apart.
        let row0 = (b * hp + oy * st - q0) * row_codes;
        // The run of seg_end − r pixels in strips of as equal heights as possible (e.g. 7 =
        // 4 + 3 rather than 6 + 1: a short strip reloads the panel for few rows).
        let run = seg_end - r;
        let strips = run.div_ceil(mr);
        let mut sx = ox;
        for j in 0..strips {
            let rows = run / strips + usize::from(j < run % strips);
            let off = row0 + sx * st * c;
            // In bounds: the strip's last window ends at padded column (sx + rows − 1)·stride
            // + kw ≤ w + pad + pad_end of padded row b·hp + oy·stride + kh − 1 < q1.
            assert!(off + (g.kh - 1) * row_codes + (rows - 1) * st * c + row_bytes <= len);
            let ap = APanel {
                ptr: base.wrapping_add(off * esz),
                row: esz * c * st,
                group: 4 * esz,
            };
            let segs = (g.kh, esz * row_codes);
            // The strip's accumulator rows: consecutive output pixels, `ld` apart in `acc`.
            let first = (r + sx - ox - r0) * ld;
            for (pi, p) in pans.clone().enumerate() {
                // The kernel writes its tile in place: rows `ld` apart from column pi·16.
                let tile = (&mut acc[first + pi * NR..], ld);
                // SAFETY: rows i < rows of segment ky read kw·c codes from off + ky·row_codes
                // + i·stride·c (asserted inside the len padded codes); the panel holds kh segments of
                // kw·c codes per channel; AVX2 and the i16 range by the kernel's choice.
                unsafe {
                    match kernel {
                        Kernel::Avx2I16 { s } => {
                            micro_i16(rows, ap, segs, w, p, 0, groups, s, tile, false)
                        }
                        Kernel::Vnni => micro_vnni(rows, ap, segs, w, p, 0, groups, tile, false),
                        _ => micro_wide(rows, ap, segs, w, p, 0, groups, tile, false),
                    }
                };
            }
            sx += rows;
        }
        r = seg_end;
    }
}

/// One task of an implicit-GEMM convolution: rows `r0..r0 + nrows` × panels `pans` into
/// `acc` (`nrows` rows of `ld`). Every run of `mr` consecutive interior output pixels of one
/// output row is read in place from the input, one micro-kernel call per kernel row
/// (`add`ing into the tile); the other rows (borders, remainders) are im2col'ed `mr` at a
/// time into `abuf` (`mr·kp` codes).
#[allow(clippy::too_many_arguments)]
fn implicit_task(
    kernel: Kernel,
    (x, g): (&[u8], &ConvGeom),
    w: &WeightPanel,
    r0: usize,
    nrows: usize,
    pans: std::ops::Range<usize>,
    s: &mut Scratch,
    ld: usize,
) {
    let mr = kernel.mr();
    let kp = w.kp();
    let Scratch {
        a: abuf, acc, misc, ..
    } = s;
    let acc = &mut acc[..nrows * ld];
    let abuf = &mut abuf[..mr * kp];
    misc.clear();
    let (oh, ow, c) = (g.out_h(), g.out_w(), g.c_in);
    let (ox_lo, ox_hi) = (g.pad, (g.w + g.pad + 1).saturating_sub(g.kw));
    let row_bytes = g.kw * c;
    let mut tile = [0i32; 8 * NR];
    let rend = r0 + nrows;
    let mut r = r0;
    while r < rend {
        let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
        let seg_end = rend.min(r - ox + ow);
        let iy0 = oy as isize - g.pad as isize;
        let (a0, a1) = (ox.max(ox_lo), (ox + seg_end - r).min(ox_hi));
        if iy0 < 0 || iy0 + g.kh as isize > g.h as isize || a1 < a0 + mr {
            misc.extend(r..seg_end);
            r = seg_end;
            continue;
        }
        misc.extend(r..r + (a0 - ox));
        let full = (a1 - a0) / mr * mr;
        for sx in (a0..a0 + full).step_by(mr) {
            let i = r + (sx - ox) - r0;
            for (pi, p) in pans.clone().enumerate() {
                for ky in 0..g.kh {
                    let off = ((b * g.h + iy0 as usize + ky) * g.w + sx - g.pad) * c;
                    // In bounds: the window of the strip's last pixel ends at input column
                    // sx + mr − 1 − pad + kw ≤ w (interior), within input row iy0 + ky.
                    assert!(off + (mr - 1) * c + row_bytes <= x.len());
                    let ap = APanel {
                        ptr: x[off..].as_ptr(),
                        row: c,
                        group: 4,
                    };
                    // SAFETY: rows i < mr read 4·(kw·c/4) codes from off + i·c (asserted in
                    // bounds); the panel block from k0 = ky·kw·c holds kw·c codes per channel.
                    unsafe {
                        micro(
                            kernel,
                            ap,
                            w,
                            p,
                            ky * row_bytes,
                            row_bytes / 4,
                            &mut tile,
                            ky > 0,
                        )
                    };
                }
                for ii in 0..mr {
                    acc[(i + ii) * ld + pi * NR..][..NR].copy_from_slice(&tile[ii * NR..][..NR]);
                }
            }
        }
        misc.extend(r + (a0 + full - ox)..seg_end);
        r = seg_end;
    }
    for chunk in misc.chunks(mr) {
        for (j, &rr) in chunk.iter().enumerate() {
            im2col_row(x, g, rr, &mut abuf[j * kp..(j + 1) * kp]);
        }
        abuf[chunk.len() * kp..].fill(0);
        let ap = APanel {
            ptr: abuf.as_ptr(),
            row: kp,
            group: 4,
        };
        for (pi, p) in pans.clone().enumerate() {
            // SAFETY: abuf holds mr rows of kp codes; the panel kp codes per channel.
            unsafe { micro(kernel, ap, w, p, 0, kp / 4, &mut tile, false) };
            for (j, &rr) in chunk.iter().enumerate() {
                acc[(rr - r0) * ld + pi * NR..][..NR].copy_from_slice(&tile[j * NR..][..NR]);
            }
        }
    }
}

/// `C = A·Wᵀ` with the rows of `src` and the panel `w`, handed to `sink` tile by tile; returns
/// the micro-kernel used. The panel's reduction may be padded beyond the rows' `k` (its
/// padding weights are zero).
///
/// Errors: `ShapeMismatch` if the panel's output channels differ from the sink's or its
/// reduction from the rows' (up to the padding to a multiple of 4); `InvalidArgument` if
/// `isa` is not available or `k·max(A)·max|W|` could overflow i32.
pub fn gemm_fused(isa: Isa, src: ASource, w: &WeightPanel, sink: &impl Sink) -> Result<Kernel> {
    let (m, k) = src.dims();
    if let ASource::Rows { a, k } = src
        && (k == 0 || !a.len().is_multiple_of(k))
    {
        return Err(invalid(
            "fused gemm",
            format!("{} codes are not rows of {k}", a.len()),
        ));
    }
    if let ASource::Im2col { x, g } = src {
        g.validate()?;
        check_len("conv input", g.input_len(), x.len())?;
    }
    check_len("fused gemm output channels", sink.n(), w.n())?;
    let kp = w.kp();
    if w.k() != k && kp != k.next_multiple_of(4) {
        check_len("fused gemm reduction length", k, w.k())?;
    }
    if !isa.is_available() {
        return Err(invalid(
            "gemm",
            format!(
                "instruction set {} is not available on this CPU",
                isa.name()
            ),
        ));
    }
    let amax = src.amax();
    if (k as u64) * amax as u64 * w.wmax() as u64 > i32::MAX as u64 {
        return Err(invalid(
            "gemm",
            format!(
                "k = {k} with codes up to {amax}×{} may overflow i32",
                w.wmax()
            ),
        ));
    }
    let kernel = Kernel::choose(isa, amax, w.wmax());
    if m == 0 {
        return Ok(kernel);
    }
    let threads = rayon::current_num_threads();
    let target = 4 * threads;
    let geom = implicit_geom(&src, kp);
    let padded = geom.and(padded_mr(kernel));
    // `implicit_task` reads unpadded input rows at stride 1 only; the padded rows any stride.
    let implicit = geom.filter(|(_, g)| padded.is_some() || g.stride == 1);
    // The other paths run `avx2-i16` in 6-row strips too (see `micro_i16`).
    let mr = match (padded, kernel) {
        (Some(mr), _) => mr,
        (None, Kernel::Avx2I16 { .. }) if implicit.is_none() => I16_MR,
        _ => kernel.mr(),
    };
    let mut mb = m.div_ceil(target).clamp(1, MB).next_multiple_of(mr);
    if let Some((_, g)) = implicit {
        // Tasks of whole output rows, so that interior runs are not cut.
        let ow = g.out_w();
        if ow <= 2 * MB {
            mb = mb.next_multiple_of(ow);
        }
    }
    let m_blocks = m.div_ceil(mb);
    let panels = w.n().div_ceil(NR);
    let n_groups = target.div_ceil(m_blocks).clamp(1, panels);
    let per_group = panels.div_ceil(n_groups);
    let n_groups = panels.div_ceil(per_group);
    let n = w.n();
    let task = |t: usize| {
        let (mbi, ng) = (t / n_groups, t % n_groups);
        let r0 = mbi * mb;
        let nrows = mb.min(m - r0);
        let pans = ng * per_group..((ng + 1) * per_group).min(panels);
        let run = |s: &mut Scratch| {
            if let Some(geom) = implicit {
                let ld = pans.len() * NR;
                if s.a.len() < mr * kp {
                    s.a.resize(mr * kp, 0);
                }
                if s.acc.len() < nrows * ld {
                    s.acc.resize(nrows * ld, 0);
                }
                if padded.is_some() {
                    implicit_task_padded(kernel, mr, geom, w, r0, nrows, pans.clone(), s, ld);
                } else {
                    implicit_task(kernel, geom, w, r0, nrows, pans.clone(), s, ld);
                }
                let c1 = (pans.end * NR).min(n);
                sink.write(r0, nrows, pans.start * NR, c1, &s.acc[..nrows * ld], ld);
                return;
            }
            let strips = nrows.div_ceil(mr);
            let rows_pad = strips * mr;
            let ld = pans.len() * NR;
            if s.a.len() < rows_pad * kp {
                s.a.resize(rows_pad * kp, 0);
            }
            if s.acc.len() < rows_pad * ld {
                s.acc.resize(rows_pad * ld, 0);
            }
            let wide = kernel.wide_a();
            if wide {
                if s.a16.len() < rows_pad * kp {
                    s.a16.resize(rows_pad * kp, 0);
                }
                let a16 = &mut s.a16[..rows_pad * kp];
                src.fill(r0, nrows, kp, a16);
                a16[nrows * kp..].fill(0);
            } else {
                let abuf = &mut s.a[..rows_pad * kp];
                src.fill(r0, nrows, kp, abuf);
                abuf[nrows * kp..].fill(0);
            }
            let (abuf, a16) = (&s.a[..], &s.a16[..]);
            let acc = &mut s.acc[..rows_pad * ld];
            let mut tile = [0i32; 8 * NR];
            let mut k0 = 0;
            while k0 < kp {
                let kc = KC.min(kp - k0);
                for (pi, p) in pans.clone().enumerate() {
                    for st in 0..strips {
                        let ap = if wide {
                            APanel {
                                ptr: a16[st * mr * kp + k0..].as_ptr() as *const u8,
                                row: 2 * kp,
                                group: 8,
                            }
                        } else {
                            APanel {
                                ptr: abuf[st * mr * kp + k0..].as_ptr(),
                                row: kp,
                                group: 4,
                            }
                        };
                        // SAFETY: the strip holds mr rows of kp ≥ k0 + kc codes; the panel
                        // block kc·16 codes; the kernel's ISA was checked above.
                        unsafe {
                            match kernel {
                                Kernel::Avx2I16 { s } => micro_i16(
                                    mr,
                                    ap,
                                    (1, 0),
                                    w,
                                    p,
                                    k0,
                                    kc / 4,
                                    s,
                                    (&mut tile, NR),
                                    false,
                                ),
                                _ => micro(kernel, ap, w, p, k0, kc / 4, &mut tile, false),
                            }
                        };
                        for i in 0..mr {
                            let dst = &mut acc[(st * mr + i) * ld + pi * NR..][..NR];
                            let t = &tile[i * NR..(i + 1) * NR];
                            if k0 == 0 {
                                dst.copy_from_slice(t);
                            } else {
                                dst.iter_mut().zip(t).for_each(|(d, t)| *d += t);
                            }
                        }
                    }
                }
                k0 += kc;
            }
            let c0 = pans.start * NR;
            let c1 = (pans.end * NR).min(n);
            sink.write(r0, nrows, c0, c1, acc, ld);
        };
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => run(&mut s),
            Err(_) => run(&mut Scratch::default()),
        });
    };
    let tasks = m_blocks * n_groups;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    Ok(kernel)
}

/// Convolution fused with requantisation: NHWC codes `x` with the panel of
/// [`conv_panel`](crate::layers::conv_panel), requantised by `rq` (and the optional residual
/// codes with their step) into `out` (`[batch, out_h, out_w, c_out]` codes). A 1×1, stride-1,
/// unpadded convolution reads its rows in place (no im2col). Bit-identical to
/// [`conv2d`](crate::layers::conv2d) followed by [`Requant::apply`] or
/// [`Requant::apply_residual`]. Errors: as [`gemm_fused`], plus `ShapeMismatch` for an
/// output or residual of the wrong length or a requantisation of another channel count.
pub fn conv2d_requant(
    x: &[u8],
    g: &ConvGeom,
    w: &WeightPanel,
    isa: Isa,
    rq: &Requant,
    residual: Option<(&[u8], f32)>,
    out: &mut [u8],
) -> Result<Kernel> {
    g.validate()?;
    check_len("conv output", g.rows() * g.c_out, out.len())?;
    check_len("requantisation channels", g.c_out, rq.channels())?;
    let sink = RequantSink::new(rq, residual, out, isa)?;
    gemm_fused(isa, conv_source(x, g)?, w, &sink)
}

/// The A rows of a convolution: in place for a 1×1, stride-1, unpadded convolution, im2col
/// rows otherwise. Errors: `ShapeMismatch` for a wrong input length.
pub fn conv_source<'a>(x: &'a [u8], g: &'a ConvGeom) -> Result<ASource<'a>> {
    check_len("conv input", g.input_len(), x.len())?;
    Ok(if g.is_pointwise() {
        ASource::Rows { a: x, k: g.c_in }
    } else {
        ASource::Im2col { x, g }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{conv_panel, conv2d};
    use crate::pack::PackedWeights;
    use crate::reference;
    use proptest::prelude::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed ^ 0x0F0F_1234;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    fn geom() -> impl Strategy<Value = ConvGeom> {
        (
            1usize..4,
            1usize..10,
            1usize..10,
            1usize..20,
            1usize..40,
            1usize..4,
            1usize..3,
            0usize..2,
            0usize..3,
        )
            .prop_filter_map(
                "kernel fits",
                |(batch, h, w, c_in, c_out, k, stride, pad, pad_end)| {
                    let g = ConvGeom {
                        batch,
                        h,
                        w,
                        c_in,
                        c_out,
                        kh: k,
                        kw: k.min(3),
                        stride,
                        pad,
                        pad_end,
                    };
                    g.validate().ok().map(|_| g)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Fused conv + requantisation (with and without a residual) is bit-identical to the
        /// slow reference conv followed by the unfused requantisation, on every ISA, with
        /// odd sizes, all-zero channels and extreme codes.
        #[test]
        fn fused_conv_matches_reference(g in geom(), abits in 2u32..=8, wbits in 2u32..=8,
                                        obits in 2u32..=8, seed in any::<u64>(),
                                        zero_ch in any::<bool>(), extreme in any::<bool>(),
                                        with_res in any::<bool>()) {
            let mut r = lcg(seed);
            let amax = (1u64 << abits) - 1;
            let x: Vec<u8> = (0..g.input_len())
                .map(|_| if extreme { amax as u8 } else { (r() % (amax + 1)) as u8 })
                .collect();
            let q = (1i64 << (wbits - 1)) - 1;
            let mut codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|i| if extreme { if i % 3 == 0 { -q as i8 } else { q as i8 } }
                     else { ((r() as i64 % (2 * q + 1)) - q) as i8 })
                .collect();
            if zero_ch {
                codes[..g.k()].fill(0);
            }
            let w = PackedWeights::from_codes(&codes, g.c_out, g.k(), wbits, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&w, &g).unwrap();
            let scale: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 20_000.0 + 1e-4).collect();
            let bias: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 500.0 - 1.0).collect();
            let rq = Requant::new(scale, bias, 2.5, obits).unwrap();
            let acc = reference::conv2d(&x, &g, &codes);
            let res: Vec<u8> = (0..acc.len()).map(|_| r() as u8).collect();
            let want = if with_res { rq.apply_residual(&acc, &res, 0.01).unwrap() } else { rq.apply(&acc).unwrap() };
            for isa in Isa::available() {
                let mut out = vec![0xAAu8; acc.len()];
                conv2d_requant(&x, &g, &panel, isa, &rq, with_res.then_some((&res[..], 0.01)), &mut out).unwrap();
                prop_assert_eq!(&out, &want, "{:?}", isa);
                let mut raw = vec![i32::MIN; acc.len()];
                gemm_fused(isa, conv_source(&x, &g).unwrap(), &panel, &AccSink::new(&mut raw, g.c_out)).unwrap();
                prop_assert_eq!(&raw, &acc, "{:?} raw", isa);
                prop_assert_eq!(&conv2d(&x, &g, &panel, isa).unwrap(), &acc);
            }
        }

        /// Stride-1 convolutions whose interior windows are read in place (implicit GEMM:
        /// `kw·c_in` a multiple of 4, rows wide enough for runs of 8 interior pixels), mixed
        /// with im2col'ed borders and remainders: bit-identical to the reference on every ISA.
        #[test]
        fn implicit_conv_matches_reference(batch in 1usize..3, h in 1usize..14, w in 8usize..30,
                                           c4 in 1usize..6, c_out in 1usize..40, k in 0usize..3,
                                           pad in 0usize..3, pad_end in 0usize..3,
                                           abits in 2u32..=8, wbits in 2u32..=8,
                                           seed in any::<u64>(), extreme in any::<bool>()) {
            let k = [1, 3, 5][k];
            let g = ConvGeom { batch, h, w, c_in: 4 * c4, c_out, kh: k, kw: k, stride: 1, pad: pad.min(k / 2 + 1), pad_end: pad_end.min(k / 2 + 1) };
            prop_assume!(g.validate().is_ok() && !g.is_pointwise());
            let mut r = lcg(seed);
            let amax = (1u64 << abits) - 1;
            let x: Vec<u8> = (0..g.input_len())
                .map(|_| if extreme { amax as u8 } else { (r() % (amax + 1)) as u8 })
                .collect();
            let q = (1i64 << (wbits - 1)) - 1;
            let codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|i| if extreme { if i % 2 == 0 { q as i8 } else { -q as i8 } }
                     else { ((r() as i64 % (2 * q + 1)) - q) as i8 })
                .collect();
            let wp = PackedWeights::from_codes(&codes, g.c_out, g.k(), wbits, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&wp, &g).unwrap();
            prop_assert!(implicit_geom(&conv_source(&x, &g).unwrap(), panel.kp()).is_some());
            let want = reference::conv2d(&x, &g, &codes);
            for isa in Isa::available() {
                let mut raw = vec![i32::MIN; want.len()];
                gemm_fused(isa, conv_source(&x, &g).unwrap(), &panel, &AccSink::new(&mut raw, g.c_out)).unwrap();
                prop_assert_eq!(&raw, &want, "{:?}", isa);
            }
        }

        /// 8-bit activations × 8-bit weights (the `avx2-wide` kernel on AVX2, on i16 copies of
        /// the rows): implicit-GEMM convolutions with 6- and 4-row strips, im2col'ed borders,
        /// strided and pointwise convolutions, odd sizes, all-zero channels and extreme codes
        /// (255 × ±127), with and without a residual; bit-identical to the reference on every
        /// ISA, and the wide kernel is the one AVX2 runs.
        #[test]
        fn wide_conv_matches_reference(batch in 1usize..3, h in 1usize..12, w in 1usize..30,
                                       c_in in prop::sample::select(vec![1usize, 2, 3, 4, 8, 12, 16]),
                                       c_out in 1usize..40, k in 0usize..3, stride in 1usize..3,
                                       pad in 0usize..3, pad_end in 0usize..3, seed in any::<u64>(),
                                       zero_ch in any::<bool>(), extreme in any::<bool>(),
                                       with_res in any::<bool>()) {
            let k = [1, 3, 5][k];
            let g = ConvGeom { batch, h, w, c_in, c_out, kh: k, kw: k, stride, pad: pad.min(k / 2 + 1), pad_end: pad_end.min(k / 2 + 1) };
            prop_assume!(g.validate().is_ok());
            let mut r = lcg(seed);
            let mut x: Vec<u8> = (0..g.input_len())
                .map(|_| if extreme { 255 } else { r() as u8 })
                .collect();
            x[0] = 255;
            let mut codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|i| if extreme { if i % 3 == 0 { -127 } else { 127 } }
                     else { ((r() % 255) as i64 - 127) as i8 })
                .collect();
            codes[g.k() - 1] = 127;
            if zero_ch && c_out > 1 {
                codes[g.k()..2 * g.k()].fill(0);
            }
            let wp = PackedWeights::from_codes(&codes, g.c_out, g.k(), 8, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&wp, &g).unwrap();
            let scale: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 4_000_000.0 + 1e-6).collect();
            let bias: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 500.0 - 1.0).collect();
            let rq = Requant::new(scale, bias, 2.5, 8).unwrap();
            let acc = reference::conv2d(&x, &g, &codes);
            let res: Vec<u8> = (0..acc.len()).map(|_| r() as u8).collect();
            let want = if with_res { rq.apply_residual(&acc, &res, 0.01).unwrap() } else { rq.apply(&acc).unwrap() };
            for isa in Isa::available() {
                let mut out = vec![0xAAu8; acc.len()];
                let kern = conv2d_requant(&x, &g, &panel, isa, &rq, with_res.then_some((&res[..], 0.01)), &mut out).unwrap();
                prop_assert_eq!(&out, &want, "{:?}", isa);
                if isa == Isa::Avx2 {
                    prop_assert_eq!(kern, Kernel::Avx2Wide);
                }
                let mut raw = vec![i32::MIN; acc.len()];
                gemm_fused(isa, conv_source(&x, &g).unwrap(), &panel, &AccSink::new(&mut raw, g.c_out)).unwrap();
                prop_assert_eq!(&raw, &acc, "{:?} raw", isa);
            }
        }

        /// Low-bit codes (the `avx2-i16` kernel on AVX2, reading zero-padded u8 input rows in
        /// place where `kw·c_in` is a multiple of 4, 6-row im2col strips otherwise): borders, stride 2,
        /// pointwise and 5×5 convolutions, odd sizes and channel counts, all-zero channels and
        /// extreme codes, with and without a residual; bit-identical to the reference on every
        /// ISA, and the i16 kernel is the one AVX2 runs.
        #[test]
        fn i16_conv_matches_reference(batch in 1usize..3, h in 1usize..12, w in 1usize..30,
                                      c_in in prop::sample::select(vec![1usize, 2, 3, 4, 8, 12, 16, 20]),
                                      c_out in 1usize..40, k in 0usize..3, stride in 1usize..3,
                                      pad in 0usize..3, pad_end in 0usize..3,
                                      bits in prop::sample::select(vec![(4u32, 4u32), (2, 2), (3, 4), (5, 5), (4, 6), (6, 6)]),
                                      seed in any::<u64>(), zero_ch in any::<bool>(),
                                      extreme in any::<bool>(), with_res in any::<bool>()) {
            let k = [1, 3, 5][k];
            let g = ConvGeom { batch, h, w, c_in, c_out, kh: k, kw: k, stride, pad: pad.min(k / 2 + 1), pad_end: pad_end.min(k / 2 + 1) };
            prop_assume!(g.validate().is_ok());
            let (abits, wbits) = bits;
            let amax = (1u64 << abits) - 1;
            let q = (1i64 << (wbits - 1)) - 1;
            let mut r = lcg(seed);
            let mut x: Vec<u8> = (0..g.input_len())
                .map(|_| if extreme { amax as u8 } else { (r() % (amax + 1)) as u8 })
                .collect();
            x[0] = amax as u8;
            let sign = if seed.is_multiple_of(2) { 1 } else { -1 };
            let mut codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|_| if extreme { (sign * q) as i8 } else { ((r() as i64 % (2 * q + 1)) - q) as i8 })
                .collect();
            codes[g.k() - 1] = q as i8;
            if zero_ch && c_out > 1 {
                codes[g.k()..2 * g.k()].fill(0);
            }
            let wp = PackedWeights::from_codes(&codes, g.c_out, g.k(), wbits, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&wp, &g).unwrap();
            let scale: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 200_000.0 + 1e-5).collect();
            let bias: Vec<f32> = (0..g.c_out).map(|_| (r() % 1000) as f32 / 500.0 - 1.0).collect();
            let rq = Requant::new(scale, bias, 2.5, abits).unwrap();
            let acc = reference::conv2d(&x, &g, &codes);
            let res: Vec<u8> = (0..acc.len()).map(|_| (r() % (amax + 1)) as u8).collect();
            let want = if with_res { rq.apply_residual(&acc, &res, 0.01).unwrap() } else { rq.apply(&acc).unwrap() };
            for isa in Isa::available() {
                let mut out = vec![0xAAu8; acc.len()];
                let kern = conv2d_requant(&x, &g, &panel, isa, &rq, with_res.then_some((&res[..], 0.01)), &mut out).unwrap();
                prop_assert_eq!(&out, &want, "{:?}", isa);
                if isa == Isa::Avx2 {
                    prop_assert!(matches!(kern, Kernel::Avx2I16 { .. }), "{:?}", kern);
                }
                let mut raw = vec![i32::MIN; acc.len()];
                gemm_fused(isa, conv_source(&x, &g).unwrap(), &panel, &AccSink::new(&mut raw, g.c_out)).unwrap();
                prop_assert_eq!(&raw, &acc, "{:?} raw", isa);
            }
        }

        /// Plain rows (a linear layer): odd `k`, many rows, many channels; equal to the
        /// reference GEMM on every ISA.
        #[test]
        fn fused_rows_match_reference(m in 0usize..150, n in 1usize..70, k in 1usize..300,
                                      abits in 2u32..=8, wbits in 2u32..=8, seed in any::<u64>()) {
            let mut r = lcg(seed);
            let amax = (1u64 << abits) - 1;
            let a: Vec<u8> = (0..m * k).map(|_| (r() % (amax + 1)) as u8).collect();
            let q = (1i64 << (wbits - 1)) - 1;
            let codes: Vec<i8> = (0..n * k).map(|_| ((r() as i64 % (2 * q + 1)) - q) as i8).collect();
            let panel = WeightPanel::from_codes(&codes, n, k).unwrap();
            let want = reference::gemm_u8i8(&a, m, &codes, n, k);
            for isa in Isa::available() {
                let mut c = vec![i32::MIN; m * n];
                gemm_fused(isa, ASource::Rows { a: &a, k }, &panel, &AccSink::new(&mut c, n)).unwrap();
                prop_assert_eq!(&c, &want, "{:?}", isa);
            }
        }
    }

    /// The AVX2 requantisation epilogue equals the plain-Rust one on every element: rows of
    /// odd lengths, accumulators over the whole i32 range, rounding ties, both clip ends,
    /// with and without a residual.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_requant_equals_scalar() {
        if !Isa::Avx2.is_available() {
            return;
        }
        let mut r = lcg(11);
        for len in [1usize, 7, 8, 9, 16, 31, 64, 67] {
            for case in 0..40 {
                let a: Vec<i32> = (0..len)
                    .map(|j| match (case + j) % 4 {
                        0 => r() as i32 - (1 << 30),
                        1 => (r() % 2000) as i32 - 1000,
                        2 => {
                            if j % 2 == 0 {
                                i32::MAX
                            } else {
                                i32::MIN
                            }
                        }
                        _ => (r() % 64) as i32,
                    })
                    .collect();
                let s: Vec<f32> = (0..len)
                    .map(|_| (r() % 1000) as f32 / 4000.0 + 1e-6)
                    .collect();
                let b: Vec<f32> = (0..len).map(|_| (r() % 200) as f32 / 100.0 - 1.0).collect();
                let res: Vec<u8> = (0..len).map(|_| r() as u8).collect();
                // Steps of 0.25 and 0.5 make exact .5 ties frequent.
                let (alpha, step) = [(3.75, 0.25), (7.5, 0.5), (2.0, 2.0 / 255.0)][case % 3];
                for with_res in [None, Some((&res[..], 0.125f32))] {
                    let mut want = vec![0u8; len];
                    requant_row(&mut want, &a, &s, &b, with_res, alpha, step);
                    let mut got = vec![0xEEu8; len];
                    // SAFETY: AVX2 checked above; every slice has `len` elements.
                    let done = unsafe {
                        crate::x86::requant_row_avx2(&mut got, &a, &s, &b, with_res, alpha, step)
                    };
                    assert_eq!(done, len / 8 * 8);
                    assert_eq!(&got[..done], &want[..done], "len {len} case {case}");
                }
            }
        }
    }

    /// [`RealSink`]'s AVX2 epilogue writes the same bits as its plain-Rust one — real
    /// outputs and the codes of every quantizer — for whole-row tiles and column sub-tiles
    /// of widths with and without a tail, real and code residuals, ReLU, ReLU6 and none,
    /// signed zeros (negative scales times zero accumulators), rounding ties and both clip
    /// ends.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn real_sink_simd_equals_plain() {
        if !Isa::Avx2.is_available() {
            return;
        }
        let mut r = lcg(21);
        for n in [8usize, 13, 16, 24, 37, 64] {
            let m = 7;
            let len = m * n;
            let acc: Vec<i32> = (0..len)
                .map(|j| match j % 5 {
                    0 => 0,
                    1 => (r() % 2000) as i32 - 1000,
                    2 => r() as i32 - (1 << 30),
                    _ => (r() % 64) as i32 - 8,
                })
                .collect();
            let scale: Vec<f32> = (0..n)
                .map(|c| {
                    let v = (r() % 1000) as f32 / 4000.0 + 1e-6;
                    if c % 4 == 3 { -v } else { v }
                })
                .collect();
            let bias: Vec<f32> = (0..n)
                .map(|c| match c % 3 {
                    0 => -0.0,
                    1 => 0.25 * ((r() % 16) as f32 - 8.0),
                    _ => (r() % 200) as f32 / 100.0 - 1.0,
                })
                .collect();
            let real: Vec<f32> = (0..len)
                .map(|j| {
                    if j % 6 == 0 {
                        -0.0
                    } else {
                        (r() % 64) as f32 / 8.0 - 4.0
                    }
                })
                .collect();
            let codes_in: Vec<u8> = (0..len).map(|_| r() as u8).collect();
            let residuals = [
                None,
                Some(Residual::Real(&real[..])),
                Some(Residual::Codes(&codes_in[..], 0.125)),
            ];
            for residual in residuals {
                for act in [(false, false), (true, false), (false, true)] {
                    let run = |isa: Isa, cols: &[(usize, usize)]| {
                        let mut out = vec![f32::NAN; len];
                        let mut q1 = vec![0xEEu8; len];
                        let mut q2 = vec![0xEEu8; len];
                        let sink = RealSink::new(
                            &scale,
                            &bias,
                            residual,
                            act,
                            &mut out,
                            vec![(&mut q1[..], 3.75, 0.25), (&mut q2[..], 2.0, 2.0 / 255.0)],
                            isa,
                        )
                        .unwrap();
                        for &(c0, c1) in cols {
                            let mut tile = vec![0i32; m * (c1 - c0)];
                            for i in 0..m {
                                tile[i * (c1 - c0)..(i + 1) * (c1 - c0)]
                                    .copy_from_slice(&acc[i * n + c0..i * n + c1]);
                            }
                            sink.write(0, 3, c0, c1, &tile, c1 - c0);
                            sink.write(3, m - 3, c0, c1, &tile[3 * (c1 - c0)..], c1 - c0);
                        }
                        drop(sink);
                        (out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), q1, q2)
                    };
                    for cols in [vec![(0, n)], vec![(0, n / 2), (n / 2, n)]] {
                        let want = run(Isa::Portable, &cols);
                        let got = run(Isa::Avx2, &cols);
                        assert_eq!(got, want, "n {n} act {act:?} cols {cols:?}");
                    }
                }
            }
        }
    }

    /// The AVX2 epilogue over several whole rows at once (factors of `p` channels repeated
    /// every `p` elements, as [`RequantSink`] uses for tiles of all channels) equals the
    /// plain-Rust one row by row, with and without a residual, rounding ties and both clip
    /// ends.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_requant_whole_rows_equal_scalar() {
        if !Isa::Avx2.is_available() {
            return;
        }
        let mut r = lcg(12);
        for p in [8usize, 16, 24, 64] {
            for rows in [1usize, 2, 5] {
                let len = p * rows;
                let a: Vec<i32> = (0..len)
                    .map(|j| match j % 3 {
                        0 => r() as i32 - (1 << 30),
                        1 => (r() % 2000) as i32 - 1000,
                        _ => (r() % 64) as i32,
                    })
                    .collect();
                let s: Vec<f32> = (0..p)
                    .map(|_| (r() % 1000) as f32 / 4000.0 + 1e-6)
                    .collect();
                let b: Vec<f32> = (0..p).map(|_| (r() % 200) as f32 / 100.0 - 1.0).collect();
                let res: Vec<u8> = (0..len).map(|_| r() as u8).collect();
                for with_res in [false, true] {
                    let mut want = vec![0u8; len];
                    for i in 0..rows {
                        let rr = with_res.then(|| (&res[i * p..(i + 1) * p], 0.125f32));
                        let row = i * p..(i + 1) * p;
                        requant_row(&mut want[row.clone()], &a[row], &s, &b, rr, 3.75, 0.25);
                    }
                    let mut got = vec![0xEEu8; len];
                    let rr = with_res.then(|| (&res[..], 0.125f32));
                    // SAFETY: AVX2 checked above; a and res hold len elements, s and b p, a
                    // multiple of 8.
                    let done = unsafe {
                        crate::x86::requant_row_avx2(&mut got, &a, &s, &b, rr, 3.75, 0.25)
                    };
                    assert_eq!(done, len);
                    assert_eq!(got, want, "p {p} rows {rows} residual {with_res}");
                }
            }
        }
    }

    /// Issue 18's network: ResNet-20 at 28×28×1 (stages of 16, 32, 64 channels at 28², 14²,
    /// 7²; 3×3 convs, stride 2 into stages 2 and 3), here at batch 2: every layer shape, fused
    /// with requantisation and a residual, equals the reference on every ISA, for the 8/8 and
    /// 4/4 bit-widths of the table.
    #[test]
    fn resnet20_layer_shapes_match_reference() {
        let shapes = [
            (28, 1, 16, 1),
            (28, 16, 16, 1),
            (28, 16, 32, 2),
            (14, 32, 32, 1),
            (14, 32, 64, 2),
            (7, 64, 64, 1),
        ];
        let mut r = lcg(18);
        for (hw, c_in, c_out, stride) in shapes {
            for bits in [8u32, 4] {
                let g = ConvGeom {
                    batch: 2,
                    h: hw,
                    w: hw,
                    c_in,
                    c_out,
                    kh: 3,
                    kw: 3,
                    stride,
                    pad: 1,
                    pad_end: 1,
                };
                let amax = (1u64 << bits) - 1;
                let x: Vec<u8> = (0..g.input_len())
                    .map(|_| (r() % (amax + 1)) as u8)
                    .collect();
                let q = (1i64 << (bits - 1)) - 1;
                let codes: Vec<i8> = (0..c_out * g.k())
                    .map(|_| ((r() as i64 % (2 * q + 1)) - q) as i8)
                    .collect();
                let wp = PackedWeights::from_codes(&codes, c_out, g.k(), bits, vec![1.0; c_out])
                    .unwrap();
                let panel = conv_panel(&wp, &g).unwrap();
                let scale: Vec<f32> = (0..c_out)
                    .map(|_| (r() % 1000) as f32 / 50_000.0 + 1e-4)
                    .collect();
                let rq = Requant::new(scale, vec![0.05; c_out], 3.0, bits).unwrap();
                let acc = reference::conv2d(&x, &g, &codes);
                let res: Vec<u8> = (0..acc.len()).map(|_| (r() % (amax + 1)) as u8).collect();
                let want = rq.apply_residual(&acc, &res, 3.0 / amax as f32).unwrap();
                for isa in Isa::available() {
                    let mut out = vec![0u8; acc.len()];
                    conv2d_requant(
                        &x,
                        &g,
                        &panel,
                        isa,
                        &rq,
                        Some((&res, 3.0 / amax as f32)),
                        &mut out,
                    )
                    .unwrap();
                    assert_eq!(
                        out, want,
                        "{isa:?} {hw}² {c_in}→{c_out} stride {stride} {bits} bits"
                    );
                }
            }
        }
    }

    /// Output rows wider than a task (`out_w > 2·MB`): implicit-GEMM tasks that start and end
    /// inside an output row, remainder strips of 1 to 5 rows, 8/8-bit extreme codes, stride 1 and 2,
    /// and asymmetric padding; equal to the reference on every ISA.
    #[test]
    fn wide_implicit_rows_longer_than_a_task() {
        let mut r = lcg(21);
        for (w, pad, pad_end, c_in, stride) in [
            (141, 1, 1, 4, 1),
            (133, 2, 0, 8, 1),
            (130, 0, 2, 4, 1),
            (269, 1, 1, 4, 2),
            (270, 2, 0, 8, 2),
        ] {
            let g = ConvGeom {
                batch: 2,
                h: 5,
                w,
                c_in,
                c_out: 19,
                kh: 3,
                kw: 3,
                stride,
                pad,
                pad_end,
            };
            assert!(g.out_w() > 2 * MB);
            let x: Vec<u8> = (0..g.input_len())
                .map(|i| if i % 7 == 0 { 255 } else { r() as u8 })
                .collect();
            let codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|i| {
                    if i % 5 == 0 {
                        -127
                    } else {
                        ((r() % 255) as i64 - 127) as i8
                    }
                })
                .collect();
            let wp =
                PackedWeights::from_codes(&codes, g.c_out, g.k(), 8, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&wp, &g).unwrap();
            assert!(implicit_geom(&conv_source(&x, &g).unwrap(), panel.kp()).is_some());
            let want = reference::conv2d(&x, &g, &codes);
            for isa in Isa::available() {
                let mut raw = vec![i32::MIN; want.len()];
                let kern = gemm_fused(
                    isa,
                    conv_source(&x, &g).unwrap(),
                    &panel,
                    &AccSink::new(&mut raw, g.c_out),
                )
                .unwrap();
                assert_eq!(raw, want, "{isa:?} ({kern:?}) w {w}");
            }
        }
    }

    /// Raw accumulators of the fused convolution `g` on `x` with weight codes `codes` against
    /// the reference, on every ISA; returns the kernel AVX2 ran (if available).
    fn check_conv_raw(x: &[u8], g: &ConvGeom, codes: &[i8], wbits: u32) -> Option<Kernel> {
        let wp =
            PackedWeights::from_codes(codes, g.c_out, g.k(), wbits, vec![1.0; g.c_out]).unwrap();
        let panel = conv_panel(&wp, g).unwrap();
        let want = reference::conv2d(x, g, codes);
        let mut used = None;
        for isa in Isa::available() {
            let mut raw = vec![i32::MIN; want.len()];
            let kern = gemm_fused(
                isa,
                conv_source(x, g).unwrap(),
                &panel,
                &AccSink::new(&mut raw, g.c_out),
            )
            .unwrap();
            assert_eq!(raw, want, "{isa:?} ({kern:?}) {g:?}");
            if isa == Isa::Avx2 {
                used = Some(kern);
            }
        }
        used
    }

    /// Output rows wider than a task for the `avx2-i16` kernel on zero-padded u8 rows: tasks
    /// that start and end inside an output row, remainder strips, stride 1 and 2, asymmetric
    /// padding, 4/4-bit codes (extreme ones every few codes); equal to the reference.
    #[test]
    fn i16_implicit_rows_longer_than_a_task() {
        let mut r = lcg(22);
        for (w, pad, pad_end, c_in, stride) in [
            (141, 1, 1, 4, 1),
            (133, 2, 0, 8, 1),
            (130, 0, 2, 4, 1),
            (139, 1, 1, 12, 1),
            (269, 1, 1, 4, 2),
            (270, 0, 2, 12, 2),
        ] {
            let g = ConvGeom {
                batch: 2,
                h: 5,
                w,
                c_in,
                c_out: 19,
                kh: 3,
                kw: 3,
                stride,
                pad,
                pad_end,
            };
            assert!(g.out_w() > 2 * MB);
            let x: Vec<u8> = (0..g.input_len())
                .map(|i| if i % 7 == 0 { 15 } else { (r() % 16) as u8 })
                .collect();
            let codes: Vec<i8> = (0..g.c_out * g.k())
                .map(|i| if i % 5 == 0 { -7 } else { (r() % 15) as i8 - 7 })
                .collect();
            let wp =
                PackedWeights::from_codes(&codes, g.c_out, g.k(), 4, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&wp, &g).unwrap();
            assert!(implicit_geom(&conv_source(&x, &g).unwrap(), panel.kp()).is_some());
            if let Some(kern) = check_conv_raw(&x, &g, &codes, 4) {
                assert_eq!(kern, Kernel::Avx2I16 { s: 156 });
            }
        }
    }

    /// The i16 sums at their limit: every product at the extreme with one sign, reductions long
    /// enough that the kernel widens inside a kernel row (4/4 bits: 156 groups of pair sums up
    /// to 210, i.e. ±32760 before widening; 255 × 16: 4 groups of 8160; 6/6 bits: 8 groups),
    /// also where the range just allows `s = 4`; stride 1 (padded rows in place), stride 2 and
    /// 1×1 convolutions; equal to the reference on every ISA, with the expected `s` on AVX2.
    #[test]
    fn i16_conv_saturation_boundaries() {
        for (amax, wmax, s) in [
            (15u8, 7i8, 156usize),
            (255, 16, 4),
            (63, 31, 8),
            (127, 32, 4),
        ] {
            for (c_in, k, stride, pad) in [
                (72, 3, 1, 1),
                (64, 3, 1, 0),
                (72, 3, 2, 1),
                (200, 1, 1, 0),
                (180, 1, 2, 0),
                (28, 5, 1, 2),
            ] {
                let g = ConvGeom {
                    batch: 1,
                    h: 7,
                    w: 9,
                    c_in,
                    c_out: 18,
                    kh: k,
                    kw: k,
                    stride,
                    pad,
                    pad_end: pad,
                };
                for sign in [1i8, -1] {
                    let x = vec![amax; g.input_len()];
                    let mut codes = vec![sign * wmax; g.c_out * g.k()];
                    // One channel of alternating signs, one all zero.
                    for (i, c) in codes[..g.k()].iter_mut().enumerate() {
                        *c = if i % 2 == 0 { wmax } else { -wmax };
                    }
                    codes[g.k()..2 * g.k()].fill(0);
                    if let Some(kern) = check_conv_raw(&x, &g, &codes, 8) {
                        assert_eq!(kern, Kernel::Avx2I16 { s }, "{amax} × {wmax}");
                    }
                }
            }
        }
        // All-zero operands (pair bound 0: the kernel never widens before the end).
        let g = ConvGeom {
            batch: 1,
            h: 5,
            w: 6,
            c_in: 8,
            c_out: 17,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
            pad_end: 1,
        };
        let codes: Vec<i8> = (0..g.c_out * g.k()).map(|i| (i % 7) as i8 - 3).collect();
        if let Some(kern) = check_conv_raw(&vec![0; g.input_len()], &g, &codes, 4) {
            assert_eq!(kern, Kernel::Avx2I16 { s: usize::MAX });
        }
    }

    #[test]
    fn long_reduction_and_errors() {
        // k > KC exercises the k-blocking.
        let (m, n, k) = (37, 20, KC + 333);
        let mut r = lcg(5);
        let a: Vec<u8> = (0..m * k).map(|_| r() as u8).collect();
        let codes: Vec<i8> = (0..n * k)
            .map(|_| (r() % 255) as i8)
            .map(|c| c.max(-127))
            .collect();
        let panel = WeightPanel::from_codes(&codes, n, k).unwrap();
        let want = reference::gemm_u8i8(&a, m, &codes, n, k);
        for isa in Isa::available() {
            let mut c = vec![0; m * n];
            gemm_fused(
                isa,
                ASource::Rows { a: &a, k },
                &panel,
                &AccSink::new(&mut c, n),
            )
            .unwrap();
            assert_eq!(c, want, "{isa:?}");
        }
        let mut c = vec![0; m * (n + 1)];
        assert!(
            gemm_fused(
                Isa::Portable,
                ASource::Rows { a: &a, k },
                &panel,
                &AccSink::new(&mut c, n + 1)
            )
            .is_err()
        );
        assert!(
            gemm_fused(
                Isa::Portable,
                ASource::Rows { a: &a[1..], k },
                &panel,
                &AccSink::new(&mut c, n)
            )
            .is_err()
        );
        let rq = Requant::new(vec![1.0; n], vec![0.0; n], 1.0, 8).unwrap();
        let mut o = vec![0u8; m * n];
        assert!(RequantSink::new(&rq, Some((&a[..3], 1.0)), &mut o, Isa::Portable).is_err());
    }
}
