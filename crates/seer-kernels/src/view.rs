//! Borrowing contiguous f32 CPU data out of candle tensors and storages, and small helpers
//! shared by the custom ops (finiteness checks, the `cpu_fwd` boilerplate, parallel
//! element-wise maps).

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// A read guard on a contiguous f32 CPU tensor, giving its elements as a slice.
pub(crate) struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    /// Borrows `t`, which must be a contiguous f32 tensor on the CPU.
    pub(crate) fn new(t: &'a Tensor, op: &'static str) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(Error::Unsupported {
                op,
                msg: "non-contiguous tensor".into(),
            });
        };
        match &*guard {
            Storage::Cpu(CpuStorage::F32(_)) => {}
            Storage::Cpu(s) => {
                return Err(Error::Unsupported {
                    op,
                    msg: format!("dtype {:?}, expected f32", s.dtype()),
                });
            }
            _ => {
                return Err(Error::Unsupported {
                    op,
                    msg: "tensor is not on the CPU".into(),
                });
            }
        }
        Ok(Self { guard, start, end })
    }

    /// The tensor's elements in row-major order.
    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => &[],
        }
    }
}

/// The contiguous f32 elements of a custom-op input (`cpu_fwd` arguments).
pub(crate) fn storage_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        return Err(Error::Unsupported {
            op,
            msg: "non-contiguous tensor".into(),
        }
        .into_candle());
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        other => Err(Error::Unsupported {
            op,
            msg: format!("dtype {:?}, expected f32", other.dtype()),
        }
        .into_candle()),
    }
}

/// Checks the dtype/device up front and returns a contiguous version of `t`.
pub(crate) fn prepare(t: &Tensor, op: &'static str) -> Result<Tensor> {
    if t.dtype() != candle_core::DType::F32 {
        return Err(Error::Unsupported {
            op,
            msg: format!("dtype {:?}, expected f32", t.dtype()),
        });
    }
    if !t.device().is_cpu() {
        return Err(Error::Unsupported {
            op,
            msg: "tensor is not on the CPU".into(),
        });
    }
    Ok(t.contiguous()?)
}

/// First non-finite element of `v`, as an error naming `what`. The scan runs on every core
/// in blocks of [`BLOCK`] (a branch-free fold that vectorises per block); the error names
/// the lowest bad index, as a scan in order would. Run serially, this pass over a layer's
/// input was 1.6% of a QAT training step's samples, all on the calling thread.
pub(crate) fn check_finite(v: &[f32], op: &'static str, what: &'static str) -> Result<()> {
    let all_finite = |c: &[f32]| c.iter().fold(true, |ok, x| ok & x.is_finite());
    let bad = v
        .par_chunks(BLOCK)
        .enumerate()
        .find_first(|(_, c)| !all_finite(c));
    if let Some((ci, chunk)) = bad
        && let Some((i, &value)) = chunk.iter().enumerate().find(|(_, x)| !x.is_finite())
    {
        return Err(Error::NonFinite {
            op,
            what,
            index: ci * BLOCK + i,
            value,
        });
    }
    Ok(())
}

