//! Block eigensolver: LOBPCG (Knyazev 2001) with the basis selection of Hetmaniuk and
//! Lehoucq (2006): `X` orthonormal, `P` orthogonalised against `X`, `W` against both, all
//! orthonormalised by SVQB (Stathopoulos and Wu 2002), so each Rayleigh-Ritz step is a
//! small standard symmetric eigenproblem.
//!
//! Written here because faer's single-vector thick-restart Lanczos stalls on the graphs of
//! this crate: real sparse graphs have exactly repeated eigenvalues (pendant vertices on a
//! common hub, symmetric motifs), which a single Krylov vector cannot resolve, and the
//! Bethe-Hessian's wanted eigenvalues sit at the edge of its bulk. Measured on the UCTE
//! power grid (`cargo xtask bench hier-community`), Lanczos did not converge on 16
//! eigenpairs in two minutes where this block solver takes well under a second. A block
//! also takes the previous eigenvectors as a warm start, which the `zeta` search of the
//! improved Bethe-Hessian repeats a dozen times on slowly changing operators.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use nalgebra::DMatrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Error;
use crate::eigen::{EigenPairs, Operator, Which};

fn par() -> Par {
    Par::rayon(0)
}

/// Rows per task in [`gram`].
const GRAM_CHUNK: usize = 8192;

