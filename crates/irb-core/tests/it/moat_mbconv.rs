//! MOAT's MBConv (../shared/papers/moat.md) expressed with irb-core: pre-norm, GELU,
//! expansion 4 x c_out, SE of width int(0.25 x c_out) with SiLU + sigmoid, biased shrink
//! conv, stride in the depthwise conv, avg-pool + 1x1 conv shortcut, Keras BN eps 1e-3,
//! TF "same" padding. Parameter counts are computed by hand below.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use irb_core::{
    Activation, BlockSqueezeExcite, ConvPadding, CostReport, Countable, InvertedResidual,
    InvertedResidualConfig, NormPlacement, SeFlavour, ShortcutKind, ShortcutPath,
};

/// Trainable parameters (burn's `num_params` also counts the BatchNorm running
/// statistics, which PyTorch and TF keep as buffers / non-trainable variables).
fn trainable(block: &InvertedResidual, c_in: usize) -> usize {
    let mut report = CostReport::default();
    block.count("mbconv", [c_in, 28, 28], &mut report);
    // Cross-check with burn's count, which includes the BN running statistics.
    assert_eq!(
        block.num_params(),
        report.params() + report.batch_norm_buffers()
    );
    report.params()
}

fn moat_mbconv(c_in: usize, c_out: usize, stride: usize, se: bool) -> InvertedResidualConfig {
    InvertedResidualConfig::new(c_in, 4 * c_out, c_out)
        .with_stride(stride)
        .with_activation(Activation::Gelu)
        .with_squeeze_excite(
            se.then(|| BlockSqueezeExcite::new(c_out / 4, SeFlavour::EfficientNet)),
        )
        .with_norm_placement(NormPlacement::PreNorm)
        .with_shortcut(ShortcutKind::Pooled { pool_size: 2 })
        .with_norm_eps(1e-3)
        .with_norm_momentum(0.01)
        .with_padding(ConvPadding::TfSame)
}

#[test]
fn moat0_first_mbconv_parameter_count() {
    // MOAT-0 stage 1, block 0: stem 64 -> 96 channels, stride 2.
    let block = moat_mbconv(64, 96, 2, true).init(&Device::flex());
    let hand = 2 * 64            // pre-norm BN gamma, beta
        + 64 * 384               // expand 1x1, no bias
        + 2 * 384                // BN
        + 9 * 384                // depthwise 3x3, no bias
        + 2 * 384                // BN
        + (384 * 24 + 24)        // SE reduce (int(0.25 * 96) = 24), bias
        + (24 * 384 + 384)       // SE expand, bias
        + (384 * 96 + 96)        // shrink 1x1 with bias, no BN after it
        + (64 * 96 + 96); // shortcut 1x1 with bias after the average pool
    assert_eq!(hand, 91_736);
    assert_eq!(trainable(&block, 64), hand);
    assert_eq!(
        block.shortcut_path(),
        ShortcutPath::Pooled { pool_size: Some(2) }
    );

    let x = Tensor::<4>::random([1, 64, 56, 56], Distribution::Default, &Device::flex());
    assert_eq!(block.forward(x).dims(), [1, 96, 28, 28]);
}

#[test]
fn moat0_repeated_mbconv_and_moat_block_conv_part() {
    // Second block of the stage: identity shortcut.
    let block = moat_mbconv(96, 96, 1, true).init(&Device::flex());
    let hand = 2 * 96
        + 96 * 384
        + 2 * 384
        + 9 * 384
        + 2 * 384
        + (384 * 24 + 24)
        + (24 * 384 + 384)
        + (384 * 96 + 96);
    assert_eq!(hand, 97_848);
    assert_eq!(trainable(&block, 96), hand);
    assert_eq!(block.shortcut_path(), ShortcutPath::Identity);

    // The MBConv inside a MOAT block (stage 3, first block 192 -> 384): no SE.
    let block = moat_mbconv(192, 384, 2, false).init(&Device::flex());
    let hand = 2 * 192
        + 192 * 1536
        + 2 * 1536
        + 9 * 1536
        + 2 * 1536
        + (1536 * 384 + 384)
        + (192 * 384 + 384);
    assert_eq!(trainable(&block, 192), hand);
    let x = Tensor::<4>::random([1, 192, 14, 14], Distribution::Default, &Device::flex());
    assert_eq!(block.forward(x).dims(), [1, 384, 7, 7]);
}
