//! A SmolLM2-135M-shaped decoder (random weights) on flex against transformers + PEFT
//! on PyTorch CPU (`tools/reference/bench/llm.py`): forward tokens per second, and one
//! LoRA training step (rank 8 on all seven projections; forward, causal-LM loss,
//! backward, AdamW on the adapters) at batch 4 x 256 tokens, with the peak heap bytes of
//! each.

use std::time::Duration;

use anyhow::{Result, anyhow};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mixlora::{AdapterConfig, DecoderConfig};

use super::alloc::measure;
use super::{reference_python, run_reference_script, time_interleaved};
use crate::report::{Report, Table, fmt_f};

/// SmolLM2-135M's `config.json` with `layers` of its 30 layers.
pub fn smollm2_config(layers: usize) -> DecoderConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": layers, "num_attention_heads": 9,
        "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 8192
    }))
    .expect("a valid config")
}

fn ids(batch: usize, len: usize, vocab: usize, device: &Device) -> (Tensor<2, Int>, Vec<i64>) {
    let values: Vec<i64> = (0..batch * len)
        .map(|i| ((i * 7919 + 13) % vocab) as i64)
        .collect();
    (
        Tensor::from_data(TensorData::new(values.clone(), [batch, len]), device),
        values,
    )
}

/// Arguments: `--quick` (4 layers, 64 tokens, fewer runs).
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let len = if quick { 64 } else { 256 };
    let (min_rounds, max_rounds, budget) = if quick {
        (2, 3, Duration::from_secs(5))
    } else {
        (3, 10, Duration::from_secs(60))
    };
    let config = smollm2_config(if quick { 4 } else { 30 });
    let reference = match reference_python() {
        Some(_) => {
            println!("running tools/reference/bench/llm.py ...");
            let script = crate::workspace_root().join("tools/reference/bench/llm.py");
            let len_arg = len.to_string();
            let mut extra = vec!["--tokens", len_arg.as_str()];
            if quick {
                extra.push("--quick");
            }
            Some(run_reference_script(&script, &extra)?)
        }
        None => None,
    };
    let torch = |key: &str| {
        reference
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_f64())
    };

    let device = Device::flex();
    device.seed(0);
    println!(
        "building the decoder ({} layers) ...",
        config.num_hidden_layers
    );
    let model = mixlora::random_decoder(&config, 0.02, &device).map_err(|e| anyhow!(e))?;
    let (x1, _) = ids(1, len, config.vocab_size, &device);
    let (x4, labels) = ids(4, len, config.vocab_size, &device);
    println!("timing forward passes ...");
    let sync = |d: &Device| d.sync().expect("device sync");
    let mut f1 = || {
        drop(model.forward(x1.clone(), None));
        sync(&device);
    };
    let mut f4 = || {
        drop(model.forward(x4.clone(), None));
        sync(&device);
    };
    let forward = time_interleaved(&mut [&mut f1, &mut f4], 1, min_rounds, max_rounds, budget);
    let (_, _, forward_peak) = measure(|| model.forward(x4.clone(), None));

    println!("timing LoRA training steps ...");
    let ad = device.clone().autodiff();
    let base = mixlora::random_decoder(&config, 0.02, &ad).map_err(|e| anyhow!(e))?;
    let lora = AdapterConfig::new(8, 16.0, &mixlora::adapters::TARGETS, false);
    let mut model_ad = Some(mixlora::attach(base, &lora, &ad));
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let (x4_ad, _) = ids(4, len, config.vocab_size, &ad);
    let mut step = || {
        let m = model_ad.take().expect("model");
        let loss = mixlora::causal_lm_loss(m.forward(x4_ad.clone(), None), &labels);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        model_ad = Some(optim.step(1e-4, m, grads));
        sync(&ad);
    };
    step();
    let (_, _, train_peak) = measure(&mut step);
    let train = time_interleaved(
        &mut [&mut step],
        0,
        min_rounds.min(3),
        max_rounds.min(5),
        budget,
    );

    let mut columns = vec!["workload", "flex ms", "flex tokens/s", "flex peak MB"];
    if reference.is_some() {
        columns.extend(["torch ms", "torch peak MB", "flex / torch"]);
    }
    let mut table = Table::new(
        format!(
            "SmolLM2-135M-shaped decoder ({} layers, random weights), {len} tokens per row: flex vs transformers + PEFT on PyTorch CPU",
            config.num_hidden_layers
        ),
        &columns,
    );
    let rows = [
        (
            "forward, batch 1",
            "forward_b1",
            forward[0].median_ms,
            1,
            None,
        ),
        (
            "forward, batch 4",
            "forward_b4",
            forward[1].median_ms,
            4,
            Some(forward_peak),
        ),
        (
            "LoRA r=8 training step, batch 4",
            "lora_step_b4",
            train[0].median_ms,
            4,
            Some(train_peak),
        ),
    ];
    for (name, key, ms, batch, peak) in rows {
        let mut row = vec![
            name.to_string(),
            fmt_f(ms, 0),
            fmt_f((batch * len) as f64 / (ms / 1e3), 0),
            peak.map(|p| fmt_f(p as f64 / 1e6, 0))
                .unwrap_or_else(|| "-".into()),
        ];
        if reference.is_some() {
            match torch(key) {
                Some(t) => row.extend([
                    fmt_f(t, 0),
                    torch(&format!("{key}_peak_mb"))
                        .map(|p| fmt_f(p, 0))
                        .unwrap_or_else(|| "-".into()),
                    fmt_f(ms / t, 2),
                ]),
                None => row.extend(["-".into(), "-".into(), "-".into()]),
            }
        }
        table.row(row);
    }
    table.note(
        "Median of interleaved runs on this shared 2-core machine; read the ratios. Peak MB: \
         flex, the most heap bytes live above the starting level during one call (counting \
         allocator); torch, the growth of the process's peak RSS over the timed runs (a \
         coarser measure: it misses memory reused from earlier runs). The training step \
         includes AdamW on the adapters only.",
    );
    let mut report = Report::new("bench-llm", "cargo xtask bench llm");
    report.tables.push(table);
    Ok(report)
}
