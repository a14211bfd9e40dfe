//! A fine-tuning run in a folder: the adapter (PEFT's layout for LoRA / DoRA, the
//! official MixLoRA layout for the mixtures), the optimizer state and `state.json`,
//! rewritten atomically at every checkpoint (`state.json` last, so an interrupted save
//! leaves the previous checkpoint current); `resume` continues exactly where the last
//! checkpoint stopped.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde_json::Value;

use crate::adapters::{AdapterConfig, attach, load_adapter, save_adapter};
use crate::model::Decoder;
use crate::moe_adapter::{MixLoraConfig, attach_mixlora, load_mixlora, save_mixlora};
use crate::train::{
    RunState, StepRecord, TrainExample, TrainOptions, assign_ids, optimizer, optimizer_path,
    shuffled, train_steps, trainable_ids, write_atomic,
};
use crate::weights::ModelError;

/// The adapter a run trains.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterSpec {
    /// LoRA or DoRA in PEFT's format.
    Peft(AdapterConfig),
    /// MixLoRA, MixDoRA, the routing variants or LoRAMoE, in the official format.
    Mixture(MixLoraConfig),
}

impl AdapterSpec {
    /// The adapter of a method name: `lora`, `dora`, `mixlora`, `mixdora`,
    /// `mixlora-dynamic`, `mixlora-switch`, `loramoe`, on all seven projections
    /// (LoRAMoE: the three FFN projections, as its template).
    pub fn for_method(
        method: &str,
        r: usize,
        alpha: usize,
        experts: usize,
        top_k: usize,
        dropout: f64,
    ) -> Result<Self, String> {
        match method {
            "lora" | "dora" => {
                let mut c = AdapterConfig::new(
                    r,
                    alpha as f64,
                    &crate::adapters::TARGETS,
                    method == "dora",
                );
                c.lora_dropout = dropout;
                Ok(AdapterSpec::Peft(c))
            }
            "mixlora" | "mixdora" | "mixlora-dynamic" | "mixlora-switch" | "loramoe" => {
                let mut c = MixLoraConfig::new(r, alpha, experts, top_k);
                c.lora_dropout = dropout;
                c.use_dora = method == "mixdora";
                c.routing_strategy = if method == "mixdora" {
                    "mixlora".into()
                } else {
                    method.into()
                };
                if method == "loramoe" {
                    c.peft_type = "LORAMOE".into();
                    c.target_modules = ["gate_proj", "up_proj", "down_proj"]
                        .map(String::from)
                        .to_vec();
                }
                c.check()?;
                Ok(AdapterSpec::Mixture(c))
            }
            other => Err(format!(
                "unknown method {other:?}; known: lora, dora, mixlora, mixdora, mixlora-dynamic, mixlora-switch, loramoe"
            )),
        }
    }

    /// Freezes `model` and attaches a fresh adapter.
    pub fn attach(&self, model: Decoder, device: &Device) -> Result<Decoder, String> {
        match self {
            AdapterSpec::Peft(c) => Ok(attach(model, c, device)),
            AdapterSpec::Mixture(c) => attach_mixlora(model, c, device),
        }
    }

    /// Writes the adapter files into `dir`.
    pub fn save(&self, model: &Decoder, dir: &Path) -> Result<(), ModelError> {
        match self {
            AdapterSpec::Peft(c) => save_adapter(model, c, dir).map(|_| ()),
            AdapterSpec::Mixture(c) => save_mixlora(model, c, dir).map(|_| ()),
        }
    }

