"""scripts/setup.sh: creates what is missing, reinstalls when pyproject.toml or the torch spec
changes, and does nothing (quickly) when everything is in place. pip and venv are stand-ins that
record their calls, so the test installs nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A stand-in python whose `-m venv DIR` makes DIR/bin/{python,pip}; pip records its arguments and
# installing dvc makes DIR/bin/dvc.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  cat > "$3/bin/pip" <<'PIP'
#!/usr/bin/env bash
echo "$(basename "$(dirname "$(dirname "$0")")") pip $*" >> "$CALLS"
case "$*" in *dvc==*|*"dvc[s3]=="*) touch "$(dirname "$0")/dvc"; chmod +x "$(dirname "$0")/dvc";; esac
PIP
  chmod +x "$3/bin/pip"
  echo "venv $3" >> "$CALLS"
fi
"""


def run_setup(project: Path, **env) -> list[str]:
    calls = project / "calls.txt"
    calls.write_text("")
    subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=project,
        env={**os.environ, "PYTHON": str(project / "fake-python"), "CALLS": str(calls), **env},
        check=True,
        capture_output=True,
    )
    return calls.read_text().splitlines()


def test_setup_installs_once_then_only_when_something_changed(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", project / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    fake = project / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)

    first = run_setup(project)
    assert first == [
        "venv .venv",
        ".venv pip install torch==2.13.0",
        ".venv pip install -e .[pipeline,dev]",
        "venv .venv-dvc",
        ".venv-dvc pip install dvc[s3]==3.67.1",
    ]

    start = time.monotonic()
    assert run_setup(project) == []
    assert time.monotonic() - start < 5

    gpu = run_setup(project, M2M_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
    assert gpu[0] == ".venv pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

    with open(project / "pyproject.toml", "a") as handle:
        handle.write("\n# changed\n")
    changed = run_setup(project)
    assert changed == [".venv pip install torch==2.13.0", ".venv pip install -e .[pipeline,dev]"]

    standard = run_setup(project, M2M_EXTRAS="standard")
    assert standard == [".venv pip install torch==2.13.0", ".venv pip install -e .[pipeline,dev,standard]"]
