"""PEFT LoRA and DoRA adapters on the tiny LLaMA fixture, and what PEFT computes with
them, for crates/mixlora/tests/it/adapters.rs.

Writes crates/mixlora/tests/fixtures/tiny-llama-<kind>/ with PEFT's own
adapter_config.json + adapter_model.safetensors (B non-zero, so the adapter changes the
output) and expected.safetensors:
  input_ids, attention_mask  as in tiny-llama/expected.safetensors
  labels         int64 [2, 9]   next-token targets, -100 on padding and on the token
                                 predicted from a padding position
  logits         f32 [2, 9, vocab]
  loss           f32 []         causal-LM loss of transformers (shifted, mean over targets)
  grad.<name>    f32            gradient of the loss for every adapter tensor, by PEFT key

Usage: python make_adapter_fixtures.py  (after make_fixtures.py; pins in requirements.txt)
"""

import json
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "../../../crates/mixlora/tests/fixtures")


def build(kind):
    base = LlamaForCausalLM.from_pretrained(os.path.join(FIX, "tiny-llama"))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_dora=(kind == "dora"),
        use_rslora=(kind == "dora"),
    )
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    path = os.path.join(FIX, f"tiny-llama-{kind}")
    model.save_pretrained(path)
    # Keep the fixture free of this machine's paths and of PEFT's model-card template.
    config_path = os.path.join(path, "adapter_config.json")
    with open(config_path) as f:
        saved_config = json.load(f)
    saved_config["base_model_name_or_path"] = "../tiny-llama"
    with open(config_path, "w") as f:
        json.dump(saved_config, f, indent=2, sort_keys=True)
    if os.path.exists(os.path.join(path, "README.md")):
        os.remove(os.path.join(path, "README.md"))
    expected = load_file(os.path.join(FIX, "tiny-llama", "expected.safetensors"))
    ids, mask = expected["input_ids"], expected["attention_mask"]
    labels = ids.clone()
    labels[mask == 0] = -100
    # The first real token of the left-padded row is predicted from a padding query,
    # whose output depends on how an attention kernel treats a fully masked row
    # (transformers' SDPA path and eager path differ): not a target.
    labels[1, 3] = -100
    model.train()  # dropout is 0; DoRA detaches its norm in training mode
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape([]),
    }
    saved = load_file(os.path.join(path, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    for key in saved:
        # PEFT saves `...lora_A.weight` for the parameter `...lora_A.default.weight`.
        pname = key.replace("lora_A.weight", "lora_A.default.weight").replace(
            "lora_B.weight", "lora_B.default.weight").replace(
            "lora_magnitude_vector", "lora_magnitude_vector.default.weight")
        tensors["grad." + key] = params[pname].grad.float().contiguous()
    save_file(tensors, os.path.join(path, "expected.safetensors"))
    print(kind, "loss", out.loss.item(), "adapter tensors", len(saved))
    # The saved adapter loads back in PEFT to the same logits.
    again = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(os.path.join(FIX, "tiny-llama")), path
    )
    again.eval()
    with torch.no_grad():
        diff = (again(input_ids=ids, attention_mask=mask).logits - out.logits).abs().max().item()
    print(kind, "reload max diff", diff)


if __name__ == "__main__":
    build("lora")
    build("dora")
