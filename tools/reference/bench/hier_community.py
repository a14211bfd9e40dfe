"""Reference timings for `cargo xtask bench hier-community`: scikit-network's Paris and
scipy's eigsh (k smallest algebraic eigenpairs of the Bethe-Hessian at r = sqrt(rho), rho
from the non-backtracking matrix as in the official code) on the same edge list.

    python hier_community.py GRAPH.tsv K

Prints one JSON object on its last line.
"""

import json
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import sknetwork
from sknetwork.hierarchy import Paris


def main():
    path, k = sys.argv[1], int(sys.argv[2])
    edges = np.loadtxt(path, dtype=np.int64, comments="#")
    n = int(edges.max()) + 1
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    A = sp.csr_matrix((np.ones(len(rows)), (rows.astype(np.int32), cols.astype(np.int32))), shape=(n, n))
    A.indices = A.indices.astype(np.int32)
    A.indptr = A.indptr.astype(np.int32)
    out = {"sknetwork_version": sknetwork.__version__, "scipy_version": scipy.__version__}
    t = time.perf_counter()
    Paris().fit(A)
    out["sknetwork_paris_seconds"] = time.perf_counter() - t
    d = np.asarray(A.sum(axis=0)).ravel()
    I = sp.identity(n, format="csr")
    B = sp.bmat([[A, I - sp.diags(d)], [I, None]], format="csr")
    rho = float(max(sla.eigs(B, k=1, which="LM", return_eigenvectors=False).real))
    r = np.sqrt(rho)
    H = (r * r - 1) * I + sp.diags(d) - r * A
    t = time.perf_counter()
    sla.eigsh(H, k=k, which="SA")
    out["scipy_eigsh_bethe_hessian_seconds"] = time.perf_counter() - t
    print(json.dumps(out))


if __name__ == "__main__":
    main()
