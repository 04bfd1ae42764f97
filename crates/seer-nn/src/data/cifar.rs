//! CIFAR-10 binary batches (`data_batch_1..5.bin`, `test_batch.bin`): each record is one label
//! byte followed by 3,072 pixel bytes (`[3, 32, 32]`, channel-major).

use std::path::Path;

use super::{DatasetName, RawEntry, SplitManifest, prepare};
use crate::{Error, Result};

/// Bytes per CIFAR-10 record (label + 3·32·32 pixels).
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads one binary batch (plain or `.gz`). Errors: those of [`parse_cifar10_batch`].
pub fn read_cifar10_batch(path: &Path) -> Result<Vec<RawEntry>> {
    let raw = super::idx::read_maybe_gz(path)?;
    parse_cifar10_batch(&raw, path)
}

/// Parses the bytes of one binary batch; `path` only names the source in errors. The batch
/// has no header: the record count is the byte length over [`RECORD`].
/// Errors ([`Error::BadData`]): a size that is not a whole, non-zero number of records
/// (truncated file) or a label ≥ 10.
pub fn parse_cifar10_batch(raw: &[u8], path: &Path) -> Result<Vec<RawEntry>> {
    if raw.is_empty() || !raw.len().is_multiple_of(RECORD) {
        return Err(Error::bad(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)",
                raw.len()
            ),
        ));
    }
    raw.chunks_exact(RECORD)
        .enumerate()
        .map(|(i, r)| {
            if r[0] >= 10 {
                Err(Error::bad(
                    path,
                    format!("record {i}: label {} is not in 0..10", r[0]),
                ))
            } else {
                Ok((r[1..].to_vec(), r[0]))
            }
        })
        .collect()
}

/// Prepares CIFAR-10 in `out` from a directory with the six official `.bin` batches (or any
/// `*.bin` batches found there, in name order).
pub fn prepare_cifar10(src_dir: &Path, out: &Path) -> Result<SplitManifest> {
    let mut files: Vec<_> = std::fs::read_dir(src_dir)
        .map_err(|e| Error::io(src_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "bin")
                && p.file_name().is_some_and(|n| n != "batches.meta.bin")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::MissingDataset {
            name: "cifar10".into(),
            dir: src_dir.to_path_buf(),
            hint: "no CIFAR-10 *.bin batches there: download the binary version and extract it"
                .into(),
        });
    }
    let mut entries = Vec::new();
    for f in &files {
        entries.extend(read_cifar10_batch(f)?);
    }
    prepare(
        out,
        DatasetName::Cifar10,
        &format!("cifar-10 binary batches in {}", src_dir.display()),
        None,
        [3, 32, 32],
        entries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_truncated() {
        let td = tempfile::tempdir().unwrap();
        let mut raw = Vec::new();
        for i in 0..3u8 {
            raw.push(i);
            raw.extend(std::iter::repeat_n(i * 7, 3072));
        }
        let p = td.path().join("data_batch_1.bin");
        std::fs::write(&p, &raw).unwrap();
        let e = read_cifar10_batch(&p).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2], (vec![14; 3072], 2));
        std::fs::write(&p, &raw[..raw.len() - 1]).unwrap();
        assert!(
            read_cifar10_batch(&p)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }
}
