//! The checkpoint loader: full-size name tables against torchvision's and timm's
//! state_dicts, and clear errors on every kind of bad checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use mobiletl::mobilenet::{
    Flavor, MobileNet, MobileNetArch, MobileNetConfig, Naming, WeightError, load_weights,
    load_weights_from_bytes, tensor_names,
};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn fixture_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn flavor(naming: Naming) -> Flavor {
    match naming {
        Naming::Torchvision => Flavor::Torchvision,
        Naming::Timm => Flavor::Timm,
    }
}

const CASES: &[(&str, MobileNetArch, Naming)] = &[
    ("mobilenet_v2_tv", MobileNetArch::V2, Naming::Torchvision),
    (
        "mobilenet_v3_large_tv",
        MobileNetArch::V3Large,
        Naming::Torchvision,
    ),
    (
        "mobilenet_v3_small_tv",
        MobileNetArch::V3Small,
        Naming::Torchvision,
    ),
    ("mobilenet_v2_timm", MobileNetArch::V2, Naming::Timm),
    (
        "mobilenet_v3_large_timm",
        MobileNetArch::V3Large,
        Naming::Timm,
    ),
    (
        "mobilenet_v3_small_timm",
        MobileNetArch::V3Small,
        Naming::Timm,
    ),
];

/// At width 1.0 and 1000 classes, our table of names and shapes is exactly the state_dict
/// of `torchvision.models.mobilenet_*()` / `timm.create_model("mobilenetv*_100")`, and the
/// parameter counts agree.
#[test]
fn full_size_name_tables_equal_the_reference_state_dicts() {
    #[derive(serde::Deserialize)]
    struct Manifest {
        params: usize,
        tensors: BTreeMap<String, Vec<usize>>,
    }
    let device = Device::flex();
    for &(name, arch, naming) in CASES {
        let text = std::fs::read_to_string(fixture_path(&format!("names_{name}.json"))).unwrap();
        let manifest: Manifest = serde_json::from_str(&text).unwrap();
        let model = MobileNetConfig::new(arch)
            .with_flavor(flavor(naming))
            .init(&device);
        assert_eq!(
            model.cost(224).params(),
            manifest.params,
            "{name}: parameter count"
        );
        let ours: BTreeMap<String, Vec<usize>> = tensor_names(&model, naming)
            .into_iter()
            .map(|(external, _, shape)| (external, shape))
            .collect();
        let theirs: BTreeMap<String, Vec<usize>> = manifest
            .tensors
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(ours, theirs, "{name}: names and shapes");
    }
}

fn small(arch: MobileNetArch, naming: Naming) -> MobileNet {
    MobileNetConfig::new(arch)
        .with_width(0.5)
        .with_num_classes(10)
        .with_flavor(flavor(naming))
        .init(&Device::flex())
}

/// Rewrites the V3-Small torchvision fixture through `edit` (name -> (shape, bytes)).
fn edited(
    edit: impl FnOnce(&mut BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> Vec<u8> {
    let bytes = std::fs::read(fixture_path("mobilenet_v3_small_tv.weights.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<_, _> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn load_error(bytes: Vec<u8>, naming: Option<Naming>) -> String {
    let model = small(MobileNetArch::V3Small, Naming::Torchvision);
    match load_weights_from_bytes(model, bytes, naming, Path::new("edited.safetensors")) {
        Ok(_) => panic!("an invalid checkpoint loaded"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn the_unedited_fixture_loads() {
    let bytes = edited(|_| {});
    let model = small(MobileNetArch::V3Small, Naming::Torchvision);
    load_weights_from_bytes(model, bytes, None, Path::new("x")).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let message = load_error(
        edited(|t| {
            assert!(t.remove("features.4.block.2.fc1.weight").is_some());
        }),
        None,
    );
    assert!(
        message.contains("missing tensor features.4.block.2.fc1.weight"),
        "{message}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let message = load_error(
        edited(|t| {
            let extra = t["classifier.3.bias"].clone();
            t.insert("classifier.4.bias".into(), extra);
        }),
        None,
    );
    assert!(
        message.contains("unexpected tensor classifier.4.bias"),
        "{message}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    // Width 0.5 weights into a width 1.0 model.
    let model = MobileNetConfig::new(MobileNetArch::V3Small)
        .with_num_classes(10)
        .init(&Device::flex());
    let err = load_weights(
        model,
        fixture_path("mobilenet_v3_small_tv.weights.safetensors"),
        None,
    )
    .expect_err("width mismatch must fail");
    let message = err.to_string();
    assert!(matches!(err, WeightError::Mismatch { .. }), "{message}");
    assert!(
        message.contains("shape mismatch for features.0.0.weight: model expects [16, 3, 3, 3], file has [8, 3, 3, 3]"),
        "{message}"
    );
}

#[test]
fn wrong_naming_lists_what_does_not_match() {
    let message = load_error(edited(|_| {}), Some(Naming::Timm));
    assert!(
        message.contains("missing tensor conv_stem.weight"),
        "{message}"
    );
    assert!(
        message.contains("unexpected tensor features.0.0.weight"),
        "{message}"
    );
}

#[test]
fn truncated_and_garbage_files_are_rejected() {
    let mut bytes = edited(|_| {});
    bytes.truncate(bytes.len() - 100);
    let message = load_error(bytes, None);
    assert!(
        message.contains("is not a valid safetensors file"),
        "{message}"
    );

    let message = load_error(b"definitely not safetensors".to_vec(), None);
    assert!(
        message.contains("edited.safetensors is not a valid safetensors file"),
        "{message}"
    );

    let model = small(MobileNetArch::V3Small, Naming::Torchvision);
    let err = load_weights(model, "/nonexistent/w.safetensors", None)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent/w.safetensors"),
        "{err}"
    );
}
