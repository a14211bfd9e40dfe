//! Labelled image sources for fine-tuning, and the per-image pipeline that turns them
//! into batches: TinyTL's recipe of a random resized crop and a horizontal flip for
//! training, a resize and centre crop for evaluation, ImageNet normalisation, at the
//! model's resolution.
//!
//! Sources: CIFAR-10/100 ([`CifarSet`]), an image folder (`root/<class>/<image>`, the
//! torchvision `ImageFolder` layout), Oxford-IIIT Pets from its split files, Oxford
//! Flowers-102 from its `.mat` label and split files, and [`SyntheticShapes`], a task
//! that needs no download.

use std::path::{Path, PathBuf};

use image::RgbImage;
use image::imageops::{self, FilterType};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::CifarSet;

/// Why an image or a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An image does not decode.
    #[error("{path} is not a readable image: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: image::ImageError,
    },
    /// A split or label file has a malformed line or value.
    #[error("{path}:{line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line (0: the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A dataset folder holds no images.
    #[error("{0} holds no images")]
    Empty(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A labelled collection of RGB images.
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether the source has no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes; labels are `0..num_classes`.
    fn num_classes(&self) -> usize;
    /// Image `index` and its label.
    fn read(&self, index: usize) -> Result<(RgbImage, usize), DataError>;
}

impl ImageSource for CifarSet {
    fn len(&self) -> usize {
        CifarSet::len(self)
    }
    fn num_classes(&self) -> usize {
        self.variant.num_classes()
    }
    fn read(&self, index: usize) -> Result<(RgbImage, usize), DataError> {
        let planes = self.image(index);
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let p = (y * 32 + x) as usize;
            image::Rgb([planes[p], planes[1024 + p], planes[2048 + p]])
        });
        Ok((image, self.labels[index] as usize))
    }
}

/// Image files with labels, decoded on demand.
#[derive(Debug, Clone)]
pub struct ImageList {
    /// Each image and its label.
    pub items: Vec<(PathBuf, usize)>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_error(dir)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

impl ImageList {
    /// The `ImageFolder` layout: one sub-folder per class (sorted by name, as torchvision
    /// numbers them), JPEG or PNG files inside.
    pub fn folder(root: &Path) -> Result<Self, DataError> {
        let mut list = ImageList {
            items: Vec::new(),
            classes: Vec::new(),
        };
        for class_dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let label = list.classes.len();
            list.classes.push(
                class_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            for file in sorted_entries(&class_dir)?
                .into_iter()
                .filter(|p| is_image(p))
            {
                list.items.push((file, label));
            }
        }
        if list.items.is_empty() {
            return Err(DataError::Empty(root.to_path_buf()));
        }
        Ok(list)
    }

