//! Where a dataset comes from: a built-in dataset by name, or an image folder
//! ([`folder`]) with its input shape. One canonical text names either, and is
//! what checkpoints, labelling protocols and reports record:
//!
//! - `fashion-mnist`, `mnist`, `cifar10` (aliases as in [`DatasetName::parse`]);
//! - `image-folder:<absolute dir>;input=HxWxC[;skip-corrupt]`: an image folder read at
//!   `H×W×C` (`skip-corrupt`: undecodable images are left out and counted). A plain path to
//!   a folder parses too, its shape taken from its first image.

use std::path::{Path, PathBuf};

use super::folder::{self, FolderOptions};
use super::{DatasetName, Splits};
use crate::{Error, Result};

/// Prefix of the canonical text of an image-folder source.
pub const FOLDER_PREFIX: &str = "image-folder:";

/// A dataset to load: built-in or an image folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A built-in, prepared dataset (`cargo xtask fetch-data NAME`).
    Builtin(DatasetName),
    /// An image folder (ImageFolder layout), read by [`folder::load_folder`].
    Folder {
        /// Absolute path of the root folder.
        dir: PathBuf,
        /// Image shape `[C, H, W]` every image is brought to.
        shape: [usize; 3],
        /// Number of classes (class sub-folders).
        classes: usize,
        /// Leave undecodable images out instead of failing.
        skip_corrupt: bool,
    },
}

