"""Check what the Dagster and MLflow UIs show after the main command, in the real UIs.

    .venv/bin/python scripts/check_ui.py [--screenshots docs/img]

Starts ``dagster dev`` (the project's instance, ``.dagster/``) and ``mlflow ui`` (``mlflow/mlflow.db``)
on free 127.0.0.1 ports, asks each what its pages show (Dagster's GraphQL API, MLflow's REST API, and the
pages themselves as headless chromium renders them), prints one PASS/FAIL line per check, optionally saves
screenshots of the pages, stops both servers, and exits 1 when a check failed. Run it after
``bash scripts/pipeline.sh``. The checks live in ``scripts/ui_check/``, one module per concern.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ui_check import dagster_checks, mlflow_checks, page_checks
from ui_check.common import CHROMIUM, SENSOR, CheckFailed
from ui_check.screenshots import screenshots
from ui_check.servers import start_servers, stop


def run_checks(checks: dict) -> int:
    """Run each check, print its PASS/FAIL line, and return how many failed."""
    failed = 0
    for name, check in checks.items():
        try:
            print(f"PASS {name}: {check()}", flush=True)
        except CheckFailed as err:
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
        except Exception as err:  # an answer of another shape than expected is a failure too
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="also save screenshots of the pages here")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each server (default 240)")
    args = parser.parse_args()
    if args.screenshots and not CHROMIUM:
        sys.exit("error: --screenshots needs chromium (not found on PATH)")
    logs = Path(tempfile.mkdtemp(prefix="check_ui-"))
    started, servers = time.time(), []
    try:
        dagster, mlflow = start_servers(servers, logs, args.timeout)
        print(f"dagster dev on {dagster.url}, mlflow ui on {mlflow.url} (logs in {logs})", flush=True)
        failed = run_checks({
            "dagster: job pages list the main command's runs": lambda: dagster_checks.check_job_pages(dagster),
            "dagster: promotion run tagged": lambda: dagster_checks.check_promotion_tag(dagster),
            "dagster: asset graph": lambda: dagster_checks.check_asset_graph(dagster),
            "mlflow: training runs": lambda: mlflow_checks.check_training_runs(mlflow),
            "mlflow: model versions": lambda: mlflow_checks.check_model_versions(mlflow),
            "mlflow: evaluation runs list their model": lambda: mlflow_checks.check_evaluation_inputs(mlflow),
            "page: experiments open on their runs": lambda: page_checks.check_landing(mlflow),
            "page: Source column and user": lambda: page_checks.check_source_column(mlflow),
            "page: System metrics tab": lambda: page_checks.check_system_metrics(mlflow),
            "page: an evaluation run names its model": lambda: page_checks.check_evaluation_model(mlflow),
            "page: sample grids drawn": lambda: page_checks.check_grids(mlflow),
            "page: Dagster's MLflow links": lambda: page_checks.check_dagster_links(dagster, mlflow),
            f"dagster: sensor {SENSOR} first ticks": lambda: dagster_checks.check_sensor(dagster, started),
        })
        if args.screenshots:
            for line in screenshots(args.screenshots, dagster, mlflow):
                print(f"screenshot {line}", flush=True)
        print(f"{failed} check(s) failed" if failed else "all checks passed", flush=True)
        return 1 if failed else 0
    finally:
        for server in servers:
            stop(server)


if __name__ == "__main__":
    sys.exit(main())