    /// Oxford-IIIT Pets: `annotations/trainval.txt` (`train`) or `annotations/test.txt`
    /// (`test`), lines `Image_name CLASS-ID SPECIES BREED-ID` with 1-based class ids over
    /// 37 breeds, images in `images/<Image_name>.jpg`.
    pub fn pets(root: &Path, train: bool) -> Result<Self, DataError> {
        let split = root
            .join("annotations")
            .join(if train { "trainval.txt" } else { "test.txt" });
        let text = std::fs::read_to_string(&split).map_err(io_error(&split))?;
        let mut items = Vec::new();
        let mut classes = vec![String::new(); 37];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |message: String| DataError::Malformed {
                path: split.clone(),
                line: i + 1,
                message,
            };
            let mut fields = line.split_whitespace();
            let name = fields.next().expect("a non-empty line has a first field");
            let id: usize = fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| {
                malformed(format!(
                    "expected `name class-id species breed-id`, got {line:?}"
                ))
            })?;
            if !(1..=37).contains(&id) {
                return Err(malformed(format!("class id {id} is outside 1..=37")));
            }
            // The breed is the name without its trailing `_<number>`.
            if let Some((breed, _)) = name.rsplit_once('_') {
                classes[id - 1] = breed.to_string();
            }
            items.push((root.join("images").join(format!("{name}.jpg")), id - 1));
        }
        if items.is_empty() {
            return Err(DataError::Empty(split));
        }
        Ok(ImageList { items, classes })
    }

    /// Oxford Flowers-102: `imagelabels.mat` (`labels`, 1-based over 102 classes) and
    /// `setid.mat` (`trnid`, `valid`, `tstid`, 1-based image numbers), images in
    /// `jpg/image_NNNNN.jpg`. `train` takes the train and validation ids (the usual
    /// transfer-learning split: 2,040 train, 6,149 test), else the test ids.
    pub fn flowers102(root: &Path, train: bool) -> Result<Self, DataError> {
        let labels = crate::data::matfile::read_numeric(&root.join("imagelabels.mat"), "labels")?;
        let setid = root.join("setid.mat");
        let ids = if train {
            let mut ids = crate::data::matfile::read_numeric(&setid, "trnid")?;
            ids.extend(crate::data::matfile::read_numeric(&setid, "valid")?);
            ids
        } else {
            crate::data::matfile::read_numeric(&setid, "tstid")?
        };
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let index = id as usize;
            let label =
                labels
                    .get(index.wrapping_sub(1))
                    .copied()
                    .ok_or_else(|| DataError::Malformed {
                        path: setid.clone(),
                        line: 0,
                        message: format!("image id {id} has no entry in imagelabels.mat"),
                    })? as usize;
            if !(1..=102).contains(&label) {
                return Err(DataError::Malformed {
                    path: root.join("imagelabels.mat"),
                    line: 0,
                    message: format!("label {label} of image {index} is outside 1..=102"),
                });
            }
            items.push((
                root.join("jpg").join(format!("image_{index:05}.jpg")),
                label - 1,
            ));
        }
        Ok(ImageList {
            items,
            classes: (1..=102).map(|i| format!("flower {i}")).collect(),
        })
    }
}

impl ImageSource for ImageList {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn read(&self, index: usize) -> Result<(RgbImage, usize), DataError> {
        let (path, label) = &self.items[index];
        let image = image::open(path).map_err(|source| DataError::Image {
            path: path.clone(),
            source,
        })?;
        Ok((image.to_rgb8(), *label))
    }
}

/// Four shapes (filled disc, filled square, ring, cross) of random size, position and
/// colour on a random two-tone background with pixel noise; the class is the shape.
///
/// Colour and area statistics overlap between classes, so a classifier has to see the
/// outline. Images are a pure function of `(seed, index)`.
#[derive(Debug, Clone)]
pub struct SyntheticShapes {
    len: usize,
    side: u32,
    seed: u64,
}

impl SyntheticShapes {
    /// Number of classes.
    pub const CLASSES: usize = 4;

    /// `len` images of `side x side` pixels.
    pub fn new(len: usize, side: u32, seed: u64) -> Self {
        SyntheticShapes { len, side, seed }
    }
}

