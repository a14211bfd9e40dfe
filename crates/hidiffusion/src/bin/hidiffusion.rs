//! `hidiffusion`: text-to-image from a diffusers folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Device, Tensor, TensorData};
use clap::{Parser, Subcommand, ValueEnum};
use hidiffusion::msw_msa::{CycledShifts, SeededShifts, ShiftSource};
use hidiffusion::pipeline::{LoadOptions, Request, StableDiffusion, to_rgb8};
use hidiffusion::scheduler::SamplerKind;
use hidiffusion::unet::NoHooks;
use hidiffusion::{HiDiffusion, HiDiffusionConfig};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::{Dtype, SafeTensors};

#[derive(Parser)]
#[command(
    name = "hidiffusion",
    version,
    about = "Stable Diffusion and HiDiffusion on burn"
)]
struct Cli {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu, global = true)]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    /// burn's flex CPU backend.
    Cpu,
    /// burn's wgpu backend (build with `--features wgpu`).
    Wgpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sampler {
    /// DDIM (`--eta` sets its noise).
    Ddim,
    /// Euler ancestral.
    EulerA,
}

/// What both `generate` and `compare` take.
#[derive(clap::Args)]
struct GenerateArgs {
    /// diffusers folder (model_index.json, unet/, vae/, text_encoder/, ...).
    #[arg(long)]
    model: PathBuf,
    /// Prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Width in pixels (multiple of 8; default: the model's native size, 512 for SD 1.5,
    /// 1024 for SDXL, from unet sample_size x the VAE's scale factor).
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels (multiple of 8; default: the model's native size).
    #[arg(long)]
    height: Option<usize>,
    /// Sampling steps (default 50; 4 for SDXL-turbo).
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance scale (default 7.5; 0 for SDXL-turbo).
    #[arg(long)]
    guidance: Option<f64>,
    /// Seed of the initial noise (and of MSW-MSA's window shifts).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// DDIM eta.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Sampler (default: the folder's scheduler class; DDIM for any other).
    #[arg(long, value_enum)]
    sampler: Option<Sampler>,
    /// Start from these latents (safetensors, key `latents`, `[1, C, H/f, W/f]`: the
    /// VAE's latent channels and scale factor, 4 and 8 for Stable Diffusion).
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Read `*.fp16.safetensors` weights where both variants exist.
    #[arg(long)]
    fp16: bool,
    /// Use the text encoder's hidden state this many layers before the last.
    #[arg(long)]
    clip_skip: Option<usize>,
    /// HiDiffusion: leave RAU-Net out.
    #[arg(long)]
    no_rau_net: bool,
    /// HiDiffusion: leave MSW-MSA out.
    #[arg(long)]
    no_msw_msa: bool,
    /// HiDiffusion: the fraction of steps of the T1 mechanism (preset default).
    #[arg(long)]
    t1_ratio: Option<f64>,
    /// HiDiffusion: the fraction of steps of the T2 mechanism (preset default).
    #[arg(long)]
    t2_ratio: Option<f64>,
    /// HiDiffusion: shift every MSW-MSA window by N quarter windows (0..=3) instead of
    /// drawing the shift per call from the seed; the official code draws it from
    /// PyTorch's generator, so a fixed shift is how runs are compared with it.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..4))]
    msw_shift_index: Option<u8>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Generates one image.
    Generate {
        /// The image.
        #[command(flatten)]
        args: GenerateArgs,
        /// Apply HiDiffusion (RAU-Net and MSW-MSA) with the official presets.
        #[arg(long)]
        hidiffusion: bool,
        /// Also write the final latents (key `latents`) here.
        #[arg(long)]
        save_latents: Option<PathBuf>,
    },
    /// Generates the same seed without and with HiDiffusion and writes them side by
    /// side (left: vanilla, right: HiDiffusion), with the time of each on stderr.
    Compare {
        /// The images.
        #[command(flatten)]
        args: GenerateArgs,
    },
}

fn device(choice: DeviceChoice) -> Result<Device, String> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => Err("this binary was built without the `wgpu` feature".into()),
    }
}

