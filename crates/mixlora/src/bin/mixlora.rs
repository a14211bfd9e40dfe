//! `mixlora`: run LLaMA-family checkpoints in Hugging Face format.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Parser, Subcommand};
use safetensors::{Dtype, SafeTensors};

#[derive(Parser)]
#[command(name = "mixlora", version, about = "LLaMA-family decoders on burn")]
struct Cli {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu, global = true)]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceChoice {
    /// burn's flex CPU backend.
    Cpu,
    /// burn's wgpu backend (build with `--features wgpu`).
    Wgpu,
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

#[derive(Subcommand)]
enum Command {
    /// Logits for token ids: reads `input_ids` (int64 [batch, seq]) and optional
    /// `attention_mask` from a safetensors file, writes `logits` (f32 [batch, seq, vocab]).
    Forward {
        /// Model folder (config.json, model.safetensors or sharded index).
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder: PEFT LoRA / DoRA, or MixLoRA / MixDoRA / LoRAMoE (official format).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// safetensors file with `input_ids`.
        #[arg(long)]
        input_ids: PathBuf,
        /// safetensors file to write `logits` to.
        #[arg(long)]
        output: PathBuf,
    },
    /// Continues a prompt, streaming the new text to stdout (or, with `--prompt-ids`,
    /// one token id per line). Greedy unless `--temperature` is above 0.
    Generate {
        /// Model folder (with tokenizer.json for `--prompt`).
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder: PEFT LoRA / DoRA, or MixLoRA / MixDoRA / LoRAMoE (official format).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Prompt text, encoded with the folder's tokenizer.json.
        #[arg(
            long,
            conflicts_with = "prompt_ids",
            required_unless_present = "prompt_ids"
        )]
        prompt: Option<String>,
        /// Prompt token ids instead of text, e.g. `1,415,2936`.
        #[arg(long, value_delimiter = ',')]
        prompt_ids: Option<Vec<i64>>,
        /// Wrap the prompt as a user message in tokenizer_config.json's chat template.
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// Most tokens to add.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 decodes greedily.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling mass in (0, 1].
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed of the sampling draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Fine-tunes an adapter (LoRA, DoRA, MixLoRA, MixDoRA, the routing variants or
    /// LoRAMoE) on commonsense tasks or the synthetic suite, checkpointing into --out.
    Train {
        /// Base model folder (with tokenizer.json for text tasks). Omit with
        /// --task synthetic to use the suite's own tiny random base.
        #[arg(long)]
        model: Option<PathBuf>,
        /// lora, dora, mixlora, mixdora, mixlora-dynamic, mixlora-switch, loramoe.
        #[arg(long, default_value = "mixlora")]
        method: String,
        /// Comma-separated tasks (arc-e, arc-c, boolq, obqa, piqa, siqa, hellaswag,
        /// winogrande) trained together, or `synthetic`.
        #[arg(long, value_delimiter = ',', required = true)]
        task: Vec<String>,
        /// Root of the fetched datasets (`cargo xtask fetch`).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// LoRA rank.
        #[arg(long, default_value_t = 16)]
        r: usize,
        /// LoRA alpha.
        #[arg(long, default_value_t = 32)]
        alpha: usize,
        /// Experts per layer.
        #[arg(long, default_value_t = 8)]
        experts: usize,
        /// Experts per token.
        #[arg(long, default_value_t = 2)]
        top_k: usize,
        /// LoRA dropout.
        #[arg(long, default_value_t = 0.05)]
        dropout: f64,
        /// Learning rate (constant).
        #[arg(long, default_value_t = 2e-4)]
        lr: f64,
        /// Examples per optimizer step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Examples per forward pass (gradient accumulation makes up the batch).
        #[arg(long, default_value_t = 4)]
        micro_batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 512)]
        cutoff: usize,
        /// Passes over the data.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// AdamW weight decay.
        #[arg(long, default_value_t = 0.01)]
        weight_decay: f64,
        /// Auxiliary load-balance coefficient.
        #[arg(long, default_value_t = 1e-3)]
        aux_coef: f64,
        /// Use at most this many training examples per task.
        #[arg(long)]
        train_limit: Option<usize>,
        /// Checkpoint every this many optimizer steps.
        #[arg(long, default_value_t = 200)]
        save_every: usize,
        /// Stop after this optimizer step (resume later with --resume).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Continue the run in --out.
        #[arg(long)]
        resume: bool,
        /// Seed of the data order and the adapter's initialisation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Run folder: adapter files, optimizer state, state.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// Accuracy of a model (with an adapter) on commonsense tasks or the synthetic suite.
    Eval {
        /// Base model folder (omit with --task synthetic).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Adapter folder (PEFT or MixLoRA).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Comma-separated tasks, or `synthetic`.
        #[arg(long, value_delimiter = ',', required = true)]
        task: Vec<String>,
        /// Root of the fetched datasets.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Tokens per prompt.
        #[arg(long, default_value_t = 512)]
        cutoff: usize,
        /// Use at most this many evaluation examples per task.
        #[arg(long)]
        eval_limit: Option<usize>,
        /// Questions per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
}

/// An int64 matrix: values and `[rows, cols]`.
type IdMatrix = (Vec<i64>, [usize; 2]);

fn read_ints(path: &Path, key: &str) -> Result<Option<IdMatrix>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{} is not a safetensors file: {e}", path.display()))?;
    let Ok(view) = file.tensor(key) else {
        return Ok(None);
    };
    let shape = view.shape().to_vec();
    if shape.len() != 2 || view.dtype() != Dtype::I64 {
        return Err(format!(
            "{key} in {} must be int64 [batch, seq], got {:?} {shape:?}",
            path.display(),
            view.dtype()
        ));
    }
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("eight bytes")))
        .collect();
    Ok(Some((values, [shape[0], shape[1]])))
}

