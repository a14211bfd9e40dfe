"""Diffusers parity fixtures, second generation: folders written by the CURRENT releases.

The first generation (fixtures/{sd15,sdxl,sd21}-tiny, make_fixtures.py) was written by
diffusers 0.33.1 / transformers 4.46.3 and has no tokenizer folders. Pipelines saved by
today's releases differ on disk, and the crate has to load both:

  * transformers 5's CLIPTextModel has no inner `text_model` module and a model it
    constructed is saved WITHOUT the `text_model.` prefix (`embeddings.*`,
    `encoder.layers.*`, `final_layer_norm.*`). A CLIPTextModel that from_pretrained read
    from a prefixed file is saved WITH the prefix again (PrefixChange, reverted on save),
    so this script hands diffusers freshly constructed CLIPTextModels to get the new
    layout. CLIPTextModelWithProjection keeps its `text_model` submodule: its keys stay
    `text_model.*` + `text_projection.weight` either way;
  * text-encoder config.json says "dtype" instead of "torch_dtype"; model_index.json and
    the unet/vae config.json carry `_name_or_path` (relative here: `sd15-tiny/unet`);
  * transformers 5's CLIPTokenizer is tokenizers-backed and save_pretrained writes
    tokenizer.json + tokenizer_config.json only (no vocab.json / merges.txt /
    special_tokens_map.json). With pad_token "!" the token "!" (id 0) is listed as a
    special added token in tokenizer.json, so "!!!" encodes as three 0s (transformers 4's
    slow tokenizer split it out the same way).

This script, run with the pins of requirements-current.txt, writes
crates/hidiffusion/tests/fixtures/current/:

  sd15-tiny/, sdxl-tiny/, sd21-tiny/
      the committed first-generation folders loaded by diffusers 0.42.1 (dtype float32,
      tokenizers rebuilt from OpenAI's merges: pad "<|endoftext|>" for SD 1.5 and SDXL's
      tokenizer/, "!" for SD 2.1 and SDXL's tokenizer_2/), cast back to their stored dtypes
      (float16 UNet / text encoders / SDXL+SD2.1 VAE, float32 SD 1.5 VAE: the weights are
      bit-identical to the first generation) and saved whole with
      save_pretrained(safe_serialization=True), tokenizer folders included.
  sd-vae4-tiny/
      a new tiny SD-1.5-shaped pipeline (random seeded weights) whose VAE has 3 blocks
      (vae_scale_factor 4) and 8 latent channels (UNet in/out channels 8, sample_size 16:
      native 64 px), for a 2-step DDIM run at height 32 x width 48 (latents [1, 8, 8, 12]).

and in each folder expected.safetensors + expected.json computed by the current releases
on the folder loaded back with from_pretrained(dtype=float32). Key names follow the first
generation (make_fixtures.py, read by tests/it/parity.rs) wherever an equivalent exists;
expected.json describes every key and records the defaults diffusers uses
(vae_scale_factor, height/width when none is given, verified by running the pipeline).

Offline: nothing is downloaded. The CLIP vocabulary comes from OpenAI's
bpe_simple_vocab_16e6.txt (shared/datasets/clip-bpe, or CLIP_BPE_PATH, or the gzipped copy
committed in fixtures/clip-bpe/).

Usage: /work/venv-cur/bin/python tools/reference/hidiffusion/make_current_fixtures.py
"""

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets HF_HUB_OFFLINE)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # bit-reproducible reductions from run to run

OLD = common.OUT  # first generation
CUR = os.path.join(common.OUT, "current")

