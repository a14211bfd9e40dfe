"""Reference gradients of MobileTL's 1-bit activation backward (crates/mobiletl/tests/it/masked_activation.rs).

MobileTL (Chiang et al.) keeps only a binary mask for the backward of each activation:
ReLU6 uses its exact derivative 1[0 < x < 6]; Hard-Swish is approximated by the step
dx = dy * 1[x >= 0]. There is no official code, so the approximation is written here as a
PyTorch autograd.Function that saves nothing but the boolean mask, and the fixture holds
inputs, upstream gradients, outputs and input gradients for the Rust tests.

    python masked_activation.py --out ../../../crates/mobiletl/tests/fixtures/masked_activation.safetensors
"""

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


class HardSwishStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x >= 0)
        return F.hardswish(x)

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved_tensors
        return dy * mask.to(dy.dtype)


class Relu6Mask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward((x > 0) & (x < 6))
        return F.relu6(x)

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved_tensors
        return dy * mask.to(dy.dtype)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    tensors = {}
    # An odd element count (not a multiple of 8) exercises the last partial mask byte.
    shape = (2, 5, 7, 3)
    x = torch.randn(shape, generator=g) * 4.0
    dy = torch.randn(shape, generator=g)
    for name, fn in (("hard_swish_step", HardSwishStep.apply), ("relu6", Relu6Mask.apply)):
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        y.backward(dy)
        tensors[f"{name}/y"] = y.detach()
        tensors[f"{name}/dx"] = xr.grad.detach()
    # The exact Hard-Swish gradient, to show what the approximation changes.
    xr = x.clone().requires_grad_(True)
    F.hardswish(xr).backward(dy)
    tensors["hard_swish_exact/dx"] = xr.grad.detach()
    tensors["x"] = x
    tensors["dy"] = dy
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out,
              metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main()
