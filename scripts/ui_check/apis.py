"""The two UIs' own APIs, as their pages read them: Dagster's GraphQL, MLflow's REST."""

from __future__ import annotations

import requests

from ui_check.common import LOCATION, REPOSITORY, SENSOR, CheckFailed


class Dagster:
    """The Dagster webserver's GraphQL API."""

    def __init__(self, url: str):
        self.url = url

    def query(self, text: str, **variables) -> dict:
        answer = requests.post(f"{self.url}/graphql", json={"query": text, "variables": variables}, timeout=60)
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise CheckFailed(f"GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]

    def loaded(self) -> bool:
        data = self.query("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
        entries = data["workspaceOrError"].get("locationEntries", [])
        return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)

    def runs(self, job: str, created_after: float | None = None) -> list[dict]:
        """The runs the job's page lists (the UI filters by job name and code-location tag)."""
        location_tag = {"key": ".dagster/repository", "value": f"{REPOSITORY}@{LOCATION}"}
        run_filter = {"pipelineName": job, "tags": [location_tag]}
        if created_after is not None:
            run_filter["createdAfter"] = created_after
        data = self.query(
            "query($f: RunsFilter) { runsOrError(filter: $f) { ... on Runs { results {"
            " runId status creationTime tags { key value } } } } }", f=run_filter,
        )
        return data["runsOrError"]["results"]

    def sensor_ticks(self, after: float) -> tuple[str, list[dict]]:
        data = self.query(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState {"
            " status ticks(limit: 20, afterTimestamp: %f) { status timestamp skipReason runIds error { message } }"
            " } } } }" % after,
            s={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR},
        )
        state = data["sensorOrError"]["sensorState"]
        return state["status"], sorted(state["ticks"], key=lambda t: t["timestamp"])


class Mlflow:
    """The MLflow server's REST API (``/api/2.0/mlflow``, and ``/ajax-api`` for what only the UI uses)."""

    def __init__(self, url: str):
        self.url = url

    def get(self, endpoint: str, body: dict | None = None, **params) -> dict:
        """GET ``endpoint`` with ``params``, or POST ``body`` to it."""
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        answer = requests.post(url, json=body, timeout=60) if body else requests.get(url, params=params, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def experiment(self, name: str) -> dict:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]

    def finished_runs(self, name: str) -> list[dict]:
        query = {"experiment_ids": [self.experiment(name)["experiment_id"]], "max_results": 200,
                 "filter": "attributes.status = 'FINISHED'"}
        return self.get("runs/search", query).get("runs", [])

    def versions(self) -> list[dict]:
        return self.get("model-versions/search", max_results=200).get("model_versions", [])

    @staticmethod
    def model_id(version: dict) -> str:
        """The logged model a version was registered from (its source is ``models:/<id>``)."""
        return version.get("model_id") or version["source"].removeprefix("models:/").split("/")[0]

    def model_file(self, version: dict) -> str:
        """The version's MLmodel file, as the model's page reads it."""
        url = f"{self.url}/ajax-api/2.0/mlflow/logged-models/{self.model_id(version)}/artifacts/files"
        answer = requests.get(url, params={"artifact_file_path": "MLmodel"}, timeout=60)
        answer.raise_for_status()
        return answer.text