TOKENIZER_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    # fixtures/clip_tokenizer.json prompt 2 (same string)
    "Hello, World! It's a DSLR photo; 4K, f/1.8 -- isn't it? (masterpiece:1.2)",
    "Wow!!! a café -- isn't it?! (best quality:1.4), 8k!",
    # fixtures/clip_tokenizer.json prompt 6: longer than 77 tokens, truncated
    (
        "a highly detailed photograph of a majestic lion standing on a rocky cliff at sunset, "
        "golden hour lighting, dramatic clouds in the sky, the savanna stretching to the horizon, "
        "a herd of elephants walking in the distance, acacia trees, warm colors, shallow depth of "
        "field, shot on a full frame camera with a telephoto lens, award winning wildlife "
        "photography, national geographic, ultra realistic, 8k resolution, sharp focus"
    ),
]
# index in TOKENIZER_PROMPTS -> index in the first generation's clip_tokenizer.json
OLD_TOKENIZER_ROWS = {1: 2, 3: 6}
TE_PROMPTS = ["a photo of a cat", "Hello, World! It's a DSLR photo; 4K, f/1.8 -- isn't it?"]
PIPE_PROMPT = "a photo of an astronaut riding a horse on mars"
PIPE_NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
PAD_EOS, PAD_EXC = "<|endoftext|>", "!"

# sd-vae4-tiny: SD 1.5 block structure, 3-block VAE with 8 latent channels.
VAE4_UNET = dict(
    common.UNET_SD15,
    sample_size=16,
    in_channels=8,
    out_channels=8,
    block_out_channels=(8, 16, 16, 16),
    norm_num_groups=4,
)
VAE4_VAE = dict(
    common.VAE_SD,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),
    latent_channels=8,
    sample_size=64,
    scaling_factor=0.3,  # not SD's 0.18215: the config value must be used
)
VAE4_HEIGHT, VAE4_WIDTH, VAE4_STEPS = 32, 48, 2


def c(t):
    return t.detach().to(torch.float32).contiguous() if t.is_floating_point() else t.detach().contiguous()


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


# --------------------------------------------------------------------------- tokenizer


def clip_vocab():
    """(vocab dict, merges as tuples) exactly as common.write_clip_vocab derives them."""
    d = tempfile.mkdtemp(prefix="clipvocab-")
    if not os.path.exists(common.BPE_PATH):
        gz = os.path.join(OLD, "clip-bpe", "bpe_simple_vocab_16e6.txt.gz")
        common.BPE_PATH = os.path.join(d, "bpe_simple_vocab_16e6.txt")
        with gzip.open(gz, "rb") as f, open(common.BPE_PATH, "wb") as g:
            g.write(f.read())
    common.write_clip_vocab(d)
    with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().split("\n")[1:] if m]
    shutil.rmtree(d)
    return vocab, merges


_VOCAB = None


def make_tokenizer(pad):
    """transformers 5 CLIPTokenizer (tokenizers backend) from the real CLIP vocabulary."""
    global _VOCAB
    from transformers import CLIPTokenizer

    if _VOCAB is None:
        _VOCAB = clip_vocab()
    vocab, merges = _VOCAB
    def build():
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad, model_max_length=77)

    tok = build()
    assert len(tok) == 49408, len(tok)
    ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407], ids[:8]
    assert ids[7] == (49407 if pad == PAD_EOS else 0)
    # A call with padding leaves the padding state in the backend and save_pretrained
    # would write it into tokenizer.json ("padding": {"strategy": {"Fixed": 77}, ...}):
    # hand out an unused instance so that tokenizer.json has "padding": null.
    return build()


# --------------------------------------------------------------------------- folders


def file_dtypes(path):
    with safe_open(path, "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


TORCH_DTYPES = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}


def strip_prefix(k):
    return k[len("text_model."):] if k.startswith("text_model.") else k


