//! Samplers read from `scheduler/scheduler_config.json`: DDIM (Song et al.; diffusers'
//! `DDIMScheduler`) and Euler ancestral (diffusers' `EulerAncestralDiscreteScheduler`,
//! SDXL-turbo's sampler), with the `leading`, `trailing` and `linspace` timestep
//! spacings and epsilon, v and sample prediction. Noise schedules are computed in f32
//! as diffusers computes them, so timesteps and coefficients agree to the last bit that
//! matters. A scheduler knows nothing of the UNet: the pipeline asks it for the
//! timesteps, scales the model input, and hands back the model output.

use std::path::Path;

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::weights::{LoadError, read_json};

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.00085
}
fn beta_end() -> f64 {
    0.012
}
fn scaled_linear() -> String {
    "scaled_linear".into()
}
fn epsilon() -> String {
    "epsilon".into()
}
fn leading() -> String {
    "leading".into()
}
fn clip_range() -> f64 {
    1.0
}

/// `scheduler/scheduler_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    /// `DDIMScheduler`, `EulerAncestralDiscreteScheduler`, ...
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Training timesteps.
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// `scaled_linear` or `linear`.
    #[serde(default = "scaled_linear")]
    pub beta_schedule: String,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default = "leading")]
    pub timestep_spacing: String,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM: clip the predicted original sample.
    #[serde(default)]
    pub clip_sample: bool,
    /// DDIM: the clip range.
    #[serde(default = "clip_range")]
    pub clip_sample_range: f64,
    /// DDIM: the final step goes to alpha 1 (else to the first training alpha).
    #[serde(default)]
    pub set_alpha_to_one: bool,
    /// Unsupported when true.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Unsupported when true.
    #[serde(default)]
    pub thresholding: bool,
}

impl SchedulerConfig {
    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: SchedulerConfig = read_json(path)?;
        config.validate().map_err(|message| LoadError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Refuses what is not implemented.
    pub fn validate(&self) -> Result<(), String> {
        if !["scaled_linear", "linear"].contains(&self.beta_schedule.as_str()) {
            return Err(format!(
                "beta_schedule {:?} is not supported",
                self.beta_schedule
            ));
        }
        if !["epsilon", "v_prediction", "sample"].contains(&self.prediction_type.as_str()) {
            return Err(format!(
                "prediction_type {:?} is not supported",
                self.prediction_type
            ));
        }
        if !["leading", "trailing", "linspace"].contains(&self.timestep_spacing.as_str()) {
            return Err(format!(
                "timestep_spacing {:?} is not supported",
                self.timestep_spacing
            ));
        }
        if self.rescale_betas_zero_snr || self.thresholding {
            return Err("rescale_betas_zero_snr / thresholding are not supported".into());
        }
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps must be positive".into());
        }
        Ok(())
    }

    /// Cumulative products of `1 - beta`, in f32 as diffusers computes them.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        // torch.linspace in f32: start + i * step, with step = (end - start) / (n - 1).
        let linspace = |a: f64, b: f64| -> Vec<f32> {
            let (a, b) = (a as f32, b as f32);
            let step = if n > 1 { (b - a) / (n - 1) as f32 } else { 0.0 };
            // torch fills the second half from the end for symmetry.
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        a + step * i as f32
                    } else {
                        b - step * (n - 1 - i) as f32
                    }
                })
                .collect()
        };
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "linear" => linspace(self.beta_start, self.beta_end),
            _ => linspace(self.beta_start.sqrt(), self.beta_end.sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
        };
        let mut acc = 1.0f32;
        betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise.
    Epsilon,
    /// `v = sqrt(a) eps - sqrt(1 - a) x0`.
    V,
    /// The clean sample.
    Sample,
}

/// A sampler set up for a number of inference steps.
#[derive(Debug, Clone)]
pub enum Scheduler {
    /// DDIM.
    Ddim(Ddim),
    /// Euler ancestral.
    EulerAncestral(EulerAncestral),
}

