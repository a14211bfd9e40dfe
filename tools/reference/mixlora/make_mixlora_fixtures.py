"""MixLoRA adapters on the tiny LLaMA fixture, and what the official code computes with
them, for the Rust MixLoRA tests.

Reference code (pinned in requirements-mixlora.txt, a separate venv):
  * `mixlora` 0.2.3 (PyPI; TUDB-Labs/MixLoRA): the official inference integration with
    transformers. It loads `adapter_config.json` + `adapter_model.bin` (torch.save'd dict)
    and replaces every LLaMA MLP forward by `mixlora.model.MixLoraSparseMoe.forward`. It has
    no router logits output and no auxiliary loss (inference only).
  * `moe_peft` 2.0.2 (PyPI; TUDB-Labs/MoE-PEFT): the training code of the paper. Its
    load-balance loss (`moe_peft/adapters/mixlora/model.py:_mixtral_load_balancing_loss_func`,
    applied by `MixtralRouterLoss` in `moe_peft/model.py:LLMModel.forward` on the router logits
    of all layers concatenated) is re-implemented here (`load_balance_loss`) on top of the
    official `mixlora` forward; the whole fixture is then recomputed with MoE-PEFT's own
    model (`LLMModel.load_adapter` + `LLMModel.forward`, both of its operator paths) and
    compared, so the two official code bases and this script agree.

Writes, under crates/mixlora/tests/fixtures/:
  tiny-llama-mixlora/          MixLoRA (top-2 of 4 experts, r 4, alpha 8)
  tiny-llama-mixlora-rslora/   the same with use_rslora (scale alpha / sqrt(r))
  tiny-llama-mixdora/          the same with use_dora (attention LoRA and experts)
each with adapter_config.json (as MoE-PEFT's save_adapter_weight writes it),
adapter_model.bin (torch.save, what both official loaders read), adapter_model.safetensors
(the same tensors, same keys; for DoRA also the magnitudes under a non-official key, see
expected.json) and expected.safetensors; and
  tiny-llama-moe-variants/     one FFN layer (base weights = tiny-llama layer 0 MLP) with the
                               MoE-PEFT routers mixlora-switch, mixlora-dynamic, LoRAMoE and
                               MoLA, computed by MoE-PEFT's own classes.
expected.json beside each expected.safetensors lists every key, shape, dtype and meaning.

Usage: /work/venv-mixlora/bin/python make_mixlora_fixtures.py          (writes fixtures)
       python make_mixlora_fixtures.py --check   (recomputes with the official `mixlora`
       forward from the written files and compares; runs with any torch/transformers that
       `mixlora` accepts, e.g. the transformers 4.57.1 venv of the other fixtures with the
       mixlora wheel on PYTHONPATH)
"""

import fnmatch
import json
import math
import os
import sys

os.environ.setdefault("MOE_PEFT_EXECUTOR_TYPE", "CPU")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

import mixlora  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "../../../crates/mixlora/tests/fixtures"))
BASE = os.path.join(FIX, "tiny-llama")

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
# MoE-PEFT's `LlamaMLP.state_dict` order, which is also the order of target_modules and of
# the keys in a saved adapter_model.bin
FFN = ["gate_proj", "down_proj", "up_proj"]
N_EXPERTS = 4
TOP_K = 2
R = 4
ALPHA = 8
AUX_COEF = 0.001  # MixLoraConfig.from_config default of router_aux_loss_coef (both packages)
A_STD, B_STD, ROUTER_STD = 0.2, 0.1, 0.3
MARGIN = 4e-3  # minimum gap around every discrete routing decision on real tokens
LOGIT_GAP = 1e-2  # the same in logit space (single-layer variants)

VARIANTS = {
    # name: (use_dora, use_rslora, first weight seed)
    "tiny-llama-mixlora": (False, False, 100),
    "tiny-llama-mixlora-rslora": (False, True, 200),
    "tiny-llama-mixdora": (True, False, 300),
}


# --------------------------------------------------------------------------- helpers


def official_config(use_dora, use_rslora):
    """adapter_config.json exactly as MoE-PEFT writes it (trainer.py:save_adapter_weight:
    MixLoraConfig.export() + base_model_name_or_path + task_type), key order included.
    lora_dropout must be > 0: both LoraLinear (mixlora) and Lora (moe_peft) assert it."""
    cfg = {}
    if use_dora:
        cfg["use_dora"] = True
    if use_rslora:
        cfg["use_rslora"] = True
    cfg.update(
        {
            "bias": "none",
            "peft_type": "MIXLORA",
            "r": R,
            "lora_alpha": ALPHA,
            "lora_dropout": 0.05,
            "target_modules": ATTN + FFN,
            "routing_strategy": "mixlora",
            "num_experts": N_EXPERTS,
            "act_fn": "silu",
            "top_k": TOP_K,
            "base_model_name_or_path": "../tiny-llama",
            "task_type": "CAUSAL_LM",
        }
    )
    return cfg


def load_base():
    model = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    model.requires_grad_(False)
    return model


