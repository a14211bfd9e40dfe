//! Top-down hierarchical clustering (the paper's recursive baseline, official
//! `recursive_bipartion`): split every cluster in two by regularised spectral clustering
//! until a stopping rule says the cluster has no further community structure.
//!
//! Split: `A_tau = A + tau * mean(d) / n * 1 1^T` (`tau = 0.1`, added to every entry),
//! `L_tau = I - D_tau^-1/2 A_tau D_tau^-1/2`, its two smallest eigenvectors (computed as
//! the two largest of the normalised `A_tau`, matrix-free: the rank-one term is never
//! formed), k-means with k = 2. Stop (default): the Bethe-Hessian `H_r` with `r =
//! sqrt(sum d^2 / sum d - 1)` of the unweighted cluster has fewer than two negative
//! eigenvalues. The official code computes `r = sqrt(sum d^2 / (sum d - 1))` (a
//! misplaced parenthesis); [`StoppingRule::BetheHessianOfficialRadius`] reproduces it.
//! Alternative: Le and Levina's non-backtracking rule, split while the second largest
//! `|Re lambda|` of `[[0, D - I], [-I, A]]` is at least `sqrt(sum d^2 / sum d - 1)`.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::bottom_up::BetheHessian;
use crate::dendrogram::{Dendrogram, Merge};
use crate::eigen::{Operator, Which, general_eigenvalues, symmetric_eigen};
use crate::graph::Graph;
use crate::kmeans::{KMeansOptions, kmeans};

/// The regularisation constant of the official code.
pub const TAU: f64 = 0.1;

/// When to stop splitting a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoppingRule {
    /// Bethe-Hessian with the paper's `r = sqrt(sum d^2 / sum d - 1)`.
    BetheHessian,
    /// Bethe-Hessian with the official code's `r = sqrt(sum d^2 / (sum d - 1))`.
    BetheHessianOfficialRadius,
    /// Le and Levina (2015) non-backtracking rule.
    NonBacktracking,
}

/// Settings of the top-down algorithm.
#[derive(Debug, Clone)]
pub struct TopDownOptions {
    /// Regularisation `tau`.
    pub tau: f64,
    /// Stopping rule.
    pub stopping: StoppingRule,
    /// Use edge weights in the spectral split (the stopping rule is always unweighted, as
    /// in the official code).
    pub weighted: bool,
    /// Seed of k-means and eigensolver start vectors.
    pub seed: u64,
    /// k-means restarts per split.
    pub kmeans_restarts: usize,
    /// Relative residual tolerance of the eigensolver.
    pub eigen_tol: f64,
}

impl Default for TopDownOptions {
    fn default() -> Self {
        Self {
            tau: TAU,
            stopping: StoppingRule::BetheHessian,
            weighted: false,
            seed: 0,
            kmeans_restarts: 10,
            eigen_tol: 1e-8,
        }
    }
}

/// The normalised regularised adjacency `D_tau^-1/2 (A + c 1 1^T) D_tau^-1/2`.
struct RegularisedAdjacency<'a> {
    graph: &'a Graph,
    c: f64,
    inv_sqrt: Vec<f64>,
    weighted: bool,
}

impl Operator for RegularisedAdjacency<'_> {
    fn dim(&self) -> usize {
        self.graph.num_nodes()
    }
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        let scaled: Vec<f64> = x.iter().zip(&self.inv_sqrt).map(|(a, b)| a * b).collect();
        self.graph.adjacency_matvec(&scaled, y, self.weighted);
        let rank_one = self.c * scaled.iter().sum::<f64>();
        y.iter_mut()
            .zip(&self.inv_sqrt)
            .for_each(|(v, s)| *v = (*v + rank_one) * s);
    }
    fn norm_bound(&self) -> f64 {
        1.0
    }
}

