//! ImageNet-1k accuracy of a MOAT model on a validation folder.
//!
//! The layout is the usual one of `torchvision.datasets.ImageFolder` (after the standard
//! `valprep.sh`): `ROOT/<wnid>/<image>.JPEG`, one folder per class. Sorted folder names
//! give the class indices of the released checkpoints (the sorted-wnid order of
//! ImageNet-1k), so the folder must hold exactly as many classes as the model's head.
//! Images go through the TF evaluation crop of [`crate::preprocess`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::InputNormalization;
use crate::model::Moat;
use crate::preprocess::preprocess_image;

/// Labelled image files, one folder per class.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The root directory.
    pub root: PathBuf,
    /// Class folder names in index order.
    pub classes: Vec<String>,
    /// `(file, class index)`, sorted by class then file name.
    pub items: Vec<(PathBuf, usize)>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

impl ImageFolder {
    /// Lists `root`; an error names the directory that could not be read or has no images.
    pub fn open(root: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read image folder {}", root.display()))?;
        let mut classes = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            if entry.file_type()?.is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() {
            bail!("{} has no class folders", root.display());
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|f| (f, label)));
        }
        if items.is_empty() {
            bail!("{} has no .jpg / .jpeg / .png images", root.display());
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            items,
        })
    }

    /// At most `limit` items spread evenly over the folder (every k-th), so a quick run
    /// still covers the classes; all items when `limit` is `None`.
    pub fn subset(&self, limit: Option<usize>) -> Vec<(PathBuf, usize)> {
        match limit {
            Some(n) if n < self.items.len() => {
                let n = n.max(1);
                (0..n)
                    .map(|i| self.items[i * self.items.len() / n].clone())
                    .collect()
            }
            _ => self.items.clone(),
        }
    }
}

/// Top-1 and top-5 accuracy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Images evaluated.
    pub images: usize,
    /// Fraction whose label is the arg-max.
    pub top1: f64,
    /// Fraction whose label is among the five highest logits.
    pub top5: f64,
}

/// Evaluates `model` on `items` at `size x size`, decoding each batch in parallel;
/// `progress(done)` runs after every batch.
pub fn evaluate(
    model: &Moat,
    items: &[(PathBuf, usize)],
    size: u32,
    normalization: InputNormalization,
    batch_size: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Accuracy> {
    if items.is_empty() {
        bail!("no images to evaluate");
    }
    let s = size as usize;
    let (mut top1, mut top5, mut done) = (0usize, 0usize, 0usize);
    for chunk in items.chunks(batch_size.max(1)) {
        let decoded: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|(path, _)| preprocess_image(path, size, normalization))
            .collect::<Result<_>>()?;
        let n = decoded.len();
        let x = Tensor::<4>::from_data(TensorData::new(decoded.concat(), [n, 3, s, s]), device);
        let logits = model.forward(x);
        let k = logits.dims()[1];
        let values = logits
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for ((_, label), row) in chunk.iter().zip(values.chunks_exact(k)) {
            if *label >= k {
                bail!("label {label} is outside the model's {k} classes");
            }
            let target = row[*label];
            // Rank of the label: logits strictly above it (ties count in its favour).
            let above = row.iter().filter(|&&v| v > target).count();
            top1 += (above == 0) as usize;
            top5 += (above < 5) as usize;
        }
        done += n;
        progress(done);
    }
    Ok(Accuracy {
        images: done,
        top1: top1 as f64 / done as f64,
        top5: top5 as f64 / done as f64,
    })
}
