//! Small-M matrix kernels for convolution on im2col tiles, without packing: AVX-512 and
//! AVX2+FMA register-tiled micro-kernels chosen at run time, with the `gemm` crate (and a
//! plain loop for [`gemm_rows`]) as the portable fallback.
//!
//! Convolution GEMMs here have a small dimension (output channels, 16–64 in ResNet-20) and
//! operands that are already laid out for unit-stride loads, so a packing GEMM spends much
//! of its time copying. These kernels read the operands in place:
//! - [`gemm_bcast`]: `C = A·B` with `B` row-major (loads along its rows) and `A` read by
//!   broadcasting single elements (any strides) — forward and grad-input;
//! - [`gemm_dot`]: `C += A·Bᵀ` with both `A` and `B` row-major along the reduction
//!   (dot products of rows) — grad-weight.
//!
//! Dispatch ([`Level`]): AVX-512F when the CPU has it (`8 × 48` broadcast tiles of 16-lane
//! vectors, `8 × 4` dot tiles), else AVX2+FMA (`6 × 16` broadcast and `4 × 2` dot tiles of
//! 8-lane vectors), else portable. [`gemm_bcast_tab`] and [`gemm_dot_tab`] read `B`'s rows
//! through a table of offsets (shifted windows of a padded image) on the same kernels.
//! [`gemm_bcast`] gives the same bits on the AVX-512 and AVX2 paths (each element is the
//! same chain of fused multiply-adds over `k`, then the optional add of `C`). [`gemm_dot`]
//! sums each dot product in eight lanes (lane `l` takes elements `l, l + 8, …`), then
//! reduces them; a 16-lane sum would change the bits, so the AVX-512 kernel keeps the eight
//! lanes and puts two of them in a register (rows `2r` and `2r + 1` against one column,
//! `B`'s eight elements broadcast to both halves, `A`'s row pairs packed side by side):
//! training gives the same bits on every x86-64 machine with AVX2+FMA (the portable path
//! differs).
//! `SEER_KERNELS_NO_SIMD` (set at all) forces the portable path and `SEER_KERNELS_NO_AVX512`
//! the AVX2 one; tests force each path on their own thread with [`with_level`].
//!
//! [`map_into`] and [`map2_into`] run element-wise loops (fake quantization, activation
//! gradients) compiled for AVX2 when the CPU has it, with the same bits as the plain loop.

use crate::matmul::{Mat, matmul};
use gemm::Parallelism;
use std::mem::MaybeUninit;

