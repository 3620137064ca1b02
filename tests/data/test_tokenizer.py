"""The shipped CLIP tokenizer against a reference encoder written from open_clip's algorithm."""

from __future__ import annotations

import gzip
import html
import random

import ftfy
import pytest
import regex

from m2m.data import tokenizer as tk
from m2m.resources import resource_path


class ReferenceCLIPEncoder:
    """REFERENCE ONLY: open_clip's ``SimpleTokenizer`` (ViT-H-14, SD-2.1) re-implemented in pure Python.

    Cleaning: ftfy, HTML unescaping twice, whitespace collapsed, lower case. Pre-tokenisation: the CLIP
    regex (case-insensitive, special tokens first). BPE: greedy lowest-rank merge over the UTF-8 bytes of
    each piece mapped to printable characters, the last symbol carrying ``</w>``.
    """

    def __init__(self) -> None:
        lines = gzip.decompress(resource_path("bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
        byte_chars = {b: chr(b) for b in keep}
        for i, b in enumerate(b for b in range(256) if b not in byte_chars):
            byte_chars[b] = chr(256 + i)
        self.byte_chars = byte_chars
        symbols = [byte_chars[b] for b in keep] + [byte_chars[b] for b in range(256) if b not in keep]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.cache: dict[str, tuple[str, ...]] = {}
        self.pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, piece: str) -> tuple[str, ...]:
        if piece not in self.cache:
            self.cache[piece] = self._merge(piece)
        return self.cache[piece]

    def _merge(self, piece: str) -> tuple[str, ...]:
        if piece in ("<start_of_text>", "<end_of_text>"):
            return (piece,)
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(word)

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = " ".join(text.split()).strip().lower()
        ids = [49406]
        for piece in self.pattern.findall(text):
            chars = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[s] for s in self.bpe(chars))
        return ids + [49407]


@pytest.fixture(scope="module")
def reference() -> ReferenceCLIPEncoder:
    return ReferenceCLIPEncoder()


@pytest.fixture(scope="module")
def clip() -> tk.ClipTokenizer:
    return tk.load_tokenizer()


TRICKY = [
    "A photo of a red circle on a striped background",
    "Café “crème brûlée” — it’s ﬁne… ＦＵＬＬＷＩＤＴＨ",
    "ΟΔΟΣ ΣΟΦΟΣ: Greek capitals with a final sigma",
    "emoji 🎉🎉 family 👩‍👩‍👧 thumbs 👍🏽 flags 🇫🇷",
    "日本語のキャプション と 한국어 캡션 and 中文字幕",
    "supercalifragilisticexpialidocious" * 8,
    "x" * 300,
    "&amp;amp; &lt;b&gt; <PERSON> at the 2019 event &#39;quoted&#39;",
    "tabs\tnew\nlines\r\nand\u00a0no-break\u2009thin\u3000ideographic spaces",
    "mojibake: cafÃ© and donâ€™t",
    "don't WON'T we'll they're I'M it'S",
    "digits 1234567890 and 3.14159 and ⅷ ½ ²",
    "zero\u200bwidth\u200djoiner and combining a\u0301\u0301",
    "control \x1b[31mred\x1b[0m chars \x00\x07",
    "<start_of_text> literal specials <end_of_text> and <|endoftext|>",
    "«quotes» „low“ ‹single› and dashes – — ‐",
    "Straße İstanbul ǅemal ﬀ ŉ",
    "",
    "   ",
]


@pytest.mark.parametrize("caption", TRICKY)
def test_ids_match_reference_on_tricky_captions(caption, clip, reference):
    assert clip.encode(caption) == reference.encode(caption)


@pytest.mark.parametrize("n_tokens", [75, 76, 77, 78])
def test_counts_at_the_context_boundary(n_tokens, clip, reference):
    # "red" is one token; with SOT and EOT, k words make k + 2 tokens.
    caption = " ".join(["red"] * (n_tokens - 2))
    assert clip.count_tokens([caption]) == [n_tokens]
    assert len(reference.encode(caption)) == n_tokens
    # a multi-token word ending exactly at the boundary
    word = "supercalifragilisticexpialidocious"
    per_word = len(reference.encode(word)) - 2
    filler = " ".join(["blue"] * (n_tokens - 2 - per_word))
    assert clip.count_tokens([f"{filler} {word}"]) == [len(reference.encode(f"{filler} {word}"))] == [n_tokens]


def test_random_mixed_script_text_matches_reference(clip, reference):
    rng = random.Random(0)
    alphabet = [chr(i) for i in range(32, 127)] + list(
        "éèçàüß“”‘’—–…€£©®™°±×÷½αβγΩЖжщ中文字日本한국어🙂🚀👍🏽\u00a0\u2009\u200b\u3000ﬁＡｚ&;#"
    )
    captions = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(400)]
    assert clip.count_tokens(captions) == [len(reference.encode(c)) for c in captions]
    assert [clip.encode(c) for c in captions[:50]] == [reference.encode(c) for c in captions[:50]]


def test_vocabulary_is_sd21s():
    vocab = tk.clip_vocab()
    assert len(vocab) == tk.VOCAB_SIZE == 49408
    assert vocab[tk.SOT_TOKEN] == 49406 and vocab[tk.EOT_TOKEN] == 49407
    assert len(tk.bpe_merges()) == 48894
    assert vocab["a</w>"] == 320 and vocab["red</w>"] == 736


def test_counts_are_untruncated_and_batched_like_single(clip):
    captions = ["word " * 200, "a cat", ""]
    assert clip.count_tokens(captions) == [len(clip.encode(c)) for c in captions] == [202, 4, 2]


def test_folder_loads_as_transformers_clip_tokenizer(tmp_path, clip):
    from transformers import CLIPTokenizer

    folder = tk.write_tokenizer_folder(tmp_path / "tokenizer")
    hf = CLIPTokenizer.from_pretrained(folder)
    assert hf.vocab_size == 49408 and hf.bos_token_id == 49406 and hf.eos_token_id == 49407
    assert hf.pad_token_id == 0 and hf.model_max_length == 77
    captions = ["A photo of a red circle on a striped background", "neon stars, pastel dots; it's 3 o'clock"]
    assert [hf(c).input_ids for c in captions] == [clip.encode(c) for c in captions]
    assert sorted(p.name for p in folder.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
