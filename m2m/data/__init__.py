"""Data: captions (section 4), MIS generation and shards, loading, task data (section 7.1).

Every file here is written whole or not at all (``m2m.files``).
"""

from __future__ import annotations

import json
from pathlib import Path

from m2m.files import atomic_file


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
