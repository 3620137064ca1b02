"""The dvc CLI wrapper: status, commit, dvc.lock hashes, and commits of parallel partitions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestration.dvc.cli import Dvc, DvcError, find_executable

ITEMS = ["000000", "000001", "000002", "000003"]


@pytest.fixture()
def repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = Dvc(tmp_path)
    dvc.run("init", "-q")
    (tmp_path / "params.yaml").write_text("items: [" + ", ".join(f"'{i}'" for i in ITEMS) + "]\nsize: 3\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  part:\n"
        "    foreach: ${items}\n"
        "    do:\n"
        f"      cmd: {sys.executable} -c \"open('out-${{item}}.txt', 'w').write('${{item}}' * ${{size}})\"\n"
        "      params:\n        - size\n"
        "      outs:\n        - out-${item}.txt\n"
    )
    return dvc


def make(dvc: Dvc, item: str) -> None:
    (dvc.root / f"out-{item}.txt").write_text(item * 3)


def test_status_then_commit_then_clean_with_the_hash_in_dvc_lock(repo):
    assert "part@000000" in repo.status("part@000000")
    make(repo, "000000")
    repo.commit("part@000000")
    assert repo.status("part@000000") == {}
    md5 = hashlib.md5(b"000000" * 3).hexdigest()
    assert repo.hashes("part@000000", "outs") == {"out-000000.txt": md5}
    assert repo.lock_entry("part@000001") == {}


def test_parallel_partitions_commit_without_fighting_over_the_lock(repo):
    for item in ITEMS:
        make(repo, item)
    with ThreadPoolExecutor(len(ITEMS)) as pool:
        list(pool.map(lambda item: repo.commit(f"part@{item}"), ITEMS))
    assert all(repo.status(f"part@{item}") == {} for item in ITEMS)
    assert set(repo.hashes("part@000003", "outs")) == {"out-000003.txt"}
    assert repo.run("status", "--json").strip() == "{}"


def test_status_and_commit_are_answered_by_one_dvc_session_as_the_dvc_command_would(repo):
    from orchestration.dvc import cli as dvc_cli

    assert repo.ask("status", "part@000001")["status"] == json.loads(repo.run("status", "part@000001", "--json"))
    make(repo, "000001")
    assert repo.ask("commit", "part@000001") == {"ok": True}
    assert repo.ask("status", "part@000001") == {"ok": True, "status": {}}
    assert repo.run("status", "part@000001", "--json").strip() == "{}"
    assert repo.hashes("part@000001", "outs") == {"out-000001.txt": hashlib.md5(b"000001" * 3).hexdigest()}
    first = dvc_cli.session(repo.executable, repo.root, repo.env())
    repo.status("part@000002")
    assert dvc_cli.session(repo.executable, repo.root, repo.env()) is first  # one process for every call
    first.proc.kill()
    first.proc.wait()
    assert "part@000002" in repo.status("part@000002")  # a session that died is started again


def test_a_failing_dvc_call_is_one_line(repo):
    with pytest.raises(DvcError) as err:
        repo.status("no_such_stage")
    assert str(err.value).startswith("dvc status no_such_stage --json: ")
    assert "\n" not in str(err.value)


def test_executable_comes_from_m2m_dvc_first(monkeypatch, tmp_path):
    monkeypatch.setenv("M2M_DVC", "/opt/dvc/bin/dvc")
    assert find_executable(tmp_path) == "/opt/dvc/bin/dvc"
    monkeypatch.delenv("M2M_DVC")
    assert find_executable(tmp_path).endswith("dvc")
