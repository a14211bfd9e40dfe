"""The workload of `cargo xtask bench sd` in diffusers on PyTorch CPU: one UNet step of
the Stable Diffusion 1.5 architecture (random weights, float32) on latents [2, 4, H, W]
(classifier-free guidance batch) with [2, 77, 768] text embeddings, plus the time of each
down block, the mid block and each up block (forward hooks). Prints one JSON line:
median milliseconds of the whole step, per-block milliseconds, and peak-RSS growth (MB).

Usage: python sd.py [--latent 64] [--runs 3]   (pins in ../hidiffusion/requirements.txt)
"""

import argparse
import json
import resource
import time

import torch
from diffusers import UNet2DConditionModel

from timing import median_ms

SD15 = dict(
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    sample_size=64,
)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15).eval()
    sample = torch.randn(2, 4, a.latent, a.latent)
    context = torch.randn(2, 77, 768)
    blocks = [("down", i, b) for i, b in enumerate(unet.down_blocks)]
    blocks += [("mid", 0, unet.mid_block)]
    blocks += [("up", i, b) for i, b in enumerate(unet.up_blocks)]
    times = {}
    starts = {}

    def pre(name):
        def hook(module, args):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, out):
            times.setdefault(name, []).append((time.perf_counter() - starts[name]) * 1e3)
        return hook

    for path, i, block in blocks:
        name = f"{path}{i}"
        block.register_forward_pre_hook(pre(name))
        block.register_forward_hook(post(name))

    def step():
        with torch.no_grad():
            unet(sample, 981, encoder_hidden_states=context)

    before = peak_rss_mb()
    ms = median_ms(step, warmup=1, min_runs=a.runs, max_runs=a.runs, budget_s=0.0)
    out = {"step_ms": ms, "peak_mb": peak_rss_mb() - before, "threads": torch.get_num_threads()}
    for name, samples in times.items():
        samples = sorted(samples[1:])  # drop the warm-up
        out[f"{name}_ms"] = samples[len(samples) // 2]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
