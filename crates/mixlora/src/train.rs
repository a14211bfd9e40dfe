//! Fine-tuning adapters on question-answer data and evaluating them, as MoE-PEFT does
//! for the paper: AdamW at a constant learning rate, gradient accumulation over
//! micro-batches, the causal-LM loss plus the router's auxiliary loss, evaluation by
//! the argmax of the last prompt token's logits over the label tokens.
//!
//! Two differences from MoE-PEFT, both deliberate: padding positions are not training
//! targets (MoE-PEFT uses the padded token list itself as labels, so it also learns to
//! predict padding), and evaluation runs without dropout (MoE-PEFT's LoRA dropout stays
//! on at evaluation).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::adapters::causal_lm_loss;
use crate::model::Decoder;
use crate::moe::{AuxLossConfig, aux_loss, tokens_per_expert};
pub use crate::weights::write_atomic;

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    /// Token ids: prompt, then the answer.
    pub ids: Vec<i64>,
    /// Positions `>= loss_from` are targets (1: the whole sequence as MoE-PEFT trains;
    /// `ids.len() - 1`: the answer token only).
    pub loss_from: usize,
}

/// One evaluation question.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalExample {
    /// Prompt ids (the answer is predicted at the last one).
    pub prompt: Vec<i64>,
    /// The label token ids of its task.
    pub labels: Vec<i64>,
    /// Index of the right label.
    pub answer: usize,
    /// Task index (for per-task accuracy).
    pub task: usize,
}

/// Optimisation settings (MoE-PEFT's template: AdamW, lr 2e-4 constant, batch 16 in
/// micro-batches of 8, 2 epochs, weight decay 0.01, seed 42).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Learning rate (constant).
    pub lr: f64,
    /// Examples per optimizer step.
    pub batch: usize,
    /// Examples per forward/backward pass.
    pub micro_batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Auxiliary loss coefficients.
    pub aux_balance: f64,
    /// Switch z-loss coefficient.
    pub aux_z: f64,
    /// Data order seed.
    pub seed: u64,
    /// Padding id.
    pub pad: i64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            lr: 2e-4,
            batch: 16,
            micro_batch: 8,
            epochs: 2,
            weight_decay: 0.01,
            aux_balance: 1e-3,
            aux_z: 1e-3,
            seed: 42,
            pad: 0,
        }
    }
}

/// What one optimizer step measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based optimizer step.
    pub step: usize,
    /// Mean LM loss over the step's micro-batches.
    pub loss: f64,
    /// Mean auxiliary loss.
    pub aux_loss: f64,
    /// Real tokens per second of the step.
    pub tokens_per_second: f64,
    /// Tokens routed to each expert, per MixLoRA layer, summed over the step.
    pub tokens_per_expert: Vec<Vec<usize>>,
}

/// Right-padded `[rows, longest]` ids, the attention mask, and per-row labels for the
/// causal-LM loss (-100 on padding and before `loss_from`).
pub fn collate(
    examples: &[&TrainExample],
    pad: i64,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Vec<i64>, Vec<i64>) {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(examples.len() * len);
    let mut mask = Vec::with_capacity(examples.len() * len);
    let mut labels = Vec::with_capacity(examples.len() * len);
    for e in examples {
        for p in 0..len {
            let real = p < e.ids.len();
            ids.push(if real { e.ids[p] } else { pad });
            mask.push(real as i64);
            labels.push(if real && p >= e.loss_from {
                e.ids[p]
            } else {
                -100
            });
        }
    }
    let shape = [examples.len(), len];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(mask.clone(), shape), device),
        labels,
        mask,
    )
}

/// The LM loss and auxiliary loss of one micro-batch.
pub fn batch_loss(
    model: &Decoder,
    batch: &[&TrainExample],
    options: &TrainOptions,
    device: &Device,
) -> (Tensor<1>, Tensor<1>, Vec<Vec<usize>>, usize) {
    let (ids, mask_t, labels, mask) = collate(batch, options.pad, device);
    let (logits, records) = model.forward_routed(ids, Some(mask_t));
    let lm = causal_lm_loss(logits, &labels);
    let aux = aux_loss(
        &records,
        Some(&mask),
        AuxLossConfig {
            balance: options.aux_balance,
            z: options.aux_z,
        },
    )
    .unwrap_or_else(|| Tensor::zeros([1], device));
    let tokens = mask.iter().filter(|&&m| m == 1).count();
    (lm, aux, tokens_per_expert(&records, Some(&mask)), tokens)
}

/// AdamW with `options`' weight decay.
pub fn optimizer(options: &TrainOptions) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
}

