//! Hierarchical community detection, bottom-up versus top-down, after Dreveton, Kuroda,
//! Grossglauser and Thiran, *When Does Bottom-up Beat Top-down in Hierarchical Community
//! Detection?* (arXiv 2306.00833).
//!
//! - [`hsbm`]: the hierarchical stochastic block model, generated in `O(n + m)`.
//! - [`theory`]: Chernoff-Hellinger divergences and the exact-recovery thresholds.
//! - [`bottom_up`]: Bethe-Hessian spectral clustering + average linkage (the paper's
//!   algorithm), [`top_down`]: recursive regularised spectral bipartition (the baseline),
//!   [`paris`]: Paris from singletons.
//! - [`metrics`]: accuracy (Hungarian), AMI, ARI; [`dendrogram`]: cuts and inversions.
//! - [`io`]: edge lists, SocioPatterns contacts, GML, label files.
//!
//! Everything is sparse: the graph is a CSR structure and eigenvectors come from
//! matrix-free Lanczos / Krylov-Schur solvers (faer), so memory is linear in the number of
//! edges.
//!
//! ```
//! use hier_community::bottom_up::{bottom_up, BottomUpOptions};
//! use hier_community::hsbm::{HsbmConfig, Rates};
//! use hier_community::metrics::accuracy;
//! use hier_community::tree::Tree;
//!
//! let config = HsbmConfig::with_equal_sizes(
//!     Tree::parse("binary:2")?,
//!     100,
//!     Rates::LogScaled(vec![5.0, 15.0, 50.0]),
//! );
//! let hsbm = config.generate(1)?;
//! let options = BottomUpOptions { k: Some(4), ..Default::default() };
//! let (dendrogram, _) = bottom_up(&hsbm.graph, &options)?;
//! // Depth 1 of the truth has 2 clusters: cut the dendrogram there.
//! let top = dendrogram.cut_nodes(2)?;
//! assert_eq!(accuracy(&hsbm.labels[0], &top), 1.0);
//! # Ok::<(), hier_community::Error>(())
//! ```

pub mod bottom_up;
pub mod dendrogram;
pub mod eigen;
mod error;
pub mod evaluate;
pub mod graph;
pub mod hsbm;
pub mod io;
pub mod kmeans;
pub mod lobpcg;
pub mod metrics;
pub mod paris;
pub mod reproduce;
pub mod result;
pub mod theory;
pub mod top_down;
pub mod tree;

pub use error::Error;
pub use graph::Graph;
