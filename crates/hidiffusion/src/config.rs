//! The `config.json` files of a diffusers folder, read as diffusers reads them, and
//! checked for options this crate does not implement (each refused by name).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::weights::{LoadError, read_json};

/// A config value written either once for every block or as a list per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block.
    All(T),
    /// One value per down block.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value of each of `blocks` blocks.
    pub fn expand(&self, blocks: usize) -> Vec<T> {
        match self {
            PerBlock::All(v) => vec![v.clone(); blocks],
            PerBlock::Each(list) => list.clone(),
        }
    }
}

fn one() -> PerBlock<usize> {
    PerBlock::All(1)
}
fn two() -> PerBlock<usize> {
    PerBlock::All(2)
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn yes() -> bool {
    true
}
fn groups() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn cross_dim() -> PerBlock<usize> {
    PerBlock::All(1280)
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Latent size the model was trained at (64 for SD 1.5).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: PerBlock<usize>,
    /// Stride-2 convolution padding of the downsamplers.
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Resnet group-norm epsilon.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Width of the text embeddings attention attends to.
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    /// Heads per level (diffusers historically calls this `attention_head_dim`).
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock<usize>>,
    /// Heads per level, when given under its right name.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Transformer blocks inside each attention of a level.
    #[serde(default = "one")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Linear instead of 1x1-convolution `proj_in` / `proj_out`.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Time embedding sinusoid order.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Time embedding frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// `text_time` (SDXL) or none.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL: width of each embedded `time_ids` entry.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: input width of the additional embedding.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Mid block type (`UNetMidBlock2DCrossAttn`).
    #[serde(default = "mid_block")]
    pub mid_block_type: Option<String>,
    /// Activation (`silu`).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Resnet time conditioning (`default`).
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    /// Time embedding (`positional`).
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Mid block output scale.
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    /// Input convolution kernel.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Output convolution kernel.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Everything else, checked by [`UNetConfig::validate`].
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}

impl UNetConfig {
    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: UNetConfig = read_json(path)?;
        config.validate().map_err(|message| LoadError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Refuses options this crate does not implement, naming them.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.block_out_channels.len();
        if levels == 0
            || self.down_block_types.len() != levels
            || self.up_block_types.len() != levels
        {
            return Err(format!(
                "block_out_channels ({levels}), down_block_types ({}) and up_block_types ({}) must have one entry per level",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(format!("down block type {t:?} is not supported"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(format!("up block type {t:?} is not supported"));
            }
        }
        for (name, list_len) in [
            ("layers_per_block", per_block_len(&self.layers_per_block)),
            (
                "cross_attention_dim",
                per_block_len(&self.cross_attention_dim),
            ),
            (
                "transformer_layers_per_block",
                per_block_len(&self.transformer_layers_per_block),
            ),
            (
                "attention heads",
                self.heads_config().and_then(per_block_len),
            ),
        ] {
            if let Some(n) = list_len
                && n != levels
            {
                return Err(format!("{name} lists {n} values for {levels} levels"));
            }
        }
        if self.heads_config().is_none() {
            return Err("neither attention_head_dim nor num_attention_heads is set".into());
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "block_out_channels {c} is not divisible by norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
        }
        for (i, (&c, &h)) in self
            .block_out_channels
            .iter()
            .zip(&self.heads())
            .enumerate()
        {
            if h == 0 || c % h != 0 {
                return Err(format!(
                    "level {i}: {c} channels do not split into {h} heads"
                ));
            }
        }
        let unsupported =
            |field: &str, value: &str| Err(format!("{field} = {value:?} is not supported"));
        if self.act_fn != "silu" {
            return unsupported("act_fn", &self.act_fn);
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type);
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported("mid_block_type", &format!("{:?}", self.mid_block_type));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return Err("conv_in_kernel / conv_out_kernel other than 3 are not supported".into());
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none() =>
            {
                return Err("addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim".into());
            }
            Some("text_time") => {}
            Some(other) => return unsupported("addition_embed_type", other),
        }
        // Options that change the architecture in ways this crate does not build: any
        // non-default value is refused rather than silently ignored.
        for (key, default) in [
            ("class_embed_type", Value::Null),
            ("encoder_hid_dim", Value::Null),
            ("encoder_hid_dim_type", Value::Null),
            ("time_cond_proj_dim", Value::Null),
            ("num_class_embeds", Value::Null),
            ("dual_cross_attention", Value::Bool(false)),
            ("only_cross_attention", Value::Bool(false)),
            ("center_input_sample", Value::Bool(false)),
            ("resnet_skip_time_act", Value::Bool(false)),
            ("resnet_out_scale_factor", Value::from(1.0)),
            ("timestep_post_act", Value::Null),
            ("time_embedding_dim", Value::Null),
            ("time_embedding_act_fn", Value::Null),
            ("dropout", Value::from(0.0)),
            ("cross_attention_norm", Value::Null),
            ("attention_type", Value::from("default")),
            ("class_embeddings_concat", Value::Bool(false)),
            ("mid_block_only_cross_attention", Value::Null),
            ("reverse_transformer_layers_per_block", Value::Null),
        ] {
            if let Some(v) = self.other.get(key)
                && *v != default
                && !(v.is_number() && default.is_number() && v.as_f64() == default.as_f64())
            {
                return Err(format!("{key} = {v} is not supported"));
            }
        }
        Ok(())
    }

    fn heads_config(&self) -> Option<&PerBlock<usize>> {
        // diffusers: `num_attention_heads = num_attention_heads or attention_head_dim`
        // (the original configs put the head count in `attention_head_dim`).
        self.num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
    }

    /// Attention heads per level.
    pub fn heads(&self) -> Vec<usize> {
        self.heads_config()
            .map(|h| h.expand(self.block_out_channels.len()))
            .unwrap_or_default()
    }

    /// Whether the model takes SDXL's `text_embeds` and `time_ids`.
    pub fn is_sdxl_conditioning(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    /// How many times the up path doubles the resolution.
    pub fn upsamplings(&self) -> usize {
        self.block_out_channels.len() - 1
    }
}

fn per_block_len(v: &PerBlock<usize>) -> Option<usize> {
    match v {
        PerBlock::All(_) => None,
        PerBlock::Each(list) => Some(list.len()),
    }
}

fn vae_scale() -> f64 {
    0.18215
}
fn vae_groups() -> usize {
    32
}
fn vae_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn vae_up_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn vae_channels() -> Vec<usize> {
    vec![64]
}
fn one_layer() -> usize {
    1
}
fn three_ch() -> usize {
    3
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels.
    #[serde(default = "three_ch")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three_ch")]
    pub out_channels: usize,
    /// Encoder block types.
    #[serde(default = "vae_block_types")]
    pub down_block_types: Vec<String>,
    /// Decoder block types.
    #[serde(default = "vae_up_types")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "vae_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (decoder: one more).
    #[serde(default = "one_layer")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// Group-norm groups.
    #[serde(default = "vae_groups")]
    pub norm_num_groups: usize,
    /// Latents are the encoder's sample times this (0.18215 SD 1.x/2.x, 0.13025 SDXL).
    #[serde(default = "vae_scale")]
    pub scaling_factor: f64,
    /// Latent shift (SD3-style VAEs; none for SD).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether the mid block has attention.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Whether `quant_conv` / `post_quant_conv` exist.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// See `use_quant_conv`.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Everything else.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl VaeConfig {
    /// How many pixels one latent covers per side: `2 ** (len(block_out_channels) - 1)`,
    /// as diffusers' pipelines derive `vae_scale_factor` (8 for Stable Diffusion).
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: VaeConfig = read_json(path)?;
        let bad = |message: String| LoadError::Config {
            path: path.to_path_buf(),
            message,
        };
        let levels = config.block_out_channels.len();
        if levels == 0
            || config.down_block_types.len() != levels
            || config.up_block_types.len() != levels
        {
            return Err(bad(
                "block types and block_out_channels disagree in length".into()
            ));
        }
        if let Some(t) = config
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(bad(format!("down block type {t:?} is not supported")));
        }
        if let Some(t) = config
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(bad(format!("up block type {t:?} is not supported")));
        }
        if config.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(bad("shift_factor is not supported".into()));
        }
        if let Some(c) = config
            .block_out_channels
            .iter()
            .find(|&&c| c % config.norm_num_groups != 0)
        {
            return Err(bad(format!(
                "block_out_channels {c} is not divisible by norm_num_groups {}",
                config.norm_num_groups
            )));
        }
        Ok(config)
    }
}

