"""What a teammate needs from a run: ``dvc.lock`` in git and the data it names in the shared remote.

``dvc pull`` restores exactly the outputs ``dvc.lock`` records, so a run is reproducible from git + DVC
only once its ``dvc.lock`` is committed and its data pushed. DVC's own messages when that is not so
("No file hash info found", "Checkout failed") do not say why; the main command says it in one line,
before it starts (this clone lacks outputs the lock names) and when it is done (the lock is not
committed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestration.dvc.cli import read_lock

LOCK = "dvc.lock"


def locked_outputs(root: Path) -> list[str]:
    """Every output path ``dvc.lock`` records (empty without a lock)."""
    path = root / LOCK
    if not path.is_file():
        return []
    stages = read_lock(path).get("stages", {})
    return [out["path"] for stage in stages.values() for out in stage.get("outs", [])]


def before_run(root: Path) -> str | None:
    """One line when this clone's ``dvc.lock`` and workspace disagree, else None."""
    if not (root / LOCK).is_file():
        return (f"{LOCK}: none in this clone, so every stage runs; to reuse a teammate's run, `git pull` their "
                f"committed {LOCK} and `.venv-dvc/bin/dvc pull` first")
    missing = [out for out in locked_outputs(root) if not (root / out).exists()]
    if missing:
        return (f"{LOCK} names {len(missing)} output(s) this clone does not have (e.g. {missing[0]}): "
                "`.venv-dvc/bin/dvc pull` restores them, else their stages run again")
    return None


def after_run(root: Path) -> str | None:
    """One line when ``dvc.lock`` is not committed to git as it is now, else None."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", LOCK], cwd=root, capture_output=True, text=True, check=False
    )
    if status.returncode != 0 or not status.stdout.strip():
        return None  # not a git checkout, or committed as it is
    return (f"{LOCK} has changes git does not have: a teammate's `dvc pull` cannot find this run's data until "
            f"you `git add {LOCK} && git commit` and `.venv-dvc/bin/dvc push`")
