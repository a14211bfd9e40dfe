//! Reading TensorFlow checkpoint bundles (`PREFIX.index` + `PREFIX.data-SSSSS-of-NNNNN`),
//! the format of the official MOAT checkpoints, without TensorFlow.
//!
//! The `.index` file is a LevelDB-format SSTable (TF's `lib/io/table`): data blocks of
//! prefix-compressed key/value entries with restart points, an index block of block
//! handles, and a 48-byte footer ending in the magic `0xdb4775248b80fb57`. Every block is
//! followed by a compression byte and a masked CRC32C. The key `""` holds a
//! `BundleHeaderProto`; every other key is a variable name whose value is a
//! `BundleEntryProto` (dtype, shape, shard, offset, size, CRC32C of the bytes). Tensors are
//! stored little-endian and contiguous in the data shards.
//!
//! The protobuf messages are three small structs decoded with `prost`'s derive (no
//! generated code, no `.proto` files at build time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O failure on a file of the bundle.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The index or a data shard is not what the format says.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A variable of an unsupported type or layout.
    #[error("variable {name} in {path}: {message}")]
    Unsupported {
        /// The index file.
        path: PathBuf,
        /// The variable.
        name: String,
        /// What is not supported.
        message: String,
    },
}

const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: usize = 48;
const BLOCK_TRAILER_LEN: usize = 5;

/// `tensorflow.BundleHeaderProto`.
#[derive(Clone, PartialEq, Message)]
struct BundleHeaderProto {
    #[prost(int32, tag = "1")]
    num_shards: i32,
    /// 0 little-endian, 1 big-endian.
    #[prost(int32, tag = "2")]
    endianness: i32,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, Message)]
struct DimProto {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<DimProto>,
    #[prost(bool, tag = "3")]
    unknown_rank: bool,
}

/// `tensorflow.BundleEntryProto` (slices, tag 7, are detected by their presence only).
#[derive(Clone, PartialEq, Message)]
struct BundleEntryProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    shard_id: i32,
    #[prost(int64, tag = "4")]
    offset: i64,
    #[prost(int64, tag = "5")]
    size: i64,
    #[prost(fixed32, tag = "6")]
    crc32c: u32,
    #[prost(bytes = "vec", repeated, tag = "7")]
    slices: Vec<Vec<u8>>,
}

/// Element type of a checkpoint variable (the TF `DataType` values that occur in
/// model checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TfDtype {
    /// `DT_FLOAT`.
    F32,
    /// `DT_DOUBLE`.
    F64,
    /// `DT_INT32`.
    I32,
    /// `DT_INT64`.
    I64,
    /// `DT_BFLOAT16`.
    BF16,
    /// `DT_HALF`.
    F16,
}

impl TfDtype {
    fn from_proto(v: i32) -> Option<Self> {
        Some(match v {
            1 => TfDtype::F32,
            2 => TfDtype::F64,
            3 => TfDtype::I32,
            9 => TfDtype::I64,
            14 => TfDtype::BF16,
            19 => TfDtype::F16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TfDtype::F32 | TfDtype::I32 => 4,
            TfDtype::F64 | TfDtype::I64 => 8,
            TfDtype::BF16 | TfDtype::F16 => 2,
        }
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        !matches!(self, TfDtype::I32 | TfDtype::I64)
    }
}

/// One variable of a bundle.
#[derive(Debug, Clone)]
pub struct TfVariable {
    /// Element type; `None` for types this reader does not decode (strings, ...).
    pub dtype: Option<TfDtype>,
    /// TF `DataType` number as stored.
    pub dtype_code: i32,
    /// Shape.
    pub shape: Vec<usize>,
    shard: usize,
    offset: u64,
    size: u64,
    crc32c: u32,
    sliced: bool,
}

/// An opened checkpoint bundle: the index is parsed, shards are read on demand.
#[derive(Debug)]
pub struct TfCheckpoint {
    index_path: PathBuf,
    shards: Vec<PathBuf>,
    variables: BTreeMap<String, TfVariable>,
}

fn corrupt(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// TF's masked CRC32C (`crc32c::Mask`): rotate right by 15 and add a constant, so that
/// CRCs of data containing CRCs stay well distributed.
pub fn mask_crc32c(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[derive(Debug, Clone, Copy)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

fn block_handle(buf: &[u8], pos: &mut usize) -> Option<BlockHandle> {
    Some(BlockHandle {
        offset: varint(buf, pos)?,
        size: varint(buf, pos)?,
    })
}

/// The contents of the block at `handle`, with its trailer checked.
fn read_block<'a>(
    file: &'a [u8],
    handle: BlockHandle,
    path: &Path,
) -> Result<&'a [u8], CheckpointError> {
    let start = handle.offset as usize;
    let end = start
        .checked_add(handle.size as usize)
        .filter(|&e| e + BLOCK_TRAILER_LEN <= file.len())
        .ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "block at {start} (+{}) runs past the end of the file",
                    handle.size
                ),
            )
        })?;
    let contents = &file[start..end];
    let trailer = &file[end..end + BLOCK_TRAILER_LEN];
    match trailer[0] {
        0 => {}
        1 => {
            return Err(corrupt(
                path,
                "snappy-compressed table blocks are not supported (TF writes bundles uncompressed)",
            ));
        }
        other => {
            return Err(corrupt(
                path,
                format!("unknown block compression type {other}"),
            ));
        }
    }
    let stored = u32::from_le_bytes(trailer[1..5].try_into().expect("4 bytes"));
    let actual = mask_crc32c(crc32c::crc32c_append(
        crc32c::crc32c(contents),
        &trailer[..1],
    ));
    if stored != actual {
        return Err(corrupt(
            path,
            format!(
                "block at {start}: CRC32C mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ),
        ));
    }
    Ok(contents)
}

