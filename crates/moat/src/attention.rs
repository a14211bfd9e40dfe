//! MOAT's multi-head self-attention (CoAtNet-style) with a 2-D relative position bias.
//!
//! The bias table of a head is `[2p - 1, 2p - 1]` for a reference size `p` (14 in stage
//! 3, 7 in stage 4). For an attention extent of `h x w` tokens the official code
//! (`moat_attention.py`) resizes the table to `[2h - 1, 2w - 1]` with
//! `tf.image.resize` (bilinear, half-pixel centres, no antialiasing) and then gathers
//! `bias[q, k] = table[ky - qy + h - 1, kx - qx + w - 1]`. Both steps are linear maps of
//! the table, so here they are a matrix product with constant interpolation matrices and
//! an index `select`: differentiable, and the same on every backend.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Interpolation matrix `[out, in]` of TF's `resize_bilinear(half_pixel_centers=True)`
/// along one axis: `src = (dst + 0.5) * in / out - 0.5`, neighbours clamped to the edge.
pub fn tf_bilinear_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f32 / output as f32;
    for dst in 0..output {
        let src = (dst as f32 + 0.5) * scale - 0.5;
        let floor = src.floor();
        let lerp = src - floor;
        let lower = (floor.max(0.0) as usize).min(input - 1);
        let upper = (src.ceil().max(0.0) as usize).min(input - 1);
        m[dst * input + lower] += 1.0 - lerp;
        m[dst * input + upper] += lerp;
    }
    m
}

/// Flat indices into a `[2h - 1, 2w - 1]` table for every (query, key) pair of an
/// `h x w` token grid in row-major order: `(ky - qy + h - 1) * (2w - 1) + kx - qx + w - 1`.
pub fn relative_position_index(h: usize, w: usize) -> Vec<i64> {
    let tw = 2 * w - 1;
    let mut index = Vec::with_capacity(h * w * h * w);
    for qy in 0..h {
        for qx in 0..w {
            for ky in 0..h {
                for kx in 0..w {
                    let dy = ky + h - 1 - qy;
                    let dx = kx + w - 1 - qx;
                    index.push((dy * tw + dx) as i64);
                }
            }
        }
    }
    index
}

/// Multi-head attention over `[batch, tokens, channels]` token grids of a fixed shape.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection `channels -> heads * head_size`, with bias.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection `heads * head_size -> channels`.
    pub o: Linear,
    /// Relative position bias tables `[heads, 2p - 1, 2p - 1]`, if used.
    pub relative_position_embedding: Option<Param<Tensor<3>>>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    head_size: usize,
}

impl Attention {
    /// `heads` heads of `head_size` channels on `channels`-wide tokens, with a bias table
    /// of reference size `position_embedding_size` (none when `None`).
    pub fn new(
        channels: usize,
        heads: usize,
        head_size: usize,
        position_embedding_size: Option<usize>,
        device: &Device,
    ) -> Self {
        assert!(
            heads > 0,
            "attention on {channels} channels with head size {head_size} has no head"
        );
        // The official initialiser: N(0, 0.02) kernels and tables, zero biases.
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let dense = |i, o| {
            LinearConfig::new(i, o)
                .with_initializer(init.clone())
                .init(device)
        };
        let inner = heads * head_size;
        Attention {
            q: dense(channels, inner),
            k: dense(channels, inner),
            v: dense(channels, inner),
            o: dense(inner, channels),
            relative_position_embedding: position_embedding_size
                .map(|p| init.init([heads, 2 * p - 1, 2 * p - 1], device)),
            heads,
            head_size,
        }
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Channels per head.
    pub fn head_size(&self) -> usize {
        self.head_size
    }

    /// The `[heads, h*w, h*w]` bias for an `h x w` token grid, or `None` without table.
    pub fn relative_bias(&self, h: usize, w: usize) -> Option<Tensor<3>> {
        let table = self.relative_position_embedding.as_ref()?.val();
        let device = table.device();
        let [heads, th, tw] = table.dims();
        let (oh, ow) = (2 * h - 1, 2 * w - 1);
        let rows = Tensor::<2>::from_data(
            TensorData::new(tf_bilinear_matrix(th, oh), [oh, th]),
            &device,
        );
        let cols = Tensor::<2>::from_data(
            TensorData::new(tf_bilinear_matrix(tw, ow), [ow, tw]),
            &device,
        );
        // [heads, oh, th] x [heads, th, tw] x [heads, tw, ow]
        let resized = rows
            .unsqueeze::<3>()
            .expand([heads, oh, th])
            .matmul(table)
            .matmul(cols.transpose().unsqueeze::<3>().expand([heads, tw, ow]));
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(relative_position_index(h, w), [h * w * h * w]),
            &device,
        );
        let flat = resized.reshape([heads, oh * ow]).select(1, index);
        Some(flat.reshape([heads, h * w, h * w]))
    }

    /// Attention over `x`: `[batch, h * w, channels]` tokens of `h x w` grids.
    pub fn forward(&self, x: Tensor<3>, grid: [usize; 2]) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        debug_assert_eq!(tokens, grid[0] * grid[1]);
        let split = |t: Tensor<3>| {
            t.reshape([batch, tokens, self.heads, self.head_size])
                .swap_dims(1, 2)
        };
        let scale = (self.head_size as f64).powf(-0.5);
        let q = split(self.q.forward(x.clone())).mul_scalar(scale);
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let mut logits = q.matmul(k.swap_dims(2, 3));
        if let Some(bias) = self.relative_bias(grid[0], grid[1]) {
            logits = logits + bias.unsqueeze::<4>();
        }
        let probs = softmax(logits, 3);
        let out =
            probs
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([batch, tokens, self.heads * self.head_size]);
        self.o.forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_is_identity() {
        let m = tf_bilinear_matrix(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn downsampling_rows_sum_to_one() {
        // 27 -> 7 (p = 14 table on a 4x4 window) and 13 -> 27 (upsampling).
        for (i, o) in [(27, 7), (13, 27), (27, 3)] {
            let m = tf_bilinear_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6, "{i}->{o} row {r} sums to {s}");
            }
        }
        // TF: 2 -> 4 gives src = -0.25, 0.25, 0.75, 1.25 -> [1, 0], [.75, .25], [.25, .75], [0, 1].
        assert_eq!(
            tf_bilinear_matrix(2, 4),
            vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]
        );
    }

    #[test]
    fn relative_index_centres_on_the_diagonal() {
        let idx = relative_position_index(3, 4);
        let tw = 7;
        // The same token: offset (0, 0) -> centre of the 5x7 table.
        for t in 0..12 {
            assert_eq!(idx[t * 12 + t], (2 * tw + 3) as i64);
        }
        // Query (0, 0), key (2, 3): offset (+2, +3) -> last cell.
        assert_eq!(idx[11], (4 * tw + 6) as i64);
    }
}
