//! diffusers' `UNet2DConditionModel`, built from `unet/config.json`: SD 1.x (1x1
//! convolution projections, 8 heads), SD 2.x (linear projections, 64-wide heads) and
//! SDXL (transformer depth per level, `text_time` additional embeddings).
//!
//! Every upsampler resizes to the size of the skip tensor it is concatenated with
//! (diffusers' `forward_upsample_size` path), so any latent size works and a method
//! that shrinks a level (RAU-Net) gets its skips back at the right size. HiDiffusion
//! reaches in through [`UNetHooks`] at named points; without hooks this is the plain
//! diffusers forward.

use burn::module::Module;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::attention::{AttentionSite, Path, SelfAttentionHook, Transformer2d};
use crate::config::UNetConfig;
use crate::layers::{Conv2d, group_norm, linear};
use crate::weights::Weights;

/// `ResnetBlock2D` with a time embedding: `(x + conv2(silu(norm2(conv1(silu(norm1(x)))
/// + proj(silu(t))))))`, with a 1x1 shortcut where the channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// First norm.
    pub norm1: GroupNorm,
    /// First convolution.
    pub conv1: Conv2d,
    /// Time embedding projection (`None` in the VAE).
    pub time_emb_proj: Option<Linear>,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// 1x1 shortcut when channels change.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub(crate) fn load(
        w: &mut Weights,
        prefix: &str,
        channels: [usize; 2],
        time_dim: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Self {
        let [c_in, c_out] = channels;
        ResnetBlock {
            norm1: group_norm(w, &format!("{prefix}.norm1"), groups, c_in, eps),
            conv1: Conv2d::load(w, &format!("{prefix}.conv1"), [c_in, c_out], 3, 1, 1),
            time_emb_proj: time_dim
                .map(|t| linear(w, &format!("{prefix}.time_emb_proj"), t, c_out, true)),
            norm2: group_norm(w, &format!("{prefix}.norm2"), groups, c_out, eps),
            conv2: Conv2d::load(w, &format!("{prefix}.conv2"), [c_out, c_out], 3, 1, 1),
            conv_shortcut: (c_in != c_out).then(|| {
                Conv2d::load(
                    w,
                    &format!("{prefix}.conv_shortcut"),
                    [c_in, c_out],
                    1,
                    1,
                    0,
                )
            }),
        }
    }

    /// `x [B, C, H, W]`; `temb_act`: `silu(time embedding)` `[B, T]`.
    pub fn forward(&self, x: Tensor<4>, temb_act: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_act) {
            let t: Tensor<4> = proj
                .forward(t.clone())
                .unsqueeze_dim::<3>(2)
                .unsqueeze_dim(3);
            h = h + t;
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// One level of the down path: resnets, optional attentions, optional downsampler.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// Resnets.
    pub resnets: Vec<ResnetBlock>,
    /// One transformer per resnet (`CrossAttnDownBlock2D`) or none (`DownBlock2D`).
    pub attentions: Vec<Transformer2d>,
    /// Stride-2 3x3 convolution (`downsamplers.0.conv`), absent on the last level.
    pub downsampler: Option<Conv2d>,
}

/// One level of the up path: resnets over the concatenated skips, optional attentions,
/// optional upsampler.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// Resnets.
    pub resnets: Vec<ResnetBlock>,
    /// Transformers (cross-attention blocks) or none.
    pub attentions: Vec<Transformer2d>,
    /// Nearest resize then 3x3 convolution (`upsamplers.0.conv`), absent on the last
    /// level.
    pub upsampler: Option<Conv2d>,
}

/// The mid block: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Resnets (one more than attentions).
    pub resnets: Vec<ResnetBlock>,
    /// Transformers.
    pub attentions: Vec<Transformer2d>,
}

/// SDXL's conditioning beyond the text sequence.
#[derive(Debug, Clone)]
pub struct AddedConditions {
    /// Pooled, projected text embedding of the second encoder, `[B, P]`.
    pub text_embeds: Tensor<2>,
    /// Original size, crop corner and target size, `[B, 6]`.
    pub time_ids: Tensor<2>,
}

