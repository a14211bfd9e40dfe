//! The integration tests of `hier-community`, in one binary (one link of burn instead of
//! one per file).

mod cli;
mod invariants;
mod parity;
