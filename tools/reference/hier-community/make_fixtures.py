"""Parity fixtures for crates/hier-community, from the official code of Dreveton et al.
(daichikuroda/bottom_up_HCD, a checkout passed with --official-dir), scikit-learn and
scikit-network.

    python make_fixtures.py --official-dir PATH/bottom_up_HCD --data-dir ../shared/datasets

Writes small JSON files into crates/hier-community/tests/fixtures/. Randomised steps of the
official code (ARPACK start vectors, unseeded k-means) are run on instances easy enough that
their outcome does not depend on the draw; the Rust tests state which quantities are exact
and which are compared up to label permutation.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

OUT = Path(__file__).resolve().parents[3] / "crates" / "hier-community" / "tests" / "fixtures"


def dump(name, payload):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    with open(path, "w") as f:
        json.dump(payload, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def hsbm_graph(rng, sizes, p_by_lca, lca):
    """Edge list of an SBM whose block pair (a, b) has probability p_by_lca[lca(a, b)]."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    edges = []
    for a in range(len(sizes)):
        for b in range(a, len(sizes)):
            p = p_by_lca[lca(a, b)]
            for i in range(starts[a], starts[a + 1]):
                lo = i + 1 if a == b else starts[b]
                for j in range(lo, starts[b + 1]):
                    if rng.random() < p:
                        edges.append((i, j))
    labels = np.concatenate([[a] * s for a, s in enumerate(sizes)])
    return n, edges, labels


def binary_lca(depth):
    def lca(a, b):
        d = depth
        while a != b:
            a //= 2
            b //= 2
            d -= 1
        return d

    return lca


def graph_of(n, edges, weights=None):
    G = nx.Graph()
    G.add_nodes_from(range(n))
    if weights is None:
        G.add_edges_from(edges)
    else:
        G.add_weighted_edges_from([(u, v, w) for (u, v), w in zip(edges, weights)])
    return G


def metrics_fixture(rng, official):
    import measurements as mea

    cases = []
    for n, kt, kp in [(50, 3, 3), (50, 2, 5), (200, 9, 9), (200, 4, 6), (120, 8, 3), (60, 1, 2)]:
        truth = rng.integers(0, kt, n)
        pred = np.where(rng.random(n) < 0.6, truth % kp, rng.integers(0, kp, n))
        acc = mea.calc_accuracy(pred, truth, from_clusterings=False, different_size=True)[0]
        cases.append(
            {
                "truth": truth.tolist(),
                "pred": pred.tolist(),
                "ami": adjusted_mutual_info_score(truth, pred),
                "ari": adjusted_rand_score(truth, pred),
                "accuracy": float(acc),
            }
        )
    dump("metrics.json", {"source": "scikit-learn AMI/ARI, official measurements.calc_accuracy", "cases": cases})


def paris_fixture(rng):
    from paris import paris as official_paris
    from sknetwork.hierarchy import Paris

    n = 40
    edges, weights = [], []
    for i in range(n):
        for j in range(i + 1, n):
            same = (i < 20) == (j < 20)
            if rng.random() < (0.3 if same else 0.05):
                edges.append((i, j))
                weights.append(float(np.round(rng.uniform(0.5, 2.0), 3)))
    G = graph_of(n, edges, weights)
    D = official_paris(G)
    A = nx.to_scipy_sparse_array(G, nodelist=range(n), weight="weight", format="csr")
    # scikit-network's Cython wants a csr_matrix with 32-bit indices.
    A = sp.csr_matrix((A.data, A.indices.astype(np.int32), A.indptr.astype(np.int32)), shape=A.shape)
    sk = Paris(weights="degree", reorder=True).fit_predict(A)
    dump(
        "paris.json",
        {
            "source": "official Paris (Bonald, vendored in bottom_up_HCD) and scikit-network Paris",
            "n": n,
            "edges": edges,
            "weights": weights,
            "official_linkage": np.asarray(D).tolist(),
            "sknetwork_linkage": np.asarray(sk).tolist(),
        },
    )


def linkage_fixture(rng):
    import recursive as rec

    sizes = [15] * 8
    n, edges, labels = hsbm_graph(rng, sizes, {0: 0.02, 1: 0.08, 2: 0.2, 3: 0.5}, binary_lca(3))
    weights = [float(np.round(rng.uniform(0.5, 3.0), 3)) for _ in edges]
    out = {"source": "official recursive.bottom_up (update_each)", "n": n, "edges": edges, "weights": weights, "labels": labels.tolist()}
    for weighted in [False, True]:
        G = graph_of(n, edges, weights if weighted else None)
        Z = rec.bottom_up(G, labels, nodelist=list(range(n)), weighted=weighted)
        out["weighted_linkage" if weighted else "unweighted_linkage"] = np.asarray(Z).tolist()
    dump("average_linkage.json", out)


