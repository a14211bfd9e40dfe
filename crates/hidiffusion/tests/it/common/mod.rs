//! Fixture access shared by the test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// OpenAI's CLIP merges file, committed gzipped beside the fixtures (MIT; see
/// tests/fixtures/clip-bpe/README.md), so these tests need nothing outside the
/// repository.
pub fn openai_merges() -> PathBuf {
    fixture("clip-bpe/bpe_simple_vocab_16e6.txt.gz")
}

/// A copy of fixture folder `name` completed with the tokenizer folders the pipeline
/// needs (built from the CLIP merges: SD 1.x and SDXL's first tokenizer pad with
/// `<|endoftext|>`, SD 2.x and SDXL's second with `!`). Folders that carry their own
/// tokenizer folders (the current-release generation) are copied as they are.
pub fn model_dir(name: &str) -> tempfile::TempDir {
    let merges = openai_merges();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), dir.path());
    let first_pad = if name.starts_with("sd21") {
        "!"
    } else {
        "<|endoftext|>"
    };
    if !dir.path().join("tokenizer").is_dir() {
        hidiffusion::tokenizer::ClipTokenizer::write_diffusers_folder(
            &merges,
            &dir.path().join("tokenizer"),
            first_pad,
        )
        .unwrap();
    }
    if dir.path().join("text_encoder_2").is_dir() && !dir.path().join("tokenizer_2").is_dir() {
        hidiffusion::tokenizer::ClipTokenizer::write_diffusers_folder(
            &merges,
            &dir.path().join("tokenizer_2"),
            "!",
        )
        .unwrap();
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The tensors of an `expected.safetensors`.
pub struct Expected {
    bytes: Vec<u8>,
    path: PathBuf,
}

impl Expected {
    pub fn open(path: &Path) -> Self {
        Expected {
            bytes: std::fs::read(path).unwrap(),
            path: path.to_path_buf(),
        }
    }

    fn view(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = file
            .tensor(key)
            .unwrap_or_else(|_| panic!("{} has no {key}", self.path.display()));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(key)
            .is_ok()
    }

    pub fn floats(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let (dtype, shape, data) = self.view(key);
        assert_eq!(dtype, Dtype::F32, "{key}");
        (
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            shape,
        )
    }

    pub fn ints(&self, key: &str) -> (Vec<i64>, Vec<usize>) {
        let (dtype, shape, data) = self.view(key);
        assert_eq!(dtype, Dtype::I64, "{key}");
        (
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            shape,
        )
    }

    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let (values, shape) = self.floats(key);
        assert_eq!(shape.len(), D, "{key} has rank {}", shape.len());
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// max |got - want| / max |want|.
pub fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// Asserts relative error <= `tol`, naming what is compared.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let err = max_rel(got, want);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    eprintln!("{what}: relative error {err:.2e}");
}
