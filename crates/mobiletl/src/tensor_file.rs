//! Reading and writing single float32 tensors in safetensors files (the CLI's
//! `--input` / `--output` format).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// Why a tensor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a safetensors file, or truncated.
    #[error("{path} is not a valid safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The key is absent.
    #[error("{path} has no tensor named {key:?} (it has: {available})")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key asked for.
        key: String,
        /// The keys present.
        available: String,
    },
    /// Wrong dtype or rank.
    #[error("tensor {key:?} in {path} must be {expected}, found {found}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
}

/// Reads the float32 tensor `key` of rank `D` from a safetensors file.
pub fn read_tensor<const D: usize>(
    path: &Path,
    key: &str,
    device: &Device,
) -> Result<Tensor<D>, TensorFileError> {
    let bytes = std::fs::read(path).map_err(|source| TensorFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| TensorFileError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let view = file.tensor(key).map_err(|_| {
        let mut names = file.names();
        names.sort();
        TensorFileError::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            available: names.join(", "),
        }
    })?;
    let format_error = |expected: String, found: String| TensorFileError::Format {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected,
        found,
    };
    if view.dtype() != Dtype::F32 {
        return Err(format_error(
            "float32".into(),
            format!("{:?}", view.dtype()),
        ));
    }
    if view.shape().len() != D {
        return Err(format_error(
            format!("rank {D}"),
            format!("shape {:?}", view.shape()),
        ));
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

/// Writes float32 tensors to a safetensors file atomically (temporary file in the same
/// directory, then rename), so an interrupted run never leaves a truncated file.
pub fn write_tensors(path: &Path, tensors: &[(&str, TensorData)]) -> Result<(), TensorFileError> {
    let io = |source| TensorFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for (name, data) in tensors {
        let values = data
            .try_to_vec::<f32>()
            .map_err(|e| TensorFileError::Format {
                path: path.to_path_buf(),
                key: name.to_string(),
                expected: "float32".into(),
                found: format!("{e:?}"),
            })?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        entries.push((name.to_string(), data.shape().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("shape and byte length agree by construction");
            (name.clone(), view)
        })
        .collect();
    let serialized = safetensors::serialize(views, None).map_err(|e| TensorFileError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::checkpoint::write_atomic(path, &serialized).map_err(io)?;
    Ok(())
}
