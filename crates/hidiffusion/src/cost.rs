//! Multiply-accumulate counts of one UNet call, vanilla or with HiDiffusion's
//! mechanisms, so that measured speed-ups can be checked against arithmetic.
//!
//! The count follows the UNet's shapes through the same blocks the forward pass runs
//! (channels read off the loaded weights): convolutions `out_h out_w c_out c_in k^2`,
//! linear layers `tokens d_in d_out`, attention `2 n m d` for `n` queries, `m` keys and
//! width `d` (scores and weighted sum). Normalisations, activations, resizes and the
//! softmax are left out (they are a few percent at most and not what HiDiffusion
//! changes).

use burn::nn::Linear;

use crate::attention::{Projection, Transformer2d};
use crate::layers::Conv2d;
use crate::rau_net::{RAD_DILATION, RAD_PADDING, RAD_STRIDE};
use crate::unet::{ResnetBlock, UNet};

/// Which mechanisms a counted call runs, and where (block indices as in diffusers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountedMechanisms {
    /// RAD on this down block's downsampler.
    pub rad: Option<usize>,
    /// T2 pooling after pair 0 of this down block, restored after pair 1 of this up
    /// block.
    pub pool: Option<(usize, usize)>,
    /// MSW-MSA on the self-attention of this down block and this up block.
    pub windows: Option<(usize, usize)>,
}

/// Multiply-accumulates of one UNet call, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UNetMacs {
    /// Convolutions.
    pub conv: f64,
    /// Linear layers (projections, feed-forward, time embedding).
    pub linear: f64,
    /// Attention scores and weighted sums.
    pub attention: f64,
}

impl UNetMacs {
    /// All of them.
    pub fn total(&self) -> f64 {
        self.conv + self.linear + self.attention
    }
}

struct Counter {
    macs: UNetMacs,
    batch: f64,
    context: usize,
}

impl Counter {
    fn conv(&mut self, conv: &Conv2d, out: [usize; 2]) {
        let [c_out, c_in, k, _] = conv.weight.dims();
        self.macs.conv += self.batch * (out[0] * out[1] * c_out * c_in * k * k) as f64;
    }

    fn linear(&mut self, layer: &Linear, tokens: usize) {
        let [d_in, d_out] = layer.weight.dims();
        self.macs.linear += self.batch * (tokens * d_in * d_out) as f64;
    }

    fn resnet(&mut self, r: &ResnetBlock, size: [usize; 2]) {
        self.conv(&r.conv1, size);
        self.conv(&r.conv2, size);
        if let Some(s) = &r.conv_shortcut {
            self.conv(s, size);
        }
        if let Some(t) = &r.time_emb_proj {
            self.linear(t, 1);
        }
    }

    fn transformer(&mut self, t: &Transformer2d, size: [usize; 2], windowed: bool) {
        let n = size[0] * size[1];
        let projection = |c: &mut Counter, p: &Projection| match p {
            Projection::Conv(conv) => c.conv(conv, size),
            Projection::Linear(l) => c.linear(l, n),
        };
        projection(self, &t.proj_in);
        for block in &t.blocks {
            let a1 = &block.attn1;
            for l in [&a1.to_q, &a1.to_k, &a1.to_v, &a1.to_out] {
                self.linear(l, n);
            }
            let d = a1.to_q.weight.dims()[1];
            let self_pairs = if windowed {
                // 4 windows of ceil(h/2) x ceil(w/2) tokens each.
                let m = size[0].div_ceil(2) * size[1].div_ceil(2);
                4 * m * m
            } else {
                n * n
            };
            self.macs.attention += self.batch * (2 * self_pairs * d) as f64;
            let a2 = &block.attn2;
            self.linear(&a2.to_q, n);
            self.linear(&a2.to_k, self.context);
            self.linear(&a2.to_v, self.context);
            self.linear(&a2.to_out, n);
            self.macs.attention += self.batch * (2 * n * self.context * d) as f64;
            self.linear(&block.ff.proj_in, n);
            self.linear(&block.ff.proj_out, n);
        }
        projection(self, &t.proj_out);
    }
}

/// Output side of a 3x3 convolution with `stride`, `padding`, `dilation`.
fn conv_out(side: usize, stride: usize, padding: usize, dilation: usize) -> usize {
    (side + 2 * padding - dilation * 2 - 1) / stride + 1
}

/// The multiply-accumulates of `unet` on `batch` latents of `latent` with a text
/// context of `context` tokens, running `mechanisms`.
pub fn unet_macs(
    unet: &UNet,
    batch: usize,
    latent: [usize; 2],
    context: usize,
    mechanisms: CountedMechanisms,
) -> UNetMacs {
    let mut c = Counter {
        macs: UNetMacs::default(),
        batch: batch as f64,
        context,
    };
    c.linear(&unet.time_linear_1, 1);
    c.linear(&unet.time_linear_2, 1);
    if let Some((l1, l2)) = &unet.add_embedding {
        c.linear(l1, 1);
        c.linear(l2, 1);
    }
    let mut size = latent;
    c.conv(&unet.conv_in, size);
    let mut skips = vec![size];
    let mut pooled_from = None;
    for (i, block) in unet.down_blocks.iter().enumerate() {
        for (j, r) in block.resnets.iter().enumerate() {
            c.resnet(r, size);
            if let Some(t) = block.attentions.get(j) {
                let windowed = mechanisms.windows.is_some_and(|(d, _)| d == i);
                c.transformer(t, size, windowed);
            }
            if mechanisms.pool.is_some_and(|(d, _)| d == i) && j == 0 {
                pooled_from = Some(size);
                size = [size[0].div_ceil(2), size[1].div_ceil(2)];
            }
            skips.push(size);
        }
        if let Some(conv) = &block.downsampler {
            size = if mechanisms.rad == Some(i) {
                size.map(|s| conv_out(s, RAD_STRIDE, RAD_PADDING, RAD_DILATION))
            } else {
                size.map(|s| conv_out(s, 2, 1, 1))
            };
            c.conv(conv, size);
            skips.push(size);
        }
    }
    let mid = &unet.mid_block;
    c.resnet(&mid.resnets[0], size);
    for (t, r) in mid.attentions.iter().zip(&mid.resnets[1..]) {
        c.transformer(t, size, false);
        c.resnet(r, size);
    }
    for (i, block) in unet.up_blocks.iter().enumerate() {
        for (j, r) in block.resnets.iter().enumerate() {
            skips.pop();
            c.resnet(r, size);
            if let Some(t) = block.attentions.get(j) {
                let windowed = mechanisms.windows.is_some_and(|(_, u)| u == i);
                c.transformer(t, size, windowed);
            }
            if mechanisms.pool.is_some_and(|(_, u)| u == i) && j == 1 {
                size = pooled_from.unwrap_or(size);
            }
        }
        if let Some(conv) = &block.upsampler {
            size = *skips.last().expect("a skip below every upsampler");
            c.conv(conv, size);
        }
    }
    c.conv(&unet.conv_out, size);
    c.macs
}
