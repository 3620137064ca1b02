"""A team's deployment, run for real on this machine (docs/scale-out.md): the Dagster instance on
PostgreSQL, an MLflow server on PostgreSQL keeping its artifacts on S3, the DVC remote on S3 and the steps
on Celery workers — two "GPU" workers, each with its own ``CUDA_VISIBLE_DEVICES``, and one for light steps
— with a Redis broker. Every service is the real program on 127.0.0.1 (tests/services.py).

Clone A runs the main command with its steps on the workers and pushes its data; clone B pulls it,
reproduces the heavy steps locally with the same bytes, and its main command finds nothing to do; both see
the same MLflow runs and registry aliases. Credentials reach every program through its environment only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from orchestration.dvc.cli import Dvc
from orchestration.dvc.stages import load_pipeline
from tests import services
from tests.orchestration.projects import REPO, git, make_project

pytestmark = pytest.mark.slow

GPU_WORKERS = ("gpu0", "gpu1")
LIGHT_WORKER = "light"
BUCKET = "m2m"


@dataclass
class Team:
    folder: Path
    s3: services.S3
    mlflow_url: str
    env: dict[str, str]  # what every process of the team gets: the instance, MLflow, the broker
    a: Path | None = None
    a_runs: int = 0  # runs in the instance after A's main command
    b: Path | None = None
    a_output: str = ""  # each main command's output
    b_output: str = ""
    a_snapshot: dict = field(default_factory=dict)  # the MLflow server after each main command
    b_snapshot: dict = field(default_factory=dict)
    listening: dict[str, set[str]] = field(default_factory=dict)  # each service's listening addresses


def command_env(team: Team, root: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_", "M2M_CELERY"))}
    return {**env, **team.env, "M2M_PROJECT_ROOT": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def main_command(team: Team, root: Path, name: str, **extra: str) -> str:
    log = team.folder / f"{name}.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "orchestration.pipeline"], cwd=root, stdout=out,
                              stderr=subprocess.STDOUT, env=command_env(team, root, **extra), timeout=900).returncode
    output = log.read_text(errors="replace")
    print(output)
    assert code == 0, output[-4000:]
    return output


@contextlib.contextmanager
def workers(team: Team, root: Path, broker: str):
    """``scripts/worker.sh gpu 0``, ``gpu 1`` and ``light`` serving the project at ``root``."""
    started = []
    try:
        for argv in (["gpu", "0"], ["gpu", "1"], ["light"]):
            log = team.folder / f"worker-{''.join(argv)}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(["bash", str(REPO / "scripts" / "worker.sh"), *argv], stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env=command_env(team, root, M2M_CELERY_BROKER=broker))
            started.append(services.Service(f"worker {' '.join(argv)}", proc, log))
        for worker in started:
            services.wait_until(lambda: " ready." in worker.log.read_text(errors="replace"), worker.name,
                                worker.proc, worker.log, timeout=120)
        yield started
    finally:
        for worker in started:
            worker.stop()


def dvc(team: Team, root: Path, *args: str, keys: bool = False, threads: str | None = None) -> str:
    """DVC in ``root``; ``keys``: with the S3 keys (only DVC's own commands get them); ``threads``: the
    commands' thread count, and their MLflow runs kept in the clone's own store."""
    extra = dict(services.S3_KEYS) if keys else {}
    if threads:
        extra.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, MLFLOW_TRACKING_URI="", M2M_DEVICE="cpu")
    env = command_env(team, root, **extra)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return Dvc(root).run(*args)


def weights(root: Path) -> dict[str, str]:
    """md5 of every weights file of the models and every shard the chain wrote (its DVC outputs; the
    training checkpoints beside them are not)."""
    models = [path for path in root.glob("assets/models/**/*.safetensors")
              if not any(part.endswith(".ckpt") for part in path.relative_to(root).parts)]
    files = sorted([*models, *root.glob("assets/mis/shards/*")])
    return {str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest() for path in files}


def snapshot(team: Team) -> dict:
    """The MLflow runs (id, status, name) and registry aliases the team's server holds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(team.mlflow_url)
    runs = sorted((run.info.run_id, run.info.status, run.info.run_name)
                  for experiment in client.search_experiments()
                  for run in client.search_runs([experiment.experiment_id]))
    aliases = {model.name: dict(sorted(model.aliases.items())) if isinstance(model.aliases, dict)
               else {alias: client.get_model_version_by_alias(model.name, alias).version for alias in model.aliases}
               for model in client.search_registered_models()}
    return {"runs": runs, "aliases": aliases}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    folder = tmp_path_factory.mktemp("team")
    for name in ("redis", "postgres", "s3", "mlflow", "dagster-home"):
        (folder / name).mkdir()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(services.redis(folder / "redis"))
        pg = stack.enter_context(services.postgres(folder / "postgres", ("dagster", "mlflow")))
        s3 = stack.enter_context(services.s3(folder / "s3", (BUCKET,)))
        mlflow_url = stack.enter_context(services.mlflow_server(
            folder / "mlflow", pg.url("mlflow"), f"s3://{BUCKET}/mlflow", s3.env()))
        listening = {service.name: service.listening_on() for service in services.STARTED
                     if service.proc.poll() is None}
        home = folder / "dagster-home"
        shutil.copy(REPO / "deploy" / "team" / "dagster.yaml", home / "dagster.yaml")
        team = Team(folder, s3, mlflow_url, {"DAGSTER_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_url,
                                             "M2M_DAGSTER_POSTGRES_URL": pg.url("dagster")})
        team.listening = listening

        # Clone A: the chain, its steps on the workers; its data pushed to the team's S3 remote.
        team.a = make_project(folder / "a")
        dvc(team, team.a, "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc")
        dvc(team, team.a, "remote", "modify", "team", "endpointurl", s3.endpoint)
        with workers(team, team.a, broker):
            team.a_output = main_command(team, team.a, "a", M2M_CELERY_BROKER=broker)
        team.a_snapshot = snapshot(team)
        team.a_runs = len(instance(team).get_runs())
        dvc(team, team.a, "push", keys=True)
        git(team.a, "add", "dvc.lock", ".dvc/config")
        git(team.a, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-q", "-m", "the run")

        # Clone B: pulls, its main command (steps in its own processes) has nothing to do.
        team.b = folder / "b"
        git(folder, "clone", "-q", str(team.a), str(team.b))
        dvc(team, team.b, "pull", keys=True)
        team.b_output = main_command(team, team.b, "b")
        team.b_snapshot = snapshot(team)
        yield team


def instance(team: Team):
    import dagster as dg

    with pytest.MonkeyPatch.context() as patch:
        for key, value in team.env.items():
            patch.setenv(key, value)
        return dg.DagsterInstance.from_config(team.env["DAGSTER_HOME"])


def celery_placements(team: Team) -> dict[str, str]:
    """Each step the Celery workers executed, and the worker (by name) that did."""
    import dagster as dg

    inst = instance(team)
    placed = {}
    for run in inst.get_runs():
        for record in inst.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
            event = record.event_log_entry.dagster_event
            worker = event.event_specific_data.metadata.get("Celery worker") if event.event_specific_data else None
            if worker is not None:
                step = run.tags.get("dagster/partition")
                key = f"{event.step_key}[{step}]" if step else event.step_key
                placed[key] = worker.value.split("@")[0]
    return placed


def test_heavy_steps_ran_on_the_gpu_workers_each_with_its_own_gpu(team):
    from mlflow.tracking import MlflowClient

    groups = load_pipeline(team.a)
    placed = celery_placements(team)
    heavy = {name for name, group in groups.items() if group.first.meta.get("pool") == "gpu"}
    assert placed, "no step ran on a Celery worker"
    for step, worker in placed.items():
        expected = GPU_WORKERS if step.split("[")[0] in heavy else (LIGHT_WORKER,)
        assert worker in expected, f"{step} ran on {worker}"
    assert {step.split("[")[0] for step in placed} >= heavy | {"filtered_captions"}
    assert set(placed.values()) == {*GPU_WORKERS, LIGHT_WORKER}, placed  # the two trainings at once: both GPUs

    # A training's command saw the GPU of the worker that ran its step (the live run's tags say where).
    client = MlflowClient(team.mlflow_url)
    trainings = [run for experiment in client.search_experiments() for run in client.search_runs(
        [experiment.experiment_id], filter_string="tags.`m2m.devices` != ''")]
    assert {run.data.tags["dagster.asset"] for run in trainings} >= {"m2m_self_pretrained", "m2m_dino_pretrained"}
    for run in trainings:
        worker = placed[run.data.tags["dagster.asset"]]
        assert run.data.tags["m2m.cuda_visible_devices"] == worker.removeprefix("gpu"), (worker, run.data.tags)


def test_the_instance_is_the_teams_postgres_and_clone_b_reads_clone_as_materializations_there(team):
    inst = instance(team)
    assert type(inst.run_storage).__name__ == "PostgresRunStorage"
    assert type(inst.event_log_storage).__name__ == "PostgresEventLogStorage"
    runs = inst.get_runs()
    assert all(run.is_success for run in runs), [(run.job_name, run.status) for run in runs if not run.is_success]
    # B's main command found A's materializations of the data it pulled in the shared instance: nothing to run
    assert len(runs) == team.a_runs > 0
    assert "=== 0 runs," in team.b_output and "up to date, not run" in team.b_output
    assert not (team.a / ".dagster").exists() and not (team.b / ".dagster").exists()  # no SQLite of its own


def test_clone_b_pulls_the_data_from_s3_and_reproduces_the_heavy_steps_byte_for_byte(team):
    pushed = team.s3.keys(BUCKET, "dvc/")
    assert pushed, "nothing in the team's DVC remote"
    assert weights(team.b) == weights(team.a) and weights(team.a)
    assert "(ran)" not in team.b_output and "dvc.lock has changes" not in team.b_output
    assert dvc(team, team.b, "status", "--json").strip() == "{}"

    # The same heavy steps on this machine, outside Dagster and Celery, with the thread count a worker's
    # step had (the CPU split in two): the same bytes as the workers'.
    before = weights(team.b)
    stages = ["mis_shards@000000", "m2m_self_pretrained", "m2m_dino_pretrained"]
    for stage in stages:
        dvc(team, team.b, "repro", "--force", "--single-item", stage, threads="1")
    assert weights(team.b) == before


def test_mlflow_runs_and_aliases_are_the_same_from_both_clones_and_artifacts_are_on_s3(team):
    assert team.a_snapshot["runs"] and team.a_snapshot["aliases"]
    assert team.b_snapshot == team.a_snapshot  # B's main command logged nothing new and moved no alias
    def registry_and_metrics(output: str) -> str:
        return output[output.index("Registered models:"):output.index("Sample grids:")]

    assert registry_and_metrics(team.a_output) == registry_and_metrics(team.b_output)
    # The clients had no S3 keys: their artifacts reached S3 through the MLflow server.
    stored = team.s3.keys(BUCKET, "mlflow/")
    assert any(key.endswith(".safetensors") for key in stored) and any(key.endswith(".png") for key in stored)


def test_every_service_listens_on_127_0_0_1_only(team):
    assert set(team.listening) >= {"redis", "postgres", "s3", "mlflow"}
    for name, addresses in team.listening.items():
        assert addresses and addresses <= {services.HOST}, (name, addresses)


def test_the_deployment_instance_settings_are_the_projects_own():
    """deploy/team/dagster.yaml is .dagster/dagster.yaml with the storage in PostgreSQL and a pool of GPUs."""
    local = yaml.safe_load((REPO / ".dagster" / "dagster.yaml").read_text())
    deployed = yaml.safe_load((REPO / "deploy" / "team" / "dagster.yaml").read_text())
    assert deployed.pop("storage") == {"postgres": {"postgres_url": {"env": "M2M_DAGSTER_POSTGRES_URL"}}}
    assert deployed["concurrency"].pop("pools") == {"default_limit": 2}
    assert deployed == local
