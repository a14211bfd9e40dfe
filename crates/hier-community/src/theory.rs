//! Exact-recovery thresholds of the hierarchical SBM (Section 3 of the paper).
//!
//! Chernoff-Hellinger divergence between communities `a` and `b` (Abbe and Sandon):
//! `CH(a, b) = sup_{t in [0,1]} sum_c pi_c [t a_ac + (1-t) a_bc - a_ac^t a_bc^(1-t)]`.
//! The depth-`l` partition is exactly recoverable iff the minimum of `CH` over leaf pairs
//! whose lowest common ancestor is shallower than `l` exceeds 1, which bottom-up attains.
//! A top-down split only sees the edge counts towards its children as blocks: its
//! divergence is that of the aggregated block model and is never larger, so its condition
//! is stricter.

use crate::Error;
use crate::hsbm::{HsbmConfig, Rates};

/// `sup_t sum_c pi_c [t x_c + (1-t) y_c - x_c^t y_c^(1-t)]` and the maximising `t`.
///
/// The objective is concave in `t` (the subtracted term is convex), so a golden-section
/// search on `[0, 1]` finds the supremum.
pub fn chernoff_hellinger(x: &[f64], y: &[f64], pi: &[f64]) -> (f64, f64) {
    assert!(
        x.len() == y.len() && x.len() == pi.len(),
        "rate vectors of different lengths"
    );
    let f = |t: f64| -> f64 {
        x.iter()
            .zip(y)
            .zip(pi)
            .map(|((&xc, &yc), &p)| {
                let geo = if xc == 0.0 || yc == 0.0 {
                    // 0^t is 0 for t > 0 and 1 at t = 0; the limit inside (0, 1) is 0.
                    match (t, xc == 0.0, yc == 0.0) {
                        (t, true, _) if t <= 0.0 => yc,
                        (t, _, true) if t >= 1.0 => xc,
                        _ => 0.0,
                    }
                } else {
                    xc.powf(t) * yc.powf(1.0 - t)
                };
                p * (t * xc + (1.0 - t) * yc - geo)
            })
            .sum()
    };
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut c = hi - ratio * (hi - lo);
    let mut d = lo + ratio * (hi - lo);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if hi - lo < 1e-13 {
            break;
        }
        if fc > fd {
            hi = d;
            d = c;
            fd = fc;
            c = hi - ratio * (hi - lo);
            fc = f(c);
        } else {
            lo = c;
            c = d;
            fc = fd;
            d = lo + ratio * (hi - lo);
            fd = f(d);
        }
    }
    let t = (lo + hi) / 2.0;
    let candidates = [(f(t), t), (f(0.0), 0.0), (f(1.0), 1.0)];
    candidates
        .into_iter()
        .fold((f64::NEG_INFINITY, 0.0), |best, c| {
            if c.0 > best.0 { c } else { best }
        })
}

/// Divergences and per-depth conditions of one HSBM.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `ch_by_lca[k]`: minimum CH over leaf pairs whose common ancestor is at depth `k`
    /// (`None` when no pair has that depth).
    pub ch_by_lca: Vec<Option<f64>>,
    /// `bottom_up[l - 1]`: min CH over pairs whose ancestor is shallower than `l`, the
    /// exact-recovery divergence of the depth-`l` partition (recoverable iff > 1).
    pub bottom_up: Vec<f64>,
    /// `td_by_depth[k]`: minimum aggregated (top-down) divergence over the splits of the
    /// internal nodes at depth `k`.
    pub td_by_depth: Vec<Option<f64>>,
    /// `top_down[l - 1]`: min aggregated divergence of the splits above depth `l`.
    pub top_down: Vec<f64>,
}

