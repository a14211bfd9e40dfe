"""A small tokenizer for the tiny LLaMA fixture, and what transformers does with it, for
crates/mixlora/tests/it/text.rs.

The tiny model has 96 tokens, so no real tokenizer fits; this trains a SentencePiece-style
BPE (Metaspace pre-tokenizer, BOS added by a TemplateProcessing post-processor, as LLaMA
tokenizers are) on a fixed text with the `tokenizers` library, writes it as
crates/mixlora/tests/fixtures/tiny-llama/tokenizer.json with a tokenizer_config.json that
carries special tokens (one as an AddedToken object, as many real configs do) and a chat
template that calls Python string methods, then records with transformers:
  encodings of several prompts (add_special_tokens True and False),
  apply_chat_template(..., add_generation_prompt=True) as text and ids,
  the greedy continuation (8 tokens) of the first prompt and its decoded text.
Output: tiny-llama/expected_text.json.

Usage: python make_tokenizer_fixture.py   (pins in requirements.txt)
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "../../../crates/mixlora/tests/fixtures/tiny-llama")

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


def main():
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
    tok.save(os.path.join(DIR, "tokenizer.json"))
    with open(os.path.join(DIR, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False, "special": True},
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "chat_template": CHAT_TEMPLATE,
        }, f, indent=2)

    hf = PreTrainedTokenizerFast.from_pretrained(DIR)
    model = LlamaForCausalLM.from_pretrained(DIR).eval()
    out = {"prompts": PROMPTS, "with_special": [], "without_special": []}
    for p in PROMPTS:
        out["with_special"].append(hf.encode(p, add_special_tokens=True))
        out["without_special"].append(hf.encode(p, add_special_tokens=False))
    messages = [{"role": "user", "content": "  hello world  "}]
    out["chat_text"] = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out["chat_ids"] = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([out["with_special"][0]])
    with torch.no_grad():
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    out["greedy_ids"] = new.tolist()
    out["greedy_text"] = hf.decode(new, skip_special_tokens=True)
    with open(os.path.join(DIR, "expected_text.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
