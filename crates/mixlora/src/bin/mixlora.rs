//! `mixlora`: run LLaMA-family checkpoints in Hugging Face format.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Parser, Subcommand};
use safetensors::{Dtype, SafeTensors};

#[derive(Parser)]
#[command(name = "mixlora", version, about = "LLaMA-family decoders on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logits for token ids: reads `input_ids` (int64 [batch, seq]) and optional
    /// `attention_mask` from a safetensors file, writes `logits` (f32 [batch, seq, vocab]).
    Forward {
        /// Model folder (config.json, model.safetensors or sharded index).
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `input_ids`.
        #[arg(long)]
        input_ids: PathBuf,
        /// safetensors file to write `logits` to.
        #[arg(long)]
        output: PathBuf,
    },
    /// Greedy continuation of comma-separated token ids, streamed one id per line.
    Generate {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        /// Prompt token ids, e.g. `1,415,2936`.
        #[arg(long, value_delimiter = ',', required = true)]
        prompt_ids: Vec<i64>,
        /// Most tokens to add.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
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

fn run(cli: Cli) -> Result<(), String> {
    let device = Device::flex();
    match cli.command {
        Command::Forward {
            model,
            input_ids,
            output,
        } => {
            let decoder = mixlora::load_decoder(&model, &device).map_err(|e| e.to_string())?;
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
            prompt_ids,
            max_new_tokens,
        } => {
            let config = mixlora::DecoderConfig::from_file(&model.join("config.json"))
                .map_err(|e| e.to_string())?;
            let decoder = mixlora::load_decoder(&model, &device).map_err(|e| e.to_string())?;
            let vocab = decoder.vocab_size() as i64;
            if let Some(bad) = prompt_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(format!("prompt token id {bad} is outside 0..{vocab}"));
            }
            mixlora::greedy(
                &decoder,
                &prompt_ids,
                max_new_tokens,
                &config.eos_ids(),
                &mut |t| {
                    println!("{t}");
                },
            );
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
