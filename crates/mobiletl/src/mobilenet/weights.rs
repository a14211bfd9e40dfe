//! Loading torchvision and timm MobileNet checkpoints (safetensors).
//!
//! Every tensor name of both layouts is derived from the model's own structure, so the
//! remapping is an exact table (one `^name$` rule per tensor, applied by burn-store's
//! [`KeyRemapper`]) rather than a set of regexes that could silently match the wrong
//! layer. Before anything is applied the file's header is checked against that table:
//! missing tensors, unexpected tensors and shape mismatches are all reported by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    KeyRemapper, ModuleAdapter, ModuleContext, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};
use irb_core::InvertedResidual;
use safetensors::SafeTensors;

use super::{MobileNet, MobileNetArch};

/// Whose parameter names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Naming {
    /// `torchvision.models.mobilenet_v2 / mobilenet_v3_large / mobilenet_v3_small`.
    Torchvision,
    /// timm's `mobilenetv2_100 / mobilenetv3_large_100 / mobilenetv3_small_100`.
    Timm,
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file could not be read.
    #[error("cannot read weights {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (bad header, truncated data).
    #[error("{path} is not a valid safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The names do not match the model.
    #[error("{path} does not match {arch:?} in {naming:?} naming:\n{details}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The architecture being loaded.
        arch: MobileNetArch,
        /// The naming assumed.
        naming: Naming,
        /// One line per missing, unexpected or misshapen tensor.
        details: String,
    },
    /// burn-store failed while applying the tensors.
    #[error("applying {path} failed: {message}")]
    Apply {
        /// The file.
        path: PathBuf,
        /// The store's message.
        message: String,
    },
}

/// What a named tensor is, to know its leaves and its external shape.
#[derive(Debug, Clone, Copy)]
enum Layer {
    Conv,
    Norm,
    Linear,
    /// A linear layer stored as a 1x1 convolution (timm's MobileNetV3 `conv_head`).
    LinearAsConv,
}

/// One entry of the name table: the checkpoint prefix, the model prefix, the layer kind.
struct Entry {
    external: String,
    internal: String,
    layer: Layer,
}

/// timm's stage sizes (blocks per `blocks.s`), excluding the final 1x1 conv stage of V3.
fn timm_stages(arch: MobileNetArch) -> &'static [usize] {
    match arch {
        MobileNetArch::V2 => &[1, 2, 3, 4, 3, 3, 1],
        MobileNetArch::V3Large => &[1, 2, 3, 4, 2, 3],
        MobileNetArch::V3Small => &[1, 2, 3, 2, 3],
    }
}

fn layer_table(model: &MobileNet, naming: Naming) -> Vec<Entry> {
    let mut table = Vec::new();
    let mut add = |external: String, internal: String, layer: Layer| {
        table.push(Entry {
            external,
            internal,
            layer,
        })
    };
    let conv_norm =
        |add: &mut dyn FnMut(String, String, Layer), ext: &str, ext_norm: &str, int: &str| {
            add(ext.to_string(), format!("{int}.conv"), Layer::Conv);
            add(ext_norm.to_string(), format!("{int}.norm"), Layer::Norm);
        };
    let nb = model.blocks.len();
    let v3 = model.arch != MobileNetArch::V2;
    match naming {
        Naming::Torchvision => {
            conv_norm(&mut add, "features.0.0", "features.0.1", "stem");
            for (i, block) in model.blocks.iter().enumerate() {
                let base = if v3 {
                    format!("features.{}.block", i + 1)
                } else {
                    format!("features.{}.conv", i + 1)
                };
                torchvision_block(&mut add, &base, &format!("blocks.{i}"), block, v3);
            }
            conv_norm(
                &mut add,
                &format!("features.{}.0", nb + 1),
                &format!("features.{}.1", nb + 1),
                "last",
            );
            if v3 {
                add("classifier.0".into(), "head".into(), Layer::Linear);
                add("classifier.3".into(), "classifier".into(), Layer::Linear);
            } else {
                add("classifier.1".into(), "classifier".into(), Layer::Linear);
            }
        }
        Naming::Timm => {
            add("conv_stem".into(), "stem.conv".into(), Layer::Conv);
            add("bn1".into(), "stem.norm".into(), Layer::Norm);
            let stages = timm_stages(model.arch);
            let mut i = 0;
            for (s, &count) in stages.iter().enumerate() {
                for j in 0..count {
                    timm_block(
                        &mut add,
                        &format!("blocks.{s}.{j}"),
                        &format!("blocks.{i}"),
                        &model.blocks[i],
                    );
                    i += 1;
                }
            }
            debug_assert_eq!(i, nb, "timm stage table does not cover the blocks");
            if v3 {
                let s = stages.len();
                add(
                    format!("blocks.{s}.0.conv"),
                    "last.conv".into(),
                    Layer::Conv,
                );
                add(format!("blocks.{s}.0.bn1"), "last.norm".into(), Layer::Norm);
                add("conv_head".into(), "head".into(), Layer::LinearAsConv);
            } else {
                add("conv_head".into(), "last.conv".into(), Layer::Conv);
                add("bn2".into(), "last.norm".into(), Layer::Norm);
            }
            add("classifier".into(), "classifier".into(), Layer::Linear);
        }
    }
    table
}

