//! Training from scratch: convergence on the synthetic grating task, exact resume, and
//! the TF-named export of trained weights.

use burn::tensor::{Device, Distribution, Tensor};
use moat::data::{Augmentation, ImageSource, OrientedGratings};
use moat::{
    InputNormalization, MoatConfig, RunDir, TrainOptions, Trainer, load_tf_weights, save_tf_weights,
};

/// A four-stage MOAT small enough to train in seconds: MBConv (with SE) stages at 8x8 and
/// 4x4, attention stages (one and two heads, with position tables) at 2x2 and 1x1.
fn small() -> MoatConfig {
    let mut config =
        MoatConfig::custom([16, 16], [1, 1, 1, 1], [16, 32, 32, 64]).with_num_classes(Some(4));
    // A run of a few hundred steps: running statistics must follow the batches faster
    // than the official (Keras 0.99) momentum lets them.
    config.batch_norm_momentum = 0.1;
    config
}

fn options(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 32,
        learning_rate: 3e-3,
        min_learning_rate: 1e-4,
        warmup_steps: 10,
        weight_decay: 0.05,
        label_smoothing: 0.1,
        resolution: None,
        seed: 7,
    }
}

fn trainer(epochs: usize, train: &dyn ImageSource) -> Trainer {
    let device = Device::flex();
    device.seed(11);
    Trainer::new(
        small(),
        options(epochs),
        train.len(),
        InputNormalization::ImageNet,
        &device,
    )
    .unwrap()
}

#[test]
fn learns_the_grating_task_far_above_chance() {
    let train = OrientedGratings::new(1024, 32, 1);
    let test = OrientedGratings::new(256, 32, 2);
    let mut t = trainer(6, &train);
    let before = t.evaluate(&test, 64).unwrap();
    let mut last = None;
    while !t.finished() {
        last = Some(
            t.train_epoch(&train, Augmentation::NONE, Some(&test), &mut |_, _, _| {})
                .unwrap(),
        );
    }
    let last = last.unwrap();
    let history = &t.state().history;
    assert!(
        history[0].train_loss > last.train_loss,
        "loss did not fall: {history:?}"
    );
    let acc = last.eval_accuracy.unwrap();
    eprintln!("before training {before}; {history:#?}");
    // Chance is 25%; every class has the same mean image (uniform phase).
    assert!(
        acc >= 0.9,
        "held-out accuracy {acc} (before training {before}); {history:?}"
    );
    assert_eq!(t.state().steps_done, 6 * 32);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let train = OrientedGratings::new(128, 32, 3);
    let dir = tempfile::tempdir().unwrap();
    let normalization = InputNormalization::ImageNet;
    let device = Device::flex();
    // Both runs start from one saved initialisation (tests share the device's RNG).
    let start = RunDir::new(dir.path().join("start"));
    trainer(2, &train).save(&start).unwrap();
    let resume = |run: &RunDir| Trainer::resume(run, train.len(), normalization, &device).unwrap();
    let epoch = |t: &mut Trainer| {
        t.train_epoch(&train, Augmentation::NONE, None, &mut |_, _, _| {})
            .unwrap()
    };

    let mut straight = resume(&start);
    epoch(&mut straight);
    epoch(&mut straight);

    let run = RunDir::new(dir.path().join("run"));
    let mut first = resume(&start);
    epoch(&mut first);
    first.save(&run).unwrap();
    drop(first);
    let mut resumed = resume(&run);
    assert_eq!(resumed.state().epochs_done, 1);
    assert_eq!(resumed.state().steps_done, 4);
    epoch(&mut resumed);
    resumed.save(&run).unwrap();
    assert!(resumed.finished());

    let x = Tensor::<4>::random([3, 3, 32, 32], Distribution::Default, &Device::flex());
    let a = straight.inference_model().forward(x.clone());
    let b = resumed.inference_model().forward(x);
    let diff = (a - b).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-4, "resumed run differs by {diff}");
    assert_eq!(
        straight.state().history.len(),
        resumed.state().history.len()
    );

    // Only the latest checkpoint is kept; the state names it.
    let names: Vec<String> = std::fs::read_dir(run.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "epoch-0002.model.bpk"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("epoch-0001")),
        "{names:?}"
    );
    assert_eq!(
        run.read_state().unwrap().checkpoint.as_deref(),
        Some("epoch-0002")
    );

    // The exported TF-named weights hold the trained model, BN statistics included.
    let loaded = load_tf_weights(small().init(&Device::flex()), run.weights()).unwrap();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Default, &Device::flex());
    let diff = (loaded.forward(x.clone()) - resumed.inference_model().forward(x))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "exported weights differ by {diff}");
}

#[test]
fn resume_refuses_a_changed_dataset_and_a_corrupt_checkpoint() {
    let train = OrientedGratings::new(64, 32, 3);
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let mut t = trainer(2, &train);
    t.train_epoch(&train, Augmentation::NONE, None, &mut |_, _, _| {})
        .unwrap();
    t.save(&run).unwrap();
    let err = Trainer::resume(&run, 96, InputNormalization::ImageNet, &Device::flex())
        .err()
        .unwrap();
    assert!(err.to_string().contains("64 training images"), "{err:#}");

    let model = dir.path().join("epoch-0001.model.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::resume(&run, 64, InputNormalization::ImageNet, &Device::flex())
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("epoch-0001.model.bpk"),
        "{err:#}"
    );
}

#[test]
fn bad_options_are_refused_before_training() {
    let device = Device::flex();
    let err = Trainer::new(
        small(),
        options(1),
        16,
        InputNormalization::ImageNet,
        &device,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("fewer than one batch"), "{err}");
    let err = Trainer::new(
        small().with_num_classes(None),
        options(1),
        64,
        InputNormalization::ImageNet,
        &device,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("classification head"), "{err}");
}

#[test]
fn tf_weight_export_round_trips() {
    let device = Device::flex();
    let config = MoatConfig::custom([16, 16], [1, 1, 2, 1], [16, 32, 32, 64])
        .with_windows([2, 2], [1, 1])
        .with_num_classes(Some(5));
    let model = config.init(&device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    save_tf_weights(&model, &path).unwrap();
    let other = load_tf_weights(config.init(&device), &path).unwrap();
    let x = Tensor::<4>::random([1, 3, 64, 64], Distribution::Default, &device);
    let diff = (model.forward(x.clone()) - other.forward(x))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert_eq!(diff, 0.0);
}
