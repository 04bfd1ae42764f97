//! 2-D convolution (NCHW) as a candle custom op with backward: im2col + GEMM forward,
//! GEMM + col2im grad-input, GEMM grad-weight; rayon-parallel over images.
//!
//! Layout: the API is candle's NCHW for `x` and `[C_out, C_in/groups, K_h, K_w]` for the
//! weight. Internally every (image, group) pair is one GEMM on an im2col matrix laid out
//! `[C_in/groups · K_h · K_w, H_out · W_out]`, so the GEMM output is already NCHW and no
//! layout copy is needed on either side (measured in `benches/kernels.rs`).
//!
//! Stride-1 "same" convolutions (ResNet's 3×3, padding 1) take a direct path on AVX2 CPUs
//! instead (see `Direct`): no im2col, no col buffer, no col2im; the forward gives the same
//! bits as im2col, the gradients differ in summation order (deterministic, independent of
//! the thread count). Other geometries and the portable level keep im2col.

use candle_core::{Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::matmul::Mat;
use crate::quant::{AOP, ActQ, ErrSlot, act_backward, check_act_args, fail, read_alpha, take};
use crate::simd::{
    Level, bcast_cycles, gemm_bcast, gemm_bcast_gather, gemm_bcast_tab, gemm_dot, gemm_dot_tab,
    level, map_into, transpose, transpose_into,
};
use crate::view::{
    Backward, F32View, Forward, as_uninit, check_finite, custom_op, par_chunks_filled_init,
    par_chunks_written_init, par_map, poison, prepare, to_tensor, zeroed,
};
use crate::{Error, Result};

const OP: &str = "conv2d";

/// Convolution hyper-parameters (the same in both spatial dimensions, like candle's conv2d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, ≥ 1.
    pub stride: usize,
    /// Zero padding added on every side, in input pixels.
    pub padding: usize,
    /// Spacing between kernel taps, ≥ 1.
    pub dilation: usize,
    /// Channel groups, ≥ 1; `groups == C_in == C_out` is a depthwise convolution.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Stride `stride`, padding `padding`, no dilation, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            ..Self::default()
        }
    }
    /// The same parameters with `groups` channel groups.
    pub fn with_groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
    /// The same parameters with dilation `dilation`.
    pub fn with_dilation(self, dilation: usize) -> Self {
        Self { dilation, ..self }
    }
}

/// All sizes of one convolution, validated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    pub(crate) dil: usize,
    pub(crate) groups: usize,
    pub(crate) cin_g: usize,
    pub(crate) cout_g: usize,
    /// Rows of the im2col matrix: `cin_g · kh · kw`.
    pub(crate) kdim: usize,
    /// Columns of the im2col matrix: `oh · ow`.
    pub(crate) ohw: usize,
}

impl Geom {
    pub(crate) fn new(x: &[usize], w: &[usize], p: &Conv2dParams) -> Result<Self> {
        let shape_err = |msg: String| Error::Shape { op: OP, msg };
        let &[n, cin, h, wd] = x else {
            return Err(shape_err(format!(
                "input must be [N, C_in, H, W], got {x:?}"
            )));
        };
        let &[cout, cin_g, kh, kw] = w else {
            return Err(shape_err(format!(
                "weight must be [C_out, C_in/groups, K_h, K_w], got {w:?}"
            )));
        };
        if p.stride == 0 || p.dilation == 0 || p.groups == 0 {
            return Err(Error::InvalidParam {
                op: OP,
                msg: format!(
                    "stride {}, dilation {}, groups {} must all be ≥ 1",
                    p.stride, p.dilation, p.groups
                ),
            });
        }
        if cin % p.groups != 0 || cout % p.groups != 0 || cin / p.groups != cin_g {
            return Err(shape_err(format!(
                "input {x:?} and weight {w:?} do not fit groups = {} (need C_in = groups · weight dim 1 and C_out divisible by groups)",
                p.groups
            )));
        }
        if kh == 0 || kw == 0 {
            return Err(shape_err(format!("empty kernel {w:?}")));
        }
        let eff_h = p.dilation * (kh - 1) + 1;
        let eff_w = p.dilation * (kw - 1) + 1;
        if h + 2 * p.padding < eff_h || wd + 2 * p.padding < eff_w {
            return Err(shape_err(format!(
                "kernel {kh}×{kw} (dilation {}) larger than padded input {}×{}",
                p.dilation,
                h + 2 * p.padding,
                wd + 2 * p.padding
            )));
        }
        let oh = (h + 2 * p.padding - eff_h) / p.stride + 1;
        let ow = (wd + 2 * p.padding - eff_w) / p.stride + 1;
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            oh,
            ow,
            stride: p.stride,
            pad: p.padding,
            dil: p.dilation,
            groups: p.groups,
            cin_g,
            cout_g: cout / p.groups,
            kdim: cin_g * kh * kw,
            ohw: oh * ow,
        })
    }

    /// 1×1, stride 1, no padding: the input image already is the im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    fn in_img(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_img(&self) -> usize {
        self.cout * self.ohw
    }
    /// Output positions `o` in `0..out_len` with `0 ≤ o·stride + off < in_len`, as `lo..hi`.
    fn valid(off: isize, stride: usize, in_len: usize, out_len: usize) -> (usize, usize) {
        let lo = if off >= 0 {
            0
        } else {
            (off.unsigned_abs()).div_ceil(stride)
        };
        let last = in_len as isize - 1 - off;
        let hi = if last < 0 {
            0
        } else {
            (last as usize) / stride + 1
        };
        let hi = hi.min(out_len);
        (lo.min(hi), hi)
    }
}

/// One kernel tap `(c, ky, kx)` of a group: its im2col row, and per axis the input offset of
/// output position 0 (`oy·stride + offy` is the input row) and the output range `lo..hi` whose
/// reads fall inside the input.
struct Tap {
    c: usize,
    row: usize,
    offy: isize,
    ys: (usize, usize),
    offx: isize,
    xs: (usize, usize),
}

impl Geom {
    /// Calls `f` for every tap of one group, in im2col row order.
    #[inline]
    fn for_each_tap(&self, mut f: impl FnMut(Tap)) {
        for c in 0..self.cin_g {
            for ky in 0..self.kh {
                let offy = (ky * self.dil) as isize - self.pad as isize;
                let ys = Geom::valid(offy, self.stride, self.h, self.oh);
                for kx in 0..self.kw {
                    let offx = (kx * self.dil) as isize - self.pad as isize;
                    let xs = Geom::valid(offx, self.stride, self.w, self.ow);
                    let row = (c * self.kh + ky) * self.kw + kx;
                    f(Tap {
                        c,
                        row,
                        offy,
                        ys,
                        offx,
                        xs,
                    });
                }
            }
        }
    }
}

/// im2col of output rows `oy0..oy1` for one group of one image: `xg` starts at the group's
/// first input channel; `col` is `[kdim, (oy1 − oy0)·ow]` row-major.
fn im2col(xg: &[f32], g: &Geom, oy0: usize, oy1: usize, col: &mut [f32]) {
    let (h, w, ow) = (g.h, g.w, g.ow);
    let tp = (oy1 - oy0) * ow;
    g.for_each_tap(|t| {
        let xc = &xg[t.c * h * w..(t.c + 1) * h * w];
        let (xlo, xhi) = t.xs;
        let row = &mut col[t.row * tp..(t.row + 1) * tp];
        let (ylo, yhi) = (t.ys.0.clamp(oy0, oy1), t.ys.1.clamp(oy0, oy1));
        row[..(ylo - oy0) * ow].fill(0.0);
        row[(yhi - oy0) * ow..].fill(0.0);
        for oy in ylo..yhi {
            let iy = (oy * g.stride) as isize + t.offy;
            let src = &xc[iy as usize * w..(iy as usize + 1) * w];
            let dst = &mut row[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
            dst[..xlo].fill(0.0);
            dst[xhi..].fill(0.0);
            if xhi == xlo {
                continue;
            }
            if g.stride == 1 {
                let s0 = (xlo as isize + t.offx) as usize;
                dst[xlo..xhi].copy_from_slice(&src[s0..s0 + (xhi - xlo)]);
            } else {
                for (ox, d) in dst[xlo..xhi].iter_mut().enumerate() {
                    *d = src[(((ox + xlo) * g.stride) as isize + t.offx) as usize];
                }
            }
        }
    });
}

/// The adjoint of [`im2col`]: adds `col` (`[kdim, (oy1 − oy0)·ow]`) into the group's input
/// gradient.
fn col2im(col: &[f32], g: &Geom, oy0: usize, oy1: usize, dxg: &mut [f32]) {
    let (h, w, ow) = (g.h, g.w, g.ow);
    let tp = (oy1 - oy0) * ow;
    g.for_each_tap(|t| {
        let dxc = &mut dxg[t.c * h * w..(t.c + 1) * h * w];
        let (xlo, xhi) = t.xs;
        let row = &col[t.row * tp..(t.row + 1) * tp];
        for oy in t.ys.0.clamp(oy0, oy1)..t.ys.1.clamp(oy0, oy1) {
            let iy = (oy * g.stride) as isize + t.offy;
            let dst = &mut dxc[iy as usize * w..(iy as usize + 1) * w];
            let o = (oy - oy0) * ow;
            let src = &row[o + xlo..o + xhi];
            if src.is_empty() {
                continue;
            }
            if g.stride == 1 {
                let d0 = (xlo as isize + t.offx) as usize;
                for (d, s) in dst[d0..d0 + src.len()].iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                for (i, s) in src.iter().enumerate() {
                    dst[(((i + xlo) * g.stride) as isize + t.offx) as usize] += s;
                }
            }
        }
    });
}

/// Whether to parallelise over images (each GEMM single-threaded) or inside each GEMM.
fn per_image_parallel(n: usize) -> bool {
    n >= 2 * rayon::current_num_threads().max(1) || n >= 8
}

/// Floats per im2col tile: output rows are processed in tiles this big so the tile stays
/// in the core's L2 cache between im2col and the GEMM that reads it.
const TILE_FLOATS: usize = 32 * 1024;

impl Geom {
    /// Output rows per im2col tile.
    fn tile_rows(&self) -> usize {
        (TILE_FLOATS / (self.kdim * self.ow).max(1)).clamp(1, self.oh.max(1))
    }
    fn tile_len(&self) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.kdim * self.tile_rows() * self.ow
        }
    }
    fn tiles(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (oh, r) = (self.oh, self.tile_rows());
        (0..oh.div_ceil(r)).map(move |t| (t * r, ((t + 1) * r).min(oh)))
    }
}

