"""What each params.yaml key may hold, checked before any stage runs.

The ``m2m`` commands check their own flags, but by then a bad value is reported as a flag of one
command in the middle of a run. Checked here, the same value is refused up front, in one line that
names ``params.yaml`` and the key. Keys a stage reads but this schema does not list are still
refused when they would not be a plain word on the command line (``stages.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from m2m.models.presets import PRESETS

# A word that reads the same to a shell and to ``shlex``: no spaces, quotes, ``;|&$<>`` or backticks.
WORD = re.compile(r"[A-Za-z0-9_.,:/+=@%-]+")


class ParamsError(ValueError):
    """A params.yaml value is missing or out of range; the message names the key."""


Check = Callable[[object], str | None]  # the value -> None when fine, else what was expected


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"an integer in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        return None

    return check


def number(low: float, high: float, low_open: bool = False) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "a finite number"
        if value < low or (low_open and value == low) or value > high:
            return f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None

    return check


def choice(*options: str) -> Check:
    def check(value):
        return None if value in options else f"one of {', '.join(options)}"

    return check


def path() -> Check:
    def check(value):
        if not isinstance(value, str) or not WORD.fullmatch(value) or value.startswith("-"):
            return "a relative path of letters, digits and _.,:/+=@%- (no spaces or shell characters)"
        if value.startswith("/") or ".." in value.split("/"):
            return "a path inside the project (relative, no '..')"
        return None

    return check


def auto_or(check: Check) -> Check:
    def either(value):
        return None if value == "auto" else (f"auto or {expected}" if (expected := check(value)) else None)

    return either


def flag() -> Check:
    def check(value):
        return None if isinstance(value, bool) else "true or false"

    return check


# Learning rates above 1 make AdamW diverge within a step or two; nothing here trains at that scale.
TRAINING = {
    "steps": integer(1),
    "batch_size": integer(1),
    "lr": number(0, 1, low_open=True),
    "seed": integer(0),
    "sample_steps": integer(1),
    "checkpoint_every": integer(0),
    "micro_batch_size": auto_or(integer(1)),
    "num_processes": integer(1, 64),
    "mixed_precision": choice("auto", "no", "fp16", "bf16"),
    "gradient_checkpointing": flag(),
    "ema": flag(),
}

SCHEMA: dict[str, Check] = {
    "preset": choice(*PRESETS),
    **{f"weights.{name}": path() for name in ("sd", "dino", "clip", "inception")},
    "captions.input": path(),
    "captions.max_tokens": integer(3, 77),
    "mis.backend": choice("procedural", "sd"),
    "mis.samples_per_shard": integer(1),
    "mis.images_per_caption": integer(2),
    "mis.image_size": integer(8, 4096),
    "mis.seed": integer(0),
    "mis.precompute": flag(),
    "manifest.test_percent": number(0, 100),
    "tasks.count": integer(1),
    "tasks.image_size": integer(8, 4096),
    "tasks.seed": integer(0),
    **{f"pretrain.{key}": check for key, check in TRAINING.items()},
    **{f"finetune.{key}": check for key, check in TRAINING.items()},
    "evaluate.num_sets": integer(1),
    "evaluate.preceding": integer(1),
    "evaluate.generate": integer(1),
    "evaluate.steps": integer(1),
    "evaluate.metrics_backend": choice("tiny", "standard"),
}


def lookup(params: dict, key: str):
    """``params[a][b]`` for ``key`` ``a.b``; ``KeyError`` naming the first missing part."""
    value = params
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(".".join(key.split(".")[: i + 1]))
        value = value[part]
    return value


def validate(params: dict, source: str = "params.yaml") -> None:
    """Raise :class:`ParamsError` for the first value of ``params`` the schema refuses.

    A key may be absent (a stage that reads it then says so); a key that is present must fit.
    """
    for key, check in SCHEMA.items():
        try:
            value = lookup(params, key)
        except KeyError:
            continue
        expected = check(value)
        if expected is not None:
            raise ParamsError(f"{source}: {key}: expected {expected}, got {value!r}")
