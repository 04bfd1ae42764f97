//! x86-64 SIMD micro-kernels of the `u8 × i8 → i32` GEMM (AVX-512 VNNI and AVX2).
//!
//! Every kernel computes one micro-tile `tile[MR][16] = Σ_g A_g · B_g` over `groups` groups
//! of 4 reduction steps (2 for the wide kernel) and overwrites `tile` (row-major, 16 i32 per
//! row). A's 4 codes of row `i`, group `g` sit at `a.ptr + i·a.row + g·a.group` (in place in the
//! row-major matrix, or packed as `[g][MR][4]`). B is `[g][16][4]` i8 (or `[h][16][2]` i16), so one 32-bit broadcast of
//! A meets one 32-bit lane per output channel of B. The exactness argument for each AVX2 kernel is in
//! the `gemm` module docs; the caller picks the kernel from the measured operand ranges.

use std::arch::x86_64::*;

use crate::gemm::APanel;

/// AVX-512 VNNI: 8 rows × 16 channels, `vpdpbusd` (exact for all u8×i8 codes).
///
/// Compiled everywhere, executed only where `avx512vnni` is detected (not on the project's
/// AMD Zen 3 development machine).
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; the 4 bytes at
/// `a.ptr + i·a.row + g·a.group` (row `i < 8`, group `g`) and `groups·64` bytes at `b` must be
/// readable; `tile` must hold 128 i32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn vnni_8x16(a: APanel, b: *const i8, groups: usize, tile: &mut [i32]) {
    assert!(tile.len() >= 8 * 16);
    let mut acc = [_mm512_setzero_si512(); 8];
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

/// AVX2: 4 rows × 16 channels, `vpmaddubsw` then `vpmaddwd` at every step.
///
/// # Safety
/// AVX2 required; the 4 bytes at `a.ptr + i·a.row + g·a.group` (row `i < 4`, group `g`) and
/// `groups·64` bytes at `b` must be readable; `tile` holds 64 i32. Exact only if every pair sum `a0·b0 + a1·b1` fits in i16 (caller's range check).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_i32_4x16(a: APanel, b: *const i8, groups: usize, tile: &mut [i32]) {
    assert!(tile.len() >= 4 * 16);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
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
) {
    assert!(tile.len() >= 4 * 16 && s >= 1);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
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

/// AVX2: 4 rows × 16 channels with `vpmaddwd` only, exact for all codes. Each broadcast
/// of 4 activation bytes is zero-extended in registers into the i16 pairs `(a0, a1)` and
/// `(a2, a3)` by `vpshufb`; B is the i16 panel `[h][16][2]` (sign-extended once).
///
/// # Safety
/// AVX2 required; the 4 bytes at `a.ptr + i·a.row + g·a.group` (row `i < 4`, group `g`) and
/// `groups·64` i16 at `b` must be readable; `tile` holds 64 i32.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn avx2_wide_4x16(a: APanel, b: *const i16, groups: usize, tile: &mut [i32]) {
    assert!(tile.len() >= 4 * 16);
    // Per 32-bit lane: bytes (a0, 0, a1, 0) and (a2, 0, a3, 0) (index 0x80 writes zero).
    let lo = _mm256_set1_epi32(i32::from_le_bytes([0, 0x80, 1, 0x80]));
    let hi = _mm256_set1_epi32(i32::from_le_bytes([2, 0x80, 3, 0x80]));
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
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
