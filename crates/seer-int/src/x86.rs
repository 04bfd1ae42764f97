//! x86-64 SIMD micro-kernels of the `u8 × i8 → i32` GEMM (AVX-512 VNNI and AVX2).
//!
//! Every kernel computes one micro-tile `tile[MR][16] = Σ_g A_g · B_g` over `groups` groups
//! of 4 reduction steps (2 for the wide kernel) and overwrites `tile` (row-major, 16 i32 per
//! row), or adds to it when `add` (the implicit-GEMM convolution sums one call per kernel row). A's 4 codes of row `i`, group `g` sit at `a.ptr + i·a.row + g·a.group` (in place in the
//! row-major matrix, or packed as `[g][MR][4]`). B is `[g][16][4]` i8 (or `[h][16][2]` i16), so one 32-bit broadcast of
//! A meets one 32-bit lane per output channel of B. The exactness argument for each AVX2 kernel is in
//! the `gemm` module docs; the caller picks the kernel from the measured operand ranges.

use std::arch::x86_64::*;

use crate::gemm::APanel;

/// Whether a buffer of `len` i32 holds an `mr × 16` tile whose rows start `ld` apart
/// (`1 ≤ mr ≤ 8`, `ld ≥ 16`): the bounds every kernel writing a strided tile checks.
fn tile_fits(mr: usize, len: usize, ld: usize) -> bool {
    (1..=8).contains(&mr) && ld >= 16 && len >= (mr - 1) * ld + 16
}

/// AVX-512 VNNI: 8 rows × 16 channels, `vpdpbusd` (exact for all u8×i8 codes).
///
/// Compiled everywhere, executed only where `avx512vnni` is detected.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; the 4 bytes at
/// `a.ptr + i·a.row + g·a.group` (row `i < 8`, group `g`) and `groups·64` bytes at `b` must be
/// readable; `tile` must hold 128 i32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn vnni_8x16(
    a: APanel,
    b: *const i8,
    groups: usize,
    tile: &mut [i32],
    add: bool,
) {
    assert!(tile.len() >= 8 * 16);
    let mut acc = [_mm512_setzero_si512(); 8];
    if add {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: tile holds 8 rows of 16 i32 (asserted).
            *acc = unsafe { _mm512_loadu_si512(tile.as_ptr().add(i * 16) as *const _) };
        }
    }
    for g in 0..groups {
        // SAFETY: in bounds by the caller's contract; unaligned loads.
        unsafe {
            let bv = _mm512_loadu_si512(b.add(g * 64) as *const _);
            let ag = a.ptr.add(g * a.group);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                *acc = _mm512_dpbusd_epi32(*acc, av, bv);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: tile holds 8 rows of 16 i32.
        unsafe { _mm512_storeu_si512(tile.as_mut_ptr().add(i * 16) as *mut _, *acc) };
    }
}

/// AVX-512 VNNI with `MR` (1 to 8) rows × 16 channels over `segs` segments of `groups`
/// groups: segment `q` of A starts `q·seg` bytes after `a.ptr` (the kernel rows of an
/// implicit-GEMM convolution on zero-padded input rows, one padded row apart), B continues
/// contiguously (`(q·groups + g)·64` bytes). The same `vpdpbusd` per row and group as
/// [`vnni_8x16`] (exact i32 sums; integer adds, so any order gives the same sums); writes
/// the `MR × 16` i32 tile whose rows start `ld` elements apart in `tile` (16 for a packed
/// tile, the accumulator row length to write a task's accumulators in place), or adds to it
/// when `add`. Panics unless `1 ≤ MR ≤ 8`, `ld ≥ 16` and `tile` holds `(MR − 1)·ld + 16`.
///
/// # Safety
/// As [`vnni_8x16`], for rows `i < MR` and every segment: the 4 bytes at
/// `a.ptr + q·seg + i·a.row + g·a.group` and `segs·groups·64` bytes at `b` must be readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn vnni_rows<const MR: usize>(
    a: APanel,
    (segs, seg): (usize, usize),
    b: *const i8,
    groups: usize,
    (tile, ld): (&mut [i32], usize),
    add: bool,
) {
    assert!(tile_fits(MR, tile.len(), ld));
    let mut acc = [_mm512_setzero_si512(); MR];
    if add {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: tile holds MR rows of 16 i32, ld apart (asserted).
            *acc = unsafe { _mm512_loadu_si512(tile.as_ptr().add(i * ld) as *const _) };
        }
    }
    for q in 0..segs {
        // SAFETY: in bounds by the caller's contract.
        let (aseg, bseg) = unsafe { (a.ptr.add(q * seg), b.add(q * groups * 64)) };
        for g in 0..groups {
            // SAFETY: in bounds by the caller's contract; unaligned loads.
            unsafe {
                let bv = _mm512_loadu_si512(bseg.add(g * 64) as *const _);
                let ag = aseg.add(g * a.group);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                    *acc = _mm512_dpbusd_epi32(*acc, av, bv);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: tile holds MR rows of 16 i32, ld apart.
        unsafe { _mm512_storeu_si512(tile.as_mut_ptr().add(i * ld) as *mut _, *acc) };
    }
}

/// AVX2: 4 rows × 16 channels, `vpmaddubsw` then `vpmaddwd` at every step.
///
/// # Safety
/// AVX2 required; the 4 bytes at `a.ptr + i·a.row + g·a.group` (row `i < 4`, group `g`) and
/// `groups·64` bytes at `b` must be readable; `tile` holds 64 i32. Exact only if every pair sum `a0·b0 + a1·b1` fits in i16 (caller's range check).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_i32_4x16(
    a: APanel,
    b: *const i8,
    groups: usize,
    tile: &mut [i32],
    add: bool,
) {
    assert!(tile.len() >= 4 * 16);
    let ones = _mm256_set1_epi16(1);
    let mut acc = load_4x16(tile, add);
    for g in 0..groups {
        // SAFETY: in bounds by the caller's contract; unaligned loads.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
            let ag = a.ptr.add(g * a.group);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                acc[0] = _mm256_add_epi32(
                    acc[0],
                    _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones),
                );
                acc[1] = _mm256_add_epi32(
                    acc[1],
                    _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones),
                );
            }
        }
    }
    store_4x16(&acc, tile);
}