def convert(name, cls, pads):
    """Loads the first-generation folder with today's diffusers and saves it whole."""
    src, dst = os.path.join(OLD, name), os.path.join(CUR, name)
    toks = {"tokenizer": make_tokenizer(pads[0])}
    if len(pads) > 1:
        toks["tokenizer_2"] = make_tokenizer(pads[1])
    with chdir(OLD):  # relative name: model_index.json / config.json get `_name_or_path: <name>`
        pipe = cls.from_pretrained(name, dtype=torch.float32, **toks)
    for comp, fname in WEIGHT_FILES.items():
        if not os.path.isdir(os.path.join(src, comp)):
            continue
        old = load_file(os.path.join(src, comp, fname))
        model = getattr(pipe, comp)
        sd = {strip_prefix(k): v for k, v in model.state_dict().items()}
        # every stored tensor reached the model (transformers 5 maps `text_model.*`)
        old_m = {strip_prefix(k): v for k, v in old.items()}
        missing = sorted(set(old_m) - set(sd))
        extra = sorted(k for k in set(sd) - set(old_m) if "position_ids" not in k)
        assert not missing and not extra, (name, comp, missing[:5], extra[:5])
        for k, v in old_m.items():
            assert torch.equal(sd[k], v.float()), (name, comp, k)
        (dt,) = file_dtypes(os.path.join(src, comp, fname))
        model.to(TORCH_DTYPES[dt])
        if type(model).__name__ == "CLIPTextModel":
            # transformers 5 reverts the `text_model.` prefix it stripped on load
            # (PrefixChange in conversion_mapping.py) when saving a model that
            # from_pretrained read from a prefixed file; a CLIPTextModel it constructed
            # itself is saved without the prefix. Hand diffusers such a model, so that
            # the folder holds the new layout. (CLIPTextModelWithProjection keeps its
            # `text_model` submodule: its keys stay prefixed either way.)
            fresh = type(model)(model.config).to(TORCH_DTYPES[dt])
            fresh.load_state_dict(model.state_dict())
            fresh.eval()
            pipe.register_modules(**{comp: fresh})
    save(pipe, dst)
    # the saved weights are the first generation's, bit for bit, under the new key names
    for comp, fname in WEIGHT_FILES.items():
        if not os.path.isdir(os.path.join(src, comp)):
            continue
        old = {strip_prefix(k): v for k, v in load_file(os.path.join(src, comp, fname)).items()}
        new = {strip_prefix(k): v for k, v in load_file(os.path.join(dst, comp, fname)).items()}
        assert set(old) == set(new), (comp, sorted(set(old) ^ set(new))[:5])
        for k in old:
            assert old[k].dtype == new[k].dtype and torch.equal(old[k], new[k]), (comp, k)
    return dst


def save(pipe, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    pipe.save_pretrained(dst, safe_serialization=True)
    for root, _, files in os.walk(dst):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def build_vae4(dst):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(30)
    unet = common.randomise(UNet2DConditionModel(**VAE4_UNET), 31)
    # seed 12 and TE_SD15: the same bytes as sd15-tiny's text encoder (one git blob)
    te = common.randomise(CLIPTextModel(CLIPTextConfig(**common.TE_SD15)), 12)
    vae = common.randomise(AutoencoderKL(**VAE4_VAE), 33)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te.to(torch.float16),
        tokenizer=make_tokenizer(PAD_EOS),
        unet=unet.to(torch.float16),
        scheduler=DDIMScheduler(**common.SCHED_SD),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    save(pipe, dst)
    return dst


@contextlib.contextmanager
def chdir(path):
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def load(cls, path):
    with chdir(os.path.dirname(path)):
        pipe = cls.from_pretrained(os.path.basename(path), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def show_folder(path):
    print(f"--- {os.path.relpath(path, common.REPO)}")
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"  {os.path.getsize(p):>9}  {os.path.relpath(p, path)}")
    for comp, info in weight_files(path).items():
        print(f"  {comp} {info['file']}: dtypes {info['dtypes']}, first keys {info['first_keys']}")


def weight_files(path):
    out = {}
    for comp, fname in WEIGHT_FILES.items():
        p = os.path.join(path, comp, fname)
        if not os.path.exists(p):
            continue
        with safe_open(p, "pt") as f:
            keys = list(f.keys())
            out[comp] = {
                "file": f"{comp}/{fname}",
                "tensors": len(keys),
                "dtypes": sorted({f.get_slice(k).get_dtype() for k in keys}),
                "first_keys": keys[:3],
                "keys_with_text_model_prefix": sum(k.startswith("text_model.") for k in keys),
                "metadata": f.metadata(),
            }
    return out


# --------------------------------------------------------------------------- records


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

        self.handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)

    def close(self):
        self.handle.remove()
        del self.pipe.scheduler.step


