"""The shared services a team runs, for real, on 127.0.0.1 and stopped by the test that started them:
Redis (the Celery broker), PostgreSQL (the Dagster instance's and the MLflow server's database), an S3
server (moto's; the DVC remote and the MLflow artifacts) and an MLflow tracking server on both.

Each is the real program — Debian's ``redis-server`` and ``postgres``, moto's server, ``mlflow server`` —
started on a free port with its files in a temporary folder. Credentials are made up per test and reach
the programs only through their environment."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestration.runs.server import free_port

HOST = "127.0.0.1"
STARTED: list["Service"] = []  # every service started in this process, for checks on what they bind
S3_KEYS = {"AWS_ACCESS_KEY_ID": "m2m-test", "AWS_SECRET_ACCESS_KEY": "m2m-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def require(program: str) -> str:
    """The path of ``program``, or the test skips saying how to install it (.ci/run does)."""
    path = shutil.which(program) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"))), None)
    if path is None:
        missing = f"{program} is not installed (apt-get install redis-server postgresql; .ci/run does)"
        if os.environ.get("M2M_REQUIRE_SERVICES"):
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def wait_until(ready, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path

    def listening_on(self) -> set[str]:
        """The addresses the service (its process and their children) listens on."""
        import psutil

        root = psutil.Process(self.proc.pid)
        found = set()
        for proc in [root, *root.children(recursive=True)]:
            try:
                connections = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found |= {conn.laddr.ip for conn in connections if conn.status == psutil.CONN_LISTEN}
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(name: str, argv: list[str], folder: Path, env: dict | None = None, user: str | None = None,
          cwd: Path | None = None) -> Service:
    log = folder / f"{name}.log"
    if user:  # postgres refuses to run as root
        argv = ["runuser", "-u", user, "--", *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd, start_new_session=True)
    service = Service(name, proc, log)
    STARTED.append(service)
    return service


@contextmanager
def redis(folder: Path):
    """``redis-server`` on a free port of 127.0.0.1, nothing persisted; yields its URL."""
    port = free_port()
    service = start("redis", [require("redis-server"), "--bind", HOST, "--port", str(port), "--save", "",
                              "--appendonly", "no", "--dir", str(folder)], folder)
    try:
        wait_until(lambda: listening(port), "redis-server", service.proc, service.log)
        yield f"redis://{HOST}:{port}"
    finally:
        service.stop()


@dataclass
class Postgres:
    port: int
    user: str = "m2m"
    password: str = "m2m-test-password"
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through psycopg2, the driver dagster-postgres needs (SQLAlchemy
        2.1's default for ``postgresql://`` is psycopg 3)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{HOST}:{self.port}/{database}"


@contextmanager
def postgres(folder: Path, databases: tuple[str, ...]):
    """A PostgreSQL cluster made with ``initdb`` in ``folder``, listening on 127.0.0.1 only, with a password
    user owning ``databases``."""
    initdb, server, psql = require("initdb"), require("postgres"), require("psql")
    user = "postgres" if os.geteuid() == 0 else None
    # as root the cluster belongs to the postgres user, who cannot enter a test's private tmp folder
    own = Path(tempfile.mkdtemp(prefix="m2m-pg-")) if user else folder
    data, sockets = own / "pgdata", own / "pgsock"
    for path in (own, data, sockets):
        path.mkdir(exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
    pg = Postgres(free_port(), databases=list(databases))
    superuser = ["runuser", "-u", user, "--"] if user else []
    subprocess.run([*superuser, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True, cwd=own)
    service = start("postgres", [server, "-D", str(data), "-h", HOST, "-p", str(pg.port), "-k", str(sockets),
                                 "-c", "fsync=off"], folder, user=user, cwd=own)
    try:
        wait_until(lambda: listening(pg.port), "postgres", service.proc, service.log)

        def sql(statement: str, database: str = "postgres") -> None:
            subprocess.run([psql, "-h", HOST, "-p", str(pg.port), "-U", "postgres", "-d", database, "-v",
                            "ON_ERROR_STOP=1", "-q", "-c", statement], check=True, capture_output=True)

        sql(f"CREATE USER {pg.user} PASSWORD '{pg.password}'")
        for database in databases:
            sql(f"CREATE DATABASE {database} OWNER {pg.user}")
        yield pg
    finally:
        service.stop()
        if own != folder:
            shutil.rmtree(own, ignore_errors=True)


@dataclass
class S3:
    endpoint: str

    def env(self) -> dict[str, str]:
        """What a client of this S3 server needs: the made-up keys and, for MLflow, the endpoint."""
        return {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def s3(folder: Path, buckets: tuple[str, ...]):
    """moto's S3 server on a free port of 127.0.0.1 with ``buckets`` made."""
    port = free_port()
    service = start("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], folder)
    server = S3(f"http://{HOST}:{port}")
    try:
        wait_until(lambda: listening(port), "the S3 server", service.proc, service.log)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        service.stop()


@contextmanager
def mlflow_server(folder: Path, backend: str, artifacts: str, env: dict[str, str]):
    """``mlflow server`` on 127.0.0.1 with its runs in ``backend`` (a database URL) and the artifacts it
    serves in ``artifacts`` (an S3 URL: clients reach them through the server, with no S3 keys of their
    own); yields its URL."""
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    service = start("mlflow", [mlflow, "server", "--host", HOST, "--port", str(port), "--workers", "1",
                               "--backend-store-uri", backend, "--artifacts-destination", artifacts],
                    folder, env=env, cwd=folder)
    url = f"http://{HOST}:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, "mlflow server", service.proc, service.log, timeout=120)
        yield url
    finally:
        service.stop()
