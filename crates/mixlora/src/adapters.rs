//! LoRA and DoRA adapters on the decoder's linear layers, in PEFT's folder format
//! (`adapter_config.json` + `adapter_model.safetensors`), so adapters move between this
//! crate and PEFT both ways.
//!
//! Attaching adapters freezes the whole base model: only the adapter tensors require
//! gradients, so the autodiff graph keeps nothing for the base weights' gradients and
//! an optimizer holds state for the adapters alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::DropoutConfig;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::model::{Adapter, Decoder, Projection};
use crate::weights::{ModelError, f32_values, write_atomic, write_f32_safetensors};

/// The linear layers an adapter can target, by PEFT's module names.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The fields of PEFT's `adapter_config.json` this crate reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA` (DoRA is LoRA with `use_dora`).
    #[serde(default = "lora")]
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names the adapter wraps.
    pub target_modules: Vec<String>,
    /// DoRA: a trained magnitude per output feature.
    #[serde(default)]
    pub use_dora: bool,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Per-module ranks (unsupported unless empty).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alphas (unsupported unless empty).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// `none`: biases are not trained.
    #[serde(default = "none")]
    pub bias: String,
    /// Where the base model is (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Every other field of the file, kept so that a saved config round-trips; those
    /// that would change the computation ([`MATH_FIELDS`], `init_lora_weights`) are
    /// refused when set.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// PEFT `LoraConfig` fields that change what the adapter computes (which layers or
/// weights it touches, their orientation, extra trained modules or tokens, variants of
/// LoRA) and that this crate does not implement: any of them set (not null, false or
/// empty) is refused by name.
pub const MATH_FIELDS: [&str; 16] = [
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "layer_replication",
    "lora_bias",
    "modules_to_save",
    "exclude_modules",
    "target_parameters",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "velora_config",
    "kasa_config",
    "monteclora_config",
];

/// Whether a config value turns its option on.
fn is_set(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
        serde_json::Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn lora() -> String {
    "LORA".into()
}

fn none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// A LoRA (or DoRA) of rank `r` on `targets`.
    pub fn new(r: usize, alpha: f64, targets: &[&str], dora: bool) -> Self {
        AdapterConfig {
            peft_type: lora(),
            r,
            lora_alpha: alpha,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            use_dora: dora,
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            bias: none(),
            base_model_name_or_path: None,
            other: BTreeMap::new(),
        }
    }

    /// The scale of the low-rank update.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |message: String| {
            Err(ModelError::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        if self.peft_type != "LORA" {
            return bad(format!(
                "peft_type {:?} is not LORA (MixLoRA and LoRAMoE folders load with \
                 finetune::AdapterSpec::load)",
                self.peft_type
            ));
        }
        if self.r == 0 {
            return bad("r must be positive".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            ));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return bad("rank_pattern / alpha_pattern are not supported".into());
        }
        if self.bias != "none" {
            return bad(format!(
                "bias {:?} is not supported (only \"none\")",
                self.bias
            ));
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !TARGETS.contains(&t.as_str()))
        {
            return bad(format!("target module {t:?} is not one of {TARGETS:?}"));
        }
        if let Some((field, value)) = self
            .other
            .iter()
            .find(|(k, v)| MATH_FIELDS.contains(&k.as_str()) && is_set(v))
        {
            return bad(format!("{field} = {value} is not implemented"));
        }
        // PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA initialisations also rewrite the base
        // weights the adapter was trained against; Gaussian / Kaiming ones do not.
        match self.other.get("init_lora_weights") {
            None | Some(serde_json::Value::Bool(_)) => {}
            Some(serde_json::Value::String(s)) if s == "gaussian" => {}
            Some(other) => {
                return bad(format!(
                    "init_lora_weights = {other} is not implemented (it changes the base \
                     weights the adapter applies to)"
                ));
            }
        }
        Ok(())
    }
}

fn projections(model: &mut Decoder) -> Vec<(String, &mut Projection)> {
    let mut out = Vec::new();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
        out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
        out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
    }
    out
}

