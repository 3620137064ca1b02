"""The MLflow Model Registry as M2M uses it: aliases, not stages.

Every new version of a registered model (``m2m-self``, ``m2m-dino``, ``m2m-dino-nvs``,
``m2m-dino-procedure``) gets the alias ``challenger``. :func:`promote` moves ``champion`` to the
challenger only when it beats the current champion on the chosen metrics, and says why when it
refuses; the first challenger of a model becomes champion unopposed. :func:`rollback` points
``champion`` back at an earlier champion.

A version's metrics are its tags ``metric.<name>`` (set when the training and evaluation runs are
logged), so a decision reads only the registry.

mlflow is imported inside the functions that need it: the rest of the library never needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG = "metric."
CHAMPION_SINCE_TAG = "champion_since"
ROLLED_BACK_TAG = "rolled_back"
DVC_TAG = "dvc.md5"


@dataclass(frozen=True)
class Rule:
    """A promotion criterion: metric ``name``, better when ``min``imised or ``max``imised."""

    name: str
    goal: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``"fid:min"`` / ``"clip_image_image:max"``."""
        name, sep, goal = text.partition(":")
        if not sep or not name or goal not in ("min", "max"):
            raise ValueError(f"metric rule {text!r}: expected NAME:min or NAME:max (e.g. fid:min)")
        return cls(name, goal)

    def __str__(self) -> str:
        return f"{self.name}:{self.goal}"

    def better(self, a: float, b: float) -> bool:
        return a < b if self.goal == "min" else a > b


# Table 1's metrics for the pre-trained models (from `m2m evaluate`); the fine-tuned models have no
# MIS evaluation, so their gate is the mean training loss over the last 10% of steps on their task.
DEFAULT_RULES = {
    "m2m-self": ("fid:min", "clip_image_image:max"),
    "m2m-dino": ("fid:min", "clip_image_image:max"),
    "m2m-dino-nvs": ("loss_last_10pct:min",),
    "m2m-dino-procedure": ("loss_last_10pct:min",),
}


def default_rules(model: str) -> list[Rule]:
    return [Rule.parse(text) for text in DEFAULT_RULES.get(model, ("fid:min",))]


@dataclass(frozen=True)
class Decision:
    """The outcome of a promotion or rollback; ``reason`` says why, in one line. ``refused`` is set
    when the registry was left as it was because the request could not be granted."""

    model: str
    changed: bool
    reason: str
    champion: str | None
    challenger: str | None
    refused: bool = False

    def __str__(self) -> str:
        verb = "refused" if self.refused else "changed" if self.changed else "unchanged"
        return f"{self.model}: {verb}, champion v{self.champion or '-'}: {self.reason}"


def _client(client=None):
    if client is not None:
        return client
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def alias_version(model: str, alias: str, client=None):
    """The version ``alias`` points at, or None (mlflow gives version numbers as ``int`` or ``str``;
    compare them as ``str(version.version)``)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(client).get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def unknown_model(model: str, client) -> str | None:
    """Why ``model`` cannot be promoted or rolled back when it was never registered, else None."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
        return None
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        return f"no registered model {model!r} (registered: {', '.join(known) or 'none'})"


def logged_model_id(version) -> str | None:
    """The MLflow logged model a version was registered from (``models:/<id>``), or None."""
    found = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not found and source.startswith("models:/m-"):
        found = source.removeprefix("models:/").split("/")[0]
    return found or None


def metrics_of(version) -> dict[str, float]:
    """A version's ``metric.<name>`` tags as floats."""
    out = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(METRIC_TAG):
            try:
                out[key[len(METRIC_TAG) :]] = float(value)
            except ValueError:
                continue
    return out


def set_metrics(model: str, version: str, metrics: dict[str, float], client=None) -> None:
    """Record ``metrics`` on a version as ``metric.<name>`` tags (what :func:`promote` compares)."""
    client = _client(client)
    for name, value in metrics.items():
        client.set_model_version_tag(model, version, f"{METRIC_TAG}{name}", metric_text(value))


def metric_text(value: float) -> str:
    """A metric as a version tag people read: six significant digits (``0.166667``, not ``0.16666666666666666``),
    finer than any difference :func:`promote` is meant to act on."""
    return f"{float(value):.6g}"


def tag_version(model: str, version: str, key: str, value: str, client=None) -> None:
    _client(client).set_model_version_tag(model, version, key, value)


EVALUATED_IN = "\n\nEvaluated in "


def note_evaluation(model: str, version: str, run_url: str, client=None) -> None:
    """End the version's description with a link to the run that evaluated it (tags are plain text on the
    version's page; its description is markdown), replacing the link of an earlier evaluation."""
    client = _client(client)
    text = (client.get_model_version(model, str(version)).description or "").split(EVALUATED_IN)[0]
    client.update_model_version(model, str(version), description=f"{text}{EVALUATED_IN}[this run]({run_url}).")


def aliases_of(model: str, version: str, client=None) -> list[str]:
    """The aliases that point at ``version`` now."""
    return list(_client(client).get_model_version(model, str(version)).aliases or [])


def register(model_uri: str, model: str, tags: dict[str, str], description: str | None = None, client=None,
             model_description: str | None = None, model_tags: dict[str, str] | None = None):
    """Register ``model_uri`` as a new version of ``model`` (with ``description``, shown on the version's
    page) and give it the ``challenger`` alias. ``model_description`` and ``model_tags`` describe the
    registered model itself (its page and the models list); a description someone wrote there is kept."""
    import mlflow

    client = _client(client)
    version = mlflow.register_model(model_uri, model, tags=tags)
    if description:
        client.update_model_version(model, version.version, description=description)
    if model_description and not (client.get_registered_model(model).description or "").strip():
        client.update_registered_model(model, description=model_description)
    for key, value in (model_tags or {}).items():
        client.set_registered_model_tag(model, key, value)
    client.set_registered_model_alias(model, CHALLENGER, version.version)
    return client.get_model_version(model, version.version)