/// Wraps a freshly computed vector as a tensor of `shape` on the CPU.
pub(crate) fn to_tensor(v: Vec<f32>, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

impl<'a> F32View<'a> {
    /// [`F32View::new`] for use inside candle's custom-op callbacks (a candle error).
    pub(crate) fn of(t: &'a Tensor, op: &'static str) -> candle_core::Result<Self> {
        Self::new(t, op).map_err(Error::into_candle)
    }
}

/// Output values and shape of a custom op's forward on borrowed slices (see [`custom_op`]).
pub(crate) type Forward = candle_core::Result<(Vec<f32>, Shape)>;

/// Gradients of a custom op's `N` inputs (see [`custom_op`]); `None` where not needed.
pub(crate) type Backward<const N: usize> = candle_core::Result<[Option<Tensor>; N]>;

/// Implements candle's `CustomOp1`, `CustomOp2` or `CustomOp3` for `$ty`, an op on
/// contiguous f32 CPU tensors, from two inherent methods:
/// `fn forward(&self, [&[f32]; N], [&Layout; N]) -> Forward` on the inputs' elements (each
/// input storage borrowed as a slice; a non-contiguous or non-f32 one is an error naming the
/// op `$op`), and `fn backward(&self, [&Tensor; N], res: &Tensor, grad: &Tensor) ->
/// Backward<N>` (inputs, forward output, upstream gradient). `$name` maps the op to its name
/// in candle's graph: `custom_op!(CustomOp2 for MyOp, |_| "seer-my-op", OP);`.
macro_rules! custom_op {
    (CustomOp1 for $ty:ty, $name:expr, $op:expr) => {
        $crate::view::custom_op!(@impl CustomOp1 for $ty, $name, $op;
            [x1 s1 l1 d1] -> Option<candle_core::Tensor>, d1);
    };
    (CustomOp2 for $ty:ty, $name:expr, $op:expr) => {
        $crate::view::custom_op!(@impl CustomOp2 for $ty, $name, $op;
            [x1 s1 l1 d1, x2 s2 l2 d2]
            -> (Option<candle_core::Tensor>, Option<candle_core::Tensor>), (d1, d2));
    };
    (CustomOp3 for $ty:ty, $name:expr, $op:expr) => {
        $crate::view::custom_op!(@impl CustomOp3 for $ty, $name, $op;
            [x1 s1 l1 d1, x2 s2 l2 d2, x3 s3 l3 d3]
            -> (
                Option<candle_core::Tensor>,
                Option<candle_core::Tensor>,
                Option<candle_core::Tensor>,
            ),
            (d1, d2, d3));
    };
    // One input per `x s l d`: tensor, storage, layout and gradient names.
    (@impl $tr:ident for $ty:ty, $name:expr, $op:expr;
        [$($x:ident $s:ident $l:ident $d:ident),+] -> $grads:ty, $out:expr) => {
        impl candle_core::$tr for $ty {
            fn name(&self) -> &'static str {
                let name: fn(&Self) -> &'static str = $name;
                name(self)
            }

            fn cpu_fwd(
                &self,
                $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                let inputs = [$($crate::view::storage_slice($s, $l, $op)?),+];
                let (out, shape) = self.forward(inputs, [$($l),+])?;
                Ok((candle_core::CpuStorage::F32(out), shape))
            }

            #[allow(clippy::type_complexity)]
            fn bwd(
                &self,
                $($x: &candle_core::Tensor,)+
                res: &candle_core::Tensor,
                grad: &candle_core::Tensor,
            ) -> candle_core::Result<$grads> {
                let [$($d),+] = self.backward([$($x),+], res, grad)?;
                Ok($out)
            }
        }
    };
}
pub(crate) use custom_op;

/// Elements per parallel block of the element-wise helpers (and of reductions whose partial
/// sums must not depend on the thread count).
pub(crate) const BLOCK: usize = 16384;