fn targeted(name: &str, config: &AdapterConfig) -> bool {
    let module = name.rsplit('.').next().unwrap_or(name);
    config.target_modules.iter().any(|t| t == module)
}

/// Freezes `model` and attaches fresh adapters: `A` kaiming-uniform (PEFT's default),
/// `B` zero (the model's output is unchanged until training), DoRA magnitudes set to the
/// column norms of the base weights.
pub fn attach(model: Decoder, config: &AdapterConfig, device: &Device) -> Decoder {
    let mut model = model.freeze();
    let scale = config.scale();
    for (name, p) in projections(&mut model) {
        if !targeted(&name, config) {
            continue;
        }
        let [d_in, d_out] = p.base.weight.dims();
        // kaiming_uniform(a = sqrt(5)) on [r, in]: bound = 1 / sqrt(in).
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::<2>::random(
            [d_in, config.r],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::<2>::zeros([config.r, d_out], device);
        let magnitude = config.use_dora.then(|| {
            let w = p.base.weight.val().inner();
            let norm: Tensor<1> = w.square().sum_dim(0).sqrt().reshape([d_out]);
            Param::from_tensor(Tensor::from_data(norm.into_data(), device))
        });
        p.adapter = Some(Adapter {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            magnitude,
            scale,
            dropout: DropoutConfig::new(config.lora_dropout).init(),
        });
    }
    model
}

/// PEFT's key of the adapter tensor `part` (`lora_A.weight`, `lora_B.weight`,
/// `lora_magnitude_vector`) of layer `name`.
fn peft_key(name: &str, part: &str) -> String {
    format!("base_model.model.{name}.{part}")
}

/// Reads a PEFT adapter folder into `model` (frozen; the adapters train).
pub fn load_adapter(
    model: Decoder,
    dir: &Path,
    device: &Device,
) -> Result<(Decoder, AdapterConfig), ModelError> {
    let config_path = dir.join("adapter_config.json");
    let config: AdapterConfig = crate::config::read_json(&config_path)?;
    config.check(&config_path)?;
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let corrupt = |message: String| ModelError::Corrupt {
        path: path.clone(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut model = model.freeze();
    let scale = config.scale();
    let mut details = Vec::new();
    let mut used = 0;
    for (name, p) in projections(&mut model) {
        if !targeted(&name, &config) {
            continue;
        }
        let [d_in, d_out] = p.base.weight.dims();
        let mut get = |part: &str, shape: Vec<usize>| -> Option<Tensor<2>> {
            let key = peft_key(&name, part);
            let Ok(view) = file.tensor(&key) else {
                details.push(format!("  missing tensor {key} (shape {shape:?})"));
                return None;
            };
            if view.shape() != shape.as_slice() || view.dtype() != Dtype::F32 {
                details.push(format!(
                    "  {key}: expected f32 {shape:?}, file has {:?} {:?}",
                    view.dtype(),
                    view.shape()
                ));
                return None;
            }
            used += 1;
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let rows = shape[0];
            let cols = shape.get(1).copied().unwrap_or(1);
            Some(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ))
        };
        let a = get("lora_A.weight", vec![config.r, d_in]);
        let b = get("lora_B.weight", vec![d_out, config.r]);
        let m = if config.use_dora {
            get("lora_magnitude_vector", vec![d_out])
        } else {
            None
        };
        let (Some(a), Some(b)) = (a, b) else { continue };
        if config.use_dora && m.is_none() {
            continue;
        }
        p.adapter = Some(Adapter {
            lora_a: Param::from_tensor(a.transpose()),
            lora_b: Param::from_tensor(b.transpose()),
            magnitude: m.map(|m| Param::from_tensor(m.reshape([d_out]))),
            scale,
            dropout: DropoutConfig::new(config.lora_dropout).init(),
        });
    }
    check_adapter_file(dir, details, used, file.len(), "the configured targets")?;
    Ok((model, config))
}

/// The end of loading an adapter file: `Mismatch` listing `details` (missing or
/// mis-shaped tensors); when those are fine but the file holds tensors no slot took
/// (`used` of `in_file` belong to `owner`), says so rather than ignoring them.
pub(crate) fn check_adapter_file(
    dir: &Path,
    mut details: Vec<String>,
    used: usize,
    in_file: usize,
    owner: &str,
) -> Result<(), ModelError> {
    if details.is_empty() && used != in_file {
        details.push(format!(
            "  the file holds {in_file} tensors, of which {used} belong to {owner}"
        ));
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(ModelError::Mismatch {
        dir: dir.to_path_buf(),
        details: details.join("\n"),
    })
}

/// Writes the adapters of `model` as a PEFT folder (atomically per file).
pub fn save_adapter(
    model: &Decoder,
    config: &AdapterConfig,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut model = model.clone();
    for (name, p) in projections(&mut model) {
        let Some(adapter) = &p.adapter else { continue };
        for (part, t) in [
            ("lora_A.weight", adapter.lora_a.val()),
            ("lora_B.weight", adapter.lora_b.val()),
        ] {
            let t = t.inner().transpose();
            tensors.push((peft_key(&name, part), t.dims().to_vec(), f32_values(t)));
        }
        if let Some(m) = &adapter.magnitude {
            let m = m.val().inner();
            tensors.push((
                peft_key(&name, "lora_magnitude_vector"),
                m.dims().to_vec(),
                f32_values(m),
            ));
        }
    }
    let path = dir.join("adapter_model.safetensors");
    write_f32_safetensors(&path, tensors, None)?;
    let config_path = dir.join("adapter_config.json");
    let json = serde_json::to_string_pretty(config).expect("serialisable config");
    write_atomic(&config_path, json.as_bytes()).map_err(io(&config_path))?;
    Ok(path)
}

/// transformers' causal-LM loss: logits at position `t` predict `labels[t + 1]`, targets
/// of -100 are ignored, the mean is over the remaining targets.
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[i64]) -> Tensor<1> {
    let [b, l, _] = logits.dims();
    assert_eq!(labels.len(), b * l, "one label per token");
    let device = logits.device();
    let logp = burn::tensor::activation::log_softmax(logits.narrow(1, 0, l - 1), 2);
    let mut targets = Vec::with_capacity(b * (l - 1));
    let mut weights = Vec::with_capacity(b * (l - 1));
    for row in 0..b {
        for t in 1..l {
            let label = labels[row * l + t];
            targets.push(label.max(0));
            weights.push(if label < 0 { 0.0f32 } else { 1.0 });
        }
    }
    let count = weights.iter().sum::<f32>().max(1.0);
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, l - 1, 1]), &device);
    let weights = Tensor::<3>::from_data(TensorData::new(weights, [b, l - 1, 1]), &device);
    (logp.gather(2, targets) * weights)
        .sum()
        .mul_scalar(-1.0 / count as f64)
}

/// Folds every adapter into its base weight (`W + scale * A B`, or for DoRA
/// `m / |W + scale * A B| * (W + scale * A B)` per output feature) and removes it: the
/// merged model computes what the adapted one does, at the base model's cost.
pub fn merge(model: Decoder) -> Decoder {
    let mut model = model;
    for (_, p) in projections(&mut model) {
        let Some(adapter) = p.adapter.take() else {
            continue;
        };
        let weight = p.base.weight.val().inner();
        let merged = weight
            + adapter
                .lora_a
                .val()
                .inner()
                .matmul(adapter.lora_b.val().inner())
                .mul_scalar(adapter.scale);
        let merged = match &adapter.magnitude {
            None => merged,
            Some(m) => {
                let norm = merged.clone().square().sum_dim(0).sqrt();
                merged * (m.val().inner().unsqueeze::<2>() / norm)
            }
        };
        let device = p.base.weight.val().device();
        p.base.weight = Param::from_tensor(Tensor::from_data(merged.into_data(), &device));
    }
    model
}