/// AVX2: 4 rows × 16 channels, `vpmaddubsw` accumulated in i16 for up to `s` groups, then
/// widened to i32 with `vpmaddwd`.
///
/// # Safety
/// As [`avx2_i32_4x16`], and `s` pair sums must fit in i16: `s·2·a_max·w_max ≤ 32767`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_i16_4x16(
    a: APanel,
    b: *const i8,
    groups: usize,
    s: usize,
    tile: &mut [i32],
    add: bool,
) {
    assert!(tile.len() >= 4 * 16 && s >= 1);
    let ones = _mm256_set1_epi16(1);
    let mut acc = load_4x16(tile, add);
    let mut g0 = 0;
    while g0 < groups {
        let g1 = groups.min(g0.saturating_add(s));
        let mut acc16 = [[_mm256_setzero_si256(); 2]; 4];
        for g in g0..g1 {
            // SAFETY: in bounds by the caller's contract; unaligned loads.
            unsafe {
                let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
                let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
                let ag = a.ptr.add(g * a.group);
                for (i, acc16) in acc16.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                    acc16[0] = _mm256_add_epi16(acc16[0], _mm256_maddubs_epi16(av, b0));
                    acc16[1] = _mm256_add_epi16(acc16[1], _mm256_maddubs_epi16(av, b1));
                }
            }
        }
        for (acc, acc16) in acc.iter_mut().zip(&acc16) {
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(acc16[0], ones));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(acc16[1], ones));
        }
        g0 = g1;
    }
    store_4x16(&acc, tile);
}

/// AVX2: `MR` rows × 16 channels, `vpmaddubsw` accumulated in i16 registers (`2·MR`
/// accumulators, so `MR = 6` fills the 16 registers without spills) and widened with
/// `vpmaddwd` into the i32 tile in memory (rows `ld` apart in `tile`, as [`vnni_rows`]) after
/// every `s` groups and at the end. Per row and group of 4 `k`: 1 broadcast, 2 `vpmaddubsw`,
/// 2 `vpaddw`.
///
/// The reduction runs over `segs` segments of `groups` groups each, as in [`avx2_wide`]:
/// segment `q` of A starts `q·seg` bytes after `a.ptr` (the kernel rows of an implicit-GEMM
/// convolution, one padded input row apart), while B continues contiguously
/// (`(q·groups + g)·64` bytes). The `s`-group count runs across segments.
///
/// # Safety
/// AVX2 required; `1 ≤ MR ≤ 8`, `s ≥ 1`; the 4 bytes at `a.ptr + q·seg + i·a.row + g·a.group`
/// (segment `q < segs`, row `i < MR`, group `g < groups`) and `segs·groups·64` bytes at `b`
/// must be readable (the tile's bounds are checked). Exact only if `s` pair sums fit in i16:
/// `s·2·a_max·w_max ≤ 32767` (caller's range check, as [`avx2_i16_4x16`]).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn avx2_i16_rows<const MR: usize>(
    a: APanel,
    (segs, seg): (usize, usize),
    b: *const i8,
    groups: usize,
    s: usize,
    (tile, ld): (&mut [i32], usize),
    add: bool,
) {
    assert!(tile_fits(MR, tile.len(), ld) && s >= 1);
    let mut acc16 = [[_mm256_setzero_si256(); 2]; MR];
    // Whether `tile` already holds partial sums (else the first widening overwrites it).
    let mut have = add;
    // Groups left before the i16 sums must be widened.
    let mut left = s;
    for q in 0..segs {
        // SAFETY: in bounds by the caller's contract.
        let (aseg, bseg) = unsafe { (a.ptr.add(q * seg), b.add(q * groups * 64)) };
        let mut g0 = 0;
        while g0 < groups {
            let g1 = groups.min(g0.saturating_add(left));
            for g in g0..g1 {
                // SAFETY: in bounds by the caller's contract; unaligned loads.
                unsafe {
                    let b0 = _mm256_loadu_si256(bseg.add(g * 64) as *const __m256i);
                    let b1 = _mm256_loadu_si256(bseg.add(g * 64 + 32) as *const __m256i);
                    let ag = aseg.add(g * a.group);
                    for (i, acc16) in acc16.iter_mut().enumerate() {
                        let av =
                            _mm256_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                        acc16[0] = _mm256_add_epi16(acc16[0], _mm256_maddubs_epi16(av, b0));
                        acc16[1] = _mm256_add_epi16(acc16[1], _mm256_maddubs_epi16(av, b1));
                    }
                }
            }
            left -= g1 - g0;
            g0 = g1;
            if left == 0 {
                widen_i16(&mut acc16, (&mut *tile, ld), have);
                have = true;
                left = s;
            }
        }
    }
    if left != s || !have {
        widen_i16(&mut acc16, (tile, ld), have);
    }
}

/// Widens the i16 sums `acc16` of an `MR × 16` tile with `vpmaddwd` (adjacent lanes belong to
/// one channel) into `tile` (rows `ld` i32 apart), adding to its contents when `add`, and
/// zeroes `acc16`.
#[target_feature(enable = "avx2")]
#[inline]
fn widen_i16<const MR: usize>(
    acc16: &mut [[__m256i; 2]; MR],
    (tile, ld): (&mut [i32], usize),
    add: bool,
) {
    assert!(tile_fits(MR, tile.len(), ld));
    let ones = _mm256_set1_epi16(1);
    for (i, acc16) in acc16.iter_mut().enumerate() {
        for (h, acc16) in acc16.iter_mut().enumerate() {
            // SAFETY: tile holds MR rows of 16 i32, ld apart (asserted); unaligned loads and
            // stores.
            unsafe {
                let t = tile.as_mut_ptr().add(i * ld + h * 8) as *mut __m256i;
                let mut v = _mm256_madd_epi16(*acc16, ones);
                if add {
                    v = _mm256_add_epi32(v, _mm256_loadu_si256(t));
                }
                _mm256_storeu_si256(t, v);
            }
            *acc16 = _mm256_setzero_si256();
        }
    }
}

