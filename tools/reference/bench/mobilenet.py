"""PyTorch CPU timings of `cargo xtask bench mobilenet`: torchvision MobileNetV3-Large,
forward at batch 1 and 8 (eval, no grad), one full fine-tuning step at batch 8 (train-mode
BN, cross-entropy, backward, SGD with momentum 0.9), all at 224x224; and where the batch-8
forward spends its time, per op class (leaf-module hooks, same classes as the Rust side).

Prints one JSON object on its last line. Warm-up and the median rule match
xtask/src/bench/mobilenet.rs.
"""

import json
import statistics
import time

import torch
import torchvision
from torchvision.ops.misc import SqueezeExcitation
from timing import median_ms


def op_class(module):
    if isinstance(module, SqueezeExcitation):
        return "squeeze-excite"
    if isinstance(module, torch.nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        if module.kernel_size == (1, 1):
            return "pointwise conv"
        return "stem conv"
    if isinstance(module, torch.nn.BatchNorm2d):
        return "batch norm"
    if isinstance(module, (torch.nn.ReLU, torch.nn.Hardswish, torch.nn.ReLU6)):
        return "activation"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    return None


def profile(model, x, runs=5):
    """Milliseconds per forward spent in each op class (median over runs)."""
    totals = {}
    starts = {}
    handles = []
    leaves = []
    for module in model.modules():
        cls = op_class(module)
        if cls is None:
            continue
        # Inside an SE gate only the gate as a whole is timed.
        leaves.append((module, cls))
    se_children = {id(m) for s, c in leaves if c == "squeeze-excite" for m in s.modules() if m is not s}
    for module, cls in leaves:
        if id(module) in se_children:
            continue

        def pre(m, _inp, cls=cls):
            starts[id(m)] = time.perf_counter()

        def post(m, _inp, _out, cls=cls):
            totals.setdefault(cls, []).append((time.perf_counter() - starts[id(m)]) * 1e3)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    per_run = []
    with torch.no_grad():
        model(x)
        for _ in range(runs):
            totals.clear()
            t = time.perf_counter()
            model(x)
            total = (time.perf_counter() - t) * 1e3
            row = {k: sum(v) for k, v in totals.items()}
            row["other"] = total - sum(row.values())
            per_run.append(row)
    for h in handles:
        h.remove()
    return {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}


def main():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_large().eval()
    results = {}
    with torch.no_grad():
        x1 = torch.rand(1, 3, 224, 224)
        x8 = torch.rand(8, 3, 224, 224)
        results["forward_b1"] = median_ms(lambda: model(x1), max_runs=20, budget_s=20.0)
        results["forward_b8"] = median_ms(lambda: model(x8), max_runs=20, budget_s=20.0)
        results["profile_b8"] = profile(model, x8)

    train = torchvision.models.mobilenet_v3_large().train()
    optimizer = torch.optim.SGD(train.parameters(), lr=1e-3, momentum=0.9)
    labels = torch.randint(0, 1000, (8,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(train(x8), labels)
        loss.backward()
        optimizer.step()

    def forward_backward():
        train.zero_grad(set_to_none=True)
        loss_fn(train(x8), labels).backward()

    results["train_backward_b8"] = median_ms(forward_backward, warmup=1, min_runs=3, max_runs=10, budget_s=30.0)
    results["train_step_b8"] = median_ms(step, max_runs=20, budget_s=30.0)
    results["torch_version"] = torch.__version__
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