def tokenizer_records(t, desc, pipe, xl):
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    old = load_file(os.path.join(OLD, "clip_tokenizer.safetensors"))
    desc["tokenizer_prompts"] = TOKENIZER_PROMPTS
    names = ["tokenizer", "tokenizer_2"] if xl else ["tokenizer"]
    for name in names:
        tok = getattr(pipe, name)
        ids = tok(TOKENIZER_PROMPTS, **kw).input_ids.to(torch.int64).contiguous()
        t[f"{name}_ids"] = ids
        full = [tok(p).input_ids for p in TOKENIZER_PROMPTS]
        old_key = "ids_pad_exclamation" if tok.pad_token == PAD_EXC else "ids_pad_eos"
        desc[name] = {
            "class": type(tok).__name__,
            "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id,
            "model_max_length": tok.model_max_length,
            "untruncated_lengths_with_bos_eos": [len(x) for x in full],
            "tokens": [tok.convert_ids_to_tokens(x[:77]) for x in full],
            "agrees_with_first_generation": {
                str(i): bool(torch.equal(ids[i], old[old_key][j])) for i, j in OLD_TOKENIZER_ROWS.items()
            },
        }
        assert all(desc[name]["agrees_with_first_generation"].values()), (name, desc[name])
        assert max(len(x) for x in full) > 77


def text_encoder_records(t, prefix, te, tok, prompts):
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = te(ids, output_hidden_states=True)
    t[f"{prefix}_ids"] = ids.to(torch.int64).contiguous()
    t[f"{prefix}_last_hidden_state"] = c(out.last_hidden_state)
    t[f"{prefix}_penultimate"] = c(out.hidden_states[-2])
    if hasattr(out, "text_embeds") and out.text_embeds is not None:
        t[f"{prefix}_text_embeds"] = c(out.text_embeds)
    else:
        t[f"{prefix}_pooler_output"] = c(out.pooler_output)


def encode_prompt_records(t, desc, pipe, xl):
    kw = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    if xl:
        pe, ne, pp, npl = pipe.encode_prompt(PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, **kw)
        t["pooled_prompt_embeds"], t["negative_pooled_prompt_embeds"] = c(pp), c(npl)
        _, ne0, _, npl0 = pipe.encode_prompt(PIPE_PROMPT, negative_prompt=None, **kw)
        desc["negative_prompt_none_gives_zeros"] = bool((ne0 == 0).all() and (npl0 == 0).all())
    else:
        pe, ne = pipe.encode_prompt(PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, **kw)
    t["prompt_embeds"], t["negative_prompt_embeds"] = c(pe), c(ne)
    desc["encode_prompt"] = {"prompt": PIPE_PROMPT, "negative_prompt": PIPE_NEGATIVE}


def time_ids(h, w):
    return [h, w, 0, 0, h, w]


def unet_vae_records(t, desc, pipe, xl, lat_hw, odd=True):
    """UNet forwards (regular + odd size) and raw VAE decode/encode, as make_fixtures.py."""
    unet, vae = pipe.unet, pipe.vae
    ch = unet.config.in_channels
    ehs = torch.cat([t["negative_prompt_embeds"], t["prompt_embeds"]])
    added = {}
    h, w = lat_hw
    if xl:
        text_embeds = torch.cat([t["negative_pooled_prompt_embeds"], t["pooled_prompt_embeds"]])
        ti = torch.tensor([time_ids(h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)] * 2, dtype=torch.float32)
        added = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": ti}}
        t["unet_text_embeds"], t["unet_time_ids"] = text_embeds, ti
    x = randn((2, ch, h, w), 200)
    t["unet_sample"], t["unet_encoder_hidden_states"] = x, ehs
    t["unet_out"] = c(unet(x, 981, ehs, **added).sample)
    desc["unet"] = {
        "unet_out": "unet(unet_sample, timestep=981, unet_encoder_hidden_states"
        + (", added_cond_kwargs={text_embeds: unet_text_embeds, time_ids: unet_time_ids}" if xl else "")
        + ").sample; encoder states = cat([negative_prompt_embeds, prompt_embeds])",
        "timestep": 981,
    }
    if odd:
        xo = randn((2, ch, 9, 11), 201)
        t["unet_odd_sample"] = xo
        t["unet_odd_out"] = c(unet(xo, 500, ehs, **added).sample)
        desc["unet"]["unet_odd_out"] = "same conditioning, timestep=500, latents 9x11"
        desc["unet"]["odd_timestep"] = 500
    z = randn((1, vae.config.latent_channels, h, w), 202)
    t["vae_decode_latents"] = z
    t["vae_decode_out"] = c(vae.decode(z).sample)
    f = pipe.vae_scale_factor
    img = torch.rand((1, 3, h * f, w * f), generator=torch.Generator().manual_seed(203)) * 2 - 1
    dist = vae.encode(img).latent_dist
    t["vae_encode_image"], t["vae_encode_mean"], t["vae_encode_std"] = img, c(dist.mean), c(dist.std)
    desc["vae"] = {
        "scaling_factor": vae.config.scaling_factor,
        "vae_decode_out": "raw vae.decode(vae_decode_latents).sample, no scaling",
        "vae_encode_mean/std": "vae.encode(vae_encode_image).latent_dist.{mean,std} (image in [-1,1])",
    }


