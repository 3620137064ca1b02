"""Stage commands: output streamed line by line, one-line failures, no orphans on interruption."""

from __future__ import annotations

import os
import sys
import time

import pytest

from orchestration.runs import command
from orchestration.runs.command import CommandFailed, explain, run_command


class Log:
    def __init__(self, fail_after: int | None = None):
        self.lines: list[str] = []
        self.fail_after = fail_after

    def info(self, line: str) -> None:
        self.lines.append(line)
        if self.fail_after is not None and len(self.lines) > self.fail_after:
            raise KeyboardInterrupt


def py(code: str) -> str:
    return f"{sys.executable} -c '{code}'"


def test_output_lines_reach_the_log_in_order(tmp_path):
    log = Log()
    code = 'import sys; print("one"); print("two", file=sys.stderr); print("three")'
    run_command(py(code), tmp_path, dict(os.environ), log)
    assert log.lines[1:] == ["one", "two", "three"]
    assert log.lines[0].startswith("$ ")


def test_progress_redraws_are_throttled(tmp_path, monkeypatch):
    monkeypatch.setattr(command, "PROGRESS_EVERY_S", 3600)
    log = Log()
    code = 'import sys\nfor i in range(50): sys.stdout.write(f"\\r{i}%")\nprint("\\ndone")'
    (tmp_path / "bar.py").write_text(code)
    run_command(f"{sys.executable} bar.py", tmp_path, dict(os.environ), log)
    assert log.lines[1:] == ["0%", "49%", "done"]


def test_failure_is_the_commands_own_error_line(tmp_path):
    code = 'import sys; print("working"); print("m2m train: error: --steps must be >= 1", file=sys.stderr); sys.exit(2)'
    with pytest.raises(CommandFailed, match=r"^m2m train: error: --steps must be >= 1$"):
        run_command(py(code), tmp_path, dict(os.environ), Log())


def test_explain_picks_the_exception_of_a_traceback_then_error_lines_then_the_last_line():
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1', "ModuleNotFoundError: No module x"]
    assert explain(traceback, 1) == "ModuleNotFoundError: No module x"
    assert explain(["ERROR: disk full", "cleaning up"], 1) == "ERROR: disk full"
    assert explain(["all went wrong"], 3) == "all went wrong"
    assert explain([], 3) == "exit status 3"


def test_an_interrupted_run_stops_the_command(tmp_path):
    pid_file = tmp_path / "pid"
    code = f'import os, time; open("{pid_file}", "w").write(str(os.getpid())); print("go", flush=True); time.sleep(60)'
    with pytest.raises(KeyboardInterrupt):
        run_command(py(code), tmp_path, dict(os.environ), Log(fail_after=1))
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"command process {pid} still running")
