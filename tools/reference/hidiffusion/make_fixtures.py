"""Diffusers parity fixtures (part 1) for crates/hidiffusion/tests.

Builds three tiny random-weight Stable Diffusion pipelines in diffusers format and records
what diffusers 0.33.1 / transformers 4.46.3 compute on them:

  fixtures/clip_tokenizer.{safetensors,json}  real CLIP BPE ids (pad EOS and pad "!")
  fixtures/schedulers.{safetensors,json}      DDIM / Euler-ancestral records (no model)
  fixtures/sd15-tiny/   SD 1.5 block structure (conv proj_in, quick_gelu CLIP, DDIM)
  fixtures/sdxl-tiny/   SDXL structure (two text encoders, text_time embedding)
  fixtures/sd21-tiny/   SD 2.1-base differences (linear proj_in, per-block heads, gelu
                        CLIP, pad "!")
  each with expected.safetensors + expected.json.

The pipeline folders are written with save_pretrained(safe_serialization=True) but
without tokenizer/ and tokenizer_2/ (the real vocabulary must not enter the repository;
tests rebuild them from shared/datasets/clip-bpe). model_index.json still lists them.
UNet and text encoders are stored in float16 (sd15-tiny's VAE in float32); every reference
is computed in float32 from the float16-rounded weights (the folders are loaded back with
torch_dtype=float32).

Usage: HF_HUB_OFFLINE=1 python make_fixtures.py   (pins in requirements.txt)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets HF_HUB_OFFLINE)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)

OUT = common.OUT

TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "",
    "Hello, World! It's a DSLR photo; 4K, f/1.8 -- isn't it? (masterpiece:1.2)",
    "A café in Paris at 7:30pm, crème brûlée, NAÏVE Élan",
    "  multiple   spaces\tand\nnewlines  ",
    "12345 3.14159 2024-05-01 #hashtag @user 100%",
    (
        "a highly detailed photograph of a majestic lion standing on a rocky cliff at sunset, "
        "golden hour lighting, dramatic clouds in the sky, the savanna stretching to the horizon, "
        "a herd of elephants walking in the distance, acacia trees, warm colors, shallow depth of "
        "field, shot on a full frame camera with a telephoto lens, award winning wildlife "
        "photography, national geographic, ultra realistic, 8k resolution, sharp focus"
    ),
]

TE_PROMPTS = ["a photo of a cat", "Hello, World! It's a DSLR photo; 4K, f/1.8 -- isn't it?"]
PIPE_PROMPT = "a photo of an astronaut riding a horse on mars"
PIPE_NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
PIPE_STEPS = 4


def c(t):
    return t.detach().to(torch.float32).contiguous() if t.is_floating_point() else t.detach().contiguous()


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


# --------------------------------------------------------------------------- tokenizer


def tokenizer_fixture():
    from transformers import CLIPTokenizerFast

    tok_eos = common.make_tokenizer("<|endoftext|>")
    tok_exc = common.make_tokenizer("!")
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids_eos = tok_eos(TOKENIZER_PROMPTS, **kw).input_ids
    ids_exc = tok_exc(TOKENIZER_PROMPTS, **kw).input_ids
    untruncated = [len(tok_eos(p).input_ids) for p in TOKENIZER_PROMPTS]
    fast = CLIPTokenizerFast.from_pretrained(
        _saved(tok_eos), from_slow=True
    )
    fast_ids = fast(TOKENIZER_PROMPTS, **kw).input_ids
    fast_agrees = [bool(torch.equal(a, b)) for a, b in zip(ids_eos, fast_ids)]
    tokens = [tok_eos.convert_ids_to_tokens(r[: min(n, 77)].tolist()) for r, n in zip(ids_eos, untruncated)]
    save_file(
        {"ids_pad_eos": ids_eos.to(torch.int64).contiguous(), "ids_pad_exclamation": ids_exc.to(torch.int64).contiguous()},
        os.path.join(OUT, "clip_tokenizer.safetensors"),
    )
    try:
        import ftfy  # noqa: F401

        normaliser = "ftfy.fix_text + whitespace_clean + lower"
    except ImportError:
        normaliser = "transformers BasicTokenizer(strip_accents=False, do_split_on_punc=False) (ftfy not installed)"
    desc = {
        "about": "transformers.CLIPTokenizer (slow, as diffusers loads it) built from OpenAI's "
        "bpe_simple_vocab_16e6.txt; padding='max_length', max_length=77, truncation=True.",
        "normaliser": normaliser,
        "keys": {
            "ids_pad_eos": "int64 [n, 77]: pad_token '<|endoftext|>' (49407), SD 1.x tokenizer and SDXL tokenizer/",
            "ids_pad_exclamation": "int64 [n, 77]: pad_token '!' (id 0), SD 2.x tokenizer and SDXL tokenizer_2/",
        },
        "prompts": TOKENIZER_PROMPTS,
        "untruncated_lengths_with_bos_eos": untruncated,
        "fast_tokenizer_agrees": fast_agrees,
        "tokens": tokens,
    }
    _json(desc, os.path.join(OUT, "clip_tokenizer.json"))
    print("tokenizer", ids_eos.shape, untruncated, "fast agrees", fast_agrees)


def _saved(tok):
    import tempfile

    d = tempfile.mkdtemp(prefix="tok-")
    tok.save_pretrained(d)
    return d


# --------------------------------------------------------------------------- schedulers


def scheduler_fixture():
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as ea_mod

    t = {}
    desc = {"configs": {}, "records": {}}
    ddim_cfgs = {
        "ddim_leading": dict(common.SCHED_SD),
        "ddim_trailing": dict(common.SCHED_SD, timestep_spacing="trailing"),
        "ddim_linspace": dict(common.SCHED_SD, timestep_spacing="linspace", steps_offset=0),
    }
    for name, cfg in ddim_cfgs.items():
        desc["configs"][name] = cfg
        s = DDIMScheduler(**cfg)
        for n in (4, 7, 10, 50):
            s.set_timesteps(n)
            t[f"{name}_timesteps_{n}"] = s.timesteps.to(torch.int64).contiguous()
    s = DDIMScheduler(**common.SCHED_SD)
    t["alphas_cumprod"] = c(s.alphas_cumprod)
    desc["records"]["alphas_cumprod"] = "f32 [1000]: cumprod(1 - betas), betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, f32)^2"
    desc["records"]["<cfg>_timesteps_<n>"] = "int64 [n]: scheduler.timesteps after set_timesteps(n)"

    # DDIM steps: 10-step leading schedule, at its first, a middle and its last timestep.
    sample = randn((1, 4, 8, 8), 100)
    model_output = randn((1, 4, 8, 8), 101)
    noise = randn((1, 4, 8, 8), 102)
    t["ddim_step_sample"] = sample
    t["ddim_step_model_output"] = model_output
    t["ddim_step_variance_noise"] = noise
    steps = {}
    for pred in ("epsilon", "v_prediction"):
        for eta in (0.0, 1.0):
            s = DDIMScheduler(**dict(common.SCHED_SD, prediction_type=pred))
            s.set_timesteps(10)
            for ts in (901, 501, 1):
                kw = dict(eta=eta)
                if eta > 0:
                    kw["variance_noise"] = noise
                out = s.step(model_output, ts, sample, **kw)
                key = f"ddim_{pred}_eta{int(eta)}_t{ts}"
                t[key + "_prev_sample"] = c(out.prev_sample)
                t[key + "_pred_original_sample"] = c(out.pred_original_sample)
                steps[key] = {"timestep": ts, "prev_timestep": ts - 100, "eta": eta, "prediction_type": pred}
    desc["records"]["ddim_<pred>_eta<e>_t<t>_{prev_sample,pred_original_sample}"] = (
        "DDIMScheduler(ddim_leading config, prediction_type=<pred>).set_timesteps(10), "
        "step(ddim_step_model_output, t, ddim_step_sample, eta=e, variance_noise=ddim_step_variance_noise if e>0). "
        "t=1 has prev_timestep -99 < 0 -> final_alpha_cumprod = alphas_cumprod[0] (set_alpha_to_one False)."
    )
    desc["ddim_steps"] = steps

    # Euler ancestral: SDXL-turbo's config (trailing) and the SD-style config (leading, offset 1)
    ea_cfgs = {
        "euler_a_turbo": dict(common.SCHED_TURBO),
        "euler_a_leading": dict(common.SCHED_TURBO, timestep_spacing="leading", steps_offset=1),
        "euler_a_linspace": dict(common.SCHED_TURBO, timestep_spacing="linspace", steps_offset=0),
    }
    ea_noise = randn((1, 4, 8, 8), 103)
    t["euler_a_step_noise"] = ea_noise
    orig_randn = ea_mod.randn_tensor
    ea_mod.randn_tensor = lambda shape, **kw: ea_noise.reshape(shape).clone()
    ea_desc = {}
    try:
        for name, cfg in ea_cfgs.items():
            desc["configs"][name] = cfg
            ea_desc[name] = {}
            for n in (1, 2, 4, 10):
                s = EulerAncestralDiscreteScheduler(**cfg)
                s.set_timesteps(n)
                t[f"{name}_timesteps_{n}"] = c(s.timesteps)
                t[f"{name}_sigmas_{n}"] = c(s.sigmas)
                scale = []
                for ts in s.timesteps:
                    x = torch.ones(1)
                    # scale_model_input reads the scheduler's step index, which only
                    # step() advances: reset it so each timestep finds its own index.
                    s._step_index = None
                    scale.append(float(s.scale_model_input(x, ts)[0]))
                t[f"{name}_scale_model_input_{n}"] = torch.tensor(scale, dtype=torch.float32)
                ea_desc[name][str(n)] = {"init_noise_sigma": float(s.init_noise_sigma)}
            s = EulerAncestralDiscreteScheduler(**cfg)
            s.set_timesteps(4)
            for i in (0, 3):
                s2 = EulerAncestralDiscreteScheduler(**cfg)
                s2.set_timesteps(4)
                ts = s2.timesteps[i]
                out = s2.step(model_output, ts, sample)
                t[f"{name}_step4_i{i}_prev_sample"] = c(out.prev_sample)
                t[f"{name}_step4_i{i}_pred_original_sample"] = c(out.pred_original_sample)
                ea_desc[name][f"step4_i{i}"] = {"timestep": float(ts), "sigma": float(s2.sigmas[i]), "sigma_next": float(s2.sigmas[i + 1])}
    finally:
        ea_mod.randn_tensor = orig_randn
    desc["euler_a"] = ea_desc
    desc["records"]["<euler cfg>_{timesteps,sigmas,scale_model_input}_<n>"] = (
        "f32: timesteps [n] (float), sigmas [n+1] (last 0), scale_model_input factor 1/sqrt(sigma^2+1) per step"
    )
    desc["records"]["<euler cfg>_step4_i<i>_{prev_sample,pred_original_sample}"] = (
        "set_timesteps(4), step(ddim_step_model_output, timesteps[i], ddim_step_sample) with the ancestral noise "
        "(randn_tensor inside scheduling_euler_ancestral_discrete) replaced by euler_a_step_noise"
    )
    save_file(t, os.path.join(OUT, "schedulers.safetensors"))
    _json(desc, os.path.join(OUT, "schedulers.json"))
    print("schedulers", len(t), "tensors")


# --------------------------------------------------------------------------- pipelines


class Recorder:
    """Wraps scheduler.step and hooks the UNet to record each denoising step."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.unet_out, self.noise, self.latents, self.timesteps, self.unet_in = [], [], [], [], []
        step = pipe.scheduler.step

        def wrapped(model_output, timestep, sample, *a, **kw):
            out = step(model_output, timestep, sample, *a, **kw)
            self.noise.append(c(model_output))
            self.timesteps.append(timestep)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            self.latents.append(c(prev))
            return out

        pipe.scheduler.step = wrapped
        def hook(module, args, kwargs, out):
            self.unet_out.append(c(out[0]))
            self.unet_in.append(c(args[0]))
            # returning None keeps the output

        self.handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)

    def close(self):
        self.handle.remove()
        del self.pipe.scheduler.step