def find_version(model: str, tag: str, value: str, client=None):
    """The newest version of ``model`` whose tag ``tag`` equals ``value``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client(client).search_model_versions(f"name = '{model}'")
    except MlflowException:
        return None
    matches = [v for v in versions if (v.tags or {}).get(tag) == value]
    return max(matches, key=lambda v: int(v.version), default=None)


def compare(challenger: dict[str, float], champion: dict[str, float], rules: list[Rule]) -> tuple[bool, str]:
    """Does the challenger beat the champion? It must be no worse on every rule and better on one."""
    better, notes = [], []
    for rule in rules:
        for who, values in (("challenger", challenger), ("champion", champion)):
            if rule.name not in values or not math.isfinite(values[rule.name]):
                return False, f"the {who} has no finite value for {rule.name}"
        a, b = challenger[rule.name], champion[rule.name]
        notes.append(f"{rule.name} {a:.4g} vs {b:.4g}")
        if rule.better(b, a):
            return False, f"worse {rule.name} ({rule.goal} is better): " + "; ".join(notes)
        if rule.better(a, b):
            better.append(rule.name)
    if not better:
        return False, "no better on any of " + ", ".join(str(r) for r in rules) + ": " + "; ".join(notes)
    return True, "better " + ", ".join(better) + ": " + "; ".join(notes)


def now() -> str:
    """A timestamp for the tags people read in the registry: ISO 8601 in UTC, to the microsecond."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def since(text: str) -> datetime:
    """A ``champion_since`` tag back as a time (stores written before it was ISO 8601 hold epoch seconds)."""
    try:
        return datetime.fromtimestamp(float(text), timezone.utc)
    except ValueError:
        return datetime.fromisoformat(text)


def _make_champion(client, model: str, version: str) -> None:
    client.set_registered_model_alias(model, CHAMPION, version)
    client.set_model_version_tag(model, version, CHAMPION_SINCE_TAG, now())


def promote(model: str, rules: list[Rule] | None = None, client=None) -> Decision:
    """Move ``champion`` to the ``challenger`` version when it beats the champion on ``rules``."""
    client = _client(client)
    rules = rules or default_rules(model)
    if (why := unknown_model(model, client)) is not None:
        return Decision(model, False, why, None, None, refused=True)
    challenger = alias_version(model, CHALLENGER, client)
    champion = alias_version(model, CHAMPION, client)
    current = str(champion.version) if champion else None
    if challenger is None:
        return Decision(model, False, f"{model} has no version with alias '{CHALLENGER}'", current, None, refused=True)
    new = str(challenger.version)
    if champion is None:
        _make_champion(client, model, new)
        return Decision(model, True, "first champion: no champion to beat", new, new)
    if current == new:
        return Decision(model, False, "the challenger is already the champion", current, new)
    if ROLLED_BACK_TAG in (challenger.tags or {}):
        reason = f"v{new} was rolled back from champion; a new version must challenge"
        return Decision(model, False, reason, current, new, refused=True)
    wins, why = compare(metrics_of(challenger), metrics_of(champion), rules)
    if not wins:
        return Decision(model, False, f"v{new} does not beat v{current}: {why}", current, new, refused=True)
    _make_champion(client, model, new)
    return Decision(model, True, f"v{new} over v{current}: {why}", new, new)


def rollback(model: str, to_version: str | int | None = None, client=None) -> Decision:
    """Point ``champion`` at ``to_version``, or by default at the champion before the current one."""
    from mlflow.exceptions import MlflowException

    client = _client(client)
    if (why := unknown_model(model, client)) is not None:
        return Decision(model, False, why, None, None, refused=True)
    champion = alias_version(model, CHAMPION, client)
    challenger = alias_version(model, CHALLENGER, client)
    challenger_version = str(challenger.version) if challenger else None
    if champion is None:
        return Decision(model, False, f"{model} has no champion to roll back", None, challenger_version, refused=True)
    current = str(champion.version)
    if to_version is None:
        earlier = [
            v
            for v in client.search_model_versions(f"name = '{model}'")
            if str(v.version) != current
            and CHAMPION_SINCE_TAG in (v.tags or {})
            and ROLLED_BACK_TAG not in (v.tags or {})
        ]
        if not earlier:
            reason = "no earlier champion to roll back to"
            return Decision(model, False, reason, current, challenger_version, refused=True)
        target = str(max(earlier, key=lambda v: since(v.tags[CHAMPION_SINCE_TAG])).version)
    else:
        target = str(to_version)
        try:
            target_tags = client.get_model_version(model, target).tags or {}
        except MlflowException:
            return Decision(model, False, f"{model} has no version {target}", current, challenger_version, refused=True)
        if target == current:
            return Decision(model, False, f"v{target} is already the champion", current, challenger_version)
        if ROLLED_BACK_TAG in target_tags:  # the rule of promote() holds here too
            reason = f"v{target} was rolled back from champion; a new version must challenge"
            return Decision(model, False, reason, current, challenger_version, refused=True)
    client.set_model_version_tag(model, current, ROLLED_BACK_TAG, now())
    client.set_registered_model_alias(model, CHAMPION, target)
    return Decision(model, True, f"rolled back from v{current} to v{target}", target, challenger_version)
