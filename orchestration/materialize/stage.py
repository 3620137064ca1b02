"""Materializing a stage asset: run the stage's command as dvc.yaml has it, ``dvc commit`` it, report.

The command runs only when ``dvc status`` says the stage changed; either way dvc.lock ends up
describing the files on disk, so ``dvc status`` is clean and ``dvc repro`` has nothing to do. The
asset's data version is the DVC hash of what the stage wrote. Any failure is one line in the run
log; inputs are never touched, and a failed command's outputs are not committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import socket

import dagster as dg

from orchestration.materialize import reports
from orchestration.mlflow import runs as mlflow_runs
from orchestration.runs import devices, pool
from orchestration.runs.command import CommandFailed, run_command
from orchestration.dvc.cli import DvcError
from orchestration.dvc.stages import PipelineError, Stage, StageGroup, load_pipeline, producers


def data_version(hashes: dict[str, str]) -> str:
    """The DVC hash of a single output, or a hash of all of them."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    joined = "\n".join(f"{path} {md5}" for path, md5 in sorted(hashes.items()))
    return hashlib.md5(joined.encode()).hexdigest()


def missing_inputs(stage: Stage, groups: dict[str, StageGroup], root) -> list[str]:
    """One line per input that does not exist yet, naming the asset (and partition) that makes it."""
    problems = []
    for dep in stage.deps:
        makers = [s for s in producers(groups, dep) if s.name != stage.name]
        absent = [(s, out) for s in makers for out in s.outs if not (root / out).exists()]
        if absent:
            for maker, out in absent:
                where = f"{maker.asset} (partition {maker.item})" if maker.item else maker.asset
                problems.append(f"input {out} does not exist yet: materialize {where} first")
        elif not (root / dep).exists():
            problems.append(f"input {dep} does not exist (dvc.yaml deps of {stage.name})")
    return problems


def describe_changes(status: dict) -> str:
    """``dvc status`` of one stage as a short phrase: what changed."""
    changes = []
    for entry in next(iter(status.values()), []):
        if isinstance(entry, dict):
            for kind, detail in entry.items():
                changes.append(f"{kind}: {', '.join(detail) if isinstance(detail, dict) else detail}")
        else:
            changes.append(str(entry))
    return "; ".join(changes) or "not in dvc.lock yet"


def start_live_run(stage: Stage, root, context: dg.AssetExecutionContext, mlflow) -> str | None:
    """For a training stage about to run, the MLflow run its command logs into while it trains."""
    if stage.role != "train":
        return None
    try:
        mlflow.configure(str(root))
        return mlflow_runs.start_live_run(stage, root, context.run.run_id)
    except Exception as err:  # the store is another system: training goes on, logged when it is done
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        context.log.warning(f"{stage.name}: no live MLflow run ({type(err).__name__}: {first_line})")
        return None


