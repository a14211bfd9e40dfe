//! `mobiletl`: run, inspect and classify with MobileNetV2/V3 checkpoints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use mobiletl::imagenet::class_names;
use mobiletl::mobilenet::{
    Flavor, MobileNet, MobileNetArch, MobileNetConfig, Naming, checkpoint_num_classes, load_weights,
};
use mobiletl::preprocess::{Interpolation, Preprocess};
use mobiletl::tensor_file::{read_tensor, write_tensors};

#[derive(Parser)]
#[command(
    name = "mobiletl",
    version,
    about = "MobileNetV2/V3 on burn: forward, cost, classify"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Cpu,
    Wgpu,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// mobilenet_v2 | mobilenet_v3_large | mobilenet_v3_small (torchvision names) or
    /// mobilenetv2_100 | mobilenetv3_large_100 | mobilenetv3_small_100 (timm names).
    #[arg(long)]
    arch: String,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Number of classes (default: read from the checkpoint, else 1000).
    #[arg(long)]
    num_classes: Option<usize>,
}

#[derive(clap::Args)]
struct WeightArgs {
    /// safetensors checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// Parameter names of the checkpoint (default: detected from the file).
    #[arg(long, value_enum)]
    naming: Option<Naming>,
    /// Device to run on.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Subcommand)]
enum Command {
    /// Logits for an input batch: reads key `input` ([N, 3, H, W] float32), writes `logits`.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        weights: WeightArgs,
        /// safetensors file with the `input` tensor.
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write `logits` to.
        #[arg(long)]
        output: PathBuf,
    },
    /// Parameter count, in total and per layer.
    Params {
        #[command(flatten)]
        model: ModelArgs,
        /// Print every layer.
        #[arg(long)]
        per_layer: bool,
    },
    /// Multiply-adds at a resolution, in total and per layer.
    Flops {
        #[command(flatten)]
        model: ModelArgs,
        /// Input side in pixels.
        #[arg(long, default_value_t = 224)]
        resolution: usize,
        /// Print every layer.
        #[arg(long)]
        per_layer: bool,
    },
    /// Top-k ImageNet classes of images (PNG or JPEG).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        weights: WeightArgs,
        /// Shorter side after resizing.
        #[arg(long, default_value_t = 256)]
        resize: u32,
        /// Centre crop.
        #[arg(long, default_value_t = 224)]
        crop: u32,
        /// Resize filter.
        #[arg(long, value_enum, default_value = "bilinear")]
        interpolation: Interpolation,
        /// How many classes to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => bail!("this binary was built without the `wgpu` feature"),
    }
}

fn parse_arch(name: &str) -> Result<(MobileNetArch, Flavor)> {
    MobileNetArch::parse(name).with_context(|| {
        format!(
            "unknown --arch {name:?}; expected mobilenet_v2, mobilenet_v3_large, \
             mobilenet_v3_small, mobilenetv2_100, mobilenetv3_large_100 or mobilenetv3_small_100"
        )
    })
}

fn build(
    model: &ModelArgs,
    num_classes: usize,
    flavor: Flavor,
    device: &Device,
) -> Result<MobileNet> {
    let (arch, _) = parse_arch(&model.arch)?;
    if !(model.width > 0.0 && model.width.is_finite()) {
        bail!("--width must be positive, got {}", model.width);
    }
    if num_classes == 0 {
        bail!("--num-classes must be at least 1");
    }
    Ok(MobileNetConfig::new(arch)
        .with_num_classes(num_classes)
        .with_width(model.width)
        .with_flavor(flavor)
        .init(device))
}

/// Builds the model of `--arch` with its own naming's channel rules and 1000 classes
/// unless given (for counting, no weights needed).
fn build_without_weights(model: &ModelArgs) -> Result<MobileNet> {
    let (_, flavor) = parse_arch(&model.arch)?;
    build(
        model,
        model.num_classes.unwrap_or(1000),
        flavor,
        &Device::flex(),
    )
}

/// Builds the model for a checkpoint: flavour from the naming (timm names mean timm's
/// channel rules), classes from the classifier unless given.
fn load(model: &ModelArgs, weights: &WeightArgs, device: &Device) -> Result<MobileNet> {
    let (_, arch_flavor) = parse_arch(&model.arch)?;
    let file_classes = checkpoint_num_classes(&weights.weights)?;
    let naming = weights.naming.or(file_classes.map(|(n, _)| n));
    let flavor = match naming {
        Some(Naming::Timm) => Flavor::Timm,
        Some(Naming::Torchvision) => Flavor::Torchvision,
        None => arch_flavor,
    };
    let classes = model
        .num_classes
        .or(file_classes.map(|(_, c)| c))
        .unwrap_or(1000);
    let net = build(model, classes, flavor, device)?;
    Ok(load_weights(net, &weights.weights, naming)?)
}

fn print_table(report: &irb_core::CostReport, per_layer: bool, macs: bool) {
    if per_layer {
        println!(
            "{:<40} {:<16} {:>10} {:>14}  output",
            "layer", "kind", "params", "MACs"
        );
        for l in &report.layers {
            println!(
                "{:<40} {:<16} {:>10} {:>14}  {:?}",
                l.name, l.kind, l.params, l.macs, l.output
            );
        }
    }
    if macs {
        println!(
            "total MACs: {} ({:.1} M)",
            report.macs(),
            report.macs() as f64 / 1e6
        );
    }
    println!(
        "total params: {} ({:.3} M)",
        report.params(),
        report.params() as f64 / 1e6
    );
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward {
            model,
            weights,
            input,
            output,
        } => {
            let device = device(weights.device)?;
            let net = load(&model, &weights, &device)?;
            let x: Tensor<4> = read_tensor(&input, "input", &device)?;
            let [_, channels, h, w] = x.dims();
            if channels != 3 || h < 32 || w < 32 {
                bail!(
                    "input in {} must be [N, 3, H, W] with H, W >= 32, got {:?}",
                    input.display(),
                    x.dims()
                );
            }
            let logits = net.forward(x);
            write_tensors(&output, &[("logits", logits.to_data())])?;
            println!("wrote logits {:?} to {}", logits.dims(), output.display());
        }
        Command::Params { model, per_layer } => {
            let net = build_without_weights(&model)?;
            print_table(&net.cost(224), per_layer, false);
        }
        Command::Flops {
            model,
            resolution,
            per_layer,
        } => {
            if resolution < 32 {
                bail!("--resolution must be at least 32");
            }
            let net = build_without_weights(&model)?;
            print_table(&net.cost(resolution), per_layer, true);
        }
        Command::Classify {
            model,
            weights,
            resize,
            crop,
            interpolation,
            top,
            images,
        } => {
            let device = device(weights.device)?;
            let net = load(&model, &weights, &device)?;
            let names = class_names();
            let preprocess = Preprocess {
                resize,
                crop,
                interpolation,
                ..Preprocess::default()
            };
            for image in &images {
                let x = preprocess.load(image, &device)?;
                let probs = burn::tensor::activation::softmax(net.forward(x), 1);
                let probs = probs
                    .to_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                println!("{}", image.display());
                for (rank, (class, p)) in top_k(&probs, top).into_iter().enumerate() {
                    let name = names.get(class).copied().unwrap_or("?");
                    println!("  {}. {:>6.2}%  {class:>4}  {name}", rank + 1, 100.0 * p);
                }
            }
        }
    }
    Ok(())
}

fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut indexed: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    indexed.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    indexed.truncate(k);
    indexed
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
