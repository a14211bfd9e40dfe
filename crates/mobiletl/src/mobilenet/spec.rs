//! The MobileNet block tables, as the papers print them, and the channel rules of the two
//! implementations whose weights users bring (torchvision and timm agree at width 1.0 and
//! round differently below it).

use burn::config::Config;
use irb_core::{Activation, make_divisible};

/// Which MobileNet.
#[derive(Config, Debug, Copy, PartialEq, Eq, Hash)]
pub enum MobileNetArch {
    /// MobileNetV2 (Sandler et al. 2018).
    V2,
    /// MobileNetV3-Large (Howard et al. 2019).
    V3Large,
    /// MobileNetV3-Small.
    V3Small,
}

impl MobileNetArch {
    /// Parses `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` (torchvision) or
    /// `mobilenetv2_100`, `mobilenetv3_large_100`, `mobilenetv3_small_100` (timm).
    pub fn parse(name: &str) -> Option<(MobileNetArch, Flavor)> {
        match name {
            "mobilenet_v2" => Some((MobileNetArch::V2, Flavor::Torchvision)),
            "mobilenet_v3_large" => Some((MobileNetArch::V3Large, Flavor::Torchvision)),
            "mobilenet_v3_small" => Some((MobileNetArch::V3Small, Flavor::Torchvision)),
            "mobilenetv2_100" => Some((MobileNetArch::V2, Flavor::Timm)),
            "mobilenetv3_large_100" => Some((MobileNetArch::V3Large, Flavor::Timm)),
            "mobilenetv3_small_100" => Some((MobileNetArch::V3Small, Flavor::Timm)),
            _ => None,
        }
    }
}

/// Whose conventions: channel rounding at widths other than 1.0, BatchNorm constants, and
/// the weight names of [`load_weights`](super::load_weights).
#[derive(Config, Debug, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// torchvision: V3 BatchNorm eps 1e-3 and momentum 0.01, the head width scales with
    /// the width multiplier, expansion widths are rounded as channel counts.
    Torchvision,
    /// timm: BatchNorm eps 1e-5 and momentum 0.1, fixed head width for V3, expansion widths
    /// `make_divisible(in * ratio)`.
    Timm,
}

/// One inverted residual block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Expanded channels (equal to `in_channels`: no expansion conv).
    pub expanded: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Depthwise kernel.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Activation.
    pub activation: Activation,
    /// Squeeze-excitation bottleneck width.
    pub squeeze: Option<usize>,
}

/// A whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    /// Stem convolution output channels.
    pub stem: usize,
    /// Stem activation.
    pub stem_activation: Activation,
    /// The blocks, in order.
    pub blocks: Vec<BlockSpec>,
    /// Output channels of the last 1x1 convolution.
    pub last_channels: usize,
    /// Width of the V3 pre-classifier layer (`None` for V2).
    pub head_channels: Option<usize>,
    /// Index (exclusive) where each stage of equal resolution ends, for feature endpoints.
    pub stage_ends: Vec<usize>,
    /// BatchNorm epsilon.
    pub norm_eps: f64,
    /// BatchNorm momentum (PyTorch convention).
    pub norm_momentum: f64,
}

fn md(value: f64) -> usize {
    make_divisible(value, 8, None)
}

const RE: Activation = Activation::Relu;
const HS: Activation = Activation::HardSwish;

/// MobileNetV3 rows: (in, kernel, expanded, out, se, activation, stride, timm expansion
/// ratio), as in the paper's Tables 1 and 2.
type V3Row = (usize, usize, usize, usize, bool, Activation, usize, f64);

const V3_LARGE: &[V3Row] = &[
    (16, 3, 16, 16, false, RE, 1, 1.0),
    (16, 3, 64, 24, false, RE, 2, 4.0),
    (24, 3, 72, 24, false, RE, 1, 3.0),
    (24, 5, 72, 40, true, RE, 2, 3.0),
    (40, 5, 120, 40, true, RE, 1, 3.0),
    (40, 5, 120, 40, true, RE, 1, 3.0),
    (40, 3, 240, 80, false, HS, 2, 6.0),
    (80, 3, 200, 80, false, HS, 1, 2.5),
    (80, 3, 184, 80, false, HS, 1, 2.3),
    (80, 3, 184, 80, false, HS, 1, 2.3),
    (80, 3, 480, 112, true, HS, 1, 6.0),
    (112, 3, 672, 112, true, HS, 1, 6.0),
    (112, 5, 672, 160, true, HS, 2, 6.0),
    (160, 5, 960, 160, true, HS, 1, 6.0),
    (160, 5, 960, 160, true, HS, 1, 6.0),
];

