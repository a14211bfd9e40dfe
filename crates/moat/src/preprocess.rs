//! Image preprocessing for classification with the released checkpoints.
//!
//! The TF ImageNet evaluation recipe of the EfficientNet / CoAtNet family that MOAT's
//! training code follows: a centre crop of `size / (size + 32)` of the shorter side, a
//! bicubic resize to `size x size`, then the variant's normalisation on the 0..255 scale
//! ([`InputNormalization`]).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;

use crate::config::InputNormalization;

/// Crop padding of the TF evaluation crop.
pub const CROP_PADDING: u32 = 32;

/// Decodes `path` (PNG or JPEG) into a `[1, 3, size, size]` tensor.
pub fn load_image(
    path: &Path,
    size: u32,
    normalization: InputNormalization,
    device: &Device,
) -> anyhow::Result<Tensor<4>> {
    let data = preprocess_image(path, size, normalization)?;
    let s = size as usize;
    Ok(Tensor::from_data(
        TensorData::new(data, [1, 3, s, s]),
        device,
    ))
}

/// Decodes, crops, resizes and normalises `path` into planar `3 x size x size` values.
pub fn preprocess_image(
    path: &Path,
    size: u32,
    normalization: InputNormalization,
) -> anyhow::Result<Vec<f32>> {
    let image = image::open(path)
        .map_err(|e| anyhow::anyhow!("cannot decode image {}: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = image.dimensions();
    let crop = ((size as f64 / (size + CROP_PADDING) as f64) * w.min(h) as f64).round() as u32;
    let crop = crop.max(1);
    let left = (w - crop).div_ceil(2);
    let top = (h - crop).div_ceil(2);
    let cropped = image::imageops::crop_imm(&image, left, top, crop, crop).to_image();
    let resized = image::imageops::resize(&cropped, size, size, FilterType::CatmullRom);
    let (mean, std) = normalization.mean_std();
    let s = size as usize;
    let mut data = vec![0f32; 3 * s * s];
    for (x, y, pixel) in resized.enumerate_pixels() {
        for c in 0..3 {
            data[c * s * s + y as usize * s + x as usize] = (pixel[c] as f32 - mean[c]) / std[c];
        }
    }
    Ok(data)
}
