//! The inverted residual block shared by MobileTL (MobileNetV2/V3) and MOAT.
//!
//! One configurable [`InvertedResidual`] covers the post-norm MobileNet block and MOAT's
//! pre-norm MBConv; [`BlockHooks`] lets a training method (MobileTL) replace how the
//! block's norms and activations run without this crate knowing about it.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use irb_core::{Activation, InvertedResidualConfig};
//!
//! let device = Device::flex();
//! // MobileNetV2's second block: 16 -> 96 -> 24 channels, stride 2.
//! let block = InvertedResidualConfig::new(16, 96, 24)
//!     .with_stride(2)
//!     .with_activation(Activation::Relu6)
//!     .init(&device);
//! let x = Tensor::<4>::random([1, 16, 32, 32], Distribution::Default, &device);
//! assert_eq!(block.forward(x).dims(), [1, 24, 16, 16]);
//! ```

mod activation;
mod block;
pub mod cost;
mod drop_path;
pub mod hooks;
mod im2col;
mod norm;
mod padding;
mod squeeze_excite;

pub use activation::Activation;
pub use block::{
    BlockSqueezeExcite, InvertedResidual, InvertedResidualConfig, NormPlacement, ShortcutKind,
    ShortcutPath, tf_same_avg_pool2d,
};
pub use cost::{CostReport, Countable, LayerCost};
pub use drop_path::DropPath;
pub use hooks::{ActivationSite, BlockHooks, NormSite, StandardHooks};
pub use im2col::{conv2d_im2col, prefers_im2col};
pub use norm::{BatchNorm, BatchNormConfig};
pub use padding::{ConvPadding, conv_output_size};
pub use squeeze_excite::{SeFlavour, SqueezeExcite, SqueezeExciteConfig};

/// Rounds `value` to the nearest multiple of `divisor` (at least `min_value`, default the
/// divisor), never going below 90% of `value` (the `_make_divisible` rule of the
/// TensorFlow MobileNet code, used by torchvision and timm for channel widths and
/// MobileNetV3's squeeze-excitation width).
pub fn make_divisible(value: f64, divisor: usize, min_value: Option<usize>) -> usize {
    let min_value = min_value.unwrap_or(divisor);
    let d = divisor as f64;
    let mut rounded = min_value.max(((value + d / 2.0) / d) as usize * divisor);
    if (rounded as f64) < 0.9 * value {
        rounded += divisor;
    }
    rounded
}

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values from torchvision's MobileNetV3 SE widths (_make_divisible(c // 4, 8)).
        assert_eq!(make_divisible(72.0 / 4.0, 8, None), 24);
        assert_eq!(make_divisible(120.0 / 4.0, 8, None), 32);
        assert_eq!(make_divisible(480.0 / 4.0, 8, None), 120);
        assert_eq!(make_divisible(672.0 / 4.0, 8, None), 168);
        assert_eq!(make_divisible(960.0 / 4.0, 8, None), 240);
        assert_eq!(make_divisible(16.0 / 4.0, 8, None), 8);
        assert_eq!(make_divisible(96.0 / 4.0, 8, None), 24);
        assert_eq!(make_divisible(240.0 / 4.0, 8, None), 64);
        assert_eq!(make_divisible(576.0 / 4.0, 8, None), 144);
        // Never drop below 90%.
        assert_eq!(make_divisible(10.0, 8, None), 16);
    }
}
