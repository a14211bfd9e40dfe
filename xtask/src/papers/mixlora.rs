//! `cargo xtask eval mixlora`: the paper's accuracy tables beside what this workspace
//! measures: the synthetic multi-task suite (always; LoRA vs MixLoRA at equal
//! trainable parameters, each task alone and all four together) and, when a model
//! folder and the fetched task data are present, the commonsense tasks.

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::tensor::Device;
use mixlora::finetune::{AdapterSpec, fine_tune, trainable_parameters};
use mixlora::tasks::{Split, Task, synthetic_base, synthetic_suite, text_examples, token_examples};
use mixlora::train::{EvalExample, TrainExample, TrainOptions, evaluate};
use serde_json::json;

use crate::eval::EvalOptions;
use crate::report::{Report, Table, fmt_f};

/// Single-task accuracy (%) from the paper, LLaMA-2 7B: ARC-e, ARC-c, BoolQ, OBQA,
/// PIQA, SIQA, HellaSwag, WinoGrande, average.
const PAPER_SINGLE: &[(&str, [f64; 9])] = &[
    (
        "LoRA",
        [73.8, 50.9, 62.2, 80.4, 82.1, 69.9, 88.4, 66.8, 71.8],
    ),
    (
        "DoRA",
        [76.5, 59.8, 71.7, 80.6, 82.7, 74.1, 89.6, 67.3, 75.3],
    ),
    (
        "MixLoRA",
        [77.7, 58.1, 72.7, 81.6, 83.2, 78.0, 93.1, 76.8, 77.6],
    ),
    (
        "MixDoRA",
        [77.5, 58.2, 72.6, 80.9, 82.2, 80.4, 90.6, 83.4, 78.2],
    ),
];

/// The two methods compared at equal trainable parameters on the synthetic suite:
/// LoRA rank 11 on all seven projections (22,528 values on the suite's base) vs
/// MixLoRA rank 4, 4 experts, top-2 (22,528 values).
const SYNTHETIC_METHODS: [(&str, usize); 2] = [("lora", 11), ("mixlora", 4)];

fn synthetic_options(epochs: usize) -> TrainOptions {
    TrainOptions {
        lr: 3e-3,
        batch: 16,
        micro_batch: 16,
        epochs,
        weight_decay: 0.0,
        seed: 42,
        ..TrainOptions::default()
    }
}

fn run(
    method: &str,
    r: usize,
    train: &[TrainExample],
    eval: &[EvalExample],
    epochs: usize,
    device: &Device,
) -> Result<(usize, Vec<(usize, usize)>, f64)> {
    let spec = AdapterSpec::for_method(method, r, 2 * r, 4, 2, 0.0).map_err(|e| anyhow!(e))?;
    let base = synthetic_base(device, 3);
    let out = tempfile::tempdir()?;
    let (model, _) = fine_tune(
        base,
        &spec,
        train,
        &synthetic_options(epochs),
        out.path(),
        usize::MAX,
        false,
        None,
        json!(method),
        &mut |_, _| {},
    )
    .map_err(|e| anyhow!(e))?;
    let (per_task, overall) = evaluate(&model.valid(), eval, 128, 0);
    Ok((trainable_parameters(&model), per_task, overall))
}

fn synthetic(options: &EvalOptions) -> Result<Table> {
    let device = Device::flex().autodiff();
    let (train_n, eval_n, epochs) = if options.quick {
        (256, 128, 3)
    } else {
        (1024, 512, 4)
    };
    let suite = synthetic_suite(train_n, eval_n, 7);
    let names: Vec<String> = suite.iter().map(|t| t.name.clone()).collect();
    let mut columns = vec!["method".to_string(), "setting".into(), "trainable".into()];
    columns.extend(names.iter().cloned());
    columns.push("average".into());
    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut table = Table::new(
        format!(
            "Synthetic multi-task suite (4 tasks, {train_n} training / {eval_n} test examples each, {epochs} epochs): accuracy %"
        ),
        &cols,
    );
    for (method, r) in SYNTHETIC_METHODS {
        println!("  synthetic: {method}, each task alone ...");
        let mut single = Vec::new();
        let mut trainable = 0;
        for task in 0..suite.len() {
            let one = [suite[task].clone()];
            let (train, mut eval) = token_examples(&one);
            eval.iter_mut().for_each(|e| e.task = 0);
            let (params, _, acc) = run(method, r, &train, &eval, epochs, &device)?;
            trainable = params;
            single.push(acc * 100.0);
        }
        let mut row = vec![
            method.to_string(),
            "single-task".into(),
            trainable.to_string(),
        ];
        row.extend(single.iter().map(|a| fmt_f(*a, 1)));
        row.push(fmt_f(single.iter().sum::<f64>() / single.len() as f64, 1));
        table.row(row);
        println!("  synthetic: {method}, all tasks together ...");
        let (train, eval) = token_examples(&suite);
        let (params, per_task, _) = run(method, r, &train, &eval, epochs, &device)?;
        let accs: Vec<f64> = per_task
            .iter()
            .map(|&(r, n)| 100.0 * r as f64 / n.max(1) as f64)
            .collect();
        let mut row = vec![method.to_string(), "multi-task".into(), params.to_string()];
        row.extend(accs.iter().map(|a| fmt_f(*a, 1)));
        row.push(fmt_f(accs.iter().sum::<f64>() / accs.len() as f64, 1));
        table.row(row);
    }
    table.note(
        "A frozen random 2-layer LLaMA-style base (hidden 64) with adapters trained on the answer \
         token (AdamW, lr 3e-3, batch 16). Each prompt is a task token, 8 random symbols and an \
         answer marker; three of four key symbols appear among distractors and task t answers \
         (missing key + t) mod 4, so the four tasks share inputs and answer tokens and one adapter \
         has to tell them apart by the task token. Chance: 25%. Equal trainable parameters as in the \
         paper's comparison (MixLoRA r 16 x 8 experts vs LoRA r 80 there). Numbers are what this \
         run measured, whichever way they fall.",
    );
    Ok(table)
}