impl DataSource {
    /// Parses a built-in name, the canonical `image-folder:` text, or a path to a folder.
    ///
    /// Errors: [`Error::Invalid`] for anything else (the message lists what is accepted) or a
    /// malformed `image-folder:` option; the errors of [`DataSource::folder`].
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(n) = DatasetName::parse(s) {
            return Ok(Self::Builtin(n));
        }
        if let Some(rest) = s.strip_prefix(FOLDER_PREFIX) {
            let mut parts = rest.split(';');
            let dir = parts.next().unwrap_or_default();
            let mut opts = FolderOptions::default();
            for p in parts {
                if p == "skip-corrupt" {
                    opts.skip_corrupt = true;
                } else if let Some(v) = p.strip_prefix("input=") {
                    opts.shape = Some(parse_hwc(v)?);
                } else {
                    return Err(Error::Invalid(format!(
                        "dataset {s:?}: unknown option {p:?} (expected input=HxWxC or skip-corrupt)"
                    )));
                }
            }
            return Self::folder(Path::new(dir), &opts);
        }
        if Path::new(s).is_dir() {
            return Self::folder(Path::new(s), &FolderOptions::default());
        }
        Err(Error::Invalid(format!(
            "unknown dataset {s:?}: expected one of fashion-mnist, mnist, cifar10, or a folder \
             with one sub-folder of PNG/JPEG images per class (ImageFolder layout)"
        )))
    }

    /// The source a command line names: `dataset` as for [`DataSource::parse`], with
    /// `--input` (`shape`, `[C, H, W]`) and `--skip-corrupt` applied to an image folder.
    /// For a built-in dataset, a `shape` other than its own is an error
    /// ([`Error::Invalid`]: built-in images are not resized) and `skip_corrupt` is ignored.
    pub fn from_arg(dataset: &str, shape: Option<[usize; 3]>, skip_corrupt: bool) -> Result<Self> {
        match Self::parse(dataset)? {
            Self::Builtin(n) => {
                if let Some(s) = shape.filter(|s| *s != n.shape()) {
                    let [c, h, w] = n.shape();
                    return Err(Error::Invalid(format!(
                        "--input {}x{}x{} does not match {n} images ({h}x{w}x{c}); only image \
                         folders are resized",
                        s[1], s[2], s[0]
                    )));
                }
                Ok(Self::Builtin(n))
            }
            Self::Folder {
                dir,
                shape: own,
                skip_corrupt: own_skip,
                ..
            } => Self::folder(
                &dir,
                &FolderOptions {
                    shape: Some(shape.unwrap_or(own)),
                    skip_corrupt: skip_corrupt || own_skip,
                },
            ),
        }
    }

    /// An image-folder source: scans `dir` (classes; no decoding beyond the first image when
    /// `opts.shape` is `None`). Errors: those of [`folder::scan`], an undecodable first image,
    /// a bad shape, or a path containing `;` (the canonical text could not hold it).
    pub fn folder(dir: &Path, opts: &FolderOptions) -> Result<Self> {
        let abs = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        if abs.to_string_lossy().contains(';') || abs.to_str().is_none() {
            return Err(Error::bad(
                &abs,
                "image-folder paths must be UTF-8 without ';'",
            ));
        }
        let layout = folder::scan(&abs)?;
        let shape = match opts.shape {
            Some(s) => s,
            None => folder::infer_shape(&layout.files[0])?,
        };
        folder::check_shape(shape)?;
        Ok(Self::Folder {
            dir: abs,
            shape,
            classes: layout.classes.len(),
            skip_corrupt: opts.skip_corrupt,
        })
    }

    /// The canonical text (see the module docs); [`DataSource::parse`] gives `self` back.
    pub fn id(&self) -> String {
        match self {
            Self::Builtin(n) => n.as_str().to_string(),
            Self::Folder {
                dir,
                shape: [c, h, w],
                skip_corrupt,
                ..
            } => format!(
                "{FOLDER_PREFIX}{};input={h}x{w}x{c}{}",
                dir.display(),
                if *skip_corrupt { ";skip-corrupt" } else { "" }
            ),
        }
    }

    /// A short name for titles and logs: the built-in name or the folder's last component.
    pub fn short_name(&self) -> String {
        match self {
            Self::Builtin(n) => n.as_str().to_string(),
            Self::Folder { dir, .. } => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        }
    }

    /// The built-in dataset, if it is one.
    pub fn builtin(&self) -> Option<DatasetName> {
        match self {
            Self::Builtin(n) => Some(*n),
            Self::Folder { .. } => None,
        }
    }

    /// Image shape `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        match self {
            Self::Builtin(n) => n.shape(),
            Self::Folder { shape, .. } => *shape,
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Builtin(n) => n.num_classes(),
            Self::Folder { classes, .. } => *classes,
        }
    }

    /// Whether training may flip images horizontally: the built-in rule, and yes for image
    /// folders (natural images).
    pub fn allows_hflip(&self) -> bool {
        match self {
            Self::Builtin(n) => n.allows_hflip(),
            Self::Folder { .. } => true,
        }
    }

    /// Random-crop padding in pixels: the built-in value; `min(H, W) / 8` for image folders
    /// (3 at 28×28, 4 at 32×32).
    pub fn crop_padding(&self) -> usize {
        match self {
            Self::Builtin(n) => n.crop_padding(),
            Self::Folder { shape, .. } => shape[1].min(shape[2]) / 8,
        }
    }

    /// Loads the three splits: [`super::load`] for a built-in dataset, [`folder::load_folder`]
    /// for an image folder (its manifest records [`DataSource::id`]).
    pub fn load(&self) -> Result<Splits> {
        match self {
            Self::Builtin(n) => super::load(*n),
            Self::Folder {
                dir,
                shape,
                skip_corrupt,
                ..
            } => folder::load_folder(
                dir,
                &self.id(),
                &FolderOptions {
                    shape: Some(*shape),
                    skip_corrupt: *skip_corrupt,
                },
            ),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

/// Parses `HxWxC` (e.g. `28x28x1`) into `[C, H, W]`.
pub fn parse_hwc(s: &str) -> Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(['x', 'X'])
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid(format!("input {s:?}: expected HxWxC, e.g. 28x28x1")))?;
    match v[..] {
        [h, w, c] => {
            folder::check_shape([c, h, w])?;
            Ok([c, h, w])
        }
        _ => Err(Error::Invalid(format!(
            "input {s:?}: expected HxWxC, e.g. 28x28x1"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_folder_round_trip() {
        let s = DataSource::parse("fashion_mnist").unwrap();
        assert_eq!(s.id(), "fashion-mnist");
        assert_eq!(DataSource::parse(&s.id()).unwrap(), s);
        let td = tempfile::tempdir().unwrap();
        for c in ["x", "y"] {
            let d = td.path().join(c);
            std::fs::create_dir_all(&d).unwrap();
            image::RgbImage::from_pixel(5, 7, image::Rgb([1, 2, 3]))
                .save(d.join("a.png"))
                .unwrap();
        }
        let f = DataSource::parse(td.path().to_str().unwrap()).unwrap();
        assert_eq!(f.shape(), [3, 7, 5]);
        assert_eq!(f.num_classes(), 2);
        assert!(f.id().starts_with(FOLDER_PREFIX) && f.id().ends_with(";input=7x5x3"));
        assert_eq!(DataSource::parse(&f.id()).unwrap(), f);
        let g = DataSource::parse(&format!("{};skip-corrupt", f.id())).unwrap();
        assert!(matches!(
            g,
            DataSource::Folder {
                skip_corrupt: true,
                ..
            }
        ));
        let e = DataSource::parse(&format!("{};colour=red", f.id())).unwrap_err();
        assert!(e.to_string().contains("unknown option"), "{e}");
        let e = DataSource::parse("imagenet").unwrap_err().to_string();
        assert!(e.contains("ImageFolder"), "{e}");
        let h = DataSource::from_arg(td.path().to_str().unwrap(), Some([1, 4, 4]), true).unwrap();
        assert!(h.id().ends_with(";input=4x4x1;skip-corrupt"), "{}", h.id());
        let e = DataSource::from_arg("mnist", Some([1, 32, 32]), false).unwrap_err();
        assert!(e.to_string().contains("only image folders"), "{e}");
        assert!(parse_hwc("28x28x2").is_err());
        assert_eq!(parse_hwc("32x16x3").unwrap(), [3, 32, 16]);
    }
}
