"""m2m/files.py: an output is replaced whole or left as it was."""

from __future__ import annotations

import pytest

from m2m.files import atomic_file, atomic_folder


def test_a_file_is_replaced_only_when_its_block_ends(tmp_path):
    path = tmp_path / "sub" / "out.json"
    with atomic_file(path) as tmp:
        tmp.write_text("first")
        assert not path.exists()  # nothing is visible while it is written
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_folder(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]  # the old folder is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
