//! The `mobiletl` binary end to end on the committed fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn mobiletl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mobiletl"))
        .args(args)
        .output()
        .expect("run mobiletl")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mobiletl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn read_f32(path: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn forward_writes_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    for (arch, name) in [
        ("mobilenet_v3_small", "mobilenet_v3_small_tv"),
        ("mobilenetv3_large_100", "mobilenet_v3_large_timm"),
    ] {
        let weights = fixture(&format!("{name}.weights.safetensors"));
        let io = fixture(&format!("{name}.io.safetensors"));
        stdout(&mobiletl(&[
            "forward",
            "--arch",
            arch,
            "--width",
            "0.5",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            io.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]));
        let ours = read_f32(&out, "logits");
        let reference = read_f32(&io, "logits");
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        assert!(err <= 1e-4, "{name}: rel err {err:e}");
    }
}

#[test]
fn params_and_flops_print_totals() {
    let text = stdout(&mobiletl(&["params", "--arch", "mobilenet_v3_large"]));
    assert!(text.contains("total params: 5483032"), "{text}");
    let text = stdout(&mobiletl(&[
        "params",
        "--arch",
        "mobilenetv2_100",
        "--per-layer",
    ]));
    assert!(text.contains("total params: 3504872"), "{text}");
    assert!(text.contains("blocks.16.project_conv"), "{text}");
    let text = stdout(&mobiletl(&[
        "flops",
        "--arch",
        "mobilenet_v3_small",
        "--resolution",
        "224",
    ]));
    assert!(text.contains("total MACs:"), "{text}");
    assert!(text.contains("total params: 2542856"), "{text}");
}

#[test]
fn classify_prints_top5_with_class_names() {
    let weights = fixture("mobilenet_v3_small_tv.weights.safetensors");
    let image = fixture("image.png");
    let text = stdout(&mobiletl(&[
        "classify",
        "--arch",
        "mobilenet_v3_small",
        "--width",
        "0.5",
        "--weights",
        weights.to_str().unwrap(),
        "--resize",
        "40",
        "--crop",
        "32",
        image.to_str().unwrap(),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    // A 10-class checkpoint: every predicted class is one of the first ten names.
    let first_ten = [
        "tench",
        "goldfish",
        "great white shark",
        "tiger shark",
        "hammerhead",
        "electric ray",
        "stingray",
        "cock",
        "hen",
        "ostrich",
    ];
    for line in &lines[1..] {
        assert!(first_ten.iter().any(|n| line.ends_with(n)), "{line}");
    }
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let out = mobiletl(&["params", "--arch", "resnet50"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown --arch \"resnet50\""));

    let weights = fixture("mobilenet_v3_small_tv.weights.safetensors");
    // The weights file has no `input` tensor.
    let out = mobiletl(&[
        "forward",
        "--arch",
        "mobilenet_v3_small",
        "--width",
        "0.5",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        weights.to_str().unwrap(),
        "--output",
        "/tmp/never-written.safetensors",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no tensor named \"input\""), "{err}");

    // Width 1.0 model, width 0.5 weights: shape mismatches named.
    let out = mobiletl(&[
        "classify",
        "--arch",
        "mobilenet_v3_small",
        "--weights",
        weights.to_str().unwrap(),
        fixture("image.png").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shape mismatch for features.0.0.weight"),
        "{err}"
    );
}

#[test]
fn memory_and_training_flops_print_the_analytic_counts() {
    let out = mobiletl(&[
        "memory",
        "--arch",
        "mobilenet_v2",
        "--method",
        "mobiletl",
        "--blocks",
        "5",
        "--batch",
        "8",
        "--resolution",
        "224",
        "--num-classes",
        "10",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tl: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let out = mobiletl(&[
        "memory",
        "--arch",
        "mobilenet_v2",
        "--method",
        "vanilla",
        "--blocks",
        "5",
        "--num-classes",
        "10",
        "--json",
    ]);
    let vanilla: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (t, v) = (
        tl["activation_mb"].as_f64().unwrap(),
        vanilla["activation_mb"].as_f64().unwrap(),
    );
    assert!(
        t > 1.0 && t < 0.7 * v,
        "MobileTL keeps {t} MB, vanilla {v} MB"
    );
    assert_eq!(tl["blocks"], 5);
    assert!(tl["measured_held_mb"].is_null());

    let out = mobiletl(&[
        "memory",
        "--arch",
        "mobilenet_v3_small",
        "--method",
        "mobiletl",
        "--blocks",
        "2",
        "--batch",
        "2",
        "--resolution",
        "64",
        "--measure",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("measured, held between forward and backward"),
        "{text}"
    );

    let out = mobiletl(&[
        "flops",
        "--arch",
        "mobilenet_v3_large",
        "--method",
        "full",
        "--json",
    ]);
    let full: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (f, b) = (
        full["forward_mflops"].as_f64().unwrap(),
        full["backward_mflops"].as_f64().unwrap(),
    );
    assert!((f - 2.0 * 217.0).abs() < 20.0, "forward {f} MFLOPs");
    assert!(b > 1.9 * f && b < 2.0 * f, "backward {b} vs forward {f}");

    let out = mobiletl(&[
        "memory",
        "--arch",
        "mobilenet_v2",
        "--method",
        "vanilla",
        "--blocks",
        "18",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--blocks 18") && err.contains("17"), "{err}");
}

#[test]
fn finetune_runs_end_to_end_and_refuses_to_overwrite_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "finetune",
        "--arch",
        "mobilenetv3_small_100",
        "--dataset",
        "synthetic",
        "--method",
        "mobiletl",
        "--blocks",
        "2",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--resolution",
        "32",
        "--train-limit",
        "32",
        "--test-limit",
        "16",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    let out = mobiletl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("test accuracy"), "{}", stdout(&out));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let acc = state["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(state["history"].as_array().unwrap().len(), 1);
    assert!(run.join("epoch-0001.model.bpk").is_file());

    let out = mobiletl(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = mobiletl(&resume);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = mobiletl(&[
        "finetune",
        "--arch",
        "mobilenet_v2",
        "--dataset",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--run-dir",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data_batch_1.bin"), "{err}");
}

/// Writes a CIFAR-10-format folder with `per_file` records per file: class `i % 10`, each
/// image a flat colour that depends on its class.
fn write_cifar10(dir: &Path, per_file: usize) {
    let folder = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    let files: Vec<String> = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()])
        .collect();
    for file in files {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            for channel in 0..3u8 {
                bytes.extend(std::iter::repeat_n(label * 25 + channel * 7, 1024));
            }
        }
        std::fs::write(folder.join(file), bytes).unwrap();
    }
}

#[test]
fn finetune_reads_cifar10_and_writes_the_record() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 4);
    let run = dir.path().join("run");
    let out = mobiletl(&[
        "finetune",
        "--arch",
        "mobilenet_v3_small",
        "--dataset",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--method",
        "vanilla",
        "--blocks",
        "1",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--resolution",
        "32",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["dataset"], "cifar10");
    assert_eq!(state["train_images"], 20);
    assert_eq!(state["model"]["num_classes"], 10);
    assert_eq!(state["steps_per_epoch"], 5);
    assert!(state["test_accuracy"].as_f64().is_some());

    // A truncated file is named.
    let file = dir.path().join("cifar-10-batches-bin/data_batch_3.bin");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let out = mobiletl(&[
        "finetune",
        "--arch",
        "mobilenet_v3_small",
        "--dataset",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--run-dir",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data_batch_3.bin"), "{err}");
}
