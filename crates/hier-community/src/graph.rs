//! A sparse undirected graph in compressed sparse row form.
//!
//! Every algorithm of the crate runs on this one structure: adjacency lists stored
//! contiguously (`offsets`, `targets`) with optional edge weights, so a matrix-vector
//! product with the adjacency matrix is one pass over `2m` entries and memory is
//! `O(n + m)`. There is no dense `n x n` matrix anywhere in the crate.

use rayon::prelude::*;

use crate::Error;

/// An undirected graph without self-loops, nodes `0..n`, each with an external id.
#[derive(Debug, Clone)]
pub struct Graph {
    offsets: Vec<usize>,
    targets: Vec<u32>,
    /// `None` for an unweighted graph (every edge has weight 1).
    weights: Option<Vec<f64>>,
    node_ids: Vec<String>,
}

/// What [`Graph::from_edges`] did to its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Self-loops dropped.
    pub self_loops: usize,
    /// Repeated edges merged into one (weights summed).
    pub duplicates: usize,
}

impl Graph {
    /// Builds a graph from undirected edges `(u, v, w)` over nodes `0..node_ids.len()`.
    ///
    /// Self-loops are dropped and repeated edges merged, their weights summed (both counted
    /// in the returned [`BuildStats`]). Weights must be finite and non-negative; zero
    /// weights are kept as edges of weight 0 (the SocioPatterns loader produces them for
    /// pairs seen once, `log(1) = 0`, as the official code does). With `weighted = false`
    /// the weights are ignored and every edge weighs 1.
    pub fn from_edges(
        node_ids: Vec<String>,
        edges: &[(u32, u32, f64)],
        weighted: bool,
    ) -> Result<(Self, BuildStats), Error> {
        let n = node_ids.len();
        if n > u32::MAX as usize {
            return Err(Error::invalid(format!("{n} nodes exceed the 2^32 limit")));
        }
        let mut stats = BuildStats::default();
        let mut half: Vec<(u32, u32, f64)> = Vec::with_capacity(edges.len());
        for &(u, v, w) in edges {
            if u as usize >= n || v as usize >= n {
                return Err(Error::invalid(format!(
                    "edge ({u}, {v}) refers to a node outside 0..{n}"
                )));
            }
            if !w.is_finite() || w < 0.0 {
                return Err(Error::invalid(format!(
                    "edge ({}, {}) has weight {w}; weights must be finite and >= 0",
                    node_ids[u as usize], node_ids[v as usize]
                )));
            }
            if u == v {
                stats.self_loops += 1;
                continue;
            }
            half.push((u.min(v), u.max(v), w));
        }
        half.par_sort_unstable_by_key(|&(u, v, _)| (u, v));
        let mut merged: Vec<(u32, u32, f64)> = Vec::with_capacity(half.len());
        for (u, v, w) in half {
            match merged.last_mut() {
                Some(last) if last.0 == u && last.1 == v => {
                    last.2 += w;
                    stats.duplicates += 1;
                }
                _ => merged.push((u, v, w)),
            }
        }
        let pairs: Vec<(u32, u32)> = merged.iter().map(|&(u, v, _)| (u, v)).collect();
        let weights: Option<Vec<f64>> = weighted.then(|| merged.iter().map(|e| e.2).collect());
        Ok((
            Self::from_unique_pairs(node_ids, &pairs, weights.as_deref()),
            stats,
        ))
    }