/// The direct path for "same" convolutions (stride 1, no dilation, one group, a square odd
/// kernel of side ≥ 3, padding `(K − 1)/2`: ResNet's 3×3 convs), without im2col.
///
/// Each image is zero-padded once to `[C, H + 2p, W + 2p]` (plus `K − 1` zeros at the end)
/// and the convolution is computed on the padded-width grid `H × (W + 2p)`: grid column
/// `y·(W + 2p) + x` of tap `(c, ky, kx)` reads the padded image at
/// `c·plane + ky·(W + 2p) + kx` plus that column, so every tap's `B` row is one contiguous
/// window ([`gemm_bcast_tab`]'s row table) and the `2p` junk columns per output row are
/// dropped when the grid is copied out.
/// - Forward: the same values and the same chain of fused multiply-adds over the taps as
///   im2col + [`gemm_bcast`] (padding reads zeros either way), so the same bits.
/// - Grad-input: the same direct convolution of the padded `dY` with the weights
///   transposed to `[C_in, C_out, K, K]` and flipped in both spatial axes (no col buffer,
///   no col2im).
/// - Grad-weight: dot products ([`gemm_dot_tab`]) of the padded `dY`'s rows, read on the
///   grid (junk columns land on its zero padding), with the windows of the padded input.
///   The backward keeps the [`DW_CHUNK`] images of a chunk channel-major (`[C, DW_CHUNK,
///   plane]`), so one dot product runs over several small images (about
///   [`DW_DOT_FLOATS`] floats each) and their junk rows land on zero padding too.
///
/// Forward and grad-input each run in one of two forms with the same bits
/// ([`Direct::gathered`]): on the grid as above (output channels as rows of the product,
/// broadcast weights, vectors along the grid), or **gathered** (output positions as rows,
/// vectors along the output channels: [`gemm_bcast_gather`] reads each tap of each position
/// straight from the padded image, so neither junk columns nor im2col; the weights
/// transposed to `[K, C_out]`, the `[H·W, C_out]` result transposed back). A product's
/// factors commute, so every element is the same chain of fused multiply-adds either way;
/// the form whose tiles fill better ([`bcast_cycles`]) runs — gathered for ResNet-20's 16-,
/// 32- and 64-channel layers on both levels (the 7×7 grid of the last stage wastes 2 of
/// every 9 columns).
///
/// Used on AVX2 (and AVX-512) CPUs; the portable level keeps the general path.
#[derive(Debug)]
struct Direct {
    k: usize,
    p: usize,
    hp: usize,
    wp: usize,
    /// Taps of the padded input: `(c, ky, kx)` → `c·plane + ky·wp + kx`.
    xtab: Vec<usize>,
    /// Output positions on the padded image: `y·W_out + x` → `s·y·wp + s·x` for stride `s`
    /// (the gathered form's rows).
    ptab: Vec<usize>,
    /// The forward runs gathered (`C_out` columns), and the grad-input (`C_in` columns).
    fwd_gathered: bool,
    bwd_gathered: bool,
}

/// Floats per grad-weight dot product on the direct path: images of a chunk are summed in
/// one call until it reaches about this length (fixed, so results do not depend on threads).
const DW_DOT_FLOATS: usize = 1024;

impl Direct {
    /// The forward's plan: [`Direct::new`] at stride 1; at a larger stride (a downsampling
    /// "same"-padded conv, e.g. ResNet's 3×3 stride 2), the gathered form when the cost model
    /// prefers it to im2col + GEMM (which it then replaces: the same taps in the same order,
    /// zeros read from the padding instead of written by im2col, so the same bits), else
    /// None. The backward of a strided conv keeps the general path.
    fn forward(g: &Geom) -> Option<Self> {
        if g.stride == 1 {
            return Self::new(g);
        }
        let mut d = Self::plan(g, g.stride)?;
        let (m, hw) = (g.cout, g.ohw);
        d.fwd_gathered = FORCE_FORM
            .with(|f| f.get())
            .unwrap_or_else(|| bcast_cycles(hw, m) <= 1.05 * bcast_cycles(m, hw));
        d.fwd_gathered.then_some(d)
    }
    /// The stride-1 "same" plan (grid or gathered, forward and grad-input); None when the
    /// geometry does not fit or the CPU lacks AVX2.
    fn new(g: &Geom) -> Option<Self> {
        if g.stride != 1 {
            return None;
        }
        let mut d = Self::plan(g, 1)?;
        d.fwd_gathered = d.gathered(g.cout);
        d.bwd_gathered = d.gathered(g.cin);
        Some(d)
    }
    /// Tables for a "same"-padded geometry at `stride`, both forms off.
    fn plan(g: &Geom, stride: usize) -> Option<Self> {
        let same = g.stride == stride
            && g.dil == 1
            && g.groups == 1
            && g.kh == g.kw
            && g.kh % 2 == 1
            && g.kh >= 3
            && 2 * g.pad == g.kh - 1;
        if !same || level() < Level::Avx2 {
            return None;
        }
        let (k, p) = (g.kh, g.pad);
        let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
        let mut d = Self {
            k,
            p,
            hp,
            wp,
            xtab: Vec::new(),
            ptab: (0..g.ohw)
                .map(|i| stride * (i / g.ow * wp + i % g.ow))
                .collect(),
            fwd_gathered: false,
            bwd_gathered: false,
        };
        d.xtab = d.taps(g.cin, hp * wp);
        Some(d)
    }
    /// Whether a product with `m` output channels (the forward's `C_out`, the grad-input's
    /// `C_in`) runs gathered: when [`bcast_cycles`] expects it 3% cheaper than the grid (the
    /// grid's unpadding copy and the gathered form's transposition cost about the same).
    fn gathered(&self, m: usize) -> bool {
        let positions = self.ptab.len();
        FORCE_FORM.with(|f| f.get()).unwrap_or_else(|| {
            bcast_cycles(positions, m) < 0.97 * bcast_cycles(m, self.grid_cols())
        })
    }
    /// One image's direct convolution, `m` output channels from the padded image `xp`
    /// through the taps `taps` into `o` `[m, H_out, W_out]`: on the grid (stride 1, so
    /// `H_out × W_out = H × W`) with the weights `w` `[m, taps]` and `grid` as scratch, or
    /// gathered (one row per output position of the position table) with the transposed
    /// weights `w_t` `[taps, m]` and `grid` holding the `[H_out·W_out, m]` result. Writes
    /// (initialises) every element of `o[..m·H_out·W_out]`, whatever `taps` holds (none:
    /// zeros, as the products then are).
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        m: usize,
        xp: &[f32],
        taps: &[usize],
        w: &[f32],
        w_t: &[f32],
        gathered: bool,
        grid: &mut [f32],
        o: &mut [MaybeUninit<f32>],
    ) {
        let k = taps.len();
        if gathered {
            let hw = self.ptab.len();
            gemm_bcast_gather(hw, m, k, xp, &self.ptab, taps, w_t, m, grid, m);
            transpose_into(&grid[..hw * m], hw, m, &mut o[..m * hw]);
        } else {
            let n = self.grid_cols();
            gemm_bcast_tab(m, n, k, Mat::rows(w, k), xp, taps, grid, n);
            self.unpad(grid, m, o);
        }
    }
    /// The window offsets of `c` padded planes that start every `cstride` floats: tap
    /// `(ch, ky, kx)` → `ch·cstride + ky·wp + kx`.
    fn taps(&self, c: usize, cstride: usize) -> Vec<usize> {
        let k = self.k;
        let mut t = Vec::with_capacity(c * k * k);
        for ch in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    t.push(ch * cstride + ky * self.wp + kx);
                }
            }
        }
        t
    }
    /// Floats of a padded image of `c` channels (with its `K − 1` trailing zeros).
    fn padded_len(&self, c: usize) -> usize {
        c * self.hp * self.wp + self.k - 1
    }
    /// Floats of a chunk of padded images, `[c, DW_CHUNK, plane]` (+ `K − 1` zeros; at
    /// least one channel, so that every image's slice exists when `c = 0`).
    fn chunk_len(&self, c: usize) -> usize {
        c.max(1) * DW_CHUNK * self.hp * self.wp + self.k - 1
    }
    /// Columns of the grid: `H · (W + 2p)`.
    fn grid_cols(&self) -> usize {
        (self.hp - 2 * self.p) * self.wp
    }
    /// Copies `src` `[c, H, W]` into the interiors of the planes `H + 2p × W + 2p` that
    /// start every `cstride` floats in `dst`, fake-quantized by `q` when given (a zero stays
    /// zero, so the padding is that of the quantized image); the padding is left as it is
    /// (zero).
    ///
    /// With `q`, the `c` planes are quantized in one pass into this thread's scratch
    /// ([`PAD_SCRATCH`]) and then copied row by row: a row of the small maps (7 or 14 wide)
    /// would leave most of its elements to the vector loop's scalar tail (the same bits
    /// either way).
    fn pad_into(&self, src: &[f32], c: usize, dst: &mut [f32], cstride: usize, q: Option<ActQ>) {
        let (p, wp) = (self.p, self.wp);
        let (h, w) = (self.hp - 2 * p, wp - 2 * p);
        let copy_rows = |src: &[f32], dst: &mut [f32]| {
            for (ch, s) in src.chunks_exact(h * w).take(c).enumerate() {
                let d = &mut dst[ch * cstride..ch * cstride + self.hp * wp];
                for (y, row) in s.chunks_exact(w).enumerate() {
                    let o = (y + p) * wp + p;
                    d[o..o + w].copy_from_slice(row);
                }
            }
        };
        match q {
            None => copy_rows(src, dst),
            Some(q) => PAD_SCRATCH.with(|t| {
                let mut t = t.borrow_mut();
                let len = (c * h * w).min(src.len());
                t.resize(len, 0.0);
                map_into(&src[..len], &mut t, move |v| q.apply(v));
                copy_rows(&t, dst);
            }),
        }
    }
    /// Drops the junk columns: `grid` `[m, H, W + 2p]` → `out` `[m, H, W]` (every element
    /// of `out[..m·H·W]` written).
    fn unpad(&self, grid: &[f32], m: usize, out: &mut [MaybeUninit<f32>]) {
        let wp = self.wp;
        let w = wp - 2 * self.p;
        let cols = self.grid_cols();
        // Callers rely on every element being written (outputs are not zeroed first).
        assert!(
            grid.len() >= m * cols && out.len() >= m * (cols / wp) * w,
            "unpad: grid or output too short"
        );
        for (gr, o) in grid
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols / wp * w))
            .take(m)
        {
            for (src, dst) in gr.chunks_exact(wp).zip(o.chunks_exact_mut(w)) {
                for (d, &v) in dst.iter_mut().zip(&src[..w]) {
                    d.write(v);
                }
            }
        }
    }
    /// Forward of one image (see [`Direct`]) on its input fake-quantized by `q` when given;
    /// `xp` keeps zero padding between calls; `wt_t` is `wt` transposed when the forward
    /// runs gathered (else unused). Writes every element of `o` (`[C_out, H_out, W_out]`).
    #[allow(clippy::too_many_arguments)]
    fn forward_image(
        &self,
        xi: &[f32],
        wt: &[f32],
        wt_t: &[f32],
        g: &Geom,
        xp: &mut [f32],
        grid: &mut [f32],
        o: &mut [MaybeUninit<f32>],
        q: Option<ActQ>,
    ) {
        self.pad_into(xi, g.cin, xp, self.hp * self.wp, q);
        let gathered = self.fwd_gathered;
        self.product(g.cout, xp, &self.xtab, wt, wt_t, gathered, grid, o);
    }
}

