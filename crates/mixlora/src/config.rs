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

/// The fields of `config.json` the decoder uses; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// `llama`, `mistral`, `qwen2`, ...
    #[serde(default = "default_model_type")]
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
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width (default `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The output head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v/o projections (LLaMA's `attention_bias`; Qwen2 always has
    /// q/k/v biases and no o bias).
    #[serde(default)]
    pub attention_bias: bool,
    /// Longest context.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token (a number or a list in the wild).
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Padding token, when the config names one.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
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
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let config: DecoderConfig = read_json(path)?;
        config.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
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
