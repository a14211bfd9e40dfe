//! MixLoRA against the official code (fixtures from
//! tools/reference/mixlora/make_mixlora_fixtures.py: the `mixlora` 0.2.3 forward with
//! MoE-PEFT 2.0.2's load-balance loss, and MoE-PEFT's own routing variants): router
//! logits, probabilities, expert choices and weights, logits, LM / auxiliary / total
//! loss and the gradient of every adapter tensor; the adapter written back has the
//! official keys; the high-throughput path equals the plain one.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mixlora::moe::{Expert, MixLora, Routing};
use mixlora::moe_adapter::{AdapterTensor, adapter_tensors};
use mixlora::{AuxLossConfig, MixLoraConfig};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected(Vec<u8>);

impl Expected {
    fn open(path: &Path) -> Self {
        Expected(std::fs::read(path).unwrap())
    }
    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.0).unwrap()
    }
    fn has(&self, key: &str) -> bool {
        self.file().tensor(key).is_ok()
    }
    fn floats(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let f = self.file();
        let t = f.tensor(key).unwrap_or_else(|_| panic!("no {key}"));
        (
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            t.shape().to_vec(),
        )
    }
    fn ints(&self, key: &str) -> Vec<i64> {
        let f = self.file();
        let t = f.tensor(key).unwrap_or_else(|_| panic!("no {key}"));
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn scalar(&self, key: &str) -> f32 {
        self.floats(key).0[0]
    }
    fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let (v, s) = self.floats(key);
        Tensor::from_data(TensorData::new(v, s), device)
    }
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let e = max_rel(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// The official forward, losses and gradients of one adapter folder.
fn check(name: &str) {
    let device = Device::flex().autodiff();
    let dir = fixture(name);
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    let (model, config) = mixlora::load_mixlora(base, &dir, &device).unwrap();
    // The official files say lora_dropout 0.05 (their loaders refuse 0); the reference
    // values were computed without dropout.
    assert_eq!(config.lora_dropout, 0.05);
    let model = mixlora::set_adapter_dropout(model, 0.0);
    let expected = Expected::open(&dir.join("expected.safetensors"));
    let ids = expected.ints("input_ids");
    let mask = expected.ints("attention_mask");
    let labels = expected.ints("labels");
    let shape = [2, ids.len() / 2];
    let (logits, records) = model.forward_routed(
        Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device),
        Some(Tensor::<2, Int>::from_data(
            TensorData::new(mask.clone(), shape),
            &device,
        )),
    );
    assert_eq!(records.len(), 2);
    let real: Vec<usize> = (0..mask.len()).filter(|&t| mask[t] == 1).collect();
    let rows = |v: &[f32], width: usize| -> Vec<f32> {
        real.iter()
            .flat_map(|&t| v[t * width..(t + 1) * width].to_vec())
            .collect()
    };
    for (i, record) in records.iter().enumerate() {
        let (want, shape) = expected.floats(&format!("layers.{i}.router.logits"));
        let n = shape[1];
        close(
            &format!("{name} layer {i} router logits"),
            &rows(&values(record.logits.clone().inner()), n),
            &rows(&want, n),
            1e-4,
        );
        let topk = expected.ints(&format!("layers.{i}.router.topk_indices"));
        let k = topk.len() / mask.len();
        for &t in &real {
            let want: Vec<usize> = topk[t * k..(t + 1) * k]
                .iter()
                .map(|&e| e as usize)
                .collect();
            assert_eq!(
                record.chosen[t], want,
                "{name} layer {i} token {t}: experts"
            );
        }
    }
    let v = logits.dims()[2];
    let (want, _) = expected.floats("logits");
    close(
        &format!("{name} logits"),
        &rows(&values(logits.clone().inner()), v),
        &rows(&want, v),
        1e-4,
    );

    let lm = mixlora::causal_lm_loss(logits, &labels);
    let aux = mixlora::aux_loss(&records, Some(&mask), AuxLossConfig::default()).unwrap();
    let total = lm.clone() + aux.clone();
    for (what, got, key) in [
        ("LM", &lm, "loss.lm"),
        ("aux", &aux, "loss.aux"),
        ("total", &total, "loss.total"),
    ] {
        let got = got.clone().inner().into_scalar::<f32>();
        let want = expected.scalar(key);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "{name} {what} loss {got} vs {want}"
        );
    }
    let grads = total.backward();
    let mut checked = 0;
    for (key, tensor) in adapter_tensors(&model, &config) {
        let grad_key = format!("grad.{key}");
        if !expected.has(&grad_key) {
            assert!(
                key.ends_with("lora_magnitude_vector") && !name.contains("dora"),
                "no gradient recorded for {key}"
            );
            continue;
        }
        let got = match tensor {
            AdapterTensor::Matrix(t) => values(t.grad(&grads).unwrap().transpose()),
            AdapterTensor::Vector(t) => values(t.grad(&grads).unwrap()),
        };
        let (want, _) = expected.floats(&grad_key);
        close(&format!("{name} {grad_key}"), &got, &want, 1e-4);
        checked += 1;
    }
    let per_layer = 2 * 4 + 1 + 4 * 3 * 2 + if config.use_dora { 4 + 4 * 3 } else { 0 };
    assert_eq!(
        checked,
        2 * per_layer,
        "{name}: every adapter gradient compared"
    );
    assert!(
        model.layers[0]
            .mlp
            .gate_proj
            .base
            .weight
            .val()
            .grad(&grads)
            .is_none(),
        "frozen base"
    );

    // Saved in the official layout: the same keys and shapes as the official file.
    let out = tempfile::tempdir().unwrap();
    mixlora::save_mixlora(&model, &config, out.path()).unwrap();
    let ours = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let theirs = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let keys = |b: &[u8]| {
        let mut k: Vec<(String, Vec<usize>)> = SafeTensors::deserialize(b)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.shape().to_vec()))
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&ours),
        keys(&theirs),
        "{name}: official keys and shapes"
    );
    let config_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert!(
        config_json["r"].is_u64() && config_json["lora_alpha"].is_u64(),
        "integers, as the official check() wants"
    );
    assert_eq!(config_json["peft_type"], "MIXLORA");
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    mixlora::load_mixlora(base, out.path(), &device).unwrap();
}

