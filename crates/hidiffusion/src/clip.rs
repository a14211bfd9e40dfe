//! transformers' `CLIPTextModel` and `CLIPTextModelWithProjection` (the text encoders
//! of Stable Diffusion): token + position embeddings, pre-norm causal transformer
//! layers, final layer norm, pooled output at the end-of-text token.

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::ClipTextConfig;
use crate::layers::{layer_norm, linear};
use crate::weights::{Init, Weights};

/// One pre-norm encoder layer.
#[derive(Module, Debug)]
pub struct ClipLayer {
    /// Before attention.
    pub layer_norm1: LayerNorm,
    /// Queries.
    pub q_proj: Linear,
    /// Keys.
    pub k_proj: Linear,
    /// Values.
    pub v_proj: Linear,
    /// Output.
    pub out_proj: Linear,
    /// Before the MLP.
    pub layer_norm2: LayerNorm,
    /// MLP in.
    pub fc1: Linear,
    /// MLP out.
    pub fc2: Linear,
}

/// The text encoder's outputs for `[B, L]` tokens.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// After the final layer norm, `[B, L, D]`.
    pub last_hidden_state: Tensor<3>,
    /// The embedding output, then each layer's output (no final norm), `[B, L, D]`
    /// each: `hidden_states[layers - 1]` is the penultimate layer SDXL uses.
    pub hidden_states: Vec<Tensor<3>>,
    /// `last_hidden_state` at each row's end-of-text token, `[B, D]`.
    pub pooled: Tensor<2>,
    /// `text_projection(pooled)` (models with a projection), `[B, P]`.
    pub text_embeds: Option<Tensor<2>>,
}

/// A CLIP text encoder.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// Token embedding.
    pub token_embedding: Embedding,
    /// Position embedding `[positions, D]`.
    pub position_embedding: Param<Tensor<2>>,
    /// Layers.
    pub layers: Vec<ClipLayer>,
    /// Final norm.
    pub final_layer_norm: LayerNorm,
    /// `text_projection` (SDXL's second encoder).
    pub text_projection: Option<Linear>,
    /// Heads.
    pub heads: usize,
    /// `quick_gelu` (true) or exact `gelu`.
    pub quick_gelu: bool,
    /// End-of-text id (2: pool at the highest id instead, as transformers' legacy path).
    pub eos_token_id: i64,
}

impl ClipTextModel {
    /// Builds the model of `config` from `w`.
    pub fn load(config: &ClipTextConfig, w: &mut Weights) -> Self {
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        // transformers 4 names the encoder's tensors `text_model.*`; transformers 5
        // saves CLIPTextModel(WithProjection) without that prefix. Both are read.
        let p = if !w.contains("text_model.embeddings.token_embedding.weight")
            && w.contains("embeddings.token_embedding.weight")
        {
            ""
        } else {
            "text_model."
        };
        w.skip(&format!("{p}embeddings.position_ids"));
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}encoder.layers.{i}");
                ClipLayer {
                    layer_norm1: layer_norm(w, &format!("{l}.layer_norm1"), d, eps),
                    q_proj: linear(w, &format!("{l}.self_attn.q_proj"), d, d, true),
                    k_proj: linear(w, &format!("{l}.self_attn.k_proj"), d, d, true),
                    v_proj: linear(w, &format!("{l}.self_attn.v_proj"), d, d, true),
                    out_proj: linear(w, &format!("{l}.self_attn.out_proj"), d, d, true),
                    layer_norm2: layer_norm(w, &format!("{l}.layer_norm2"), d, eps),
                    fc1: linear(
                        w,
                        &format!("{l}.mlp.fc1"),
                        d,
                        config.intermediate_size,
                        true,
                    ),
                    fc2: linear(
                        w,
                        &format!("{l}.mlp.fc2"),
                        config.intermediate_size,
                        d,
                        true,
                    ),
                }
            })
            .collect();
        let text_projection = config.with_projection().then(|| {
            linear(
                w,
                "text_projection",
                d,
                config.projection_dim.unwrap_or(d),
                false,
            )
        });
        ClipTextModel {
            token_embedding: Embedding {
                weight: Param::from_tensor(w.tensor(
                    &format!("{p}embeddings.token_embedding.weight"),
                    [config.vocab_size, d],
                    Init::Normal(0.02),
                )),
            },
            position_embedding: Param::from_tensor(w.tensor(
                &format!("{p}embeddings.position_embedding.weight"),
                [config.max_position_embeddings, d],
                Init::Normal(0.01),
            )),
            layers,
            final_layer_norm: layer_norm(w, &format!("{p}final_layer_norm"), d, eps),
            text_projection,
            heads: config.num_attention_heads,
            quick_gelu: config.hidden_act == "quick_gelu",
            eos_token_id: config.eos_token_id,
        }
    }

    /// Encodes `ids` (`[B, L]` rows, no attention mask: Stable Diffusion pipelines do
    /// not pass one).
    pub fn forward(&self, ids: &[Vec<i64>]) -> ClipOutput {
        let device = self.position_embedding.device();
        let (b, l) = (ids.len(), ids[0].len());
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, l]), &device);
        let positions: Tensor<3> = self.position_embedding.val().narrow(0, 0, l).unsqueeze();
        let mut x = self.token_embedding.forward(tokens) + positions;
        let mut hidden_states = vec![x.clone()];
        let d = x.dims()[2];
        let (h, hd) = (self.heads, d / self.heads);
        let split = |t: Tensor<3>| t.reshape([b, l, h, hd]).swap_dims(1, 2);
        for layer in &self.layers {
            let n = layer.layer_norm1.forward(x.clone());
            let attn = attention(
                split(layer.q_proj.forward(n.clone())),
                split(layer.k_proj.forward(n.clone())),
                split(layer.v_proj.forward(n)),
                None,
                None,
                AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                },
            );
            x = x + layer
                .out_proj
                .forward(attn.swap_dims(1, 2).reshape([b, l, d]));
            let n = layer.fc1.forward(layer.layer_norm2.forward(x.clone()));
            let act = if self.quick_gelu {
                n.clone() * sigmoid(n.mul_scalar(1.702))
            } else {
                gelu(n)
            };
            x = x + layer.fc2.forward(act);
            hidden_states.push(x.clone());
        }
        let last = self.final_layer_norm.forward(x);
        // transformers: with eos_token_id 2 (the original CLIP configs) the pooled token
        // is the highest id in the row (end-of-text is the largest id); otherwise the
        // first occurrence of eos_token_id.
        let rows: Vec<Tensor<2>> = ids
            .iter()
            .enumerate()
            .map(|(row, r)| {
                let pos = if self.eos_token_id == 2 {
                    r.iter()
                        .enumerate()
                        .fold(
                            (0, i64::MIN),
                            |best, (i, &t)| if t > best.1 { (i, t) } else { best },
                        )
                        .0
                } else {
                    r.iter()
                        .position(|&t| t == self.eos_token_id)
                        .unwrap_or(l - 1)
                };
                last.clone()
                    .narrow(0, row, 1)
                    .narrow(1, pos, 1)
                    .reshape([1, d])
            })
            .collect();
        let pooled = Tensor::cat(rows, 0);
        let text_embeds = self
            .text_projection
            .as_ref()
            .map(|p| p.forward(pooled.clone()));
        ClipOutput {
            last_hidden_state: last,
            hidden_states,
            pooled,
            text_embeds,
        }
    }
}
