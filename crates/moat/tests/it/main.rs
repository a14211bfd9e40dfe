//! The integration tests of `moat`, in one binary (one link of burn instead of
//! one per file).

mod cli;
mod params;
mod parity;
mod train;
mod windows;
