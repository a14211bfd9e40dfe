//! The inverted residual block (MobileNetV2 Sandler et al. 2018; MBConv in EfficientNet,
//! CoAtNet and MOAT).
//!
//! ```text
//! post-norm (MobileNetV2/V3):  x -> [expand 1x1 -> BN -> act] -> dw kxk/s -> BN -> act
//!                                -> [SE] -> project 1x1 -> BN -> (+ x when shapes match)
//! pre-norm (MOAT MBConv):      x -> BN -> expand 1x1 -> BN -> GELU -> dw kxk/s -> BN -> GELU
//!                                -> [SE] -> shrink 1x1 (+bias) -> drop path -> + shortcut(x)
//! ```
//! Both are one [`InvertedResidual`], configured by [`InvertedResidualConfig`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::hooks::{ActivationSite, BlockHooks, NormSite, StandardHooks};
use crate::{
    Activation, BatchNorm, BatchNormConfig, ConvPadding, DropPath, SeFlavour, SqueezeExcite,
    SqueezeExciteConfig,
};

/// Where the block normalises.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// conv -> BN -> act, with a BN after the projection and no conv biases (MobileNet).
    PostNorm,
    /// BN on the block input, conv -> BN -> act inside, and a biased shrink conv with no BN
    /// after it (MOAT's MBConv).
    PreNorm,
}

/// The residual connection of a block.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ShortcutKind {
    /// MobileNet rule: add the input when stride is 1 and channels match, else no residual.
    IdentityWhenShapesMatch,
    /// MOAT / CoAtNet rule: always a residual. When the block downsamples, average-pool the
    /// input (window `pool_size`, stride 2, TF "same" padding that excludes the pad from the
    /// mean); when channels change, a 1x1 convolution with bias follows.
    Pooled {
        /// Pooling window: 2 for classification, 3 for MOAT's downstream models.
        pool_size: usize,
    },
}

/// Squeeze-excitation inside a block.
#[derive(Config, Debug)]
pub struct BlockSqueezeExcite {
    /// Bottleneck width.
    pub squeeze_channels: usize,
    /// Activation and gate.
    pub flavour: SeFlavour,
}

/// Configuration of an [`InvertedResidual`] block.
#[derive(Config, Debug)]
pub struct InvertedResidualConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Width after the expansion conv. Equal to `in_channels` means no expansion conv
    /// (MobileNetV2's first block, MobileNetV3's 16 -> 16 blocks).
    pub expanded_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Depthwise kernel size.
    #[config(default = 3)]
    pub kernel_size: usize,
    /// Stride, carried by the depthwise conv.
    #[config(default = 1)]
    pub stride: usize,
    /// Activation after the expansion and depthwise convs.
    #[config(default = "Activation::Relu6")]
    pub activation: Activation,
    /// Optional squeeze-excitation after the depthwise activation.
    #[config(default = "None")]
    pub squeeze_excite: Option<BlockSqueezeExcite>,
    /// Post-norm (MobileNet) or pre-norm (MOAT).
    #[config(default = "NormPlacement::PostNorm")]
    pub norm_placement: NormPlacement,
    /// Residual rule.
    #[config(default = "ShortcutKind::IdentityWhenShapesMatch")]
    pub shortcut: ShortcutKind,
    /// BatchNorm epsilon: 1e-5 for PyTorch-trained weights, 1e-3 for TF/Keras.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// BatchNorm momentum in PyTorch's convention (weight of the new batch statistic):
    /// 0.1 in PyTorch, 0.01 for Keras' 0.99.
    #[config(default = 0.1)]
    pub norm_momentum: f64,
    /// Convolution padding convention.
    #[config(default = "ConvPadding::Symmetric")]
    pub padding: ConvPadding,
    /// Survival probability of the residual branch (stochastic depth); 1 disables it.
    #[config(default = 1.0)]
    pub survival_prob: f64,
}

/// How the input reaches the output of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortcutPath {
    /// No residual connection.
    None,
    /// `out = branch + x`.
    Identity,
    /// `out = branch + conv?(pool?(x))`.
    Pooled {
        /// Average pooling window, or `None` when the block keeps its resolution.
        pool_size: Option<usize>,
    },
}

