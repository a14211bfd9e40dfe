//! Why flex is the CPU default: flex vs ndarray (burn 0.22's deprecated CPU backend) on the
//! operations this workspace spends its time in, and PyTorch CPU on the same workloads when
//! `REFERENCE_PYTHON` is set (`tools/reference/bench/backends.py`).

use std::time::Duration;

use anyhow::Result;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use irb_core::{Activation, InvertedResidualConfig};

use super::{Timing, reference_python, run_reference_script, time_interleaved};
use crate::report::{Report, Table, fmt_f};

/// One workload, run the same way on every backend.
struct Workload {
    name: &'static str,
    shape: &'static str,
    /// Builds inputs on a device and returns the closure that runs one step.
    make: fn(&Device) -> Box<dyn FnMut()>,
}

fn conv3x3(device: &Device) -> Box<dyn FnMut()> {
    let x = Tensor::<4>::random([8, 64, 56, 56], Distribution::Default, device);
    let w = Tensor::<4>::random([64, 64, 3, 3], Distribution::Default, device);
    let device = device.clone();
    Box::new(move || {
        let y = conv2d(
            x.clone(),
            w.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        finish(y, &device);
    })
}

fn depthwise3x3(device: &Device) -> Box<dyn FnMut()> {
    let x = Tensor::<4>::random([8, 144, 56, 56], Distribution::Default, device);
    let w = Tensor::<4>::random([144, 1, 3, 3], Distribution::Default, device);
    let device = device.clone();
    Box::new(move || {
        let y = conv2d(
            x.clone(),
            w.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 144),
        );
        finish(y, &device);
    })
}

fn matmul1024(device: &Device) -> Box<dyn FnMut()> {
    let a = Tensor::<2>::random([1024, 1024], Distribution::Default, device);
    let b = Tensor::<2>::random([1024, 1024], Distribution::Default, device);
    let device = device.clone();
    Box::new(move || finish(a.clone().matmul(b.clone()), &device))
}

fn irb_step(device: &Device) -> Box<dyn FnMut()> {
    let device = device.clone().autodiff();
    // MobileNetV2's 24 -> 144 -> 24 block at 56x56, batch 8, BatchNorm in training mode.
    let block = InvertedResidualConfig::new(24, 144, 24)
        .with_activation(Activation::Relu6)
        .init(&device);
    let x = Tensor::<4>::random([8, 24, 56, 56], Distribution::Default, &device);
    Box::new(move || {
        let y = block.forward(x.clone().require_grad());
        let grads = y.sum().backward();
        drop(grads);
        device.sync().expect("device sync");
    })
}

fn finish<const D: usize>(y: Tensor<D>, device: &Device) {
    device.sync().expect("device sync");
    drop(y);
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "conv3x3",
        shape: "x 8x64x56x56, w 64x64x3x3",
        make: conv3x3,
    },
    Workload {
        name: "depthwise3x3",
        shape: "x 8x144x56x56, groups 144",
        make: depthwise3x3,
    },
    Workload {
        name: "matmul1024",
        shape: "1024x1024 @ 1024x1024",
        make: matmul1024,
    },
    Workload {
        name: "irb_fwd_bwd",
        shape: "MobileNetV2 IRB 24-144-24, 8x24x56x56, train BN",
        make: irb_step,
    },
];

fn backends() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut list = vec![("flex", Device::flex())];
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // measuring the deprecated backend is the point
    list.push(("ndarray", Device::ndarray()));
    list
}

/// Runs the comparison and returns the report.
pub fn run() -> Result<Report> {
    let backends = backends();
    let reference = match reference_python() {
        Some(_) => {
            let script = crate::workspace_root().join("tools/reference/bench/backends.py");
            Some(run_reference_script(&script, &[])?)
        }
        None => None,
    };

    let mut columns = vec!["workload", "shape"];
    let names: Vec<String> = backends.iter().map(|(n, _)| format!("{n} ms")).collect();
    columns.extend(names.iter().map(String::as_str));
    if backends.len() == 2 {
        columns.push("ndarray / flex");
    }
    if reference.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut table = Table::new("flex vs ndarray (median of interleaved runs)", &columns);

    for workload in WORKLOADS {
        let mut steps: Vec<Box<dyn FnMut()>> =
            backends.iter().map(|(_, d)| (workload.make)(d)).collect();
        let mut refs: Vec<&mut dyn FnMut()> = steps
            .iter_mut()
            .map(|s| &mut **s as &mut dyn FnMut())
            .collect();
        let timings: Vec<Timing> = time_interleaved(&mut refs, 2, 5, 30, Duration::from_secs(8));
        let mut row = vec![workload.name.to_string(), workload.shape.to_string()];
        row.extend(timings.iter().map(|t| fmt_f(t.median_ms, 2)));
        if timings.len() == 2 {
            row.push(fmt_f(timings[1].median_ms / timings[0].median_ms, 2));
        }
        if let Some(reference) = &reference {
            match reference.get(workload.name).and_then(|v| v.as_f64()) {
                Some(torch_ms) => {
                    row.push(fmt_f(torch_ms, 2));
                    row.push(fmt_f(timings[0].median_ms / torch_ms, 2));
                }
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        table.row(row);
    }
    table.note("ndarray / flex > 1 means flex is faster; both use their simd + rayon features.");
    match &reference {
        Some(r) => {
            table.note(format!(
                "PyTorch {} with {} threads, same shapes (tools/reference/bench/backends.py).",
                r["torch_version"].as_str().unwrap_or("?"),
                r["threads"]
            ));
        }
        None => {
            table.note("Set REFERENCE_PYTHON to a Python with torch to add PyTorch CPU columns.");
        }
    }
    let mut report = Report::new("bench-backends", "cargo xtask bench backends");
    report.tables.push(table);
    Ok(report)
}
