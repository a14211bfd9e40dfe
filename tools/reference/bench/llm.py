"""The workload of `cargo xtask bench llm` in transformers + PEFT on PyTorch CPU: a
SmolLM2-135M-shaped LlamaForCausalLM with random weights, forward at batch 1 and 4, and
one LoRA (r 8, alpha 16, all seven projections) training step at batch 4 with AdamW on
the adapters. Prints one JSON line of median milliseconds and peak-RSS growth (MB).

Usage: python llm.py [--tokens 256] [--quick]
"""

import argparse
import json
import resource

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from timing import median_ms


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=4 if a.quick else 30, num_attention_heads=9,
        num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, max_position_embeddings=8192,
    )
    model = LlamaForCausalLM(config).eval()
    budget = 5.0 if a.quick else 60.0
    runs = dict(min_runs=2 if a.quick else 3, max_runs=3 if a.quick else 10, budget_s=budget)
    ids1 = (torch.arange(a.tokens) * 7919 + 13) % config.vocab_size
    ids1 = ids1.reshape(1, -1)
    ids4 = ((torch.arange(4 * a.tokens) * 7919 + 13) % config.vocab_size).reshape(4, -1)
    out = {}
    with torch.no_grad():
        out["forward_b1"] = median_ms(lambda: model(input_ids=ids1), warmup=1, **runs)
        before = peak_rss_mb()
        out["forward_b4"] = median_ms(lambda: model(input_ids=ids4), warmup=1, **runs)
        out["forward_b4_peak_mb"] = peak_rss_mb() - before
    lora = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    lora.train()
    optim = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        loss = lora(input_ids=ids4, labels=ids4).loss
        loss.backward()
        optim.step()
        optim.zero_grad()

    before = peak_rss_mb()
    out["lora_step_b4"] = median_ms(step, warmup=1, min_runs=runs["min_runs"], max_runs=min(5, runs["max_runs"]), budget_s=budget)
    out["lora_step_b4_peak_mb"] = peak_rss_mb() - before
    print(json.dumps(out))


if __name__ == "__main__":
    main()
