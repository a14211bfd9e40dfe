//! Convolution as explicit im2col + matmul, for layers where the backend's own kernel
//! choice is slow.
//!
//! flex sends convolutions with at most 4 input and 16 output channels (a MobileNet stem,
//! 3 -> 16, 3x3, stride 2) to a direct "small-channel" kernel that is 25x slower than
//! PyTorch on 224 px images (`cargo xtask bench mobilenet`, stem row). Gathering the
//! k*k strided views and multiplying by the weight matrix gives the same numbers through
//! one well-vectorised matmul, on any device and with autodiff.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::PadMode;
use burn::tensor::{Slice, Tensor};

/// Whether [`conv2d_im2col`] should replace `conv.forward` for this layer: ungrouped,
/// undilated, explicitly padded, with few input channels (where flex's direct kernel is
/// chosen and the gathered matrix stays small).
pub fn prefers_im2col(conv: &Conv2d) -> bool {
    let [_, in_channels, _, _] = conv.weight.dims();
    conv.groups == 1
        && in_channels <= 4
        && conv.dilation == [1, 1]
        && matches!(
            conv.padding,
            PaddingConfig2d::Explicit(..) | PaddingConfig2d::Valid
        )
}

/// `conv.forward(x)` computed as im2col + matmul. Same results up to float rounding.
///
/// # Panics
/// On grouped or dilated convolutions, or `Same` padding (use `conv.forward`).
pub fn conv2d_im2col(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    assert!(
        conv.groups == 1 && conv.dilation == [1, 1],
        "conv2d_im2col handles ungrouped, undilated convolutions"
    );
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => panic!("conv2d_im2col needs explicit padding"),
    };
    let [out_channels, in_channels, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let x = if top + left + bottom + right > 0 {
        x.pad((left, right, top, bottom), PadMode::Constant(0.0))
    } else {
        x
    };
    let [n, c, h, w] = x.dims();
    assert_eq!(
        c, in_channels,
        "conv2d_im2col: input has {c} channels, weight expects {in_channels}"
    );
    let oh = (h - kh) / sh + 1;
    let ow = (w - kw) / sw + 1;
    let mut patches = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            patches.push(x.clone().slice([
                Slice::from(0..n),
                Slice::from(0..c),
                Slice::from_range_stepped(ky..ky + sh * (oh - 1) + 1, sh as isize),
                Slice::from_range_stepped(kx..kx + sw * (ow - 1) + 1, sw as isize),
            ]));
        }
    }
    // [n, c, kh*kw, oh, ow] -> [n, c*kh*kw, oh*ow]; row index c*kh*kw + ky*kw + kx, the
    // order of the weight's [out, in, kh, kw] layout.
    let columns = Tensor::stack::<5>(patches, 2).reshape([n, c * kh * kw, oh * ow]);
    let weight = conv
        .weight
        .val()
        .reshape([1, out_channels, in_channels * kh * kw]);
    let mut out = weight.matmul(columns).reshape([n, out_channels, oh, ow]);
    if let Some(bias) = &conv.bias {
        out = out + bias.val().reshape([1, out_channels, 1, 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn equals_the_convolution() {
        let device = Device::flex();
        for (stride, pad, bias, size) in [(2, 1, false, 33), (1, 1, true, 16), (2, 0, true, 20)] {
            let conv = Conv2dConfig::new([3, 16], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(bias)
                .init(&device);
            assert!(prefers_im2col(&conv));
            let x = Tensor::<4>::random([2, 3, size, size], Distribution::Default, &device);
            let a = conv.forward(x.clone());
            let b = conv2d_im2col(&conv, x);
            assert_eq!(a.dims(), b.dims());
            let diff: f32 = (a - b).abs().max().into_scalar();
            assert!(diff < 1e-5, "stride {stride} pad {pad}: {diff}");
        }
    }
}
