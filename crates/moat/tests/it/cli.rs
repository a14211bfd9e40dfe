//! The `moat` command line, end to end on the TensorFlow-written fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn params_prints_all_eighteen_official_counts() {
    let (ok, out, err) = run(moat().arg("params"));
    assert!(ok, "{err}");
    assert_eq!(out.matches("exact").count(), 18, "{out}");
    assert!(!out.contains("DIFF"), "{out}");
    for n in ["27846892", "483214184", "5122895", "19476600"] {
        assert!(out.contains(n), "{n} missing:\n{out}");
    }
}

#[test]
fn flops_prints_multiply_adds() {
    let (ok, out, err) =
        run(moat().args(["flops", "--variant", "tiny-moat-0", "--resolution", "256"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("tiny-moat-0 at 256x256") && out.contains("GMACs"),
        "{out}"
    );
    let (ok, _, err) = run(moat().args([
        "flops",
        "--variant",
        "moat-0",
        "--resolution",
        "512",
        "--window",
        "14,7",
    ]));
    assert!(!ok && err.contains("not divisible"), "{err}");
}

#[test]
fn convert_then_forward_reproduces_tensorflow() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    let (ok, out, err) = run(moat()
        .arg("convert-tf")
        .arg(fixtures().join("tiny_global"))
        .arg(&weights));
    assert!(ok, "{err}");
    assert!(
        out.contains("from EMA shadows") && out.contains("left out"),
        "{out}"
    );

    // The fixture is a custom MOAT, described by a JSON config.
    let config = dir.path().join("tiny.json");
    let mut c = moat::MoatConfig::custom([16, 16], [1, 1, 2, 2], [32, 32, 64, 64])
        .with_num_classes(Some(10));
    c.survival_prob = 1.0;
    std::fs::write(&config, serde_json::to_string(&c).unwrap()).unwrap();
    let input = dir.path().join("x.safetensors");
    let output = dir.path().join("y.safetensors");
    let reference = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let x = reference.tensor("input_global").unwrap();
    let views = vec![("input".to_string(), x.clone())];
    std::fs::write(&input, safetensors::serialize(views, None).unwrap()).unwrap();
    let (ok, _, err) = run(moat()
        .arg("forward")
        .arg("--config")
        .arg(&config)
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output));
    assert!(ok, "{err}");
    let bytes = std::fs::read(&output).unwrap();
    let y = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |v: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let ours = floats(y.tensor("logits").unwrap());
    let tf = floats(reference.tensor("logits_global").unwrap());
    let scale = tf.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(&tf)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "CLI logits differ from TF by {err}");

    // A variant's model refuses the custom model's weights, naming the variable.
    let (ok, _, err) = run(moat()
        .args(["forward", "--variant", "tiny-moat-0", "--weights"])
        .arg(&weights)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output));
    assert!(!ok, "a 16-channel stem loaded into tiny-MOAT-0");
    assert!(
        err.contains("shape mismatch for moat/stem/conv_0/kernel"),
        "{err}"
    );
}

#[test]
fn clear_errors_for_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(moat()
        .arg("convert-tf")
        .arg(dir.path().join("missing"))
        .arg(dir.path().join("o.safetensors")));
    assert!(!ok && err.contains("missing.index"), "{err}");
    let garbage = dir.path().join("g.safetensors");
    std::fs::write(&garbage, b"not a file").unwrap();
    let (ok, _, err) = run(moat()
        .args(["forward", "--variant", "tiny-moat-0", "--weights"])
        .arg(&garbage)
        .args(["--input", "x", "--output", "y"]));
    assert!(!ok && err.contains("g.safetensors"), "{err}");
}