def run_pipeline(t, desc, pipe, xl, height, width, steps, seed):
    ch = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    shape = (1, ch, height // f, width // f)
    # diffusers' own latent shape for this request (no latents given)
    own = pipe(
        prompt=PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, height=height, width=width,
        num_inference_steps=1, guidance_scale=GUIDANCE, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert tuple(own.shape) == shape, (own.shape, shape)
    lat0 = randn(shape, seed)
    kw = dict(
        prompt=PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, height=height, width=width,
        num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
    )
    rec = Recorder(pipe)
    try:
        lat = pipe(latents=lat0.clone(), output_type="latent", **kw).images
    finally:
        rec.close()
    img = pipe(latents=lat0.clone(), output_type="np", **kw).images
    img = torch.from_numpy(np.ascontiguousarray(img)).to(torch.float32)
    # the decode the brief describes, by hand: vae.decode(latents / scaling_factor), (x/2+0.5).clamp(0,1)
    manual = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    manual = (manual / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    manual_diff = float((manual - img).abs().max())
    assert manual_diff < 1e-6, manual_diff
    t["pipe_latents_init"] = c(lat0)
    t["pipe_timesteps"] = torch.stack([torch.as_tensor(x) for x in rec.timesteps]).to(torch.int64)
    t["pipe_step_unet_input"] = torch.stack(rec.unet_in)
    t["pipe_step_unet_out"] = torch.stack(rec.unet_out)
    t["pipe_step_noise_pred"] = torch.stack(rec.noise)
    t["pipe_step_latents"] = torch.stack(rec.latents)
    t["pipe_final_latents"] = c(lat)
    t["pipe_image"] = img
    desc["pipe"] = {
        "call": "pipe(prompt, negative_prompt, height, width, latents=pipe_latents_init, "
        f"num_inference_steps={steps}, guidance_scale={GUIDANCE}, eta=0.0, output_type='latent' | 'np')",
        "prompt": PIPE_PROMPT,
        "negative_prompt": PIPE_NEGATIVE,
        "height": height,
        "width": width,
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE,
        "scheduler": dict(pipe.scheduler.config),
        "image_vs_manual_decode_max_abs_diff": manual_diff,
        "keys": {
            "pipe_latents_init": f"f32 {list(shape)}: randn(seed 204), the initial latents (DDIM init_noise_sigma = 1)",
            "pipe_timesteps": "int64 [steps]",
            "pipe_step_unet_input": "[steps, 2, C, h, w] UNet input per step, cat([latents]*2) (uncond first)",
            "pipe_step_unet_out": "[steps, 2, C, h, w] raw UNet output per step, uncond half first",
            "pipe_step_noise_pred": "[steps, 1, C, h, w] after CFG: uncond + g*(cond-uncond)",
            "pipe_step_latents": "[steps, 1, C, h, w] scheduler.step(...).prev_sample per step",
            "pipe_final_latents": "[1, C, h, w] output_type='latent'",
            "pipe_image": "[1, H, W, 3] output_type='np' (NHWC, [0,1]) from the same run = "
            "(vae.decode(pipe_final_latents / scaling_factor) / 2 + 0.5).clamp(0, 1)",
        },
    }
    if xl:
        desc["pipe"]["add_time_ids"] = time_ids(height, width)


def default_size_records(desc, pipe, xl):
    """What diffusers uses when height/width are not given, checked by running it."""
    f = pipe.vae_scale_factor
    if xl:
        h = w = pipe.default_sample_size * f
        rule = "default_sample_size (= unet.config.sample_size) * vae_scale_factor"
    else:
        h = w = pipe.unet.config.sample_size * f
        rule = "unet.config.sample_size * vae_scale_factor"
    got = pipe(
        prompt=PIPE_PROMPT, num_inference_steps=1, guidance_scale=GUIDANCE, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    want = (1, pipe.unet.config.in_channels, h // f, w // f)
    assert tuple(got.shape) == want, (got.shape, want)
    desc["defaults"] = {
        "vae_scale_factor": f,
        "rule": f"2 ** (len(vae.config.block_out_channels) - 1); height = width = {rule}",
        "default_height": h,
        "default_width": w,
        "latent_shape_without_height_width": list(got.shape),
        "check_inputs": "height and width must be multiples of 8 (not of vae_scale_factor)",
    }


def config_changes(name, dst):
    """config.json fields the current releases write that the first generation did not (and back)."""
    src = os.path.join(OLD, name)
    out = {}
    if not os.path.isdir(src):
        return out
    for root, _, files in os.walk(dst):
        for fn in files:
            if not fn.endswith(".json") or fn.startswith("expected") or fn.startswith("tokenizer"):
                continue
            rel = os.path.relpath(os.path.join(root, fn), dst)
            if not os.path.exists(os.path.join(src, rel)):
                continue
            with open(os.path.join(src, rel)) as f:
                a = json.load(f)
            with open(os.path.join(dst, rel)) as f:
                b = json.load(f)
            d = {
                "added": {k: b[k] for k in sorted(set(b) - set(a))},
                "removed": {k: a[k] for k in sorted(set(a) - set(b))},
                "changed": {k: [a[k], b[k]] for k in sorted(set(a) & set(b)) if a[k] != b[k]},
            }
            d = {k: v for k, v in d.items() if v}
            if d:
                out[rel] = d
    return out


def expected(name, cls, xl, height, width, steps, odd=True):
    path = os.path.join(CUR, name)
    pipe = load(cls, path)
    t, desc = {}, {"pipeline": cls.__name__, "dtype_of_compute": "float32", "versions": versions()}
    tokenizer_records(t, desc, pipe, xl)
    if xl:
        text_encoder_records(t, "te1", pipe.text_encoder, pipe.tokenizer, TE_PROMPTS)
        text_encoder_records(t, "te2", pipe.text_encoder_2, pipe.tokenizer_2, TE_PROMPTS)
    else:
        text_encoder_records(t, "te", pipe.text_encoder, pipe.tokenizer, TE_PROMPTS)
    desc["te_prompts"] = TE_PROMPTS
    encode_prompt_records(t, desc, pipe, xl)
    f = pipe.vae_scale_factor
    unet_vae_records(t, desc, pipe, xl, (height // f, width // f), odd=odd)
    run_pipeline(t, desc, pipe, xl, height, width, steps, 204)
    default_size_records(desc, pipe, xl)
    desc["keys"] = key_descriptions(xl)
    desc["weight_files"] = weight_files(path)
    desc["config_changes_vs_first_generation"] = config_changes(name, path)
    desc["configs"] = {
        "unet": dict(pipe.unet.config),
        "vae": dict(pipe.vae.config),
        "text_encoder": pipe.text_encoder.config.to_diff_dict(),
    }
    if xl:
        desc["configs"]["text_encoder_2"] = pipe.text_encoder_2.config.to_diff_dict()
    for k, v in t.items():
        assert torch.isfinite(v.float()).all(), k
    t = {k: v.contiguous() for k, v in t.items()}
    desc["shapes"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in t.items()}
    save_file(t, os.path.join(path, "expected.safetensors"))
    _json(desc, os.path.join(path, "expected.json"))
    for fn in ("expected.safetensors", "expected.json"):
        os.chmod(os.path.join(path, fn), 0o644)

    # determinism: a fresh load of the saved folder reproduces the run bit for bit
    again = load(cls, path)
    lat = again(
        prompt=PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, height=height, width=width,
        latents=t["pipe_latents_init"].clone(), num_inference_steps=steps, guidance_scale=GUIDANCE,
        eta=0.0, output_type="latent",
    ).images
    assert torch.equal(lat, t["pipe_final_latents"]), float((lat - t["pipe_final_latents"]).abs().max())
    print(f"{name}: {len(t)} tensors, final latents {list(lat.shape)} std {float(lat.std()):.4f}, "
          f"defaults {desc['defaults']['default_height']}x{desc['defaults']['default_width']}, "
          f"vae_scale_factor {f}; reload reproduces the latents exactly")


def key_descriptions(xl):
    te = ["te1", "te2"] if xl else ["te"]
    d = {
        "tokenizer_ids": "int64 [len(tokenizer_prompts), 77]: pipe.tokenizer(tokenizer_prompts, "
        "padding='max_length', max_length=77, truncation=True)",
    }
    if xl:
        d["tokenizer_2_ids"] = "int64 [len(tokenizer_prompts), 77]: the same with pipe.tokenizer_2 (pad '!')"
    for p in te:
        d[f"{p}_ids"] = "int64 [2, 77]: te_prompts through the matching tokenizer"
        d[f"{p}_last_hidden_state"] = "f32 [2, 77, hidden]"
        d[f"{p}_penultimate"] = "f32 [2, 77, hidden]: hidden_states[-2]"
    if xl:
        d["te1_pooler_output"] = "f32 [2, hidden]: EOS-token pooled output of text_encoder"
        d["te2_text_embeds"] = "f32 [2, projection_dim]: CLIPTextModelWithProjection.text_embeds"
        d["pooled_prompt_embeds / negative_pooled_prompt_embeds"] = "f32 [1, 8] from encode_prompt"
        d["prompt_embeds / negative_prompt_embeds"] = (
            "f32 [1, 77, 16]: encode_prompt: cat(te1 penultimate, te2 penultimate) (clip_skip=None)")
        d["unet_text_embeds / unet_time_ids"] = "added conditions of the unet_out forward (negative row first)"
    else:
        d["te_pooler_output"] = "f32 [2, hidden]: EOS-token pooled output"
        d["prompt_embeds / negative_prompt_embeds"] = "f32 [1, 77, hidden]: encode_prompt (last_hidden_state)"
    d["unet_sample / unet_encoder_hidden_states / unet_out"] = "see 'unet'"
    d["vae_*"] = "see 'vae'"
    d["pipe_*"] = "see pipe.keys"
    return d


def versions():
    import diffusers
    import safetensors
    import tokenizers
    import transformers

    return {
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _json(obj, path):
    def default(o):
        if isinstance(o, (tuple, set)):
            return list(o)
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, torch.Tensor):
            return o.tolist()
        return str(o)

    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, default=default)
        f.write("\n")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main():
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    os.makedirs(CUR, exist_ok=True)
    convert("sd15-tiny", StableDiffusionPipeline, [PAD_EOS])
    convert("sdxl-tiny", StableDiffusionXLPipeline, [PAD_EOS, PAD_EXC])
    convert("sd21-tiny", StableDiffusionPipeline, [PAD_EXC])
    build_vae4(os.path.join(CUR, "sd-vae4-tiny"))
    for name in ("sd15-tiny", "sdxl-tiny", "sd21-tiny", "sd-vae4-tiny"):
        show_folder(os.path.join(CUR, name))

    expected("sd15-tiny", StableDiffusionPipeline, False, 64, 64, 4)
    expected("sdxl-tiny", StableDiffusionXLPipeline, True, 64, 64, 4)
    expected("sd21-tiny", StableDiffusionPipeline, False, 64, 64, 4)
    expected("sd-vae4-tiny", StableDiffusionPipeline, False, VAE4_HEIGHT, VAE4_WIDTH, VAE4_STEPS, odd=False)

    # identical files across folders (git stores one blob each)
    groups = {}
    for root, _, files in os.walk(CUR):
        for fn in files:
            p = os.path.join(root, fn)
            groups.setdefault(sha(p), []).append(os.path.relpath(p, CUR))
    print("byte-identical files:")
    for h, ps in sorted(groups.items()):
        if len(ps) > 1:
            print(f"  {h}: {sorted(ps)}")


if __name__ == "__main__":
    main()
