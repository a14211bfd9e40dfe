//! `cargo xtask eval mobiletl`: MobileTL's memory and FLOPs tables (analytic, TinyTL's
//! rules), the memory a real training step holds (measured), and the accuracy of the
//! fine-tuning runs found under `results/mobiletl/runs/`, with the paper's numbers beside.

use std::path::Path;

use anyhow::{Context, Result};
use irb_core::Activation;
use mobiletl::method::Method;
use mobiletl::method::training_cost::{Part, TrainingCost, block_cost, network_cost};
use mobiletl::mobilenet::{BlockSpec, MobileNetArch, MobileNetConfig};
use plotters::prelude::*;

use crate::claims::{Claim, Measurement, Tolerance, change_percent, num};
use crate::eval::EvalOptions;
use crate::report::{Report, Table, fmt_f};

/// The block of the paper's per-IRB table: 24 -> 144 -> 24 channels at 56x56, 3x3
/// depthwise (MobileNetV2's block 2); its MobileNetV3 row puts Hard-Swish and a
/// squeeze-excitation (144 -> 40 -> 144) in the same shape.
fn paper_block(v3: bool) -> BlockSpec {
    BlockSpec {
        in_channels: 24,
        expanded: 144,
        out_channels: 24,
        kernel: 3,
        stride: 1,
        activation: if v3 {
            Activation::HardSwish
        } else {
            Activation::Relu6
        },
        squeeze: v3.then_some(40),
    }
}

/// Paper's per-part MB (exp conv, exp norm, exp act, dw conv, dw norm, dw act, SE, proj
/// conv, proj norm) and total, read from its figure.
const PAPER_BLOCKS: [(&str, bool, bool, [f64; 9], f64); 4] = [
    (
        "MobileNetV2 IRB",
        false,
        false,
        [0.15, 0.91, 0.0, 0.90, 0.91, 0.0, 0.0, 0.90, 0.15],
        4.02,
    ),
    (
        "MobileNetV2 IRB",
        false,
        true,
        [0.15, 0.0, 0.0, 0.90, 0.0, 0.0, 0.0, 0.90, 0.15],
        2.16,
    ),
    (
        "MobileNetV3 IRB",
        true,
        false,
        [0.15, 0.91, 0.90, 0.90, 0.91, 0.90, 0.95, 0.90, 0.15],
        6.67,
    ),
    (
        "MobileNetV3 IRB",
        true,
        true,
        [0.15, 0.0, 0.0, 0.90, 0.0, 0.0, 0.95, 0.90, 0.15],
        3.11,
    ),
];

/// Paper, MobileNetV3 FT-K: (K, forward MFLOPs, backward MFLOPs, stored activations MB).
const PAPER_FT: [(usize, f64, f64, Option<f64>); 4] = [
    (1, 968.8, 284.3, None),
    (3, 972.1, 655.4, Some(23.1)),
    (5, 975.0, 902.7, Some(35.9)),
    (15, 1000.6, 1934.9, Some(129.7)),
];

const MB: f64 = 1e6;

/// The paper's per-IRB reductions (MobileNetV2, MobileNetV3), percent change.
const PAPER_BLOCK_REDUCTION: [f64; 2] = [-46.3, -53.3];

/// Ours, TinyTL's fp32 rule: (vanilla MB, MobileTL MB) of the MobileNetV2 and V3 blocks.
type BlockTotals = [(f64, f64); 2];

