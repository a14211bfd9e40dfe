//! diffusers' `AutoencoderKL`: the encoder (image to latent distribution) and decoder
//! (latents to image), with the mid-block attention under either naming scheme
//! (`to_q/to_k/to_v/to_out.0` or the legacy `query/key/value/proj_attn`).

use burn::module::Module;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::VaeConfig;
use crate::layers::{Conv2d, group_norm, linear};
use crate::unet::{ResnetBlock, resize_nearest};
use crate::weights::Weights;

/// The VAE's group norms use eps 1e-6.
const VAE_EPS: f64 = 1e-6;

/// Single-head self-attention over the pixels of the mid block, with a group norm in
/// front and a residual.
#[derive(Module, Debug)]
pub struct VaeAttention {
    /// Norm.
    pub group_norm: GroupNorm,
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// Output.
    pub to_out: Linear,
}

impl VaeAttention {
    fn load(w: &mut Weights, prefix: &str, channels: usize, groups: usize) -> Self {
        // Old diffusers folders use the names of the original attention block.
        let legacy = w.contains(&format!("{prefix}.query.weight"));
        let name = |new: &str, old: &str| format!("{prefix}.{}", if legacy { old } else { new });
        VaeAttention {
            group_norm: group_norm(
                w,
                &format!("{prefix}.group_norm"),
                groups,
                channels,
                VAE_EPS,
            ),
            to_q: linear(w, &name("to_q", "query"), channels, channels, true),
            to_k: linear(w, &name("to_k", "key"), channels, channels, true),
            to_v: linear(w, &name("to_v", "value"), channels, channels, true),
            to_out: linear(w, &name("to_out.0", "proj_attn"), channels, channels, true),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * wd])
            .swap_dims(1, 2);
        let heads = |t: Tensor<3>| t.unsqueeze_dim::<4>(1);
        let out = attention(
            heads(self.to_q.forward(tokens.clone())),
            heads(self.to_k.forward(tokens.clone())),
            heads(self.to_v.forward(tokens)),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .squeeze_dim::<3>(1);
        let out = self.to_out.forward(out);
        out.swap_dims(1, 2).reshape([b, c, h, wd]) + x
    }
}

/// Resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMid {
    /// Resnets.
    pub resnets: Vec<ResnetBlock>,
    /// Attention (absent when `mid_block_add_attention` is false).
    pub attention: Option<VaeAttention>,
}

