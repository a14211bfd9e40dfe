//! MixLoRA's efficiency claims (the paper's Table 6), measured on a SmolLM2-135M-shaped
//! decoder (random weights): per-token forward and backward latency and peak memory of
//! LoRA, MixLoRA (plain per-expert projections), optimised MixLoRA (`W1 x`, `W3 x` once
//! for all tokens), and two MixLoRA adapters trained fused over one base vs two
//! separate runs.

use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mixlora::finetune::AdapterSpec;
use mixlora::fused::FusedAdapters;
use mixlora::train::{TrainExample, TrainOptions, collate};
use mixlora::{AuxLossConfig, aux_loss, causal_lm_loss};

use super::alloc::measure;
use crate::report::{Report, Table, fmt_f};

fn examples(batch: usize, len: usize, vocab: usize, offset: usize) -> Vec<TrainExample> {
    (0..batch)
        .map(|b| TrainExample {
            ids: (0..len)
                .map(|i| (((offset + b) * 7919 + i * 104_729 + 13) % vocab) as i64)
                .collect(),
            loss_from: 1,
        })
        .collect()
}

/// Heap bytes held by a model's tensors.
fn model_bytes(model: &mixlora::Decoder) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0 += p.shape().num_elements() * 4;
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

/// (forward ms, backward ms, peak bytes of the step) of one training step.
fn step(model: &mixlora::Decoder, data: &[TrainExample], device: &Device) -> (f64, f64, usize) {
    let refs: Vec<&TrainExample> = data.iter().collect();
    let mut fwd = 0.0;
    let mut bwd = 0.0;
    let (_, _, peak) = measure(|| {
        let start = Instant::now();
        let (ids, mask_t, labels, mask) = collate(&refs, 0, device);
        let (logits, records) = model.forward_routed(ids, Some(mask_t));
        let mut loss = causal_lm_loss(logits, &labels);
        if let Some(aux) = aux_loss(&records, Some(&mask), AuxLossConfig::default()) {
            loss = loss + aux;
        }
        device.sync().expect("sync");
        fwd = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let grads = loss.backward();
        device.sync().expect("sync");
        bwd = start.elapsed().as_secs_f64() * 1e3;
        drop(grads);
    });
    (fwd, bwd, peak)
}

