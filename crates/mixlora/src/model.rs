//! The decoder: token embedding, `num_hidden_layers` pre-norm blocks (RMSNorm,
//! grouped-query attention with rotate-half RoPE, RMSNorm, SwiGLU MLP), a final RMSNorm
//! and the output head (or the embedding matrix when tied), as transformers' `Llama*`,
//! `Mistral*` and `Qwen2*` classes compute them.

use burn::module::{Module, Param};
use burn::nn::{Dropout, Embedding, Linear};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Int, Tensor};

use crate::config::DecoderConfig;
use crate::moe::{LoraMoe, MixLora, RouterRecord};

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

/// A low-rank adapter on a linear layer: LoRA (`y = W x + scale * B A x`) or, with a
/// magnitude vector, DoRA (`y = m / |W + scale * B A| * (W + scale * B A) x`, the column
/// norm detached as in the DoRA paper and PEFT). Stored in burn's `[in, out]` orientation.
#[derive(Module, Debug)]
pub struct Adapter {
    /// `A`, `[in, r]` (PEFT's `lora_A.weight` transposed).
    pub lora_a: Param<Tensor<2>>,
    /// `B`, `[r, out]` (PEFT's `lora_B.weight` transposed).
    pub lora_b: Param<Tensor<2>>,
    /// DoRA magnitude, `[out]`.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input (active only on an autodiff device in training).
    pub dropout: Dropout,
}

/// A linear layer of the decoder, with an optional adapter.
#[derive(Module, Debug)]
pub struct Projection {
    /// The pretrained layer (frozen when an adapter trains).
    pub base: Linear,
    /// The adapter.
    pub adapter: Option<Adapter>,
    /// A LoRAMoE mixture of LoRA experts on this projection.
    pub mixture: Option<LoraMoe>,
    /// The adapters of fused slots 1.. (slot 0 is `adapter`), for multi-adapter
    /// training over one frozen base.
    pub more: Vec<Option<Adapter>>,
}

/// Rows of a fused batch per adapter slot (slot 0 first): the batch is the slots' rows
/// one after the other.
pub type Slots<'a> = Option<&'a [usize]>;

impl Projection {
    /// The plain layer.
    pub fn new(base: Linear) -> Self {
        Projection {
            base,
            adapter: None,
            mixture: None,
            more: Vec::new(),
        }
    }

    /// The adapter of fused slot `slot`.
    pub fn slot_adapter(&self, slot: usize) -> Option<&Adapter> {
        if slot == 0 {
            self.adapter.as_ref()
        } else {
            self.more.get(slot - 1).and_then(Option::as_ref)
        }
    }

    /// Applies the layer to a fused batch: the base matrix product once over all rows,
    /// then each slot's adapter on its own rows.
    pub fn forward_slots(&self, x: Tensor<3>, slots: Slots<'_>) -> Tensor<3> {
        let Some(rows) = slots.filter(|r| r.len() > 1) else {
            return self.forward(x);
        };
        let plain = x.clone().matmul(self.base.weight.val().unsqueeze());
        let bias = |t: Tensor<3>| match &self.base.bias {
            Some(b) => t + b.val().unsqueeze(),
            None => t,
        };
        let mut parts = Vec::with_capacity(rows.len());
        let mut start = 0;
        for (slot, &n) in rows.iter().enumerate() {
            let base_rows = plain.clone().narrow(0, start, n);
            parts.push(match self.slot_adapter(slot) {
                None => bias(base_rows),
                Some(a) => a.apply(&self.base, x.clone().narrow(0, start, n), base_rows),
            });
            start += n;
        }
        Tensor::cat(parts, 0)
    }

    /// Applies the layer and its adapter.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let Some(mixture) = &self.mixture {
            return mixture.forward(x.clone(), self.base.forward(x));
        }
        let Some(adapter) = &self.adapter else {
            return self.base.forward(x);
        };
        let dropped = adapter.dropout.forward(x.clone());
        let low_rank = dropped
            .clone()
            .matmul(adapter.lora_a.val().unsqueeze())
            .matmul(adapter.lora_b.val().unsqueeze())
            .mul_scalar(adapter.scale);
        let Some(magnitude) = &adapter.magnitude else {
            return self.base.forward(x) + low_rank;
        };
        let weight = self.base.weight.val();
        let merged = weight.clone()
            + adapter
                .lora_a
                .val()
                .matmul(adapter.lora_b.val())
                .mul_scalar(adapter.scale);
        let norm = merged.square().sum_dim(0).sqrt().detach(); // [1, out]
        let factor = (magnitude.val().unsqueeze::<2>() / norm).unsqueeze::<3>();
        let with_bias = |t: Tensor<3>| match &self.base.bias {
            Some(b) => t + b.val().unsqueeze(),
            None => t,
        };
        if adapter.dropout.prob == 0.0 || !x.device().is_autodiff() {
            // `m / |W + sBA| (W x + s B A x) + b`.
            return with_bias((x.matmul(weight.unsqueeze()) + low_rank) * factor);
        }
        // PEFT's form under dropout: the base output keeps the clean input, the DoRA
        // correction `(m/|.| - 1) W x' + m/|.| s B A x'` sees the dropped one.
        let correction =
            dropped.matmul(weight.unsqueeze()) * (factor.clone() - 1.0) + low_rank * factor;
        self.base.forward(x) + correction
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries.
    pub q_proj: Projection,
    /// Keys.
    pub k_proj: Projection,
    /// Values.
    pub v_proj: Projection,
    /// Output.
    pub o_proj: Projection,
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

