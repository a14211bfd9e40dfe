//! Activation functions used by inverted residual blocks.

use burn::config::Config;
use burn::tensor::{Tensor, activation};

/// The pointwise non-linearity of a block.
///
/// MobileNetV2 uses ReLU6, MobileNetV3 mixes ReLU and Hard-Swish, MOAT uses the exact
/// (erf) GELU and EfficientNet-style squeeze-excitation uses SiLU.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x`, no non-linearity.
    Identity,
    /// `max(0, x)`.
    Relu,
    /// `min(max(0, x), 6)` (MobileNetV2).
    Relu6,
    /// `x * relu6(x + 3) / 6` (MobileNetV3).
    HardSwish,
    /// `x * Phi(x)` with the exact erf-based Phi (MOAT, not the tanh approximation).
    Gelu,
    /// `x * sigmoid(x)`, also called swish.
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Identity => x,
            Activation::Relu => activation::relu(x),
            Activation::Relu6 => activation::relu6(x),
            Activation::HardSwish => activation::hard_swish(x),
            Activation::Gelu => activation::gelu(x),
            Activation::Silu => activation::silu(x),
        }
    }

    /// Whether the derivative only takes the values 0 and 1, so a backward pass needs a
    /// 1-bit mask rather than the full input (TinyTL's memory accounting rule).
    pub fn has_binary_derivative(self) -> bool {
        matches!(
            self,
            Activation::Identity | Activation::Relu | Activation::Relu6
        )
    }
}