/// Inference forward ms (no autodiff).
fn inference(model: &mixlora::Decoder, data: &[TrainExample], device: &Device) -> f64 {
    let refs: Vec<&TrainExample> = data.iter().collect();
    let (ids, mask, _, _) = collate(&refs, 0, device);
    let start = Instant::now();
    drop(model.forward(ids, Some(mask)));
    device.sync().expect("sync");
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Arguments: `--quick` (4 layers, 64 tokens, 2 runs).
pub fn run(args: &[String]) -> Result<Report> {
    let quick = args.iter().any(|a| a == "--quick");
    let (layers, len, runs) = if quick { (4, 64, 2) } else { (30, 256, 3) };
    let batch = 4;
    let config = super::llm::smollm2_config(layers);
    let device = Device::flex().autodiff();
    device.seed(0);
    println!("building the SmolLM2-135M-shaped decoder ({layers} layers) ...");
    let base = mixlora::random_decoder(&config, 0.02, &device).map_err(|e| anyhow!(e))?;
    let data = examples(batch, len, config.vocab_size, 0);
    let tokens = (batch * len) as f64;
    let spec = |method: &str, r: usize| {
        AdapterSpec::for_method(method, r, 2 * r, 8, 2, 0.0).map_err(|e| anyhow!(e))
    };
    let mut table = Table::new(
        format!(
            "SmolLM2-135M-shaped decoder ({layers} layers, random weights), batch {batch} x {len} tokens, flex: microseconds per token"
        ),
        &[
            "adapter",
            "train fwd",
            "train bwd",
            "inference fwd",
            "peak step MB",
            "paper (LLaMA-2 7B, fwd / bwd / inference)",
        ],
    );
    let variants: [(&str, &str, usize, Option<bool>, &str); 3] = [
        ("LoRA r 16", "lora", 16, None, "245.3 / 552.3 / -"),
        (
            "MixLoRA r 16 x 8, top-2, plain",
            "mixlora",
            16,
            Some(false),
            "535.2 / 1187.5 / 532.8",
        ),
        (
            "MixLoRA r 16 x 8, top-2, optimised",
            "mixlora",
            16,
            Some(true),
            "462.5 / 1097.6 / 442.2",
        ),
    ];
    let mut single_peak = 0;
    let mut single_step_ms = 0.0;
    for (name, method, r, fused, paper) in variants {
        println!("  {name} ...");
        let mut model = spec(method, r)?
            .attach(base.clone(), &device)
            .map_err(|e| anyhow!(e))?;
        if let Some(f) = fused {
            for layer in model.layers.iter_mut() {
                if let Some(moe) = layer.mlp.moe.as_mut() {
                    moe.fused = f;
                }
            }
        }
        step(&model, &data, &device); // warm-up
        let mut f = Vec::new();
        let mut b = Vec::new();
        let mut peak = 0;
        for _ in 0..runs {
            let (x, y, p) = step(&model, &data, &device);
            f.push(x);
            b.push(y);
            peak = peak.max(p);
        }
        let valid = model.valid();
        let inner_device = valid.embed_tokens.weight.val().device();
        let inf = median(
            (0..runs)
                .map(|_| inference(&valid, &data, &inner_device))
                .collect(),
        );
        let (fwd, bwd) = (median(f), median(b));
        if fused == Some(true) {
            single_peak = peak;
            single_step_ms = fwd + bwd;
        }
        table.row([
            name.to_string(),
            fmt_f(fwd * 1e3 / tokens, 0),
            fmt_f(bwd * 1e3 / tokens, 0),
            fmt_f(inf * 1e3 / tokens, 0),
            fmt_f(peak as f64 / 1e6, 0),
            paper.to_string(),
        ]);
    }
    table.note(format!(
        "Median of {runs} runs after one warm-up on this shared 2-core machine; read the ratios. \
         Train fwd includes the causal-LM and auxiliary losses; peak: the most heap bytes live \
         above the starting level during one step (counting allocator)."
    ));

    println!("  two MixLoRA adapters, fused vs separate ...");
    let base_bytes = model_bytes(&base);
    let options = TrainOptions {
        batch,
        micro_batch: batch,
        ..TrainOptions::default()
    };
    let mut fused = FusedAdapters::new(
        base.clone(),
        vec![spec("mixlora", 16)?, spec("mixlora", 16)?],
        vec![options, options],
        &device,
    )
    .map_err(|e| anyhow!(e))?;
    let other = examples(batch, len, config.vocab_size, 1000);
    let batches: Vec<Vec<&TrainExample>> = vec![data.iter().collect(), other.iter().collect()];
    fused.step(&batches); // warm-up
    let mut times = Vec::new();
    let mut fused_peak = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (_, _, peak) = measure(|| fused.step(&batches));
        times.push(start.elapsed().as_secs_f64() * 1e3);
        fused_peak = fused_peak.max(peak);
    }
    let fused_ms = median(times);
    let separate_bytes = 2 * (base_bytes + single_peak);
    let fused_bytes = base_bytes + fused_peak;
    let mut two = Table::new(
        "Two MixLoRA adapters (r 16 x 8, top-2), one training step each: fused over one base vs two separate runs",
        &[
            "setup",
            "memory MB (base + step peak)",
            "step ms",
            "paper (LLaMA-2 7B)",
        ],
    );
    two.row([
        "two separate runs".to_string(),
        fmt_f(separate_bytes as f64 / 1e6, 0),
        fmt_f(2.0 * single_step_ms, 0),
        "15.1 GB".into(),
    ]);
    two.row([
        "fused (one base, one backward)".to_string(),
        fmt_f(fused_bytes as f64 / 1e6, 0),
        fmt_f(fused_ms, 0),
        "8.8 GB (-41%)".into(),
    ]);
    two.note(format!(
        "Base weights {:.0} MB (f32). Separate runs each hold the base and their step's peak; the \
         fused run holds the base once. Fused memory vs separate: {:+.0}%; time {:+.0}% (the \
         fused step includes both optimizer updates, the separate column is twice the optimised \
         single step's forward + backward).",
        base_bytes as f64 / 1e6,
        (fused_bytes as f64 / separate_bytes as f64 - 1.0) * 100.0,
        (fused_ms / (2.0 * single_step_ms) - 1.0) * 100.0
    ));
    let mut report = Report::new("bench-mixlora", "cargo xtask bench mixlora");
    report.tables.push(table);
    report.tables.push(two);
    Ok(report)
}
