//! Extension points that let a training method change how a block's normalisations and
//! activations behave, without the block knowing about the method.
//!
//! MobileTL, for example, replaces the two inner BatchNorms by a shift-only affine map
//! with frozen statistics and the activations by ops whose backward keeps a 1-bit mask.
//! It does so by implementing [`BlockHooks`] and calling
//! [`InvertedResidual::forward_with`](crate::InvertedResidual::forward_with).

use crate::BatchNorm;
use burn::tensor::Tensor;

use crate::Activation;

/// Which normalisation of a block a hook is asked to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NormSite {
    /// The BatchNorm on the block input (pre-norm blocks such as MOAT's MBConv).
    Pre,
    /// The BatchNorm after the 1x1 expansion convolution.
    Expand,
    /// The BatchNorm after the depthwise convolution.
    Depthwise,
    /// The BatchNorm after the 1x1 projection convolution (post-norm blocks).
    Project,
}

/// Which activation of a block a hook is asked to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationSite {
    /// After the expansion convolution and its norm.
    Expand,
    /// After the depthwise convolution and its norm.
    Depthwise,
}

/// Overridable forward behaviour of a block's norms and activations.
///
/// The default methods are the standard layers; a method overrides only what it changes.
pub trait BlockHooks {
    /// Runs the normalisation at `site`.
    fn batch_norm(&self, site: NormSite, norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
        let _ = site;
        norm.forward(x)
    }

    /// Runs the activation at `site`.
    fn activation(&self, site: ActivationSite, activation: Activation, x: Tensor<4>) -> Tensor<4> {
        let _ = site;
        activation.forward(x)
    }
}

/// The standard layers, exactly as trained by PyTorch / TensorFlow.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardHooks;

impl BlockHooks for StandardHooks {}
