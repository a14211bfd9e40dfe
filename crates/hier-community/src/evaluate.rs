//! Scoring a clustering result against ground truth at every depth of the hierarchy: cut
//! the dendrogram into the true number of clusters of that depth, then accuracy (Hungarian
//! matching), exact recovery (accuracy 1), AMI and ARI.

use serde::Serialize;

use crate::Error;
use crate::dendrogram::Dendrogram;
use crate::io::Labels;
use crate::metrics::{accuracy, adjusted_mutual_information, adjusted_rand_index};

/// Scores at one depth.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DepthScore {
    /// Depth (1 = coarsest).
    pub depth: usize,
    /// True number of clusters at this depth.
    pub true_k: usize,
    /// Number of clusters of the cut (below `true_k` when there are fewer leaves).
    pub cut_k: usize,
    /// Accuracy after Hungarian matching.
    pub accuracy: f64,
    /// Whether every node is classified correctly.
    pub exact_recovery: bool,
    /// Adjusted mutual information.
    pub ami: f64,
    /// Adjusted Rand index.
    pub ari: f64,
}

/// Scores of a result against labels.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    /// One entry per depth of the labels.
    pub depths: Vec<DepthScore>,
    /// Number of leaf clusters of the result.
    pub num_leaves: usize,
    /// Inversions among the merges of the whole dendrogram.
    pub inversions: usize,
    /// Inversions among the top `true K - 1` merges (finest depth).
    pub inversions_at_true_k: usize,
    /// Merges among the top `true K - 1`.
    pub merges_at_true_k: usize,
    /// Labelled nodes absent from the result (e.g. isolated nodes missing from an edge
    /// list); they are left out of the scores.
    pub missing_nodes: usize,
}

/// Aligns `labels` with the result's node ids and scores every depth.
pub fn evaluate(
    node_ids: &[String],
    dendrogram: &Dendrogram,
    labels: &Labels,
) -> Result<Evaluation, Error> {
    let index: rustc_hash::FxHashMap<&str, usize> = labels
        .node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut rows = Vec::with_capacity(node_ids.len());
    for id in node_ids {
        match index.get(id.as_str()) {
            Some(&i) => rows.push(i),
            None => {
                return Err(Error::invalid(format!(
                    "node {id:?} of the result has no label"
                )));
            }
        }
    }
    let missing_nodes = labels.node_ids.len() - rows.len();
    let mut depths = Vec::new();
    let mut finest_k = 1;
    for (d, column) in labels.columns.iter().enumerate() {
        let mut names = rustc_hash::FxHashMap::default();
        let truth: Vec<usize> = rows
            .iter()
            .map(|&i| {
                let next = names.len();
                *names.entry(column[i].as_str()).or_insert(next)
            })
            .collect();
        let true_k = names.len();
        finest_k = true_k;
        let pred = dendrogram.cut_nodes(true_k)?;
        let cut_k = pred.iter().max().map_or(0, |m| m + 1);
        let acc = accuracy(&truth, &pred);
        depths.push(DepthScore {
            depth: d + 1,
            true_k,
            cut_k,
            accuracy: acc,
            exact_recovery: acc == 1.0,
            ami: adjusted_mutual_information(&truth, &pred),
            ari: adjusted_rand_index(&truth, &pred),
        });
    }
    let at_k = finest_k.min(dendrogram.num_leaves);
    Ok(Evaluation {
        depths,
        num_leaves: dendrogram.num_leaves,
        inversions: dendrogram.inversions(dendrogram.num_leaves),
        inversions_at_true_k: dendrogram.inversions(at_k),
        merges_at_true_k: at_k.saturating_sub(1),
        missing_nodes,
    })
}
