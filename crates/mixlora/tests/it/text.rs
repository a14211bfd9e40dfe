//! Text in and out: the tokenizer.json / tokenizer_config.json of a model folder encode,
//! render the chat template and decode as transformers does (fixture from
//! tools/reference/mixlora/make_tokenizer_fixture.py), the KV cache changes nothing, and
//! `mixlora generate --prompt` streams the text transformers' greedy decoding gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixture("tiny-llama")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> Value {
    expected_in(&model_dir())
}

fn expected_in(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected_text.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn encodings_and_chat_template_match_transformers() {
    check_text(&model_dir());
}

/// transformers 5 writes the chat template to `chat_template.jinja` and leaves it out of
/// tokenizer_config.json.
#[test]
fn a_chat_template_in_chat_template_jinja_is_read() {
    let dir = fixture("current/tiny-llama-v5");
    assert!(dir.join("chat_template.jinja").is_file());
    check_text(&dir);
    // `chat_template.json` (`{"chat_template": ...}`) is read too; a folder with none
    // says where it looked.
    let tmp = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.join(file), tmp.path().join(file)).unwrap();
    }
    let no_template = mixlora::TextTokenizer::from_dir(tmp.path()).unwrap();
    let err = no_template.chat_prompt("hi").unwrap_err().to_string();
    assert!(err.contains("chat_template.jinja"), "{err}");
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(
        tmp.path().join("chat_template.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let tok = mixlora::TextTokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(
        tok.chat_prompt("  hello world  ").unwrap(),
        expected_in(&dir)["chat_text"].as_str().unwrap()
    );
}

fn check_text(dir: &Path) {
    let tok = mixlora::TextTokenizer::from_dir(dir).unwrap();
    let want = expected_in(dir);
    let prompts = want["prompts"].as_array().unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            ids(&want["with_special"][i]),
            "{prompt:?}"
        );
        assert_eq!(
            tok.encode(prompt, false).unwrap(),
            ids(&want["without_special"][i]),
            "{prompt:?}"
        );
    }
    assert!(tok.has_chat_template());
    let chat = tok.chat_prompt("  hello world  ").unwrap();
    assert_eq!(chat, want["chat_text"].as_str().unwrap());
    assert_eq!(tok.encode(&chat, false).unwrap(), ids(&want["chat_ids"]));
    // Streaming releases exactly the decoded text.
    let mut stream = mixlora::TextStream::new(&tok);
    let mut text = String::new();
    for &t in &ids(&want["greedy_ids"]) {
        text.extend(stream.push(t));
    }
    text.extend(stream.finish());
    assert_eq!(text, want["greedy_text"].as_str().unwrap());
}

#[test]
fn cached_decoding_equals_full_recomputation_and_transformers_greedy() {
    let device = Device::flex();
    let model = mixlora::load_decoder(&model_dir(), &device).unwrap();
    let want = expected();
    let prompt = ids(&want["with_special"][0]);
    let greedy = ids(&want["greedy_ids"]);
    let got = mixlora::greedy(&model, &prompt, greedy.len(), &[], &mut |_| {});
    assert_eq!(got, greedy);

    // Logits of prompt + continuation: one full pass vs. the prompt then one token at a
    // time against the cache.
    let all: Vec<i64> = prompt.iter().chain(&greedy).copied().collect();
    let n = all.len();
    let full: Vec<f32> = model
        .forward(
            Tensor::<2, Int>::from_data(TensorData::new(all.clone(), [1, n]), &device),
            None,
        )
        .into_data()
        .try_into_vec()
        .unwrap();
    let mut cache = mixlora::KvCache::new();
    let mut cached: Vec<f32> = Vec::new();
    let head = prompt.len();
    let first = model.forward_cached(
        Tensor::<2, Int>::from_data(TensorData::new(all[..head].to_vec(), [1, head]), &device),
        &mut cache,
    );
    cached.extend(first.into_data().try_into_vec::<f32>().unwrap());
    for &t in &all[head..] {
        let step = model.forward_cached(
            Tensor::<2, Int>::from_data(TensorData::new(vec![t], [1, 1]), &device),
            &mut cache,
        );
        cached.extend(step.into_data().try_into_vec::<f32>().unwrap());
    }
    assert_eq!(cache.len(), n);
    let scale = full.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = full
        .iter()
        .zip(&cached)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst / scale <= 1e-5, "cached vs full: {}", worst / scale);
}

fn mixlora_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mixlora"))
        .args(args)
        .output()
        .unwrap()
}

/// `mixlora generate --prompt "hello world"` on `dir` prints transformers' 8-token greedy
/// continuation (`expected_text.json`).
fn assert_generates_transformers_text(dir: &Path) {
    let want = expected_in(dir);
    let out = mixlora_cli(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", want["greedy_text"].as_str().unwrap())
    );
}

#[test]
fn generate_streams_text_and_samples_reproducibly() {
    let dir = model_dir();
    assert_generates_transformers_text(&dir);
    let sample = |seed: &str| {
        let out = mixlora_cli(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "the answer is",
            "--chat",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.5",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(sample("7"), sample("7"), "same seed, same text");
    let bad = mixlora_cli(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--top-p",
        "0",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--top-p"));
    // A folder without tokenizer.json is named.
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), empty.path().join("config.json")).unwrap();
    let out = mixlora_cli(&[
        "generate",
        "--model",
        empty.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"));
}

#[test]
fn generate_works_on_a_folder_written_by_transformers_5() {
    let dir = fixture("current/tiny-llama-v5");
    assert_generates_transformers_text(&dir);
    // The chat template lives in chat_template.jinja.
    let out = mixlora_cli(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hello world",
        "--chat",
        "--max-new-tokens",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
