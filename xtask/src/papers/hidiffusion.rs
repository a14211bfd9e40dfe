//! `cargo xtask eval hidiffusion`: the paper's efficiency claim (40-60% less time than
//! direct high-resolution inference) against this implementation: the multiply-adds of a
//! 50-step run of the SD 1.5 architecture under the official schedules (computed here),
//! and the measured times of `cargo xtask bench hidiffusion` when it has been run.

use anyhow::Result;
use burn::tensor::Device;
use hidiffusion::config::released_unet_config;
use hidiffusion::pipeline::ModelKind;
use hidiffusion::unet::UNet;
use hidiffusion::weights::Weights;

use crate::bench::hidiffusion::{STEPS, Variant, call_macs, schedule};
use crate::eval::EvalOptions;
use crate::report::{Report, Table, fmt_f};

/// The paper's numbers: (what, value).
const PAPER: &[(&str, &str)] = &[
    (
        "abstract: inference time vs direct high-resolution inference",
        "-40% to -60%",
    ),
    (
        "2048x2048 (third-party summary, hardware not stated)",
        "165 s -> 58 s (-65%)",
    ),
    ("4096x4096 (third-party summary)", "769 s -> 287 s (-63%)"),
];

/// The reproduction.
pub fn reproduce(options: &EvalOptions) -> Result<Report> {
    let mut report = Report::new("hidiffusion", "cargo xtask eval hidiffusion");
    let mut paper = Table::new(
        "HiDiffusion's efficiency claim (paper)",
        &["claim", "paper"],
    );
    for (what, value) in PAPER {
        paper.row([*what, *value]);
    }
    report.tables.push(paper);

    println!("building the SD 1.5 UNet (random weights: only shapes matter here) ...");
    let device = Device::flex();
    let unet = UNet::load(
        &released_unet_config(ModelKind::Sd1),
        &mut Weights::random(&device),
    );
    let mut macs = Table::new(
        format!(
            "Multiply-adds of a {STEPS}-step SD 1.5 run (batch 1, official schedules): this implementation"
        ),
        &[
            "size",
            "variant",
            "TMACs / run",
            "vs vanilla",
            "attention share (vanilla)",
        ],
    );
    let sizes: &[usize] = if options.quick {
        &[1024, 2048]
    } else {
        &[1024, 2048, 4096]
    };
    for &px in sizes {
        let latent = [px / 8, px / 8];
        let mut vanilla = 0.0;
        for variant in Variant::ALL {
            let mut total = 0.0;
            let mut attention = 0.0;
            for (active, steps) in schedule(variant, latent) {
                let step = (0..STEPS)
                    .find(|&s| {
                        variant
                            .config()
                            .map(|c| c.active(s, STEPS, latent))
                            .unwrap_or_default()
                            == active
                    })
                    .expect("a step of the schedule");
                let m = call_macs(&unet, variant, latent, step);
                total += m.total() * steps as f64;
                attention += m.attention * steps as f64;
            }
            if variant == Variant::Vanilla {
                vanilla = total;
            }
            macs.row([
                format!("{px}x{px}"),
                variant.name().to_string(),
                fmt_f(total / 1e12, 1),
                format!("{:+.0}%", (total / vanilla - 1.0) * 100.0),
                if variant == Variant::Vanilla {
                    format!("{:.0}%", attention / total * 100.0)
                } else {
                    "-".into()
                },
            ]);
        }
    }
    macs.note(
        "RAU-Net follows the official presets (SD 1.5 below 2048 px: RAD on the first 40% of \
         steps; at 2048 px and above: RAD on 70%, T2 pooling on 30%); MSW-MSA runs on every \
         step. Counted by hidiffusion::cost: convolutions, linear layers and attention \
         (scores and weighted sums).",
    );
    report.tables.push(macs);

    let bench = crate::workspace_root().join("results/bench/hidiffusion.json");
    let mut measured = Table::new(
        "Measured (cargo xtask bench hidiffusion): projected 50-step time vs vanilla",
        &["size", "variant", "projected s", "time vs vanilla", "paper"],
    );
    match std::fs::read_to_string(&bench) {
        Ok(text) => {
            let value: serde_json::Value = serde_json::from_str(&text)?;
            let summary = &value["tables"][0];
            for row in summary["rows"].as_array().into_iter().flatten() {
                let cell = |i: usize| row[i].as_str().unwrap_or("-").to_string();
                measured.row([cell(0), cell(1), cell(2), cell(3), cell(6)]);
            }
            measured.note(format!(
                "From results/bench/hidiffusion.json ({}).",
                value["environment"].as_str().unwrap_or("")
            ));
        }
        Err(_) => {
            measured.note(format!(
                "{} does not exist: run `cargo xtask bench hidiffusion` (about an hour on 2 cores) to measure.",
                bench.display()
            ));
        }
    }
    report.tables.push(measured);
    Ok(report)
}
