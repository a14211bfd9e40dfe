//! HiDiffusion's efficiency claim, measured: one UNet call of the Stable Diffusion 1.5
//! architecture (random weights, f32, batch 1) at 1024x1024 and 2048x2048
//! (latents 128 and 256), vanilla vs RAU-Net vs MSW-MSA vs both, in each phase of the
//! official schedule (RAD / T2 pooling early, vanilla late), weighted as a 50-step run
//! weights them; with the multiply-accumulates of every call beside its time.

use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
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

    /// The name `--variants` takes.
    pub fn flag(self) -> &'static str {
        match self {
            Variant::Vanilla => "vanilla",
            Variant::RauNet => "rau-net",
            Variant::MswMsa => "msw-msa",
            Variant::Both => "both",
        }
    }
}

/// Columns of the summary table; `carry_over` merges earlier rows only into this layout.
const SUMMARY_COLUMNS: [&str; 7] = [
    "size",
    "variant",
    "projected s",
    "time vs vanilla",
    "GMACs / run",
    "MACs vs vanilla",
    "paper",
];

/// The value following `flag` in `args`, if the flag is present.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Result<Option<&'a str>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => match args.get(i + 1) {
            Some(v) => Ok(Some(v.as_str())),
            None => bail!("{flag} needs a value"),
        },
    }
}

/// `--variants rau-net,both`: the variants to time. Vanilla is always timed, since every
/// other variant is reported relative to it.
fn parse_variants(list: Option<&str>) -> Result<Vec<Variant>> {
    let Some(list) = list else {
        return Ok(Variant::ALL.to_vec());
    };
    let mut chosen = vec![Variant::Vanilla];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let variant = Variant::ALL
            .into_iter()
            .find(|v| v.flag() == name)
            .with_context(|| {
                format!("unknown variant {name:?} in --variants (vanilla, rau-net, msw-msa, both)")
            })?;
        if !chosen.contains(&variant) {
            chosen.push(variant);
        }
    }
    // Table order, whatever the order on the command line.
    chosen.sort_by_key(|v| Variant::ALL.iter().position(|a| a == v));
    Ok(chosen)
}

/// `--sizes 1024,2048` (pixels, multiples of 64).
fn parse_sizes(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|x| {
            let px: usize = x
                .trim()
                .parse()
                .with_context(|| format!("--sizes: {x:?} is not a pixel count"))?;
            ensure!(
                px >= 64 && px.is_multiple_of(64),
                "--sizes: {px} is not a positive multiple of 64"
            );
            Ok(px)
        })
        .collect()
}

/// The size (pixels) a table of this benchmark is about: the summary's first cell, or the
/// `NxN` in a per-call table's title.
fn size_of_row(row: &[String]) -> Option<usize> {
    row.first()?.split('x').next()?.parse().ok()
}