    /// Reads the adapter folder `dir` (PEFT or MixLoRA, from `adapter_config.json`'s
    /// `peft_type`) onto `model`.
    pub fn load(
        model: Decoder,
        dir: &Path,
        device: &Device,
    ) -> Result<(Decoder, AdapterSpec), ModelError> {
        let path = dir.join("adapter_config.json");
        let value: Value = crate::config::read_json(&path)?;
        match value.get("peft_type").and_then(Value::as_str) {
            Some("MIXLORA") | Some("LORAMOE") => {
                let (m, c) = load_mixlora(model, dir, device)?;
                Ok((m, AdapterSpec::Mixture(c)))
            }
            _ => {
                let (m, c) = load_adapter(model, dir, device)?;
                Ok((m, AdapterSpec::Peft(c)))
            }
        }
    }
}

/// Number of trainable values of `model`.
pub fn trainable_parameters(model: &Decoder) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

/// Trains `spec` on `base` (on an autodiff device) over `data` for
/// `options.epochs` (or until step `stop_after`), checkpointing into `out` every
/// `save_every` steps and at the end.
/// With `resume`, a run already in `out` continues from its last checkpoint; without,
/// an existing run is refused. `description` (method, data, model) must match the
/// run's on resume.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    base: Decoder,
    spec: &AdapterSpec,
    data: &[TrainExample],
    options: &TrainOptions,
    out: &Path,
    save_every: usize,
    resume: bool,
    stop_after: Option<usize>,
    description: Value,
    on_step: &mut dyn FnMut(&StepRecord, usize),
) -> Result<(Decoder, RunState), String> {
    if data.is_empty() {
        return Err("no training examples".into());
    }
    let device = base.embed_tokens.weight.val().device();
    let state_path = out.join("state.json");
    let per_step = options.batch.max(1);
    let total_steps = (data.len() * options.epochs).div_ceil(per_step);
    let (model, mut optim, mut state) = if state_path.is_file() {
        if !resume {
            return Err(format!(
                "{} already holds a run; pass --resume to continue it",
                out.display()
            ));
        }
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| format!("cannot read {}: {e}", state_path.display()))?;
        let state: RunState = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a run state: {e}", state_path.display()))?;
        if state.description != description || state.options != *options {
            return Err(format!(
                "{} describes another run (method, data, model or options differ)",
                state_path.display()
            ));
        }
        let (model, _) = AdapterSpec::load(base, out, &device).map_err(|e| e.to_string())?;
        let model = assign_ids(model, &state.param_ids)?;
        let optim_path = optimizer_path(out);
        let bytes = std::fs::read(&optim_path)
            .map_err(|e| format!("cannot read {}: {e}", optim_path.display()))?;
        let optim = optimizer(options)
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| format!("{} is not an optimizer record: {e:?}", optim_path.display()))?;
        (model, optim, state)
    } else {
        let model = spec.attach(base, &device)?;
        let state = RunState {
            step: 0,
            total_steps,
            order: shuffled(data.len(), options.seed),
            param_ids: trainable_ids(&model),
            options: *options,
            description,
            history: Vec::new(),
        };
        (model, optimizer(options), state)
    };
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut model = model;
    let last = stop_after.map_or(total_steps, |s| s.min(total_steps));
    while state.step < last {
        let end = state.step.saturating_add(save_every.max(1)).min(last);
        let mut records = Vec::new();
        model = train_steps(
            model,
            &mut optim,
            data,
            &state.order,
            state.step..end,
            options,
            &mut |record, _| {
                on_step(record, total_steps);
                records.push(record.clone());
            },
        );
        state.step = end;
        state.history.extend(records);
        checkpoint(&model, spec, &optim, &state, out)?;
    }
    Ok((model, state))
}

fn checkpoint(
    model: &Decoder,
    spec: &AdapterSpec,
    optim: &ModuleOptimizer,
    state: &RunState,
    out: &Path,
) -> Result<(), String> {
    spec.save(model, out).map_err(|e| e.to_string())?;
    let bytes = optim
        .into_bytes()
        .map_err(|e| format!("cannot serialise the optimizer: {e:?}"))?;
    let path = optimizer_path(out);
    write_atomic(&path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    let path = out.join("state.json");
    write_atomic(&path, json.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
