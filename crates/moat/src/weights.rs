//! Loading MOAT weights stored under the official TensorFlow variable names.
//!
//! A safetensors file whose keys are the variable names of the official checkpoints
//! (`moat/stem/conv_0/kernel`, `moat/block_02_03/attention/q/weight`, ...) in TF layouts
//! (convolution kernels HWIO, depthwise kernels `[H, W, C, 1]`, q/k/v `[C, heads, 32]`,
//! o `[heads, 32, C]`, the logits head as a 1x1 conv `[1, 1, C, classes]`) is checked
//! against the model as a whole, every missing, unexpected or mis-shaped variable listed
//! by name, before anything is assigned. `moat convert-tf` writes such files from the
//! official TF1 bundles ([`crate::tf_checkpoint`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use irb_core::{BatchNorm, InvertedResidual};
use safetensors::SafeTensors;

use crate::model::{Moat, StageBlock};

/// Why weights could not be loaded.
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
    /// Not a safetensors file, or a tensor of a type that is not float.
    #[error("{path} is not a valid MOAT weights file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Names or shapes do not match the model.
    #[error("{path} does not match the model:\n{details}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// One line per problem, naming the variable.
        details: String,
    },
}

/// A model tensor that a TF variable fills, with the layout conversion it needs.
pub enum Target<'a> {
    /// Convolution kernel: TF `[kh, kw, in, out]` -> burn `[out, in, kh, kw]`.
    Conv(&'a mut Param<Tensor<4>>),
    /// Depthwise kernel: TF `[kh, kw, C, 1]` -> burn `[C, 1, kh, kw]`.
    Depthwise(&'a mut Param<Tensor<4>>),
    /// Dense weight whose TF shape splits or adds axes of burn's `[in, out]` (same
    /// memory order, a reshape).
    Matrix(&'a mut Param<Tensor<2>>, Vec<usize>),
    /// Vector parameter with its TF shape (q/k/v biases are `[heads, 32]`).
    Vector(&'a mut Param<Tensor<1>>, Vec<usize>),
    /// BatchNorm moving statistic.
    Running(&'a mut RunningState<Tensor<1>>),
    /// Relative position table `[heads, 2p - 1, 2p - 1]` (same layout).
    Table(&'a mut Param<Tensor<3>>),
}

impl Target<'_> {
    /// The TF shape this target expects.
    pub fn tf_shape(&self) -> Vec<usize> {
        match self {
            Target::Conv(p) => {
                let [o, i, kh, kw] = p.lazy_shape().dims::<4>();
                vec![kh, kw, i, o]
            }
            Target::Depthwise(p) => {
                let [c, _, kh, kw] = p.lazy_shape().dims::<4>();
                vec![kh, kw, c, 1]
            }
            Target::Matrix(_, s) | Target::Vector(_, s) => s.clone(),
            Target::Running(r) => r.value().dims().to_vec(),
            Target::Table(p) => p.lazy_shape().to_vec(),
        }
    }

    /// The current values in TF layout.
    fn tf_values(&self) -> Vec<f32> {
        fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("converted to f32")
        }
        match self {
            Target::Conv(p) => values(p.val().permute([2, 3, 1, 0])),
            Target::Depthwise(p) => values(p.val().permute([2, 3, 0, 1])),
            Target::Matrix(p, _) => values(p.val()),
            Target::Vector(p, _) => values(p.val()),
            Target::Running(r) => values(r.value_sync()),
            Target::Table(p) => values(p.val()),
        }
    }

    /// Assigns TF-layout `values` (already checked against [`Self::tf_shape`]).
    fn assign(self, values: Vec<f32>, device: &Device) {
        // `transform_for_load` keeps the parameter's id and gradient requirement.
        fn set<const D: usize>(p: &mut Param<Tensor<D>>, t: Tensor<D>) {
            let id = p.id;
            *p = p.clone().transform_for_load(t, id);
        }
        let shape = self.tf_shape();
        match self {
            Target::Conv(p) => {
                let t = Tensor::<4>::from_data(TensorData::new(values, shape), device);
                set(p, t.permute([3, 2, 0, 1]));
            }
            Target::Depthwise(p) => {
                let t = Tensor::<4>::from_data(TensorData::new(values, shape), device);
                set(p, t.permute([2, 3, 0, 1]));
            }
            Target::Matrix(p, _) => {
                let dims = p.lazy_shape().dims::<2>();
                set(p, Tensor::from_data(TensorData::new(values, dims), device));
            }
            Target::Vector(p, _) => {
                let n = values.len();
                set(p, Tensor::from_data(TensorData::new(values, [n]), device));
            }
            Target::Running(r) => {
                let n = values.len();
                *r = RunningState::new(Tensor::from_data(TensorData::new(values, [n]), device));
            }
            Target::Table(p) => {
                let dims = p.lazy_shape().dims::<3>();
                set(p, Tensor::from_data(TensorData::new(values, dims), device));
            }
        }
    }
}

type Visit<'v> = dyn FnMut(String, Target<'_>) + 'v;

fn conv(scope: &str, c: &mut Conv2d, visit: &mut Visit<'_>) {
    // Keras' DepthwiseConv2D has no bias here and names its kernel differently.
    if c.groups > 1 {
        visit(
            format!("{scope}/depthwise_kernel"),
            Target::Depthwise(&mut c.weight),
        );
        return;
    }
    visit(format!("{scope}/kernel"), Target::Conv(&mut c.weight));
    if let Some(b) = c.bias.as_mut() {
        let n = b.lazy_shape()[0];
        visit(format!("{scope}/bias"), Target::Vector(b, vec![n]));
    }
}

fn batch_norm(scope: &str, n: &mut BatchNorm, visit: &mut Visit<'_>) {
    let c = n.num_features();
    visit(
        format!("{scope}/gamma"),
        Target::Vector(&mut n.gamma, vec![c]),
    );
    visit(
        format!("{scope}/beta"),
        Target::Vector(&mut n.beta, vec![c]),
    );
    visit(
        format!("{scope}/moving_mean"),
        Target::Running(&mut n.running_mean),
    );
    visit(
        format!("{scope}/moving_variance"),
        Target::Running(&mut n.running_var),
    );
}

fn layer_norm(scope: &str, n: &mut LayerNorm, visit: &mut Visit<'_>) {
    let c = n.gamma.lazy_shape()[0];
    visit(
        format!("{scope}/gamma"),
        Target::Vector(&mut n.gamma, vec![c]),
    );
    if let Some(beta) = n.beta.as_mut() {
        visit(format!("{scope}/beta"), Target::Vector(beta, vec![c]));
    }
}

fn dense(
    scope: &str,
    l: &mut Linear,
    weight_shape: Vec<usize>,
    bias_shape: Vec<usize>,
    visit: &mut Visit<'_>,
) {
    visit(
        format!("{scope}/weight"),
        Target::Matrix(&mut l.weight, weight_shape),
    );
    if let Some(b) = l.bias.as_mut() {
        visit(format!("{scope}/bias"), Target::Vector(b, bias_shape));
    }
}

fn mbconv(scope: &str, b: &mut InvertedResidual, visit: &mut Visit<'_>) {
    if let Some(n) = b.pre_norm.as_mut() {
        batch_norm(&format!("{scope}/pre_norm"), n, visit);
    }
    if let Some(c) = b.expand_conv.as_mut() {
        conv(&format!("{scope}/expand_conv"), c, visit);
    }
    if let Some(n) = b.expand_norm.as_mut() {
        batch_norm(&format!("{scope}/expand_norm"), n, visit);
    }
    conv(
        &format!("{scope}/depthwise_conv"),
        &mut b.depthwise_conv,
        visit,
    );
    batch_norm(
        &format!("{scope}/depthwise_norm"),
        &mut b.depthwise_norm,
        visit,
    );
    if let Some(se) = b.squeeze_excite.as_mut() {
        conv(&format!("{scope}/se/reduce_conv2d"), &mut se.reduce, visit);
        conv(&format!("{scope}/se/expand_conv2d"), &mut se.expand, visit);
    }
    conv(&format!("{scope}/shrink_conv"), &mut b.project_conv, visit);
    if let Some(c) = b.shortcut_conv.as_mut() {
        conv(&format!("{scope}/shortcut_conv"), c, visit);
    }
}

/// Calls `visit` with the official TF name and the target of every model variable
/// (trainable ones and BN moving statistics), in a fixed order.
pub fn visit_tf_variables(model: &mut Moat, visit: &mut Visit<'_>) {
    conv("moat/stem/conv_0", &mut model.stem.conv_0, visit);
    batch_norm("moat/stem/norm_0", &mut model.stem.norm_0, visit);
    conv("moat/stem/conv_1", &mut model.stem.conv_1, visit);
    for (s, stage) in model.stages.iter_mut().enumerate() {
        for (i, block) in stage.blocks.iter_mut().enumerate() {
            let scope = format!("moat/block_{s:02}_{i:02}");
            match block {
                StageBlock::MbConv(b) => mbconv(&scope, b, visit),
                StageBlock::Moat(b) => {
                    mbconv(&scope, &mut b.mbconv, visit);
                    layer_norm(
                        &format!("{scope}/attention_norm"),
                        &mut b.attention_norm,
                        visit,
                    );
                    let a = &mut b.attention;
                    let (heads, hs) = (a.heads(), a.head_size());
                    let c = a.q.weight.lazy_shape()[0];
                    let att = format!("{scope}/attention");
                    for (name, l) in [("q", &mut a.q), ("k", &mut a.k), ("v", &mut a.v)] {
                        dense(
                            &format!("{att}/{name}"),
                            l,
                            vec![c, heads, hs],
                            vec![heads, hs],
                            visit,
                        );
                    }
                    dense(
                        &format!("{att}/o"),
                        &mut a.o,
                        vec![heads, hs, c],
                        vec![c],
                        visit,
                    );
                    if let Some(t) = a.relative_position_embedding.as_mut() {
                        visit(
                            format!("{att}/relative_position_embedding"),
                            Target::Table(t),
                        );
                    }
                }
            }
        }
    }
    if let Some(head) = model.head.as_mut() {
        layer_norm("moat/final_layer_norm", &mut head.final_layer_norm, visit);
        let [c, k] = head.logits_head.weight.lazy_shape().dims::<2>();
        dense_head(&mut head.logits_head, c, k, visit);
    }
}

fn dense_head(l: &mut Linear, c: usize, k: usize, visit: &mut Visit<'_>) {
    visit(
        "moat/logits_head/kernel".into(),
        Target::Matrix(&mut l.weight, vec![1, 1, c, k]),
    );
    if let Some(b) = l.bias.as_mut() {
        visit("moat/logits_head/bias".into(), Target::Vector(b, vec![k]));
    }
}

/// Official variable names and TF shapes of `model`, in load order.
pub fn tf_variable_table(model: &mut Moat) -> Vec<(String, Vec<usize>)> {
    let mut table = Vec::new();
    visit_tf_variables(model, &mut |name, target| {
        table.push((name, target.tf_shape()))
    });
    table
}

/// Loads a TF-named safetensors file into `model`.
pub fn load_tf_weights(model: Moat, path: impl AsRef<Path>) -> Result<Moat, WeightError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_tf_weights_from_bytes(model, &bytes, path)
}

/// [`load_tf_weights`] on bytes already read; `origin` names them in errors.
pub fn load_tf_weights_from_bytes(
    mut model: Moat,
    bytes: &[u8],
    origin: &Path,
) -> Result<Moat, WeightError> {
    let corrupt = |message: String| WeightError::Corrupt {
        path: origin.to_path_buf(),
        message,
    };
    let file = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors: BTreeMap<String, (Vec<usize>, safetensors::tensor::TensorView<'_>)> =
        BTreeMap::new();
    for (name, view) in file.tensors() {
        tensors.insert(name, (view.shape().to_vec(), view));
    }
    let table = tf_variable_table(&mut model);
    let mut details = Vec::new();
    let expected: BTreeSet<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in &table {
        match tensors.get(name) {
            None => details.push(format!("  missing variable {name} (shape {shape:?})")),
            Some((found, _)) if found != shape => details.push(format!(
                "  shape mismatch for {name}: model expects {shape:?}, file has {found:?}"
            )),
            Some(_) => {}
        }
    }
    for (name, (shape, _)) in &tensors {
        if !expected.contains(name.as_str()) {
            details.push(format!("  unexpected variable {name} (shape {shape:?})"));
        }
    }
    if !details.is_empty() {
        return Err(WeightError::Mismatch {
            path: origin.to_path_buf(),
            details: details.join("\n"),
        });
    }
    let mut values = BTreeMap::new();
    for (name, (_, view)) in &tensors {
        values.insert(
            name.clone(),
            to_f32(view).map_err(|m| corrupt(format!("variable {name}: {m}")))?,
        );
    }
    let device = model.stem.conv_0.weight.lazy_device();
    visit_tf_variables(&mut model, &mut |name, target| {
        let v = values.remove(&name).expect("checked above");
        target.assign(v, &device);
    });
    Ok(model)
}

fn to_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, String> {
    use safetensors::Dtype;
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?} is not a float type")),
    })
}

