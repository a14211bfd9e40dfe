"""Parity fixtures for the MobileNet zoo in crates/mobiletl.

For each architecture (V2, V3-Large, V3-Small) and each naming (torchvision, timm) this
builds a random-weight model of reduced width (so the committed files stay small; the
channel-rounding rules of each library at that width are part of what is tested), with
random BatchNorm statistics, and writes to crates/mobiletl/tests/fixtures/:

  <name>.weights.safetensors  the state_dict in the library's own names, as float16
                              (values are rounded to float16 first, so the float32
                              model that produced the outputs has exactly these weights)
  <name>.io.safetensors       input [2, 3, 64, 64]; eval-mode logits; the output of one
                              block (eval); train-mode logits and every BatchNorm's running
                              mean/var after one train-mode forward (prefix `train.`)

plus imagenet_classes.txt next to the crate's sources, and a width-1.0 name/shape
manifest per model (names_<name>.json) so the Rust tests check the full-size layouts too.

    python make_fixtures.py
"""

import json
import pathlib

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "crates/mobiletl/tests/fixtures"

# (fixture name, constructor, module whose output is saved as `block`, width-1.0 constructor)
MODELS = [
    (
        "mobilenet_v2_tv",
        lambda: torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10, dropout=0.0),
        lambda m: m.features[5],
        lambda: torchvision.models.mobilenet_v2(),
    ),
    (
        "mobilenet_v3_large_tv",
        lambda: torchvision.models.mobilenet_v3_large(width_mult=0.5, num_classes=10, dropout=0.0),
        lambda m: m.features[5],
        lambda: torchvision.models.mobilenet_v3_large(),
    ),
    (
        "mobilenet_v3_small_tv",
        lambda: torchvision.models.mobilenet_v3_small(width_mult=0.5, num_classes=10, dropout=0.0),
        lambda m: m.features[4],
        lambda: torchvision.models.mobilenet_v3_small(),
    ),
    (
        "mobilenet_v2_timm",
        lambda: timm.create_model("mobilenetv2_050", num_classes=10),
        lambda m: m.blocks[2][1],
        lambda: timm.create_model("mobilenetv2_100"),
    ),
    (
        "mobilenet_v3_large_timm",
        # timm registers no 0.5-width V3-Large; its generator builds one with timm's rules.
        lambda: timm.models.mobilenetv3._gen_mobilenet_v3(
            "mobilenetv3_large_100", 0.5, num_classes=10
        ),
        lambda m: m.blocks[2][1],
        lambda: timm.create_model("mobilenetv3_large_100"),
    ),
    (
        "mobilenet_v3_small_timm",
        lambda: timm.create_model("mobilenetv3_small_050", num_classes=10),
        lambda m: m.blocks[3][0],
        lambda: timm.create_model("mobilenetv3_small_100"),
    ),
]


def randomize(model, gen):
    """Random weights (rounded to float16) and BatchNorm statistics far from identity.

    Convolution and linear weights are drawn N(0, 1/fan_in) so activations keep unit scale
    through the depth and the logits are O(1) whatever each library's own init does."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
                module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())


def main():
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    for name, build, block_of, build_full in MODELS:
        model = build()
        randomize(model, gen)
        model.eval()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        weights = {
            k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()
        }
        save_file(weights, FIXTURES / f"{name}.weights.safetensors")

        captured = {}
        hook = block_of(model).register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("block", out.detach().clone())
        )
        with torch.no_grad():
            logits = model(x)
        hook.remove()

        model.train()
        with torch.no_grad():
            train_logits = model(x)
        io = {
            "input": x.contiguous(),
            "logits": logits.contiguous(),
            "block": captured["block"].contiguous(),
            "train.logits": train_logits.contiguous(),
        }
        for key, value in model.state_dict().items():
            if key.endswith("running_mean") or key.endswith("running_var"):
                io[f"train.{key}"] = value.detach().clone().contiguous()
        save_file(io, FIXTURES / f"{name}.io.safetensors")

        full = build_full()
        manifest = {k: list(v.shape) for k, v in full.state_dict().items()}
        params = sum(p.numel() for p in full.parameters())
        (FIXTURES / f"names_{name}.json").write_text(
            json.dumps({"params": params, "tensors": manifest}, indent=0)
        )
        print(
            f"{name}: {sum(p.numel() for p in model.parameters())} params (full {params}), "
            f"logits std {logits.std():.3f}, block {tuple(captured['block'].shape)}"
        )

    write_preprocess_fixture()
    classes = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"]
    (ROOT / "crates/mobiletl/src/imagenet_classes.txt").write_text("\n".join(classes) + "\n")


def write_preprocess_fixture():
    """A small synthetic PNG and torchvision's preprocessing of it (resize shorter side to
    40 with antialiased bilinear, centre crop 32, ImageNet normalisation)."""
    gen = np.random.default_rng(7)
    h, w = 53, 71
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (xx * 255 / w),
            (yy * 255 / h),
            ((xx + yy) % 32) * 8,
        ],
        axis=-1,
    ) + gen.normal(0, 12, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    path = FIXTURES / "image.png"
    Image.fromarray(img).save(path)
    from torchvision import transforms

    t = transforms.Compose(
        [
            transforms.Resize(40, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    tensor = t(Image.open(path).convert("RGB")).unsqueeze(0)
    save_file({"input": tensor.contiguous()}, FIXTURES / "image.preprocessed.safetensors")


if __name__ == "__main__":
    main()