fn per_block_table() -> (Table, BlockTotals) {
    let mut fp32: BlockTotals = [(0.0, 0.0); 2];
    let mut columns = vec!["block", "method", "bytes/elem"];
    columns.extend(Part::BLOCK.iter().map(|p| p.label()));
    columns.extend(["total", "paper total", "reduction", "paper reduction"]);
    let mut table = Table::new(
        "Per-IRB activation memory (MB), one block at 56x56, batch 1: ours (TinyTL's rules) vs paper",
        &columns,
    );
    for element_bytes in [2.0, 4.0] {
        let mut vanilla_total = 0.0;
        for (name, v3, mobiletl, paper_parts, paper_total) in PAPER_BLOCKS {
            let mut cost = block_cost(&paper_block(v3), 56, mobiletl, 1);
            cost.element_bytes = element_bytes;
            let total = cost.activation_bytes() / MB;
            let mut row = vec![
                name.to_string(),
                if mobiletl { "MobileTL" } else { "vanilla" }.to_string(),
                fmt_f(element_bytes, 0),
            ];
            row.extend(Part::BLOCK.iter().zip(paper_parts).map(|(&p, paper)| {
                format!(
                    "{} ({})",
                    fmt_f(cost.part_bytes(p, None) / MB, 2),
                    fmt_f(paper, 2)
                )
            }));
            row.push(fmt_f(total, 2));
            row.push(fmt_f(paper_total, 2));
            if element_bytes == 4.0 {
                let slot = &mut fp32[usize::from(v3)];
                if mobiletl {
                    slot.1 = total;
                } else {
                    slot.0 = total;
                }
            }
            if mobiletl {
                let paper_vanilla = if v3 { 6.67 } else { 4.02 };
                row.push(format!(
                    "{:+.1}%",
                    -100.0 * (vanilla_total - total) / vanilla_total
                ));
                row.push(format!(
                    "{:+.1}%",
                    -100.0 * (paper_vanilla - paper_total) / paper_vanilla
                ));
            } else {
                vanilla_total = total;
                row.extend(["".into(), "".into()]);
            }
            table.row(row);
        }
    }
    table.note(
        "Cells: ours (paper). The paper's figures reproduce at batch 1 when a stored element \
         counts 2 bytes: every tensor of this block is then 0.15 MB (24x56x56) or 0.90 MB \
         (144x56x56), as in the paper; TinyTL's fp32 rule gives exactly twice (rows with 4 \
         bytes/elem), and the reductions do not depend on the unit. The paper's norms show \
         0.91 where their inputs are 0.90 MB and its V3 totals exceed the sum of its parts by \
         0.1 MB: read from a figure. Hard-Swish keeps its input under vanilla (0.90) and a \
         1-bit mask under MobileTL; a 1-bit mask of 144x56x56 is 0.06 MB, which the paper \
         draws as ~0 and which puts our MobileNetV2 MobileTL total 0.06 MB above its 2.16.",
    );
    (table, fp32)
}

/// The per-IRB claims from the analytic totals (TinyTL's rules, fp32).
fn block_claims(fp32: &BlockTotals) -> Vec<Claim> {
    ["MobileNetV2", "MobileNetV3"]
        .into_iter()
        .zip(fp32)
        .zip(PAPER_BLOCK_REDUCTION)
        .map(|((name, &(vanilla, tl)), paper)| {
            let ours = change_percent(vanilla, tl);
            Claim::new(
                format!(
                    "{name} IRB (24 -> 144 -> 24 ch, 56x56): activation memory of MobileTL vs \
                     vanilla, counted by TinyTL's rules"
                ),
                format!("{paper}%"),
                "%",
                Tolerance::Absolute {
                    target: paper,
                    within: 1.5,
                },
                Measurement::value(
                    ours,
                    format!(
                        "{}% ({} -> {} MB, fp32)",
                        fmt_f(ours, 1),
                        fmt_f(vanilla, 2),
                        fmt_f(tl, 2)
                    ),
                ),
            )
            .note(
                "Tolerance 1.5 points: the paper's MB are read from a figure (~1%) that draws \
                 1-bit masks as 0.",
            )
        })
        .collect()
}

fn v3_cost(method: Method, blocks: usize, batch: usize) -> Result<TrainingCost> {
    let spec = MobileNetConfig::new(MobileNetArch::V3Large).spec();
    network_cost(&spec, 10, method, blocks, 224, batch).map_err(anyhow::Error::msg)
}

