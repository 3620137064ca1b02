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


@pytest.mark.slow
def test_stop_leaves_no_process_of_dagster_dev_behind_even_past_the_grace(project, monkeypatch):
    """A shutdown that outlasts the grace (a busy machine; here a grace of zero) still ends the webserver,
    daemon and code server dagster dev started: none serves the instance afterwards."""
    import psutil

    from orchestration.runs import server as module
    from tests.orchestration.projects import project_env

    for key, value in project_env(project).items():
        monkeypatch.setenv(key, value)
    home = project / ".dagster"
    home.mkdir()
    server = DagsterServer(project, home)
    server.start()
    dev = psutil.Process(server.proc.pid)
    group = [dev, *dev.children(recursive=True)]
    assert len(group) >= 3 and other_daemons(home)  # dagster dev, its webserver, daemon (and code server)
    monkeypatch.setattr(module, "STOP_GRACE_S", 0.0)
    server.stop()
    psutil.wait_procs(group, timeout=10)
    assert [p.pid for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert other_daemons(home) == []