#[test]
fn train_writes_a_run_that_forward_loads_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.json");
    let small = moat::MoatConfig::custom([16, 16], [1, 1, 1, 1], [16, 32, 32, 64]);
    std::fs::write(&config, serde_json::to_string(&small).unwrap()).unwrap();
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut cmd = moat();
        cmd.arg("train")
            .arg("--config")
            .arg(&config)
            .args(["--dataset", "synthetic", "--synthetic-images", "64"])
            .args(["--epochs", "1", "--batch", "16", "--warmup-steps", "2"])
            .arg("--out")
            .arg(&out)
            .args(extra);
        run(&mut cmd)
    };
    let (ok, stdout, err) = train(&[]);
    assert!(ok, "{err}");
    assert!(stdout.contains("epoch 1: train loss"), "{stdout}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 1);
    assert_eq!(state["steps_done"], 4);
    assert_eq!(state["model"]["num_classes"], 4);

    let (ok, _, err) = train(&[]);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, stdout, err) = train(&["--resume"]);
    assert!(ok && stdout.contains("done"), "{err}{stdout}");

    // The exported weights run through `moat forward`.
    let input = dir.path().join("x.safetensors");
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "input".to_string(),
        (vec![2, 3, 32, 32], vec![0.5f32; 2 * 3 * 32 * 32]),
    );
    moat::weights::write_safetensors(&input, &tensors).unwrap();
    let logits = dir.path().join("y.safetensors");
    let (ok, _, err) = run(moat()
        .arg("forward")
        .arg("--config")
        .arg(&config)
        .arg("--weights")
        .arg(out.join("weights.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&logits));
    assert!(ok, "{err}");
    let bytes = std::fs::read(&logits).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("logits").unwrap().shape(), &[2, 4]);
}

#[test]
fn classify_and_evaluate_with_imagenet_labels_and_a_bad_image_named() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    let device = burn::tensor::Device::flex();
    device.seed(3);
    let model = moat::MoatVariant::TinyMoat0.config().init(&device);
    moat::save_tf_weights(&model, &weights).unwrap();
    let image = dir.path().join("cat.png");
    image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    })
    .save(&image)
    .unwrap();
    let (ok, out, err) = run(moat()
        .args(["classify", "--variant", "tiny-moat-0", "--weights"])
        .arg(&weights)
        .arg(&image));
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].ends_with("cat.png"), "{out}");
    let names = moat::imagenet_class_names();
    let mut total = 0.0;
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let percent: f64 = fields[0].trim_end_matches('%').parse().unwrap();
        let class: usize = fields[1].parse().unwrap();
        assert!(line.trim_end().ends_with(names[class]), "{line}");
        total += percent;
    }
    assert!(total > 0.0 && total <= 100.01, "{out}");

    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (ok, _, err) = run(moat()
        .args(["classify", "--variant", "tiny-moat-0", "--weights"])
        .arg(&weights)
        .arg(&broken));
    assert!(!ok && err.contains("broken.png"), "{err}");

    // `evaluate` on an ImageNet-layout folder: 1000 class folders, images in three.
    let val = dir.path().join("val");
    for c in 0..1000 {
        std::fs::create_dir_all(val.join(format!("n{c:08}"))).unwrap();
    }
    for c in [0, 500, 999] {
        std::fs::copy(&image, val.join(format!("n{c:08}/img.png"))).unwrap();
    }
    let (ok, out, err) = run(moat()
        .args([
            "evaluate",
            "--variant",
            "tiny-moat-0",
            "--json",
            "--weights",
        ])
        .arg(&weights)
        .arg("--data")
        .arg(&val));
    assert!(ok, "{err}");
    let acc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(acc["images"], 3, "{out}");
    let (top1, top5) = (acc["top1"].as_f64().unwrap(), acc["top5"].as_f64().unwrap());
    assert!(
        (0.0..=1.0).contains(&top1) && top1 <= top5 && top5 <= 1.0,
        "{out}"
    );
    // The same image in three classes: the arg-max can be right for at most one.
    assert!(top1 <= 1.0 / 3.0 + 1e-9, "{out}");

    std::fs::remove_dir(val.join("n00000001")).unwrap();
    let (ok, _, err) = run(moat()
        .args(["evaluate", "--variant", "tiny-moat-0", "--weights"])
        .arg(&weights)
        .arg("--data")
        .arg(&val));
    assert!(!ok && err.contains("999 class folders"), "{err}");
}
