//! The MOAT family: the nine official variants and the knobs of `moat.get_model`.

use std::fmt;
use std::str::FromStr;

/// One of the nine official MOAT models (deeplab2 `model/pixel_encoder/moat.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MoatVariant {
    #[value(name = "moat-0")]
    Moat0,
    #[value(name = "moat-1")]
    Moat1,
    #[value(name = "moat-2")]
    Moat2,
    #[value(name = "moat-3")]
    Moat3,
    #[value(name = "moat-4")]
    Moat4,
    #[value(name = "tiny-moat-0")]
    TinyMoat0,
    #[value(name = "tiny-moat-1")]
    TinyMoat1,
    #[value(name = "tiny-moat-2")]
    TinyMoat2,
    #[value(name = "tiny-moat-3")]
    TinyMoat3,
}

/// How input pixels are normalised before the stem (the model zoo's two "options").
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum InputNormalization {
    /// `(x - 255 * mean) / (255 * std)` with the ImageNet mean and std (option 1).
    ImageNet,
    /// `(x - 127.5) / 127.5` (option 2: MOAT-2/3/4).
    Symmetric,
}

impl InputNormalization {
    /// Per-channel `(mean, std)` on the 0..=255 pixel scale.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            InputNormalization::ImageNet => (
                [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
                [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
            ),
            InputNormalization::Symmetric => ([127.5; 3], [127.5; 3]),
        }
    }
}

impl MoatVariant {
    /// All variants, in the order of the official parameter-count test.
    pub const ALL: [MoatVariant; 9] = [
        MoatVariant::Moat0,
        MoatVariant::Moat1,
        MoatVariant::Moat2,
        MoatVariant::Moat3,
        MoatVariant::Moat4,
        MoatVariant::TinyMoat0,
        MoatVariant::TinyMoat1,
        MoatVariant::TinyMoat2,
        MoatVariant::TinyMoat3,
    ];

