//! The 18 parameter counts of the official `moat_test.py` and the model-zoo FLOPs.

use burn::tensor::Device;
use moat::MoatVariant;

#[test]
fn all_eighteen_official_parameter_counts() {
    let device = Device::flex();
    for variant in MoatVariant::ALL {
        let (with_pe, without_pe) = variant.official_params();
        let r = variant.pretrain_resolution();
        let config = variant.config();
        // Parameters stay lazily uninitialised: counting MOAT-4 allocates nothing.
        let ours = config.clone().init(&device).cost(r, r).params();
        assert_eq!(ours, with_pe, "{variant} with position embedding");
        let ours = config
            .without_position_embedding()
            .init(&device)
            .cost(r, r)
            .params();
        assert_eq!(ours, without_pe, "{variant} without position embedding");
    }
}

/// The official profile (tools/reference/moat/profile_flops.py: TF's profiler over the
/// deeplab2 graph, as moat_test.py, batch 1, / 2) of each variant.
fn official_profile() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/official_flops.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn flops_match_the_official_profile_and_the_model_zoo() {
    let device = Device::flex();
    let profile = official_profile();
    for variant in MoatVariant::ALL {
        let r = variant.pretrain_resolution();
        let report = variant.config().init(&device).cost(r, r);
        let entry = &profile[variant.name()];
        assert_eq!(entry["resolution"].as_u64(), Some(r as u64));
        let ops = &entry["by_op_over_2"];
        let tf_macs: f64 = ["Conv2D", "DepthwiseConv2dNative", "Einsum"]
            .iter()
            .map(|k| ops[k].as_f64().unwrap())
            .sum();
        // Multiply-adds: the same convolutions, dense layers and attention products as
        // TF's graph (ours adds the SE rescaling, a Mul of 1/2 "MAC" per element there).
        let macs = moat::multiply_adds(&report) as f64;
        assert!(
            (macs - tf_macs).abs() <= 2e-3 * tf_macs,
            "{variant}: {macs} MACs vs TF {tf_macs}"
        );
        // With element-wise operations, the official convention.
        let total = report.macs() as f64;
        let tf_total = entry["flops_over_2"].as_f64().unwrap();
        assert!(
            (total - tf_total).abs() <= 1e-2 * tf_total,
            "{variant}: {total} vs TF profile {tf_total}"
        );
        let zoo = variant.zoo_gmacs() * 1e9;
        assert!(
            (total - zoo).abs() <= 0.02 * zoo,
            "{variant} at {r}: {:.3} G vs model zoo {}",
            total / 1e9,
            variant.zoo_gmacs()
        );
    }
}
