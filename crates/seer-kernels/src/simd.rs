//! Small-M matrix kernels for convolution on im2col tiles, without packing: AVX2+FMA
//! register-tiled micro-kernels chosen at run time, with the `gemm` crate as the portable
//! fallback.
//!
//! Convolution GEMMs here have a small dimension (output channels, 16–64 in ResNet-20) and
//! operands that are already laid out for unit-stride loads, so a packing GEMM spends much
//! of its time copying. These kernels read the operands in place:
//! - [`gemm_bcast`]: `C = A·B` with `B` row-major (loads along its rows) and `A` read by
//!   broadcasting single elements (any strides) — forward and grad-input;
//! - [`gemm_dot`]: `C += A·Bᵀ` with both `A` and `B` row-major along the reduction
//!   (dot products of rows) — grad-weight.
//!
//! Measured on a Zen 3 (AVX2, no AVX-512); on an AVX-512 machine these AVX2 kernels still
//! run (the `gemm` fallback would use AVX-512, see docs/benchmarks.md).

use crate::matmul::{Mat, matmul};
use gemm::Parallelism;

fn extent(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("SEER_KERNELS_NO_SIMD").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
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
    if has_avx2() && k > 0 {
        // SAFETY: CPU support checked above; every access stays within the extents asserted.
        unsafe {
            avx2::bcast(
                m,
                n,
                avx2::Gemm {
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
                },
            )
        };
        return;
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
    if has_avx2() {
        // SAFETY: CPU support checked above; every access stays within the extents asserted.
        unsafe {
            avx2::dot(
                m,
                n,
                avx2::Gemm {
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
                },
            )
        };
        return;
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

/// `C[m×n] (ldc) = A[m×k] · B[k×n]`, all row-major (leading dimensions `lda`, `ldb`, `ldc`),
/// where every element of `C` is summed over `k` in the order `0, 1, …, k − 1`: the same
/// bits for a row of `A` whatever `m`, whichever rows surround it and however the caller
/// splits `A` into calls (the batch-invariant forward of [`crate::linear`]). AVX2+FMA: the
/// [`gemm_bcast`] kernels (fused multiply-adds; columns past the last multiple of 8 as
/// masked vectors, the same chain per element); elsewhere a portable loop (separate
/// multiply and add, so the bits differ between the two paths, not between batches).
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Operands of `C = [C +] A·B` (`A` `m × k`, `B` `k × n`), each element addressed by
    /// strides: `A[i, q]` at `a + i·ars + q·acs`, `B[q, j]` at `b + q·brs + j·bcs`, `C[i, j]`
    /// at `c + i·ldc + j`. The broadcast kernels load `B` along rows (`bcs = 1`); the dot
    /// kernels load `A` and `B` along the reduction (`acs = brs = 1`) and always accumulate.
    #[derive(Clone, Copy)]
    pub(super) struct Gemm {
        pub k: usize,
        pub a: *const f32,
        pub ars: usize,
        pub acs: usize,
        pub b: *const f32,
        pub brs: usize,
        pub bcs: usize,
        pub c: *mut f32,
        pub ldc: usize,
        pub accumulate: bool,
    }

    impl Gemm {
        /// The block whose top-left corner of `C` is row `i`, column `j`.
        /// SAFETY: the block's first row and column must lie inside the operands.
        unsafe fn at(self, i: usize, j: usize) -> Self {
            // SAFETY: the caller's bound.
            unsafe {
                Self {
                    a: self.a.add(i * self.ars),
                    b: self.b.add(j * self.bcs),
                    c: self.c.add(i * self.ldc + j),
                    ..self
                }
            }
        }
    }

    /// One `MR × (8·NV)` tile of `C = [C +] A·B`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_tile<const MR: usize, const NV: usize>(op: Gemm) {
        let Gemm { a, b, c, ldc, .. } = op;
        // SAFETY (whole body): the caller guarantees the tile lies inside A, B and C.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            for kk in 0..op.k {
                let bp = b.add(kk * op.brs);
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm256_loadu_ps(bp.add(8 * v));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * op.ars + kk * op.acs));
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

    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_rows<const MR: usize>(n: usize, op: Gemm) {
        // SAFETY (whole body): columns stay below n; rows below MR (caller's bound).
        unsafe {
            let mut j = 0;
            while j + 16 <= n {
                bcast_tile::<MR, 2>(op.at(0, j));
                j += 16;
            }
            if j + 8 <= n {
                bcast_tile::<MR, 1>(op.at(0, j));
            }
            // The last n mod 8 columns: `bcast_tail`, called for all rows by `bcast`.
        }
    }

    /// Columns `0..rem` (`1 ≤ rem < 8`) of an `MR`-row block: one masked vector per row
    /// (lanes past `rem` are neither read nor written), the same chain of fused
    /// multiply-adds over `k` per element as the full tiles.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bcast_tail<const MR: usize>(rem: usize, op: Gemm) {
        // SAFETY (whole body): masked lanes stay below rem; rows below MR (caller's bound).
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lanes);
            let mut acc = [_mm256_setzero_ps(); MR];
            for kk in 0..op.k {
                let bv = _mm256_maskload_ps(op.b.add(kk * op.brs), mask);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*op.a.add(r * op.ars + kk * op.acs));
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

    /// Calls `$rows::<R>(n, op.at(i, 0))` for the row blocks of `m` rows: blocks of 4, then
    /// one block of the 3, 2 or 1 rows left. Expands in place (inside the caller's unsafe
    /// block and target features).
    macro_rules! row_blocks {
        ($rows:ident, $m:expr, $n:expr, $op:expr) => {{
            let (m, n, op) = ($m, $n, $op);
            let mut i = 0;
            while i + 4 <= m {
                $rows::<4>(n, op.at(i, 0));
                i += 4;
            }
            let rest = op.at(i, 0);
            match m - i {
                3 => $rows::<3>(n, rest),
                2 => $rows::<2>(n, rest),
                1 => $rows::<1>(n, rest),
                _ => {}
            }
        }};
    }

    /// See [`super::gemm_bcast`]; the caller checked CPU support and extents. Full vectors of
    /// columns in `MR × 16` and `MR × 8` tiles, then the last `n mod 8` columns as masked
    /// vectors in blocks of 8 rows (8 independent accumulator chains).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bcast(m: usize, n: usize, op: Gemm) {
        // SAFETY: row blocks stay below m, the tail's columns below n.
        unsafe {
            row_blocks!(bcast_rows, m, n, op);
            let (j, rem) = (n / 8 * 8, n % 8);
            if rem == 0 {
                return;
            }
            let op = op.at(0, j);
            let mut i = 0;
            while i + 8 <= m {
                bcast_tail::<8>(rem, op.at(i, 0));
                i += 8;
            }
            let rest = op.at(i, 0);
            match m - i {
                7 => bcast_tail::<7>(rem, rest),
                6 => bcast_tail::<6>(rem, rest),
                5 => bcast_tail::<5>(rem, rest),
                4 => bcast_tail::<4>(rem, rest),
                3 => bcast_tail::<3>(rem, rest),
                2 => bcast_tail::<2>(rem, rest),
                1 => bcast_tail::<1>(rem, rest),
                _ => {}
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One `MR × NR` tile of `C += A·Bᵀ` (dot products along `p`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_tile<const MR: usize, const NR: usize>(op: Gemm) {
        let Gemm {
            k: p,
            a,
            ars: lda,
            b,
            bcs: ldb,
            c,
            ldc,
            ..
        } = op;
        // SAFETY (whole body): the caller guarantees the tile lies inside A, B and C.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let pv = p / 8 * 8;
            let mut q = 0;
            while q < pv {
                let mut bv = [_mm256_setzero_ps(); NR];
                for (j, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm256_loadu_ps(b.add(j * ldb + q));
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
                        s += *a.add(r * lda + qq) * *b.add(j * ldb + qq);
                    }
                    *c.add(r * ldc + j) += s;
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows<const MR: usize>(n: usize, op: Gemm) {
        // SAFETY (whole body): column blocks stay below n.
        unsafe {
            // 4×2 tiles of 8-lane partial sums (8 accumulators + 2 B + 1 A register).
            let pairs = n / 2 * 2;
            for j in (0..pairs).step_by(2) {
                dot_tile::<MR, 2>(op.at(0, j));
            }
            if n > pairs {
                dot_tile::<MR, 1>(op.at(0, pairs));
            }
        }
    }

    /// See [`super::gemm_dot`]; the caller checked CPU support and extents.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(m: usize, n: usize, op: Gemm) {
        // SAFETY: row blocks stay below m.
        unsafe { row_blocks!(dot_rows, m, n, op) }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// `gemm_bcast` on the first `n` of `n + extra` columns (odd sizes, zero rows, columns
        /// or reduction): matches a naive f64 product, leaves the other columns untouched, and
        /// (AVX2) gives every column the bits it has in the wider product, whether it falls in
        /// a full tile or in the masked tail.
        #[test]
        fn bcast_columns_do_not_depend_on_the_width(
            m in 0usize..20, n in 0usize..40, k in 0usize..40, extra in 1usize..9,
            accumulate in proptest::prelude::any::<bool>(), seed in 0u64..1000,
        ) {
            let nb = n + extra;
            let a = values(seed, m * k);
            let b = values(seed + 1, k * nb);
            let c0 = values(seed + 2, m * nb);
            let mut full = c0.clone();
            gemm_bcast(m, nb, k, Mat::rows(&a, k), &b, nb, &mut full, nb, accumulate);
            let mut part = c0.clone();
            gemm_bcast(m, n, k, Mat::rows(&a, k), &b, nb, &mut part, nb, accumulate);
            let want = naive(m, nb, k, |i, q| a[i * k + q], |q, j| b[q * nb + j]);
            #[cfg(target_arch = "x86_64")]
            let same_bits = has_avx2();
            #[cfg(not(target_arch = "x86_64"))]
            let same_bits = false;
            for i in 0..m {
                for j in 0..nb {
                    let (p, f, c) = (part[i * nb + j], full[i * nb + j], c0[i * nb + j]);
                    if j >= n {
                        proptest::prop_assert_eq!(p.to_bits(), c.to_bits(), "column {} written", j);
                        continue;
                    }
                    let w = want[i * nb + j] + if accumulate { c } else { 0.0 };
                    proptest::prop_assert!((p - w).abs() <= 1e-4 * (1.0 + w.abs()), "{p} vs {w}");
                    if same_bits {
                        proptest::prop_assert_eq!(p.to_bits(), f.to_bits(), "row {} column {}", i, j);
                    }
                }
            }
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
        ] {
            let a = values(1, m * k);
            let b = values(2, k * n);
            // bcast with A row-major, then with A transposed-strided
            let want = naive(m, n, k, |i, q| a[i * k + q], |q, j| b[q * n + j]);
            let mut c = values(3, m * n);
            gemm_bcast(m, n, k, Mat::rows(&a, k), &b, n, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() <= 1e-4, "bcast {m} {n} {k}");
            }
            let at: Vec<f32> = (0..k * m).map(|t| a[(t % m) * k + t / m]).collect();
            let c0 = values(4, m * n);
            let mut c = c0.clone();
            gemm_bcast(m, n, k, Mat::rows_t(&at, m), &b, n, &mut c, n, true);
            for ((x, y), z) in c.iter().zip(&want).zip(&c0) {
                assert!((x - y - z).abs() <= 1e-4, "bcast acc {m} {n} {k}");
            }
            // dot: C += A[m×k]·Bt[n×k]ᵀ
            let bt: Vec<f32> = (0..n * k).map(|t| b[(t % k) * n + t / k]).collect();
            let mut c = c0.clone();
            gemm_dot(m, n, k, &a, k, &bt, k, &mut c, n);
            for ((x, y), z) in c.iter().zip(&want).zip(&c0) {
                assert!((x - y - z).abs() <= 1e-4, "dot {m} {n} {k}");
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
