//! IDX files (the MNIST/Fashion-MNIST container format), plain or gzip-compressed.
//!
//! Layout (big-endian): two zero bytes, a type byte (`0x08` = unsigned byte), the number of
//! dimensions `d`, then `d` u32 sizes, then the data in row-major order.

use std::io::{Read, Write};
use std::path::Path;

use crate::{Error, Result};

/// An IDX array of unsigned bytes: its dimensions and its data (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxU8 {
    /// Dimension sizes, e.g. `[N, 28, 28]` for images or `[N]` for labels.
    pub dims: Vec<usize>,
    /// `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_maybe_gz(raw, path)
}

/// `raw` itself, or its gunzipped content when it starts with the gzip magic; `path` only
/// names the source in errors. The output grows with the stream's real content only (no size
/// field is trusted). Errors: a corrupt or truncated gzip stream -> [`Error::BadData`].
pub fn decode_maybe_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::bad(path, format!("gzip stream is corrupt or truncated: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX u8 array from bytes; `path` only names the source in errors.
///
/// Errors: wrong magic, non-u8 element type, or a data section shorter or longer than the
/// header says (a truncated download) -> [`Error::BadData`]. The header's sizes are checked
/// against the bytes present before anything is allocated, so a header claiming 2^40
/// elements costs nothing.
pub fn parse_idx_u8(bytes: &[u8], path: &Path) -> Result<IdxU8> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::bad(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::bad(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if nd == 0 || bytes.len() < header {
        return Err(Error::bad(path, "IDX header truncated"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n = element_count(&dims);
    let have = bytes.len() - header;
    if n != Some(have as u128) {
        let promised = n.map_or_else(|| "more than 2^128".to_string(), |n| n.to_string());
        return Err(Error::bad(
            path,
            format!(
                "IDX header promises {promised} bytes of data ({dims:?}) but the file has {have}: \
                 the file is truncated or corrupt; download it again"
            ),
        ));
    }
    Ok(IdxU8 {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// The product of `dims`, `None` when it exceeds `u128` (255 dimensions of up to 2^32 − 1
/// can); any zero dimension makes it 0, whatever the others.
fn element_count(dims: &[usize]) -> Option<u128> {
    if dims.contains(&0) {
        return Some(0);
    }
    dims.iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
}

/// Reads an IDX u8 file (`.gz` or plain). See [`parse_idx_u8`] for errors.
pub fn read_idx_u8(path: &Path) -> Result<IdxU8> {
    let bytes = read_maybe_gz(path)?;
    parse_idx_u8(&bytes, path)
}

/// Writes an IDX u8 file (uncompressed). `data.len()` must equal the product of `dims`.
pub fn write_idx_u8(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let buf = encode_idx_u8(dims, data).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("write_idx_u8 {}: {m}", path.display())),
        e => e,
    })?;
    write_atomic(path, &buf)
}

/// The bytes of an uncompressed IDX u8 file (the inverse of [`parse_idx_u8`]). Errors
/// ([`Error::Invalid`]): `data.len()` differs from the product of `dims`, no or more than
/// 255 dimensions, or a dimension above `u32::MAX`.
pub fn encode_idx_u8(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    if element_count(dims) != Some(data.len() as u128) || dims.is_empty() || dims.len() > 255 {
        return Err(Error::Invalid(format!(
            "dims {dims:?} do not match {} bytes",
            data.len()
        )));
    }
    let n = data.len();
    let mut buf = Vec::with_capacity(4 + 4 * dims.len() + n);
    buf.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::Invalid(format!("IDX dimension {d} exceeds u32")))?;
        buf.extend_from_slice(&d.to_be_bytes());
    }
    buf.extend_from_slice(data);
    Ok(buf)
}

/// Writes `bytes` to `path` via a temporary file and a rename, so readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_plain_and_gz() {
        let td = tempfile::tempdir().unwrap();
        let dir = td.path();
        let p = dir.join("a.idx");
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        write_idx_u8(&p, &[2, 3, 4], &data).unwrap();
        let r = read_idx_u8(&p).unwrap();
        assert_eq!(r.dims, vec![2, 3, 4]);
        assert_eq!(r.data, data);
        // gzip it
        let raw = std::fs::read(&p).unwrap();
        let gz = dir.join("a.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_idx_u8(&gz).unwrap(), r);
    }

    #[test]
    fn truncated_is_clear_error() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("t.idx");
        write_idx_u8(&p, &[5, 2], &[1; 10]).unwrap();
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() - 3]).unwrap();
        let e = read_idx_u8(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, b"garbage!").unwrap();
        assert!(read_idx_u8(&p).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn header_claiming_2_pow_40_elements_is_refused_before_allocating() {
        // [2^20, 2^20] = 2^40 bytes promised, 3 present.
        let mut raw = vec![0, 0, 0x08, 2];
        raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
        raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
        raw.extend_from_slice(&[1, 2, 3]);
        let e = parse_idx_u8(&raw, Path::new("big.idx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1099511627776") && e.contains("has 3"), "{e}");
        // Sizes whose product overflows 64 bits (and 128) are refused too, not wrapped.
        let mut raw = vec![0, 0, 0x08, 5];
        for _ in 0..5 {
            raw.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let e = parse_idx_u8(&raw, Path::new("huge.idx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 2^128"), "{e}");
    }

    #[test]
    fn encode_is_the_inverse_of_parse() {
        let data: Vec<u8> = (0..12).collect();
        let bytes = encode_idx_u8(&[3, 4], &data).unwrap();
        let back = parse_idx_u8(&bytes, Path::new("x")).unwrap();
        assert_eq!((back.dims, back.data), (vec![3, 4], data));
        assert!(encode_idx_u8(&[3, 5], &[0; 12]).is_err());
        assert!(encode_idx_u8(&[usize::MAX, 2], &[]).is_err());
        // A zero dimension after dimensions whose product overflows 64 bits: 0 elements,
        // both ways (fuzz target idx, tests/fuzz-regressions/idx/).
        let dims = [15, 2332557312, 4263480072, 2332033024, 0, 11090174];
        let bytes = encode_idx_u8(&dims, &[]).unwrap();
        assert_eq!(parse_idx_u8(&bytes, Path::new("x")).unwrap().dims, dims);
    }
}
