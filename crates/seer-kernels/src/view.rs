//! Borrowing contiguous f32 CPU data out of candle tensors and storages, and small helpers
//! shared by the custom ops (finiteness checks).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Storage, StorageRef, Tensor};

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

/// First non-finite element of `v`, as an error naming `what`.
pub(crate) fn check_finite(v: &[f32], op: &'static str, what: &'static str) -> Result<()> {
    // Scan in wide chunks with a branch-free fold that vectorises; locate only on failure.
    for (ci, chunk) in v.chunks(4096).enumerate() {
        if !chunk.iter().fold(true, |ok, x| ok & x.is_finite())
            && let Some((i, &value)) = chunk.iter().enumerate().find(|(_, x)| !x.is_finite())
        {
            return Err(Error::NonFinite {
                op,
                what,
                index: ci * 4096 + i,
                value,
            });
        }
    }
    Ok(())
}

/// Wraps a freshly computed vector as a tensor of `shape` on the CPU.
pub(crate) fn to_tensor(v: Vec<f32>, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}