/// Points where a method such as HiDiffusion changes the UNet's forward pass. Every
/// method has a default that does what diffusers does.
pub trait UNetHooks: SelfAttentionHook {
    /// Called first in every forward pass with the latent size of the sample.
    fn begin_call(&mut self, latent: [usize; 2]) {
        let _ = latent;
    }

    /// `down_blocks.{block}.downsamplers.0.conv` applied to `x` (RAU-Net's RAD runs it
    /// with another stride, padding and dilation).
    fn downsample(&mut self, block: usize, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
        let _ = block;
        conv.forward(x)
    }

    /// `up_blocks.{block}.upsamplers.0`: resize `x` to `target` (the next skip's size),
    /// then `conv`.
    fn upsample(
        &mut self,
        block: usize,
        conv: &Conv2d,
        x: Tensor<4>,
        target: [usize; 2],
    ) -> Tensor<4> {
        let _ = block;
        conv.forward(resize_nearest(x, target))
    }

    /// The output of resnet/attention pair `layer` of down block `block` (which also
    /// becomes its skip tensor).
    fn after_down_layer(&mut self, block: usize, layer: usize, x: Tensor<4>) -> Tensor<4> {
        let _ = (block, layer);
        x
    }

    /// The output of resnet/attention pair `layer` of up block `block`.
    fn after_up_layer(&mut self, block: usize, layer: usize, x: Tensor<4>) -> Tensor<4> {
        let _ = (block, layer);
        x
    }

    /// Told when a whole block (down block with its downsampler, the mid block, up
    /// block with its upsampler) has run, with its output: for profilers.
    fn after_block(&mut self, path: Path, block: usize, x: &Tensor<4>) {
        let _ = (path, block, x);
    }
}

/// The plain diffusers forward.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl SelfAttentionHook for NoHooks {}
impl UNetHooks for NoHooks {}

/// PyTorch's `interpolate(mode="nearest", size=target)`: output pixel `d` reads input
/// `min(floor(d * (in / out)), in - 1)` with the ratio and product in f32, as PyTorch
/// computes them (for sizes that are not multiples the f32 rounding decides some
/// indices, so this gathers by explicit indices rather than trusting another formula).
pub fn resize_nearest(x: Tensor<4>, target: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == target {
        return x;
    }
    let device = x.device();
    let index = |n_in: usize, n_out: usize| {
        let scale = n_in as f32 / n_out as f32;
        let idx: Vec<i64> = (0..n_out)
            .map(|d| ((d as f32 * scale).floor() as usize).min(n_in - 1) as i64)
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [n_out]), &device)
    };
    if target == [2 * h, 2 * w] {
        // The common case: every pixel twice along both axes.
        return interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(target),
        );
    }
    x.select(2, index(h, target[0]))
        .select(3, index(w, target[1]))
}

/// `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet {
    /// `time_embedding.linear_1`.
    pub time_linear_1: Linear,
    /// `time_embedding.linear_2`.
    pub time_linear_2: Linear,
    /// SDXL `add_embedding.linear_1` / `linear_2`.
    pub add_embedding: Option<(Linear, Linear)>,
    /// Input convolution.
    pub conv_in: Conv2d,
    /// Down path.
    pub down_blocks: Vec<DownBlock>,
    /// Middle.
    pub mid_block: MidBlock,
    /// Up path.
    pub up_blocks: Vec<UpBlock>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution.
    pub conv_out: Conv2d,
    /// Width of the sinusoidal time embedding.
    pub time_channels: usize,
    /// SDXL: width of each embedded `time_ids` entry.
    pub add_time_channels: usize,
    /// Sinusoid order.
    pub flip_sin_to_cos: bool,
    /// Frequency shift.
    pub freq_shift: f64,
}

