//! Greedy decoding.

use burn::tensor::{Int, Tensor, TensorData};

use crate::model::Decoder;

/// Appends up to `max_new_tokens` greedy tokens to `prompt` (one sequence, no padding),
/// stopping after any of `eos`; calls `on_token` with each new token as it is chosen.
///
/// Each step recomputes the whole sequence (no KV cache yet), so the cost grows with the
/// square of the length.
pub fn greedy(
    model: &Decoder,
    prompt: &[i64],
    max_new_tokens: usize,
    eos: &[i64],
    on_token: &mut dyn FnMut(i64),
) -> Vec<i64> {
    let device = model.embed_tokens.weight.val().device();
    let mut tokens = prompt.to_vec();
    let mut new = Vec::new();
    for _ in 0..max_new_tokens {
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(tokens.clone(), [1, tokens.len()]),
            &device,
        );
        let logits = model.forward(ids, None);
        let [_, l, v] = logits.dims();
        let last: Tensor<1> = logits.narrow(1, l - 1, 1).reshape([v]);
        let next = last.argmax(0).into_scalar::<i64>();
        tokens.push(next);
        new.push(next);
        on_token(next);
        if eos.contains(&next) {
            break;
        }
    }
    new
}
