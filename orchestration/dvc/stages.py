"""The pipeline as dvc.yaml defines it: stages with their commands, inputs, outputs and parameters.

dvc.yaml is the single definition of every step, and DVC reads it: ``index.py`` runs in DVC's own
interpreter, loads ``Repo(root).index`` (``vars``, ``${}``, ``foreach`` and ``matrix`` resolved by DVC)
and hands the stages and their graph over as JSON. Dagster then runs exactly the commands DVC would run
and ``dvc commit``s them; dvc.lock records the resolved command and ``dvc status`` reports any difference.

DVC runs a command through a shell; Dagster runs it as plain words (``command.py``). So that both run
the same thing and params.yaml cannot smuggle shell code into either, params.yaml is checked against
its schema (``params.py``), a value DVC pasted into a stage must be one plain word, and a command may
not use shell operators (``;``, ``|``, ``&&``, redirections).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestration.dvc.cli import DvcError, find_python
from orchestration.dvc.params import WORD, ParamsError, validate

INDEX_SCRIPT = Path(__file__).with_name("index.py")


# What a stage's outputs are: it decides their asset checks, UI reports and MLflow logging.
ROLES = ("captions", "shards", "dataset", "task-data", "train", "evaluate")


class PipelineError(ValueError):
    """dvc.yaml or params.yaml cannot be read as a pipeline; the message names the file and field."""


@dataclass(frozen=True)
class Stage:
    """One runnable DVC stage (a ``foreach`` item or ``matrix`` cell is one stage named ``name@item``)."""

    name: str
    asset: str
    item: str | None
    cmds: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: dict
    desc: str
    meta: dict = field(default_factory=dict)
    upstream: tuple[str, ...] = ()  # the stages this one depends on, in DVC's graph (``name@item``)

    @property
    def role(self) -> str | None:
        """What the stage's outputs are (dvc.yaml ``meta.dagster.role``, one of ``ROLES``); None: a stage
        the orchestration only runs (no checks, reports or MLflow logging)."""
        return self.meta.get("role")


@dataclass(frozen=True)
class StageGroup:
    """A dvc.yaml stage: one stage, or a ``foreach``/``matrix`` stage with one stage per item (a partition)."""

    asset: str
    stages: tuple[Stage, ...]
    partitioned: bool

    @property
    def items(self) -> list[str]:
        return [stage.item for stage in self.stages if stage.item is not None]

    def stage(self, item: str | None = None) -> Stage:
        for stage in self.stages:
            if stage.item == item:
                return stage
        raise PipelineError(f"dvc.yaml: stage {self.asset} has no item {item!r} (items: {', '.join(self.items)})")

    @property
    def first(self) -> Stage:
        return self.stages[0]

    def code_version(self) -> str:
        """Changes whenever a command, an input path or a tracked parameter value changes."""
        text = json.dumps([[s.cmds, s.deps, s.outs, s.params] for s in self.stages], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def select(context: dict, expression: str, where: str):
    """``a.b[0]`` looked up in ``context``; ``where`` names the field for the error message."""
    value = context
    for part in expression.replace("[", ".").replace("]", "").split("."):
        part = part.strip()
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise PipelineError(f"{where}: ${{{expression}}} is not defined in params.yaml")
    return value


def check_command(cmd: str, where: str) -> None:
    """``cmd`` is plain words: a shell and ``shlex.split`` read it alike (no operators, no expansions)."""
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    try:
        operators = [token for token in lexer if token and set(token) <= set("();<>|&")]
    except ValueError as err:
        raise PipelineError(f"{where}: cannot split into words ({err})") from None
    if operators or "$(" in cmd or "`" in cmd:
        found = operators[0] if operators else "$(" if "$(" in cmd else "`"
        raise PipelineError(f"{where}: uses the shell operator {found!r}; a stage command is one program and its arguments")


def check_word(key: str, value, where: str) -> None:
    """A value pasted into a stage must be one plain word: the same to a shell and to ``shlex``.
    ``key`` is a params.yaml key or DVC's ``file:key`` for another params file."""
    if isinstance(value, str) and (not WORD.fullmatch(value) or value.startswith("-")):
        path, _, key = key.rpartition(":") if ":" in key else ("params.yaml", "", key)
        raise PipelineError(
            f"{path}: {key}: {value!r} cannot be pasted into {where} as one plain "
            "word (letters, digits and _.,:/+=@%-; no spaces, quotes or shell characters; not starting with -)"
        )


_INDEX_CACHE: dict[Path, tuple[list, dict]] = {}


def _fingerprint(root: Path, paths: list[str]) -> list:
    return [[path, hashlib.sha1((root / path).read_bytes()).hexdigest() if (root / path).is_file() else None]
            for path in paths]


