//! What a training step of a fine-tuning method costs, counted analytically: the
//! activations the backward pass keeps, the parameter memory, and the forward and
//! backward FLOPs.
//!
//! The memory rules are TinyTL's profiler (Cai et al. 2020), which MobileTL reports with:
//! - a convolution or linear layer keeps its input when its weight needs a gradient;
//! - a BatchNorm that trains its scale or uses batch statistics keeps its input; a
//!   BatchNorm with frozen scale and statistics is an affine map and keeps nothing (only
//!   its shift may train);
//! - ReLU and ReLU6 keep a 1-bit mask, and so does every MobileTL masked activation;
//!   Hard-Swish and the squeeze-excitation Hard-Sigmoid keep their input in full;
//! - the squeeze-excitation product `x * s` keeps `x` (for the gradient of `s`) and `s`;
//! - nothing is kept for a layer that backpropagation does not reach: layers below the
//!   first trainable parameter;
//! - parameters count 4 bytes when trainable and 1 byte (8-bit) when frozen.
//!
//! FLOPs count convolutions and linear layers only (2 per multiply-add). The backward of
//! a trainable layer computes the weight gradient (as many FLOPs as its forward) and,
//! when some layer below it trains, the input gradient (as many again).

use irb_core::Activation;

use crate::method::Method;
use crate::mobilenet::{BlockSpec, NetworkSpec};

/// Bytes a full activation element takes (TinyTL counts fp32).
pub const FP32: f64 = 4.0;

/// The column a layer falls in, named as in MobileTL's per-block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The stem convolution, norm and activation.
    Stem,
    /// Expansion 1x1 convolution.
    ExpandConv,
    /// BatchNorm after the expansion.
    ExpandNorm,
    /// Activation after the expansion.
    ExpandAct,
    /// Depthwise convolution.
    DepthwiseConv,
    /// BatchNorm after the depthwise convolution.
    DepthwiseNorm,
    /// Activation after the depthwise convolution.
    DepthwiseAct,
    /// Squeeze-excitation (pool, two 1x1 convolutions, gate and product).
    SqueezeExcite,
    /// Projection 1x1 convolution.
    ProjectConv,
    /// BatchNorm after the projection.
    ProjectNorm,
    /// Final 1x1 convolution, norm, activation, pooling and the classifier layers.
    Head,
}

impl Part {
    /// The parts of one block, in the paper's column order.
    pub const BLOCK: [Part; 9] = [
        Part::ExpandConv,
        Part::ExpandNorm,
        Part::ExpandAct,
        Part::DepthwiseConv,
        Part::DepthwiseNorm,
        Part::DepthwiseAct,
        Part::SqueezeExcite,
        Part::ProjectConv,
        Part::ProjectNorm,
    ];

    /// Short column label.
    pub fn label(self) -> &'static str {
        match self {
            Part::Stem => "stem",
            Part::ExpandConv => "exp conv",
            Part::ExpandNorm => "exp norm",
            Part::ExpandAct => "exp act",
            Part::DepthwiseConv => "dw conv",
            Part::DepthwiseNorm => "dw norm",
            Part::DepthwiseAct => "dw act",
            Part::SqueezeExcite => "SE",
            Part::ProjectConv => "proj conv",
            Part::ProjectNorm => "proj norm",
            Part::Head => "head",
        }
    }
}

/// One layer's share of a training step (per sample unless stated).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerCost {
    /// Dotted name, as the model's parameters are named (`blocks.3.expand` ...).
    pub name: String,
    /// Column of the per-block table.
    pub part: Part,
    /// Index of the block (`None` outside the blocks).
    pub block: Option<usize>,
    /// Activation elements kept in full per sample.
    pub kept_elements: usize,
    /// Activation elements kept as a 1-bit mask per sample.
    pub kept_mask_elements: usize,
    /// Parameters of the layer.
    pub params: usize,
    /// Of which trainable.
    pub trainable_params: usize,
    /// Forward FLOPs per sample.
    pub forward_flops: u64,
    /// Backward FLOPs per sample.
    pub backward_flops: u64,
}

