"""A tiny random Llama built offline, for demos, tests and benchmarks without a download.

A byte-level BPE tokenizer trained on a few hundred English words (JSON punctuation and
digits included) and a 2-layer, 32-wide model with random weights, saved with
``save_pretrained`` (well under a second on a CPU). Its replies are placeholder text; under
a JSON schema, constrained decoding still makes them valid JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from .._optional import optional

__all__ = ["build_tiny_model"]

TEXT = """the a an of to and in is it that for on with as was at by be this from or have not
are but what all were when we there can your which their said if do will each about how up out
them then she many some so these would other into has more her two like him see time could no
make than first been its who now people my made over did down only way find use may water long
little very after words called just where most know get through back much before go good new
write our used me man too any day same right look think also around another came come work
three word must because does part even place well such here take why things help put years
different away again off went old number great tell men say small every found still between
name should home big give air line set own under read last never us left end along while might
next sound below saw something thought both few those always looked show large often together
asked house world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost live page
got earth need far hand high year mother light parts country father let night following picture
being study second eyes soon times story boys since white days ever paper hard near sentence
better best across during today others however sure means knew try told young miles sun ways
thing whole hear example heard several change answer room sea against top turned learn point
city play toward five using himself usually money seen car morning given done open problem true
yes positive negative neutral label count summary title sentiment review bad user assistant
system hello"""
WORDS = TEXT.split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def build_tiny_model(
    folder: str | Path, *, seed: int = 0, hidden_size: int = 32, num_heads: int = 2
) -> Path:
    """Train the tokenizer and save a seeded random ``LlamaForCausalLM`` into ``folder``.

    ``hidden_size`` and ``num_heads`` shape the model (the MLP is twice as wide as the
    hidden size); the defaults give the 32-wide model. vLLM's CPU attention needs a head
    size of 64 or more: ``hidden_size=128, num_heads=2``. Needs the ``local`` extra (torch,
    transformers). Returns the folder, which any engine that reads Hugging Face folders can
    load. The model is written beside ``folder`` and renamed into place, so an interrupted
    build never leaves a half-written model there (a model already there is replaced).
    """
    if hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
        raise ValueError(
            f"hidden_size must be a positive multiple of num_heads, got {hidden_size}, {num_heads}"
        )
    folder = Path(folder)
    part = folder.with_name(f".{folder.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    try:
        _build(part, seed, hidden_size, num_heads)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            part.rename(folder)
            shutil.rmtree(old)
        else:
            part.rename(folder)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return folder


def _build(folder: Path, seed: int, hidden_size: int, num_heads: int) -> None:
    torch = optional("torch", "the tiny model", "local")
    transformers = optional("transformers", "the tiny model", "local")
    toks = optional("tokenizers", "the tiny model", "local")

    rng = random.Random(seed)
    corpus = []
    for _ in range(300):
        corpus.append(" ".join(rng.sample(WORDS, 6)))
        record = {
            rng.choice(WORDS): rng.choice(WORDS),
            "n": rng.randint(-999, 99999),
            "ok": rng.random() < 0.5,
            "x": None,
            "l": [1.5, 2],
        }
        corpus.append(json.dumps(record))
    tokenizer = toks.Tokenizer(toks.models.BPE())
    tokenizer.pre_tokenizer = toks.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = toks.decoders.ByteLevel()
    trainer = toks.trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=toks.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    hf_tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        initializer_range=0.2,  # the default 0.02 makes every prompt yield the same token
        tie_word_embeddings=False,
        pad_token_id=hf_tokenizer.pad_token_id,
        bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
