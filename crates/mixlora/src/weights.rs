//! Loading a Hugging Face model folder: `config.json` and `model.safetensors`, or the
//! shards listed in `model.safetensors.index.json`; float32, float16 or bfloat16 tensors
//! (computed in float32). Every tensor of the model must be present with its shape, and
//! nothing else may be (other than RoPE buffers); all problems are listed by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData, bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::config::DecoderConfig;
use crate::model::{Attention, Decoder, DecoderLayer, Mlp, Projection, RmsNorm, expected_tensors};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` is malformed or describes something unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weight file is not valid safetensors, or holds an unsupported dtype.
    #[error("{path} is not a usable safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights do not match the configuration.
    #[error("the weights in {dir} do not match its config.json:\n{details}")]
    Mismatch {
        /// The model folder.
        dir: PathBuf,
        /// One line per missing, mis-shaped or unexpected tensor.
        details: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The weight files of a model folder: the index's shards, else `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let map = parsed
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    Ok(vec![dir.join("model.safetensors")])
}

/// One tensor read as f32: values and shape.
type Loaded = (Vec<f32>, Vec<usize>);

fn read_tensors(path: &Path, into: &mut BTreeMap<String, Loaded>) -> Result<(), ModelError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let corrupt = |message: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(corrupt(format!(
                    "tensor {name} has unsupported dtype {other:?}"
                )));
            }
        };
        into.insert(name, (values, view.shape().to_vec()));
    }
    Ok(())
}

/// Whether `name` is a buffer some exporters write and the model recomputes.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Reads `dir` (`config.json` plus weights) into a decoder on `device`.
pub fn load_decoder(dir: &Path, device: &Device) -> Result<Decoder, ModelError> {
    let config = DecoderConfig::from_file(&dir.join("config.json"))?;
    let mut tensors = BTreeMap::new();
    for file in weight_files(dir)? {
        read_tensors(&file, &mut tensors)?;
    }
    decoder_from_tensors(&config, tensors, dir, device)
}

/// Builds the decoder of `config` from tensors by Hugging Face name; `dir` names the
/// folder in errors.
pub fn decoder_from_tensors(
    config: &DecoderConfig,
    mut tensors: BTreeMap<String, Loaded>,
    dir: &Path,
    device: &Device,
) -> Result<Decoder, ModelError> {
    let expected = expected_tensors(config);
    let mut details = Vec::new();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => details.push(format!("  missing tensor {name} (shape {shape:?})")),
            Some((_, found)) if found != shape => details.push(format!(
                "  shape mismatch for {name}: config expects {shape:?}, file has {found:?}"
            )),
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (name, (_, shape)) in &tensors {
        // A tied model may still carry the head's copy of the embedding.
        let tied_head = config.tie_word_embeddings && name == "lm_head.weight";
        if !known.contains(name.as_str()) && !is_buffer(name) && !tied_head {
            details.push(format!("  unexpected tensor {name} (shape {shape:?})"));
        }
    }
    if !details.is_empty() {
        return Err(ModelError::Mismatch {
            dir: dir.to_path_buf(),
            details: details.join("\n"),
        });
    }
    // PyTorch stores linear weights `[out, in]`; burn's `Linear` holds `[in, out]`.
    let linear = |prefix: &str, bias: bool, tensors: &mut BTreeMap<String, Loaded>| -> Projection {
        let (w, ws) = tensors
            .remove(&format!("{prefix}.weight"))
            .expect("checked above");
        let weight = Tensor::<2>::from_data(TensorData::new(w, [ws[0], ws[1]]), device).transpose();
        let bias = bias.then(|| {
            let (b, bs) = tensors
                .remove(&format!("{prefix}.bias"))
                .expect("checked above");
            Param::from_tensor(Tensor::<1>::from_data(TensorData::new(b, [bs[0]]), device))
        });
        Projection::new(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    };
    let embed = {
        let (values, shape) = tensors
            .remove("model.embed_tokens.weight")
            .expect("checked above");
        Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), device)
    };
    let norm = |tensors: &mut BTreeMap<String, Loaded>, name: &str| -> RmsNorm {
        let (values, shape) = tensors.remove(name).expect("checked above");
        RmsNorm {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [shape[0]]),
                device,
            )),
            eps: config.rms_norm_eps,
        }
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(DecoderLayer {
            input_layernorm: norm(&mut tensors, &format!("{p}.input_layernorm.weight")),
            post_attention_layernorm: norm(
                &mut tensors,
                &format!("{p}.post_attention_layernorm.weight"),
            ),
            self_attn: Attention {
                q_proj: linear(
                    &format!("{p}.self_attn.q_proj"),
                    config.qkv_bias(),
                    &mut tensors,
                ),
                k_proj: linear(
                    &format!("{p}.self_attn.k_proj"),
                    config.qkv_bias(),
                    &mut tensors,
                ),
                v_proj: linear(
                    &format!("{p}.self_attn.v_proj"),
                    config.qkv_bias(),
                    &mut tensors,
                ),
                o_proj: linear(
                    &format!("{p}.self_attn.o_proj"),
                    config.o_bias(),
                    &mut tensors,
                ),
                heads: config.num_attention_heads,
                kv_heads: config.kv_heads(),
                head_dim: config.head_dim(),
            },
            mlp: Mlp {
                gate_proj: linear(&format!("{p}.mlp.gate_proj"), false, &mut tensors),
                up_proj: linear(&format!("{p}.mlp.up_proj"), false, &mut tensors),
                down_proj: linear(&format!("{p}.mlp.down_proj"), false, &mut tensors),
                moe: None,
                more_moe: Vec::new(),
            },
        });
    }
    let final_norm = norm(&mut tensors, "model.norm.weight");
    let lm_head =
        (!config.tie_word_embeddings).then(|| linear("lm_head", false, &mut tensors).base);
    Ok(Decoder {
        embed_tokens: Embedding {
            weight: Param::from_tensor(embed),
        },
        layers,
        norm: final_norm,
        lm_head,
        inverse_frequencies: config.inverse_frequencies(),
        sliding_window: config.sliding_window,
    })
}

