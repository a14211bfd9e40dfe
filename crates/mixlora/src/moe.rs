//! MixLoRA (Li et al., arXiv 2404.15159): the FFN of a frozen decoder becomes a sparse
//! mixture of experts, each expert the shared frozen SwiGLU with its own LoRA on the
//! gate, up and down projections, `E_e(x) = (W2 + s B2 A2)[silu((W1 + s B1 A1) x) *
//! (W3 + s B3 A3) x]`; an fp32 router `Linear(d, N)` without bias picks experts per
//! token and the block returns `sum_k w_k E_k(x)` (no dense term). Also the routing
//! variants MoE-PEFT compares against: dynamic top-p, switch (top-1 with capacity and
//! z-loss), and LoRAMoE (a dense mixture of LoRA experts per projection).
//!
//! As the official code (TUDB-Labs `mixlora` 0.2.3 and MoE-PEFT 2.0.2): softmax over all
//! N experts, top-k, the k weights renormalised; the load-balance loss pooled over all
//! layers (Mixtral's formula, padding masked). Differences, deliberate: dropout follows
//! burn's training state (the official evaluators leave LoRA dropout on at inference),
//! and the switch block computes its output at inference too (MoE-PEFT's returns the
//! input unchanged there).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::ops::IndexingUpdateOp;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use crate::model::Adapter;

/// How the router turns probabilities into expert choices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Routing {
    /// MixLoRA: the `k` most probable experts, their weights renormalised to sum 1.
    TopK {
        /// Experts per token.
        k: usize,
    },
    /// mixlora-dynamic: the fewest most probable experts whose probability exceeds
    /// `top_p` (probabilities divided by `temperature` first when it is positive);
    /// their raw probabilities are the weights.
    Dynamic {
        /// Probability mass to reach.
        top_p: f64,
        /// Divides the probabilities (0: off).
        temperature: f64,
    },
    /// mixlora-switch: the most probable expert, at most `capacity` tokens per expert
    /// and sequence (in position order); a token over capacity passes its input
    /// through; the output is scaled by the chosen probability.
    Switch {
        /// Tokens per expert per sequence.
        capacity: usize,
    },
}

/// One expert: LoRA deltas on the shared gate, up and down projections.
#[derive(Module, Debug)]
pub struct Expert {
    /// On `gate_proj` (W1).
    pub gate: Adapter,
    /// On `up_proj` (W3).
    pub up: Adapter,
    /// On `down_proj` (W2).
    pub down: Adapter,
}

/// The mixture that replaces a decoder layer's MLP.
#[derive(Module, Debug)]
pub struct MixLora {
    /// Router weight, `[d, N]` (the official `moe_gate.weight` transposed).
    pub router: Param<Tensor<2>>,
    /// The experts.
    pub experts: Vec<Expert>,
    /// Routing rule.
    #[module(skip)]
    pub routing: Routing,
    /// Training-time multiplicative jitter `U(1 - eps, 1 + eps)` on the block input
    /// (MixLoRA, dynamic; for switch only on the router's copy).
    #[module(skip)]
    pub jitter: f64,
    /// Compute `W1 x` and `W3 x` once for all tokens and slice each expert's rows out
    /// of them (the paper's high-throughput path); `false` runs the plain per-expert
    /// projections.
    #[module(skip)]
    pub fused: bool,
}

/// What a mixture's router decided for one layer, for the auxiliary losses and the
/// routing statistics.
#[derive(Debug, Clone)]
pub struct RouterRecord {
    /// Router logits, `[tokens, N]` (tokens in batch-major order).
    pub logits: Tensor<2>,
    /// The experts each token was routed to (for switch: its argmax, kept or not).
    pub chosen: Vec<Vec<usize>>,
    /// The routing rule.
    pub routing: Routing,
}

/// A dense LoRAMoE mixture on one projection: `y = W x + sum_e softmax(x Wg)_e s B_e A_e
/// x`, its router on the projection's own input.
#[derive(Module, Debug)]
pub struct LoraMoe {
    /// Router, `[in, N]`.
    pub router: Param<Tensor<2>>,
    /// One LoRA delta per expert.
    pub experts: Vec<Adapter>,
}