impl ImageSource for SyntheticShapes {
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        Self::CLASSES
    }
    fn read(&self, index: usize) -> Result<(RgbImage, usize), DataError> {
        let label = index % Self::CLASSES;
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index as u64);
        let s = self.side as f32;
        let radius = rng.random_range(0.18 * s..0.32 * s);
        let cx = rng.random_range(radius..s - radius);
        let cy = rng.random_range(radius..s - radius);
        let colour = |rng: &mut ChaCha8Rng| -> [f32; 3] {
            std::array::from_fn(|_| rng.random_range(0.0f32..255.0))
        };
        // The shape is always light on dark or dark on light (a gap of at least 80 in
        // every channel), in random hues; the background has two tones.
        let light = rng.random_bool(0.5);
        let tone = |rng: &mut ChaCha8Rng, bright: bool| -> [f32; 3] {
            let c = colour(rng);
            c.map(|v| {
                if bright {
                    155.0 + v * 100.0 / 255.0
                } else {
                    v * 75.0 / 255.0
                }
            })
        };
        let (fg, bg_a, bg_b) = (
            tone(&mut rng, light),
            tone(&mut rng, !light),
            tone(&mut rng, !light),
        );
        let split = rng.random_range(0.0..s);
        let image = RgbImage::from_fn(self.side, self.side, |x, y| {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let r = (dx * dx + dy * dy).sqrt();
            let inside = match label {
                0 => r <= radius,
                1 => dx.abs() <= 0.85 * radius && dy.abs() <= 0.85 * radius,
                2 => r <= radius && r >= 0.6 * radius,
                _ => {
                    (dx.abs() <= 0.3 * radius && dy.abs() <= radius)
                        || (dy.abs() <= 0.3 * radius && dx.abs() <= radius)
                }
            };
            let base = if inside {
                fg
            } else if (x as f32) < split {
                bg_a
            } else {
                bg_b
            };
            image::Rgb(std::array::from_fn(|c| {
                (base[c] + rng.random_range(-20.0f32..20.0)).clamp(0.0, 255.0) as u8
            }))
        });
        Ok((image, label))
    }
}

/// How an image becomes a network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pipeline {
    /// Side of the network input.
    pub resolution: u32,
    /// Training: random resized crop (area fraction `crop_scale`, aspect 3/4..4/3) and a
    /// random horizontal flip. Evaluation: resize the shorter side to
    /// `resolution / crop_fraction`, centre crop.
    pub train: bool,
    /// Smallest area fraction of the random resized crop.
    pub crop_scale: f32,
    /// Centre-crop fraction of evaluation (1: resize to the resolution directly).
    pub crop_fraction: f32,
    /// Per-channel mean on the 0..1 scale (ImageNet's).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (ImageNet's).
    pub std: [f32; 3],
}

impl Pipeline {
    /// ImageNet normalisation at `resolution`; TinyTL's crop scale 0.08 and 0.875 centre
    /// crop.
    pub fn imagenet(resolution: u32, train: bool) -> Self {
        Pipeline {
            resolution,
            train,
            crop_scale: 0.08,
            crop_fraction: 0.875,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Crops and resizes `image` as the pipeline says; `rng` drives the training crop.
    pub fn transform(&self, image: &RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        let r = self.resolution;
        let (w, h) = image.dimensions();
        if self.train {
            let (x, y, cw, ch) = random_resized_crop(w, h, self.crop_scale, rng);
            let crop = imageops::crop_imm(image, x, y, cw, ch).to_image();
            let mut out = imageops::resize(&crop, r, r, FilterType::Triangle);
            if rng.random_bool(0.5) {
                imageops::flip_horizontal_in_place(&mut out);
            }
            out
        } else {
            let short = (r as f32 / self.crop_fraction).round() as u32;
            let (nw, nh) = if w <= h {
                (
                    short,
                    ((h as f32 * short as f32 / w as f32).round() as u32).max(short),
                )
            } else {
                (
                    ((w as f32 * short as f32 / h as f32).round() as u32).max(short),
                    short,
                )
            };
            let resized = imageops::resize(image, nw, nh, FilterType::Triangle);
            imageops::crop_imm(&resized, (nw - r) / 2, (nh - r) / 2, r, r).to_image()
        }
    }

    /// Writes `image` (at the pipeline's resolution) normalised and planar into `out`.
    pub fn normalise(&self, image: &RgbImage, out: &mut [f32]) {
        let plane = (self.resolution * self.resolution) as usize;
        for (p, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + p] = (pixel[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }
}

/// torchvision's `RandomResizedCrop` box: ten tries at a random area fraction in
/// `[scale, 1]` and log-uniform aspect in `[3/4, 4/3]`, else the central crop of the
/// clamped aspect.
fn random_resized_crop(w: u32, h: u32, scale: f32, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
    let area = (w * h) as f32;
    let (lo, hi) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale..=1.0);
        let aspect = rng.random_range(lo..=hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            return (
                rng.random_range(0..=w - cw),
                rng.random_range(0..=h - ch),
                cw,
                ch,
            );
        }
    }
    let ratio = w as f32 / h as f32;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, (w as f32 * 4.0 / 3.0).round() as u32)
    } else if ratio > 4.0 / 3.0 {
        ((h as f32 * 4.0 / 3.0).round() as u32, h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// One batch: normalised planar images `[len, 3, side, side]` and labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `len * 3 * side * side` values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Image side.
    pub side: usize,
}

/// Reads, transforms and normalises `indices` of `source` in parallel; each image draws
/// its augmentation from its own stream of `seed`, so a batch does not depend on the
/// thread count.
pub fn assemble_batch(
    source: &dyn ImageSource,
    indices: &[usize],
    pipeline: &Pipeline,
    seed: u64,
) -> Result<Batch, DataError> {
    let side = pipeline.resolution as usize;
    let per_image = 3 * side * side;
    let mut images = vec![0f32; indices.len() * per_image];
    let labels = images
        .par_chunks_mut(per_image)
        .zip(indices.par_iter())
        .map(|(out, &index)| {
            let (image, label) = source.read(index)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64).rotate_left(29));
            pipeline.normalise(&pipeline.transform(&image, &mut rng), out);
            Ok(label)
        })
        .collect::<Result<Vec<usize>, DataError>>()?;
    Ok(Batch {
        images,
        labels,
        side,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crops_stay_inside_the_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(32, 32), (500, 375), (40, 400), (3, 1000)] {
            for _ in 0..200 {
                let (x, y, cw, ch) = random_resized_crop(w, h, 0.08, &mut rng);
                assert!(
                    cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h,
                    "{w}x{h}: {x} {y} {cw} {ch}"
                );
            }
        }
    }

