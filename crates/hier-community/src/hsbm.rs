//! Hierarchical stochastic block model (HSBM) generator.
//!
//! Nodes are grouped into the leaf communities of a [`Tree`]; an edge between two nodes
//! appears independently with probability `p[g]`, where `g` is the depth of the lowest
//! common ancestor of their communities (for two nodes of the same community, the depth
//! of that leaf). With log-scaled rates, `p[g] = a[g] * ln(n) / n` (Section 2 of the
//! paper). Sampling skips over absent pairs with geometric jumps inside each pair of
//! blocks, so generation takes `O(n + m)` expected time rather than `O(n^2)` coin flips;
//! each block pair has its own random stream derived from the seed, so the graph depends
//! only on the seed, not on the number of threads.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Error;
use crate::graph::Graph;
use crate::tree::Tree;

/// Edge rates per depth of the lowest common ancestor (index 0 = root).
#[derive(Debug, Clone, PartialEq)]
pub enum Rates {
    /// `a[g]`, giving `p[g] = a[g] ln(n) / n` (the paper's exact-recovery regime).
    LogScaled(Vec<f64>),
    /// Raw probabilities `p[g]`.
    Probabilities(Vec<f64>),
}

impl Rates {
    /// Log-scaled rates rescaled so that a balanced binary HSBM with equal communities on
    /// `n` nodes has the given mean degree (for benchmarks at a prescribed density). The
    /// mean degree is `ln(n) * sum_g a_g * (fraction of nodes at common-ancestor depth g)`.
    pub fn scaled_to_mean_degree(self, mean_degree: f64, n: usize) -> Rates {
        match self {
            Rates::LogScaled(a) => {
                let depth = a.len() - 1;
                // Fraction of other nodes whose common ancestor is at depth g: 2^-(g+1) for
                // g < depth, 2^-depth for the own leaf.
                let weight = |g: usize| {
                    if g < depth {
                        0.5f64.powi(g as i32 + 1)
                    } else {
                        0.5f64.powi(depth as i32)
                    }
                };
                let current: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(g, v)| v * weight(g))
                    .sum::<f64>()
                    * (n as f64).ln();
                let factor = mean_degree / current;
                Rates::LogScaled(a.into_iter().map(|v| v * factor).collect())
            }
            other => other,
        }
    }
}

/// A hierarchical SBM: tree, community sizes and rates.
#[derive(Debug, Clone)]
pub struct HsbmConfig {
    /// The hierarchy; its leaves are the communities.
    pub tree: Tree,
    /// Number of nodes in each leaf community, in the tree's leaf order.
    pub sizes: Vec<usize>,
    /// Rates by depth of the lowest common ancestor, `0..=tree.max_depth()`.
    pub rates: Rates,
}

/// A generated graph with its ground truth.
#[derive(Debug, Clone)]
pub struct Hsbm {
    /// The graph; nodes are numbered community by community.
    pub graph: Graph,
    /// Leaf community (index into the tree's leaves) of each node.
    pub community: Vec<usize>,
    /// `labels[d][i]`: node `i`'s cluster at depth `d + 1` (coarse to fine).
    pub labels: Vec<Vec<usize>>,
}

impl HsbmConfig {
    /// Equal-sized communities of `leaf_size` nodes.
    pub fn with_equal_sizes(tree: Tree, leaf_size: usize, rates: Rates) -> Self {
        let sizes = vec![leaf_size; tree.num_leaves()];
        HsbmConfig { tree, sizes, rates }
    }

    /// Total number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Edge probability per depth of the lowest common ancestor.
    pub fn probabilities(&self) -> Result<Vec<f64>, Error> {
        let n = self.num_nodes() as f64;
        let depth = self.tree.max_depth();
        let (values, scale) = match &self.rates {
            Rates::LogScaled(a) => (a, n.ln() / n),
            Rates::Probabilities(p) => (p, 1.0),
        };
        if values.len() != depth + 1 {
            return Err(Error::invalid(format!(
                "{} rates given for a tree of depth {depth}: one per depth 0..={depth} is needed",
                values.len()
            )));
        }
        values
            .iter()
            .map(|&v| {
                let p = v * scale;
                if !(0.0..=1.0).contains(&p) || !p.is_finite() {
                    Err(Error::invalid(format!(
                        "rate {v} gives edge probability {p}, outside [0, 1]"
                    )))
                } else {
                    Ok(p)
                }
            })
            .collect()
    }

    fn validate(&self) -> Result<(), Error> {
        if self.sizes.len() != self.tree.num_leaves() {
            return Err(Error::invalid(format!(
                "{} community sizes for {} leaves",
                self.sizes.len(),
                self.tree.num_leaves()
            )));
        }
        if self.sizes.contains(&0) {
            return Err(Error::invalid("community sizes must be positive"));
        }
        if self.num_nodes() > u32::MAX as usize {
            return Err(Error::invalid("more than 2^32 nodes"));
        }
        Ok(())
    }

    /// Probability of an edge between communities `a` and `b` (leaf indices).
    fn pair_probability(&self, probs: &[f64], a: usize, b: usize) -> f64 {
        let leaves = self.tree.leaves();
        probs[self.tree.lca_depth(leaves[a], leaves[b])]
    }

    /// Expected number of edges.
    pub fn expected_edges(&self) -> Result<f64, Error> {
        self.validate()?;
        let probs = self.probabilities()?;
        let k = self.sizes.len();
        let mut total = 0.0;
        for a in 0..k {
            for b in a..k {
                total += self.pair_probability(&probs, a, b) * pair_count(&self.sizes, a, b) as f64;
            }
        }
        Ok(total)
    }

