//! `mobiletl`: run, inspect and classify with MobileNetV2/V3 checkpoints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use mobiletl::data::{CifarVariant, ImageList, ImageSource, Split, SyntheticShapes, load_cifar};
use mobiletl::heap::CountingAllocator;
use mobiletl::imagenet::class_names;
use mobiletl::method::Method;
use mobiletl::method::measured_memory::measure_network;
use mobiletl::method::training_cost::{Part, TrainingCost, network_cost};
use mobiletl::mobilenet::{
    Flavor, MobileNet, MobileNetArch, MobileNetConfig, Naming, checkpoint_num_classes, load_weights,
};
use mobiletl::preprocess::{Interpolation, Preprocess};
use mobiletl::tensor_file::{read_tensor, write_tensors};
use mobiletl::train::{FineTuner, FinetuneOptions, OptimizerKind, RunDir};

// Counts live heap bytes for `memory --measure`.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(
    name = "mobiletl",
    version,
    about = "MobileNetV2/V3 on burn and MobileTL: forward, cost, training memory, classify"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    Cpu,
    Wgpu,
}

#[derive(clap::Args, Clone)]
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

#[derive(clap::Args)]
struct MethodArgs {
    /// Fine-tuning method.
    #[arg(long, value_enum, default_value = "mobiletl")]
    method: Method,
    /// K of FT-K: how many top blocks train (mobiletl, vanilla).
    #[arg(long, default_value_t = 5)]
    blocks: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetChoice {
    /// CIFAR-10 binary (`cifar-10-batches-bin/`).
    Cifar10,
    /// CIFAR-100 binary (`cifar-100-binary/`).
    Cifar100,
    /// Oxford Flowers-102 (`jpg/`, `imagelabels.mat`, `setid.mat`).
    Flowers102,
    /// Oxford-IIIT Pets (`images/`, `annotations/trainval.txt`, `annotations/test.txt`).
    Pets,
    /// `DATA_DIR/train/<class>/*` and `DATA_DIR/test/<class>/*`.
    Folder,
    /// Four synthetic shapes (no download).
    Synthetic,
}

#[derive(clap::Args)]
struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pretrained safetensors checkpoint (torchvision or timm names); without it the
    /// network starts from random weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Parameter names of the checkpoint (default: detected).
    #[arg(long, value_enum)]
    naming: Option<Naming>,
    /// Dataset.
    #[arg(long, value_enum)]
    dataset: DatasetChoice,
    /// Where the dataset is unpacked.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    method: MethodArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Initial learning rate (cosine schedule).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Final learning rate.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerKind,
    /// Decoupled weight decay (adamw).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f32,
    /// Network input side.
    #[arg(long, default_value_t = 224)]
    resolution: u32,
    /// Smallest area fraction of the random resized training crop.
    #[arg(long, default_value_t = 0.08)]
    crop_scale: f32,
    /// Evaluation centre-crop fraction (the shorter side is resized to resolution /
    /// fraction first; 1: resize straight to the resolution).
    #[arg(long, default_value_t = 0.875)]
    eval_crop_fraction: f32,
    /// Seed of shuffling, augmentation and the new classifier.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on this many images of the training split (a fixed random subset), for
    /// quick runs.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Test on this many images of the test split (a fixed random subset).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Evaluate on the test split after every epoch, not only at the end.
    #[arg(long)]
    eval_every_epoch: bool,
    /// Run directory (checkpoints, state.json).
    #[arg(long)]
    run_dir: PathBuf,
    /// Continue the run in --run-dir.
    #[arg(long)]
    resume: bool,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceChoice,
}

/// A fixed random subset of another source.
struct Subset {
    inner: Box<dyn ImageSource>,
    indices: Vec<usize>,
}

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn read(&self, index: usize) -> Result<(image::RgbImage, usize), mobiletl::data::DataError> {
        self.inner.read(self.indices[index])
    }
}

fn limited(source: Box<dyn ImageSource>, limit: Option<usize>) -> Box<dyn ImageSource> {
    match limit {
        Some(n) if n < source.len() => {
            // A seeded random subset: evenly spaced indices would alias with datasets
            // stored class by class or with labels cycling with the index.
            use rand::SeedableRng;
            use rand::seq::SliceRandom;
            let mut indices: Vec<usize> = (0..source.len()).collect();
            indices.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed));
            indices.truncate(n);
            indices.sort_unstable();
            Box::new(Subset {
                inner: source,
                indices,
            })
        }
        _ => source,
    }
}

