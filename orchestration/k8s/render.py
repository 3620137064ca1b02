"""``python -m orchestration.k8s.render``: the Kubernetes Job of every run and every step, as YAML.

The instance is ``$DAGSTER_HOME/dagster.yaml`` (a copy of ``deploy/k8s/dagster.yaml``; its launcher
loads the kubeconfig it names), the definitions are the cluster's code location. Review the output, or
let the cluster check it without starting anything: ``... | kubectl apply --dry-run=server -f -``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import dagster as dg
import yaml
from dagster_k8s import K8sRunLauncher

from orchestration.k8s import pods
from orchestration.k8s.definitions import defs


def manifests(launcher: K8sRunLauncher, definitions: dg.Definitions) -> Iterator[dict]:
    """Each job's run Job, then the Jobs of its steps."""
    config = pods.executor_config(definitions)
    for job in sorted(definitions.resolve_all_job_defs(), key=lambda job: job.name):
        yield pods.as_manifest(pods.run_job(launcher, job))
        for node in job.graph.nodes:
            yield pods.as_manifest(pods.step_job(launcher, config, job, node.name))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m orchestration.k8s.render", description=__doc__.split("\n\n")[0]).parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, K8sRunLauncher):
            print(f"$DAGSTER_HOME/dagster.yaml: run_launcher is {type(launcher).__name__}, not "
                  "dagster_k8s.K8sRunLauncher (copy deploy/k8s/dagster.yaml there)", file=sys.stderr)
            return 2
        yaml.safe_dump_all(manifests(launcher, defs()), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
