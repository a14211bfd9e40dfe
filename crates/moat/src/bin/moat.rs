//! `moat`: parameter and FLOP tables, TF checkpoint conversion, inference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use moat::data::{Augmentation, ImageSource, OrientedGratings};
use moat::{
    AttentionWindow, InputNormalization, Moat, MoatConfig, MoatVariant, RunDir, TrainOptions,
    Trainer, WeightCopy, convert_checkpoint, imagenet_class_names, load_tf_weights,
    weights::inspect_tf_weights, weights::write_safetensors,
};
use safetensors::SafeTensors;

#[derive(Parser)]
#[command(name = "moat", about = "MOAT (ICLR 2023) on burn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Cpu,
    Wgpu,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum DatasetChoice {
    Cifar10,
    Cifar100,
    /// Oriented gratings (no download; see `moat::data::OrientedGratings`).
    Synthetic,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Variant: moat-0..4, tiny-moat-0..3.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    variant: Option<MoatVariant>,
    /// A custom model instead: a JSON `MoatConfig` (as `moat::MoatConfig` serialises).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Window attention in stages 3 and 4, as `S3,S4` (square windows) or
    /// `H3xW3,H4xW4`; default global attention.
    #[arg(long, value_parser = parse_windows)]
    window: Option<[[usize; 2]; 2]>,
    /// With --window: global attention in the last block of each MOAT stage.
    #[arg(long)]
    global_at_end: bool,
    /// Shortcut pooling window (2 classification, 3 downstream).
    #[arg(long, default_value_t = 2)]
    pool_size: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Parameter counts of every variant against the official test.
    Params {
        /// Classes of the head.
        #[arg(long, default_value_t = 1000)]
        num_classes: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Multiply-adds of a variant at a resolution.
    Flops {
        #[command(flatten)]
        model: ModelArgs,
        /// Input side length.
        #[arg(long)]
        resolution: Option<usize>,
        /// Without relative position embedding.
        #[arg(long)]
        no_pe: bool,
        /// One row per layer.
        #[arg(long)]
        per_layer: bool,
    },
    /// Converts an official TF1 checkpoint bundle to TF-named safetensors.
    ConvertTf {
        /// Checkpoint prefix (the path without `.index`).
        checkpoint: PathBuf,
        /// Output safetensors file.
        out: PathBuf,
        /// Which copy of the weights to take.
        #[arg(long, value_enum, default_value = "ema")]
        copy: WeightCopy,
    },
    /// Logits for a batch: reads key `input` ([N, 3, H, W] float32), writes `logits`.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// TF-named safetensors weights (from `moat convert-tf`).
        #[arg(long)]
        weights: PathBuf,
        /// Input safetensors file.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        output: PathBuf,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// Trains from scratch (AdamW, warmup + cosine, label smoothing, drop path), with a
    /// checkpoint after every epoch in the run directory.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Training data.
        #[arg(long, value_enum)]
        dataset: DatasetChoice,
        /// Directory of the CIFAR binary files (`cifar-10-batches-bin` or `cifar-100-binary`).
        #[arg(long, required_if_eq_any = [("dataset", "cifar10"), ("dataset", "cifar100")])]
        data_dir: Option<PathBuf>,
        /// Synthetic task: training images (test images: a quarter of this).
        #[arg(long, default_value_t = 4096)]
        synthetic_images: usize,
        /// Synthetic task: image side.
        #[arg(long, default_value_t = 32)]
        synthetic_side: usize,
        /// Run directory (state.json, checkpoints, weights.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out.
        #[arg(long)]
        resume: bool,
        /// Epochs.
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Peak learning rate.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Final learning rate of the cosine decay.
        #[arg(long, default_value_t = 1e-5)]
        min_lr: f64,
        /// Linear warmup steps.
        #[arg(long, default_value_t = 500)]
        warmup_steps: usize,
        /// AdamW decoupled weight decay (not applied to biases, norms, position tables).
        #[arg(long, default_value_t = 0.05)]
        weight_decay: f32,
        /// Label smoothing.
        #[arg(long, default_value_t = 0.1)]
        label_smoothing: f32,
        /// Drop-path rate of the last block (default: the variant's).
        #[arg(long)]
        drop_path: Option<f64>,
        /// Weight of a new batch in the BatchNorm running statistics (default: the official
        /// 0.01, Keras' momentum 0.99; 0.1 suits short runs).
        #[arg(long)]
        bn_momentum: Option<f64>,
        /// Resize images to this side before the stem (default: the data's own size).
        #[arg(long)]
        resolution: Option<usize>,
        /// Seed of initialisation, shuffling and augmentation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
    },
    /// ImageNet top-1 / top-5 on a validation folder (`DIR/<wnid>/*.JPEG`, 1000 folders).
    Evaluate {
        #[command(flatten)]
        model: ModelArgs,
        /// TF-named safetensors weights with a 1000-class head.
        #[arg(long)]
        weights: PathBuf,
        /// The validation folder.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate at most this many images, spread over the folder.
        #[arg(long)]
        limit: Option<usize>,
        /// Images per forward.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Input side (default: the variant's pretraining resolution).
        #[arg(long)]
        resolution: Option<u32>,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Top-k ImageNet classes of images (PNG / JPEG).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// TF-named safetensors weights with a 1000-class head.
        #[arg(long)]
        weights: PathBuf,
        /// Input side (default: the variant's pretraining resolution).
        #[arg(long)]
        resolution: Option<u32>,
        /// Classes to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Device.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
        /// Images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn parse_windows(s: &str) -> Result<[[usize; 2]; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != 2 {
        return Err(format!("expected two windows `S3,S4`, got {s:?}"));
    }
    let one = |p: &str| -> Result<[usize; 2], String> {
        let dims: Vec<usize> = p
            .split('x')
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("bad window {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        match dims.as_slice() {
            [n] if *n > 0 => Ok([*n, *n]),
            [h, w] if *h > 0 && *w > 0 => Ok([*h, *w]),
            _ => Err(format!("bad window {p:?}")),
        }
    };
    Ok([one(parts[0])?, one(parts[1])?])
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

fn config(args: &ModelArgs) -> Result<MoatConfig> {
    let mut config = match (&args.variant, &args.config) {
        (Some(v), _) => v.config(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read model config {}", path.display()))?;
            return serde_json::from_str(&text)
                .with_context(|| format!("{} is not a MOAT config", path.display()));
        }
        (None, None) => bail!("give --variant or --config"),
    };
    if let Some([s3, s4]) = args.window {
        config = config.with_windows(s3, s4);
    }
    config.global_attention_at_end_of_stage = args.global_at_end;
    config.pool_size = args.pool_size;
    Ok(config)
}

fn model_name(args: &ModelArgs) -> String {
    match (&args.variant, &args.config) {
        (Some(v), _) => v.to_string(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "MOAT".into(),
    }
}

fn variant(args: &ModelArgs, what: &str) -> Result<MoatVariant> {
    args.variant
        .with_context(|| format!("{what} needs --variant (or an explicit size with --config)"))
}

/// Builds the model that `weights` was saved from (classes and position embedding
/// taken from the file) and loads it.
fn load(args: &ModelArgs, weights: &Path, device: &Device) -> Result<(Moat, MoatConfig)> {
    let layout = inspect_tf_weights(weights)?;
    let mut config = config(args)?.with_num_classes(layout.num_classes);
    if !layout.position_embedding {
        config = config.without_position_embedding();
    }
    let model = load_tf_weights(config.init(device), weights)
        .with_context(|| format!("loading {} as {}", weights.display(), model_name(args)))?;
    Ok((model, config))
}

fn read_input(path: &Path, device: &Device) -> Result<Tensor<4>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let view = file.tensor("input").map_err(|_| {
        anyhow::anyhow!(
            "{} has no tensor named \"input\" (it has: {})",
            path.display(),
            file.names().join(", ")
        )
    })?;
    if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 4 || view.shape()[1] != 3 {
        bail!(
            "tensor \"input\" in {} must be float32 [N, 3, H, W], found {:?} {:?}",
            path.display(),
            view.dtype(),
            view.shape()
        );
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(values, view.shape().to_vec()),
        device,
    ))
}

