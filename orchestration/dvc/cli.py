"""The ``dvc`` command line, as the orchestration uses it: status, commit, and the hashes in dvc.lock.

DVC lives in its own environment (``.venv-dvc``): its hydra-core pins an antlr4 runtime that
breaks Dagster's asset-selection parser, so the two never share an interpreter. Every DVC call
takes one project-wide file lock, so shard partitions that finish together commit one after the
other and never contend for DVC's own repository lock. The commands themselves run outside it.

``status`` and ``commit``, twice per materialized stage, are answered by one long-lived DVC process per
project (``session.py``) instead of a ``dvc`` process each; when it cannot answer, the ``dvc``
command does, so errors read as DVC's own.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from orchestration.project import REPO


class DvcError(RuntimeError):
    """A ``dvc`` call failed; the message is DVC's own last line of explanation."""


def find_executable(root: Path) -> str:
    """``$M2M_DVC``, else the project's ``.venv-dvc``, else this checkout's, else ``dvc`` on PATH."""
    if os.environ.get("M2M_DVC"):
        return os.environ["M2M_DVC"]
    for base in (root, REPO):
        candidate = base / ".venv-dvc" / "bin" / "dvc"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("dvc")
    if not found:
        raise DvcError("dvc not found: run scripts/setup.sh (creates .venv-dvc) or set M2M_DVC to a dvc executable")
    return found


def find_python(root: Path) -> str:
    """The interpreter DVC runs in: the ``python`` beside the dvc executable, else the one its
    ``#!`` line names (a pipx or system install)."""
    executable = Path(find_executable(root))
    sibling = executable.with_name("python")
    if sibling.is_file():
        return str(sibling)
    with open(executable, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").strip()
    if first.startswith("#!") and Path(first[2:].split()[0]).is_file():
        return first[2:].split()[0]
    raise DvcError(f"{executable}: cannot tell which Python runs DVC; set M2M_DVC to .venv-dvc/bin/dvc")


# libyaml's loader where PyYAML has it: dvc.lock lists every input of every stage, and is read a few
# times per materialized stage (7x faster than the pure-Python loader on the tiny chain's lock).
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_lock(path: Path) -> dict:
    """A ``dvc.lock`` file as data (``{}`` when empty)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=LOADER) or {}


SESSION_SCRIPT = Path(__file__).with_name("session.py")


class DvcSession:
    """``session.py`` for the project at ``root``, run by ``python`` (DVC's interpreter)."""

    def __init__(self, python: str, root: Path, env: dict[str, str]):
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [python, str(SESSION_SCRIPT), str(root)], cwd=root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def ask(self, op: str, stage: str) -> dict | None:
        """DVC's answer, or None when the session cannot give one (it failed, or DVC raised)."""
        with self.lock:
            if self.proc.poll() is not None:
                return None
            try:
                self.proc.stdin.write(json.dumps({"op": op, "stage": stage}) + "\n")
                self.proc.stdin.flush()
                reply = json.loads(self.proc.stdout.readline() or "null")
            except (OSError, ValueError):
                self.close()
                return None
        return reply if isinstance(reply, dict) and reply.get("ok") else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


_SESSIONS: dict[tuple[str, Path], DvcSession] = {}
_SESSIONS_LOCK = threading.Lock()
MAX_SESSIONS = 4  # projects used by one process, each session ~60 MB: the least recently started go


def session(executable: str, root: Path, env: dict[str, str]) -> DvcSession | None:
    """This process's DVC session for ``root`` (started on first use); None when it cannot start."""
    with _SESSIONS_LOCK:
        current = _SESSIONS.get((executable, root))
        if current is None or current.proc.poll() is not None:
            try:
                python = find_python(root) if executable == find_executable(root) else None
                current = DvcSession(python, root, env) if python else None
            except (DvcError, OSError):
                current = None
            if current is not None:
                _SESSIONS.pop((executable, root), None)
                _SESSIONS[(executable, root)] = current
                while len(_SESSIONS) > MAX_SESSIONS:
                    _SESSIONS.pop(next(iter(_SESSIONS))).close()
        return current


@atexit.register
def _close_sessions() -> None:
    for current in _SESSIONS.values():
        current.close()


class Dvc:
    """The DVC project at ``root``."""

    def __init__(self, root: str | Path, executable: str | None = None):
        self.root = Path(root).resolve()
        self.executable = executable or find_executable(self.root)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(self, *args: str) -> str:
        """Run ``dvc ARGS`` in the project; returns stdout, raises :class:`DvcError` on failure."""
        proc = subprocess.run(
            [self.executable, *args], cwd=self.root, env=self.env(), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR")] or lines or [f"exit status {proc.returncode}"]
            raise DvcError(f"dvc {' '.join(args)}: {errors[-1]}")
        return proc.stdout

    def ask(self, op: str, stage: str) -> dict | None:
        """``op`` of ``stage`` through this process's DVC session; None: ask the ``dvc`` command."""
        current = session(self.executable, self.root, self.env())
        return current.ask(op, stage) if current else None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the project-wide lock that serialises DVC calls across processes."""
        path = self.root / ".dvc" / "tmp" / "orchestration.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def status(self, stage: str) -> dict:
        """What DVC sees changed in ``stage`` (deps, outs, params, command); empty when up to date."""
        with self.locked():
            reply = self.ask("status", stage)
            return reply["status"] if reply else json.loads(self.run("status", stage, "--json") or "{}")

    def commit(self, stage: str) -> None:
        """Record ``stage``'s current deps, params and outs in dvc.lock and its outs in the cache."""
        with self.locked():
            if not self.ask("commit", stage):
                self.run("commit", "--force", stage)

    def lock_entry(self, stage: str) -> dict:
        """``stage``'s entry in dvc.lock (``{}`` before its first commit)."""
        path = self.root / "dvc.lock"
        if not path.is_file():
            return {}
        with self.locked():
            data = read_lock(path)
        return (data.get("stages") or {}).get(stage) or {}

    def hashes(self, stage: str, kind: str) -> dict[str, str]:
        """``{path: md5}`` of ``stage``'s ``deps`` or ``outs`` as dvc.lock records them."""
        return {entry["path"]: entry.get("md5", "") for entry in self.lock_entry(stage).get(kind, [])}
