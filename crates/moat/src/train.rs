//! Training MOAT from scratch.
//!
//! The recipe of the paper's ImageNet runs, scaled to what a user trains here: AdamW with
//! decoupled weight decay (none on biases, norm parameters and position tables, as in
//! timm and the official `no_decay` rule), a linear warmup into a cosine decay, label
//! smoothing, and the variant's drop-path schedule. Batches are assembled on worker
//! threads one step ahead of the model. A run directory holds a checkpoint written
//! atomically after every epoch (burnpack model and optimizer records, which keep
//! parameter ids so the AdamW moments line up on resume) and the final weights under
//! the official TF variable names, loadable by `moat forward` / `moat classify`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{InputNormalization, MoatConfig};
use crate::data::{Augmentation, Batch, ImageSource, assemble_batch};
use crate::model::Moat;
use crate::weights::save_tf_weights;

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (reached at the end of warmup).
    pub learning_rate: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_learning_rate: f64,
    /// Steps of linear warmup from zero.
    pub warmup_steps: usize,
    /// Decoupled weight decay of AdamW (kernels and dense weights only).
    pub weight_decay: f32,
    /// Label smoothing: the target puts `1 - s + s / K` on the label and `s / K` elsewhere.
    pub label_smoothing: f32,
    /// Side length the images are resized to (bilinear) before the stem; `None` keeps the
    /// source's size.
    pub resolution: Option<usize>,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 30,
            batch_size: 64,
            learning_rate: 1e-3,
            min_learning_rate: 1e-5,
            warmup_steps: 500,
            weight_decay: 0.05,
            label_smoothing: 0.1,
            resolution: None,
            seed: 0,
        }
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warmup from 0 to `peak` over
/// `warmup` steps, then cosine decay to `min` at `total`.
///
/// A closed form of the step rather than burn's stateful schedulers, so that resuming
/// at step `n` needs nothing but `n`.
pub fn learning_rate_at(step: usize, total: usize, warmup: usize, peak: f64, min: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup) as f64 / decay as f64).min(1.0);
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Mean cross-entropy of `logits [B, K]` against label-smoothed one-hot targets (the
/// target puts `1 - s + s / K` on the label and `s / K` elsewhere).
pub use mobiletl::train::label_smoothed_cross_entropy as smoothed_cross_entropy;

/// Per-parameter ids of everything that AdamW should not decay: rank-1 parameters (biases,
/// BN / LN scales and shifts) and the relative position tables.
fn no_decay_ids(model: &Moat) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D == 1 || D == 3 {
                self.0.push(param.id);
            }
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn optimizer(model: &Moat, options: &TrainOptions) -> ModuleOptimizer {
    let decayed = AdamWConfig::new()
        .with_weight_decay(options.weight_decay)
        .with_epsilon(1e-8);
    decayed.init().with_group(
        ParamGroup::from_ids(no_decay_ids(model)),
        decayed.clone().with_weight_decay(0.0).build(),
        None,
    )
}

/// What an epoch measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented images, with drop path active).
    pub train_accuracy: f64,
    /// Accuracy on the evaluation set, if one was given.
    pub eval_accuracy: Option<f64>,
    /// Learning rate of the last step.
    pub learning_rate: f64,
}

/// Progress of a run, stored as `state.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The model that is trained.
    pub model: MoatConfig,
    /// The hyper-parameters.
    pub options: TrainOptions,
    /// Size of the training set the run was started on.
    pub train_images: usize,
    /// Optimizer steps per epoch (`train_images / batch_size`; the last partial batch
    /// is dropped, as in timm, so BatchNorm never sees a tiny batch).
    pub steps_per_epoch: usize,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub steps_done: usize,
    /// Stem of the checkpoint files of the last completed epoch, if any.
    pub checkpoint: Option<String>,
    /// One row per completed epoch.
    pub history: Vec<EpochRecord>,
}

impl RunState {
    /// Steps of the whole schedule.
    pub fn total_steps(&self) -> usize {
        self.options.epochs * self.steps_per_epoch
    }
}

/// The files of a run directory: `state.json`, the checkpoint of the last completed
/// epoch (`epoch-NNNN.model.bpk`, `epoch-NNNN.optimizer.bpk`, written crash-safely by
/// [`mobiletl::checkpoint::RunDir`]) and `weights.safetensors`.
#[derive(Debug, Clone)]
pub struct RunDir {
    files: mobiletl::checkpoint::RunDir,
}

impl RunDir {
    /// The run directory `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunDir {
            files: mobiletl::checkpoint::RunDir::new(dir),
        }
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        self.files.path()
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.files.state()
    }
    /// The final (and latest) weights under the official TF variable names.
    pub fn weights(&self) -> PathBuf {
        self.files.path().join("weights.safetensors")
    }
    /// Whether the directory holds a run to resume.
    pub fn exists(&self) -> bool {
        self.files.exists()
    }
    /// Reads `state.json`.
    pub fn read_state(&self) -> Result<RunState> {
        self.files.read_state("MOAT")
    }
}

