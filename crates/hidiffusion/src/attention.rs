//! diffusers' `Attention` (the `AttnProcessor2_0` path) and the transformer blocks of
//! the UNet: `BasicTransformerBlock` and `Transformer2DModel` with convolution or linear
//! `proj_in` / `proj_out`.

use burn::module::Module;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::layers::{Conv2d, group_norm, layer_norm, linear};
use crate::weights::Weights;

/// Multi-head attention with `to_q`, `to_k`, `to_v` (no bias) and `to_out.0`.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// Output.
    pub to_out: Linear,
    /// Heads.
    pub heads: usize,
}

impl Attention {
    pub(crate) fn load(
        w: &mut Weights,
        prefix: &str,
        dim: usize,
        context_dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Self {
        Attention {
            to_q: linear(w, &format!("{prefix}.to_q"), dim, dim, qkv_bias),
            to_k: linear(w, &format!("{prefix}.to_k"), context_dim, dim, qkv_bias),
            to_v: linear(w, &format!("{prefix}.to_v"), context_dim, dim, qkv_bias),
            to_out: linear(w, &format!("{prefix}.to_out.0"), dim, dim, true),
            heads,
        }
    }

    /// `softmax(q k^T / sqrt(d)) v` per head, for queries from `x [B, N, C]` and keys and
    /// values from `context [B, M, C']` (`x` itself for self-attention). Runs on burn's
    /// fused attention, which on flex tiles long sequences without materialising the
    /// `N x M` score matrix.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let context = context.unwrap_or_else(|| x.clone());
        let m = context.dims()[1];
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        let inner = q.dims()[2];
        let (h, d) = (self.heads, inner / self.heads);
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, h, d]).swap_dims(1, 2);
        let out = attention(
            split(q, n),
            split(k, m),
            split(v, m),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        self.to_out
            .forward(out.swap_dims(1, 2).reshape([b, n, inner]))
    }
}

/// GEGLU feed-forward: `net.2(h * gelu(g))` with `[h, g] = net.0.proj(x)`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `ff.net.0.proj`, `dim -> 2 * 4 dim`.
    pub proj_in: Linear,
    /// `ff.net.2`, `4 dim -> dim`.
    pub proj_out: Linear,
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hg = self.proj_in.forward(x);
        let inner = hg.dims()[2] / 2;
        let hidden = hg.clone().narrow(2, 0, inner);
        let gate = hg.narrow(2, inner, inner);
        self.proj_out.forward(hidden * gelu(gate))
    }
}

/// Where a self-attention sits in the UNet, for hooks that replace it (MSW-MSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSite {
    /// Down, mid or up path.
    pub path: Path,
    /// Block index on that path.
    pub block: usize,
    /// `attentions.{index}` inside the block.
    pub attention: usize,
    /// `transformer_blocks.{index}` inside that attention.
    pub transformer: usize,
}

/// The three parts of a UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `down_blocks`.
    Down,
    /// `mid_block`.
    Mid,
    /// `up_blocks`.
    Up,
}

/// Replaces a transformer block's self-attention (`attn1`). `x` is the normed input
/// `[B, H*W, C]` of a `H x W` map.
pub trait SelfAttentionHook {
    /// Computes `attn1` at `site`; the default runs it unchanged.
    fn self_attention(
        &mut self,
        site: AttentionSite,
        attn: &Attention,
        x: Tensor<3>,
        size: [usize; 2],
    ) -> Tensor<3> {
        let _ = (site, size);
        attn.forward(x, None)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention and GEGLU, each pre-norm
/// with a residual.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// Before self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Before cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention on the text embeddings.
    pub attn2: Attention,
    /// Before the feed-forward.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
}

impl TransformerBlock {
    fn load(w: &mut Weights, prefix: &str, dim: usize, context_dim: usize, heads: usize) -> Self {
        TransformerBlock {
            norm1: layer_norm(w, &format!("{prefix}.norm1"), dim, 1e-5),
            attn1: Attention::load(w, &format!("{prefix}.attn1"), dim, dim, heads, false),
            norm2: layer_norm(w, &format!("{prefix}.norm2"), dim, 1e-5),
            attn2: Attention::load(
                w,
                &format!("{prefix}.attn2"),
                dim,
                context_dim,
                heads,
                false,
            ),
            norm3: layer_norm(w, &format!("{prefix}.norm3"), dim, 1e-5),
            ff: FeedForward {
                proj_in: linear(w, &format!("{prefix}.ff.net.0.proj"), dim, dim * 8, true),
                proj_out: linear(w, &format!("{prefix}.ff.net.2"), dim * 4, dim, true),
            },
        }
    }

