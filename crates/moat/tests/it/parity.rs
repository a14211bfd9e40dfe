//! Parity with the official TensorFlow MOAT (deeplab2), on fixtures written by
//! tools/reference/moat/make_fixtures.py: two small MOATs built with deeplab2's `MOAT`
//! class and random values in every variable, a TF1 bundle written by TensorFlow's
//! SaveV2, and the official logits and endpoints. Tolerance: max |ours - tf| <=
//! 1e-4 * max |tf| per tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use moat::tf_checkpoint::{TfCheckpoint, WeightCopy, convert_checkpoint};
use moat::weights::{WeightError, load_tf_weights, load_tf_weights_from_bytes};
use moat::{Moat, MoatConfig};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn tensor(r: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, key: &str, device: &Device) -> Tensor<4> {
    let (shape, values) = &r[key];
    Tensor::from_data(TensorData::new(values.clone(), shape.clone()), device)
}

fn assert_close<const D: usize>(ours: Tensor<D>, expected: &[f32], what: &str) {
    let ours = ours.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs error {err} vs max |ref| {scale}"
    );
}

/// The fixture models: stem 16, depths 1/1/2/2, channels 32/32/64/64, 10 classes.
fn base() -> MoatConfig {
    MoatConfig::custom([16, 16], [1, 1, 2, 2], [32, 32, 64, 64]).with_num_classes(Some(10))
}

fn window_config() -> MoatConfig {
    let mut c = base().with_windows([4, 4], [2, 2]);
    c.global_attention_at_end_of_stage = true;
    c.pool_size = 3;
    c
}

fn converted(copy: WeightCopy) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let summary = convert_checkpoint(fixtures().join("tiny_global"), &out, copy).unwrap();
    // The Momentum slot and global_step are left out, and so are the EMA shadows (raw)
    // or the raw copies of trainable variables (EMA).
    assert!(summary.skipped.iter().any(|s| s == "global_step"));
    assert!(summary.skipped.iter().any(|s| s.ends_with("/Momentum")));
    let mut model = base().init(&Device::flex());
    assert_eq!(summary.written, moat::tf_variable_table(&mut model).len());
    (dir, out)
}

#[test]
fn tf_bundle_to_safetensors_to_logits_and_endpoints() {
    let device = Device::flex();
    let r = reference();
    let (_dir, weights) = converted(WeightCopy::Ema);
    let model: Moat = load_tf_weights(base().init(&device), &weights).unwrap();
    let x = tensor(&r, "input_global", &device);
    assert_close(
        model.forward(x.clone()),
        &r["logits_global"].1,
        "global logits",
    );
    let ends = model.endpoints(x);
    for level in 2..=5 {
        assert_close(
            ends.res(level),
            &r[&format!("res{level}_global")].1,
            &format!("res{level}"),
        );
    }
}

#[test]
fn window_attention_with_pool_3_matches_tf() {
    let device = Device::flex();
    let r = reference();
    let model = load_tf_weights(
        window_config().init(&device),
        fixtures().join("tiny_window_weights.safetensors"),
    )
    .unwrap();
    let x = tensor(&r, "input_window", &device);
    assert_close(model.forward(x), &r["logits_window"].1, "window logits");
}

#[test]
fn raw_copy_takes_the_training_variables() {
    let (_dir, weights) = converted(WeightCopy::Raw);
    let bytes = std::fs::read(&weights).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor("moat/logits_head/bias").unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values, reference()["raw_logits_head_bias"].1);
}

#[test]
fn bundle_index_lists_every_saved_variable() {
    let ckpt = TfCheckpoint::open(fixtures().join("tiny_global")).unwrap();
    let vars = ckpt.variables();
    assert_eq!(vars["global_step"].shape, Vec::<usize>::new());
    assert_eq!(vars["moat/stem/conv_0/kernel"].shape, vec![3, 3, 3, 16]);
    assert_eq!(
        vars["moat/block_02_00/attention/relative_position_embedding/ExponentialMovingAverage"]
            .shape,
        vec![2, 27, 27]
    );
    assert_eq!(
        vars["moat/block_03_01/attention/o/weight"].shape,
        vec![2, 32, 64]
    );
    // Also accepts the `.index` path itself.
    assert!(TfCheckpoint::open(fixtures().join("tiny_global.index")).is_ok());
}