impl VaeMid {
    fn load(
        w: &mut Weights,
        prefix: &str,
        channels: usize,
        groups: usize,
        with_attention: bool,
    ) -> Self {
        VaeMid {
            resnets: (0..2)
                .map(|j| {
                    ResnetBlock::load(
                        w,
                        &format!("{prefix}.resnets.{j}"),
                        [channels, channels],
                        None,
                        groups,
                        VAE_EPS,
                    )
                })
                .collect(),
            attention: with_attention.then(|| {
                VaeAttention::load(w, &format!("{prefix}.attentions.0"), channels, groups)
            }),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attn) = &self.attention {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// A level of the encoder or decoder.
#[derive(Module, Debug)]
pub struct VaeLevel {
    /// Resnets.
    pub resnets: Vec<ResnetBlock>,
    /// Encoder: stride-2 convolution after padding right and bottom by one; decoder:
    /// nearest 2x then 3x3 convolution.
    pub resample: Option<Conv2d>,
}

/// Image to latent distribution.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Input convolution.
    pub conv_in: Conv2d,
    /// Levels.
    pub down_blocks: Vec<VaeLevel>,
    /// Middle.
    pub mid: VaeMid,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To `2 * latent_channels` (mean, log-variance).
    pub conv_out: Conv2d,
    /// 1x1 `quant_conv`.
    pub quant_conv: Option<Conv2d>,
}

/// Latents to image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// 1x1 `post_quant_conv`.
    pub post_quant_conv: Option<Conv2d>,
    /// Input convolution.
    pub conv_in: Conv2d,
    /// Middle.
    pub mid: VaeMid,
    /// Levels.
    pub up_blocks: Vec<VaeLevel>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: Conv2d,
}

/// The autoencoder.
#[derive(Module, Debug)]
pub struct Vae {
    /// Encoder.
    pub encoder: Encoder,
    /// Decoder.
    pub decoder: Decoder,
    /// Latent scale (`scaling_factor`).
    pub scaling_factor: f64,
}

impl Vae {
    /// Builds the model of `config` from `w`.
    pub fn load(config: &VaeConfig, w: &mut Weights) -> Self {
        let ch = &config.block_out_channels;
        let levels = ch.len();
        let g = config.norm_num_groups;
        let lat = config.latent_channels;
        let mut down_blocks = Vec::new();
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let p = format!("encoder.down_blocks.{i}");
            down_blocks.push(VaeLevel {
                resnets: (0..config.layers_per_block)
                    .map(|j| {
                        let c_in = if j == 0 { c_prev } else { c };
                        ResnetBlock::load(
                            w,
                            &format!("{p}.resnets.{j}"),
                            [c_in, c],
                            None,
                            g,
                            VAE_EPS,
                        )
                    })
                    .collect(),
                resample: (i + 1 < levels).then(|| {
                    let mut conv =
                        Conv2d::load(w, &format!("{p}.downsamplers.0.conv"), [c, c], 3, 2, 0);
                    // diffusers pads (0, 1, 0, 1) before a padding-0 stride-2 conv.
                    conv.padding = [(0, 1), (0, 1)];
                    conv
                }),
            });
            c_prev = c;
        }
        let top = ch[levels - 1];
        let encoder = Encoder {
            conv_in: Conv2d::load(w, "encoder.conv_in", [config.in_channels, ch[0]], 3, 1, 1),
            down_blocks,
            mid: VaeMid::load(
                w,
                "encoder.mid_block",
                top,
                g,
                config.mid_block_add_attention,
            ),
            conv_norm_out: group_norm(w, "encoder.conv_norm_out", g, top, VAE_EPS),
            conv_out: Conv2d::load(w, "encoder.conv_out", [top, 2 * lat], 3, 1, 1),
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::load(w, "quant_conv", [2 * lat, 2 * lat], 1, 1, 0)),
        };
        let mut up_blocks = Vec::new();
        let mut c_prev = top;
        for i in 0..levels {
            let c = ch[levels - 1 - i];
            let p = format!("decoder.up_blocks.{i}");
            up_blocks.push(VaeLevel {
                resnets: (0..config.layers_per_block + 1)
                    .map(|j| {
                        let c_in = if j == 0 { c_prev } else { c };
                        ResnetBlock::load(
                            w,
                            &format!("{p}.resnets.{j}"),
                            [c_in, c],
                            None,
                            g,
                            VAE_EPS,
                        )
                    })
                    .collect(),
                resample: (i + 1 < levels)
                    .then(|| Conv2d::load(w, &format!("{p}.upsamplers.0.conv"), [c, c], 3, 1, 1)),
            });
            c_prev = c;
        }
        let decoder = Decoder {
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::load(w, "post_quant_conv", [lat, lat], 1, 1, 0)),
            conv_in: Conv2d::load(w, "decoder.conv_in", [lat, top], 3, 1, 1),
            mid: VaeMid::load(
                w,
                "decoder.mid_block",
                top,
                g,
                config.mid_block_add_attention,
            ),
            up_blocks,
            conv_norm_out: group_norm(w, "decoder.conv_norm_out", g, ch[0], VAE_EPS),
            conv_out: Conv2d::load(w, "decoder.conv_out", [ch[0], config.out_channels], 3, 1, 1),
        };
        Vae {
            encoder,
            decoder,
            scaling_factor: config.scaling_factor,
        }
    }

    /// The latent distribution of `image [B, 3, H, W]` (values in [-1, 1]): mean and
    /// standard deviation, each `[B, latent, H/8, W/8]` (unscaled).
    pub fn encode(&self, image: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(image);
        for level in &e.down_blocks {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &level.resample {
                x = conv.forward(x);
            }
        }
        x = e.mid.forward(x);
        x = e.conv_out.forward(silu(e.conv_norm_out.forward(x)));
        if let Some(q) = &e.quant_conv {
            x = q.forward(x);
        }
        let lat = x.dims()[1] / 2;
        let mean = x.clone().narrow(1, 0, lat);
        // diffusers clamps the log-variance to [-30, 20].
        let logvar = x.narrow(1, lat, lat).clamp(-30.0, 20.0);
        (mean, logvar.mul_scalar(0.5).exp())
    }

    /// The image of latents `z` (unscaled: divide the diffusion latents by
    /// `scaling_factor` first), values nominally in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let mut x = match &d.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        x = d.conv_in.forward(x);
        x = d.mid.forward(x);
        for level in &d.up_blocks {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &level.resample {
                let [_, _, h, wd] = x.dims();
                x = conv.forward(resize_nearest(x, [2 * h, 2 * wd]));
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(x)))
    }
}