fn read_latents(path: &Path, device: &Device) -> Result<Tensor<4>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{} is not a safetensors file: {e}", path.display()))?;
    let view = file
        .tensor("latents")
        .map_err(|_| format!("{} has no `latents` tensor", path.display()))?;
    let shape = view.shape().to_vec();
    if shape.len() != 4 || view.dtype() != Dtype::F32 {
        return Err(format!(
            "`latents` in {} must be f32 [1, channels, h, w], got {:?} {shape:?}",
            path.display(),
            view.dtype()
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn load(args: &GenerateArgs, device: &Device) -> Result<(StableDiffusion, Request), String> {
    for (name, ratio) in [("--t1-ratio", args.t1_ratio), ("--t2-ratio", args.t2_ratio)] {
        if let Some(r) = ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("{name} must be in [0, 1], got {r}"));
        }
    }
    eprintln!("loading {} ...", args.model.display());
    let sd = StableDiffusion::from_diffusers_dir(
        &args.model,
        device,
        LoadOptions {
            prefer_fp16: args.fp16,
            kind: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut request = sd.request(&args.prompt);
    request.negative_prompt = args.negative_prompt.clone();
    if let Some(w) = args.width {
        request.width = w;
    }
    if let Some(h) = args.height {
        request.height = h;
    }
    if let Some(s) = args.steps {
        request.steps = s;
    }
    if let Some(g) = args.guidance {
        request.guidance = g;
    }
    request.seed = args.seed;
    request.eta = args.eta;
    request.clip_skip = args.clip_skip;
    request.sampler = args.sampler.map(|s| match s {
        Sampler::Ddim => SamplerKind::Ddim,
        Sampler::EulerA => SamplerKind::EulerAncestral,
    });
    if let Some(path) = &args.init_latents {
        request.init_latents = Some(read_latents(path, device)?);
    }
    Ok((sd, request))
}

/// Samples `request`, with HiDiffusion when `hidiffusion`, behind a progress bar.
fn sample(
    sd: &StableDiffusion,
    request: &Request,
    args: &GenerateArgs,
    hidiffusion: bool,
) -> Result<Tensor<4>, String> {
    let bar = ProgressBar::new(request.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let mut on_step = |info: hidiffusion::pipeline::StepInfo| {
        bar.set_position(info.done as u64);
        bar.set_message(format!("t={}", info.timestep));
    };
    let latents = if hidiffusion {
        let config = HiDiffusionConfig {
            rau_net: !args.no_rau_net,
            msw_msa: !args.no_msw_msa,
            t1_ratio: args.t1_ratio,
            t2_ratio: args.t2_ratio,
            ..HiDiffusionConfig::for_model(sd.kind)
        };
        eprintln!(
            "HiDiffusion for {:?}: RAU-Net {}, MSW-MSA {}",
            sd.kind, config.rau_net, config.msw_msa
        );
        let shifts: Box<dyn ShiftSource> = match args.msw_shift_index {
            Some(k) => Box::new(CycledShifts {
                cycle: vec![usize::from(k)],
                next: 0,
            }),
            None => Box::new(SeededShifts::new(request.seed)),
        };
        sd.sample(
            request,
            &mut HiDiffusion::with_shifts(config, shifts),
            &mut on_step,
        )?
    } else {
        sd.sample(request, &mut NoHooks, &mut on_step)?
    };
    bar.finish();
    Ok(latents)
}

fn write_png(image: &image::RgbImage, out: &Path) -> Result<(), String> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    write_atomic(out, &png)?;
    eprintln!(
        "wrote {} ({}x{})",
        out.display(),
        image.width(),
        image.height()
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    let device = device(cli.device)?;
    match cli.command {
        Command::Generate {
            args,
            hidiffusion,
            save_latents,
        } => {
            let hidiffusion_options = args.no_rau_net
                || args.no_msw_msa
                || args.t1_ratio.is_some()
                || args.t2_ratio.is_some();
            if hidiffusion_options && !hidiffusion {
                return Err(
                    "--no-rau-net, --no-msw-msa, --t1-ratio and --t2-ratio need --hidiffusion"
                        .into(),
                );
            }
            let (sd, request) = load(&args, &device)?;
            let latents = sample(&sd, &request, &args, hidiffusion)?;
            if let Some(path) = &save_latents {
                let dims = latents.dims();
                let values: Vec<f32> = latents
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .map_err(|e| format!("{e:?}"))?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let view = safetensors::tensor::TensorView::new(Dtype::F32, dims.to_vec(), &bytes)
                    .map_err(|e| e.to_string())?;
                let data =
                    safetensors::serialize([("latents", view)], None).map_err(|e| e.to_string())?;
                write_atomic(path, &data)?;
            }
            write_png(&to_rgb8(sd.decode(latents)), &args.out)?;
        }
        Command::Compare { args } => {
            let (sd, request) = load(&args, &device)?;
            let mut images = Vec::new();
            for hidiffusion in [false, true] {
                let start = std::time::Instant::now();
                let latents = sample(&sd, &request, &args, hidiffusion)?;
                eprintln!(
                    "{}: {:.1} s of sampling",
                    if hidiffusion {
                        "HiDiffusion"
                    } else {
                        "vanilla"
                    },
                    start.elapsed().as_secs_f64()
                );
                images.push(to_rgb8(sd.decode(latents)));
            }
            let (w, h) = images[0].dimensions();
            // A 16-pixel white gap between the two.
            let gap = 16;
            let mut grid = image::RgbImage::from_pixel(2 * w + gap, h, image::Rgb([255, 255, 255]));
            image::imageops::replace(&mut grid, &images[0], 0, 0);
            image::imageops::replace(&mut grid, &images[1], i64::from(w + gap), 0);
            write_png(&grid, &args.out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
