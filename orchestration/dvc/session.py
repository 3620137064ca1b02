"""``dvc status`` and ``dvc commit`` of one stage, answered by one long-lived DVC process: run with DVC's
interpreter, not ours.

``python orchestration/dvc/session.py ROOT`` reads one JSON request per line on stdin —
``{"op": "status" | "commit", "stage": NAME}`` — and answers each with one JSON line: ``{"ok": true,
"status": {...}}`` (what ``dvc status NAME --json`` prints) or ``{"ok": true}`` after ``dvc commit --force
NAME``; ``{"ok": false, "error": ...}`` when DVC raised. Each request opens the repository anew
(``dvc.repo.Repo``, which takes DVC's own repository lock), so it sees the files as they are now; what is
saved is the start-up of a ``dvc`` process (imports, about 0.6 s) per call, twice per materialized
stage. It exits at the end of its input; Ctrl-C is its parent's to handle. Like ``dvc_index.py`` it
imports only the standard library and DVC.
"""

from __future__ import annotations

import json
import signal
import sys


def answer(root: str, request: dict) -> dict:
    from dvc.repo import Repo

    op, stage = request.get("op"), request.get("stage")
    if op not in ("status", "commit") or not isinstance(stage, str):
        return {"ok": False, "error": f"not a request: {request!r}"}
    with Repo(root) as repo:
        if op == "status":
            return {"ok": True, "status": repo.status(targets=[stage])}
        repo.commit(stage, force=True)
        return {"ok": True}


def main(root: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies, sys.stdout = sys.stdout, sys.stderr  # whatever DVC prints never mixes with the replies
    import dvc.repo  # noqa: F401  (imported once, before the first request)

    for line in sys.stdin:
        try:
            reply = answer(root, json.loads(line))
        except Exception as err:  # the caller asks the dvc command instead, for DVC's own message
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply, default=str) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