fn validate(config: &MoatConfig, options: &TrainOptions, train_images: usize) -> Result<()> {
    let Some(classes) = config.num_classes else {
        bail!("training needs a classification head (num_classes)");
    };
    if classes == 0 {
        bail!("num_classes must be positive");
    }
    mobiletl::train::validate_schedule(
        options.batch_size,
        train_images,
        options.epochs,
        (options.learning_rate, options.min_learning_rate),
        options.label_smoothing,
    )
}

/// A model, its optimizer and the run's progress.
pub struct Trainer {
    // `None` only inside `step`, while the optimizer owns the model.
    model: Option<Moat>,
    optimizer: ModuleOptimizer,
    state: RunState,
    normalization: InputNormalization,
    device: Device,
}

impl Trainer {
    /// A fresh run of `config` on the autodiff version of `device`, for a training set of
    /// `train_images` images. The model is initialised from `device`'s seed.
    pub fn new(
        config: MoatConfig,
        options: TrainOptions,
        train_images: usize,
        normalization: InputNormalization,
        device: &Device,
    ) -> Result<Self> {
        validate(&config, &options, train_images)?;
        let device = device.clone().autodiff();
        let model = config.init(&device);
        let optimizer = optimizer(&model, &options);
        let steps_per_epoch = train_images / options.batch_size;
        Ok(Trainer {
            model: Some(model),
            optimizer,
            state: RunState {
                model: config,
                options,
                train_images,
                steps_per_epoch,
                epochs_done: 0,
                steps_done: 0,
                checkpoint: None,
                history: Vec::new(),
            },
            normalization,
            device,
        })
    }

    /// Continues the run saved in `run`, checking that the training set has not changed
    /// size since it started.
    pub fn resume(
        run: &RunDir,
        train_images: usize,
        normalization: InputNormalization,
        device: &Device,
    ) -> Result<Self> {
        let state = run.read_state()?;
        validate(&state.model, &state.options, train_images)?;
        if state.train_images != train_images {
            bail!(
                "{} was started on {} training images, the data now has {train_images}",
                run.state().display(),
                state.train_images
            );
        }
        let device = device.clone().autodiff();
        let mut model = state.model.init(&device);
        let mut optimizer = optimizer(&model, &state.options);
        if let Some(stem) = &state.checkpoint {
            model = run.files.load_model(stem, model)?;
            // The group of undecayed parameters is rebuilt from the loaded model, whose
            // parameter ids are those of the record.
            optimizer = run
                .files
                .load_optimizer(stem, self::optimizer(&model, &state.options))?;
        }
        Ok(Trainer {
            model: Some(model),
            optimizer,
            state,
            normalization,
            device,
        })
    }

    /// Progress so far.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Whether every scheduled epoch has run.
    pub fn finished(&self) -> bool {
        self.state.epochs_done >= self.state.options.epochs
    }

    /// The model as it stands (on the autodiff device).
    pub fn model(&self) -> &Moat {
        self.model
            .as_ref()
            .expect("the model is only taken during a step")
    }

    /// An inference copy of the model with the latest BatchNorm statistics.
    pub fn inference_model(&self) -> Moat {
        let model = self.model();
        model.sync_running_stats();
        model.valid()
    }

