//! Window attention: large inputs run, windows equal to the map reduce to global
//! attention, and sizes that do not tile are refused with a message.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use moat::{MoatConfig, MoatVariant};
use proptest::prelude::*;

fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn tiny_moat0_window_attention_at_512_and_1024() {
    let device = Device::flex();
    // 16x16 windows in stage 3 and 8x8 in stage 4: at 512 px the maps are 32x32 and
    // 16x16 (4 windows each); at 1024 px 64x64 and 32x32 (16 windows each).
    let model = MoatVariant::TinyMoat0
        .config()
        .with_windows([16, 16], [8, 8])
        .init(&device);
    for size in [512, 1024] {
        let x = Tensor::<4>::random([1, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let ends = model.endpoints(x);
        assert_eq!(ends.stages[2].dims(), [1, 128, size / 16, size / 16]);
        assert_eq!(ends.stages[3].dims(), [1, 256, size / 32, size / 32]);
        let v: f32 = ends.stages[3].clone().abs().mean().into_scalar();
        assert!(v.is_finite() && v > 0.0, "{size}: mean |res5| = {v}");
    }
}

#[test]
fn untileable_sizes_are_refused() {
    let config = MoatVariant::Moat0.config().with_windows([14, 14], [7, 7]);
    assert!(config.check_input(448, 448).is_ok());
    let err = config.check_input(512, 512).unwrap_err();
    assert!(err.contains("32x32") && err.contains("14x14"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    /// One window covering the whole map is global attention, for any map size.
    #[test]
    fn a_single_window_is_global_attention(h3 in 1usize..4, w3 in 1usize..4, seed in 0u64..1000) {
        let device = Device::flex();
        device.seed(seed);
        let (h, w) = (32 * h3, 32 * w3);
        let global = MoatConfig::custom([8, 8], [1, 1, 1, 1], [16, 16, 32, 32]).with_num_classes(Some(3));
        let windowed = global.clone().with_windows([h / 16, w / 16], [h / 32, w / 32]);
        let a = global.init(&device);
        let b = windowed.init(&device);
        // Same weights: move a's parameters into b's structure.
        let b = b.load_record(a.clone().into_record());
        let x = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let d = max_abs_diff(a.forward(x.clone()), b.forward(x));
        prop_assert!(d < 1e-5, "difference {}", d);
    }
}
