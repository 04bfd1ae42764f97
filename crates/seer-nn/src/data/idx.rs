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
/// header says (a truncated download) -> [`Error::BadData`].
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
    let n: usize = dims.iter().product();
    let have = bytes.len() - header;
    if have != n {
        return Err(Error::bad(
            path,
            format!(
                "IDX header promises {n} bytes of data ({dims:?}) but the file has {have}: \
                 the file is truncated or corrupt; download it again"
            ),
        ));
    }
    Ok(IdxU8 {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX u8 file (`.gz` or plain). See [`parse_idx_u8`] for errors.
pub fn read_idx_u8(path: &Path) -> Result<IdxU8> {
    let bytes = read_maybe_gz(path)?;
    parse_idx_u8(&bytes, path)
}

/// Writes an IDX u8 file (uncompressed). `data.len()` must equal the product of `dims`.
pub fn write_idx_u8(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let n: usize = dims.iter().product();
    if n != data.len() || dims.is_empty() || dims.len() > 255 {
        return Err(Error::Invalid(format!(
            "write_idx_u8 {}: dims {dims:?} do not match {} bytes",
            path.display(),
            data.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + 4 * dims.len() + n);
    buf.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::Invalid(format!("IDX dimension {d} exceeds u32")))?;
        buf.extend_from_slice(&d.to_be_bytes());
    }
    buf.extend_from_slice(data);
    write_atomic(path, &buf)
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
}