    /// `batch` as a tensor on `device`, resized to the run's resolution.
    fn input(&self, batch: Batch, device: &Device) -> Tensor<4> {
        let n = batch.len();
        let s = batch.side;
        let x = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), device);
        match self.state.options.resolution {
            Some(r) if r != s => interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size([r, r]),
            ),
            _ => x,
        }
    }

    /// The learning rate of the next step.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate_for(self.state.steps_done)
    }

    /// The learning rate of step `step` of the schedule.
    fn learning_rate_for(&self, step: usize) -> f64 {
        let o = &self.state.options;
        learning_rate_at(
            step,
            self.state.total_steps(),
            o.warmup_steps,
            o.learning_rate,
            o.min_learning_rate,
        )
    }

    /// One AdamW step on `batch`; returns the loss and the number of correct predictions.
    pub fn step(&mut self, batch: Batch) -> (f64, usize) {
        let lr = self.learning_rate();
        let labels = batch.labels.clone();
        let x = self.input(batch, &self.device);
        let model = self
            .model
            .take()
            .expect("the model is only taken during a step");
        let logits = model.forward(x);
        let correct = mobiletl::train::count_correct(logits.clone().inner(), &labels);
        let loss = smoothed_cross_entropy(logits, &labels, self.state.options.label_smoothing);
        let loss_value = loss.clone().inner().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optimizer.step(lr, model, grads));
        self.state.steps_done += 1;
        (loss_value, correct)
    }

    /// Trains one epoch over `train`, shuffled by `(seed, epoch)`, while a worker thread
    /// assembles the next batch. `progress(step, loss, accuracy)` runs after every step.
    pub fn train_epoch(
        &mut self,
        train: &dyn ImageSource,
        augmentation: Augmentation,
        eval: Option<&dyn ImageSource>,
        progress: &mut dyn FnMut(usize, f64, f64),
    ) -> Result<EpochRecord> {
        if train.len() != self.state.train_images {
            bail!(
                "the run expects {} training images, the source has {}",
                self.state.train_images,
                train.len()
            );
        }
        let classes = self.state.model.num_classes.unwrap_or(0);
        if train.num_classes() > classes {
            bail!(
                "the data has {} classes, the model's head {classes}",
                train.num_classes()
            );
        }
        let epoch = self.state.epochs_done;
        let seed = self.state.options.seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (b, steps) = (self.state.options.batch_size, self.state.steps_per_epoch);
        let normalization = self.normalization;
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        std::thread::scope(|scope| {
            // Two batches in flight: one being assembled, one waiting for the step.
            let (send, receive) = mpsc::sync_channel::<Batch>(2);
            let order = &order;
            scope.spawn(move || {
                for step in 0..steps {
                    let indices = &order[step * b..(step + 1) * b];
                    let batch_seed = seed.wrapping_add(step as u64 + 1);
                    let batch =
                        assemble_batch(train, indices, augmentation, normalization, batch_seed);
                    if send.send(batch).is_err() {
                        break;
                    }
                }
            });
            for step in 0..steps {
                let batch = receive
                    .recv()
                    .expect("the loader thread ends only after the last batch");
                let n = batch.len();
                let (loss, hits) = self.step(batch);
                loss_sum += loss * n as f64;
                correct += hits;
                seen += n;
                progress(
                    step + 1,
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                );
            }
        });
        let eval_accuracy = match eval {
            Some(source) => Some(self.evaluate(source, b)?),
            None => None,
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            eval_accuracy,
            learning_rate: self.learning_rate_for(self.state.steps_done.saturating_sub(1)),
        };
        self.state.epochs_done += 1;
        self.state.history.push(record);
        Ok(record)
    }

    /// Top-1 accuracy on `source` (no augmentation, inference-mode BatchNorm).
    pub fn evaluate(&self, source: &dyn ImageSource, batch_size: usize) -> Result<f64> {
        if source.is_empty() {
            bail!("the evaluation set is empty");
        }
        let model = self.inference_model();
        let device = self.device.clone().inner();
        let mut correct = 0;
        let indices: Vec<usize> = (0..source.len()).collect();
        for chunk in indices.chunks(batch_size.max(1)) {
            let batch = assemble_batch(source, chunk, Augmentation::NONE, self.normalization, 0);
            let labels = batch.labels.clone();
            let x = self.input(batch, &device);
            correct += mobiletl::train::count_correct(model.forward(x), &labels);
        }
        Ok(correct as f64 / source.len() as f64)
    }

    /// Saves the checkpoint of the epochs done so far into `run`, and the weights under
    /// the official TF names. See [`RunDir`] for the order of writes.
    pub fn save(&mut self, run: &RunDir) -> Result<()> {
        let stem = format!("epoch-{:04}", self.state.epochs_done);
        self.model().sync_running_stats();
        // The weights first: the state written last by `files.save` then covers them.
        save_tf_weights(&self.inference_model(), run.weights())?;
        let previous = self.state.checkpoint.replace(stem.clone());
        let model = self
            .model
            .as_ref()
            .expect("the model is only taken during a step");
        run.files.save(
            &stem,
            model,
            &self.optimizer,
            &self.state,
            previous.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let lr = |s| learning_rate_at(s, 110, 10, 1e-3, 1e-5);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        assert!((lr(110) - 1e-5).abs() < 1e-12);
        for s in 10..110 {
            assert!(lr(s + 1) <= lr(s));
        }
    }

    #[test]
    fn smoothed_cross_entropy_matches_the_closed_form() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 0.5], [2, 3]),
            &device,
        );
        let loss = smoothed_cross_entropy(logits, &[0, 2], 0.3).into_scalar::<f32>() as f64;
        let lse0 = (2f64.exp() + 1.0 + (-1f64).exp()).ln();
        let row0 = -(0.8 * (2.0 - lse0) + 0.1 * (0.0 - lse0) + 0.1 * (-1.0 - lse0));
        let row1 = 3f64.ln();
        assert!((loss - (row0 + row1) / 2.0).abs() < 1e-5, "{loss}");
    }
}
