//! `cargo xtask bench <target>`: benchmarks, always from a release build.
//!
//! Absolute times on a shared machine are noisy, so every benchmark reports ratios of
//! implementations measured in the same run (flex vs ndarray, this workspace vs PyTorch
//! when `REFERENCE_PYTHON` names a Python with the reference packages).

pub mod alloc;
pub mod backends;
pub mod hidiffusion;
pub mod hier_community;
pub mod llm;
pub mod mixlora;
pub mod moat;
pub mod mobilenet;
pub mod mobiletl;
pub mod sd;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What `cargo xtask bench` can run.
pub const TARGETS: &[(&str, &str, Option<u32>)] = &[
    (
        "backends",
        "flex vs ndarray on conv, depthwise conv, matmul and an IRB step",
        None,
    ),
    (
        "hier-community",
        "bottom-up pipeline at n = 100k, m = 1.44M, and a 10M-edge HSBM",
        None,
    ),
    (
        "mobilenet",
        "MobileNetV3-Large forward and training step",
        None,
    ),
    (
        "mobiletl",
        "measured training memory, vanilla vs MobileTL",
        None,
    ),
    (
        "moat",
        "tiny-MOAT-0 / MOAT-0 latency and training step, global vs window attention",
        None,
    ),
    ("sd", "one SD 1.5 UNet step at 512x512", None),
    (
        "hidiffusion",
        "vanilla vs RAU-Net vs MSW-MSA at 1024 and 2048",
        None,
    ),
    ("llm", "SmolLM2-135M-shaped forward and LoRA step", None),
    ("mixlora", "LoRA vs MixLoRA vs fused adapters", None),
];

/// Timing statistics of repeated runs, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Median over the measured runs.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Number of measured runs.
    pub runs: usize,
}

/// Runs each closure `warmup` times, then interleaves them round by round (so slow
/// drifts of a shared machine hit all alike) until `budget` is spent or `max_rounds`
/// rounds are done (at least `min_rounds`).
pub fn time_interleaved(
    workloads: &mut [&mut dyn FnMut()],
    warmup: usize,
    min_rounds: usize,
    max_rounds: usize,
    budget: Duration,
) -> Vec<Timing> {
    for f in workloads.iter_mut() {
        for _ in 0..warmup {
            f();
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); workloads.len()];
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < min_rounds || (rounds < max_rounds && start.elapsed() < budget) {
        for (f, s) in workloads.iter_mut().zip(samples.iter_mut()) {
            let t = Instant::now();
            f();
            s.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rounds += 1;
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            Timing {
                median_ms: s[s.len() / 2],
                min_ms: s[0],
                runs: s.len(),
            }
        })
        .collect()
}

/// The Python named by `REFERENCE_PYTHON`, if set.
pub fn reference_python() -> Option<PathBuf> {
    std::env::var_os("REFERENCE_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Runs a reference script with `REFERENCE_PYTHON` and parses the JSON it prints last.
pub fn run_reference_script(script: &PathBuf, args: &[&str]) -> Result<serde_json::Value> {
    let python = reference_python().context("REFERENCE_PYTHON is not set")?;
    let output = Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("{} did not print JSON: {last:?}", script.display()))
}
