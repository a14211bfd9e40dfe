//! Reading diffusers / transformers weight files: memory-mapped safetensors (float32,
//! float16 or bfloat16, computed in float32), consumed by name while a model is built.
//!
//! A model is built by asking a [`Weights`] for each tensor under its diffusers name
//! and shape. Problems do not stop the build: every missing or mis-shaped tensor is
//! noted, and [`Weights::finish`] reports them all at once, with every tensor of the
//! file that nothing asked for. The same builder code makes random-weight models for
//! benchmarks ([`Weights::random`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Distribution, Tensor, TensorData, bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// Why a model folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file is malformed or describes something this crate does not implement.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weight file is not valid safetensors or holds an unsupported dtype.
    #[error("{path} is not a usable safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights do not match the configuration.
    #[error("the weights in {path} do not match its config.json:\n{details}")]
    Mismatch {
        /// The weight file.
        path: PathBuf,
        /// One line per missing, mis-shaped or unexpected tensor.
        details: String,
    },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and parses a JSON file into `T`, naming the file on any error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// How a random-weight tensor is drawn (only used by [`Weights::random`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// Normal with the given standard deviation.
    Normal(f64),
    /// All ones (norm gains).
    Ones,
    /// All zeros (biases, norm shifts).
    Zeros,
}

/// A tensor's dtype, shape and byte range in the file's data section.
type TensorEntry = (Dtype, Vec<usize>, (usize, usize));

enum Source {
    File {
        path: PathBuf,
        map: Mmap,
        header: usize,
        tensors: BTreeMap<String, TensorEntry>,
    },
    Random,
}

/// Tensors by name, from a safetensors file or drawn at random.
pub struct Weights {
    source: Source,
    device: Device,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl Weights {
    /// Memory-maps `path` and reads its header.
    pub fn open(path: &Path, device: &Device) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        // SAFETY: the map is read-only and lives as long as `Weights`; a weight file
        // changed underneath a running program is outside what this crate guards.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        let (header, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| LoadError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, (info.dtype, info.shape.clone(), info.data_offsets)))
            .collect();
        Ok(Weights {
            source: Source::File {
                path: path.to_path_buf(),
                map,
                header,
                tensors,
            },
            device: device.clone(),
            used: BTreeSet::new(),
            problems: Vec::new(),
        })
    }

    /// A source that draws every tensor at random (see [`Init`]), for benchmarks and
    /// tests that need the architecture, not a checkpoint.
    pub fn random(device: &Device) -> Self {
        Weights {
            source: Source::Random,
            device: device.clone(),
            used: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the file holds a tensor called `name` (random sources hold everything).
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::File { tensors, .. } => tensors.contains_key(name),
            Source::Random => true,
        }
    }

    /// The tensor `name` with `shape`. A missing or mis-shaped tensor is noted for
    /// [`finish`](Self::finish) and replaced by zeros so the build can go on.
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<D> {
        let data = self.data(name, &shape, init);
        Tensor::from_data(data, &self.device)
    }

    fn data(&mut self, name: &str, shape: &[usize], init: Init) -> TensorData {
        let n: usize = shape.iter().product();
        let Source::File {
            map,
            header,
            tensors,
            ..
        } = &self.source
        else {
            return match init {
                Init::Normal(std) => {
                    let t = Tensor::<1>::random([n], Distribution::Normal(0.0, std), &self.device);
                    TensorData::new(
                        t.into_data()
                            .convert::<f32>()
                            .try_into_vec::<f32>()
                            .expect("f32 data"),
                        shape.to_vec(),
                    )
                }
                Init::Ones => TensorData::new(vec![1.0f32; n], shape.to_vec()),
                Init::Zeros => TensorData::new(vec![0.0f32; n], shape.to_vec()),
            };
        };
        let zeros = || TensorData::new(vec![0.0f32; n], shape.to_vec());
        let Some((dtype, file_shape, (start, end))) = tensors.get(name) else {
            self.problems
                .push(format!("  missing tensor {name} (shape {shape:?})"));
            return zeros();
        };
        self.used.insert(name.to_string());
        // A 1x1 convolution stored as a linear weight (or the reverse) has the same
        // values: diffusers converts between them on load (`proj_in`, VAE attention).
        let same_values = file_shape.iter().product::<usize>() == n
            && file_shape
                .iter()
                .filter(|&&d| d != 1)
                .eq(shape.iter().filter(|&&d| d != 1));
        if file_shape.as_slice() != shape && !same_values {
            self.problems.push(format!(
                "  {name}: expected shape {shape:?}, file has {file_shape:?}"
            ));
            return zeros();
        }
        let bytes = &map[8 + header + start..8 + header + end];
        let values: Vec<f32> = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                self.problems
                    .push(format!("  {name}: unsupported dtype {other:?}"));
                return zeros();
            }
        };
        TensorData::new(values, shape.to_vec())
    }

    /// Marks `name` as known but unused (buffers such as `position_ids`).
    pub(crate) fn skip(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// Every problem met while building, plus the file's tensors that nothing asked
    /// for; `Ok` when there are none.
    pub fn finish(self) -> Result<(), LoadError> {
        let Source::File { path, tensors, .. } = self.source else {
            return Ok(());
        };
        let mut problems = self.problems;
        for (name, (_, shape, _)) in &tensors {
            if !self.used.contains(name) {
                problems.push(format!("  unexpected tensor {name} {shape:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Mismatch {
                path,
                details: problems.join("\n"),
            })
        }
    }
}

/// The weight file of a diffusers / transformers component folder: `name.safetensors`,
/// or its `name.fp16.safetensors` variant when that is the only one (or when `fp16` is
/// preferred and it exists).
pub fn weight_file(dir: &Path, name: &str, prefer_fp16: bool) -> Result<PathBuf, LoadError> {
    let plain = dir.join(format!("{name}.safetensors"));
    let half = dir.join(format!("{name}.fp16.safetensors"));
    let found = match (plain.is_file(), half.is_file()) {
        (true, true) if prefer_fp16 => half,
        (true, _) => plain,
        (false, true) => half,
        (false, false) => {
            return Err(LoadError::Io {
                path: plain,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {name}.safetensors or {name}.fp16.safetensors in the folder"),
                ),
            });
        }
    };
    Ok(found)
}
