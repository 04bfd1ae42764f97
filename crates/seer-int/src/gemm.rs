//! The `u8 × i8 → i32` GEMM: `C[m, n] = Σ_k A[m, k] · W[n, k]`, run-time dispatched,
//! cache-blocked and parallel (rayon).
//!
//! `A` holds unsigned activation codes (one row per output pixel, NHWC im2col rows), `W`
//! signed weight codes (one row per output channel), so both operands are contiguous along
//! the reduction `k`. Weights are rearranged once per call into a [`WeightPanel`]: panels of
//! [`NR`] = 16 output channels, `k` in groups of 4, each group of a panel 64 bytes
//! (`[channel][k mod 4]`) — exactly one AVX-512 register, or two AVX2 registers, whose
//! 32-bit lanes are the 16 channels. The kernels broadcast 4 consecutive activation bytes
//! of one row to every lane and multiply-accumulate them into 16 channel sums.
//!
//! Paths ([`Isa`]) and their exactness:
//! - **AVX-512 VNNI**: `vpdpbusd` (u8×i8 products summed 4 at a time into i32, never
//!   saturating): exact for all codes. 8 rows × 16 channels per micro-tile.
//! - **AVX2**: `vpmaddubsw` multiplies u8×i8 and adds adjacent pairs into a *saturating*
//!   i16. With `A ≤ a_max` and `|W| ≤ w_max` (measured on the actual operands), a pair sum
//!   is bounded by `P = 2·a_max·w_max`. If `P ≤ 32767` no saturation can occur; then `s =
//!   ⌊32767 / P⌋` pair sums can even be accumulated in i16 before widening to i32 with
//!   `vpmaddwd` (kernel `avx2-i16`, used when `s ≥ 4`, i.e. low bit-widths: 64 MACs per
//!   multiply uop pair instead of 32), otherwise every pair sum is widened at once (kernel
//!   `avx2-i32`). If `P > 32767` (8-bit activations × weights beyond ±64, e.g. int8×int8) the
//!   kernel `avx2-wide` sign-extends both operands to i16 and uses `vpmaddwd` only, which
//!   cannot overflow. So every AVX2 result is exact; `tests::avx2_saturation_boundary`
//!   checks the boundary cases.
//! - **Portable**: the same blocking with plain Rust loops (i32 accumulation).
//!
//! Accumulation is in i32: the call fails (never wraps) if `k·a_max·w_max` exceeds
//! `i32::MAX`.
//!
//! [`WeightPanel::from_packed`] unpacks bit-packed [`PackedWeights`] into the panel in
//! `O(n·k)`. The interpreter does that once per node, on the first forward call, and keeps
//! the panel ([`IntModel::resident_bytes`](crate::IntModel::resident_bytes) counts it);
//! files keep the packed form. The `int` bench still reports what unpacking on every call
//! would cost ("unpack share").

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::Isa;
use crate::error::{Result, check_len, invalid};
use crate::pack::{PackedWeights, unpack_signed_into};

/// Output channels per panel (lanes of one AVX-512 register).
pub const NR: usize = 16;
/// Reduction-dimension block (in `k`), a multiple of 4. A `k` of up to 1024 runs in one
/// pass, so each output tile is flushed once: against 256, this raised the exact int8 GEMM
/// on 1024³ by ≈ 10% on AVX2 and ≈ 20% on VNNI (docs/benchmarks.md, session 19); a panel
/// block (16 KiB i8, 32 KiB i16) then streams from L2 rather than staying in L1.
const KC: usize = 1024;
/// Target rows per parallel task (rounded to the micro-kernel's row count).
const MC: usize = 64;
/// Rows per micro-tile of the `avx2-wide` kernel (12 accumulators; an implicit-GEMM
/// convolution also runs shorter strips, see [`micro_wide`]).
pub(crate) const WIDE_MR: usize = 6;
/// Rows per micro-tile of the `avx2-i16` kernel in the fused convolution paths (12 i16
/// accumulators; see [`micro_i16`]). The unfused GEMM keeps 4-row tiles.
pub(crate) const I16_MR: usize = 6;

/// Weights arranged for the micro-kernels: `n` output channels padded to panels of [`NR`],
/// `k` padded to a multiple of 4 with zeros. Layout of `data` (i8):
/// `[n.div_ceil(16)][kp/4][16 channels][4 k]`.
#[derive(Debug)]
pub struct WeightPanel {
    n: usize,
    k: usize,
    kp: usize,
    wmax: u32,
    data: Vec<i8>,
    /// The same codes as i16, `[panels][kp/2][16][2]`, built on first use by `avx2-wide`.
    wide: OnceLock<Vec<i16>>,
}