/// AVX2: `MR` rows × 16 channels with `vpmaddwd` only, exact for all codes. A holds the
/// activation codes already widened to i16 (zero-extended u8), so one 32-bit broadcast is
/// the pair `(a_{2h}, a_{2h+1})` of one row; B is the i16 panel `[h][16][2]` (sign-extended
/// once). Per row and pair of `k`: 1 broadcast, 2 `vpmaddwd`, 2 `vpaddd` — no shuffles.
/// `MR = 6` keeps 12 accumulators, 2 weight vectors and the broadcast in the 16 registers.
///
/// The reduction runs over `segs` segments of `groups` groups each: segment `s` of A starts
/// `s·seg` bytes after `a.ptr` (the kernel rows of an implicit-GEMM convolution, one input
/// row apart), while B continues contiguously (`(s·groups + g)·64` i16). The tile's rows are
/// `ld` apart in `tile`, as in [`vnni_rows`].
///
/// # Safety
/// AVX2 required; `1 ≤ MR ≤ 8`; the 4 i16 (8 bytes) at `a.ptr + s·seg + i·a.row + g·a.group`
/// (segment `s < segs`, row `i < MR`, group `g < groups`; strides in bytes) and
/// `segs·groups·64` i16 at `b` must be readable (the tile's bounds are checked).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_wide<const MR: usize>(
    a: APanel,
    (segs, seg): (usize, usize),
    b: *const i16,
    groups: usize,
    (tile, ld): (&mut [i32], usize),
    add: bool,
) {
    assert!(tile_fits(MR, tile.len(), ld));
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    if add {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: tile holds MR rows of 16 i32, ld apart (asserted).
            unsafe {
                acc[0] = _mm256_loadu_si256(tile.as_ptr().add(i * ld) as *const __m256i);
                acc[1] = _mm256_loadu_si256(tile.as_ptr().add(i * ld + 8) as *const __m256i);
            }
        }
    }
    for s in 0..segs {
        // SAFETY: in bounds by the caller's contract.
        let (aseg, bseg) = unsafe { (a.ptr.add(s * seg), b.add(s * groups * 64)) };
        for g in 0..groups {
            for h in 0..2 {
                // SAFETY: in bounds by the caller's contract; unaligned loads.
                unsafe {
                    let bg = bseg.add(g * 64 + h * 32);
                    let b0 = _mm256_loadu_si256(bg as *const __m256i);
                    let b1 = _mm256_loadu_si256(bg.add(16) as *const __m256i);
                    let ag = aseg.add(g * a.group + h * 4);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x =
                            _mm256_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: tile holds MR rows of 16 i32, ld apart (asserted).
        unsafe {
            _mm256_storeu_si256(tile.as_mut_ptr().add(i * ld) as *mut __m256i, acc[0]);
            _mm256_storeu_si256(tile.as_mut_ptr().add(i * ld + 8) as *mut __m256i, acc[1]);
        }
    }
}

/// The previous u8-input wide kernel (2 `vpshufb` per row and group), kept for the A/B timing test.
/// AVX2: 4 rows × 16 channels with `vpmaddwd` only, exact for all codes. Each broadcast
/// of 4 activation bytes is zero-extended in registers into the i16 pairs `(a0, a1)` and
/// `(a2, a3)` by `vpshufb`; B is the i16 panel `[h][16][2]` (sign-extended once).
///
/// # Safety
/// AVX2 required; the 4 bytes at `a.ptr + i·a.row + g·a.group` (row `i < 4`, group `g`) and
/// `groups·64` i16 at `b` must be readable; `tile` holds 64 i32.
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_wide_u8_4x16(
    a: APanel,
    b: *const i16,
    groups: usize,
    tile: &mut [i32],
    add: bool,
) {
    assert!(tile.len() >= 4 * 16);
    // Per 32-bit lane: bytes (a0, 0, a1, 0) and (a2, 0, a3, 0) (index 0x80 writes zero).
    let lo = _mm256_set1_epi32(i32::from_le_bytes([0, 0x80, 1, 0x80]));
    let hi = _mm256_set1_epi32(i32::from_le_bytes([2, 0x80, 3, 0x80]));
    let mut acc = load_4x16(tile, add);
    for g in 0..groups {
        // SAFETY: in bounds by the caller's contract; unaligned loads.
        unsafe {
            let bg = b.add(g * 64);
            let b00 = _mm256_loadu_si256(bg as *const __m256i);
            let b01 = _mm256_loadu_si256(bg.add(16) as *const __m256i);
            let b10 = _mm256_loadu_si256(bg.add(32) as *const __m256i);
            let b11 = _mm256_loadu_si256(bg.add(48) as *const __m256i);
            let ag = a.ptr.add(g * a.group);
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((ag.add(i * a.row) as *const i32).read_unaligned());
                let p0 = _mm256_shuffle_epi8(x, lo);
                let p1 = _mm256_shuffle_epi8(x, hi);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p0, b00));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p0, b01));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p1, b10));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p1, b11));
            }
        }
    }
    store_4x16(&acc, tile);
}