/// An inverted residual block. Field names follow the roles of the layers (they map
/// one-to-one on timm's `conv_pw / bn1 / conv_dw / bn2 / se / conv_pwl / bn3` and MOAT's
/// `pre_norm / expand_conv / expand_norm / depthwise_conv / depthwise_norm / se /
/// shrink_conv / shortcut_conv`).
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// Input BatchNorm (pre-norm blocks only).
    pub pre_norm: Option<BatchNorm>,
    /// 1x1 expansion convolution, absent when the expansion ratio is 1.
    pub expand_conv: Option<Conv2d>,
    /// BatchNorm after the expansion convolution.
    pub expand_norm: Option<BatchNorm>,
    /// Depthwise kxk convolution, carrying the stride.
    pub depthwise_conv: Conv2d,
    /// BatchNorm after the depthwise convolution.
    pub depthwise_norm: BatchNorm,
    /// Squeeze-excitation gate.
    pub squeeze_excite: Option<SqueezeExcite>,
    /// 1x1 projection ("shrink") convolution; biased in pre-norm blocks.
    pub project_conv: Conv2d,
    /// BatchNorm after the projection (post-norm blocks only).
    pub project_norm: Option<BatchNorm>,
    /// 1x1 convolution on the shortcut when channels change (pooled shortcuts only).
    pub shortcut_conv: Option<Conv2d>,
    /// Stochastic depth on the residual branch.
    pub drop_path: DropPath,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    shortcut: ShortcutPath,
    #[module(skip)]
    stride: usize,
}

impl InvertedResidualConfig {
    /// Whether the block has an expansion convolution.
    pub fn has_expansion(&self) -> bool {
        self.expanded_channels != self.in_channels
    }

    /// The shortcut this configuration produces.
    pub fn shortcut_path(&self) -> ShortcutPath {
        let same_shape = self.stride == 1 && self.in_channels == self.out_channels;
        match self.shortcut {
            ShortcutKind::IdentityWhenShapesMatch if same_shape => ShortcutPath::Identity,
            ShortcutKind::IdentityWhenShapesMatch => ShortcutPath::None,
            ShortcutKind::Pooled { .. } if same_shape => ShortcutPath::Identity,
            ShortcutKind::Pooled { pool_size } => ShortcutPath::Pooled {
                pool_size: (self.stride > 1).then_some(pool_size),
            },
        }
    }

    /// Builds the block on `device`.
    ///
    /// # Panics
    /// On a zero channel count, a stride other than 1 or 2, an even kernel, or a pooled
    /// shortcut with a window below 2.
    pub fn init(&self, device: &Device) -> InvertedResidual {
        assert!(
            self.in_channels > 0 && self.expanded_channels > 0 && self.out_channels > 0,
            "inverted residual block channels must be positive: {self:?}"
        );
        assert!(
            self.stride == 1 || self.stride == 2,
            "inverted residual block stride must be 1 or 2, got {}",
            self.stride
        );
        assert!(
            self.kernel_size % 2 == 1,
            "depthwise kernel size must be odd, got {}",
            self.kernel_size
        );
        if let ShortcutKind::Pooled { pool_size } = self.shortcut {
            assert!(
                pool_size >= 2,
                "shortcut pool size must be >= 2, got {pool_size}"
            );
        }
        let pre_norm = self.norm_placement == NormPlacement::PreNorm;
        let norm = |channels| {
            BatchNormConfig::new(channels)
                .with_epsilon(self.norm_eps)
                .with_momentum(self.norm_momentum)
                .init(device)
        };
        let pointwise = |i, o, bias| {
            Conv2dConfig::new([i, o], [1, 1])
                .with_padding(PaddingConfig2d::Valid)
                .with_bias(bias)
                .init(device)
        };
        let hidden = self.expanded_channels;
        let expansion = self.has_expansion();
        let shortcut = self.shortcut_path();
        let shortcut_conv = match shortcut {
            ShortcutPath::Pooled { .. } if self.in_channels != self.out_channels => {
                Some(pointwise(self.in_channels, self.out_channels, true))
            }
            _ => None,
        };
        InvertedResidual {
            pre_norm: pre_norm.then(|| norm(self.in_channels)),
            expand_conv: expansion.then(|| pointwise(self.in_channels, hidden, false)),
            expand_norm: expansion.then(|| norm(hidden)),
            depthwise_conv: Conv2dConfig::new([hidden, hidden], [self.kernel_size; 2])
                .with_stride([self.stride; 2])
                .with_groups(hidden)
                .with_padding(self.padding.to_burn(self.kernel_size, 1))
                .with_bias(false)
                .init(device),
            depthwise_norm: norm(hidden),
            squeeze_excite: self.squeeze_excite.as_ref().map(|se| {
                SqueezeExciteConfig::new(hidden, se.squeeze_channels, se.flavour).init(device)
            }),
            project_conv: pointwise(hidden, self.out_channels, pre_norm),
            project_norm: (!pre_norm).then(|| norm(self.out_channels)),
            shortcut_conv,
            drop_path: DropPath::new(self.survival_prob),
            activation: self.activation,
            shortcut,
            stride: self.stride,
        }
    }
}