/// Which sampler to build from a config (the config's own class by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// DDIM.
    Ddim,
    /// Euler ancestral.
    EulerAncestral,
}

impl Scheduler {
    /// The sampler of `kind` (or the config's `_class_name`) with `steps` inference
    /// steps; `eta` is DDIM's stochasticity (0: deterministic).
    pub fn new(
        config: &SchedulerConfig,
        kind: Option<SamplerKind>,
        steps: usize,
        eta: f64,
    ) -> Result<Self, String> {
        config.validate()?;
        if steps == 0 || steps > config.num_train_timesteps {
            return Err(format!(
                "steps must be in 1..={}, got {steps}",
                config.num_train_timesteps
            ));
        }
        let kind = match kind {
            Some(k) => k,
            None => match config.class_name.as_str() {
                "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
                // Every other SD scheduler config carries the same noise schedule; DDIM
                // is this crate's default sampler (HiDiffusion's recommended one).
                _ => SamplerKind::Ddim,
            },
        };
        let prediction = match config.prediction_type.as_str() {
            "v_prediction" => Prediction::V,
            "sample" => Prediction::Sample,
            _ => Prediction::Epsilon,
        };
        Ok(match kind {
            SamplerKind::Ddim => Scheduler::Ddim(Ddim::new(config, steps, eta, prediction)),
            SamplerKind::EulerAncestral => {
                if prediction == Prediction::Sample {
                    return Err("Euler ancestral does not support prediction_type sample".into());
                }
                Scheduler::EulerAncestral(EulerAncestral::new(config, steps, prediction))
            }
        })
    }

    /// The timesteps the model is called at, in order.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Scheduler::Ddim(s) => &s.timesteps,
            Scheduler::EulerAncestral(s) => &s.timesteps,
        }
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Scheduler::Ddim(_) => 1.0,
            Scheduler::EulerAncestral(s) => s.init_noise_sigma,
        }
    }

    /// The model input at step `index` (Euler divides by `sqrt(sigma^2 + 1)`).
    pub fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        match self {
            Scheduler::Ddim(_) => sample,
            Scheduler::EulerAncestral(s) => {
                let sigma = s.sigmas[index];
                sample.div_scalar((sigma * sigma + 1.0).sqrt())
            }
        }
    }

    /// Whether step `index` adds fresh noise (and so needs a `noise` tensor).
    pub fn needs_noise(&self, index: usize) -> bool {
        match self {
            Scheduler::Ddim(s) => s.eta > 0.0 && s.variance(index) > 0.0,
            Scheduler::EulerAncestral(s) => s.sigmas[index + 1] > 0.0,
        }
    }

    /// The sample after step `index` given the model output there. `noise` (standard
    /// normal, the sample's shape) is used where [`needs_noise`](Self::needs_noise).
    pub fn step(
        &self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        match self {
            Scheduler::Ddim(s) => s.step(model_output, index, sample, noise),
            Scheduler::EulerAncestral(s) => s.step(model_output, index, sample, noise),
        }
    }
}

/// DDIM's timesteps for `leading`, `trailing` and `linspace` spacing.
fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let t = config.num_train_timesteps;
    match config.timestep_spacing.as_str() {
        "trailing" => {
            let ratio = t as f64 / steps as f64;
            // np.round(np.arange(T, 0, -ratio)) - 1
            let mut out = Vec::new();
            let mut v = t as f64;
            let mut i = 0;
            while v > 0.0 {
                out.push(round_half_even(v) - 1.0);
                i += 1;
                v = t as f64 - i as f64 * ratio;
            }
            out
        }
        // np.linspace(0, T - 1, steps).round()[::-1]
        "linspace" => descending_linspace(t, steps)
            .into_iter()
            .map(round_half_even)
            .collect(),
        _ => {
            let ratio = t / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
    }
}

