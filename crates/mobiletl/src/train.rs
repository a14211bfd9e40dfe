//! Fine-tuning a pretrained MobileNet with one of the methods of
//! [`method::finetune`](crate::method::finetune), on TinyTL's recipe (the one MobileTL
//! reports with): Adam, a cosine learning-rate schedule, label smoothing, random resized
//! crops and flips at the model's resolution.
//!
//! A [`RunDir`] holds `state.json` (options, progress, per-epoch history, the final test
//! accuracy) and the checkpoint of the last completed epoch, written crash-safely (see
//! [`checkpoint`](crate::checkpoint)); `--resume` lines Adam's moments up again.

use std::sync::mpsc;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::checkpoint::RunDir;
use crate::data::{Batch, ImageSource, Pipeline, assemble_batch};
use crate::method::finetune::{self, Method};
use crate::mobilenet::{MobileNet, MobileNetConfig};

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam without weight decay (TinyTL's choice).
    Adam,
    /// AdamW with decoupled weight decay.
    Adamw,
}

/// Hyper-parameters of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneOptions {
    /// The method.
    pub method: Method,
    /// K of FT-K (MobileTL and vanilla).
    pub blocks: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Initial learning rate of the cosine schedule.
    pub learning_rate: f64,
    /// Learning rate at the end of the schedule.
    pub min_learning_rate: f64,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay (AdamW only).
    pub weight_decay: f32,
    /// Label smoothing: the target puts `1 - s + s / K` on the label, `s / K` elsewhere.
    pub label_smoothing: f32,
    /// Side of the network input; images are cropped and resized to it.
    pub resolution: u32,
    /// Smallest area fraction of the training crop (TinyTL: 0.08).
    #[serde(default = "default_crop_scale")]
    pub crop_scale: f32,
    /// Evaluation resizes the shorter side to `resolution / eval_crop_fraction` and takes
    /// the centre (TinyTL: 0.875; 1 resizes to the resolution directly).
    #[serde(default = "default_eval_crop_fraction")]
    pub eval_crop_fraction: f32,
    /// Seed of shuffling, augmentation and the new classifier.
    pub seed: u64,
}

impl Default for FinetuneOptions {
    /// TinyTL's CIFAR recipe with MobileTL on 5 blocks: 50 epochs, batch 8, Adam at
    /// 3e-4 with a cosine schedule, label smoothing 0.1, 224 px.
    fn default() -> Self {
        FinetuneOptions {
            method: Method::Mobiletl,
            blocks: 5,
            epochs: 50,
            batch_size: 8,
            learning_rate: 3e-4,
            min_learning_rate: 0.0,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            label_smoothing: 0.1,
            resolution: 224,
            crop_scale: default_crop_scale(),
            eval_crop_fraction: default_eval_crop_fraction(),
            seed: 0,
        }
    }
}

fn default_crop_scale() -> f32 {
    0.08
}

fn default_eval_crop_fraction() -> f32 {
    0.875
}

/// Cosine decay from `peak` at step 0 to `min` at step `total`.
pub fn cosine_learning_rate(step: usize, total: usize, peak: f64, min: f64) -> f64 {
    let t = (step as f64 / total.max(1) as f64).min(1.0);
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Mean cross-entropy of `logits [B, K]` against label-smoothed one-hot targets.
pub fn label_smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    smoothing: f32,
) -> Tensor<1> {
    let [rows, classes] = logits.dims();
    assert_eq!(rows, labels.len(), "one label per row of logits");
    let rest = smoothing / classes as f32;
    let target: Vec<f32> = (0..rows * classes)
        .map(|i| {
            if i % classes == labels[i / classes] {
                1.0 - smoothing + rest
            } else {
                rest
            }
        })
        .collect();
    let target = Tensor::<2>::from_data(TensorData::new(target, [rows, classes]), &logits.device());
    (log_softmax(logits, 1) * target)
        .sum()
        .mul_scalar(-1.0 / rows as f64)
}

/// What an epoch measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (augmented images).
    pub train_accuracy: f64,
    /// Accuracy on the evaluation set, when one was given.
    pub eval_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Seconds the epoch took.
    pub seconds: f64,
}