def processes(stage: Stage) -> int:
    """How many processes (devices) the stage's commands start on this machine: their ``--num-processes``,
    else 1; a training over ``$M2M_NUM_MACHINES`` machines counts its total over all of them and starts its
    share here (docs/training.md, "Several machines")."""
    count = 1
    for cmd in stage.cmds:
        words = shlex.split(cmd)
        if "--num-processes" in words[:-1] and words[words.index("--num-processes") + 1].isdigit():
            count = max(count, int(words[words.index("--num-processes") + 1]))
    from m2m.training.launch import Machines

    return max(1, count // Machines.from_flags().num_machines)


def device_lease(stage: Stage, context: dg.AssetExecutionContext, compute, root):
    """The devices a heavy step (one in the ``gpu`` pool) holds while its commands run; a light step holds none."""
    machine = compute.devices(pool.current_limit(context.instance)) if stage.meta.get("pool") == pool.POOL else None
    if machine is None:
        return contextlib.nullcontext(None)
    holder = f"run {context.run.run_id} step {stage.name} pid {os.getpid()}"
    folder = devices.lease_folder(os.environ.get("DAGSTER_HOME") or root / ".dagster")
    return devices.lease(machine, processes(stage), holder, folder, context.log.info)


def materialize_stage(context: dg.AssetExecutionContext, asset: str, dvc, compute, mlflow) -> dg.MaterializeResult:
    """Bring ``asset``'s stage (or its partition's stage) up to date and describe it."""
    cli = dvc.cli()
    root = cli.root
    try:
        groups = load_pipeline(root)
        group = groups[asset]
        stage = group.stage(context.partition_key if group.partitioned else None)
    except (PipelineError, KeyError) as err:
        raise dg.Failure(description=f"{asset}: {err}", allow_retries=False) from None
    problems = missing_inputs(stage, groups, root)
    if problems:
        raise dg.Failure(description=f"{stage.name}: {problems[0]}", allow_retries=False)
    live_run_id = None
    try:
        status = cli.status(stage.name)
        if status:
            context.log.info(f"{stage.name} changed ({describe_changes(status)}): running it")
            live_run_id = start_live_run(stage, root, context, mlflow)
            try:
                # A termination (the UI's Terminate, Ctrl-C) stops the command now, not after it.
                with dg.raise_execution_interrupts(), device_lease(stage, context, compute, root) as lease:
                    env = {**compute.env(), **(lease.env() if lease else {}), **mlflow_runs.live_env(live_run_id)}
                    if lease:
                        names = lease.devices.names(lease.indices)
                        visible = env.get("CUDA_VISIBLE_DEVICES")
                        context.log.info(f"{stage.name}: on {names} of {socket.gethostname()}"
                                         + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
                        mlflow_runs.record_placement(live_run_id, names, env)
                    for cmd in stage.cmds:
                        run_command(cmd, root, env, context.log, pass_fds=tuple(lease.fds) if lease else (),
                                    affinity=lease.affinity() if lease else None)
            except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
                mlflow_runs.fail_live_run(live_run_id, "interrupted")
                raise dg.Failure(description=f"{stage.name}: interrupted; nothing committed",
                                 allow_retries=False) from None
            cli.commit(stage.name)
        else:
            context.log.info(f"{stage.name} is up to date in dvc.lock: nothing to run")
        outs = cli.hashes(stage.name, "outs")
    except (CommandFailed, DvcError, ValueError) as err:
        mlflow_runs.fail_live_run(live_run_id, f"{stage.name}: {err}")
        raise dg.Failure(description=f"{stage.name}: {err}", allow_retries=False) from None
    metadata = {
        "dvc stage": dg.MetadataValue.text(stage.name),
        "dvc md5": dg.MetadataValue.text(data_version(outs)),
        "outputs": dg.MetadataValue.md("\n".join(f"- `{path}` md5 `{md5}`" for path, md5 in outs.items())),
        "command": dg.MetadataValue.md("\n\n".join(f"`{cmd}`" for cmd in stage.cmds)),
        "ran": dg.MetadataValue.bool(bool(status)),
    }
    try:
        metadata.update(reports.describe(stage, root))
    except (KeyError, StopIteration, TypeError, ValueError, OSError) as err:
        why = f"{type(err).__name__}: {err}"
        context.log.warning(f"{stage.name}: its outputs could not be described for the UI ({why})")
    if stage.role in ("train", "evaluate"):
        log = mlflow_runs.log_training if stage.role == "train" else mlflow_runs.log_evaluation
        try:
            mlflow.configure(str(root))
            extra = {"live_run_id": live_run_id} if stage.role == "train" else {}
            metadata.update(log(stage, groups, cli, mlflow, context.run.run_id, **extra))
        except Exception as err:  # the store is another system: say which and why, in one line
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise dg.Failure(
                description=f"{stage.name}: MLflow logging failed ({type(err).__name__}: {first_line}); "
                "the stage's outputs are committed, materialize again to retry the logging"
            ) from err
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(data_version(outs)))
