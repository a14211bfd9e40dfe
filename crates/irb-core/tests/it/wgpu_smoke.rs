//! The wgpu path, checked against flex: one inverted residual block (convolutions,
//! BatchNorm in training mode, Hard-Swish, squeeze-excitation, residual) forward and
//! backward on both devices with the same weights and input.
//!
//! In CI this runs on Mesa's lavapipe software Vulkan adapter (`DeviceKind::Cpu`), so the
//! WGSL kernels are exercised without a GPU. Where the build found no driver
//! (crates/irb-core/build.rs) the test is ignored, with the reason.
#![cfg(feature = "wgpu")]

use burn::module::Module;
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use irb_core::{Activation, BlockSqueezeExcite, InvertedResidualConfig, SeFlavour};

fn max_rel_err(a: &Tensor<4>, b: &Tensor<4>) -> f32 {
    let a = a.to_data().try_to_vec::<f32>().unwrap();
    let b = b.to_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
#[cfg_attr(
    not(wgpu_adapter),
    ignore = "no Vulkan driver found when building (install mesa-vulkan-drivers and libvulkan1)"
)]
fn irb_forward_backward_on_wgpu_matches_flex() {
    let flex = Device::flex().autodiff();
    let wgpu = Device::wgpu(DeviceKind::Cpu).autodiff();
    flex.seed(7);

    let config = InvertedResidualConfig::new(16, 64, 16)
        .with_activation(Activation::HardSwish)
        .with_squeeze_excite(Some(BlockSqueezeExcite::new(16, SeFlavour::MobileNetV3)));
    let block_flex = config.init(&flex);
    // `fork` makes fresh leaves on the wgpu device (`to_device` would stay in the flex graph).
    let block_wgpu = block_flex.clone().fork(&wgpu);

    let x = Tensor::<4>::random([2, 16, 12, 12], Distribution::Normal(0.0, 1.0), &flex);
    let x_flex = x.clone().require_grad();
    let x_wgpu = x.to_device(&wgpu).require_grad();

    let y_flex = block_flex.forward(x_flex.clone());
    let y_wgpu = block_wgpu.forward(x_wgpu.clone());
    let fwd_err = max_rel_err(&y_flex, &y_wgpu.clone().to_device(&flex));
    assert!(fwd_err < 1e-4, "forward differs: {fwd_err}");

    // A non-uniform loss so every gradient path carries signal.
    let weights = Tensor::<4>::random(y_flex.dims(), Distribution::Default, &flex);
    let g_flex = (y_flex * weights.clone()).sum().backward();
    let g_wgpu = (y_wgpu * weights.to_device(&wgpu)).sum().backward();

    let dx_flex = x_flex.grad(&g_flex).unwrap();
    let dx_wgpu = x_wgpu
        .grad(&g_wgpu)
        .unwrap()
        .to_device(&flex.clone().inner());
    let dx_err = max_rel_err(&dx_flex, &dx_wgpu);
    assert!(dx_err < 1e-4, "input gradient differs: {dx_err}");

    let dw_flex = block_flex.depthwise_conv.weight.grad(&g_flex).unwrap();
    let dw_wgpu = block_wgpu
        .depthwise_conv
        .weight
        .grad(&g_wgpu)
        .unwrap()
        .to_device(&flex.clone().inner());
    let dw_err = max_rel_err(&dw_flex, &dw_wgpu);
    assert!(dw_err < 1e-4, "depthwise weight gradient differs: {dw_err}");

    // Running statistics were updated identically.
    let rm_flex = block_flex.depthwise_norm.running_var.value().to_data();
    let rm_wgpu = block_wgpu.depthwise_norm.running_var.value().to_data();
    rm_flex.assert_approx_eq::<f32>(&rm_wgpu, burn::tensor::Tolerance::rel_abs(1e-4, 1e-5));
}
