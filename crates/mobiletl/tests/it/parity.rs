//! Parity with torchvision and timm: random-weight models of width 0.5 (10 classes) saved
//! by tools/reference/mobilenet/make_fixtures.py, loaded through the checkpoint loader, run
//! on the same input.
//!
//! Tolerance: max |ours - reference| / max |reference| <= 1e-4 for eval logits, one block's
//! output, train-mode logits and every BatchNorm's running statistics after one
//! train-mode forward.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor, TensorData};
use mobiletl::mobilenet::{
    Flavor, MobileNet, MobileNetArch, MobileNetConfig, Naming, load_weights, tensor_names,
};
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

struct Fixture {
    name: &'static str,
    arch: MobileNetArch,
    naming: Naming,
    /// Index of the block whose output the fixture holds.
    block: usize,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "mobilenet_v2_tv",
        arch: MobileNetArch::V2,
        naming: Naming::Torchvision,
        block: 4,
    },
    Fixture {
        name: "mobilenet_v3_large_tv",
        arch: MobileNetArch::V3Large,
        naming: Naming::Torchvision,
        block: 4,
    },
    Fixture {
        name: "mobilenet_v3_small_tv",
        arch: MobileNetArch::V3Small,
        naming: Naming::Torchvision,
        block: 3,
    },
    Fixture {
        name: "mobilenet_v2_timm",
        arch: MobileNetArch::V2,
        naming: Naming::Timm,
        block: 4,
    },
    Fixture {
        name: "mobilenet_v3_large_timm",
        arch: MobileNetArch::V3Large,
        naming: Naming::Timm,
        block: 4,
    },
    Fixture {
        name: "mobilenet_v3_small_timm",
        arch: MobileNetArch::V3Small,
        naming: Naming::Timm,
        block: 6,
    },
];

fn fixture_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn reference(fixture: &Fixture) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture_path(&format!("{}.io.safetensors", fixture.name))).unwrap();
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

fn model(fixture: &Fixture, device: &Device) -> MobileNet {
    let flavor = match fixture.naming {
        Naming::Torchvision => Flavor::Torchvision,
        Naming::Timm => Flavor::Timm,
    };
    let net = MobileNetConfig::new(fixture.arch)
        .with_width(0.5)
        .with_num_classes(10)
        .with_flavor(flavor)
        .with_dropout(0.0)
        .init(device);
    let path = fixture_path(&format!("{}.weights.safetensors", fixture.name));
    load_weights(net, path, Some(fixture.naming)).unwrap()
}

fn rel_err(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let scale = reference
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn input(reference: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, device: &Device) -> Tensor<4> {
    let (shape, data) = &reference["input"];
    Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device)
}

#[test]
fn eval_logits_and_block_output_match() {
    let device = Device::flex();
    for fixture in FIXTURES {
        let reference = reference(fixture);
        let net = model(fixture, &device);
        let x = input(&reference, &device);
        let err = rel_err(&values(net.forward(x.clone())), &reference["logits"].1);
        assert!(err <= TOLERANCE, "{}: logits rel err {err:e}", fixture.name);

        let mut h = net.stem.forward(x);
        for block in &net.blocks[..=fixture.block] {
            h = block.forward(h);
        }
        assert_eq!(
            h.dims().to_vec(),
            reference["block"].0,
            "{}: block shape",
            fixture.name
        );
        let err = rel_err(&values(h), &reference["block"].1);
        assert!(
            err <= TOLERANCE,
            "{}: block {} rel err {err:e}",
            fixture.name,
            fixture.block
        );
    }
}

#[test]
fn train_mode_logits_and_running_statistics_match() {
    let device = Device::flex().autodiff();
    for fixture in FIXTURES {
        let reference = reference(fixture);
        let net = model(fixture, &device);
        let x = input(&reference, &device);
        let err = rel_err(&values(net.forward(x)), &reference["train.logits"].1);
        assert!(
            err <= TOLERANCE,
            "{}: train logits rel err {err:e}",
            fixture.name
        );

        net.sync_running_stats();
        let ours: BTreeMap<String, Vec<f32>> = net
            .collect(None, None, false)
            .into_iter()
            .filter(|t| t.name.ends_with("running_mean") || t.name.ends_with("running_var"))
            .map(|t| {
                let data = burn::store::bridge::to_data(&t)
                    .unwrap()
                    .try_to_vec::<f32>()
                    .unwrap();
                (t.name, data)
            })
            .collect();
        let mut checked = 0;
        for (external, internal, _) in tensor_names(&net, fixture.naming) {
            if !(external.ends_with("running_mean") || external.ends_with("running_var")) {
                continue;
            }
            let expected = &reference[&format!("train.{external}")].1;
            let err = rel_err(&ours[&internal], expected);
            assert!(
                err <= TOLERANCE,
                "{}: {external} rel err {err:e}",
                fixture.name
            );
            checked += 1;
        }
        let expected_count = reference
            .keys()
            .filter(|k| k.starts_with("train.") && k.contains("running_"))
            .count();
        assert_eq!(
            checked, expected_count,
            "{}: every BatchNorm checked",
            fixture.name
        );
    }
}
