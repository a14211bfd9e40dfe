//! Fine-tuning works for real without downloads: on the synthetic shapes task, MobileTL
//! and vanilla fine-tuning both learn far above chance and end within a few points of
//! each other.
//!
//! One test per binary: the device's random generator is shared by the threads of a test
//! binary, and the two runs must start from the same seeded weights.

use burn::tensor::Device;
use mobiletl::data::{ImageSource, SyntheticShapes};
use mobiletl::method::Method;
use mobiletl::mobilenet::{Flavor, MobileNetArch, MobileNetConfig};
use mobiletl::train::{FineTuner, FinetuneOptions};

#[test]
fn mobiletl_and_vanilla_fine_tuning_both_learn_the_shapes_task() {
    let device = Device::flex();
    let train = SyntheticShapes::new(1024, 48, 1);
    let test = SyntheticShapes::new(256, 48, 2);
    // timm's BatchNorm momentum (0.1): the running statistics settle within a short run.
    let config = MobileNetConfig::new(MobileNetArch::V3Small).with_flavor(Flavor::Timm);
    let mut accuracy = Vec::new();
    for method in [Method::Vanilla, Method::Mobiletl] {
        device.seed(7);
        let options = FinetuneOptions {
            method,
            blocks: 11,
            epochs: 4,
            batch_size: 16,
            learning_rate: 1e-3,
            resolution: 48,
            // The shapes fill the frame: crops that cut them off would change the class.
            crop_scale: 1.0,
            eval_crop_fraction: 1.0,
            ..FinetuneOptions::default()
        };
        let mut tuner = FineTuner::new(
            config.init(&device),
            config.clone(),
            SyntheticShapes::CLASSES,
            options,
            "synthetic",
            train.len(),
            &device,
        )
        .unwrap();
        let mut first_loss = None;
        while !tuner.finished() {
            let record = tuner.train_epoch(&train, None, &mut |_, _, _| {}).unwrap();
            first_loss.get_or_insert(record.train_loss);
        }
        let last = tuner.state().history.last().unwrap().train_loss;
        assert!(
            last < 0.8 * first_loss.unwrap(),
            "{method:?}: loss {first_loss:?} -> {last}"
        );
        let acc = tuner.evaluate(&test).unwrap();
        eprintln!("{method:?}: held-out accuracy {acc:.3}");
        accuracy.push(acc);
    }
    let (vanilla, mobiletl) = (accuracy[0], accuracy[1]);
    assert!(
        vanilla > 0.6 && mobiletl > 0.6,
        "chance is 0.25: vanilla {vanilla}, MobileTL {mobiletl}"
    );
    assert!(
        (vanilla - mobiletl).abs() < 0.1,
        "vanilla {vanilla} vs MobileTL {mobiletl}"
    );
}