/// The training and test splits of `--dataset`.
fn datasets(args: &FinetuneArgs) -> Result<(Box<dyn ImageSource>, Box<dyn ImageSource>)> {
    let dir = || {
        args.data_dir
            .clone()
            .context("--data-dir is required for this dataset")
    };
    let (train, test): (Box<dyn ImageSource>, Box<dyn ImageSource>) = match args.dataset {
        DatasetChoice::Cifar10 | DatasetChoice::Cifar100 => {
            let variant = if args.dataset == DatasetChoice::Cifar10 {
                CifarVariant::Cifar10
            } else {
                CifarVariant::Cifar100
            };
            let dir = dir()?;
            (
                Box::new(load_cifar(&dir, variant, Split::Train)?),
                Box::new(load_cifar(&dir, variant, Split::Test)?),
            )
        }
        DatasetChoice::Flowers102 => {
            let dir = dir()?;
            (
                Box::new(ImageList::flowers102(&dir, true)?),
                Box::new(ImageList::flowers102(&dir, false)?),
            )
        }
        DatasetChoice::Pets => {
            let dir = dir()?;
            (
                Box::new(ImageList::pets(&dir, true)?),
                Box::new(ImageList::pets(&dir, false)?),
            )
        }
        DatasetChoice::Folder => {
            let dir = dir()?;
            let train = ImageList::folder(&dir.join("train"))?;
            let test = ImageList::folder(&dir.join("test"))?;
            if train.classes != test.classes {
                bail!(
                    "{} and {} hold different class folders",
                    dir.join("train").display(),
                    dir.join("test").display()
                );
            }
            (Box::new(train), Box::new(test))
        }
        DatasetChoice::Synthetic => (
            Box::new(SyntheticShapes::new(2048, 64, 1)),
            Box::new(SyntheticShapes::new(512, 64, 2)),
        ),
    };
    Ok((
        limited(train, args.train_limit),
        limited(test, args.test_limit),
    ))
}