impl WeightPanel {
    /// Builds the panel from row-major codes `w` (`[n, k]`, one row per output channel).
    ///
    /// Errors: `ShapeMismatch` if `w.len() != n·k`; `InvalidArgument` if `n` or `k` is 0 or a
    /// code is −128 (outside every symmetric range).
    pub fn from_codes(w: &[i8], n: usize, k: usize) -> Result<Self> {
        check_len("weight codes", n * k, w.len())?;
        if n == 0 || k == 0 {
            return Err(invalid("weight panel", format!("empty shape [{n}, {k}]")));
        }
        if w.contains(&i8::MIN) {
            return Err(invalid(
                "weight codes",
                "code -128 is outside the symmetric range",
            ));
        }
        let mut p = Self::empty(n, k);
        for (r, row) in w.chunks_exact(k).enumerate() {
            p.put_row(r, row, None);
        }
        Ok(p)
    }

    /// Unpacks bit-packed weights into a panel (`n = rows`, `k = cols`).
    pub fn from_packed(w: &PackedWeights) -> Self {
        Self::from_packed_permuted(w, None)
    }

    /// Like [`from_packed`](Self::from_packed), but panel column `j` takes packed column
    /// `perm[j]` (used by convolution to reorder OIHW weights to the im2col order
    /// `(kh, kw, c_in)`). Panics if `perm.len() != cols` or an index is out of range.
    pub fn from_packed_permuted(w: &PackedWeights, perm: Option<&[usize]>) -> Self {
        let (n, k) = (w.rows(), w.cols());
        if let Some(p) = perm {
            assert_eq!(p.len(), k, "permutation length");
        }
        let mut p = Self::empty(n, k);
        let mut row = vec![0i8; k];
        for r in 0..n {
            unpack_signed_into(w.row(r), w.bits(), &mut row);
            p.put_row(r, &row, perm);
        }
        p
    }

    /// The same panel over `kp = k` rounded up to a multiple of 4 columns (the padding
    /// weights are zero), for activation rows zero-padded to `kp`: the micro-kernels then
    /// read every row strip in place instead of repacking it.
    pub fn with_padded_k(mut self) -> Self {
        self.k = self.kp;
        self
    }

    fn empty(n: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(4);
        let panels = n.div_ceil(NR);
        Self {
            n,
            k,
            kp,
            wmax: 0,
            data: vec![0; panels * kp * NR],
            wide: OnceLock::new(),
        }
    }

    fn put_row(&mut self, r: usize, row: &[i8], perm: Option<&[usize]>) {
        let (p, j) = (r / NR, r % NR);
        let base = p * self.kp * NR;
        for kk in 0..self.k {
            let q = match perm {
                Some(perm) => row[perm[kk]],
                None => row[kk],
            };
            self.wmax = self.wmax.max(q.unsigned_abs() as u32);
            self.data[base + ((kk / 4) * NR + j) * 4 + kk % 4] = q;
        }
    }

    /// The code of output channel `r`, reduction column `kk` (zero in the padding).
    pub fn code(&self, r: usize, kk: usize) -> i8 {
        let (p, j) = (r / NR, r % NR);
        self.data[p * self.kp * NR + ((kk / 4) * NR + j) * 4 + kk % 4]
    }

