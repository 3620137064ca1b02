"""Run one stage command in a shell, as DVC does, streaming its output into the Dagster log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

# Progress bars redraw a line with "\r"; one redraw in this many seconds reaches the log.
PROGRESS_EVERY_S = 10.0
_ERROR_LINE = re.compile(r"\b(error|Error|ERROR)\b")


class CommandFailed(RuntimeError):
    """The command exited non-zero; the message is its one-line explanation."""


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


def run_command(cmd: str, cwd: Path, env: dict[str, str], log) -> None:
    """Run ``cmd`` through the shell in ``cwd``; each output line goes to ``log.info``.

    Raises :class:`CommandFailed` with the command's own error line when it exits non-zero; if the
    run is interrupted, the command's whole process group is stopped with it.
    """
    log.info(f"$ {cmd}")
    proc = subprocess.Popen(
        cmd,
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    if returncode != 0:
        raise CommandFailed(explain(list(tail), returncode))