fn finetune(args: &FinetuneArgs) -> Result<()> {
    if args.device != DeviceChoice::Cpu && args.method.method == Method::Mobiletl {
        bail!(
            "--method mobiletl runs its 1-bit-mask activations on the CPU (flex) backend only; \
             use --device cpu, or another method on this device"
        );
    }
    let device = device(args.device)?;
    let (train, test) = datasets(args)?;
    let run = RunDir::new(&args.run_dir);
    let mut tuner = if args.resume {
        FineTuner::resume(&run, train.len(), &device)?
    } else {
        if run.exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --run-dir",
                run.state().display()
            );
        }
        let (arch, arch_flavor) = parse_arch(&args.model.arch)?;
        let (net, flavor) = match &args.weights {
            Some(path) => {
                let weights = WeightArgs {
                    weights: path.clone(),
                    naming: args.naming,
                    device: args.device,
                };
                let model = ModelArgs {
                    num_classes: None,
                    ..args.model.clone()
                };
                let net = load(&model, &weights, &device)?;
                let flavor = match args
                    .naming
                    .or(checkpoint_num_classes(path)?.map(|(n, _)| n))
                {
                    Some(Naming::Timm) => Flavor::Timm,
                    _ => Flavor::Torchvision,
                };
                (net, flavor)
            }
            None => {
                eprintln!("warning: no --weights: fine-tuning from random initialisation");
                (build(&args.model, 1000, arch_flavor, &device)?, arch_flavor)
            }
        };
        let config = MobileNetConfig::new(arch)
            .with_width(args.model.width)
            .with_flavor(flavor);
        let options = FinetuneOptions {
            method: args.method.method,
            blocks: args.method.blocks,
            epochs: args.epochs,
            batch_size: args.batch,
            learning_rate: args.lr,
            min_learning_rate: args.min_lr,
            optimizer: args.optimizer,
            weight_decay: args.weight_decay,
            label_smoothing: args.label_smoothing,
            resolution: args.resolution,
            crop_scale: args.crop_scale,
            eval_crop_fraction: args.eval_crop_fraction,
            seed: args.seed,
        };
        let dataset = args
            .dataset
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        FineTuner::new(
            net,
            config,
            train.num_classes(),
            options,
            &dataset,
            train.len(),
            &device,
        )?
    };
    let state = tuner.state();
    let blocks = if state.options.method.uses_blocks() {
        format!(" K={}", state.options.blocks)
    } else {
        String::new()
    };
    eprintln!(
        "{:?}{blocks} on {} ({} train / {} test images, {} classes): {} trainable parameters, {} steps per epoch",
        state.options.method,
        state.dataset,
        train.len(),
        test.len(),
        train.num_classes(),
        state.trainable_params,
        state.steps_per_epoch
    );
    while !tuner.finished() {
        let epoch = tuner.state().epochs_done + 1;
        let bar = indicatif::ProgressBar::new(tuner.state().steps_per_epoch as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{}", tuner.state().options.epochs));
        let eval = args.eval_every_epoch.then_some(test.as_ref());
        let record = tuner.train_epoch(train.as_ref(), eval, &mut |_, loss, acc| {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * acc));
        })?;
        bar.finish_and_clear();
        eprintln!(
            "epoch {epoch}: loss {:.4}, train accuracy {:.2}%{}, {:.0} s",
            record.train_loss,
            100.0 * record.train_accuracy,
            record
                .eval_accuracy
                .map(|a| format!(", test accuracy {:.2}%", 100.0 * a))
                .unwrap_or_default(),
            record.seconds
        );
        tuner.save(&run)?;
    }
    let accuracy = tuner.evaluate(test.as_ref())?;
    tuner.set_test_accuracy(accuracy);
    tuner.save(&run)?;
    println!(
        "test accuracy {:.2}% ({} images); record in {}",
        100.0 * accuracy,
        test.len(),
        run.state().display()
    );
    Ok(())
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
    /// Multiply-adds at a resolution, in total and per layer; with --method, the forward
    /// and backward FLOPs of a training step.
    Flops {
        #[command(flatten)]
        model: ModelArgs,
        /// Input side in pixels.
        #[arg(long, default_value_t = 224)]
        resolution: usize,
        /// Print every layer.
        #[arg(long)]
        per_layer: bool,
        /// Count a training step of this fine-tuning method.
        #[arg(long, value_enum)]
        method: Option<Method>,
        /// K of FT-K for --method mobiletl|vanilla.
        #[arg(long, default_value_t = 5)]
        blocks: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Training memory of a fine-tuning method: activations kept for the backward pass
    /// (TinyTL's analytic rules) and parameters; --measure also runs a real step.
    Memory {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        method: MethodArgs,
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Input side in pixels.
        #[arg(long, default_value_t = 224)]
        resolution: usize,
        /// Also run one training step (random weights, CPU) and report the bytes it held
        /// between forward and backward.
        #[arg(long)]
        measure: bool,
        /// Print every layer that keeps something.
        #[arg(long)]
        per_layer: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fine-tune a (pretrained) network on a dataset with a transfer-learning method:
    /// per-epoch atomic checkpoints, --resume, final test accuracy in state.json.
    Finetune(Box<FinetuneArgs>),
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
            method,
            blocks,
            json,
        } => {
            if resolution < 32 {
                bail!("--resolution must be at least 32");
            }
            match method {
                None => {
                    let net = build_without_weights(&model)?;
                    print_table(&net.cost(resolution), per_layer, true);
                }
                Some(method) => {
                    let cost = training_cost(&model, method, blocks, 1, resolution)?;
                    let summary = CostSummary::new(&model.arch, method, blocks, &cost, None);
                    if json {
                        println!("{}", serde_json::to_string_pretty(&summary)?);
                    } else {
                        println!(
                            "{} {method:?}{}, {resolution} px, per image: forward {:.1} MFLOPs, \
                             backward {:.1} MFLOPs, total {:.1} MFLOPs",
                            model.arch,
                            summary
                                .blocks
                                .map(|k| format!(" (K = {k})"))
                                .unwrap_or_default(),
                            summary.forward_mflops,
                            summary.backward_mflops,
                            summary.forward_mflops + summary.backward_mflops
                        );
                    }
                }
            }
        }
        Command::Memory {
            model,
            method,
            batch,
            resolution,
            measure,
            per_layer,
            json,
        } => {
            let cost = training_cost(&model, method.method, method.blocks, batch, resolution)?;
            let measured = if measure {
                let (arch, flavor) = parse_arch(&model.arch)?;
                let config = MobileNetConfig::new(arch)
                    .with_num_classes(model.num_classes.unwrap_or(1000))
                    .with_width(model.width)
                    .with_flavor(flavor);
                let device = Device::flex().autodiff();
                Some(
                    measure_network(
                        &config,
                        method.method,
                        method.blocks,
                        batch,
                        resolution,
                        &device,
                    )
                    .map_err(anyhow::Error::msg)?,
                )
            } else {
                None
            };
            let summary =
                CostSummary::new(&model.arch, method.method, method.blocks, &cost, measured);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_memory(&summary, &cost, per_layer);
            }
        }
        Command::Finetune(args) => finetune(&args)?,
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