fn copy_bundle(dir: &Path) -> PathBuf {
    for ext in ["index", "data-00000-of-00001"] {
        std::fs::copy(
            fixtures().join(format!("tiny_global.{ext}")),
            dir.join(format!("tiny_global.{ext}")),
        )
        .unwrap();
    }
    dir.join("tiny_global")
}

#[test]
fn corrupt_bundles_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = copy_bundle(dir.path());
    let index = dir.path().join("tiny_global.index");
    let bytes = std::fs::read(&index).unwrap();

    // Truncated index: no footer magic.
    std::fs::write(&index, &bytes[..bytes.len() - 10]).unwrap();
    let err = TfCheckpoint::open(&prefix).unwrap_err().to_string();
    assert!(
        err.contains("tiny_global.index") && err.contains("magic"),
        "{err}"
    );

    // A flipped byte inside a block: CRC mismatch.
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x40;
    std::fs::write(&index, &flipped).unwrap();
    let err = TfCheckpoint::open(&prefix).unwrap_err().to_string();
    assert!(err.contains("CRC32C"), "{err}");

    // Intact index, damaged data shard: the variable is named.
    std::fs::write(&index, &bytes).unwrap();
    let data = dir.path().join("tiny_global.data-00000-of-00001");
    let mut shard = std::fs::read(&data).unwrap();
    let ckpt = TfCheckpoint::open(&prefix).unwrap();
    let name = "moat/stem/conv_0/kernel/ExponentialMovingAverage";
    // Flip a bit of every byte: every tensor's CRC fails.
    shard.iter_mut().for_each(|b| *b ^= 0x01);
    std::fs::write(&data, &shard).unwrap();
    let err = ckpt.read_f32(&[name]).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("CRC32C"), "{err}");

    // Truncated shard.
    std::fs::write(&data, &shard[..1000]).unwrap();
    let err = ckpt
        .read_f32(&["moat/logits_head/kernel"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("moat/logits_head/kernel") && err.contains("past the end"),
        "{err}"
    );

    // Missing shard.
    std::fs::remove_file(&data).unwrap();
    let err = ckpt
        .read_f32(&["moat/logits_head/kernel"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("data-00000-of-00001"), "{err}");

    // Not a checkpoint at all.
    let err = TfCheckpoint::open(dir.path().join("nothing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing.index"), "{err}");
}

fn write_without(
    weights: &Path,
    drop: &str,
    reshape: Option<(&str, Vec<usize>)>,
    extra: bool,
) -> Vec<u8> {
    let bytes = std::fs::read(weights).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        if name == drop {
            continue;
        }
        let mut shape = view.shape().to_vec();
        if let Some((n, s)) = &reshape
            && *n == name
        {
            shape = s.clone();
        }
        owned.push((name, shape, view.data().to_vec()));
    }
    if extra {
        owned.push((
            "moat/block_09_00/pre_norm/gamma".into(),
            vec![2],
            vec![0; 8],
        ));
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn mismatched_weights_name_the_variable() {
    let device = Device::flex();
    let weights = fixtures().join("tiny_window_weights.safetensors");
    let origin = Path::new("w.safetensors");
    let missing = write_without(&weights, "moat/block_02_01/attention/k/bias", None, false);
    let err =
        load_tf_weights_from_bytes(window_config().init(&device), &missing, origin).unwrap_err();
    assert!(matches!(err, WeightError::Mismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("missing variable moat/block_02_01/attention/k/bias (shape [2, 32])"),
        "{msg}"
    );

    let reshaped = write_without(
        &weights,
        "",
        Some((
            "moat/block_00_00/se/reduce_conv2d/kernel",
            vec![1, 1, 256, 4],
        )),
        true,
    );
    let msg = load_tf_weights_from_bytes(window_config().init(&device), &reshaped, origin)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shape mismatch for moat/block_00_00/se/reduce_conv2d/kernel"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected variable moat/block_09_00/pre_norm/gamma"),
        "{msg}"
    );

    // A model without position embedding rejects a file that has the tables.
    let msg = load_tf_weights(
        window_config().without_position_embedding().init(&device),
        &weights,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("unexpected variable moat/block_02_00/attention/relative_position_embedding"),
        "{msg}"
    );

    // Not safetensors.
    let msg = load_tf_weights_from_bytes(window_config().init(&device), b"garbage", origin)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("w.safetensors"), "{msg}");
}
