//! The paper's experiments, as library functions that `cargo xtask eval hier-community`
//! runs and prints: the exact-recovery phase diagram of Fig. 2 and the real-data results
//! (high-school contacts, UCTE power grid).

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use crate::Error;
use crate::bottom_up::{BottomUpOptions, SpectralMode, bottom_up};
use crate::dendrogram::Dendrogram;
use crate::evaluate::evaluate;
use crate::hsbm::{HsbmConfig, Rates};
use crate::io::{Labels, read_edge_list, read_sociopatterns};
use crate::metrics::accuracy;
use crate::paris::paris;
use crate::theory::Thresholds;
use crate::top_down::{TopDownOptions, top_down};
use crate::tree::Tree;

/// Fig. 2 of the paper: binary tree of depth 3, `leaf_size` nodes per leaf,
/// `a = (a0, a1, a2, a3)` with `(a1, a2)` on a grid.
#[derive(Debug, Clone, Serialize)]
pub struct Fig2Options {
    /// Rate between the two halves.
    pub a0: f64,
    /// Within-community rate.
    pub a3: f64,
    /// Nodes per leaf (200 in the paper).
    pub leaf_size: usize,
    /// Values of `a1` (columns).
    pub a1: Vec<f64>,
    /// Values of `a2` (rows); only cells with `a1 < a2` (a hierarchy) are run.
    pub a2: Vec<f64>,
    /// Independent graphs per cell.
    pub seeds: usize,
}

impl Fig2Options {
    /// The paper's setting on a grid with `step` spacing strictly between `a0 = 40` and
    /// `a3 = 100` (a hierarchy needs `a0 < a1 < a2 < a3`; on the edges of that range a
    /// level of the tree carries no signal at all).
    pub fn paper(step: f64, seeds: usize) -> Self {
        let grid: Vec<f64> = (1..)
            .map(|i| 40.0 + step * i as f64)
            .take_while(|&a| a < 100.0 - 1e-9)
            .collect();
        Fig2Options {
            a0: 40.0,
            a3: 100.0,
            leaf_size: 200,
            a1: grid.clone(),
            a2: grid,
            seeds,
        }
    }
}

/// Outcome for one `(a1, a2)` cell.
#[derive(Debug, Clone, Serialize)]
pub struct Fig2Cell {
    /// Rate at depth 1.
    pub a1: f64,
    /// Rate at depth 2.
    pub a2: f64,
    /// Fraction of seeds with exact recovery at depths 1, 2, 3 (bottom-up).
    pub bottom_up: [f64; 3],
    /// Same for top-down.
    pub top_down: [f64; 3],
    /// Bottom-up divergence per depth (recoverable iff > 1).
    pub theory_bottom_up: [f64; 3],
    /// Top-down divergence per depth.
    pub theory_top_down: [f64; 3],
}

/// Likelihood-refinement passes of the bottom-up runs in Fig. 2.
pub const FIG2_REFINE_PASSES: usize = 2;

/// Runs the Fig. 2 grid (cells in parallel), with a progress bar on a terminal.
pub fn fig2(options: &Fig2Options) -> Result<Vec<Fig2Cell>, Error> {
    let tree = Tree::balanced(2, 3)?;
    let cells: Vec<(f64, f64)> = options
        .a2
        .iter()
        .flat_map(|&a2| {
            options
                .a1
                .iter()
                .filter(move |&&a1| a1 < a2)
                .map(move |&a1| (a1, a2))
        })
        .collect();
    let bar = ProgressBar::new((cells.len() * options.seeds) as u64);
    bar.set_style(
        ProgressStyle::with_template("Fig. 2 grid [{bar:30}] {pos}/{len} runs, eta {eta}")
            .expect("template"),
    );
    let result = cells
        .par_iter()
        .map(|&(a1, a2)| {
            let config = HsbmConfig::with_equal_sizes(
                tree.clone(),
                options.leaf_size,
                Rates::LogScaled(vec![options.a0, a1, a2, options.a3]),
            );
            let theory = Thresholds::of(&config)?;
            let mut bu = [0.0; 3];
            let mut td = [0.0; 3];
            for seed in 0..options.seeds as u64 {
                let hsbm = config.generate(seed)?;
                // K known (8 leaves) and the likelihood refinement the paper's analysis
                // adds after spectral clustering.
                let bu_options = BottomUpOptions {
                    k: Some(8),
                    seed,
                    refine_passes: FIG2_REFINE_PASSES,
                    ..Default::default()
                };
                let (bu_tree, _) = bottom_up(&hsbm.graph, &bu_options)?;
                let td_options = TopDownOptions {
                    seed,
                    ..Default::default()
                };
                let td_tree = top_down(&hsbm.graph, &td_options)?;
                for (depth, truth) in hsbm.labels.iter().enumerate() {
                    let k = 2usize.pow(depth as u32 + 1);
                    bu[depth] += exact(truth, &bu_tree, k)? as u8 as f64;
                    td[depth] += exact(truth, &td_tree, k)? as u8 as f64;
                }
                bar.inc(1);
            }
            let s = options.seeds as f64;
            Ok(Fig2Cell {
                a1,
                a2,
                bottom_up: bu.map(|x| x / s),
                top_down: td.map(|x| x / s),
                theory_bottom_up: [
                    theory.bottom_up[0],
                    theory.bottom_up[1],
                    theory.bottom_up[2],
                ],
                theory_top_down: [theory.top_down[0], theory.top_down[1], theory.top_down[2]],
            })
        })
        .collect();
    bar.finish_and_clear();
    result
}

