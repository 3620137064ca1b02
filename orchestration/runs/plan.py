"""Which runs the main command submits, and which must succeed before each.

One run per unit of work that holds a device or may go on beside another: the captions; one per
shard partition (what a backfill of ``generate_mis_shards`` launches); the light data steps together;
one per heavy asset (each training, fine-tuning and the evaluation), so two trainings run side by side
when the ``gpu`` pool allows and a killed run worker takes down one training only; then the promotion, and
last the data freshness checks (``check_freshness``), so the asset graph ends with every check evaluated.
A run starts when the runs holding its upstream assets have succeeded; the dependencies are
dvc.yaml's (``StageGroup.upstream``), nothing is listed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.dvc.stages import StageGroup, upstream_assets
from orchestration.runs.pool import POOL

CAPTIONS, DATA, PROMOTION, FRESHNESS = "captions", "data", "promotion", "freshness"


@dataclass(frozen=True)
class RunSpec:
    """A run to submit: ``job`` with an ``assets`` selection (None: the whole job) and the job's ``checks``
    of those assets, (asset, check name); a ``partition``; it waits for the runs named in ``after``."""

    key: str
    job: str
    assets: tuple[str, ...] | None = None
    partition: str | None = None
    after: tuple[str, ...] = ()
    checks: tuple[tuple[str, str], ...] = ()
    makes: tuple[str, ...] = ()  # the dvc.yaml assets (stage groups) it materializes; none for promotion, freshness


def ancestors(groups: dict[str, StageGroup], asset: str) -> set[str]:
    found, todo = set(), [asset]
    while todo:
        for parent in upstream_assets(groups, todo.pop()):
            if parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


def plan(
    groups: dict[str, StageGroup], jobs: dict[str, str], checks: list[tuple[str, str]], promote: bool = True
) -> list[RunSpec]:
    """The main command's runs for the pipeline ``groups``; ``jobs`` names the ``prepare``, ``shards``,
    ``train`` and ``promote`` jobs (orchestration/defs/jobs.py), and ``freshness`` where the freshness checks
    run last (orchestration/defs/freshness.py); ``checks``: the train job's asset checks, (asset, name), each
    run with those of its assets."""

    def of(assets: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple(check for check in checks if check[0] in assets)

    partitioned = [name for name, group in groups.items() if group.partitioned]
    prepared = set().union(*(ancestors(groups, name) for name in partitioned)) if partitioned else set()
    specs = [RunSpec(CAPTIONS, jobs["prepare"], makes=tuple(sorted(prepared)))]
    shard_keys = []
    for name in partitioned:
        for item in groups[name].items:
            shard_keys.append(f"{name} {item}")
            specs.append(RunSpec(shard_keys[-1], jobs["shards"], partition=item, after=(CAPTIONS,), makes=(name,)))
    holders = {name: (CAPTIONS,) for name in prepared}  # asset -> the runs that make it
    holders.update({name: tuple(k for k in shard_keys if k.startswith(f"{name} ")) for name in partitioned})
    rest = [name for name in groups if name not in holders]

    def after(name: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key for parent in upstream_assets(groups, name) for key in holders[parent]))

    light = [name for name in rest if groups[name].first.meta.get("pool") != POOL
             and not any(parent in rest for parent in upstream_assets(groups, name))]
    if light:
        needs = tuple(dict.fromkeys(key for name in light for key in after(name)))
        specs.append(RunSpec(DATA, jobs["train"], assets=tuple(light), after=needs, checks=of(tuple(light)),
                             makes=tuple(light)))
        holders.update({name: (DATA,) for name in light})
    for name in rest:
        if name not in light:
            specs.append(RunSpec(name, jobs["train"], assets=(name,), after=after(name), checks=of((name,)),
                                 makes=(name,)))
            holders[name] = (name,)
    if promote:
        specs.append(RunSpec(PROMOTION, jobs["promote"], after=tuple(s.key for s in specs)))
    if "freshness" in jobs:
        specs.append(RunSpec(FRESHNESS, jobs["freshness"], after=tuple(s.key for s in specs)))
    return specs


def to_run(specs: list[RunSpec], stale, ran_before: bool = False) -> tuple[list[RunSpec], list[str]]:
    """The runs with work to do, and the keys of those left out: a run is kept when ``stale(spec)`` (what it
    makes changed in DVC, or was never materialized) or a run it waits for is kept; the promotion and the
    freshness checks are kept when anything else is, or when runs an earlier command left were followed to
    their end first (``ran_before``: they may have registered a model or changed data). A run left out
    records no materialization, so an asset's "last materialized" in Dagster is when its data last changed.
    ``after`` keeps only runs that are kept."""
    kept: dict[str, RunSpec] = {}
    for spec in specs:  # plan() lists every run after the runs it waits for
        if spec.makes and (any(key in kept for key in spec.after) or stale(spec)):
            kept[spec.key] = spec
        elif not spec.makes and (kept or ran_before):
            kept[spec.key] = spec
    runs = [RunSpec(**{**vars(spec), "after": tuple(k for k in spec.after if k in kept)}) for spec in kept.values()]
    return runs, [spec.key for spec in specs if spec.key not in kept]