    /// The command-line name (`moat-0`, `tiny-moat-2`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MoatVariant::Moat0 => "moat-0",
            MoatVariant::Moat1 => "moat-1",
            MoatVariant::Moat2 => "moat-2",
            MoatVariant::Moat3 => "moat-3",
            MoatVariant::Moat4 => "moat-4",
            MoatVariant::TinyMoat0 => "tiny-moat-0",
            MoatVariant::TinyMoat1 => "tiny-moat-1",
            MoatVariant::TinyMoat2 => "tiny-moat-2",
            MoatVariant::TinyMoat3 => "tiny-moat-3",
        }
    }

    /// `(stem width, blocks per stage, channels per stage, survival probability)`.
    fn shape(self) -> (usize, [usize; 4], [usize; 4], f64) {
        match self {
            MoatVariant::Moat0 => (64, [2, 3, 7, 2], [96, 192, 384, 768], 0.8),
            MoatVariant::Moat1 => (64, [2, 6, 14, 2], [96, 192, 384, 768], 0.7),
            MoatVariant::Moat2 => (128, [2, 6, 14, 2], [128, 256, 512, 1024], 0.7),
            MoatVariant::Moat3 => (160, [2, 12, 28, 2], [160, 320, 640, 1280], 0.4),
            MoatVariant::Moat4 => (256, [2, 12, 28, 2], [256, 512, 1024, 2048], 0.3),
            MoatVariant::TinyMoat0 => (32, [2, 3, 7, 2], [32, 64, 128, 256], 1.0),
            MoatVariant::TinyMoat1 => (40, [2, 3, 7, 2], [40, 80, 160, 320], 1.0),
            MoatVariant::TinyMoat2 => (56, [2, 3, 7, 2], [56, 112, 224, 448], 1.0),
            MoatVariant::TinyMoat3 => (80, [2, 3, 7, 2], [80, 160, 320, 640], 0.9),
        }
    }

    /// The resolution of the released checkpoint (and of the model-zoo FLOPs).
    pub fn pretrain_resolution(self) -> usize {
        match self {
            MoatVariant::Moat0 | MoatVariant::Moat1 => 224,
            MoatVariant::Moat2 => 384,
            MoatVariant::Moat3 | MoatVariant::Moat4 => 512,
            _ => 256,
        }
    }

    /// Input normalisation of the released checkpoint.
    pub fn input_normalization(self) -> InputNormalization {
        match self {
            MoatVariant::Moat2 | MoatVariant::Moat3 | MoatVariant::Moat4 => {
                InputNormalization::Symmetric
            }
            _ => InputNormalization::ImageNet,
        }
    }

    /// Trainable parameters at 1000 classes, with and without relative position
    /// embedding, as asserted by the official `moat_test.py`.
    pub fn official_params(self) -> (usize, usize) {
        match self {
            MoatVariant::Moat0 => (27_846_892, 27_777_544),
            MoatVariant::Moat1 => (41_598_448, 41_467_864),
            MoatVariant::Moat2 => (73_422_408, 73_248_296),
            MoatVariant::Moat3 => (189_958_040, 189_536_280),
            MoatVariant::Moat4 => (483_214_184, 482_539_368),
            MoatVariant::TinyMoat0 => (3_355_348, 3_332_232),
            MoatVariant::TinyMoat1 => (5_122_895, 5_094_000),
            MoatVariant::TinyMoat2 => (9_772_741, 9_732_288),
            MoatVariant::TinyMoat3 => (19_534_390, 19_476_600),
        }
    }

    /// Model-zoo multiply-adds (billions) at [`Self::pretrain_resolution`].
    pub fn zoo_gmacs(self) -> f64 {
        match self {
            MoatVariant::Moat0 => 5.7,
            MoatVariant::Moat1 => 9.1,
            MoatVariant::Moat2 => 54.3,
            MoatVariant::Moat3 => 271.0,
            MoatVariant::Moat4 => 648.5,
            MoatVariant::TinyMoat0 => 1.1,
            MoatVariant::TinyMoat1 => 1.6,
            MoatVariant::TinyMoat2 => 3.0,
            MoatVariant::TinyMoat3 => 6.0,
        }
    }

    /// Model-zoo ImageNet-1k top-1 (%) with position embedding.
    pub fn zoo_top1(self) -> f64 {
        match self {
            MoatVariant::Moat0 => 83.3,
            MoatVariant::Moat1 => 84.2,
            MoatVariant::Moat2 => 87.5,
            MoatVariant::Moat3 => 88.4,
            MoatVariant::Moat4 => 89.1,
            MoatVariant::TinyMoat0 => 76.6,
            MoatVariant::TinyMoat1 => 79.2,
            MoatVariant::TinyMoat2 => 81.7,
            MoatVariant::TinyMoat3 => 83.3,
        }
    }

    /// The classification configuration of this variant (1000 classes, global
    /// attention, pool size 2, relative position embedding on).
    pub fn config(self) -> MoatConfig {
        let (stem, depths, channels, survival) = self.shape();
        MoatConfig {
            survival_prob: survival,
            ..MoatConfig::custom([stem, stem], depths, channels)
        }
    }
}

impl fmt::Display for MoatVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MoatVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.to_ascii_lowercase().replace('_', "-");
        MoatVariant::ALL
            .into_iter()
            .find(|v| v.name() == key || v.name().replace('-', "") == key.replace('-', ""))
            .ok_or_else(|| {
                format!(
                    "unknown MOAT variant {s:?} (expected one of: {})",
                    MoatVariant::ALL.map(|v| v.name()).join(", ")
                )
            })
    }
}

/// Attention extent of one MOAT stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttentionWindow {
    /// Attention over the whole feature map (classification).
    Global,
    /// Non-overlapping `[height, width]` windows, no shift.
    Window([usize; 2]),
}

