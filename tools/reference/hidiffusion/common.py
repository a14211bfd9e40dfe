"""Shared helpers for the hidiffusion reference scripts: the real CLIP tokenizer rebuilt
from OpenAI's BPE merges file, the tiny random-weight pipelines (SD 1.5, SDXL, SD 2.1-base
shapes) and loading them back through `from_pretrained`.

Nothing here downloads anything: run with HF_HUB_OFFLINE=1.
"""

import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "../../.."))
OUT = os.path.join(REPO, "crates/hidiffusion/tests/fixtures")
# OpenAI's merges file; lives in shared/, never copied into the repository.
BPE_PATH = os.environ.get(
    "CLIP_BPE_PATH",
    os.path.abspath(os.path.join(REPO, "../shared/datasets/clip-bpe/bpe_simple_vocab_16e6.txt")),
)
if not os.path.exists(BPE_PATH):
    BPE_PATH = "/work/shared/datasets/clip-bpe/bpe_simple_vocab_16e6.txt"


# --------------------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """OpenAI CLIP's simple_tokenizer.bytes_to_unicode (identical to GPT-2's)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(directory):
    """vocab.json + merges.txt exactly as OpenAI CLIP's SimpleTokenizer derives them."""
    with open(BPE_PATH, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        # transformers' CLIPTokenizer drops the first line and keeps lines[1:48895].
        f.write("#version: 0.2\n")
        f.write("\n".join(" ".join(m) for m in merges))
        f.write("\n")
    return directory


def make_tokenizer(pad="<|endoftext|>", directory=None):
    """transformers.CLIPTokenizer (the slow one, which diffusers' model_index.json names)."""
    from transformers import CLIPTokenizer

    directory = directory or tempfile.mkdtemp(prefix="clipvocab-")
    if not os.path.exists(os.path.join(directory, "vocab.json")):
        write_clip_vocab(directory)
    tok = CLIPTokenizer(
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
        pad_token=pad,
        model_max_length=77,
    )
    assert len(tok) == 49408
    ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407], ids[:8]
    return tok


# --------------------------------------------------------------------------- weights


