//! Which parameters a fine-tuning method trains, and MobileTL's block hooks.
//!
//! [`prepare`] freezes a pretrained [`MobileNet`] for a method; [`forward`] runs it with
//! the method's layers. Frozen layers are `Module::freeze`d: their parameters stop
//! requiring gradients and their BatchNorms use the running statistics, so the frozen
//! part of the network builds no autodiff graph and backpropagation stops at the first
//! trainable block.
//!
//! MobileTL in each of the top K blocks:
//! - convolution weights train as usual;
//! - the BatchNorms after the expansion and depthwise convolutions train only the shift:
//!   scale and statistics are frozen, so the layer is the affine map `a * x + b` with a
//!   constant `a`, whose backward keeps nothing of `x` ([`shift_only_batch_norm`]);
//! - the BatchNorm after the projection trains scale and shift and updates its statistics;
//! - activations keep a 1-bit mask ([`MaskedActivation`]).

use burn::module::Module;
use burn::tensor::Tensor;
use irb_core::{Activation, ActivationSite, BatchNorm, BlockHooks, InvertedResidual, NormSite};

use crate::method::MaskedActivation;
use crate::mobilenet::MobileNet;

/// A fine-tuning method.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// MobileTL on the top K blocks (plus the final convolution and the classifier).
    Mobiletl,
    /// Vanilla FT-K: everything in the top K blocks (and above) trainable, exact backward.
    Vanilla,
    /// Every parameter trainable, BatchNorm statistics updated.
    Full,
    /// The classifier only.
    Last,
    /// Biases and BatchNorm shifts only, plus the classifier (BitFit / TinyTL-B), with
    /// frozen BatchNorm statistics.
    Bias,
}

impl Method {
    /// Whether the method fine-tunes a number of top blocks (`--blocks`).
    pub fn uses_blocks(self) -> bool {
        matches!(self, Method::Mobiletl | Method::Vanilla)
    }
}

/// Freezes `model` for `method`; `blocks` is K of FT-K (ignored by the other methods).
///
/// The stem and the blocks below the top K are frozen; the final 1x1 convolution,
/// MobileNetV3's pre-classifier layer and the classifier stay trainable. Errors name K
/// and the number of blocks when K is out of range.
pub fn prepare(model: MobileNet, method: Method, blocks: usize) -> Result<MobileNet, String> {
    let n = model.blocks.len();
    if method.uses_blocks() && !(1..=n).contains(&blocks) {
        return Err(format!(
            "--blocks {blocks} is out of range: the network has {n} inverted residual blocks"
        ));
    }
    let mut model = model;
    match method {
        Method::Full => {}
        Method::Last => {
            model = model.freeze();
            model.classifier = model.classifier.unfreeze();
        }
        Method::Bias => {
            model = model.freeze();
            model.classifier = model.classifier.unfreeze();
            model = unfreeze_biases(model);
        }
        Method::Vanilla | Method::Mobiletl => {
            let first = n - blocks;
            model.stem = model.stem.freeze();
            model.blocks = model
                .blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    if i < first {
                        b.freeze()
                    } else if method == Method::Mobiletl {
                        freeze_inner_norm_scales(b)
                    } else {
                        b
                    }
                })
                .collect();
        }
    }
    Ok(model)
}

/// Turns gradients back on for every bias and BatchNorm shift of a frozen model.
fn unfreeze_biases(mut model: MobileNet) -> MobileNet {
    fn norm(n: &mut BatchNorm) {
        n.beta = n.beta.clone().set_require_grad(true);
    }
    fn conv(c: &mut burn::nn::conv::Conv2d) {
        if let Some(b) = c.bias.take() {
            c.bias = Some(b.set_require_grad(true));
        }
    }
    norm(&mut model.stem.norm);
    norm(&mut model.last.norm);
    for b in &mut model.blocks {
        [&mut b.expand_norm, &mut b.project_norm, &mut b.pre_norm]
            .into_iter()
            .flatten()
            .for_each(norm);
        norm(&mut b.depthwise_norm);
        if let Some(se) = b.squeeze_excite.as_mut() {
            conv(&mut se.reduce);
            conv(&mut se.expand);
        }
    }
    if let Some(head) = model.head.as_mut()
        && let Some(bias) = head.bias.take()
    {
        head.bias = Some(bias.set_require_grad(true));
    }
    model
}

/// MobileTL's inner BatchNorms: the scale stops requiring gradients (the shift keeps
/// them); the statistics are never updated because [`MobileTlHooks`] does not run them in
/// training mode.
fn freeze_inner_norm_scales(mut block: InvertedResidual) -> InvertedResidual {
    fn scale(n: &mut BatchNorm) {
        n.gamma = n.gamma.clone().set_require_grad(false);
    }
    if let Some(n) = block.expand_norm.as_mut() {
        scale(n);
    }
    scale(&mut block.depthwise_norm);
    block
}

/// A BatchNorm with frozen scale and statistics and a trainable shift:
/// `y = a * x + (beta - a * mean)` with the constant `a = gamma / sqrt(var + eps)`.
///
/// The backward is `dx = a * dy` and `dbeta = sum(dy)`; no input is kept.
pub fn shift_only_batch_norm(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    // The inference affine map is exactly this layer: its shift `beta - a * mean` carries
    // the gradient to `beta`; the scale is a constant.
    let (scale, shift) = norm.inference_affine();
    let scale = scale.detach();
    let c = scale.dims()[0];
    let device = x.device();
    x * scale.reshape([1, c, 1, 1]).to_device(&device)
        + shift.reshape([1, c, 1, 1]).to_device(&device)
}

/// The activation MobileTL uses in place of `activation` (`None`: kept as it is).
pub fn masked_counterpart(activation: Activation) -> Option<MaskedActivation> {
    match activation {
        Activation::Relu => Some(MaskedActivation::Relu),
        Activation::Relu6 => Some(MaskedActivation::Relu6),
        Activation::HardSwish => Some(MaskedActivation::HardSwishStep),
        _ => None,
    }
}

/// MobileTL's norms and activations inside the inverted residual blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct MobileTlHooks;

impl BlockHooks for MobileTlHooks {
    fn batch_norm(&self, site: NormSite, norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
        match site {
            NormSite::Expand | NormSite::Depthwise => shift_only_batch_norm(norm, x),
            NormSite::Pre | NormSite::Project => norm.forward(x),
        }
    }

    fn activation(&self, _: ActivationSite, activation: Activation, x: Tensor<4>) -> Tensor<4> {
        match masked_counterpart(activation) {
            Some(masked) => masked.forward(x),
            None => activation.forward(x),
        }
    }
}

/// Logits of `model` under `method`'s layers (the model prepared by [`prepare`]).
pub fn forward(model: &MobileNet, x: Tensor<4>, method: Method) -> Tensor<2> {
    match method {
        Method::Mobiletl => model.forward_with(x, &MobileTlHooks),
        _ => model.forward(x),
    }
}