fn extent(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

/// The kernel family a call runs on, in increasing order of capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// The `gemm` crate ([`gemm_bcast`], [`gemm_dot`]) or a plain loop ([`gemm_rows`]).
    Portable,
    /// AVX2 + FMA micro-kernels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512F micro-kernels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// The best level this CPU supports (and the environment allows), detected once.
pub(crate) fn detected() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::env::var_os("SEER_KERNELS_NO_SIMD").is_some() {
            return Level::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && std::env::var_os("SEER_KERNELS_NO_AVX512").is_none()
            {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

thread_local! {
    /// A cap on the level for calls made on this thread ([`with_level`]).
    static CAP: std::cell::Cell<Level> = const { std::cell::Cell::new(Level::Avx512) };
}

/// The level calls on this thread run on: the detected one, capped by [`with_level`].
pub(crate) fn level() -> Level {
    detected().min(CAP.with(|c| c.get()))
}

/// Runs `f` with the kernels of this thread capped at `cap` (tests: every path on any CPU).
/// Threads that `f` starts (rayon's) are not capped.
#[cfg(test)]
pub(crate) fn with_level<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let old = CAP.with(|c| c.replace(cap));
    let r = f();
    CAP.with(|c| c.set(old));
    r
}

/// `out[i] = f(x[i])` for the first `min(x.len(), out.len())` elements. On CPUs with AVX2 the
/// loop is compiled for AVX2 (8 lanes instead of SSE2's 4); it is the same source and the same
/// IEEE operations per element, and Rust never contracts or reassociates float arithmetic, so
/// the results are the same bits on every level (tested). For element-wise hot loops such as
/// fake quantization (`clamp`, divide, round, multiply), which the baseline x86-64 target
/// vectorises only 4 wide.
pub fn map_into(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    // SAFETY: `map_into_uninit` writes only values of `f`.
    map_into_uninit(x, unsafe { crate::view::as_uninit(out) }, f)
}

/// `out[i] = f(a[i], b[i])`, as [`map_into`] for two inputs.
pub fn map2_into(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    // SAFETY: `map2_into_uninit` writes only values of `f`.
    map2_into_uninit(a, b, unsafe { crate::view::as_uninit(out) }, f)
}

/// [`map_into`] into memory that need not be initialised: writes (initialises) exactly the
/// first `min(x.len(), out.len())` elements.
pub(crate) fn map_into_uninit(x: &[f32], out: &mut [MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: AVX2 checked by `level`.
        return unsafe { map_avx2(x, out, f) };
    }
    map_plain(x, out, f)
}

/// [`map2_into`] into memory that need not be initialised: writes (initialises) exactly the
/// first `min(a.len(), b.len(), out.len())` elements.
pub(crate) fn map2_into_uninit(
    a: &[f32],
    b: &[f32],
    out: &mut [MaybeUninit<f32>],
    f: impl Fn(f32, f32) -> f32,
) {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: AVX2 checked by `level`.
        return unsafe { map2_avx2(a, b, out, f) };
    }
    map2_plain(a, b, out, f)
}

#[inline(always)]
fn map_plain(x: &[f32], out: &mut [MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(f(v));
    }
}

#[inline(always)]
fn map2_plain(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        o.write(f(x, y));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_avx2(x: &[f32], out: &mut [MaybeUninit<f32>], f: impl Fn(f32) -> f32) {
    map_plain(x, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map2_avx2(
    a: &[f32],
    b: &[f32],
    out: &mut [MaybeUninit<f32>],
    f: impl Fn(f32, f32) -> f32,
) {
    map2_plain(a, b, out, f)
}

/// `C[m×n] (ldc) = [C +] A[m×k] · B[k×n]`, `B` row-major with leading dimension `ldb`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= extent(m, n, ldc, 1), "gemm_bcast: C too short");
    if k > 0 {
        assert!(
            a.data.len() >= extent(m, k, a.rs, a.cs),
            "gemm_bcast: A too short"
        );
        assert!(b.len() >= extent(k, n, ldb, 1), "gemm_bcast: B too short");
    }
    #[cfg(target_arch = "x86_64")]
    if k > 0 {
        let op = Gemm {
            k,
            a: a.data.as_ptr(),
            ars: a.rs,
            acs: a.cs,
            b: b.as_ptr(),
            brs: ldb,
            bcs: 1,
            c: c.as_mut_ptr(),
            ldc,
            accumulate,
            ktab: std::ptr::null(),
            jtab: std::ptr::null(),
            rtab: std::ptr::null(),
        };
        match level() {
            // SAFETY: CPU support checked by `level`; every access stays within the extents
            // asserted above.
            Level::Avx512 => return unsafe { avx512::bcast::<PLAIN>(m, n, op) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { avx2::bcast::<PLAIN>(m, n, op) },
            Level::Portable => {}
        }
    }
    matmul(
        m,
        n,
        k,
        c,
        ldc,
        accumulate,
        a,
        Mat::rows(b, ldb),
        Parallelism::None,
    );
}

/// Whether the AVX-512 dot kernel beats the AVX2 one on an `m × n` product over `p`: it
/// needs a row pair, and its packing of `A` and two-half reductions pay off on long dot
/// products over many columns only (measured with the `conv_profile` example: ResNet-20's
/// direct and strided 3×3 weight gradients 1.1–1.45× faster, the 1×1 and 7×7-output ones
/// with `p` = 49 up to 20% slower on it). Either kernel gives the same bits.
#[cfg(target_arch = "x86_64")]
fn dot512_pays(m: usize, n: usize, p: usize) -> bool {
    #[cfg(test)]
    if FORCE_DOT512.with(|f| f.get()) {
        return m >= 2;
    }
    m >= 2 && n >= 32 && p >= 128
}

#[cfg(all(test, target_arch = "x86_64"))]
thread_local! {
    /// Tests: the AVX-512 dot kernel on every product with a row pair (small ones too).
    static FORCE_DOT512: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the AVX-512 dot kernel on every product it can take, on this thread.
#[cfg(all(test, target_arch = "x86_64"))]
fn force_dot512<R>(f: impl FnOnce() -> R) -> R {
    let old = FORCE_DOT512.with(|c| c.replace(true));
    let r = f();
    FORCE_DOT512.with(|c| c.set(old));
    r
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The AVX-512 dot kernel's packed rows of `A`, kept per thread across calls.
    static DOT_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C[m×n] (ldc) += A[m×p] · B[n×p]ᵀ`, `A` and `B` row-major with leading dimensions
/// `lda`, `ldb` (dot products of their rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dot(
    m: usize,
    n: usize,
    p: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 || p == 0 {
        return;
    }
    assert!(c.len() >= extent(m, n, ldc, 1), "gemm_dot: C too short");
    assert!(a.len() >= extent(m, p, lda, 1), "gemm_dot: A too short");
    assert!(b.len() >= extent(n, p, ldb, 1), "gemm_dot: B too short");
    #[cfg(target_arch = "x86_64")]
    {
        let op = Gemm {
            k: p,
            a: a.as_ptr(),
            ars: lda,
            acs: 1,
            b: b.as_ptr(),
            brs: 1,
            bcs: ldb,
            c: c.as_mut_ptr(),
            ldc,
            accumulate: true,
            ktab: std::ptr::null(),
            jtab: std::ptr::null(),
            rtab: std::ptr::null(),
        };
        match level() {
            // SAFETY: CPU support checked by `level`; every access stays within the extents
            // asserted above.
            // Both kernels keep the AVX2 kernel's 8-lane partial sums, so labels are the same
            // bits on every x86-64 machine with AVX2.
            Level::Avx512 if dot512_pays(m, n, p) => {
                return DOT_PACK
                    .with(|p| unsafe { avx512::dot::<false>(m, n, op, &mut p.borrow_mut()) });
            }
            Level::Avx512 | Level::Avx2 => return unsafe { avx2::dot::<false>(m, n, op) },
            Level::Portable => {}
        }
    }
    matmul(
        m,
        n,
        p,
        c,
        ldc,
        true,
        Mat::rows(a, lda),
        Mat::rows_t(b, ldb),
        Parallelism::None,
    );
}

/// `C[m×n] (ldc) = A[m×k] · B[k×n]` where row `q` of `B` is `b[ktab[q]..ktab[q] + n]`
/// (rows anywhere in `b`, e.g. shifted windows of one padded image: the direct
/// convolution in [`crate::conv`]). AVX-512 and AVX2+FMA: the [`gemm_bcast`] kernels, so every
/// element is the same chain of fused multiply-adds over `k` as [`gemm_bcast`] on the same
/// values (the same bits on both levels). Portable: a plain loop (separate multiply and
/// add). Panics (internal bug) when a row runs past `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast_tab(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_>,
    b: &[f32],
    ktab: &[usize],
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.len() >= extent(m, n, ldc, 1),
        "gemm_bcast_tab: C too short"
    );
    assert!(ktab.len() >= k, "gemm_bcast_tab: table too short");
    if k > 0 {
        assert!(
            a.data.len() >= extent(m, k, a.rs, a.cs),
            "gemm_bcast_tab: A too short"
        );
        assert!(
            ktab[..k].iter().all(|&o| o + n <= b.len()),
            "gemm_bcast_tab: B too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if k > 0 && level() >= Level::Avx2 {
        let level = level();
        let op = Gemm {
            k,
            a: a.data.as_ptr(),
            ars: a.rs,
            acs: a.cs,
            b: b.as_ptr(),
            brs: 0,
            bcs: 1,
            c: c.as_mut_ptr(),
            ldc,
            accumulate: false,
            ktab: ktab.as_ptr(),
            jtab: std::ptr::null(),
            rtab: std::ptr::null(),
        };
        // SAFETY: AVX-512F, or AVX2+FMA, checked by `level`; every access stays within the
        // extents asserted above.
        return unsafe {
            if level == Level::Avx512 {
                avx512::bcast::<BTAB>(m, n, op)
            } else {
                avx2::bcast::<BTAB>(m, n, op)
            }
        };
    }
    for i in 0..m {
        let ci = &mut c[i * ldc..i * ldc + n];
        ci.fill(0.0);
        for (q, &o) in ktab[..k].iter().enumerate() {
            let aq = a.data[i * a.rs + q * a.cs];
            for (cv, &bv) in ci.iter_mut().zip(&b[o..o + n]) {
                *cv += aq * bv;
            }
        }
    }
}

/// `C[m×n] (ldc) = A[m×k] · B[k×n]` where `A[i, q] = a[rtab[i] + ktab[q]]` and `B` is
/// row-major with leading dimension `ldb`: `A` gathered from one buffer, e.g. the taps
/// `ktab` of a zero-padded image read at the output positions `rtab` — the direct
/// convolution in [`crate::conv`] with output positions as rows and output channels as
/// columns, without im2col and without junk positions. AVX-512 and AVX2+FMA: the
/// [`gemm_bcast`] kernels, so every element is the same chain of fused multiply-adds over
/// `q` as [`gemm_bcast`] on the same values (and, since a product's factors commute, as the
/// transposed product `Bᵀ·Aᵀ` on those kernels): the same bits on both levels. Portable: a
/// plain loop (separate multiply and add). Panics (internal bug) when an entry of `A` lies
/// past `a`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bcast_gather(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    rtab: &[usize],
    ktab: &[usize],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.len() >= extent(m, n, ldc, 1),
        "gemm_bcast_gather: C too short"
    );
    assert!(
        rtab.len() >= m && ktab.len() >= k,
        "gemm_bcast_gather: table too short"
    );
    if k > 0 {
        let last = rtab[..m].iter().max().unwrap_or(&0) + ktab[..k].iter().max().unwrap_or(&0);
        assert!(last < a.len(), "gemm_bcast_gather: A too short");
        assert!(
            b.len() >= extent(k, n, ldb, 1),
            "gemm_bcast_gather: B too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if k > 0 && level() >= Level::Avx2 {
        let level = level();
        let op = Gemm {
            k,
            a: a.as_ptr(),
            ars: 0,
            acs: 0,
            b: b.as_ptr(),
            brs: ldb,
            bcs: 1,
            c: c.as_mut_ptr(),
            ldc,
            accumulate: false,
            ktab: ktab.as_ptr(),
            jtab: std::ptr::null(),
            rtab: rtab.as_ptr(),
        };
        // SAFETY: AVX-512F, or AVX2+FMA, checked by `level`; every access stays within the
        // extents asserted above.
        return unsafe {
            if level == Level::Avx512 {
                avx512::bcast::<ATAB>(m, n, op)
            } else {
                avx2::bcast::<ATAB>(m, n, op)
            }
        };
    }
    for i in 0..m {
        let ci = &mut c[i * ldc..i * ldc + n];
        ci.fill(0.0);
        for (q, &o) in ktab[..k].iter().enumerate() {
            let aq = a[rtab[i] + o];
            for (cv, &bv) in ci.iter_mut().zip(&b[q * ldb..q * ldb + n]) {
                *cv += aq * bv;
            }
        }
    }
}

/// `dst` `[cols, rows]` (leading dimension `rows`) = the transpose of `src` `[rows, cols]`
/// (row-major): 8 × 8 blocks through AVX registers when the CPU has AVX2, the edges (and
/// other CPUs) element by element. A copy: the same bits on every path.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    // SAFETY: `transpose_into` writes only values of `src`.
    transpose_into(src, rows, cols, unsafe { crate::view::as_uninit(dst) })
}

/// [`transpose`] into memory that need not be initialised: writes (initialises) exactly
/// `dst[..rows · cols]`.
pub(crate) fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [MaybeUninit<f32>]) {
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose: slices too short"
    );
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        for r0 in (0..r8).step_by(8) {
            for c0 in (0..c8).step_by(8) {
                // SAFETY: AVX2 checked by `level`; the block's rows r0..r0 + 8 and columns
                // c0..c0 + 8 lie inside both matrices (asserted lengths).
                unsafe {
                    avx2::transpose8(
                        src.as_ptr().add(r0 * cols + c0),
                        cols,
                        dst.as_mut_ptr().cast::<f32>().add(c0 * rows + r0),
                        rows,
                    )
                };
            }
        }
    } else {
        edges(src, rows, cols, dst, 0..r8, 0..c8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    edges(src, rows, cols, dst, 0..r8, 0..c8);
    edges(src, rows, cols, dst, 0..rows, c8..cols);
    edges(src, rows, cols, dst, r8..rows, 0..c8);
}

/// The elements of rows `rr` and columns `cc` of [`transpose`], one by one.
fn edges(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [MaybeUninit<f32>],
    rr: std::ops::Range<usize>,
    cc: std::ops::Range<usize>,
) {
    for c in cc {
        for r in rr.clone() {
            dst[c * rows + r].write(src[r * cols + c]);
        }
    }
}

/// The broadcast kernels' estimated cycles per step of the reduction for an `m × n` block
/// of `C` at this thread's level (their tiling, one vector FMA per lane group and cycle on
/// each of two pipes, four cycles of FMA latency per chain, masked columns half again as
/// dear): for choosing, between two products with the same bits, the one that fills the
/// tiles better. Portable: `m · n`.
pub(crate) fn bcast_cycles(m: usize, n: usize) -> f64 {
    // One tile of `r` rows and `v` vectors: its chains issue two per cycle but each waits
    // four cycles for its previous step.
    let tile = |r: usize, v: usize, per_cycle: f64| -> f64 {
        if r == 0 || v == 0 {
            0.0
        } else {
            ((r * v) as f64 / per_cycle).max(4.0)
        }
    };
    match level() {
        Level::Avx2 => {
            // Column blocks of 16 and 8 over 6-row tiles, then masked 8-row tiles.
            let rows = |v: usize| (m / 6) as f64 * tile(6, v, 2.0) + tile(m % 6, v, 2.0);
            let mut t = (n / 16) as f64 * rows(2);
            if n % 16 >= 8 {
                t += rows(1);
            }
            if !n.is_multiple_of(8) {
                t += 1.5 * ((m / 8) as f64 * tile(8, 1, 2.0) + tile(m % 8, 1, 2.0));
            }
            t
        }
        Level::Avx512 => {
            // Row blocks of 8 over 48-column tiles, then one tile of the columns left.
            let block = |r: usize| {
                let rest = (n % 48).div_ceil(16);
                (n / 48) as f64 * tile(r, 3, 1.0) + tile(r, rest, 1.0)
            };
            (m / 8) as f64 * block(8) + block(m % 8)
        }
        Level::Portable => (m * n) as f64,
    }
}

/// `C[m×n] (ldc) += A[m×p] · Bᵀ` where row `j` of `Bᵀ` is `b[jtab[j]..jtab[j] + p]` and `A`
/// is row-major (leading dimension `lda`): dot products of `A`'s rows with windows of `b`
/// (the direct grad-weight in [`crate::conv`]). AVX-512 and AVX2+FMA: the [`gemm_dot`] kernels (the
/// same bits as [`gemm_dot`] on the same rows); portable: a plain loop. Panics (internal
/// bug) when a row runs past `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dot_tab(
    m: usize,
    n: usize,
    p: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    jtab: &[usize],
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 || p == 0 {
        return;
    }
    assert!(c.len() >= extent(m, n, ldc, 1), "gemm_dot_tab: C too short");
    assert!(a.len() >= extent(m, p, lda, 1), "gemm_dot_tab: A too short");
    assert!(jtab.len() >= n, "gemm_dot_tab: table too short");
    assert!(
        jtab[..n].iter().all(|&o| o + p <= b.len()),
        "gemm_dot_tab: B too short"
    );
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        let op = Gemm {
            k: p,
            a: a.as_ptr(),
            ars: lda,
            acs: 1,
            b: b.as_ptr(),
            brs: 1,
            bcs: 0,
            c: c.as_mut_ptr(),
            ldc,
            accumulate: true,
            ktab: std::ptr::null(),
            jtab: jtab.as_ptr(),
            rtab: std::ptr::null(),
        };
        if level() == Level::Avx512 && dot512_pays(m, n, p) {
            // SAFETY: AVX-512F checked by `level`; accesses within the extents asserted above.
            return DOT_PACK
                .with(|p| unsafe { avx512::dot::<true>(m, n, op, &mut p.borrow_mut()) });
        }
        // SAFETY: AVX2+FMA checked by `level`; accesses within the extents asserted above.
        return unsafe { avx2::dot::<true>(m, n, op) };
    }
    for i in 0..m {
        let ai = &a[i * lda..i * lda + p];
        for (j, &o) in jtab[..n].iter().enumerate() {
            let s: f32 = ai.iter().zip(&b[o..o + p]).map(|(x, y)| x * y).sum();
            c[i * ldc + j] += s;
        }
    }
}

/// `C[m×n] (ldc) = A[m×k] · B[k×n]`, all row-major (leading dimensions `lda`, `ldb`, `ldc`),
/// where every element of `C` is summed over `k` in the order `0, 1, …, k − 1`: the same
/// bits for a row of `A` whatever `m`, whichever rows surround it and however the caller
/// splits `A` into calls (the batch-invariant forward of [`crate::linear`]). AVX-512 or
/// AVX2+FMA: the [`gemm_bcast`] kernels (fused multiply-adds; columns past the last full
/// vector as masked vectors, the same chain per element, the same bits on both); elsewhere
/// a portable loop (separate multiply and add, so the bits differ between the portable and
/// the SIMD paths, not between batches).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if level() > Level::Portable {
        gemm_bcast(m, n, k, Mat::rows(a, lda), b, ldb, c, ldc, false);
        return;
    }
    gemm_rows_portable(m, n, k, a, lda, b, ldb, c, ldc);
}

