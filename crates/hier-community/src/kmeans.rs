//! k-means with greedy k-means++ seeding and several restarts (the scikit-learn recipe:
//! `2 + ln k` candidate centres per seeding step, Lloyd iterations until the squared
//! centre shift falls below `tol * mean feature variance`, best inertia over restarts).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Error;

/// k-means settings.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Number of clusters.
    pub k: usize,
    /// Independent k-means++ restarts; the lowest inertia wins.
    pub restarts: usize,
    /// Lloyd iteration cap per restart.
    pub max_iter: usize,
    /// Relative tolerance on the centre shift.
    pub tol: f64,
    /// Seed of the restarts.
    pub seed: u64,
}

impl KMeansOptions {
    /// scikit-learn's defaults (`n_init = 10`, `max_iter = 300`, `tol = 1e-4`).
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k,
            restarts: 10,
            max_iter: 300,
            tol: 1e-4,
            seed,
        }
    }
}

/// A clustering of the rows.
#[derive(Debug, Clone)]
pub struct KMeansResult {
    /// Cluster of each row.
    pub labels: Vec<usize>,
    /// Centres, row-major `k x dim`.
    pub centers: Vec<f64>,
    /// Sum of squared distances to the assigned centres.
    pub inertia: f64,
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Clusters the `n = data.len() / dim` rows of the row-major `data`.
pub fn kmeans(data: &[f64], dim: usize, options: &KMeansOptions) -> Result<KMeansResult, Error> {
    let n = data.len() / dim.max(1);
    let k = options.k;
    if dim == 0 || data.len() != n * dim {
        return Err(Error::invalid("k-means data is not n x dim"));
    }
    if k == 0 || k > n {
        return Err(Error::invalid(format!(
            "cannot make {k} clusters of {n} points"
        )));
    }
    if data.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("k-means data contains NaN or infinity"));
    }
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    // Absolute tolerance: tol times the mean per-feature variance.
    let mut variance = 0.0;
    for d in 0..dim {
        let mean = (0..n).map(|i| data[i * dim + d]).sum::<f64>() / n as f64;
        variance += (0..n)
            .map(|i| (data[i * dim + d] - mean).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    let tol = options.tol * variance / dim as f64;

    let mut best: Option<KMeansResult> = None;
    for restart in 0..options.restarts.max(1) {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed.wrapping_add(restart as u64 * 7919));
        let mut centers = plus_plus(data, dim, k, &mut rng);
        let mut labels = vec![0usize; n];
        for iteration in 0..options.max_iter {
            let previous = labels.clone();
            labels.par_iter_mut().enumerate().for_each(|(i, l)| {
                *l = nearest(row(i), &centers, dim).0;
            });
            // Strict convergence: no point changed cluster (scikit-learn's first test).
            if iteration > 0 && previous == labels {
                break;
            }
            let mut sums = vec![0.0; k * dim];
            let mut counts = vec![0usize; k];
            for i in 0..n {
                counts[labels[i]] += 1;
                for d in 0..dim {
                    sums[labels[i] * dim + d] += data[i * dim + d];
                }
            }
            let mut new_centers = sums;
            for c in 0..k {
                if counts[c] > 0 {
                    new_centers[c * dim..(c + 1) * dim]
                        .iter_mut()
                        .for_each(|x| *x /= counts[c] as f64);
                } else {
                    // Empty cluster: move it to the point farthest from its centre.
                    let far = (0..n)
                        .max_by(|&a, &b| {
                            let da =
                                sq_dist(row(a), &centers[labels[a] * dim..(labels[a] + 1) * dim]);
                            let db =
                                sq_dist(row(b), &centers[labels[b] * dim..(labels[b] + 1) * dim]);
                            da.total_cmp(&db)
                        })
                        .expect("n > 0");
                    new_centers[c * dim..(c + 1) * dim].copy_from_slice(row(far));
                }
            }
            let shift: f64 = sq_dist(&centers, &new_centers);
            centers = new_centers;
            if shift <= tol {
                break;
            }
        }
        // Final assignment against the final centres.
        let assigned: Vec<(usize, f64)> = (0..n)
            .into_par_iter()
            .map(|i| nearest(row(i), &centers, dim))
            .collect();
        let inertia = assigned.iter().map(|a| a.1).sum();
        let labels = assigned.into_iter().map(|a| a.0).collect();
        if best.as_ref().is_none_or(|b| inertia < b.inertia) {
            best = Some(KMeansResult {
                labels,
                centers,
                inertia,
            });
        }
    }
    Ok(best.expect("at least one restart"))
}

fn nearest(x: &[f64], centers: &[f64], dim: usize) -> (usize, f64) {
    centers
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, center)| (c, sq_dist(x, center)))
        .fold(
            (0, f64::INFINITY),
            |best, cur| if cur.1 < best.1 { cur } else { best },
        )
}

/// Greedy k-means++ (Arthur and Vassilvitskii, with scikit-learn's local trials).
fn plus_plus(data: &[f64], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = data.len() / dim;
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let trials = 2 + (k as f64).ln() as usize;
    let mut centers = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(row(first));
    let mut closest: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| sq_dist(row(i), row(first)))
        .collect();
    let mut potential: f64 = closest.iter().sum();
    for _ in 1..k {
        let mut cumulative = Vec::with_capacity(n);
        let mut acc = 0.0;
        for &d in &closest {
            acc += d;
            cumulative.push(acc);
        }
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let target = rng.random::<f64>() * potential;
            let candidate = cumulative.partition_point(|&c| c < target).min(n - 1);
            let dists: Vec<f64> = (0..n)
                .into_par_iter()
                .map(|i| sq_dist(row(i), row(candidate)).min(closest[i]))
                .collect();
            let pot: f64 = dists.iter().sum();
            if best.as_ref().is_none_or(|b| pot < b.0) {
                best = Some((pot, candidate, dists));
            }
        }
        let (pot, candidate, dists) = best.expect("trials > 0");
        centers.extend_from_slice(row(candidate));
        potential = pot;
        closest = dists;
    }
    centers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_well_separated_blobs() {
        let mut data = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let centres = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        for c in centres {
            for _ in 0..50 {
                data.push(c.0 + rng.random::<f64>());
                data.push(c.1 + rng.random::<f64>());
            }
        }
        let result = kmeans(&data, 2, &KMeansOptions::new(3, 1)).unwrap();
        for blob in 0..3 {
            let l = result.labels[blob * 50];
            assert!(
                result.labels[blob * 50..(blob + 1) * 50]
                    .iter()
                    .all(|&x| x == l)
            );
        }
        let distinct: std::collections::BTreeSet<_> = result.labels.iter().collect();
        assert_eq!(distinct.len(), 3);
        assert!(kmeans(&data, 2, &KMeansOptions::new(200, 1)).is_err());
    }
}
