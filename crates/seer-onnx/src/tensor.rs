//! Constant tensors of an ONNX graph: initializers and `Constant` values, decoded from a
//! `TensorProto` (float32 or int64, typed fields or little-endian `raw_data`).

use crate::proto::{TensorProto, tensor_proto::DataType};

/// A constant: its dims and values (int64 constants are kept as i64 and as f32).
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    /// Dims (empty for a scalar).
    pub dims: Vec<usize>,
    /// Values as f32 (int64 values converted).
    pub f: Vec<f32>,
    /// Int64 values when the tensor is int64 (shapes, axes), else empty.
    pub i: Vec<i64>,
}

impl Const {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.f.len()
    }
}

/// Decodes a `TensorProto`. Err(message) for another data type, external data, negative
/// dims or a value count that does not match the dims.
pub fn decode(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == Some(1) {
        return Err("stores its data in an external file (not supported)".into());
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("negative dimension {d}"));
        }
        dims.push(d as usize);
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 31)
        .ok_or("too many elements")?;
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    let dt = t.data_type.unwrap_or(0);
    let (f, i) = if dt == DataType::Float as i32 {
        let f: Vec<f32> = if !raw.is_empty() {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            t.float_data.clone()
        };
        if !raw.is_empty() && raw.len() != 4 * n {
            return Err(format!("raw data of {} bytes for {n} floats", raw.len()));
        }
        (f, Vec::new())
    } else if dt == DataType::Int64 as i32 {
        let i: Vec<i64> = if !raw.is_empty() {
            if raw.len() != 8 * n {
                return Err(format!(
                    "raw data of {} bytes for {n} int64 values",
                    raw.len()
                ));
            }
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        } else {
            t.int64_data.clone()
        };
        (i.iter().map(|&v| v as f32).collect(), i)
    } else {
        let name = DataType::try_from(dt)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| format!("type {dt}"));
        return Err(format!(
            "has data type {name}; only FLOAT and INT64 constants are supported"
        ));
    };
    if f.len() != n {
        return Err(format!(
            "holds {} values, its dims {dims:?} need {n}",
            f.len()
        ));
    }
    Ok(Const { dims, f, i })
}
