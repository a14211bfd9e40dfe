//! Squeeze-and-excitation gates.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor, activation};

/// Which squeeze-and-excitation recipe a block uses.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SeFlavour {
    /// MobileNetV3: ReLU inside, hard-sigmoid gate `relu6(x + 3) / 6`.
    MobileNetV3,
    /// EfficientNet / MOAT: SiLU inside, sigmoid gate.
    EfficientNet,
}

/// Configuration of a [`SqueezeExcite`] gate.
#[derive(Config, Debug)]
pub struct SqueezeExciteConfig {
    /// Channels of the gated feature map.
    pub channels: usize,
    /// Width of the bottleneck (see [`make_divisible`](crate::make_divisible) for the
    /// MobileNetV3 rounding rule; MOAT uses `int(0.25 * block_output_channels)`).
    pub squeeze_channels: usize,
    /// Activation and gate.
    pub flavour: SeFlavour,
}

/// Global average pool, 1x1 conv down, activation, 1x1 conv up, gate, multiply.
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    /// `channels -> squeeze_channels`, with bias.
    pub reduce: Conv2d,
    /// `squeeze_channels -> channels`, with bias.
    pub expand: Conv2d,
    #[module(skip)]
    flavour: SeFlavour,
}

impl SqueezeExciteConfig {
    /// Builds the gate on `device`.
    pub fn init(&self, device: &Device) -> SqueezeExcite {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [1, 1])
                .with_padding(PaddingConfig2d::Valid)
                .init(device)
        };
        SqueezeExcite {
            reduce: conv(self.channels, self.squeeze_channels),
            expand: conv(self.squeeze_channels, self.channels),
            flavour: self.flavour,
        }
    }
}

impl SqueezeExcite {
    /// The recipe of this gate.
    pub fn flavour(&self) -> SeFlavour {
        self.flavour
    }

    /// Gates `x` (`[batch, channels, h, w]`) channel-wise.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let pooled = x.clone().mean_dim(3).mean_dim(2);
        let hidden = self.reduce.forward(pooled);
        let hidden = match self.flavour {
            SeFlavour::MobileNetV3 => activation::relu(hidden),
            SeFlavour::EfficientNet => activation::silu(hidden),
        };
        let gate = self.expand.forward(hidden);
        let gate = match self.flavour {
            SeFlavour::MobileNetV3 => activation::hard_sigmoid(gate, 1.0 / 6.0, 0.5),
            SeFlavour::EfficientNet => activation::sigmoid(gate),
        };
        x * gate
    }
}
