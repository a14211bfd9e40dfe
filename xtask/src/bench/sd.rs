//! One UNet step of the Stable Diffusion 1.5 architecture (random weights, f32) on flex
//! against diffusers on PyTorch CPU (`tools/reference/bench/sd.py`): latents
//! `[2, 4, 64, 64]` (512x512 with classifier-free guidance), `[2, 77, 768]` text
//! embeddings; whole-step time, time per down / mid / up block, peak heap.

use std::time::{Duration, Instant};

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use hidiffusion::attention::{Path, SelfAttentionHook};
use hidiffusion::config::released_unet_config;
use hidiffusion::pipeline::ModelKind;
use hidiffusion::unet::{UNet, UNetHooks};
use hidiffusion::weights::Weights;

use super::alloc::measure;
use super::{reference_python, run_reference_script, time_interleaved};
use crate::report::{Report, Table, fmt_f};

/// Times each block: syncs the device when a block finishes and charges the time since
/// the previous block's end to it.
struct BlockTimer {
    device: Device,
    last: Instant,
    times: Vec<(String, f64)>,
}

impl SelfAttentionHook for BlockTimer {}
impl UNetHooks for BlockTimer {
    fn after_block(&mut self, path: Path, block: usize, x: &Tensor<4>) {
        let _ = x;
        self.device.sync().expect("device sync");
        let now = Instant::now();
        let name = match path {
            Path::Down => format!("down{block}"),
            Path::Mid => "mid0".to_string(),
            Path::Up => format!("up{block}"),
        };
        self.times
            .push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

/// Arguments: `--quick` (32x32 latents, one run).
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let latent = if quick { 32 } else { 64 };
    let runs = if quick { 1 } else { 3 };
    let reference = match reference_python() {
        Some(_) => {
            println!("running tools/reference/bench/sd.py ...");
            let script = crate::workspace_root().join("tools/reference/bench/sd.py");
            let (l, r) = (latent.to_string(), runs.to_string());
            Some(run_reference_script(
                &script,
                &["--latent", &l, "--runs", &r],
            )?)
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
    println!("building the SD 1.5 UNet with random weights ...");
    let config = released_unet_config(ModelKind::Sd1);
    let mut weights = Weights::random(&device);
    let unet = UNet::load(&config, &mut weights);
    let sample = Tensor::<4>::random(
        [2, 4, latent, latent],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let context = Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    println!("timing UNet steps at {latent}x{latent} latents ...");
    let mut step = || {
        drop(unet.forward(sample.clone(), 981.0, &context, None));
        device.sync().expect("device sync");
    };
    let timing = time_interleaved(&mut [&mut step], 1, runs, runs, Duration::ZERO);
    let (_, _, peak) = measure(|| unet.forward(sample.clone(), 981.0, &context, None));
    let mut timer = BlockTimer {
        device: device.clone(),
        last: Instant::now(),
        times: Vec::new(),
    };
    timer.last = Instant::now();
    drop(unet.forward_with(sample.clone(), 981.0, &context, None, &mut timer));

    let mut columns = vec!["part", "flex ms"];
    if reference.is_some() {
        columns.extend(["torch ms", "flex / torch"]);
    }
    let mut table = Table::new(
        format!(
            "SD 1.5 UNet, one step, latents [2, 4, {latent}, {latent}] ({}x{} with CFG), random weights, f32",
            latent * 8,
            latent * 8
        ),
        &columns,
    );
    let mut row = |name: &str, ms: f64, key: &str| {
        let mut cells = vec![name.to_string(), fmt_f(ms, 0)];
        if reference.is_some() {
            match torch(key) {
                Some(t) => cells.extend([fmt_f(t, 0), fmt_f(ms / t, 2)]),
                None => cells.extend(["-".into(), "-".into()]),
            }
        }
        table.row(cells);
    };
    row("whole step (median)", timing[0].median_ms, "step_ms");
    for (name, ms) in &timer.times {
        row(&format!("  {name}"), *ms, &format!("{name}_ms"));
    }
    let mut mem = vec![
        "peak heap MB (flex) / RSS growth MB (torch)".to_string(),
        fmt_f(peak as f64 / 1e6, 0),
    ];
    if reference.is_some() {
        mem.extend([
            torch("peak_mb")
                .map(|p| fmt_f(p, 0))
                .unwrap_or_else(|| "-".into()),
            "-".into(),
        ]);
    }
    table.row(mem);
    table.note(format!(
        "{} runs after one warm-up on this shared 2-core machine; read the ratios. Block times \
         come from one further run with a device sync after each block (torch: forward hooks). \
         flex peak: the most heap bytes live above the starting level during one step (counting \
         allocator); torch: growth of the process's peak RSS over the timed runs. flex's down0 \
         includes the time embedding and conv_in, its up3 the output layers.",
        runs
    ));
    let mut report = Report::new("bench-sd", "cargo xtask bench sd");
    report.tables.push(table);
    Ok(report)
}
