//! Autoregressive decoding with a KV cache: greedy, or sampling with temperature and
//! nucleus (top-p) filtering as transformers' `TemperatureLogitsWarper` and
//! `TopPLogitsWarper` apply them.

use burn::tensor::{Int, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{Decoder, KvCache};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the smallest set of
    /// most likely tokens whose probability reaches `top_p`, from a ChaCha8 stream
    /// seeded with `seed`.
    Sample {
        /// Divides the logits (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1]; 1 keeps every token.
        top_p: f64,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Appends up to `max_new_tokens` tokens to `prompt` (one sequence, no padding),
/// stopping after any of `eos`; calls `on_token` with each new token as it is chosen.
/// The prompt runs once; each further step feeds one token against the KV cache.
pub fn generate(
    model: &Decoder,
    prompt: &[i64],
    max_new_tokens: usize,
    eos: &[i64],
    sampling: Sampling,
    on_token: &mut dyn FnMut(i64),
) -> Vec<i64> {
    assert!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    let device = model.embed_tokens.weight.val().device();
    let mut rng = match sampling {
        Sampling::Sample { seed, .. } => Some(ChaCha8Rng::seed_from_u64(seed)),
        Sampling::Greedy => None,
    };
    let mut cache = KvCache::new();
    let mut feed = prompt.to_vec();
    let mut new = Vec::new();
    for _ in 0..max_new_tokens {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(feed.clone(), [1, feed.len()]), &device);
        let logits = model.forward_cached(ids, &mut cache);
        let [_, l, v] = logits.dims();
        let last: Tensor<1> = logits.narrow(1, l - 1, 1).reshape([v]);
        let next = match (sampling, rng.as_mut()) {
            (
                Sampling::Sample {
                    temperature, top_p, ..
                },
                Some(rng),
            ) => {
                let logits: Vec<f32> = last
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .expect("f32 logits");
                sample(&logits, temperature, top_p, rng.random::<f64>())
            }
            _ => last.argmax(0).into_scalar::<i64>(),
        };
        new.push(next);
        on_token(next);
        if eos.contains(&next) {
            break;
        }
        feed = vec![next];
    }
    new
}

/// Greedy decoding: [`generate`] with [`Sampling::Greedy`].
pub fn greedy(
    model: &Decoder,
    prompt: &[i64],
    max_new_tokens: usize,
    eos: &[i64],
    on_token: &mut dyn FnMut(i64),
) -> Vec<i64> {
    generate(
        model,
        prompt,
        max_new_tokens,
        eos,
        Sampling::Greedy,
        on_token,
    )
}

/// The token that the uniform draw `u` in [0, 1) picks from `softmax(logits /
/// temperature)` after nucleus filtering: tokens are sorted by probability (ties by
/// index) and kept while the mass before them is below `top_p`, so at least one token
/// stays, then renormalised.
pub fn sample(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> i64 {
    assert!(temperature > 0.0, "temperature must be positive");
    assert!(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1]");
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < probs.len() && (kept == 0 || mass < top_p) {
        mass += probs[kept].1;
        kept += 1;
    }
    let mut target = u * mass;
    for &(index, p) in &probs[..kept] {
        if target < p {
            return index as i64;
        }
        target -= p;
    }
    probs[kept - 1].0 as i64
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_top_p() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs).
        let logits = [0.3f32.ln(), 0.5f32.ln(), 0.2f32.ln()];
        // top_p 0.6: {1 (0.5), 0 (0.3)} reach 0.8 >= 0.6; token 2 is never drawn.
        for i in 0..100 {
            let u = i as f64 / 100.0;
            let t = sample(&logits, 1.0, 0.6, u);
            assert!(t == 0 || t == 1);
            // Renormalised: token 1 takes 0.5 / 0.8 of [0, 1).
            assert_eq!(t, if u < 0.625 { 1 } else { 0 });
        }
        // top_p 0.5: token 1 alone.
        assert_eq!(sample(&logits, 1.0, 0.5, 0.99), 1);
        // A tiny temperature is greedy.
        assert_eq!(sample(&logits, 1e-3, 1.0, 0.99), 1);
        // top_p 1: every token, in the sorted order 1, 0, 2.
        assert_eq!(sample(&logits, 1.0, 1.0, 0.85), 2);
    }
}