/// The weights for the direct grad-input: `[C_out, C_in, K, K]` → `[C_in, C_out, K, K]`
/// flipped in both spatial axes.
fn flip_weights(wt: &[f32], g: &Geom) -> Vec<f32> {
    let kk = g.kh * g.kw;
    let mut f = vec![0f32; wt.len()];
    for o in 0..g.cout {
        for c in 0..g.cin {
            let src = &wt[(o * g.cin + c) * kk..(o * g.cin + c + 1) * kk];
            let dst = &mut f[(c * g.cout + o) * kk..(c * g.cout + o + 1) * kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    f
}

/// `w` `[rows, cols]` transposed (a weight matrix for the gathered direct form).
fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    transpose(w, rows, cols, &mut t);
    t
}

thread_local! {
    /// Tests: the direct path's form forced on this thread (`Some(true)`: gathered).
    static FORCE_FORM: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the direct path's form forced on this thread (tests: both forms on any
/// shape); rayon's threads that `f` starts are not forced.
#[cfg(test)]
fn with_form<R>(gathered: bool, f: impl FnOnce() -> R) -> R {
    let prev = FORCE_FORM.with(|c| c.replace(Some(gathered)));
    let r = f();
    FORCE_FORM.with(|c| c.set(prev));
    r
}

/// Forward of one image: `xi` `[C_in, H, W]` → `o` `[C_out, H_out, W_out]`.
fn forward_image(xi: &[f32], wt: &[f32], g: &Geom, col: &mut [f32], o: &mut [f32]) {
    for grp in 0..g.groups {
        let xg = &xi[grp * g.cin_g * g.h * g.w..(grp + 1) * g.cin_g * g.h * g.w];
        let wg = Mat::rows(
            &wt[grp * g.cout_g * g.kdim..(grp + 1) * g.cout_g * g.kdim],
            g.kdim,
        );
        let og = &mut o[grp * g.cout_g * g.ohw..(grp + 1) * g.cout_g * g.ohw];
        if g.is_pointwise() {
            gemm_bcast(g.cout_g, g.ohw, g.kdim, wg, xg, g.ohw, og, g.ohw, false);
            continue;
        }
        for (oy0, oy1) in g.tiles() {
            let tp = (oy1 - oy0) * g.ow;
            im2col(xg, g, oy0, oy1, col);
            gemm_bcast(
                g.cout_g,
                tp,
                g.kdim,
                wg,
                col,
                tp,
                &mut og[oy0 * g.ow..],
                g.ohw,
                false,
            );
        }
    }
}

/// Forward: `x` `[N, C_in, H, W]`, `wt` `[C_out, C_in/g, K_h, K_w]` → `[N, C_out, H_out, W_out]`.
pub(crate) fn conv_forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    conv_forward_with(x, wt, g, Direct::forward(g).as_ref(), None)
}

/// [`conv_forward`] on the direct path when `direct` is given, else on im2col, of `x`
/// fake-quantized by `q` when given (on the direct path while padding each image; else
/// quantized whole first).
fn conv_forward_with(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    direct: Option<&Direct>,
    q: Option<ActQ>,
) -> Vec<f32> {
    let len = g.n * g.out_img();
    if len == 0 {
        return Vec::new();
    }
    if let (Some(q), None) = (q, direct) {
        let xq = par_map(x, move |v| q.apply(v));
        return conv_forward_with(&xq, wt, g, None, None);
    }
    if let Some(d) = direct {
        let wt_t = if d.fwd_gathered {
            transposed(wt, g.cout, g.kdim)
        } else {
            Vec::new()
        };
        let init = || {
            (
                vec![0f32; d.padded_len(g.cin)],
                vec![0f32; g.cout * d.grid_cols()],
            )
        };
        let task = |(xp, grid): &mut (Vec<f32>, Vec<f32>), i: usize, o: &mut [MaybeUninit<f32>]| {
            d.forward_image(
                &x[i * g.in_img()..(i + 1) * g.in_img()],
                wt,
                &wt_t,
                g,
                xp,
                grid,
                o,
                q,
            )
        };
        // SAFETY: each chunk is one image's output, which `forward_image` writes whole.
        return unsafe { par_chunks_written_init(len, g.out_img(), DW_CHUNK, init, task) };
    }
    let col_len = g.tile_len();
    if per_image_parallel(g.n) {
        return par_chunks_filled_init(
            len,
            g.out_img(),
            DW_CHUNK,
            || vec![0f32; col_len],
            |col, i, o| forward_image(&x[i * g.in_img()..(i + 1) * g.in_img()], wt, g, col, o),
        );
    }
    let mut out = vec![0f32; len];
    {
        // Few images: parallelise over output-channel groups of one image instead.
        let mut col = vec![0f32; col_len];
        for (i, o) in out.chunks_mut(g.out_img()).enumerate() {
            forward_image(&x[i * g.in_img()..(i + 1) * g.in_img()], wt, g, &mut col, o);
        }
    }
    out
}

thread_local! {
    /// [`Direct::pad_into`]'s quantized planes, kept per thread across calls.
    static PAD_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Images per grad-weight partial sum. Fixed (not per thread), so results do not depend on
/// the number of threads.
const DW_CHUNK: usize = 8;

/// Backward of one image: adds `dW` into `dwc` (if any) and writes `dx` into `dxi` (if any).
#[allow(clippy::too_many_arguments)]
fn backward_image(
    xi: &[f32],
    wt: &[f32],
    dyi: &[f32],
    g: &Geom,
    col: &mut [f32],
    dcol: &mut [f32],
    mut dwc: Option<&mut [f32]>,
    mut dxi: Option<&mut [f32]>,
) {
    let pointwise = g.is_pointwise();
    for grp in 0..g.groups {
        let gin = grp * g.cin_g * g.h * g.w..(grp + 1) * g.cin_g * g.h * g.w;
        let xg = &xi[gin.clone()];
        let dyg = &dyi[grp * g.cout_g * g.ohw..(grp + 1) * g.cout_g * g.ohw];
        let wg = &wt[grp * g.cout_g * g.kdim..(grp + 1) * g.cout_g * g.kdim];
        let wgt = Mat::rows_t(wg, g.kdim);
        let mut dwg = dwc
            .as_deref_mut()
            .map(|d| &mut d[grp * g.cout_g * g.kdim..(grp + 1) * g.cout_g * g.kdim]);
        let mut dxg = dxi.as_deref_mut().map(|d| &mut d[gin.clone()]);
        if pointwise {
            if let Some(dwg) = dwg {
                gemm_dot(g.cout_g, g.kdim, g.ohw, dyg, g.ohw, xg, g.ohw, dwg, g.kdim);
            }
            if let Some(dxg) = dxg {
                gemm_bcast(g.kdim, g.ohw, g.cout_g, wgt, dyg, g.ohw, dxg, g.ohw, false);
            }
            continue;
        }
        for (oy0, oy1) in g.tiles() {
            let tp = (oy1 - oy0) * g.ow;
            let dyt = &dyg[oy0 * g.ow..];
            if let Some(dwg) = dwg.as_deref_mut() {
                // dW_g[cout_g, kdim] += dY_t[cout_g, tp] · col_t[kdim, tp]ᵀ
                im2col(xg, g, oy0, oy1, col);
                gemm_dot(g.cout_g, g.kdim, tp, dyt, g.ohw, col, tp, dwg, g.kdim);
            }
            if let Some(dxg) = dxg.as_deref_mut() {
                // dcol_t[kdim, tp] = W_gᵀ[kdim, cout_g] · dY_t[cout_g, tp], then col2im
                gemm_bcast(g.kdim, tp, g.cout_g, wgt, dyt, g.ohw, dcol, tp, false);
                col2im(&dcol[..g.kdim * tp], g, oy0, oy1, dxg);
            }
        }
    }
}

/// Backward: gradients of the input (`need_dx`) and the weight (`need_dw`) from `dy`
/// `[N, C_out, H_out, W_out]`.
pub(crate) fn conv_backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    conv_backward_with(x, wt, dy, g, need_dx, need_dw, false, None)
}

/// [`conv_backward`]; `force_general` keeps the im2col path even where [`Direct`] applies;
/// with `q`, the convolution's input is `x` fake-quantized by `q` (the weight gradient reads
/// it quantized; the input gradient is that of the quantized input).
#[allow(clippy::too_many_arguments)]
fn conv_backward_with(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    need_dx: bool,
    need_dw: bool,
    force_general: bool,
    q: Option<ActQ>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let wlen = g.cout * g.kdim;
    let nchunks = g.n.div_ceil(DW_CHUNK);
    // Allocated uninitialised: each task zeroes its chunk of images before filling it.
    let dx_len = if need_dx { g.n * g.in_img() } else { 0 };
    let mut dx: Vec<f32> = Vec::with_capacity(dx_len);
    let mut parts = if need_dw {
        vec![0f32; nchunks * wlen]
    } else {
        Vec::new()
    };
    if g.n == 0 || (!need_dx && !need_dw) {
        return (
            need_dx.then(|| vec![0f32; dx_len]),
            need_dw.then(|| vec![0f32; wlen]),
        );
    }
    let direct = if force_general { None } else { Direct::new(g) };
    if let (Some(q), None, true) = (q, &direct, need_dw) {
        let xq = par_map(x, move |v| q.apply(v));
        return conv_backward_with(&xq, wt, dy, g, need_dx, need_dw, true, None);
    }
    let wflip = match (&direct, need_dx) {
        (Some(_), true) => flip_weights(wt, g),
        _ => Vec::new(),
    };
    let wflip_t = match &direct {
        Some(d) if need_dx && d.bwd_gathered => transposed(&wflip, g.cin, g.cout * d.k * d.k),
        _ => Vec::new(),
    };
    let col_len = g.tile_len();
    let dx_chunks: Vec<Option<&mut [MaybeUninit<f32>]>> = if dx_len > 0 {
        dx.spare_capacity_mut()[..dx_len]
            .chunks_mut((DW_CHUNK * g.in_img()).max(1))
            .map(Some)
            .collect()
    } else {
        (0..nchunks).map(|_| None).collect()
    };
    let dw_chunks: Vec<Option<&mut [f32]>> = if need_dw && wlen > 0 {
        parts.chunks_mut(wlen).map(Some).collect()
    } else {
        (0..nchunks).map(|_| None).collect()
    };
    // One task per chunk of images: the zip below visits every chunk of `dx`.
    assert_eq!(dx_chunks.len(), dw_chunks.len(), "conv backward: chunking");
    type Item<'a> = (
        usize,
        (Option<&'a mut [MaybeUninit<f32>]>, Option<&'a mut [f32]>),
    );
    if let Some(d) = &direct {
        let (ci_len, co_len) = (d.chunk_len(g.cin), d.chunk_len(g.cout));
        let cols = d.grid_cols();
        let plane = d.hp * d.wp;
        let cs = DW_CHUNK * plane;
        let per_dot = (DW_DOT_FLOATS / plane).clamp(1, DW_CHUNK);
        // Taps of a chunk's channel-major planes (`[C, DW_CHUNK, plane]`).
        let (xtab_chunk, dytab_chunk) = (d.taps(g.cin, cs), d.taps(g.cout, cs));
        let init = || {
            let xq = if need_dw {
                vec![0f32; ci_len]
            } else {
                Vec::new()
            };
            let grid = if need_dx {
                vec![0f32; g.cin * cols]
            } else {
                Vec::new()
            };
            (xq, vec![0f32; co_len], grid)
        };
        type Bufs = (Vec<f32>, Vec<f32>, Vec<f32>);
        let task = |(xq, dyq, grid): &mut Bufs, (ci, (dxc, mut dwc)): Item<'_>| {
            // The chunk's images are written whole by `product` below (no zeroing first).
            let mut dxc = dxc;
            if let Some(c) = dxc.as_deref_mut() {
                poison(c);
            }
            let first = ci * DW_CHUNK;
            let nimg = (first + DW_CHUNK).min(g.n) - first;
            for i in 0..nimg {
                let src = &dy[(first + i) * g.out_img()..(first + i + 1) * g.out_img()];
                d.pad_into(src, g.cout, &mut dyq[i * plane..], cs, None);
            }
            if let Some(dxc) = dxc {
                for i in 0..nimg {
                    d.product(
                        g.cin,
                        &dyq[i * plane..],
                        &dytab_chunk,
                        &wflip,
                        &wflip_t,
                        d.bwd_gathered,
                        grid,
                        &mut dxc[i * g.in_img()..(i + 1) * g.in_img()],
                    );
                }
            }
            if let Some(dwc) = dwc.as_deref_mut() {
                for i in 0..nimg {
                    let src = &x[(first + i) * g.in_img()..(first + i + 1) * g.in_img()];
                    d.pad_into(src, g.cin, &mut xq[i * plane..], cs, q);
                }
                for i0 in (0..nimg).step_by(per_dot) {
                    let i1 = (i0 + per_dot).min(nimg);
                    let len = (i1 - i0 - 1) * plane + cols;
                    // dY on the grid: its padded rows from (p, p) on; junk columns and rows
                    // land on zero padding.
                    let a = &dyq[i0 * plane + d.p * d.wp + d.p..];
                    let b = &xq[i0 * plane..];
                    gemm_dot_tab(g.cout, g.kdim, len, a, cs, b, &xtab_chunk, dwc, g.kdim);
                }
            }
        };
        dx_chunks
            .into_par_iter()
            .zip(dw_chunks)
            .enumerate()
            .for_each_init(init, task);
    } else {
        let chunk_task = |bufs: &mut (Vec<f32>, Vec<f32>), (ci, (dxc, mut dwc)): Item<'_>| {
            let mut dxc = dxc.map(zeroed);
            let (col, dcol) = bufs;
            let first = ci * DW_CHUNK;
            for i in first..(first + DW_CHUNK).min(g.n) {
                let off = (i - first) * g.in_img();
                backward_image(
                    &x[i * g.in_img()..(i + 1) * g.in_img()],
                    wt,
                    &dy[i * g.out_img()..(i + 1) * g.out_img()],
                    g,
                    col,
                    dcol,
                    dwc.as_deref_mut(),
                    dxc.as_deref_mut().map(|d| &mut d[off..off + g.in_img()]),
                );
            }
        };
        let init = || (vec![0f32; col_len], vec![0f32; col_len]);
        dx_chunks
            .into_par_iter()
            .zip(dw_chunks)
            .enumerate()
            .for_each_init(init, chunk_task);
    }
    // SAFETY: when `dx_len > 0`, `dx_chunks` held chunks covering `0..dx_len`, as many as
    // `dw_chunks` (asserted), so the zip visited every one, and each task initialised its
    // chunk: the direct path's `product` writes each of the chunk's images whole, the
    // general path zeroes the chunk before accumulating into it; a panic in a task
    // propagates before this line.
    unsafe { dx.set_len(dx_len) };
    let dw = need_dw.then(|| {
        let mut dw = vec![0f32; wlen];
        dw.par_chunks_mut(1024).enumerate().for_each(|(bi, d)| {
            let base = bi * 1024;
            for p in 0..nchunks {
                let src = &parts[p * wlen + base..p * wlen + base + d.len()];
                for (a, b) in d.iter_mut().zip(src) {
                    *a += b;
                }
            }
        });
        dw
    });
    (need_dx.then_some(dx), dw)
}

