//! `result.json`: what `hier-community cluster` writes and `evaluate` reads. A stable,
//! documented format other tools script against:
//!
//! - `method`: `"bottom-up"`, `"top-down"` or `"paris"`;
//! - `node_ids`: external node ids;
//! - `leaf_labels`: leaf cluster of each node, aligned with `node_ids`;
//! - `linkage`: SciPy linkage rows `[a, b, height, size]` over the leaf clusters;
//! - `merge_densities`: edge density between the two sides of each merge;
//! - `num_leaves`, `k_estimated`, `parameters`, `graph`, `timings` (seconds per phase).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::dendrogram::{Dendrogram, Merge};

/// The serialised outcome of one clustering run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterResult {
    /// Algorithm name.
    pub method: String,
    /// External node ids.
    pub node_ids: Vec<String>,
    /// Leaf cluster per node, aligned with `node_ids`.
    pub leaf_labels: Vec<usize>,
    /// Number of leaf clusters.
    pub num_leaves: usize,
    /// Whether the number of leaf clusters was estimated (bottom-up without `--k`).
    pub k_estimated: bool,
    /// SciPy linkage rows `[a, b, height, size]`.
    pub linkage: Vec<[f64; 4]>,
    /// Edge density between the two sides of each merge.
    pub merge_densities: Vec<f64>,
    /// Settings of the run.
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Graph summary: nodes, edges, weighted.
    pub graph: BTreeMap<String, serde_json::Value>,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
}

impl ClusterResult {
    /// The dendrogram this result describes (validated).
    pub fn dendrogram(&self) -> Result<Dendrogram, Error> {
        if self.merge_densities.len() != self.linkage.len() {
            return Err(Error::invalid(
                "result: merge_densities and linkage differ in length",
            ));
        }
        if self.leaf_labels.len() != self.node_ids.len() {
            return Err(Error::invalid(
                "result: leaf_labels and node_ids differ in length",
            ));
        }
        let merges = self
            .linkage
            .iter()
            .zip(&self.merge_densities)
            .enumerate()
            .map(|(t, (row, &density))| {
                let int = |x: f64, what: &str| {
                    if x >= 0.0 && x.fract() == 0.0 {
                        Ok(x as usize)
                    } else {
                        Err(Error::invalid(format!(
                            "result: linkage row {t}: {what} {x} is not a count"
                        )))
                    }
                };
                Ok(Merge {
                    a: int(row[0], "cluster")?,
                    b: int(row[1], "cluster")?,
                    height: row[2],
                    size: int(row[3], "size")?,
                    density,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let d = Dendrogram {
            leaf_labels: self.leaf_labels.clone(),
            num_leaves: self.num_leaves,
            merges,
        };
        d.validate()?;
        Ok(d)
    }

    /// Packs a dendrogram with its metadata.
    pub fn new(
        method: &str,
        node_ids: Vec<String>,
        dendrogram: &Dendrogram,
        k_estimated: bool,
    ) -> Self {
        ClusterResult {
            method: method.to_string(),
            node_ids,
            leaf_labels: dendrogram.leaf_labels.clone(),
            num_leaves: dendrogram.num_leaves,
            k_estimated,
            linkage: dendrogram.scipy_linkage(),
            merge_densities: dendrogram.merges.iter().map(|m| m.density).collect(),
            parameters: BTreeMap::new(),
            graph: BTreeMap::new(),
            timings: Vec::new(),
        }
    }

    /// Reads a result file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::parse(path, e.line(), format!("not a result file: {e}")))
    }

    /// Writes the result atomically.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        crate::io::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            std::io::Write::write_all(w, b"\n")
        })
    }
}
