//! Partial eigensolvers over matrix-free operators.
//!
//! Large problems go to faer's thick-restart Lanczos (`partial_self_adjoint_eigen`) and
//! Krylov-Schur (`partial_eigen`) solvers. Both return the eigenvalues of largest
//! magnitude, so the smallest algebraic eigenvalues of `M` are taken as the largest of
//! `sigma I - M` with `sigma` a Gershgorin bound. Small problems (a few hundred rows, as in
//! the deep levels of the top-down recursion) are solved densely with nalgebra: the dense
//! matrix there is tiny, and faer's Lanczos needs more rows than its subspace size.

use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::matrix_free::LinOp;
use faer::matrix_free::eigen::{
    PartialEigenParams, partial_eigen, partial_eigen_scratch, partial_self_adjoint_eigen,
    partial_self_adjoint_eigen_scratch,
};
use faer::reborrow::*;
use faer::{Col, Mat, MatMut, MatRef, Par};
use nalgebra::DMatrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Error;

/// Below this many rows problems are solved densely.
pub const DENSE_LIMIT: usize = 320;

/// A real linear operator `y = M x` on vectors of length `dim()`.
pub trait Operator: Sync {
    /// Length of the vectors.
    fn dim(&self) -> usize;
    /// `y = M x`.
    fn apply(&self, x: &[f64], y: &mut [f64]);
    /// An upper bound on `|lambda|` over the spectrum (e.g. Gershgorin).
    fn norm_bound(&self) -> f64;
    /// The diagonal, when cheap to give (enables Jacobi preconditioning in LOBPCG).
    fn diagonal(&self) -> Option<Vec<f64>> {
        None
    }
}

/// Which iterative solver [`symmetric_eigen_with`] uses above [`DENSE_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymmetricSolver {
    /// The crate's block LOBPCG ([`crate::lobpcg`]), the default.
    Lobpcg,
    /// faer's thick-restart Lanczos, kept for comparison in the benchmark.
    Lanczos,
}

/// Eigenpairs: `values[j]` with eigenvector `vectors[j * n .. (j + 1) * n]`.
#[derive(Debug, Clone)]
pub struct EigenPairs {
    /// Eigenvalues in the order asked for.
    pub values: Vec<f64>,
    /// Eigenvectors, column-major (`n` entries per vector), unit norm.
    pub vectors: Vec<f64>,
    /// Vector length.
    pub n: usize,
}

impl EigenPairs {
    /// Eigenvector `j`.
    pub fn vector(&self, j: usize) -> &[f64] {
        &self.vectors[j * self.n..(j + 1) * self.n]
    }
}

/// Which end of the spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Smallest algebraic, returned ascending.
    Smallest,
    /// Largest algebraic, returned descending.
    Largest,
}

/// `sign * (shift I - M)` folded so that the wanted end has the largest magnitude.
struct Folded<'a, O: Operator> {
    op: &'a O,
    shift: f64,
    which: Which,
}

impl<O: Operator> std::fmt::Debug for Folded<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Folded(shift = {})", self.shift)
    }
}

impl<O: Operator> Folded<'_, O> {
    fn apply_vec(&self, x: &[f64], y: &mut [f64]) {
        self.op.apply(x, y);
        match self.which {
            // shift I - M: smallest of M become the largest (all >= 0).
            Which::Smallest => y
                .iter_mut()
                .zip(x)
                .for_each(|(yi, xi)| *yi = self.shift * xi - *yi),
            // M + shift I: largest of M become the largest (all >= 0).
            Which::Largest => y
                .iter_mut()
                .zip(x)
                .for_each(|(yi, xi)| *yi += self.shift * xi),
        }
    }
}

impl<O: Operator> LinOp<f64> for Folded<'_, O> {
    fn apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.op.dim()
    }
    fn ncols(&self) -> usize {
        self.op.dim()
    }
    fn apply(&self, out: MatMut<'_, f64>, rhs: MatRef<'_, f64>, _par: Par, _stack: &mut MemStack) {
        apply_columns(out, rhs, |x, y| self.apply_vec(x, y));
    }
    fn conj_apply(
        &self,
        out: MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        par: Par,
        stack: &mut MemStack,
    ) {
        self.apply(out, rhs, par, stack)
    }
}