#[test]
fn mixlora_matches_the_official_forward_losses_and_gradients() {
    check("tiny-llama-mixlora");
}

#[test]
fn mixlora_with_rslora_matches_the_official_code() {
    check("tiny-llama-mixlora-rslora");
}

#[test]
fn mixdora_matches_the_official_code() {
    check("tiny-llama-mixdora");
}

/// One FFN layer (tiny-llama layer 0) with the fixture's shared experts.
fn variant_mlp(
    routing: Routing,
    router: Tensor<2>,
    expected: &Expected,
    device: &Device,
    fused: bool,
) -> mixlora::model::Mlp {
    let base = mixlora::load_decoder(&fixture("tiny-llama"), device).unwrap();
    let mut mlp = base.layers.into_iter().next().unwrap().mlp;
    let adapter = |e: usize, proj: &str| {
        let a: Tensor<2> = expected.tensor(&format!("experts.{e}.{proj}.lora_A.weight"), device);
        let b: Tensor<2> = expected.tensor(&format!("experts.{e}.{proj}.lora_B.weight"), device);
        mixlora::model::Adapter {
            lora_a: Param::from_tensor(a.transpose()),
            lora_b: Param::from_tensor(b.transpose()),
            magnitude: None,
            scale: 2.0,
            dropout: burn::nn::DropoutConfig::new(0.0).init(),
        }
    };
    let experts = (0..4)
        .map(|e| Expert {
            gate: adapter(e, "gate_proj"),
            up: adapter(e, "up_proj"),
            down: adapter(e, "down_proj"),
        })
        .collect();
    mlp.moe = Some(MixLora {
        router: Param::from_tensor(router.transpose()),
        experts,
        routing,
        jitter: 0.0,
        fused,
    });
    mlp
}