impl LayerCost {
    /// Bytes kept for `batch` samples with full elements of `element_bytes` each.
    pub fn kept_bytes(&self, batch: usize, element_bytes: f64) -> f64 {
        (self.kept_elements * batch) as f64 * element_bytes
            + (self.kept_mask_elements * batch).div_ceil(8) as f64
    }
}

/// The cost of a training step, layer by layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainingCost {
    /// The layers, in forward order.
    pub layers: Vec<LayerCost>,
    /// Batch size.
    pub batch: usize,
    /// Input side in pixels.
    pub resolution: usize,
    /// Bytes per full activation element.
    pub element_bytes: f64,
}

impl TrainingCost {
    /// Bytes of activations the backward pass keeps, for the whole batch.
    pub fn activation_bytes(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| l.kept_bytes(self.batch, self.element_bytes))
            .sum()
    }

    /// Bytes of the activations kept by the layers of `part` (and `block`, when given).
    pub fn part_bytes(&self, part: Part, block: Option<usize>) -> f64 {
        self.layers
            .iter()
            .filter(|l| l.part == part && (block.is_none() || l.block == block))
            .map(|l| l.kept_bytes(self.batch, self.element_bytes))
            // `fold` from +0: an empty `sum` of floats is -0.
            .fold(0.0, |a, b| a + b)
    }

    /// Parameter memory: trainable parameters fp32, frozen ones 8-bit.
    pub fn parameter_bytes(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| 4.0 * l.trainable_params as f64 + (l.params - l.trainable_params) as f64)
            .sum()
    }

    /// Activations plus parameters.
    pub fn total_bytes(&self) -> f64 {
        self.activation_bytes() + self.parameter_bytes()
    }

    /// Trainable parameters.
    pub fn trainable_params(&self) -> usize {
        self.layers.iter().map(|l| l.trainable_params).sum()
    }

    /// Forward FLOPs for the batch.
    pub fn forward_flops(&self) -> u64 {
        self.layers.iter().map(|l| l.forward_flops).sum::<u64>() * self.batch as u64
    }

    /// Backward FLOPs for the batch.
    pub fn backward_flops(&self) -> u64 {
        self.layers.iter().map(|l| l.backward_flops).sum::<u64>() * self.batch as u64
    }
}

/// What a method trains in one layer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Training {
    /// Convolution and linear weights.
    weights: bool,
    /// Biases and BatchNorm shifts.
    biases: bool,
    /// BatchNorm scales (and batch statistics) of the inner norms.
    inner_norm_scales: bool,
    /// BatchNorm scale of the projection norm (and of the stem and final norms).
    outer_norm_scales: bool,
    /// Activations keep a 1-bit mask whatever their kind (MobileTL).
    masked: bool,
}

impl Training {
    const FROZEN: Training = Training {
        weights: false,
        biases: false,
        inner_norm_scales: false,
        outer_norm_scales: false,
        masked: false,
    };
    const ALL: Training = Training {
        weights: true,
        biases: true,
        inner_norm_scales: true,
        outer_norm_scales: true,
        masked: false,
    };
    const MOBILETL: Training = Training {
        weights: true,
        biases: true,
        inner_norm_scales: false,
        outer_norm_scales: true,
        masked: true,
    };
    const BIASES: Training = Training {
        biases: true,
        ..Training::FROZEN
    };
}

/// Walks the layers, tracking whether backpropagation reaches the current point (some
/// parameter below it trains).
struct Walker {
    layers: Vec<LayerCost>,
    reached: bool,
    block: Option<usize>,
    prefix: String,
}

impl Walker {
    fn new(reached: bool) -> Self {
        Walker {
            layers: Vec::new(),
            reached,
            block: None,
            prefix: String::new(),
        }
    }

    fn push(&mut self, name: &str, part: Part, layer: LayerCost) {
        let name = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        self.layers.push(LayerCost {
            name,
            part,
            block: self.block,
            ..layer
        });
    }