type Source = Box<dyn ImageSource>;

fn datasets(
    choice: DatasetChoice,
    data_dir: Option<&Path>,
    synthetic_images: usize,
    synthetic_side: usize,
    seed: u64,
) -> Result<(Source, Source, Augmentation)> {
    use mobiletl::data::{CifarVariant, Split, load_cifar};
    let cifar = |variant| -> Result<(Source, Source, Augmentation)> {
        let dir = data_dir.context("--data-dir is required for CIFAR")?;
        let train = load_cifar(dir, variant, Split::Train)?;
        let test = load_cifar(dir, variant, Split::Test)?;
        Ok((Box::new(train), Box::new(test), Augmentation::CIFAR))
    };
    match choice {
        DatasetChoice::Cifar10 => cifar(CifarVariant::Cifar10),
        DatasetChoice::Cifar100 => cifar(CifarVariant::Cifar100),
        DatasetChoice::Synthetic => {
            let train = OrientedGratings::new(synthetic_images, synthetic_side, seed);
            let test = OrientedGratings::new(
                (synthetic_images / 4).max(1),
                synthetic_side,
                seed ^ 0x5EED_7E57,
            );
            // No flip: a mirror turns a 45-degree grating into a 135-degree one.
            Ok((Box::new(train), Box::new(test), Augmentation::NONE))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params { num_classes, json } => {
            let device = Device::flex();
            let mut rows = Vec::new();
            for variant in MoatVariant::ALL {
                let (with_pe, without_pe) = variant.official_params();
                let base = variant.config().with_num_classes(Some(num_classes));
                let res = variant.pretrain_resolution();
                let ours_pe = base.clone().init(&device).cost(res, res).params();
                let ours_no = base
                    .without_position_embedding()
                    .init(&device)
                    .cost(res, res)
                    .params();
                rows.push((variant, ours_pe, with_pe, ours_no, without_pe));
            }
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(v, a, b, c, d)| {
                        serde_json::json!({"variant": v.name(), "params": a, "official": b,
                            "params_no_pe": c, "official_no_pe": d})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<12} {:>13} {:>13} {:>6}   {:>13} {:>13} {:>6}",
                    "variant", "params", "official", "", "no PE", "official", ""
                );
                for (v, a, b, c, d) in &rows {
                    let mark = |x: &usize, y: &usize| if x == y { "exact" } else { "DIFF" };
                    println!(
                        "{:<12} {a:>13} {b:>13} {:>6}   {c:>13} {d:>13} {:>6}",
                        v.name(),
                        mark(a, b),
                        mark(c, d)
                    );
                }
                if num_classes != 1000 {
                    println!("(official counts are for 1000 classes)");
                }
            }
        }
        Command::Flops {
            model,
            resolution,
            no_pe,
            per_layer,
        } => {
            let mut config = config(&model)?;
            if no_pe {
                config = config.without_position_embedding();
            }
            let res = match resolution {
                Some(r) => r,
                None => variant(&model, "a default resolution")?.pretrain_resolution(),
            };
            config.check_input(res, res).map_err(anyhow::Error::msg)?;
            let report = config.init(&Device::flex()).cost(res, res);
            if per_layer {
                for l in &report.layers {
                    println!(
                        "{:<48} {:<16} {:>10} {:>14}",
                        l.name, l.kind, l.params, l.macs
                    );
                }
            }
            let attention = match config.attention {
                [AttentionWindow::Global, _] => "global attention".to_string(),
                [AttentionWindow::Window(a), AttentionWindow::Window(b)] => {
                    format!("windows {}x{} / {}x{}", a[0], a[1], b[0], b[1])
                }
                _ => "mixed attention".to_string(),
            };
            let zoo = model
                .variant
                .map(|v| {
                    format!(
                        " (model zoo: {} GMACs at {})",
                        v.zoo_gmacs(),
                        v.pretrain_resolution()
                    )
                })
                .unwrap_or_default();
            println!(
                "{} at {res}x{res} ({attention}): {:.3} GMACs ({:.3} G with element-wise ops, \
                 the official TF-profiler convention), {} params{zoo}",
                model_name(&model),
                moat::multiply_adds(&report) as f64 / 1e9,
                report.macs() as f64 / 1e9,
                report.params(),
            );
        }
        Command::ConvertTf {
            checkpoint,
            out,
            copy,
        } => {
            let summary = convert_checkpoint(&checkpoint, &out, copy)?;
            println!(
                "wrote {} variables ({} elements, {} from EMA shadows) to {}; left out {} entries",
                summary.written,
                summary.elements,
                summary.from_ema,
                out.display(),
                summary.skipped.len()
            );
        }
        Command::Forward {
            model,
            weights,
            input,
            output,
            device: choice,
        } => {
            let device = device(choice)?;
            let (net, config) = load(&model, &weights, &device)?;
            if config.num_classes.is_none() {
                bail!(
                    "{} has no logits head (moat/logits_head/*)",
                    weights.display()
                );
            }
            let x = read_input(&input, &device)?;
            let [_, _, h, w] = x.dims();
            config.check_input(h, w).map_err(anyhow::Error::msg)?;
            let logits = net.forward(x);
            let shape = logits.dims().to_vec();
            let data = logits
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut tensors = BTreeMap::new();
            tensors.insert("logits".to_string(), (shape, data));
            write_safetensors(&output, &tensors)?;
        }
        Command::Train {
            model,
            dataset,
            data_dir,
            synthetic_images,
            synthetic_side,
            out,
            resume,
            epochs,
            batch,
            lr,
            min_lr,
            warmup_steps,
            weight_decay,
            label_smoothing,
            drop_path,
            bn_momentum,
            resolution,
            seed,
            device: choice,
        } => {
            let device = device(choice)?;
            device.seed(seed);
            let (train, test, augmentation) = datasets(
                dataset,
                data_dir.as_deref(),
                synthetic_images,
                synthetic_side,
                seed,
            )?;
            let mut config = config(&model)?.with_num_classes(Some(train.num_classes()));
            if let Some(rate) = drop_path {
                if !(0.0..1.0).contains(&rate) {
                    bail!("--drop-path must be in [0, 1), got {rate}");
                }
                config.survival_prob = 1.0 - rate;
            }
            if let Some(m) = bn_momentum {
                if !(m > 0.0 && m <= 1.0) {
                    bail!("--bn-momentum must be in (0, 1], got {m}");
                }
                config.batch_norm_momentum = m;
            }
            let side = resolution.unwrap_or(train.side());
            config.check_input(side, side).map_err(anyhow::Error::msg)?;
            let normalization = model
                .variant
                .map(MoatVariant::input_normalization)
                .unwrap_or(InputNormalization::ImageNet);
            let run_dir = RunDir::new(&out);
            let mut trainer = if resume {
                let trainer = Trainer::resume(&run_dir, train.len(), normalization, &device)?;
                if trainer.state().model != config {
                    bail!(
                        "{} trains a different model than the one these flags describe",
                        run_dir.state().display()
                    );
                }
                eprintln!(
                    "resuming {} after epoch {} of {}",
                    out.display(),
                    trainer.state().epochs_done,
                    trainer.state().options.epochs
                );
                trainer
            } else {
                if run_dir.exists() {
                    bail!(
                        "{} already holds a run; pass --resume to continue it or choose another --out",
                        out.display()
                    );
                }
                let options = TrainOptions {
                    epochs,
                    batch_size: batch,
                    learning_rate: lr,
                    min_learning_rate: min_lr,
                    warmup_steps,
                    weight_decay,
                    label_smoothing,
                    resolution,
                    seed,
                };
                Trainer::new(config, options, train.len(), normalization, &device)?
            };
            while !trainer.finished() {
                let epoch = trainer.state().epochs_done + 1;
                let bar = ProgressBar::new(trainer.state().steps_per_epoch as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("{epoch}/{}", trainer.state().options.epochs));
                let record = trainer.train_epoch(
                    train.as_ref(),
                    augmentation,
                    Some(test.as_ref()),
                    &mut |step, loss, acc| {
                        bar.set_position(step as u64);
                        bar.set_message(format!("loss {loss:.4} acc {:.1}%", 100.0 * acc));
                    },
                )?;
                bar.finish_and_clear();
                trainer.save(&run_dir)?;
                println!(
                    "epoch {}: train loss {:.4}, train acc {:.2}%, test acc {:.2}%, lr {:.2e}",
                    record.epoch,
                    record.train_loss,
                    100.0 * record.train_accuracy,
                    100.0 * record.eval_accuracy.unwrap_or(f64::NAN),
                    record.learning_rate
                );
            }
            println!(
                "done: {} (weights under the official TF names: {})",
                run_dir.state().display(),
                run_dir.weights().display()
            );
        }
        Command::Evaluate {
            model,
            weights,
            data,
            limit,
            batch,
            resolution,
            device: choice,
            json,
        } => {
            let device = device(choice)?;
            let (net, config) = load(&model, &weights, &device)?;
            let v = variant(&model, "evaluate")?;
            let folder = moat::imagenet::ImageFolder::open(&data)?;
            if Some(folder.classes.len()) != config.num_classes {
                bail!(
                    "{} has {} class folders, the weights' head {:?} classes",
                    data.display(),
                    folder.classes.len(),
                    config.num_classes
                );
            }
            let size = resolution.unwrap_or(v.pretrain_resolution() as u32);
            config
                .check_input(size as usize, size as usize)
                .map_err(anyhow::Error::msg)?;
            let items = folder.subset(limit);
            let bar = ProgressBar::new(items.len() as u64);
            let accuracy = moat::imagenet::evaluate(
                &net,
                &items,
                size,
                v.input_normalization(),
                batch,
                &device,
                &mut |done| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string(&accuracy)?);
            } else {
                println!(
                    "{} at {size}: top-1 {:.2}%, top-5 {:.2}% on {} images (model zoo top-1 {:.1}%)",
                    v.name(),
                    100.0 * accuracy.top1,
                    100.0 * accuracy.top5,
                    accuracy.images,
                    v.zoo_top1()
                );
            }
        }
        Command::Classify {
            model,
            weights,
            resolution,
            top,
            device: choice,
            images,
        } => {
            let device = device(choice)?;
            let (net, config) = load(&model, &weights, &device)?;
            if config.num_classes != Some(1000) {
                bail!(
                    "classify needs a 1000-class ImageNet head; {} has {:?}",
                    weights.display(),
                    config.num_classes
                );
            }
            let v = variant(&model, "classify")?;
            let size = resolution.unwrap_or(v.pretrain_resolution() as u32);
            config
                .check_input(size as usize, size as usize)
                .map_err(anyhow::Error::msg)?;
            let names = imagenet_class_names();
            for path in images {
                let x =
                    moat::preprocess::load_image(&path, size, v.input_normalization(), &device)?;
                let probs = burn::tensor::activation::softmax(net.forward(x), 1);
                let p = probs
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                println!("{}", path.display());
                for &i in order.iter().take(top) {
                    println!("  {:>6.2}%  {:>4}  {}", 100.0 * p[i], i, names[i]);
                }
            }
        }
    }
    Ok(())
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