/// `np.linspace(0, T - 1, steps)[::-1]` (a single step is `[0]`).
fn descending_linspace(t: usize, steps: usize) -> Vec<f64> {
    let end = (t - 1) as f64;
    (0..steps)
        .rev()
        .map(|i| {
            if steps == 1 {
                0.0
            } else {
                end * i as f64 / (steps - 1) as f64
            }
        })
        .collect()
}

/// numpy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// DDIM with `eta`.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    step_ratio: usize,
    eta: f64,
    prediction: Prediction,
    clip: Option<f64>,
}

impl Ddim {
    fn new(config: &SchedulerConfig, steps: usize, eta: f64, prediction: Prediction) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        Ddim {
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            timesteps: spaced_timesteps(config, steps),
            // diffusers steps back by T // steps whatever the spacing.
            step_ratio: config.num_train_timesteps / steps,
            eta,
            prediction,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        }
    }

    fn alphas(&self, index: usize) -> (f32, f32) {
        let t = self.timesteps[index] as i64;
        let prev = t - self.step_ratio as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        (a_t, a_prev)
    }

    fn variance(&self, index: usize) -> f32 {
        let (a_t, a_prev) = self.alphas(index);
        (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    }

    fn step(
        &self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let (a_t, a_prev) = self.alphas(index);
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt() as f64, b_t.sqrt() as f64);
        let (mut x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                (sample.clone() - model_output.clone().mul_scalar(sb)).div_scalar(sa),
                model_output,
            ),
            Prediction::Sample => {
                let eps = (sample - model_output.clone().mul_scalar(sa)).div_scalar(sb);
                (model_output, eps)
            }
            Prediction::V => (
                sample.clone().mul_scalar(sa) - model_output.clone().mul_scalar(sb),
                model_output.mul_scalar(sa) + sample.mul_scalar(sb),
            ),
        };
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
        }
        let std_dev = self.eta as f32 * self.variance(index).sqrt();
        let direction = (1.0 - a_prev - std_dev * std_dev).sqrt() as f64;
        let prev = x0.mul_scalar(a_prev.sqrt() as f64) + eps.mul_scalar(direction);
        match noise {
            Some(n) if std_dev > 0.0 => prev + n.mul_scalar(std_dev as f64),
            _ => prev,
        }
    }
}

/// Euler ancestral.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: Prediction,
}

impl EulerAncestral {
    fn new(config: &SchedulerConfig, steps: usize, prediction: Prediction) -> Self {
        let t = config.num_train_timesteps;
        // Euler keeps linspace timesteps unrounded.
        let timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
            "linspace" => descending_linspace(t, steps),
            _ => spaced_timesteps(config, steps),
        };
        let full: Vec<f64> = config
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt() as f64)
            .collect();
        // np.interp over the integer training timesteps, then cast to f32.
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&ts| {
                let lo = (ts.floor() as usize).min(t - 1);
                let hi = (lo + 1).min(t - 1);
                let frac = ts - lo as f64;
                (full[lo] + (full[hi] - full[lo]) * frac) as f32 as f64
            })
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().fold(0f64, |m, &s| m.max(s));
        let init_noise_sigma =
            if matches!(config.timestep_spacing.as_str(), "linspace" | "trailing") {
                max
            } else {
                (max * max + 1.0).sqrt()
            };
        EulerAncestral {
            timesteps: timesteps.iter().map(|&x| x as f32 as f64).collect(),
            sigmas,
            init_noise_sigma,
            prediction,
        }
    }

    fn step(
        &self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let sigma = self.sigmas[index];
        let x0 = match self.prediction {
            Prediction::V => {
                model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
            _ => sample.clone() - model_output.mul_scalar(sigma),
        };
        let to = self.sigmas[index + 1];
        let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
        let down = (to * to - up * up).sqrt();
        let derivative = (sample.clone() - x0).div_scalar(sigma);
        let prev = sample + derivative.mul_scalar(down - sigma);
        match noise {
            Some(n) if up > 0.0 => prev + n.mul_scalar(up),
            _ => prev,
        }
    }
}