def _disk_cache(root: Path) -> Path | None:
    """Where processes of one project share DVC's reading (Dagster runs a step per process)."""
    return root / ".dvc" / "tmp" / "m2m-stages.json" if (root / ".dvc").is_dir() else None


def _cached(root: Path) -> dict | None:
    entry = _INDEX_CACHE.get(root)
    if entry is None and (path := _disk_cache(root)) and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            entry = (saved["fingerprint"], saved["index"])
        except (OSError, ValueError, KeyError, TypeError):
            entry = None
    if entry and entry[0] == _fingerprint(root, entry[1]["read"]):
        _INDEX_CACHE[root] = entry
        return entry[1]
    return None


def _remember(root: Path, index: dict) -> None:
    entry = (_fingerprint(root, index["read"]), index)
    _INDEX_CACHE[root] = entry
    if path := _disk_cache(root):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"fingerprint": entry[0], "index": index}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only checkout still works, from memory
            tmp.unlink(missing_ok=True)


def dvc_index(root: str | Path) -> dict:
    """DVC's resolved stages of the project at ``root`` (``index.py``); read again only when one of
    the files DVC read for them (dvc.yaml, params files, ``vars`` files) has changed."""
    root = Path(root).resolve()
    if (index := _cached(root)) is not None:
        return index
    try:
        python = find_python(root)
    except DvcError as err:
        raise PipelineError(str(err)) from None
    proc = subprocess.run([python, str(INDEX_SCRIPT), str(root)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"}, check=False)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()] or [f"exit {proc.returncode}"]
        raise PipelineError(f"dvc.yaml: DVC cannot read the pipeline: {lines[-1]}")
    index = json.loads(proc.stdout)
    _remember(root, index)
    return index


def _stage(entry: dict, strict: bool) -> Stage:
    name = entry["name"]
    asset, _, item = name.partition("@")
    where = f"dvc.yaml: stages.{name}"
    if strict:
        for key, value in entry["pasted"].items():
            check_word(key, value, where)
        for i, cmd in enumerate(entry["cmd"]):
            check_command(cmd, f"{where}.cmd" + (f"[{i}]" if len(entry["cmd"]) > 1 else ""))
    meta = (entry["meta"] or {}).get("dagster") or {}
    if meta.get("role") not in (None, *ROLES):
        raise PipelineError(f"{where}.meta.dagster.role: expected one of {', '.join(ROLES)}, got {meta.get('role')!r}")
    return Stage(
        name=name,
        asset=asset,
        item=item or None,
        cmds=tuple(cmd.strip() for cmd in entry["cmd"]),
        deps=tuple(entry["deps"]),
        outs=tuple(entry["outs"]),
        params=entry["params"],
        desc=" ".join(entry["desc"].split()),
        meta=meta,
        upstream=tuple(entry["upstream"]),
    )


def load_pipeline(root: str | Path, strict: bool = True) -> dict[str, StageGroup]:
    """Every dvc.yaml stage of the project at ``root``, by asset name, in dvc.yaml order.

    ``strict`` (before running anything): params.yaml must fit its schema, values DVC pasted into a stage
    must be plain words, commands must be free of shell operators. The asset graph is built with
    ``strict=False``, so a bad value fails the materialization that would use it, in one line, instead of
    the code location.
    """
    root = Path(root)
    if strict:
        try:
            validate(read_yaml(root / "params.yaml"), str(root / "params.yaml"))
        except ParamsError as err:
            raise PipelineError(str(err)) from None
    stages = [_stage(entry, strict) for entry in dvc_index(root)["stages"]]
    if not stages:
        raise PipelineError(f"{root / 'dvc.yaml'}: no stages")
    groups: dict[str, list[Stage]] = {}
    for stage in stages:
        groups.setdefault(stage.asset, []).append(stage)
    return {
        asset: StageGroup(asset=asset, stages=tuple(members), partitioned=members[0].item is not None)
        for asset, members in groups.items()
    }

def _covers(outer: str, inner: str) -> bool:
    """True when path ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def producers(groups: dict[str, StageGroup], dep: str) -> list[Stage]:
    """The stages whose outputs are ``dep``, contain it, or lie inside it (a folder dependency)."""
    return [
        stage
        for group in groups.values()
        for stage in group.stages
        if any(_covers(out, dep) or _covers(dep, out) for out in stage.outs)
    ]


def upstream_assets(groups: dict[str, StageGroup], asset: str) -> list[str]:
    """The assets whose stages feed ``asset``'s stages in DVC's graph, in dvc.yaml order."""
    found = {name.partition("@")[0] for stage in groups[asset].stages for name in stage.upstream}
    found.discard(asset)
    return [name for name in groups if name in found]