/// Runs the optimizer steps of one epoch over `data` (shuffled once per run with the
/// options' seed, as MoE-PEFT shuffles once), starting at step `first_step`; calls
/// `on_step` after each. Returns the model.
pub fn train_steps(
    mut model: Decoder,
    optimizer: &mut ModuleOptimizer,
    data: &[TrainExample],
    order: &[usize],
    steps: Range<usize>,
    options: &TrainOptions,
    on_step: &mut dyn FnMut(&StepRecord, &Decoder),
) -> Decoder {
    let device = model.embed_tokens.weight.val().device();
    let per_step = options.batch.max(1);
    let micro = options.micro_batch.clamp(1, per_step);
    let micro_steps = per_step.div_ceil(micro);
    for step in steps {
        let start = Instant::now();
        let chosen: Vec<&TrainExample> = (0..per_step)
            .map(|i| &data[order[(step * per_step + i) % order.len()]])
            .collect();
        let mut accumulator = GradientsAccumulator::new();
        let (mut loss_sum, mut aux_sum, mut tokens) = (0.0, 0.0, 0);
        let mut routing: Vec<Vec<usize>> = Vec::new();
        for part in chosen.chunks(micro) {
            let (lm, aux, counts, n) = batch_loss(&model, part, options, &device);
            loss_sum += lm.clone().inner().into_scalar::<f32>() as f64;
            aux_sum += aux.clone().inner().into_scalar::<f32>() as f64;
            tokens += n;
            for (layer, c) in counts.into_iter().enumerate() {
                if routing.len() <= layer {
                    routing.push(vec![0; c.len()]);
                }
                routing[layer].iter_mut().zip(c).for_each(|(a, b)| *a += b);
            }
            let loss = (lm + aux).div_scalar(micro_steps as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        model = optimizer.step(options.lr, model, accumulator.grads());
        let record = StepRecord {
            step: step + 1,
            loss: loss_sum / micro_steps as f64,
            aux_loss: aux_sum / micro_steps as f64,
            tokens_per_second: tokens as f64 / start.elapsed().as_secs_f64(),
            tokens_per_expert: routing,
        };
        on_step(&record, &model);
    }
    model
}

/// The permutation of `n` examples MoE-PEFT's single shuffle gives for `seed`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Accuracy per task (and overall) of `model` on `examples`: right-padded batches,
/// logits at each prompt's last token restricted to its labels, argmax.
pub fn evaluate(
    model: &Decoder,
    examples: &[EvalExample],
    batch: usize,
    pad: i64,
) -> (Vec<(usize, usize)>, f64) {
    let device = model.embed_tokens.weight.val().device();
    let tasks = examples.iter().map(|e| e.task + 1).max().unwrap_or(0);
    let mut per_task = vec![(0usize, 0usize); tasks];
    for chunk in examples.chunks(batch.max(1)) {
        let train: Vec<TrainExample> = chunk
            .iter()
            .map(|e| TrainExample {
                ids: e.prompt.clone(),
                loss_from: e.prompt.len(),
            })
            .collect();
        let refs: Vec<&TrainExample> = train.iter().collect();
        let (ids, mask, _, _) = collate(&refs, pad, &device);
        let logits = model.forward(ids, Some(mask));
        let [_, l, v] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32 logits");
        for (row, e) in chunk.iter().enumerate() {
            let at = (row * l + e.prompt.len() - 1) * v;
            let pick = e
                .labels
                .iter()
                .enumerate()
                .max_by(|a, b| {
                    values[at + *a.1 as usize]
                        .total_cmp(&values[at + *b.1 as usize])
                        .then(b.0.cmp(&a.0))
                })
                .map(|(i, _)| i)
                .expect("at least one label");
            per_task[e.task].1 += 1;
            if pick == e.answer {
                per_task[e.task].0 += 1;
            }
        }
    }
    let (right, all) = per_task
        .iter()
        .fold((0, 0), |(r, a), &(x, y)| (r + x, a + y));
    (per_task, right as f64 / all.max(1) as f64)
}

/// The ids of the parameters that train (in module order), for checkpoints that must
/// give a resumed run's parameters the ids its optimizer state is keyed by.
pub fn trainable_ids(model: &Decoder) -> Vec<u64> {
    struct Collect(Vec<u64>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0.push(param.id.val());
            }
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Gives the trainable parameters of `model`, in module order, the ids `ids`.
pub fn assign_ids(model: Decoder, ids: &[u64]) -> Result<Decoder, String> {
    struct Assign<'a>(&'a [u64], usize);
    impl ModuleMapper for Assign<'_> {
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if param.is_require_grad() {
                if let Some(&id) = self.0.get(self.1) {
                    param.id = ParamId::from(id);
                }
                self.1 += 1;
            }
            param
        }
    }
    let mut mapper = Assign(ids, 0);
    let model = model.map(&mut mapper);
    if mapper.1 != ids.len() {
        return Err(format!(
            "the checkpoint has {} trainable tensors, the model {}",
            ids.len(),
            mapper.1
        ));
    }
    Ok(model)
}

/// The state of a training run, written last at every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
    /// Data order.
    pub order: Vec<usize>,
    /// Ids of the trainable parameters (module order).
    pub param_ids: Vec<u64>,
    /// Options.
    pub options: TrainOptions,
    /// Everything needed to rebuild the run (method, data, model), as the caller wrote it.
    pub description: serde_json::Value,
    /// Per-step records.
    pub history: Vec<StepRecord>,
}

/// The optimizer file of a run folder.
pub fn optimizer_path(dir: &Path) -> PathBuf {
    dir.join("optimizer.bpk")
}