const V3_SMALL: &[V3Row] = &[
    (16, 3, 16, 16, true, RE, 2, 1.0),
    (16, 3, 72, 24, false, RE, 2, 4.5),
    (24, 3, 88, 24, false, RE, 1, 3.67),
    (24, 5, 96, 40, true, HS, 2, 4.0),
    (40, 5, 240, 40, true, HS, 1, 6.0),
    (40, 5, 240, 40, true, HS, 1, 6.0),
    (40, 5, 120, 48, true, HS, 1, 3.0),
    (48, 5, 144, 48, true, HS, 1, 3.0),
    (48, 5, 288, 96, true, HS, 2, 6.0),
    (96, 5, 576, 96, true, HS, 1, 6.0),
    (96, 5, 576, 96, true, HS, 1, 6.0),
];

/// MobileNetV2 stages: (expansion t, channels c, repeats n, stride s).
const V2: &[(usize, usize, usize, usize)] = &[
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// The network for `arch` at width multiplier `width` under `flavor`'s rules.
pub fn network_spec(arch: MobileNetArch, flavor: Flavor, width: f64) -> NetworkSpec {
    assert!(
        width > 0.0 && width.is_finite(),
        "width multiplier must be positive, got {width}"
    );
    let (norm_eps, norm_momentum) = match (arch, flavor) {
        (MobileNetArch::V2, _) | (_, Flavor::Timm) => (1e-5, 0.1),
        (_, Flavor::Torchvision) => (1e-3, 0.01),
    };
    match arch {
        MobileNetArch::V2 => {
            let stem = md(32.0 * width);
            let mut blocks = Vec::new();
            let mut stage_ends = Vec::new();
            let mut in_c = stem;
            for &(t, c, n, s) in V2 {
                let out = md(c as f64 * width);
                for i in 0..n {
                    // torchvision: round(in * t); timm: make_divisible(in * t); equal for the
                    // integer ratios of V2 on channel counts that are multiples of 8.
                    let expanded = match flavor {
                        Flavor::Torchvision => ((in_c * t) as f64).round() as usize,
                        Flavor::Timm if t == 1 => in_c,
                        Flavor::Timm => md((in_c * t) as f64),
                    };
                    blocks.push(BlockSpec {
                        in_channels: in_c,
                        expanded,
                        out_channels: out,
                        kernel: 3,
                        stride: if i == 0 { s } else { 1 },
                        activation: Activation::Relu6,
                        squeeze: None,
                    });
                    in_c = out;
                }
                stage_ends.push(blocks.len());
            }
            let last = match flavor {
                Flavor::Torchvision => md(1280.0 * width.max(1.0)),
                Flavor::Timm => md(1280.0 * width).max(1280),
            };
            NetworkSpec {
                stem,
                stem_activation: Activation::Relu6,
                blocks,
                last_channels: last,
                head_channels: None,
                stage_ends,
                norm_eps,
                norm_momentum,
            }
        }
        MobileNetArch::V3Large | MobileNetArch::V3Small => {
            let (rows, head) = if arch == MobileNetArch::V3Large {
                (V3_LARGE, 1280.0)
            } else {
                (V3_SMALL, 1024.0)
            };
            let scale = |c: usize| md(c as f64 * width);
            let stem = match flavor {
                Flavor::Timm if width < 0.75 => 16,
                _ => scale(16),
            };
            let mut blocks = Vec::new();
            let mut in_c = stem;
            let mut stage_ends = Vec::new();
            for (i, &(_, kernel, exp, out, se, activation, stride, ratio)) in
                rows.iter().enumerate()
            {
                let out = scale(out);
                let expanded = match flavor {
                    Flavor::Torchvision => scale(exp),
                    Flavor::Timm if ratio == 1.0 => in_c,
                    Flavor::Timm => md(in_c as f64 * ratio),
                };
                let squeeze = se.then(|| match flavor {
                    Flavor::Torchvision => md((expanded / 4) as f64),
                    Flavor::Timm => md(expanded as f64 * 0.25),
                });
                if stride == 2 && i > 0 {
                    stage_ends.push(blocks.len());
                }
                blocks.push(BlockSpec {
                    in_channels: in_c,
                    expanded,
                    out_channels: out,
                    kernel,
                    stride,
                    activation,
                    squeeze,
                });
                in_c = out;
            }
            stage_ends.push(blocks.len());
            let head_channels = match flavor {
                Flavor::Torchvision => md(head * width),
                Flavor::Timm => head as usize,
            };
            NetworkSpec {
                stem,
                stem_activation: HS,
                blocks,
                last_channels: 6 * in_c,
                head_channels: Some(head_channels),
                stage_ends,
                norm_eps,
                norm_momentum,
            }
        }
    }
}