/// Zeroes `cells` and returns them as initialised floats. For outputs allocated without
/// initialisation ([`par_chunks_filled`], the convolutions' buffers) and zeroed by the
/// parallel task that then fills them: the zeroing runs on every core and leaves the chunk
/// in cache for the writes, where `vec![0f32; n]` (calloc on a reused heap block) would
/// write the whole buffer to memory first, on the calling thread alone.
pub(crate) fn zeroed(cells: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for c in cells.iter_mut() {
        c.write(0.0);
    }
    // SAFETY: every element was written just above, and `MaybeUninit<f32>` has the size,
    // alignment and validity of `f32` once written.
    unsafe { &mut *(cells as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Views initialised floats as cells that may be written, for code that writes into both
/// fresh (uninitialised) outputs and existing buffers.
///
/// # Safety
/// The caller writes only initialised values through the returned slice (never
/// `MaybeUninit::uninit()`), so that `x` stays initialised.
pub(crate) unsafe fn as_uninit(x: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the size and alignment of `f32`; the caller's contract
    // keeps every element initialised.
    unsafe { &mut *(x as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// In tests and debug builds, fills cells that a kernel is about to write whole with NaN,
/// so that an element it leaves unwritten shows in the results instead of reading whatever
/// the allocator left there (often zeros, which would pass); nothing in release builds.
#[inline]
pub(crate) fn poison(cells: &mut [MaybeUninit<f32>]) {
    #[cfg(any(test, debug_assertions))]
    for c in cells.iter_mut() {
        c.write(f32::NAN);
    }
    #[cfg(not(any(test, debug_assertions)))]
    let _ = cells;
}

/// [`par_chunks_filled_init`] without the zeroing: `fill(state, i, cells)` gets chunk `i`
/// uninitialised and must write every one of its elements, for kernels whose output
/// overwrites the whole chunk (a copy out of scratch), where zeroing it first was wasted
/// (the conv forward's and input gradient's direct paths: 6.4 MB each per 16-channel layer
/// of a batch of 128).
///
/// # Safety
/// `fill` initialises every element of the chunk it is given (a panic in `fill` is fine:
/// it propagates before the vector's length is set).
pub(crate) unsafe fn par_chunks_written_init<S>(
    len: usize,
    chunk: usize,
    min_chunks: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .with_min_len(min_chunks.max(1))
        .enumerate()
        .for_each_init(init, |s, (i, c)| {
            poison(c);
            fill(s, i, c)
        });
    // SAFETY: the chunks cover `0..len` and the caller's `fill` initialised each one.
    unsafe { out.set_len(len) };
    out
}

/// `len` floats computed in parallel, chunk by chunk: `fill(state, i, out)` gets chunk `i`
/// (`chunk` elements, the last one shorter) zeroed ([`zeroed`]) and writes what it wants
/// into it; `init` makes each rayon job's scratch `state`, as `for_each_init`, and a job
/// takes at least `min_chunks` chunks (rayon calls `init` once per job it splits off, so a
/// scratch worth zeroing should be shared by several chunks). Panics (an internal bug) when
/// `chunk` is 0 and `len` is not.
pub(crate) fn par_chunks_filled_init<S>(
    len: usize,
    chunk: usize,
    min_chunks: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: `zeroed` initialises every element of each chunk before `fill` sees it.
    unsafe {
        par_chunks_written_init(len, chunk, min_chunks, init, |s, i, c| {
            fill(s, i, zeroed(c))
        })
    }
}

/// [`par_chunks_filled_init`] without scratch state.
pub(crate) fn par_chunks_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    par_chunks_filled_init(len, chunk, 1, || (), |_, i, o| fill(i, o))
}

/// [`par_chunks_written_init`] without scratch state.
///
/// # Safety
/// As [`par_chunks_written_init`]: `fill` initialises every element of its chunk.
pub(crate) unsafe fn par_chunks_written(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: the caller's contract.
    unsafe { par_chunks_written_init(len, chunk, 1, || (), |_, i, o| fill(i, o)) }
}

/// `f(x)` for every element, in parallel over fixed blocks.
pub(crate) fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: chunk `i` is `out[i·BLOCK..]` (at most BLOCK long) and `x[i·BLOCK..]` is at
    // least as long, so the map writes every element of the chunk.
    unsafe {
        par_chunks_written(x.len(), BLOCK, |i, o| {
            crate::simd::map_into_uninit(&x[i * BLOCK..], o, &f)
        })
    }
}

/// `f(a, b)` for every pair of elements of two equal-length slices, in parallel over fixed
/// blocks.
pub(crate) fn par_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: as `par_map`'s, with the output as long as the shorter input.
    unsafe {
        par_chunks_written(a.len().min(b.len()), BLOCK, |i, o| {
            crate::simd::map2_into_uninit(&a[i * BLOCK..], &b[i * BLOCK..], o, &f)
        })
    }
}

/// The gradient through a ReLU from its output `y`: `dy · [y > 0]` element-wise.
pub(crate) fn relu_grad(dy: &[f32], y: &[f32]) -> Vec<f32> {
    par_map2(dy, y, |g, y| if y > 0.0 { g } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_finite` names the lowest bad index across blocks (NaN and infinities), and
    /// passes finite data of any length.
    #[test]
    fn check_finite_names_the_first_bad_element() {
        for len in [0, 1, BLOCK - 1, BLOCK, 5 * BLOCK + 17] {
            let mut v: Vec<f32> = (0..len).map(|i| (i as f32).sin() * 1e30).collect();
            assert!(check_finite(&v, "op", "x").is_ok(), "len {len}");
            if len < 2 {
                continue;
            }
            let (late, early) = (len - 1, len / 3);
            v[late] = f32::NAN;
            v[early] = f32::NEG_INFINITY;
            match check_finite(&v, "op", "x") {
                Err(Error::NonFinite {
                    index, value, what, ..
                }) => {
                    assert_eq!((index, what), (early, "x"), "len {len}");
                    assert_eq!(value, f32::NEG_INFINITY);
                }
                other => panic!("len {len}: {other:?}"),
            }
            v[early] = 0.0;
            assert!(matches!(
                check_finite(&v, "op", "x"),
                Err(Error::NonFinite { index, .. }) if index == late
            ));
        }
    }
}