#[test]
fn routing_variants_match_moe_peft() {
    let device = Device::flex().autodiff();
    let dir = fixture("tiny-llama-moe-variants");
    let expected = Expected::open(&dir.join("expected.safetensors"));
    let mask = expected.ints("attention_mask");
    let cotangent = expected.tensor::<3>("cotangent", &device);
    for (name, routing) in [
        ("switch", Routing::Switch { capacity: 3 }),
        (
            "dynamic",
            Routing::Dynamic {
                top_p: 0.8,
                temperature: 0.0,
            },
        ),
    ] {
        let router = expected.tensor::<2>(
            &format!("{name}.mixlora.layers.0.mlp.moe_gate.weight"),
            &device,
        );
        let mlp = variant_mlp(routing, router, &expected, &device, true);
        let input = expected.tensor::<3>("input", &device).require_grad();
        let (out, record) = mlp.forward(input.clone());
        let record = record.unwrap();
        let (want, _) = expected.floats(&format!("{name}.output"));
        close(
            &format!("{name} output"),
            &values(out.clone().inner()),
            &want,
            1e-4,
        );
        if name == "switch" {
            let kept = expected.ints("switch.kept");
            let index = expected.ints("switch.expert_index");
            for (t, &expert) in index.iter().enumerate().take(kept.len()) {
                assert_eq!(record.chosen[t], vec![expert as usize], "switch token {t}");
            }
        }
        let aux = mixlora::aux_loss(
            std::slice::from_ref(&record),
            Some(&mask),
            AuxLossConfig::default(),
        )
        .unwrap();
        let want = expected.scalar(&format!("{name}.aux_loss"));
        let got = aux.clone().inner().into_scalar::<f32>();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{name} aux loss {got} vs {want}"
        );
        let loss = (out * cotangent.clone()).sum() + aux;
        let grads = loss.backward();
        let moe = mlp.moe.as_ref().unwrap();
        let (want, _) =
            expected.floats(&format!("{name}.grad.mixlora.layers.0.mlp.moe_gate.weight"));
        close(
            &format!("{name} router grad"),
            &values(moe.router.val().grad(&grads).unwrap().transpose()),
            &want,
            1e-4,
        );
        for (e, expert) in moe.experts.iter().enumerate() {
            for (proj, adapter) in [
                ("gate_proj", &expert.gate),
                ("up_proj", &expert.up),
                ("down_proj", &expert.down),
            ] {
                for (part, t) in [("lora_A", &adapter.lora_a), ("lora_B", &adapter.lora_b)] {
                    let key = format!("{name}.grad.experts.{e}.{proj}.{part}.weight");
                    let got = t.val().grad(&grads).map(|g| values(g.transpose()));
                    let (want, _) = expected.floats(&key);
                    // An expert no token reached gets no gradient (zero in PyTorch).
                    let got = got.unwrap_or_else(|| vec![0.0; want.len()]);
                    close(&key, &got, &want, 1e-4);
                }
            }
        }
        let (want, _) = expected.floats(&format!("{name}.grad.input"));
        close(
            &format!("{name} input grad"),
            &values(input.grad(&grads).unwrap()),
            &want,
            1e-4,
        );
    }
}

#[test]
fn loramoe_matches_moe_peft() {
    let device = Device::flex().autodiff();
    let dir = fixture("tiny-llama-moe-variants");
    let expected = Expected::open(&dir.join("expected.safetensors"));
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    let mut mlp = base.layers.into_iter().next().unwrap().mlp;
    for (proj, p) in [
        ("gate_proj", &mut mlp.gate_proj),
        ("up_proj", &mut mlp.up_proj),
        ("down_proj", &mut mlp.down_proj),
    ] {
        let router: Tensor<2> = expected.tensor(
            &format!("loramoe.loramoe.layers.0.mlp.{proj}.moe_gate.weight"),
            &device,
        );
        let experts = (0..4)
            .map(|e| {
                let a: Tensor<2> =
                    expected.tensor(&format!("experts.{e}.{proj}.lora_A.weight"), &device);
                let b: Tensor<2> =
                    expected.tensor(&format!("experts.{e}.{proj}.lora_B.weight"), &device);
                mixlora::model::Adapter {
                    lora_a: Param::from_tensor(a.transpose()),
                    lora_b: Param::from_tensor(b.transpose()),
                    magnitude: None,
                    scale: 2.0,
                    dropout: burn::nn::DropoutConfig::new(0.0).init(),
                }
            })
            .collect();
        p.mixture = Some(mixlora::moe::LoraMoe {
            router: Param::from_tensor(router.transpose()),
            experts,
        });
    }
    let input = expected.tensor::<3>("input", &device).require_grad();
    let (out, record) = mlp.forward(input.clone());
    assert!(record.is_none(), "LoRAMoE has no router loss");
    let (want, _) = expected.floats("loramoe.output");
    close("loramoe output", &values(out.clone().inner()), &want, 1e-4);
    let grads = (out * expected.tensor::<3>("cotangent", &device))
        .sum()
        .backward();
    for (proj, p) in [
        ("gate_proj", &mlp.gate_proj),
        ("up_proj", &mlp.up_proj),
        ("down_proj", &mlp.down_proj),
    ] {
        let mixture = p.mixture.as_ref().unwrap();
        let key = format!("loramoe.grad.loramoe.layers.0.mlp.{proj}.moe_gate.weight");
        let (want, _) = expected.floats(&key);
        close(
            &key,
            &values(mixture.router.val().grad(&grads).unwrap().transpose()),
            &want,
            1e-4,
        );
        for (e, adapter) in mixture.experts.iter().enumerate() {
            let key = format!("loramoe.grad.experts.{e}.{proj}.lora_B.weight");
            let (want, _) = expected.floats(&key);
            close(
                &key,
                &values(adapter.lora_b.val().grad(&grads).unwrap().transpose()),
                &want,
                1e-4,
            );
        }
    }
    let (want, _) = expected.floats("loramoe.grad.input");
    close(
        "loramoe input grad",
        &values(input.grad(&grads).unwrap()),
        &want,
        1e-4,
    );
}

