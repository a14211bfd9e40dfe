//! Project tooling, run as `cargo xtask <command>` (the rust-analyzer `xtask` pattern: no
//! shell scripts, every tool is ordinary Rust).
//!
//! - [`eval`]: paper reproductions, `cargo xtask eval <paper>|all [--quick] [--json]`,
//!   each listing its paper's headline [`claims`] with a verdict computed from what it
//!   measured.
//! - [`fetch`]: dataset download with resume and checksum verification against
//!   `datasets/manifest.toml`, `cargo xtask fetch <dataset>`.
//! - [`bench`]: benchmarks, `cargo xtask bench <target>`.
//! - [`docs`]: the mdBook site with the latest results, `cargo xtask docs`.

pub mod bench;
pub mod claims;
pub mod docs;
pub mod eval;
pub mod fetch;
pub mod manifest;
pub mod papers;
pub mod report;

use std::path::PathBuf;

/// Every xtask binary and test counts its heap use, so benchmarks can report peak memory.
#[global_allocator]
static ALLOCATOR: bench::alloc::CountingAllocator = bench::alloc::CountingAllocator;

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
