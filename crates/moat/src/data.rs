//! Image sources for training: CIFAR-10/100 (binary format) and a synthetic
//! oriented-grating task that needs no download, plus the light augmentation
//! (padded random crop, horizontal flip) of CIFAR training recipes.
//!
//! Every source yields planar RGB on the 0..=255 scale; [`assemble_batch`] augments and
//! normalises with the model's [`InputNormalization`].

use std::f32::consts::PI;

use mobiletl::data::CifarSet;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::InputNormalization;

/// A labelled collection of square RGB images.
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether the source has no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes; labels are `0..num_classes`.
    fn num_classes(&self) -> usize;
    /// Side length of the images.
    fn side(&self) -> usize;
    /// Writes image `index` as planar RGB on the 0..=255 scale into `out`
    /// (`3 * side * side` values) and returns its label.
    fn read(&self, index: usize, out: &mut [f32]) -> usize;
}

impl ImageSource for CifarSet {
    fn len(&self) -> usize {
        CifarSet::len(self)
    }
    fn num_classes(&self) -> usize {
        self.variant.num_classes()
    }
    fn side(&self) -> usize {
        32
    }
    fn read(&self, index: usize, out: &mut [f32]) -> usize {
        // The binary format is already planar R, G, B.
        for (o, &b) in out.iter_mut().zip(self.image(index)) {
            *o = b as f32;
        }
        self.labels[index] as usize
    }
}

/// Sinusoidal gratings in four orientations (0, 45, 90 and 135 degrees, jittered by up to
/// 10 degrees) with random frequency, phase, colour and contrast plus uniform pixel noise.
///
/// The class is the orientation. Because the phase is uniform, every class has the same
/// mean image: a linear classifier on pixels has no mean difference to use, so the task needs
/// the network's nonlinear, spatial features. Images are a pure function of
/// `(seed, index)`, so a split is reproducible without storing it.
#[derive(Debug, Clone)]
pub struct OrientedGratings {
    len: usize,
    side: usize,
    seed: u64,
}

impl OrientedGratings {
    /// Number of classes (orientations).
    pub const CLASSES: usize = 4;

    /// `len` images of `side x side`; different seeds give disjoint-looking splits.
    pub fn new(len: usize, side: usize, seed: u64) -> Self {
        OrientedGratings { len, side, seed }
    }
}

