//! The integration tests of `hidiffusion`, in one binary (one link of burn instead of
//! one per file).

mod cli;
mod common;
mod official;
mod parity;
mod schedulers;
