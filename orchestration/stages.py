"""The pipeline as dvc.yaml defines it: stages with their commands, inputs, outputs and parameters.

dvc.yaml is the single definition of every step; this module reads it the way DVC does (parameters
from params.yaml interpolated into ``${...}``, ``foreach`` expanded to ``stage@item``) so that Dagster
can run exactly the commands DVC would run and then ``dvc commit`` them. dvc.lock records the
command DVC resolved, and ``dvc status`` reports any difference, so a divergence cannot go unnoticed.

DVC runs a command through a shell; Dagster runs it as plain words (``command.py``). So that both
run the same thing and params.yaml cannot smuggle shell code into either, params.yaml is checked
against its schema (``params.py``), a value pasted into a command must be one plain word, and a
command may not use shell operators (``;``, ``|``, ``&&``, redirections).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestration.params import WORD, ParamsError, validate

# DVC's interpolation syntax: ${a.b[0]}, with \${ as an escape.
_EXPRESSION = re.compile(r"(?<!\\)\$\{(?P<inner>.*?)\}")
_SCALARS = (str, int, float, bool)


# What a stage's outputs are: it decides their asset checks, UI reports and MLflow logging.
ROLES = ("captions", "shards", "dataset", "task-data", "train", "evaluate")


class PipelineError(ValueError):
    """dvc.yaml or params.yaml cannot be read as a pipeline; the message names the file and field."""


@dataclass(frozen=True)
class Stage:
    """One runnable DVC stage (a ``foreach`` item is one stage named ``name@item``)."""

    name: str
    asset: str
    item: str | None
    cmds: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: dict
    desc: str
    meta: dict = field(default_factory=dict)

    @property
    def role(self) -> str | None:
        """What the stage's outputs are (dvc.yaml ``meta.dagster.role``, one of ``ROLES``); None: a stage
        the orchestration only runs (no checks, reports or MLflow logging)."""
        return self.meta.get("role")


@dataclass(frozen=True)
class StageGroup:
    """A dvc.yaml stage: one stage, or a ``foreach`` stage with one stage per item (a partition)."""

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


def interpolate(template, context: dict, where: str, embedded: list | None = None):
    """Resolve ``${...}`` in ``template`` as DVC does: a whole-value expression keeps its type,
    an embedded one is formatted (booleans as ``true``/``false``)."""
    if isinstance(template, list):
        return [interpolate(value, context, f"{where}[{i}]", embedded) for i, value in enumerate(template)]
    if isinstance(template, dict):
        return {key: interpolate(value, context, f"{where}.{key}", embedded) for key, value in template.items()}
    if not isinstance(template, str):
        return template
    matches = list(_EXPRESSION.finditer(template))
    if len(matches) == 1 and matches[0].group(0) == template:
        return select(context, matches[0]["inner"], where)
    pieces, start = [], 0
    for match in matches:
        value = select(context, match["inner"], where)
        if not isinstance(value, _SCALARS):
            raise PipelineError(
                f"{where}: ${{{match['inner']}}} is a {type(value).__name__}; only scalars can be embedded in text"
            )
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if embedded is not None:
            embedded.append((match["inner"].strip(), value, where))
        pieces += [template[start : match.start()], text]
        start = match.end()
    pieces.append(template[start:])
    return "".join(pieces).replace("\\${", "${")


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


def _paths(entries, where: str) -> tuple[str, ...]:
    """Stage ``deps``/``outs``/``metrics`` entries: plain paths or ``{path: options}``."""
    paths = []
    for i, entry in enumerate(entries or []):
        if isinstance(entry, dict) and len(entry) == 1:
            entry = next(iter(entry))
        if not isinstance(entry, str) or not entry:
            raise PipelineError(f"{where}[{i}]: expected a path, got {entry!r}")
        paths.append(entry)
    return tuple(paths)


def _param_values(keys, params: dict, where: str) -> dict:
    """The values of a stage's tracked parameters (``section`` or ``section.key``) from params.yaml."""
    values = {}
    for i, key in enumerate(keys or []):
        if not isinstance(key, str):
            raise PipelineError(f"{where}[{i}]: only params.yaml keys are supported, got {key!r}")
        values[key] = select(params, key, f"{where}[{i}]")
    return values


