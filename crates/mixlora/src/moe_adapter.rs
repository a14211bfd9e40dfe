//! MixLoRA adapters in the official file layout (TUDB-Labs `mixlora` / MoE-PEFT):
//! `adapter_config.json` with `peft_type: "MIXLORA"` (or `"LORAMOE"`) and the weights
//! under the official key names,
//!
//! ```text
//! mixlora.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight        [r, in] / [out, r]
//! mixlora.layers.{i}.mlp.moe_gate.weight                               [N, d]
//! mixlora.layers.{i}.mlp.{gate,down,up}_proj.experts.{e}.lora_{A,B}.weight
//! ```
//!
//! stored as `adapter_model.safetensors`. The official loaders read a `torch.save`d
//! `adapter_model.bin` with the same keys: the conversion is format-only
//! (`tools/reference/mixlora/convert_format.py` does it both ways). DoRA magnitudes,
//! which the official code neither saves nor loads (it re-initialises them to the norms
//! of `W + sBA`), are written under `<module>.lora_magnitude_vector` as PEFT names them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::adapters::check_adapter_file;
use crate::model::{Adapter, Decoder, Projection};
use crate::moe::{Expert, LoraMoe, MixLora, Routing};
use crate::weights::{ModelError, f32_values, write_atomic, write_f32_safetensors};

fn mixlora() -> String {
    "MIXLORA".into()
}
fn none() -> String {
    "none".into()
}
fn two() -> usize {
    2
}
fn silu() -> String {
    "silu".into()
}
fn top_p() -> f64 {
    0.8
}
fn capacity() -> usize {
    32
}
fn coef() -> f64 {
    1e-3
}

/// `adapter_config.json` of a MixLoRA adapter (the fields the official code reads; the
/// training-only ones it does not export keep their defaults on reload, as there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixLoraConfig {
    /// `MIXLORA` (or `LORAMOE`).
    #[serde(default = "mixlora")]
    pub peft_type: String,
    /// `none`.
    #[serde(default = "none")]
    pub bias: String,
    /// Rank (a JSON integer, as the official `check()` demands).
    pub r: usize,
    /// Scale numerator (a JSON integer in official files).
    pub lora_alpha: usize,
    /// Dropout on LoRA inputs (official files always say > 0).
    pub lora_dropout: f64,
    /// Attention targets get plain LoRA, FFN targets become experts.
    pub target_modules: Vec<String>,
    /// `mixlora`, `mixlora-dynamic`, `mixlora-switch` or `loramoe`.
    pub routing_strategy: String,
    /// Experts per layer (per projection for LoRAMoE).
    pub num_experts: usize,
    /// Experts per token (`mixlora`).
    #[serde(default = "two")]
    pub top_k: usize,
    /// Probability mass (`mixlora-dynamic`).
    #[serde(default = "top_p")]
    pub top_p: f64,
    /// Divides the probabilities (`mixlora-dynamic`, 0: off).
    #[serde(default)]
    pub temperature: f64,
    /// Tokens per expert and sequence (`mixlora-switch`).
    #[serde(default = "capacity")]
    pub expert_capacity: usize,
    /// Expert activation (`silu` for LLaMA-family models).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// DoRA for attention LoRA and experts.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_dora: bool,
    /// rsLoRA scale `alpha / sqrt(r)`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_rslora: bool,
    /// Load-balance coefficient (not exported by the official code; default 1e-3).
    #[serde(default = "coef", skip_serializing)]
    pub router_aux_loss_coef: f64,
    /// Switch z-loss coefficient (default 1e-3).
    #[serde(default = "coef", skip_serializing)]
    pub router_z_loss_coef: f64,
    /// Router init std (default 0.02; switch 1.0).
    #[serde(default, skip_serializing)]
    pub router_init_range: Option<f64>,
    /// Training-time jitter (default 0; switch 0.01).
    #[serde(default, skip_serializing)]
    pub jitter_noise: Option<f64>,
    /// Base model (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// `CAUSAL_LM` or `QUESTION_ANS`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Options of other versions, kept so a round trip loses nothing.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

const ATTENTION: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const FFN: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