/// All key/value entries of a block, keys decompressed.
/// A key and its value.
type Entry = (Vec<u8>, Vec<u8>);

fn block_entries(block: &[u8], path: &Path) -> Result<Vec<Entry>, CheckpointError> {
    if block.len() < 4 {
        return Err(corrupt(path, "table block shorter than its restart count"));
    }
    let restarts =
        u32::from_le_bytes(block[block.len() - 4..].try_into().expect("4 bytes")) as usize;
    let data_end = block.len().checked_sub(4 + 4 * restarts).ok_or_else(|| {
        corrupt(
            path,
            format!("table block claims {restarts} restart points"),
        )
    })?;
    let data = &block[..data_end];
    let mut entries = Vec::new();
    let mut key: Vec<u8> = Vec::new();
    let mut pos = 0;
    let bad = || corrupt(path, "truncated entry in a table block");
    while pos < data.len() {
        let shared = varint(data, &mut pos).ok_or_else(bad)? as usize;
        let non_shared = varint(data, &mut pos).ok_or_else(bad)? as usize;
        let value_len = varint(data, &mut pos).ok_or_else(bad)? as usize;
        if shared > key.len() || pos + non_shared + value_len > data.len() {
            return Err(bad());
        }
        key.truncate(shared);
        key.extend_from_slice(&data[pos..pos + non_shared]);
        pos += non_shared;
        entries.push((key.clone(), data[pos..pos + value_len].to_vec()));
        pos += value_len;
    }
    Ok(entries)
}