    /// Output channels `n`.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Reduction length `k`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Largest `|code|` in the panel.
    pub fn wmax(&self) -> u32 {
        self.wmax
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The reduction length padded to a multiple of 4 (the panel's stored length).
    pub(crate) fn kp(&self) -> usize {
        self.kp
    }

    /// Bytes held: the i8 panel, plus the i16 copy once the `avx2-wide` kernel built it.
    pub fn resident_bytes(&self) -> usize {
        self.data.len() + 2 * self.wide.get().map_or(0, Vec::len)
    }

    /// Pointer to panel `p`, starting at reduction index `k0` (a multiple of 4).
    fn ptr_i8(&self, p: usize, k0: usize) -> *const i8 {
        self.data[p * self.kp * NR + k0 * NR..].as_ptr()
    }

    fn wide(&self) -> &[i16] {
        self.wide.get_or_init(|| {
            let mut out = vec![0i16; self.data.len()];
            for p in 0..self.panels() {
                let base = p * self.kp * NR;
                for kk in 0..self.kp {
                    for j in 0..NR {
                        out[base + ((kk / 2) * NR + j) * 2 + kk % 2] =
                            self.data[base + ((kk / 4) * NR + j) * 4 + kk % 4] as i16;
                    }
                }
            }
            out
        })
    }
}

/// The micro-kernel a GEMM call runs (chosen from the ISA and the operands' ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI `vpdpbusd`.
    Vnni,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` per step (no saturation possible).
    Avx2I32,
    /// AVX2 `vpmaddubsw` accumulated in i16 for `s` steps, then widened.
    Avx2I16 {
        /// Steps (groups of 4 `k`) between widenings.
        s: usize,
    },
    /// AVX2 `vpmaddwd` on operands sign-extended to i16 (exact for any codes).
    Avx2Wide,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// Rows per micro-tile (of the unfused GEMM; the fused paths run `avx2-i16` in strips of
    /// [`I16_MR`] rows).
    pub(crate) fn mr(self) -> usize {
        match self {
            Kernel::Vnni => 8,
            Kernel::Avx2Wide => WIDE_MR,
            _ => 4,
        }
    }

    /// Whether the kernel reads its A operand as i16 codes (the u8 codes zero-extended, 4 of
    /// them = 8 bytes per group) instead of u8: only [`Kernel::Avx2Wide`].
    pub(crate) fn wide_a(self) -> bool {
        matches!(self, Kernel::Avx2Wide)
    }

    /// Picks the kernel for `isa` given the operands' largest activation code and |weight|.
    pub fn choose(isa: Isa, amax: u32, wmax: u32) -> Kernel {
        match isa {
            Isa::Avx512Vnni => Kernel::Vnni,
            Isa::Portable => Kernel::Portable,
            Isa::Avx2 => {
                let pair = 2 * amax * wmax;
                if pair == 0 {
                    Kernel::Avx2I16 { s: usize::MAX }
                } else if pair > i16::MAX as u32 {
                    Kernel::Avx2Wide
                } else {
                    let s = (i16::MAX as u32 / pair) as usize;
                    if s >= 4 {
                        Kernel::Avx2I16 { s }
                    } else {
                        Kernel::Avx2I32
                    }
                }
            }
        }
    }
}

/// `C = A · Wᵀ` with the best path for this CPU; see [`gemm_u8i8_with`].
pub fn gemm_u8i8(a: &[u8], m: usize, w: &WeightPanel, c: &mut [i32]) -> Result<()> {
    gemm_u8i8_with(Isa::detect(), a, m, w, c).map(|_| ())
}

/// `C[m, n] = Σ_k A[m, k] · W[n, k]` on path `isa`; returns the micro-kernel used.
///
/// `a`: `[m, k]` row-major u8 activation codes; `w`: weights (`n × k`) as a panel; `c`:
/// `[m, n]` row-major i32, overwritten. Exact (no saturation, no wrap-around) on every path.
///
/// Errors: `ShapeMismatch` for wrong buffer lengths; `InvalidArgument` if `isa` is not
/// available on this CPU or if `k·max(A)·max|W|` could overflow i32.
pub fn gemm_u8i8_with(
    isa: Isa,
    a: &[u8],
    m: usize,
    w: &WeightPanel,
    c: &mut [i32],
) -> Result<Kernel> {
    let (n, k) = (w.n, w.k);
    check_len("gemm activations", m * k, a.len())?;
    check_len("gemm output", m * n, c.len())?;
    if !isa.is_available() {
        return Err(invalid(
            "gemm",
            format!(
                "instruction set {} is not available on this CPU",
                isa.name()
            ),
        ));
    }
    let amax = a.iter().copied().max().unwrap_or(0) as u32;
    if (k as u64) * amax as u64 * w.wmax as u64 > i32::MAX as u64 {
        return Err(invalid(
            "gemm",
            format!(
                "k = {k} with codes up to {amax}×{} may overflow i32",
                w.wmax
            ),
        ));
    }
    let kernel = Kernel::choose(isa, amax, w.wmax);
    if m == 0 {
        return Ok(kernel);
    }
    let mr = kernel.mr();
    // Row blocks of whole strips, as even as possible (their strip counts differ by at most
    // one), so that no thread is left with a long last block.
    let strips = m.div_ceil(mr);
    let m_blocks = strips.div_ceil(MC.div_ceil(mr));
    let block_rows = |mb: usize| {
        (mb * strips / m_blocks * mr).min(m)..((mb + 1) * strips / m_blocks * mr).min(m)
    };
    let panels = w.panels();
    let target = 4 * rayon::current_num_threads();
    let n_groups = target.div_ceil(m_blocks).clamp(1, panels);
    let panels_per_group = panels.div_ceil(n_groups);
    let n_groups = panels.div_ceil(panels_per_group);
    let cptr = SyncPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (mb, ng) = (t / n_groups, t % n_groups);
        let rows = block_rows(mb);
        let pans = ng * panels_per_group..((ng + 1) * panels_per_group).min(panels);
        // SAFETY: tasks write disjoint (row range × panel range) tiles of `c`, which has
        // m·n elements (checked above) and outlives the parallel loop.
        unsafe { block(kernel, a, k, w, rows, pans, cptr.get(), n) };
    };
    if m_blocks * n_groups == 1 {
        task(0);
    } else {
        (0..m_blocks * n_groups).into_par_iter().for_each(task);
    }
    Ok(kernel)
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut i32);
// SAFETY: used only to hand disjoint output tiles to rayon tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut i32 {
        self.0
    }
}

/// Computes rows `rows` × panels `pans` of C.
///
/// A is read in place (row stride `k`, 4-byte groups) when `k` is a multiple of 4 and the
/// strip has all its rows; otherwise each strip is packed into a small buffer first. For the
/// `avx2-wide` kernel every strip of a reduction block is widened once to i16 rows (zero
/// padded) and reused by every panel of the task.
///
/// # Safety
/// `c` must point to an `[m, n]` i32 buffer containing the tile, not written concurrently;
/// the kernel's ISA must be available.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    kernel: Kernel,
    a: &[u8],
    k: usize,
    w: &WeightPanel,
    rows: std::ops::Range<usize>,
    pans: std::ops::Range<usize>,
    c: *mut i32,
    n: usize,
) {
    let mr = kernel.mr();
    let strips = rows.len().div_ceil(mr);
    let wide = kernel.wide_a();
    let wide_w = if wide { Some(w.wide()) } else { None };
    let mut apack_u8: Vec<u8> = Vec::new();
    let mut apack_i16: Vec<i16> = Vec::new();
    let mut tile = [0i32; 8 * NR];
    // A task that holds every panel owns its rows of C outright: the wide kernel then writes
    // (and accumulates over reduction blocks) its full tiles there directly, and the other
    // tiles are written back through the same slice.
    // SAFETY: rows `rows` × all n columns lie inside c (m·n elements) and no other task
    // writes them (tasks split rows, or panels when `pans` is not all of them).
    let mut crows = (wide && pans.start == 0 && pans.end == w.panels())
        .then(|| unsafe { std::slice::from_raw_parts_mut(c.add(rows.start * n), rows.len() * n) });
    let mut k0 = 0;
    while k0 < w.kp {
        let kc = KC.min(w.kp - k0);
        let kend = (k0 + kc).min(k);
        // Pack the strips that cannot be read in place as `[k/4][mr][4]`, zero-padded; for
        // the wide kernel all strips as i16 rows `[mr][kc]`.
        let direct =
            |s: usize| !wide && k.is_multiple_of(4) && rows.start + (s + 1) * mr <= rows.end;
        if wide {
            // Every element is written: the rows' codes, zero tails and zero padding rows.
            if apack_i16.len() < strips * mr * kc {
                apack_i16.resize(strips * mr * kc, 0);
            }
            for (i, r) in rows.clone().enumerate() {
                let dst = &mut apack_i16[i * kc..(i + 1) * kc];
                widen_u8(&a[r * k + k0..r * k + kend], dst);
                dst[kend - k0..].fill(0);
            }
            apack_i16[rows.len() * kc..strips * mr * kc].fill(0);
        } else {
            apack_u8.clear();
            apack_u8.resize(strips * kc * mr, 0);
        }
        for s in (0..strips).filter(|&s| !wide && !direct(s)) {
            let strip_rows = rows.start + s * mr..(rows.start + (s + 1) * mr).min(rows.end);
            for (i, r) in strip_rows.enumerate() {
                let arow = &a[r * k + k0..r * k + kend];
                let out = &mut apack_u8[s * kc * mr..(s + 1) * kc * mr];
                for (g, quad) in arow.chunks(4).enumerate() {
                    out[(g * mr + i) * 4..(g * mr + i) * 4 + quad.len()].copy_from_slice(quad);
                }
            }
        }
        for p in pans.clone() {
            let ncols = NR.min(n - p * NR);
            let bptr = w.ptr_i8(p, k0);
            for s in 0..strips {
                let r0 = rows.start + s * mr;
                let nrows = mr.min(rows.end - r0);
                let ap = if wide {
                    APanel {
                        ptr: apack_i16[s * mr * kc..].as_ptr() as *const u8,
                        row: 2 * kc,
                        group: 8,
                    }
                } else if direct(s) {
                    APanel {
                        ptr: a[r0 * k + k0..].as_ptr(),
                        row: k,
                        group: 4,
                    }
                } else {
                    APanel {
                        ptr: apack_u8.as_ptr().wrapping_add(s * kc * mr),
                        row: 4,
                        group: 4 * mr,
                    }
                };
                let groups = kc / 4;
                // Full wide tiles of a task that owns its rows accumulate in C itself.
                let in_place =
                    kernel == Kernel::Avx2Wide && crows.is_some() && nrows == mr && ncols == NR;
                let tile = &mut tile[..mr * NR];
                // SAFETY: A strips hold kc·mr codes (in place: mr full rows of k ≥ k0+kc
                // codes; i16 strips mr rows of kc), the panel block kc·16 codes; the ISA was
                // checked by the caller.
                unsafe {
                    match kernel {
                        Kernel::Portable => micro_portable(ap, bptr, groups, tile, false),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Vnni => crate::x86::vnni_8x16(ap, bptr, groups, tile, false),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2I32 => crate::x86::avx2_i32_4x16(ap, bptr, groups, tile, false),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2I16 { s: steps } => {
                            crate::x86::avx2_i16_4x16(ap, bptr, groups, steps, tile, false)
                        }
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2Wide => {
                            let wb =
                                wide_w.expect("wide panel")[p * w.kp * NR + k0 * NR..].as_ptr();
                            let (dst, ld, add) = match crows.as_deref_mut() {
                                Some(crows) if in_place => {
                                    (&mut crows[s * mr * n + p * NR..], n, k0 > 0)
                                }
                                _ => (&mut *tile, NR, false),
                            };
                            crate::x86::avx2_wide::<WIDE_MR>(ap, (1, 0), wb, groups, (dst, ld), add)
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => unreachable!("x86 kernel on another architecture"),
                    }
                }
                if in_place {
                    continue;
                }
                for i in 0..nrows {
                    let at = (r0 + i) * n + p * NR;
                    let crow = match crows.as_deref_mut() {
                        // The task's own rows (no second pointer into them while `crows` lives).
                        Some(crows) => &mut crows[at - rows.start * n..][..ncols],
                        // SAFETY: row r0+i < m and columns p·16 .. p·16+ncols ≤ n lie inside c.
                        None => unsafe { std::slice::from_raw_parts_mut(c.add(at), ncols) },
                    };
                    let trow = &tile[i * NR..i * NR + ncols];
                    if k0 == 0 {
                        crow.copy_from_slice(trow);
                    } else {
                        crow.iter_mut().zip(trow).for_each(|(c, t)| *c += t);
                    }
                }
            }
        }
        k0 += kc;
    }
}

/// Zero-extends the u8 codes `src` into the first `src.len()` elements of `dst` (a plain
/// loop the compiler vectorises). Panics if `dst` is shorter than `src`.
pub(crate) fn widen_u8(src: &[u8], dst: &mut [i16]) {
    for (d, &s) in dst[..src.len()].iter_mut().zip(src) {
        *d = s as i16;
    }
}

/// Runs the micro-kernel `kernel` on panel `p` of `w` from reduction index `k0` (a multiple
/// of 4) over `groups` groups of 4, writing `tile` (`mr × 16` i32, row-major), or adding to
/// it when `add`. A is u8 codes, or i16 codes when [`Kernel::wide_a`].
///
/// # Safety
/// The A codes `a.ptr + i·a.row + g·a.group ..` (4 u8 or, for `wide_a`, 4 i16; row `i <
/// kernel.mr()`, group `g < groups`) must be readable, `k0 + 4·groups ≤ w.kp`, and the kernel's ISA available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro(
    kernel: Kernel,
    a: APanel,
    w: &WeightPanel,
    p: usize,
    k0: usize,
    groups: usize,
    tile: &mut [i32; 8 * NR],
    add: bool,
) {
    debug_assert!(k0 + 4 * groups <= w.kp && p < w.panels());
    let bptr = w.ptr_i8(p, k0);
    // SAFETY: guaranteed by the caller.
    unsafe {
        match kernel {
            Kernel::Portable => micro_portable(a, bptr, groups, tile, add),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => crate::x86::vnni_8x16(a, bptr, groups, tile, add),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2I32 => crate::x86::avx2_i32_4x16(a, bptr, groups, tile, add),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2I16 { s } => crate::x86::avx2_i16_4x16(a, bptr, groups, s, tile, add),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Wide => micro_wide(WIDE_MR, a, (1, 0), w, p, k0, groups, (tile, NR), add),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("x86 kernel on another architecture"),
        }
    }
}

/// Calls the const-generic x86 kernel `$f::<R>` for `R = $mr` out of the row counts
/// listed (the strips of the padded implicit GEMM), `$what` naming the kernel if `$mr` is
/// none of them.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($mr:expr, $what:literal, $f:ident, [$($n:literal),+], $args:tt) => {
        match $mr {
            $($n => crate::x86::$f::<$n> $args,)+
            _ => unreachable!(concat!($what, " strips have no kernel of this row count")),
        }
    };
}

