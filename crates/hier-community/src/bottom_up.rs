//! Bottom-up hierarchical clustering (Algorithm 1 of the paper): Bethe-Hessian spectral
//! clustering of the bottom communities, then average linkage on block edge densities.
//!
//! The spectral step follows the official code (`bethe_hessian.py`, itself adapted from
//! Dall'Amico et al.'s improved Bethe-Hessian): `rho` is the spectral radius of the
//! non-backtracking matrix; when K is unknown it is the number of eigenvalues of
//! `D_rho^-1/2 A D_rho^-1/2` above `1/sqrt(rho)`; for each informative eigenvalue `p` the
//! radius `zeta_p` where the p-th eigenvalue of `H_r = (r^2 - 1) I + D - r A` crosses 0 is
//! found by a fixed-point iteration with a projected bisection (`find_sol`); the
//! eigenvectors at those radii are row-normalised and clustered by k-means. As in the
//! official code the first (uninformative) eigenvector is not used. Deviations, both
//! needed because the eigensolver is iterative: the fixed point stops at a relative change
//! of `1e-5` instead of machine epsilon (the clustering is insensitive to it), and near-equal eigenvalues count as degenerate
//! within `1e-8` relative.

use std::time::Instant;

use rayon::prelude::*;

use crate::Error;
use crate::dendrogram::{Dendrogram, Merge};
use crate::eigen::{
    EigenPairs, Operator, SymmetricSolver, Which, symmetric_eigen, symmetric_eigen_with,
};
use crate::graph::Graph;
use crate::kmeans::{KMeansOptions, kmeans};

/// `H_r = (r^2 - 1) I + D - r A`.
pub struct BetheHessian<'a> {
    graph: &'a Graph,
    degrees: &'a [f64],
    r: f64,
    weighted: bool,
    bound: f64,
}

impl<'a> BetheHessian<'a> {
    /// The Bethe-Hessian of `graph` with degrees `degrees` (strengths when weighted).
    pub fn new(graph: &'a Graph, degrees: &'a [f64], r: f64, weighted: bool) -> Self {
        let max_d = degrees.iter().fold(0.0f64, |m, &d| m.max(d));
        let bound = (r * r - 1.0).abs() + max_d + r.abs() * max_d;
        Self {
            graph,
            degrees,
            r,
            weighted,
            bound,
        }
    }
}

impl Operator for BetheHessian<'_> {
    fn dim(&self) -> usize {
        self.graph.num_nodes()
    }
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        self.graph.adjacency_matvec(x, y, self.weighted);
        let c = self.r * self.r - 1.0;
        y.par_iter_mut()
            .with_min_len(4096)
            .enumerate()
            .for_each(|(i, yi)| *yi = (c + self.degrees[i]) * x[i] - self.r * *yi);
    }
    fn norm_bound(&self) -> f64 {
        self.bound
    }
    fn diagonal(&self) -> Option<Vec<f64>> {
        let c = self.r * self.r - 1.0;
        Some(self.degrees.iter().map(|d| c + d).collect())
    }
}

/// `D_rho^-1/2 A D_rho^-1/2` with `D_rho = D + (rho - 1) I`.
struct ScaledAdjacency<'a> {
    graph: &'a Graph,
    inv_sqrt: Vec<f64>,
    weighted: bool,
}

impl Operator for ScaledAdjacency<'_> {
    fn dim(&self) -> usize {
        self.graph.num_nodes()
    }
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        let scaled: Vec<f64> = x.iter().zip(&self.inv_sqrt).map(|(a, b)| a * b).collect();
        self.graph.adjacency_matvec(&scaled, y, self.weighted);
        y.iter_mut().zip(&self.inv_sqrt).for_each(|(a, b)| *a *= b);
    }
    fn norm_bound(&self) -> f64 {
        1.0
    }
}