fn clip_act() -> String {
    "quick_gelu".into()
}
fn ln_eps() -> f64 {
    1e-5
}
fn max_pos() -> usize {
    77
}
fn eos_default() -> i64 {
    2
}

/// `text_encoder/config.json` of a `CLIPTextModel` / `CLIPTextModelWithProjection`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Tokens.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Positions.
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    #[serde(default = "clip_act")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "ln_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (with projection only).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// End-of-text id; 2 selects transformers' legacy pooling (the highest id).
    #[serde(default = "eos_default")]
    pub eos_token_id: i64,
    /// Architecture names.
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl ClipTextConfig {
    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: ClipTextConfig = read_json(path)?;
        let bad = |message: String| LoadError::Config {
            path: path.to_path_buf(),
            message,
        };
        if config.hidden_act != "quick_gelu" && config.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported",
                config.hidden_act
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(
                "hidden_size does not split into num_attention_heads".into()
            ));
        }
        Ok(config)
    }

    /// Whether the folder holds a `CLIPTextModelWithProjection` (SDXL's second encoder).
    pub fn with_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection")
    }
}

/// The UNet configurations of the released checkpoints (their `unet/config.json`), for
/// benchmarks and cost counts that need the architecture without the weights.
pub fn released_unet_config(kind: crate::pipeline::ModelKind) -> UNetConfig {
    use crate::pipeline::ModelKind;
    let sd = |heads: Value, cross: usize, linear: bool| {
        serde_json::json!({
            "attention_head_dim": heads,
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": cross,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 2,
            "sample_size": 64,
            "use_linear_projection": linear,
        })
    };
    let value = match kind {
        ModelKind::Sd1 => sd(8.into(), 768, false),
        ModelKind::Sd2 => sd(serde_json::json!([5, 10, 20, 20]), 1024, true),
        ModelKind::Sdxl | ModelKind::SdxlTurbo => serde_json::json!({
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 2,
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": if kind == ModelKind::SdxlTurbo { 64 } else { 128 },
            "transformer_layers_per_block": [1, 2, 10],
            "use_linear_projection": true,
        }),
    };
    let config: UNetConfig = serde_json::from_value(value).expect("a valid config");
    config.validate().expect("a supported config");
    config
}
