//! The decoder's hyper-parameters, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::weights::ModelError;

/// RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `llama3`, `linear` or `default` (older files call the field `type`).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Scale factor.
    #[serde(default = "one")]
    pub factor: f64,
    /// LLaMA-3: wavelengths longer than `original / low_freq_factor` are scaled fully.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// LLaMA-3: wavelengths shorter than `original / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// LLaMA-3: the context length the model was pretrained on.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}

fn default_model_type() -> String {
    "llama".into()
}

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f64 {
    10_000.0
}

fn default_max_positions() -> usize {
    2048
}

/// The fields of `config.json` the decoder uses. Fields that change the computation
/// are either implemented or refused by name when deserializing (`model_type`,
/// `hidden_act`, `mlp_bias`, RoPE variants and their fields, sliding windows,
/// `partial_rotary_factor`, `quantization_config`); fields that do not (dropout, dtype,
/// cache settings, ...) are ignored. Both layouts of the RoPE settings are read: top-level `rope_theta` and
/// `rope_scaling` (transformers 4), and `rope_parameters` (transformers 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDecoderConfig")]
pub struct DecoderConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention; default: one per query head).
    pub num_key_value_heads: Option<usize>,
    /// Head width (default `hidden_size / num_attention_heads`).
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// The output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v/o projections (LLaMA's `attention_bias`; Qwen2 always has
    /// q/k/v biases and no o bias).
    pub attention_bias: bool,
    /// Every layer attends to at most this many most recent positions (Mistral's
    /// `sliding_window`); `None`: full causal attention.
    pub sliding_window: Option<usize>,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token (a number or a list in the wild).
    pub bos_token_id: Option<serde_json::Value>,
    /// End-of-sequence token(s).
    pub eos_token_id: Option<serde_json::Value>,
    /// Padding token, when the config names one.
    pub pad_token_id: Option<i64>,
}

/// The model families whose math this crate implements.
pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// RoPE variants this crate implements.
const ROPE_TYPES: [&str; 3] = ["default", "linear", "llama3"];

/// `config.json` as written, before the two RoPE layouts are merged and the fields
/// that change the math are checked.
#[derive(Deserialize)]
struct RawDecoderConfig {
    #[serde(default = "default_model_type")]
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    quantization_config: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

/// The RoPE base and scaling of either layout. transformers 5's `rope_parameters` holds
/// `rope_type`, `rope_theta` and the scaling fields in one object; transformers 4 keeps
/// `rope_theta` at the top level and the scaling in `rope_scaling`.
fn rope_settings(raw: &RawDecoderConfig) -> Result<(f64, Option<RopeScaling>), String> {
    let scaling_from = |value: &serde_json::Value, field: &str| -> Result<RopeScaling, String> {
        let object = value
            .as_object()
            .ok_or_else(|| format!("{field} must be an object, got {value}"))?;
        let known = [
            "rope_type",
            "type",
            "rope_theta",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ];
        if let Some(key) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "{field}.{key} is not implemented (this crate reads {})",
                known.join(", ")
            ));
        }
        // Some files carry both spellings of the type; they must agree.
        let mut object = object.clone();
        if let (Some(a), Some(b)) = (object.get("rope_type"), object.get("type")) {
            if a != b {
                return Err(format!("{field}: rope_type {a} and type {b} disagree"));
            }
            object.remove("type");
        }
        let scaling: RopeScaling = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("{field}: {e}"))?;
        if !ROPE_TYPES.contains(&scaling.rope_type.as_str()) {
            return Err(format!(
                "{field}: rope_type {:?} is not implemented (implemented: {})",
                scaling.rope_type,
                ROPE_TYPES.join(", ")
            ));
        }
        Ok(scaling)
    };
    match &raw.rope_parameters {
        Some(params) => {
            if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
                return Err("both rope_parameters and rope_scaling are given".into());
            }
            // Models with several attention kinds key one object per layer type.
            if params
                .as_object()
                .is_some_and(|o| o.values().any(serde_json::Value::is_object))
            {
                return Err(format!(
                    "rope_parameters per layer type ({}) are not implemented",
                    params.as_object().map_or(String::new(), |o| o
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "))
                ));
            }
            let scaling = scaling_from(params, "rope_parameters")?;
            let theta = params
                .get("rope_theta")
                .and_then(serde_json::Value::as_f64)
                .or(raw.rope_theta)
                .unwrap_or_else(default_theta);
            if let Some(top) = raw.rope_theta
                && top != theta
            {
                return Err(format!(
                    "rope_theta {top} disagrees with rope_parameters.rope_theta {theta}"
                ));
            }
            let scaling = (scaling.rope_type != "default").then_some(scaling);
            Ok((theta, scaling))
        }
        None => {
            let scaling = match &raw.rope_scaling {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(scaling_from(value, "rope_scaling")?),
            };
            Ok((raw.rope_theta.unwrap_or_else(default_theta), scaling))
        }
    }
}