/// A run's progress, stored as `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// The network (with the task's number of classes).
    pub model: MobileNetConfig,
    /// Hyper-parameters.
    pub options: FinetuneOptions,
    /// Name of the dataset (for the record).
    pub dataset: String,
    /// Size of the training set the run started on.
    pub train_images: usize,
    /// Steps per epoch: `train_images / batch_size`, the last partial batch dropped so
    /// BatchNorm never sees a batch of one.
    pub steps_per_epoch: usize,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub steps_done: usize,
    /// Trainable parameters under the method.
    pub trainable_params: usize,
    /// Stem of the current checkpoint files.
    pub checkpoint: Option<String>,
    /// One row per completed epoch.
    pub history: Vec<EpochRecord>,
    /// Top-1 accuracy on the test set at the end of the run.
    pub test_accuracy: Option<f64>,
}

fn optimizer(options: &FinetuneOptions) -> ModuleOptimizer {
    match options.optimizer {
        OptimizerKind::Adam => AdamConfig::new().with_epsilon(1e-8).init(),
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(options.weight_decay)
            .init(),
    }
}

/// The checks every training schedule shares (also `moat train`'s): batches of at least
/// two (BatchNorm needs batch statistics), at least one batch of data, positive epochs
/// and learning rates, label smoothing in `[0, 1)`.
pub fn validate_schedule(
    batch_size: usize,
    train_images: usize,
    epochs: usize,
    learning_rates: (f64, f64),
    label_smoothing: f32,
) -> Result<()> {
    if batch_size < 2 {
        bail!("the batch size must be at least 2 (BatchNorm needs batch statistics)");
    }
    if train_images < batch_size {
        bail!("the training set has {train_images} images, fewer than one batch of {batch_size}");
    }
    if epochs == 0 {
        bail!("epochs must be positive");
    }
    if !(learning_rates.0 > 0.0 && learning_rates.1 >= 0.0) {
        bail!("learning rates must be positive");
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        bail!("label smoothing must be in [0, 1)");
    }
    Ok(())
}

fn validate(options: &FinetuneOptions, train_images: usize) -> Result<()> {
    validate_schedule(
        options.batch_size,
        train_images,
        options.epochs,
        (options.learning_rate, options.min_learning_rate),
        options.label_smoothing,
    )?;
    if !(options.crop_scale > 0.0 && options.crop_scale <= 1.0) {
        bail!("the crop scale must be in (0, 1]");
    }
    if !(options.eval_crop_fraction > 0.0 && options.eval_crop_fraction <= 1.0) {
        bail!("the evaluation crop fraction must be in (0, 1]");
    }
    if options.resolution < 32 {
        bail!("--resolution must be at least 32");
    }
    Ok(())
}

/// `model` with a freshly initialised classifier of `classes` outputs (the pretrained
/// ImageNet head does not fit the task).
pub fn with_new_classifier(mut model: MobileNet, classes: usize, device: &Device) -> MobileNet {
    let [features, _] = model.classifier.weight.dims();
    model.classifier = LinearConfig::new(features, classes).init(device);
    model
}

/// How many rows of `logits` have their largest value at the label.
pub fn count_correct(logits: Tensor<2>, labels: &[usize]) -> usize {
    let predicted: Tensor<1, Int> = logits.argmax(1).flatten(0, 1);
    let predicted = predicted
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("argmax yields integers");
    predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as usize == **l)
        .count()
}

fn trainable_params(model: &MobileNet) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

/// Puts every parameter on the autodiff backend, requiring gradients (`to_device` onto
/// the autodiff version of the same device leaves tensors untracked).
struct TrackParameters;

impl burn::module::ModuleMapper for TrackParameters {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| t.autodiff().require_grad())
    }
}

/// A model being fine-tuned, its optimizer and the run's progress.
pub struct FineTuner {
    // `None` only inside `step`, while the optimizer owns the model.
    model: Option<MobileNet>,
    optimizer: ModuleOptimizer,
    state: RunState,
    device: Device,
}