impl TfCheckpoint {
    /// Opens the bundle with prefix `prefix` (the path without `.index`; a path ending in
    /// `.index` is accepted too).
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let prefix = prefix.as_ref();
        let prefix = match prefix.to_str().and_then(|s| s.strip_suffix(".index")) {
            Some(stripped) => PathBuf::from(stripped),
            None => prefix.to_path_buf(),
        };
        let index_path = PathBuf::from(format!("{}.index", prefix.display()));
        let file = std::fs::read(&index_path).map_err(|source| CheckpointError::Io {
            path: index_path.clone(),
            source,
        })?;
        let path = index_path.as_path();
        if file.len() < FOOTER_LEN {
            return Err(corrupt(
                path,
                format!("{} bytes: shorter than a table footer", file.len()),
            ));
        }
        let footer = &file[file.len() - FOOTER_LEN..];
        let magic = u64::from_le_bytes(footer[40..48].try_into().expect("8 bytes"));
        if magic != TABLE_MAGIC {
            return Err(corrupt(
                path,
                format!("not a TensorFlow checkpoint index (table magic {magic:#x})"),
            ));
        }
        let mut pos = 0;
        let _metaindex =
            block_handle(footer, &mut pos).ok_or_else(|| corrupt(path, "bad metaindex handle"))?;
        let index =
            block_handle(footer, &mut pos).ok_or_else(|| corrupt(path, "bad index handle"))?;
        let mut raw = BTreeMap::new();
        for (_, handle_bytes) in block_entries(read_block(&file, index, path)?, path)? {
            let handle = block_handle(&handle_bytes, &mut 0)
                .ok_or_else(|| corrupt(path, "bad data block handle"))?;
            for (key, value) in block_entries(read_block(&file, handle, path)?, path)? {
                raw.insert(key, value);
            }
        }
        let header_bytes = raw
            .remove(&Vec::new())
            .ok_or_else(|| corrupt(path, "no bundle header (empty key)"))?;
        let header = BundleHeaderProto::decode(header_bytes.as_slice())
            .map_err(|e| corrupt(path, format!("bad bundle header: {e}")))?;
        if header.endianness != 0 {
            return Err(corrupt(path, "big-endian bundles are not supported"));
        }
        let num_shards = header.num_shards.max(1) as usize;
        let shards = (0..num_shards)
            .map(|s| {
                PathBuf::from(format!(
                    "{}.data-{s:05}-of-{num_shards:05}",
                    prefix.display()
                ))
            })
            .collect();
        let mut variables = BTreeMap::new();
        for (key, value) in raw {
            let name = String::from_utf8(key)
                .map_err(|_| corrupt(path, "a variable name is not UTF-8"))?;
            let entry = BundleEntryProto::decode(value.as_slice())
                .map_err(|e| corrupt(path, format!("bad entry for variable {name}: {e}")))?;
            let shape = entry.shape.unwrap_or_default();
            if shape.unknown_rank || shape.dim.iter().any(|d| d.size < 0) {
                return Err(corrupt(
                    path,
                    format!("variable {name} has an unknown shape"),
                ));
            }
            if entry.shard_id < 0
                || entry.shard_id as usize >= num_shards
                || entry.offset < 0
                || entry.size < 0
            {
                return Err(corrupt(
                    path,
                    format!("variable {name} points outside the {num_shards} data shard(s)"),
                ));
            }
            variables.insert(
                name,
                TfVariable {
                    dtype: TfDtype::from_proto(entry.dtype),
                    dtype_code: entry.dtype,
                    shape: shape.dim.iter().map(|d| d.size as usize).collect(),
                    shard: entry.shard_id as usize,
                    offset: entry.offset as u64,
                    size: entry.size as u64,
                    crc32c: entry.crc32c,
                    sliced: !entry.slices.is_empty(),
                },
            );
        }
        Ok(TfCheckpoint {
            index_path,
            shards,
            variables,
        })
    }

    /// Variables by name.
    pub fn variables(&self) -> &BTreeMap<String, TfVariable> {
        &self.variables
    }

    /// The index file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// Reads every variable of `names` as float32 (converting f64 / f16 / bf16), checking
    /// sizes and CRCs. Each data shard is read once.
    pub fn read_f32(&self, names: &[&str]) -> Result<BTreeMap<String, Vec<f32>>, CheckpointError> {
        let mut by_shard: BTreeMap<usize, Vec<(&str, &TfVariable)>> = BTreeMap::new();
        for &name in names {
            let var = self
                .variables
                .get(name)
                .ok_or_else(|| CheckpointError::Unsupported {
                    path: self.index_path.clone(),
                    name: name.to_string(),
                    message: "not in the checkpoint".into(),
                })?;
            by_shard.entry(var.shard).or_default().push((name, var));
        }
        let mut out = BTreeMap::new();
        for (shard, vars) in by_shard {
            let shard_path = &self.shards[shard];
            let data = std::fs::read(shard_path).map_err(|source| CheckpointError::Io {
                path: shard_path.clone(),
                source,
            })?;
            for (name, var) in vars {
                let unsupported = |message: String| CheckpointError::Unsupported {
                    path: self.index_path.clone(),
                    name: name.to_string(),
                    message,
                };
                if var.sliced {
                    return Err(unsupported(
                        "partitioned (sliced) variables are not supported".into(),
                    ));
                }
                let dtype = var.dtype.filter(|d| d.is_float()).ok_or_else(|| {
                    unsupported(format!("TF dtype {} is not a float type", var.dtype_code))
                })?;
                let count: usize = var.shape.iter().product();
                if var.size as usize != count * dtype.size() {
                    return Err(unsupported(format!(
                        "{} bytes stored for shape {:?} of {dtype:?}",
                        var.size, var.shape
                    )));
                }
                let start = var.offset as usize;
                let bytes = data.get(start..start + var.size as usize).ok_or_else(|| {
                    corrupt(shard_path, format!("variable {name} ({} bytes at {start}) runs past the end of the shard ({} bytes)", var.size, data.len()))
                })?;
                let crc = mask_crc32c(crc32c::crc32c(bytes));
                if crc != var.crc32c {
                    return Err(corrupt(
                        shard_path,
                        format!(
                            "variable {name}: CRC32C mismatch (index {:#010x}, data {crc:#010x})",
                            var.crc32c
                        ),
                    ));
                }
                let values: Vec<f32> = match dtype {
                    TfDtype::F32 => bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                        .collect(),
                    TfDtype::F64 => bytes
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32)
                        .collect(),
                    TfDtype::F16 => bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    TfDtype::BF16 => bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    TfDtype::I32 | TfDtype::I64 => unreachable!("filtered above"),
                };
                out.insert(name.to_string(), values);
            }
        }
        Ok(out)
    }
}