impl UNet {
    /// Builds the model of `config` from `w` (a weight file or random weights).
    pub fn load(config: &UNetConfig, w: &mut Weights) -> Self {
        let levels = config.block_out_channels.len();
        let channels = &config.block_out_channels;
        let heads = config.heads();
        let layers = config.layers_per_block.expand(levels);
        let depth = config.transformer_layers_per_block.expand(levels);
        let context = config.cross_attention_dim.expand(levels);
        let (groups, eps, linear_proj) = (
            config.norm_num_groups,
            config.norm_eps,
            config.use_linear_projection,
        );
        let time_dim = channels[0] * 4;
        let add_embedding = config.is_sdxl_conditioning().then(|| {
            let input = config
                .projection_class_embeddings_input_dim
                .expect("validated");
            (
                linear(w, "add_embedding.linear_1", input, time_dim, true),
                linear(w, "add_embedding.linear_2", time_dim, time_dim, true),
            )
        });
        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_prev = channels[0];
        for i in 0..levels {
            let c = channels[i];
            let prefix = format!("down_blocks.{i}");
            let cross = config.down_block_types[i] == "CrossAttnDownBlock2D";
            let resnets = (0..layers[i])
                .map(|j| {
                    let c_in = if j == 0 { c_prev } else { c };
                    ResnetBlock::load(
                        w,
                        &format!("{prefix}.resnets.{j}"),
                        [c_in, c],
                        Some(time_dim),
                        groups,
                        eps,
                    )
                })
                .collect();
            let attentions = if cross {
                (0..layers[i])
                    .map(|j| {
                        Transformer2d::load(
                            w,
                            &format!("{prefix}.attentions.{j}"),
                            c,
                            heads[i],
                            depth[i],
                            context[i],
                            groups,
                            linear_proj,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let downsampler = (i + 1 < levels).then(|| {
                Conv2d::load(
                    w,
                    &format!("{prefix}.downsamplers.0.conv"),
                    [c, c],
                    3,
                    2,
                    config.downsample_padding,
                )
            });
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
            c_prev = c;
        }
        let c_mid = channels[levels - 1];
        let mid_block = MidBlock {
            resnets: (0..2)
                .map(|j| {
                    ResnetBlock::load(
                        w,
                        &format!("mid_block.resnets.{j}"),
                        [c_mid, c_mid],
                        Some(time_dim),
                        groups,
                        eps,
                    )
                })
                .collect(),
            attentions: vec![Transformer2d::load(
                w,
                "mid_block.attentions.0",
                c_mid,
                heads[levels - 1],
                depth[levels - 1],
                context[levels - 1],
                groups,
                linear_proj,
            )],
        };
        let mut up_blocks = Vec::with_capacity(levels);
        let mut c_prev_out = c_mid;
        for i in 0..levels {
            // Up block i mirrors down level `levels - 1 - i`.
            let level = levels - 1 - i;
            let c = channels[level];
            let c_skip_last = channels[level.saturating_sub(1)];
            let prefix = format!("up_blocks.{i}");
            let cross = config.up_block_types[i] == "CrossAttnUpBlock2D";
            let n = layers[level] + 1;
            let resnets = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { c_skip_last } else { c };
                    let c_in = if j == 0 { c_prev_out } else { c };
                    ResnetBlock::load(
                        w,
                        &format!("{prefix}.resnets.{j}"),
                        [c_in + skip, c],
                        Some(time_dim),
                        groups,
                        eps,
                    )
                })
                .collect();
            let attentions = if cross {
                (0..n)
                    .map(|j| {
                        Transformer2d::load(
                            w,
                            &format!("{prefix}.attentions.{j}"),
                            c,
                            heads[level],
                            depth[level],
                            context[level],
                            groups,
                            linear_proj,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let upsampler = (i + 1 < levels)
                .then(|| Conv2d::load(w, &format!("{prefix}.upsamplers.0.conv"), [c, c], 3, 1, 1));
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
            c_prev_out = c;
        }
        UNet {
            time_linear_1: linear(w, "time_embedding.linear_1", channels[0], time_dim, true),
            time_linear_2: linear(w, "time_embedding.linear_2", time_dim, time_dim, true),
            add_embedding,
            conv_in: Conv2d::load(w, "conv_in", [config.in_channels, channels[0]], 3, 1, 1),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(w, "conv_norm_out", groups, channels[0], eps),
            conv_out: Conv2d::load(w, "conv_out", [channels[0], config.out_channels], 3, 1, 1),
            time_channels: channels[0],
            add_time_channels: config.addition_time_embed_dim.unwrap_or(0),
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        }
    }

    /// Predicts the noise (or `v`) of `sample [B, C, H, W]` at `timestep` for text
    /// embeddings `context [B, L, D]` (SDXL: plus `added`).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f64,
        context: &Tensor<3>,
        added: Option<&AddedConditions>,
    ) -> Tensor<4> {
        self.forward_with(sample, timestep, context, added, &mut NoHooks)
    }

    /// [`forward`](Self::forward) with `hooks` changing it at their points.
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timestep: f64,
        context: &Tensor<3>,
        added: Option<&AddedConditions>,
        hooks: &mut dyn UNetHooks,
    ) -> Tensor<4> {
        let device = sample.device();
        let [batch, _, h, w] = sample.dims();
        hooks.begin_call([h, w]);
        let t_sin = sinusoidal_embedding(
            &vec![timestep as f32; batch],
            self.time_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        );
        let mut temb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(t_sin)));
        if let Some((l1, l2)) = &self.add_embedding {
            let added = added.expect("an SDXL UNet needs text_embeds and time_ids");
            let ids: Vec<f32> = added
                .time_ids
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .expect("f32 time ids");
            let n_ids = ids.len() / batch;
            let time_embeds = sinusoidal_embedding(
                &ids,
                self.add_time_channels,
                self.flip_sin_to_cos,
                self.freq_shift,
                &device,
            )
            .reshape([batch, n_ids * self.add_time_channels]);
            let add = Tensor::cat(vec![added.text_embeds.clone(), time_embeds], 1);
            temb = temb + l2.forward(silu(l1.forward(add)));
        }
        // Every resnet takes silu(temb); compute it once.
        let temb = silu(temb);

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(x, Some(&temb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context, (Path::Down, i, j), hooks);
                }
                x = hooks.after_down_layer(i, j, x);
                skips.push(x.clone());
            }
            if let Some(conv) = &block.downsampler {
                x = hooks.downsample(i, conv, x);
                skips.push(x.clone());
            }
            hooks.after_block(Path::Down, i, &x);
        }
        let mid = &self.mid_block;
        x = mid.resnets[0].forward(x, Some(&temb));
        for (j, (attn, resnet)) in mid.attentions.iter().zip(&mid.resnets[1..]).enumerate() {
            x = attn.forward(x, context, (Path::Mid, 0, j), hooks);
            x = resnet.forward(x, Some(&temb));
        }
        hooks.after_block(Path::Mid, 0, &x);
        for (i, block) in self.up_blocks.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(&temb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context, (Path::Up, i, j), hooks);
                }
                x = hooks.after_up_layer(i, j, x);
            }
            if let Some(conv) = &block.upsampler {
                let next = skips.last().expect("a skip below every upsampler").dims();
                x = hooks.upsample(i, conv, x, [next[2], next[3]]);
            }
            hooks.after_block(Path::Up, i, &x);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }

    /// Every self-attention site of the model, in forward order.
    pub fn attention_sites(&self) -> Vec<AttentionSite> {
        let mut out = Vec::new();
        let mut push = |path, block, attns: &[Transformer2d]| {
            for (a, t) in attns.iter().enumerate() {
                for k in 0..t.blocks.len() {
                    out.push(AttentionSite {
                        path,
                        block,
                        attention: a,
                        transformer: k,
                    });
                }
            }
        };
        for (i, b) in self.down_blocks.iter().enumerate() {
            push(Path::Down, i, &b.attentions);
        }
        push(Path::Mid, 0, &self.mid_block.attentions);
        for (i, b) in self.up_blocks.iter().enumerate() {
            push(Path::Up, i, &b.attentions);
        }
        out
    }
}

/// diffusers' `get_timestep_embedding`: for each value `t`, `[sin(t f_k), cos(t f_k)]`
/// (or `[cos, sin]` with `flip`) with `f_k = exp(-ln(10000) k / (dim/2 - shift))`,
/// computed in f32 as PyTorch does. Returns `[values, dim]`.
pub fn sinusoidal_embedding(
    values: &[f32],
    dim: usize,
    flip: bool,
    shift: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / (half as f32 - shift as f32)).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(out, [values.len(), dim]), device)
}