impl LoraMoe {
    /// The projection's output for `x [.., in]` given its base output.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, base_out: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let flat: Tensor<2> = x.reshape([rows, d_in]);
        let probs = softmax(flat.clone().matmul(self.router.val()), 1);
        let mut out: Tensor<2> = {
            let out_dims = base_out.dims();
            base_out.reshape([rows, out_dims[D - 1]])
        };
        for (e, expert) in self.experts.iter().enumerate() {
            let w = probs.clone().narrow(1, e, 1);
            out = out + expert.delta(flat.clone()) * w;
        }
        let mut out_dims = dims;
        out_dims[D - 1] = out.dims()[1];
        out.reshape(out_dims)
    }
}

impl Adapter {
    /// `scale * B A dropout(x)` for `x [.., in]`.
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.dropout
            .forward(x)
            .matmul(self.lora_a.val().unsqueeze())
            .matmul(self.lora_b.val().unsqueeze())
            .mul_scalar(self.scale)
    }

    /// DoRA's per-output scale `m / |W + s A B|` (norm over the input, detached), `[1,
    /// out]`, for a base weight `[in, out]`; `None` for plain LoRA.
    pub fn dora_factor(&self, weight: Tensor<2>) -> Option<Tensor<2>> {
        let magnitude = self.magnitude.as_ref()?;
        let merged = weight
            + self
                .lora_a
                .val()
                .matmul(self.lora_b.val())
                .mul_scalar(self.scale);
        let norm = merged.square().sum_dim(0).sqrt().detach();
        Some(magnitude.val().unsqueeze::<2>() / norm)
    }

    /// `base_out + delta(x)`, or for DoRA `factor * (base_out + delta(x))` as the
    /// official MixLoRA code scales base and LoRA together (`base_out` is `W x` without
    /// bias); the bias is added last.
    pub fn apply<const D: usize>(
        &self,
        base: &Linear,
        x: Tensor<D>,
        base_out: Tensor<D>,
    ) -> Tensor<D> {
        let summed = base_out + self.delta(x);
        let out = match self.dora_factor(base.weight.val()) {
            Some(factor) => summed * factor.unsqueeze(),
            None => summed,
        };
        match &base.bias {
            Some(b) => out + b.val().unsqueeze(),
            None => out,
        }
    }
}

/// `x W` without the bias.
fn matmul_weight(base: &Linear, x: Tensor<2>) -> Tensor<2> {
    x.matmul(base.weight.val())
}

/// Row indices as an Int tensor.
fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let values: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(values, [rows.len()]), device)
}

/// The experts chosen for each token from the probabilities `probs` (`[tokens * N]`
/// row-major), and, for switch routing, whether the token is within capacity.
fn choose(
    routing: Routing,
    probs: &[f32],
    n: usize,
    seq_len: usize,
) -> (Vec<Vec<usize>>, Vec<bool>) {
    let tokens = probs.len() / n;
    let mut chosen = Vec::with_capacity(tokens);
    let mut kept = vec![true; tokens];
    // Descending probability, ties to the lower index (torch.topk / sort).
    let order = |row: &[f32]| {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        idx
    };
    match routing {
        Routing::TopK { k } => {
            for row in probs.chunks_exact(n) {
                chosen.push(order(row)[..k.min(n)].to_vec());
            }
        }
        Routing::Dynamic { top_p, temperature } => {
            for row in probs.chunks_exact(n) {
                let scaled: Vec<f32> = if temperature > 0.0 {
                    row.iter().map(|p| p / temperature as f32).collect()
                } else {
                    row.to_vec()
                };
                let idx = order(&scaled);
                // Keep sorted slot j while the mass before it is at most top_p.
                let mut before = 0.0f32;
                let mut keep = Vec::new();
                for &e in &idx {
                    if before > top_p as f32 {
                        break;
                    }
                    keep.push(e);
                    before += scaled[e];
                }
                chosen.push(keep);
            }
        }
        Routing::Switch { capacity } => {
            let mut counts = vec![0usize; n];
            for (t, row) in probs.chunks_exact(n).enumerate() {
                if t % seq_len == 0 {
                    counts.iter_mut().for_each(|c| *c = 0);
                }
                let e = order(row)[0];
                counts[e] += 1;
                kept[t] = counts[e] <= capacity;
                chosen.push(vec![e]);
            }
        }
    }
    (chosen, kept)
}

