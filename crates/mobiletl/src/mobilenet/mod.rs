//! MobileNetV2 and MobileNetV3 built from `irb-core` blocks.
//!
//! The layer layout is the one both torchvision and timm use, so their checkpoints load
//! tensor for tensor (see [`load_weights`]):
//!
//! ```text
//! stem: conv 3x3/2 -> BN -> act
//! blocks: InvertedResidual x N
//! last: conv 1x1 -> BN -> act            (320 -> 1280 in V2, 160 -> 960 in V3-Large)
//! global average pool
//! V3 only: head linear (960 -> 1280, with bias) -> Hard-Swish
//! dropout -> classifier linear
//! ```

mod spec;
mod weights;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use irb_core::{
    Activation, BatchNorm, BatchNormConfig, BlockHooks, BlockSqueezeExcite, CostReport, Countable,
    InvertedResidual, InvertedResidualConfig, SeFlavour, StandardHooks,
};

pub use spec::{BlockSpec, Flavor, MobileNetArch, NetworkSpec, network_spec};
pub use weights::{
    Naming, WeightError, checkpoint_num_classes, detect_naming, load_weights,
    load_weights_from_bytes, tensor_names,
};

/// A convolution followed by BatchNorm and an activation (torchvision's
/// `Conv2dNormActivation`, timm's `ConvBnAct`).
#[derive(Module, Debug)]
pub struct ConvNormAct {
    /// The convolution (no bias).
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub norm: BatchNorm,
    #[module(skip)]
    activation: Activation,
}

impl ConvNormAct {
    fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        activation: Activation,
        spec: &NetworkSpec,
        device: &Device,
    ) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(out_channels)
                .with_epsilon(spec.norm_eps)
                .with_momentum(spec.norm_momentum)
                .init(device),
            activation,
        }
    }

    /// The activation after the norm.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The convolution alone (the stem's 3-channel input goes through im2col + matmul,
    /// see [`irb_core::conv2d_im2col`]).
    pub fn conv_forward(&self, x: Tensor<4>) -> Tensor<4> {
        if irb_core::prefers_im2col(&self.conv) {
            irb_core::conv2d_im2col(&self.conv, x)
        } else {
            self.conv.forward(x)
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.activation
            .forward(self.norm.forward(self.conv_forward(x)))
    }
}

impl Countable for ConvNormAct {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let out = self.conv.count(&format!("{prefix}.conv"), input, report);
        self.norm.count(&format!("{prefix}.norm"), out, report)
    }
}

/// Configuration of a [`MobileNet`].
#[derive(Config, Debug)]
pub struct MobileNetConfig {
    /// Which network.
    pub arch: MobileNetArch,
    /// Number of output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Width multiplier (1.0 for the standard ImageNet models).
    #[config(default = 1.0)]
    pub width: f64,
    /// Channel rounding and BatchNorm constants of torchvision or timm.
    #[config(default = "Flavor::Torchvision")]
    pub flavor: Flavor,
    /// Dropout before the classifier (0.2 in torchvision; timm defaults to 0).
    #[config(default = 0.2)]
    pub dropout: f64,
}

impl MobileNetConfig {
    /// The block table this configuration builds.
    pub fn spec(&self) -> NetworkSpec {
        network_spec(self.arch, self.flavor, self.width)
    }

    /// Builds the model with PyTorch's default initialisation (weights are usually loaded
    /// afterwards with [`load_weights`]).
    ///
    /// # Panics
    /// On zero classes or a non-positive width.
    pub fn init(&self, device: &Device) -> MobileNet {
        assert!(
            self.num_classes > 0,
            "a classifier needs at least one class"
        );
        let spec = self.spec();
        let stem = ConvNormAct::new(3, spec.stem, 3, 2, spec.stem_activation, &spec, device);
        let blocks = spec
            .blocks
            .iter()
            .map(|b| {
                InvertedResidualConfig::new(b.in_channels, b.expanded, b.out_channels)
                    .with_kernel_size(b.kernel)
                    .with_stride(b.stride)
                    .with_activation(b.activation)
                    .with_squeeze_excite(
                        b.squeeze
                            .map(|c| BlockSqueezeExcite::new(c, SeFlavour::MobileNetV3)),
                    )
                    .with_norm_eps(spec.norm_eps)
                    .with_norm_momentum(spec.norm_momentum)
                    .init(device)
            })
            .collect::<Vec<_>>();
        let block_out = spec.blocks.last().map_or(spec.stem, |b| b.out_channels);
        let last_activation = match self.arch {
            MobileNetArch::V2 => Activation::Relu6,
            _ => Activation::HardSwish,
        };
        let last = ConvNormAct::new(
            block_out,
            spec.last_channels,
            1,
            1,
            last_activation,
            &spec,
            device,
        );
        let head = spec
            .head_channels
            .map(|h| LinearConfig::new(spec.last_channels, h).init(device));
        let features = spec.head_channels.unwrap_or(spec.last_channels);
        MobileNet {
            stem,
            blocks,
            last,
            head,
            dropout: DropoutConfig::new(self.dropout).init(),
            classifier: LinearConfig::new(features, self.num_classes).init(device),
            arch: self.arch,
            stage_ends: spec.stage_ends.clone(),
        }
    }
}

/// MobileNetV2 / MobileNetV3-Large / MobileNetV3-Small.
#[derive(Module, Debug)]
pub struct MobileNet {
    /// 3x3 stride-2 stem.
    pub stem: ConvNormAct,
    /// Inverted residual blocks.
    pub blocks: Vec<InvertedResidual>,
    /// Final 1x1 convolution before pooling.
    pub last: ConvNormAct,
    /// MobileNetV3's pre-classifier linear layer (followed by Hard-Swish).
    pub head: Option<Linear>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// Classifier.
    pub classifier: Linear,
    #[module(skip)]
    arch: MobileNetArch,
    #[module(skip)]
    stage_ends: Vec<usize>,
}

