//! MOAT on flex against the same architecture in PyTorch CPU
//! (`tools/reference/bench/moat.py`): tiny-MOAT-0 at 256 and MOAT-0 at 224, forward at
//! batch 1 and 8 and one training step at batch 8 (the crate's own `Trainer::step`:
//! train-mode BN, label-smoothed cross-entropy, backward, AdamW), and tiny-MOAT-0 at 512
//! and 1024 with global attention against 16x16 / 8x8 windows, beside the multiply-adds
//! each configuration costs.

use std::time::Duration;

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use moat::data::Batch;
use moat::{InputNormalization, MoatVariant, TrainOptions, Trainer, multiply_adds};

use super::{reference_python, run_reference_script, time_interleaved};
use crate::report::{Report, Table, fmt_f};

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// Arguments: `--quick` (fewer runs, for a smoke test of the pipeline).
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let (min_rounds, max_rounds, budget) = if quick {
        (2, 3, Duration::from_secs(5))
    } else {
        (5, 20, Duration::from_secs(40))
    };
    let reference = match reference_python() {
        Some(_) => {
            println!("running tools/reference/bench/moat.py ...");
            let script = crate::workspace_root().join("tools/reference/bench/moat.py");
            let extra: &[&str] = if quick { &["--quick"] } else { &[] };
            Some(run_reference_script(&script, extra)?)
        }
        None => None,
    };
    let torch = |key: &str| {
        reference
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_f64())
    };
    let device = Device::flex();
    device.seed(0);

    let mut columns = vec!["workload", "GMACs", "flex ms"];
    if reference.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut table = Table::new(
        "MOAT on flex vs the same architecture in PyTorch CPU (median of runs)",
        &columns,
    );
    let mut push = |name: String, key: String, macs: f64, ms: f64| {
        let mut row = vec![name, fmt_f(macs, 2), fmt_f(ms, 1)];
        if reference.is_some() {
            match torch(&key) {
                Some(t) => row.extend([fmt_f(t, 1), fmt_f(ms / t, 2)]),
                None => row.extend(["-".into(), "-".into()]),
            }
        }
        table.row(row);
    };

    for (variant, res) in [(MoatVariant::TinyMoat0, 256), (MoatVariant::Moat0, 224)] {
        let name = variant.name();
        let config = variant.config();
        let model = config.init(&device);
        let gmacs = multiply_adds(&model.cost(res, res)) as f64 / 1e9;
        let x1 = Tensor::<4>::random([1, 3, res, res], Distribution::Default, &device);
        let x8 = Tensor::<4>::random([8, 3, res, res], Distribution::Default, &device);
        println!("timing {name} forward passes ...");
        let mut f1 = || {
            drop(model.forward(x1.clone()));
            sync(&device);
        };
        let mut f8 = || {
            drop(model.forward(x8.clone()));
            sync(&device);
        };
        let t = time_interleaved(&mut [&mut f1, &mut f8], 2, min_rounds, max_rounds, budget);
        drop(model);
        push(
            format!("{name} {res}px forward, batch 1"),
            format!("{name}/forward_b1"),
            gmacs,
            t[0].median_ms,
        );
        push(
            format!("{name} {res}px forward, batch 8"),
            format!("{name}/forward_b8"),
            8.0 * gmacs,
            t[1].median_ms,
        );

        println!("timing {name} training steps ...");
        let options = TrainOptions {
            epochs: 1,
            batch_size: 8,
            warmup_steps: 0,
            learning_rate: 1e-4,
            ..TrainOptions::default()
        };
        let mut trainer = Trainer::new(config, options, 8, InputNormalization::ImageNet, &device)?;
        let images = Tensor::<4>::random([8, 3, res, res], Distribution::Default, &device)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let batch = Batch {
            images,
            labels: vec![3, 1, 4, 1, 5, 9, 2, 6],
            side: res,
        };
        let mut step = || {
            trainer.step(batch.clone());
            sync(&device);
        };
        // MOAT-0 steps take seconds on a small CPU: fewer rounds.
        let (lo, hi) = if variant == MoatVariant::Moat0 {
            (2, 5)
        } else {
            (min_rounds.min(3), max_rounds.min(10))
        };
        let t = time_interleaved(&mut [&mut step], 1, lo, hi, budget);
        push(
            format!("{name} {res}px training step, batch 8 (AdamW)"),
            format!("{name}/train_step_b8"),
            // Forward plus a backward of about twice its cost.
            3.0 * 8.0 * gmacs,
            t[0].median_ms,
        );
    }
    match &reference {
        Some(r) => table.note(format!(
            "PyTorch {} with {} threads (tools/reference/bench/moat.py: MOAT written in \
             PyTorch with the same shapes; random weights).",
            r["torch_version"].as_str().unwrap_or("?"),
            r["threads"]
        )),
        None => table.note(
            "Set REFERENCE_PYTHON to a Python with torch (tools/reference/bench/requirements.txt) \
             for the PyTorch columns.",
        ),
    };
    table.note(
        "GMACs: multiply-adds of convolutions, dense layers and attention matmuls \
         (`moat flops`); the training-step figure is 3x the forward.",
    );

    let mut columns = vec!["input", "attention", "GMACs", "flex ms"];
    if reference.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut scaling = Table::new(
        "tiny-MOAT-0 forward (batch 1): global vs window attention (16x16 / 8x8) at high resolution",
        &columns,
    );
    for res in [512, 1024] {
        let mut models = Vec::new();
        for (label, config) in [
            ("global", MoatVariant::TinyMoat0.config()),
            (
                "window",
                MoatVariant::TinyMoat0
                    .config()
                    .with_windows([16, 16], [8, 8]),
            ),
        ] {
            let model = config.init(&device);
            let gmacs = multiply_adds(&model.cost(res, res)) as f64 / 1e9;
            models.push((label, model, gmacs));
        }
        let x = Tensor::<4>::random([1, 3, res, res], Distribution::Default, &device);
        println!("timing global vs window attention at {res} ...");
        let (global, window) = (&models[0].1, &models[1].1);
        let mut g = || {
            drop(global.forward(x.clone()));
            sync(&device);
        };
        let mut w = || {
            drop(window.forward(x.clone()));
            sync(&device);
        };
        let t = time_interleaved(&mut [&mut g, &mut w], 1, 2, 5, budget);
        for ((label, _, gmacs), timing) in models.iter().zip(&t) {
            let mut row = vec![
                format!("{res}x{res}"),
                label.to_string(),
                fmt_f(*gmacs, 2),
                fmt_f(timing.median_ms, 1),
            ];
            if reference.is_some() {
                match torch(&format!("tiny-moat-0/{label}_{res}")) {
                    Some(tt) => row.extend([fmt_f(tt, 1), fmt_f(timing.median_ms / tt, 2)]),
                    None => row.extend(["-".into(), "-".into()]),
                }
            }
            scaling.row(row);
        }
    }
    scaling.note(
        "Global attention grows with the square of the token count (4096 tokens in stage 3 \
         at 1024 px); windows keep it linear in the image area.",
    );
    let mut report = Report::new("bench-moat", "cargo xtask bench moat");
    report.tables.push(table);
    report.tables.push(scaling);
    Ok(report)
}