fn load(model: &Path, adapter: Option<&Path>, device: &Device) -> Result<mixlora::Decoder, String> {
    let decoder = mixlora::load_decoder(model, device).map_err(|e| e.to_string())?;
    match adapter {
        None => Ok(decoder),
        // Any adapter kind the crate writes: PEFT LoRA / DoRA, or the official
        // MixLoRA / MixDoRA / LoRAMoE format, told apart by `peft_type`.
        Some(dir) => Ok(mixlora::finetune::AdapterSpec::load(decoder, dir, device)
            .map_err(|e| e.to_string())?
            .0),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let device = device(cli.device)?;
    match cli.command {
        Command::Forward {
            model,
            adapter,
            input_ids,
            output,
        } => {
            let decoder = load(&model, adapter.as_deref(), &device)?;
            let (ids, shape) = read_ints(&input_ids, "input_ids")?
                .ok_or_else(|| format!("{} has no input_ids tensor", input_ids.display()))?;
            let vocab = decoder.vocab_size() as i64;
            if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(format!(
                    "token id {bad} in {} is outside 0..{vocab}",
                    input_ids.display()
                ));
            }
            let mask = read_ints(&input_ids, "attention_mask")?;
            if let Some((_, mshape)) = &mask
                && *mshape != shape
            {
                return Err(format!(
                    "attention_mask {mshape:?} and input_ids {shape:?} differ in shape"
                ));
            }
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device);
            let mask =
                mask.map(|(m, s)| Tensor::<2, Int>::from_data(TensorData::new(m, s), &device));
            let logits = decoder.forward(ids, mask);
            let dims = logits.dims();
            let values: Vec<f32> = logits
                .into_data()
                .try_to_vec()
                .map_err(|e| format!("{e:?}"))?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(Dtype::F32, dims.to_vec(), &bytes)
                .map_err(|e| e.to_string())?;
            let serialized =
                safetensors::serialize([("logits", view)], None).map_err(|e| e.to_string())?;
            // Atomic: a temporary file beside the target, then a rename.
            let tmp = output.with_extension("partial");
            std::fs::write(&tmp, serialized)
                .and_then(|()| std::fs::rename(&tmp, &output))
                .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
            println!("wrote logits {dims:?} to {}", output.display());
        }
        Command::Generate {
            model,
            adapter,
            prompt,
            prompt_ids,
            chat,
            max_new_tokens,
            temperature,
            top_p,
            seed,
        } => {
            if !(top_p > 0.0 && top_p <= 1.0) || temperature < 0.0 {
                return Err(format!(
                    "--top-p must be in (0, 1] and --temperature >= 0 (got {top_p}, {temperature})"
                ));
            }
            let config = mixlora::DecoderConfig::from_file(&model.join("config.json"))
                .map_err(|e| e.to_string())?;
            let tokenizer = match prompt {
                Some(_) => {
                    Some(mixlora::TextTokenizer::from_dir(&model).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            let prompt_ids = match (&prompt, &tokenizer) {
                (Some(text), Some(tok)) if chat => {
                    let text = tok.chat_prompt(text).map_err(|e| e.to_string())?;
                    tok.encode(&text, false).map_err(|e| e.to_string())?
                }
                (Some(text), Some(tok)) => tok.encode(text, true).map_err(|e| e.to_string())?,
                _ => prompt_ids.unwrap_or_default(),
            };
            if prompt_ids.is_empty() {
                return Err("the prompt encodes to no tokens".into());
            }
            let decoder = load(&model, adapter.as_deref(), &device)?;
            let vocab = decoder.vocab_size() as i64;
            if let Some(bad) = prompt_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(format!("prompt token id {bad} is outside 0..{vocab}"));
            }
            let sampling = if temperature == 0.0 {
                mixlora::Sampling::Greedy
            } else {
                mixlora::Sampling::Sample {
                    temperature,
                    top_p,
                    seed,
                }
            };
            let mut stdout = std::io::stdout();
            match &tokenizer {
                Some(tok) => {
                    let mut stream = mixlora::TextStream::new(tok);
                    mixlora::generate(
                        &decoder,
                        &prompt_ids,
                        max_new_tokens,
                        &config.eos_ids(),
                        sampling,
                        &mut |t| {
                            if let Some(piece) = stream.push(t) {
                                print!("{piece}");
                                let _ = stdout.flush();
                            }
                        },
                    );
                    if let Some(piece) = stream.finish() {
                        print!("{piece}");
                    }
                    println!();
                }
                None => {
                    mixlora::generate(
                        &decoder,
                        &prompt_ids,
                        max_new_tokens,
                        &config.eos_ids(),
                        sampling,
                        &mut |t| {
                            println!("{t}");
                        },
                    );
                }
            }
        }
        Command::Train {
            model,
            method,
            task,
            data_dir,
            r,
            alpha,
            experts,
            top_k,
            dropout,
            lr,
            batch,
            micro_batch,
            cutoff,
            epochs,
            weight_decay,
            aux_coef,
            train_limit,
            save_every,
            max_steps,
            resume,
            seed,
            out,
        } => {
            let device = device.autodiff();
            device.seed(seed);
            let spec = mixlora::finetune::AdapterSpec::for_method(
                &method, r, alpha, experts, top_k, dropout,
            )?;
            let (base, data, _, pad) = load_data(
                model.as_deref(),
                &task,
                &data_dir,
                cutoff,
                train_limit,
                Some(0),
                &device,
            )?;
            let options = mixlora::train::TrainOptions {
                lr,
                batch,
                micro_batch,
                epochs,
                weight_decay,
                aux_balance: aux_coef,
                aux_z: 1e-3,
                seed,
                pad,
            };
            let description = serde_json::json!({
                "method": method, "task": task, "model": model, "r": r, "alpha": alpha,
                "experts": experts, "top_k": top_k, "dropout": dropout, "cutoff": cutoff,
                "train_limit": train_limit, "examples": data.len(),
            });
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            let (_, state) = mixlora::finetune::fine_tune(
                base,
                &spec,
                &data,
                &options,
                &out,
                save_every,
                resume,
                max_steps,
                description,
                &mut |record, total| {
                    bar.set_length(total as u64);
                    bar.set_position(record.step as u64);
                    bar.set_message(format!(
                        "loss {:.4} aux {:.4} {:.0} tok/s",
                        record.loss, record.aux_loss, record.tokens_per_second
                    ));
                },
            )?;
            bar.finish();
            let last = state.history.last();
            println!(
                "{} steps of {}; last loss {:.4}, aux {:.4}; adapter in {}",
                state.step,
                state.total_steps,
                last.map_or(f64::NAN, |r| r.loss),
                last.map_or(f64::NAN, |r| r.aux_loss),
                out.display()
            );
        }
        Command::Eval {
            model,
            adapter,
            task,
            data_dir,
            cutoff,
            eval_limit,
            batch,
        } => {
            let (base, _, eval, pad) = load_data(
                model.as_deref(),
                &task,
                &data_dir,
                cutoff,
                Some(0),
                eval_limit,
                &device,
            )?;
            let model = match &adapter {
                Some(dir) => {
                    mixlora::finetune::AdapterSpec::load(base, dir, &device)
                        .map_err(|e| e.to_string())?
                        .0
                }
                None => base,
            };
            let (per_task, overall) = mixlora::train::evaluate(&model, &eval, batch, pad);
            for (name, (right, all)) in task_names(&task).iter().zip(&per_task) {
                println!(
                    "{name}: {:.2}% ({right}/{all})",
                    100.0 * *right as f64 / (*all).max(1) as f64
                );
            }
            println!("average: {:.2}%", 100.0 * overall);
        }
    }
    Ok(())
}

/// The task names a run reports, in order (the synthetic suite's four).
fn task_names(task: &[String]) -> Vec<String> {
    if task == ["synthetic"] {
        mixlora::tasks::synthetic_suite(0, 0, 0)
            .into_iter()
            .map(|t| t.name)
            .collect()
    } else {
        task.to_vec()
    }
}

/// The base model (on `device`), training and evaluation examples, and the padding id.
#[allow(clippy::type_complexity)]
fn load_data(
    model: Option<&Path>,
    task: &[String],
    data_dir: &Path,
    cutoff: usize,
    train_limit: Option<usize>,
    eval_limit: Option<usize>,
    device: &Device,
) -> Result<
    (
        mixlora::Decoder,
        Vec<mixlora::train::TrainExample>,
        Vec<mixlora::train::EvalExample>,
        i64,
    ),
    String,
> {
    if task == ["synthetic"] {
        let suite = mixlora::tasks::synthetic_suite(
            train_limit.unwrap_or(512),
            eval_limit.unwrap_or(256),
            7,
        );
        let (train, eval) = mixlora::tasks::token_examples(&suite);
        let base = match model {
            Some(dir) => mixlora::load_decoder(dir, device).map_err(|e| e.to_string())?,
            None => mixlora::tasks::synthetic_base(device, 3),
        };
        if base.vocab_size() < mixlora::tasks::SYNTHETIC_VOCAB {
            return Err(format!(
                "the synthetic suite needs a vocabulary of at least {} tokens",
                mixlora::tasks::SYNTHETIC_VOCAB
            ));
        }
        return Ok((base, train, eval, 0));
    }
    let dir = model.ok_or("--model is required for text tasks")?;
    let tokenizer = mixlora::TextTokenizer::from_dir(dir).map_err(|e| e.to_string())?;
    let config =
        mixlora::DecoderConfig::from_file(&dir.join("config.json")).map_err(|e| e.to_string())?;
    let mut sets = Vec::new();
    for name in task {
        let t = mixlora::tasks::Task::from_name(name)?;
        let limit = |mut v: Vec<mixlora::tasks::Example>, n: Option<usize>| {
            if let Some(n) = n {
                v.truncate(n);
            }
            v
        };
        let train = if train_limit == Some(0) {
            Vec::new()
        } else {
            limit(
                t.load(data_dir, mixlora::tasks::Split::Train)
                    .map_err(|e| e.to_string())?,
                train_limit,
            )
        };
        let eval = if eval_limit == Some(0) {
            Vec::new()
        } else {
            limit(
                t.load(data_dir, mixlora::tasks::Split::Eval)
                    .map_err(|e| e.to_string())?,
                eval_limit,
            )
        };
        sets.push((t, train, eval));
    }
    let (train, eval) =
        mixlora::tasks::text_examples(&tokenizer, &sets, cutoff).map_err(|e| e.to_string())?;
    let base = mixlora::load_decoder(dir, device).map_err(|e| e.to_string())?;
    // The pad id: the config's, else 0 (MoE-PEFT falls back to unk, eos, then 0).
    let pad = config.pad_token_id.unwrap_or(0);
    Ok((base, train, eval, pad))
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