def text_encoder_records(t, prefix, te, tok, prompts):
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = te(ids, output_hidden_states=True)
    t[f"{prefix}_ids"] = ids.to(torch.int64).contiguous()
    t[f"{prefix}_last_hidden_state"] = c(out.last_hidden_state)
    t[f"{prefix}_penultimate"] = c(out.hidden_states[-2])
    if hasattr(out, "text_embeds"):
        t[f"{prefix}_text_embeds"] = c(out.text_embeds)
    else:
        t[f"{prefix}_pooler_output"] = c(out.pooler_output)


def run_pipeline(pipe, t, prefix, latents, **kw):
    rec = Recorder(pipe)
    try:
        lat = pipe(
            latents=latents.clone(),
            num_inference_steps=PIPE_STEPS,
            guidance_scale=GUIDANCE,
            eta=0.0,
            output_type="latent",
            **kw,
        ).images
    finally:
        rec.close()
    t[f"{prefix}_latents_init"] = c(latents)
    t[f"{prefix}_timesteps"] = torch.stack([torch.as_tensor(x) for x in rec.timesteps]).to(torch.int64)
    t[f"{prefix}_step_unet_input"] = torch.stack(rec.unet_in)
    t[f"{prefix}_step_unet_out"] = torch.stack(rec.unet_out)
    t[f"{prefix}_step_noise_pred"] = torch.stack(rec.noise)
    t[f"{prefix}_step_latents"] = torch.stack(rec.latents)
    t[f"{prefix}_final_latents"] = c(lat)
    img = pipe(
        latents=latents.clone(),
        num_inference_steps=PIPE_STEPS,
        guidance_scale=GUIDANCE,
        eta=0.0,
        output_type="np",
        **kw,
    ).images
    t[f"{prefix}_image"] = torch.from_numpy(np.ascontiguousarray(img)).to(torch.float32)
    return lat


