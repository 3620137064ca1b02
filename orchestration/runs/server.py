"""``dagster dev`` for the length of the main command: the webserver its runs are submitted to, the
daemon that dequeues them, and the code server whose run workers execute them.

The main command submits runs exactly as the UI's Materialize button does (the webserver's GraphQL
``launchPipelineExecution`` with an asset and asset-check selection), so they go through the instance's
queue, pools, run monitoring and retries and look in ``dagster dev`` like any other run. The server binds to 127.0.0.1
on a free port, runs in the main command's process group (Ctrl-C and ``kill -- -PGID`` reach it and
every run worker), and writes its own log to ``$DAGSTER_HOME/dagster-dev.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKSPACE = Path(__file__).with_name("workspace.yaml")
LOCATION, REPOSITORY = "m2m", "__repository__"  # the code location workspace.yaml loads; Definitions' repository
START_TIMEOUT_S = 180.0
LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
STOP_GRACE_S = 20.0


class ServerError(RuntimeError):
    """``dagster dev`` did not start; the message says why in one line."""


def other_daemons(home: Path) -> list[int]:
    """Process ids of Dagster daemons already serving the instance at ``home`` (a ``dagster dev`` of the
    user's): two daemons on one instance would launch the same queued run twice."""
    import psutil

    home = str(home.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        words = proc.info["cmdline"] or []
        head = " ".join(words[:3])
        if "dagster._daemon" not in head and "dagster-daemon" not in head:  # how a daemon shows in ps, not an import
            continue
        try:
            env_home = proc.environ().get("DAGSTER_HOME")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            env_home = None
        if (env_home and str(Path(env_home).resolve()) == home) or any(home in word for word in words):
            found.append(proc.info["pid"])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterServer:
    """``dagster dev`` on 127.0.0.1, started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(self, root: Path, home: Path):
        self.root, self.home = root, home
        self.port = free_port()
        self.log_path = home / "dagster-dev.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        import urllib.error
        import urllib.request

        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            raise ServerError(f"the Dagster webserver answered {err.code} {err.reason}; its log: {self.log_path}") from None
        if reply.get("errors"):
            raise ServerError(f"GraphQL: {reply['errors'][0].get('message', reply['errors'][0])}")
        return reply["data"]

    def launch_run(self, job: str, run_config: dict, tags: dict[str, str], assets: list[str] | None = None,
                   checks: list[tuple[str, str]] | None = None) -> str:
        """Submit a run of ``job`` (only ``assets`` and the asset ``checks`` (asset, name), when given), as the
        UI's Materialize does; its run id."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job}
        if assets is not None:
            selector["assetSelection"] = [{"path": [asset]} for asset in assets]
            selector["assetCheckSelection"] = [{"assetKey": {"path": [asset]}, "name": name} for asset, name in checks or []]
        params = {
            "selector": selector, "mode": "default", "runConfigData": run_config,
            "executionMetadata": {"tags": [{"key": key, "value": value} for key, value in tags.items()]},
        }
        result = self.graphql(LAUNCH, {"executionParams": params})["launchPipelineExecution"]
        if result["__typename"] == "LaunchRunSuccess":
            return result["run"]["runId"]
        detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", [])) or ""
        raise ServerError(f"{job}: the run was not launched ({result['__typename']}: {detail})")

    def start(self) -> None:
        running = other_daemons(self.home)
        if running:
            raise ServerError(
                f"a Dagster daemon already serves {self.home} (pid {', '.join(map(str, running))}; a `dagster dev`?): "
                "stop it first, since two daemons would launch the same queued runs twice"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        dagster = Path(sys.executable).with_name("dagster")
        command = [str(dagster), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(self.port)]
        env = {**os.environ, "DAGSTER_HOME": str(self.home)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.proc.poll() is not None:
                raise ServerError(f"dagster dev exited ({self.proc.returncode}) on start: {self.last_line()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"dagster dev did not answer within {START_TIMEOUT_S:.0f} s ({self.log_path})")
            time.sleep(0.5)

    def answers(self) -> bool:
        """True once the code location has loaded and the webserver answers GraphQL."""
        import urllib.error

        query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
        try:
            entries = self.graphql(query, timeout=5)["workspaceOrError"].get("locationEntries") or []
        except (urllib.error.URLError, OSError, ValueError, KeyError, ServerError):
            return False
        return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)

    def last_line(self) -> str:
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"no output ({self.log_path})"

    def stop(self) -> None:
        """SIGINT (what Ctrl-C sends; dagster dev shuts its processes down), then SIGKILL after a grace, to
        dagster dev and then to whatever it started that outlived it: on a busy machine the shutdown can
        outlast the grace, and a webserver or daemon left behind would keep serving the instance (and make
        the next start refuse, as a second daemon)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        started = []
        with contextlib.suppress(psutil.NoSuchProcess):
            started = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _, alive = psutil.wait_procs(started, timeout=STOP_GRACE_S)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