/// Whether the cluster should be split further.
pub fn should_split(
    graph: &Graph,
    rule: StoppingRule,
    options: &TopDownOptions,
) -> Result<bool, Error> {
    let n = graph.num_nodes();
    if n < 2 || graph.num_edges() == 0 {
        return Ok(false);
    }
    let d = graph.degrees(false);
    let sum_d: f64 = d.iter().sum();
    let sum_d2: f64 = d.iter().map(|x| x * x).sum();
    let paper_r = (sum_d2 / sum_d - 1.0).max(0.0).sqrt();
    match rule {
        StoppingRule::BetheHessian | StoppingRule::BetheHessianOfficialRadius => {
            let r = match rule {
                StoppingRule::BetheHessian => paper_r,
                _ => (sum_d2 / (sum_d - 1.0)).max(0.0).sqrt(),
            };
            let unweighted = BetheHessian::new(graph, &d, r, false);
            let eig = symmetric_eigen(
                &unweighted,
                2.min(n),
                Which::Smallest,
                options.eigen_tol,
                options.seed,
            )?;
            Ok(eig.values.iter().filter(|&&v| v < 0.0).count() >= 2)
        }
        StoppingRule::NonBacktracking => {
            let f = |x: &[f64], y: &mut [f64]| {
                let (x1, x2) = x.split_at(n);
                let (y1, y2) = y.split_at_mut(n);
                // [[0, D - I], [-I, A]]
                for i in 0..n {
                    y1[i] = (d[i] - 1.0) * x2[i];
                }
                graph.adjacency_matvec(x2, y2, false);
                for i in 0..n {
                    y2[i] -= x1[i];
                }
            };
            let max_d = d.iter().fold(0.0f64, |m, &x| m.max(x));
            let values = general_eigenvalues(2 * n, 6, &f, 1e-9, 2.0 * max_d + 1.0, options.seed)?;
            let mut re: Vec<f64> = values.iter().map(|v| v.0.abs()).collect();
            re.sort_by(|a, b| b.total_cmp(a));
            re.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * b.max(1.0));
            Ok(re.len() >= 2 && re[1] >= paper_r)
        }
    }
}

/// Splits `graph` in two; `None` when k-means puts every node on one side.
pub fn bipartition(graph: &Graph, options: &TopDownOptions) -> Result<Option<Vec<usize>>, Error> {
    let n = graph.num_nodes();
    let weighted = options.weighted && graph.is_weighted();
    let d = graph.degrees(weighted);
    let c = options.tau * d.iter().sum::<f64>() / n as f64 / n as f64;
    let op = RegularisedAdjacency {
        graph,
        c,
        inv_sqrt: d
            .iter()
            .map(|&x| {
                let dt = x + c * n as f64;
                if dt > 0.0 { 1.0 / dt.sqrt() } else { 0.0 }
            })
            .collect(),
        weighted,
    };
    let k = 2.min(n - 1).max(1);
    let eig = symmetric_eigen(&op, k, Which::Largest, options.eigen_tol, options.seed)?;
    let mut rows = vec![0.0; n * k];
    for j in 0..k {
        for (i, v) in eig.vector(j).iter().enumerate() {
            rows[i * k + j] = *v;
        }
    }
    let mut km = KMeansOptions::new(2, options.seed);
    km.restarts = options.kmeans_restarts;
    let labels = kmeans(&rows, k, &km)?.labels;
    let ones = labels.iter().filter(|&&l| l == 1).count();
    Ok((ones > 0 && ones < n).then_some(labels))
}

struct SplitNode {
    depth: usize,
    children: Option<(usize, usize)>,
    leaf_id: Option<usize>,
}

