//! The MOAT network: stem, two MBConv stages, two MOAT stages, classification head.
//!
//! ```text
//! stem:  conv3x3/2 (+bias) -> BN -> GELU -> conv3x3 (+bias)
//! MBConv (stages 1-2): shortcut(x) + shrink(SE(GELU(BN(dw(GELU(BN(expand(BN(x)))))))))
//! MOAT  (stages 3-4): x = MBConv without SE; x = x + Attn(LN(x))   (no MLP)
//! head:  global mean -> LN -> dense
//! ```
//! The first block of every stage has stride 2 (in its depthwise conv); all convolutions
//! use TF "same" padding, BatchNorm eps 1e-3, LayerNorm eps 1e-5, exact (erf) GELU, as the
//! official deeplab2 code.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use irb_core::cost::{CostReport, Countable, join};
use irb_core::{
    Activation, BatchNorm, BatchNormConfig, BlockSqueezeExcite, ConvPadding, DropPath,
    InvertedResidual, InvertedResidualConfig, NormPlacement, SeFlavour, ShortcutKind, ShortcutPath,
};

use crate::attention::Attention;
use crate::config::{AttentionWindow, MoatConfig};

/// The stem: two 3x3 convolutions with a BatchNorm and GELU between them.
#[derive(Module, Debug)]
pub struct Stem {
    /// `3 -> stem[0]`, stride 2, with bias.
    pub conv_0: Conv2d,
    /// BatchNorm after the first convolution.
    pub norm_0: BatchNorm,
    /// `stem[0] -> stem[1]`, stride 1, with bias, no norm after it.
    pub conv_1: Conv2d,
}

impl Stem {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv_0.forward(x);
        let x = gelu(self.norm_0.forward(x));
        self.conv_1.forward(x)
    }
}

/// A MOAT block: an SE-less MBConv followed by `x + Attn(LN(x))`.
#[derive(Module, Debug)]
pub struct MoatBlock {
    /// The mobile convolution (pre-norm MBConv without squeeze-excitation).
    pub mbconv: InvertedResidual,
    /// LayerNorm before the attention.
    pub attention_norm: LayerNorm,
    /// Self-attention.
    pub attention: Attention,
    /// Stochastic depth on the attention branch (same survival as the MBConv's).
    pub drop_path: DropPath,
    #[module(skip)]
    window: Option<[usize; 2]>,
}

impl MoatBlock {
    /// The attention window, `None` for global attention.
    pub fn window(&self) -> Option<[usize; 2]> {
        self.window
    }

    fn attention_grid(&self, h: usize, w: usize) -> [usize; 2] {
        self.window.unwrap_or([h, w])
    }

    /// Forward pass on `[batch, channels, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.mbconv.forward(x);
        let [b, c, h, w] = x.dims();
        let [wh, ww] = self.attention_grid(h, w);
        assert!(
            h % wh == 0 && w % ww == 0,
            "MOAT attention window {wh}x{ww} does not tile the {h}x{w} feature map"
        );
        let (nh, nw) = (h / wh, w / ww);
        // NCHW -> NHWC for the channel LayerNorm, then non-overlapping windows.
        let tokens = self.attention_norm.forward(x.clone().permute([0, 2, 3, 1]));
        let windows = tokens
            .reshape([b, nh, wh, nw, ww, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b * nh * nw, wh * ww, c]);
        let out = self.attention.forward(windows, [wh, ww]);
        let out = out
            .reshape([b, nh, nw, wh, ww, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, h, w]);
        x + self.drop_path.forward(out)
    }
}

/// A block of a stage.
// A network holds a few dozen blocks; the size difference of the variants is not worth
// an indirection on every access.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum StageBlock {
    /// MBConv with squeeze-excitation (stages 1, 2).
    MbConv(InvertedResidual),
    /// MOAT block (stages 3, 4).
    Moat(MoatBlock),
}

impl StageBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            StageBlock::MbConv(b) => b.forward(x),
            StageBlock::Moat(b) => b.forward(x),
        }
    }

    /// The block's inverted residual (the MBConv part of a MOAT block).
    pub fn mbconv(&self) -> &InvertedResidual {
        match self {
            StageBlock::MbConv(b) => b,
            StageBlock::Moat(b) => &b.mbconv,
        }
    }
}

/// One stage: blocks at one resolution (the first one downsamples).
#[derive(Module, Debug)]
pub struct Stage {
    /// The blocks in order.
    pub blocks: Vec<StageBlock>,
}