fn ft_table() -> Result<(Table, Table, Vec<Claim>)> {
    let mut flops = Table::new(
        "MobileNetV3-Large FT-K, 224 px, per image: forward / backward MFLOPs, ours vs paper",
        &[
            "blocks",
            "forward",
            "paper forward",
            "backward",
            "paper backward",
            "total",
            "paper total",
        ],
    );
    let mut memory = Table::new(
        "MobileNetV3-Large FT-K, 224 px: activations kept for backward (MB), ours vs paper",
        &[
            "blocks",
            "vanilla, batch 1",
            "MobileTL, batch 1",
            "vanilla, batch 8",
            "MobileTL, batch 8",
            "paper",
        ],
    );
    // FT-All is full fine-tuning (the stem too).
    let exact = |k: usize| {
        if k == 15 {
            Method::Full
        } else {
            Method::Vanilla
        }
    };
    for (k, paper_fwd, paper_bwd, paper_mb) in PAPER_FT {
        let vanilla = v3_cost(exact(k), k, 1)?;
        let tl = v3_cost(Method::Mobiletl, k, 1)?;
        let (f, b) = (
            vanilla.forward_flops() as f64 / MB,
            vanilla.backward_flops() as f64 / MB,
        );
        let label = if k == 15 {
            "all (full)".to_string()
        } else {
            k.to_string()
        };
        flops.row([
            label.clone(),
            fmt_f(f, 1),
            fmt_f(paper_fwd, 1),
            fmt_f(b, 1),
            fmt_f(paper_bwd, 1),
            fmt_f(f + b, 1),
            fmt_f(paper_fwd + paper_bwd, 1),
        ]);
        let at8 = |m| v3_cost(m, k, 8).map(|c| c.activation_bytes() / MB);
        memory.row([
            label,
            fmt_f(vanilla.activation_bytes() / MB, 1),
            fmt_f(tl.activation_bytes() / MB, 1),
            fmt_f(at8(exact(k))?, 1),
            fmt_f(at8(Method::Mobiletl)?, 1),
            paper_mb.map(|m| fmt_f(m, 1)).unwrap_or_else(|| "-".into()),
        ]);
    }
    let full = v3_cost(Method::Full, 0, 1)?;
    let ft5 = v3_cost(Method::Mobiletl, 5, 1)?;
    let total = |c: &TrainingCost| (c.forward_flops() + c.backward_flops()) as f64 / MB;
    let mut claims = Vec::new();
    let saving = change_percent(total(&full), total(&ft5));
    let paper_saving = change_percent(2935.5, 1877.7);
    claims.push(
        Claim::new(
            "MobileNetV3-Large: training FLOPs of MobileTL FT-5 vs full fine-tuning, per image \
             at 224 px",
            format!("{}% (1877.7 vs 2935.5 MFLOPs)", fmt_f(paper_saving, 1)),
            "%",
            Tolerance::Absolute {
                target: (paper_saving * 10.0).round() / 10.0,
                within: 4.0,
            },
            Measurement::value(
                saving,
                format!(
                    "{}% ({} vs {} MFLOPs)",
                    fmt_f(saving, 1),
                    fmt_f(total(&ft5), 1),
                    fmt_f(total(&full), 1)
                ),
            ),
        )
        .note(
            "Tolerance 4 points: the paper counts FLOPs under an unstated convention (next \
             claim), so only the relative saving is compared.",
        ),
    );
    let fwd =
        |k: usize| -> Result<f64> { Ok(v3_cost(exact(k), k, 1)?.forward_flops() as f64 / MB) };
    claims.push(
        Claim::new(
            "MobileNetV3-Large FT-5: forward + backward MFLOPs per image (absolute)",
            "1877.7 MFLOPs",
            " MFLOPs",
            Tolerance::Relative {
                target: 1877.7,
                within: 0.05,
            },
            Measurement::value(total(&ft5), format!("{} MFLOPs", fmt_f(total(&ft5), 1))),
        )
        .not_reproducible(format!(
            "The paper's forward MFLOPs change with K for one network (968.8 at FT-1, 1000.6 \
             at FT-All; ours {} at every K) and are 2.2-2.3x its 217 M multiply-adds \
             (MobileNetV3 paper); what else they count is not stated",
            fmt_f(fwd(1)?, 1)
        )),
    );
    let act =
        |m: Method, k: usize| -> Result<f64> { Ok(v3_cost(m, k, 1)?.activation_bytes() / MB) };
    let (ft3, ft5_mb) = (act(Method::Vanilla, 3)?, act(Method::Vanilla, 5)?);
    claims.push(
        Claim::new(
            "MobileNetV3-Large FT-5: activations kept for backward",
            "35.9 MB (FT-3 23.1, FT-All 129.7)",
            " MB",
            Tolerance::Relative {
                target: 35.9,
                within: 0.05,
            },
            Measurement::value(
                ft5_mb,
                format!(
                    "{} MB vanilla at batch 1, {} MB at batch 8",
                    fmt_f(ft5_mb, 1),
                    fmt_f(v3_cost(Method::Vanilla, 5, 8)?.activation_bytes() / MB, 1)
                ),
            ),
        )
        .not_reproducible(format!(
            "No batch or resolution gives the paper's FT-K sizes: its FT-5 / FT-3 ratio is 1.55 \
             where the network's is {} at any batch (blocks 10-11 at 14x14 with 480 and 672 \
             channels are what FT-5 adds); the paper does not state its batch or resolution",
            num(ft5_mb / ft3)
        )),
    );
    flops.note(format!(
        "Ours: convolutions and linear layers, 2 FLOPs per multiply-add; the backward of a \
         trained layer is its weight gradient plus, when a layer below it trains, its input \
         gradient. MobileTL FT-5 vs full fine-tuning: ours {:.1} vs {:.1} MFLOPs ({:+.1}%), \
         paper 1877.7 vs 2935.5 ({:+.1}%). The paper's forward counts are 2.2-2.3x ours and \
         grow with K (968.8 -> 1000.6), so they count more than the multiply-adds (the \
         MobileNetV3-Large forward is 217 M multiply-adds, 434 MFLOPs, in the MobileNetV3 \
         paper and in our cost report); the paper does not say what, so its absolute FLOPs \
         do not reproduce, while the saving of FT-5 over full fine-tuning does within 4 points.",
        total(&ft5),
        total(&full),
        -100.0 * (total(&full) - total(&ft5)) / total(&full),
        -100.0 * (2935.5 - 1877.7) / 2935.5,
    ));
    let ft5_8 = v3_cost(Method::Mobiletl, 5, 8)?;
    let full_8 = v3_cost(Method::Full, 0, 8)?;
    memory.note(format!(
        "FT-K trains the top K blocks, the final 1x1 convolution and the classifier (10 \
         classes). Total training memory (activations + parameters, fp32 trainable, 8-bit \
         frozen), MobileTL FT-5 vs full fine-tuning: batch 8 {:.1} vs {:.1} MB, batch 1 {:.1} \
         vs {:.1} MB; paper ~42 vs ~136 MB. The paper's FT-K activations do not reproduce at \
         any one batch and resolution: its FT-5/FT-3 ratio is 1.55 where the network gives \
         2.2 (blocks 10-11 at 14x14 with 480 and 672 channels are what FT-5 adds), while its \
         FT-All/FT-5 ratio (3.6) matches our vanilla one (3.5). Its batch and resolution for \
         this table are not stated.",
        ft5_8.total_bytes() / MB,
        full_8.total_bytes() / MB,
        ft5.total_bytes() / MB,
        full.total_bytes() / MB,
    ));
    Ok((flops, memory, claims))
}

