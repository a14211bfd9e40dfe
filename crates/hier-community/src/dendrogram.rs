//! Dendrograms over leaf clusters, in SciPy's linkage convention.
//!
//! Leaf clusters are `0..L`; merge `t` creates cluster `L + t` from clusters `a` and `b`,
//! at `height`, holding `size` leaf clusters (SciPy's fourth column). Each merge also
//! records the edge density between its two sides, `e(A, B) / (|A| |B|)` in nodes, so
//! inversions (a merge denser than one below it) can be counted.

use serde::{Deserialize, Serialize};

use crate::Error;

/// One merge of two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Merge {
    /// First cluster merged.
    pub a: usize,
    /// Second cluster merged.
    pub b: usize,
    /// Height (dissimilarity) of the merge.
    pub height: f64,
    /// Number of leaf clusters below this merge.
    pub size: usize,
    /// Edge density between the two sides.
    pub density: f64,
}

/// A hierarchy over the leaf clusters of a graph's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dendrogram {
    /// Leaf cluster of each node.
    pub leaf_labels: Vec<usize>,
    /// Number of leaf clusters.
    pub num_leaves: usize,
    /// Merges in order; `num_leaves - 1` of them for a complete dendrogram.
    pub merges: Vec<Merge>,
}

impl Dendrogram {
    /// Checks the structure: every leaf label below `num_leaves`, each merge combining two
    /// existing, not yet merged clusters, sizes adding up, and `num_leaves - 1` merges.
    pub fn validate(&self) -> Result<(), Error> {
        let l = self.num_leaves;
        if let Some(&bad) = self.leaf_labels.iter().find(|&&x| x >= l) {
            return Err(Error::invalid(format!(
                "leaf label {bad} >= number of leaves {l}"
            )));
        }
        if self.merges.len() + 1 != l.max(1) {
            return Err(Error::invalid(format!(
                "{} merges for {l} leaves; a complete dendrogram has {}",
                self.merges.len(),
                l.saturating_sub(1)
            )));
        }
        let mut size = vec![1usize; l];
        let mut used = vec![false; l];
        for (t, m) in self.merges.iter().enumerate() {
            let id = l + t;
            for c in [m.a, m.b] {
                if c >= id || used[c] {
                    return Err(Error::invalid(format!(
                        "merge {t} uses cluster {c}, which does not exist yet or was merged"
                    )));
                }
                used[c] = true;
            }
            if m.a == m.b {
                return Err(Error::invalid(format!(
                    "merge {t} merges cluster {} with itself",
                    m.a
                )));
            }
            let s = size[m.a] + size[m.b];
            if s != m.size {
                return Err(Error::invalid(format!(
                    "merge {t} has size {} but its sides hold {s} leaves",
                    m.size
                )));
            }
            if !m.height.is_finite() {
                return Err(Error::invalid(format!("merge {t} has a non-finite height")));
            }
            size.push(s);
            used.push(false);
        }
        Ok(())
    }

    /// Cluster of each leaf after applying the first `num_leaves - k` merges (the
    /// official code's cut by merge count), numbered by first appearance.
    pub fn cut_leaves(&self, k: usize) -> Result<Vec<usize>, Error> {
        let l = self.num_leaves;
        if k == 0 {
            return Err(Error::invalid("cannot cut into 0 clusters"));
        }
        let applied = l.saturating_sub(k).min(self.merges.len());
        let mut parent: Vec<usize> = (0..l + applied).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for (t, m) in self.merges.iter().take(applied).enumerate() {
            let id = l + t;
            let (ra, rb) = (find(&mut parent, m.a), find(&mut parent, m.b));
            parent[ra] = id;
            parent[rb] = id;
        }
        let mut names = rustc_hash::FxHashMap::default();
        Ok((0..l)
            .map(|leaf| {
                let root = find(&mut parent, leaf);
                let next = names.len();
                *names.entry(root).or_insert(next)
            })
            .collect())
    }

    /// Cluster of each node after cutting into `k` clusters.
    pub fn cut_nodes(&self, k: usize) -> Result<Vec<usize>, Error> {
        let leaves = self.cut_leaves(k)?;
        Ok(self.leaf_labels.iter().map(|&l| leaves[l]).collect())
    }

    /// Number of merges denser than at least one merge directly below them, counting only
    /// the top `k - 1` merges (the dendrogram over `k` clusters); `k = num_leaves` counts
    /// them all.
    pub fn inversions(&self, k: usize) -> usize {
        let l = self.num_leaves;
        let first = self.merges.len().saturating_sub(k.saturating_sub(1));
        (first..self.merges.len())
            .filter(|&t| {
                let m = &self.merges[t];
                [m.a, m.b].iter().any(|&c| {
                    c >= l + first && m.density > self.merges[c - l].density * (1.0 + 1e-12)
                })
            })
            .count()
    }

    /// SciPy linkage rows `[a, b, height, size]`.
    pub fn scipy_linkage(&self) -> Vec<[f64; 4]> {
        self.merges
            .iter()
            .map(|m| [m.a as f64, m.b as f64, m.height, m.size as f64])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(a: usize, b: usize, height: f64, size: usize, density: f64) -> Merge {
        Merge {
            a,
            b,
            height,
            size,
            density,
        }
    }

    #[test]
    fn cut_and_inversions() {
        // Leaves 0..4: (0,1) -> 4, (2,3) -> 5, (4,5) -> 6.
        let d = Dendrogram {
            leaf_labels: vec![0, 0, 1, 2, 3],
            num_leaves: 4,
            merges: vec![
                merge(0, 1, 0.1, 2, 0.9),
                merge(2, 3, 0.2, 2, 0.5),
                merge(4, 5, 0.3, 4, 0.6),
            ],
        };
        d.validate().unwrap();
        assert_eq!(d.cut_leaves(4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(d.cut_leaves(2).unwrap(), vec![0, 0, 1, 1]);
        assert_eq!(d.cut_nodes(3).unwrap(), vec![0, 0, 0, 1, 2]);
        assert_eq!(d.cut_leaves(1).unwrap(), vec![0; 4]);
        // The root (density 0.6) is denser than merge 5 (0.5): one inversion.
        assert_eq!(d.inversions(4), 1);
        // Over the top 2 clusters there is a single merge and no merge below it.
        assert_eq!(d.inversions(2), 0);
        let mut bad = d.clone();
        bad.merges[2].size = 3;
        assert!(bad.validate().is_err());
        bad.merges[2] = merge(4, 4, 0.3, 4, 0.6);
        assert!(bad.validate().is_err());
    }
}