fn torchvision_block(
    add: &mut dyn FnMut(String, String, Layer),
    base: &str,
    int: &str,
    block: &InvertedResidual,
    v3: bool,
) {
    let mut k = 0;
    let cna = |add: &mut dyn FnMut(String, String, Layer), k: usize, conv: &str, norm: &str| {
        add(
            format!("{base}.{k}.0"),
            format!("{int}.{conv}"),
            Layer::Conv,
        );
        add(
            format!("{base}.{k}.1"),
            format!("{int}.{norm}"),
            Layer::Norm,
        );
    };
    if block.expand_conv.is_some() {
        cna(add, k, "expand_conv", "expand_norm");
        k += 1;
    }
    cna(add, k, "depthwise_conv", "depthwise_norm");
    k += 1;
    if block.squeeze_excite.is_some() {
        add(
            format!("{base}.{k}.fc1"),
            format!("{int}.squeeze_excite.reduce"),
            Layer::Conv,
        );
        add(
            format!("{base}.{k}.fc2"),
            format!("{int}.squeeze_excite.expand"),
            Layer::Conv,
        );
        k += 1;
    }
    if v3 {
        cna(add, k, "project_conv", "project_norm");
    } else {
        // MobileNetV2's projection is a bare conv and BN in the block's Sequential.
        add(
            format!("{base}.{k}"),
            format!("{int}.project_conv"),
            Layer::Conv,
        );
        add(
            format!("{base}.{}", k + 1),
            format!("{int}.project_norm"),
            Layer::Norm,
        );
    }
}

fn timm_block(
    add: &mut dyn FnMut(String, String, Layer),
    base: &str,
    int: &str,
    block: &InvertedResidual,
) {
    let mut pair = |ext: &str, int_name: &str, layer| {
        add(format!("{base}.{ext}"), format!("{int}.{int_name}"), layer)
    };
    let se = block.squeeze_excite.is_some();
    if block.expand_conv.is_some() {
        pair("conv_pw", "expand_conv", Layer::Conv);
        pair("bn1", "expand_norm", Layer::Norm);
        pair("conv_dw", "depthwise_conv", Layer::Conv);
        pair("bn2", "depthwise_norm", Layer::Norm);
        if se {
            pair("se.conv_reduce", "squeeze_excite.reduce", Layer::Conv);
            pair("se.conv_expand", "squeeze_excite.expand", Layer::Conv);
        }
        pair("conv_pwl", "project_conv", Layer::Conv);
        pair("bn3", "project_norm", Layer::Norm);
    } else {
        // timm's DepthwiseSeparableConv.
        pair("conv_dw", "depthwise_conv", Layer::Conv);
        pair("bn1", "depthwise_norm", Layer::Norm);
        if se {
            pair("se.conv_reduce", "squeeze_excite.reduce", Layer::Conv);
            pair("se.conv_expand", "squeeze_excite.expand", Layer::Conv);
        }
        pair("conv_pw", "project_conv", Layer::Conv);
        pair("bn2", "project_norm", Layer::Norm);
    }
}

