"""Do the tests fail when the paper breaks? Each mutation below breaks one equation or rule of the core
modules (m2m/models, m2m/pipeline.py, m2m/training/objective.py and the loop that feeds it) the way a
plausible bug would; the tests that guard it run against the mutated source and must fail. Prints one line per mutation and the kill rate.

    .venv/bin/python scripts/mutations.py            # all (a few minutes on two cores)
    .venv/bin/python scripts/mutations.py eq7-order  # one, by name

The source is restored after every mutation, also when the run is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTATIONS = (
    Mutation(
        "eq6-sign", "m2m/pipeline.py", "return eps_uncond + s * (eps_cond - eps_uncond)",
        "return eps_cond + s * (eps_uncond - eps_cond)", ("tests/test_pipeline.py::test_guidance_arithmetic",),
        "eq. 6 guides away from the context",
    ),
    Mutation(
        "eq7-order", "m2m/pipeline.py", "branches = [(False, False), (True, False), (True, True)]",
        "branches = [(True, False), (False, False), (True, True)]",
        ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
        "eq. 7's unconditional and image branches swapped",
    ),
    Mutation(
        "eq7-uncond-keeps-condition", "m2m/pipeline.py", "branches = [(False, False), (True, False), (True, True)]",
        "branches = [(False, True), (True, False), (True, True)]",
        ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
        "eq. 7's unconditional branch still sees the task condition",
    ),
    Mutation(
        "eq7-scales-swapped", "m2m/pipeline.py", "return cfg_eq7(*eps, s_img, s_cond)",
        "return cfg_eq7(*eps, s_cond, s_img)",
        ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
        "s_I and s_C swapped",
    ),
    Mutation(
        "default-guidance-ignored", "m2m/pipeline.py",
        "guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale",
        "guidance_scale = 1.0 if guidance_scale is None else guidance_scale",
        ("tests/test_pipeline.py::test_default_guidance_scale_is_saved_with_the_model",),
        "the model's own s is not used",
    ),
    Mutation(
        "joint-dropout", "m2m/training/objective.py", "keep = ~drop & (torch.rand(", "keep = (torch.rand(",
        ("tests/training/test_objective.py::test_a_zeroed_context_drops_its_task_condition_too",),
        "eq. 5's dropout zeroes the context but keeps the task condition",
    ),
    Mutation(
        "no-context-dropout", "m2m/training/objective.py",
        "drop = torch.rand(batch, generator=generator, device=device) < p_uncond",
        "drop = torch.rand(batch, generator=generator, device=device) < 0.0",
        ("tests/training/test_objective.py::test_p_uncond_one_equals_an_all_zero_context",),
        "p_uncond never zeroes the context (eq. 6 has no unconditional model)",
    ),
    Mutation(
        "v-target", "m2m/training/objective.py", "target = noise_scheduler.get_velocity(z0, noise, t)",
        "target = noise", ("tests/training/test_objective.py::test_the_target_is_the_schedulers_parameterisation",),
        "a v-prediction model trained on the ε target",
    ),
    Mutation(
        "loop-ignores-p-uncond", "m2m/training/loop.py", "p_uncond=cfg.p_uncond,", "p_uncond=0.1,",
        ("tests/training/test_loop.py::test_the_loop_trains_with_its_dropout_settings",),
        "the training loop does not pass --p-uncond to eq. 5",
    ),
    Mutation(
        "loop-ignores-p-drop-condition", "m2m/training/loop.py", "p_drop_condition=cfg.p_drop_condition,",
        "p_drop_condition=0.1,", ("tests/training/test_loop.py::test_the_loop_trains_with_its_dropout_settings",),
        "the training loop does not pass --p-drop-condition to eq. 5",
    ),
    Mutation(
        "causal-mask-off", "m2m/models/unet.py", "s.visible = visible if visible is not None else list(range(n_query))",
        "s.visible = visible if visible is not None else [n_context] * n_query",
        ("tests/models/test_unet.py",), "noisy image i sees clean images i, i+1, ... (the future) in training",
    ),
    Mutation(
        "prefix-off-by-one", "m2m/models/attention.py", "n_keys = 1 + n_visible * tokens_per_image",
        "n_keys = 1 + max(0, n_visible - 1) * tokens_per_image",
        ("tests/models/test_attention.py",), "eq. 4's mask hides the last preceding image",
    ),
    Mutation(
        "log-w-bias-dropped", "m2m/models/attention.py", "bias = torch.full((n_keys,), math.log(copies),",
        "bias = torch.full((n_keys,), 0.0,",
        ("tests/test_pipeline.py::test_cached_sampler_equals_uncached",),
        "the unconditional branch attends to one copy of its context without + log W",
    ),
    Mutation(
        "window-ignored", "m2m/models/attention.py",
        "n = n_cached if window is None else min(window, n_cached)", "n = n_cached",
        ("tests/models/test_unet.py::test_cache_equals_joint_pass",), "the cache ignores the window W",
    ),
    Mutation(
        "cache-not-trimmed", "m2m/models/attention.py",
        "self.cache_k, self.cache_v = self.cache_k[:, -keep:], self.cache_v[:, -keep:]", "pass",
        ("tests/test_pipeline.py::test_the_cache_holds_at_most_the_window",), "the cache grows along the sequence",
    ),
)


def run(mutation: Mutation) -> tuple[bool, float]:
    """(killed, seconds): apply, run its tests, restore."""
    path = ROOT / mutation.file
    source = path.read_text(encoding="utf-8")
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: {mutation.file} no longer holds the mutated line once; update it")
    start = time.monotonic()
    try:
        path.write_text(source.replace(mutation.old, mutation.new), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
    finally:
        path.write_text(source, encoding="utf-8")
    return proc.returncode != 0, time.monotonic() - start


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or m.name in argv]
    if argv and len(chosen) != len(argv):
        raise SystemExit(f"unknown mutation; known: {', '.join(m.name for m in MUTATIONS)}")
    killed = 0
    for mutation in chosen:
        dead, seconds = run(mutation)
        killed += dead
        print(f"{'killed  ' if dead else 'SURVIVED'} {mutation.name:28s} {seconds:5.0f} s  {mutation.what}", flush=True)
    print(f"kill rate: {killed}/{len(chosen)}")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