def bethe_hessian_fixture(rng):
    import bethe_hessian as bh

    sizes = [100] * 4
    n, edges, labels = hsbm_graph(rng, sizes, {0: 0.01, 1: 0.05, 2: 0.2}, binary_lca(2))
    G = graph_of(n, edges)
    A = nx.adjacency_matrix(G, nodelist=range(n), weight=None).astype(float)
    rho = bh.find_rho_B(A)
    zeta, _ = bh.find_zeta(A, rho, 4, np.finfo(float).eps)
    estimated, _ = bh.community_detection(G, nodelist=list(range(n)))
    given, _ = bh.community_detection(G, nodelist=list(range(n)), n_clusters=4)
    dump(
        "bethe_hessian.json",
        {
            "source": "official bethe_hessian.find_rho_B / find_zeta / community_detection",
            "n": n,
            "edges": edges,
            "labels": labels.tolist(),
            "rho": float(rho),
            "zeta": np.asarray(zeta).tolist(),
            "estimated_k": int(len(np.unique(estimated))),
            "labels_k4": np.asarray(given).tolist(),
        },
    )


def top_down_fixture(rng):
    import recursive as rec
    import spectrald as spect

    sizes = [60] * 4
    n, edges, labels = hsbm_graph(rng, sizes, {0: 0.01, 1: 0.06, 2: 0.3}, binary_lca(2))
    G = graph_of(n, edges)
    leaves, bits = rec.recursive_bipartion(G)
    leaf_of = np.zeros(n, dtype=int)
    for i, nodes in enumerate(leaves):
        leaf_of[np.asarray(nodes, dtype=int)] = i
    # Stopping decisions on the whole graph, one true half, one true leaf, and a random set.
    subsets = {
        "all": list(range(n)),
        "half": list(range(120)),
        "leaf": list(range(60)),
        "random": sorted(rng.choice(n, 80, replace=False).tolist()),
    }
    decisions = {k: bool(spect.stop_bethe_hessian(G.subgraph(v))) for k, v in subsets.items()}
    split, _ = spect.regularized_spectral(G, nodelist=list(range(n)))
    dump(
        "top_down.json",
        {
            "source": "official recursive.recursive_bipartion, spectrald.stop_bethe_hessian / regularized_spectral",
            "n": n,
            "edges": edges,
            "labels": labels.tolist(),
            "leaves": leaf_of.tolist(),
            "num_leaves": len(leaves),
            "subsets": subsets,
            "split_decisions_official_radius": decisions,
            "first_split": np.asarray(split).tolist(),
        },
    )


def high_school_fixture(data_dir):
    import handle_realdata as hr

    src = Path(data_dir) / "high-school-2013"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "high_school_data"
        folder.mkdir()
        import gzip
        import shutil

        with gzip.open(src / "High-School_data_2013.csv.gz", "rb") as fin, open(folder / "High-School_data_2013.csv", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        shutil.copy(src / "metadata_2013.txt", folder / "metadata_2013.txt")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            G = hr.high_school_net()
        finally:
            os.chdir(cwd)
    weights = [d["weight"] for _, _, d in G.edges(data=True)]
    classes = {}
    for _, c in G.nodes(data="class"):
        classes[c] = classes.get(c, 0) + 1
    degree = {str(u): float(sum(d["weight"] for _, _, d in G.edges(u, data=True))) for u in sorted(G.nodes())[:10]}
    dump(
        "high_school.json",
        {
            "source": "official handle_realdata.high_school_net (weights ln(count))",
            "nodes": G.number_of_nodes(),
            "edges": G.number_of_edges(),
            "total_weight": float(np.sum(weights)),
            "zero_weight_edges": int(np.sum(np.asarray(weights) == 0)),
            "class_sizes": classes,
            "strength_of_first_nodes": degree,
        },
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--official-dir", required=True, help="checkout of daichikuroda/bottom_up_HCD")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[4] / "shared" / "datasets"))
    args = parser.parse_args()
    official = Path(args.official_dir).resolve()
    sys.path[:0] = [str(official), str(official / "Paris" / "paris_codes")]
    rng = np.random.default_rng(2306_00833)
    metrics_fixture(rng, official)
    paris_fixture(rng)
    linkage_fixture(rng)
    bethe_hessian_fixture(rng)
    top_down_fixture(rng)
    high_school_fixture(args.data_dir)


if __name__ == "__main__":
    main()
