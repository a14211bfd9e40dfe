//! The `mixlora` binary end to end on the tiny fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn mixlora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mixlora"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn forward_and_generate_reproduce_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let out_path = dir.path().join("logits.safetensors");
    let out = mixlora(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input-ids",
        model.join("expected.safetensors").to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("logits").unwrap().shape(), &[2, 9, 96]);

    // The fixture's greedy continuation of its first row.
    let expected = std::fs::read(model.join("expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let ints = |key: &str| -> Vec<i64> {
        expected
            .tensor(key)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let prompt: Vec<String> = ints("input_ids")[..9]
        .iter()
        .map(|t| t.to_string())
        .collect();
    let greedy = ints("greedy");
    let out = mixlora(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        &greedy.len().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streamed: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // Generation stops early at the config's end-of-sequence id.
    assert!(
        !streamed.is_empty() && greedy.starts_with(&streamed),
        "{streamed:?} vs {greedy:?}"
    );

    let out = mixlora(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "5,500",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("500"));
    let out = mixlora(&[
        "forward",
        "--model",
        dir.path().to_str().unwrap(),
        "--input-ids",
        "x",
        "--output",
        "y",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn forward_applies_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let adapter = fixture("tiny-llama-lora");
    let out_path = dir.path().join("logits.safetensors");
    let out = mixlora(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--input-ids",
        adapter.join("expected.safetensors").to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |path: &Path, key: &str| -> Vec<f32> {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensor(key)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let ours = read(&out_path, "logits");
    let peft = read(&adapter.join("expected.safetensors"), "logits");
    // Row 0 has no padding: compare it whole.
    let row = ours.len() / 2;
    let scale = peft.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = ours[..row]
        .iter()
        .zip(&peft[..row])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst / scale <= 1e-4, "{}", worst / scale);
}
