"""Weight files checked before they are used: a damaged file is named in one line."""

from __future__ import annotations

from pathlib import Path


def verify_safetensors(folder: str | Path) -> None:
    """Every ``*.safetensors`` under ``folder`` has a readable header and every tensor it promises.

    Raises ``ValueError`` naming the first file that is truncated or not safetensors at all; loaders
    would otherwise fail with a deserialisation error that names no file.
    """
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            raise ValueError(f"{path}: unreadable safetensors ({type(err).__name__}: {err})") from None