/// The tensors of `model` under their Hugging Face names and in PyTorch's orientation
/// (`[out, in]` linear weights), in [`expected_tensors`] order. Adapters are not
/// included (see [`merge`](crate::adapters::merge)).
pub fn named_tensors(model: &Decoder) -> Vec<(String, Tensor<2>)> {
    let row = |t: Tensor<1>| -> Tensor<2> { t.unsqueeze() };
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        model.embed_tokens.weight.val(),
    )];
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        out.push((
            format!("{p}.input_layernorm.weight"),
            row(layer.input_layernorm.weight.val()),
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            row(layer.post_attention_layernorm.weight.val()),
        ));
        let a = &layer.self_attn;
        let m = &layer.mlp;
        for (name, proj) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ] {
            out.push((
                format!("{p}.{name}.weight"),
                proj.base.weight.val().transpose(),
            ));
            if let Some(b) = &proj.base.bias {
                out.push((format!("{p}.{name}.bias"), row(b.val())));
            }
        }
    }
    out.push((
        "model.norm.weight".to_string(),
        row(model.norm.weight.val()),
    ));
    if let Some(head) = &model.lm_head {
        out.push(("lm_head.weight".to_string(), head.weight.val().transpose()));
    }
    out
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so a
/// reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes float32 `tensors` (name, shape, values) as the safetensors file `path`,
/// atomically.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), ModelError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .expect("consistent shape"),
            )
        })
        .collect();
    let data = safetensors::serialize(views, metadata).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &data).map_err(io(path))
}

/// The values of `t` as f32.
pub(crate) fn f32_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 data")
}

/// Writes `model` as a Hugging Face folder: `config.json` and a float32
/// `model.safetensors` (each written atomically).
pub fn save_decoder(model: &Decoder, config: &DecoderConfig, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = named_tensors(model)
        .into_iter()
        .map(|(name, t)| {
            let t = t.inner();
            let mut shape = t.dims().to_vec();
            if name.ends_with("norm.weight") || name.ends_with(".bias") {
                shape = vec![shape[1]];
            }
            (name, shape, f32_values(t))
        })
        .collect();
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    write_f32_safetensors(&dir.join("model.safetensors"), tensors, Some(metadata))?;
    let json = serde_json::to_string_pretty(config).expect("serialisable config");
    let path = dir.join("config.json");
    write_atomic(&path, json.as_bytes()).map_err(io(&path))
}

/// A decoder of `config` with random weights (normal, std `std`; norm gains 1), for
/// benchmarks and tests that need the shapes, not a checkpoint.
pub fn random_decoder(
    config: &DecoderConfig,
    std: f64,
    device: &Device,
) -> Result<Decoder, String> {
    config.validate()?;
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected_tensors(config) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            let t = Tensor::<1>::random(
                [n],
                burn::tensor::Distribution::Normal(0.0, std),
                &Device::flex(),
            );
            t.into_data().try_to_vec().expect("f32 data")
        };
        tensors.insert(name, (values, shape));
    }
    decoder_from_tensors(config, tensors, Path::new("<random>"), device).map_err(|e| e.to_string())
}
