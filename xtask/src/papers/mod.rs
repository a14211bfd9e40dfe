//! Per-paper reproductions: each turns a crate's experiment functions into the "paper vs
//! this implementation" report of `cargo xtask eval`.

pub mod hidiffusion;
pub mod hier_community;
pub mod mixlora;
pub mod moat;
pub mod mobiletl;

use std::path::{Path, PathBuf};

/// The directory of a fetched dataset: `<data_dir>/<name>` when it exists, else the shared
/// test-data folder beside the workspace (`../shared/datasets/<name>`) when present.
pub fn dataset_dir(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let fetched = data_dir.join(name);
    if fetched.is_dir() {
        return Some(fetched);
    }
    let shared = crate::workspace_root()
        .join("../shared/datasets")
        .join(name);
    shared.is_dir().then_some(shared)
}