fn commonsense(options: &EvalOptions) -> Result<Table> {
    let mut columns = vec!["method"];
    let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
    columns.extend(names.iter());
    columns.push("average");
    let mut table = Table::new(
        "Commonsense tasks, single-task accuracy %: paper (LLaMA-2 7B) vs this implementation",
        &columns,
    );
    for (method, values) in PAPER_SINGLE {
        let mut row = vec![format!("paper {method}")];
        row.extend(values.iter().map(|v| fmt_f(*v, 1)));
        table.row(row);
    }
    let model_dir = options.data_dir.join("models/SmolLM2-135M");
    let present: Vec<Task> = Task::ALL
        .into_iter()
        .filter(|t| crate::papers::dataset_dir(&options.data_dir, t.dataset()).is_some())
        .collect();
    if !model_dir.join("config.json").is_file() || present.is_empty() {
        table.note(format!(
            "Measured when a Hugging Face model folder is at {} (e.g. SmolLM2-135M) and task data \
             was fetched (`cargo xtask fetch arc boolq openbookqa piqa siqa hellaswag winogrande`); \
             neither is on this machine, so only the paper's rows are shown.",
            model_dir.display()
        ));
        return Ok(table);
    }
    let device = Device::flex().autodiff();
    let tokenizer = mixlora::TextTokenizer::from_dir(&model_dir).map_err(|e| anyhow!("{e}"))?;
    let limit = if options.quick { 256 } else { usize::MAX };
    for (method, r) in [("lora", 80usize), ("mixlora", 16)] {
        let mut row = vec![format!("ours {method} (SmolLM2-135M)")];
        let mut accs = Vec::new();
        for task in Task::ALL {
            if !present.contains(&task) {
                row.push("-".into());
                continue;
            }
            let mut train_set = task
                .load(&options.data_dir, Split::Train)
                .map_err(|e| anyhow!("{e}"))?;
            let mut eval_set = task
                .load(&options.data_dir, Split::Eval)
                .map_err(|e| anyhow!("{e}"))?;
            train_set.truncate(limit);
            eval_set.truncate(limit);
            let (train, eval) = text_examples(&tokenizer, &[(task, train_set, eval_set)], 512)
                .map_err(|e| anyhow!("{e}"))?;
            let spec =
                AdapterSpec::for_method(method, r, 2 * r, 8, 2, 0.05).map_err(|e| anyhow!(e))?;
            let base = mixlora::load_decoder(&model_dir, &device).map_err(|e| anyhow!("{e}"))?;
            let out = options
                .results_dir
                .join(format!("mixlora/runs/{method}-{}", task.name()));
            let (model, _) = fine_tune(
                base,
                &spec,
                &train,
                &TrainOptions::default(),
                &out,
                200,
                true,
                None,
                json!({"method": method, "task": task.name(), "limit": limit}),
                &mut |_, _| {},
            )
            .map_err(|e| anyhow!(e))?;
            let (_, acc) = evaluate(&model.valid(), &eval, 16, 0);
            accs.push(acc * 100.0);
            row.push(fmt_f(acc * 100.0, 1));
        }
        row.push(if accs.is_empty() {
            "-".into()
        } else {
            fmt_f(accs.iter().sum::<f64>() / accs.len() as f64, 1)
        });
        table.row(row);
    }
    table.note("Ours: SmolLM2-135M, MoE-PEFT's recipe (AdamW lr 2e-4, batch 16, 2 epochs, cutoff 512); LoRA r 80 vs MixLoRA r 16 x 8 experts, top-2.");
    Ok(table)
}

/// The reproduction.
pub fn reproduce(options: &EvalOptions) -> Result<Report> {
    let mut report = Report::new("mixlora", "cargo xtask eval mixlora");
    let mut multi = Table::new(
        "Multi-task (ARC-e, ARC-c, BoolQ, OBQA, PIQA), LLaMA-2 7B: paper",
        &["method", "single-task avg", "multi-task avg"],
    );
    multi.row(["LoRA", "69.9", "65.5"]);
    multi.row(["MixLoRA", "74.7", "75.3"]);
    multi.note(
        "The paper's multi-task claim needs the real tasks and model (table above). The synthetic \
         table below is the same comparison in miniature: single-task vs all four tasks in one \
         adapter, at equal trainable parameters.",
    );
    println!("commonsense tasks ...");
    report.tables.push(commonsense(options)?);
    report.tables.push(multi);
    println!("synthetic suite ...");
    report.tables.push(synthetic(options)?);
    Ok(report)
}