fn exact(truth: &[usize], dendrogram: &Dendrogram, k: usize) -> Result<bool, Error> {
    Ok(accuracy(truth, &dendrogram.cut_nodes(k)?) == 1.0)
}

/// Per depth: cells where bottom-up recovers exactly in every seed, same for top-down,
/// cells where only one of them does, and the same counts predicted by the theory.
#[derive(Debug, Clone, Serialize)]
pub struct RegionSummary {
    /// Depth 1..=3.
    pub depth: usize,
    /// Cells with bottom-up exact recovery in all seeds.
    pub bottom_up: usize,
    /// Cells with top-down exact recovery in all seeds.
    pub top_down: usize,
    /// Cells where bottom-up recovers and top-down does not.
    pub only_bottom_up: usize,
    /// Cells where top-down recovers and bottom-up does not.
    pub only_top_down: usize,
    /// Cells the theory declares recoverable bottom-up.
    pub theory_bottom_up: usize,
    /// Cells the theory declares recoverable top-down.
    pub theory_top_down: usize,
    /// Total cells.
    pub cells: usize,
}

/// Counts the recovery regions of a Fig. 2 run.
pub fn fig2_regions(cells: &[Fig2Cell]) -> Vec<RegionSummary> {
    (0..3)
        .map(|d| {
            let bu = |c: &Fig2Cell| c.bottom_up[d] == 1.0;
            let td = |c: &Fig2Cell| c.top_down[d] == 1.0;
            RegionSummary {
                depth: d + 1,
                bottom_up: cells.iter().filter(|c| bu(c)).count(),
                top_down: cells.iter().filter(|c| td(c)).count(),
                only_bottom_up: cells.iter().filter(|c| bu(c) && !td(c)).count(),
                only_top_down: cells.iter().filter(|c| td(c) && !bu(c)).count(),
                theory_bottom_up: cells.iter().filter(|c| c.theory_bottom_up[d] > 1.0).count(),
                theory_top_down: cells.iter().filter(|c| c.theory_top_down[d] > 1.0).count(),
                cells: cells.len(),
            }
        })
        .collect()
}

/// Draws the Fig. 2 heatmaps (rows: bottom-up, top-down; columns: depth 1..3) with the
/// theoretical exact-recovery boundaries (divergence = 1) overlaid, as an SVG file.
pub fn plot_fig2(cells: &[Fig2Cell], options: &Fig2Options, path: &Path) -> Result<(), Error> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(40);
        title.titled(
            "Exact-recovery rate (grey 0 to blue 1), a = (40, a1, a2, 100), binary depth 3; theory boundary: red bottom-up, green top-down",
            ("sans-serif", 20),
        )?;
        let panels = body.split_evenly((2, 3));
        let step1 = spacing(&options.a1);
        let step2 = spacing(&options.a2);
        let (x0, x1) = (
            options.a1[0] - step1 / 2.0,
            options.a1[options.a1.len() - 1] + step1 / 2.0,
        );
        let (y0, y1) = (
            options.a2[0] - step2 / 2.0,
            options.a2[options.a2.len() - 1] + step2 / 2.0,
        );
        for (p, area) in panels.iter().enumerate() {
            let (bottom_up, depth) = (p < 3, p % 3);
            let name = if bottom_up { "bottom-up" } else { "top-down" };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{name}, depth {}", depth + 1), ("sans-serif", 16))
                .margin(6)
                .x_label_area_size(34)
                .y_label_area_size(52)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc("a1")
                .y_desc("a2")
                .disable_mesh()
                .draw()?;
            chart.draw_series(cells.iter().map(|c| {
                let rate = if bottom_up {
                    c.bottom_up[depth]
                } else {
                    c.top_down[depth]
                };
                let shade = (255.0 * (1.0 - rate)) as u8;
                Rectangle::new(
                    [
                        (c.a1 - step1 / 2.0, c.a2 - step2 / 2.0),
                        (c.a1 + step1 / 2.0, c.a2 + step2 / 2.0),
                    ],
                    RGBColor(shade, shade, 255).filled(),
                )
            }))?;
            // Theory boundaries on a fine grid: the cells' divergence crossing 1.
            for (curve_bu, color) in [(true, RED), (false, GREEN)] {
                let boundary = theory_boundary(options, depth, curve_bu);
                chart.draw_series(
                    boundary
                        .into_iter()
                        .map(|(a, b)| Circle::new((a, b), 1, color.filled())),
                )?;
            }
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::invalid(format!("cannot draw {}: {e}", path.display())))
}

fn spacing(grid: &[f64]) -> f64 {
    if grid.len() > 1 {
        grid[1] - grid[0]
    } else {
        1.0
    }
}

