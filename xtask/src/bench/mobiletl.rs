//! Measured training memory of MobileTL against vanilla fine-tuning: the heap bytes a
//! training step holds between the end of the forward pass and the start of the backward
//! pass (the activations the autodiff graph keeps, plus the loss), for one inverted
//! residual block and for FT-1/3/5/All, on MobileNetV2 and MobileNetV3-Large at batch 8
//! and 224 px, beside the analytic count of the same step.

use anyhow::{Result, anyhow};
use burn::tensor::Device;
use mobiletl::method::Method;
use mobiletl::method::measured_memory::{block_input_side, measure_block, measure_network};
use mobiletl::method::training_cost::{block_cost, network_cost};
use mobiletl::mobilenet::{MobileNetArch, MobileNetConfig};

use crate::report::{Report, Table, fmt_f};

const MB: f64 = 1e6;

fn reduction(before: f64, after: f64) -> String {
    format!("{:+.1}%", -100.0 * (before - after) / before)
}

/// One block's measured memory: what a training step holds between forward and backward.
#[derive(Debug, Clone)]
pub struct BlockMeasurement {
    /// The network.
    pub arch: MobileNetArch,
    /// The block's index and shape, as in the table.
    pub block: String,
    /// Bytes held with vanilla fine-tuning.
    pub vanilla: f64,
    /// Bytes held with MobileTL.
    pub mobiletl: f64,
    /// Batch size and resolution of the step.
    pub batch: usize,
    /// Input resolution (pixels).
    pub resolution: usize,
}

/// Arguments: `--quick` (batch 2 at 112 px).
pub fn run(args: &[String]) -> Result<Report> {
    run_measured(args).map(|(report, _)| report)
}

/// [`run`], also returning the per-block measurements behind its first table.
pub fn run_measured(args: &[String]) -> Result<(Report, Vec<BlockMeasurement>)> {
    let quick = args.iter().any(|a| a == "--quick");
    let (batch, resolution) = if quick { (2, 112) } else { (8, 224) };
    let device = Device::flex().autodiff();
    device.seed(0);

    let mut per_block = Table::new(
        format!(
            "Held between forward and backward, one inverted residual block, batch {batch}, \
             {resolution} px (MB)"
        ),
        &[
            "network",
            "block",
            "vanilla measured",
            "MobileTL measured",
            "reduction measured",
            "vanilla analytic",
            "MobileTL analytic",
            "reduction analytic",
            "paper",
        ],
    );
    // A MobileNetV2 block of the 56x56 stage (the block of the paper's per-IRB table) and a
    // MobileNetV3-Large block with squeeze-excitation and Hard-Swish (14x14).
    let mut blocks = Vec::new();
    for (arch, block, paper) in [
        (MobileNetArch::V2, 2, "-46.3%"),
        (MobileNetArch::V3Large, 11, "-53.3%"),
    ] {
        eprintln!("measuring one {arch:?} block ...");
        let config = MobileNetConfig::new(arch);
        let spec = config.spec();
        let v = measure_block(&config, block, false, batch, resolution, &device)
            .map_err(|e| anyhow!(e))? as f64;
        let t = measure_block(&config, block, true, batch, resolution, &device)
            .map_err(|e| anyhow!(e))? as f64;
        let b = &spec.blocks[block];
        let side = block_input_side(&spec, block, resolution);
        let av = block_cost(b, side, false, batch).activation_bytes();
        let at = block_cost(b, side, true, batch).activation_bytes();
        let shape = format!(
            "{block}: {}->{}->{} ch, {side}x{side}{}, {:?}",
            b.in_channels,
            b.expanded,
            b.out_channels,
            if b.squeeze.is_some() { ", SE" } else { "" },
            b.activation
        );
        blocks.push(BlockMeasurement {
            arch,
            block: shape.clone(),
            vanilla: v,
            mobiletl: t,
            batch,
            resolution,
        });
        per_block.row([
            format!("{arch:?}"),
            shape,
            fmt_f(v / MB, 2),
            fmt_f(t / MB, 2),
            reduction(v, t),
            fmt_f(av / MB, 2),
            fmt_f(at / MB, 2),
            reduction(av, at),
            paper.to_string(),
        ]);
    }
    per_block.note(
        "Measured: counting global allocator (flex backend), live bytes after the forward \
         pass minus before it, output and loss included. Analytic: TinyTL's rules, fp32.",
    );

    let mut ft = Table::new(
        format!(
            "Held between forward and backward, whole network, batch {batch}, {resolution} px (MB)"
        ),
        &[
            "network",
            "blocks trained",
            "vanilla measured",
            "MobileTL measured",
            "reduction measured",
            "vanilla analytic",
            "MobileTL analytic",
        ],
    );
    for arch in [MobileNetArch::V2, MobileNetArch::V3Large] {
        let config = MobileNetConfig::new(arch).with_num_classes(10);
        let n = config.spec().blocks.len();
        for k in [1, 3, 5, n] {
            eprintln!("measuring {arch:?} FT-{k} ...");
            let mut measured = [0.0; 2];
            let mut analytic = [0.0; 2];
            for (slot, method) in [Method::Vanilla, Method::Mobiletl].into_iter().enumerate() {
                measured[slot] = measure_network(&config, method, k, batch, resolution, &device)
                    .map_err(|e| anyhow!(e))? as f64;
                analytic[slot] = network_cost(&config.spec(), 10, method, k, resolution, batch)
                    .map_err(|e| anyhow!(e))?
                    .activation_bytes();
            }
            ft.row([
                format!("{arch:?}"),
                if k == n {
                    format!("all {n}")
                } else {
                    k.to_string()
                },
                fmt_f(measured[0] / MB, 1),
                fmt_f(measured[1] / MB, 1),
                reduction(measured[0], measured[1]),
                fmt_f(analytic[0] / MB, 1),
                fmt_f(analytic[1] / MB, 1),
            ]);
        }
    }
    ft.note(
        "FT-K trains the top K blocks, the final 1x1 convolution and the classifier (10 \
         classes); the layers below run without an autodiff graph.",
    );
    let mut report = Report::new("bench-mobiletl", "cargo xtask bench mobiletl");
    report.tables.push(per_block);
    report.tables.push(ft);
    Ok((report, blocks))
}