/// Runs the recursive bipartition and returns the dendrogram over its leaves. Merge
/// heights are `max depth - depth of the split` (deeper splits merge first), as the
/// official code's bit-string linkage gives.
pub fn top_down(graph: &Graph, options: &TopDownOptions) -> Result<Dendrogram, Error> {
    let n = graph.num_nodes();
    if n == 0 {
        return Err(Error::invalid("the graph has no nodes"));
    }
    let mut tree = vec![SplitNode {
        depth: 0,
        children: None,
        leaf_id: None,
    }];
    let mut leaf_of_node = vec![usize::MAX; n];
    let mut num_leaves = 0;
    let mut stack: Vec<(Vec<usize>, usize)> = vec![((0..n).collect(), 0)];
    while let Some((nodes, t)) = stack.pop() {
        let sub = graph.induced_subgraph(&nodes);
        let split = if should_split(&sub, options.stopping, options)? {
            bipartition(&sub, options)?
        } else {
            None
        };
        match split {
            None => {
                tree[t].leaf_id = Some(num_leaves);
                for &u in &nodes {
                    leaf_of_node[u] = num_leaves;
                }
                num_leaves += 1;
            }
            Some(labels) => {
                let depth = tree[t].depth + 1;
                let mut sides = [Vec::new(), Vec::new()];
                for (i, &u) in nodes.iter().enumerate() {
                    sides[labels[i]].push(u);
                }
                let [side0, side1] = sides;
                let left = tree.len();
                tree.push(SplitNode {
                    depth,
                    children: None,
                    leaf_id: None,
                });
                tree.push(SplitNode {
                    depth,
                    children: None,
                    leaf_id: None,
                });
                tree[t].children = Some((left, left + 1));
                stack.push((side0, left));
                stack.push((side1, left + 1));
            }
        }
    }
    Ok(linkage_from_splits(
        graph,
        &tree,
        leaf_of_node,
        num_leaves,
        options.weighted,
    ))
}

fn linkage_from_splits(
    graph: &Graph,
    tree: &[SplitNode],
    leaf_labels: Vec<usize>,
    num_leaves: usize,
    weighted: bool,
) -> Dendrogram {
    let max_depth = tree.iter().map(|s| s.depth).max().unwrap_or(0);
    // Internal nodes, deepest first; ties in creation order.
    let mut internal: Vec<usize> = (0..tree.len())
        .filter(|&t| tree[t].children.is_some())
        .collect();
    internal.sort_by_key(|&t| (std::cmp::Reverse(tree[t].depth), t));
    let mut cluster_id = vec![usize::MAX; tree.len()];
    let mut leaves_below = vec![0usize; tree.len()];
    let mut nodes_below = vec![0usize; tree.len()];
    for (t, s) in tree.iter().enumerate() {
        if let Some(l) = s.leaf_id {
            cluster_id[t] = l;
            leaves_below[t] = 1;
        }
    }
    // Cross-edge weight per split: every edge is charged to the split separating its ends.
    let mut parent = vec![usize::MAX; tree.len()];
    for (t, s) in tree.iter().enumerate() {
        if let Some((a, b)) = s.children {
            parent[a] = t;
            parent[b] = t;
        }
    }
    let mut leaf_node = vec![0usize; num_leaves];
    for (t, s) in tree.iter().enumerate() {
        if let Some(l) = s.leaf_id {
            leaf_node[l] = t;
        }
    }
    for &l in &leaf_labels {
        nodes_below[leaf_node[l]] += 1;
    }
    let mut cross = vec![0f64; tree.len()];
    let use_weights = weighted && graph.is_weighted();
    for u in 0..graph.num_nodes() {
        let weights = if use_weights {
            graph.neighbor_weights(u)
        } else {
            None
        };
        for (k, &v) in graph.neighbors(u).iter().enumerate() {
            if (u as u32) >= v {
                continue;
            }
            let (mut a, mut b) = (
                leaf_node[leaf_labels[u]],
                leaf_node[leaf_labels[v as usize]],
            );
            if a == b {
                continue;
            }
            while tree[a].depth > tree[b].depth {
                a = parent[a];
            }
            while tree[b].depth > tree[a].depth {
                b = parent[b];
            }
            while parent[a] != parent[b] {
                a = parent[a];
                b = parent[b];
            }
            cross[parent[a]] += weights.map_or(1.0, |w| w[k]);
        }
    }
    let mut merges = Vec::with_capacity(internal.len());
    for &t in &internal {
        let (a, b) = tree[t].children.expect("internal");
        // Children of a merged split are always deeper, hence already numbered.
        nodes_below[t] = nodes_below[a] + nodes_below[b];
        leaves_below[t] = leaves_below[a] + leaves_below[b];
        cluster_id[t] = num_leaves + merges.len();
        merges.push(Merge {
            a: cluster_id[a],
            b: cluster_id[b],
            height: (max_depth - tree[t].depth) as f64,
            size: leaves_below[t],
            density: cross[t] / (nodes_below[a] as f64 * nodes_below[b] as f64),
        });
    }
    Dendrogram {
        leaf_labels,
        num_leaves,
        merges,
    }
}