/// The starting accumulators of a 4×16 AVX2 kernel: `tile`'s contents when `add`, else 0.
#[target_feature(enable = "avx2")]
fn load_4x16(tile: &[i32], add: bool) -> [[__m256i; 2]; 4] {
    assert!(tile.len() >= 4 * 16);
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
    if add {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: tile holds at least 4 rows of 16 i32 (asserted).
            unsafe {
                acc[0] = _mm256_loadu_si256(tile.as_ptr().add(i * 16) as *const __m256i);
                acc[1] = _mm256_loadu_si256(tile.as_ptr().add(i * 16 + 8) as *const __m256i);
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2")]
fn store_4x16(acc: &[[__m256i; 2]; 4], tile: &mut [i32]) {
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: tile holds at least 4 rows of 16 i32 (asserted by the kernels).
        unsafe {
            _mm256_storeu_si256(tile.as_mut_ptr().add(i * 16) as *mut __m256i, acc[0]);
            _mm256_storeu_si256(tile.as_mut_ptr().add(i * 16 + 8) as *mut __m256i, acc[1]);
        }
    }
}

/// Requantisation of one row (AVX2, 8 lanes): `o[j] = round(clamp(a[j]·s[j] + b[j]
/// (+ r[j]·r_step), 0, α)/step)` with exactly the scalar path's f32 operations (multiply,
/// add, add, clamp, divide; no FMA), then `round` half away from zero as
/// [`round_code`](crate::layers::round_code): truncate, add 1 where the fraction is ≥ 0.5.
/// The tail beyond a multiple of 8 is left to the caller; returns how many were written.
///
/// The factors `s`, `b` are per element, or — when shorter than `o`'s multiple of 8 — the
/// `p = s.len()` factors of `p` channels repeated along `o` (element `j` takes `s[j mod p]`;
/// several whole rows of a tile in one call), which needs `p` a non-zero multiple of 8.
///
/// # Safety
/// AVX2 required. `a` (and `r` if given) must be at least `o.len()` long; `s` and `b` as
/// long, or as above (checked: panics otherwise).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn requant_row_avx2(
    o: &mut [u8],
    a: &[i32],
    s: &[f32],
    b: &[f32],
    r: Option<(&[u8], f32)>,
    alpha: f32,
    step: f32,
) -> usize {
    let n = o.len() / 8 * 8;
    assert!(a.len() >= n);
    // Channel period of the factors (none when they are per element).
    let period = if s.len() < n || b.len() < n {
        assert!(!s.is_empty() && s.len().is_multiple_of(8) && b.len() >= s.len());
        s.len()
    } else {
        usize::MAX
    };
    if let Some((r, _)) = r {
        assert!(r.len() >= n);
    }
    let va = _mm256_set1_ps(alpha);
    let vs = _mm256_set1_ps(step);
    let (mut j, mut c) = (0, 0);
    while j < n {
        // SAFETY: j + 8 ≤ n ≤ a's and r's lengths, c + 8 ≤ s's and b's (c = j when they are
        // per element, else c < period, a multiple of 8) (asserted); unaligned loads.
        unsafe {
            let acc = _mm256_cvtepi32_ps(_mm256_loadu_si256(a.as_ptr().add(j) as *const __m256i));
            let mut y = _mm256_add_ps(
                _mm256_mul_ps(acc, _mm256_loadu_ps(s.as_ptr().add(c))),
                _mm256_loadu_ps(b.as_ptr().add(c)),
            );
            if let Some((r, r_step)) = r {
                let rv = _mm_loadl_epi64(r.as_ptr().add(j) as *const __m128i);
                let rf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(rv));
                y = _mm256_add_ps(y, _mm256_mul_ps(rf, _mm256_set1_ps(r_step)));
            }
            // (y is never NaN: finite codes, scales, biases.)
            store_codes8(o.as_mut_ptr().add(j), y, va, vs);
        }
        j += 8;
        c += 8;
        if c == period {
            c = 0;
        }
    }
    n
}

/// Stores the 8 codes `round(clamp(y, 0, α)/step)` (ties away from zero; `α` and `step`
/// broadcast in `va`, `vs`) at `dst`: clamp as max then min (NaN → 0, as the plain-Rust
/// [`round_code`](crate::layers::round_code) of a NaN), an IEEE division, truncation plus one
/// where the fraction is at least ½, and saturating packs to bytes (codes lie in 0..=255).
///
/// # Safety
/// AVX2 required; 8 bytes at `dst` writable.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_codes8(dst: *mut u8, y: __m256, va: __m256, vs: __m256) {
    let c = _mm256_min_ps(_mm256_max_ps(y, _mm256_setzero_ps()), va);
    let v = _mm256_div_ps(c, vs);
    let t = _mm256_cvttps_epi32(v);
    let frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
    let up = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5))),
        _mm256_set1_epi32(1),
    );
    let q = _mm256_add_epi32(t, up);
    let p16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
    let p8 = _mm_packus_epi16(p16, p16);
    // SAFETY: 8 writable bytes at dst (the caller's contract); unaligned store.
    unsafe { _mm_storel_epi64(dst as *mut __m128i, p8) };
}

