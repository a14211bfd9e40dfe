//! `config.json` as transformers 4 and 5 write it: the two RoPE layouts give the same
//! model, and every field that would change the math and is not implemented is refused
//! by name (a Gemma, Phi or sliding-window folder must not run with LLaMA math).

use std::path::Path;

use mixlora::DecoderConfig;
use serde_json::{Value, json};

fn base() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama/config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn parse(config: &Value) -> Result<DecoderConfig, String> {
    serde_json::from_value::<DecoderConfig>(config.clone()).map_err(|e| e.to_string())
}

/// `config` with `field` set to `value` (`Null`: removed).
fn with(mut config: Value, field: &str, value: Value) -> Value {
    let object = config.as_object_mut().unwrap();
    if value.is_null() {
        object.remove(field);
    } else {
        object.insert(field.into(), value);
    }
    config
}

fn refused(config: &Value, needles: &[&str]) {
    let err = parse(config).expect_err("must be refused");
    for needle in needles {
        assert!(err.contains(needle), "{err:?} does not name {needle:?}");
    }
}

#[test]
fn both_rope_layouts_give_the_same_config() {
    let v4 = base();
    let v5 = with(
        with(
            with(base(), "rope_theta", Value::Null),
            "rope_scaling",
            Value::Null,
        ),
        "rope_parameters",
        json!({
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8
        }),
    );
    let (a, b) = (parse(&v4).unwrap(), parse(&v5).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.inverse_frequencies(), b.inverse_frequencies());

    // The default type keeps only the base; no scaling is applied.
    let plain = with(
        with(
            with(base(), "rope_theta", Value::Null),
            "rope_scaling",
            Value::Null,
        ),
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 5000.0}),
    );
    let c = parse(&plain).unwrap();
    assert_eq!(c.rope_theta, 5000.0);
    assert_eq!(c.rope_scaling, None);
    // Older files spell the type `type`, some both (they must agree).
    let both = with(
        base(),
        "rope_scaling",
        json!({"type": "linear", "rope_type": "linear", "factor": 2.0}),
    );
    assert_eq!(parse(&both).unwrap().rope_scaling.unwrap().factor, 2.0);
}

#[test]
fn unimplemented_rope_variants_are_refused_by_name() {
    for kind in ["yarn", "dynamic", "longrope", "su"] {
        refused(
            &with(
                with(base(), "rope_scaling", Value::Null),
                "rope_parameters",
                json!({"rope_type": kind, "rope_theta": 10000.0, "factor": 4.0}),
            ),
            &["rope_parameters", kind],
        );
        refused(
            &with(base(), "rope_scaling", json!({"type": kind, "factor": 4.0})),
            &["rope_scaling", kind],
        );
    }
    // A field of a variant this crate does not read.
    refused(
        &with(
            base(),
            "rope_scaling",
            json!({"rope_type": "linear", "factor": 2.0, "beta_fast": 32}),
        ),
        &["rope_scaling.beta_fast"],
    );
    // Per-layer-type parameters (models with several attention kinds).
    refused(
        &with(
            with(base(), "rope_scaling", Value::Null),
            "rope_parameters",
            json!({"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        ),
        &["rope_parameters", "full_attention"],
    );
    // Two bases that disagree.
    refused(
        &with(
            with(base(), "rope_scaling", Value::Null),
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 5000.0}),
        ),
        &["rope_theta 500000", "5000"],
    );
    refused(
        &with(
            base(),
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 500000.0}),
        ),
        &["rope_parameters", "rope_scaling"],
    );
    refused(
        &with(
            base(),
            "rope_scaling",
            json!({"rope_type": "linear", "type": "dynamic", "factor": 2.0}),
        ),
        &["disagree"],
    );
}

#[test]
fn fields_that_change_the_math_are_implemented_or_refused_by_name() {
    for (model_type, needle) in [
        ("gemma", "gemma"),
        ("phi3", "phi3"),
        ("qwen3", "qwen3"),
        ("mixtral", "mixtral"),
    ] {
        refused(
            &with(base(), "model_type", json!(model_type)),
            &["model_type", needle],
        );
    }
    refused(
        &with(base(), "hidden_act", json!("gelu_pytorch_tanh")),
        &["hidden_act", "gelu_pytorch_tanh"],
    );
    refused(&with(base(), "mlp_bias", json!(true)), &["mlp_bias"]);
    refused(
        &with(base(), "partial_rotary_factor", json!(0.5)),
        &["partial_rotary_factor"],
    );
    refused(
        &with(
            base(),
            "quantization_config",
            json!({"quant_method": "bitsandbytes", "load_in_4bit": true}),
        ),
        &["quantization_config", "bitsandbytes"],
    );
    // Sliding windows: Mistral's applies to every layer; LLaMA has none; Qwen2's is off
    // unless `use_sliding_window`, and per-layer when on.
    let mistral = with(
        with(base(), "model_type", json!("mistral")),
        "sliding_window",
        json!(4096),
    );
    assert_eq!(parse(&mistral).unwrap().sliding_window, Some(4096));
    refused(
        &with(base(), "sliding_window", json!(4096)),
        &["sliding_window", "llama"],
    );
    let qwen = with(
        with(base(), "model_type", json!("qwen2")),
        "sliding_window",
        json!(4096),
    );
    assert_eq!(parse(&qwen).unwrap().sliding_window, None);
    refused(
        &with(qwen.clone(), "use_sliding_window", json!(true)),
        &["use_sliding_window"],
    );
    // transformers 5's per-layer list.
    let full = with(
        base(),
        "layer_types",
        json!(["full_attention", "full_attention"]),
    );
    assert_eq!(parse(&full).unwrap().sliding_window, None);
    refused(
        &with(
            with(
                qwen,
                "layer_types",
                json!(["full_attention", "sliding_attention"]),
            ),
            "use_sliding_window",
            json!(true),
        ),
        &["layer_types"],
    );
    refused(
        &with(
            base(),
            "layer_types",
            json!(["chunked_attention", "full_attention"]),
        ),
        &["layer_types", "chunked_attention"],
    );
    // Fields that do not change the math are ignored.
    let harmless = with(
        with(base(), "attention_dropout", json!(0.1)),
        "use_cache",
        json!(false),
    );
    assert_eq!(parse(&harmless).unwrap(), parse(&base()).unwrap());
}

#[test]
fn a_refused_folder_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let config = with(base(), "model_type", json!("gemma"));
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = match mixlora::load_decoder(dir.path(), &burn::tensor::Device::flex()) {
        Ok(_) => panic!("a gemma folder must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("config.json") && err.contains("gemma"),
        "{err}"
    );
}
