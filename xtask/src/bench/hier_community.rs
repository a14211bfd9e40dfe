//! `cargo xtask bench hier-community`: the bottom-up pipeline at the scale of the issue's
//! anchor (SBM, n = 100k, m = 1.44M, K = 8) with time and peak heap per phase, the
//! alternatives (classic vs improved Bethe-Hessian, LOBPCG vs faer's Lanczos, top-down,
//! Paris), and a 10M-edge HSBM end to end. With `REFERENCE_PYTHON`, scikit-network's Paris
//! and scipy's `eigsh` on the Bethe-Hessian run on the same graph
//! (`tools/reference/bench/hier_community.py`). `--quick` shrinks every size by 10x.

use std::time::Instant;

use anyhow::Result;
use hier_community::Graph;
use hier_community::bottom_up::{
    BottomUpOptions, SpectralMode, average_linkage, bethe_hessian_clustering,
};
use hier_community::eigen::SymmetricSolver;
use hier_community::hsbm::{HsbmConfig, Rates};
use hier_community::io::write_edge_list;
use hier_community::metrics::accuracy;
use hier_community::paris::paris;
use hier_community::top_down::{TopDownOptions, top_down};
use hier_community::tree::Tree;

use super::alloc::measure;
use super::{reference_python, run_reference_script};
use crate::report::{Report, Table, fmt_f};

fn mb(bytes: usize) -> String {
    fmt_f(bytes as f64 / (1 << 20) as f64, 1)
}

/// The anchor graph: binary HSBM of depth 3 (K = 8) with mean degree 28.8, as the issue's
/// n = 100k, m = 1.44M SBM.
fn anchor(n: usize, seed: u64) -> Result<(hier_community::hsbm::Hsbm, f64)> {
    let config = HsbmConfig::with_equal_sizes(
        Tree::balanced(2, 3)?,
        n / 8,
        Rates::LogScaled(vec![1.0, 2.0, 4.0, 8.0]).scaled_to_mean_degree(28.8, n),
    );
    let (hsbm, seconds, _) = measure(|| config.generate(seed));
    Ok((hsbm?, seconds))
}

struct Run {
    name: String,
    rows: Vec<(String, f64, usize)>,
    accuracy: Option<f64>,
}

fn bottom_up_phases(
    graph: &Graph,
    truth: &[usize],
    spectral: SpectralMode,
    solver: SymmetricSolver,
    name: &str,
) -> Result<Run> {
    let options = BottomUpOptions {
        k: Some(8),
        spectral,
        solver,
        kmeans_restarts: 3,
        ..Default::default()
    };
    let (spectral_result, seconds, peak) = measure(|| bethe_hessian_clustering(graph, &options));
    let spectral_result = spectral_result?;
    let mut rows: Vec<(String, f64, usize)> = spectral_result
        .timings
        .iter()
        .filter(|(_, s)| *s > 0.0005)
        .map(|(phase, s)| (phase.clone(), *s, 0))
        .collect();
    rows.push((
        "spectral clustering (all of the above)".into(),
        seconds,
        peak,
    ));
    let (dendrogram, s, p) = measure(|| average_linkage(graph, &spectral_result.labels, 8, false));
    rows.push(("average linkage (W = Z^T A Z)".into(), s, p));
    let total = seconds + s;
    rows.push(("bottom-up total".into(), total, peak.max(p)));
    let acc = accuracy(truth, &dendrogram.cut_nodes(2)?);
    Ok(Run {
        name: name.to_string(),
        rows,
        accuracy: Some(acc),
    })
}