/// [`RealSink`](crate::fused::RealSink)'s real-valued epilogue on AVX2:
/// `o[j] = act(a[j]·s[j] + b[j] (+ residual[j]))`, the residual real (`+ r[j]`) or codes
/// (`+ r[j]·r_step`), `act` ReLU (`max(y, 0)`), ReLU6 (`clamp(y, 0, 6)`) or nothing — the
/// plain-Rust epilogue's operations in its order, multiply then add (no FMA), so the same
/// bits. Writes the longest multiple of 8 of `o` and returns it (the caller finishes the tail).
///
/// The factors repeat with period `s.len()` when shorter than `o`'s multiple of 8 (as in
/// [`requant_row_avx2`]), which then must be a non-zero multiple of 8.
///
/// # Safety
/// AVX2 required. `a` and the residual must be at least `o.len()` long; `s` and `b` as long,
/// or as above (checked: panics otherwise).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn real_row_avx2(
    o: &mut [f32],
    a: &[i32],
    s: &[f32],
    b: &[f32],
    r: Option<crate::fused::Residual<'_>>,
    (relu, relu6): (bool, bool),
) -> usize {
    use crate::fused::Residual;
    let n = o.len() / 8 * 8;
    assert!(a.len() >= n);
    let period = if s.len() < n || b.len() < n {
        assert!(!s.is_empty() && s.len().is_multiple_of(8) && b.len() >= s.len());
        s.len()
    } else {
        usize::MAX
    };
    match r {
        Some(Residual::Real(r)) => assert!(r.len() >= n),
        Some(Residual::Codes(r, _)) => assert!(r.len() >= n),
        None => {}
    }
    let zero = _mm256_setzero_ps();
    let six = _mm256_set1_ps(6.0);
    let (mut j, mut c) = (0, 0);
    while j < n {
        // SAFETY: j + 8 ≤ n ≤ the lengths of a, o and the residual; c + 8 ≤ s's and b's
        // (c = j when per element, else c < period, a multiple of 8) (asserted); unaligned.
        unsafe {
            let acc = _mm256_cvtepi32_ps(_mm256_loadu_si256(a.as_ptr().add(j) as *const __m256i));
            let mut y = _mm256_add_ps(
                _mm256_mul_ps(acc, _mm256_loadu_ps(s.as_ptr().add(c))),
                _mm256_loadu_ps(b.as_ptr().add(c)),
            );
            match r {
                Some(Residual::Real(r)) => {
                    y = _mm256_add_ps(y, _mm256_loadu_ps(r.as_ptr().add(j)));
                }
                Some(Residual::Codes(r, step)) => {
                    let rv = _mm_loadl_epi64(r.as_ptr().add(j) as *const __m128i);
                    let rf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(rv));
                    y = _mm256_add_ps(y, _mm256_mul_ps(rf, _mm256_set1_ps(step)));
                }
                None => {}
            }
            if relu6 {
                // `f32::clamp(y, 0, 6)`: replaced only where below 0 / above 6, so -0.0 and
                // NaN pass through as in plain Rust.
                y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps::<_CMP_LT_OQ>(y, zero));
                y = _mm256_blendv_ps(y, six, _mm256_cmp_ps::<_CMP_GT_OQ>(y, six));
            } else if relu {
                y = _mm256_max_ps(y, zero);
            }
            _mm256_storeu_ps(o.as_mut_ptr().add(j), y);
        }
        j += 8;
        c += 8;
        if c == period {
            c = 0;
        }
    }
    n
}