def random_weights(base, seed):
    """Official key names and orientations (nn.Linear weights: lora_A [r, in], lora_B
    [out, r], moe_gate [num_experts, hidden]); key order of MoE-PEFT's
    model.py:get_lora_layer_weight."""
    g = torch.Generator().manual_seed(seed)
    w = {}
    d = base.config.hidden_size
    for i, layer in enumerate(base.model.layers):
        w[f"mixlora.layers.{i}.mlp.moe_gate.weight"] = ROUTER_STD * torch.randn(
            N_EXPERTS, d, generator=g
        )
        for p in ATTN:
            out_f, in_f = getattr(layer.self_attn, p).weight.shape
            pre = f"mixlora.layers.{i}.self_attn.{p}"
            w[f"{pre}.lora_A.weight"] = A_STD * torch.randn(R, in_f, generator=g)
            w[f"{pre}.lora_B.weight"] = B_STD * torch.randn(out_f, R, generator=g)
        for p in FFN:
            out_f, in_f = getattr(layer.mlp, p).weight.shape
            for e in range(N_EXPERTS):
                pre = f"mixlora.layers.{i}.mlp.{p}.experts.{e}"
                w[f"{pre}.lora_A.weight"] = A_STD * torch.randn(R, in_f, generator=g)
                w[f"{pre}.lora_B.weight"] = B_STD * torch.randn(out_f, R, generator=g)
    return w


def inputs():
    expected = load_file(os.path.join(BASE, "expected.safetensors"))
    ids, mask = expected["input_ids"], expected["attention_mask"]
    labels = ids.clone()
    labels[mask == 0] = -100
    # predicted from a padding query (fully masked attention row): implementation-defined
    labels[1, 3] = -100
    return ids, mask, labels


def load_balance_loss(router_logits, attention_mask, num_experts, top_k):
    """Re-implementation of MoE-PEFT moe_peft/adapters/mixlora/model.py:
    _mixtral_load_balancing_loss_func (the HF Mixtral formula) with an attention mask.
    router_logits: [num_layers * B * L, N], the layers' [B*L, N] logits concatenated in
    layer order (moe_peft/common/moe_utils.py:unpack_router_logits). Returns the unscaled
    loss and its two factors (tokens_per_expert [top_k, N], router_prob_per_expert [N])."""
    probs = torch.softmax(router_logits, dim=-1)
    selected = torch.topk(probs, top_k, dim=-1).indices
    onehot = F.one_hot(selected, num_experts).float()  # [T, k, N]
    layers = router_logits.shape[0] // attention_mask.numel()
    m = attention_mask.reshape(1, -1).expand(layers, -1).reshape(-1).to(probs.dtype)
    tokens_per_expert = (onehot * m[:, None, None]).sum(0) / m.sum()  # [k, N]
    router_prob = (probs * m[:, None]).sum(0) / m.sum()  # [N]
    return num_experts * (tokens_per_expert * router_prob[None, :]).sum(), (
        tokens_per_expert,
        router_prob,
    )


def routing_margins(logits, real):
    """Smallest gap between the top_k-th and the next probability on real tokens."""
    p = torch.softmax(logits[real], -1).sort(-1, descending=True).values
    return (p[:, TOP_K - 1] - p[:, TOP_K]).min().item()


# --------------------------------------------------------------------------- official run


class Official:
    """The official `mixlora` package on the HF model, with the router logits captured.

    inject_adapter_in_model replaces `layer.mlp.forward` by MixLoraSparseMoe.forward; here
    that forward is wrapped once more to record its input and output and to recompute the
    router logits exactly as MixLoraSparseMoe.forward does (F.linear(h, gate_) in the
    adapter dtype, float32) so that the load-balance loss can be taken on them and its
    gradient flows into gate_ and the hidden states like in MoE-PEFT."""

    def __init__(self, adapter_dir):
        config, weights = mixlora.load_adapter_weights(
            adapter_dir, device="cpu", dtype=torch.float32
        )
        self.config = config
        self.model = load_base()
        mixlora.inject_adapter_in_model(self.model, config, weights)
        self.model.eval()
        self.params = {}
        self.loras = {}
        self.captured = [dict() for _ in self.model.model.layers]
        for i, layer in enumerate(self.model.model.layers):
            for p in ATTN:
                lin = getattr(layer.self_attn, p)
                self.loras[f"mixlora.layers.{i}.self_attn.{p}"] = lin
            moe = layer.mlp.mixlora_moes[config.adapter_name_]
            # gate_ is a plain tensor (the loaded one), not a Parameter
            moe.gate_.requires_grad_(True)
            self.params[f"mixlora.layers.{i}.mlp.moe_gate.weight"] = moe.gate_
            for p in FFN:
                for e in range(config.num_experts_):
                    lin = moe.experts_[f"experts.{e}.{p}"]
                    # the experts live in a plain dict, not registered as submodules:
                    # model.eval() does not reach their dropout, which stays active
                    lin.eval()
                    self.loras[f"mixlora.layers.{i}.mlp.{p}.experts.{e}"] = lin
            layer.mlp.forward = self._wrap(moe, self.captured[i])
        for pre, lin in self.loras.items():
            self.params[f"{pre}.lora_A.weight"] = lin.lora_A.weight
            self.params[f"{pre}.lora_B.weight"] = lin.lora_B.weight
            if lin.use_dora_:
                self.params[f"{pre}.lora_magnitude_vector"] = lin.magnitude_vector_

    @staticmethod
    def _wrap(moe, store):
        inner = moe.forward

        def forward(hidden_states):
            h = hidden_states.reshape(-1, hidden_states.shape[-1]).to(moe.dtype_)
            store["input"] = h
            store["router_logits"] = F.linear(h, moe.gate_.to(h))
            out = inner(hidden_states)
            store["output"] = out.reshape(-1, out.shape[-1])
            return out

        return forward

    def run(self, ids, mask, labels):
        for p in self.params.values():
            p.grad = None
        out = self.model(input_ids=ids, attention_mask=mask, labels=labels)
        logits_all = torch.cat([c["router_logits"] for c in self.captured], 0)
        aux_raw, factors = load_balance_loss(
            logits_all, mask, self.config.num_experts_, self.config.top_k_
        )
        aux = self.config.router_aux_loss_coef_ * aux_raw
        total = out.loss + aux
        total.backward()
        return out, aux_raw, aux, total, factors