/// Every tensor of `model` in a checkpoint of the given naming:
/// `(checkpoint name, model path, checkpoint shape)`, in model order. BatchNorm leaves use
/// PyTorch's names (`weight`, `bias`, `running_mean`, `running_var`); the
/// `num_batches_tracked` counters PyTorch also saves are accepted and ignored.
pub fn tensor_names(model: &MobileNet, naming: Naming) -> Vec<(String, String, Vec<usize>)> {
    let shapes: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect();
    let mut out = Vec::new();
    for entry in layer_table(model, naming) {
        let leaves: &[(&str, &str)] = match entry.layer {
            Layer::Conv | Layer::Linear | Layer::LinearAsConv => {
                &[("weight", "weight"), ("bias", "bias")]
            }
            Layer::Norm => &[
                ("weight", "gamma"),
                ("bias", "beta"),
                ("running_mean", "running_mean"),
                ("running_var", "running_var"),
            ],
        };
        for (ext_leaf, int_leaf) in leaves {
            let internal = format!("{}.{int_leaf}", entry.internal);
            let Some(shape) = shapes.get(&internal) else {
                // Convolutions without bias have no `bias` tensor.
                continue;
            };
            let mut shape = shape.clone();
            if *ext_leaf == "weight" {
                match entry.layer {
                    // burn stores linear weights as [in, out], PyTorch as [out, in].
                    Layer::Linear => shape.reverse(),
                    Layer::LinearAsConv => shape = vec![shape[1], shape[0], 1, 1],
                    _ => {}
                }
            }
            let path = format!("{}.{ext_leaf}", entry.internal);
            out.push((format!("{}.{ext_leaf}", entry.external), path, shape));
        }
    }
    out
}

/// Guesses the naming of a checkpoint from its tensor names (timm has `conv_stem`).
pub fn detect_naming<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Naming> {
    for name in names {
        if name.starts_with("conv_stem.") {
            return Some(Naming::Timm);
        }
        if name.starts_with("features.0.0.") {
            return Some(Naming::Torchvision);
        }
    }
    None
}