struct Conv2dOp {
    params: Conv2dParams,
}

impl Conv2dOp {
    fn forward(&self, [x, w]: [&[f32]; 2], [lx, lw]: [&Layout; 2]) -> Forward {
        let g = Geom::new(lx.dims(), lw.dims(), &self.params).map_err(Error::into_candle)?;
        let out = conv_forward(x, w, &g);
        Ok((out, Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn backward(&self, [x, w]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Backward<2> {
        let g = Geom::new(x.dims(), w.dims(), &self.params).map_err(Error::into_candle)?;
        let grad = grad.contiguous()?;
        let need_dx = x.track_op();
        let need_dw = w.track_op();
        let (dx, dw) = {
            let xv = F32View::of(x, OP)?;
            let wv = F32View::of(w, OP)?;
            let gv = F32View::of(&grad, OP)?;
            conv_backward(xv.slice(), wv.slice(), gv.slice(), &g, need_dx, need_dw)
        };
        let dx = dx.map(|v| to_tensor(v, x.dims())).transpose()?;
        let dw = dw.map(|v| to_tensor(v, w.dims())).transpose()?;
        Ok([dx, dw])
    }
}

custom_op!(CustomOp2 for Conv2dOp, |_| "seer-conv2d", OP);

/// 2-D convolution with backward (candle custom op): `x` `[N, C_in, H, W]` f32 (NCHW),
/// `w` `[C_out, C_in/groups, K_h, K_w]` f32 → `[N, C_out, H_out, W_out]` with
/// `H_out = (H + 2·padding − dilation·(K_h − 1) − 1) / stride + 1` (likewise `W_out`).
/// No bias (add one with `broadcast_add` if needed). Same result as candle's `conv2d` up to
/// f32 summation order.
///
/// **Batch-invariant forward:** each image's output is bitwise the same whatever `N` (every
/// image runs the same GEMM calls, with tiles fixed by the geometry; threads split only
/// across images). The weight gradient sums over the batch by definition.
///
/// Errors: [`Error::Shape`] for ranks/sizes that do not fit (including `groups`),
/// [`Error::InvalidParam`] for a zero stride, dilation or group count,
/// [`Error::Unsupported`] for non-f32 or non-CPU tensors.
pub fn conv2d(x: &Tensor, w: &Tensor, params: &Conv2dParams) -> Result<Tensor> {
    Geom::new(x.dims(), w.dims(), params)?;
    let x = prepare(x, OP)?;
    let w = prepare(w, OP)?;
    Ok(x.apply_op2(&w, Conv2dOp { params: *params })?)
}

/// The gradients of [`conv2d`] for a given output gradient, outside candle's autograd:
/// `x` `[N, C_in, H, W]`, `w` `[C_out, C_in/groups, K_h, K_w]` and `dy`
/// `[N, C_out, H_out, W_out]` (the gradient of a loss with respect to `conv2d(x, w)`) →
/// `(dx, dw)` with the shapes of `x` and `w`. The same kernels and values as the backward
/// that `conv2d(x, w)?.backward()` runs, for training loops that drive their own gradients
/// and for timing the convolution's backward without the autograd's gradient accumulation
/// (`cargo xtask bench label`'s conv fraction).
///
/// Errors as [`conv2d`], and [`Error::Shape`] when `dy`'s shape is not the output's.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    params: &Conv2dParams,
) -> Result<(Tensor, Tensor)> {
    let g = Geom::new(x.dims(), w.dims(), params)?;
    let want = [g.n, g.cout, g.oh, g.ow];
    if dy.dims() != want {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "output gradient of shape {:?}, the output is {want:?}",
                dy.dims()
            ),
        });
    }
    let (xc, wc, dyc) = (prepare(x, OP)?, prepare(w, OP)?, prepare(dy, OP)?);
    let (dx, dw) = {
        let (xv, wv, gv) = (
            F32View::new(&xc, OP)?,
            F32View::new(&wc, OP)?,
            F32View::new(&dyc, OP)?,
        );
        conv_backward(xv.slice(), wv.slice(), gv.slice(), &g, true, true)
    };
    let dx = dx.unwrap_or_default();
    let dw = dw.unwrap_or_default();
    Ok((to_tensor(dx, x.dims())?, to_tensor(dw, w.dims())?))
}

