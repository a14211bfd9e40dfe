//! Multi-adapter training over one frozen base (the m-LoRA layout of MixLoRA's Sec.
//! 4.4 and MoE-PEFT's dispatcher): several adapters, each with its own data and
//! optimizer, train in one fused batch. Every attention projection runs its frozen
//! matrix product once over all rows and adds each adapter's low-rank update on that
//! adapter's rows; each MixLoRA FFN runs on its own rows (its experts' shared `W1 x`,
//! `W3 x` computed once for them); the losses are summed and one backward pass serves
//! all adapters, each then stepped by its own optimizer.

use burn::module::ParamId;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};

use crate::adapters::causal_lm_loss;
use crate::finetune::AdapterSpec;
use crate::model::Decoder;
use crate::moe::{AuxLossConfig, aux_loss};
use crate::train::{TrainExample, TrainOptions, collate, optimizer, trainable_ids};

/// A base model carrying several adapters, one per slot.
pub struct FusedAdapters {
    /// The model: slot 0 in the usual places, slots 1.. in `more` / `more_moe`.
    pub model: Decoder,
    /// The adapters.
    pub specs: Vec<AdapterSpec>,
    /// One optimizer per slot.
    pub optimizers: Vec<ModuleOptimizer>,
    /// Options per slot (learning rate, padding, auxiliary coefficients).
    pub options: Vec<TrainOptions>,
    ids: Vec<Vec<ParamId>>,
}

/// Moves the adapters of `other` (attached to a copy of the same base) into slot
/// `slot` of `model`.
fn push_slot(model: &mut Decoder, other: Decoder) {
    for (layer, theirs) in model.layers.iter_mut().zip(other.layers) {
        let a = &mut layer.self_attn;
        let b = theirs.self_attn;
        for (mine, their) in [
            (&mut a.q_proj, b.q_proj),
            (&mut a.k_proj, b.k_proj),
            (&mut a.v_proj, b.v_proj),
            (&mut a.o_proj, b.o_proj),
        ] {
            mine.more.push(their.adapter);
        }
        let m = &mut layer.mlp;
        let t = theirs.mlp;
        m.more_moe.push(t.moe);
        for (mine, their) in [
            (&mut m.gate_proj, t.gate_proj),
            (&mut m.up_proj, t.up_proj),
            (&mut m.down_proj, t.down_proj),
        ] {
            mine.more.push(their.adapter);
        }
    }
}

/// The model with slot `slot`'s adapters alone, in slot 0 (the parameters are the
/// fused model's, ids included), for saving or inspecting one adapter.
pub fn slot_view(model: &Decoder, slot: usize) -> Decoder {
    let mut view = model.clone();
    for layer in view.layers.iter_mut() {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        for p in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            if slot > 0 {
                p.adapter = p.more.get_mut(slot - 1).and_then(Option::take);
            }
            p.more.clear();
        }
        if slot > 0 {
            m.moe = m.more_moe.get_mut(slot - 1).and_then(Option::take);
        }
        m.more_moe.clear();
    }
    view
}

impl FusedAdapters {
    /// `base` (on an autodiff device) with a fresh adapter per spec.
    pub fn new(
        base: Decoder,
        specs: Vec<AdapterSpec>,
        options: Vec<TrainOptions>,
        device: &Device,
    ) -> Result<Self, String> {
        if specs.is_empty() || specs.len() != options.len() {
            return Err("one TrainOptions per adapter, and at least one adapter".into());
        }
        if specs
            .iter()
            .any(|s| matches!(s, AdapterSpec::Mixture(c) if c.routing_strategy == "loramoe"))
        {
            return Err(
                "LoRAMoE adapters cannot be fused (their mixtures live on the projections)".into(),
            );
        }
        let mut model = specs[0].attach(base.clone(), device)?;
        for spec in &specs[1..] {
            let other = spec.attach(base.clone(), device)?;
            push_slot(&mut model, other);
        }
        let ids = (0..specs.len())
            .map(|s| {
                trainable_ids(&slot_view(&model, s))
                    .into_iter()
                    .map(ParamId::from)
                    .collect()
            })
            .collect();
        let optimizers = options.iter().map(optimizer).collect();
        Ok(FusedAdapters {
            model,
            specs,
            optimizers,
            options,
            ids,
        })
    }

    /// One optimizer step of every adapter on its own batch, in one fused forward and
    /// backward pass. Returns each adapter's (LM loss, auxiliary loss).
    pub fn step(&mut self, batches: &[Vec<&TrainExample>]) -> Vec<(f64, f64)> {
        assert_eq!(batches.len(), self.specs.len(), "one batch per adapter");
        let device = self.model.embed_tokens.weight.val().device();
        let all: Vec<&TrainExample> = batches.iter().flatten().copied().collect();
        let slots: Vec<usize> = batches.iter().map(Vec::len).collect();
        let (ids, mask_t, labels, mask) = collate(&all, self.options[0].pad, &device);
        let len = ids.dims()[1];
        let (logits, records) = self.model.forward_fused(ids, Some(mask_t), &slots);
        let mut total: Option<Tensor<1>> = None;
        let mut losses = Vec::with_capacity(slots.len());
        let mut start = 0;
        for (slot, &n) in slots.iter().enumerate() {
            let rows = start * len..(start + n) * len;
            let lm = causal_lm_loss(logits.clone().narrow(0, start, n), &labels[rows.clone()]);
            let options = &self.options[slot];
            let aux = aux_loss(
                &records[slot],
                Some(&mask[rows]),
                AuxLossConfig {
                    balance: options.aux_balance,
                    z: options.aux_z,
                },
            )
            .unwrap_or_else(|| Tensor::zeros([1], &device));
            losses.push((
                lm.clone().inner().into_scalar::<f32>() as f64,
                aux.clone().inner().into_scalar::<f32>() as f64,
            ));
            let loss = lm + aux;
            total = Some(match total {
                Some(t) => t + loss,
                None => loss,
            });
            start += n;
        }
        let mut grads = total.expect("at least one adapter").backward();
        let mut model = self.model.clone();
        for slot in 0..slots.len() {
            let params = GradientsParams::from_params(&mut grads, &model, &self.ids[slot]);
            model = self.optimizers[slot].step(self.options[slot].lr, model, params);
        }
        self.model = model;
        losses
    }
}