/// `A^T B` as a small nalgebra matrix. The long dimension is the reduction, which faer's
/// parallel matmul does not split; partial products over row chunks run in parallel and
/// are summed (measured 2x faster on 100k x 11..33 blocks).
fn gram(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> DMatrix<f64> {
    let n = a.nrows();
    let (p, q) = (a.ncols(), b.ncols());
    let partials: Vec<Mat<f64>> = (0..n.div_ceil(GRAM_CHUNK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * GRAM_CHUNK;
            let len = GRAM_CHUNK.min(n - r0);
            let mut out = Mat::<f64>::zeros(p, q);
            matmul(
                out.as_mut(),
                Accum::Replace,
                a.subrows(r0, len).transpose(),
                b.subrows(r0, len),
                1.0,
                Par::Seq,
            );
            out
        })
        .collect();
    let mut total = DMatrix::<f64>::zeros(p, q);
    for part in partials {
        for i in 0..p {
            for j in 0..q {
                total[(i, j)] += part[(i, j)];
            }
        }
    }
    total
}

/// `A C` for a small nalgebra `C`.
fn times(a: MatRef<'_, f64>, c: &DMatrix<f64>) -> Mat<f64> {
    let c = Mat::<f64>::from_fn(c.nrows(), c.ncols(), |i, j| c[(i, j)]);
    let mut out = Mat::<f64>::zeros(a.nrows(), c.ncols());
    matmul(out.as_mut(), Accum::Replace, a, c.as_ref(), 1.0, par());
    out
}

/// `A += B C`.
fn add_times(a: &mut Mat<f64>, b: MatRef<'_, f64>, c: &DMatrix<f64>) {
    let c = Mat::<f64>::from_fn(c.nrows(), c.ncols(), |i, j| c[(i, j)]);
    matmul(a.as_mut(), Accum::Add, b, c.as_ref(), 1.0, par());
}

/// `A -= B C`.
fn subtract_times(a: &mut Mat<f64>, b: MatRef<'_, f64>, c: &DMatrix<f64>) {
    let c = Mat::<f64>::from_fn(c.nrows(), c.ncols(), |i, j| c[(i, j)]);
    matmul(a.as_mut(), Accum::Add, b, c.as_ref(), -1.0, par());
}

fn symmetric_eigen_sorted(g: &DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let m = g.nrows();
    let eig = ((g + g.transpose()) * 0.5).symmetric_eigen();
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let values = order.iter().map(|&j| eig.eigenvalues[j]).collect();
    let vectors = DMatrix::from_fn(m, order.len(), |i, j| eig.eigenvectors[(i, order[j])]);
    (values, vectors)
}

/// Orthonormalises the columns of `u` (and applies the same transform to `au = A u`),
/// dropping directions whose Gram eigenvalue is below `1e-10` of the largest.
fn svqb(u: Mat<f64>, au: Option<Mat<f64>>) -> (Mat<f64>, Option<Mat<f64>>) {
    let m = u.ncols();
    if m == 0 {
        return (u, au);
    }
    let g = gram(u.as_ref(), u.as_ref());
    let d: Vec<f64> = (0..m).map(|j| 1.0 / g[(j, j)].max(1e-300).sqrt()).collect();
    let scaled = DMatrix::from_fn(m, m, |i, j| g[(i, j)] * d[i] * d[j]);
    let (values, vectors) = symmetric_eigen_sorted(&scaled);
    let top = values.iter().fold(0.0f64, |a, &b| a.max(b));
    let keep: Vec<usize> = (0..m).filter(|&j| values[j] > 1e-10 * top).collect();
    let t = DMatrix::from_fn(m, keep.len(), |i, c| {
        d[i] * vectors[(i, keep[c])] / values[keep[c]].sqrt()
    });
    let u = times(u.as_ref(), &t);
    let au = au.map(|a| times(a.as_ref(), &t));
    (u, au)
}

/// `sign * A` applied to every column.
fn apply_block(op: &impl Operator, x: MatRef<'_, f64>, sign: f64) -> Mat<f64> {
    let n = x.nrows();
    let mut out = Mat::<f64>::zeros(n, x.ncols());
    let mut col = vec![0.0; n];
    let mut y = vec![0.0; n];
    for j in 0..x.ncols() {
        for i in 0..n {
            col[i] = x[(i, j)];
        }
        op.apply(&col, &mut y);
        for i in 0..n {
            out[(i, j)] = sign * y[i];
        }
    }
    out
}

/// The `k` smallest (or largest) eigenpairs of `op` by LOBPCG, residuals below
/// `rel_tol * norm_bound`. `start` (columns of a previous solution) warm-starts the
/// block; `diagonal` (the operator's diagonal) enables Jacobi preconditioning.
pub fn lobpcg(
    op: &impl Operator,
    k: usize,
    which: Which,
    rel_tol: f64,
    seed: u64,
    start: Option<&EigenPairs>,
    diagonal: Option<&[f64]>,
) -> Result<EigenPairs, Error> {
    let n = op.dim();
    let sign = match which {
        Which::Smallest => 1.0,
        Which::Largest => -1.0,
    };
    let b = (k + (k / 4).max(3)).min(n / 3).max(k);
    if 3 * b > n {
        return Err(Error::invalid(format!(
            "{k} eigenpairs of a {n} x {n} operator: too few rows for LOBPCG"
        )));
    }
    let scale = op.norm_bound().max(1e-12);
    let tol = rel_tol * scale;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Mat::<f64>::from_fn(n, b, |_, _| rng.random::<f64>() - 0.5);
    if let Some(start) = start {
        for j in 0..start.values.len().min(b) {
            let v = start.vector(j);
            for i in 0..n {
                x[(i, j)] = v[i] + 1e-4 * x[(i, j)];
            }
        }
    }
    let (x0, _) = svqb(x, None);
    let mut x = x0;
    if x.ncols() < b {
        return Err(Error::invalid("LOBPCG start block is rank deficient"));
    }
    let mut ax = apply_block(op, x.as_ref(), sign);
    // Initial Rayleigh-Ritz.
    let (theta, c) = symmetric_eigen_sorted(&gram(x.as_ref(), ax.as_ref()));
    x = times(x.as_ref(), &c);
    ax = times(ax.as_ref(), &c);
    let mut theta = theta;
    let mut p: Option<(Mat<f64>, Mat<f64>)> = None;
    let precond: Option<Vec<f64>> = diagonal.map(|d| {
        d.iter()
            .map(|&v| {
                let v = (sign * v).abs();
                if v > 1e-12 * scale {
                    1.0 / v
                } else {
                    1.0 / scale
                }
            })
            .collect()
    });
    let max_iter = 2000;
    let mut residual_norms = vec![f64::INFINITY; b];
    for _iteration in 0..max_iter {
        // Residuals R = AX - X Theta, column norms.
        let mut r = ax.clone();
        residual_norms
            .par_iter_mut()
            .zip(r.par_col_iter_mut())
            .zip(x.par_col_iter())
            .enumerate()
            .for_each(|(j, ((norm, mut rc), xc))| {
                let mut acc = 0.0;
                for i in 0..n {
                    let v = rc[i] - xc[i] * theta[j];
                    rc[i] = v;
                    acc += v * v;
                }
                *norm = acc.sqrt();
            });
        if residual_norms[..k].iter().all(|&v| v <= tol) {
            let values = theta[..k].iter().map(|t| sign * t).collect();
            let mut vectors = Vec::with_capacity(n * k);
            for j in 0..k {
                vectors.extend((0..n).map(|i| x[(i, j)]));
            }
            return Ok(EigenPairs { values, vectors, n });
        }
        let active: Vec<usize> = (0..b).filter(|&j| residual_norms[j] > tol).collect();
        let mut w = Mat::<f64>::from_fn(n, active.len(), |i, c| {
            let v = r[(i, active[c])];
            match &precond {
                Some(t) => v * t[i],
                None => v,
            }
        });
        // Orthogonalise W against X and P, then orthonormalise (SVQB drops what became
        // dependent).
        for _ in 0..1 {
            let c = gram(x.as_ref(), w.as_ref());
            subtract_times(&mut w, x.as_ref(), &c);
            if let Some((pm, _)) = &p {
                let c = gram(pm.as_ref(), w.as_ref());
                subtract_times(&mut w, pm.as_ref(), &c);
            }
        }
        let (w, _) = svqb(w, None);
        if w.ncols() == 0 {
            break;
        }
        let aw = apply_block(op, w.as_ref(), sign);
        // Gram matrix of [X, W, P] with A, block by block: X^T A X = Theta after the
        // previous Rayleigh-Ritz step, so it is not recomputed.
        let (nw, np) = (w.ncols(), p.as_ref().map_or(0, |(pm, _)| pm.ncols()));
        let m = b + nw + np;
        let mut g = DMatrix::<f64>::zeros(m, m);
        for j in 0..b {
            g[(j, j)] = theta[j];
        }
        let mut put = |r0: usize, c0: usize, block: &DMatrix<f64>| {
            for i in 0..block.nrows() {
                for j in 0..block.ncols() {
                    g[(r0 + i, c0 + j)] = block[(i, j)];
                    g[(c0 + j, r0 + i)] = block[(i, j)];
                }
            }
        };
        put(0, b, &gram(x.as_ref(), aw.as_ref()));
        put(b, b, &gram(w.as_ref(), aw.as_ref()));
        if let Some((pm, apm)) = &p {
            put(0, b + nw, &gram(x.as_ref(), apm.as_ref()));
            put(b, b + nw, &gram(w.as_ref(), apm.as_ref()));
            put(b + nw, b + nw, &gram(pm.as_ref(), apm.as_ref()));
        }
        let (values, c) = symmetric_eigen_sorted(&g);
        theta = values[..b].to_vec();
        let cx = c.view((0, 0), (b, b)).into_owned();
        let cw = c.view((b, 0), (nw, b)).into_owned();
        // P = W Cw + P Cp: the part of the update outside the old X.
        let mut new_p = times(w.as_ref(), &cw);
        let mut new_ap = times(aw.as_ref(), &cw);
        if let Some((pm, apm)) = &p {
            let cp = c.view((b + nw, 0), (np, b)).into_owned();
            add_times(&mut new_p, pm.as_ref(), &cp);
            add_times(&mut new_ap, apm.as_ref(), &cp);
        }
        let mut new_x = times(x.as_ref(), &cx);
        let mut new_ax = times(ax.as_ref(), &cx);
        new_x += &new_p;
        new_ax += &new_ap;
        let coef = gram(new_x.as_ref(), new_p.as_ref());
        subtract_times(&mut new_p, new_x.as_ref(), &coef);
        subtract_times(&mut new_ap, new_ax.as_ref(), &coef);
        let (new_p, new_ap) = svqb(new_p, Some(new_ap));
        x = new_x;
        ax = new_ax;
        p = (new_p.ncols() > 0).then(|| (new_p, new_ap.expect("transformed with P")));
    }
    Err(Error::invalid(format!(
        "LOBPCG did not converge: residuals {:?} above {tol:.2e} (n = {n}, k = {k})",
        &residual_norms[..k]
    )))
}