impl MixLora {
    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// The block output for `x [B, L, d]` (the post-attention-norm hidden state) over the
    /// frozen `gate`, `up`, `down` projections, and the router's record.
    pub fn forward(
        &self,
        x: Tensor<3>,
        gate: &Linear,
        up: &Linear,
        down: &Linear,
    ) -> (Tensor<3>, RouterRecord) {
        let [b, l, d] = x.dims();
        let device = x.device();
        let training = device.is_autodiff();
        let n = self.num_experts();
        let mut tokens: Tensor<2> = x.reshape([b * l, d]);
        let jittered = |t: Tensor<2>| {
            let noise = t.random_like(Distribution::Uniform(1.0 - self.jitter, 1.0 + self.jitter));
            t * noise
        };
        let router_input = match self.routing {
            Routing::Switch { .. } if training && self.jitter > 0.0 => jittered(tokens.clone()),
            Routing::Switch { .. } => tokens.clone(),
            _ => {
                if training && self.jitter > 0.0 {
                    tokens = jittered(tokens);
                }
                tokens.clone()
            }
        };
        let logits = router_input.matmul(self.router.val());
        let probs = softmax(logits.clone(), 1);
        let host: Vec<f32> = probs
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32 probabilities");
        let (chosen, kept) = choose(self.routing, &host, n, l);
        // The combine weights as a differentiable [tokens, N] matrix: the router's
        // probabilities on the chosen experts (renormalised for top-k), zero elsewhere.
        let mut mask = vec![0.0f32; b * l * n];
        for (t, experts) in chosen.iter().enumerate() {
            for &e in experts {
                mask[t * n + e] = 1.0;
            }
        }
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [b * l, n]), &device);
        let selected = probs * mask;
        let weights = match self.routing {
            Routing::TopK { .. } => selected.clone() / selected.sum_dim(1),
            Routing::Dynamic { temperature, .. } if temperature > 0.0 => {
                selected.div_scalar(temperature)
            }
            _ => selected,
        };
        let (common_gate, common_up) = if self.fused {
            (
                Some(matmul_weight(gate, tokens.clone())),
                Some(matmul_weight(up, tokens.clone())),
            )
        } else {
            (None, None)
        };
        let mut out = Tensor::<2>::zeros([b * l, d], &device);
        for (e, expert) in self.experts.iter().enumerate() {
            let rows: Vec<usize> = (0..b * l)
                .filter(|&t| kept[t] && chosen[t].contains(&e))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let idx = index(&rows, &device);
            let x_e = tokens.clone().select(0, idx.clone());
            let base_gate = match &common_gate {
                Some(g) => g.clone().select(0, idx.clone()),
                None => matmul_weight(gate, x_e.clone()),
            };
            let base_up = match &common_up {
                Some(u) => u.clone().select(0, idx.clone()),
                None => matmul_weight(up, x_e.clone()),
            };
            let g = expert.gate.apply(gate, x_e.clone(), base_gate);
            let u = expert.up.apply(up, x_e, base_up);
            let a = silu(g) * u;
            let y = expert.down.apply(down, a.clone(), matmul_weight(down, a));
            let w = weights.clone().select(0, idx.clone()).narrow(1, e, 1);
            out = out.select_assign(0, idx, y * w, IndexingUpdateOp::Add);
        }
        if let Routing::Switch { .. } = self.routing {
            // Tokens over capacity pass their input through, scaled by the probability.
            let dropped: Vec<usize> = (0..b * l).filter(|&t| !kept[t]).collect();
            if !dropped.is_empty() {
                let idx = index(&dropped, &device);
                let w = weights.clone().select(0, idx.clone()).sum_dim(1);
                let passed = tokens.clone().select(0, idx.clone()) * w;
                out = out.select_assign(0, idx, passed, IndexingUpdateOp::Add);
            }
        }
        (
            out.reshape([b, l, d]),
            RouterRecord {
                logits,
                chosen,
                routing: self.routing,
            },
        )
    }
}

