"""Data: captions (section 4), MIS generation and shards, loading, task data (section 7.1).

Every file here is written atomically: to a temporary name in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
