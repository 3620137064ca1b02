"""``dagster dev`` and ``mlflow ui`` on 127.0.0.1 ports, each in its own process group, started and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ui_check.apis import Dagster, Mlflow
from ui_check.common import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server in its own process group, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a server and everything it started (its process group): Ctrl-C, then SIGKILL for what is left."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their parent
    process.wait()


def wait_until(ready, name: str, log: Path, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``ready()`` until it is true; stop with one line naming the server and its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: {name} exited with status {process.returncode} before answering; see {log}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    sys.exit(f"error: {name} did not come up within {timeout:.0f} s; see {log}")


def links_ui() -> str:
    """Where the project's links say the MLflow UI is (``MlflowResource``: ``$M2M_MLFLOW_UI_URL`` or port 5000
    on 127.0.0.1): the check serves the store there, so that the links it follows are the ones users get."""
    from orchestration.defs.resources import MlflowResource

    url = MlflowResource(tracking_uri="sqlite:///").ui()
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or not parts.port:
        sys.exit(f"error: the project's MLflow links go to {url}; set M2M_MLFLOW_UI_URL to a 127.0.0.1 port")
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", parts.port)) == 0:
            sys.exit(f"error: port {parts.port} of {url} (where the project's MLflow links go) is taken; "
                     "stop what listens there or set M2M_MLFLOW_UI_URL to a free port")
    return url


def start_servers(servers: list[subprocess.Popen], logs: Path, timeout: float) -> tuple[Dagster, Mlflow]:
    """Start ``dagster dev`` and ``mlflow ui`` on free 127.0.0.1 ports (added to ``servers`` as they start)
    and wait until both answer: Dagster with the code location loaded, MLflow healthy."""
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(ROOT / ".dagster"))}
    bin_dir, store = Path(sys.executable).parent, f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    dagster = Dagster(f"http://127.0.0.1:{free_port()}")
    mlflow = Mlflow(links_ui())
    commands = {
        "dagster dev": [str(bin_dir / "dagster"), "dev", "--host", "127.0.0.1",
                        "--port", dagster.url.rsplit(":", 1)[1]],
        "mlflow ui": [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                      "--port", mlflow.url.rsplit(":", 1)[1], "--workers", "1"],  # one page at a time
    }
    for name, command in commands.items():
        servers.append(start(command, logs / f"{name.split()[0]}.log", env))
    wait_until(dagster.loaded, "dagster dev", logs / "dagster.log", servers[0], timeout)
    wait_until(lambda: requests.get(f"{mlflow.url}/health", timeout=5).ok, "mlflow ui", logs / "mlflow.log",
               servers[1], timeout)
    return dagster, mlflow
