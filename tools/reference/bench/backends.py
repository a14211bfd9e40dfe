"""PyTorch CPU timings of the workloads of `cargo xtask bench backends`.

Prints one JSON object {workload: median milliseconds} on its last line. Shapes, warm-up
and the median rule match xtask/src/bench/backends.rs.
"""

import json

import torch
from torchvision.models.mobilenetv2 import InvertedResidual
from timing import median_ms


def main():
    torch.manual_seed(0)
    results = {}
    with torch.no_grad():
        x = torch.rand(8, 64, 56, 56)
        w = torch.rand(64, 64, 3, 3)
        results["conv3x3"] = median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1))
        x = torch.rand(8, 144, 56, 56)
        w = torch.rand(144, 1, 3, 3)
        results["depthwise3x3"] = median_ms(
            lambda: torch.nn.functional.conv2d(x, w, padding=1, groups=144)
        )
        a = torch.rand(1024, 1024)
        b = torch.rand(1024, 1024)
        results["matmul1024"] = median_ms(lambda: a @ b)

    block = InvertedResidual(24, 24, 1, 6).train()
    x = torch.rand(8, 24, 56, 56)

    def irb_step():
        xi = x.clone().requires_grad_(True)
        block(xi).sum().backward()
        block.zero_grad(set_to_none=True)

    results["irb_fwd_bwd"] = median_ms(irb_step)
    results["torch_version"] = torch.__version__
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
