//! Paris (Bonald, Charpentier, Galland, Hollocou 2018): agglomerative clustering from
//! singletons with the distance `d(a, b) = w_a w_b / (w_ab W)` (node weights = weighted
//! degrees, `W` their total), merged along a nearest-neighbour chain, which is exact
//! because the distance is reducible.
//!
//! This follows the reference implementation the paper's official code vendors (Bonald's
//! `paris.py`): the chain starts at the oldest remaining cluster, ties go to the smallest
//! cluster id, and connected components are joined at the end. Zero-weight edges carry no
//! similarity (their distance is infinite there) and are ignored. Component joins have an
//! infinite height in the reference; here they get twice the largest finite height so the
//! linkage stays finite (and JSON-serialisable) while remaining the top merges.

use rustc_hash::FxHashMap;

use crate::Error;
use crate::dendrogram::{Dendrogram, Merge};
use crate::graph::Graph;

/// Runs Paris on `graph` (weighted when the graph has weights and `weighted` is set).
pub fn paris(graph: &Graph, weighted: bool) -> Result<Dendrogram, Error> {
    let n = graph.num_nodes();
    if n == 0 {
        return Err(Error::invalid("the graph has no nodes"));
    }
    let use_weights = weighted && graph.is_weighted();
    let total = 2 * n - 1;
    let mut adj: Vec<FxHashMap<u32, f64>> = Vec::with_capacity(total);
    let mut w = vec![0f64; total];
    for (u, wu) in w.iter_mut().enumerate().take(n) {
        let weights = if use_weights {
            graph.neighbor_weights(u)
        } else {
            None
        };
        let mut map = FxHashMap::default();
        for (k, &v) in graph.neighbors(u).iter().enumerate() {
            let x = weights.map_or(1.0, |ws| ws[k]);
            if x > 0.0 {
                map.insert(v, x);
                *wu += x;
            }
        }
        adj.push(map);
    }
    adj.resize_with(total, FxHashMap::default);
    let wtot: f64 = w[..n].iter().sum();
    let mut size = vec![1usize; total];
    let mut alive = vec![true; n];
    alive.resize(total, false);
    let mut next_id = n;
    let mut oldest = 0usize;
    let mut raw: Vec<(usize, usize, f64, usize, f64)> = Vec::with_capacity(n - 1);
    let mut components: Vec<(usize, usize)> = Vec::new();

    loop {
        while oldest < next_id && !alive[oldest] {
            oldest += 1;
        }
        if oldest >= next_id {
            break;
        }
        let mut chain = vec![oldest];
        while let Some(a) = chain.pop() {
            let mut dmin = f64::INFINITY;
            let mut b: Option<usize> = None;
            for (&v, &wav) in &adj[a] {
                let v = v as usize;
                let d = w[v] * w[a] / wav / wtot;
                if d < dmin || (d == dmin && b.is_some_and(|b| v < b)) {
                    dmin = d;
                    b = Some(v);
                }
            }
            match (chain.pop(), b) {
                (Some(c), Some(b)) if c == b => {
                    let u = next_id;
                    next_id += 1;
                    let density = adj[a][&(b as u32)] / (size[a] as f64 * size[b] as f64);
                    raw.push((a, b, dmin, size[a] + size[b], density));
                    // Merge the adjacency maps, smaller into larger.
                    let (big, small) = if adj[a].len() >= adj[b].len() {
                        (a, b)
                    } else {
                        (b, a)
                    };
                    let mut merged = std::mem::take(&mut adj[big]);
                    let small_map = std::mem::take(&mut adj[small]);
                    merged.remove(&(small as u32));
                    for (v, x) in small_map {
                        if v as usize != big {
                            *merged.entry(v).or_insert(0.0) += x;
                        }
                    }
                    for (&v, &x) in &merged {
                        let nv = &mut adj[v as usize];
                        nv.remove(&(a as u32));
                        nv.remove(&(b as u32));
                        nv.insert(u as u32, x);
                    }
                    adj[u] = merged;
                    w[u] = w[a] + w[b];
                    size[u] = size[a] + size[b];
                    alive[a] = false;
                    alive[b] = false;
                    alive[u] = true;
                }
                (Some(c), Some(b)) => {
                    chain.push(c);
                    chain.push(a);
                    chain.push(b);
                }
                (None, Some(b)) => {
                    chain.push(a);
                    chain.push(b);
                }
                (c, None) => {
                    // No neighbour left: `a` is a finished connected component.
                    if let Some(c) = c {
                        chain.push(c);
                    }
                    components.push((a, size[a]));
                    alive[a] = false;
                }
            }
        }
    }
    // Join the components (reference order: pop from the end).
    if let Some((mut a, mut s)) = components.pop() {
        while let Some((b, t)) = components.pop() {
            raw.push((a, b, f64::INFINITY, s + t, 0.0));
            a = next_id;
            next_id += 1;
            s += t;
        }
    }
    debug_assert_eq!(raw.len(), n - 1);
    // Reorder by (height, creation index) and renumber, as `reorder_dendrogram` does.
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|&x, &y| raw[x].2.total_cmp(&raw[y].2).then(x.cmp(&y)));
    let mut new_id: Vec<usize> = (0..total).collect();
    for (t, &old) in order.iter().enumerate() {
        new_id[n + old] = n + t;
    }
    let finite_max = raw
        .iter()
        .map(|r| r.2)
        .filter(|h| h.is_finite())
        .fold(0.0f64, f64::max);
    let join_height = if finite_max > 0.0 {
        2.0 * finite_max
    } else {
        1.0
    };
    let merges = order
        .iter()
        .map(|&t| {
            let (a, b, h, s, density) = raw[t];
            Merge {
                a: new_id[a],
                b: new_id[b],
                height: if h.is_finite() { h } else { join_height },
                size: s,
                density,
            }
        })
        .collect();
    Ok(Dendrogram {
        leaf_labels: (0..n).collect(),
        num_leaves: n,
        merges,
    })
}