# --------------------------------------------------------------------------- MoE-PEFT run


def moe_peft_run(adapter_dir, ids, mask, labels, efficient, magnitudes=None):
    """The same adapter through MoE-PEFT's own model (its LLaMA, attention and loss).
    Dropout is made an exact identity with p = 1e-30 (both Lora and LoraFunction assert
    p > 0; 1 - 1e-30 == 1 in float64)."""
    import moe_peft
    from moe_peft.common import LLMBatchConfig, LLMModelInput

    model = moe_peft.LLMModel.from_pretrained(
        BASE, device="cpu", load_dtype=torch.float32
    )
    model.load_adapter(adapter_dir, "default")
    loras = {}
    for i, layer in enumerate(model.model_.layers_):
        attn, mlp = layer.state_dict()
        for p in ATTN:
            loras[f"mixlora.layers.{i}.self_attn.{p}"] = attn[p].loras_["default"]
        for p in FFN:
            for e in range(N_EXPERTS):
                loras[f"mixlora.layers.{i}.mlp.{p}.experts.{e}"] = mlp[p].loras_[
                    f"moe.default.experts.{e}"
                ]
    for lora in loras.values():
        lora.dropout_.p = 1e-30
    if magnitudes:
        with torch.no_grad():
            for key, m in magnitudes.items():
                loras[key.rsplit(".", 1)[0]].magnitude_vector_.copy_(m)
    params = dict(model.get_adapter_weight_dict("default"))
    for pre, lora in loras.items():
        if lora.use_dora_:
            params[f"{pre}.lora_magnitude_vector"] = lora.magnitude_vector_
    args = LLMModelInput(
        batch_configs_=[LLMBatchConfig("default", 0, ids.shape[0])],
        batch_tokens_=ids.tolist(),
        batch_labels_=labels.tolist(),
        batch_masks_=mask.tolist(),
        gradient_checkpoint_="none",
        efficient_operator_=efficient,
        inference_mode_=False,
    )
    out = model.forward(args)[0]
    total = out.loss + out.aux_loss
    total.backward()
    return out, total, {k: v.grad for k, v in params.items()}


# --------------------------------------------------------------------------- main fixtures


def describe(tensors, meanings):
    keys = {}
    for k in sorted(tensors):
        t = tensors[k]
        meaning = None
        for prefix, text in meanings:
            if fnmatch.fnmatchcase(k, prefix):
                meaning = text
                break
        assert meaning is not None, k
        keys[k] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                   "meaning": meaning}
    return keys


