//! Fine-tuning methods: what each trains, that backpropagation stops at the first trainable
//! block, and that MobileTL's backward is exact where the paper says it is (ReLU6
//! networks with frozen inner BatchNorm scales and statistics).

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use mobiletl::method::finetune::{Method, forward, prepare};
use mobiletl::mobilenet::{MobileNet, MobileNetArch, MobileNetConfig};

fn network(arch: MobileNetArch, device: &Device) -> MobileNet {
    device.seed(5);
    // No dropout: two forwards of one network must see the same function.
    MobileNetConfig::new(arch)
        .with_num_classes(10)
        .with_dropout(0.0)
        .init(device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

/// A fixed scalar loss of the logits.
fn loss(logits: Tensor<2>, weights: &Tensor<2>) -> Tensor<1> {
    (logits * weights.clone()).sum()
}

#[test]
fn mobiletl_on_relu6_blocks_equals_exact_backward_with_frozen_inner_norms() {
    let device = Device::flex().autodiff();
    let mut base = network(MobileNetArch::V2, &device);
    // Non-zero shifts, as in a pretrained network: at initialisation whole channels sit
    // exactly at ReLU6's kink (0), where burn's clamp passes the gradient and PyTorch's
    // hardtanh (and MobileTL's mask, 1[0 < x < 6]) do not.
    let shift = |n: &mut irb_core::BatchNorm| {
        let c = n.num_features();
        n.beta = burn::module::Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(0.05, 0.5),
            &device,
        ));
    };
    for b in &mut base.blocks {
        b.expand_norm.iter_mut().for_each(shift);
        shift(&mut b.depthwise_norm);
        b.project_norm.iter_mut().for_each(shift);
    }
    shift(&mut base.stem.norm);
    let n = base.blocks.len();
    let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Default, &device);
    let w = Tensor::<2>::random([2, 10], Distribution::Default, &device);

    let tl = prepare(base.clone(), Method::Mobiletl, 2).unwrap();
    let g_tl = loss(forward(&tl, x.clone(), Method::Mobiletl), &w).backward();

    // The same network with the exact (burn) backward: vanilla FT-2 whose inner norms in
    // the top blocks are frozen except for their shift.
    let mut exact = prepare(base, Method::Vanilla, 2).unwrap();
    for b in &mut exact.blocks[n - 2..] {
        let unfreeze_shift = |norm: irb_core::BatchNorm| {
            let mut norm = norm.freeze();
            norm.beta = norm.beta.clone().set_require_grad(true);
            norm
        };
        b.expand_norm = b.expand_norm.take().map(unfreeze_shift);
        b.depthwise_norm = unfreeze_shift(b.depthwise_norm.clone());
    }
    let g_exact = loss(forward(&exact, x, Method::Vanilla), &w).backward();

    for i in [n - 2, n - 1] {
        let (a, b) = (&tl.blocks[i], &exact.blocks[i]);
        let grad4 = |p: &burn::module::Param<Tensor<4>>, g| p.val().grad(g).unwrap();
        let grad1 = |p: &burn::module::Param<Tensor<1>>, g| p.val().grad(g).unwrap();
        assert_close(
            grad4(&a.expand_conv.as_ref().unwrap().weight, &g_tl),
            grad4(&b.expand_conv.as_ref().unwrap().weight, &g_exact),
            "expand conv",
        );
        assert_close(
            grad4(&a.depthwise_conv.weight, &g_tl),
            grad4(&b.depthwise_conv.weight, &g_exact),
            "depthwise conv",
        );
        assert_close(
            grad1(&a.depthwise_norm.beta, &g_tl),
            grad1(&b.depthwise_norm.beta, &g_exact),
            "depthwise norm shift",
        );
        assert_close(
            grad1(&a.project_norm.as_ref().unwrap().gamma, &g_tl),
            grad1(&b.project_norm.as_ref().unwrap().gamma, &g_exact),
            "project norm scale",
        );
        // The inner scales are not trained.
        assert!(a.depthwise_norm.gamma.val().grad(&g_tl).is_none());
        assert!(
            a.expand_norm
                .as_ref()
                .unwrap()
                .gamma
                .val()
                .grad(&g_tl)
                .is_none()
        );
    }
    assert_close(
        tl.classifier.weight.val().grad(&g_tl).unwrap(),
        exact.classifier.weight.val().grad(&g_exact).unwrap(),
        "classifier",
    );
    // Backpropagation stopped at the first trainable block.
    assert!(
        tl.blocks[n - 3]
            .project_conv
            .weight
            .val()
            .grad(&g_tl)
            .is_none()
    );
    assert!(tl.stem.conv.weight.val().grad(&g_tl).is_none());
}

#[test]
fn mobiletl_keeps_inner_statistics_and_updates_the_last_norm() {
    let device = Device::flex().autodiff();
    let tl = prepare(
        network(MobileNetArch::V3Large, &device),
        Method::Mobiletl,
        3,
    )
    .unwrap();
    let n = tl.blocks.len();
    let before = |m: &MobileNet| {
        let b = &m.blocks[n - 1];
        (
            values(b.depthwise_norm.running_stats().0),
            values(b.project_norm.as_ref().unwrap().running_stats().0),
            values(m.blocks[0].depthwise_norm.running_stats().0),
        )
    };
    let (dw0, proj0, frozen0) = before(&tl);
    let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Default, &device);
    let logits = forward(&tl, x, Method::Mobiletl);
    let grads = logits.sum().backward();
    let (dw1, proj1, frozen1) = before(&tl);
    assert_eq!(dw0, dw1, "inner BatchNorm statistics are frozen");
    assert_eq!(frozen0, frozen1, "frozen blocks keep their statistics");
    assert_ne!(
        proj0, proj1,
        "the last BatchNorm of a trainable block updates"
    );
    // Hard-Swish blocks train through the step approximation.
    let g = tl.blocks[n - 1]
        .depthwise_conv
        .weight
        .val()
        .grad(&grads)
        .unwrap();
    assert!(values(g).iter().all(|v| v.is_finite()));
}

#[test]
fn each_method_trains_what_it_says() {
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Default, &device);
    let run = |method, blocks| {
        let m = prepare(network(MobileNetArch::V3Small, &device), method, blocks).unwrap();
        let g = forward(&m, x.clone(), method).sum().backward();
        let has = |t: Option<Tensor<4>>| t.is_some();
        (
            has(m.stem.conv.weight.val().grad(&g)),
            m.stem.norm.beta.val().grad(&g).is_some(),
            has(m.blocks.last().unwrap().project_conv.weight.val().grad(&g)),
            m.classifier.weight.val().grad(&g).is_some(),
        )
    };
    // (stem conv, stem BN shift, last block conv, classifier)
    assert_eq!(run(Method::Full, 0), (true, true, true, true));
    assert_eq!(run(Method::Vanilla, 1), (false, false, true, true));
    assert_eq!(run(Method::Mobiletl, 1), (false, false, true, true));
    assert_eq!(run(Method::Last, 0), (false, false, false, true));
    assert_eq!(run(Method::Bias, 0), (false, true, false, true));
}

#[test]
fn out_of_range_blocks_are_refused() {
    let device = Device::flex();
    let model = network(MobileNetArch::V3Small, &device);
    let n = model.blocks.len();
    let err = prepare(model.clone(), Method::Mobiletl, n + 1).unwrap_err();
    assert!(
        err.contains(&format!("{} is out of range", n + 1)) && err.contains(&n.to_string()),
        "{err}"
    );
    assert!(prepare(model, Method::Vanilla, 0).is_err());
}