fn size_of_call_table(table: &Table) -> Option<usize> {
    let after = table.title.split(" at ").nth(1)?;
    after.split('x').next()?.parse().ok()
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

/// Arguments: `--quick` (512 and 1024 px: latents 64 and 128), `--sizes 1024,2048`,
/// `--variants rau-net,msw-msa,both` (vanilla always runs).
///
/// A vanilla call at 2048 px takes over half an hour on 2 cores, so sizes can be measured
/// in separate runs: rows of sizes not measured now are carried over from the previous
/// `results/bench/hidiffusion.json`, with a note saying when they were measured.
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = match flag_value(args, "--sizes")? {
        Some(list) => parse_sizes(list)?,
        None if quick => vec![512, 1024],
        None => vec![1024, 2048],
    };
    let variants = parse_variants(flag_value(args, "--variants")?)?;
    let previous = if quick { None } else { previous_report()? };
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
        &SUMMARY_COLUMNS,
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
        for &variant in &variants {
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
    if let Some(previous) = &previous {
        carry_over(previous, &sizes, &mut summary, &mut report.tables);
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

/// The report of the previous run (`results/bench/hidiffusion.json`), if there is one.
fn previous_report() -> Result<Option<Report>> {
    let path = crate::workspace_root().join("results/bench/hidiffusion.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a benchmark report", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Adds the rows and per-call tables of `previous` for sizes not in `measured`, sorted
/// by size, each with a note saying when it was measured.
fn carry_over(previous: &Report, measured: &[usize], summary: &mut Table, calls: &mut Vec<Table>) {
    let Some(old_summary) = previous.tables.first() else {
        return;
    };
    if old_summary.columns != summary.columns {
        // Another layout (an older version of this benchmark): nothing to merge.
        return;
    }
    let mut carried: Vec<usize> = Vec::new();
    for row in &old_summary.rows {
        if let Some(px) = size_of_row(row).filter(|px| !measured.contains(px)) {
            summary.rows.push(row.clone());
            if !carried.contains(&px) {
                carried.push(px);
            }
        }
    }
    summary.rows.sort_by_key(|row| size_of_row(row));
    for table in previous.tables.iter().skip(1) {
        if size_of_call_table(table).is_some_and(|px| carried.contains(&px)) {
            let mut table = table.clone();
            table.note(format!(
                "Measured in an earlier run ({}), carried over.",
                previous.environment
            ));
            calls.push(table);
        }
    }
    calls.sort_by_key(size_of_call_table);
    for px in carried {
        summary.note(format!(
            "{px}x{px} rows: from an earlier run ({}), carried over.",
            previous.environment
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_always_include_vanilla_in_table_order() {
        assert_eq!(parse_variants(None).unwrap(), Variant::ALL.to_vec());
        assert_eq!(
            parse_variants(Some("both,rau-net")).unwrap(),
            vec![Variant::Vanilla, Variant::RauNet, Variant::Both]
        );
        let err = parse_variants(Some("both,fast")).unwrap_err().to_string();
        assert!(err.contains("\"fast\""), "{err}");
    }

    #[test]
    fn sizes_must_be_multiples_of_64() {
        assert_eq!(parse_sizes("1024, 2048").unwrap(), vec![1024, 2048]);
        assert!(
            parse_sizes("1000")
                .unwrap_err()
                .to_string()
                .contains("1000")
        );
        assert!(parse_sizes("big").unwrap_err().to_string().contains("big"));
    }

    fn summary() -> Table {
        Table::new("summary", &SUMMARY_COLUMNS)
    }

    fn calls_at(px: usize) -> Table {
        Table::new(
            format!("SD 1.5 UNet, one call at {px}x{px} (latent), batch 1, flex"),
            &["variant"],
        )
    }

    #[test]
    fn sizes_not_measured_now_are_carried_over_in_size_order() {
        let mut old_summary = summary();
        for px in [1024, 2048] {
            old_summary.row([
                format!("{px}x{px}"),
                "vanilla".into(),
                "1".into(),
                "+0%".into(),
                "1".into(),
                "+0%".into(),
                "-".into(),
            ]);
        }
        let previous = Report {
            name: "bench-hidiffusion".into(),
            command: "cargo xtask bench hidiffusion".into(),
            environment: "2 CPUs, linux/x86_64, 2026-12-01".into(),
            tables: vec![old_summary, calls_at(1024), calls_at(2048)],
            claims: Vec::new(),
        };
        let mut now = summary();
        now.row(["2048x2048", "vanilla", "2", "+0%", "2", "+0%", "-"]);
        let mut tables = vec![calls_at(2048)];
        carry_over(&previous, &[2048], &mut now, &mut tables);
        let sizes: Vec<_> = now
            .rows
            .iter()
            .map(|r| (r[0].clone(), r[2].clone()))
            .collect();
        assert_eq!(
            sizes,
            vec![
                ("1024x1024".into(), "1".into()),
                ("2048x2048".into(), "2".into())
            ]
        );
        assert_eq!(
            tables.iter().map(size_of_call_table).collect::<Vec<_>>(),
            vec![Some(1024), Some(2048)]
        );
        assert!(tables[0].notes[0].contains("2026-12-01"));
        assert!(now.notes[0].contains("1024x1024 rows"));
    }
}