impl Thresholds {
    /// Computes every divergence of `config` (community proportions from its sizes,
    /// rates as `a` values; raw probabilities are converted with `a = p n / ln n`).
    pub fn of(config: &HsbmConfig) -> Result<Thresholds, Error> {
        let tree = &config.tree;
        let depth = tree.max_depth();
        let n = config.num_nodes() as f64;
        let a: Vec<f64> = match &config.rates {
            Rates::LogScaled(a) => a.clone(),
            Rates::Probabilities(p) => p.iter().map(|p| p * n / n.ln()).collect(),
        };
        if a.len() != depth + 1 {
            return Err(Error::invalid(format!(
                "{} rates for a tree of depth {depth}",
                a.len()
            )));
        }
        let leaves = tree.leaves();
        let k = leaves.len();
        if config.sizes.len() != k {
            return Err(Error::invalid("one community size per leaf is needed"));
        }
        let pi: Vec<f64> = config.sizes.iter().map(|&s| s as f64 / n).collect();
        let rate = |x: usize, y: usize| a[tree.lca_depth(leaves[x], leaves[y])];
        let rows: Vec<Vec<f64>> = (0..k)
            .map(|x| (0..k).map(|y| rate(x, y)).collect())
            .collect();

        let mut ch_by_lca: Vec<Option<f64>> = vec![None; depth + 1];
        for x in 0..k {
            for y in x + 1..k {
                let g = tree.lca_depth(leaves[x], leaves[y]);
                let (ch, _) = chernoff_hellinger(&rows[x], &rows[y], &pi);
                ch_by_lca[g] = Some(ch_by_lca[g].map_or(ch, |m: f64| m.min(ch)));
            }
        }
        let running_min = |per: &[Option<f64>]| -> Vec<f64> {
            (1..=depth)
                .map(|l| {
                    per[..l]
                        .iter()
                        .flatten()
                        .fold(f64::INFINITY, |m, &v| m.min(v))
                })
                .collect()
        };
        let bottom_up = running_min(&ch_by_lca);

        // Aggregated model at each internal node: a block per child subtree.
        let mut leaf_set: Vec<Vec<usize>> = vec![Vec::new(); tree.num_nodes()];
        for (x, &l) in leaves.iter().enumerate() {
            for d in 0..=tree.depth(l) {
                leaf_set[tree.ancestor_at_depth(l, d)].push(x);
            }
        }
        let mut td_by_depth: Vec<Option<f64>> = vec![None; depth + 1];
        for v in 0..tree.num_nodes() {
            let children = tree.children(v);
            if children.is_empty() {
                continue;
            }
            let mass = |u: usize| leaf_set[u].iter().map(|&x| pi[x]).sum::<f64>();
            // b[u][w]: expected rate (in a units) from a node of subtree u to subtree w,
            // per unit of w's mass, averaged over u's nodes.
            let b: Vec<Vec<f64>> = children
                .iter()
                .map(|&u| {
                    children
                        .iter()
                        .map(|&w| {
                            let mut total = 0.0;
                            for &x in &leaf_set[u] {
                                for &y in &leaf_set[w] {
                                    total += pi[x] * pi[y] * rows[x][y];
                                }
                            }
                            total / (mass(u) * mass(w))
                        })
                        .collect()
                })
                .collect();
            let masses: Vec<f64> = children.iter().map(|&w| mass(w)).collect();
            let d = tree.depth(v);
            for i in 0..children.len() {
                for j in i + 1..children.len() {
                    let (td, _) = chernoff_hellinger(&b[i], &b[j], &masses);
                    td_by_depth[d] = Some(td_by_depth[d].map_or(td, |m: f64| m.min(td)));
                }
            }
        }
        let top_down = running_min(&td_by_depth);
        Ok(Thresholds {
            ch_by_lca,
            bottom_up,
            td_by_depth,
            top_down,
        })
    }
}

/// Closed form for the balanced binary tree of depth `d` with rates `a[0..=d]` (the
/// optimal `t` is 1/2 by symmetry): `CH_k = 2^-d [(sqrt(a_d) - sqrt(a_k))^2 +
/// sum_{j=k+1}^{d-1} 2^(d-j-1) (sqrt(a_j) - sqrt(a_k))^2]`.
pub fn balanced_binary_ch(a: &[f64], k: usize) -> f64 {
    let d = a.len() - 1;
    let s = |x: f64| x.sqrt();
    let mut total = (s(a[d]) - s(a[k])).powi(2);
    for (j, &aj) in a.iter().enumerate().take(d).skip(k + 1) {
        total += 2f64.powi((d - j - 1) as i32) * (s(aj) - s(a[k])).powi(2);
    }
    total / 2f64.powi(d as i32)
}