/// Classification head: global mean, LayerNorm, dense layer.
#[derive(Module, Debug)]
pub struct Head {
    /// LayerNorm on the pooled features.
    pub final_layer_norm: LayerNorm,
    /// Dense layer to the classes (a 1x1 conv in TF: kernel `[1, 1, C, classes]`).
    pub logits_head: Linear,
}

/// Feature maps of the four stages and the stem (deeplab2's `endpoints`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Stem output (stride 2), before the activation.
    pub stage1: Tensor<4>,
    /// Stage outputs, strides 4, 8, 16, 32, before the activation.
    pub stages: [Tensor<4>; 4],
}

impl Endpoints {
    /// `res1..res5`: GELU of the stem and stage outputs, for downstream heads.
    pub fn res(&self, level: usize) -> Tensor<4> {
        match level {
            1 => gelu(self.stage1.clone()),
            2..=5 => gelu(self.stages[level - 2].clone()),
            _ => panic!("MOAT endpoints are res1..res5, got res{level}"),
        }
    }
}

/// A MOAT network.
#[derive(Module, Debug)]
pub struct Moat {
    /// The stem.
    pub stem: Stem,
    /// Four stages.
    pub stages: Vec<Stage>,
    /// Classification head (absent for a backbone).
    pub head: Option<Head>,
}

fn tf_conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(ConvPadding::TfSame.to_burn(k, 1))
        .with_bias(true)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
}

impl MoatConfig {
    fn mbconv(
        &self,
        c_in: usize,
        c_out: usize,
        stride: usize,
        se: bool,
        survival: f64,
    ) -> InvertedResidualConfig {
        InvertedResidualConfig::new(c_in, self.expansion_rate * c_out, c_out)
            .with_stride(stride)
            .with_activation(Activation::Gelu)
            .with_squeeze_excite(se.then(|| {
                // max(1, int(hidden_size * se_ratio)) in moat_blocks.py.
                let width = ((c_out as f64 * self.se_ratio) as usize).max(1);
                BlockSqueezeExcite::new(width, SeFlavour::EfficientNet)
            }))
            .with_norm_placement(NormPlacement::PreNorm)
            .with_shortcut(ShortcutKind::Pooled {
                pool_size: self.pool_size,
            })
            .with_norm_eps(self.batch_norm_eps)
            .with_norm_momentum(self.batch_norm_momentum)
            .with_padding(ConvPadding::TfSame)
            .with_survival_prob(survival)
    }

    /// Builds the network on `device`.
    pub fn init(&self, device: &Device) -> Moat {
        let bn = |c| {
            BatchNormConfig::new(c)
                .with_epsilon(self.batch_norm_eps)
                .with_momentum(self.batch_norm_momentum)
                .init(device)
        };
        let ln = |c| {
            LayerNormConfig::new(c)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let stem = Stem {
            conv_0: tf_conv(3, self.stem_channels[0], 3, 2, device),
            norm_0: bn(self.stem_channels[0]),
            conv_1: tf_conv(self.stem_channels[0], self.stem_channels[1], 3, 1, device),
        };
        let mut c_in = self.stem_channels[1];
        let mut block_id = 0;
        let mut stages = Vec::with_capacity(4);
        for (stage, (&depth, &c_out)) in self.depths.iter().zip(&self.channels).enumerate() {
            let mut blocks = Vec::with_capacity(depth);
            for local in 0..depth {
                let stride = if local == 0 { 2 } else { 1 };
                let survival = self.block_survival(block_id);
                let block = if stage < 2 {
                    StageBlock::MbConv(
                        self.mbconv(c_in, c_out, stride, true, survival)
                            .init(device),
                    )
                } else {
                    let last = local + 1 == depth;
                    let window = match self.attention[stage - 2] {
                        AttentionWindow::Window(_)
                            if last && self.global_attention_at_end_of_stage =>
                        {
                            None
                        }
                        AttentionWindow::Window(w) => Some(w),
                        AttentionWindow::Global => None,
                    };
                    StageBlock::Moat(MoatBlock {
                        mbconv: self
                            .mbconv(c_in, c_out, stride, false, survival)
                            .init(device),
                        attention_norm: ln(c_out),
                        attention: Attention::new(
                            c_out,
                            self.heads(stage - 2),
                            self.head_size,
                            self.position_embedding_size.map(|p| p[stage - 2]),
                            device,
                        ),
                        drop_path: DropPath::new(survival),
                        window,
                    })
                };
                blocks.push(block);
                c_in = c_out;
                block_id += 1;
            }
            stages.push(Stage { blocks });
        }
        let head = self.num_classes.map(|classes| Head {
            final_layer_norm: ln(c_in),
            logits_head: LinearConfig::new(c_in, classes)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
        });
        Moat { stem, stages, head }
    }
}

impl Moat {
    /// Stem and stage outputs.
    pub fn endpoints(&self, x: Tensor<4>) -> Endpoints {
        let stage1 = self.stem.forward(x);
        let mut h = stage1.clone();
        let mut outs = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in &stage.blocks {
                h = block.forward(h);
            }
            outs.push(h.clone());
        }
        let stages: [Tensor<4>; 4] = outs
            .try_into()
            .unwrap_or_else(|_| panic!("a MOAT network has four stages"));
        Endpoints { stage1, stages }
    }