impl MobileNet {
    /// Which network this is.
    pub fn arch(&self) -> MobileNetArch {
        self.arch
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// Block index (exclusive) at which each stage of constant resolution ends.
    pub fn stage_ends(&self) -> &[usize] {
        &self.stage_ends
    }

    /// Folds pending training-mode BatchNorm updates into the stored running statistics
    /// (see [`BatchNorm::sync_running_stats`]); call after training, before saving.
    pub fn sync_running_stats(&self) {
        self.stem.norm.sync_running_stats();
        self.blocks
            .iter()
            .for_each(InvertedResidual::sync_running_stats);
        self.last.norm.sync_running_stats();
    }

    /// Logits `[batch, classes]` for images `[batch, 3, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, &StandardHooks)
    }

    /// [`forward`](Self::forward) with the blocks' norms and activations run by `hooks`.
    pub fn forward_with(&self, x: Tensor<4>, hooks: &impl BlockHooks) -> Tensor<2> {
        let features = self.features_with(x, hooks);
        self.classify_features(features)
    }

    /// The final feature map `[batch, last_channels, h/32, w/32]`, before pooling
    /// (torchvision's `model.features(x)`).
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        self.features_with(x, &StandardHooks)
    }

    /// [`features`](Self::features) with hooks in the blocks.
    pub fn features_with(&self, x: Tensor<4>, hooks: &impl BlockHooks) -> Tensor<4> {
        let mut h = self.stem.forward(x);
        for block in &self.blocks {
            h = block.forward_with(h, hooks);
        }
        self.last.forward(h)
    }

    /// The output of every stage (the last block of each resolution), then the final
    /// feature map: feature-pyramid endpoints at strides 2 (V2: after the first block),
    /// 4, 8, 16, 32.
    pub fn stage_features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut h = self.stem.forward(x);
        let mut outputs = Vec::with_capacity(self.stage_ends.len() + 1);
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(h);
            if self.stage_ends.contains(&(i + 1)) {
                outputs.push(h.clone());
            }
        }
        outputs.push(self.last.forward(h));
        outputs
    }

    /// Pooling, head and classifier on a final feature map.
    pub fn classify_features(&self, features: Tensor<4>) -> Tensor<2> {
        let pooled = features.mean_dim(3).mean_dim(2).flatten::<2>(1, 3);
        let mut h = pooled;
        if let Some(head) = &self.head {
            h = Activation::HardSwish.forward(head.forward(h));
        }
        self.classifier.forward(self.dropout.forward(h))
    }

    /// Parameters and multiply-adds per layer for a `resolution x resolution` RGB input.
    pub fn cost(&self, resolution: usize) -> CostReport {
        let mut report = CostReport::default();
        self.count("", [3, resolution, resolution], &mut report);
        report
    }
}

impl Countable for MobileNet {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let name = |n: &str| {
            if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}.{n}")
            }
        };
        let mut shape = self.stem.count(&name("stem"), input, report);
        for (i, block) in self.blocks.iter().enumerate() {
            shape = block.count(&name(&format!("blocks.{i}")), shape, report);
        }
        shape = self.last.count(&name("last"), shape, report);
        shape = [shape[0], 1, 1];
        if let Some(head) = &self.head {
            shape = head.count(&name("head"), shape, report);
        }
        self.classifier.count(&name("classifier"), shape, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn params(arch: MobileNetArch, flavor: Flavor) -> usize {
        let model = MobileNetConfig::new(arch)
            .with_flavor(flavor)
            .init(&Device::flex());
        let report = model.cost(224);
        assert_eq!(
            report.params() + report.batch_norm_buffers(),
            model.num_params(),
            "cost table and module disagree on {arch:?}"
        );
        report.params()
    }

    #[test]
    fn parameter_counts_equal_torchvision() {
        for flavor in [Flavor::Torchvision, Flavor::Timm] {
            assert_eq!(params(MobileNetArch::V2, flavor), 3_504_872);
            assert_eq!(params(MobileNetArch::V3Large, flavor), 5_483_032);
            assert_eq!(params(MobileNetArch::V3Small, flavor), 2_542_856);
        }
    }

    #[test]
    fn multiply_adds_match_the_papers() {
        // MobileNetV2 paper: 300M; MobileNetV3 paper: 219M (Large), 56M (Small).
        let macs = |arch| {
            MobileNetConfig::new(arch)
                .init(&Device::flex())
                .cost(224)
                .macs() as f64
                / 1e6
        };
        let v2 = macs(MobileNetArch::V2);
        let large = macs(MobileNetArch::V3Large);
        let small = macs(MobileNetArch::V3Small);
        assert!((v2 - 300.0).abs() < 1.0, "V2 {v2}M");
        assert!((large - 219.0).abs() < 2.0, "V3-Large {large}M");
        assert!((small - 56.0).abs() < 2.0, "V3-Small {small}M");
    }

    #[test]
    fn shapes_of_features_and_stages() {
        let device = Device::flex();
        let model = MobileNetConfig::new(MobileNetArch::V3Small)
            .with_num_classes(7)
            .init(&device);
        let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Default, &device);
        assert_eq!(model.features(x.clone()).dims(), [2, 576, 2, 2]);
        let stages = model.stage_features(x.clone());
        let sizes: Vec<_> = stages.iter().map(|t| t.dims()[2]).collect();
        assert_eq!(sizes, vec![16, 8, 4, 2, 2]);
        assert_eq!(model.forward(x).dims(), [2, 7]);
    }
}
