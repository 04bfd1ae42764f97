//! A safe, bounds-checked wrapper over the `gemm` crate's f32 matrix multiply.
//!
//! `gemm` 0.19 picks its micro-kernel at run time from CPUID: AVX-512 when the `x86-v4`
//! feature is compiled in (it is, see the workspace manifest) and the CPU has it, else
//! AVX2+FMA, else portable code.

use gemm::Parallelism;

/// A read-only strided matrix: element `(i, j)` lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows × cols` matrix with leading dimension `ld`.
    pub(crate) fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub(crate) fn rows_t(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }
}

fn extent(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

/// `dst[m×n] (row-major, leading dim dst_ld) (+)= lhs[m×k] · rhs[k×n]`.
///
/// Panics only on an internal indexing bug (views too short for the stated sizes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_ld: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= extent(m, n, dst_ld, 1),
        "matmul: dst too short"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_ld..i * dst_ld + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs),
        "matmul: lhs too short"
    );
    assert!(
        rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs),
        "matmul: rhs too short"
    );
    // SAFETY: the three asserts above keep every accessed element inside its slice; `dst`
    // is borrowed mutably and cannot alias the shared `lhs`/`rhs` borrows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