/// The portable path of [`gemm_rows`]: per row of `C`, `k` axpy steps in order.
#[allow(clippy::too_many_arguments)]
fn gemm_rows_portable(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(c.len() >= extent(m, n, ldc, 1), "gemm_rows: C too short");
    if k > 0 {
        assert!(a.len() >= extent(m, k, lda, 1), "gemm_rows: A too short");
        assert!(b.len() >= extent(k, n, ldb, 1), "gemm_rows: B too short");
    }
    for i in 0..m {
        let ci = &mut c[i * ldc..i * ldc + n];
        ci.fill(0.0);
        for (q, &aq) in a[i * lda..i * lda + k].iter().enumerate() {
            for (cv, &bv) in ci.iter_mut().zip(&b[q * ldb..q * ldb + n]) {
                *cv += aq * bv;
            }
        }
    }
}

/// Operands of `C = [C +] A·B` (`A` `m × k`, `B` `k × n`), each element addressed by
/// strides: `A[i, q]` at `a + i·ars + q·acs`, `B[q, j]` at `b + q·brs + j·bcs`, `C[i, j]`
/// at `c + i·ldc + j`. The broadcast kernels load `B` along rows (`bcs = 1`); the dot
/// kernels load `A` and `B` along the reduction (`acs = brs = 1`) and always accumulate.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Gemm {
    k: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    brs: usize,
    bcs: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    /// Broadcast kernels with a row table: `B[q, j]` at `b + ktab[q] + j` (null: `brs`).
    ktab: *const usize,
    /// Dot kernels with a row table: `B[q, j]` at `b + jtab[j] + q` (null: `bcs`).
    jtab: *const usize,
    /// Broadcast kernels in [`ATAB`] mode: `A[i, q]` at `a + rtab[i] + ktab[q]` (null
    /// otherwise).
    rtab: *const usize,
}

