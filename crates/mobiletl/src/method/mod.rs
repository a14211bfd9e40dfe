//! The MobileTL training method (Chiang et al.): pieces that change what a backward pass
//! keeps in memory.

pub mod finetune;
pub mod masked_activation;
pub mod measured_memory;
pub mod training_cost;

pub use finetune::{Method, MobileTlHooks, prepare};
pub use masked_activation::{MaskedActivation, MaskedActivationOps, packed_mask_bytes};