    /// A convolution or linear layer: `macs` multiply-adds per sample on an input of
    /// `input` elements; `weight` and `bias` parameter counts.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        name: &str,
        part: Part,
        input: usize,
        macs: u64,
        weight: usize,
        bias: usize,
        train: Training,
    ) {
        let trains_weight = train.weights;
        let trains_bias = train.biases && bias > 0;
        let backward =
            if trains_weight { 2 * macs } else { 0 } + if self.reached { 2 * macs } else { 0 };
        self.push(
            name,
            part,
            LayerCost {
                kept_elements: if trains_weight { input } else { 0 },
                params: weight + bias,
                trainable_params: if trains_weight { weight } else { 0 }
                    + if trains_bias { bias } else { 0 },
                forward_flops: 2 * macs,
                backward_flops: backward,
                ..empty()
            },
        );
        self.reached |= trains_weight || trains_bias;
    }

    /// A BatchNorm over `channels` x `elements / channels`; `scale` says whether its scale
    /// trains (and its batch statistics are used).
    fn norm(
        &mut self,
        name: &str,
        part: Part,
        channels: usize,
        elements: usize,
        scale: bool,
        shift: bool,
    ) {
        self.push(
            name,
            part,
            LayerCost {
                kept_elements: if scale { elements } else { 0 },
                params: 2 * channels,
                trainable_params: if scale { channels } else { 0 }
                    + if shift { channels } else { 0 },
                ..empty()
            },
        );
        self.reached |= scale || shift;
    }

    /// An activation over `elements`; `masked` makes it keep a 1-bit mask whatever its
    /// kind.
    fn activation(
        &mut self,
        name: &str,
        part: Part,
        activation: Activation,
        elements: usize,
        masked: bool,
    ) {
        if !self.reached {
            self.push(name, part, empty());
            return;
        }
        if activation == Activation::Identity {
            self.push(name, part, empty());
            return;
        }
        let binary = masked || matches!(activation, Activation::Relu | Activation::Relu6);
        self.push(
            name,
            part,
            LayerCost {
                kept_elements: if binary { 0 } else { elements },
                kept_mask_elements: if binary { elements } else { 0 },
                ..empty()
            },
        );
    }

    /// One inverted residual block at input side `side`; returns the output side.
    fn block(&mut self, b: &BlockSpec, side: usize, train: Training) -> usize {
        let hw_in = side * side;
        let out_side = conv_out(side, b.kernel, b.stride);
        let hw = out_side * out_side;
        let inner_scale = train.inner_norm_scales;
        let inner_shift = train.biases;
        let activation_in_block = |w: &mut Walker, name: &str, part: Part, elements: usize| {
            w.activation(name, part, b.activation, elements, train.masked)
        };
        if b.expanded != b.in_channels {
            let (i, e) = (b.in_channels, b.expanded);
            self.linear(
                "expand",
                Part::ExpandConv,
                i * hw_in,
                (i * e * hw_in) as u64,
                i * e,
                0,
                train,
            );
            self.norm(
                "expand_norm",
                Part::ExpandNorm,
                e,
                e * hw_in,
                inner_scale,
                inner_shift,
            );
            activation_in_block(self, "expand_act", Part::ExpandAct, e * hw_in);
        }
        let (e, k) = (b.expanded, b.kernel);
        self.linear(
            "depthwise",
            Part::DepthwiseConv,
            e * hw_in,
            (e * k * k * hw) as u64,
            e * k * k,
            0,
            train,
        );
        self.norm(
            "depthwise_norm",
            Part::DepthwiseNorm,
            e,
            e * hw,
            inner_scale,
            inner_shift,
        );
        activation_in_block(self, "depthwise_act", Part::DepthwiseAct, e * hw);
        if let Some(s) = b.squeeze {
            let reached_before = self.reached;
            self.linear(
                "squeeze_excite.reduce",
                Part::SqueezeExcite,
                e,
                (e * s) as u64,
                e * s,
                s,
                train,
            );
            self.activation(
                "squeeze_excite.act",
                Part::SqueezeExcite,
                Activation::Relu,
                s,
                train.masked,
            );
            self.linear(
                "squeeze_excite.expand",
                Part::SqueezeExcite,
                s,
                (s * e) as u64,
                s * e,
                e,
                train,
            );
            // The Hard-Sigmoid gate keeps its input (TinyTL counts it in full). The product
            // `x * s` keeps `x` for the gradient of `s` (needed when the gate's branch
            // trains or `dx` flows further down) and `s` for `dx`.
            let branch_trains = train.weights || train.biases;
            self.push(
                "squeeze_excite.gate",
                Part::SqueezeExcite,
                LayerCost {
                    kept_elements: if self.reached { e } else { 0 },
                    ..empty()
                },
            );
            self.push(
                "squeeze_excite.scale",
                Part::SqueezeExcite,
                LayerCost {
                    kept_elements: if branch_trains || reached_before {
                        e * hw
                    } else {
                        0
                    } + if reached_before { e } else { 0 },
                    // One multiply per element, counted as a multiply-add as the model's
                    // cost report does; backward: `ds = sum(dy * x)` and `dx = dy * s`.
                    forward_flops: 2 * (e * hw) as u64,
                    backward_flops: 2
                        * (e * hw) as u64
                        * (u64::from(branch_trains || reached_before) + u64::from(reached_before)),
                    ..empty()
                },
            );
        }
        let o = b.out_channels;
        self.linear(
            "project",
            Part::ProjectConv,
            e * hw,
            (e * o * hw) as u64,
            e * o,
            0,
            train,
        );
        self.norm(
            "project_norm",
            Part::ProjectNorm,
            o,
            o * hw,
            train.outer_norm_scales,
            train.biases,
        );
        out_side
    }
}

