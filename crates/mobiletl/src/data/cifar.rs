//! CIFAR-10 and CIFAR-100 in their binary distribution format.
//!
//! Each record is the label byte(s) followed by 3072 pixel bytes: the 1024 red values of
//! the 32x32 image row-major, then green, then blue (already planar, so a record is an
//! NCHW image). CIFAR-10 has one label byte and the files `data_batch_1.bin` ..
//! `data_batch_5.bin` / `test_batch.bin`; CIFAR-100 has a coarse and a fine label byte and
//! the files `train.bin` / `test.bin`. The archives unpack into `cifar-10-batches-bin/`
//! and `cifar-100-binary/`; both that folder and its parent are accepted.

use std::path::{Path, PathBuf};

/// Pixels per image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarVariant {
    /// 10 classes.
    Cifar10,
    /// 100 fine classes (the coarse 20-superclass label is read but not used as target).
    Cifar100,
}

/// Train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// 50,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl CifarVariant {
    /// Number of target classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    fn folder(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarVariant::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (CifarVariant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarVariant::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarVariant::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }
}

/// Why a CIFAR split could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    /// A split file is missing.
    #[error("{file} not found (looked in {searched}); fetch it with `cargo xtask fetch {dataset}`")]
    Missing {
        /// The file name.
        file: String,
        /// The folders searched.
        searched: String,
        /// The dataset's manifest name.
        dataset: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a whole number of records.
    #[error(
        "{path} has {len} bytes, not a multiple of the {record}-byte record (truncated or not a CIFAR binary file)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The record size.
        record: usize,
    },
    /// A label is out of range.
    #[error("{path}, record {record}: label {label} is not below {classes}")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Record index in the file.
        record: usize,
        /// The label byte.
        label: u8,
        /// The number of classes.
        classes: usize,
    },
}

/// One split in memory: `images[i * IMAGE_BYTES..]` is image `i` (planar RGB, 8-bit).
#[derive(Debug, Clone)]
pub struct CifarSet {
    /// Which dataset.
    pub variant: CifarVariant,
    /// All images, planar RGB, back to back.
    pub images: Vec<u8>,
    /// Target label of each image (fine label for CIFAR-100).
    pub labels: Vec<u8>,
}

impl CifarSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Planar RGB bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
}

/// Reads a split from `dir` (the unpacked folder or its parent).
pub fn load_cifar(dir: &Path, variant: CifarVariant, split: Split) -> Result<CifarSet, CifarError> {
    let candidates = [dir.join(variant.folder()), dir.to_path_buf()];
    let record = variant.label_bytes() + IMAGE_BYTES;
    let classes = variant.num_classes();
    let mut set = CifarSet {
        variant,
        images: Vec::new(),
        labels: Vec::new(),
    };
    for file in variant.files(split) {
        let Some(path) = candidates
            .iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
        else {
            return Err(CifarError::Missing {
                searched: candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                file,
                dataset: match variant {
                    CifarVariant::Cifar10 => "cifar-10",
                    CifarVariant::Cifar100 => "cifar-100",
                },
            });
        };
        let bytes = std::fs::read(&path).map_err(|source| CifarError::Io {
            path: path.clone(),
            source,
        })?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(CifarError::Truncated {
                path,
                len: bytes.len(),
                record,
            });
        }
        set.images.reserve(bytes.len() / record * IMAGE_BYTES);
        for (i, chunk) in bytes.chunks_exact(record).enumerate() {
            // CIFAR-100: [coarse, fine, pixels]; the fine label is the target.
            let label = chunk[variant.label_bytes() - 1];
            if label as usize >= classes {
                return Err(CifarError::BadLabel {
                    path,
                    record: i,
                    label,
                    classes,
                });
            }
            set.labels.push(label);
            set.images
                .extend_from_slice(&chunk[variant.label_bytes()..]);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: &[u8], fill: u8) -> Vec<u8> {
        let mut r = label.to_vec();
        r.extend((0..IMAGE_BYTES).map(|i| fill.wrapping_add((i % 251) as u8)));
        r
    }

    #[test]
    fn reads_cifar10_split_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&folder).unwrap();
        let mut bytes = record(&[3], 0);
        bytes.extend(record(&[9], 7));
        std::fs::write(folder.join("test_batch.bin"), &bytes).unwrap();
        let set = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Test).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.labels, vec![3, 9]);
        assert_eq!(set.image(1)[0], 7);
        assert_eq!(set.image(1)[1024], 7u8.wrapping_add((1024 % 251) as u8));
        // The unpacked folder itself is accepted too.
        assert_eq!(
            load_cifar(&folder, CifarVariant::Cifar10, Split::Test)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn cifar100_uses_the_fine_label() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.bin"), record(&[4, 87], 1)).unwrap();
        let set = load_cifar(dir.path(), CifarVariant::Cifar100, Split::Test).unwrap();
        assert_eq!(set.labels, vec![87]);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Train).unwrap_err();
        assert!(
            err.to_string().contains("data_batch_1.bin not found"),
            "{err}"
        );
        assert!(
            err.to_string().contains("cargo xtask fetch cifar-10"),
            "{err}"
        );

        let mut bytes = record(&[1], 0);
        bytes.truncate(3000);
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
        let err = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Test).unwrap_err();
        assert!(
            err.to_string().contains("test_batch.bin has 3000 bytes"),
            "{err}"
        );

        let mut bytes = record(&[1], 0);
        bytes.extend(record(&[12], 0));
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
        let err = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Test).unwrap_err();
        assert!(
            err.to_string()
                .contains("record 1: label 12 is not below 10"),
            "{err}"
        );
    }
}
