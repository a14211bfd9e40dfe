//! Image preprocessing of the ImageNet evaluation recipe: resize the shorter side,
//! centre-crop, scale to [0, 1], normalise per channel (torchvision's
//! `Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize`).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;

/// Interpolation used for the resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Interpolation {
    /// Antialiased bilinear (torchvision's default).
    Bilinear,
    /// Antialiased bicubic (timm's MobileNet configs).
    Bicubic,
}

/// The evaluation transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Target length of the shorter side after resizing.
    pub resize: u32,
    /// Side of the square centre crop.
    pub crop: u32,
    /// Resize filter.
    pub interpolation: Interpolation,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl Default for Preprocess {
    /// ImageNet evaluation at 224 px: resize 256, crop 224, bilinear, ImageNet statistics.
    fn default() -> Self {
        Self {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Why an image could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be opened or decoded.
    #[error("cannot read image {path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// The crop is larger than the resized image.
    #[error("crop {crop} does not fit in the resized {width}x{height} image")]
    CropTooLarge {
        /// Requested crop.
        crop: u32,
        /// Resized width.
        width: u32,
        /// Resized height.
        height: u32,
    },
}

impl Preprocess {
    /// Loads `path` (PNG or JPEG) and returns a `[1, 3, crop, crop]` tensor.
    pub fn load(&self, path: &Path, device: &Device) -> Result<Tensor<4>, PreprocessError> {
        let image = image::open(path).map_err(|source| PreprocessError::Decode {
            path: path.display().to_string(),
            source,
        })?;
        self.apply(&image, device)
    }

    /// Applies the transform to a decoded image.
    pub fn apply(
        &self,
        image: &image::DynamicImage,
        device: &Device,
    ) -> Result<Tensor<4>, PreprocessError> {
        let rgb = image.to_rgb8();
        let (w, h) = rgb.dimensions();
        // torchvision's Resize(int): the shorter side becomes `resize`, the longer one
        // `int(resize * long / short)`.
        let (nw, nh) = if w <= h {
            (
                self.resize,
                (self.resize as u64 * h as u64 / w as u64) as u32,
            )
        } else {
            (
                (self.resize as u64 * w as u64 / h as u64) as u32,
                self.resize,
            )
        };
        let filter = match self.interpolation {
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
        };
        let resized = image::imageops::resize(&rgb, nw, nh, filter);
        if self.crop > nw || self.crop > nh {
            return Err(PreprocessError::CropTooLarge {
                crop: self.crop,
                width: nw,
                height: nh,
            });
        }
        // torchvision: top = int(round((h - crop) / 2)), with Python's round-half-to-even.
        let left = ((nw - self.crop) as f64 / 2.0).round_ties_even() as u32;
        let top = ((nh - self.crop) as f64 / 2.0).round_ties_even() as u32;
        let c = self.crop as usize;
        let mut data = vec![0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let pixel = resized.get_pixel(left + x as u32, top + y as u32);
                for ch in 0..3 {
                    let v = pixel[ch] as f32 / 255.0;
                    data[ch * c * c + y * c + x] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [1, 3, c, c]),
            device,
        ))
    }
}