/// Spectral radius of the non-backtracking matrix, as the leading eigenvalue of the
/// `2n x 2n` matrix `[[A, I - D], [I, 0]]` (which shares its non-trivial spectrum).
///
/// Power iteration on that matrix shifted by `+I`: the Perron eigenvalue `rho` is real and
/// dominant, the shift keeps `-rho` (bipartite graphs) from tying with it, and the rest of
/// the spectrum lies within `max(sqrt(rho), second real eigenvalue)`, so the iteration
/// converges geometrically. (faer's Krylov-Schur solver took up to 100 s on dense
/// 1,600-node HSBMs where this takes milliseconds.)
pub fn non_backtracking_radius(
    graph: &Graph,
    degrees: &[f64],
    weighted: bool,
) -> Result<f64, Error> {
    let n = graph.num_nodes();
    let mut x1: Vec<f64> = degrees.iter().map(|&d| d.max(1.0)).collect();
    let mut x2 = vec![1.0; n];
    let mut y1 = vec![0.0; n];
    let mut estimate = f64::NAN;
    for _ in 0..20_000 {
        graph.adjacency_matvec(&x1, &mut y1, weighted);
        // [y1; y2] = ([[A, I - D], [I, 0]] + I) [x1; x2]
        let mut norm = 0.0;
        let mut dot = 0.0;
        let mut old = 0.0;
        for i in 0..n {
            let a = y1[i] + (1.0 - degrees[i]) * x2[i] + x1[i];
            let b = x1[i] + x2[i];
            dot += a * x1[i] + b * x2[i];
            old += x1[i] * x1[i] + x2[i] * x2[i];
            norm += a * a + b * b;
            y1[i] = a;
            x2[i] = b;
        }
        // Rayleigh quotient of the shifted matrix, minus the shift.
        let next = dot / old - 1.0;
        let norm = norm.sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(Error::invalid(
                "non-backtracking power iteration broke down",
            ));
        }
        for i in 0..n {
            x1[i] = y1[i] / norm;
            x2[i] /= norm;
        }
        if (next - estimate).abs() <= 1e-12 * next.abs().max(1.0) {
            return Ok(next.max(1.0));
        }
        estimate = next;
    }
    Err(Error::invalid(
        "non-backtracking power iteration did not converge",
    ))
}

/// Settings of the bottom-up algorithm.
#[derive(Debug, Clone)]
pub struct BottomUpOptions {
    /// Number of bottom communities; estimated from the spectrum when `None`.
    pub k: Option<usize>,
    /// Use edge weights (adjacency and degrees) in the spectral step and the linkage.
    pub weighted: bool,
    /// Seed of the eigensolver start vectors and k-means.
    pub seed: u64,
    /// k-means restarts.
    pub kmeans_restarts: usize,
    /// Passes of likelihood refinement after k-means (0: none, the official code).
    pub refine_passes: usize,
    /// Relative residual tolerance of the eigensolver.
    pub eigen_tol: f64,
    /// Which Bethe-Hessian embedding.
    pub spectral: SpectralMode,
    /// Iterative eigensolver for large problems.
    pub solver: SymmetricSolver,
}

/// The spectral embedding of the bottom-up step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpectralMode {
    /// The official code: eigenvector `p` of `H_zeta_p` for each informative `p`, with
    /// `zeta_p` found by the fixed-point search (about two eigensolves per eigenvector).
    ImprovedBetheHessian,
    /// Saade et al. (2014): the `K` smallest eigenvectors of one `H_r` at `r = sqrt(rho)`
    /// (one eigensolve; the first, uninformative, vector dropped as above); K, when
    /// unknown, is the number of negative eigenvalues of that `H_r`. The improved search
    /// drives `r` towards 1, where `H_r` approaches the Laplacian and, on sparse
    /// low-degree graphs such as power grids, its smallest eigenvalues crowd near zero and
    /// iterative eigensolvers crawl; this mode stays at `sqrt(rho)` and is fast there.
    BetheHessian,
}

impl Default for BottomUpOptions {
    fn default() -> Self {
        Self {
            k: None,
            weighted: false,
            seed: 0,
            kmeans_restarts: 10,
            refine_passes: 0,
            eigen_tol: 1e-8,
            spectral: SpectralMode::ImprovedBetheHessian,
            solver: SymmetricSolver::Lobpcg,
        }
    }
}