/// The codes of a quantizer `(α, step)` reading a real stream, on AVX2:
/// `q[j] = round(clamp(y[j], 0, α)/step)` (ties away from zero), as
/// [`round_code`](crate::layers::round_code) of the plain-Rust path. Writes the longest
/// multiple of 8 of `q` and returns it.
///
/// # Safety
/// AVX2 required; `y` at least `q.len()` long (checked: panics otherwise).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn codes_row_avx2(q: &mut [u8], y: &[f32], alpha: f32, step: f32) -> usize {
    let n = q.len() / 8 * 8;
    assert!(y.len() >= n);
    let va = _mm256_set1_ps(alpha);
    let vs = _mm256_set1_ps(step);
    let mut j = 0;
    while j < n {
        // SAFETY: j + 8 ≤ n ≤ y's and q's lengths (asserted); unaligned loads and stores.
        unsafe {
            store_codes8(
                q.as_mut_ptr().add(j),
                _mm256_loadu_ps(y.as_ptr().add(j)),
                va,
                vs,
            );
        }
        j += 8;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed ^ 0x5EED_0018;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    /// `tile[i][j] (+)= Σ_k a[i][k]·b[j][k]` for the wide kernels' operands: A i16 rows of
    /// `row` elements, B the i16 panel `[k/2][16][2]`.
    fn wide_ref(
        a: &[i16],
        row: usize,
        mr: usize,
        b: &[i16],
        k: usize,
        tile: &mut [i32],
        ld: usize,
    ) {
        for i in 0..mr {
            for j in 0..16 {
                let mut s = 0i32;
                for kk in 0..k {
                    s += a[i * row + kk] as i32 * b[((kk / 2) * 16 + j) * 2 + kk % 2] as i32;
                }
                tile[i * ld + j] += s;
            }
        }
    }

    fn check_wide<const MR: usize>(r: &mut impl FnMut() -> u64, groups: usize, extreme: bool) {
        let (k, row) = (4 * groups, 4 * groups + 4 * (r() as usize % 3));
        let a: Vec<i16> = (0..MR * row)
            .map(|_| if extreme { 255 } else { (r() % 256) as i16 })
            .collect();
        let b: Vec<i16> = (0..k * 16)
            .map(|i| match (extreme, i % 3) {
                (true, 0) => -127,
                (true, _) => 127,
                _ => (r() % 255) as i16 - 127,
            })
            .collect();
        let ap = APanel {
            ptr: a.as_ptr() as *const u8,
            row: 2 * row,
            group: 8,
        };
        check_tile(
            r,
            MR,
            &format!("MR {MR} groups {groups} extreme {extreme}"),
            |want, ld| wide_ref(&a, row, MR, &b, k, want, ld),
            // SAFETY: AVX2 checked by the caller; A holds MR rows of row ≥ k i16, B k·16.
            |tile, add| unsafe { avx2_wide::<MR>(ap, (1, 0), b.as_ptr(), groups, tile, add) },
        );
    }

    /// The AVX2 quantizer of real streams gives the codes of the plain-Rust
    /// `round_code(clamp(y, 0, α)/step)` for exact ties, both clip ends, ±0, ±∞ and NaN, at
    /// lengths with and without a tail (left untouched).
    #[test]
    fn codes_row_matches_scalar() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = lcg(31);
        for len in [0usize, 7, 8, 9, 16, 45] {
            let y: Vec<f32> = (0..len)
                .map(|j| match j % 9 {
                    0 => -0.0,
                    1 => f32::NAN,
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    4 => 0.125 * (r() % 40) as f32 - 1.0,
                    _ => (r() % 10_000) as f32 / 1000.0 - 2.0,
                })
                .collect();
            for (alpha, step) in [(3.75f32, 0.25f32), (7.5, 0.5), (2.0, 2.0 / 255.0)] {
                let want: Vec<u8> = y
                    .iter()
                    .map(|&v| crate::layers::round_code(v.clamp(0.0, alpha) / step))
                    .collect();
                let mut got = vec![0xEEu8; len];
                // SAFETY: AVX2 checked above; y holds len values.
                let done = unsafe { codes_row_avx2(&mut got, &y, alpha, step) };
                assert_eq!(done, len / 8 * 8);
                assert_eq!(&got[..done], &want[..done], "len {len} alpha {alpha}");
                assert!(got[done..].iter().all(|&q| q == 0xEE));
            }
        }
    }

    /// The i16-input wide kernel at every row count the engine may use, against a scalar
    /// sum: random and extreme codes (255 × ±127), 0 to 40 groups, overwrite and add.
    #[test]
    fn wide_kernel_matches_scalar() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = lcg(1);
        for groups in [0usize, 1, 2, 3, 7, 36, 40] {
            for extreme in [false, true] {
                check_wide::<4>(&mut r, groups, extreme);
                check_wide::<6>(&mut r, groups, extreme);
                check_wide::<1>(&mut r, groups, extreme);
            }
        }
    }

    /// `tile[i·ld + j] (+)= Σ_q Σ_k a[q·seg + i·row + k] · B[q·kseg + k][j]` for the i16-sum
    /// kernel's operands: A u8 segments, B the i8 panel `[k/4][16][4]` over all segments.
    #[allow(clippy::too_many_arguments)]
    fn i16_ref(
        a: &[u8],
        (segs, seg): (usize, usize),
        row: usize,
        mr: usize,
        b: &[i8],
        kseg: usize,
        (tile, ld): (&mut [i32], usize),
    ) {
        for i in 0..mr {
            for j in 0..16 {
                let mut acc = 0i32;
                for q in 0..segs {
                    for kk in 0..kseg {
                        let bk = q * kseg + kk;
                        acc += a[q * seg + i * row + kk] as i32
                            * b[((bk / 4) * 16 + j) * 4 + bk % 4] as i32;
                    }
                }
                tile[i * ld + j] += acc;
            }
        }
    }

    /// One case of [`avx2_i16_rows`]: `segs` segments of `groups` groups, rows `row` codes
    /// apart inside a segment, codes up to `amax` × `±wmax` (`extreme`: every product at the
    /// extreme with one sign, so the i16 sums reach `s·2·amax·wmax`), widening every `s`.
    #[allow(clippy::too_many_arguments)]
    fn check_i16<const MR: usize>(
        r: &mut impl FnMut() -> u64,
        segs: usize,
        groups: usize,
        (amax, wmax): (u64, i64),
        s: usize,
        extreme: bool,
    ) {
        let kseg = 4 * groups;
        let row = kseg + 4 * (r() as usize % 3) + 1;
        let seg = MR * row + 3;
        let a: Vec<u8> = (0..segs * seg + 4)
            .map(|_| {
                if extreme {
                    amax as u8
                } else {
                    (r() % (amax + 1)) as u8
                }
            })
            .collect();
        let sign = if r().is_multiple_of(2) { 1 } else { -1 };
        let b: Vec<i8> = (0..segs * kseg * 16)
            .map(|_| {
                if extreme {
                    (sign * wmax) as i8
                } else {
                    ((r() % (2 * wmax as u64 + 1)) as i64 - wmax) as i8
                }
            })
            .collect();
        let case = format!("MR {MR} segs {segs} groups {groups} s {s} extreme {extreme}");
        run_segmented(r, (MR, segs, seg, row), (&a, &b), &case, |ap, tile, add| {
            // SAFETY: AVX2 checked by the caller; segment q, row i < MR reads kseg codes from
            // q·seg + i·row < a.len(); B holds segs·groups·64 codes; s·2·amax·wmax ≤ 32767.
            unsafe { avx2_i16_rows::<MR>(ap, (segs, seg), b.as_ptr(), groups, s, tile, add) }
        });
    }

    /// Runs a segmented kernel (`kernel(A, (tile, ld), add)`, A rows `row` codes apart,
    /// segments `seg` apart) on `a` and `b`, overwriting and adding to a random tile of rows
    /// 16 apart (packed) and 40 apart (in place in wider accumulators, whose other elements
    /// must stay as they were), against [`i16_ref`]; `case` names the case in a failure.
    fn run_segmented(
        r: &mut impl FnMut() -> u64,
        (mr, segs, seg, row): (usize, usize, usize, usize),
        (a, b): (&[u8], &[i8]),
        case: &str,
        kernel: impl Fn(APanel, (&mut [i32], usize), bool),
    ) {
        let kseg = b.len() / (16 * segs.max(1));
        let ap = APanel {
            ptr: a.as_ptr(),
            row,
            group: 4,
        };
        check_tile(
            r,
            mr,
            case,
            |want, ld| i16_ref(a, (segs, seg), row, mr, b, kseg, (want, ld)),
            |tile, add| kernel(ap, tile, add),
        );
    }

    /// Runs a tile-writing kernel on a random `mr × 16` tile with rows 16 apart (packed) and
    /// 40 apart (in place in wider accumulators, whose other elements must stay as they were),
    /// overwriting and adding, against `reference(tile, ld)`, which adds the exact sums to
    /// the tile's rows; `case` names the case in a failure.
    fn check_tile(
        r: &mut impl FnMut() -> u64,
        mr: usize,
        case: &str,
        reference: impl Fn(&mut [i32], usize),
        kernel: impl Fn((&mut [i32], usize), bool),
    ) {
        for ld in [16, 40] {
            for add in [false, true] {
                let len = (mr - 1) * ld + 16;
                let start: Vec<i32> = (0..len).map(|_| (r() % 1000) as i32 - 500).collect();
                let mut want = start.clone();
                if !add {
                    for i in 0..mr {
                        want[i * ld..i * ld + 16].fill(0);
                    }
                }
                reference(&mut want, ld);
                let mut got = start;
                kernel((&mut got, ld), add);
                assert_eq!(got, want, "{case} ld {ld} add {add}");
            }
        }
    }

    /// One case of [`vnni_rows`] on the layout of [`check_i16`]: any u8 and i8 codes (random,
    /// or every product 255 × ±128 of one sign), overwrite and add.
    fn check_vnni<const MR: usize>(
        r: &mut impl FnMut() -> u64,
        segs: usize,
        groups: usize,
        extreme: bool,
    ) {
        let kseg = 4 * groups;
        let row = kseg + 4 * (r() as usize % 3) + 1;
        let seg = MR * row + 3;
        let a: Vec<u8> = (0..segs * seg + 4)
            .map(|_| if extreme { 255 } else { r() as u8 })
            .collect();
        let sign = r().is_multiple_of(2);
        let b: Vec<i8> = (0..segs * kseg * 16)
            .map(|_| match (extreme, sign) {
                (true, true) => 127,
                (true, false) => -128,
                _ => r() as u8 as i8,
            })
            .collect();
        let case = format!("MR {MR} segs {segs} groups {groups} extreme {extreme}");
        run_segmented(r, (MR, segs, seg, row), (&a, &b), &case, |ap, tile, add| {
            // SAFETY: VNNI checked by the caller; segment q, row i < MR reads kseg codes from
            // q·seg + i·row < a.len(); B holds segs·groups·64 codes.
            unsafe { vnni_rows::<MR>(ap, (segs, seg), b.as_ptr(), groups, tile, add) }
        });
    }

    /// The VNNI kernel of the padded implicit GEMM at every row count (1 to 8), over one and
    /// several segments and 0 to 40 groups, against a scalar sum.
    #[test]
    fn vnni_rows_kernel_matches_scalar() {
        if !crate::Isa::Avx512Vnni.is_available() {
            return;
        }
        let mut r = lcg(3);
        for (segs, groups) in [(1usize, 0usize), (1, 1), (1, 7), (3, 12), (3, 36), (5, 40)] {
            for extreme in [false, true] {
                check_vnni::<1>(&mut r, segs, groups, extreme);
                check_vnni::<2>(&mut r, segs, groups, extreme);
                check_vnni::<3>(&mut r, segs, groups, extreme);
                check_vnni::<4>(&mut r, segs, groups, extreme);
                check_vnni::<5>(&mut r, segs, groups, extreme);
                check_vnni::<6>(&mut r, segs, groups, extreme);
                check_vnni::<7>(&mut r, segs, groups, extreme);
                check_vnni::<8>(&mut r, segs, groups, extreme);
            }
        }
    }

    /// The i16-sum kernel at every row count the fused paths use, against a scalar sum: one
    /// and several segments (the widening count runs across them), 0 to 40 groups, `s` from 1
    /// to the largest the range allows (4/4 bits: 156 groups of sums up to 210, i.e. up to
    /// 32760 in i16), random and extreme codes of both signs, overwrite and add.
    #[test]
    fn i16_rows_kernel_matches_scalar() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = lcg(2);
        for (amax, wmax, smax) in [
            (15u64, 7i64, 156usize),
            (255, 16, 4),
            (63, 31, 8),
            (7, 3, 780),
        ] {
            assert_eq!(smax, (i16::MAX as u64 / (2 * amax * wmax as u64)) as usize);
            for (segs, groups) in [
                (1usize, 0usize),
                (1, 1),
                (1, 7),
                (3, 12),
                (3, 36),
                (5, 40),
                (2, 3),
            ] {
                for s in [1, 3, smax] {
                    for extreme in [false, true] {
                        let range = (amax, wmax);
                        check_i16::<1>(&mut r, segs, groups, range, s, extreme);
                        check_i16::<2>(&mut r, segs, groups, range, s, extreme);
                        check_i16::<3>(&mut r, segs, groups, range, s, extreme);
                        check_i16::<4>(&mut r, segs, groups, range, s, extreme);
                        check_i16::<5>(&mut r, segs, groups, range, s, extreme);
                        check_i16::<6>(&mut r, segs, groups, range, s, extreme);
                    }
                }
            }
        }
    }

    /// Timing of the 8/8- and 4/4-bit AVX2 kernels on L1-resident operands of a 3×3
    /// convolution over 16 channels as the fused implicit GEMM calls them (3 segments of 12
    /// groups): `avx2-wide` 6 rows against `avx2-i16` 6 rows and the unfused 4×16 form
    /// (`cargo test --release -p seer-int i16_kernel_timing -- --ignored --nocapture`);
    /// interleaved, best of rounds, reported as ns per 16 MACs.
    #[test]
    #[ignore]
    fn i16_kernel_timing() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let (segs, groups) = (3usize, 12usize);
        let a8 = vec![9u8; 6 * 4 * groups * segs];
        let a16 = vec![200i16; 6 * 4 * groups * segs];
        let b8 = vec![-5i8; 64 * groups * segs];
        let b16 = vec![-99i16; 64 * groups * segs];
        let mut tile = [0i32; 128];
        let reps = 20_000;
        let mut best = [f64::INFINITY; 3];
        for _round in 0..15 {
            for (v, best) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    // SAFETY: AVX2 checked; A holds 6 rows × segs·4·groups codes, B
                    // segs·groups·64; 4/4 codes allow s = 156 ≥ 36 groups.
                    unsafe {
                        match v {
                            0 => {
                                let ap = APanel {
                                    ptr: a16.as_ptr() as *const u8,
                                    row: 8 * groups,
                                    group: 8,
                                };
                                let sg = (segs, 6 * 8 * groups);
                                avx2_wide::<6>(ap, sg, b16.as_ptr(), groups, (&mut tile, 16), false)
                            }
                            1 => {
                                let ap = APanel {
                                    ptr: a8.as_ptr(),
                                    row: 4 * groups,
                                    group: 4,
                                };
                                let sg = (segs, 6 * 4 * groups);
                                avx2_i16_rows::<6>(
                                    ap,
                                    sg,
                                    b8.as_ptr(),
                                    groups,
                                    156,
                                    (&mut tile, 16),
                                    false,
                                )
                            }
                            _ => {
                                let ap = APanel {
                                    ptr: a8.as_ptr(),
                                    row: 4 * groups * segs,
                                    group: 4,
                                };
                                avx2_i16_4x16(ap, b8.as_ptr(), groups * segs, 156, &mut tile, false)
                            }
                        }
                    }
                    std::hint::black_box(&mut tile);
                }
                let macs = reps as f64 * [6.0, 6.0, 4.0][v] * 64.0 * (groups * segs) as f64;
                *best = best.min(t.elapsed().as_secs_f64() * 1e9 / (macs / 16.0));
            }
        }
        println!(
            "ns per 16 MACs: wide 6x16 {:.4}, i16 6x16 {:.4}, i16 4x16 {:.4}; i16 6x16 vs wide ×{:.3}, vs i16 4x16 ×{:.3}",
            best[0],
            best[1],
            best[2],
            best[0] / best[1],
            best[2] / best[1]
        );
    }

    /// Timing of the VNNI kernel on L1-resident operands, one thread, in the shape of a 3×3
    /// convolution over 16 channels as the padded implicit GEMM calls it (8 rows, 3 segments
    /// of 12 groups): GMAC/s per core, the ceiling a network's integer GEMMs approach (`cargo
    /// test --release -p seer-int vnni_kernel_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn vnni_kernel_timing() {
        if !crate::Isa::Avx512Vnni.is_available() {
            return;
        }
        let (segs, groups) = (3usize, 12usize);
        let a = vec![9u8; 8 * 4 * groups * segs];
        let b = vec![-5i8; 64 * groups * segs];
        let mut tile = [0i32; 128];
        let reps = 50_000;
        let mut best = f64::INFINITY;
        for _round in 0..15 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let ap = APanel {
                    ptr: a.as_ptr(),
                    row: 4 * groups,
                    group: 4,
                };
                // SAFETY: VNNI checked; segment q, row i < 8 reads 4·groups codes from
                // q·8·4·groups + i·4·groups < a.len(); B holds segs·groups·64 codes.
                unsafe {
                    vnni_rows::<8>(
                        ap,
                        (segs, 8 * 4 * groups),
                        b.as_ptr(),
                        groups,
                        (&mut tile, 16),
                        false,
                    )
                };
                std::hint::black_box(&mut tile);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = reps as f64 * 8.0 * 64.0 * (groups * segs) as f64;
        println!(
            "vnni 8×16, 3 segments of 12 groups: {:.1} GMAC/s on one core",
            macs / best / 1e9
        );
    }

    /// Timing of the wide kernels on L1-resident operands (`cargo test --release -p seer-int
    /// wide_kernel_timing -- --ignored --nocapture`): the u8-input kernel (2 `vpshufb` per row
    /// and group) against the i16-input kernel at 4 and 6 rows; interleaved, best of rounds,
    /// reported as ns per 16 MACs.
    #[test]
    #[ignore]
    fn wide_kernel_timing() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let groups = 36; // k = 144: a 3×3 convolution over 16 channels
        let a8 = vec![200u8; 8 * 4 * groups];
        let a16 = vec![200i16; 8 * 4 * groups];
        let b = vec![-99i16; 64 * groups];
        let mut tile = [0i32; 128];
        let reps = 20_000;
        let mut best = [f64::INFINITY; 3];
        for _round in 0..15 {
            for (v, best) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    // SAFETY: AVX2 checked; operands hold 8 rows × 4·groups codes, B 64·groups.
                    unsafe {
                        match v {
                            0 => {
                                let ap = APanel {
                                    ptr: a8.as_ptr(),
                                    row: 4 * groups,
                                    group: 4,
                                };
                                avx2_wide_u8_4x16(ap, b.as_ptr(), groups, &mut tile, false)
                            }
                            1 => {
                                let ap = APanel {
                                    ptr: a16.as_ptr() as *const u8,
                                    row: 8 * groups,
                                    group: 8,
                                };
                                avx2_wide::<4>(
                                    ap,
                                    (1, 0),
                                    b.as_ptr(),
                                    groups,
                                    (&mut tile, 16),
                                    false,
                                )
                            }
                            _ => {
                                let ap = APanel {
                                    ptr: a16.as_ptr() as *const u8,
                                    row: 8 * groups,
                                    group: 8,
                                };
                                avx2_wide::<6>(
                                    ap,
                                    (1, 0),
                                    b.as_ptr(),
                                    groups,
                                    (&mut tile, 16),
                                    false,
                                )
                            }
                        }
                    }
                    std::hint::black_box(&mut tile);
                }
                let macs = reps as f64 * [4.0, 4.0, 6.0][v] * 64.0 * groups as f64;
                *best = best.min(t.elapsed().as_secs_f64() * 1e9 / (macs / 16.0));
            }
        }
        println!(
            "ns per 16 MACs: u8 4x16 {:.4}, i16 4x16 {:.4}, i16 6x16 {:.4}; speed-ups ×{:.3}, ×{:.3}",
            best[0],
            best[1],
            best[2],
            best[0] / best[1],
            best[0] / best[2]
        );
    }
}
