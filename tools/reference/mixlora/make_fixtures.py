"""Tiny random LLaMA-family checkpoints in Hugging Face format, and what transformers
computes on them, for crates/mixlora/tests/it/parity.rs.

Writes crates/mixlora/tests/fixtures/<name>/{config.json, model.safetensors} (float32,
as `save_pretrained` writes them) and <name>/expected.safetensors with:
  input_ids      int64 [2, 9]   second row left-padded by 3
  attention_mask int64 [2, 9]
  logits         f32   [2, 9, vocab]  (padding positions are not compared)
  greedy         int64 [1, 6]   greedy continuation of the first row, unpadded

Models:
  tiny-llama: LLaMA-3 style (GQA 4/2, rope_theta 500000, llama3 rope scaling), untied head
  tiny-qwen2: Qwen2 (q/k/v bias, GQA 4/1), tied embeddings

Usage: python make_fixtures.py   (from any directory; pins in requirements.txt)
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "../../../crates/mixlora/tests/fixtures")


def randomise(model, std):
    # Larger than the default init (0.02) so that logits are far from uniform and every
    # layer matters; norms get random gains around 1.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def build(name, model):
    torch.manual_seed(0)
    randomise(model, 0.15)
    model.eval()
    path = os.path.join(OUT, name)
    model.save_pretrained(path, safe_serialization=True)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, :3] = 0
    ids[1, :3] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        greedy = model.generate(
            ids[:1], attention_mask=mask[:1], max_new_tokens=6, do_sample=False,
            pad_token_id=0,
        )[:, 9:]
    save_file(
        {
            "input_ids": ids.contiguous(),
            "attention_mask": mask,
            "logits": logits.contiguous(),
            "greedy": greedy.contiguous(),
        },
        os.path.join(path, "expected.safetensors"),
    )
    print(name, "logits", tuple(logits.shape), "greedy", greedy.tolist())


def main():
    os.makedirs(OUT, exist_ok=True)
    llama = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    build("tiny-llama", LlamaForCausalLM(llama))
    qwen = Qwen2Config(
        vocab_size=80,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    build("tiny-qwen2", Qwen2ForCausalLM(qwen))
    for name in ("tiny-llama", "tiny-qwen2"):
        with open(os.path.join(OUT, name, "config.json")) as f:
            print(name, json.load(f).get("architectures"))


if __name__ == "__main__":
    main()