/// What the spectral step found.
#[derive(Debug, Clone)]
pub struct SpectralClustering {
    /// Bottom community of each node, `0..k`.
    pub labels: Vec<usize>,
    /// Number of communities (given or estimated).
    pub k: usize,
    /// Whether `k` was estimated.
    pub k_estimated: bool,
    /// Non-backtracking spectral radius.
    pub rho: f64,
    /// `zeta_p` for the informative eigenvectors `p = 2..=k`.
    pub zetas: Vec<f64>,
    /// Seconds per phase: rho, k estimation, eigenvectors, k-means, refinement.
    pub timings: Vec<(String, f64)>,
}

/// Bethe-Hessian spectral clustering of the bottom communities.
pub fn bethe_hessian_clustering(
    graph: &Graph,
    options: &BottomUpOptions,
) -> Result<SpectralClustering, Error> {
    let n = graph.num_nodes();
    if n < 2 {
        return Err(Error::invalid("the graph needs at least 2 nodes"));
    }
    if graph.num_edges() == 0 {
        return Err(Error::invalid("the graph has no edges"));
    }
    if let Some(k) = options.k
        && (k == 0 || k > n)
    {
        return Err(Error::invalid(format!(
            "K = {k} but the graph has {n} nodes"
        )));
    }
    let weighted = options.weighted && graph.is_weighted();
    let degrees = graph.degrees(weighted);
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };

    let rho = non_backtracking_radius(graph, &degrees, weighted)?;
    lap("non-backtracking radius", &mut timings);

    let (k, k_estimated) = match (options.k, options.spectral) {
        (Some(k), _) => (k, false),
        (None, SpectralMode::ImprovedBetheHessian) => {
            (estimate_k(graph, &degrees, rho, weighted, options)?, true)
        }
        (None, SpectralMode::BetheHessian) => (
            count_negative_eigenvalues(graph, &degrees, rho, weighted, options)?,
            true,
        ),
    };
    lap("estimate K", &mut timings);

    if k == 1 {
        return Ok(SpectralClustering {
            labels: vec![0; n],
            k,
            k_estimated,
            rho,
            zetas: Vec::new(),
            timings,
        });
    }
    let (zetas, mut embedding) = match options.spectral {
        SpectralMode::ImprovedBetheHessian => {
            informative_eigenvectors(graph, &degrees, rho, k, weighted, options)?
        }
        SpectralMode::BetheHessian => {
            let r = rho.sqrt();
            let op = BetheHessian::new(graph, &degrees, r, weighted);
            let eig = symmetric_eigen_with(
                &op,
                k,
                Which::Smallest,
                options.eigen_tol,
                options.seed,
                None,
                options.solver,
            )?;
            let mut embedding = vec![0.0; n * (k - 1)];
            for p in 1..k {
                for (row, v) in eig.vector(p).iter().enumerate() {
                    embedding[row * (k - 1) + p - 1] = *v;
                }
            }
            (vec![r; k - 1], embedding)
        }
    };
    lap("Bethe-Hessian eigenvectors", &mut timings);

    let dim = k - 1;
    embedding.par_chunks_mut(dim).for_each(|row| {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    });
    let mut km = KMeansOptions::new(k, options.seed);
    km.restarts = options.kmeans_restarts;
    let mut labels = kmeans(&embedding, dim, &km)?.labels;
    lap("k-means", &mut timings);

    for _ in 0..options.refine_passes {
        labels = likelihood_refinement(graph, &labels, k);
    }
    if options.refine_passes > 0 {
        lap("likelihood refinement", &mut timings);
    }
    Ok(SpectralClustering {
        labels,
        k,
        k_estimated,
        rho,
        zetas,
        timings,
    })
}