    fn forward(
        &self,
        x: Tensor<3>,
        context: &Tensor<3>,
        size: [usize; 2],
        site: AttentionSite,
        hook: &mut dyn SelfAttentionHook,
    ) -> Tensor<3> {
        let x = x.clone() + hook.self_attention(site, &self.attn1, self.norm1.forward(x), size);
        let x = x.clone()
            + self
                .attn2
                .forward(self.norm2.forward(x), Some(context.clone()));
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }
}

/// `proj_in` / `proj_out`: a 1x1 convolution (SD 1.x) or a linear layer (SD 2.x, SDXL).
#[derive(Module, Debug)]
pub enum Projection {
    /// On the `[B, C, H, W]` map.
    Conv(Conv2d),
    /// On the `[B, H*W, C]` tokens.
    Linear(Linear),
}

impl Projection {
    fn load(w: &mut Weights, prefix: &str, dim: usize, linear_projection: bool) -> Self {
        if linear_projection {
            Projection::Linear(linear(w, prefix, dim, dim, true))
        } else {
            Projection::Conv(Conv2d::load(w, prefix, [dim, dim], 1, 1, 0))
        }
    }
}

/// `Transformer2DModel`: group norm, `proj_in`, transformer blocks over the `H*W`
/// tokens, `proj_out`, residual.
#[derive(Module, Debug)]
pub struct Transformer2d {
    /// Group norm (eps 1e-6).
    pub norm: GroupNorm,
    /// In projection.
    pub proj_in: Projection,
    /// Blocks.
    pub blocks: Vec<TransformerBlock>,
    /// Out projection.
    pub proj_out: Projection,
}

impl Transformer2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        w: &mut Weights,
        prefix: &str,
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
    ) -> Self {
        Transformer2d {
            norm: group_norm(w, &format!("{prefix}.norm"), groups, channels, 1e-6),
            proj_in: Projection::load(w, &format!("{prefix}.proj_in"), channels, linear_projection),
            blocks: (0..layers)
                .map(|i| {
                    TransformerBlock::load(
                        w,
                        &format!("{prefix}.transformer_blocks.{i}"),
                        channels,
                        context_dim,
                        heads,
                    )
                })
                .collect(),
            proj_out: Projection::load(
                w,
                &format!("{prefix}.proj_out"),
                channels,
                linear_projection,
            ),
        }
    }

    /// Applies the model to `x [B, C, H, W]` with text embeddings `context`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        context: &Tensor<3>,
        site: (Path, usize, usize),
        hook: &mut dyn SelfAttentionHook,
    ) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let to_tokens = |t: Tensor<4>| t.reshape([b, c, h * wd]).swap_dims(1, 2);
        let normed = self.norm.forward(x.clone());
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(lin) => lin.forward(to_tokens(normed)),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let site = AttentionSite {
                path: site.0,
                block: site.1,
                attention: site.2,
                transformer: i,
            };
            tokens = block.forward(tokens, context, [h, wd], site, hook);
        }
        let to_map = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, wd]);
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(tokens)),
            Projection::Linear(lin) => to_map(lin.forward(tokens)),
        };
        out + x
    }
}
