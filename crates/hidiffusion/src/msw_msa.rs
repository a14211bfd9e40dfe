//! MSW-MSA, HiDiffusion's modified shifted-window self-attention (Zhang et al., ECCV
//! 2024, Sec. 3.3): the self-attention of the top transformer blocks runs inside 2x2
//! windows of `ceil(H/2) x ceil(W/2)` tokens, after a cyclic shift drawn per call from
//! `{0, 1, 2, 3} * (window / 4)`, and is shifted back; cross-attention, feed-forward and
//! residuals keep the whole map.
//!
//! As the official code (hidiffusion 0.1.10, `window_partition` / `window_reverse`):
//! a map with an odd side is resized bicubically to twice the window and back; the roll
//! happens only when the height shift is positive (so a window less than 4 tokens high
//! is never rolled, whatever its width); there is no attention mask for the tokens
//! that wrap around.

use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::attention::Attention;

/// Where the shift of each windowed attention call comes from: the multiple `k` in
/// `{0, 1, 2, 3}` of a quarter window.
pub trait ShiftSource: Send {
    /// The next call's multiple.
    fn next_multiple(&mut self) -> usize;
}

/// Uniform draws from a seeded ChaCha8 stream (the official code draws `torch.rand(1)`
/// from PyTorch's global generator).
pub struct SeededShifts(ChaCha8Rng);

impl SeededShifts {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SeededShifts(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl ShiftSource for SeededShifts {
    fn next_multiple(&mut self) -> usize {
        self.0.random_range(0..4)
    }
}

/// A fixed cycle of multiples, starting at an offset (for tests that replay the official
/// code with its draw patched to a known schedule).
pub struct CycledShifts {
    /// The cycle.
    pub cycle: Vec<usize>,
    /// Index of the next draw.
    pub next: usize,
}

impl ShiftSource for CycledShifts {
    fn next_multiple(&mut self) -> usize {
        let k = self.cycle[self.next % self.cycle.len()];
        self.next += 1;
        k
    }
}

/// PyTorch's `torch.roll` along `dim` by `shift` (positive: content moves to higher
/// indices).
fn roll<const D: usize>(x: Tensor<D>, dim: usize, shift: isize) -> Tensor<D> {
    let n = x.dims()[dim] as isize;
    let s = shift.rem_euclid(n) as usize;
    if s == 0 {
        return x;
    }
    let n = n as usize;
    let tail = x.clone().narrow(dim, n - s, s);
    let head = x.narrow(dim, 0, n - s);
    Tensor::cat(vec![tail, head], dim)
}

fn bicubic(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bicubic)
            .with_align_corners(false)
            .with_output_size(size),
    )
}

/// Windowed self-attention of `x [B, H*W, C]` (the normed tokens of an `H x W` map)
/// with quarter-window shift multiple `k`.
pub fn windowed_self_attention(
    attn: &Attention,
    x: Tensor<3>,
    size: [usize; 2],
    k: usize,
) -> Tensor<3> {
    let [b, _, c] = x.dims();
    let [h, w] = size;
    let (wh, ww) = (h.div_ceil(2), w.div_ceil(2));
    let (shift_h, shift_w) = (wh / 4 * k, ww / 4 * k);
    let odd = h % 2 == 1 || w % 2 == 1;
    // [B, H, W, C], resized to the window grid when a side is odd.
    let mut map = x.reshape([b, h, w, c]);
    if odd {
        map = bicubic(map.permute([0, 3, 1, 2]), [2 * wh, 2 * ww]).permute([0, 2, 3, 1]);
    }
    let rolled = shift_h > 0;
    if rolled {
        map = roll(roll(map, 1, -(shift_h as isize)), 2, -(shift_w as isize));
    }
    // [B, 2, wh, 2, ww, C] -> [B, 2, 2, wh, ww, C] -> [4B, wh*ww, C], windows ordered
    // (batch, window row, window column).
    let windows = map
        .reshape([b, 2, wh, 2, ww, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([4 * b, wh * ww, c]);
    let out = attn.forward(windows, None);
    let mut map = out
        .reshape([b, 2, 2, wh, ww, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b, 2 * wh, 2 * ww, c]);
    if rolled {
        map = roll(roll(map, 1, shift_h as isize), 2, shift_w as isize);
    }
    if odd {
        map = bicubic(map.permute([0, 3, 1, 2]), [h, w]).permute([0, 2, 3, 1]);
    }
    map.reshape([b, h * w, c])
}
