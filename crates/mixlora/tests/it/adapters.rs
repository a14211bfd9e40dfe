//! PEFT LoRA and DoRA adapters: logits, the causal-LM loss and every adapter gradient
//! equal PEFT's (fixtures from tools/reference/mixlora/make_adapter_fixtures.py), the
//! base gets no gradients, and a saved adapter has PEFT's keys and loads back exactly.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn ints(&self, key: &str) -> Vec<i64> {
        let f = self.file();
        f.tensor(key)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn floats(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let f = self.file();
        let t = f.tensor(key).unwrap();
        (
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            t.shape().to_vec(),
        )
    }
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The adapter folder `adapter` (`kind` "lora" or "dora") on the model folder
/// `base_dir` against PEFT's logits, loss and gradients, and its save round trip.
fn check(base_dir: &str, adapter: &str, kind: &str) {
    let device = Device::flex().autodiff();
    let base = mixlora::load_decoder(&fixture(base_dir), &device).unwrap();
    let dir = fixture(adapter);
    let (model, config) = mixlora::load_adapter(base, &dir, &device).unwrap();
    assert_eq!(config.use_dora, kind == "dora");
    let expected = Expected {
        bytes: std::fs::read(dir.join("expected.safetensors")).unwrap(),
    };
    let (ids, mask, labels) = (
        expected.ints("input_ids"),
        expected.ints("attention_mask"),
        expected.ints("labels"),
    );
    let shape = [2, ids.len() / 2];
    let logits = model.forward(
        Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device),
        Some(Tensor::<2, Int>::from_data(
            TensorData::new(mask.clone(), shape),
            &device,
        )),
    );
    let got: Vec<f32> = logits.clone().inner().into_data().try_to_vec().unwrap();
    let (want, _) = expected.floats("logits");
    let v = got.len() / mask.len();
    let keep = |x: &[f32]| -> Vec<f32> {
        mask.iter()
            .enumerate()
            .filter(|(_, m)| **m == 1)
            .flat_map(|(p, _)| x[p * v..(p + 1) * v].to_vec())
            .collect()
    };
    assert!(
        max_rel(&keep(&got), &keep(&want)) <= 1e-4,
        "{kind}: logits {}",
        max_rel(&keep(&got), &keep(&want))
    );

    let loss = mixlora::causal_lm_loss(logits, &labels);
    let loss_value = loss.clone().inner().into_scalar::<f32>();
    let (want_loss, _) = expected.floats("loss");
    assert!(
        (loss_value - want_loss[0]).abs() <= 1e-4 * want_loss[0].abs(),
        "{kind}: loss {loss_value} vs {}",
        want_loss[0]
    );

    let grads = loss.backward();
    let mut checked = 0;
    for (i, layer) in model.layers.iter().enumerate() {
        let projections = [
            ("self_attn.q_proj", &layer.self_attn.q_proj),
            ("self_attn.k_proj", &layer.self_attn.k_proj),
            ("self_attn.v_proj", &layer.self_attn.v_proj),
            ("self_attn.o_proj", &layer.self_attn.o_proj),
            ("mlp.gate_proj", &layer.mlp.gate_proj),
            ("mlp.up_proj", &layer.mlp.up_proj),
            ("mlp.down_proj", &layer.mlp.down_proj),
        ];
        for (name, p) in projections {
            assert!(
                p.base.weight.val().grad(&grads).is_none(),
                "{name}: the base weight must get no gradient"
            );
            let adapter = p.adapter.as_ref().unwrap();
            let key = |part: &str| format!("grad.base_model.model.model.layers.{i}.{name}.{part}");
            let pairs: Vec<(Tensor<2>, String)> = vec![
                (
                    adapter.lora_a.val().grad(&grads).unwrap().transpose(),
                    key("lora_A.weight"),
                ),
                (
                    adapter.lora_b.val().grad(&grads).unwrap().transpose(),
                    key("lora_B.weight"),
                ),
            ];
            for (g, k) in pairs {
                let g: Vec<f32> = g.into_data().try_to_vec().unwrap();
                let (want, _) = expected.floats(&k);
                assert!(max_rel(&g, &want) <= 1e-4, "{k}: {}", max_rel(&g, &want));
                checked += 1;
            }
            if let Some(m) = &adapter.magnitude {
                let g: Vec<f32> = m
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                let (want, _) = expected.floats(&key("lora_magnitude_vector"));
                assert!(
                    max_rel(&g, &want) <= 1e-4,
                    "{kind} magnitude {name}: {}",
                    max_rel(&g, &want)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, if kind == "dora" { 42 } else { 28 });
    assert!(model.embed_tokens.weight.val().grad(&grads).is_none());

    // Saved in PEFT's layout: same keys and shapes as PEFT's file, and it loads back.
    let out = tempfile::tempdir().unwrap();
    mixlora::save_adapter(&model, &config, out.path()).unwrap();
    let ours = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let theirs = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let (ours, theirs) = (
        SafeTensors::deserialize(&ours).unwrap(),
        SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut a: Vec<(String, Vec<usize>)> = ours
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect();
    let mut b: Vec<(String, Vec<usize>)> = theirs
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (k, _) in &b {
        assert_eq!(
            ours.tensor(k).unwrap().data(),
            theirs.tensor(k).unwrap().data(),
            "{k}"
        );
    }
    let base = mixlora::load_decoder(&fixture(base_dir), &device).unwrap();
    mixlora::load_adapter(base, out.path(), &device).unwrap();
}

#[test]
fn lora_matches_peft_logits_loss_and_gradients() {
    check("tiny-llama", "tiny-llama-lora", "lora");
}

#[test]
fn dora_with_rslora_matches_peft_logits_loss_and_gradients() {
    check("tiny-llama", "tiny-llama-dora", "dora");
}

/// The same adapters written by peft 0.21.2 on a folder written by transformers 5
/// (fixtures from tools/reference/mixlora/make_current_fixtures.py).
#[test]
fn adapters_written_by_current_peft_match_it() {
    check("current/tiny-llama-v5", "current/lora-v5", "lora");
    check("current/tiny-llama-v5", "current/dora-v5", "dora");
}

#[test]
fn fresh_adapters_leave_the_output_unchanged_and_bad_folders_are_named() {
    let device = Device::flex();
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![4i64, 9, 17, 3], [1, 4]), &device);
    let before: Vec<f32> = base
        .forward(ids.clone(), None)
        .into_data()
        .try_to_vec()
        .unwrap();
    for dora in [false, true] {
        let config = mixlora::AdapterConfig::new(4, 8.0, &["q_proj", "v_proj", "down_proj"], dora);
        let model = mixlora::attach(base.clone(), &config, &device);
        let after: Vec<f32> = model
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(
            max_rel(&after, &before) < 1e-5,
            "B = 0 (and DoRA m = |W|) keep the output"
        );
        assert!(model.layers[0].self_attn.k_proj.adapter.is_none());
    }
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama-lora");
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = mixlora::load_adapter(base.clone(), dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    let rank = config["r"].clone();
    config["r"] = 8.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let err = mixlora::load_adapter(base.clone(), dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        "{err}"
    );
    // A file with adapters of modules the config does not target is refused, not
    // half-loaded.
    config["r"] = rank;
    config["target_modules"] = serde_json::json!(["q_proj"]);
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let err = mixlora::load_adapter(base, dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("of which") && err.contains("belong to the configured targets"),
        "{err}"
    );
}

#[test]
fn merged_adapters_compute_what_the_adapters_do_and_export_as_a_model_folder() {
    let device = Device::flex();
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![4i64, 9, 17, 3, 60], [1, 5]), &device);
    for kind in ["lora", "dora"] {
        let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
        let (adapted, _) =
            mixlora::load_adapter(base, &fixture(&format!("tiny-llama-{kind}")), &device).unwrap();
        let want: Vec<f32> = adapted
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec()
            .unwrap();
        let merged = mixlora::merge(adapted);
        assert!(merged.layers[1].mlp.up_proj.adapter.is_none());
        let got: Vec<f32> = merged
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(
            max_rel(&got, &want) <= 1e-4,
            "{kind}: merged {}",
            max_rel(&got, &want)
        );
        let out = tempfile::tempdir().unwrap();
        let config =
            mixlora::DecoderConfig::from_file(&fixture("tiny-llama").join("config.json")).unwrap();
        mixlora::save_decoder(&merged, &config, out.path()).unwrap();
        let reloaded = mixlora::load_decoder(out.path(), &device).unwrap();
        let again: Vec<f32> = reloaded
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(again, got, "{kind}: exported folder reloads exactly");
    }
}

#[test]
fn peft_options_that_change_the_math_are_refused_by_name() {
    let device = Device::flex();
    let src = fixture("current/lora-v5");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    for (field, value) in [
        ("fan_in_fan_out", serde_json::json!(true)),
        ("layers_to_transform", serde_json::json!([0])),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("lora_bias", serde_json::json!(true)),
        ("layer_replication", serde_json::json!([[0, 2], [1, 2]])),
        ("init_lora_weights", serde_json::json!("pissa")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut changed = config.clone();
        changed[field] = value;
        std::fs::write(dir.path().join("adapter_config.json"), changed.to_string()).unwrap();
        let base = mixlora::load_decoder(&fixture("current/tiny-llama-v5"), &device).unwrap();
        let err = mixlora::load_adapter(base, dir.path(), &device)
            .err()
            .unwrap_or_else(|| panic!("{field} must be refused"))
            .to_string();
        assert!(
            err.contains(field) && err.contains("adapter_config.json"),
            "{err}"
        );
    }
}