/// Applies `f` column by column, copying when a column is not contiguous.
fn apply_columns(mut out: MatMut<'_, f64>, rhs: MatRef<'_, f64>, f: impl Fn(&[f64], &mut [f64])) {
    let n = rhs.nrows();
    let mut x = vec![0.0; n];
    let mut y = vec![0.0; n];
    for j in 0..rhs.ncols() {
        for i in 0..n {
            x[i] = rhs[(i, j)];
        }
        f(&x, &mut y);
        for i in 0..n {
            out[(i, j)] = y[i];
        }
    }
}

fn random_start(n: usize, seed: u64) -> Col<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Col::from_fn(n, |_| rng.random::<f64>() - 0.5)
}

/// The `k` smallest or largest eigenpairs of the symmetric operator `op`, to relative
/// residual `rel_tol` (absolute residual `rel_tol * norm_bound`).
pub fn symmetric_eigen(
    op: &impl Operator,
    k: usize,
    which: Which,
    rel_tol: f64,
    seed: u64,
) -> Result<EigenPairs, Error> {
    symmetric_eigen_with(op, k, which, rel_tol, seed, None, SymmetricSolver::Lobpcg)
}

/// [`symmetric_eigen`] with an optional warm start (the eigenpairs of a nearby operator,
/// which speeds up a sequence of related solves) and a choice of iterative solver.
///
/// Problems of at most [`DENSE_LIMIT`] rows, or asking for more than a third of the
/// spectrum, are solved densely.
pub fn symmetric_eigen_with(
    op: &impl Operator,
    k: usize,
    which: Which,
    rel_tol: f64,
    seed: u64,
    start: Option<&EigenPairs>,
    solver: SymmetricSolver,
) -> Result<EigenPairs, Error> {
    let n = op.dim();
    if k == 0 || k > n {
        return Err(Error::invalid(format!(
            "asked for {k} eigenpairs of a {n} x {n} operator"
        )));
    }
    if n <= DENSE_LIMIT || 3 * (k + (k / 4).max(3)) > n {
        return Ok(dense_symmetric_eigen(op, k, which));
    }
    match solver {
        SymmetricSolver::Lobpcg => {
            let diagonal = op.diagonal();
            crate::lobpcg::lobpcg(op, k, which, rel_tol, seed, start, diagonal.as_deref())
        }
        SymmetricSolver::Lanczos => {
            let start: Option<Vec<f64>> = start.map(|s| {
                let mut v = vec![0.0; n];
                for j in 0..s.values.len() {
                    v.iter_mut().zip(s.vector(j)).for_each(|(a, b)| *a += b);
                }
                v
            });
            lanczos(op, k, which, rel_tol, seed, start.as_deref())
        }
    }
}

/// faer's thick-restart Lanczos on the folded operator.
fn lanczos(
    op: &impl Operator,
    k: usize,
    which: Which,
    rel_tol: f64,
    seed: u64,
    start: Option<&[f64]>,
) -> Result<EigenPairs, Error> {
    let n = op.dim();
    let shift = op.norm_bound().max(1e-12);
    let folded = Folded { op, shift, which };
    let par = Par::rayon(0);
    // Guard vectors: a cluster of eigenvalues straddling the k-th one stalls the locking
    // of the k-th Ritz pair; asking for a few more and keeping the first k avoids that.
    let wanted = (k + (k / 4).max(4)).min(n - 1).max(k);
    let params = PartialEigenParams {
        min_dim: (2 * wanted).max(24).min(n - 1),
        max_dim: (4 * wanted).max(48).min(n - 1),
        max_restarts: 4000,
        ..Default::default()
    };
    let mut mem = MemBuffer::new(partial_self_adjoint_eigen_scratch(
        &folded, wanted, par, params,
    ));
    let mut vecs = Mat::<f64>::zeros(n, wanted);
    let mut vals = vec![0.0; wanted];
    let mut v0 = random_start(n, seed);
    if let Some(start) = start {
        // Mostly the given direction, with a little noise so no wanted vector is missed.
        let norm = start.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        for i in 0..n {
            v0[i] = start[i] / norm + 1e-3 * v0[i] / (n as f64).sqrt();
        }
    }
    let info = partial_self_adjoint_eigen(
        vecs.rb_mut(),
        &mut vals,
        &folded,
        v0.as_ref(),
        rel_tol * shift,
        par,
        MemStack::new(&mut mem),
        params,
    );
    if info.n_converged_eigen < k {
        return Err(Error::invalid(format!(
            "the Lanczos eigensolver converged on {} of {k} eigenpairs (n = {n})",
            info.n_converged_eigen
        )));
    }
    // Largest folded magnitude first == wanted end first.
    let values = vals[..k]
        .iter()
        .map(|&mu| match which {
            Which::Smallest => shift - mu,
            Which::Largest => mu - shift,
        })
        .collect();
    let mut vectors = Vec::with_capacity(n * k);
    for j in 0..k {
        vectors.extend((0..n).map(|i| vecs[(i, j)]));
    }
    Ok(EigenPairs { values, vectors, n })
}