/// Keys and values of the positions a decoder has already seen, per layer, so that
/// generation computes each new token against them instead of re-running the prefix.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Per layer: keys and values `[B, kv_heads, seen, head_dim]` (after RoPE, before
    /// the query-head repeat).
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    seen: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.seen
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }
}

impl Attention {
    /// `x [B, L, D]` at positions `start..start + L`; `masked [B, 1, L, start + L]` is
    /// true where a query may not see a key (`None`: it sees every key). With a cache
    /// slot, the new keys and values are appended to it and attention runs over all of
    /// them.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        masked: Option<&Tensor<4, Bool>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        slots: Slots<'_>,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let q = rope(
            split_heads(self.q_proj.forward_slots(x.clone(), slots), h, d),
            cos,
            sin,
        );
        let mut k = rope(
            split_heads(self.k_proj.forward_slots(x.clone(), slots), kv, d),
            cos,
            sin,
        );
        let mut v = split_heads(self.v_proj.forward_slots(x, slots), kv, d);
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let keys = k.dims()[2];
        // Each key/value head serves `h / kv` consecutive query heads.
        let repeat = |t: Tensor<4>| -> Tensor<4> {
            if h == kv {
                return t;
            }
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv, h / kv, keys, d])
                .reshape([b, h, keys, d])
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
        // The most negative finite value, as transformers uses: a fully masked row (a
        // padding query) then averages instead of producing NaN.
        let scores = match masked {
            Some(masked) => scores.mask_fill(masked.clone(), f32::MIN),
            None => scores,
        };
        let out = softmax(scores, 3).matmul(v);
        self.o_proj
            .forward_slots(out.swap_dims(1, 2).reshape([b, l, h * d]), slots)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`, or a MixLoRA mixture of experts over the
/// same frozen projections.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Projection,
    /// Up projection.
    pub up_proj: Projection,
    /// Down projection.
    pub down_proj: Projection,
    /// MixLoRA experts and router (replaces the plain SwiGLU when present).
    pub moe: Option<MixLora>,
    /// The mixtures of fused slots 1.. (`None`: that slot's adapter is plain LoRA).
    pub more_moe: Vec<Option<MixLora>>,
}

impl Mlp {
    /// The mixture of fused slot `slot`.
    pub fn slot_moe(&self, slot: usize) -> Option<&MixLora> {
        if slot == 0 {
            self.moe.as_ref()
        } else {
            self.more_moe.get(slot - 1).and_then(Option::as_ref)
        }
    }

    /// Applies the MLP to a fused batch; one router record per slot with a mixture.
    pub fn forward_slots(
        &self,
        x: Tensor<3>,
        slots: Slots<'_>,
    ) -> (Tensor<3>, Vec<Option<RouterRecord>>) {
        let Some(rows) = slots.filter(|r| r.len() > 1) else {
            let (y, record) = self.forward(x);
            return (y, vec![record]);
        };
        if (0..rows.len()).all(|s| self.slot_moe(s).is_none()) {
            // Every slot is plain LoRA: each base product once over the fused batch.
            let g = self.gate_proj.forward_slots(x.clone(), slots);
            let u = self.up_proj.forward_slots(x, slots);
            let y = self.down_proj.forward_slots(silu(g) * u, slots);
            return (y, vec![None; rows.len()]);
        }
        let mut parts = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        let mut start = 0;
        for (slot, &n) in rows.iter().enumerate() {
            let xs = x.clone().narrow(0, start, n);
            match self.slot_moe(slot) {
                Some(moe) => {
                    let (y, record) = moe.forward(
                        xs,
                        &self.gate_proj.base,
                        &self.up_proj.base,
                        &self.down_proj.base,
                    );
                    parts.push(y);
                    records.push(Some(record));
                }
                None => {
                    let project = |p: &Projection, t: Tensor<3>| match p.slot_adapter(slot) {
                        None => p.base.forward(t),
                        Some(a) => {
                            let plain = t.clone().matmul(p.base.weight.val().unsqueeze());
                            a.apply(&p.base, t, plain)
                        }
                    };
                    let h = silu(project(&self.gate_proj, xs.clone())) * project(&self.up_proj, xs);
                    parts.push(project(&self.down_proj, h));
                    records.push(None);
                }
            }
            start += n;
        }
        (Tensor::cat(parts, 0), records)
    }

    /// Applies the MLP; with a mixture, also returns its router's record.
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Option<RouterRecord>) {
        if let Some(moe) = &self.moe {
            let (y, record) = moe.forward(
                x,
                &self.gate_proj.base,
                &self.up_proj.base,
                &self.down_proj.base,
            );
            return (y, Some(record));
        }
        let y = self
            .down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x));
        (y, None)
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
        masked: Option<&Tensor<4, Bool>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        slots: Slots<'_>,
    ) -> (Tensor<3>, Vec<Option<RouterRecord>>) {
        let h = x.clone()
            + self.self_attn.forward(
                self.input_layernorm.forward(x),
                cos,
                sin,
                masked,
                cache,
                slots,
            );
        let (y, records) = self
            .mlp
            .forward_slots(self.post_attention_layernorm.forward(h.clone()), slots);
        (h + y, records)
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
    /// Each query sees at most this many most recent positions (itself included), as
    /// Mistral's sliding window; `None`: every earlier position.
    pub sliding_window: Option<usize>,
}

impl Decoder {
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.weight.dims()[0]
    }

    /// `cos`, `sin` of positions `start..start + len`, `[1, 1, len, head_dim]` (the
    /// frequencies repeated over both halves).
    fn rotary(
        &self,
        start: usize,
        len: usize,
        device: &burn::tensor::Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let half = self.inverse_frequencies.len();
        let mut angles = Vec::with_capacity(len * 2 * half);
        for p in start..start + len {
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
        self.run(input_ids, attention_mask, None, None).0
    }

    /// [`forward`](Self::forward) that also returns the router record of every MixLoRA
    /// layer (empty without mixtures), for the auxiliary loss and routing statistics.
    pub fn forward_routed(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> (Tensor<3>, Vec<RouterRecord>) {
        let (logits, mut records) = self.run(input_ids, attention_mask, None, None);
        (logits, records.pop().unwrap_or_default())
    }

    /// A fused multi-adapter batch: rows `slots[0]` belong to adapter slot 0, the next
    /// `slots[1]` to slot 1, and so on. Returns the logits and, per slot, the router
    /// records of its mixtures.
    pub fn forward_fused(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        slots: &[usize],
    ) -> (Tensor<3>, Vec<Vec<RouterRecord>>) {
        assert_eq!(
            slots.iter().sum::<usize>(),
            input_ids.dims()[0],
            "slot rows must cover the batch"
        );
        self.run(input_ids, attention_mask, None, Some(slots))
    }

    /// Logits `[B, L, vocab]` for `input_ids [B, L]` that continue what `cache` has
    /// seen (positions `cache.len()..`), appending their keys and values to it. Rows are
    /// unpadded; a fresh cache makes this [`forward`](Self::forward) without a mask.
    pub fn forward_cached(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
            cache.seen = 0;
        }
        let l = input_ids.dims()[1];
        let (logits, _) = self.run(input_ids, None, Some(cache), None);
        cache.seen += l;
        logits
    }

    fn run(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        mut cache: Option<&mut KvCache>,
        slots: Slots<'_>,
    ) -> (Tensor<3>, Vec<Vec<RouterRecord>>) {
        let device = input_ids.device();
        let [b, l] = input_ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.seen);
        let (cos, sin) = self.rotary(start, l, &device);
        // True above the diagonal shifted by `start` (burn's `tril_mask` is false on and
        // below it): a query may not see later keys. A single new token sees them all.
        let mut masked = (l > 1).then(|| {
            Tensor::<2, Bool>::tril_mask([l, start + l], start as i64, &device)
                .unsqueeze::<4>()
                .expand([b, 1, l, start + l])
        });
        // Keys at or beyond the window behind the query (key <= query - window) are
        // hidden, as transformers' sliding-window causal mask.
        if let Some(window) = self.sliding_window
            && start + l > window
        {
            let queries = Tensor::<1, Int>::arange(start as i64..(start + l) as i64, &device)
                .reshape([l, 1])
                .expand([l, start + l]);
            let keys = Tensor::<1, Int>::arange(0..(start + l) as i64, &device)
                .reshape([1, start + l])
                .expand([l, start + l]);
            let outside = keys
                .lower_equal(queries.sub_scalar(window as i64))
                .unsqueeze::<4>()
                .expand([b, 1, l, start + l]);
            masked = Some(match masked {
                Some(causal) => causal.bool_or(outside),
                None => outside,
            });
        }
        if let Some(mask) = attention_mask {
            let padding = mask
                .equal_elem(0)
                .reshape([b, 1, 1, l])
                .expand([b, 1, l, l]);
            masked = Some(match masked {
                Some(causal) => causal.bool_or(padding),
                None => padding,
            });
        }
        let mut x = self.embed_tokens.forward(input_ids);
        let mut records: Vec<Vec<RouterRecord>> = vec![Vec::new(); slots.map_or(1, <[usize]>::len)];
        for (i, layer) in self.layers.iter().enumerate() {
            let cached = cache.as_mut().map(|c| &mut c.layers[i]);
            let (y, per_slot) = layer.forward(x, &cos, &sin, masked.as_ref(), cached, slots);
            x = y;
            for (slot, record) in per_slot.into_iter().enumerate() {
                records[slot].extend(record);
            }
        }
        let x = self.norm.forward(x);
        let logits = match &self.lm_head {
            Some(head) => head.forward(x),
            None => x.matmul(self.embed_tokens.weight.val().transpose().unsqueeze()),
        };
        (logits, records)
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
