"""The main command's ``dagster dev`` refuses to start beside a daemon that already serves the instance."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.runs.server import WORKSPACE, DagsterServer, ServerError, other_daemons


def test_a_daemon_already_serving_the_instance_is_one_line_and_nothing_starts(tmp_path):
    home = tmp_path / ".dagster"
    home.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(WORKSPACE)],
        env={**os.environ, "DAGSTER_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not other_daemons(home):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        assert other_daemons(home) == [daemon.pid] and other_daemons(other) == []
        server = DagsterServer(tmp_path, home)
        with pytest.raises(ServerError, match=rf"a Dagster daemon already serves {home} \(pid {daemon.pid}; "):
            server.start()
        assert server.proc is None and not server.log_path.exists()
    finally:
        daemon.kill()
        daemon.wait()
