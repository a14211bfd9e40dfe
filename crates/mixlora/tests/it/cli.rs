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
    assert_generates(&[], &prompt.join(","), &greedy);

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

/// `mixlora forward --adapter <fixture adapter>` on the adapter's own inputs: the
/// largest error of the unpadded row's logits against the reference's, relative to
/// the largest logit.
fn forward_error_with_adapter(adapter: &str) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let adapter = fixture(adapter);
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
    let reference = read(&adapter.join("expected.safetensors"), "logits");
    // Row 0 has no padding: compare it whole.
    let row = ours.len() / 2;
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = ours[..row]
        .iter()
        .zip(&reference[..row])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

#[test]
fn forward_applies_a_peft_adapter() {
    let err = forward_error_with_adapter("tiny-llama-lora");
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn forward_and_generate_take_mixture_adapters() {
    // The official MixLoRA and MixDoRA folders (peft_type "MIXLORA"), against the
    // official package's logits.
    for adapter in ["tiny-llama-mixlora", "tiny-llama-mixdora"] {
        let err = forward_error_with_adapter(adapter);
        assert!(err <= 1e-4, "{adapter}: {err}");
    }
    // Generation with the mixture equals the library's greedy decoding with it.
    let device = burn::tensor::Device::flex();
    let model = fixture("tiny-llama");
    let adapter = fixture("tiny-llama-mixlora");
    let base = mixlora::load_decoder(&model, &device).unwrap();
    let (decoder, spec) = mixlora::finetune::AdapterSpec::load(base, &adapter, &device).unwrap();
    assert!(matches!(spec, mixlora::finetune::AdapterSpec::Mixture(_)));
    let prompt = [5i64, 17, 33, 42, 8];
    let want = mixlora::greedy(&decoder, &prompt, 4, &[], &mut |_| {});
    let prompt_arg: Vec<String> = prompt.iter().map(i64::to_string).collect();
    assert_generates(
        &["--adapter", adapter.to_str().unwrap()],
        &prompt_arg.join(","),
        &want,
    );
}

/// `mixlora generate --model tiny-llama <extra> --prompt-ids <prompt>` streams a prefix
/// of `want` (generation stops early at the config's end-of-sequence id).
fn assert_generates(extra: &[&str], prompt: &str, want: &[i64]) {
    let model = fixture("tiny-llama");
    let max_new = want.len().to_string();
    let mut args = vec!["generate", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--prompt-ids", prompt, "--max-new-tokens", &max_new]);
    let out = mixlora(&args);
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
    assert!(
        !streamed.is_empty() && want.starts_with(&streamed),
        "{streamed:?} vs {want:?}"
    );
}
