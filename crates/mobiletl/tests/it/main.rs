//! The integration tests of `mobiletl`, in one binary (one link of burn instead of
//! one per file).

mod cli;
mod finetune;
mod masked_activation;
mod parity;
mod preprocess;
mod train;
mod train_resume;
mod weights;