/// Writes TF-named float32 tensors as safetensors, atomically (temporary file + rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<(), WeightError> {
    let io = |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, (s, v))| {
            (
                n.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| WeightError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| WeightError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &data).map_err(io)
}

/// Writes a file atomically (temporary file in the same folder, synced, renamed).
pub use mobiletl::checkpoint::write_atomic;

/// Writes the weights of `model` under the official TF variable names and layouts (the
/// inverse of [`load_tf_weights`]; BN moving statistics included), atomically.
pub fn save_tf_weights(model: &Moat, path: impl AsRef<Path>) -> Result<(), WeightError> {
    let mut model = model.clone();
    let mut tensors = BTreeMap::new();
    visit_tf_variables(&mut model, &mut |name, target| {
        let shape = target.tf_shape();
        tensors.insert(name, (shape, target.tf_values()));
    });
    write_safetensors(path.as_ref(), &tensors)
}

/// What a TF-named weights file says about the model it was saved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsLayout {
    /// Classes of the logits head, `None` for a backbone-only file.
    pub num_classes: Option<usize>,
    /// Whether the file has relative position embedding tables.
    pub position_embedding: bool,
}

/// Reads only the header of a TF-named weights file.
pub fn inspect_tf_weights(path: &Path) -> Result<WeightsLayout, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| WeightError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tensors = meta.tensors();
    let num_classes = tensors
        .get("moat/logits_head/kernel")
        .and_then(|info| info.shape.get(3).copied());
    let position_embedding = tensors
        .keys()
        .any(|k| k.ends_with("/relative_position_embedding"));
    Ok(WeightsLayout {
        num_classes,
        position_embedding,
    })
}