/// Points `(a1, a2)` of a fine grid where the theoretical divergence of the given
/// algorithm at `depth` crosses 1 between neighbouring points.
fn theory_boundary(options: &Fig2Options, depth: usize, bottom_up: bool) -> Vec<(f64, f64)> {
    let tree = Tree::balanced(2, 3).expect("valid tree");
    let (lo1, hi1) = (options.a1[0], options.a1[options.a1.len() - 1]);
    let (lo2, hi2) = (options.a2[0], options.a2[options.a2.len() - 1]);
    let steps = 120;
    let value = |a1: f64, a2: f64| {
        let config = HsbmConfig::with_equal_sizes(
            tree.clone(),
            options.leaf_size,
            Rates::LogScaled(vec![options.a0, a1, a2, options.a3]),
        );
        let t = Thresholds::of(&config).expect("valid config");
        if bottom_up {
            t.bottom_up[depth]
        } else {
            t.top_down[depth]
        }
    };
    let mut points = Vec::new();
    for i in 0..=steps {
        let a1 = lo1 + (hi1 - lo1) * i as f64 / steps as f64;
        let mut previous: Option<(f64, f64)> = None;
        for j in 0..=steps {
            let a2 = lo2 + (hi2 - lo2) * j as f64 / steps as f64;
            let v = value(a1, a2) - 1.0;
            if let Some((pa2, pv)) = previous
                && pv.signum() != v.signum()
            {
                points.push((a1, pa2 + (a2 - pa2) * pv / (pv - v)));
            }
            previous = Some((a2, v));
        }
    }
    points
}

/// Scores of one method on a real dataset.
#[derive(Debug, Clone, Serialize)]
pub struct RealScores {
    /// Method name.
    pub method: String,
    /// Number of leaf clusters of the result.
    pub leaves: usize,
    /// AMI with the classes at the true number of clusters (if labelled).
    pub ami: Option<f64>,
    /// Accuracy at the true number of clusters (if labelled).
    pub accuracy: Option<f64>,
    /// Inversions among the top `K - 1` merges (all merges when unlabelled).
    pub inversions: usize,
    /// Merges counted for `inversions`.
    pub merges: usize,
    /// Seconds.
    pub seconds: f64,
}

/// High-school contacts 2013 with K = 9 classes: bottom-up (K = 9), top-down (cut at 9),
/// Paris (cut at 9), all weighted by `ln(contacts)` as in the official code.
pub fn high_school(contacts: &Path, metadata: &Path) -> Result<Vec<RealScores>, Error> {
    let loaded = read_sociopatterns(contacts, Some(metadata))?;
    let graph = &loaded.graph;
    let classes = loaded
        .classes
        .expect("the SocioPatterns loader returns classes");
    let labels = Labels {
        node_ids: graph.node_ids().to_vec(),
        columns: vec![classes],
    };
    let mut out = Vec::new();
    for method in ["bottom-up", "top-down", "paris"] {
        let start = Instant::now();
        let dendrogram = run_method(graph, method, Some(9), true)?;
        let seconds = start.elapsed().as_secs_f64();
        let e = evaluate(graph.node_ids(), &dendrogram, &labels)?;
        out.push(RealScores {
            method: method.to_string(),
            leaves: dendrogram.num_leaves,
            ami: Some(e.depths[0].ami),
            accuracy: Some(e.depths[0].accuracy),
            inversions: e.inversions_at_true_k,
            merges: e.merges_at_true_k,
            seconds,
        });
    }
    Ok(out)
}

/// UCTE power grid (no ground truth): dendrogram summaries of bottom-up (K estimated, with
/// the given embedding), top-down and Paris.
pub fn power_grid(edges: &Path, spectral: SpectralMode) -> Result<Vec<RealScores>, Error> {
    let graph = read_edge_list(edges)?.graph;
    let mut out = Vec::new();
    for method in ["bottom-up", "top-down", "paris"] {
        let start = Instant::now();
        let dendrogram = match method {
            "bottom-up" => {
                let options = BottomUpOptions {
                    spectral,
                    ..Default::default()
                };
                bottom_up(&graph, &options)?.0
            }
            _ => run_method(&graph, method, None, false)?,
        };
        let seconds = start.elapsed().as_secs_f64();
        out.push(RealScores {
            method: method.to_string(),
            leaves: dendrogram.num_leaves,
            ami: None,
            accuracy: None,
            inversions: dendrogram.inversions(dendrogram.num_leaves),
            merges: dendrogram.merges.len(),
            seconds,
        });
    }
    Ok(out)
}

fn run_method(
    graph: &crate::Graph,
    method: &str,
    k: Option<usize>,
    weighted: bool,
) -> Result<Dendrogram, Error> {
    match method {
        "bottom-up" => {
            let options = BottomUpOptions {
                k,
                weighted,
                ..Default::default()
            };
            Ok(bottom_up(graph, &options)?.0)
        }
        "top-down" => top_down(
            graph,
            &TopDownOptions {
                weighted,
                ..Default::default()
            },
        ),
        _ => paris(graph, weighted),
    }
}