/// Number of eigenvalues of `D_rho^-1/2 A D_rho^-1/2` above `1 / sqrt(rho)`.
fn estimate_k(
    graph: &Graph,
    degrees: &[f64],
    rho: f64,
    weighted: bool,
    options: &BottomUpOptions,
) -> Result<usize, Error> {
    let n = graph.num_nodes();
    let op = ScaledAdjacency {
        graph,
        inv_sqrt: degrees
            .iter()
            .map(|&d| 1.0 / (d + rho - 1.0).max(1e-300).sqrt())
            .collect(),
        weighted,
    };
    let threshold = 1.0 / rho.sqrt() + f64::EPSILON;
    count_eigenvalues(&op, n, Which::Largest, |v| v > threshold, options.seed)
}

/// Saade et al.'s estimate: the number of negative eigenvalues of `H_r` at `r = sqrt(rho)`.
/// The same count asymptotically as [`estimate_k`], and far cheaper on sparse, low-degree
/// graphs (power grids), whose normalised adjacency has a tight cluster of eigenvalues at
/// the threshold.
fn count_negative_eigenvalues(
    graph: &Graph,
    degrees: &[f64],
    rho: f64,
    weighted: bool,
    options: &BottomUpOptions,
) -> Result<usize, Error> {
    let n = graph.num_nodes();
    let op = BetheHessian::new(graph, degrees, rho.sqrt(), weighted);
    count_eigenvalues(&op, n, Which::Smallest, |v| v < 0.0, options.seed)
}

/// How many eigenvalues of `op` (of dimension `n`), taken from the `which` end of the
/// spectrum, satisfy `counted` (at least 1). Asks for 8, 16, 32, ... eigenvalues until
/// fewer than asked for satisfy it, so the count is never cut off by the block size.
fn count_eigenvalues(
    op: &impl Operator,
    n: usize,
    which: Which,
    counted: impl Fn(f64) -> bool,
    seed: u64,
) -> Result<usize, Error> {
    let mut m = 8.min(n);
    loop {
        // Counting needs eigenvalues only to well within their distance to the threshold.
        let eig = symmetric_eigen(op, m, which, K_COUNT_TOL, seed)?;
        let count = eig.values.iter().filter(|&&v| counted(v)).count();
        if count < m || m == n {
            return Ok(count.max(1));
        }
        m = (2 * m).min(n);
    }
}

/// Dall'Amico et al.'s search for `zeta_p` (official `find_zeta`): returns the zetas and
/// the `n x (k - 1)` row-major embedding made of eigenvectors `2..=k`.
fn informative_eigenvectors(
    graph: &Graph,
    degrees: &[f64],
    rho: f64,
    k: usize,
    weighted: bool,
    options: &BottomUpOptions,
) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let n = graph.num_nodes();
    let mut r = rho.sqrt();
    let mut i = k;
    let mut zetas = vec![0.0; k];
    let mut embedding = vec![0.0; n * (k - 1)];
    let mut start: Option<EigenPairs> = None;
    // The i smallest eigenpairs at the radius where level i + 1 converged are the first i
    // of that level's last solve: reuse them as this level's first iterate.
    let mut carried: Option<EigenPairs> = None;
    while i > 1 {
        let mut iterations = 0;
        let eig = loop {
            let eig = match carried.take() {
                Some(previous) => truncate_pairs(previous, i),
                None => {
                    let op = BetheHessian::new(graph, degrees, r, weighted);
                    symmetric_eigen_with(
                        &op,
                        i,
                        Which::Smallest,
                        options.eigen_tol,
                        options.seed,
                        start.as_ref(),
                        options.solver,
                    )?
                }
            };
            let m = projected_degrees(&eig.vectors, degrees, n, i);
            let r_next = find_sol(&eig.values, &m, r);
            let delta = (r - r_next).abs();
            r = r_next;
            iterations += 1;
            // Warm start the next solve from the current eigenvectors.
            start = Some(eig.clone());
            if delta <= ZETA_TOL * r.max(1.0) || iterations >= 60 {
                break eig;
            }
        };
        let last = eig.values[i - 1];
        let degeneracy = eig.values[1..]
            .iter()
            .filter(|&&v| (v - last).abs() <= 1e-8 * last.abs().max(1.0))
            .count()
            .max(1);
        for p in i - degeneracy..i {
            zetas[p] = r;
            if p >= 1 {
                let col = eig.vector(p);
                for row in 0..n {
                    embedding[row * (k - 1) + p - 1] += col[row];
                }
            }
        }
        i -= degeneracy;
        carried = Some(eig);
    }
    Ok((zetas[1..].to_vec(), embedding))
}