fn empty() -> LayerCost {
    LayerCost {
        name: String::new(),
        part: Part::Head,
        block: None,
        kept_elements: 0,
        kept_mask_elements: 0,
        params: 0,
        trainable_params: 0,
        forward_flops: 0,
        backward_flops: 0,
    }
}

/// Output side of a convolution with PyTorch's `kernel / 2` padding.
fn conv_out(side: usize, kernel: usize, stride: usize) -> usize {
    (side + 2 * (kernel / 2) - kernel) / stride + 1
}

/// What `method` trains in block `index` of `n` when fine-tuning the top `blocks`.
fn block_training(method: Method, index: usize, n: usize, blocks: usize) -> Training {
    let trained = index >= n.saturating_sub(blocks);
    match method {
        Method::Full => Training::ALL,
        Method::Last => Training::FROZEN,
        Method::Bias => Training::BIASES,
        Method::Vanilla if trained => Training::ALL,
        Method::Mobiletl if trained => Training::MOBILETL,
        Method::Vanilla | Method::Mobiletl => Training::FROZEN,
    }
}

/// The training cost of a whole network under `method` (`blocks`: K of FT-K), at
/// `resolution` and `batch`, with `num_classes` outputs.
///
/// As [`prepare`](crate::method::prepare) sets it up: FT-K trains the top K blocks, the
/// final 1x1 convolution, MobileNetV3's pre-classifier layer and the classifier.
pub fn network_cost(
    spec: &NetworkSpec,
    num_classes: usize,
    method: Method,
    blocks: usize,
    resolution: usize,
    batch: usize,
) -> Result<TrainingCost, String> {
    let n = spec.blocks.len();
    if method.uses_blocks() && !(1..=n).contains(&blocks) {
        return Err(format!(
            "--blocks {blocks} is out of range: the network has {n} inverted residual blocks"
        ));
    }
    if resolution < 32 || batch == 0 {
        return Err(format!(
            "resolution {resolution} and batch {batch}: need a resolution of at least 32 and a batch of at least 1"
        ));
    }
    let head = match method {
        Method::Last => Training::FROZEN,
        Method::Bias => Training::BIASES,
        _ => Training::ALL,
    };
    let stem = match method {
        Method::Full => Training::ALL,
        Method::Bias => Training::BIASES,
        _ => Training::FROZEN,
    };
    let mut w = Walker::new(false);
    let side = conv_out(resolution, 3, 2);
    let c = spec.stem;
    w.linear(
        "stem.conv",
        Part::Stem,
        3 * resolution * resolution,
        (3 * 9 * c * side * side) as u64,
        27 * c,
        0,
        stem,
    );
    w.norm(
        "stem.norm",
        Part::Stem,
        c,
        c * side * side,
        stem.outer_norm_scales,
        stem.biases,
    );
    w.activation(
        "stem.act",
        Part::Stem,
        spec.stem_activation,
        c * side * side,
        false,
    );
    let mut side = side;
    for (i, b) in spec.blocks.iter().enumerate() {
        w.block = Some(i);
        w.prefix = format!("blocks.{i}");
        side = w.block(b, side, block_training(method, i, n, blocks));
    }
    w.block = None;
    w.prefix.clear();
    let (i, o) = (spec.blocks[n - 1].out_channels, spec.last_channels);
    let hw = side * side;
    w.linear(
        "last.conv",
        Part::Head,
        i * hw,
        (i * o * hw) as u64,
        i * o,
        0,
        head,
    );
    w.norm(
        "last.norm",
        Part::Head,
        o,
        o * hw,
        head.outer_norm_scales,
        head.biases,
    );
    w.activation("last.act", Part::Head, spec.stem_activation, o * hw, false);
    let mut features = o;
    if let Some(h) = spec.head_channels {
        w.linear("head", Part::Head, o, (o * h) as u64, o * h, h, head);
        w.activation("head.act", Part::Head, Activation::HardSwish, h, false);
        features = h;
    }
    let classifier = if method == Method::Bias || method == Method::Last {
        Training::ALL
    } else {
        head
    };
    w.linear(
        "classifier",
        Part::Head,
        features,
        (features * num_classes) as u64,
        features * num_classes,
        num_classes,
        classifier,
    );
    Ok(TrainingCost {
        layers: w.layers,
        batch,
        resolution,
        element_bytes: FP32,
    })
}

