//! HiDiffusion's efficiency claim, measured: one UNet call of the Stable Diffusion 1.5
//! architecture (random weights, f32, batch 1) at 1024x1024 and 2048x2048
//! (latents 128 and 256), vanilla vs RAU-Net vs MSW-MSA vs both, in each phase of the
//! official schedule (RAD / T2 pooling early, vanilla late), weighted as a 50-step run
//! weights them; with the multiply-accumulates of every call beside its time.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use hidiffusion::config::released_unet_config;
use hidiffusion::cost::{UNetMacs, unet_macs};
use hidiffusion::pipeline::ModelKind;
use hidiffusion::rau_net::{ActiveMechanisms, HiDiffusion, HiDiffusionConfig};
use hidiffusion::unet::{NoHooks, UNet};
use hidiffusion::weights::Weights;

use super::alloc::measure;
use crate::report::{Report, Table, fmt_f};

/// The paper's sampling length.
pub const STEPS: usize = 50;

/// One configuration of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Plain UNet.
    Vanilla,
    /// RAU-Net alone.
    RauNet,
    /// MSW-MSA alone.
    MswMsa,
    /// Both (HiDiffusion).
    Both,
}

impl Variant {
    /// All, in table order.
    pub const ALL: [Variant; 4] = [
        Variant::Vanilla,
        Variant::RauNet,
        Variant::MswMsa,
        Variant::Both,
    ];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Vanilla => "vanilla",
            Variant::RauNet => "RAU-Net",
            Variant::MswMsa => "MSW-MSA",
            Variant::Both => "HiDiffusion (both)",
        }
    }

    /// The HiDiffusion settings (`None`: no hooks).
    pub fn config(self) -> Option<HiDiffusionConfig> {
        let base = HiDiffusionConfig::for_model(ModelKind::Sd1);
        match self {
            Variant::Vanilla => None,
            Variant::RauNet => Some(HiDiffusionConfig {
                msw_msa: false,
                ..base
            }),
            Variant::MswMsa => Some(HiDiffusionConfig {
                rau_net: false,
                ..base
            }),
            Variant::Both => Some(base),
        }
    }
}

/// Per variant: the distinct UNet calls of a `STEPS`-step run (what runs, on how many
/// steps), from the official schedule at `latent`.
pub fn schedule(variant: Variant, latent: [usize; 2]) -> Vec<(ActiveMechanisms, usize)> {
    let mut calls: Vec<(ActiveMechanisms, usize)> = Vec::new();
    for step in 0..STEPS {
        let active = variant
            .config()
            .map(|c| c.active(step, STEPS, latent))
            .unwrap_or_default();
        match calls.iter_mut().find(|(a, _)| *a == active) {
            Some((_, n)) => *n += 1,
            None => calls.push((active, 1)),
        }
    }
    calls
}

/// A representative step index for `active` under `variant` at `latent`.
fn step_for(variant: Variant, latent: [usize; 2], active: ActiveMechanisms) -> usize {
    (0..STEPS)
        .find(|&s| {
            variant
                .config()
                .map(|c| c.active(s, STEPS, latent))
                .unwrap_or_default()
                == active
        })
        .expect("a step of the schedule")
}

/// The multiply-accumulates of one call of `variant` at `step`.
pub fn call_macs(unet: &UNet, variant: Variant, latent: [usize; 2], step: usize) -> UNetMacs {
    let mechanisms = variant
        .config()
        .map(|c| HiDiffusion::new(c, 0).counted(step, STEPS, latent))
        .unwrap_or_default();
    unet_macs(unet, 1, latent, 77, mechanisms)
}

fn describe(active: ActiveMechanisms) -> &'static str {
    match (active.rad, active.pool) {
        (true, true) => "RAD + T2 pool",
        (true, false) => "RAD",
        (false, true) => "T2 pool",
        (false, false) => "no RAU-Net",
    }
}

