//! The decoder: token embedding, `num_hidden_layers` pre-norm blocks (RMSNorm,
//! grouped-query attention with rotate-half RoPE, RMSNorm, SwiGLU MLP), a final RMSNorm
//! and the output head (or the embedding matrix when tied), as transformers' `Llama*`,
//! `Mistral*` and `Qwen2*` classes compute them.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Int, Tensor};

use crate::config::DecoderConfig;

/// Root-mean-square norm with a learned gain: `x / sqrt(mean(x^2) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain.
    pub weight: Param<Tensor<1>>,
    /// Epsilon inside the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt();
        x / rms * self.weight.val().unsqueeze()
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries.
    pub q_proj: Linear,
    /// Keys.
    pub k_proj: Linear,
    /// Values.
    pub v_proj: Linear,
    /// Output.
    pub o_proj: Linear,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

/// `[B, L, heads * d]` -> `[B, heads, L, d]`.
fn split_heads(x: Tensor<3>, heads: usize, d: usize) -> Tensor<4> {
    let [b, l, _] = x.dims();
    x.reshape([b, l, heads, d]).swap_dims(1, 2)
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half([x1, x2]) = [-x2, x1]` over the
/// two halves of the head dimension. `cos`, `sin`: `[1, 1, L, d]`.
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

impl Attention {
    /// `x [B, L, D]`; `masked [B, 1, L, L]` is true where a query may not see a key.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        masked: &Tensor<4, Bool>,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let q = rope(split_heads(self.q_proj.forward(x.clone()), h, d), cos, sin);
        let k = rope(split_heads(self.k_proj.forward(x.clone()), kv, d), cos, sin);
        let v = split_heads(self.v_proj.forward(x), kv, d);
        // Each key/value head serves `h / kv` consecutive query heads.
        let repeat = |t: Tensor<4>| -> Tensor<4> {
            if h == kv {
                return t;
            }
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv, h / kv, l, d])
                .reshape([b, h, l, d])
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
        // The most negative finite value, as transformers uses: a fully masked row (a
        // padding query) then averages instead of producing NaN.
        let scores = scores.mask_fill(masked.clone(), f32::MIN);
        let out = softmax(scores, 3).matmul(v);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, l, h * d]))
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl Mlp {
    /// Applies the MLP.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// `x + attn(norm(x))`, then `+ mlp(norm(.))`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        masked: &Tensor<4, Bool>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, masked);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// A decoder-only language model.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// The layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output head (`None`: tied to the embedding).
    pub lm_head: Option<Linear>,
    /// RoPE inverse frequencies, `head_dim / 2`.
    pub inverse_frequencies: Vec<f32>,
}

impl Decoder {
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.weight.dims()[0]
    }

    /// `cos`, `sin` of positions `0..len`, `[1, 1, len, head_dim]` (the frequencies
    /// repeated over both halves).
    fn rotary(&self, len: usize, device: &burn::tensor::Device) -> (Tensor<4>, Tensor<4>) {
        let half = self.inverse_frequencies.len();
        let mut angles = Vec::with_capacity(len * 2 * half);
        for p in 0..len {
            for _ in 0..2 {
                angles.extend(self.inverse_frequencies.iter().map(|f| p as f32 * f));
            }
        }
        let angles = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(angles, [len, 2 * half]),
            device,
        )
        .reshape([1, 1, len, 2 * half]);
        (angles.clone().cos(), angles.sin())
    }

    /// Logits `[B, L, vocab]` for `input_ids [B, L]`; `attention_mask [B, L]` (1: token,
    /// 0: padding) hides padded keys. Positions run `0..L` in every row, as transformers'
    /// forward without `position_ids`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let [b, l] = input_ids.dims();
        let (cos, sin) = self.rotary(l, &device);
        // True above the diagonal (burn's `tril_mask` is false on and below it): a
        // query may not see later keys.
        let mut masked = Tensor::<2, Bool>::tril_mask([l, l], 0, &device)
            .unsqueeze::<4>()
            .expand([b, 1, l, l]);
        if let Some(mask) = attention_mask {
            let padding = mask
                .equal_elem(0)
                .reshape([b, 1, 1, l])
                .expand([b, 1, l, l]);
            masked = masked.bool_or(padding);
        }
        let mut x = self.embed_tokens.forward(input_ids);
        for layer in &self.layers {
            x = layer.forward(x, &cos, &sin, &masked);
        }
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => x.matmul(self.embed_tokens.weight.val().transpose().unsqueeze()),
        }
    }
}

/// Shapes every tensor of a decoder for `config` must have, by Hugging Face name.
pub fn expected_tensors(config: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
    let (hid, inter) = (config.hidden_size, config.intermediate_size);
    let (q, kv) = (
        config.num_attention_heads * config.head_dim(),
        config.kv_heads() * config.head_dim(),
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, hid],
    )];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut push = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        push("input_layernorm.weight", vec![hid]);
        push("post_attention_layernorm.weight", vec![hid]);
        push("self_attn.q_proj.weight", vec![q, hid]);
        push("self_attn.k_proj.weight", vec![kv, hid]);
        push("self_attn.v_proj.weight", vec![kv, hid]);
        push("self_attn.o_proj.weight", vec![hid, q]);
        if config.qkv_bias() {
            push("self_attn.q_proj.bias", vec![q]);
            push("self_attn.k_proj.bias", vec![kv]);
            push("self_attn.v_proj.bias", vec![kv]);
        }
        if config.o_bias() {
            push("self_attn.o_proj.bias", vec![hid]);
        }
        push("mlp.gate_proj.weight", vec![inter, hid]);
        push("mlp.up_proj.weight", vec![inter, hid]);
        push("mlp.down_proj.weight", vec![hid, inter]);
    }
    out.push(("model.norm.weight".to_string(), vec![hid]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, hid]));
    }
    out
}
