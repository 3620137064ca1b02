"""SD-2.1's CLIP tokenizer, offline, from the shipped BPE vocabulary (section 4).

SD-2.1 conditions on OpenCLIP ViT-H-14, whose tokenizer is OpenAI CLIP's byte-level BPE: 49,408 ids,
``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, context 77. Text is cleaned exactly as
open_clip cleans it (ftfy, HTML unescaping, whitespace collapsing, lower case); the BPE itself runs in
the Rust ``tokenizers`` library, batched, so counting the 12.4M CC12M captions takes minutes.
"""

from __future__ import annotations

import gzip
import html
import json
from functools import lru_cache
from pathlib import Path

import ftfy
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from m2m.files import atomic_file
from m2m.resources import resource_path

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
# open_clip spells them differently and, like the reference, turns these literals in a caption into SOT/EOT.
OPEN_CLIP_SOT, OPEN_CLIP_EOT = "<start_of_text>", "<end_of_text>"
SOT_ID, EOT_ID = 49406, 49407
# open_clip keeps the first 49152 - 256 - 2 merges of the file (its first line is a header).
N_MERGES = 49152 - 256 - 2
# CLIP's pre-tokenisation: contractions, letter runs, single digits, punctuation runs.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
    """The 256 characters standing for bytes in byte-level BPE (GPT-2's mapping), in vocabulary order:
    bytes that are printable characters first, then the others mapped to U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return (*map(chr, printable), *(chr(256 + i) for i in range(len(others))))


@lru_cache(maxsize=1)
def bpe_merges() -> tuple[tuple[str, str], ...]:
    """The 48,894 merges of the shipped vocabulary, in rank order."""
    path = resource_path(VOCAB_FILE)
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = tuple(tuple(line.split()) for line in lines)
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {N_MERGES} BPE merges of two symbols each")
    return merges


@lru_cache(maxsize=2)
def clip_vocab(sot: str = SOT_TOKEN, eot: str = EOT_TOKEN) -> dict[str, int]:
    """Token -> id: bytes, bytes ending a word, merges, then SOT and EOT (49,408 entries)."""
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in bpe_merges()), sot, eot]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or vocab[sot] != SOT_ID or vocab[eot] != EOT_ID:
        raise ValueError(f"{VOCAB_FILE}: built a vocabulary of {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def clean_caption(text: str) -> str:
    """open_clip's text cleaning: ftfy, HTML unescaping twice, whitespace collapsed, lower case.

    ftfy and unescaping cannot change printable ASCII without '&', so the common case skips them.
    """
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """CLIP BPE over cleaned text; ids match open_clip's ``SimpleTokenizer`` (SD-2.1's text encoder)."""

    def __init__(self) -> None:
        bpe = models.BPE(
            vocab=clip_vocab(OPEN_CLIP_SOT, OPEN_CLIP_EOT),
            merges=list(bpe_merges()),
            unk_token=OPEN_CLIP_EOT,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
        self.backend = Tokenizer(bpe)
        self.backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        self.backend.add_special_tokens([OPEN_CLIP_SOT, OPEN_CLIP_EOT])
        if self.backend.get_vocab_size() != VOCAB_SIZE:
            raise ValueError(f"CLIP tokenizer has {self.backend.get_vocab_size()} ids, expected {VOCAB_SIZE}")

    def encode(self, text: str) -> list[int]:
        """Untruncated ids of one caption, SOT and EOT included."""
        return [SOT_ID, *self.backend.encode(clean_caption(text), add_special_tokens=False).ids, EOT_ID]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Untruncated token counts, SOT and EOT included, of a batch of captions (Rust, parallel)."""
        encodings = self.backend.encode_batch([clean_caption(t) for t in texts], add_special_tokens=False)
        return [len(e.ids) + 2 for e in encodings]


@lru_cache(maxsize=1)
def load_tokenizer() -> ClipTokenizer:
    """The process-wide CLIP tokenizer (built once, ~0.5 s)."""
    return ClipTokenizer()


def write_tokenizer_folder(folder: str | Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` for ``transformers.CLIPTokenizer.from_pretrained(folder)``.

    The layout and special tokens are those of SD-2.1-base's ``tokenizer/`` folder (pad token "!", id 0).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "vocab.json": json.dumps(clip_vocab(), ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in bpe_merges()) + "\n",
        "special_tokens_map.json": json.dumps(
            {"bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": "!"}
        ),
        "tokenizer_config.json": json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": CONTEXT_LENGTH,
                "bos_token": SOT_TOKEN,
                "eos_token": EOT_TOKEN,
                "unk_token": EOT_TOKEN,
                "pad_token": "!",
                "do_lower_case": True,
            }
        ),
    }
    for name, text in files.items():
        with atomic_file(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return folder