/// Arguments: `--quick` (512 and 1024 px: latents 64 and 128), `--sizes 1024,2048`.
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default(),
        None if quick => vec![512, 1024],
        None => vec![1024, 2048],
    };
    let device = Device::flex();
    device.seed(0);
    println!("building the SD 1.5 UNet with random weights ...");
    let config = released_unet_config(ModelKind::Sd1);
    let unet = UNet::load(&config, &mut Weights::random(&device));
    let context = Tensor::<3>::random([1, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    let mut report = Report::new("bench-hidiffusion", "cargo xtask bench hidiffusion");
    let mut summary = Table::new(
        format!(
            "Projected {STEPS}-step run (batch 1), SD 1.5 architecture: time and GMACs vs vanilla"
        ),
        &[
            "size",
            "variant",
            "projected s",
            "time vs vanilla",
            "GMACs / run",
            "MACs vs vanilla",
            "paper",
        ],
    );
    for &px in &sizes {
        let latent = [px / 8, px / 8];
        let sample = Tensor::<4>::random(
            [1, 4, latent[0], latent[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mut calls = Table::new(
            format!(
                "SD 1.5 UNet, one call at {px}x{px} (latent {}x{}), batch 1, flex",
                latent[0], latent[1]
            ),
            &[
                "variant",
                "phase",
                "steps of 50",
                "seconds",
                "peak heap GB",
                "GMACs",
                "attention GMACs",
            ],
        );
        let mut vanilla = (0.0, 0.0);
        // Calls with the same mechanisms are timed once and shared between variants.
        let mut timed: Vec<((bool, bool, bool), f64, usize)> = Vec::new();
        for variant in Variant::ALL {
            let (mut seconds, mut macs) = (0.0, 0.0);
            for (active, steps) in schedule(variant, latent) {
                let step = step_for(variant, latent, active);
                let counted = call_macs(&unet, variant, latent, step);
                let windows = matches!(variant, Variant::MswMsa | Variant::Both);
                let key = (active.rad, active.pool, windows);
                let (secs, peak) = match timed.iter().find(|(k, _, _)| *k == key) {
                    Some(&(_, s, p)) => (s, p),
                    None => {
                        println!(
                            "  {px}px {} / {}: timing one call ...",
                            variant.name(),
                            describe(active)
                        );
                        let start = Instant::now();
                        let (_, _, peak) = measure(|| match variant.config() {
                            None => unet.forward_with(
                                sample.clone(),
                                981.0,
                                &context,
                                None,
                                &mut NoHooks,
                            ),
                            Some(c) => {
                                let mut hooks = HiDiffusion::new(c, 0);
                                hooks.set_step(step, STEPS);
                                unet.forward_with(sample.clone(), 981.0, &context, None, &mut hooks)
                            }
                        });
                        device.sync().expect("device sync");
                        let s = start.elapsed().as_secs_f64();
                        timed.push((key, s, peak));
                        (s, peak)
                    }
                };
                calls.row([
                    variant.name().to_string(),
                    describe(active).to_string(),
                    steps.to_string(),
                    fmt_f(secs, 1),
                    fmt_f(peak as f64 / 1e9, 2),
                    fmt_f(counted.total() / 1e9, 0),
                    fmt_f(counted.attention / 1e9, 0),
                ]);
                seconds += secs * steps as f64;
                macs += counted.total() * steps as f64;
            }
            if variant == Variant::Vanilla {
                vanilla = (seconds, macs);
            }
            summary.row([
                format!("{px}x{px}"),
                variant.name().to_string(),
                fmt_f(seconds, 0),
                format!("{:+.0}%", (seconds / vanilla.0 - 1.0) * 100.0),
                fmt_f(macs / 1e9, 0),
                format!("{:+.0}%", (macs / vanilla.1 - 1.0) * 100.0),
                if variant == Variant::Both {
                    "-40% to -60%".into()
                } else {
                    "-".into()
                },
            ]);
        }
        calls.note(
            "One timed call per distinct configuration on this shared 2-core machine (no \
             repetition: calls take minutes); the phase column is what RAU-Net runs in that \
             call under the official preset for this size (sd15_1024: RAD on 40% of steps; \
             sd15_2048: RAD on 70%, T2 pooling on 30%). MSW-MSA runs on every step. Peak \
             heap: the most bytes live above the starting level during the call (counting \
             allocator). MACs from hidiffusion::cost (convolutions, linear layers, attention).",
        );
        report.tables.push(calls);
    }
    summary.note(
        "Projected run = sum over the 50 steps of the measured call time of each step's \
         configuration (text encoding and VAE decoding, the same for every variant, left out). \
         The paper's 40-60% is for whole runs of HiDiffusion against direct high-resolution \
         inference.",
    );
    report.tables.insert(0, summary);
    Ok(report)
}