/// Dense solve for small operators: assembles `M` column by column.
fn dense_symmetric_eigen(op: &impl Operator, k: usize, which: Which) -> EigenPairs {
    let n = op.dim();
    let mut m = DMatrix::<f64>::zeros(n, n);
    let mut e = vec![0.0; n];
    let mut col = vec![0.0; n];
    for j in 0..n {
        e[j] = 1.0;
        op.apply(&e, &mut col);
        e[j] = 0.0;
        for i in 0..n {
            m[(i, j)] = col[i];
        }
    }
    // Symmetrise against round-off in the operator.
    let m = (&m + m.transpose()) * 0.5;
    let eig = m.symmetric_eigen();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    if which == Which::Largest {
        order.reverse();
    }
    let mut values = Vec::with_capacity(k);
    let mut vectors = Vec::with_capacity(n * k);
    for &j in order.iter().take(k) {
        values.push(eig.eigenvalues[j]);
        vectors.extend(eig.eigenvectors.column(j).iter());
    }
    EigenPairs { values, vectors, n }
}

/// A general (non-symmetric) real operator.
struct General<'a, F: Fn(&[f64], &mut [f64]) + Sync> {
    n: usize,
    f: &'a F,
}

impl<F: Fn(&[f64], &mut [f64]) + Sync> std::fmt::Debug for General<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "General({})", self.n)
    }
}

impl<F: Fn(&[f64], &mut [f64]) + Sync> LinOp<f64> for General<'_, F> {
    fn apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.n
    }
    fn ncols(&self) -> usize {
        self.n
    }
    fn apply(&self, out: MatMut<'_, f64>, rhs: MatRef<'_, f64>, _par: Par, _stack: &mut MemStack) {
        apply_columns(out, rhs, |x, y| (self.f)(x, y));
    }
    fn conj_apply(
        &self,
        out: MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        par: Par,
        stack: &mut MemStack,
    ) {
        self.apply(out, rhs, par, stack)
    }
}