    /// Samples a graph with the given seed.
    pub fn generate(&self, seed: u64) -> Result<Hsbm, Error> {
        self.validate()?;
        let probs = self.probabilities()?;
        let k = self.sizes.len();
        let mut starts = vec![0usize; k + 1];
        for a in 0..k {
            starts[a + 1] = starts[a] + self.sizes[a];
        }
        let block_pairs: Vec<(usize, usize)> =
            (0..k).flat_map(|a| (a..k).map(move |b| (a, b))).collect();
        let chunks: Vec<Vec<(u32, u32)>> = block_pairs
            .par_iter()
            .map(|&(a, b)| {
                let p = self.pair_probability(&probs, a, b);
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, a as u64, b as u64));
                let mut out = Vec::new();
                let total = pair_count(&self.sizes, a, b);
                sample_indices(&mut rng, p, total, |idx| {
                    let (i, j) = if a == b {
                        let (i, j) = triangle_pair(idx);
                        (starts[a] + i as usize, starts[a] + j as usize)
                    } else {
                        let sb = self.sizes[b] as u64;
                        (
                            starts[a] + (idx / sb) as usize,
                            starts[b] + (idx % sb) as usize,
                        )
                    };
                    out.push((i as u32, j as u32));
                });
                out
            })
            .collect();
        let pairs: Vec<(u32, u32)> = chunks.concat();
        let n = self.num_nodes();
        let ids = (0..n).map(|i| i.to_string()).collect();
        let graph = Graph::from_unique_pairs(ids, &pairs, None);
        let mut community = Vec::with_capacity(n);
        for (a, &s) in self.sizes.iter().enumerate() {
            community.extend(std::iter::repeat_n(a, s));
        }
        let labels = self
            .tree
            .leaf_labels_per_depth()
            .into_iter()
            .map(|per_leaf| community.iter().map(|&c| per_leaf[c]).collect())
            .collect();
        Ok(Hsbm {
            graph,
            community,
            labels,
        })
    }
}

/// Number of node pairs between communities `a <= b` (unordered within a community).
fn pair_count(sizes: &[usize], a: usize, b: usize) -> u64 {
    let (sa, sb) = (sizes[a] as u64, sizes[b] as u64);
    if a == b { sa * (sa - 1) / 2 } else { sa * sb }
}

/// Calls `emit` with every index in `0..total` kept independently with probability `p`,
/// in increasing order, drawing one geometric gap per kept index.
fn sample_indices(rng: &mut ChaCha8Rng, p: f64, total: u64, mut emit: impl FnMut(u64)) {
    if p <= 0.0 || total == 0 {
        return;
    }
    if p >= 1.0 {
        (0..total).for_each(emit);
        return;
    }
    let log_q = (-p).ln_1p();
    let mut idx: u64 = 0;
    loop {
        // Gap ~ Geometric(p): number of rejected pairs before the next kept one.
        let u: f64 = rng.random::<f64>();
        let gap = ((1.0 - u).ln() / log_q).floor();
        if gap >= (total - idx) as f64 {
            return;
        }
        idx += gap as u64;
        emit(idx);
        idx += 1;
        if idx >= total {
            return;
        }
    }
}

/// The `k`-th pair `(i, j)`, `i < j`, in the order (0,1), (0,2), (1,2), (0,3), ...
fn triangle_pair(k: u64) -> (u64, u64) {
    let mut j = ((1.0 + (1.0 + 8.0 * k as f64).sqrt()) / 2.0) as u64;
    while j * (j - 1) / 2 > k {
        j -= 1;
    }
    while (j + 1) * j / 2 <= k {
        j += 1;
    }
    (k - j * (j - 1) / 2, j)
}

/// A seed for block pair `(a, b)` from the user's seed (SplitMix64 finaliser).
fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_pairs_enumerate_every_pair_once() {
        let mut seen = Vec::new();
        for k in 0..45 {
            seen.push(triangle_pair(k));
        }
        let mut expected = Vec::new();
        for j in 1..10u64 {
            for i in 0..j {
                expected.push((i, j));
            }
        }
        assert_eq!(seen, expected);
        // Large indices stay exact.
        let j = 3_000_000u64;
        assert_eq!(triangle_pair(j * (j - 1) / 2 + 17), (17, j));
    }

    #[test]
    fn generator_is_reproducible_and_labels_follow_the_tree() {
        let tree = Tree::parse("binary:2").unwrap();
        let cfg = HsbmConfig::with_equal_sizes(tree, 50, Rates::LogScaled(vec![2.0, 5.0, 20.0]));
        let a = cfg.generate(7).unwrap();
        let b = cfg.generate(7).unwrap();
        let c = cfg.generate(8).unwrap();
        assert_eq!(a.graph.num_edges(), b.graph.num_edges());
        assert_ne!(a.graph.num_edges(), c.graph.num_edges());
        assert_eq!(a.labels.len(), 2);
        assert_eq!(a.labels[0][0], 0);
        assert_eq!(a.labels[0][199], 1);
        assert_eq!(a.labels[1][120], 2);
        assert_eq!(a.community[199], 3);
    }

    #[test]
    fn probability_above_one_is_an_error() {
        let tree = Tree::parse("binary:1").unwrap();
        let cfg = HsbmConfig::with_equal_sizes(tree, 5, Rates::LogScaled(vec![1.0, 100.0]));
        assert!(cfg.generate(0).is_err());
    }
}