impl FineTuner {
    /// A new run on the autodiff version of `device`: `pretrained` (built from
    /// `config` with its own number of classes) gets a new `classes`-way classifier and is
    /// prepared for the method.
    pub fn new(
        pretrained: MobileNet,
        config: MobileNetConfig,
        classes: usize,
        options: FinetuneOptions,
        dataset: &str,
        train_images: usize,
        device: &Device,
    ) -> Result<Self> {
        validate(&options, train_images)?;
        let device = device.clone().autodiff();
        device.seed(options.seed);
        let model = with_new_classifier(pretrained.map(&mut TrackParameters), classes, &device);
        let model =
            finetune::prepare(model, options.method, options.blocks).map_err(anyhow::Error::msg)?;
        let state = RunState {
            model: config.with_num_classes(classes),
            trainable_params: trainable_params(&model),
            steps_per_epoch: train_images / options.batch_size,
            options,
            dataset: dataset.to_string(),
            train_images,
            epochs_done: 0,
            steps_done: 0,
            checkpoint: None,
            history: Vec::new(),
            test_accuracy: None,
        };
        Ok(FineTuner {
            model: Some(model),
            optimizer: optimizer(&state.options),
            state,
            device,
        })
    }

    /// Continues the run saved in `run`; the training set must have the size it had.
    pub fn resume(run: &RunDir, train_images: usize, device: &Device) -> Result<Self> {
        let state: RunState = run.read_state("mobiletl")?;
        validate(&state.options, train_images)?;
        if state.train_images != train_images {
            bail!(
                "{} was started on {} training images, the data now has {train_images}",
                run.state().display(),
                state.train_images
            );
        }
        let Some(stem) = state.checkpoint.clone() else {
            bail!("{} names no checkpoint", run.state().display());
        };
        let device = device.clone().autodiff();
        let model = run.load_model(&stem, state.model.init(&device))?;
        // Freezing again after loading: the record carries values and ids, the method
        // decides what trains.
        let model = finetune::prepare(model, state.options.method, state.options.blocks)
            .map_err(anyhow::Error::msg)?;
        let optimizer = run.load_optimizer(&stem, optimizer(&state.options))?;
        Ok(FineTuner {
            model: Some(model),
            optimizer,
            state,
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

    /// The model as it stands (autodiff device, method's freezing applied).
    pub fn model(&self) -> &MobileNet {
        self.model
            .as_ref()
            .expect("the model is only taken during a step")
    }

    /// Learning rate of step `step` of the schedule.
    fn learning_rate_for(&self, step: usize) -> f64 {
        let o = &self.state.options;
        cosine_learning_rate(
            step,
            self.state.options.epochs * self.state.steps_per_epoch,
            o.learning_rate,
            o.min_learning_rate,
        )
    }

    /// One optimizer step on `batch`; returns the loss and the number of correct
    /// predictions.
    pub fn step(&mut self, batch: Batch) -> (f64, usize) {
        let lr = self.learning_rate_for(self.state.steps_done);
        let (n, s) = (batch.labels.len(), batch.side);
        let x = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), &self.device);
        let model = self
            .model
            .take()
            .expect("the model is only taken during a step");
        let logits = finetune::forward(&model, x, self.state.options.method);
        let correct = count_correct(logits.clone().inner(), &batch.labels);
        let loss =
            label_smoothed_cross_entropy(logits, &batch.labels, self.state.options.label_smoothing);
        let loss_value = loss.clone().inner().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optimizer.step(lr, model, grads));
        self.state.steps_done += 1;
        (loss_value, correct)
    }