/// Closed form of the top-down divergence of the split at depth `k` of a balanced binary
/// tree: `TD_k = 2^-d (sqrt(S_in) - sqrt(S_out))^2`, `S_in = a_d + sum_{j=k+1}^{d-1}
/// 2^(d-j-1) a_j`, `S_out = 2^(d-k-1) a_k`.
pub fn balanced_binary_td(a: &[f64], k: usize) -> f64 {
    let d = a.len() - 1;
    let mut s_in = a[d];
    for (j, &aj) in a.iter().enumerate().take(d).skip(k + 1) {
        s_in += 2f64.powi((d - j - 1) as i32) * aj;
    }
    let s_out = 2f64.powi((d - k - 1) as i32) * a[k];
    (s_in.sqrt() - s_out.sqrt()).powi(2) / 2f64.powi(d as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Tree;

    fn paper_config() -> HsbmConfig {
        HsbmConfig::with_equal_sizes(
            Tree::parse("binary:3").unwrap(),
            200,
            Rates::LogScaled(vec![40.0, 50.0, 60.0, 100.0]),
        )
    }

    #[test]
    fn paper_example_values() {
        // Section 3 of the paper: a = (40, 50, 60, 100) gives CH = 2.08, 1.13, 0.64 and
        // TD = 1.51, 0.88.
        let t = Thresholds::of(&paper_config()).unwrap();
        // Depth 3 is the leaves: no two distinct leaves have their ancestor there.
        assert_eq!(t.ch_by_lca[3], None);
        let ch: Vec<f64> = t.ch_by_lca.iter().flatten().copied().collect();
        assert!((ch[0] - 2.08).abs() < 0.005, "{ch:?}");
        assert!((ch[1] - 1.13).abs() < 0.005, "{ch:?}");
        assert!((ch[2] - 0.64).abs() < 0.005, "{ch:?}");
        let td: Vec<f64> = t.td_by_depth.iter().flatten().copied().collect();
        assert!((td[0] - 1.51).abs() < 0.005, "{td:?}");
        assert!((td[1] - 0.88).abs() < 0.005, "{td:?}");
        // The last split sees exactly the leaf model.
        assert!((td[2] - ch[2]).abs() < 1e-9);
        assert_eq!(t.bottom_up.len(), 3);
        assert!(t.bottom_up[1] > 1.0 && t.bottom_up[2] < 1.0);
        assert!(t.top_down[0] > 1.0 && t.top_down[1] < 1.0);
    }

    #[test]
    fn numerical_sup_matches_the_closed_forms() {
        let a = [40.0, 50.0, 60.0, 100.0];
        let t = Thresholds::of(&paper_config()).unwrap();
        for k in 0..3 {
            assert!((t.ch_by_lca[k].unwrap() - balanced_binary_ch(&a, k)).abs() < 1e-9);
            assert!((t.td_by_depth[k].unwrap() - balanced_binary_td(&a, k)).abs() < 1e-9);
            assert!(t.td_by_depth[k].unwrap() <= t.ch_by_lca[k].unwrap() + 1e-12);
        }
    }

    #[test]
    fn asymmetric_divergence_has_interior_optimum() {
        // Two communities of unequal size: the optimal t moves away from 1/2.
        let (ch, t) = chernoff_hellinger(&[10.0, 1.0], &[1.0, 3.0], &[0.8, 0.2]);
        assert!(t > 0.0 && t < 1.0 && (t - 0.5).abs() > 0.01);
        let brute = (0..=10000)
            .map(|i| {
                let t = i as f64 / 10000.0;
                0.8 * (t * 10.0 + (1.0 - t) - 10f64.powf(t))
                    + 0.2 * (t + (1.0 - t) * 3.0 - 3f64.powf(1.0 - t))
            })
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((ch - brute).abs() < 1e-6);
    }
}
