//! The few layer types the models are made of, built from [`Weights`] under their
//! diffusers names. Convolutions are this crate's own small module rather than
//! `burn::nn::Conv2d` because RAU-Net runs a pretrained convolution with another stride,
//! padding and dilation for some steps ([`Conv2d::forward_with`]).

use burn::module::{Module, Param};
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use crate::weights::{Init, Weights};

/// A 2-D convolution with a square kernel.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride.
    pub stride: usize,
    /// Zero padding `(before, after)` of height and width.
    pub padding: [(usize, usize); 2],
}

impl Conv2d {
    /// Reads `{prefix}.weight` `[out, in, k, k]` and `{prefix}.bias`.
    pub(crate) fn load(
        w: &mut Weights,
        prefix: &str,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let [c_in, c_out] = channels;
        let std = 1.0 / ((c_in * kernel * kernel) as f64).sqrt();
        Conv2d {
            weight: Param::from_tensor(w.tensor(
                &format!("{prefix}.weight"),
                [c_out, c_in, kernel, kernel],
                Init::Normal(std),
            )),
            bias: Some(Param::from_tensor(w.tensor(
                &format!("{prefix}.bias"),
                [c_out],
                Init::Zeros,
            ))),
            stride,
            padding: [(padding, padding); 2],
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The convolution as configured.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.run(
            x,
            ConvOptions {
                stride: [self.stride; 2],
                padding: self.padding,
                dilation: [1, 1],
                groups: 1,
            },
        )
    }

    fn run(&self, x: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            options,
        )
    }

    /// The same weights run with another stride, padding and dilation.
    pub fn forward_with(
        &self,
        x: Tensor<4>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Tensor<4> {
        self.run(
            x,
            ConvOptions::new(
                [stride, stride],
                [padding, padding],
                [dilation, dilation],
                1,
            ),
        )
    }
}

/// `{prefix}.weight` `[out, in]` (PyTorch's layout, transposed into burn's `[in, out]`)
/// and, with `bias`, `{prefix}.bias`.
pub(crate) fn linear(
    w: &mut Weights,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> Linear {
    let weight: Tensor<2> = w.tensor(
        &format!("{prefix}.weight"),
        [d_out, d_in],
        Init::Normal(1.0 / (d_in as f64).sqrt()),
    );
    Linear {
        weight: Param::from_tensor(weight.transpose()),
        bias: bias
            .then(|| Param::from_tensor(w.tensor(&format!("{prefix}.bias"), [d_out], Init::Zeros))),
    }
}

/// A group norm with affine `{prefix}.weight` / `{prefix}.bias`.
pub(crate) fn group_norm(
    w: &mut Weights,
    prefix: &str,
    groups: usize,
    channels: usize,
    epsilon: f64,
) -> GroupNorm {
    GroupNorm {
        gamma: Some(Param::from_tensor(w.tensor(
            &format!("{prefix}.weight"),
            [channels],
            Init::Ones,
        ))),
        beta: Some(Param::from_tensor(w.tensor(
            &format!("{prefix}.bias"),
            [channels],
            Init::Zeros,
        ))),
        num_groups: groups,
        num_channels: channels,
        epsilon,
        affine: true,
    }
}

/// A layer norm with `{prefix}.weight` / `{prefix}.bias`.
pub(crate) fn layer_norm(w: &mut Weights, prefix: &str, dim: usize, epsilon: f64) -> LayerNorm {
    // `epsilon` is private to burn's LayerNorm: build through its config, then put the
    // loaded parameters in.
    let mut norm = LayerNormConfig::new(dim)
        .with_epsilon(epsilon)
        .init(w.device());
    norm.gamma = Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [dim], Init::Ones));
    norm.beta = Some(Param::from_tensor(w.tensor(
        &format!("{prefix}.bias"),
        [dim],
        Init::Zeros,
    )));
    norm
}
