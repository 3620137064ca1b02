"""Dagster code location of the M2M pipeline: the dvc.yaml stages as assets, with checks, jobs,
a promotion job, and the resources that say where things run and where runs are tracked."""