/// One image's convolution on plain slices, for inference without tensors or an autograd
/// graph: `x` `[C_in, H, W]`, `w` `[C_out, C_in/groups, K_h, K_w]` → `out` resized to
/// `[C_out, H_out, W_out]`, which is returned. `col` is scratch. Bitwise the same as this
/// image's slice of [`conv2d`] (the same per-image GEMM calls, direct or im2col).
/// Single-threaded: callers parallelise over images. Each call prepares the weight (the
/// direct path's tap table, and the transposed weight when it runs gathered): for many
/// images with one weight, [`PackedConv2d`] prepares it once.
///
/// Errors as [`conv2d`], and [`Error::Shape`] when a slice's length differs from its shape.
pub fn conv2d_image(
    x: &[f32],
    x_shape: [usize; 3],
    w: &[f32],
    w_shape: [usize; 4],
    params: &Conv2dParams,
    col: &mut Vec<f32>,
    out: &mut Vec<f32>,
) -> Result<[usize; 3]> {
    let packed = PackedConv2d::new(w, w_shape, params, x_shape)?;
    packed.image(x, col, out)?;
    Ok(packed.out_shape())
}

/// A convolution prepared once for [`PackedConv2d::image`]: one image at a time on plain
/// slices, for inference without tensors or an autograd graph (evaluation runs every image
/// alone, so its logits do not depend on the batch). Holds the weight, and for the direct
/// path its tap table and, when that path runs gathered by output position, the weight
/// transposed.
#[derive(Debug)]
pub struct PackedConv2d {
    g: Geom,
    w: Vec<f32>,
    w_t: Vec<f32>,
    direct: Option<Direct>,
}

impl PackedConv2d {
    /// Prepares `w` `[C_out, C_in/groups, K_h, K_w]` for images of shape `x_shape`
    /// `[C_in, H, W]`. The direct path's form is chosen for the CPU this runs on.
    /// Errors as [`conv2d`] for shapes and parameters that do not fit, and [`Error::Shape`]
    /// when `w`'s length differs from `w_shape`.
    pub fn new(
        w: &[f32],
        w_shape: [usize; 4],
        params: &Conv2dParams,
        x_shape: [usize; 3],
    ) -> Result<Self> {
        let [c, h, wd] = x_shape;
        let g = Geom::new(&[1, c, h, wd], &w_shape, params)?;
        let want: usize = w_shape.iter().product();
        if w.len() != want {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "weight slice holds {} values, its shape needs {want}",
                    w.len()
                ),
            });
        }
        let direct = Direct::forward(&g);
        let w_t = match &direct {
            Some(d) if d.fwd_gathered => transposed(w, g.cout, g.kdim),
            _ => Vec::new(),
        };
        Ok(Self {
            g,
            w: w.to_vec(),
            w_t,
            direct,
        })
    }

    /// The output shape `[C_out, H_out, W_out]`.
    pub fn out_shape(&self) -> [usize; 3] {
        [self.g.cout, self.g.oh, self.g.ow]
    }

    /// The convolution of one image `x` `[C_in, H, W]` into `out` (resized to
    /// [`Self::out_shape`]); `col` is scratch. No allocation once `col` and `out` have grown
    /// to their largest use. Bitwise this image's slice of [`conv2d`].
    /// Errors: [`Error::Shape`] when `x` does not hold one image of the prepared shape.
    pub fn image(&self, x: &[f32], col: &mut Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let g = &self.g;
        if x.len() != g.in_img() {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "input slice holds {} values, one image of [{}, {}, {}] needs {}",
                    x.len(),
                    g.cin,
                    g.h,
                    g.w,
                    g.in_img()
                ),
            });
        }
        out.clear();
        out.resize(g.out_img(), 0.0);
        if g.kdim == 0 || out.is_empty() {
            return Ok(());
        }
        if let Some(d) = &self.direct {
            let xl = d.padded_len(g.cin);
            if col.len() < xl + g.cout * d.grid_cols() {
                col.resize(xl + g.cout * d.grid_cols(), 0.0);
            }
            // The padding must be zero: clear the padded image's first part (the interior
            // is overwritten; the grid needs no clearing).
            col[..xl].fill(0.0);
            let (xp, grid) = col.split_at_mut(xl);
            // SAFETY: `forward_image` writes only computed values.
            let out = unsafe { as_uninit(out) };
            d.forward_image(x, &self.w, &self.w_t, g, xp, grid, out, None);
        } else {
            if col.len() < g.tile_len() {
                col.resize(g.tile_len(), 0.0);
            }
            forward_image(x, &self.w, g, col, out);
        }
        Ok(())
    }
}

struct Conv2dFqOp {
    params: Conv2dParams,
    bits: u32,
    err: ErrSlot,
}