/// Runs the benchmark; `args` may contain `--quick`.
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let n = 100_000 / scale;
    let mut report = Report::new(
        "bench-hier-community",
        format!(
            "cargo xtask bench hier-community{}",
            if quick { " --quick" } else { "" }
        ),
    );

    let (hsbm, gen_seconds) = anchor(n, 1)?;
    let graph = &hsbm.graph;
    let m = graph.num_edges();
    eprintln!("anchor graph: {} nodes, {m} edges", graph.num_nodes());
    let mut runs = vec![Run {
        name: "HSBM generation".into(),
        rows: vec![("generate (geometric skipping)".into(), gen_seconds, 0)],
        accuracy: None,
    }];
    for (spectral, solver, name) in [
        (
            SpectralMode::BetheHessian,
            SymmetricSolver::Lanczos,
            "bottom-up, classic BH, faer Lanczos",
        ),
        (
            SpectralMode::BetheHessian,
            SymmetricSolver::Lobpcg,
            "bottom-up, classic BH, LOBPCG",
        ),
        (
            SpectralMode::ImprovedBetheHessian,
            SymmetricSolver::Lobpcg,
            "bottom-up, improved BH (official), LOBPCG",
        ),
    ] {
        eprintln!("{name}");
        runs.push(bottom_up_phases(
            graph,
            &hsbm.labels[0],
            spectral,
            solver,
            name,
        )?);
    }
    eprintln!("top-down");
    let (td, s, p) = measure(|| top_down(graph, &TopDownOptions::default()));
    let td = td?;
    runs.push(Run {
        name: "top-down (recursive regularised spectral)".into(),
        rows: vec![(format!("{} leaves", td.num_leaves), s, p)],
        accuracy: Some(accuracy(&hsbm.labels[0], &td.cut_nodes(2)?)),
    });
    eprintln!("Paris");
    let (pd, s, p) = measure(|| paris(graph, false));
    let pd = pd?;
    runs.push(Run {
        name: "Paris (nearest-neighbour chain)".into(),
        rows: vec![("all merges".into(), s, p)],
        accuracy: Some(accuracy(&hsbm.labels[0], &pd.cut_nodes(2)?)),
    });

    let mut table = Table::new(
        format!(
            "Anchor: HSBM n = {}, m = {m}, K = 8 (time and peak heap per phase)",
            graph.num_nodes()
        ),
        &["run", "phase", "seconds", "peak MB", "depth-1 accuracy"],
    );
    for run in &runs {
        for (k, (phase, s, p)) in run.rows.iter().enumerate() {
            let last = k + 1 == run.rows.len();
            table.row([
                if k == 0 {
                    run.name.clone()
                } else {
                    String::new()
                },
                phase.clone(),
                fmt_f(*s, 2),
                if *p > 0 { mb(*p) } else { "-".into() },
                match (last, run.accuracy) {
                    (true, Some(a)) => fmt_f(a, 4),
                    _ => String::new(),
                },
            ]);
        }
    }
    let graph_bytes = m * 2 * 4 + (graph.num_nodes() + 1) * 8;
    table.note(format!(
        "The CSR graph itself takes {} MB ({} bytes per edge); peak MB is heap allocated on top of what was live when the phase started.",
        mb(graph_bytes),
        fmt_f(graph_bytes as f64 / m as f64, 1)
    ));
    table.note("Goal (issue #3): the whole bottom-up pipeline under 10 s on 2 cores at this size. Anchor on a 2-core machine: scikit-network Paris 67 s, scipy eigsh on the Bethe-Hessian alone 65 s.");

    if let Some(_python) = reference_python() {
        eprintln!("reference: scikit-network Paris and scipy eigsh (this takes minutes)");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("graph.tsv");
        write_edge_list(&path, graph)?;
        let script = crate::workspace_root().join("tools/reference/bench/hier_community.py");
        let r = run_reference_script(&script, &[path.to_str().unwrap_or_default(), "8"])?;
        let ours_paris = runs
            .iter()
            .find(|r| r.name.starts_with("Paris"))
            .map(|r| r.rows[0].1)
            .unwrap_or(f64::NAN);
        let ours_bh = runs[1]
            .rows
            .iter()
            .find(|r| r.0 == "Bethe-Hessian eigenvectors")
            .map(|r| r.1)
            .unwrap_or(f64::NAN);
        let sk = r["sknetwork_paris_seconds"].as_f64().unwrap_or(f64::NAN);
        let eigsh = r["scipy_eigsh_bethe_hessian_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        table.note(format!(
            "Same run, same graph: scikit-network {} Paris {} s (ours {}, ratio {}); scipy {} eigsh on H_sqrt(rho), k = 8, which='SA' {} s (ours, classic + Lanczos, {} s, ratio {}).",
            r["sknetwork_version"].as_str().unwrap_or("?"),
            fmt_f(sk, 1),
            fmt_f(ours_paris, 1),
            fmt_f(sk / ours_paris, 1),
            r["scipy_version"].as_str().unwrap_or("?"),
            fmt_f(eigsh, 1),
            fmt_f(ours_bh, 1),
            fmt_f(eigsh / ours_bh, 1),
        ));
    } else {
        table.note("Set REFERENCE_PYTHON to a Python with scikit-network and scipy to time them on the same graph.");
    }
    report.tables.push(table);

    // 10M-edge HSBM end to end.
    let big_n = 700_000 / scale;
    eprintln!("10M-edge HSBM: n = {big_n}");
    let start = Instant::now();
    let mut big = Table::new(
        format!(
            "End to end: HSBM with n = {big_n}, mean degree 28.8 (about {}M edges)",
            10 / scale
        ),
        &["phase", "seconds", "peak MB"],
    );
    let ((hsbm, _), s, p) = {
        let (r, s, p) = measure(|| anchor(big_n, 7));
        (r?, s, p)
    };
    big.row(["generate".to_string(), fmt_f(s, 2), mb(p)]);
    let options = BottomUpOptions {
        k: Some(8),
        spectral: SpectralMode::BetheHessian,
        kmeans_restarts: 3,
        ..Default::default()
    };
    let (result, s, p) = measure(|| hier_community::bottom_up::bottom_up(&hsbm.graph, &options));
    let (dendrogram, _) = result?;
    big.row([
        "bottom-up (classic BH, LOBPCG, k-means, linkage)".to_string(),
        fmt_f(s, 2),
        mb(p),
    ]);
    let total = start.elapsed().as_secs_f64();
    big.row(["total".to_string(), fmt_f(total, 2), String::new()]);
    big.note(format!(
        "{} edges; depth-1 accuracy {}. Goal (issue #3): under 2 minutes end to end, memory linear in m.",
        hsbm.graph.num_edges(),
        fmt_f(accuracy(&hsbm.labels[0], &dendrogram.cut_nodes(2)?), 4)
    ));
    report.tables.push(big);
    Ok(report)
}