/// Everything `moat.get_model` can set. Stage 1 and 2 are MBConv stages, 3 and 4 MOAT
/// stages, as in every official variant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoatConfig {
    /// Output channels of the two stem convolutions.
    pub stem_channels: [usize; 2],
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Output channels per stage.
    pub channels: [usize; 4],
    /// MBConv expansion ratio (inner width = ratio x output channels).
    pub expansion_rate: usize,
    /// Squeeze-excitation width as a fraction of the block's output channels.
    pub se_ratio: f64,
    /// Channels per attention head.
    pub head_size: usize,
    /// Relative position embedding table sizes `p` of stages 3 and 4 (tables are
    /// `[heads, 2p - 1, 2p - 1]`); `None` disables the embedding ("no_pe" models).
    pub position_embedding_size: Option<[usize; 2]>,
    /// Attention extent of stages 3 and 4.
    pub attention: [AttentionWindow; 2],
    /// Use global attention in the last block of each MOAT stage even when windowed.
    pub global_attention_at_end_of_stage: bool,
    /// Average-pooling window of the downsampling shortcut (2 classification, 3 downstream).
    pub pool_size: usize,
    /// Survival probability of the last block (drop path; 1 disables it). Block `i` of
    /// `n` keeps its branch with probability `1 - (1 - survival) * i / n`.
    pub survival_prob: f64,
    /// Classes of the logits head; `None` builds the backbone only.
    pub num_classes: Option<usize>,
    /// BatchNorm epsilon (Keras default 1e-3).
    pub batch_norm_eps: f64,
    /// Weight of a new batch in the BatchNorm running statistics: 0.01, Keras' momentum
    /// 0.99 of the official code. Short runs from scratch want more (0.1, PyTorch's
    /// default), or evaluation sees statistics still close to their initial values.
    #[serde(default = "keras_batch_norm_momentum")]
    pub batch_norm_momentum: f64,
    /// LayerNorm epsilon of the attention and the head.
    pub layer_norm_eps: f64,
}

fn keras_batch_norm_momentum() -> f64 {
    0.01
}

impl MoatConfig {
    /// A custom-width MOAT with the official defaults for everything else.
    pub fn custom(stem_channels: [usize; 2], depths: [usize; 4], channels: [usize; 4]) -> Self {
        MoatConfig {
            stem_channels,
            depths,
            channels,
            expansion_rate: 4,
            se_ratio: 0.25,
            head_size: 32,
            position_embedding_size: Some([14, 7]),
            attention: [AttentionWindow::Global; 2],
            global_attention_at_end_of_stage: false,
            pool_size: 2,
            survival_prob: 1.0,
            num_classes: Some(1000),
            batch_norm_eps: 1e-3,
            batch_norm_momentum: keras_batch_norm_momentum(),
            layer_norm_eps: 1e-5,
        }
    }

    /// Without relative position embedding (the "no_pe" checkpoints).
    pub fn without_position_embedding(mut self) -> Self {
        self.position_embedding_size = None;
        self
    }

    /// Window attention in stages 3 and 4.
    pub fn with_windows(mut self, stage3: [usize; 2], stage4: [usize; 2]) -> Self {
        self.attention = [
            AttentionWindow::Window(stage3),
            AttentionWindow::Window(stage4),
        ];
        self
    }

    /// The logits head size (`None`: backbone only).
    pub fn with_num_classes(mut self, classes: Option<usize>) -> Self {
        self.num_classes = classes;
        self
    }

    /// Attention heads of MOAT stage `stage` (0 or 1 for stages 3, 4).
    pub fn heads(&self, stage: usize) -> usize {
        self.channels[2 + stage] / self.head_size
    }

    /// Survival probability of the block with global index `block_id`.
    pub fn block_survival(&self, block_id: usize) -> f64 {
        let total: usize = self.depths.iter().sum();
        1.0 - (1.0 - self.survival_prob) * block_id as f64 / total as f64
    }

    /// Checks that an input of `height x width` can run: the stem and four stages halve
    /// it five times (TF "same" rounds up), and windows must tile the stage 3 / 4 maps.
    pub fn check_input(&self, height: usize, width: usize) -> Result<(), String> {
        let mut h = height.div_ceil(2);
        let mut w = width.div_ceil(2);
        for stage in 0..4 {
            h = h.div_ceil(2);
            w = w.div_ceil(2);
            if stage >= 2
                && let AttentionWindow::Window([wh, ww]) = self.attention[stage - 2]
                && (!h.is_multiple_of(wh) || !w.is_multiple_of(ww))
            {
                return Err(format!(
                    "stage {} feature map {h}x{w} (input {height}x{width}) is not divisible \
                     by its {wh}x{ww} attention window",
                    stage + 1
                ));
            }
        }
        Ok(())
    }
}
