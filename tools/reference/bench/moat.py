"""PyTorch CPU timings of `cargo xtask bench moat`: the MOAT architecture written in
PyTorch with the shapes of crates/moat (random weights; timing only, no parity claim):
tiny-MOAT-0 at 256 and MOAT-0 at 224, forward at batch 1 and 8 (eval, no grad), one
training step at batch 8 (train-mode BN, label-smoothed cross-entropy, backward, AdamW),
and tiny-MOAT-0 forward at 512 and 1024 with global attention and with 16x16 / 8x8
windows.

There is no official PyTorch MOAT; this module follows deeplab2's moat_blocks.py /
moat_attention.py the same way the Rust crate does (pre-norm MBConv, SE only in stages
1-2, attention with a gathered relative position bias, no MLP). Prints one JSON object on
its last line; the warm-up and median rule match xtask's `time_interleaved`.
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from timing import median_ms

VARIANTS = {
    # stem, depths, channels, survival (drop path is inactive in eval; survival 1 here)
    "tiny-moat-0": (32, (2, 3, 7, 2), (32, 64, 128, 256)),
    "moat-0": (64, (2, 3, 7, 2), (96, 192, 384, 768)),
}


class MBConv(nn.Module):
    def __init__(self, cin, cout, stride, se):
        super().__init__()
        inner = 4 * cout
        self.pre_norm = nn.BatchNorm2d(cin, eps=1e-3, momentum=0.01)
        self.expand = nn.Conv2d(cin, inner, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(inner, eps=1e-3, momentum=0.01)
        self.dw = nn.Conv2d(inner, inner, 3, stride, 1, groups=inner, bias=False)
        self.dw_norm = nn.BatchNorm2d(inner, eps=1e-3, momentum=0.01)
        self.se = None
        if se:
            squeeze = max(1, int(0.25 * cout))
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(inner, squeeze, 1),
                nn.SiLU(),
                nn.Conv2d(squeeze, inner, 1),
                nn.Sigmoid(),
            )
        self.shrink = nn.Conv2d(inner, cout, 1)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.expand(self.pre_norm(x))
        h = F.gelu(self.expand_norm(h))
        h = F.gelu(self.dw_norm(self.dw(h)))
        if self.se is not None:
            h = h * self.se(h)
        h = self.shrink(h)
        s = x
        if self.pool is not None:
            s = self.pool(s)
        if self.shortcut is not None:
            s = self.shortcut(s)
        return s + h


class Attention(nn.Module):
    def __init__(self, channels, table_size, window):
        super().__init__()
        self.heads = channels // 32
        self.window = window
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.o = nn.Linear(channels, channels)
        p = table_size
        self.table = nn.Parameter(torch.randn(self.heads, 2 * p - 1, 2 * p - 1) * 0.02)

    def bias(self, h, w):
        # Resize the table to the grid, then gather by relative offset (every forward,
        # as the Rust side does).
        table = F.interpolate(
            self.table[None], size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=False
        )[0]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + h - 1
        dx = xs[:, None] - xs[None, :] + w - 1
        return table[:, dy, dx]

    def forward(self, x):
        b, c, h, w = x.shape
        wh, ww = self.window or (h, w)
        nh, nw = h // wh, w // ww
        t = x.reshape(b, c, nh, wh, nw, ww).permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, c)
        n = wh * ww

        def split(y):
            return y.reshape(-1, n, self.heads, 32).transpose(1, 2)

        q = split(self.q(t)) * 32 ** -0.5
        k, v = split(self.k(t)), split(self.v(t))
        logits = q @ k.transpose(-1, -2) + self.bias(wh, ww)[None]
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
        out = self.o(out)
        return out.reshape(b, nh, nw, wh, ww, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class MoatBlock(nn.Module):
    def __init__(self, cin, cout, stride, table_size, window):
        super().__init__()
        self.mbconv = MBConv(cin, cout, stride, se=False)
        self.norm = nn.LayerNorm(cout, eps=1e-5)
        self.attention = Attention(cout, table_size, window)

    def forward(self, x):
        x = self.mbconv(x)
        h = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.attention(h)


class Moat(nn.Module):
    def __init__(self, stem, depths, channels, windows=(None, None), classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1),
            nn.BatchNorm2d(stem, eps=1e-3, momentum=0.01),
            nn.GELU(),
            nn.Conv2d(stem, stem, 3, 1, 1),
        )
        blocks = []
        cin = stem
        for s, (d, c) in enumerate(zip(depths, channels)):
            for i in range(d):
                stride = 2 if i == 0 else 1
                if s < 2:
                    blocks.append(MBConv(cin, c, stride, se=True))
                else:
                    blocks.append(MoatBlock(cin, c, stride, (14, 7)[s - 2], windows[s - 2]))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(cin, eps=1e-5)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean((2, 3))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = dict(min_runs=2, max_runs=3, budget_s=2.0) if args.quick else {}
    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    for name, res in (("tiny-moat-0", 256), ("moat-0", 224)):
        stem, depths, channels = VARIANTS[name]
        model = Moat(stem, depths, channels).eval()
        for batch in (1, 8):
            x = torch.randn(batch, 3, res, res)
            with torch.no_grad():
                out[f"{name}/forward_b{batch}"] = median_ms(lambda: model(x), **runs)
        train = Moat(stem, depths, channels).train()
        opt = torch.optim.AdamW(train.parameters(), lr=1e-4, weight_decay=0.05)
        x = torch.randn(8, 3, res, res)
        y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(train(x), y, label_smoothing=0.1)
            loss.backward()
            opt.step()

        out[f"{name}/train_step_b8"] = median_ms(
            step, warmup=1, min_runs=2 if name == "moat-0" else 3, max_runs=10, budget_s=20.0
        )
    stem, depths, channels = VARIANTS["tiny-moat-0"]
    for res in (512, 1024):
        for label, windows in (("global", (None, None)), ("window", ((16, 16), (8, 8)))):
            model = Moat(stem, depths, channels, windows).eval()
            x = torch.randn(1, 3, res, res)
            with torch.no_grad():
                out[f"tiny-moat-0/{label}_{res}"] = median_ms(
                    lambda: model(x), warmup=1, min_runs=2, max_runs=5, budget_s=10.0
                )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
