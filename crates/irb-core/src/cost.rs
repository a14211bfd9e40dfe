//! Parameter and multiply-add counting, per layer, for any network built from these
//! layers: each counted layer reports its parameters and multiply-adds for a given input
//! size, so a model's table is the concatenation of its layers' rows.
//!
//! Conventions (those of the MobileNet and MOAT papers and of `ptflops` / `fvcore`):
//! multiply-adds of convolutions and dense layers (bias adds not counted); BatchNorm,
//! activations and pooling count parameters but no multiply-adds; the squeeze-excitation
//! gate counts its two 1x1 convolutions on the pooled vector and the channel-wise product.

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use serde::Serialize;

use crate::{BatchNorm, InvertedResidual, ShortcutPath, SqueezeExcite};

/// One row of a cost table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerCost {
    /// Path of the layer in the model (e.g. `blocks.3.expand_conv`).
    pub name: String,
    /// Layer type.
    pub kind: &'static str,
    /// Trainable parameters.
    pub params: usize,
    /// Multiply-adds for one input sample.
    pub macs: u64,
    /// Output shape `[channels, height, width]`.
    pub output: [usize; 3],
}

/// Rows of a cost table with totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostReport {
    /// One row per counted layer.
    pub layers: Vec<LayerCost>,
}

impl CostReport {
    /// Total parameters.
    pub fn params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Total multiply-adds per sample.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }

    /// BatchNorm running statistics (mean and variance) of the counted layers: buffers,
    /// not parameters, in PyTorch and TF, but counted by burn's `Module::num_params`, so
    /// `num_params() == params() + batch_norm_buffers()` for a model built from these
    /// layers.
    pub fn batch_norm_buffers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.kind == "batch norm")
            .map(|l| l.params)
            .sum()
    }

    /// Rows whose name starts with `prefix`.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a LayerCost> + 'a {
        self.layers
            .iter()
            .filter(move |l| l.name.starts_with(prefix))
    }

    /// Appends a row (for layers of other crates built on these counts).
    pub fn push(
        &mut self,
        name: String,
        kind: &'static str,
        params: usize,
        macs: u64,
        output: [usize; 3],
    ) {
        self.layers.push(LayerCost {
            name,
            kind,
            params,
            macs,
            output,
        });
    }
}

/// `prefix.name`, or `name` at the top level: the row naming rule of the tables.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Layers whose cost depends on the input size.
pub trait Countable {
    /// Appends this layer's rows (names under `prefix`) for an input of shape
    /// `[channels, height, width]` and returns the output shape.
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3];
}

/// Output size of `conv` along one axis.
fn conv_out(conv: &Conv2d, size: usize, axis: usize) -> usize {
    let (k, s, d) = (
        conv.kernel_size[axis],
        conv.stride[axis],
        conv.dilation[axis],
    );
    let span = d * (k - 1) + 1;
    match &conv.padding {
        PaddingConfig2d::Same => size.div_ceil(s),
        PaddingConfig2d::Valid => (size - span) / s + 1,
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            let pad = if axis == 0 {
                top + bottom
            } else {
                left + right
            };
            (size + pad - span) / s + 1
        }
    }
}

impl Countable for Conv2d {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        // `lazy_shape` keeps a freshly built model's parameters unallocated, so counting
        // MOAT-4 (483M parameters) costs nothing.
        let [out_c, in_per_group, kh, kw] = self.weight.lazy_shape().dims::<4>();
        let out = [
            out_c,
            conv_out(self, input[1], 0),
            conv_out(self, input[2], 1),
        ];
        let params = out_c * in_per_group * kh * kw + self.bias.as_ref().map_or(0, |_| out_c);
        let macs = (out[0] * out[1] * out[2] * in_per_group * kh * kw) as u64;
        let kind = if self.groups > 1 && self.groups == out_c {
            "depthwise conv"
        } else {
            "conv"
        };
        report.push(prefix.to_string(), kind, params, macs, out);
        out
    }
}

impl Countable for BatchNorm {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        report.push(
            prefix.to_string(),
            "batch norm",
            2 * self.num_features(),
            0,
            input,
        );
        input
    }
}

impl Countable for Linear {
    /// `input` is `[features, 1, 1]` (a pooled vector).
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let [d_in, d_out] = self.weight.lazy_shape().dims::<2>();
        debug_assert_eq!(input[0], d_in, "linear layer {prefix} fed {input:?}");
        let params = d_in * d_out + self.bias.as_ref().map_or(0, |_| d_out);
        report.push(
            prefix.to_string(),
            "linear",
            params,
            (d_in * d_out) as u64,
            [d_out, 1, 1],
        );
        [d_out, 1, 1]
    }
}

impl Countable for SqueezeExcite {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        let pooled = [input[0], 1, 1];
        let mid = self.reduce.count(&join(prefix, "reduce"), pooled, report);
        self.expand.count(&join(prefix, "expand"), mid, report);
        // The channel-wise rescaling of the feature map.
        report.push(
            join(prefix, "scale"),
            "se scale",
            0,
            (input[0] * input[1] * input[2]) as u64,
            input,
        );
        input
    }
}

impl Countable for InvertedResidual {
    fn count(&self, prefix: &str, input: [usize; 3], report: &mut CostReport) -> [usize; 3] {
        if let Some(norm) = &self.pre_norm {
            norm.count(&join(prefix, "pre_norm"), input, report);
        }
        let mut shape = input;
        if let (Some(conv), Some(norm)) = (&self.expand_conv, &self.expand_norm) {
            shape = conv.count(&join(prefix, "expand_conv"), shape, report);
            norm.count(&join(prefix, "expand_norm"), shape, report);
        }
        shape = self
            .depthwise_conv
            .count(&join(prefix, "depthwise_conv"), shape, report);
        self.depthwise_norm
            .count(&join(prefix, "depthwise_norm"), shape, report);
        if let Some(se) = &self.squeeze_excite {
            se.count(&join(prefix, "squeeze_excite"), shape, report);
        }
        shape = self
            .project_conv
            .count(&join(prefix, "project_conv"), shape, report);
        if let Some(norm) = &self.project_norm {
            norm.count(&join(prefix, "project_norm"), shape, report);
        }
        if let ShortcutPath::Pooled { .. } = self.shortcut_path()
            && let Some(conv) = &self.shortcut_conv
        {
            let pooled = [input[0], shape[1], shape[2]];
            conv.count(&join(prefix, "shortcut_conv"), pooled, report);
        }
        shape
    }
}