/// Which copy of each weight a conversion takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightCopy {
    /// The `.../ExponentialMovingAverage` shadow where present (what the model zoo
    /// evaluates), the raw variable otherwise (e.g. BN moving statistics).
    Ema,
    /// The raw training variables.
    Raw,
}

/// Suffix of EMA shadow variables.
pub const EMA_SUFFIX: &str = "/ExponentialMovingAverage";

/// Last name components of MOAT's model variables.
const MODEL_LEAVES: [&str; 9] = [
    "kernel",
    "depthwise_kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
    "weight",
    "relative_position_embedding",
];

/// The MOAT variables of a checkpoint, by their model name (`moat/...`), each mapped to
/// the checkpoint variable it is read from. Optimizer slots, step counters and other
/// scopes are left out; stem variables saved without the `moat/stem/` scope get it back,
/// as the official loader does.
pub fn moat_variable_names(
    checkpoint: &TfCheckpoint,
    copy: WeightCopy,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let vars = checkpoint.variables();
    for name in vars.keys() {
        let leaf = name.rsplit('/').next().unwrap_or_default();
        // Optimizer slots (`.../Momentum`, `.../RMSProp`) and EMA shadows end otherwise.
        if !MODEL_LEAVES.contains(&leaf) {
            continue;
        }
        let model_name = if name.starts_with("moat/") {
            name.clone()
        } else if name.starts_with("conv_") || name.starts_with("norm_") {
            format!("moat/stem/{name}")
        } else {
            continue;
        };
        let ema = format!("{name}{EMA_SUFFIX}");
        let source = if copy == WeightCopy::Ema && vars.contains_key(&ema) {
            ema
        } else {
            name.clone()
        };
        out.insert(model_name, source);
    }
    out
}

/// What [`convert_checkpoint`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversionSummary {
    /// Variables written.
    pub written: usize,
    /// How many of them came from EMA shadows.
    pub from_ema: usize,
    /// Parameters written (elements).
    pub elements: usize,
    /// Checkpoint entries left out (optimizer slots, counters, other scopes, the copy of
    /// each weight that was not chosen).
    pub skipped: Vec<String>,
}

/// Converts the MOAT variables of the bundle at `prefix` into a safetensors file of
/// TF-named float32 tensors (what [`crate::weights::load_tf_weights`] reads).
pub fn convert_checkpoint(
    prefix: impl AsRef<Path>,
    out: impl AsRef<Path>,
    copy: WeightCopy,
) -> Result<ConversionSummary, anyhow::Error> {
    let checkpoint = TfCheckpoint::open(prefix)?;
    let names = moat_variable_names(&checkpoint, copy);
    if names.is_empty() {
        anyhow::bail!(
            "{} holds no MOAT variables (no moat/... names among {} entries)",
            checkpoint.index_path().display(),
            checkpoint.variables().len()
        );
    }
    let sources: Vec<&str> = names.values().map(String::as_str).collect();
    let mut values = checkpoint.read_f32(&sources)?;
    let used: std::collections::BTreeSet<&str> = sources.iter().copied().collect();
    let skipped = checkpoint
        .variables()
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .cloned()
        .collect();
    let mut tensors = BTreeMap::new();
    let mut from_ema = 0;
    let mut elements = 0;
    for (model_name, source) in &names {
        let shape = checkpoint.variables()[source].shape.clone();
        let data = values.remove(source).expect("read above");
        elements += data.len();
        from_ema += usize::from(source.ends_with(EMA_SUFFIX));
        tensors.insert(model_name.clone(), (shape, data));
    }
    crate::weights::write_safetensors(out.as_ref(), &tensors)?;
    Ok(ConversionSummary {
        written: tensors.len(),
        from_ema,
        elements,
        skipped,
    })
}
