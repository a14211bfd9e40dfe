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