impl MixLoraConfig {
    /// MixLoRA with `num_experts` experts, top-`top_k`, rank `r`, `alpha`, on every
    /// projection (the paper's setting: r 16, alpha 32, 8 experts, top-2).
    pub fn new(r: usize, alpha: usize, num_experts: usize, top_k: usize) -> Self {
        MixLoraConfig {
            peft_type: mixlora(),
            bias: none(),
            r,
            lora_alpha: alpha,
            lora_dropout: 0.05,
            target_modules: ATTENTION
                .iter()
                .chain(FFN.iter())
                .map(|s| s.to_string())
                .collect(),
            routing_strategy: "mixlora".into(),
            num_experts,
            top_k,
            top_p: top_p(),
            temperature: 0.0,
            expert_capacity: capacity(),
            act_fn: silu(),
            use_dora: false,
            use_rslora: false,
            router_aux_loss_coef: coef(),
            router_z_loss_coef: coef(),
            router_init_range: None,
            jitter_noise: None,
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            other: BTreeMap::new(),
        }
    }

    /// The LoRA scale.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha as f64 / (self.r as f64).sqrt()
        } else {
            self.lora_alpha as f64 / self.r as f64
        }
    }

    /// The routing rule (`None` for LoRAMoE's dense per-projection mixtures).
    pub fn routing(&self) -> Option<Routing> {
        match self.routing_strategy.as_str() {
            "mixlora" => Some(Routing::TopK { k: self.top_k }),
            "mixlora-dynamic" => Some(Routing::Dynamic {
                top_p: self.top_p,
                temperature: self.temperature,
            }),
            "mixlora-switch" => Some(Routing::Switch {
                capacity: self.expert_capacity,
            }),
            _ => None,
        }
    }

    /// The key prefix of the official files.
    pub fn prefix(&self) -> &'static str {
        if self.routing_strategy == "loramoe" {
            "loramoe"
        } else {
            "mixlora"
        }
    }

    fn is_switch(&self) -> bool {
        self.routing_strategy == "mixlora-switch"
    }

    /// Router init std: 0.02, or 1.0 for switch, as the official defaults.
    pub fn router_std(&self) -> f64 {
        self.router_init_range
            .unwrap_or(if self.is_switch() { 1.0 } else { 0.02 })
    }

    /// Router jitter: 0, or 0.01 for switch.
    pub fn jitter(&self) -> f64 {
        self.jitter_noise
            .unwrap_or(if self.is_switch() { 0.01 } else { 0.0 })
    }

    /// Refuses what this crate does not implement, naming it.
    pub fn check(&self) -> Result<(), String> {
        let known = ["mixlora", "mixlora-dynamic", "mixlora-switch", "loramoe"];
        if !known.contains(&self.routing_strategy.as_str()) {
            return Err(format!(
                "routing_strategy {:?} is not one of {known:?}",
                self.routing_strategy
            ));
        }
        if self.peft_type != "MIXLORA" && self.peft_type != "LORAMOE" {
            return Err(format!(
                "peft_type {:?} is not MIXLORA or LORAMOE",
                self.peft_type
            ));
        }
        if self.r == 0 || self.num_experts == 0 {
            return Err("r and num_experts must be positive".into());
        }
        if self.routing_strategy == "mixlora" && !(1..=self.num_experts).contains(&self.top_k) {
            return Err(format!(
                "top_k {} must be in 1..={}",
                self.top_k, self.num_experts
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn {:?} is not supported (silu)", self.act_fn));
        }
        if self.bias != "none" {
            return Err(format!("bias {:?} is not supported (none)", self.bias));
        }
        if self.routing_strategy == "loramoe"
            && let Some(t) = self
                .target_modules
                .iter()
                .find(|t| ATTENTION.contains(&t.as_str()))
        {
            return Err(format!(
                "LoRAMoE mixtures on attention ({t}) are not supported"
            ));
        }
        if self.other.contains_key("expert_lora") {
            return Err("expert_lora (a different rank for the experts) is not supported".into());
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !ATTENTION.contains(&t.as_str()) && !FFN.contains(&t.as_str()))
        {
            return Err(format!("target module {t:?} is not a LLaMA projection"));
        }
        Ok(())
    }

    fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| t == name)
    }
}

