//! Agreement between a clustering and the ground truth: accuracy after Hungarian matching,
//! adjusted mutual information (arithmetic normalisation, scikit-learn's default), and the
//! adjusted Rand index. Labels are arbitrary integers; every metric is invariant to
//! relabelling either side.

use rustc_hash::FxHashMap;

/// Dense contingency table of two labelings with their row and column sums.
struct Contingency {
    rows: usize,
    cols: usize,
    table: Vec<u64>,
    row_sums: Vec<u64>,
    col_sums: Vec<u64>,
    n: u64,
}

fn relabel(labels: &[usize]) -> (Vec<usize>, usize) {
    let mut ids = FxHashMap::default();
    let out = labels
        .iter()
        .map(|&l| {
            let next = ids.len();
            *ids.entry(l).or_insert(next)
        })
        .collect();
    (out, ids.len())
}

fn contingency(truth: &[usize], pred: &[usize]) -> Contingency {
    assert_eq!(truth.len(), pred.len(), "labelings of different lengths");
    let (t, rows) = relabel(truth);
    let (p, cols) = relabel(pred);
    let mut table = vec![0u64; rows * cols];
    for (a, b) in t.iter().zip(&p) {
        table[a * cols + b] += 1;
    }
    let row_sums = (0..rows)
        .map(|r| table[r * cols..(r + 1) * cols].iter().sum())
        .collect();
    let col_sums = (0..cols)
        .map(|c| (0..rows).map(|r| table[r * cols + c]).sum())
        .collect();
    Contingency {
        rows,
        cols,
        table,
        row_sums,
        col_sums,
        n: truth.len() as u64,
    }
}

/// Fraction of nodes in matched clusters under the best one-to-one matching of predicted
/// to true clusters (Hungarian algorithm on the contingency table; with different numbers
/// of clusters the extra ones match nothing).
pub fn accuracy(truth: &[usize], pred: &[usize]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let c = contingency(truth, pred);
    // kuhn_munkres needs rows <= columns: match the smaller side into the larger.
    let weights = if c.rows <= c.cols {
        pathfinding::matrix::Matrix::from_fn(c.rows, c.cols, |(i, j)| {
            c.table[i * c.cols + j] as i64
        })
    } else {
        pathfinding::matrix::Matrix::from_fn(c.cols, c.rows, |(i, j)| {
            c.table[j * c.cols + i] as i64
        })
    };
    let (matched, _) = pathfinding::kuhn_munkres::kuhn_munkres(&weights);
    matched as f64 / c.n as f64
}

fn entropy(sums: &[u64], n: u64) -> f64 {
    let n = n as f64;
    sums.iter()
        .filter(|&&s| s > 0)
        .map(|&s| {
            let p = s as f64 / n;
            -p * p.ln()
        })
        .sum()
}

fn mutual_information(c: &Contingency) -> f64 {
    let n = c.n as f64;
    let mut mi = 0.0;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let nij = c.table[i * c.cols + j];
            if nij > 0 {
                let nij = nij as f64;
                mi += nij / n * (n * nij / (c.row_sums[i] as f64 * c.col_sums[j] as f64)).ln();
            }
        }
    }
    mi.max(0.0)
}

/// Expected mutual information under the permutation (hypergeometric) model, as
/// scikit-learn's `expected_mutual_information`.
fn expected_mutual_information(c: &Contingency) -> f64 {
    let n = c.n as f64;
    let lg = |x: f64| libm::lgamma(x);
    let mut emi = 0.0;
    let gln_n = lg(n + 1.0);
    for &a in &c.row_sums {
        let a = a as f64;
        for &b in &c.col_sums {
            let b = b as f64;
            let start = (a + b - n).max(1.0) as u64;
            let end = a.min(b) as u64;
            for nij in start..=end {
                let nij = nij as f64;
                let term2 = (n * nij / (a * b)).ln();
                let gln = lg(a + 1.0) + lg(b + 1.0) + lg(n - a + 1.0) + lg(n - b + 1.0)
                    - gln_n
                    - lg(nij + 1.0)
                    - lg(a - nij + 1.0)
                    - lg(b - nij + 1.0)
                    - lg(n - a - b + nij + 1.0);
                emi += nij / n * term2 * gln.exp();
            }
        }
    }
    emi
}

/// Adjusted mutual information with the arithmetic-mean normaliser (scikit-learn's
/// `adjusted_mutual_info_score` default).
pub fn adjusted_mutual_information(truth: &[usize], pred: &[usize]) -> f64 {
    let c = contingency(truth, pred);
    if (c.rows == c.cols && c.rows <= 1) || c.n == 0 {
        return 1.0;
    }
    let mi = mutual_information(&c);
    let emi = expected_mutual_information(&c);
    let h_true = entropy(&c.row_sums, c.n);
    let h_pred = entropy(&c.col_sums, c.n);
    let normaliser = 0.5 * (h_true + h_pred);
    let mut denominator = normaliser - emi;
    // scikit-learn's guard against a vanishing denominator.
    denominator = if denominator < 0.0 {
        denominator.min(-f64::EPSILON)
    } else {
        denominator.max(f64::EPSILON)
    };
    (mi - emi) / denominator
}

/// Adjusted Rand index (Hubert and Arabie).
pub fn adjusted_rand_index(truth: &[usize], pred: &[usize]) -> f64 {
    let c = contingency(truth, pred);
    let comb2 = |x: u64| (x as f64) * (x as f64 - 1.0) / 2.0;
    if c.n < 2 || (c.rows == c.cols && (c.rows == 1 || c.rows as u64 == c.n)) {
        return 1.0;
    }
    let sum_ij: f64 = c.table.iter().map(|&x| comb2(x)).sum();
    let sum_a: f64 = c.row_sums.iter().map(|&x| comb2(x)).sum();
    let sum_b: f64 = c.col_sums.iter().map(|&x| comb2(x)).sum();
    let expected = sum_a * sum_b / comb2(c.n);
    let max = 0.5 * (sum_a + sum_b);
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_permuted_labelings() {
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [5, 5, 3, 3, 9, 9];
        assert_eq!(accuracy(&truth, &pred), 1.0);
        assert!((adjusted_mutual_information(&truth, &pred) - 1.0).abs() < 1e-12);
        assert!((adjusted_rand_index(&truth, &pred) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn accuracy_matches_best_matching_by_hand() {
        // Clusters {0,1,2}, {3,4,5}, {6,7,8} against a rotated prediction: the best
        // matching keeps 2 of 3 in each cluster.
        let truth = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let pred = [0, 0, 1, 1, 1, 2, 2, 2, 0];
        assert!((accuracy(&truth, &pred) - 6.0 / 9.0).abs() < 1e-12);
        // More predicted than true clusters: extra clusters match nothing.
        assert!((accuracy(&[0, 0, 1, 1], &[0, 1, 2, 3]) - 0.5).abs() < 1e-12);
    }
}