/// Eigensolver tolerance when counting eigenvalues above the K threshold.
const K_COUNT_TOL: f64 = 1e-8;

/// Relative change of `r` at which the `zeta` fixed point is accepted.
const ZETA_TOL: f64 = 1e-5;

/// The first `i` eigenpairs.
fn truncate_pairs(mut pairs: EigenPairs, i: usize) -> EigenPairs {
    pairs.values.truncate(i);
    pairs.vectors.truncate(i * pairs.n);
    pairs
}

/// `M = X^T D X` for the `i` eigenvectors in `vectors` (column-major).
fn projected_degrees(
    vectors: &[f64],
    degrees: &[f64],
    n: usize,
    i: usize,
) -> nalgebra::DMatrix<f64> {
    let mut m = nalgebra::DMatrix::zeros(i, i);
    for a in 0..i {
        for b in a..i {
            let xa = &vectors[a * n..(a + 1) * n];
            let xb = &vectors[b * n..(b + 1) * n];
            let v: f64 = (0..n)
                .into_par_iter()
                .map(|t| xa[t] * degrees[t] * xb[t])
                .sum();
            m[(a, b)] = v;
            m[(b, a)] = v;
        }
    }
    m
}

/// The official `find_sol`: bisection on `r' in [1, r]` for the largest `r'` where the
/// projected `H_r'` (built from `S = diag(values)` and `M = X^T D X` at radius `r`) stops
/// having a positive eigenvalue, i.e. `max eig(r' S + (r - r') M) <= (r - r')(1 + r r')`.
fn find_sol(values: &[f64], m: &nalgebra::DMatrix<f64>, r: f64) -> f64 {
    let i = values.len();
    let (mut small, mut large) = (1.0f64, r);
    if large <= small {
        return r;
    }
    let mut previous = large;
    for _ in 0..200 {
        let mid = 0.5 * (small + large);
        let mut mat = m * (r - mid);
        for d in 0..i {
            mat[(d, d)] += mid * values[d];
        }
        let top = mat
            .symmetric_eigenvalues()
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        if top > (r - mid) * (1.0 + r * mid) {
            small = mid;
        } else {
            large = mid;
        }
        if (previous - mid).abs() <= 1e-14 * r.max(1.0) {
            break;
        }
        previous = mid;
    }
    large
}

/// One pass of maximum-likelihood reassignment: with the block edge probabilities
/// estimated from `labels`, move every node to the community maximising its Bernoulli
/// log-likelihood (the refinement step of the paper's analysis). Uses the 0/1 adjacency.
pub fn likelihood_refinement(graph: &Graph, labels: &[usize], k: usize) -> Vec<usize> {
    let n = graph.num_nodes();
    let mut sizes = vec![0f64; k];
    labels.iter().for_each(|&l| sizes[l] += 1.0);
    let mut edges = vec![0f64; k * k];
    for u in 0..n {
        for &v in graph.neighbors(u) {
            edges[labels[u] * k + labels[v as usize]] += 1.0;
        }
    }
    let mut logp = vec![0f64; k * k];
    let mut log1mp = vec![0f64; k * k];
    for a in 0..k {
        for b in 0..k {
            let pairs = if a == b {
                sizes[a] * (sizes[a] - 1.0)
            } else {
                sizes[a] * sizes[b]
            };
            let p = if pairs > 0.0 {
                edges[a * k + b] / pairs
            } else {
                0.0
            };
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            logp[a * k + b] = p.ln();
            log1mp[a * k + b] = (-p).ln_1p();
        }
    }
    (0..n)
        .into_par_iter()
        .map(|u| {
            let mut count = vec![0f64; k];
            for &v in graph.neighbors(u) {
                count[labels[v as usize]] += 1.0;
            }
            let mut others = sizes.clone();
            others[labels[u]] -= 1.0;
            (0..k)
                .map(|c| {
                    let ll: f64 = (0..k)
                        .map(|b| {
                            count[b] * logp[c * k + b] + (others[b] - count[b]) * log1mp[c * k + b]
                        })
                        .sum();
                    (c, ll)
                })
                .fold((labels[u], f64::NEG_INFINITY), |best, cur| {
                    if cur.1 > best.1 { cur } else { best }
                })
                .0
        })
        .collect()
}

