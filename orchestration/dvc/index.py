"""DVC's own reading of a project's pipeline, printed as JSON: run with DVC's interpreter, not ours.

``python orchestration/dvc/index.py ROOT`` loads ``dvc.repo.Repo(ROOT).index`` — dvc.yaml with its
``vars``, ``${}`` interpolation, ``foreach`` and ``matrix`` resolved by DVC itself — and prints one JSON
object: every stage (command, inputs, outputs, parameter values, description, ``meta``, the parameter
values pasted into it, the stages it depends on in ``index.graph``) and the files that were read, so that
``stages.py`` knows when to read again. It imports only the standard library and DVC, because DVC lives
in its own environment (``dvc_cli.py``). A pipeline DVC cannot read is one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT_PARAMS = "params.yaml"


def _key(path: str, key: str) -> str:
    """``key`` for the default params.yaml, ``file:key`` for any other params file (DVC's own notation)."""
    return key if path == DEFAULT_PARAMS else f"{path}:{key}"


def _stage(stage, graph, root: str) -> dict:
    deps, params, read = [], {}, {os.path.relpath(stage.dvcfile.path, root)}
    for dep in stage.deps:
        if hasattr(dep, "read_params"):  # a ParamsDependency: a file and the keys the stage tracks
            read.add(dep.def_path)
            params.update({_key(dep.def_path, key): value for key, value in dep.read_params().items()})
        else:
            deps.append(dep.def_path)
    pasted = {}
    for path, values in (stage.tracked_vars or {}).items():
        read.add(path)
        pasted.update({_key(path, key): value for key, value in values.items()})
    read.update((stage.dvcfile.resolver.context.imports or {}).keys())
    cmd = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
    return {
        "name": stage.addressing,
        "cmd": cmd,
        "deps": deps,
        "outs": [out.def_path for out in stage.outs],
        "params": params,
        "pasted": pasted,
        "desc": stage.desc or "",
        "meta": stage.meta or {},
        "upstream": sorted(parent.addressing for parent in graph.successors(stage)),
        "read": sorted(read),
    }


def main(root: str) -> int:
    from dvc.repo import Repo

    try:
        repo = Repo(root, uninitialized=True)
        index = repo.index
        stages = [_stage(stage, index.graph, repo.root_dir) for stage in index.stages if stage.cmd]
    except Exception as err:  # DVC's message names the file and the field; a YAML error adds its line
        mark = getattr(err.__cause__, "problem_mark", None)
        where = f" (line {mark.line + 1}: {err.__cause__.problem})" if mark else ""
        print(f"{err}".splitlines()[0] + where, file=sys.stderr)
        return 2
    read = sorted({path for stage in stages for path in stage.pop("read")} | {"dvc.yaml", DEFAULT_PARAMS})
    json.dump({"stages": stages, "read": read}, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