    /// Pre-pool features of the last stage, `[batch, C, H/32, W/32]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.stem.forward(x);
        for stage in &self.stages {
            for block in &stage.blocks {
                h = block.forward(h);
            }
        }
        h
    }

    /// Logits `[batch, classes]` for NCHW input normalised as the variant expects.
    ///
    /// # Panics
    /// When the model was built without a head.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let head = self
            .head
            .as_ref()
            .expect("this MOAT was built without a classification head");
        let h = self.features(x);
        let [b, c, _, _] = h.dims();
        let pooled = h.mean_dim(3).mean_dim(2).reshape([b, c]);
        head.logits_head
            .forward(head.final_layer_norm.forward(pooled))
    }

    /// Syncs the running statistics of every BatchNorm (see
    /// [`BatchNorm::sync_running_stats`]).
    pub fn sync_running_stats(&self) {
        self.stem.norm_0.sync_running_stats();
        for stage in &self.stages {
            for block in &stage.blocks {
                block.mbconv().sync_running_stats();
            }
        }
    }

    /// Parameters and multiply-adds for an input of `height x width`.
    pub fn cost(&self, height: usize, width: usize) -> CostReport {
        let mut report = CostReport::default();
        self.count("", [3, height, width], &mut report);
        report
    }
}

/// Element-wise operations of a TF-profiler count, as multiply-add equivalents (TF's
/// `float_operation` counts one FLOP per element for Mul / AddV2 / BiasAdd / RealDiv /
/// SquaredDifference, the input size for Mean, window x output for AvgPool and 5 per
/// element for Softmax; the official numbers are that total / 2). Kept in rows of kind
/// [`ELEMENTWISE`] so that [`multiply_adds`] can leave them out.
fn push_elementwise(report: &mut CostReport, name: String, flops: u64, output: [usize; 3]) {
    report.push(name, ELEMENTWISE, 0, flops / 2, output);
}

/// Row kind of element-wise operations.
pub const ELEMENTWISE: &str = "element-wise";

/// Multiply-adds of convolutions, dense layers, the attention products and the SE
/// rescaling: the report's total without [`ELEMENTWISE`] rows.
pub fn multiply_adds(report: &CostReport) -> u64 {
    report
        .layers
        .iter()
        .filter(|l| l.kind != ELEMENTWISE)
        .map(|l| l.macs)
        .sum()
}

/// Per-element FLOPs of TF's inference-mode ops: non-fused BatchNorm `x * a + b`, exact
/// GELU `0.5 * x * (1 + erf(x / sqrt 2))` (erf is not counted), LayerNorm (two means,
/// a squared difference, `x * a + b`).
const BN_FLOPS: u64 = 2;
const GELU_FLOPS: u64 = 4;
const LN_FLOPS: u64 = 5;
const SOFTMAX_FLOPS: u64 = 5;

fn elems(s: [usize; 3]) -> u64 {
    (s[0] * s[1] * s[2]) as u64
}

/// The element-wise work of a pre-norm MBConv from `input` to `output`.
fn mbconv_elementwise(
    block: &InvertedResidual,
    prefix: &str,
    input: [usize; 3],
    output: [usize; 3],
    report: &mut CostReport,
) {
    let inner = block.depthwise_norm.num_features();
    let expanded = elems([inner, input[1], input[2]]);
    let strided = elems([inner, output[1], output[2]]);
    let mut flops = BN_FLOPS * elems(input) // pre-norm
        + (BN_FLOPS + GELU_FLOPS) * (expanded + strided) // expand and depthwise norm + act
        + 2 * elems(output); // shrink bias, residual add
    if block.squeeze_excite.is_some() {
        flops += strided; // the squeeze mean
    }
    if let ShortcutPath::Pooled { pool_size } = block.shortcut_path() {
        if let Some(p) = pool_size {
            flops += (p * p) as u64 * elems([input[0], output[1], output[2]]);
        }
        if block.shortcut_conv.is_some() {
            flops += elems(output); // shortcut bias
        }
    }
    push_elementwise(report, join(prefix, "elementwise"), flops, output);
}

