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
        /// PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
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
        /// PEFT adapter folder.
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
        Some(dir) => Ok(mixlora::load_adapter(decoder, dir, device)
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
