//! MobileNetV3-Large on flex against PyTorch CPU (`tools/reference/bench/mobilenet.py`):
//! forward at batch 1 and 8, one full fine-tuning step at batch 8 (224 px), and where the
//! batch-8 forward spends its time per op class, measured the same way on both sides
//! (each layer timed on its own, synchronised, summed per class).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig, momentum::MomentumConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use irb_core::InvertedResidual;
use mobiletl::mobilenet::{MobileNet, MobileNetArch, MobileNetConfig};

use super::{reference_python, run_reference_script, time_interleaved};
use crate::report::{Report, Table, fmt_f};

const RESOLUTION: usize = 224;

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// Times `f` once, synchronised, adding the milliseconds to `class`.
fn timed<T>(
    totals: &mut BTreeMap<&'static str, f64>,
    class: &'static str,
    device: &Device,
    f: impl FnOnce() -> T,
) -> T {
    let t = Instant::now();
    let out = f();
    sync(device);
    *totals.entry(class).or_default() += t.elapsed().as_secs_f64() * 1e3;
    out
}

fn profile_block(
    block: &InvertedResidual,
    x: Tensor<4>,
    totals: &mut BTreeMap<&'static str, f64>,
    device: &Device,
) -> Tensor<4> {
    let input = x.clone();
    let act = block.activation();
    let mut h = x;
    if let (Some(conv), Some(norm)) = (&block.expand_conv, &block.expand_norm) {
        h = timed(totals, "pointwise conv", device, || conv.forward(h));
        h = timed(totals, "batch norm", device, || norm.forward(h));
        h = timed(totals, "activation", device, || act.forward(h));
    }
    h = timed(totals, "depthwise conv", device, || {
        block.depthwise_conv.forward(h)
    });
    h = timed(totals, "batch norm", device, || {
        block.depthwise_norm.forward(h)
    });
    h = timed(totals, "activation", device, || act.forward(h));
    if let Some(se) = &block.squeeze_excite {
        h = timed(totals, "squeeze-excite", device, || se.forward(h));
    }
    h = timed(totals, "pointwise conv", device, || {
        block.project_conv.forward(h)
    });
    if let Some(norm) = &block.project_norm {
        h = timed(totals, "batch norm", device, || norm.forward(h));
    }
    if block.shortcut_path() == irb_core::ShortcutPath::Identity {
        h = timed(totals, "other", device, || h + input);
    }
    h
}

/// Milliseconds per class for one forward of `x`.
fn profile_forward(
    model: &MobileNet,
    x: Tensor<4>,
    device: &Device,
) -> BTreeMap<&'static str, f64> {
    let mut totals = BTreeMap::new();
    let t = Instant::now();
    let stem = &model.stem;
    let mut h = timed(&mut totals, "stem conv", device, || stem.conv_forward(x));
    h = timed(&mut totals, "batch norm", device, || stem.norm.forward(h));
    h = timed(&mut totals, "activation", device, || {
        stem.activation().forward(h)
    });
    for block in &model.blocks {
        h = profile_block(block, h, &mut totals, device);
    }
    let last = &model.last;
    h = timed(&mut totals, "pointwise conv", device, || {
        last.conv.forward(h)
    });
    h = timed(&mut totals, "batch norm", device, || last.norm.forward(h));
    h = timed(&mut totals, "activation", device, || {
        last.activation().forward(h)
    });
    let logits = timed(&mut totals, "linear", device, || model.classify_features(h));
    drop(logits);
    let total = t.elapsed().as_secs_f64() * 1e3;
    let counted: f64 = totals.values().sum();
    *totals.entry("other").or_default() += (total - counted).max(0.0);
    totals
}

fn median_profile(
    model: &MobileNet,
    x: &Tensor<4>,
    device: &Device,
    runs: usize,
) -> BTreeMap<&'static str, f64> {
    profile_forward(model, x.clone(), device);
    let samples: Vec<_> = (0..runs)
        .map(|_| profile_forward(model, x.clone(), device))
        .collect();
    samples[0]
        .keys()
        .map(|k| {
            let mut v: Vec<f64> = samples.iter().map(|s| s[k]).collect();
            v.sort_by(f64::total_cmp);
            (*k, v[v.len() / 2])
        })
        .collect()
}

