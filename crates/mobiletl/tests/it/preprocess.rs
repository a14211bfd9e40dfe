//! Preprocessing against torchvision's `Resize -> CenterCrop -> ToTensor -> Normalize` on
//! a synthetic PNG (tools/reference/mobilenet/make_fixtures.py).
//!
//! Both resize in 8-bit with an antialiased triangle filter and round; the filters'
//! fixed-point details differ, so pixels may differ by a level or two: the tolerance is
//! 3 levels (3 / 255 / 0.225 = 0.053 after normalisation) per value and half a level on
//! average.

use std::path::Path;

use burn::tensor::Device;
use mobiletl::preprocess::Preprocess;
use safetensors::SafeTensors;

#[test]
fn matches_torchvision_transform() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let pre = Preprocess {
        resize: 40,
        crop: 32,
        ..Preprocess::default()
    };
    let ours = pre.load(&dir.join("image.png"), &Device::flex()).unwrap();
    assert_eq!(ours.dims(), [1, 3, 32, 32]);
    let ours = ours.into_data().try_to_vec::<f32>().unwrap();
    let bytes = std::fs::read(dir.join("image.preprocessed.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let reference: Vec<f32> = file
        .tensor("input")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let diffs: Vec<f32> = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().fold(0f32, |m, d| m.max(*d));
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let level = 1.0 / 255.0 / 0.225;
    assert!(
        max <= 3.0 * level,
        "max diff {max} ({:.1} levels)",
        max / level
    );
    assert!(
        mean <= 0.5 * level,
        "mean diff {mean} ({:.2} levels)",
        mean / level
    );
}

#[test]
fn unreadable_image_is_named() {
    let err = Preprocess::default()
        .load(Path::new("/nonexistent/cat.jpg"), &Device::flex())
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cat.jpg"), "{err}");
}