/// The naming and number of classes of a checkpoint, from its header alone (the
/// classifier's output rows). `None` when neither naming is recognised.
pub fn checkpoint_num_classes(path: &Path) -> Result<Option<(Naming, usize)>, WeightError> {
    use std::io::Read;
    let corrupt = |message: String| WeightError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| corrupt(format!("cannot read the header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(io)?.len();
    if len > 100_000_000 || len + 8 > file_len {
        return Err(corrupt(format!(
            "header length {len} does not fit in a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| corrupt(format!("truncated header: {e}")))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("bad header JSON: {e}")))?;
    let Some(naming) = detect_naming(header.keys().map(String::as_str)) else {
        return Ok(None);
    };
    let keys: &[&str] = match naming {
        Naming::Timm => &["classifier.weight"],
        Naming::Torchvision => &["classifier.3.weight", "classifier.1.weight"],
    };
    for key in keys {
        if let Some(rows) = header
            .get(*key)
            .and_then(|v| v.get("shape"))
            .and_then(|s| s.get(0))
            .and_then(|r| r.as_u64())
        {
            return Ok(Some((naming, rows as usize)));
        }
    }
    Ok(None)
}

/// Reshapes timm's `conv_head` 1x1 convolution weight into a linear weight, before the
/// PyTorch adapter transposes it.
#[derive(Clone)]
struct ConvHeadAsLinear;

impl ModuleAdapter for ConvHeadAsLinear {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        if tensor.name == "head.weight" && tensor.shape.len() == 4 {
            let (name, dtype) = (tensor.name.clone(), tensor.dtype);
            let shape = Shape::from(vec![tensor.shape[0], tensor.shape[1]]);
            let target = shape.clone();
            return bridge::map_data(tensor, name, dtype, shape, move |data| {
                let dtype = data.dtype();
                TensorData::from_bytes(data.into_bytes(), target.clone(), dtype)
            });
        }
        tensor
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Casts half-precision checkpoints to the model's float32.
#[derive(Clone)]
struct ToFloat32;

impl ModuleAdapter for ToFloat32 {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        if matches!(tensor.dtype, DType::F16 | DType::BF16 | DType::F64) {
            let (name, shape) = (tensor.name.clone(), tensor.shape.clone());
            return bridge::map_data(tensor, name, DType::F32, shape, |data| {
                data.convert_dtype(DType::F32)
            });
        }
        tensor
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Loads a safetensors checkpoint into `model`.
///
/// `naming` defaults to the one detected from the file's names. Nothing is applied unless
/// every tensor of the model is present with the right shape and the file holds nothing
/// else (other than `num_batches_tracked` counters).
pub fn load_weights(
    model: MobileNet,
    path: impl AsRef<Path>,
    naming: Option<Naming>,
) -> Result<MobileNet, WeightError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_weights_from_bytes(model, bytes, naming, path)
}

/// [`load_weights`] on an in-memory file; `origin` names it in errors.
pub fn load_weights_from_bytes(
    mut model: MobileNet,
    bytes: Vec<u8>,
    naming: Option<Naming>,
    origin: &Path,
) -> Result<MobileNet, WeightError> {
    let corrupt = |message: String| WeightError::Corrupt {
        path: origin.to_path_buf(),
        message,
    };
    let header: BTreeMap<String, Vec<usize>> = {
        let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut header = BTreeMap::new();
        for (name, view) in file.tensors() {
            match view.dtype() {
                safetensors::Dtype::F32
                | safetensors::Dtype::F16
                | safetensors::Dtype::BF16
                | safetensors::Dtype::F64
                | safetensors::Dtype::I64 => {}
                other => {
                    return Err(corrupt(format!(
                        "tensor {name} has unsupported dtype {other:?}"
                    )));
                }
            }
            header.insert(name, view.shape().to_vec());
        }
        header
    };
    let naming = match naming {
        Some(n) => n,
        None => detect_naming(header.keys().map(String::as_str)).ok_or_else(|| {
            corrupt("neither torchvision (features.0.0.*) nor timm (conv_stem.*) names found; pass --naming".into())
        })?,
    };
    let table = tensor_names(&model, naming);
    let mut details = Vec::new();
    let mut expected = BTreeSet::new();
    for (external, _, shape) in &table {
        expected.insert(external.as_str());
        match header.get(external) {
            None => details.push(format!("  missing tensor {external} (shape {shape:?})")),
            Some(found) if found != shape => details.push(format!(
                "  shape mismatch for {external}: model expects {shape:?}, file has {found:?}"
            )),
            Some(_) => {}
        }
    }
    for name in header.keys() {
        if !expected.contains(name.as_str()) && !name.ends_with(".num_batches_tracked") {
            details.push(format!(
                "  unexpected tensor {name} (shape {:?})",
                header[name]
            ));
        }
    }
    if !details.is_empty() {
        return Err(WeightError::Mismatch {
            path: origin.to_path_buf(),
            arch: model.arch(),
            naming,
            details: details.join("\n"),
        });
    }
    let rules = table
        .iter()
        .map(|(external, internal, _)| (format!("^{}$", regex_escape(external)), internal.clone()));
    let remapper = KeyRemapper::from_pattern_iter(rules).map_err(|e| WeightError::Apply {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    let adapter = ConvHeadAsLinear
        .chain(ToFloat32)
        .chain(PyTorchToBurnAdapter);
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .remap(remapper)
        .with_from_adapter(adapter)
        .allow_partial(true)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| WeightError::Apply {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
    let unused: Vec<_> = result
        .unused
        .iter()
        .filter(|n| !n.ends_with(".num_batches_tracked"))
        .collect();
    if !result.errors.is_empty() || !result.missing.is_empty() || !unused.is_empty() {
        return Err(WeightError::Apply {
            path: origin.to_path_buf(),
            message: format!(
                "errors {:?}, missing {:?}, unused {unused:?}",
                result.errors, result.missing
            ),
        });
    }
    Ok(model)
}

fn regex_escape(name: &str) -> String {
    name.replace('.', r"\.")
}
