//! MobileTL's 1-bit activation backward: ReLU / ReLU6 gradients equal burn's exact
//! autodiff; the Hard-Swish step approximation equals the PyTorch autograd.Function of
//! tools/reference/mobiletl/masked_activation.py.

use std::path::PathBuf;

use burn::tensor::activation::{hard_swish, relu, relu6};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use mobiletl::method::MaskedActivation;
use mobiletl::tensor_file::read_tensor;
use proptest::prelude::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masked_activation.safetensors")
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Output and input gradient of `f(x)` under upstream gradient `dy`.
fn forward_backward<const D: usize>(
    f: impl Fn(Tensor<D>) -> Tensor<D>,
    x: Tensor<D>,
    dy: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let x = x.autodiff().require_grad();
    let y = f(x.clone());
    let grads = (y.clone() * dy.autodiff()).sum().backward();
    (y.inner(), x.grad(&grads).unwrap())
}

#[test]
fn hard_swish_step_matches_the_pytorch_reference() {
    let device = Device::flex();
    let x = read_tensor::<4>(&fixture(), "x", &device).unwrap();
    let dy = read_tensor::<4>(&fixture(), "dy", &device).unwrap();
    let (y, dx) = forward_backward(
        |t| MaskedActivation::HardSwishStep.forward(t),
        x.clone(),
        dy.clone(),
    );
    let y_ref = read_tensor::<4>(&fixture(), "hard_swish_step/y", &device).unwrap();
    let dx_ref = read_tensor::<4>(&fixture(), "hard_swish_step/dx", &device).unwrap();
    assert!(max_diff(y, y_ref) < 1e-6);
    assert_eq!(
        max_diff(dx.clone(), dx_ref),
        0.0,
        "the step gradient is exact arithmetic"
    );
    // ... and it is an approximation: it differs from the exact Hard-Swish gradient.
    let exact = read_tensor::<4>(&fixture(), "hard_swish_exact/dx", &device).unwrap();
    assert!(max_diff(dx, exact) > 0.1);
}

#[test]
fn relu6_matches_the_pytorch_reference_and_burns_exact_gradient() {
    let device = Device::flex();
    let x = read_tensor::<4>(&fixture(), "x", &device).unwrap();
    let dy = read_tensor::<4>(&fixture(), "dy", &device).unwrap();
    let (y, dx) = forward_backward(
        |t| MaskedActivation::Relu6.forward(t),
        x.clone(),
        dy.clone(),
    );
    let dx_ref = read_tensor::<4>(&fixture(), "relu6/dx", &device).unwrap();
    assert!(max_diff(y, read_tensor::<4>(&fixture(), "relu6/y", &device).unwrap()) < 1e-6);
    assert_eq!(max_diff(dx.clone(), dx_ref), 0.0);
    let (_, exact) = forward_backward(relu6, x, dy);
    assert_eq!(max_diff(dx, exact), 0.0);
}

#[test]
fn a_plain_device_gives_the_ordinary_activations() {
    let device = Device::flex();
    let x = Tensor::<3>::random([3, 5, 11], Distribution::Normal(0.0, 4.0), &device);
    assert!(max_diff(MaskedActivation::Relu.forward(x.clone()), relu(x.clone())) < 1e-7);
    assert!(max_diff(MaskedActivation::Relu6.forward(x.clone()), relu6(x.clone())) < 1e-7);
    assert!(
        max_diff(
            MaskedActivation::HardSwishStep.forward(x.clone()),
            hard_swish(x)
        ) < 1e-6
    );
}

#[test]
fn gradients_reach_earlier_layers_through_the_mask() {
    // y = act(w * x): the weight's gradient flows through the masked backward.
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![-2.0f32, 0.5, 3.0, 7.0], [1, 4]),
        &device,
    );
    let w =
        Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 4], [1, 4]), &device).require_grad();
    let y = MaskedActivation::Relu6.forward(w.clone() * x);
    let g = y.sum().backward();
    assert_eq!(values(w.grad(&g).unwrap()), vec![0.0, 0.5, 3.0, 0.0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// For any size (partial last mask byte included), ReLU and ReLU6 gradients equal
    /// burn's autodiff and the Hard-Swish step is `dy * 1[x >= 0]`.
    #[test]
    fn masks_are_exact_for_any_size(n in 1usize..200, seed in 0u64..1000) {
        let device = Device::flex();
        device.seed(seed);
        let x = Tensor::<1>::random([n], Distribution::Normal(0.0, 4.0), &device);
        let dy = Tensor::<1>::random([n], Distribution::Default, &device);
        for (masked, exact) in [
            (MaskedActivation::Relu, relu::<1> as fn(Tensor<1>) -> Tensor<1>),
            (MaskedActivation::Relu6, relu6::<1>),
        ] {
            let (_, a) = forward_backward(|t| masked.forward(t), x.clone(), dy.clone());
            let (_, b) = forward_backward(exact, x.clone(), dy.clone());
            prop_assert_eq!(values(a), values(b));
        }
        let (_, dx) = forward_backward(|t| MaskedActivation::HardSwishStep.forward(t), x.clone(), dy.clone());
        let expected: Vec<f32> = values(x).iter().zip(values(dy)).map(|(x, d)| if *x >= 0.0 { d } else { 0.0 }).collect();
        prop_assert_eq!(values(dx), expected);
    }
}

#[cfg(feature = "wgpu")]
#[test]
#[cfg_attr(
    not(wgpu_adapter),
    ignore = "no Vulkan driver found when building (install mesa-vulkan-drivers and libvulkan1)"
)]
#[should_panic(expected = "flex CPU backend only")]
fn other_backends_are_refused_by_name() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let x = Tensor::<1>::zeros([4], &device);
    let _ = MaskedActivation::Relu6.forward(x);
}
