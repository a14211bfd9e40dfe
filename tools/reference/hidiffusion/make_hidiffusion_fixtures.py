"""Official HiDiffusion parity fixtures (part 2) for crates/hidiffusion/tests.

Loads the tiny pipelines written by make_fixtures.py (run that first) with from_pretrained
from a temporary copy that has the real CLIP tokenizers, calls the official
`hidiffusion.apply_hidiffusion(pipe, ...)` (hidiffusion 0.1.10) and runs short samplers at
resolutions above the tiny models' base latent size (8x8), recording

  fixtures/hidiffusion.safetensors   latents, UNet inputs/outputs at chosen steps, final
                                     latents (and the turbo run's ancestral noise)
  fixtures/hidiffusion.json          per run: settings, what was patched, the resolved
                                     thresholds of every patched module, the MSW-MSA shift
                                     draws (in call order, with the module that drew each),
                                     and a per-step shape trace of the U-Net blocks

Determinism: the official window attention draws `torch.rand(1)` once per call of every
patched transformer block. This script replaces `torch` inside hidiffusion.hidiffusion by
a proxy whose rand() returns R_CYCLE[k % 4] for the k-th draw of a run (k counts from 0 at
the start of each run, in call order); everything else is the real torch.

Presets: the official code picks its T1/T2 ratios from the absolute latent size (SD 1.5:
< 256 -> 'sd15_1024', SDXL: < 512 -> 'sdxl_2048' + aggressive mode), which tiny latents
always hit. Runs marked `patched_preset` overwrite entries of the module-level dicts
`switching_threshold_ratio_dict` / `is_aggressive_raunet` for the duration of that run so
that the large-resolution branches (T2 pooling for SD 1.5, non-aggressive SDXL 4096) are
exercised; the json says exactly what was patched.

Usage: HF_HUB_OFFLINE=1 python make_hidiffusion_fixtures.py
"""

import copy
import inspect
import json
import os
import re
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_grad_enabled(False)

import hidiffusion.hidiffusion as hd  # noqa: E402
from hidiffusion import apply_hidiffusion  # noqa: E402

OUT = common.OUT
R_CYCLE = [0.1, 0.3, 0.6, 0.9]
PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def c(t):
    return t.detach().to(torch.float32).clone().contiguous()