/// The analytic training cost for the CLI's model arguments.
fn training_cost(
    model: &ModelArgs,
    method: Method,
    blocks: usize,
    batch: usize,
    resolution: usize,
) -> Result<TrainingCost> {
    let (arch, flavor) = parse_arch(&model.arch)?;
    if !(model.width > 0.0 && model.width.is_finite()) {
        bail!("--width must be positive, got {}", model.width);
    }
    let spec = MobileNetConfig::new(arch)
        .with_width(model.width)
        .with_flavor(flavor)
        .spec();
    let classes = model.num_classes.unwrap_or(1000);
    if classes == 0 {
        bail!("--num-classes must be at least 1");
    }
    network_cost(&spec, classes, method, blocks, resolution, batch).map_err(anyhow::Error::msg)
}

/// What `memory` and `flops --method` print.
#[derive(serde::Serialize)]
struct CostSummary {
    arch: String,
    method: Method,
    blocks: Option<usize>,
    batch: usize,
    resolution: usize,
    activation_mb: f64,
    parameter_mb: f64,
    total_mb: f64,
    trainable_params: usize,
    forward_mflops: f64,
    backward_mflops: f64,
    measured_held_mb: Option<f64>,
}

impl CostSummary {
    fn new(
        arch: &str,
        method: Method,
        blocks: usize,
        cost: &TrainingCost,
        measured: Option<usize>,
    ) -> Self {
        let per_image = |flops: u64| flops as f64 / cost.batch as f64 / 1e6;
        CostSummary {
            arch: arch.to_string(),
            method,
            blocks: method.uses_blocks().then_some(blocks),
            batch: cost.batch,
            resolution: cost.resolution,
            activation_mb: cost.activation_bytes() / 1e6,
            parameter_mb: cost.parameter_bytes() / 1e6,
            total_mb: cost.total_bytes() / 1e6,
            trainable_params: cost.trainable_params(),
            forward_mflops: per_image(cost.forward_flops()),
            backward_mflops: per_image(cost.backward_flops()),
            measured_held_mb: measured.map(|b| b as f64 / 1e6),
        }
    }
}

fn print_memory(summary: &CostSummary, cost: &TrainingCost, per_layer: bool) {
    if per_layer {
        println!(
            "{:<36} {:<10} {:>12} {:>12}",
            "layer", "part", "kept MB", "trainable"
        );
        for l in cost
            .layers
            .iter()
            .filter(|l| l.kept_elements + l.kept_mask_elements > 0)
        {
            println!(
                "{:<36} {:<10} {:>12.3} {:>12}",
                l.name,
                l.part.label(),
                l.kept_bytes(cost.batch, cost.element_bytes) / 1e6,
                l.trainable_params
            );
        }
        let by_part: Vec<String> = Part::BLOCK
            .iter()
            .map(|&p| format!("{} {:.2}", p.label(), cost.part_bytes(p, None) / 1e6))
            .collect();
        println!("blocks by part (MB): {}", by_part.join(", "));
    }
    let blocks = summary
        .blocks
        .map(|k| format!(" K = {k},"))
        .unwrap_or_default();
    println!(
        "{} {:?}{blocks} batch {}, {} px (TinyTL rules, fp32 activations):",
        summary.arch, summary.method, summary.batch, summary.resolution
    );
    println!(
        "  activations kept for backward: {:>9.2} MB",
        summary.activation_mb
    );
    println!(
        "  parameters (fp32 trainable, 8-bit frozen): {:.2} MB ({} trainable)",
        summary.parameter_mb, summary.trainable_params
    );
    println!("  total: {:.2} MB", summary.total_mb);
    if let Some(m) = summary.measured_held_mb {
        println!("  measured, held between forward and backward (flex): {m:.2} MB");
    }
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
