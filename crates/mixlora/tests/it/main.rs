//! The integration tests of `mixlora`, in one binary (one link of burn instead of one
//! per file).

mod adapters;
mod cli;
mod config;
mod moe;
mod parity;
mod text;
mod train;