impl ImageSource for OrientedGratings {
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        Self::CLASSES
    }
    fn side(&self) -> usize {
        self.side
    }
    fn read(&self, index: usize, out: &mut [f32]) -> usize {
        let label = index % Self::CLASSES;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let jitter = 10.0f32.to_radians();
        let theta = label as f32 * PI / 4.0 + rng.random_range(-jitter..jitter);
        let cycles = rng.random_range(2.0f32..5.0);
        let phase = rng.random_range(0.0f32..2.0 * PI);
        let (dx, dy) = (theta.cos(), theta.sin());
        let s = self.side;
        let base: [f32; 3] = std::array::from_fn(|_| rng.random_range(70.0f32..185.0));
        let amplitude: [f32; 3] = std::array::from_fn(|_| rng.random_range(25.0f32..65.0));
        let k = 2.0 * PI * cycles / s as f32;
        for y in 0..s {
            for x in 0..s {
                let wave = (k * (x as f32 * dx + y as f32 * dy) + phase).sin();
                for c in 0..3 {
                    let noise = rng.random_range(-40.0f32..40.0);
                    out[c * s * s + y * s + x] =
                        (base[c] + amplitude[c] * wave + noise).clamp(0.0, 255.0);
                }
            }
        }
        label
    }
}

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Zero-pad by this many pixels, then crop back at a random offset (0: no crop).
    pub crop_padding: usize,
    /// Mirror horizontally with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augmentation {
    /// No augmentation (evaluation, or tasks where a flip changes the label).
    pub const NONE: Augmentation = Augmentation {
        crop_padding: 0,
        horizontal_flip: false,
    };
    /// The standard CIFAR recipe: pad 4, random 32x32 crop, random flip.
    pub const CIFAR: Augmentation = Augmentation {
        crop_padding: 4,
        horizontal_flip: true,
    };

    fn apply(self, image: &[f32], side: usize, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        let p = self.crop_padding as i64;
        let (oy, ox) = if p > 0 {
            (
                rng.random_range(-p..=p) as isize,
                rng.random_range(-p..=p) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = self.horizontal_flip && rng.random_bool(0.5);
        let s = side as isize;
        for c in 0..3 {
            let plane = &image[c * side * side..(c + 1) * side * side];
            let dst = &mut out[c * side * side..(c + 1) * side * side];
            for y in 0..s {
                for x in 0..s {
                    let sx = if flip { s - 1 - x } else { x } + ox;
                    let sy = y + oy;
                    // Padding pixels are zero in the normalised space (the channel mean).
                    dst[(y * s + x) as usize] = if (0..s).contains(&sx) && (0..s).contains(&sy) {
                        plane[(sy * s + sx) as usize]
                    } else {
                        f32::NAN
                    };
                }
            }
        }
    }
}

/// One batch: normalised planar images `[len, 3, side, side]` and labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `len * 3 * side * side` normalised values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Image side length.
    pub side: usize,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Reads `indices` from `source` in parallel, augments each image with its own stream of
/// `seed` (so a batch is reproducible whatever the thread count), and normalises.
pub fn assemble_batch(
    source: &dyn ImageSource,
    indices: &[usize],
    augmentation: Augmentation,
    normalization: InputNormalization,
    seed: u64,
) -> Batch {
    let side = source.side();
    let per_image = 3 * side * side;
    let (mean, std) = normalization.mean_std();
    let mut images = vec![0f32; indices.len() * per_image];
    let labels: Vec<usize> = images
        .par_chunks_mut(per_image)
        .zip(indices.par_iter())
        .map(|(out, &index)| {
            let mut raw = vec![0f32; per_image];
            let label = source.read(index, &mut raw);
            if augmentation != Augmentation::NONE {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64).rotate_left(32));
                augmentation.apply(&raw, side, &mut rng, out);
            } else {
                out.copy_from_slice(&raw);
            }
            for (c, plane) in out.chunks_exact_mut(side * side).enumerate() {
                for v in plane {
                    *v = if v.is_nan() {
                        0.0
                    } else {
                        (*v - mean[c]) / std[c]
                    };
                }
            }
            label
        })
        .collect();
    Batch {
        images,
        labels,
        side,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratings_are_deterministic_balanced_and_in_range() {
        let g = OrientedGratings::new(64, 16, 3);
        let mut a = vec![0f32; 3 * 16 * 16];
        let mut b = a.clone();
        assert_eq!(g.read(5, &mut a), 1);
        g.read(5, &mut b);
        assert_eq!(a, b);
        g.read(6, &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|v| (0.0..=255.0).contains(v)));
        let counts = (0..64).fold([0; 4], |mut c, i| {
            c[g.read(i, &mut b)] += 1;
            c
        });
        assert_eq!(counts, [16; 4]);
    }

    #[test]
    fn unaugmented_batches_are_normalised_copies() {
        let g = OrientedGratings::new(8, 8, 0);
        let batch = assemble_batch(
            &g,
            &[3, 1],
            Augmentation::NONE,
            InputNormalization::Symmetric,
            9,
        );
        let mut raw = vec![0f32; 3 * 64];
        assert_eq!(batch.labels, vec![g.read(3, &mut raw), 1]);
        for (v, r) in batch.images[..192].iter().zip(&raw) {
            assert!((v - (r - 127.5) / 127.5).abs() < 1e-6);
        }
    }

    #[test]
    fn crop_and_flip_keep_pixels_or_pad_with_the_mean() {
        let g = OrientedGratings::new(4, 8, 1);
        let batch = assemble_batch(
            &g,
            &[0, 1, 2, 3],
            Augmentation::CIFAR,
            InputNormalization::Symmetric,
            4,
        );
        let again = assemble_batch(
            &g,
            &[0, 1, 2, 3],
            Augmentation::CIFAR,
            InputNormalization::Symmetric,
            4,
        );
        assert_eq!(
            batch.images, again.images,
            "augmentation must be reproducible"
        );
        assert!(
            batch
                .images
                .iter()
                .all(|v| v.is_finite() && v.abs() <= 1.0 + 1e-6)
        );
    }
}