/// The `avx2-wide` micro-kernel with `mr` (1 to 6) rows on panel `p` of `w` from reduction
/// index `k0` (a multiple of 4): `segs` segments of `groups` groups, segment `s` of A at
/// `a.ptr + s·seg` (bytes), the panel contiguous (see [`avx2_wide`](crate::x86::avx2_wide));
/// writes the `mr × 16` i32 tile `tile = (buf, ld)` (rows `ld ≥ 16` apart in `buf`), or adds
/// to it when `add`. A holds i16 codes.
///
/// # Safety
/// The 4 i16 at `a.ptr + s·seg + i·a.row + g·a.group` (segment `s < segs`, row `i < mr`,
/// group `g < groups`) must be readable, `k0 + 4·segs·groups ≤ w.kp`, and AVX2 available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_wide(
    mr: usize,
    a: APanel,
    segs: (usize, usize),
    w: &WeightPanel,
    p: usize,
    k0: usize,
    groups: usize,
    tile: (&mut [i32], usize),
    add: bool,
) {
    debug_assert!(k0 + 4 * segs.0 * groups <= w.kp && p < w.panels());
    #[cfg(target_arch = "x86_64")]
    {
        let wb = w.wide()[p * w.kp * NR + k0 * NR..].as_ptr();
        // SAFETY: guaranteed by the caller.
        unsafe {
            by_rows!(
                mr,
                "avx2-wide",
                avx2_wide,
                [1, 2, 3, 4, 5, 6],
                (a, segs, wb, groups, tile, add)
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (mr, a, segs, w, p, k0, groups, tile, add);
        unreachable!("x86 kernel on another architecture");
    }
}

/// The `vnni` micro-kernel with `mr` (1 to 8) rows on panel `p` of `w` from reduction index
/// `k0` (a multiple of 4): `segs` segments of `groups` groups, segment `s` of A at
/// `a.ptr + s·seg` (bytes), the panel contiguous (see [`vnni_rows`](crate::x86::vnni_rows));
/// writes the `mr × 16` i32 tile `tile = (buf, ld)` (rows `ld ≥ 16` apart in `buf`), or adds
/// to it when `add`. A holds u8 codes.
///
/// # Safety
/// The 4 u8 at `a.ptr + s·seg + i·a.row + g·a.group` (segment `s < segs`, row `i < mr`,
/// group `g < groups`) must be readable, `k0 + 4·segs·groups ≤ w.kp`, and AVX-512 VNNI
/// available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_vnni(
    mr: usize,
    a: APanel,
    segs: (usize, usize),
    w: &WeightPanel,
    p: usize,
    k0: usize,
    groups: usize,
    tile: (&mut [i32], usize),
    add: bool,
) {
    debug_assert!(k0 + 4 * segs.0 * groups <= w.kp && p < w.panels());
    #[cfg(target_arch = "x86_64")]
    {
        let wb = w.ptr_i8(p, k0);
        // SAFETY: guaranteed by the caller.
        unsafe {
            by_rows!(
                mr,
                "vnni",
                vnni_rows,
                [1, 2, 3, 4, 5, 6, 7, 8],
                (a, segs, wb, groups, tile, add)
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (mr, a, segs, w, p, k0, groups, tile, add);
        unreachable!("x86 kernel on another architecture");
    }
}

/// The `avx2-i16` micro-kernel with `mr` (1 to 6) rows on panel `p` of `w` from reduction
/// index `k0` (a multiple of 4): `segs` segments of `groups` groups, segment `q` of A at
/// `a.ptr + q·seg` (bytes), the panel contiguous (see
/// [`avx2_i16_rows`](crate::x86::avx2_i16_rows)), i16 sums widened every `s` groups; writes
/// the `mr × 16` i32 tile `tile = (buf, ld)` (rows `ld ≥ 16` apart in `buf`), or adds to it
/// when `add`. A holds u8 codes.
///
/// # Safety
/// The 4 bytes at `a.ptr + q·seg + i·a.row + g·a.group` (segment `q < segs`, row `i < mr`,
/// group `g < groups`) must be readable, `k0 + 4·segs·groups ≤ w.kp`, `s ≥ 1` with
/// `s·2·a_max·w_max ≤ 32767` (as chosen by [`Kernel::choose`]), and AVX2 available.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_i16(
    mr: usize,
    a: APanel,
    segs: (usize, usize),
    w: &WeightPanel,
    p: usize,
    k0: usize,
    groups: usize,
    s: usize,
    tile: (&mut [i32], usize),
    add: bool,
) {
    debug_assert!(k0 + 4 * segs.0 * groups <= w.kp && p < w.panels());
    #[cfg(target_arch = "x86_64")]
    {
        let wb = w.ptr_i8(p, k0);
        // SAFETY: guaranteed by the caller.
        unsafe {
            by_rows!(
                mr,
                "avx2-i16",
                avx2_i16_rows,
                [1, 2, 3, 4, 5, 6],
                (a, segs, wb, groups, s, tile, add)
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (mr, a, segs, w, p, k0, groups, s, tile, add);
        unreachable!("x86 kernel on another architecture");
    }
}

/// The A operand of a micro-kernel: the 4 codes of row `i`, group `g` start at
/// `ptr + i·row + g·group` (strides in bytes; in place in the row-major matrix, or packed).
/// u8 codes, or i16 codes (8 bytes per group) for the kernels with [`Kernel::wide_a`].
#[derive(Clone, Copy)]
pub(crate) struct APanel {
    /// First code of row 0, group 0.
    pub(crate) ptr: *const u8,
    /// Row stride in bytes.
    pub(crate) row: usize,
    /// Group stride in bytes.
    pub(crate) group: usize,
}

/// Portable micro-kernel: 4 rows × 16 channels over `groups` groups of 4 `k`; row `i`,
/// group `g` of A at `a.ptr + i·a.row + g·a.group`; adds to `tile` when `add`.
///
/// # Safety
/// Those A bytes and `groups·64` bytes at `b` must be readable.
unsafe fn micro_portable(a: APanel, b: *const i8, groups: usize, tile: &mut [i32], add: bool) {
    // SAFETY: guaranteed by the caller.
    let b = unsafe { std::slice::from_raw_parts(b, groups * 64) };
    let mut acc = [[0i32; NR]; 4];
    if add {
        for (i, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&tile[i * NR..(i + 1) * NR]);
        }
    }
    for g in 0..groups {
        let bg = &b[g * 64..g * 64 + 64];
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: guaranteed by the caller.
            let av = unsafe { std::slice::from_raw_parts(a.ptr.add(i * a.row + g * a.group), 4) };
            for (j, acc) in acc.iter_mut().enumerate() {
                let bj = &bg[j * 4..j * 4 + 4];
                *acc += av[0] as i32 * bj[0] as i32
                    + av[1] as i32 * bj[1] as i32
                    + av[2] as i32 * bj[2] as i32
                    + av[3] as i32 * bj[3] as i32;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        tile[i * NR..(i + 1) * NR].copy_from_slice(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    fn check_all_paths(a: &[u8], m: usize, w: &[i8], n: usize, k: usize) -> Vec<Kernel> {
        let want = reference::gemm_u8i8(a, m, w, n, k);
        let panel = WeightPanel::from_codes(w, n, k).unwrap();
        let mut used = Vec::new();
        for isa in Isa::available() {
            let mut c = vec![i32::MIN; m * n];
            let kern = gemm_u8i8_with(isa, a, m, &panel, &mut c).unwrap();
            assert_eq!(c, want, "{isa:?} ({kern:?}) m={m} n={n} k={k}");
            used.push(kern);
        }
        used
    }

    #[test]
    fn avx2_saturation_boundary() {
        // Extreme codes: every pair sum of vpmaddubsw would saturate (255·127·2 > 32767).
        let (m, n, k) = (9, 17, 37);
        let a = vec![255u8; m * k];
        let w: Vec<i8> = (0..n * k)
            .map(|i| if i % 3 == 0 { -127 } else { 127 })
            .collect();
        let used = check_all_paths(&a, m, &w, n, k);
        if Isa::Avx2.is_available() {
            assert!(used.contains(&Kernel::Avx2Wide));
        }
        // Largest non-saturating ranges: 255 × 64 (pair = 32640) -> avx2-i32;
        // 127 × 127 (pair = 32258) -> avx2-i32; 15 × 7 -> avx2-i16 with s = 156.
        for (amax, wmax, expect) in [
            (255u8, 64i8, Kernel::Avx2I32),
            (127, 127, Kernel::Avx2I32),
            (15, 7, Kernel::Avx2I16 { s: 156 }),
            (255, 65, Kernel::Avx2Wide),
        ] {
            assert_eq!(Kernel::choose(Isa::Avx2, amax as u32, wmax as u32), expect);
            let a = vec![amax; m * k];
            let w: Vec<i8> = (0..n * k)
                .map(|i| if i % 5 == 1 { -wmax } else { wmax })
                .collect();
            let used = check_all_paths(&a, m, &w, n, k);
            if Isa::Avx2.is_available() {
                assert!(used.contains(&expect));
            }
        }
    }

    #[test]
    fn all_zero_and_tiny_shapes() {
        check_all_paths(&[0; 12], 3, &[0; 8], 2, 4);
        check_all_paths(&[7], 1, &[-3], 1, 1);
        let mut c = vec![1i32; 0];
        let p = WeightPanel::from_codes(&[1, 2], 2, 1).unwrap();
        gemm_u8i8(&[], 0, &p, &mut c).unwrap();
        assert!(gemm_u8i8(&[1], 2, &p, &mut c).is_err());
        assert!(WeightPanel::from_codes(&[-128], 1, 1).is_err());
    }

    #[test]
    fn large_blocked_and_parallel() {
        // k > KC exercises k-blocking; m > MC and n > 16 exercise the task grid. With one
        // panel (n = 16), and with more row blocks than tasks wanted (m = 535 on up to two
        // threads), a task holds every panel and the wide kernel accumulates its full tiles
        // in C itself, partial strips and panels through the tile buffer.
        let mut r = lcg(3);
        for (m, n, k) in [(131, 70, KC + 77), (83, 16, KC + 77), (535, 33, KC + 5)] {
            for (amax, wmax) in [(255u64, 127u64), (15, 7), (63, 31)] {
                let a: Vec<u8> = (0..m * k).map(|_| (r() % (amax + 1)) as u8).collect();
                let w: Vec<i8> = (0..n * k)
                    .map(|_| ((r() % (2 * wmax + 1)) as i64 - wmax as i64) as i8)
                    .collect();
                check_all_paths(&a, m, &w, n, k);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_reference(m in 1usize..40, n in 1usize..40, k in 1usize..80,
                             abits in 2u32..=8, wbits in 2u32..=8, seed in any::<u64>(),
                             zero_channel in any::<bool>()) {
            let mut r = lcg(seed);
            let amax = (1u64 << abits) - 1;
            let wmax = (1u64 << (wbits - 1)) - 1;
            let a: Vec<u8> = (0..m * k).map(|_| (r() % (amax + 1)) as u8).collect();
            let mut w: Vec<i8> = (0..n * k).map(|_| ((r() % (2 * wmax + 1)) as i64 - wmax as i64) as i8).collect();
            if zero_channel {
                w[..k].fill(0);
            }
            check_all_paths(&a, m, &w, n, k);
        }

        /// 8-bit × 8-bit operands (the `avx2-wide` kernel on AVX2, A widened to i16 per
        /// strip): row counts that leave partial 6-row strips, odd `k` across the k-blocks,
        /// all-zero channels and extreme codes (255 × ±127).
        #[test]
        fn wide_matches_reference(m in 1usize..50, n in 1usize..40, k in 1usize..600,
                                  seed in any::<u64>(), extreme in any::<bool>(),
                                  zero_channel in any::<bool>()) {
            let mut r = lcg(seed);
            let mut a: Vec<u8> = (0..m * k).map(|_| if extreme { 255 } else { r() as u8 }).collect();
            a[0] = 255;
            let mut w: Vec<i8> = (0..n * k)
                .map(|i| if extreme { if i % 2 == 0 { 127 } else { -127 } } else { ((r() % 255) as i64 - 127) as i8 })
                .collect();
            w[n * k - 1] = -127;
            if zero_channel && n > 1 {
                w[..k].fill(0);
            }
            let used = check_all_paths(&a, m, &w, n, k);
            if Isa::Avx2.is_available() {
                prop_assert!(used.contains(&Kernel::Avx2Wide));
            }
        }

        #[test]
        fn from_packed_equals_from_codes(n in 1usize..20, k in 1usize..50, bits in 2u32..=8, seed in any::<u64>()) {
            let mut r = lcg(seed);
            let q = (1i64 << (bits - 1)) - 1;
            let w: Vec<i8> = (0..n * k).map(|_| ((r() as i64 % (2 * q + 1)) - q) as i8).collect();
            let packed = PackedWeights::from_codes(&w, n, k, bits, vec![1.0; n]).unwrap();
            let a = WeightPanel::from_packed(&packed);
            let b = WeightPanel::from_codes(&w, n, k).unwrap();
            prop_assert_eq!(&a.data, &b.data);
            prop_assert_eq!(a.wmax, b.wmax);
        }
    }
}