/// Runs the benchmark.
pub fn run() -> Result<Report> {
    let reference = match reference_python() {
        Some(_) => {
            println!("running tools/reference/bench/mobilenet.py ...");
            let script = crate::workspace_root().join("tools/reference/bench/mobilenet.py");
            Some(run_reference_script(&script, &[])?)
        }
        None => None,
    };
    let device = Device::flex();
    device.seed(0);
    let model = MobileNetConfig::new(MobileNetArch::V3Large).init(&device);
    let x1 = Tensor::<4>::random(
        [1, 3, RESOLUTION, RESOLUTION],
        Distribution::Default,
        &device,
    );
    let x8 = Tensor::<4>::random(
        [8, 3, RESOLUTION, RESOLUTION],
        Distribution::Default,
        &device,
    );

    let mut forward1 = || {
        drop(model.forward(x1.clone()));
        sync(&device);
    };
    let mut forward8 = || {
        drop(model.forward(x8.clone()));
        sync(&device);
    };
    println!("timing forward passes ...");
    let forward = time_interleaved(
        &mut [&mut forward1, &mut forward8],
        2,
        5,
        20,
        Duration::from_secs(40),
    );

    println!("timing training steps ...");
    let train_device = device.clone().autodiff();
    let mut train_model = Some(MobileNetConfig::new(MobileNetArch::V3Large).init(&train_device));
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9)))
        .init();
    let xt = x8.clone().to_device(&train_device);
    let labels = Tensor::<1, Int>::from_ints([3, 1, 4, 1, 5, 9, 2, 6], &train_device);
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    // The step split in two, to see where training time goes: forward with train-mode BN,
    // loss and backward; then the full step with the optimizer update. (A forward alone on
    // an autodiff device is not timed: burn keeps the unused graph until the next
    // backward, so it measures graph bookkeeping, not the forward.)
    let mut forward_backward = || {
        let model = train_model.as_ref().expect("model present");
        let loss = loss_fn.forward(model.forward(xt.clone()), labels.clone());
        drop(loss.backward());
        sync(&train_device);
    };
    let train_backward = time_interleaved(
        &mut [&mut forward_backward],
        1,
        3,
        10,
        Duration::from_secs(30),
    );
    let mut step = || {
        let model = train_model.take().expect("model present between steps");
        let loss = loss_fn.forward(model.forward(xt.clone()), labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        train_model = Some(optimizer.step(1e-3, model, grads));
        sync(&train_device);
    };
    let train = time_interleaved(&mut [&mut step], 2, 5, 20, Duration::from_secs(60));
    drop(train_model);

    println!("profiling the batch-8 forward ...");
    let profile = median_profile(&model, &x8, &device, 5);

    let torch = |key: &str| {
        reference
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_f64())
    };
    let mut columns = vec!["workload", "flex ms"];
    if reference.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut table = Table::new(
        "MobileNetV3-Large, 224x224, flex vs PyTorch CPU (median of runs)",
        &columns,
    );
    for (name, key, timing) in [
        ("forward, batch 1 (eval)", "forward_b1", forward[0]),
        ("forward, batch 8 (eval)", "forward_b8", forward[1]),
        (
            "train-mode forward + loss + backward, batch 8",
            "train_backward_b8",
            train_backward[0],
        ),
        (
            "training step (+ SGD update), batch 8, full fine-tune",
            "train_step_b8",
            train[0],
        ),
    ] {
        let mut row = vec![name.to_string(), fmt_f(timing.median_ms, 1)];
        if reference.is_some() {
            match torch(key) {
                Some(t) => row.extend([fmt_f(t, 1), fmt_f(timing.median_ms / t, 2)]),
                None => row.extend(["-".into(), "-".into()]),
            }
        }
        table.row(row);
    }
    table.note("Goal: flex / torch <= 1.5. Same shapes, random weights, same thread count.");
    match &reference {
        Some(r) => table.note(format!(
            "PyTorch {} with {} threads (tools/reference/bench/mobilenet.py).",
            r["torch_version"].as_str().unwrap_or("?"),
            r["threads"]
        )),
        None => table.note(
            "Set REFERENCE_PYTHON to a Python with torch + torchvision for the PyTorch columns.",
        ),
    };

    let torch_profile = reference
        .as_ref()
        .and_then(|r| r.get("profile_b8"))
        .and_then(|p| p.as_object());
    let mut columns = vec!["op class", "flex ms", "flex share"];
    if torch_profile.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut breakdown = Table::new(
        "Where the batch-8 forward spends its time (per op class)",
        &columns,
    );
    let flex_total: f64 = profile.values().sum();
    let mut classes: Vec<_> = profile.iter().collect();
    classes.sort_by(|a, b| b.1.total_cmp(a.1));
    for (class, ms) in classes {
        let mut row = vec![
            class.to_string(),
            fmt_f(*ms, 1),
            format!("{:.0}%", 100.0 * ms / flex_total),
        ];
        if let Some(tp) = torch_profile {
            match tp.get(*class).and_then(|v| v.as_f64()) {
                Some(t) => row.extend([fmt_f(t, 1), fmt_f(ms / t, 2)]),
                None => row.extend(["-".into(), "-".into()]),
            }
        }
        breakdown.row(row);
    }
    breakdown.note(
        "Each layer run on its own and synchronised (flex), or timed by forward hooks on \
         leaf modules (torch); 'other' is the rest of the forward (residual adds, pooling, \
         reshapes, dispatch).",
    );
    let mut report = Report::new("bench-mobilenet", "cargo xtask bench mobilenet");
    report.tables.push(table);
    report.tables.push(breakdown);
    Ok(report)
}
