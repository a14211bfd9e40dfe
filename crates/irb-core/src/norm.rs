//! Batch normalisation with the running-statistics rule of the framework that trained the
//! weights.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::{Device, Tensor};

/// Configuration of a [`BatchNorm`].
#[derive(Config, Debug)]
pub struct BatchNormConfig {
    /// Number of channels (axis 1).
    pub num_features: usize,
    /// Added to the variance: 1e-5 in PyTorch, 1e-3 in Keras.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the new batch statistic in the running average: PyTorch's `momentum`
    /// (0.1), or `1 - momentum` for Keras (0.99 -> 0.01).
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Whether the running variance is updated with the unbiased (Bessel-corrected) batch
    /// variance, as PyTorch and Keras do. burn's own `BatchNorm` uses the biased one.
    #[config(default = true)]
    pub unbiased_running_var: bool,
}

/// Batch normalisation over `[batch, channels, ...]` tensors.
///
/// In training (autodiff device and `training` enabled) it normalises with the batch
/// statistics and updates the running ones; otherwise it uses the running statistics.
#[derive(Module, Debug)]
pub struct BatchNorm {
    /// Scale (gamma).
    pub gamma: Param<Tensor<1>>,
    /// Shift (beta).
    pub beta: Param<Tensor<1>>,
    /// Running mean.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running variance.
    pub running_var: RunningState<Tensor<1>>,
    /// Whether training behaviour is enabled for this layer.
    pub training: Param<Flag>,
    /// Running-average weight of the new batch statistic.
    pub momentum: f64,
    /// Variance epsilon.
    pub epsilon: f64,
    /// Bessel-corrected running variance.
    pub unbiased_running_var: bool,
}

impl BatchNormConfig {
    /// Builds the layer with gamma 1, beta 0, mean 0, variance 1.
    pub fn init(&self, device: &Device) -> BatchNorm {
        assert!(
            self.num_features > 0,
            "batch norm needs at least one channel"
        );
        assert!(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            "batch norm epsilon must be finite and positive, got {}",
            self.epsilon
        );
        assert!(
            (0.0..=1.0).contains(&self.momentum),
            "batch norm momentum must be in [0, 1], got {}",
            self.momentum
        );
        BatchNorm {
            gamma: Initializer::Ones.init([self.num_features], device),
            beta: Initializer::Zeros.init([self.num_features], device),
            running_mean: RunningState::new(Tensor::zeros([self.num_features], device)),
            running_var: RunningState::new(Tensor::ones([self.num_features], device)),
            training: Param::from_bool(true),
            momentum: self.momentum,
            epsilon: self.epsilon,
            unbiased_running_var: self.unbiased_running_var,
        }
    }
}

impl BatchNorm {
    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.gamma.lazy_shape()[0]
    }

    /// Whether this call will use (and update) batch statistics.
    pub fn uses_batch_statistics<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.training.is_enabled() && x.device().is_autodiff()
    }

    /// Normalises `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        assert_eq!(
            x.dims()[1],
            self.num_features(),
            "batch norm expects {} channels, got input of shape {:?}",
            self.num_features(),
            x.dims()
        );
        if self.uses_batch_statistics(&x) {
            self.forward_train(x)
        } else {
            self.forward_inference(x)
        }
    }

    /// Normalises with the running statistics.
    pub fn forward_inference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        batch_norm(
            x,
            self.gamma.val(),
            self.beta.val(),
            self.running_mean.value_sync().to_device(&device),
            self.running_var.value_sync().to_device(&device),
            self.epsilon,
        )
    }

    /// Normalises with the batch statistics and updates the running ones.
    pub fn forward_train<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        let dims = x.dims();
        let count: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d)
            .product();
        let out = batch_norm_train(x, self.gamma.val(), self.beta.val(), self.epsilon);
        let variance = if self.unbiased_running_var && count > 1 {
            out.variance.mul_scalar(count as f64 / (count - 1) as f64)
        } else {
            out.variance
        };
        let m = self.momentum;
        let mean = self
            .running_mean
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - m)
            + out.mean.detach().mul_scalar(m);
        let var = self
            .running_var
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - m)
            + variance.detach().mul_scalar(m);
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        out.output
    }

    /// Folds the latest training-mode update into the stored running statistics.
    ///
    /// burn's `RunningState` keeps a thread's last update aside until it is read with
    /// `value_sync`; module visitors (saving, `collect`) read the stored value, so call
    /// this after training and before saving or inspecting the statistics.
    pub fn sync_running_stats(&self) {
        let _ = self.running_mean.value_sync();
        let _ = self.running_var.value_sync();
    }

    /// The running mean and variance, including the latest update.
    pub fn running_stats(&self) -> (Tensor<1>, Tensor<1>) {
        (
            self.running_mean.value_sync(),
            self.running_var.value_sync(),
        )
    }

    /// The per-channel affine map `y = scale * x + shift` this layer applies at inference,
    /// `scale = gamma / sqrt(var + eps)` and `shift = beta - scale * mean`.
    pub fn inference_affine(&self) -> (Tensor<1>, Tensor<1>) {
        let (mean, var) = self.running_stats();
        let scale = self.gamma.val() / (var.add_scalar(self.epsilon)).sqrt();
        let shift = self.beta.val() - scale.clone() * mean;
        (scale, shift)
    }
}