/// The training cost of one block, alone and trainable, on an input of side `side`: the
/// per-block table of the paper. `mobiletl` picks MobileTL's rules over vanilla's.
pub fn block_cost(block: &BlockSpec, side: usize, mobiletl: bool, batch: usize) -> TrainingCost {
    let mut w = Walker::new(false);
    w.block = Some(0);
    w.block(
        block,
        side,
        if mobiletl {
            Training::MOBILETL
        } else {
            Training::ALL
        },
    );
    TrainingCost {
        layers: w.layers,
        batch,
        resolution: side,
        element_bytes: FP32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mobilenet::{MobileNetArch, MobileNetConfig};

    #[test]
    fn forward_flops_are_twice_the_model_multiply_adds() {
        for arch in [
            MobileNetArch::V2,
            MobileNetArch::V3Large,
            MobileNetArch::V3Small,
        ] {
            let config = MobileNetConfig::new(arch);
            let model = config.init(&burn::tensor::Device::flex());
            for resolution in [224, 160] {
                let cost =
                    network_cost(&config.spec(), 1000, Method::Full, 0, resolution, 1).unwrap();
                assert_eq!(
                    cost.forward_flops(),
                    2 * model.cost(resolution).macs(),
                    "{arch:?} {resolution}"
                );
                let params: usize = cost.layers.iter().map(|l| l.params).sum();
                let model_params = model.cost(resolution).params();
                assert_eq!(params, model_params, "{arch:?}");
                assert_eq!(cost.trainable_params(), params);
            }
        }
    }

    fn v2_block() -> BlockSpec {
        MobileNetConfig::new(MobileNetArch::V2).spec().blocks[2]
    }

    #[test]
    fn one_block_keeps_what_tinytl_counts() {
        let b = v2_block();
        assert_eq!((b.in_channels, b.expanded, b.out_channels), (24, 144, 24));
        let (small, large): (usize, usize) = (24 * 56 * 56, 144 * 56 * 56);
        let vanilla = block_cost(&b, 56, false, 1);
        let tl = block_cost(&b, 56, true, 1);
        let masks = 2.0 * large.div_ceil(8) as f64;
        // Vanilla: block input, both inner norm inputs, depthwise and projection inputs,
        // projection norm input; ReLU6 masks.
        assert_eq!(
            vanilla.activation_bytes(),
            4.0 * (2 * small + 4 * large) as f64 + masks
        );
        // MobileTL: the inner norms keep nothing.
        assert_eq!(
            tl.activation_bytes(),
            4.0 * (2 * small + 2 * large) as f64 + masks
        );
        assert_eq!(tl.part_bytes(Part::ExpandNorm, None), 0.0);
        let reduction = 1.0 - tl.activation_bytes() / vanilla.activation_bytes();
        assert!((reduction - 0.463).abs() < 0.01, "{reduction}");
        // With Hard-Swish and SE the vanilla block also keeps both activation inputs.
        let v3 = BlockSpec {
            activation: Activation::HardSwish,
            squeeze: Some(40),
            ..b
        };
        let vanilla = block_cost(&v3, 56, false, 1);
        let tl = block_cost(&v3, 56, true, 1);
        assert_eq!(
            vanilla.part_bytes(Part::ExpandAct, None),
            4.0 * large as f64
        );
        assert_eq!(
            tl.part_bytes(Part::ExpandAct, None),
            large.div_ceil(8) as f64
        );
        let reduction = 1.0 - tl.activation_bytes() / vanilla.activation_bytes();
        assert!((reduction - 0.533).abs() < 0.01, "{reduction}");
    }

    #[test]
    fn methods_order_as_expected_on_mobilenet_v3() {
        let spec = MobileNetConfig::new(MobileNetArch::V3Large).spec();
        let cost = |m, k| network_cost(&spec, 10, m, k, 224, 8).unwrap();
        let mut previous = 0.0;
        for k in 1..=15 {
            let (v, t) = (cost(Method::Vanilla, k), cost(Method::Mobiletl, k));
            assert!(t.activation_bytes() < v.activation_bytes(), "K = {k}");
            assert!(v.activation_bytes() > previous, "K = {k}");
            previous = v.activation_bytes();
            assert_eq!(v.forward_flops(), t.forward_flops());
            assert_eq!(v.backward_flops(), t.backward_flops());
        }
        let full = cost(Method::Full, 0);
        assert!(full.activation_bytes() > cost(Method::Vanilla, 15).activation_bytes());
        // Full fine-tuning: every layer computes its weight gradient and all but the stem
        // their input gradient too.
        let stem = &full.layers[0];
        assert_eq!(
            full.backward_flops(),
            2 * full.forward_flops() - stem.forward_flops * full.batch as u64
        );
        // The classifier alone keeps only its input.
        let last = cost(Method::Last, 0);
        assert_eq!(last.activation_bytes(), 4.0 * 8.0 * 1280.0);
        assert_eq!(last.backward_flops(), 2 * 8 * 1280 * 10);
        // Bias-only keeps no convolution input, but Hard-Swish inputs and masks all the way down.
        let bias = cost(Method::Bias, 0);
        assert!(
            bias.layers
                .iter()
                .filter(|l| l.part == Part::ExpandConv)
                .all(|l| l.kept_elements == 0)
        );
        assert!(bias.activation_bytes() > cost(Method::Mobiletl, 5).activation_bytes());
        let tl_params = cost(Method::Mobiletl, 5);
        assert!(tl_params.trainable_params() < full.trainable_params());
        assert!(tl_params.parameter_bytes() < full.parameter_bytes());
        assert!(network_cost(&spec, 10, Method::Mobiletl, 16, 224, 8).is_err());
        assert!(network_cost(&spec, 10, Method::Full, 0, 224, 0).is_err());
    }
}
