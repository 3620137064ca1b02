"""Run one stage command, streaming its output into the Dagster log.

The command is split into words as a POSIX shell would (``shlex``) and started without a shell, so no
value from params.yaml can run shell code (``stages.py`` also refuses values that a shell would read
differently, which keeps DVC's own run of the same command identical). The command stays in the
caller's process group, so killing the main command's group stops it too; on Linux it is also
stopped when the process that started it dies. A heavy step passes the file descriptors of its device
lease (``devices.py``) and the cores it may use, so the command holds its devices for as long as it lives.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

# Progress bars redraw a line with "\r"; one redraw in this many seconds reaches the log.
PROGRESS_EVERY_S = 10.0
_ERROR_LINE = re.compile(r"\b(error|Error|ERROR)\b")


class CommandFailed(RuntimeError):
    """The command exited non-zero; the message is its one-line explanation."""


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: a command that ignores the first still ends."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def explain(lines: list[str], returncode: int) -> str:
    """The line that says what went wrong: the CLI's ``m2m <step>: error: ...``; after a traceback,
    its exception line; else the last line that mentions an error; else the last line."""
    for line in reversed(lines):
        if ": error:" in line:
            return line
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"exit status {returncode}"


def _child_setup(affinity: set[int] | None):
    """What the child does before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``), and
    run on ``affinity``'s cores only (None: wherever)."""

    def setup() -> None:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if affinity:
            os.sched_setaffinity(0, affinity)

    return setup


def run_command(
    cmd: str, cwd: Path, env: dict[str, str], log, pass_fds: tuple[int, ...] = (), affinity: set[int] | None = None
) -> None:
    """Run ``cmd`` (split into words, no shell) in ``cwd``; each output line goes to ``log.info``.

    ``pass_fds`` stay open in the command (a device lease); ``affinity``: the cores it may run on.
    Raises :class:`CommandFailed` with the command's own error line when it exits non-zero, or saying
    it was interrupted when a signal ended it; if the run is interrupted, the command is stopped with it.
    """
    log.info(f"$ {cmd}")
    try:
        argv = shlex.split(cmd)
    except ValueError as err:
        raise CommandFailed(f"cannot split the command into words ({err}): {cmd}") from None
    if not argv:
        raise CommandFailed("empty command")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            preexec_fn=_child_setup(affinity) if sys.platform.startswith("linux") else None,
        )
    except OSError as err:
        raise CommandFailed(f"{argv[0]}: cannot start ({err.strerror or err})") from None
    tail: deque[str] = deque(maxlen=50)
    last_progress, pending, buffer = float("-inf"), "", b""
    try:
        while chunk := proc.stdout.read1(65536):
            buffer += chunk
            parts = re.split(rb"(\r\n|\n|\r)", buffer)
            buffer = parts.pop()
            for text, end in zip(parts[::2], parts[1::2]):
                line = text.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                if end == b"\r":
                    pending = line
                    if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                        log.info(line)
                        last_progress, pending = time.monotonic(), ""
                    continue
                tail.append(line)
                log.info(line)
                pending = ""
        for line in (pending, buffer.decode("utf-8", "replace").strip()):
            if line:
                tail.append(line)
                log.info(line)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            stop(proc)
    if returncode < 0:
        raise CommandFailed(f"interrupted ({signal.Signals(-returncode).name}): {explain(list(tail), returncode)}")
    if returncode != 0:
        raise CommandFailed(explain(list(tail), returncode))