#[test]
fn the_high_throughput_path_equals_the_plain_one_and_fresh_experts_change_nothing() {
    let device = Device::flex().autodiff();
    let expected = Expected::open(&fixture("tiny-llama-moe-variants/expected.safetensors"));
    let router = expected.tensor::<2>("dynamic.mixlora.layers.0.mlp.moe_gate.weight", &device);
    let input = expected.tensor::<3>("input", &device);
    let mut outs = Vec::new();
    let mut grads_b = Vec::new();
    for fused in [true, false] {
        let mlp = variant_mlp(
            Routing::TopK { k: 2 },
            router.clone(),
            &expected,
            &device,
            fused,
        );
        let (out, _) = mlp.forward(input.clone());
        let grads = out.clone().sum().backward();
        let moe = mlp.moe.as_ref().unwrap();
        grads_b.push(values(
            moe.experts[1].down.lora_b.val().grad(&grads).unwrap(),
        ));
        outs.push(values(out.inner()));
    }
    close("fused vs plain output", &outs[0], &outs[1], 1e-5);
    close("fused vs plain gradient", &grads_b[0], &grads_b[1], 1e-5);

    // A fresh adapter (B = 0) leaves the model's output as it was: the routing weights
    // sum to 1 and every expert is the base FFN.
    let device = Device::flex();
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![4i64, 9, 17, 3, 60], [1, 5]), &device);
    let before = values(base.forward(ids.clone(), None));
    for dora in [false, true] {
        let mut config = MixLoraConfig::new(4, 8, 4, 2);
        config.use_dora = dora;
        let model = mixlora::attach_mixlora(base.clone(), &config, &device).unwrap();
        let after = values(model.forward(ids.clone(), None));
        close(
            &format!("fresh MixLoRA (dora {dora})"),
            &after,
            &before,
            1e-5,
        );
    }
}

#[test]
fn bad_adapter_folders_are_refused_by_name() {
    let device = Device::flex();
    let base = mixlora::load_decoder(&fixture("tiny-llama"), &device).unwrap();
    let src = fixture("tiny-llama-mixlora");
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    // Only the official pickle (not committed: any file of that name will do): the
    // conversion is named.
    copy("adapter_config.json");
    std::fs::write(dir.path().join("adapter_model.bin"), b"a torch pickle").unwrap();
    let err = mixlora::load_mixlora(base.clone(), dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_model.bin") && err.contains("convert_format.py"),
        "{err}"
    );
    // An unknown routing strategy.
    copy("adapter_model.safetensors");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    config["routing_strategy"] = "mixlora-magic".into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let err = mixlora::load_mixlora(base.clone(), dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mixlora-magic"), "{err}");
    // Wrong number of experts: the mismatching tensors are named.
    config["routing_strategy"] = "mixlora".into();
    config["num_experts"] = 5.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let err = mixlora::load_mixlora(base.clone(), dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mixlora.layers.0.mlp.moe_gate.weight"),
        "{err}"
    );
    assert!(err.contains("experts.4"), "{err}");
    // A truncated weight file.
    config["num_experts"] = 4.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = mixlora::load_mixlora(base, dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}