/// A finished fine-tuning run found under `results/mobiletl/runs/`.
struct RunRecord {
    name: String,
    arch: String,
    dataset: String,
    method: Method,
    blocks: usize,
    test_accuracy: f64,
    memory_mb: f64,
}

fn read_runs(dir: &Path) -> Result<Vec<RunRecord>> {
    let mut runs = Vec::new();
    if !dir.is_dir() {
        return Ok(runs);
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for run in entries {
        let state_path = run.join("state.json");
        if !state_path.is_file() {
            continue;
        }
        let state: mobiletl::train::RunState =
            mobiletl::train::RunDir::new(&run).read_state("mobiletl")?;
        let Some(test_accuracy) = state.test_accuracy else {
            continue;
        };
        let o = &state.options;
        let cost = network_cost(
            &state.model.spec(),
            state.model.num_classes,
            o.method,
            o.blocks,
            o.resolution as usize,
            o.batch_size,
        )
        .map_err(anyhow::Error::msg)?;
        runs.push(RunRecord {
            name: run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            arch: format!("{:?}", state.model.arch),
            dataset: state.dataset.clone(),
            method: o.method,
            blocks: o.blocks,
            test_accuracy,
            memory_mb: cost.total_bytes() / MB,
        });
    }
    Ok(runs)
}

fn plot_pareto(runs: &[RunRecord], path: &Path) -> Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_mb = runs.iter().map(|r| r.memory_mb).fold(1.0, f64::max) * 1.1;
        let (lo, hi) = runs.iter().fold((100.0f64, 0.0f64), |(lo, hi), r| {
            (
                lo.min(100.0 * r.test_accuracy),
                hi.max(100.0 * r.test_accuracy),
            )
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Training memory vs test accuracy (MobileTL paper, Fig. 1 style)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_mb, (lo - 2.0).max(0.0)..(hi + 2.0).min(100.0))?;
        chart
            .configure_mesh()
            .x_desc("training memory (MB, analytic)")
            .y_desc("test top-1 (%)")
            .draw()?;
        for (method, colour) in [
            (Method::Mobiletl, RED),
            (Method::Vanilla, BLUE),
            (Method::Full, BLACK),
            (Method::Last, GREEN),
            (Method::Bias, MAGENTA),
        ] {
            let points: Vec<_> = runs
                .iter()
                .filter(|r| r.method == method)
                .map(|r| (r.memory_mb, 100.0 * r.test_accuracy))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))?
                .label(format!("{method:?}"))
                .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
        }
        chart.configure_series_labels().border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