/// Average linkage on block edge densities (official `bottom_up` with `update_each`):
/// `sim(C, C') = e(C, C') / (|C| |C'|)` from `W = Z^T A Z` (built in `O(m)`), merge the
/// most similar pair (first in row-major order on ties), sum edge counts and sizes.
/// Heights are `1 - sim` for unweighted graphs and `1 / (1 + sim)` for weighted ones, as
/// in the official code; both are non-decreasing (UPGMA has no inversions).
pub fn average_linkage(graph: &Graph, labels: &[usize], k: usize, weighted: bool) -> Dendrogram {
    let weighted = weighted && graph.is_weighted();
    let mut w = vec![0f64; k * k];
    for u in 0..graph.num_nodes() {
        let lu = labels[u];
        let weights = if weighted {
            graph.neighbor_weights(u)
        } else {
            None
        };
        for (t, &v) in graph.neighbors(u).iter().enumerate() {
            w[lu * k + labels[v as usize]] += weights.map_or(1.0, |ws| ws[t]);
        }
    }
    let mut node_counts = vec![0usize; k];
    labels.iter().for_each(|&l| node_counts[l] += 1);

    // Active clusters in list order: (cluster id, node count, leaf count, edges to each
    // active cluster by id).
    let total = 2 * k - 1;
    let mut edge = vec![0f64; total * total];
    for a in 0..k {
        for b in 0..k {
            // Off-diagonal entries count each undirected edge once per direction.
            edge[a * total + b] = w[a * k + b];
        }
    }
    let mut active: Vec<usize> = (0..k).collect();
    let mut nodes: Vec<usize> = node_counts.clone();
    nodes.resize(total, 0);
    let mut leaves = vec![1usize; total];
    let mut merges = Vec::with_capacity(k.saturating_sub(1));
    while active.len() > 1 {
        let mut best = (f64::NEG_INFINITY, 0usize, 1usize);
        for (pi, &ci) in active.iter().enumerate() {
            for (pj, &cj) in active.iter().enumerate().skip(pi + 1) {
                let sim = edge[ci * total + cj] / (nodes[ci] as f64 * nodes[cj] as f64);
                if sim > best.0 {
                    best = (sim, pi, pj);
                }
            }
        }
        let (sim, pi, pj) = best;
        let (ci, cj) = (active[pi], active[pj]);
        let new = k + merges.len();
        nodes[new] = nodes[ci] + nodes[cj];
        leaves[new] = leaves[ci] + leaves[cj];
        for &c in &active {
            if c != ci && c != cj {
                let e = edge[ci * total + c] + edge[cj * total + c];
                edge[new * total + c] = e;
                edge[c * total + new] = e;
            }
        }
        let height = if weighted {
            1.0 / (sim + 1.0)
        } else {
            1.0 - sim
        };
        merges.push(Merge {
            a: cj,
            b: ci,
            height,
            size: leaves[new],
            density: sim,
        });
        active.remove(pj);
        active.remove(pi);
        active.push(new);
    }
    Dendrogram {
        leaf_labels: labels.to_vec(),
        num_leaves: k,
        merges,
    }
}

/// The whole bottom-up pipeline: spectral clustering, then average linkage.
pub fn bottom_up(
    graph: &Graph,
    options: &BottomUpOptions,
) -> Result<(Dendrogram, SpectralClustering), Error> {
    let mut spectral = bethe_hessian_clustering(graph, options)?;
    let start = Instant::now();
    let dendrogram = average_linkage(graph, &spectral.labels, spectral.k, options.weighted);
    spectral
        .timings
        .push(("average linkage".to_string(), start.elapsed().as_secs_f64()));
    Ok((dendrogram, spectral))
}