def check_word(expression: str, value, where: str) -> None:
    """A value pasted into text must be one plain word: the same to a shell and to ``shlex``."""
    if isinstance(value, str) and (not WORD.fullmatch(value) or value.startswith("-")):
        raise PipelineError(
            f"params.yaml: {expression}: {value!r} cannot be pasted into {where} as one plain "
            "word (letters, digits and _.,:/+=@%-; no spaces, quotes or shell characters; not starting with -)"
        )


def _stage(name: str, asset: str, item: str | None, body: dict, params: dict, strict: bool = True) -> Stage:
    where = f"dvc.yaml: stages.{name}"
    context = dict(params) if item is None else {**params, "item": item}
    embedded: list = []
    body = interpolate(body, context, where, embedded)
    if strict:
        for expression, value, field in embedded:
            check_word(expression, value, field)
    cmds = body.get("cmd")
    cmds = [cmds] if isinstance(cmds, str) else cmds
    if not cmds or not all(isinstance(cmd, str) and cmd.strip() for cmd in cmds):
        raise PipelineError(f"{where}.cmd: expected a command or a list of commands")
    for i, cmd in enumerate(cmds if strict else []):
        check_command(cmd, f"{where}.cmd" + (f"[{i}]" if len(cmds) > 1 else ""))
    outs = _paths(body.get("outs"), f"{where}.outs") + _paths(body.get("metrics"), f"{where}.metrics")
    meta = (body.get("meta") or {}).get("dagster") or {}
    if meta.get("role") not in (None, *ROLES):
        raise PipelineError(f"{where}.meta.dagster.role: expected one of {', '.join(ROLES)}, got {meta.get('role')!r}")
    return Stage(
        name=name,
        asset=asset,
        item=item,
        cmds=tuple(cmd.strip() for cmd in cmds),
        deps=_paths(body.get("deps"), f"{where}.deps"),
        outs=outs,
        params=_param_values(body.get("params"), params, f"{where}.params"),
        desc=" ".join(str(body.get("desc") or "").split()),
        meta=meta,
    )


def _items(name: str, foreach, params: dict) -> list[str]:
    where = f"dvc.yaml: stages.{name}.foreach"
    items = interpolate(foreach, params, where)
    if not isinstance(items, list) or not items:
        raise PipelineError(f"{where}: expected a non-empty list, got {items!r}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", item):
            raise PipelineError(
                f"{where}[{i}]: expected a name such as \"000001\" (letters, digits, '_', '-', '.'; "
                f"quote it in params.yaml), got {item!r}"
            )
    if len(set(items)) != len(items):
        raise PipelineError(f"{where}: the list repeats an item: {items}")
    return items


def load_pipeline(root: str | Path, strict: bool = True) -> dict[str, StageGroup]:
    """Every dvc.yaml stage of the project at ``root``, by asset name, in dvc.yaml order.

    ``strict`` (before running anything): params.yaml must fit its schema, pasted values must be plain
    words, commands must be free of shell operators. The asset graph is built with ``strict=False``, so
    a bad value fails the materialization that would use it, in one line, instead of the code location.
    """
    root = Path(root)
    dvc_yaml = read_yaml(root / "dvc.yaml")
    params = read_yaml(root / "params.yaml")
    try:
        if strict:
            validate(params, str(root / "params.yaml"))
    except ParamsError as err:
        raise PipelineError(str(err)) from None
    if "vars" in dvc_yaml:
        raise PipelineError("dvc.yaml: `vars` is not supported here; keep parameters in params.yaml")
    stages = dvc_yaml.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise PipelineError("dvc.yaml: no `stages`")
    groups = {}
    for name, body in stages.items():
        if not isinstance(body, dict):
            raise PipelineError(f"dvc.yaml: stages.{name}: expected a mapping")
        if "foreach" in body:
            do = body.get("do")
            if not isinstance(do, dict):
                raise PipelineError(f"dvc.yaml: stages.{name}.do: expected a mapping")
            items = _items(name, body["foreach"], params)
            group = tuple(_stage(f"{name}@{item}", name, item, do, params, strict) for item in items)
            groups[name] = StageGroup(asset=name, stages=group, partitioned=True)
        else:
            stage = _stage(name, name, None, body, params, strict)
            groups[name] = StageGroup(asset=name, stages=(stage,), partitioned=False)
    return groups


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
    """The assets whose stage outputs feed ``asset``'s stage, in dvc.yaml order."""
    deps = {dep for stage in groups[asset].stages for dep in stage.deps}
    found = {stage.asset for dep in deps for stage in producers(groups, dep)}
    found.discard(asset)
    return [name for name in groups if name in found]