def randomise(model, seed, std_scale=1.0):
    """Deterministic random weights, larger than the default init so that every layer
    matters: matrices/kernels N(0, 1/fan_in), norm gains 1 + N(0, 0.1^2), biases
    N(0, 0.05^2), embeddings N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if "embedding.weight" in name and p.ndim == 2 and (
                "token_embedding" in name or "position_embedding" in name
            ):
                p.copy_(0.5 * torch.randn(shape, generator=g))
            elif p.ndim >= 2:
                fan_in = 1
                for s in shape[1:]:
                    fan_in *= s
                p.copy_(std_scale * torch.randn(shape, generator=g) / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(shape, generator=g))
    return model


# --------------------------------------------------------------------------- configs

SCHED_SD = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)

# SDXL-turbo's scheduler/scheduler_config.json (EulerAncestralDiscreteScheduler)
SCHED_TURBO = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="trailing",
)

VAE_SD = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.18215,
)

TE_SD15 = dict(
    vocab_size=49408,
    hidden_size=8,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    projection_dim=8,
)

UNET_SD15 = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 24, 32, 32),
    layers_per_block=2,
    norm_num_groups=8,
    norm_eps=1e-5,
    cross_attention_dim=8,
    attention_head_dim=4,  # SD 1.5 quirk: this is the number of heads
    use_linear_projection=False,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    center_input_sample=False,
    mid_block_scale_factor=1,
)

TE_SDXL_1 = dict(TE_SD15)
TE_SDXL_2 = dict(
    TE_SD15, hidden_size=8, intermediate_size=32, hidden_act="gelu", projection_dim=8
)

UNET_SDXL = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(8, 12, 16),
    layers_per_block=2,
    norm_num_groups=4,
    norm_eps=1e-5,
    cross_attention_dim=16,  # text_encoder 8 + text_encoder_2 8
    transformer_layers_per_block=(1, 2, 10),  # as SDXL: hidiffusion checks module names
    attention_head_dim=(1, 2, 2),  # heads, as SDXL's [5, 10, 20]
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 8,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    upcast_attention=False,
)

TE_SD21 = dict(TE_SD15, hidden_size=8, intermediate_size=32, hidden_act="gelu", projection_dim=8)

UNET_SD21 = dict(
    UNET_SD15,
    block_out_channels=(8, 12, 16, 16),
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=(1, 2, 2, 2),  # heads, as SD 2.1's [5, 10, 20, 20]
    use_linear_projection=True,
    upcast_attention=False,
)


# --------------------------------------------------------------------------- pipelines


def _half(model):
    return model.to(torch.float16)


def build_sd15(
    path, vae_cfg=VAE_SD, te_cfg=TE_SD15, unet_cfg=UNET_SD15, pad="<|endoftext|>", seed=0, vae_half=False,
    te_seed=12, vae_seed=None,
):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = randomise(UNet2DConditionModel(**unet_cfg), seed + 1)
    te = randomise(CLIPTextModel(CLIPTextConfig(**te_cfg)), seed + 2 if te_seed is None else te_seed)
    vae = randomise(AutoencoderKL(**vae_cfg), seed + 3 if vae_seed is None else vae_seed)
    sched = DDIMScheduler(**SCHED_SD)
    pipe = StableDiffusionPipeline(
        vae=_half(vae) if vae_half else vae,
        text_encoder=_half(te),
        tokenizer=make_tokenizer(pad),
        unet=_half(unet),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    _save(pipe, path)


def build_sdxl(path, seed=10):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = randomise(UNet2DConditionModel(**UNET_SDXL), seed + 1)
    te1 = randomise(CLIPTextModel(CLIPTextConfig(**TE_SDXL_1)), seed + 2)
    te2 = randomise(CLIPTextModelWithProjection(CLIPTextConfig(**TE_SDXL_2)), seed + 3)
    vae = randomise(AutoencoderKL(**dict(VAE_SD, scaling_factor=0.13025, force_upcast=True)), seed + 4)
    sched = DDIMScheduler(**SCHED_SD)
    pipe = StableDiffusionXLPipeline(
        vae=_half(vae),  # only sd15-tiny's VAE is stored in float32
        text_encoder=_half(te1),
        text_encoder_2=_half(te2),
        tokenizer=make_tokenizer("<|endoftext|>"),
        tokenizer_2=make_tokenizer("!"),
        unet=_half(unet),
        scheduler=sched,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    _save(pipe, path)


# Text-encoder weight files: the vocabulary (49408 x hidden) dominates the fixture size,
# so sd15-tiny/text_encoder, sdxl-tiny/text_encoder and sd21-tiny/text_encoder hold the
# same bytes (same shapes, seed 12; git stores the blob once). Their config.json differ
# where the models differ (sd21: gelu), so the outputs differ.


def build_sd21(path):
    # sd21-tiny/vae holds the same bytes as sdxl-tiny/vae (float16, seed 14) with a
    # different scaling_factor in config.json.
    build_sd15(
        path,
        vae_cfg=VAE_SD,
        te_cfg=TE_SD21,
        unet_cfg=UNET_SD21,
        pad="!",
        seed=20,
        vae_half=True,
        vae_seed=14,
    )


def _save(pipe, path):
    if os.path.exists(path):
        shutil.rmtree(path)
    pipe.save_pretrained(path, safe_serialization=True)
    # The real vocabulary is not stored in the repository: the tests rebuild
    # tokenizer/ and tokenizer_2/ from shared/ (model_index.json still names them).
    for sub in ("tokenizer", "tokenizer_2"):
        if os.path.isdir(os.path.join(path, sub)):
            shutil.rmtree(os.path.join(path, sub))


def add_tokenizers(folder):
    """Writes tokenizer/ (pad <|endoftext|> unless SD 2.x) and tokenizer_2/ (pad "!") as
    the real pipelines ship them, into a folder copied from the fixtures."""
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    vocab_dir = tempfile.mkdtemp(prefix="clipvocab-")
    write_clip_vocab(vocab_dir)
    te_cfg_path = os.path.join(folder, "text_encoder", "config.json")
    with open(te_cfg_path) as f:
        te_act = json.load(f).get("hidden_act")
    # SD 1.x pads with <|endoftext|>; SD 2.x (OpenCLIP, gelu) pads with "!".
    pad1 = "!" if te_act == "gelu" else "<|endoftext|>"
    if "tokenizer" in index:
        make_tokenizer(pad1, vocab_dir).save_pretrained(os.path.join(folder, "tokenizer"))
    if "tokenizer_2" in index:
        make_tokenizer("!", vocab_dir).save_pretrained(os.path.join(folder, "tokenizer_2"))
    shutil.rmtree(vocab_dir)


def load_pipeline(name, cls, dest_parent=None, as_name=None):
    """Copies OUT/<name> into a temporary folder (optionally under the relative path
    `as_name`, e.g. 'stabilityai/sdxl-turbo', so that pipe.name_or_path equals it), adds
    the tokenizers and loads it with from_pretrained in float32."""
    dest_parent = dest_parent or tempfile.mkdtemp(prefix="hd-pipe-")
    rel = as_name or name
    dest = os.path.join(dest_parent, rel)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(os.path.join(OUT, name), dest, ignore=shutil.ignore_patterns("expected*"))
    add_tokenizers(dest)
    cwd = os.getcwd()
    try:
        os.chdir(dest_parent)
        pipe = cls.from_pretrained(rel, torch_dtype=torch.float32)
    finally:
        os.chdir(cwd)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dest_parent
