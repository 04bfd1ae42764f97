//! Constant tensors of an ONNX graph: initializers and `Constant` values, decoded from a
//! `TensorProto` (float32 or int64, typed fields or little-endian `raw_data`).

use std::path::Path;

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

/// Reads the data of initializer `t`, stored in an external file (ONNX external data:
/// `location` relative to the model's folder `dir`, optional `offset` and `length` in
/// bytes), into its `raw_data`, so that [`decode`] sees an ordinary tensor. Only FLOAT and
/// INT64 tensors are read (others are refused by `decode` anyway); without `length` the
/// tensor's own byte count is read. Errors ([`Error::Model`] naming the initializer): no
/// `dir` (bytes imported without their file), a location that is absolute or leaves `dir`
/// (`..`), a file that cannot be read or holds too few bytes, malformed numbers.
pub(crate) fn read_external(
    t: &mut TensorProto,
    dir: Option<&Path>,
    file: &str,
) -> crate::Result<()> {
    let name = t.name.clone().unwrap_or_default();
    let err = |msg: String| crate::Error::Model {
        file: file.into(),
        msg: format!("initializer {name:?} {msg}"),
    };
    let Some(dir) = dir else {
        return Err(err(
            "stores its data in an external file: import the model from its path \
             (`seernet import FILE.onnx`) so that the data file beside it is read"
                .into(),
        ));
    };
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for kv in &t.external_data {
        let v = kv.value.as_deref().unwrap_or("");
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| err(format!("external data: {v:?} is not a byte count")))
        };
        match kv.key.as_deref().unwrap_or("") {
            "location" => location = Some(v.to_string()),
            "offset" => offset = num(v)?,
            "length" => length = Some(num(v)?),
            _ => {}
        }
    }
    let location = location
        .filter(|l| !l.is_empty())
        .ok_or_else(|| err("external data without a location".into()))?;
    let rel = Path::new(&location);
    if !rel.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(err(format!(
            "external data location {location:?} is not a path inside the model's folder"
        )));
    }
    let elem = match t.data_type.unwrap_or(0) {
        d if d == DataType::Float as i32 => 4,
        d if d == DataType::Int64 as i32 => 8,
        _ => 0,
    };
    let count = t
        .dims
        .iter()
        .try_fold(1u64, |a, &d| {
            u64::try_from(d).ok().and_then(|d| a.checked_mul(d))
        })
        .filter(|&n| n <= 1 << 31)
        .ok_or_else(|| err("has negative dimensions or too many elements".into()))?;
    let want = length.unwrap_or(count * elem);
    let path = dir.join(rel);
    let io = |e: std::io::Error| err(format!("external data {}: {e}", path.display()));
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(io)?;
    // Checked against the file before anything is allocated from the header's numbers.
    let size = f.metadata().map_err(io)?.len();
    if offset.checked_add(want).is_none_or(|end| end > size) {
        return Err(err(format!(
            "external data {}: {want} bytes at offset {offset}, but the file has {size}",
            path.display()
        )));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; want as usize];
    f.read_exact(&mut buf).map_err(io)?;
    t.raw_data = Some(buf);
    t.data_location = None;
    t.external_data.clear();
    Ok(())
}

/// Decodes a `TensorProto`. Err(message) for another data type, external data, negative
/// dims or a value count that does not match the dims.
pub fn decode(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == Some(1) {
        return Err("stores its data in an external file that was not read".into());
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