/// A fresh LoRA on `base`: `A` kaiming-uniform (bound `1/sqrt(in)`), `B` zero, DoRA
/// magnitude the norms of `W` (so the adapted layer starts equal to the base).
fn fresh_adapter(base: &Linear, config: &MixLoraConfig, device: &Device) -> Adapter {
    let [d_in, d_out] = base.weight.dims();
    let bound = 1.0 / (d_in as f64).sqrt();
    let magnitude = config.use_dora.then(|| {
        let norm: Tensor<1> = base
            .weight
            .val()
            .inner()
            .square()
            .sum_dim(0)
            .sqrt()
            .reshape([d_out]);
        Param::from_tensor(Tensor::from_data(norm.into_data(), device))
    });
    Adapter {
        lora_a: Param::from_tensor(Tensor::random(
            [d_in, config.r],
            Distribution::Uniform(-bound, bound),
            device,
        )),
        lora_b: Param::from_tensor(Tensor::zeros([config.r, d_out], device)),
        magnitude,
        scale: config.scale(),
        dropout: DropoutConfig::new(config.lora_dropout).init(),
    }
}

/// Freezes `model` and attaches a fresh MixLoRA (or variant) adapter: LoRA on the
/// targeted attention projections, experts on the targeted FFN projections, a router
/// initialised `N(0, router_init_range)`.
pub fn attach_mixlora(
    model: Decoder,
    config: &MixLoraConfig,
    device: &Device,
) -> Result<Decoder, String> {
    config.check()?;
    let mut model = model.freeze();
    for layer in model.layers.iter_mut() {
        let a = &mut layer.self_attn;
        for (name, p) in [
            ("q_proj", &mut a.q_proj),
            ("k_proj", &mut a.k_proj),
            ("v_proj", &mut a.v_proj),
            ("o_proj", &mut a.o_proj),
        ] {
            if config.targets(name) {
                p.adapter = Some(fresh_adapter(&p.base, config, device));
            }
        }
        let m = &mut layer.mlp;
        match config.routing() {
            Some(routing) => {
                let d = m.gate_proj.base.weight.dims()[0];
                let experts = (0..config.num_experts)
                    .map(|_| Expert {
                        gate: fresh_adapter(&m.gate_proj.base, config, device),
                        up: fresh_adapter(&m.up_proj.base, config, device),
                        down: fresh_adapter(&m.down_proj.base, config, device),
                    })
                    .collect();
                m.moe = Some(MixLora {
                    router: Param::from_tensor(Tensor::random(
                        [d, config.num_experts],
                        Distribution::Normal(0.0, config.router_std()),
                        device,
                    )),
                    experts,
                    routing,
                    jitter: config.jitter(),
                    fused: true,
                });
            }
            None => {
                for (name, p) in [
                    ("gate_proj", &mut m.gate_proj),
                    ("up_proj", &mut m.up_proj),
                    ("down_proj", &mut m.down_proj),
                ] {
                    if !config.targets(name) {
                        continue;
                    }
                    let d_in = p.base.weight.dims()[0];
                    // LoRAMoE: nn.Linear's default init (kaiming uniform, a = sqrt(5)).
                    let bound = 1.0 / (d_in as f64).sqrt();
                    p.mixture = Some(LoraMoe {
                        router: Param::from_tensor(Tensor::random(
                            [d_in, config.num_experts],
                            Distribution::Uniform(-bound, bound),
                            device,
                        )),
                        experts: (0..config.num_experts)
                            .map(|_| fresh_adapter(&p.base, config, device))
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(model)
}

/// The official key of every adapter tensor of `model` (in burn's orientation, with
/// a flag telling whether to transpose for the file), visited in a fixed order.
fn visit(model: &mut Decoder, prefix: &str, f: &mut dyn FnMut(String, Slot<'_>)) {
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("{prefix}.layers.{i}");
        let a = &mut layer.self_attn;
        for (name, proj) in [
            ("q_proj", &mut a.q_proj),
            ("k_proj", &mut a.k_proj),
            ("v_proj", &mut a.v_proj),
            ("o_proj", &mut a.o_proj),
        ] {
            if let Some(adapter) = proj.adapter.as_mut() {
                adapter_slots(&format!("{p}.self_attn.{name}"), adapter, f);
            }
        }
        let m = &mut layer.mlp;
        if let Some(moe) = m.moe.as_mut() {
            f(
                format!("{p}.mlp.moe_gate.weight"),
                Slot::Matrix(&mut moe.router),
            );
            for (e, expert) in moe.experts.iter_mut().enumerate() {
                for (name, adapter) in [
                    ("gate_proj", &mut expert.gate),
                    ("down_proj", &mut expert.down),
                    ("up_proj", &mut expert.up),
                ] {
                    adapter_slots(&format!("{p}.mlp.{name}.experts.{e}"), adapter, f);
                }
            }
        }
        for (name, proj) in [
            ("gate_proj", &mut m.gate_proj),
            ("down_proj", &mut m.down_proj),
            ("up_proj", &mut m.up_proj),
        ] {
            if let Some(mixture) = proj.mixture.as_mut() {
                f(
                    format!("{p}.mlp.{name}.moe_gate.weight"),
                    Slot::Matrix(&mut mixture.router),
                );
                for (e, adapter) in mixture.experts.iter_mut().enumerate() {
                    adapter_slots(&format!("{p}.mlp.{name}.experts.{e}"), adapter, f);
                }
            }
        }
    }
}

/// An adapter tensor under its official key.
#[derive(Debug, Clone)]
pub enum AdapterTensor {
    /// A matrix in burn's `[in, out]` orientation (the file holds its transpose).
    Matrix(Tensor<2>),
    /// A vector (router-free DoRA magnitude).
    Vector(Tensor<1>),
}

/// Every adapter tensor of `model` under its official key, in file order (for
/// gradients, statistics and tests).
pub fn adapter_tensors(model: &Decoder, config: &MixLoraConfig) -> Vec<(String, AdapterTensor)> {
    let mut out = Vec::new();
    let mut model = model.clone();
    visit(&mut model, config.prefix(), &mut |key, slot| {
        out.push((
            key,
            match slot {
                Slot::Matrix(p) => AdapterTensor::Matrix(p.val()),
                Slot::Vector(p) => AdapterTensor::Vector(p.val()),
            },
        ))
    });
    out
}

/// A tensor of an adapter file: a matrix stored transposed (burn `[in, out]`, file
/// `[out, in]`), or a vector.
enum Slot<'a> {
    Matrix(&'a mut Param<Tensor<2>>),
    Vector(&'a mut Param<Tensor<1>>),
}

fn adapter_slots(prefix: &str, adapter: &mut Adapter, f: &mut dyn FnMut(String, Slot<'_>)) {
    f(
        format!("{prefix}.lora_A.weight"),
        Slot::Matrix(&mut adapter.lora_a),
    );
    f(
        format!("{prefix}.lora_B.weight"),
        Slot::Matrix(&mut adapter.lora_b),
    );
    if let Some(m) = adapter.magnitude.as_mut() {
        f(format!("{prefix}.lora_magnitude_vector"), Slot::Vector(m));
    }
}

/// Reads an official MixLoRA folder (`adapter_config.json` + `adapter_model.safetensors`)
/// onto `model` (frozen). Every tensor is checked against the configured shapes and
/// every problem listed by name; a folder with only the official `adapter_model.bin` is
/// refused with the conversion to run. DoRA magnitudes missing from the file start, as
/// in the official code, at the norms of `W + sBA`.
pub fn load_mixlora(
    model: Decoder,
    dir: &Path,
    device: &Device,
) -> Result<(Decoder, MixLoraConfig), ModelError> {
    let config_path = dir.join("adapter_config.json");
    let config: MixLoraConfig = crate::config::read_json(&config_path)?;
    config.check().map_err(|message| ModelError::Config {
        path: config_path.clone(),
        message,
    })?;
    let path = dir.join("adapter_model.safetensors");
    if !path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(ModelError::Config {
            path: dir.join("adapter_model.bin"),
            message: "is a PyTorch pickle; convert it once with `python tools/reference/mixlora/convert_format.py to-safetensors DIR`".into(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut model =
        attach_mixlora(model, &config, device).map_err(|message| ModelError::Config {
            path: config_path.clone(),
            message,
        })?;
    let mut details = Vec::new();
    let mut used = 0;
    let mut reset_magnitudes = Vec::new();
    visit(&mut model, config.prefix(), &mut |key, slot| {
        let want: Vec<usize> = match &slot {
            Slot::Matrix(p) => {
                let [a, b] = p.dims();
                vec![b, a]
            }
            Slot::Vector(p) => p.dims().to_vec(),
        };
        let view = match file.tensor(&key) {
            Ok(v) => v,
            Err(_) => {
                if matches!(slot, Slot::Vector(_)) {
                    reset_magnitudes.push(key);
                } else {
                    details.push(format!("  missing tensor {key} (shape {want:?})"));
                }
                return;
            }
        };
        used += 1;
        if view.shape() != want.as_slice() {
            details.push(format!(
                "  {key}: expected shape {want:?}, file has {:?}",
                view.shape()
            ));
            return;
        }
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                details.push(format!("  {key}: unsupported dtype {other:?}"));
                return;
            }
        };
        match slot {
            Slot::Matrix(p) => {
                let t: Tensor<2> =
                    Tensor::from_data(TensorData::new(values, [want[0], want[1]]), device);
                *p = Param::from_tensor(t.transpose());
            }
            Slot::Vector(p) => {
                *p = Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, [want[0]]),
                    device,
                ));
            }
        }
    });
    check_adapter_file(dir, details, used, file.len(), "the configured adapter")?;
    if !reset_magnitudes.is_empty() {
        reset_dora_magnitudes(&mut model, device);
    }
    Ok((model, config))
}

/// Sets every DoRA magnitude to the norms of its merged weight `W + sBA` (what the
/// official loaders do, since their files carry no magnitudes).
fn reset_dora_magnitudes(model: &mut Decoder, device: &Device) {
    let reset = |base: &Linear, adapter: &mut Adapter| {
        if adapter.magnitude.is_none() {
            return;
        }
        let merged = base.weight.val().inner()
            + adapter
                .lora_a
                .val()
                .inner()
                .matmul(adapter.lora_b.val().inner())
                .mul_scalar(adapter.scale);
        let out = merged.dims()[1];
        let norm: Tensor<1> = merged.square().sum_dim(0).sqrt().reshape([out]);
        adapter.magnitude = Some(Param::from_tensor(Tensor::from_data(
            norm.into_data(),
            device,
        )));
    };
    for layer in model.layers.iter_mut() {
        let a = &mut layer.self_attn;
        for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
            let Projection { base, adapter, .. } = p;
            if let Some(ad) = adapter.as_mut() {
                reset(base, ad);
            }
        }
        let m = &mut layer.mlp;
        if let Some(moe) = m.moe.as_mut() {
            for expert in moe.experts.iter_mut() {
                reset(&m.gate_proj.base, &mut expert.gate);
                reset(&m.up_proj.base, &mut expert.up);
                reset(&m.down_proj.base, &mut expert.down);
            }
        }
    }
}

/// Writes the adapter of `model` in the official layout: `adapter_config.json`
/// (integers for `r` and `lora_alpha`, as the official `check()` wants) and
/// `adapter_model.safetensors`, each atomically.
pub fn save_mixlora(
    model: &Decoder,
    config: &MixLoraConfig,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = adapter_tensors(model, config)
        .into_iter()
        .map(|(key, t)| match t {
            AdapterTensor::Matrix(t) => {
                let t = t.inner().transpose();
                (key, t.dims().to_vec(), f32_values(t))
            }
            AdapterTensor::Vector(t) => {
                let t = t.inner();
                (key, t.dims().to_vec(), f32_values(t))
            }
        })
        .collect();
    let path = dir.join("adapter_model.safetensors");
    write_f32_safetensors(&path, tensors, None)?;
    let config_path = dir.join("adapter_config.json");
    let json = serde_json::to_string_pretty(config).expect("serialisable config");
    write_atomic(&config_path, json.as_bytes()).map_err(io(&config_path))?;
    Ok(path)
}

/// Sets the dropout probability of every LoRA adapter of `model` (plain, expert and
/// LoRAMoE), e.g. to 0 to evaluate deterministically on an autodiff device.
pub fn set_adapter_dropout(model: Decoder, prob: f64) -> Decoder {
    let mut model = model;
    let set = |a: &mut Adapter| a.dropout = DropoutConfig::new(prob).init();
    for layer in model.layers.iter_mut() {
        let at = &mut layer.self_attn;
        let m = &mut layer.mlp;
        for p in [
            &mut at.q_proj,
            &mut at.k_proj,
            &mut at.v_proj,
            &mut at.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            if let Some(a) = p.adapter.as_mut() {
                set(a);
            }
            if let Some(mix) = p.mixture.as_mut() {
                mix.experts.iter_mut().for_each(set);
            }
        }
        if let Some(moe) = m.moe.as_mut() {
            for e in moe.experts.iter_mut() {
                set(&mut e.gate);
                set(&mut e.up);
                set(&mut e.down);
            }
        }
    }
    model
}