/// The `k` eigenvalues of largest magnitude of a general real operator `y = f(x)` of
/// dimension `n` (complex, as `(re, im)`), by Krylov-Schur (dense below [`DENSE_LIMIT`]).
pub fn general_eigenvalues(
    n: usize,
    k: usize,
    f: &(impl Fn(&[f64], &mut [f64]) + Sync),
    rel_tol: f64,
    norm_bound: f64,
    seed: u64,
) -> Result<Vec<(f64, f64)>, Error> {
    let k = k.min(n);
    if n <= DENSE_LIMIT {
        let mut m = DMatrix::<f64>::zeros(n, n);
        let mut e = vec![0.0; n];
        let mut col = vec![0.0; n];
        for j in 0..n {
            e[j] = 1.0;
            f(&e, &mut col);
            e[j] = 0.0;
            for i in 0..n {
                m[(i, j)] = col[i];
            }
        }
        let mut values: Vec<(f64, f64)> = m
            .complex_eigenvalues()
            .iter()
            .map(|z| (z.re, z.im))
            .collect();
        values.sort_by(|a, b| (b.0.hypot(b.1)).total_cmp(&a.0.hypot(a.1)));
        values.truncate(k);
        return Ok(values);
    }
    let op = General { n, f };
    let par = Par::rayon(0);
    let params = PartialEigenParams {
        min_dim: (2 * k).max(24).min(n - 1),
        max_dim: (4 * k).max(48).min(n - 1),
        max_restarts: 4000,
        ..Default::default()
    };
    let mut mem = MemBuffer::new(partial_eigen_scratch(&op, k, par, params));
    let mut vecs = Mat::<faer::c64>::zeros(n, k);
    let mut vals = vec![faer::c64::new(0.0, 0.0); k];
    let v0 = random_start(n, seed);
    let info = partial_eigen(
        vecs.rb_mut(),
        &mut vals,
        &op,
        v0.as_ref(),
        rel_tol * norm_bound.max(1e-12),
        par,
        MemStack::new(&mut mem),
        params,
    );
    if info.n_converged_eigen == 0 {
        return Err(Error::invalid(format!(
            "the Krylov-Schur eigensolver did not converge (n = {n})"
        )));
    }
    Ok(vals[..info.n_converged_eigen]
        .iter()
        .map(|z| (z.re, z.im))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Q diag(1, 2, ..., n) Q` with `Q = I - 2 v v^T` a Householder reflection: a dense
    /// symmetric matrix with known eigenvalues `1..=n`, applied matrix-free.
    struct Reflected(Vec<f64>);

    impl Reflected {
        fn new(n: usize) -> Self {
            let v: Vec<f64> = (0..n)
                .map(|i| ((i * 7919 % 113) as f64 - 56.0) / 56.0)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            Reflected(v.into_iter().map(|x| x / norm).collect())
        }
        fn reflect(&self, x: &[f64], y: &mut [f64]) {
            let dot: f64 = x.iter().zip(&self.0).map(|(a, b)| a * b).sum();
            for i in 0..x.len() {
                y[i] = x[i] - 2.0 * dot * self.0[i];
            }
        }
    }

    impl Operator for Reflected {
        fn dim(&self) -> usize {
            self.0.len()
        }
        fn apply(&self, x: &[f64], y: &mut [f64]) {
            let mut t = vec![0.0; x.len()];
            self.reflect(x, &mut t);
            t.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v *= (i + 1) as f64);
            self.reflect(&t, y);
        }
        fn norm_bound(&self) -> f64 {
            self.0.len() as f64
        }
    }

    #[test]
    fn lanczos_and_dense_find_the_known_spectrum() {
        for n in [100, 3000] {
            let op = Reflected::new(n);
            let small = symmetric_eigen(&op, 4, Which::Smallest, 1e-12, 1).unwrap();
            for (j, v) in small.values.iter().enumerate() {
                assert!((v - (j + 1) as f64).abs() < 1e-6, "n={n} j={j}: {v}");
            }
            let large = symmetric_eigen(&op, 2, Which::Largest, 1e-12, 1).unwrap();
            assert!((large.values[0] - n as f64).abs() < 1e-6);
            assert!((large.values[1] - (n - 1) as f64).abs() < 1e-6);
            // Unit eigenvectors with M v = lambda v.
            let v = small.vector(1);
            let mut mv = vec![0.0; n];
            op.apply(v, &mut mv);
            let res: f64 = mv.iter().zip(v).map(|(a, b)| (a - 2.0 * b).powi(2)).sum();
            assert!(res.sqrt() < 1e-5, "residual {}", res.sqrt());
        }
    }

    #[test]
    fn general_eigenvalues_of_a_rotation_scaling() {
        // Block diagonal: 3 * rotation (eigenvalues 3 +- 3i... magnitude 3) and diag(2, 1, ...).
        let n = 400;
        let f = |x: &[f64], y: &mut [f64]| {
            y[0] = -3.0 * x[1];
            y[1] = 3.0 * x[0];
            for i in 2..x.len() {
                y[i] = 2.0 * x[i] / (i as f64);
            }
        };
        let vals = general_eigenvalues(n, 3, &f, 1e-10, 3.0, 3).unwrap();
        assert!((vals[0].0.hypot(vals[0].1) - 3.0).abs() < 1e-8);
        assert!(
            vals.iter()
                .any(|v| (v.0 - 1.0).abs() < 1e-8 && v.1.abs() < 1e-8)
        );
    }
}
