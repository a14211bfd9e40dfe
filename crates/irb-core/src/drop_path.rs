//! Stochastic depth ("drop path") on a residual branch.

use burn::module::{Flag, Module, Param};
use burn::tensor::{Distribution, Tensor};

/// Drops a whole residual branch per sample with probability `1 - survival` during
/// training and rescales the kept samples by `1 / survival` (Huang et al. 2016, as in
/// timm's `DropPath` and the TF `drop_connect` of EfficientNet / MOAT).
#[derive(Module, Debug)]
pub struct DropPath {
    /// Probability of keeping the branch of a sample.
    pub survival: f64,
    /// Whether training behaviour is enabled for this layer (cleared by `freeze`).
    pub training: Param<Flag>,
}

impl DropPath {
    /// A drop path keeping each sample's branch with probability `survival` (in `(0, 1]`).
    pub fn new(survival: f64) -> Self {
        assert!(
            survival > 0.0 && survival <= 1.0,
            "drop path survival probability must be in (0, 1], got {survival}"
        );
        Self {
            survival,
            training: Param::from_bool(true),
        }
    }

    /// Applies the drop path to a residual branch `x` of shape `[batch, ...]`. Identity on
    /// a non-autodiff device, when frozen, or when `survival == 1`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.survival >= 1.0 || !self.training.is_enabled() || !x.device().is_autodiff() {
            return x;
        }
        let mut mask_shape = [1usize; D];
        mask_shape[0] = x.dims()[0];
        let keep = Tensor::<D>::random(
            mask_shape,
            Distribution::Bernoulli(self.survival),
            &x.device(),
        );
        x * keep.div_scalar(self.survival)
    }
}