/// LayerNorm row: its parameters, no multiply-adds (burn's type, so a function rather
/// than a `Countable` impl).
fn count_layer_norm(norm: &LayerNorm, prefix: &str, input: [usize; 3], report: &mut CostReport) {
    let d = norm.gamma.lazy_shape()[0];
    let params = d + norm.beta.as_ref().map_or(0, |_| d);
    report.push(prefix.to_string(), "layer norm", params, 0, input);
}

impl Countable for MoatBlock {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let out = self.mbconv.count(&join(prefix, "mbconv"), input, report);
        mbconv_elementwise(&self.mbconv, &join(prefix, "mbconv"), input, out, report);
        let [c, h, w] = out;
        count_layer_norm(
            &self.attention_norm,
            &join(prefix, "attention_norm"),
            out,
            report,
        );
        let [wh, ww] = self.attention_grid(h, w);
        let windows = (h / wh * (w / ww)) as u64;
        let t = (wh * ww) as u64;
        let a = &self.attention;
        let inner = (a.heads() * a.head_size()) as u64;
        let linear = |l: &Linear| {
            let [i, o] = l.weight.lazy_shape().dims::<2>();
            (i * o + l.bias.as_ref().map_or(0, |_| o), (i * o) as u64)
        };
        let base = join(prefix, "attention");
        for (name, l) in [("q", &a.q), ("k", &a.k), ("v", &a.v), ("o", &a.o)] {
            let (params, macs) = linear(l);
            report.push(join(&base, name), "dense", params, macs * t * windows, out);
        }
        // q k^T and probs v: heads x T x T x head_size each, per window.
        report.push(
            join(&base, "logits"),
            "attention",
            0,
            t * t * inner * windows,
            out,
        );
        report.push(
            join(&base, "mix"),
            "attention",
            0,
            t * t * inner * windows,
            out,
        );
        let tokens = elems(out);
        let logits = t * t * a.heads() as u64 * windows;
        let bias = u64::from(a.relative_position_embedding.is_some());
        // LN, q/k/v/o biases, the q scale, residual add; bias add and softmax on logits.
        let flops = LN_FLOPS * tokens
            + 4 * tokens * inner / c as u64
            + 2 * tokens
            + (bias + SOFTMAX_FLOPS) * logits;
        push_elementwise(report, join(&base, "elementwise"), flops, out);
        if let Some(table) = &a.relative_position_embedding {
            let [n, th, tw] = table.lazy_shape().dims::<3>();
            report.push(
                join(&base, "relative_position_embedding"),
                "position bias",
                n * th * tw,
                0,
                out,
            );
        }
        out
    }
}

impl Countable for Moat {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let stem = join(prefix, "stem");
        let mut shape = self
            .stem
            .conv_0
            .count(&join(&stem, "conv_0"), input, report);
        self.stem
            .norm_0
            .count(&join(&stem, "norm_0"), shape, report);
        let first = shape;
        shape = self
            .stem
            .conv_1
            .count(&join(&stem, "conv_1"), shape, report);
        // Two biases, BN and GELU.
        let flops = (1 + BN_FLOPS + GELU_FLOPS) * elems(first) + elems(shape);
        push_elementwise(report, join(&stem, "elementwise"), flops, shape);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.blocks.iter().enumerate() {
                let name = join(prefix, &format!("block_{s:02}_{b:02}"));
                shape = match block {
                    StageBlock::MbConv(m) => {
                        let out = m.count(&name, shape, report);
                        mbconv_elementwise(m, &name, shape, out, report);
                        out
                    }
                    StageBlock::Moat(m) => m.count(&name, shape, report),
                };
            }
        }
        if let Some(head) = &self.head {
            // The global mean.
            push_elementwise(report, join(prefix, "pool"), elems(shape), [shape[0], 1, 1]);
            let pooled = [shape[0], 1, 1];
            count_layer_norm(
                &head.final_layer_norm,
                &join(prefix, "final_layer_norm"),
                pooled,
                report,
            );
            shape = head
                .logits_head
                .count(&join(prefix, "logits_head"), pooled, report);
        }
        shape
    }
}
