//! Convolution padding conventions.

use burn::config::Config;
use burn::nn::PaddingConfig2d;

/// How a convolution pads its input.
///
/// PyTorch-trained weights (torchvision, timm) expect symmetric `k / 2` padding; TensorFlow
/// and Keras "same" padding puts the extra row and column of an even total at the bottom and
/// right, which for stride 2 differs from the symmetric rule. Loading TF-trained weights
/// (MOAT) into a symmetric-padding network shifts every feature by a pixel, so the choice
/// is part of the architecture.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ConvPadding {
    /// `k / 2` on every side (PyTorch).
    Symmetric,
    /// TensorFlow "same": output `ceil(in / stride)`, extra padding at the bottom/right.
    TfSame,
}

impl ConvPadding {
    /// The burn padding configuration for a square kernel of size `kernel` and the given
    /// dilation.
    pub fn to_burn(self, kernel: usize, dilation: usize) -> PaddingConfig2d {
        match self {
            ConvPadding::Symmetric => {
                let p = dilation * (kernel - 1) / 2;
                PaddingConfig2d::Explicit(p, p, p, p)
            }
            // burn's `Same` computes total = (ceil(n / s) - 1) * s + k - n and puts
            // floor(total / 2) first, exactly TF's rule.
            ConvPadding::TfSame => PaddingConfig2d::Same,
        }
    }
}

/// Output size of a convolution or pooling window along one axis.
pub fn conv_output_size(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: ConvPadding,
) -> usize {
    match padding {
        ConvPadding::Symmetric => {
            let pad = dilation * (kernel - 1) / 2;
            (input + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1
        }
        ConvPadding::TfSame => input.div_ceil(stride),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_each_convention() {
        // stride 2, kernel 3 on an even size: both give n / 2.
        assert_eq!(conv_output_size(224, 3, 2, 1, ConvPadding::Symmetric), 112);
        assert_eq!(conv_output_size(224, 3, 2, 1, ConvPadding::TfSame), 112);
        // odd size: symmetric floor((n + 2 - 3) / 2) + 1, TF ceil(n / 2)
        assert_eq!(conv_output_size(7, 3, 2, 1, ConvPadding::Symmetric), 4);
        assert_eq!(conv_output_size(7, 3, 2, 1, ConvPadding::TfSame), 4);
        // kernel 5 stride 2
        assert_eq!(conv_output_size(28, 5, 2, 1, ConvPadding::Symmetric), 14);
        assert_eq!(conv_output_size(28, 5, 2, 1, ConvPadding::TfSame), 14);
    }
}