/// Coefficients of the auxiliary router losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuxLossConfig {
    /// Load-balance coefficient (official default 1e-3).
    pub balance: f64,
    /// Switch routing's z-loss coefficient (official default 1e-3).
    pub z: f64,
}

impl Default for AuxLossConfig {
    fn default() -> Self {
        AuxLossConfig {
            balance: 1e-3,
            z: 1e-3,
        }
    }
}

/// The auxiliary loss of one forward pass from every layer's router record, pooled
/// over all layers as the official code computes it:
///
/// - top-k (MixLoRA): `balance * N * sum_i f_i P_i` with `f_i` the share of real tokens
///   (padding masked, `mask` 1 for a token) routed to `i` over all layers and slots, and
///   `P_i` their mean router probability (Mixtral's load-balancing loss);
/// - dynamic: the same with `f_i` the share of tokens whose kept set holds `i`, over all
///   tokens (the official loss does not mask padding);
/// - switch: `z * mean(logsumexp(logits)^2) + balance * N^2 * mean_i(f_i P_i)` with `f`
///   from the argmax, capacity ignored, all tokens.
pub fn aux_loss(
    records: &[RouterRecord],
    mask: Option<&[i64]>,
    coefficients: AuxLossConfig,
) -> Option<Tensor<1>> {
    let first = records.first()?;
    let device = first.logits.device();
    let n = first.logits.dims()[1];
    let logits = Tensor::cat(records.iter().map(|r| r.logits.clone()).collect(), 0);
    let rows = logits.dims()[0];
    let chosen: Vec<&Vec<usize>> = records.iter().flat_map(|r| r.chosen.iter()).collect();
    let per_layer = first.chosen.len();
    let masked = matches!(first.routing, Routing::TopK { .. });
    let weight: Vec<f32> = (0..rows)
        .map(|t| match (masked, mask) {
            (true, Some(m)) => (m[t % per_layer] != 0) as i32 as f32,
            _ => 1.0,
        })
        .collect();
    let total: f32 = weight.iter().sum::<f32>().max(1.0);
    let mut counts = vec![0.0f32; n];
    for (t, experts) in chosen.iter().enumerate() {
        for &e in experts.iter() {
            counts[e] += weight[t];
        }
    }
    let f: Vec<f32> = counts.iter().map(|c| c / total).collect();
    let probs = softmax(logits.clone(), 1);
    let w = Tensor::<2>::from_data(TensorData::new(weight, [rows, 1]), &device);
    let mean_probs = (probs * w).sum_dim(0).div_scalar(total as f64); // [1, N]
    let f = Tensor::<2>::from_data(TensorData::new(f, [1, n]), &device);
    let balance = (f * mean_probs).sum();
    Some(match first.routing {
        Routing::TopK { .. } | Routing::Dynamic { .. } => {
            balance.mul_scalar(coefficients.balance * n as f64)
        }
        Routing::Switch { .. } => {
            // logsumexp = logit - log_softmax(logit) at any expert; use expert 0.
            let lse = logits.clone().narrow(1, 0, 1) - log_softmax(logits, 1).narrow(1, 0, 1);
            let z = lse.square().mean();
            z.mul_scalar(coefficients.z)
                + balance.mul_scalar(coefficients.balance * (n * n) as f64 / n as f64)
        }
    })
}

/// Tokens routed to each expert, per layer (`[layer][expert]`), counting real tokens
/// only when `mask` is given.
pub fn tokens_per_expert(records: &[RouterRecord], mask: Option<&[i64]>) -> Vec<Vec<usize>> {
    records
        .iter()
        .map(|r| {
            let n = r.logits.dims()[1];
            let mut counts = vec![0; n];
            for (t, experts) in r.chosen.iter().enumerate() {
                if mask.is_none_or(|m| m[t] != 0) {
                    for &e in experts {
                        counts[e] += 1;
                    }
                }
            }
            counts
        })
        .collect()
}