/// The paper's accuracy claim: MobileTL FT-5 on MobileNetV3-Large loses 0.6 points on
/// CIFAR-10 against vanilla FT-5, from the finished runs (the best of each method).
fn accuracy_claim(runs: &[RunRecord], runs_dir: &str) -> Claim {
    let best = |method: Method| {
        runs.iter()
            .filter(|r| {
                r.method == method && r.blocks == 5 && r.arch == "V3Large" && r.dataset == "cifar10"
            })
            .max_by(|a, b| a.test_accuracy.total_cmp(&b.test_accuracy))
    };
    let measurement = match (best(Method::Mobiletl), best(Method::Vanilla)) {
        (Some(tl), Some(vanilla)) => {
            let delta = 100.0 * (tl.test_accuracy - vanilla.test_accuracy);
            Measurement::value(
                delta,
                format!(
                    "{:+.2} points ({:.2}% vs {:.2}%, runs {} and {})",
                    delta,
                    100.0 * tl.test_accuracy,
                    100.0 * vanilla.test_accuracy,
                    tl.name,
                    vanilla.name
                ),
            )
        }
        (tl, _) => Measurement::missing(
            format!(
                "finished MobileNetV3-Large FT-5 runs on CIFAR-10 with {} under {runs_dir}/: the \
                 CIFAR-10 data (`cargo xtask fetch cifar-10`), timm's mobilenetv3_large_100 \
                 weights (model.safetensors) and 50 epochs of 50,000 images at 224 px per \
                 method (days on a 2-core CPU; a GPU run needs the wgpu build)",
                if tl.is_some() {
                    "vanilla"
                } else {
                    "MobileTL and vanilla"
                }
            ),
            format!(
                "mobiletl finetune --arch mobilenetv3_large_100 --weights model.safetensors \
                 --dataset cifar10 --data-dir data/cifar-10 --method mobiletl --blocks 5 \
                 --epochs 50 --batch 8 --lr 3e-4 --run-dir {runs_dir}/v3-cifar10-mobiletl-5 \
                 (then --method vanilla --run-dir {runs_dir}/v3-cifar10-vanilla-5), then \
                 `cargo xtask eval mobiletl`"
            ),
        ),
    };
    Claim::new(
        "Accuracy cost of MobileTL: CIFAR-10 test top-1, MobileNetV3-Large FT-5, MobileTL minus \
         vanilla",
        "-0.6 points",
        " points",
        Tolerance::AtLeast { bound: -1.6 },
        measurement,
    )
    .note(
        "Reproduced when MobileTL loses at most 1 point more than the paper's 0.6 (read from \
         a figure; a gain also reproduces).",
    )
}