    /// Trains one epoch over `train`, shuffled by `(seed, epoch)`, while a loader thread
    /// assembles the next batches. `progress(step, loss, accuracy)` runs after each step.
    pub fn train_epoch(
        &mut self,
        train: &dyn ImageSource,
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
        let classes = self.state.model.num_classes;
        if train.num_classes() > classes {
            bail!(
                "the data has {} classes, the classifier {classes}",
                train.num_classes()
            );
        }
        let started = std::time::Instant::now();
        let epoch = self.state.epochs_done;
        let seed = self.state.options.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (b, steps) = (self.state.options.batch_size, self.state.steps_per_epoch);
        let pipeline = Pipeline {
            crop_scale: self.state.options.crop_scale,
            ..Pipeline::imagenet(self.state.options.resolution, true)
        };
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        std::thread::scope(|scope| -> Result<()> {
            // Up to two batches wait while the model steps.
            let (send, receive) = mpsc::sync_channel(2);
            let order = &order;
            let pipeline = &pipeline;
            scope.spawn(move || {
                for step in 0..steps {
                    let batch = assemble_batch(
                        train,
                        &order[step * b..(step + 1) * b],
                        pipeline,
                        seed.wrapping_add(step as u64),
                    );
                    let failed = batch.is_err();
                    if send.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
            for step in 0..steps {
                let batch = receive
                    .recv()
                    .expect("the loader sends every batch or an error")?;
                let n = batch.labels.len();
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
            Ok(())
        })?;
        let eval_accuracy = eval.map(|source| self.evaluate(source)).transpose()?;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            eval_accuracy,
            learning_rate: self.learning_rate_for(self.state.steps_done.saturating_sub(1)),
            seconds: started.elapsed().as_secs_f64(),
        };
        self.state.epochs_done += 1;
        self.state.history.push(record);
        Ok(record)
    }

    /// Top-1 accuracy on `source`: resize and centre crop, inference-mode BatchNorm.
    pub fn evaluate(&self, source: &dyn ImageSource) -> Result<f64> {
        if source.is_empty() {
            bail!("the evaluation set is empty");
        }
        let model = self.model();
        model.sync_running_stats();
        let model = model.valid();
        let device = self.device.clone().inner();
        let pipeline = Pipeline {
            crop_fraction: self.state.options.eval_crop_fraction,
            ..Pipeline::imagenet(self.state.options.resolution, false)
        };
        let indices: Vec<usize> = (0..source.len()).collect();
        let mut correct = 0;
        for chunk in indices.chunks(self.state.options.batch_size.max(16)) {
            let batch = assemble_batch(source, chunk, &pipeline, 0)?;
            let (n, s) = (batch.labels.len(), batch.side);
            let x = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), &device);
            correct += count_correct(model.forward(x), &batch.labels);
        }
        Ok(correct as f64 / source.len() as f64)
    }

    /// Records the final test accuracy.
    pub fn set_test_accuracy(&mut self, accuracy: f64) {
        self.state.test_accuracy = Some(accuracy);
    }

    /// Saves the checkpoint of the epochs done into `run` (see the module docs for the
    /// order of writes).
    pub fn save(&mut self, run: &RunDir) -> Result<()> {
        let stem = format!("epoch-{:04}", self.state.epochs_done);
        let model = self
            .model
            .as_ref()
            .expect("the model is only taken during a step");
        model.sync_running_stats();
        let previous = self.state.checkpoint.replace(stem.clone());
        run.save(
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
    fn cosine_schedule_ends_at_the_minimum() {
        assert_eq!(cosine_learning_rate(0, 100, 3e-4, 0.0), 3e-4);
        assert!((cosine_learning_rate(50, 100, 3e-4, 0.0) - 1.5e-4).abs() < 1e-12);
        assert!(cosine_learning_rate(100, 100, 3e-4, 1e-6) - 1e-6 < 1e-15);
        assert!(
            (1..100).all(|s| cosine_learning_rate(s, 100, 1.0, 0.0)
                < cosine_learning_rate(s - 1, 100, 1.0, 0.0))
        );
    }

    #[test]
    fn label_smoothing_matches_the_closed_form() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 0.0, 3.0], [2, 2]),
            &device,
        );
        let loss = label_smoothed_cross_entropy(logits, &[1, 1], 0.2).into_scalar::<f32>() as f64;
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let row = |l0: f64, l1: f64| -(0.1 * (l0 - lse(l0, l1)) + 0.9 * (l1 - lse(l0, l1)));
        assert!(
            (loss - (row(1.0, -1.0) + row(0.0, 3.0)) / 2.0).abs() < 1e-5,
            "{loss}"
        );
    }
}