def sd_fixture(name, build, pipe_cls, xl=False):
    path = os.path.join(OUT, name)
    build(path)
    pipe, _ = common.load_pipeline(name, pipe_cls)
    unet, vae = pipe.unet, pipe.vae
    t = {}
    desc = {"pipeline": pipe_cls.__name__, "dtype_of_compute": "float32"}

    # 1. text encoders
    if xl:
        text_encoder_records(t, "te1", pipe.text_encoder, pipe.tokenizer, TE_PROMPTS)
        text_encoder_records(t, "te2", pipe.text_encoder_2, pipe.tokenizer_2, TE_PROMPTS)
    else:
        text_encoder_records(t, "te", pipe.text_encoder, pipe.tokenizer, TE_PROMPTS)
    desc["te_prompts"] = TE_PROMPTS

    # 2. encode_prompt
    if xl:
        pe, ne, pp, npl = pipe.encode_prompt(
            PIPE_PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=PIPE_NEGATIVE,
        )
        t["prompt_embeds"], t["negative_prompt_embeds"] = c(pe), c(ne)
        t["pooled_prompt_embeds"], t["negative_pooled_prompt_embeds"] = c(pp), c(npl)
        _, ne0, _, npl0 = pipe.encode_prompt(
            PIPE_PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=None,
        )
        desc["negative_prompt_none_gives_zeros"] = bool((ne0 == 0).all() and (npl0 == 0).all())
    else:
        pe, ne = pipe.encode_prompt(
            PIPE_PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=PIPE_NEGATIVE,
        )
        t["prompt_embeds"], t["negative_prompt_embeds"] = c(pe), c(ne)
    desc["encode_prompt"] = {"prompt": PIPE_PROMPT, "negative_prompt": PIPE_NEGATIVE}

    # 3. UNet forwards
    ehs = torch.cat([t["negative_prompt_embeds"], t["prompt_embeds"]])
    base = unet.config.sample_size
    added = {}
    if xl:
        text_embeds = torch.cat([t["negative_pooled_prompt_embeds"], t["pooled_prompt_embeds"]])
        px = base * pipe.vae_scale_factor
        time_ids = torch.tensor([[px, px, 0, 0, px, px]] * 2, dtype=torch.float32)
        added = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
        t["unet_text_embeds"], t["unet_time_ids"] = text_embeds, time_ids
    x = randn((2, 4, base, base), 200)
    t["unet_sample"], t["unet_encoder_hidden_states"] = x, ehs
    dbg, handles = {}, []

    def keep(key, first=False):
        def hook(module, args, out):
            o = out[0] if isinstance(out, tuple) else out
            if hasattr(o, "sample"):
                o = o.sample
            dbg[key] = c(o)

        return hook

    handles.append(unet.time_embedding.register_forward_hook(keep("unet_dbg_temb")))
    if xl:
        handles.append(unet.add_embedding.register_forward_hook(keep("unet_dbg_aug_emb")))
    handles.append(unet.conv_in.register_forward_hook(keep("unet_dbg_conv_in")))
    for i, b in enumerate(unet.down_blocks):
        handles.append(b.register_forward_hook(keep(f"unet_dbg_down{i}")))
    handles.append(unet.mid_block.register_forward_hook(keep("unet_dbg_mid")))
    for i, b in enumerate(unet.up_blocks):
        handles.append(b.register_forward_hook(keep(f"unet_dbg_up{i}")))
    t["unet_out"] = c(unet(x, 981, ehs, **added).sample)
    for h in handles:
        h.remove()
    t.update(dbg)
    odd = (9, 11)
    xo = randn((2, 4) + odd, 201)
    t["unet_odd_sample"] = xo
    t["unet_odd_out"] = c(unet(xo, 500, ehs, **added).sample)
    desc["unet"] = {
        "unet_out": "unet(unet_sample, timestep=981, unet_encoder_hidden_states"
        + (", added_cond_kwargs={text_embeds: unet_text_embeds, time_ids: unet_time_ids}" if xl else "")
        + ").sample; encoder states = cat([negative_prompt_embeds, prompt_embeds])",
        "unet_odd_out": f"same weights/conditioning, timestep=500, latents {list(odd)} (not a multiple of "
        f"2^num_upsamplers={2 ** unet.num_upsamplers}: diffusers passes upsample_size = the skip tensor's size)",
        "timestep": 981,
        "odd_timestep": 500,
        "unet_dbg_*": "activations of the unet_out forward: temb = time_embedding(time_proj(t)) (before "
        "adding aug_emb), aug_emb = add_embedding(cat(text_embeds, add_time_proj(time_ids).reshape(b,-1))) (SDXL), "
        "conv_in output, hidden output of each down block (not the skips), mid block output, each up block output",
    }

    # 4. VAE
    sf = vae.config.scaling_factor
    z = randn((1, 4, base, base), 202)
    t["vae_decode_latents"] = z
    t["vae_decode_out"] = c(vae.decode(z).sample)
    img = torch.rand((1, 3, base * pipe.vae_scale_factor, base * pipe.vae_scale_factor),
                     generator=torch.Generator().manual_seed(203)) * 2 - 1
    dist = vae.encode(img).latent_dist
    t["vae_encode_image"], t["vae_encode_mean"], t["vae_encode_std"] = img, c(dist.mean), c(dist.std)
    desc["vae"] = {
        "scaling_factor": sf,
        "vae_decode_out": "raw vae.decode(vae_decode_latents).sample, no scaling: the pipeline decodes "
        "vae.decode(latents / scaling_factor) and maps to [0,1] with (x/2+0.5).clamp(0,1)",
        "vae_encode_mean/std": "vae.encode(vae_encode_image).latent_dist.{mean,std} (image in [-1,1]; "
        "std = exp(0.5*clamp(logvar,-30,20)); the pipeline would multiply a sample by scaling_factor)",
    }

    # 5. pipeline run
    lat0 = randn((1, 4, base, base), 204)
    kw = dict(prompt=PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE)
    run_pipeline(pipe, t, "pipe", lat0, **kw)
    desc["pipe"] = {
        "call": f"pipe(prompt, negative_prompt, latents=pipe_latents_init, num_inference_steps={PIPE_STEPS}, "
        f"guidance_scale={GUIDANCE}, eta=0.0, output_type='latent' | 'np')",
        "prompt": PIPE_PROMPT,
        "negative_prompt": PIPE_NEGATIVE,
        "height": base * pipe.vae_scale_factor,
        "width": base * pipe.vae_scale_factor,
        "scheduler": dict(pipe.scheduler.config),
        "keys": {
            "pipe_timesteps": "int64 [steps]",
            "pipe_step_unet_input": "[steps, 2, 4, h, w] UNet input per step, cat([latents]*2) (uncond first)",
            "pipe_step_unet_out": "[steps, 2, 4, h, w] raw UNet output per step, uncond half first",
            "pipe_step_noise_pred": "[steps, 1, 4, h, w] after CFG: uncond + g*(cond-uncond)",
            "pipe_step_latents": "[steps, 1, 4, h, w] scheduler.step(...).prev_sample per step",
            "pipe_final_latents": "[1, 4, h, w] output_type='latent'",
            "pipe_image": "[1, H, W, 3] output_type='np' (NHWC, [0,1]) from the same run",
        },
    }
    if xl:
        desc["pipe"]["add_time_ids"] = [base * pipe.vae_scale_factor] * 2 + [0, 0] + [base * pipe.vae_scale_factor] * 2

    for k, v in t.items():
        assert torch.isfinite(v.float()).all(), k
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(path, "expected.safetensors"))
    desc["configs"] = {
        "unet": dict(unet.config),
        "vae": dict(vae.config),
        "text_encoder": pipe.text_encoder.config.to_diff_dict(),
    }
    if xl:
        desc["configs"]["text_encoder_2"] = pipe.text_encoder_2.config.to_diff_dict()
    desc["shapes"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in t.items()}
    _json(desc, os.path.join(path, "expected.json"))
    print(name, "ok", len(t), "tensors; final latents std", float(t["pipe_final_latents"].std()))


def _json(obj, path):
    def default(o):
        if isinstance(o, (tuple, set)):
            return list(o)
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, torch.Tensor):
            return o.tolist()
        return str(o)

    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, default=default)
        f.write("\n")


def main():
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    os.makedirs(OUT, exist_ok=True)
    tokenizer_fixture()
    scheduler_fixture()
    sd_fixture("sd15-tiny", common.build_sd15, StableDiffusionPipeline)
    sd_fixture("sdxl-tiny", common.build_sdxl, StableDiffusionXLPipeline, xl=True)
    sd_fixture("sd21-tiny", common.build_sd21, StableDiffusionPipeline)
    for root, _, files in os.walk(OUT):  # save_file creates files readable by the owner only
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


if __name__ == "__main__":
    main()