impl Conv2dFqOp {
    fn forward(&self, [x, w, a]: [&[f32]; 3], [lx, lw, _]: [&Layout; 3]) -> Forward {
        let alpha = read_alpha(a, AOP).map_err(|e| fail(&self.err, e))?;
        check_finite(x, AOP, "x").map_err(|e| fail(&self.err, e))?;
        let g = Geom::new(lx.dims(), lw.dims(), &self.params).map_err(Error::into_candle)?;
        let q = ActQ::new(alpha, self.bits);
        let out = conv_forward_with(x, w, &g, Direct::forward(&g).as_ref(), Some(q));
        Ok((out, Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    fn backward(&self, [x, w, a]: [&Tensor; 3], _res: &Tensor, grad: &Tensor) -> Backward<3> {
        let g = Geom::new(x.dims(), w.dims(), &self.params).map_err(Error::into_candle)?;
        let grad = grad.contiguous()?;
        let need_x = x.track_op() || a.track_op();
        let xv = F32View::of(x, OP)?;
        let wv = F32View::of(w, OP)?;
        let av = F32View::of(a, AOP)?;
        let gv = F32View::of(&grad, OP)?;
        let alpha = read_alpha(av.slice(), AOP).map_err(Error::into_candle)?;
        let q = ActQ::new(alpha, self.bits);
        let (dxq, dw) = conv_backward_with(
            xv.slice(),
            wv.slice(),
            gv.slice(),
            &g,
            need_x,
            w.track_op(),
            false,
            Some(q),
        );
        let (dx, da) = match dxq {
            Some(dxq) => {
                let (dx, da) = act_backward(xv.slice(), &dxq, q);
                let da = Tensor::full(da as f32, a.dims(), a.device())?;
                (Some(to_tensor(dx, x.dims())?), Some(da))
            }
            None => (None, None),
        };
        let dw = dw.map(|v| to_tensor(v, w.dims())).transpose()?;
        Ok([dx, dw, da])
    }
}

custom_op!(CustomOp3 for Conv2dFqOp, |_| "seer-conv2d-fq-input", OP);

/// `conv2d(fake_quant_act(x, alpha, bits), w, params)` as one op (docs/method.md §3): the
/// same values and the same gradients for `x`, `w` and `alpha`, without the quantized input
/// as a tensor of its own. On the direct path each image is quantized while it is padded
/// (forward, and again for the weight gradient); elsewhere the input is quantized whole
/// first. A QAT step saves one activation-sized tensor and one gradient accumulation per
/// convolution (candle adds every gradient into zeros).
///
/// Gradients equal those of the two ops, except that a zero input gradient may keep a sign
/// that candle's accumulation turns to `+0` (no value differs).
///
/// Shapes as [`conv2d`] and [`crate::fake_quant_act`]: `x` `[N, C_in, H, W]`, `w` `[C_out,
/// C_in/groups, K_h, K_w]`, `alpha` one element. Errors: those of both ops
/// ([`Error::InvalidBits`], [`Error::NonFinite`] for NaN/Inf in `x`, [`Error::InvalidParam`]
/// for α ≤ 0, [`Error::Shape`]).
pub fn conv2d_fq_input(
    x: &Tensor,
    w: &Tensor,
    alpha: &Tensor,
    bits: u32,
    params: &Conv2dParams,
) -> Result<Tensor> {
    check_act_args(alpha, bits)?;
    Geom::new(x.dims(), w.dims(), params)?;
    let x = prepare(x, OP)?;
    let w = prepare(w, OP)?;
    let alpha = prepare(alpha, AOP)?;
    let err = ErrSlot::default();
    let op = Conv2dFqOp {
        params: *params,
        bits,
        err: err.clone(),
    };
    x.apply_op3(&w, &alpha, op).map_err(|e| take(&err, e))
}

/// Output spatial size `(H_out, W_out)` of [`conv2d`] for input `[.., H, W]` and kernel
/// `K_h × K_w`. Errors as [`conv2d`].
pub fn conv2d_output_hw(
    input_hw: (usize, usize),
    kernel_hw: (usize, usize),
    params: &Conv2dParams,
) -> Result<(usize, usize)> {
    let g = Geom::new(
        &[1, params.groups, input_hw.0, input_hw.1],
        &[params.groups, 1, kernel_hw.0, kernel_hw.1],
        params,
    )?;
    Ok((g.oh, g.ow))
}

/// Phase timings for profiling (not part of the API): `(phase, seconds per call, GFLOP)`.
#[doc(hidden)]
pub fn __profile(
    x: &[usize],
    w: &[usize],
    p: &Conv2dParams,
    timer: &mut dyn FnMut(&mut dyn FnMut()) -> f64,
) -> Result<Vec<(&'static str, f64, f64)>> {
    let g = Geom::new(x, w, p)?;
    let xs = vec![0.5f32; x.iter().product()];
    let ws = vec![0.25f32; w.iter().product()];
    let dy = vec![1f32; g.n * g.out_img()];
    let gf = 2.0 * (g.n * g.cout * g.ohw * g.kdim) as f64 / 1e9;
    let mut general = Vec::new();
    if Direct::new(&g).is_some() {
        general = vec![
            (
                "fwd (im2col)",
                timer(&mut || drop(conv_forward_with(&xs, &ws, &g, None, None))),
                gf,
            ),
            (
                "dx (im2col)",
                timer(&mut || {
                    drop(conv_backward_with(
                        &xs, &ws, &dy, &g, true, false, true, None,
                    ))
                }),
                gf,
            ),
            (
                "dw (im2col)",
                timer(&mut || {
                    drop(conv_backward_with(
                        &xs, &ws, &dy, &g, false, true, true, None,
                    ))
                }),
                gf,
            ),
        ];
    }
    Ok(general
        .into_iter()
        .chain([
            ("fwd", timer(&mut || drop(conv_forward(&xs, &ws, &g))), gf),
            (
                "bwd",
                timer(&mut || drop(conv_backward(&xs, &ws, &dy, &g, true, true))),
                2.0 * gf,
            ),
            (
                "dx",
                timer(&mut || drop(conv_backward(&xs, &ws, &dy, &g, true, false))),
                gf,
            ),
            (
                "dw",
                timer(&mut || drop(conv_backward(&xs, &ws, &dy, &g, false, true))),
                gf,
            ),
        ])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{rel_err, tensor, var, vec};
    use candle_core::Var;
    use proptest::prelude::*;

    /// Forward and both gradients (of `Σ y·r` for a random `r`) of ours vs a direct f64
    /// loop, and vs candle's conv2d + autograd wherever candle's backward supports the shape.
    fn check(xs: [usize; 4], ws: [usize; 4], p: Conv2dParams, seed: u64) {
        let x = var(seed, &xs);
        let w = var(seed + 1, &ws);
        let ours = conv2d(x.as_tensor(), w.as_tensor(), &p).unwrap();
        let refy = reference::conv2d(x.as_tensor(), w.as_tensor(), &p).unwrap();
        assert_eq!(ours.dims(), refy.dims());
        let r = tensor(seed + 2, ours.dims());
        let (dy, dx, dw) = reference::conv2d_direct(x.as_tensor(), w.as_tensor(), &r, &p).unwrap();
        assert!(
            rel_err(&ours, &refy, 1e-6) <= 1e-5,
            "forward vs candle {xs:?} {ws:?} {p:?}"
        );
        assert!(
            rel_err(&ours, &dy, 1e-6) <= 1e-5,
            "forward vs direct {xs:?} {ws:?} {p:?}"
        );
        let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // The public backward gives the autograd's values for the same output gradient.
        let (bx, bw) = conv2d_backward(x.as_tensor(), w.as_tensor(), &r, &p).unwrap();
        assert_eq!(
            vec(&bx),
            vec(go.get(x.as_tensor()).unwrap()),
            "conv2d_backward dx"
        );
        assert_eq!(
            vec(&bw),
            vec(go.get(w.as_tensor()).unwrap()),
            "conv2d_backward dw"
        );
        let gr = (refy * &r).unwrap().sum_all().unwrap().backward().ok();
        // Gradient errors are measured against the sums of the terms' magnitudes (the same
        // gradients of |x|, |w| and |r|), the scale f32 rounding works on: a weight gradient
        // that nearly cancels is otherwise judged against its tiny result.
        let abs = |t: &Tensor| t.abs().unwrap();
        let (_, sx, sw) =
            reference::conv2d_direct(&abs(x.as_tensor()), &abs(w.as_tensor()), &abs(&r), &p)
                .unwrap();
        let max = |t: &Tensor| vec(t).iter().fold(1e-6f32, |m, v| m.max(*v));
        for (name, v, direct, scale) in [("x", &x, &dx, max(&sx)), ("w", &w, &dw, max(&sw))] {
            let a = go.get(v.as_tensor()).unwrap();
            let e = rel_err(a, direct, scale);
            assert!(
                e <= 1e-4,
                "grad {name} vs direct: rel err {e} for {xs:?} {ws:?} {p:?}"
            );
            if let Some(gr) = &gr {
                let e = rel_err(a, gr.get(v.as_tensor()).unwrap(), scale);
                assert!(
                    e <= 1e-4,
                    "grad {name} vs candle: rel err {e} for {xs:?} {ws:?} {p:?}"
                );
            }
        }
    }

    #[test]
    fn backward_rejects_a_gradient_of_the_wrong_shape() {
        let (x, w) = (tensor(1, &[2, 3, 5, 5]), tensor(2, &[4, 3, 3, 3]));
        let p = Conv2dParams::new(1, 1);
        let dy = tensor(3, &[2, 4, 5, 4]);
        let e = conv2d_backward(&x, &w, &dy, &p).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("[2, 4, 5, 5]"),
            "{e}"
        );
        let (dx, dw) = conv2d_backward(&x, &w, &tensor(3, &[2, 4, 5, 5]), &p).unwrap();
        assert_eq!((dx.dims(), dw.dims()), (x.dims(), w.dims()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn matches_candle(
            n in 1usize..4, groups in 1usize..4, depthwise in any::<bool>(),
            cin_g in 1usize..4, cout_g in 1usize..4, kh in 1usize..4, kw in 1usize..4,
            h in 1usize..10, w in 1usize..10, stride in 1usize..3, padding in 0usize..3,
            dilation in 1usize..3, seed in 0u64..1000,
        ) {
            let (cin_g, cout_g) = if depthwise { (1, 1) } else { (cin_g, cout_g) };
            let p = Conv2dParams { stride, padding, dilation, groups };
            let xs = [n, cin_g * groups, h, w];
            let ws = [cout_g * groups, cin_g, kh, kw];
            prop_assume!(Geom::new(&xs, &ws, &p).is_ok());
            check(xs, ws, p, seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// The slice API against the slow reference, one image at a time, with odd sizes and
        /// zero input or output channels; bitwise equal to the tensor op's images.
        #[test]
        fn image_slices_match_the_reference(
            n in 1usize..3, groups in 1usize..3, cin_g in 0usize..4, cout_g in 0usize..4,
            kh in 1usize..4, kw in 1usize..4, h in 1usize..10, w in 1usize..10,
            stride in 1usize..3, padding in 0usize..3, seed in 0u64..1000,
        ) {
            let p = Conv2dParams { stride, padding, dilation: 1, groups };
            let xs = [n, cin_g * groups, h, w];
            let ws = [cout_g * groups, cin_g, kh, kw];
            prop_assume!(Geom::new(&xs, &ws, &p).is_ok());
            let x = tensor(seed, &xs);
            let wt = tensor(seed + 1, &ws);
            let (xv, wv) = (vec(&x), vec(&wt));
            let refy = reference::conv2d_direct(&x, &wt, &Tensor::zeros(
                conv2d(&x, &wt, &p).unwrap().dims(), candle_core::DType::F32, x.device()).unwrap(), &p)
                .unwrap().0;
            let ry = vec(&refy);
            let ours = vec(&conv2d(&x, &wt, &p).unwrap());
            let per_in = xs[1] * h * w;
            let per_out = ry.len() / n;
            let (mut col, mut out) = (Vec::new(), vec![7.0; 3]);
            for i in 0..n {
                let shape = conv2d_image(&xv[i * per_in..(i + 1) * per_in], [xs[1], h, w],
                    &wv, ws, &p, &mut col, &mut out).unwrap();
                prop_assert_eq!(shape[0] * shape[1] * shape[2], per_out);
                prop_assert_eq!(&out[..], &ours[i * per_out..(i + 1) * per_out]);
                for (a, b) in out.iter().zip(&ry[i * per_out..(i + 1) * per_out]) {
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// The direct "same"-conv path (AVX2 only; portable keeps the general path): forward
        /// bitwise equal to im2col + GEMM, both gradients against the f64 reference and the
        /// general path; odd sizes, 1×1 images, zero channels, batch 1.
        #[test]
        fn direct_path_matches_reference(
            n in 1usize..12, cin in 0usize..6, cout in 0usize..6, k5 in any::<bool>(),
            h in 1usize..10, w in 1usize..10, seed in 0u64..1000,
        ) {
            let k = if k5 { 5 } else { 3 };
            let p = Conv2dParams::new(1, k / 2);
            let (xs, ws) = ([n, cin, h, w], [cout, cin, k, k]);
            let g = Geom::new(&xs, &ws, &p).unwrap();
            let d = Direct::new(&g);
            let avx2 = cfg!(target_arch = "x86_64") && crate::simd::level() >= Level::Avx2;
            prop_assert_eq!(d.is_some(), avx2);
            let portable = crate::simd::with_level(Level::Portable, || Direct::new(&g).is_none());
            prop_assert!(portable);
            let Some(d) = d else { return Ok(()) };
            let x = tensor(seed, &xs);
            let wt = tensor(seed + 1, &ws);
            let (xv, wv) = (vec(&x), vec(&wt));
            let fast = conv_forward_with(&xv, &wv, &g, Some(&d), None);
            let slow = conv_forward_with(&xv, &wv, &g, None, None);
            let differ = fast.iter().zip(&slow).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            prop_assert_eq!(differ, 0);
            let r = tensor(seed + 2, &[n, cout, h, w]);
            let (ry, rdx, rdw) = reference::conv2d_direct(&x, &wt, &r, &p).unwrap();
            for (a, b) in fast.iter().zip(&vec(&ry)) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
            let rv = vec(&r);
            let (dx, dw) = conv_backward_with(&xv, &wv, &rv, &g, true, true, false, None);
            let (gx, gw) = conv_backward_with(&xv, &wv, &rv, &g, true, true, true, None);
            let (dx, dw, gx, gw) = (dx.unwrap(), dw.unwrap(), gx.unwrap(), gw.unwrap());
            for (ours, general, want) in [(&dx, &gx, vec(&rdx)), (&dw, &gw, vec(&rdw))] {
                prop_assert_eq!(ours.len(), want.len());
                for ((a, b), c) in ours.iter().zip(&want).zip(general) {
                    prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
                    prop_assert!((a - c).abs() <= 1e-4 * (1.0 + c.abs()), "{a} vs general {c}");
                }
            }
            // Only one of the two gradients: the same bits as both together.
            let (dx1, _) = conv_backward_with(&xv, &wv, &rv, &g, true, false, false, None);
            let (_, dw1) = conv_backward_with(&xv, &wv, &rv, &g, false, true, false, None);
            prop_assert!(dx1.unwrap() == dx && dw1.unwrap() == dw);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
        /// The direct path's two forms (grid and gathered, see [`Direct`]) give the same bits:
        /// the forward (batch and one image at a time, as evaluation runs it, also on a
        /// quantized input) equal to im2col + GEMM, and both gradients; channel counts across
        /// the tiles' remainders (zero included), odd sizes, 3×3 and 5×5.
        #[test]
        fn direct_forms_give_the_same_bits(
            n in 1usize..12, cin in 0usize..40, cout in 0usize..40, k5 in any::<bool>(),
            h in 1usize..12, w in 1usize..12, seed in 0u64..1000,
        ) {
            // n up to 11: the backward's last chunk of images is shorter than a full one.
            let k = if k5 { 5 } else { 3 };
            let p = Conv2dParams::new(1, k / 2);
            let (xs, ws) = ([n, cin, h, w], [cout, cin, k, k]);
            let g = Geom::new(&xs, &ws, &p).unwrap();
            if Direct::new(&g).is_none() {
                return Ok(());
            }
            let (xv, wv) = (vec(&tensor(seed, &xs)), vec(&tensor(seed + 1, &ws)));
            let rv = vec(&tensor(seed + 2, &[n, cout, h, w]));
            let q = ActQ::new(1.5, 3);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let run = |gathered: bool| {
                with_form(gathered, || {
                    let d = Direct::new(&g).unwrap();
                    prop_assert_eq!((d.fwd_gathered, d.bwd_gathered), (gathered, gathered));
                    let y = conv_forward_with(&xv, &wv, &g, Some(&d), None);
                    let yq = conv_forward_with(&xv, &wv, &g, Some(&d), Some(q));
                    let (dx, dw) = conv_backward_with(&xv, &wv, &rv, &g, true, true, false, None);
                    let mut images = Vec::new();
                    let (mut col, mut out) = (Vec::new(), Vec::new());
                    for i in 0..n {
                        let xi = &xv[i * g.in_img()..(i + 1) * g.in_img()];
                        conv2d_image(xi, [cin, h, w], &wv, ws, &p, &mut col, &mut out).unwrap();
                        images.extend_from_slice(&out);
                    }
                    let (dx, dw) = (dx.unwrap(), dw.unwrap());
                    // Outputs are written without zeroing (NaN-poisoned in tests): an element
                    // both forms left unwritten would show here.
                    for (what, v) in [("y", &y), ("yq", &yq), ("dx", &dx), ("dw", &dw), ("images", &images)] {
                        prop_assert!(v.iter().all(|x| x.is_finite()), "{} not finite", what);
                    }
                    Ok([bits(&y), bits(&yq), bits(&dx), bits(&dw), bits(&images)])
                })
            };
            let (grid, gathered) = (run(false)?, run(true)?);
            let general = bits(&conv_forward_with(&xv, &wv, &g, None, None));
            prop_assert!(grid[0] == general, "grid forward differs from im2col");
            for (what, (a, b)) in ["forward", "quantized forward", "dx", "dw", "image"]
                .iter()
                .zip(grid.iter().zip(&gathered))
            {
                prop_assert!(a == b, "{} differs between the forms", what);
            }
            prop_assert!(gathered[4] == gathered[0], "one image at a time differs from the batch");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
        /// A strided "same"-padded conv's gathered forward (batch, quantized input, and one
        /// image at a time through `PackedConv2d`) has the bits of im2col + GEMM; strides 2–3,
        /// odd sizes, zero channels, 3×3 and 5×5.
        #[test]
        fn strided_gathered_forward_has_the_bits_of_im2col(
            n in 1usize..4, cin in 0usize..24, cout in 0usize..40, k5 in any::<bool>(),
            stride in 2usize..4, h in 1usize..14, w in 1usize..14, seed in 0u64..1000,
        ) {
            let k = if k5 { 5 } else { 3 };
            let p = Conv2dParams::new(stride, k / 2);
            let (xs, ws) = ([n, cin, h, w], [cout, cin, k, k]);
            let Ok(g) = Geom::new(&xs, &ws, &p) else { return Ok(()) };
            let Some(d) = with_form(true, || Direct::forward(&g)) else {
                prop_assert!(crate::simd::level() < Level::Avx2);
                return Ok(());
            };
            prop_assert!(d.fwd_gathered);
            let (xv, wv) = (vec(&tensor(seed, &xs)), vec(&tensor(seed + 1, &ws)));
            let q = ActQ::new(1.5, 3);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let fast = bits(&conv_forward_with(&xv, &wv, &g, Some(&d), None));
            let slow = bits(&conv_forward_with(&xv, &wv, &g, None, None));
            prop_assert!(fast == slow, "forward differs from im2col");
            let fq = bits(&conv_forward_with(&xv, &wv, &g, Some(&d), Some(q)));
            let fq_slow = bits(&conv_forward_with(&xv, &wv, &g, None, Some(q)));
            prop_assert!(fq == fq_slow, "quantized forward differs from im2col");
            let packed = with_form(true, || PackedConv2d::new(&wv, ws, &p, [cin, h, w])).unwrap();
            let (mut col, mut out, mut images) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                packed.image(&xv[i * g.in_img()..(i + 1) * g.in_img()], &mut col, &mut out).unwrap();
                images.extend_from_slice(&out);
            }
            prop_assert!(bits(&images) == slow, "one image at a time differs");
        }
    }

    /// The direct path's gradients do not depend on the number of threads.
    /// The fused quantize-then-convolve op against `fake_quant_act` + `conv2d`: the same
    /// output bits, the same weight- and α-gradient bits, the same input-gradient values, on
    /// the direct path (3×3 and 5×5 "same"), im2col (stride 2, 1×1, groups) and an empty
    /// batch.
    #[test]
    fn fused_input_quantization_matches_the_two_ops() {
        let cases: [([usize; 4], [usize; 4], Conv2dParams); 6] = [
            ([3, 4, 9, 7], [5, 4, 3, 3], Conv2dParams::new(1, 1)),
            ([2, 3, 8, 8], [4, 3, 5, 5], Conv2dParams::new(1, 2)),
            ([3, 4, 9, 7], [6, 4, 3, 3], Conv2dParams::new(2, 1)),
            ([2, 5, 6, 6], [3, 5, 1, 1], Conv2dParams::new(1, 0)),
            (
                [2, 4, 7, 7],
                [4, 2, 3, 3],
                Conv2dParams::new(1, 1).with_groups(2),
            ),
            ([0, 4, 5, 5], [4, 4, 3, 3], Conv2dParams::new(1, 1)),
        ];
        for (ci, (xs, ws, p)) in cases.into_iter().enumerate() {
            for bits in [2, 4, 8] {
                let seed = 40 + ci as u64;
                // Inputs below zero, at zero, inside and above the clip range 0.9.
                let xt = (tensor(seed, &xs) * 1.5).unwrap();
                let x = Var::from_tensor(&xt).unwrap();
                let w = var(seed + 1, &ws);
                let a = Var::new(&[0.9f32], &candle_core::Device::Cpu).unwrap();
                let fused =
                    conv2d_fq_input(x.as_tensor(), w.as_tensor(), a.as_tensor(), bits, &p).unwrap();
                let xq = crate::fake_quant_act(x.as_tensor(), a.as_tensor(), bits).unwrap();
                let two = conv2d(&xq, w.as_tensor(), &p).unwrap();
                let bits_of = |t: &Tensor| vec(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits_of(&fused),
                    bits_of(&two),
                    "forward, case {ci}, {bits} bits"
                );
                if xs[0] == 0 {
                    continue;
                }
                let r = tensor(seed + 2, fused.dims());
                let gf = (&fused * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gt = (&two * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let get = |g: &candle_core::backprop::GradStore, v: &Var| {
                    vec(g.get(v.as_tensor()).unwrap())
                };
                assert_eq!(get(&gf, &x), get(&gt, &x), "dx, case {ci}, {bits} bits");
                let wb = |g: &candle_core::backprop::GradStore, v: &Var| {
                    get(g, v).iter().map(|f| f.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(wb(&gf, &w), wb(&gt, &w), "dw, case {ci}, {bits} bits");
                assert_eq!(wb(&gf, &a), wb(&gt, &a), "dalpha, case {ci}, {bits} bits");
            }
        }
        let x = tensor(1, &[1, 2, 4, 4]);
        let w = tensor(2, &[2, 2, 3, 3]);
        let one = |v: f32| Tensor::new(&[v], &candle_core::Device::Cpu).unwrap();
        let p = Conv2dParams::new(1, 1);
        assert!(matches!(
            conv2d_fq_input(&x, &w, &one(0.5), 9, &p),
            Err(Error::InvalidBits { .. })
        ));
        assert!(matches!(
            conv2d_fq_input(&x, &w, &one(0.0), 4, &p),
            Err(Error::InvalidParam { .. })
        ));
        let nan = x.broadcast_mul(&one(f32::NAN)).unwrap();
        assert!(matches!(
            conv2d_fq_input(&nan, &w, &one(0.5), 4, &p),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            conv2d_fq_input(&x, &tensor(3, &[2, 3, 3, 3]), &one(0.5), 4, &p),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn direct_gradients_do_not_depend_on_threads() {
        let (xs, ws) = ([19, 8, 7, 9], [6, 8, 3, 3]);
        let g = Geom::new(&xs, &ws, &Conv2dParams::new(1, 1)).unwrap();
        let (x, w, dy) = (
            vec(&tensor(31, &xs)),
            vec(&tensor(32, &ws)),
            vec(&tensor(33, &[19, 6, 7, 9])),
        );
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            pool.install(|| conv_backward(&x, &w, &dy, &g, true, true))
        };
        let (a, b) = (run(1), run(3));
        assert!(a.0 == b.0 && a.1 == b.1);
    }

    #[test]
    fn image_slice_errors() {
        let p = Conv2dParams::new(1, 1);
        let (mut col, mut out) = (Vec::new(), Vec::new());
        let e = conv2d_image(
            &[0.0; 5],
            [1, 2, 2],
            &[0.0; 9],
            [1, 1, 3, 3],
            &p,
            &mut col,
            &mut out,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("input slice holds 5"), "{e}");
        let e = conv2d_image(
            &[0.0; 4],
            [1, 2, 2],
            &[0.0; 9],
            [1, 2, 3, 3],
            &p,
            &mut col,
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }

    #[test]
    fn resnet_like_shapes() {
        check([3, 16, 14, 14], [32, 16, 3, 3], Conv2dParams::new(2, 1), 7);
        check([2, 8, 7, 7], [8, 8, 3, 3], Conv2dParams::new(1, 1), 8);
        check(
            [2, 6, 5, 5],
            [6, 1, 3, 3],
            Conv2dParams::new(1, 1).with_groups(6),
            9,
        );
        check([2, 6, 5, 7], [4, 6, 1, 1], Conv2dParams::default(), 10);
        // Batch large enough for the per-image parallel path.
        check([17, 3, 6, 6], [5, 3, 3, 3], Conv2dParams::new(1, 1), 11);
    }

    /// The forward of each image is bitwise the same alone (serial path) and inside a batch
    /// large enough for the per-image parallel path, for plain, strided, pointwise and
    /// depthwise convs.
    #[test]
    fn images_do_not_depend_on_the_batch() {
        for (ws, p) in [
            ([16, 16, 3, 3], Conv2dParams::new(1, 1)),
            ([32, 16, 3, 3], Conv2dParams::new(2, 1)),
            ([8, 16, 1, 1], Conv2dParams::default()),
            ([16, 1, 3, 3], Conv2dParams::new(1, 1).with_groups(16)),
        ] {
            let n = 19;
            let x = tensor(21, &[n, 16, 9, 9]);
            let w = tensor(22, &ws);
            let full = vec(&conv2d(&x, &w, &p).unwrap());
            let per = full.len() / n;
            for i in 0..n {
                let one = vec(&conv2d(&x.narrow(0, i, 1).unwrap(), &w, &p).unwrap());
                let same = one.iter().zip(&full[i * per..(i + 1) * per]);
                let differ = same.filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "image {i} of {n}, weight {ws:?} {p:?}");
            }
        }
    }

    #[test]
    fn shape_errors() {
        let x = tensor(1, &[2, 4, 5, 5]);
        let bad_groups = conv2d(
            &x,
            &tensor(2, &[4, 4, 3, 3]),
            &Conv2dParams::default().with_groups(2),
        );
        assert!(matches!(bad_groups, Err(Error::Shape { .. })));
        let too_big = conv2d(&x, &tensor(2, &[4, 4, 7, 7]), &Conv2dParams::default());
        assert!(matches!(too_big, Err(Error::Shape { .. })));
        let rank = conv2d(
            &tensor(1, &[4, 5, 5]),
            &tensor(2, &[4, 4, 3, 3]),
            &Conv2dParams::default(),
        );
        assert!(matches!(rank, Err(Error::Shape { .. })));
        let stride0 = conv2d(&x, &tensor(2, &[4, 4, 3, 3]), &Conv2dParams::new(0, 1));
        assert!(matches!(stride0, Err(Error::InvalidParam { .. })));
        let f64x = x.to_dtype(candle_core::DType::F64).unwrap();
        let dt = conv2d(&f64x, &tensor(2, &[4, 4, 3, 3]), &Conv2dParams::default());
        assert!(matches!(dt, Err(Error::Unsupported { .. })));
    }

    #[test]
    fn output_size() {
        assert_eq!(
            conv2d_output_hw((28, 28), (3, 3), &Conv2dParams::new(2, 1)).unwrap(),
            (14, 14)
        );
        assert_eq!(
            conv2d_output_hw((7, 7), (3, 3), &Conv2dParams::new(2, 1)).unwrap(),
            (4, 4)
        );
    }
}