    #[test]
    fn evaluation_resizes_and_centre_crops_to_the_resolution() {
        let pipeline = Pipeline::imagenet(56, false);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let image = RgbImage::from_pixel(90, 60, image::Rgb([255, 0, 128]));
        let out = pipeline.transform(&image, &mut rng);
        assert_eq!(out.dimensions(), (56, 56));
        let mut planar = vec![0f32; 3 * 56 * 56];
        pipeline.normalise(&out, &mut planar);
        assert!((planar[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((planar[56 * 56] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
    }

    #[test]
    fn batches_are_reproducible_and_labelled() {
        let shapes = SyntheticShapes::new(12, 40, 7);
        let pipeline = Pipeline::imagenet(32, true);
        let a = assemble_batch(&shapes, &[0, 5, 10], &pipeline, 3).unwrap();
        let b = assemble_batch(&shapes, &[0, 5, 10], &pipeline, 3).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, vec![0, 1, 2]);
        let c = assemble_batch(&shapes, &[0, 5, 10], &pipeline, 4).unwrap();
        assert_ne!(a.images, c.images, "another seed draws other crops");
    }

    #[test]
    fn pets_split_lines_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("annotations")).unwrap();
        let split = dir.path().join("annotations").join("trainval.txt");
        std::fs::write(
            &split,
            "#Image CLASS-ID SPECIES BREED ID\nAbyssinian_100 1 1 1\nbeagle_12 x 2 1\n",
        )
        .unwrap();
        let err = ImageList::pets(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("trainval.txt:3"), "{err}");
        std::fs::write(&split, "Abyssinian_100 1 1 1\nbeagle_12 38 2 1\n").unwrap();
        let err = ImageList::pets(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains(":2") && err.contains("38"), "{err}");
        std::fs::write(
            &split,
            "Abyssinian_100 1 1 1\nyorkshire_terrier_3 37 2 25\n",
        )
        .unwrap();
        let pets = ImageList::pets(dir.path(), true).unwrap();
        assert_eq!(pets.items[1].1, 36);
        assert_eq!(pets.classes[36], "yorkshire_terrier");
        let err = pets.read(0).unwrap_err().to_string();
        assert!(err.contains("Abyssinian_100.jpg"), "{err}");
    }
}
