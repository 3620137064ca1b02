"""What every part of the UI check shares: the checkout, the names it looks for, its failure."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's orchestration code (its definitions, its MLflow links), once
LOCATION, REPOSITORY = "m2m", "__repository__"
JOBS = ("prepare_captions", "generate_mis_shards", "train_and_evaluate", "promote_champion", "check_freshness")
SENSOR = "promote_after_evaluation"
REFUSED_TAG = "m2m/promotion_refused"
TRAIN_PARAMS = ("lr", "batch_size", "variant", "images_per_step")
MAX_PNG_BYTES = 300_000
# words of MLflow's GenAI view (its overview's charts, its sidebar's name for runs), which a model-training
# experiment must not open on
GENAI_WORDS = ("Token Usage", "Latency", "Tool calls", "Evaluation runs")
SYSTEM_CHARTS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")
MIN_PRETRAIN_POINTS = 100
LINKED_ASSET = "m2m_dino_pretrained"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class CheckFailed(Exception):
    """A check saw something other than what the UI should show."""


def tags_of(entity: dict) -> dict[str, str]:
    """A GraphQL run's or an MLflow entity's tags as a dict."""
    return {t["key"]: t.get("value", "") for t in entity.get("tags", [])}


def links(url: str):
    """The project's MLflow links (``MlflowResource``) for the UI served at ``url``."""
    from orchestration.defs.resources import MlflowResource

    return MlflowResource(ui_url=url)
