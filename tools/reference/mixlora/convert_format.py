"""Format-only conversion of a MixLoRA adapter folder between the official layout
(`adapter_model.bin`, a torch.save'd dict, what TUDB-Labs `mixlora` and MoE-PEFT read)
and `adapter_model.safetensors` (what the Rust crate reads and writes). Keys, shapes and
values are unchanged; `adapter_config.json` is kept as it is.

Usage:
  python convert_format.py to-safetensors DIR   # adapter_model.bin -> adapter_model.safetensors
  python convert_format.py to-bin DIR           # adapter_model.safetensors -> adapter_model.bin
                                                # (DoRA magnitudes, which the official code
                                                # neither saves nor loads, are left out)
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("to-safetensors", "to-bin"):
        sys.exit(__doc__)
    direction, folder = sys.argv[1], sys.argv[2]
    bin_path = os.path.join(folder, "adapter_model.bin")
    st_path = os.path.join(folder, "adapter_model.safetensors")
    if direction == "to-safetensors":
        weights = torch.load(bin_path, map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, st_path)
        print(f"wrote {st_path} ({len(weights)} tensors)")
    else:
        weights = load_file(st_path)
        kept = {k: v for k, v in weights.items() if not k.endswith("lora_magnitude_vector")}
        torch.save(kept, bin_path)
        print(f"wrote {bin_path} ({len(kept)} tensors, {len(weights) - len(kept)} magnitudes left out)")


if __name__ == "__main__":
    main()