impl InvertedResidual {
    /// The activation after the expansion and depthwise convolutions.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The residual path of this block.
    pub fn shortcut_path(&self) -> ShortcutPath {
        self.shortcut
    }

    /// The stride of the depthwise convolution.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The block's BatchNorms, in forward order.
    pub fn norms(&self) -> impl Iterator<Item = &BatchNorm> {
        self.pre_norm
            .iter()
            .chain(self.expand_norm.iter())
            .chain(std::iter::once(&self.depthwise_norm))
            .chain(self.project_norm.iter())
    }

    /// See [`BatchNorm::sync_running_stats`].
    pub fn sync_running_stats(&self) {
        self.norms().for_each(BatchNorm::sync_running_stats);
    }

    /// Forward pass with the standard layers.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, &StandardHooks)
    }

    /// Forward pass whose norms and activations are run by `hooks` (see
    /// [`BlockHooks`]); convolutions, squeeze-excitation and the residual are unchanged.
    pub fn forward_with(&self, x: Tensor<4>, hooks: &impl BlockHooks) -> Tensor<4> {
        let input = x.clone();
        let mut h = match &self.pre_norm {
            Some(norm) => hooks.batch_norm(NormSite::Pre, norm, x),
            None => x,
        };
        if let (Some(conv), Some(norm)) = (&self.expand_conv, &self.expand_norm) {
            h = conv.forward(h);
            h = hooks.batch_norm(NormSite::Expand, norm, h);
            h = hooks.activation(ActivationSite::Expand, self.activation, h);
        }
        h = self.depthwise_conv.forward(h);
        h = hooks.batch_norm(NormSite::Depthwise, &self.depthwise_norm, h);
        h = hooks.activation(ActivationSite::Depthwise, self.activation, h);
        if let Some(se) = &self.squeeze_excite {
            h = se.forward(h);
        }
        h = self.project_conv.forward(h);
        if let Some(norm) = &self.project_norm {
            h = hooks.batch_norm(NormSite::Project, norm, h);
        }
        match self.shortcut {
            ShortcutPath::None => h,
            ShortcutPath::Identity => self.drop_path.forward(h) + input,
            ShortcutPath::Pooled { pool_size } => {
                let mut s = input;
                if let Some(pool) = pool_size {
                    s = tf_same_avg_pool2d(s, pool, self.stride);
                }
                if let Some(conv) = &self.shortcut_conv {
                    s = conv.forward(s);
                }
                self.drop_path.forward(h) + s
            }
        }
    }
}

/// Average pooling with TensorFlow "same" padding: output `ceil(n / stride)`, the extra
/// padding at the bottom/right, and padded cells excluded from each mean (TF's
/// `AveragePooling2D(padding="same")`).
pub fn tf_same_avg_pool2d(x: Tensor<4>, pool: usize, stride: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let pads = |n: usize| {
        let total = ((n.div_ceil(stride) - 1) * stride + pool).saturating_sub(n);
        (total / 2, total - total / 2)
    };
    let options = AvgPoolOptions::new([pool, pool])
        .with_stride([stride, stride])
        .with_padding_pairs([pads(h), pads(w)])
        .with_count_include_pad(false);
    avg_pool2d(x, options)
}
