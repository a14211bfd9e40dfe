//! RAU-Net, HiDiffusion's resolution-aware UNet (Zhang et al., ECCV 2024, Sec. 3.2),
//! and the switch that puts it and MSW-MSA on a pipeline.
//!
//! - RAD: for the early, high-noise steps one downsampler's 3x3 convolution keeps its
//!   weights but runs with stride 4, padding 2, dilation 2, so the deep levels see the
//!   feature-map sizes of the training resolution.
//! - RAU: every upsampler resizes (nearest) to the size of the skip tensor it meets,
//!   which after RAD is a 4x resize; this UNet always does that.
//! - T2 (the paper's appendix, for the most extreme sizes): a 2x average pool (ceil
//!   mode) after the first resnet/attention pair of a down block, and a bicubic resize
//!   back after the second pair of the matching up block.
//!
//! When each is active follows the official code (hidiffusion 0.1.10): presets chosen
//! from the model family and the latent size, `active while step < int(N * ratio)`, and
//! SDXL's "aggressive" schedule below 4096 px. Two deliberate differences, both
//! documented: SDXL-turbo is recognised from the folder (the official code needs the
//! exact hub name), and the per-step state is reset by every sampling run (the official
//! counters persist across interrupted runs).

use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use crate::attention::{Attention, AttentionSite, Path, SelfAttentionHook};
use crate::cost::CountedMechanisms;
use crate::layers::Conv2d;
use crate::msw_msa::{SeededShifts, ShiftSource, windowed_self_attention};
use crate::pipeline::{ModelKind, SamplingHooks};
use crate::unet::UNetHooks;

/// RAD's convolution settings (the official `make_diffusers_downsampler_block`).
pub const RAD_STRIDE: usize = 4;
/// See [`RAD_STRIDE`].
pub const RAD_PADDING: usize = 2;
/// See [`RAD_STRIDE`].
pub const RAD_DILATION: usize = 2;
/// SDXL's aggressive schedule runs RAD for the first `8/50` of the steps.
pub const AGGRESSIVE_RAD_FRACTION: f64 = 8.0 / 50.0;

/// The official presets (`switching_threshold_ratio_dict`): the fractions of the steps
/// during which the T1 and T2 mechanisms run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// SD 1.5 / 2.1 below 2048 px (latent side < 256): T1 0.4, T2 0.
    Sd15_1024,
    /// SD 1.5 / 2.1 at 2048 px and above: T1 0.7, T2 0.3.
    Sd15_2048,
    /// SDXL below 4096 px (latent side < 512): T1 0.4, T2 0, aggressive.
    Sdxl2048,
    /// SDXL at 4096 px and above: T1 0.7, T2 0.3.
    Sdxl4096,
    /// SDXL-turbo: T1 0.5, T2 0.
    SdxlTurbo1024,
}

impl Preset {
    /// `(T1 ratio, T2 ratio)`.
    pub fn ratios(self) -> (f64, f64) {
        match self {
            Preset::Sd15_1024 => (0.4, 0.0),
            Preset::Sd15_2048 => (0.7, 0.3),
            Preset::Sdxl2048 => (0.4, 0.0),
            Preset::Sdxl4096 => (0.7, 0.3),
            Preset::SdxlTurbo1024 => (0.5, 0.0),
        }
    }

    /// The preset the official code picks for a latent of `[h, w]`: the larger preset
    /// only when both sides reach 256 (SD) / 512 (SDXL) latent pixels.
    pub fn for_model(kind: ModelKind, latent: [usize; 2]) -> Self {
        let [h, w] = latent;
        match kind {
            ModelKind::Sd1 | ModelKind::Sd2 if h < 256 || w < 256 => Preset::Sd15_1024,
            ModelKind::Sd1 | ModelKind::Sd2 => Preset::Sd15_2048,
            ModelKind::Sdxl if h < 512 || w < 512 => Preset::Sdxl2048,
            ModelKind::Sdxl => Preset::Sdxl4096,
            ModelKind::SdxlTurbo => Preset::SdxlTurbo1024,
        }
    }
}