class ShiftDraws:
    """Stands in for `torch` inside hidiffusion.hidiffusion; rand() is deterministic."""

    def __init__(self, names):
        self.names = names  # id(module) -> qualified name
        self.draws = []
        self.step = 0

    def install(self):
        real = torch
        me = self

        class Proxy(types.ModuleType):
            def __getattr__(self, name):
                return getattr(real, name)

        proxy = Proxy("torch")
        proxy.rand = me.rand
        self._saved = hd.torch
        hd.torch = proxy

    def uninstall(self):
        hd.torch = self._saved

    def rand(self, *args, **kwargs):
        k = len(self.draws)
        r = R_CYCLE[k % len(R_CYCLE)]
        frame = inspect.currentframe().f_back
        module = frame.f_locals.get("self")
        hs = frame.f_locals.get("hidden_states")
        name = self.names.get(id(module), "?")
        # the same arithmetic as the official forward, for the record
        N = hs.shape[1]
        ori_h, ori_w = module.info["size"]
        ratio = round(((ori_h * ori_w) / N) ** 0.5)
        H, W = -(-ori_h // ratio), -(-ori_w // ratio)
        win = (-(-H // 2), -(-W // 2))
        q = 0 if r <= 0.25 else 1 if r <= 0.5 else 2 if r <= 0.75 else 3
        shift = (win[0] // 4 * q, win[1] // 4 * q)
        self.draws.append(
            {
                "k": k,
                "step": self.step,
                "module": name,
                "r": r,
                "tokens": N,
                "latent_size": [ori_h, ori_w],
                "downsample_ratio": ratio,
                "H": H,
                "W": W,
                "window": list(win),
                "shift": list(shift),
                "rolled": shift[0] > 0,
                "odd_resize": H % 2 != 0 or W % 2 != 0,
            }
        )
        return torch.tensor([r], dtype=torch.float32)


class Tracer:
    """Per-call spatial sizes of the U-Net blocks (shape trace) and step bookkeeping."""

    def __init__(self, pipe, draws, record_steps):
        self.pipe, self.draws, self.record_steps = pipe, draws, set(record_steps)
        self.trace, self.cur = [], None
        self.unet_in, self.unet_out, self.timesteps = {}, {}, []
        self.handles = []
        unet = pipe.unet
        step = pipe.scheduler.step

        def wrapped(model_output, timestep, sample, *a, **kw):
            i = len(self.timesteps)
            out = step(model_output, timestep, sample, *a, **kw)
            self.timesteps.append(float(timestep))
            self.draws.step = i + 1
            return out

        pipe.scheduler.step = wrapped

        def pre(module, args, kwargs):
            i = len(self.timesteps)
            self.cur = {"step": i, "latent": list(args[0].shape[2:]), "down_out": [], "down_skips": [],
                        "mid": None, "up_out": []}
            if i in self.record_steps:
                self.unet_in[i] = c(args[0])

        def post(module, args, kwargs, out):
            i = len(self.timesteps)
            self.trace.append(self.cur)
            if i in self.record_steps:
                self.unet_out[i] = c(out[0])

        self.handles.append(unet.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(unet.register_forward_hook(post, with_kwargs=True))
        for bi, blk in enumerate(unet.down_blocks):
            self.handles.append(blk.register_forward_hook(self._down(bi)))
        for bi, blk in enumerate(unet.up_blocks):
            self.handles.append(blk.register_forward_hook(self._up(bi)))
        self.handles.append(unet.mid_block.register_forward_hook(self._mid))

    def _down(self, bi):
        def hook(module, args, out):
            hidden, states = out
            self.cur["down_out"].append(list(hidden.shape[2:]))
            self.cur["down_skips"].append([list(s.shape[2:]) for s in states])

        return hook

    def _up(self, bi):
        def hook(module, args, out):
            self.cur["up_out"].append(list(out.shape[2:]))

        return hook

    def _mid(self, module, args, out):
        self.cur["mid"] = list(out.shape[2:])

    def close(self):
        for h in self.handles:
            h.remove()
        del self.pipe.scheduler.step


def patched_modules(unet):
    res = {}
    for name, m in unet.named_modules():
        if hasattr(m, "_parent"):
            d = {"class": type(m).__name__, "parent": m._parent.__name__}
            for a in ("switching_threshold_ratio", "model", "T1_ratio", "T1", "T1_start", "T1_end",
                      "aggressive_raunet", "max_timestep", "timestep"):
                if a in m.__dict__ or (hasattr(type(m), a) and a not in ("model",)):
                    v = getattr(m, a, None)
                    if v is not None:
                        d[a] = v
            res[name] = d
    return res


def run(t, desc, key, name, pipe_cls, *, latent_hw, steps, record_steps, guidance=7.5,
        negative=NEGATIVE, apply_kwargs=None, preset_patch=None, as_name=None, scheduler=None,
        ancestral_seed=None):
    pipe, _ = common.load_pipeline(name, pipe_cls, as_name=as_name)
    if scheduler is not None:
        pipe.scheduler = scheduler
    apply_kwargs = apply_kwargs or {}
    saved = (copy.deepcopy(hd.switching_threshold_ratio_dict), hd.is_aggressive_raunet)
    if preset_patch:
        for k, v in preset_patch.get("switching_threshold_ratio_dict", {}).items():
            hd.switching_threshold_ratio_dict[k] = dict(v)
        if "is_aggressive_raunet" in preset_patch:
            hd.is_aggressive_raunet = preset_patch["is_aggressive_raunet"]
    apply_hidiffusion(pipe, **apply_kwargs)
    names = {id(m): n for n, m in pipe.unet.named_modules()}
    draws = ShiftDraws(names)
    draws.install()
    tracer = Tracer(pipe, draws, record_steps)
    h, w = latent_hw
    lat0 = randn((1, 4, h, w), 300 + len(desc))
    noises = None
    ea_mod = None
    if ancestral_seed is not None:
        from diffusers.schedulers import scheduling_euler_ancestral_discrete as ea_mod

        noises = [randn((1, 4, h, w), ancestral_seed + i) for i in range(steps)]
        it = iter(noises)
        orig_randn = ea_mod.randn_tensor
        ea_mod.randn_tensor = lambda shape, **kw: next(it).reshape(shape).clone()
    try:
        kwargs = dict(
            prompt=PROMPT,
            negative_prompt=negative,
            height=h * pipe.vae_scale_factor,
            width=w * pipe.vae_scale_factor,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=lat0.clone(),
            output_type="latent",
        )
        if scheduler is None:
            kwargs["eta"] = 0.0
        final = pipe(**kwargs).images
    finally:
        tracer.close()
        draws.uninstall()
        hd.switching_threshold_ratio_dict.clear()
        hd.switching_threshold_ratio_dict.update(saved[0])
        hd.is_aggressive_raunet = saved[1]
        if ea_mod is not None:
            ea_mod.randn_tensor = orig_randn
    assert len(tracer.timesteps) == steps
    t[f"{key}_latents_init"] = lat0
    t[f"{key}_final_latents"] = c(final)
    for i in sorted(record_steps):
        x = tracer.unet_in[i]
        if x.shape[0] == 2:  # CFG: cat([latents] * 2); both halves are the same
            assert torch.equal(x[0], x[1])
            x = x[:1].clone()
        t[f"{key}_step{i}_unet_input"] = x
        t[f"{key}_step{i}_unet_out"] = tracer.unet_out[i]
    if noises is not None:
        t[f"{key}_ancestral_noise"] = torch.stack(noises)
    for k_, v in t.items():
        assert torch.isfinite(v).all(), k_
    mods = patched_modules(pipe.unet)
    desc[key] = {
        "pipeline_folder": name,
        "name_or_path": pipe.name_or_path,
        "apply_hidiffusion_kwargs": apply_kwargs,
        "preset_patch": preset_patch,
        "prompt": PROMPT,
        "negative_prompt": negative,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "latent_hw": [h, w],
        "pixel_hw": [h * pipe.vae_scale_factor, w * pipe.vae_scale_factor],
        "scheduler": {"class": type(pipe.scheduler).__name__, **dict(pipe.scheduler.config)},
        "eta": 0.0 if scheduler is None else None,
        "timesteps": tracer.timesteps,
        "recorded_steps": sorted(record_steps),
        "unet_num_upsamplers_after_apply": pipe.unet.num_upsamplers,
        "patched_modules_after_run": mods,
        "shift_draws_per_unet_call": len(draws.draws) // steps,
        "shift_draws": {
            "columns": list(draws.draws[0].keys()) if draws.draws else [],
            "rows": [list(d.values()) for d in draws.draws],
        },
        "shape_trace": tracer.trace,
    }
    print(key, "final std", float(final.std()), "draws", len(draws.draws),
          "down sizes per step", [tr["down_out"] for tr in tracer.trace])
    return pipe


def main():
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    t, desc = {}, {}
    sd15_2048 = {"switching_threshold_ratio_dict": {"sd15_1024": {"T1_ratio": 0.7, "T2_ratio": 0.3}}}
    sdxl_4096 = {
        "switching_threshold_ratio_dict": {"sdxl_2048": {"T1_ratio": 0.7, "T2_ratio": 0.3}},
        "is_aggressive_raunet": False,
    }
    # SD 1.5: RAU-Net (RAD on steps < int(0.4 N)) + MSW-MSA, the 'sd15_1024' preset as is.
    run(t, desc, "sd15_t1", "sd15-tiny", StableDiffusionPipeline,
        latent_hw=(32, 32), steps=10, record_steps=[1, 6])
    # SD 1.5 with the 'sd15_2048' ratios (T1 0.7, T2 0.3) forced at a tiny size: T2 pooling.
    run(t, desc, "sd15_t2", "sd15-tiny", StableDiffusionPipeline,
        latent_hw=(32, 40), steps=10, record_steps=[1, 4], preset_patch=sd15_2048)
    # Odd latent height: MSW-MSA bicubic resize to 2*window and back, RAD ceil sizes, and
    # (with the 'sd15_2048' ratios) avg_pool2d ceil_mode over an odd map (9x10 -> 5x5).
    run(t, desc, "sd15_odd", "sd15-tiny", StableDiffusionPipeline,
        latent_hw=(33, 40), steps=5, record_steps=[0], preset_patch=sd15_2048)
    # Each mechanism alone.
    run(t, desc, "sd15_raunet_only", "sd15-tiny", StableDiffusionPipeline,
        latent_hw=(32, 32), steps=10, record_steps=[1], apply_kwargs={"apply_window_attn": False})
    run(t, desc, "sd15_mswmsa_only", "sd15-tiny", StableDiffusionPipeline,
        latent_hw=(32, 32), steps=10, record_steps=[1], apply_kwargs={"apply_raunet": False})
    # SDXL below 4096 px: aggressive schedule (RAD steps < int(8/50 N), pool steps
    # [int(8/50 N), int(0.4 N))); negative_prompt None -> zeroed negative embeddings.
    # 36x44: level 1 is 18x22, pooled 9x11 (odd: window bicubic path), RAD 18x22 -> 5x6
    # and the RAU nearest resize 5x6 -> 18x22 (not an integer factor).
    run(t, desc, "sdxl_aggressive", "sdxl-tiny", StableDiffusionXLPipeline,
        latent_hw=(36, 44), steps=10, record_steps=[0, 2, 6], negative=None)
    # SDXL 4096 branch forced: non-aggressive, pool T1 0.7, RAD T2 0.3.
    run(t, desc, "sdxl_4096", "sdxl-tiny", StableDiffusionXLPipeline,
        latent_hw=(32, 48), steps=10, record_steps=[1, 4], preset_patch=sdxl_4096)
    # SDXL-turbo branch (chosen by name_or_path == 'stabilityai/sdxl-turbo'): pool only,
    # ratio 0.5, Euler ancestral trailing, guidance 0, ancestral noise recorded.
    run(t, desc, "sdxl_turbo", "sdxl-tiny", StableDiffusionXLPipeline,
        latent_hw=(16, 40), steps=4, record_steps=[0, 2], guidance=0.0, negative=None,
        as_name="stabilityai/sdxl-turbo",
        scheduler=EulerAncestralDiscreteScheduler(**common.SCHED_TURBO), ancestral_seed=400)

    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "hidiffusion.safetensors"))
    os.chmod(os.path.join(OUT, "hidiffusion.safetensors"), 0o644)
    meta = {
        "about": __doc__,
        "r_cycle": R_CYCLE,
        "shift_rule": "r<=0.25 -> 0; r<=0.5 -> win//4; r<=0.75 -> win//4*2; else win//4*3 (per axis); "
        "roll only if shift[0] > 0",
        "keys": {
            "<run>_latents_init": "[1,4,h,w] latents passed to the pipeline (before init_noise_sigma)",
            "<run>_final_latents": "[1,4,h,w] output_type='latent'",
            "<run>_step<i>_unet_input": "[1,4,h,w] UNet sample at step i (after scale_model_input; "
            "with CFG the UNet ran on cat([x, x]) with encoder states cat([negative, positive]))",
            "<run>_step<i>_unet_out": "[b,4,h,w] raw UNet output at step i (b=2 with CFG: uncond first); "
            "the pipeline then uses uncond + g*(cond-uncond)",
            "sdxl_turbo_ancestral_noise": "[steps,1,4,h,w] the noise each Euler-ancestral step added",
        },
        "shapes": {k: list(v.shape) for k, v in t.items()},
        "runs": desc,
    }
    with open(os.path.join(OUT, "hidiffusion.json"), "w", encoding="utf-8") as f:
        f.write(compact_json(meta))
        f.write("\n")


def compact_json(obj):
    """Indented json whose innermost lists/objects of scalars stay on one line."""
    text = json.dumps(obj, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    scalar = r'(?:-?[0-9.eE+-]+|true|false|null|"[^"\\]*")'
    text = re.sub(r"\[\s*(" + scalar + r"(?:,\s*" + scalar + r")*)\s*\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    for _ in range(2):  # lists of short lists
        text = re.sub(r"\[\s*(\[[^\[\]\n]*\](?:,\s*\[[^\[\]\n]*\])*)\s*\]",
                      lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    return text


if __name__ == "__main__":
    main()