/// Broadcast kernel modes: `A` and `B` by strides.
#[cfg(target_arch = "x86_64")]
const PLAIN: u8 = 0;
/// `B`'s rows from the row table `ktab`, `A` by strides.
#[cfg(target_arch = "x86_64")]
const BTAB: u8 = 1;
/// `A` gathered through a row table and a tap table (`a + rtab[i] + ktab[q]`), `B` by
/// strides.
#[cfg(target_arch = "x86_64")]
const ATAB: u8 = 2;

#[cfg(target_arch = "x86_64")]
impl Gemm {
    /// The block whose top-left corner of `C` is row `i`, column `j`.
    /// SAFETY: the block's first row and column must lie inside the operands.
    pub(crate) unsafe fn at(self, i: usize, j: usize) -> Self {
        // SAFETY: the caller's bound.
        unsafe {
            let (b, jtab) = if self.jtab.is_null() {
                (self.b.add(j * self.bcs), self.jtab)
            } else {
                (self.b, self.jtab.add(j))
            };
            let (a, rtab) = if self.rtab.is_null() {
                (self.a.add(i * self.ars), self.rtab)
            } else {
                (self.a, self.rtab.add(i))
            };
            Self {
                a,
                rtab,
                b,
                jtab,
                c: self.c.add(i * self.ldc + j),
                ..self
            }
        }
    }
    /// Broadcast kernels: the start of row `kk` of `B` (mode [`BTAB`]: from the row table).
    /// SAFETY: `kk < k`.
    #[inline(always)]
    unsafe fn brow_k<const T: u8>(&self, kk: usize) -> *const f32 {
        // SAFETY: the caller's bound; the table entries were checked against B's length.
        unsafe {
            if T == BTAB {
                self.b.add(*self.ktab.add(kk))
            } else {
                self.b.add(kk * self.brs)
            }
        }
    }
    /// Broadcast kernels: the address of `A[r, 0]` in the tile's rows (mode [`ATAB`]: from
    /// the row table; add [`Self::acol`]).
    /// SAFETY: row `r` inside the block.
    #[inline(always)]
    unsafe fn arow<const T: u8>(&self, r: usize) -> *const f32 {
        // SAFETY: the caller's bound; the table entries were checked against A's length.
        unsafe {
            if T == ATAB {
                self.a.add(*self.rtab.add(r))
            } else {
                self.a.add(r * self.ars)
            }
        }
    }
    /// Broadcast kernels: the offset of column `kk` of `A` from a row's start.
    /// SAFETY: `kk < k`.
    #[inline(always)]
    unsafe fn acol<const T: u8>(&self, kk: usize) -> usize {
        // SAFETY: the caller's bound.
        unsafe {
            if T == ATAB {
                *self.ktab.add(kk)
            } else {
                kk * self.acs
            }
        }
    }
    /// Dot kernels: the start of row `j` of `Bᵀ` (`JT`: from the row table).
    /// SAFETY: `j` inside the block.
    #[inline(always)]
    unsafe fn brow_j<const JT: bool>(&self, j: usize) -> *const f32 {
        // SAFETY: the caller's bound; the table entries were checked against B's length.
        unsafe {
            if JT {
                self.b.add(*self.jtab.add(j))
            } else {
                self.b.add(j * self.bcs)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Gemm;

    /// One `MR × (8·NV)` tile of `C = [C +] A·B` (`T`: the mode, [`super::PLAIN`],
    /// [`super::BTAB`] or [`super::ATAB`]).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_tile<const MR: usize, const NV: usize, const T: u8>(op: Gemm) {
        let Gemm { c, ldc, .. } = op;
        // SAFETY (whole body): the caller guarantees the tile lies inside A, B and C.
        unsafe {
            let arows: [*const f32; MR] = std::array::from_fn(|r| op.arow::<T>(r));
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            for kk in 0..op.k {
                let bp = op.brow_k::<T>(kk);
                let ac = op.acol::<T>(kk);
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm256_loadu_ps(bp.add(8 * v));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*arows[r].add(ac));
                    for v in 0..NV {
                        acc[v] = _mm256_fmadd_ps(av, bv[v], acc[v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, &x) in acc.iter().enumerate() {
                    let cp = c.add(r * ldc + 8 * v);
                    let x = if op.accumulate {
                        _mm256_add_ps(x, _mm256_loadu_ps(cp))
                    } else {
                        x
                    };
                    _mm256_storeu_ps(cp, x);
                }
            }
        }
    }

    /// All `m` rows of one column block of `8·NV` columns: `6 × 8·NV` tiles (for `NV = 2`:
    /// 12 accumulators, 2 `B` vectors and one broadcast, 15 of the 16 registers — a `4 × 24`
    /// tile needs all 16 and LLVM spills), then one tile of the 1–5 rows left. The column
    /// block's `B` panel stays in L1 across the row blocks.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_cols<const NV: usize, const T: u8>(m: usize, op: Gemm) {
        // SAFETY (whole body): rows stay below m (caller's bound on the columns).
        unsafe {
            let mut i = 0;
            while i + 6 <= m {
                bcast_tile::<6, NV, T>(op.at(i, 0));
                i += 6;
            }
            let rest = op.at(i, 0);
            match m - i {
                5 => bcast_tile::<5, NV, T>(rest),
                4 => bcast_tile::<4, NV, T>(rest),
                3 => bcast_tile::<3, NV, T>(rest),
                2 => bcast_tile::<2, NV, T>(rest),
                1 => bcast_tile::<1, NV, T>(rest),
                _ => {}
            }
        }
    }

    /// Columns `0..rem` (`1 ≤ rem < 8`) of an `MR`-row block: one masked vector per row
    /// (lanes past `rem` are neither read nor written), the same chain of fused
    /// multiply-adds over `k` per element as the full tiles.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_tail<const MR: usize, const T: u8>(rem: usize, op: Gemm) {
        // SAFETY (whole body): masked lanes stay below rem; rows below MR (caller's bound).
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lanes);
            let arows: [*const f32; MR] = std::array::from_fn(|r| op.arow::<T>(r));
            let mut acc = [_mm256_setzero_ps(); MR];
            for kk in 0..op.k {
                let bv = _mm256_maskload_ps(op.brow_k::<T>(kk), mask);
                let ac = op.acol::<T>(kk);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*arows[r].add(ac));
                    *acc = _mm256_fmadd_ps(av, bv, *acc);
                }
            }
            for (r, &x) in acc.iter().enumerate() {
                let cp = op.c.add(r * op.ldc);
                let x = if op.accumulate {
                    _mm256_add_ps(x, _mm256_maskload_ps(cp, mask))
                } else {
                    x
                };
                _mm256_maskstore_ps(cp, mask, x);
            }
        }
    }

    /// See [`super::gemm_bcast`], [`super::gemm_bcast_tab`] and [`super::gemm_bcast_gather`]
    /// (`T`: the mode); the caller checked
    /// CPU support and extents. Column blocks of 16, then one of 8 (each over all rows,
    /// see `bcast_cols`), then the last `n mod 8` columns as masked vectors in blocks of 8
    /// rows (8 independent accumulator chains). Every element is the same chain of fused
    /// multiply-adds over `k` whichever block it falls in.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bcast<const T: u8>(m: usize, n: usize, op: Gemm) {
        // SAFETY: column blocks stay below n, row blocks below m.
        unsafe {
            let mut j = 0;
            while j + 16 <= n {
                bcast_cols::<2, T>(m, op.at(0, j));
                j += 16;
            }
            if j + 8 <= n {
                bcast_cols::<1, T>(m, op.at(0, j));
                j += 8;
            }
            let rem = n - j;
            if rem == 0 {
                return;
            }
            let op = op.at(0, j);
            let mut i = 0;
            while i + 8 <= m {
                bcast_tail::<8, T>(rem, op.at(i, 0));
                i += 8;
            }
            let rest = op.at(i, 0);
            match m - i {
                7 => bcast_tail::<7, T>(rem, rest),
                6 => bcast_tail::<6, T>(rem, rest),
                5 => bcast_tail::<5, T>(rem, rest),
                4 => bcast_tail::<4, T>(rem, rest),
                3 => bcast_tail::<3, T>(rem, rest),
                2 => bcast_tail::<2, T>(rem, rest),
                1 => bcast_tail::<1, T>(rem, rest),
                _ => {}
            }
        }
    }

    /// One 8 × 8 block: `d[c·ldd + r] = s[r·lds + c]` for `r, c < 8`.
    /// SAFETY: the caller guarantees AVX2 and that the block lies inside both buffers.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8(s: *const f32, lds: usize, d: *mut f32, ldd: usize) {
        // SAFETY: the caller's bounds.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(i * lds)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let o = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in o.iter().enumerate() {
                _mm256_storeu_ps(d.add(i * ldd), *v);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One `MR × NR` tile of `C += A·Bᵀ` (dot products along `p`; `JT`: `Bᵀ`'s rows from
    /// the row table).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_tile<const MR: usize, const NR: usize, const JT: bool>(op: Gemm) {
        let Gemm {
            k: p,
            a,
            ars: lda,
            c,
            ldc,
            ..
        } = op;
        // SAFETY (whole body): the caller guarantees the tile lies inside A, B and C.
        unsafe {
            let mut bp = [op.b; NR];
            for (j, bp) in bp.iter_mut().enumerate() {
                *bp = op.brow_j::<JT>(j);
            }
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let pv = p / 8 * 8;
            let mut q = 0;
            while q < pv {
                let mut bv = [_mm256_setzero_ps(); NR];
                for (j, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm256_loadu_ps(bp[j].add(q));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_loadu_ps(a.add(r * lda + q));
                    for j in 0..NR {
                        acc[j] = _mm256_fmadd_ps(av, bv[j], acc[j]);
                    }
                }
                q += 8;
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, &v) in acc.iter().enumerate() {
                    let mut s = hsum(v);
                    for qq in pv..p {
                        s += *a.add(r * lda + qq) * *bp[j].add(qq);
                    }
                    *c.add(r * ldc + j) += s;
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows<const MR: usize, const JT: bool>(n: usize, op: Gemm) {
        // SAFETY (whole body): column blocks stay below n.
        unsafe {
            // 4×2 tiles of 8-lane partial sums (8 accumulators + 2 B + 1 A register).
            let pairs = n / 2 * 2;
            for j in (0..pairs).step_by(2) {
                dot_tile::<MR, 2, JT>(op.at(0, j));
            }
            if n > pairs {
                dot_tile::<MR, 1, JT>(op.at(0, pairs));
            }
        }
    }

    /// See [`super::gemm_dot`] and [`super::gemm_dot_rows`] (`JT`); the caller checked CPU
    /// support and extents. Row blocks of 4, then one of the 3, 2 or 1 rows left.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot<const JT: bool>(m: usize, n: usize, op: Gemm) {
        // SAFETY: row blocks stay below m.
        unsafe {
            let mut i = 0;
            while i + 4 <= m {
                dot_rows::<4, JT>(n, op.at(i, 0));
                i += 4;
            }
            let rest = op.at(i, 0);
            match m - i {
                3 => dot_rows::<3, JT>(n, rest),
                2 => dot_rows::<2, JT>(n, rest),
                1 => dot_rows::<1, JT>(n, rest),
                _ => {}
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Gemm;

    /// Lanes `0..r` set (`r ≤ 16`).
    fn lanes(r: usize) -> __mmask16 {
        if r >= 16 { 0xFFFF } else { (1u16 << r) - 1 }
    }

    /// One `MR × (16·NV)` tile of `C = [C +] A·B` whose last vector holds the columns of
    /// `last` (the others are full): per element the chain of fused multiply-adds over `k`
    /// from zero, then the add of `C` — the AVX2 kernel's arithmetic, so the same bits.
    #[target_feature(enable = "avx512f")]
    unsafe fn bcast_tile<const MR: usize, const NV: usize, const T: u8>(op: Gemm, last: __mmask16) {
        let Gemm { c, ldc, .. } = op;
        let mask = |v: usize| if v + 1 == NV { last } else { 0xFFFF };
        // SAFETY (whole body): the caller guarantees the tile's unmasked lanes lie inside
        // A, B and C; masked lanes are neither read nor written.
        unsafe {
            let arows: [*const f32; MR] = std::array::from_fn(|r| op.arow::<T>(r));
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for kk in 0..op.k {
                let bp = op.brow_k::<T>(kk);
                let ac = op.acol::<T>(kk);
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm512_maskz_loadu_ps(mask(v), bp.add(16 * v));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*arows[r].add(ac));
                    for v in 0..NV {
                        acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, &x) in acc.iter().enumerate() {
                    let cp = c.add(r * ldc + 16 * v);
                    let x = if op.accumulate {
                        _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask(v), cp))
                    } else {
                        x
                    };
                    _mm512_mask_storeu_ps(cp, mask(v), x);
                }
            }
        }
    }

    /// All `n` columns of an `MR`-row block: tiles of 48 columns, then one tile of 1–3
    /// vectors for the rest, its last vector masked.
    #[target_feature(enable = "avx512f")]
    unsafe fn bcast_rows<const MR: usize, const T: u8>(n: usize, op: Gemm) {
        // SAFETY (whole body): columns stay below n; rows below MR (caller's bound).
        unsafe {
            let mut j = 0;
            while j + 48 <= n {
                bcast_tile::<MR, 3, T>(op.at(0, j), 0xFFFF);
                j += 48;
            }
            let rest = n - j;
            let last = lanes(rest - rest.saturating_sub(1) / 16 * 16);
            match rest.div_ceil(16) {
                3 => bcast_tile::<MR, 3, T>(op.at(0, j), last),
                2 => bcast_tile::<MR, 2, T>(op.at(0, j), last),
                1 => bcast_tile::<MR, 1, T>(op.at(0, j), last),
                _ => {}
            }
        }
    }

    /// See [`super::gemm_bcast`], [`super::gemm_bcast_tab`] and [`super::gemm_bcast_gather`]
    /// (`T`: the mode); the caller checked CPU
    /// support and extents. Rows in blocks of 8, then one block of the 1–7 left.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bcast<const T: u8>(m: usize, n: usize, op: Gemm) {
        // SAFETY: row blocks stay below m.
        unsafe {
            let mut i = 0;
            while i + 8 <= m {
                bcast_rows::<8, T>(n, op.at(i, 0));
                i += 8;
            }
            let rest = op.at(i, 0);
            match m - i {
                7 => bcast_rows::<7, T>(n, rest),
                6 => bcast_rows::<6, T>(n, rest),
                5 => bcast_rows::<5, T>(n, rest),
                4 => bcast_rows::<4, T>(n, rest),
                3 => bcast_rows::<3, T>(n, rest),
                2 => bcast_rows::<2, T>(n, rest),
                1 => bcast_rows::<1, T>(n, rest),
                _ => {}
            }
        }
    }

    /// Row pairs of `A` per dot tile (8 rows).
    const RP: usize = 4;
    /// Columns of `C` per dot tile.
    const NC: usize = 4;

    /// Packs the `pairs` row pairs of the dot kernels' `A` (`op.a`, rows `op.ars` apart) for
    /// [`dot_tile`]: for pair `t` and step `s` of the reduction (elements `8s..8s + 8`), 16
    /// floats at `(t·steps + s)·16`: row `2t`'s eight, then row `2t + 1`'s.
    /// SAFETY: rows `0..2·pairs` of `A` hold `8·steps` elements each.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn pack_pairs(op: &Gemm, pairs: usize, steps: usize, pack: &mut Vec<f32>) {
        pack.clear();
        pack.reserve(pairs * steps * 16);
        for t in 0..pairs {
            // SAFETY: the caller's bound.
            let (r0, r1) = unsafe {
                (
                    std::slice::from_raw_parts(op.a.add(2 * t * op.ars), 8 * steps),
                    std::slice::from_raw_parts(op.a.add((2 * t + 1) * op.ars), 8 * steps),
                )
            };
            for (x0, x1) in r0.chunks_exact(8).zip(r1.chunks_exact(8)) {
                pack.extend_from_slice(x0);
                pack.extend_from_slice(x1);
            }
        }
    }

    /// One `2·R × N` tile of `C += A·Bᵀ` (dot products along `p`; `JT`: `Bᵀ`'s rows from
    /// the row table) from `A`'s rows packed in pairs at `ap` ([`pack_pairs`]). A 16-lane
    /// accumulator holds two of the AVX2 kernel's 8-lane partial sums, rows `2r` and
    /// `2r + 1` against column `j`: `B`'s eight elements are broadcast to both halves, so
    /// every lane runs the AVX2 kernel's chain of fused multiply-adds, and each half is
    /// then reduced by the AVX2 kernel's `hsum` and tail loop — the same bits.
    /// SAFETY: the tile lies inside A, B and C; `ap` holds the tile's `R` pairs.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn dot_tile<const R: usize, const N: usize, const JT: bool>(
        op: Gemm,
        ap: *const f32,
        steps: usize,
    ) {
        let p = op.k;
        let pv = 8 * steps;
        // SAFETY (whole body): the caller's bounds; packed pair `r`'s step `s` lies at
        // `(r·steps + s)·16`.
        unsafe {
            let bp: [*const f32; N] = std::array::from_fn(|j| op.brow_j::<JT>(j));
            let mut acc = [[_mm512_setzero_ps(); N]; R];
            for st in 0..steps {
                let q = 8 * st;
                let bv: [__m512; N] = std::array::from_fn(|j| {
                    let half = _mm256_loadu_pd(bp[j].add(q) as *const f64);
                    _mm512_castpd_ps(_mm512_broadcast_f64x4(half))
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_loadu_ps(ap.add((r * steps + st) * 16));
                    for j in 0..N {
                        acc[j] = _mm512_fmadd_ps(av, bv[j], acc[j]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, &v) in acc.iter().enumerate() {
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                    for (h, half) in [(0, _mm512_castps512_ps256(v)), (1, hi)] {
                        let row = 2 * r + h;
                        let mut s = super::avx2::hsum(half);
                        for qq in pv..p {
                            s += *op.a.add(row * op.ars + qq) * *bp[j].add(qq);
                        }
                        *op.c.add(row * op.ldc + j) += s;
                    }
                }
            }
        }
    }

    /// All `n` columns of `2·R` rows: tiles of [`NC`] columns, then one of the 1–3 left.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn dot_pairs<const R: usize, const JT: bool>(
        n: usize,
        op: Gemm,
        ap: *const f32,
        steps: usize,
    ) {
        // SAFETY (whole body): column blocks stay below n.
        unsafe {
            let mut j = 0;
            while j + NC <= n {
                dot_tile::<R, NC, JT>(op.at(0, j), ap, steps);
                j += NC;
            }
            match n - j {
                3 => dot_tile::<R, 3, JT>(op.at(0, j), ap, steps),
                2 => dot_tile::<R, 2, JT>(op.at(0, j), ap, steps),
                1 => dot_tile::<R, 1, JT>(op.at(0, j), ap, steps),
                _ => {}
            }
        }
    }

    /// See [`super::gemm_dot`] and [`super::gemm_dot_tab`] (`JT`): the AVX2 kernel's sums
    /// two rows to a 16-lane register (the same bits as [`super::avx2::dot`]). `A`'s row
    /// pairs are packed into `pack` first (each is then read once per column tile); an odd
    /// last row runs the AVX2 kernel. The caller checked CPU support and extents.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn dot<const JT: bool>(m: usize, n: usize, op: Gemm, pack: &mut Vec<f32>) {
        let steps = op.k / 8;
        let pairs = m / 2;
        // SAFETY: rows, row pairs and the odd last row stay below m; the pack holds
        // `pairs` pairs of `steps` steps.
        unsafe {
            pack_pairs(&op, pairs, steps, pack);
            let ap = |t: usize| pack.as_ptr().add(t * steps * 16);
            let mut t = 0;
            while t + RP <= pairs {
                dot_pairs::<RP, JT>(n, op.at(2 * t, 0), ap(t), steps);
                t += RP;
            }
            match pairs - t {
                3 => dot_pairs::<3, JT>(n, op.at(2 * t, 0), ap(t), steps),
                2 => dot_pairs::<2, JT>(n, op.at(2 * t, 0), ap(t), steps),
                1 => dot_pairs::<1, JT>(n, op.at(2 * t, 0), ap(t), steps),
                _ => {}
            }
            if m % 2 == 1 {
                super::avx2::dot_rows::<1, JT>(n, op.at(m - 1, 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::values;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|q| a(i, q) as f64 * b(q, j) as f64).sum::<f64>() as f32;
            }
        }
        c
    }

    /// Every level this CPU runs, portable first.
    fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= detected())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// `gemm_bcast` on the first `n` of `n + extra` columns (odd sizes, zero rows, columns
        /// or reduction), on every level this CPU has: matches a naive f64 product, leaves the
        /// other columns untouched, and (SIMD levels) gives every column the bits it has in the
        /// wider product, whether it falls in a full tile or in the masked tail, and the same
        /// bits on AVX-512 as on AVX2.
        #[test]
        fn bcast_columns_do_not_depend_on_the_width(
            m in 0usize..20, n in 0usize..120, k in 0usize..40, extra in 1usize..20,
            accumulate in proptest::prelude::any::<bool>(), seed in 0u64..1000,
        ) {
            let nb = n + extra;
            let a = values(seed, m * k);
            let b = values(seed + 1, k * nb);
            let c0 = values(seed + 2, m * nb);
            let want = naive(m, nb, k, |i, q| a[i * k + q], |q, j| b[q * nb + j]);
            let mut simd_bits: Option<Vec<u32>> = None;
            for level in levels() {
                let (full, part) = with_level(level, || {
                    let mut full = c0.clone();
                    gemm_bcast(m, nb, k, Mat::rows(&a, k), &b, nb, &mut full, nb, accumulate);
                    let mut part = c0.clone();
                    gemm_bcast(m, n, k, Mat::rows(&a, k), &b, nb, &mut part, nb, accumulate);
                    (full, part)
                });
                let same_bits = level > Level::Portable;
                for i in 0..m {
                    for j in 0..nb {
                        let (p, f, c) = (part[i * nb + j], full[i * nb + j], c0[i * nb + j]);
                        if j >= n {
                            proptest::prop_assert_eq!(p.to_bits(), c.to_bits(), "column {} written", j);
                            continue;
                        }
                        let w = want[i * nb + j] + if accumulate { c } else { 0.0 };
                        proptest::prop_assert!((p - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?}: {p} vs {w}");
                        if same_bits {
                            proptest::prop_assert_eq!(p.to_bits(), f.to_bits(), "{:?} row {} column {}", level, i, j);
                        }
                    }
                }
                if same_bits {
                    let bits: Vec<u32> = full.iter().map(|x| x.to_bits()).collect();
                    if let Some(prev) = &simd_bits {
                        proptest::prop_assert!(prev == &bits, "{:?} differs from AVX2", level);
                    }
                    simd_bits = Some(bits);
                }
            }
        }

        /// `gemm_dot` on every level this CPU has, odd sizes and zero rows, columns or
        /// reduction, strided rows: `C + A·Bᵀ` of a naive f64 product, padding untouched, and
        /// the same bits on every SIMD level.
        #[test]
        fn dot_matches_naive_on_every_level(
            m in 0usize..20, n in 0usize..12, p in 0usize..80, pad in 0usize..5,
            seed in 0u64..1000,
        ) {
            let (lda, ldb, ldc) = (p + pad, p + 2 * pad, n + pad);
            let a = values(seed, m * lda);
            let b = values(seed + 1, n * ldb);
            let c0 = values(seed + 2, m * ldc);
            let want = naive(m, n, p, |i, q| a[i * lda + q], |q, j| b[j * ldb + q]);
            let mut simd_bits: Option<Vec<u32>> = None;
            for level in levels() {
                let mut c = c0.clone();
                with_level(level, || gemm_dot(m, n, p, &a, lda, &b, ldb, &mut c, ldc));
                if level > Level::Portable {
                    // The same bits on AVX-512 as on AVX2 (labels agree across machines), with
                    // the AVX-512 kernel on these small products too (it takes long ones only).
                    let bits: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
                    if let Some(prev) = &simd_bits {
                        proptest::prop_assert!(prev == &bits, "{:?} differs from AVX2", level);
                        let mut f = c0.clone();
                        force_dot512(|| with_level(level, || gemm_dot(m, n, p, &a, lda, &b, ldb, &mut f, ldc)));
                        let fb: Vec<u32> = f.iter().map(|x| x.to_bits()).collect();
                        proptest::prop_assert!(prev == &fb, "{:?} (forced) differs from AVX2", level);
                    }
                    simd_bits = Some(bits);
                }
                for i in 0..m {
                    for j in 0..ldc {
                        let (x, z) = (c[i * ldc + j], c0[i * ldc + j]);
                        if j >= n {
                            proptest::prop_assert_eq!(x.to_bits(), z.to_bits());
                            continue;
                        }
                        let w = want[i * n + j] + z;
                        proptest::prop_assert!((x - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?}: {x} vs {w}");
                    }
                }
            }
        }
    }

    /// Fake quantization of an activation, the kind of closure [`map_into`] serves.
    fn fq(v: f32) -> f32 {
        crate::round_half_away(v.clamp(0.0, 3.7) / 0.1233) * 0.1233
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// `map_into` / `map2_into` on every level give the plain loop's bits, on odd lengths
        /// and on NaN, infinities, huge values and exact halves.
        #[test]
        fn map_into_gives_the_plain_loops_bits(n in 0usize..300, seed in 0u64..1000) {
            let mut x = values(seed, n);
            let y = values(seed + 1, n);
            let specials = [f32::NAN, f32::INFINITY, -f32::INFINITY, 1e30, -1e30, 0.5, -0.5, 2.5 * 0.1233, -0.0];
            for (i, v) in x.iter_mut().enumerate() {
                if i % 7 == 3 {
                    *v = specials[i % specials.len()];
                } else {
                    *v *= 10.0;
                }
            }
            let want: Vec<u32> = x.iter().map(|&v| fq(v).to_bits()).collect();
            let want2: Vec<u32> = x.iter().zip(&y).map(|(&a, &b)| (a * b - a / (b + 3.0)).to_bits()).collect();
            for level in levels() {
                let (got, got2) = with_level(level, || {
                    let mut o = vec![0f32; n];
                    map_into(&x, &mut o, fq);
                    let mut o2 = vec![0f32; n];
                    map2_into(&x, &y, &mut o2, |a, b| a * b - a / (b + 3.0));
                    (o, o2)
                });
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let got2: Vec<u32> = got2.iter().map(|v| v.to_bits()).collect();
                proptest::prop_assert_eq!(&got, &want, "{:?}", level);
                proptest::prop_assert_eq!(&got2, &want2, "{:?}", level);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// The row-table kernels on every level: rows at random offsets of one buffer (odd
        /// sizes, zero rows, columns or reduction) against a naive f64 product; on SIMD
        /// levels `gemm_bcast_tab` gives the bits of `gemm_bcast` on the same rows copied
        /// out, and `gemm_dot_tab` those of `gemm_dot`.
        #[test]
        fn table_kernels_match_naive_and_the_strided_kernels(
            m in 0usize..14, n in 0usize..80, k in 0usize..30, len in 1usize..200,
            pad in 0usize..4, seed in 0u64..1000,
        ) {
            let buf = values(seed, len + n);
            let offs = values(seed + 1, k.max(m));
            let tab: Vec<usize> = offs.iter().map(|v| ((v.abs() * 997.0) as usize) % (len + 1)).collect();
            let a = values(seed + 2, m * k);
            let ldc = n + pad;
            let c0 = values(seed + 3, m * ldc);
            // B copied out row by row, for the strided kernels and the naive product.
            let bk: Vec<f32> = tab[..k].iter().flat_map(|&o| buf[o..o + n].to_vec()).collect();
            let want = naive(m, n, k, |i, q| a[i * k + q], |q, j| bk[q * n + j]);
            for level in levels() {
                let (tabbed, strided) = with_level(level, || {
                    let mut t = c0.clone();
                    gemm_bcast_tab(m, n, k, Mat::rows(&a, k), &buf, &tab, &mut t, ldc);
                    let mut s = c0.clone();
                    gemm_bcast(m, n, k, Mat::rows(&a, k), &bk, n, &mut s, ldc, false);
                    (t, s)
                });
                for i in 0..m {
                    for j in 0..ldc {
                        let (x, z) = (tabbed[i * ldc + j], c0[i * ldc + j]);
                        if j >= n {
                            proptest::prop_assert_eq!(x.to_bits(), z.to_bits());
                            continue;
                        }
                        let w = want[i * n + j];
                        proptest::prop_assert!((x - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?}: {x} vs {w}");
                        if level > Level::Portable {
                            proptest::prop_assert_eq!(x.to_bits(), strided[i * ldc + j].to_bits());
                        }
                    }
                }
            }
            // dot: C[m×n'] += A[m×p]·Bᵀ, row j of Bᵀ = buf[tab[j]..][..p] with p = n.
            let (nn, p) = (k, n);
            let jt = &tab[..nn];
            let a2 = values(seed + 4, m * p);
            let bt: Vec<f32> = jt.iter().flat_map(|&o| buf[o..o + p].to_vec()).collect();
            let ldc2 = nn + pad;
            let c2 = values(seed + 5, m * ldc2);
            let want = naive(m, nn, p, |i, q| a2[i * p + q], |q, j| bt[j * p + q]);
            for level in levels() {
                // On AVX-512, the AVX-512 dot kernel on these small products too.
                let (tabbed, strided) = force_dot512(|| with_level(level, || {
                    let mut t = c2.clone();
                    gemm_dot_tab(m, nn, p, &a2, p, &buf, jt, &mut t, ldc2);
                    let mut s = c2.clone();
                    gemm_dot(m, nn, p, &a2, p, &bt, p, &mut s, ldc2);
                    (t, s)
                }));
                for i in 0..m {
                    for j in 0..ldc2 {
                        let (x, z) = (tabbed[i * ldc2 + j], c2[i * ldc2 + j]);
                        if j >= nn {
                            proptest::prop_assert_eq!(x.to_bits(), z.to_bits());
                            continue;
                        }
                        let w = want[i * nn + j] + z;
                        proptest::prop_assert!((x - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?}: {x} vs {w}");
                        if level > Level::Portable {
                            proptest::prop_assert_eq!(x.to_bits(), strided[i * ldc2 + j].to_bits());
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// `gemm_bcast_gather` on every level: `A[i, q] = buf[rtab[i] + ktab[q]]` at random
        /// offsets (odd sizes, zero rows, columns or reduction, repeated offsets) against a
        /// naive f64 product, columns past `n` untouched; on SIMD levels every element has
        /// the bits of the transposed product `Cᵀ = Bᵀ·Aᵀ` on `gemm_bcast` (the grid form of
        /// the direct convolution), and the same bits on AVX-512 as on AVX2.
        #[test]
        fn gather_kernel_has_the_bits_of_the_transposed_product(
            m in 0usize..40, n in 0usize..70, k in 0usize..30, len in 1usize..200,
            pad in 0usize..4, seed in 0u64..1000,
        ) {
            let buf = values(seed, 2 * len + 1);
            let offs = values(seed + 1, k + m);
            let to_off = |v: &f32| ((v.abs() * 997.0) as usize) % (len + 1);
            let ktab: Vec<usize> = offs[..k].iter().map(to_off).collect();
            let rtab: Vec<usize> = offs[k..].iter().map(to_off).collect();
            let b = values(seed + 2, k * n);
            let ldc = n + pad;
            let c0 = values(seed + 3, m * ldc);
            let a = |i: usize, q: usize| buf[rtab[i] + ktab[q]];
            let want = naive(m, n, k, a, |q, j| b[q * n + j]);
            // Aᵀ `[k, m]` and Bᵀ `[n, k]` materialised for the transposed product.
            let at: Vec<f32> = (0..k * m).map(|t| a(t % m, t / m)).collect();
            let bt: Vec<f32> = (0..n * k).map(|t| b[(t % k) * n + t / k]).collect();
            let mut simd_bits: Option<Vec<u32>> = None;
            for level in levels() {
                let (got, tr) = with_level(level, || {
                    let mut g = c0.clone();
                    gemm_bcast_gather(m, n, k, &buf, &rtab, &ktab, &b, n, &mut g, ldc);
                    let mut t = vec![0f32; n * m];
                    gemm_bcast(n, m, k, Mat::rows(&bt, k), &at, m, &mut t, m, false);
                    (g, t)
                });
                for i in 0..m {
                    for j in 0..ldc {
                        let (x, z) = (got[i * ldc + j], c0[i * ldc + j]);
                        if j >= n {
                            proptest::prop_assert_eq!(x.to_bits(), z.to_bits());
                            continue;
                        }
                        let w = want[i * n + j];
                        proptest::prop_assert!((x - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?}: {x} vs {w}");
                        if level > Level::Portable {
                            proptest::prop_assert_eq!(x.to_bits(), tr[j * m + i].to_bits(), "{:?} ({}, {})", level, i, j);
                        }
                    }
                }
                if level > Level::Portable {
                    let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                    if let Some(prev) = &simd_bits {
                        proptest::prop_assert!(prev == &bits, "{:?} differs from AVX2", level);
                    }
                    simd_bits = Some(bits);
                }
            }
        }
    }

    proptest::proptest! {
        /// `transpose` on every level: each element moved, nothing else written, for sizes
        /// around the 8 × 8 blocks (zero rows or columns included).
        #[test]
        fn transpose_moves_every_element(rows in 0usize..30, cols in 0usize..30, seed in 0u64..100) {
            let src = values(seed, rows * cols);
            for level in levels() {
                let mut dst = vec![f32::NAN; rows * cols + 3];
                with_level(level, || transpose(&src, rows, cols, &mut dst));
                for r in 0..rows {
                    for c in 0..cols {
                        proptest::prop_assert_eq!(dst[c * rows + r].to_bits(), src[r * cols + c].to_bits());
                    }
                }
                proptest::prop_assert!(dst[rows * cols..].iter().all(|v| v.is_nan()));
            }
        }
    }

    /// The cost model prefers full tiles: ResNet-20's 7×7 stage (64 channels, 63 grid
    /// columns) gathered, a 12-channel layer at 28×28 on the grid, on every SIMD level.
    #[test]
    fn cost_model_picks_the_fuller_tiles() {
        for level in levels().into_iter().filter(|&l| l > Level::Portable) {
            with_level(level, || {
                assert!(bcast_cycles(49, 64) < bcast_cycles(64, 63), "{level:?}");
                assert!(bcast_cycles(784, 12) > bcast_cycles(12, 840), "{level:?}");
                assert!(bcast_cycles(6, 16) > 0.0);
            });
        }
    }

    #[test]
    fn kernels_match_naive_on_all_tile_remainders() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 7, 5),
            (4, 24, 9),
            (5, 33, 16),
            (7, 50, 3),
            (16, 100, 144),
            (9, 47, 17),
            (17, 97, 33),
            (15, 49, 8),
        ] {
            for level in levels() {
                with_level(level, || remainders(m, n, k));
            }
        }
    }

    fn remainders(m: usize, n: usize, k: usize) {
        {
            let a = values(1, m * k);
            let b = values(2, k * n);
            // bcast with A row-major, then with A transposed-strided
            let want = naive(m, n, k, |i, q| a[i * k + q], |q, j| b[q * n + j]);
            let mut c = values(3, m * n);
            gemm_bcast(m, n, k, Mat::rows(&a, k), &b, n, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() <= 1e-4, "bcast {m} {n} {k} {:?}", level());
            }
            let at: Vec<f32> = (0..k * m).map(|t| a[(t % m) * k + t / m]).collect();
            let c0 = values(4, m * n);
            let mut c = c0.clone();
            gemm_bcast(m, n, k, Mat::rows_t(&at, m), &b, n, &mut c, n, true);
            for ((x, y), z) in c.iter().zip(&want).zip(&c0) {
                assert!(
                    (x - y - z).abs() <= 1e-4,
                    "bcast acc {m} {n} {k} {:?}",
                    level()
                );
            }
            // dot: C += A[m×k]·Bt[n×k]ᵀ
            let bt: Vec<f32> = (0..n * k).map(|t| b[(t % k) * n + t / k]).collect();
            let mut c = c0.clone();
            gemm_dot(m, n, k, &a, k, &bt, k, &mut c, n);
            for ((x, y), z) in c.iter().zip(&want).zip(&c0) {
                assert!((x - y - z).abs() <= 1e-4, "dot {m} {n} {k} {:?}", level());
            }
            // gemm_rows: each row the same bits when computed on its own.
            for portable in [false, true] {
                let rows = |m, a: &[f32], c: &mut [f32]| {
                    if portable {
                        gemm_rows_portable(m, n, k, a, k, &b, n, c, n);
                    } else {
                        gemm_rows(m, n, k, a, k, &b, n, c, n);
                    }
                };
                let mut c = c0.clone();
                rows(m, &a, &mut c);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-4, "gemm_rows {m} {n} {k} {portable}");
                }
                for i in 0..m {
                    let mut r = vec![f32::NAN; n];
                    rows(1, &a[i * k..(i + 1) * k], &mut r);
                    let same = r.iter().zip(&c[i * n..(i + 1) * n]);
                    assert!(same.into_iter().all(|(x, y)| x.to_bits() == y.to_bits()));
                }
            }
        }
    }
}
