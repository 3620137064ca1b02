"""Package data: the CLIP BPE vocabulary and the CC12M-format caption samples (see NOTICE.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(name: str) -> Path:
    """Path of a file shipped in ``m2m/resources``."""
    path = Path(str(files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: package resource missing; reinstall the m2m package")
    return path