fn accuracy_table(options: &EvalOptions) -> Result<(Table, Claim)> {
    let runs_dir = options.results_dir.join("mobiletl/runs");
    let runs = read_runs(&runs_dir)?;
    // Paths in the report relative to the workspace, as a user would type them.
    let shown = |p: &Path| {
        p.strip_prefix(crate::workspace_root())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut table = Table::new(
        "Fine-tuning runs: test accuracy and training memory",
        &[
            "run",
            "network",
            "dataset",
            "method",
            "blocks",
            "test top-1",
            "memory (MB)",
        ],
    );
    for r in &runs {
        table.row([
            r.name.clone(),
            r.arch.clone(),
            r.dataset.clone(),
            format!("{:?}", r.method),
            if r.method.uses_blocks() {
                r.blocks.to_string()
            } else {
                "-".into()
            },
            format!("{:.2}%", 100.0 * r.test_accuracy),
            fmt_f(r.memory_mb, 1),
        ]);
    }
    let how = format!(
        "Runs are read from {}/<name>/state.json. The paper's CIFAR-10 comparison (MobileTL vs \
         vanilla FT-5 on MobileNetV3-Large, paper: -0.6%): `mobiletl finetune --arch \
         mobilenetv3_large_100 --weights <timm model.safetensors> --dataset cifar10 --data-dir \
         <data>/cifar10 --method mobiletl|vanilla --blocks 5 --epochs 50 --batch 8 --lr 3e-4 \
         --run-dir {}/<name>` (50 epochs of 50,000 images at 224 px: days on a 2-core CPU).",
        shown(&runs_dir),
        shown(&runs_dir)
    );
    if runs.is_empty() {
        table.note(format!("No finished runs found. {how}"));
    } else {
        let plot = options.results_dir.join("mobiletl/memory_vs_accuracy.svg");
        std::fs::create_dir_all(options.results_dir.join("mobiletl"))?;
        plot_pareto(&runs, &plot)?;
        table.note(format!("Plot: {}. {how}", shown(&plot)));
    }
    let claim = accuracy_claim(&runs, &shown(&runs_dir));
    Ok((table, claim))
}

/// The reproduction.
pub fn reproduce(options: &EvalOptions) -> Result<Report> {
    let mut report = Report::new(
        "mobiletl",
        format!(
            "cargo xtask eval mobiletl{}",
            if options.quick { " --quick" } else { "" }
        ),
    );
    let (per_block, fp32) = per_block_table();
    report.tables.push(per_block);
    report.claims.extend(block_claims(&fp32));
    let (flops, memory, ft_claims) = ft_table()?;
    report.tables.push(memory);
    report.tables.push(flops);
    let args = if options.quick {
        vec!["--quick".to_string()]
    } else {
        Vec::new()
    };
    let (measured, blocks) = crate::bench::mobiletl::run_measured(&args)?;
    report.tables.extend(measured.tables);
    for (b, paper) in blocks.iter().zip(PAPER_BLOCK_REDUCTION) {
        let ours = change_percent(b.vanilla, b.mobiletl);
        report.claims.push(
            Claim::new(
                format!(
                    "{:?} block {} (one training step, measured heap): MobileTL holds at least \
                     the paper's reduction less than vanilla",
                    b.arch, b.block
                ),
                format!("{paper}%"),
                "%",
                Tolerance::AtMost { bound: paper },
                Measurement::value(
                    ours,
                    format!(
                        "{}% ({} -> {} MB, batch {}, {} px{})",
                        fmt_f(ours, 1),
                        fmt_f(b.vanilla / MB, 2),
                        fmt_f(b.mobiletl / MB, 2),
                        b.batch,
                        b.resolution,
                        if options.quick { ", --quick" } else { "" }
                    ),
                ),
            )
            .note(
                "Counting allocator on flex: live bytes after the forward pass minus before \
                 it. The paper's figure counts the analytic rules (claims above).",
            ),
        );
    }
    report.claims.extend(ft_claims);
    let (accuracy, claim) = accuracy_table(options)?;
    report.tables.push(accuracy);
    report.claims.push(claim);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Verdict;

    fn run(name: &str, method: Method, accuracy: f64) -> RunRecord {
        RunRecord {
            name: name.into(),
            arch: "V3Large".into(),
            dataset: "cifar10".into(),
            method,
            blocks: 5,
            test_accuracy: accuracy,
            memory_mb: 1.0,
        }
    }

    #[test]
    fn accuracy_claim_compares_the_finished_cifar10_runs() {
        let runs = [
            run("tl", Method::Mobiletl, 0.950),
            run("vanilla", Method::Vanilla, 0.955),
        ];
        let claim = accuracy_claim(&runs, "results/mobiletl/runs");
        assert_eq!(claim.verdict(), Verdict::Reproduced);
        // MobileTL 2.5 points below vanilla: outside the tolerance.
        let runs = [
            run("tl", Method::Mobiletl, 0.930),
            run("vanilla", Method::Vanilla, 0.955),
        ];
        let claim = accuracy_claim(&runs, "results/mobiletl/runs");
        assert!(matches!(claim.verdict(), Verdict::NotReproduced { .. }));
        // Only the MobileTL run, or a run at another K: not run here.
        let mut other = run("vanilla-3", Method::Vanilla, 0.955);
        other.blocks = 3;
        let claim = accuracy_claim(&[run("tl", Method::Mobiletl, 0.95), other], "runs");
        match claim.verdict() {
            Verdict::NotRunHere { missing, command } => {
                assert!(missing.contains("with vanilla"), "{missing}");
                assert!(command.contains("mobiletl finetune"), "{command}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn analytic_block_claims_reproduce_the_paper_reductions() {
        let (_, fp32) = per_block_table();
        let claims = block_claims(&fp32);
        assert_eq!(claims.len(), 2);
        for c in &claims {
            assert_eq!(c.verdict(), Verdict::Reproduced, "{c:?}");
        }
    }
}