def build_variant(name, use_dora, use_rslora, seed0):
    path = os.path.join(FIX, name)
    os.makedirs(path, exist_ok=True)
    ids, mask, labels = inputs()
    real = mask.reshape(-1).bool()
    base = load_base()
    cfg = official_config(use_dora, use_rslora)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=4)

    # pick the first seed whose routing decisions on real tokens have a safe margin
    for seed in range(seed0, seed0 + 50):
        weights = random_weights(base, seed)
        torch.save(weights, os.path.join(path, "adapter_model.bin"))
        off = Official(path)
        # official reload: what the official loaders compute from adapter_model.bin alone
        with torch.no_grad():
            reload_logits = off.model(input_ids=ids, attention_mask=mask).logits.float()
        magnitudes = {}
        if use_dora:
            # Neither official package saves or loads the DoRA magnitude: on load it is
            # reset to ||W + s B A|| (row norms), which makes the DoRA scale exactly 1.
            # Perturb it so the fixture exercises the DoRA formula; it is stored under a
            # project-extension key.
            g = torch.Generator().manual_seed(seed + 7)
            with torch.no_grad():
                for key, p in off.params.items():
                    if key.endswith("lora_magnitude_vector"):
                        p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                        magnitudes[key] = p.detach().clone()
        with torch.no_grad():
            off.model(input_ids=ids, attention_mask=mask)
        margins = [routing_margins(c["router_logits"], real) for c in off.captured]
        choices = [
            torch.topk(c["router_logits"][real], TOP_K, -1).indices for c in off.captured
        ]
        distinct_pairs = {tuple(sorted(r.tolist())) for c in choices for r in c}
        every_expert_used = all(
            torch.unique(c).numel() == N_EXPERTS for c in choices
        )
        if (
            min(margins) > MARGIN
            and every_expert_used
            and len(distinct_pairs) >= 4
            and not torch.equal(choices[0], choices[1])
        ):
            break
    else:
        raise RuntimeError("no seed with clear routing")
    print(name, "seed", seed, "margins", [round(m, 4) for m in margins],
          "expert pairs", sorted(distinct_pairs))

    out, aux_raw, aux, total, (tpe, rpe) = off.run(ids, mask, labels)

    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "token_mask": real.to(torch.int64),
        "logits": out.logits.detach().float().contiguous(),
        "loss.lm": out.loss.detach().float().reshape([]),
        "loss.aux": aux.detach().float().reshape([]),
        "loss.aux_unscaled": aux_raw.detach().float().reshape([]),
        "loss.total": total.detach().float().reshape([]),
        "aux.tokens_per_expert": tpe.detach().contiguous(),
        "aux.router_prob_per_expert": rpe.detach().contiguous(),
    }
    if use_dora:
        tensors["reload.logits"] = reload_logits.contiguous()
    for i, c in enumerate(off.captured):
        logits = c["router_logits"].detach()
        probs = torch.softmax(logits, dim=1, dtype=torch.float32)
        w, sel = torch.topk(probs, TOP_K, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        tensors[f"layers.{i}.mlp.input"] = c["input"].detach().contiguous()
        tensors[f"layers.{i}.mlp.output"] = c["output"].detach().contiguous()
        tensors[f"layers.{i}.router.logits"] = logits.contiguous()
        tensors[f"layers.{i}.router.probs"] = probs.contiguous()
        tensors[f"layers.{i}.router.topk_indices"] = sel.to(torch.int64).contiguous()
        tensors[f"layers.{i}.router.topk_weights"] = w.contiguous()
    for key, p in off.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
        tensors["grad." + key] = p.grad.detach().float().contiguous()

    # weights file for the Rust side: same keys as adapter_model.bin (+ magnitudes)
    st = {k: v.contiguous() for k, v in weights.items()}
    st.update(magnitudes)
    save_file(st, os.path.join(path, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    save_file(tensors, os.path.join(path, "expected.safetensors"))

    # ------------------------------------------------------------------ cross-checks
    report = {}
    off2 = Official(path)  # fresh official load of the files just written
    with torch.no_grad():
        report["official_reload_vs_before_perturbation"] = (
            off2.model(input_ids=ids, attention_mask=mask).logits - reload_logits
        ).abs().max().item()
    if use_dora:
        # without magnitude perturbation DoRA == LoRA (scale m/||W+sBA|| == 1 exactly)
        plain = dict(cfg)
        plain.pop("use_dora")
        tmp = os.path.join(path, "_tmp_plain")
        os.makedirs(tmp, exist_ok=True)
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(plain, f)
        torch.save(weights, os.path.join(tmp, "adapter_model.bin"))
        off3 = Official(tmp)
        with torch.no_grad():
            report["dora_reload_vs_plain_lora"] = (
                off3.model(input_ids=ids, attention_mask=mask).logits - reload_logits
            ).abs().max().item()
        for fn in os.listdir(tmp):
            os.remove(os.path.join(tmp, fn))
        os.rmdir(tmp)
    sel_real = out.logits.detach()[mask.bool()]
    try:
        for efficient in (False, True):
            mp_out, mp_total, mp_grads = moe_peft_run(
                path, ids, mask, labels, efficient, magnitudes
            )
            tag = "moe_peft_efficient" if efficient else "moe_peft_compatible"
            grad_rel = max(
                ((mp_grads[k] - tensors["grad." + k]).abs().max()
                 / tensors["grad." + k].abs().max()).item()
                for k in off.params
            )
            report[tag] = {
                "logits_max_abs_diff_real_tokens": (
                    mp_out.logits.detach()[mask.bool()] - sel_real
                ).abs().max().item(),
                "lm_loss_diff": (mp_out.loss - out.loss).abs().item(),
                "aux_loss_diff": (mp_out.aux_loss - aux).abs().item(),
                "total_diff": (mp_total - total).abs().item(),
                "grad_max_rel_diff": grad_rel,
            }
    except ImportError as err:  # moe_peft not installed: skip the cross-check
        report["moe_peft"] = f"not run: {err}"
    print(name, json.dumps(report, indent=1))

    meanings = [
        ("input_ids", "token ids [B, L]; row 1 left-padded by 3 with id 0 (same as "
         "tiny-llama/expected.safetensors)"),
        ("attention_mask", "1 = real token, 0 = padding [B, L]"),
        ("labels", "LM targets (unshifted, like HF `labels`): input_ids with -100 on padding "
         "and on [1, 3] (the first real token of the padded row, predicted from a padding "
         "query whose attention row is fully masked)"),
        ("token_mask", "attention_mask flattened [B*L]: the rows of the per-token router "
         "records to compare (padding rows depend on how attention treats a fully masked "
         "query row and are not meaningful)"),
        ("logits", "final logits [B, L, vocab] (official mixlora forward, dropout off); "
         "compare only where attention_mask == 1"),
        ("loss.lm", "HF causal-LM loss: shift by one, cross-entropy, mean over targets != -100"),
        ("loss.aux", "router_aux_loss_coef (0.001, the default) * loss.aux_unscaled"),
        ("loss.aux_unscaled", "MoE-PEFT _mixtral_load_balancing_loss_func over the router "
         "logits of ALL layers concatenated ([layers*B*L, N]), padding masked: "
         "N * sum_{k,i} tokens_per_expert[k,i] * router_prob_per_expert[i]"),
        ("loss.total", "loss.lm + loss.aux (what is backpropagated)"),
        ("aux.tokens_per_expert", "[top_k, N]: over real tokens of all layers, fraction whose "
         "k-th choice is expert i (rows sum to 1; summed over k = fraction of tokens that "
         "picked expert i)"),
        ("aux.router_prob_per_expert", "[N]: mean softmax probability of expert i over real "
         "tokens of all layers"),
        ("reload.logits", "DoRA only: logits of a fresh official load of adapter_model.bin "
         "(magnitudes reset to ||W + s B A|| by the loader, so DoRA scale == 1 and this equals "
         "plain MixLoRA with the same A/B)"),
        ("layers.*.mlp.input", "MoE block input [B*L, hidden] = post_attention_layernorm "
         "output, flattened batch-major; this is the router input and every expert's input"),
        ("layers.*.mlp.output", "MoE block output [B*L, hidden] = sum over the top-k experts of "
         "w_k * E_k(x) (added to the residual by the decoder layer)"),
        ("layers.*.router.logits", "[B*L, N] fp32: x @ moe_gate.weight^T"),
        ("layers.*.router.probs", "[B*L, N]: softmax over all N experts (fp32)"),
        ("layers.*.router.topk_indices", "[B*L, top_k] int64: torch.topk of probs, in "
         "descending probability order"),
        ("layers.*.router.topk_weights", "[B*L, top_k]: the top-k probs renormalised to sum 1"),
        ("grad.*", "gradient of loss.total w.r.t. the adapter tensor of that official key "
         "(one backward; base model frozen)"),
    ]
    desc = {
        "source": "tools/reference/mixlora/make_mixlora_fixtures.py",
        "reference": "mixlora 0.2.3 forward (inference integration) + MoE-PEFT 2.0.2 "
                     "load-balance loss re-implemented on its router logits; cross-checked "
                     "against MoE-PEFT's own LLMModel.forward",
        "base_model": "../tiny-llama (float32)",
        "adapter_config": cfg,
        "effective_config": {
            "scaling": ALPHA / math.sqrt(R) if use_rslora else ALPHA / R,
            "router_aux_loss_coef": AUX_COEF,
            "router_init_range (not used: weights are random)": 0.02,
            "jitter_noise": 0.0,
            "dropout_used_for_expected_values": 0.0,
            "note_lora_dropout": "the file says 0.05 because both official loaders assert "
                                 "lora_dropout > 0; every expected value is computed with "
                                 "dropout disabled (inference semantics)",
        },
        "weight_seed": seed,
        "weight_init_for_fixture": {"lora_A_std": A_STD, "lora_B_std": B_STD,
                                    "moe_gate_std": ROUTER_STD},
        "official_weights_file": "adapter_model.bin (torch.save of a dict key -> tensor; "
                                 "mixlora.model.load_adapter_weights and "
                                 "moe_peft.LLMModel.load_adapter read it)",
        "adapter_model.safetensors": "same keys and tensors as adapter_model.bin" + (
            "; plus DoRA magnitudes under '<module>.lora_magnitude_vector' [out] "
            "(PROJECT EXTENSION: no official code writes or reads magnitudes)"
            if use_dora else ""),
        "weight_keys": {
            "attention": "mixlora.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight",
            "router": "mixlora.layers.{i}.mlp.moe_gate.weight [N, hidden]",
            "experts": "mixlora.layers.{i}.mlp.{gate,down,up}_proj.experts.{e}."
                       "lora_{A,B}.weight",
            "orientation": "lora_A [r, in], lora_B [out, r] (nn.Linear [out, in])",
        },
        "routing_margin_min": min(margins),
        "cross_checks": report,
        "keys": describe(tensors, meanings),
    }
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(desc, f, indent=2)
    return report


# --------------------------------------------------------------------------- MoE-PEFT variants


def build_moe_variants(seed):
    """One FFN layer (the tiny LLaMA's layer-0 MLP) with MoE-PEFT's routers, computed by
    MoE-PEFT's own classes through LLMModel.init_adapter + layer.mlp_.forward."""
    import moe_peft
    from moe_peft.adapters import lora_config_factory, router_loss_factory
    from moe_peft.common import LLMBatchConfig, LLMModelInput, collect_plugin_router_logtis

    path = os.path.join(FIX, "tiny-llama-moe-variants")
    os.makedirs(path, exist_ok=True)
    base = load_base()
    mlp0 = base.model.layers[0].mlp
    d = base.config.hidden_size
    B, L = 2, 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, d, generator=g)
    mask = torch.ones(B, L, dtype=torch.int64)
    mask[1, :2] = 0
    cot = torch.randn(B, L, d, generator=g)
    experts = {}
    for p in FFN:
        out_f, in_f = getattr(mlp0, p).weight.shape
        for e in range(N_EXPERTS):
            experts[f"experts.{e}.{p}.lora_A.weight"] = A_STD * torch.randn(
                R, in_f, generator=g)
            experts[f"experts.{e}.{p}.lora_B.weight"] = B_STD * torch.randn(
                out_f, R, generator=g)
    tensors = {"input": x, "attention_mask": mask, "cotangent": cot}
    tensors.update(experts)
    common = {
        "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.05, "num_experts": N_EXPERTS,
        "target_modules": ["gate_proj", "down_proj", "up_proj"], "act_fn": "silu",
    }
    cfgs = {
        "switch": dict(common, peft_type="MIXLORA", routing_strategy="mixlora-switch",
                       expert_capacity=3, jitter_noise=0.0, router_aux_loss_coef=0.001,
                       router_z_loss_coef=0.001, ffn_dropout=0.0),
        "dynamic": dict(common, peft_type="MIXLORA", routing_strategy="mixlora-dynamic",
                        top_p=0.8, temperature=0.0, jitter_noise=0.0,
                        router_aux_loss_coef=0.001),
        "loramoe": dict(common, peft_type="LORAMOE", routing_strategy="loramoe"),
        "mola": dict(common, peft_type="MOLA", routing_strategy="mola", top_k=TOP_K,
                     router_loss=True, router_aux_loss_coef=0.001),
    }
    # router weights (official key names of layer 0; std chosen for varied routing)
    routers = {
        "switch": {"mixlora.layers.0.mlp.moe_gate.weight": 0.3},
        "dynamic": {"mixlora.layers.0.mlp.moe_gate.weight": 0.35},
        "loramoe": {f"loramoe.layers.0.mlp.{p}.moe_gate.weight": 0.1 for p in FFN},
        "mola": {f"mola.layers.0.mlp.{p}.moe_gate.weight": 0.3 for p in FFN},
    }
    in_dim = {p: getattr(mlp0, p).weight.shape[1] for p in FFN}
    report = {}
    descs = {}
    model = moe_peft.LLMModel.from_pretrained(BASE, device="cpu", load_dtype=torch.float32)
    for name, cfg in cfgs.items():
        prefix = {"switch": "mixlora", "dynamic": "mixlora"}.get(name, name)
        weights = {}
        for key, std in routers[name].items():
            proj = key.split(".")[-3] if name in ("loramoe", "mola") else None
            cols = in_dim[proj] if proj else d
            weights[key] = std * torch.randn(N_EXPERTS, cols, generator=g)
            tensors[f"{name}.{key}"] = weights[key]
        for i in range(len(model.model_.layers_)):
            for key, val in list(weights.items()):
                if key.startswith(f"{prefix}.layers.0."):
                    weights[key.replace(".layers.0.", f".layers.{i}.")] = val
            for k, v in experts.items():
                e, p = k.split(".")[1], k.split(".")[2]
                ab = k.split(".")[3]
                weights[f"{prefix}.layers.{i}.mlp.{p}.experts.{e}.{ab}.weight"] = v
        config = lora_config_factory(cfg)
        config.adapter_name = name
        model.init_adapter(config, weights)
        layer = model.model_.layers_[0]
        attn, mlp = layer.state_dict()
        params = {}
        for p in FFN:
            lin = mlp[p]
            for e in range(N_EXPERTS):
                lora = lin.loras_[f"moe.{name}.experts.{e}"]
                lora.dropout_.p = 1e-30
                params[f"experts.{e}.{p}.lora_A.weight"] = lora.lora_a_.weight
                params[f"experts.{e}.{p}.lora_B.weight"] = lora.lora_b_.weight
            if name in ("loramoe", "mola"):
                params[f"{name}.{prefix}.layers.0.mlp.{p}.moe_gate.weight"] = (
                    lin.moes_[name].gate_.weight)
        if name in ("switch", "dynamic"):
            params[f"{name}.mixlora.layers.0.mlp.moe_gate.weight"] = (
                layer.mlp_.moes_[name].gate_.weight)
        for t in params.values():
            t.grad = None
        xin = x.clone().requires_grad_(True)
        args = LLMModelInput(
            batch_configs_=[LLMBatchConfig(name, 0, B)], batch_masks_=mask.tolist(),
            gradient_checkpoint_="none", efficient_operator_=False, inference_mode_=False,
            output_router_logits_=True,
        )
        y, router_logits = layer.mlp_.forward(xin, args)
        router_logits = collect_plugin_router_logtis(router_logits, args, layer)[0]
        loss_fn = router_loss_factory(config)
        aux = loss_fn(router_logits, mask) if loss_fn is not None else None
        objective = (y * cot).sum() + (aux if aux is not None else 0.0)
        objective.backward()
        tensors[f"{name}.output"] = y.detach().contiguous()
        tensors[f"{name}.router_logits"] = router_logits.detach().contiguous()
        if aux is not None:
            tensors[f"{name}.aux_loss"] = aux.detach().reshape([])
        if name == "switch":
            from moe_peft.adapters.mixlora.model import (
                _switch_load_balancing_loss_func, _switch_router_z_loss_func)
            z = _switch_router_z_loss_func(router_logits.detach())
            lb = _switch_load_balancing_loss_func(torch.softmax(router_logits.detach(), -1))
            tensors["switch.z_loss_unscaled"] = z.reshape([])
            tensors["switch.balance_loss_unscaled"] = lb.reshape([])
            # eval-mode (inference_mode_) output: MoE-PEFT returns the block INPUT unchanged
            args_inf = LLMModelInput(
                batch_configs_=[LLMBatchConfig(name, 0, B)], batch_masks_=mask.tolist(),
                gradient_checkpoint_="none", efficient_operator_=False,
                inference_mode_=True, output_router_logits_=True)
            with torch.no_grad():
                y_inf, _ = layer.mlp_.forward(x.clone(), args_inf)
            report["switch_inference_output_equals_input"] = torch.equal(y_inf, x)
        tensors[f"{name}.grad.input"] = xin.grad.detach().contiguous()
        for k, t in params.items():
            gk = k if k.startswith(name + ".") else f"{name}.grad.{k}"
            if k.startswith(name + "."):
                gk = f"{name}.grad.{k[len(name) + 1:]}"
            tensors[gk] = t.grad.detach().contiguous()
        # efficient operator path (same numbers expected, different kernels)
        for t in params.values():
            t.grad = None
        args_eff = LLMModelInput(
            batch_configs_=[LLMBatchConfig(name, 0, B)], batch_masks_=mask.tolist(),
            gradient_checkpoint_="none", efficient_operator_=True, inference_mode_=False,
            output_router_logits_=True)
        y2, _ = layer.mlp_.forward(x.clone(), args_eff)
        report[f"{name}_efficient_vs_compatible"] = (y2 - y).abs().max().item()
        if name == "switch":
            rl = router_logits.detach().reshape(B, L, N_EXPERTS)
            sel = rl.argmax(-1)
            onehot = F.one_hot(sel, N_EXPERTS)
            kept = (torch.cumsum(onehot, 1) <= cfg["expert_capacity"]) & onehot.bool()
            tensors["switch.expert_index"] = sel.to(torch.int64).contiguous()
            tensors["switch.kept"] = kept.any(-1).to(torch.int64).contiguous()
            report["switch_dropped_tokens"] = int((~kept.any(-1)).sum())
            lg = rl.sort(-1, descending=True).values
            report["switch_min_argmax_logit_gap"] = (lg[..., 0] - lg[..., 1]).min().item()
        if name == "dynamic":
            p = torch.softmax(router_logits.detach(), -1).sort(-1, descending=True).values
            cs = p.cumsum(-1)
            report["dynamic_min_cumsum_distance_to_top_p"] = (cs - 0.8).abs().min().item()
            n_sel = ((cs > 0.8).long().argmax(-1) + 1)
            report["dynamic_experts_per_token_histogram"] = torch.bincount(
                n_sel, minlength=N_EXPERTS + 1).tolist()
        if name == "mola":
            lg = router_logits.detach().sort(-1, descending=True).values
            report["mola_min_topk_logit_gap"] = (lg[:, TOP_K - 1] - lg[:, TOP_K]).min().item()
        descs[name] = cfg
        model.unload_adapter(name)
    report["plain_reimplementation_max_abs_diff"] = verify_reimplementation(
        tensors, mlp0, cfgs)
    hist = report["dynamic_experts_per_token_histogram"]
    if not (
        report["switch_min_argmax_logit_gap"] > LOGIT_GAP
        and report["switch_dropped_tokens"] >= 1
        and report["dynamic_min_cumsum_distance_to_top_p"] > MARGIN
        and hist[1] >= 1 and sum(1 for c in hist if c > 0) >= 2
        and report["mola_min_topk_logit_gap"] > LOGIT_GAP
    ):
        return False
    print("moe-variants seed", seed, json.dumps(report, indent=1))
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(path, "expected.safetensors"))

    keys = {}
    for k in sorted(tensors):
        t = tensors[k]
        keys[k] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    desc = {
        "source": "tools/reference/mixlora/make_mixlora_fixtures.py:build_moe_variants",
        "reference": "computed by MoE-PEFT 2.0.2's own classes (PyPI moe_peft): "
                     "LLMModel.init_adapter + LlamaDecoderLayer.mlp_.forward (FeedForward) with "
                     "efficient_operator_=False, inference_mode_=False (training semantics), "
                     "dropout made identity (p=1e-30), jitter 0",
        "base_ffn": "tiny-llama/model.safetensors model.layers.0.mlp.{gate,up,down}_proj "
                    "(frozen, act silu)",
        "configs (adapter_config-style dicts given to lora_config_factory)": descs,
        "scaling": ALPHA / R,
        "layout": {
            "input": "[B=2, L=8, hidden] FFN input (what post_attention_layernorm would give)",
            "attention_mask": "[2, 8]; row 1 has 2 padding positions (only the mixlora "
                              "top-k and MoLA aux losses use it; switch/dynamic losses ignore "
                              "the mask, LoRAMoE has no loss)",
            "cotangent": "[2, 8, hidden]; every variant's backward is of "
                         "sum(output * cotangent) + aux_loss (if the variant has one)",
            "experts.{e}.{proj}.lora_{A,B}.weight": "expert LoRA weights SHARED by all four "
                "variants; official keys: {prefix}.layers.0.mlp.{proj}.experts.{e}."
                "lora_{A,B}.weight with prefix mixlora (switch, dynamic), loramoe, mola",
            "{variant}.<official router key>": "router weights [N, in]: switch/dynamic: one "
                "router on the FFN input (mixlora.layers.0.mlp.moe_gate.weight); loramoe/mola: "
                "one router per projection on that projection's input "
                "({prefix}.layers.0.mlp.{proj}.moe_gate.weight, down_proj router is [N, 112])",
            "{variant}.output": "[2, 8, hidden] FFN block output (before the residual add)",
            "{variant}.router_logits": "switch: [B*L, N]; dynamic: [B*L, N]; loramoe: absent "
                "from the loss, [3*B*L, N] (gate, down, up order, as "
                "collect_plugin_router_logtis concatenates the mlp projections: gate_proj, "
                "down_proj, up_proj); mola: [3*B*L, N] same order",
            "{variant}.aux_loss": "the variant's router loss as MoE-PEFT computes it "
                "(coefficients included): switch = z_coef*z + aux_coef*balance; dynamic = "
                "aux_coef*balance(top-p); mola = aux_coef*mixtral(top-k, masked); loramoe: none",
            "switch.z_loss_unscaled / switch.balance_loss_unscaled": "the two switch terms "
                "before their coefficients",
            "switch.expert_index / switch.kept": "[B, L] argmax expert, and 1 if the token fit "
                "in the expert capacity (cumsum over the sequence <= expert_capacity); "
                "a dropped token outputs max_prob * input (identity expert)",
            "{variant}.grad.input": "gradient w.r.t. the FFN input",
            "{variant}.grad.<key>": "gradient w.r.t. that expert or router tensor",
        },
        "seed": seed,
        "checks": report,
        "keys": keys,
    }
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(desc, f, indent=2)
    return True


def verify_reimplementation(t, mlp, cfgs):
    """Plain PyTorch versions of the four MoE-PEFT routers (the formulas of
    /work/notes/mixlora-reference.md), checked against what MoE-PEFT computed."""
    W = {p: getattr(mlp, p).weight.detach() for p in FFN}
    s = ALPHA / R
    x, mask = t["input"], t["attention_mask"]
    B, L, d = x.shape
    n = N_EXPERTS

    def lora(p, e, inp):
        a, b = t[f"experts.{e}.{p}.lora_A.weight"], t[f"experts.{e}.{p}.lora_B.weight"]
        return s * (inp @ a.T) @ b.T

    def expert(e, inp):  # MixLoRA expert: shared frozen W1/W2/W3 + the expert's LoRAs
        g = inp @ W["gate_proj"].T + lora("gate_proj", e, inp)
        u = inp @ W["up_proj"].T + lora("up_proj", e, inp)
        h = F.silu(g) * u
        return h @ W["down_proj"].T + lora("down_proj", e, h)

    diffs = {}
    xf = x.reshape(-1, d)
    # switch: top-1, capacity per sequence, dropped tokens pass x through, times max prob
    c = cfgs["switch"]
    logits = x @ t["switch.mixlora.layers.0.mlp.moe_gate.weight"].T  # [B, L, N]
    probs = logits.softmax(-1)
    onehot = F.one_hot(probs.argmax(-1), n)
    keep = onehot * (onehot.cumsum(1) <= c["expert_capacity"])
    out = x.clone()
    for e in range(n):
        rows = keep[..., e].bool()
        out[rows] = expert(e, x[rows])
    out = probs.max(-1, keepdim=True).values * out
    lf = logits.reshape(-1, n)
    z = (torch.logsumexp(lf, -1) ** 2).mean()
    bal = n * (F.one_hot(lf.argmax(-1), n).float().mean(0) * lf.softmax(-1).mean(0)).sum()
    aux = c["router_z_loss_coef"] * z + c["router_aux_loss_coef"] * bal
    diffs["switch"] = max((out - t["switch.output"]).abs().max().item(),
                          (aux - t["switch.aux_loss"]).abs().item())
    # dynamic: keep the smallest prefix of the sorted probs whose sum exceeds top_p;
    # weights are the raw probabilities (not renormalised)
    c = cfgs["dynamic"]
    probs = (xf @ t["dynamic.mixlora.layers.0.mlp.moe_gate.weight"].T).softmax(-1)
    sp, si = probs.sort(-1, descending=True)
    kept_sorted = (sp.cumsum(-1) - sp) <= c["top_p"]  # exclusive prefix sum <= top_p
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter(1, si, kept_sorted)
    out = torch.zeros_like(xf)
    for e in range(n):
        rows = kept[:, e]
        out[rows] += probs[rows, e, None] * expert(e, xf[rows])
    bal = n * (kept.float().mean(0) * probs.mean(0)).sum()
    diffs["dynamic"] = max(
        (out.reshape(B, L, d) - t["dynamic.output"]).abs().max().item(),
        (c["router_aux_loss_coef"] * bal - t["dynamic.aux_loss"]).abs().item())

    # LoRAMoE / MoLA: a router on each projection's own input, LoRA experts added to the
    # frozen projection (dense softmax, resp. renormalised top-k)
    def plugin_proj(kind, p, inp):
        pre = "loramoe" if kind == "loramoe" else "mola"
        pl = inp @ t[f"{kind}.{pre}.layers.0.mlp.{p}.moe_gate.weight"].T
        w = pl.softmax(-1)
        if kind == "mola":
            top = torch.topk(w, TOP_K, -1)
            w = torch.zeros_like(w).scatter(1, top.indices,
                                            top.values / top.values.sum(-1, keepdim=True))
        y = inp @ W[p].T
        for e in range(n):
            y = y + w[:, e, None] * lora(p, e, inp)
        return y, pl

    for kind in ("loramoe", "mola"):
        g, lg = plugin_proj(kind, "gate_proj", xf)
        u, lu = plugin_proj(kind, "up_proj", xf)
        y, ld = plugin_proj(kind, "down_proj", F.silu(g) * u)
        diffs[kind] = (y.reshape(B, L, d) - t[f"{kind}.output"]).abs().max().item()
        if kind == "mola":
            aux, _ = load_balance_loss(torch.cat([lg, ld, lu], 0), mask, n, TOP_K)
            diffs["mola"] = max(diffs["mola"], (cfgs["mola"]["router_aux_loss_coef"] * aux
                                                - t["mola.aux_loss"]).abs().item())
    return diffs


# --------------------------------------------------------------------------- --check


def check():
    """Recompute every MixLoRA fixture from its files with the official forward."""
    ids, mask, labels = inputs()
    for name in VARIANTS:
        path = os.path.join(FIX, name)
        exp = load_file(os.path.join(path, "expected.safetensors"))
        st = load_file(os.path.join(path, "adapter_model.safetensors"))
        bin_w = torch.load(os.path.join(path, "adapter_model.bin"), weights_only=True)
        assert all(torch.equal(st[k], v) for k, v in bin_w.items()), "bin != safetensors"
        off = Official(path)
        with torch.no_grad():
            for key, p in off.params.items():
                if key.endswith("lora_magnitude_vector"):
                    p.copy_(st[key])
        out, aux_raw, aux, total, _ = off.run(ids, mask, labels)
        real = mask.bool()
        diffs = {
            "logits": (out.logits.detach()[real] - exp["logits"][real]).abs().max().item(),
            "loss.lm": abs(out.loss.item() - exp["loss.lm"].item()),
            "loss.aux": abs(aux.item() - exp["loss.aux"].item()),
            "grad_rel": max(
                ((p.grad - exp["grad." + k]).abs().max() / exp["grad." + k].abs().max()).item()
                for k, p in off.params.items()),
        }
        print(name, diffs)


if __name__ == "__main__":
    torch.manual_seed(0)
    if "--check" in sys.argv:
        check()
    else:
        if "--moe-variants-only" not in sys.argv:
            for variant, (dora, rslora, seed0) in VARIANTS.items():
                build_variant(variant, dora, rslora, seed0)
        for seed in range(11, 60):
            if build_moe_variants(seed):
                break
        else:
            raise RuntimeError("no seed with clear routing for the MoE-PEFT variants")
