//! LLaMA-family decoder-only transformers on burn, configured from and loaded out of
//! Hugging Face model folders (`config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`): LLaMA 1/2/3, Mistral, Qwen2, TinyLlama, SmolLM2.
//! LoRA and DoRA adapters in PEFT's format ([`adapters`]); the substrate of MixLoRA
//! (Li et al.).
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! let device = Device::flex();
//! let model = mixlora::load_decoder("SmolLM2-135M".as_ref(), &device)?;
//! let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 3], [1, 3]), &device);
//! let logits = model.forward(ids, None); // [1, 3, vocab]
//! # Ok::<(), mixlora::ModelError>(())
//! ```

pub mod adapters;
pub mod config;
pub mod finetune;
pub mod fused;
pub mod generate;
pub mod model;
pub mod moe;
pub mod moe_adapter;
pub mod tasks;
pub mod text;
pub mod train;
pub mod weights;

pub use adapters::{AdapterConfig, attach, causal_lm_loss, load_adapter, merge, save_adapter};
pub use config::{DecoderConfig, RopeScaling};
pub use generate::{Sampling, generate, greedy};
pub use model::{Decoder, KvCache};
pub use moe::{AuxLossConfig, MixLora, RouterRecord, Routing, aux_loss, tokens_per_expert};
pub use moe_adapter::{
    MixLoraConfig, attach_mixlora, load_mixlora, save_mixlora, set_adapter_dropout,
};
pub use text::{TextStream, TextTokenizer};
pub use weights::{ModelError, load_decoder, random_decoder, save_decoder};
