//! `hier-community`: generate hierarchical SBMs, cluster graphs bottom-up / top-down /
//! with Paris, evaluate against ground truth, and print exact-recovery thresholds. The
//! command-line contract is documented in the crate's docs chapter; scripts rely on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hier_community::bottom_up::{BottomUpOptions, SpectralMode, bottom_up};
use hier_community::eigen::SymmetricSolver;
use hier_community::evaluate::evaluate;
use hier_community::hsbm::{HsbmConfig, Rates};
use hier_community::io::{self, Loaded};
use hier_community::paris::paris;
use hier_community::result::ClusterResult;
use hier_community::theory::{Thresholds, balanced_binary_ch, balanced_binary_td};
use hier_community::top_down::{StoppingRule, TopDownOptions, top_down};
use hier_community::tree::Tree;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "hier-community",
    version,
    about = "Hierarchical community detection: bottom-up vs top-down"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample a hierarchical SBM; write the edge list and the labels at every depth.
    Generate {
        /// binary:D, ternary:D, kary:K:D or parents:-1,0,0,...
        #[arg(long)]
        tree: String,
        /// Nodes per leaf community.
        #[arg(long, conflicts_with = "sizes")]
        leaf_size: Option<usize>,
        /// Comma-separated size of each leaf community.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Rates a_0..a_D by depth of the common ancestor: p = a ln(n) / n.
        #[arg(long, value_delimiter = ',', conflicts_with = "p")]
        a: Vec<f64>,
        /// Raw probabilities p_0..p_D instead of rates.
        #[arg(long, value_delimiter = ',')]
        p: Vec<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Edge list to write (`u v` per line).
        #[arg(long)]
        out: PathBuf,
        /// Labels to write (node_id, then one column per depth, coarse to fine).
        #[arg(long)]
        labels: PathBuf,
    },
    /// Cluster a graph and write result.json.
    Cluster {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Edgelist)]
        format: Format,
        /// SocioPatterns metadata (`id class gender`) for the classes.
        #[arg(long)]
        metadata: Option<PathBuf>,
        #[arg(long, value_enum)]
        method: Method,
        /// Number of bottom communities (bottom-up only; estimated when absent).
        #[arg(long)]
        k: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Ignore edge weights.
        #[arg(long)]
        unweighted: bool,
        /// Top-down stopping rule.
        #[arg(long, value_enum, default_value_t = Stopping::BetheHessian)]
        stopping: Stopping,
        /// Likelihood refinement passes after bottom-up k-means.
        #[arg(long, default_value_t = 0)]
        refine: usize,
        /// Bottom-up embedding: `improved` (official zeta search) or `classic` (one
        /// Bethe-Hessian at r = sqrt(rho), faster on large graphs).
        #[arg(long, value_enum, default_value_t = Spectral::Improved)]
        spectral: Spectral,
        /// Iterative eigensolver for graphs above a few hundred nodes.
        #[arg(long, value_enum, default_value_t = Solver::Lobpcg)]
        solver: Solver,
        /// Relative residual tolerance of the eigensolver.
        #[arg(long, default_value_t = 1e-8)]
        eigen_tol: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Score a result against labels at every depth.
    Evaluate {
        #[arg(long)]
        result: PathBuf,
        #[arg(long)]
        labels: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the Chernoff-Hellinger exact-recovery thresholds of an HSBM.
    Threshold {
        #[arg(long)]
        tree: String,
        #[arg(long, value_delimiter = ',')]
        a: Vec<f64>,
        /// Comma-separated leaf sizes (proportions matter; equal by default).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Edgelist,
    Sociopatterns,
    Gml,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Method {
    BottomUp,
    TopDown,
    Paris,
}

#[derive(Clone, Copy, ValueEnum)]
enum Solver {
    Lobpcg,
    Lanczos,
}

#[derive(Clone, Copy, ValueEnum)]
enum Spectral {
    Improved,
    Classic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Stopping {
    BetheHessian,
    BetheHessianOfficial,
    NonBacktracking,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            tree,
            leaf_size,
            sizes,
            a,
            p,
            seed,
            out,
            labels,
        } => {
            let tree = Tree::parse(&tree)?;
            let sizes = match (leaf_size, sizes.is_empty()) {
                (Some(s), _) => vec![s; tree.num_leaves()],
                (None, false) => sizes,
                (None, true) => bail!("give --leaf-size or --sizes"),
            };
            let rates = match (a.is_empty(), p.is_empty()) {
                (false, true) => Rates::LogScaled(a),
                (true, false) => Rates::Probabilities(p),
                _ => bail!("give exactly one of --a and --p"),
            };
            let config = HsbmConfig { tree, sizes, rates };
            let bar = spinner("sampling the HSBM");
            let hsbm = config.generate(seed)?;
            bar.set_message("writing");
            io::write_edge_list(&out, &hsbm.graph)?;
            io::write_labels(&labels, hsbm.graph.node_ids(), &hsbm.labels)?;
            bar.finish_and_clear();
            println!(
                "{} nodes, {} edges (expected {:.0}) -> {}, labels -> {}",
                hsbm.graph.num_nodes(),
                hsbm.graph.num_edges(),
                config.expected_edges()?,
                out.display(),
                labels.display()
            );
            Ok(())
        }
        Command::Cluster {
            input,
            format,
            metadata,
            method,
            k,
            seed,
            unweighted,
            stopping,
            refine,
            spectral,
            solver,
            eigen_tol,
            out,
        } => {
            if k.is_some() && method != Method::BottomUp {
                bail!(
                    "--k applies to the bottom-up method only (top-down stops by its rule; Paris starts from singletons)"
                );
            }
            let bar = spinner("reading the graph");
            let start = Instant::now();
            let Loaded { graph, stats, .. } = match format {
                Format::Edgelist => io::read_edge_list(&input),
                Format::Sociopatterns => io::read_sociopatterns(&input, metadata.as_deref()),
                Format::Gml => io::read_gml(&input),
            }
            .with_context(|| format!("cannot load {}", input.display()))?;
            let load_time = start.elapsed().as_secs_f64();
            if stats.self_loops > 0 || stats.duplicates > 0 {
                bar.suspend(|| {
                    eprintln!(
                        "note: dropped {} self-loops, merged {} duplicate edges (weights summed)",
                        stats.self_loops, stats.duplicates
                    )
                });
            }
            let weighted = graph.is_weighted() && !unweighted;
            let start = Instant::now();
            let (name, dendrogram, k_estimated, mut timings, params) = match method {
                Method::BottomUp => {
                    bar.set_message(
                        "bottom-up: Bethe-Hessian spectral clustering + average linkage",
                    );
                    let options = BottomUpOptions {
                        k,
                        weighted,
                        seed,
                        refine_passes: refine,
                        spectral: match spectral {
                            Spectral::Improved => SpectralMode::ImprovedBetheHessian,
                            Spectral::Classic => SpectralMode::BetheHessian,
                        },
                        solver: match solver {
                            Solver::Lobpcg => SymmetricSolver::Lobpcg,
                            Solver::Lanczos => SymmetricSolver::Lanczos,
                        },
                        eigen_tol,
                        ..Default::default()
                    };
                    let (d, spectral) = bottom_up(&graph, &options)?;
                    let params = json!({"k": k, "estimated_k": spectral.k, "rho": spectral.rho,
                        "zetas": spectral.zetas, "refine_passes": refine,
                        "spectral": options.spectral, "eigen_tol": eigen_tol});
                    (
                        "bottom-up",
                        d,
                        spectral.k_estimated,
                        spectral.timings,
                        params,
                    )
                }
                Method::TopDown => {
                    bar.set_message("top-down: recursive regularised spectral bipartition");
                    let stopping = match stopping {
                        Stopping::BetheHessian => StoppingRule::BetheHessian,
                        Stopping::BetheHessianOfficial => StoppingRule::BetheHessianOfficialRadius,
                        Stopping::NonBacktracking => StoppingRule::NonBacktracking,
                    };
                    let options = TopDownOptions {
                        stopping,
                        weighted,
                        seed,
                        ..Default::default()
                    };
                    let d = top_down(&graph, &options)?;
                    let params = json!({"tau": options.tau, "stopping": stopping});
                    ("top-down", d, false, Vec::new(), params)
                }
                Method::Paris => {
                    bar.set_message("Paris: nearest-neighbour chain");
                    (
                        "paris",
                        paris(&graph, weighted)?,
                        false,
                        Vec::new(),
                        json!({}),
                    )
                }
            };
            bar.finish_and_clear();
            let total = start.elapsed().as_secs_f64();
            timings.insert(0, ("load".to_string(), load_time));
            timings.push(("total clustering".to_string(), total));
            let mut result =
                ClusterResult::new(name, graph.node_ids().to_vec(), &dendrogram, k_estimated);
            if let serde_json::Value::Object(map) = params {
                result.parameters.extend(map);
            }
            result.parameters.insert("seed".into(), json!(seed));
            result.parameters.insert("weighted".into(), json!(weighted));
            result
                .graph
                .insert("nodes".into(), json!(graph.num_nodes()));
            result
                .graph
                .insert("edges".into(), json!(graph.num_edges()));
            result
                .graph
                .insert("weighted".into(), json!(graph.is_weighted()));
            result.timings = timings;
            result.write(&out)?;
            println!(
                "{name}: {} leaf clusters, {} merges, {:.2} s -> {}",
                dendrogram.num_leaves,
                dendrogram.merges.len(),
                total,
                out.display()
            );
            Ok(())
        }
        Command::Evaluate {
            result,
            labels,
            json,
        } => {
            let r = ClusterResult::read(&result)?;
            let d = r
                .dendrogram()
                .with_context(|| format!("invalid result {}", result.display()))?;
            let l = io::read_labels(&labels)?;
            let e = evaluate(&r.node_ids, &d, &l)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
                return Ok(());
            }
            println!(
                "method {}: {} leaf clusters{}",
                r.method,
                e.num_leaves,
                if r.k_estimated { " (K estimated)" } else { "" }
            );
            println!(
                "{:>5}  {:>6}  {:>5}  {:>8}  {:>5}  {:>7}  {:>7}",
                "depth", "true_k", "cut_k", "accuracy", "exact", "AMI", "ARI"
            );
            for s in &e.depths {
                println!(
                    "{:>5}  {:>6}  {:>5}  {:>8.4}  {:>5}  {:>7.4}  {:>7.4}",
                    s.depth,
                    s.true_k,
                    s.cut_k,
                    s.accuracy,
                    if s.exact_recovery { "yes" } else { "no" },
                    s.ami,
                    s.ari
                );
            }
            println!(
                "inversions: {} of {} merges at the finest true K; {} in the whole dendrogram",
                e.inversions_at_true_k, e.merges_at_true_k, e.inversions
            );
            if e.missing_nodes > 0 {
                println!(
                    "{} labelled nodes are not in the graph and were left out",
                    e.missing_nodes
                );
            }
            Ok(())
        }
        Command::Threshold {
            tree,
            a,
            sizes,
            json,
        } => {
            let tree = Tree::parse(&tree)?;
            let sizes = if sizes.is_empty() {
                vec![1000; tree.num_leaves()]
            } else {
                sizes
            };
            let config = HsbmConfig {
                tree: tree.clone(),
                sizes,
                rates: Rates::LogScaled(a.clone()),
            };
            let t = Thresholds::of(&config)?;
            let closed = (tree.balanced_arity() == Some(2)).then(|| {
                (0..tree.max_depth())
                    .map(|k| (balanced_binary_ch(&a, k), balanced_binary_td(&a, k)))
                    .collect::<Vec<_>>()
            });
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "ch_by_lca_depth": t.ch_by_lca, "bottom_up_by_depth": t.bottom_up,
                        "td_by_split_depth": t.td_by_depth, "top_down_by_depth": t.top_down,
                        "balanced_binary_closed_form": closed,
                    }))?
                );
                return Ok(());
            }
            println!("pairwise Chernoff-Hellinger divergence by depth of the common ancestor:");
            for (k, ch) in t.ch_by_lca.iter().enumerate() {
                if let Some(ch) = ch {
                    let td = t.td_by_depth[k].map_or("-".to_string(), |v| format!("{v:.4}"));
                    print!("  k = {k}: CH = {ch:.4}, top-down TD = {td}");
                    if let Some(c) = &closed {
                        print!("   (closed form CH {:.4}, TD {:.4})", c[k].0, c[k].1);
                    }
                    println!();
                }
            }
            println!("exact recovery of the depth-l partition (recoverable iff > 1):");
            for l in 1..=tree.max_depth() {
                let (bu, td) = (t.bottom_up[l - 1], t.top_down[l - 1]);
                println!(
                    "  depth {l}: bottom-up {bu:.4} ({}), top-down {td:.4} ({})",
                    if bu > 1.0 {
                        "recoverable"
                    } else {
                        "not recoverable"
                    },
                    if td > 1.0 {
                        "recoverable"
                    } else {
                        "not recoverable"
                    }
                );
            }
            Ok(())
        }
    }
}