/// What HiDiffusion does to a pipeline. Fields left `None` follow the official
/// presets for the model and the latent size of each call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiDiffusionConfig {
    /// Model family (decides the patched blocks).
    pub kind: ModelKind,
    /// RAU-Net (RAD, RAU and T2 pooling).
    pub rau_net: bool,
    /// MSW-MSA.
    pub msw_msa: bool,
    /// Override the preset's T1 ratio.
    pub t1_ratio: Option<f64>,
    /// Override the preset's T2 ratio.
    pub t2_ratio: Option<f64>,
    /// Override SDXL's aggressive schedule (default: on below 4096 px).
    pub aggressive: Option<bool>,
}

impl HiDiffusionConfig {
    /// Both mechanisms with the official presets for `kind`.
    pub fn for_model(kind: ModelKind) -> Self {
        HiDiffusionConfig {
            kind,
            rau_net: true,
            msw_msa: true,
            t1_ratio: None,
            t2_ratio: None,
            aggressive: None,
        }
    }

    /// The down block whose downsampler RAD runs, the (down, up) blocks of the T2
    /// pooling, and the self-attention sites of MSW-MSA.
    fn layout(&self) -> Layout {
        match self.kind {
            ModelKind::Sd1 | ModelKind::Sd2 => Layout {
                rad_block: Some(0),
                pool_blocks: (1, 2),
                window_down: 0,
                window_up: 3,
            },
            ModelKind::Sdxl => Layout {
                rad_block: Some(1),
                pool_blocks: (1, 1),
                window_down: 1,
                window_up: 1,
            },
            ModelKind::SdxlTurbo => Layout {
                rad_block: None,
                pool_blocks: (1, 1),
                window_down: 1,
                window_up: 1,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    rad_block: Option<usize>,
    pool_blocks: (usize, usize),
    window_down: usize,
    window_up: usize,
}

/// Which mechanisms run at step `step` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActiveMechanisms {
    /// RAD (and so the 4x RAU).
    pub rad: bool,
    /// T2 pooling and bicubic restore.
    pub pool: bool,
}

impl HiDiffusionConfig {
    /// What runs at `step` of `total` for a latent of `[h, w]`. The official roles:
    /// SD 1.x/2.x, RAD while `step < int(N T1)`, pooling while `step < int(N T2)`; SDXL,
    /// pooling follows T1 and RAD T2, and the aggressive schedule runs RAD for
    /// `step < int(8/50 N)` then pooling up to `int(0.4 N)`; turbo pools only.
    pub fn active(&self, step: usize, total: usize, latent: [usize; 2]) -> ActiveMechanisms {
        if !self.rau_net {
            return ActiveMechanisms::default();
        }
        let preset = Preset::for_model(self.kind, latent);
        let (t1, t2) = preset.ratios();
        let t1 = self.t1_ratio.unwrap_or(t1);
        let t2 = self.t2_ratio.unwrap_or(t2);
        // Python's int(N * ratio): the f64 product, truncated.
        let until = |ratio: f64| (total as f64 * ratio) as usize;
        match self.kind {
            ModelKind::Sd1 | ModelKind::Sd2 => ActiveMechanisms {
                rad: step < until(t1),
                pool: step < until(t2),
            },
            ModelKind::Sdxl => {
                let aggressive = self.aggressive.unwrap_or(preset == Preset::Sdxl2048);
                if aggressive {
                    let switch = until(AGGRESSIVE_RAD_FRACTION);
                    ActiveMechanisms {
                        rad: step < switch,
                        pool: switch <= step && step < until(t1),
                    }
                } else {
                    ActiveMechanisms {
                        rad: step < until(t2),
                        pool: step < until(t1),
                    }
                }
            }
            ModelKind::SdxlTurbo => ActiveMechanisms {
                rad: false,
                pool: step < until(t1),
            },
        }
    }
}

/// 2x2 average pooling in ceil mode, PyTorch's way: a window cut by the edge of an odd
/// map averages the values it holds.
pub fn avg_pool_ceil(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let options = AvgPoolOptions::new([2, 2]);
    if h % 2 == 0 && w % 2 == 0 {
        return avg_pool2d(x, options);
    }
    // Pad to even with zeros, average over 2x2, then rescale the edge windows by
    // 4 / (elements they really hold).
    let (he, we) = (h + h % 2, w + w % 2);
    let device = x.device();
    let padded = x.pad([(0, he - h), (0, we - w)], PadMode::Constant(0.0));
    let pooled = avg_pool2d(padded, options);
    let (ho, wo) = (he / 2, we / 2);
    let count = |i: usize, n: usize| if 2 * i + 1 < n { 2.0 } else { 1.0 };
    let scale: Vec<f32> = (0..ho)
        .flat_map(|i| (0..wo).map(move |j| 4.0 / (count(i, h) * count(j, w))))
        .collect();
    pooled * Tensor::<4>::from_data(TensorData::new(scale, [1, 1, ho, wo]), &device)
}

/// The HiDiffusion hooks for one sampling run.
pub struct HiDiffusion {
    config: HiDiffusionConfig,
    layout: Layout,
    shifts: Box<dyn ShiftSource>,
    step: usize,
    total: usize,
    latent: [usize; 2],
    active: ActiveMechanisms,
    pooled_from: Option<[usize; 2]>,
}

impl HiDiffusion {
    /// HiDiffusion per `config`, with window shifts drawn from `seed`.
    pub fn new(config: HiDiffusionConfig, seed: u64) -> Self {
        Self::with_shifts(config, Box::new(SeededShifts::new(seed)))
    }

    /// With an explicit shift source.
    pub fn with_shifts(config: HiDiffusionConfig, shifts: Box<dyn ShiftSource>) -> Self {
        HiDiffusion {
            layout: config.layout(),
            config,
            shifts,
            step: 0,
            total: 1,
            latent: [0, 0],
            active: ActiveMechanisms::default(),
            pooled_from: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HiDiffusionConfig {
        &self.config
    }

    /// Sets the step directly (for replaying one UNet call of a run).
    pub fn set_step(&mut self, step: usize, total: usize) {
        self.step = step;
        self.total = total;
    }

    /// What runs in the current UNet call.
    pub fn active(&self) -> ActiveMechanisms {
        self.active
    }

    /// The mechanisms of a call at `step` of `total` on a latent of `latent`, in the
    /// terms of [`crate::cost::unet_macs`].
    pub fn counted(&self, step: usize, total: usize, latent: [usize; 2]) -> CountedMechanisms {
        let active = self.config.active(step, total, latent);
        CountedMechanisms {
            rad: self.layout.rad_block.filter(|_| active.rad),
            pool: active.pool.then_some(self.layout.pool_blocks),
            windows: self
                .config
                .msw_msa
                .then_some((self.layout.window_down, self.layout.window_up)),
        }
    }

    fn windowed(&self, site: AttentionSite) -> bool {
        self.config.msw_msa
            && match site.path {
                Path::Down => site.block == self.layout.window_down,
                Path::Up => site.block == self.layout.window_up,
                Path::Mid => false,
            }
    }
}

impl SelfAttentionHook for HiDiffusion {
    fn self_attention(
        &mut self,
        site: AttentionSite,
        attn: &Attention,
        x: Tensor<3>,
        size: [usize; 2],
    ) -> Tensor<3> {
        if !self.windowed(site) {
            return attn.forward(x, None);
        }
        let k = self.shifts.next_multiple();
        windowed_self_attention(attn, x, size, k)
    }
}

impl UNetHooks for HiDiffusion {
    fn begin_call(&mut self, latent: [usize; 2]) {
        // The official modules resolve their preset from each call's latent size.
        self.latent = latent;
        self.active = self.config.active(self.step, self.total, latent);
        self.pooled_from = None;
    }

    fn downsample(&mut self, block: usize, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        if self.active.rad && self.layout.rad_block == Some(block) {
            conv.forward_with(x, RAD_STRIDE, RAD_PADDING, RAD_DILATION)
        } else {
            conv.forward(x)
        }
    }

    fn after_down_layer(&mut self, block: usize, layer: usize, x: Tensor<4>) -> Tensor<4> {
        if self.active.pool && block == self.layout.pool_blocks.0 && layer == 0 {
            let [_, _, h, w] = x.dims();
            self.pooled_from = Some([h, w]);
            avg_pool_ceil(x)
        } else {
            x
        }
    }

    fn after_up_layer(&mut self, block: usize, layer: usize, x: Tensor<4>) -> Tensor<4> {
        match self.pooled_from {
            Some(size) if block == self.layout.pool_blocks.1 && layer == 1 => interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Bicubic)
                    .with_align_corners(false)
                    .with_output_size(size),
            ),
            _ => x,
        }
    }
}

impl SamplingHooks for HiDiffusion {
    fn begin_step(&mut self, index: usize, total: usize) {
        self.set_step(index, total);
    }
}
