"""The current-release generation of the parity fixtures: tiny LLaMA-family folders, a
tokenizer and PEFT adapters written by transformers 5 / peft 0.21 (pins in
requirements-current.txt), and what those releases compute on them, so that the Rust loader
is tested on what today's `save_pretrained` writes as well as on the transformers 4.57.1 /
peft 0.17.1 folders of make_fixtures.py, make_adapter_fixtures.py and
make_tokenizer_fixture.py. What changed in the files between the two generations:
  * config.json has `rope_parameters: {"rope_type": ..., "rope_theta": ..., <scaling>}`
    instead of top-level `rope_theta` + `rope_scaling` (this script asserts it);
  * the tokenizer's chat template is written to `chat_template.jinja` beside
    tokenizer_config.json, which no longer carries `chat_template` (asserted too).

Writes, under crates/mixlora/tests/fixtures/current/ (float32, all from `save_pretrained`):
  tiny-llama-v5/         LLaMA as tiny-llama in make_fixtures.py, but rope_theta 5000 and no
                         rope scaling (rope_type "default"), plus the tokenizer of
                         make_tokenizer_fixture.py (same training, same chat template) saved
                         by transformers 5, and expected_text.json (same keys as
                         tiny-llama/expected_text.json, computed by transformers 5)
  tiny-llama3-v5/        tiny-llama's config exactly (rope_theta 500000, llama3 scaling)
  tiny-llama-linear-v5/  rope_type "linear", factor 2, rope_theta 5000
  tiny-qwen2-v5/         tiny-qwen2's config exactly (q/k/v bias, GQA 4/1, tied embeddings)
  tiny-mistral-window-v5/ Mistral with sliding_window 4 (every layer attends to the last
                         4 positions; inputs and greedy decoding reach past it)
each with expected.safetensors as in make_fixtures.py:
  input_ids      int64 [2, 9]   second row left-padded by 3
  attention_mask int64 [2, 9]
  logits         f32   [2, 9, vocab]  (padding positions are not compared)
  greedy         int64 [1, 6]   greedy continuation of the first row, unpadded
and
  lora-v5/, dora-v5/     PEFT LoRA / DoRA (+rsLoRA) adapters on tiny-llama-v5 written by
                         peft 0.21, as make_adapter_fixtures.py does for tiny-llama-lora /
                         tiny-llama-dora: adapter_config.json (base_model_name_or_path
                         "../tiny-llama-v5"), adapter_model.safetensors and
                         expected.safetensors with input_ids, attention_mask, labels, logits,
                         loss and grad.<PEFT key> for every adapter tensor.
Every saved model and adapter is loaded back with transformers 5 / peft 0.21 and must give
exactly the recorded logits.

Usage: HF_HUB_OFFLINE=1 /work/venv-cur/bin/python make_current_fixtures.py
       (from any directory; venv from requirements-current.txt)
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "../../../crates/mixlora/tests/fixtures/current"))

# --- tokenizer: as make_tokenizer_fixture.py -------------------------------------------

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello there. what is the answer?",
    "a model reads tokens and writes tokens; the answer is yes or no.",
    "question: is the sky blue? answer: true",
] * 20

PROMPTS = [
    "hello world",
    "the answer is",
    "  leading spaces and UPPER case?",
    "unseen: zebra 42!",
    "",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[user] {{ message['content'].strip() }}\n"
    "{% else %}[bot] {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}[bot]{% endif %}"
)


def randomise(model, std):
    # As make_fixtures.py: larger than the default init so logits are far from uniform and
    # every layer matters; norms get random gains around 1.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def logits_and_greedy(model, ids, mask):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        greedy = model.generate(
            ids[:1], attention_mask=mask[:1], max_new_tokens=6, do_sample=False,
            pad_token_id=0,
        )[:, ids.shape[1]:]
    return logits, greedy


def build(name, model):
    torch.manual_seed(0)
    randomise(model, 0.15)
    model.eval()
    path = os.path.join(OUT, name)
    model.save_pretrained(path)  # transformers 5: always safetensors
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, :3] = 0
    ids[1, :3] = 0
    logits, greedy = logits_and_greedy(model, ids, mask)
    assert greedy.shape == (1, 6), greedy.shape
    save_file(
        {
            "input_ids": ids.contiguous(),
            "attention_mask": mask,
            "logits": logits.contiguous(),
            "greedy": greedy.contiguous(),
        },
        os.path.join(path, "expected.safetensors"),
    )
    print(name, "logits", tuple(logits.shape), "greedy", greedy.tolist())
    # Loaded back, the folder gives exactly the same.
    again = type(model).from_pretrained(path).eval()
    assert again.dtype == torch.float32, again.dtype
    logits2, greedy2 = logits_and_greedy(again, ids, mask)
    diff = (logits2 - logits).abs().max().item()  # padding positions too
    print(name, "reload max abs diff", diff, "greedy equal", torch.equal(greedy, greedy2))
    assert diff == 0.0 and torch.equal(greedy, greedy2)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert "rope_parameters" in config, config
    assert "rope_theta" not in config and "rope_scaling" not in config, config
    print(name, "config.json:", json.dumps(config, indent=2, sort_keys=True))


def llama(rope_parameters):
    return LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters=rope_parameters,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def tokenizer(path):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() <= 96, tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=AddedToken("<s>", lstrip=False, rstrip=False, single_word=False,
                             normalized=False, special=True),
        eos_token="</s>",
        unk_token="<unk>",
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(path)
    files = sorted(os.listdir(path))
    print("tiny-llama-v5 files:", files)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    print("tokenizer_config.json:", json.dumps(tok_config, indent=2))
    assert "chat_template" not in tok_config, tok_config
    with open(os.path.join(path, "chat_template.jinja")) as f:
        assert f.read() == CHAT_TEMPLATE
    return tok


def expected_text(path):
    # As make_tokenizer_fixture.py, with the tokenizer and model read back from the folder.
    hf = AutoTokenizer.from_pretrained(path)
    print("AutoTokenizer class:", type(hf).__name__)
    model = LlamaForCausalLM.from_pretrained(path).eval()
    out = {"prompts": PROMPTS, "with_special": [], "without_special": []}
    for p in PROMPTS:
        out["with_special"].append(hf.encode(p, add_special_tokens=True))
        out["without_special"].append(hf.encode(p, add_special_tokens=False))
    messages = [{"role": "user", "content": "  hello world  "}]
    out["chat_text"] = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(chat_ids, list):  # transformers 5 returns a BatchEncoding by default
        chat_ids = chat_ids["input_ids"]
    out["chat_ids"] = list(chat_ids)
    # What the Rust side does with chat_text: encode without special tokens.
    assert out["chat_ids"] == hf.encode(out["chat_text"], add_special_tokens=False)
    ids = torch.tensor([out["with_special"][0]])
    with torch.no_grad():
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    assert new.shape == (8,), new.shape  # no stop on EOS
    out["greedy_ids"] = new.tolist()
    out["greedy_text"] = hf.decode(new, skip_special_tokens=True)
    with open(os.path.join(path, "expected_text.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(json.dumps(out, ensure_ascii=False))


def adapter(kind):
    base_dir = os.path.join(OUT, "tiny-llama-v5")
    base = LlamaForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_dora=(kind == "dora"),
        use_rslora=(kind == "dora"),
    )
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    path = os.path.join(OUT, f"{kind}-v5")
    model.save_pretrained(path)
    # Keep the fixture free of this machine's paths and of PEFT's model-card template.
    config_path = os.path.join(path, "adapter_config.json")
    with open(config_path) as f:
        saved_config = json.load(f)
    saved_config["base_model_name_or_path"] = "../tiny-llama-v5"
    with open(config_path, "w") as f:
        json.dump(saved_config, f, indent=2, sort_keys=True)
    if os.path.exists(os.path.join(path, "README.md")):
        os.remove(os.path.join(path, "README.md"))
    expected = load_file(os.path.join(base_dir, "expected.safetensors"))
    ids, mask = expected["input_ids"], expected["attention_mask"]
    labels = ids.clone()
    labels[mask == 0] = -100
    # As make_adapter_fixtures.py: the first real token of the left-padded row is predicted
    # from a padding query (kernel-dependent output): not a target.
    labels[1, 3] = -100
    model.train()  # dropout is 0; DoRA detaches its norm in training mode
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape([]),
    }
    saved = load_file(os.path.join(path, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    for key in saved:
        # PEFT saves `...lora_A.weight` for the parameter `...lora_A.default.weight`.
        pname = key.replace("lora_A.weight", "lora_A.default.weight").replace(
            "lora_B.weight", "lora_B.default.weight").replace(
            "lora_magnitude_vector", "lora_magnitude_vector.default.weight")
        grad = params[pname].grad
        assert grad is not None and grad.abs().max() > 0, key
        tensors["grad." + key] = grad.float().contiguous()
    save_file(tensors, os.path.join(path, "expected.safetensors"))
    print(kind, "loss", out.loss.item(), "adapter tensors", len(saved))
    # The adapter matters, and the saved one loads back in PEFT to the same logits.
    plain = LlamaForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        base_logits = plain(input_ids=ids, attention_mask=mask).logits
    again = PeftModel.from_pretrained(plain, path)
    again.eval()
    with torch.no_grad():
        reload = again(input_ids=ids, attention_mask=mask).logits
    keep = labels != -100
    diff = (reload - out.logits).abs().max().item()
    moved = (base_logits - out.logits)[keep].abs().max().item()
    print(kind, "reload max abs diff", diff, "adapter changes logits by up to", moved)
    assert diff == 0.0 and moved > 0.1
    print(kind, "adapter_config.json:", json.dumps(saved_config, indent=2, sort_keys=True))


def main():
    os.makedirs(OUT, exist_ok=True)
    build("tiny-llama-v5", LlamaForCausalLM(llama({"rope_type": "default", "rope_theta": 5000.0})))
    tokenizer(os.path.join(OUT, "tiny-llama-v5"))
    expected_text(os.path.join(OUT, "tiny-llama-v5"))
    build("tiny-llama3-v5", LlamaForCausalLM(llama({
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    })))
    build("tiny-llama-linear-v5", LlamaForCausalLM(llama(
        {"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0})))
    qwen = Qwen2Config(
        vocab_size=80,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    build("tiny-qwen2-v5", Qwen2ForCausalLM(qwen))
    # Mistral with a 4-token sliding window: the 9-token inputs and the 6 greedy tokens
    # (decoded one at a time against the cache) all reach past the window.
    mistral = MistralConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        sliding_window=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    build("tiny-mistral-window-v5", MistralForCausalLM(mistral))
    adapter("lora")
    adapter("dora")
    # safetensors 0.8 writes its files with mode 0600 (temporary file + rename); make them
    # readable like every other fixture.
    for root, _, files in os.walk(OUT):
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


if __name__ == "__main__":
    main()