/// The window every layer uses, from Mistral's `sliding_window`, Qwen2's
/// `use_sliding_window` or transformers 5's `layer_types`; windows that differ between
/// layers are refused.
fn attention_window(raw: &RawDecoderConfig) -> Result<Option<usize>, String> {
    if let Some(types) = &raw.layer_types {
        if let Some(other) = types
            .iter()
            .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
        {
            return Err(format!("layer_types entry {other:?} is not implemented"));
        }
        let sliding = types.iter().filter(|t| *t == "sliding_attention").count();
        if sliding == 0 {
            return Ok(None);
        }
        if sliding != types.len() {
            return Err(format!(
                "layer_types mixes {sliding} sliding-window and {} full-attention layers; \
                 per-layer windows are not implemented",
                types.len() - sliding
            ));
        }
        return raw.sliding_window.map(Some).ok_or_else(|| {
            "layer_types has sliding_attention layers but no sliding_window".into()
        });
    }
    match raw.model_type.as_str() {
        "mistral" => Ok(raw.sliding_window),
        // Qwen2 carries a window that is off unless `use_sliding_window` is set, and then
        // applies from layer `max_window_layers` on only.
        "qwen2" if raw.use_sliding_window == Some(true) => Err(
            "use_sliding_window true (per-layer windows from max_window_layers) is not implemented"
                .into(),
        ),
        "qwen2" => Ok(None),
        _ => match raw.sliding_window {
            None => Ok(None),
            Some(w) => Err(format!(
                "sliding_window {w} on model_type {:?} is not implemented",
                raw.model_type
            )),
        },
    }
}

impl TryFrom<RawDecoderConfig> for DecoderConfig {
    type Error = String;

    fn try_from(raw: RawDecoderConfig) -> Result<Self, String> {
        if !MODEL_TYPES.contains(&raw.model_type.as_str()) {
            return Err(format!(
                "model_type {:?} is not implemented (implemented: {})",
                raw.model_type,
                MODEL_TYPES.join(", ")
            ));
        }
        if let Some(act) = &raw.hidden_act
            && !matches!(act.as_str(), "silu" | "swish")
        {
            return Err(format!(
                "hidden_act {act:?} is not implemented (the gated MLP uses silu)"
            ));
        }
        if raw.mlp_bias {
            return Err("mlp_bias true (biases on the MLP projections) is not implemented".into());
        }
        if let Some(f) = raw.partial_rotary_factor
            && f != 1.0
        {
            return Err(format!(
                "partial_rotary_factor {f} (RoPE on part of each head) is not implemented"
            ));
        }
        if let Some(q) = &raw.quantization_config {
            return Err(format!(
                "quantization_config (quant_method {}) is not implemented: use an unquantised folder",
                q.get("quant_method").unwrap_or(&serde_json::Value::Null)
            ));
        }
        let (rope_theta, rope_scaling) = rope_settings(&raw)?;
        let sliding_window = attention_window(&raw)?;
        let config = DecoderConfig {
            model_type: raw.model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: raw.head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias,
            sliding_window,
            max_position_embeddings: raw.max_position_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
            pad_token_id: raw.pad_token_id,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Reads a JSON file into `T`; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl DecoderConfig {
    /// Reads and checks `config.json` (errors name the file and the field).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        read_json(path)
    }

    /// Checks the shapes agree and the RoPE scaling is one this crate implements.
    pub fn validate(&self) -> Result<(), String> {
        let h = self.num_attention_heads;
        if h == 0 || self.kv_heads() == 0 || !h.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {h} must be a positive multiple of num_key_value_heads {}",
                self.kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(h) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {h}",
                self.hidden_size
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "default" | "linear" => {}
                "llama3" => {
                    if s.low_freq_factor.is_none()
                        || s.high_freq_factor.is_none()
                        || s.original_max_position_embeddings.is_none()
                    {
                        return Err(
                            "llama3 rope_scaling needs low_freq_factor, high_freq_factor \
                                    and original_max_position_embeddings"
                                .into(),
                        );
                    }
                }
                other => return Err(format!("rope_scaling type {other:?} is not supported")),
            }
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q, k and v carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }

    /// Whether the output projection carries a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }

    /// End-of-sequence token ids.
    pub fn eos_ids(&self) -> Vec<i64> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
            _ => Vec::new(),
        }
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them), with the configured scaling,
    /// computed as transformers does (in f32 from an f32 power).
    pub fn inverse_frequencies(&self) -> Vec<f32> {
        let d = self.head_dim();
        let base = self.rope_theta as f32;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.rope_scaling {
            Some(s) if s.rope_type == "linear" => inv.iter().map(|f| f / s.factor as f32).collect(),
            Some(s) if s.rope_type == "llama3" => {
                let factor = s.factor as f32;
                let low = s.low_freq_factor.unwrap_or(1.0) as f32;
                let high = s.high_freq_factor.unwrap_or(4.0) as f32;
                let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => inv,
        }
    }
}