    /// Builds a graph from pairs that are already unique with `u < v` (no validation
    /// beyond debug assertions), with one weight per pair when weighted: the fast path of
    /// the generator and of subgraph extraction.
    pub(crate) fn from_unique_pairs(
        node_ids: Vec<String>,
        pairs: &[(u32, u32)],
        pair_weights: Option<&[f64]>,
    ) -> Self {
        let n = node_ids.len();
        let mut degree = vec![0usize; n];
        for &(u, v) in pairs {
            debug_assert!(u < v);
            degree[u as usize] += 1;
            degree[v as usize] += 1;
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for d in &degree {
            offsets.push(offsets.last().unwrap() + d);
        }
        let mut cursor = offsets[..n].to_vec();
        let mut targets = vec![0u32; 2 * pairs.len()];
        let mut weights = pair_weights.map(|_| vec![0f64; 2 * pairs.len()]);
        for (k, &(u, v)) in pairs.iter().enumerate() {
            let (u, v) = (u as usize, v as usize);
            targets[cursor[u]] = v as u32;
            targets[cursor[v]] = u as u32;
            if let (Some(ws), Some(pw)) = (weights.as_mut(), pair_weights) {
                ws[cursor[u]] = pw[k];
                ws[cursor[v]] = pw[k];
            }
            cursor[u] += 1;
            cursor[v] += 1;
        }
        // Sorted adjacency lists make subgraph extraction and set operations cheap and the
        // layout independent of input order.
        let mut graph = Graph {
            offsets,
            targets,
            weights,
            node_ids,
        };
        graph.sort_adjacency();
        graph
    }

    fn sort_adjacency(&mut self) {
        let offsets = &self.offsets;
        let n = offsets.len() - 1;
        match self.weights.as_mut() {
            None => {
                let mut rest: &mut [u32] = &mut self.targets;
                let mut chunks = Vec::with_capacity(n);
                for i in 0..n {
                    let (head, tail) = rest.split_at_mut(offsets[i + 1] - offsets[i]);
                    chunks.push(head);
                    rest = tail;
                }
                chunks.into_par_iter().for_each(|c| c.sort_unstable());
            }
            Some(weights) => {
                for i in 0..n {
                    let range = offsets[i]..offsets[i + 1];
                    let mut pairs: Vec<(u32, f64)> = self.targets[range.clone()]
                        .iter()
                        .copied()
                        .zip(weights[range.clone()].iter().copied())
                        .collect();
                    pairs.sort_unstable_by_key(|p| p.0);
                    for (k, (t, w)) in pairs.into_iter().enumerate() {
                        self.targets[range.start + k] = t;
                        weights[range.start + k] = w;
                    }
                }
            }
        }
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.node_ids.len()
    }

    /// Number of undirected edges.
    pub fn num_edges(&self) -> usize {
        self.targets.len() / 2
    }

    /// Whether edges carry weights.
    pub fn is_weighted(&self) -> bool {
        self.weights.is_some()
    }

    /// External node ids, indexed by node.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }

    /// Neighbours of `u`, sorted.
    pub fn neighbors(&self, u: usize) -> &[u32] {
        &self.targets[self.offsets[u]..self.offsets[u + 1]]
    }

    /// Weights of the edges to [`neighbors`](Self::neighbors)`(u)`, or `None` when unweighted.
    pub fn neighbor_weights(&self, u: usize) -> Option<&[f64]> {
        self.weights
            .as_ref()
            .map(|w| &w[self.offsets[u]..self.offsets[u + 1]])
    }

    /// Number of neighbours of `u`.
    pub fn degree(&self, u: usize) -> usize {
        self.offsets[u + 1] - self.offsets[u]
    }

    /// Sum of the weights of `u`'s edges (its degree when unweighted).
    pub fn strength(&self, u: usize) -> f64 {
        match self.neighbor_weights(u) {
            Some(w) => w.iter().sum(),
            None => self.degree(u) as f64,
        }
    }

    /// Degrees (`weighted`: strengths) of all nodes.
    pub fn degrees(&self, weighted: bool) -> Vec<f64> {
        (0..self.num_nodes())
            .into_par_iter()
            .map(|u| {
                if weighted {
                    self.strength(u)
                } else {
                    self.degree(u) as f64
                }
            })
            .collect()
    }

    /// `y = A x` with the weighted (`weighted`) or 0/1 adjacency matrix; rows in parallel.
    pub fn adjacency_matvec(&self, x: &[f64], y: &mut [f64], weighted: bool) {
        let weights = if weighted {
            self.weights.as_deref()
        } else {
            None
        };
        y.par_iter_mut()
            .with_min_len(2048)
            .enumerate()
            .for_each(|(u, yu)| {
                let range = self.offsets[u]..self.offsets[u + 1];
                let targets = &self.targets[range.clone()];
                *yu = match weights {
                    Some(w) => targets
                        .iter()
                        .zip(&w[range])
                        .map(|(&v, &w)| w * x[v as usize])
                        .sum(),
                    None => targets.iter().map(|&v| x[v as usize]).sum(),
                };
            });
    }

    /// Weight of edge `(u, v)` (0 when absent), by binary search in `u`'s sorted list.
    pub fn edge_weight(&self, u: usize, v: usize) -> f64 {
        match self.neighbors(u).binary_search(&(v as u32)) {
            Ok(k) => self.neighbor_weights(u).map_or(1.0, |w| w[k]),
            Err(_) => 0.0,
        }
    }

    /// The subgraph induced by `nodes` (which must be distinct), with nodes renumbered
    /// `0..nodes.len()` in the given order and external ids kept.
    pub fn induced_subgraph(&self, nodes: &[usize]) -> Graph {
        let mut local = vec![u32::MAX; self.num_nodes()];
        for (i, &u) in nodes.iter().enumerate() {
            local[u] = i as u32;
        }
        let mut pairs = Vec::new();
        let mut pair_weights = Vec::new();
        for (i, &u) in nodes.iter().enumerate() {
            let weights = self.neighbor_weights(u);
            for (k, &v) in self.neighbors(u).iter().enumerate() {
                let j = local[v as usize];
                if j != u32::MAX && (i as u32) < j {
                    pairs.push((i as u32, j));
                    if let Some(w) = weights {
                        pair_weights.push(w[k]);
                    }
                }
            }
        }
        let ids = nodes.iter().map(|&u| self.node_ids[u].clone()).collect();
        let weights = self.is_weighted().then_some(pair_weights.as_slice());
        Graph::from_unique_pairs(ids, &pairs, weights)
    }

    /// Connected components as a label per node (components numbered by first node).
    pub fn connected_components(&self) -> Vec<usize> {
        let mut uf = petgraph::unionfind::UnionFind::<u32>::new(self.num_nodes());
        for u in 0..self.num_nodes() {
            for &v in self.neighbors(u) {
                if (u as u32) < v {
                    uf.union(u as u32, v);
                }
            }
        }
        let mut label = vec![usize::MAX; self.num_nodes()];
        let mut by_root = rustc_hash::FxHashMap::default();
        for (u, l) in label.iter_mut().enumerate() {
            let root = uf.find(u as u32);
            let next = by_root.len();
            *l = *by_root.entry(root).or_insert(next);
        }
        label
    }

    /// The same graph as a petgraph `UnGraph` (node weights: external ids; edge weights).
    pub fn to_petgraph(&self) -> petgraph::graph::UnGraph<String, f64> {
        let mut g = petgraph::graph::UnGraph::with_capacity(self.num_nodes(), self.num_edges());
        let idx: Vec<_> = self
            .node_ids
            .iter()
            .map(|id| g.add_node(id.clone()))
            .collect();
        for u in 0..self.num_nodes() {
            let weights = self.neighbor_weights(u);
            for (k, &v) in self.neighbors(u).iter().enumerate() {
                if (u as u32) < v {
                    g.add_edge(idx[u], idx[v as usize], weights.map_or(1.0, |w| w[k]));
                }
            }
        }
        g
    }

    /// Builds a graph from a petgraph `UnGraph` whose node weights are the external ids.
    pub fn from_petgraph(
        g: &petgraph::graph::UnGraph<String, f64>,
        weighted: bool,
    ) -> Result<(Self, BuildStats), Error> {
        let ids = g.node_weights().cloned().collect();
        let edges: Vec<(u32, u32, f64)> = g
            .edge_indices()
            .map(|e| {
                let (a, b) = g.edge_endpoints(e).expect("edge of this graph");
                (a.index() as u32, b.index() as u32, g[e])
            })
            .collect();
        Graph::from_edges(ids, &edges, weighted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[test]
    fn builds_csr_merging_duplicates_and_dropping_self_loops() {
        let edges = [(0, 1, 1.0), (1, 0, 2.0), (2, 2, 1.0), (1, 2, 0.5)];
        let (g, stats) = Graph::from_edges(ids(3), &edges, true).unwrap();
        assert_eq!(
            stats,
            BuildStats {
                self_loops: 1,
                duplicates: 1
            }
        );
        assert_eq!(g.num_edges(), 2);
        assert_eq!(g.neighbors(1), &[0, 2]);
        assert_eq!(g.edge_weight(0, 1), 3.0);
        assert_eq!(g.strength(1), 3.5);
        let mut y = vec![0.0; 3];
        g.adjacency_matvec(&[1.0, 10.0, 100.0], &mut y, true);
        assert_eq!(y, vec![30.0, 3.0 + 50.0, 5.0]);
    }

    #[test]
    fn rejects_negative_weights_and_out_of_range_nodes() {
        assert!(Graph::from_edges(ids(2), &[(0, 1, -1.0)], true).is_err());
        assert!(Graph::from_edges(ids(2), &[(0, 5, 1.0)], false).is_err());
    }

    #[test]
    fn induced_subgraph_and_components() {
        let edges = [(0, 1, 1.0), (1, 2, 1.0), (3, 4, 1.0)];
        let (g, _) = Graph::from_edges(ids(5), &edges, false).unwrap();
        let comps = g.connected_components();
        assert_eq!(comps, vec![0, 0, 0, 1, 1]);
        let sub = g.induced_subgraph(&[2, 1, 4]);
        assert_eq!(sub.num_edges(), 1);
        assert_eq!(sub.node_ids(), &["2", "1", "4"]);
        assert_eq!(sub.neighbors(0), &[1]);
        let pg = g.to_petgraph();
        let (back, _) = Graph::from_petgraph(&pg, false).unwrap();
        assert_eq!(back.num_edges(), 3);
    }
}
