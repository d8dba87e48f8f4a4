"""A CLIP tokenizer for the scene language, built in code: every scene word is one token.

CLIP's tokenizer is byte-level BPE: a word starts as characters (the last one marked ``</w>``) and merges join
adjacent symbols by rank. We learn the merges from the scene vocabulary with plain BPE (repeatedly merge the most
frequent adjacent pair), so applying them in rank order rebuilds each vocabulary word as a single symbol. The 512
byte-level symbols stay in the vocabulary, so any other text still tokenizes (one token per character). The files
are ordinary ``vocab.json`` / ``merges.txt``: ``CLIPTokenizer.from_pretrained(folder)`` loads them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter

from .scenes import BACKGROUND_COLOURS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES

MAX_LENGTH = 40  # the longest scene prompt is 34 tokens with start and end


def scene_words() -> list[str]:
    """Every word a scene prompt can use, sorted."""
    words = {"a", "at", "the", "on", "in", "and", "background", ","}
    words.update(SHAPES, SIZES, COLOURS, BACKGROUND_COLOURS, (t for t in TEXTURES if t != "plain"))
    for position in POSITIONS:
        words.update(position.split())
    return sorted(words)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE over ``words`` (each counted once) until every word is one symbol; ties broken by the pair's
    text, so the result is deterministic."""
    pieces = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for symbols in pieces.values():
            pairs.update(zip(symbols, symbols[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in pieces.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            pieces[word] = tuple(out)


def write_tokenizer_files(folder: str, config: bool = True) -> None:
    """Write ``vocab.json``, ``merges.txt`` and (with ``config``) the tokenizer config of the scene tokenizer into
    ``folder``. An exported pipeline gets the first two beside the ``tokenizer.json`` that transformers 5 saves:
    transformers 4's ``CLIPTokenizer`` reads only them (without them the shapes model does not load there)."""
    from ..models import byte_level_vocab

    vocab = byte_level_vocab()
    merges = learn_merges(scene_words())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    if not config:
        return
    settings = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)


def scene_tokenizer():
    """The scene `CLIPTokenizer` (built through files, as ``from_pretrained`` would load it)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(folder)
        return CLIPTokenizer.from_pretrained(folder)
