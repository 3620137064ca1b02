"""Do the tests fail when the paper breaks? Each mutation below breaks one equation or rule of the core
modules (m2m/models, m2m/pipeline.py, m2m/training/objective.py and the loop that feeds it) the way a
plausible bug would; the tests that guard it run against the mutated source and must fail. Prints one line per mutation and the kill rate.

    .venv/bin/python scripts/mutations.py            # all (a few minutes on two cores)
    .venv/bin/python scripts/mutations.py eq7-order  # one, by name

``--generate`` makes one mutant per site of the functions that carry the math (``TARGETS``): comparisons
flipped (< <=, > >=, == !=, is / is not, in / not in), + - and * / swapped, // to /, ** to *, and / or
swapped, a unary not or minus removed, 0 to 1, 1 to 0, n to n + 1, True / False; never in raise
statements, f-strings, default arguments or progress display. A mutant whose tests run past the timeout
counts as killed. Writes docs/mutations.md, keeping the verdicts written there for survivors. Options:
``--list`` (print, do not run), ``--only=MODULE``, ``--minutes=M`` (start none after M), mutant ids.

The source is restored after every mutation, also when the run is interrupted.
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs/mutations.md"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTATIONS = (
    Mutation("eq6-sign", "m2m/pipeline.py", "return eps_uncond + s * (eps_cond - eps_uncond)",
             "return eps_cond + s * (eps_uncond - eps_cond)", ("tests/test_pipeline.py::test_guidance_arithmetic",),
             "eq. 6 guides away from the context"),
    Mutation("eq7-order", "m2m/pipeline.py", "branches = [(False, False), (True, False), (True, True)]",
             "branches = [(True, False), (False, False), (True, True)]",
             ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
             "eq. 7's unconditional and image branches swapped"),
    Mutation("eq7-uncond-keeps-condition", "m2m/pipeline.py",
             "branches = [(False, False), (True, False), (True, True)]",
             "branches = [(False, True), (True, False), (True, True)]",
             ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
             "eq. 7's unconditional branch still sees the task condition"),
    Mutation("eq7-scales-swapped", "m2m/pipeline.py", "return cfg_eq7(*eps, s_img, s_cond)",
             "return cfg_eq7(*eps, s_cond, s_img)",
             ("tests/test_pipeline.py::test_task_conditions_follow_eq7_branch_by_branch",),
             "s_I and s_C swapped"),
    Mutation("default-guidance-ignored", "m2m/pipeline.py",
             "guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale",
             "guidance_scale = 1.0 if guidance_scale is None else guidance_scale",
             ("tests/test_pipeline.py::test_default_guidance_scale_is_saved_with_the_model",),
             "the model's own s is not used"),
    Mutation("joint-dropout", "m2m/training/objective.py", "keep = ~drop & (torch.rand(", "keep = (torch.rand(",
             ("tests/training/test_objective.py::test_a_zeroed_context_drops_its_task_condition_too",),
             "eq. 5's dropout zeroes the context but keeps the task condition"),
    Mutation("no-context-dropout", "m2m/training/objective.py",
             "drop = torch.rand(batch, generator=generator, device=device) < p_uncond",
             "drop = torch.rand(batch, generator=generator, device=device) < 0.0",
             ("tests/training/test_objective.py::test_p_uncond_one_equals_an_all_zero_context",),
             "p_uncond never zeroes the context (eq. 6 has no unconditional model)"),
    Mutation("v-target", "m2m/training/objective.py", "target = noise_scheduler.get_velocity(z0, noise, t)",
             "target = noise",
             ("tests/training/test_objective.py::test_the_target_is_the_schedulers_parameterisation",),
             "a v-prediction model trained on the ε target"),
    Mutation("loop-ignores-p-uncond", "m2m/training/loop.py", "p_uncond=cfg.p_uncond,", "p_uncond=0.1,",
             ("tests/training/test_loop.py::test_the_loop_trains_with_its_dropout_settings",),
             "the training loop does not pass --p-uncond to eq. 5"),
    Mutation("loop-ignores-p-drop-condition", "m2m/training/loop.py", "p_drop_condition=cfg.p_drop_condition,",
             "p_drop_condition=0.1,", ("tests/training/test_loop.py::test_the_loop_trains_with_its_dropout_settings",),
             "the training loop does not pass --p-drop-condition to eq. 5"),
    Mutation("noise-keyed-by-process", "m2m/training/noise.py", "return accumulated * num_processes + rank",
             "return rank", ("tests/training/test_noise.py::test_a_slot_is_the_block_of_the_stream_its_process_reads",),
             "eq. 5's draws follow the process, not the sets it reads: P processes train otherwise than one"),
    Mutation("causal-mask-off", "m2m/models/unet.py",
             "visible = tuple(visible) if visible is not None else tuple(range(n_query))",
             "visible = tuple(visible) if visible is not None else (n_context,) * n_query",
             ("tests/models/test_unet.py",), "noisy image i sees clean images i, i+1, ... (the future) in training"),
    Mutation("prefix-off-by-one", "m2m/models/attention.py", "n_keys = 1 + n_visible * tokens_per_image",
             "n_keys = 1 + max(0, n_visible - 1) * tokens_per_image",
             ("tests/models/test_attention.py",), "eq. 4's mask hides the last preceding image"),
    Mutation("log-w-bias-dropped", "m2m/models/attention.py", "bias = torch.full((n_keys,), math.log(copies),",
             "bias = torch.full((n_keys,), 0.0,",
             ("tests/test_pipeline.py::test_cached_sampler_equals_uncached",),
             "the unconditional branch attends to one copy of its context without + log W"),
    Mutation("window-ignored", "m2m/models/cache.py",
             "n = n_cached if window is None else min(window, n_cached)", "n = n_cached",
             ("tests/models/test_unet.py::test_cache_equals_joint_pass",), "the cache ignores the window W"),
    Mutation("cache-not-trimmed", "m2m/models/cache.py",
             "(k, v) if keep is None else (k[:, -keep:], v[:, -keep:])", "(k, v)",
             ("tests/test_pipeline.py::test_the_cache_holds_at_most_the_window",),
             "the cache grows along the sequence"),
    Mutation("cache-window-stale", "m2m/models/cache.py", "self._visible.pop(layer, None)", "pass",
             ("tests/test_pipeline.py::test_cached_sampler_equals_uncached",),
             "a new context image joins the cache but the steps read the window joined before it"),
    Mutation("cache-one-layer", "m2m/models/unet.py",
             "layer=sum(isinstance(p, ImageSetAttnProcessor) for p in processors.values()),", "layer=0,",
             ("tests/models/test_unet.py::test_cache_equals_joint_pass",),
             "every Image-Set Attention layer reads and writes the same keys/values of the cache"),
    Mutation("cache-on-the-unet", "m2m/pipeline.py",
             "cache = ContextCache(window) if use_cache else None",
             "cache = self.unet.__dict__.setdefault('_cache', ContextCache(window)) if use_cache else None",
             ("tests/test_pipeline.py::test_two_pipelines_sharing_one_unet_keep_their_own_context",),
             "one cache per UNet, kept across calls: a second call (or pipeline) finds the first one's context"),
    Mutation("dino-input-range", "m2m/models/encoders.py", "return ((x + 1) / 2 - mean) / std", "return (x - mean) / std",
             ("tests/models/test_encoders.py",), "E_v reads images in [-1, 1] as if they were in [0, 1]"),
    Mutation("vae-input-range", "m2m/pipeline.py", ".float() / 127.5 - 1", ".float() / 255",
             ("tests/models/test_encoders.py::test_the_autoencoder_gets_images_in_its_range_and_scaled_latents",),
             "context images reach the autoencoder in [0, 1], not [-1, 1]"),
)


def mutated(file: str, source: bytes, tests: tuple[str, ...], timeout: float | None = None) -> tuple[str, float]:
    """("killed" | "timeout" | "survived", seconds) of the tests with ``file`` holding ``source``; restores it."""
    path, start = ROOT / file, time.monotonic()
    original = path.read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        path.write_bytes(source)
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=timeout).returncode
        status = "killed" if failed else "survived"
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:
        path.write_bytes(original)
    return status, time.monotonic() - start


def curated(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    if names and len(chosen) != len(names):
        raise SystemExit(f"unknown mutation; known: {', '.join(m.name for m in MUTATIONS)}")
    killed = 0
    for mutation in chosen:
        source = (ROOT / mutation.file).read_text(encoding="utf-8")
        if source.count(mutation.old) != 1:
            raise SystemExit(f"{mutation.name}: {mutation.file} no longer holds the mutated line once; update it")
        status, seconds = mutated(mutation.file, source.replace(mutation.old, mutation.new).encode(), mutation.tests)
        killed += status != "survived"
        label = "killed  " if status != "survived" else "SURVIVED"
        print(f"{label} {mutation.name:28s} {seconds:5.0f} s  {mutation.what}", flush=True)
    print(f"kill rate: {killed}/{len(chosen)}")
    return 0 if killed == len(chosen) else 1


# -- generated mutants -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    module: str
    file: str
    functions: tuple[str, ...]  # "f", "Class" (all its methods) or "Class.method"; () for all
    tests: tuple[str, ...]  # the fast tests that guard it (the pipeline's drive the cache and + log W)
    timeout: int  # seconds, about twice the tests' own time


ATTENTION, PIPELINE = ("tests/models/", "tests/test_pipeline.py"), ("tests/test_pipeline.py",)
TARGETS = (  # in the order they run: eq. 4, eq. 5, eq. 6/7, then the processor, its cache and the sampler
    Target("attention", "m2m/models/attention.py", ("image_set_attention", "repeated_context_attention"),
           ATTENTION, 200),
    Target("objective", "m2m/training/objective.py", (), ("tests/training/test_objective.py",), 90),
    Target("pipeline", "m2m/pipeline.py", ("cfg_eq6", "cfg_eq7", "Guidance"), PIPELINE, 160),
    Target("attention", "m2m/models/attention.py", ("ImageSetAttnProcessor",), ATTENTION, 200),
    Target("cache", "m2m/models/cache.py", (), ATTENTION, 200),
    # the context window and the cache (_cache, __call__), the denoising loop of eq. 6/7 (_context, _denoise)
    Target("pipeline", "m2m/pipeline.py", ("M2MPipeline._context", "M2MPipeline._cache", "M2MPipeline._denoise",
                                           "M2MPipeline.__call__"), PIPELINE, 160),
)
FLIPS = {
    ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"), ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"),
    ast.NotIn: ("not in", "in"), ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"), ast.Pow: ("**", "*"), ast.And: ("and", "or"), ast.Or: ("or", "and"),
}
QUIET = {"set_progress_bar_config", "progress_bar", "set_description"}  # progress display, not math


@dataclass(frozen=True)
class Mutant:
    id: str  # module:function#n, the function's n-th mutant
    target: Target
    lines: tuple[int, int]  # the lines of the mutated node
    edits: tuple[tuple[int, int, bytes], ...]  # source[start:end] becomes the bytes (ast counts bytes)

    def apply(self, source: bytes) -> bytes:
        for start, end, new in sorted(self.edits, reverse=True):
            source = source[:start] + new + source[end:]
        return source

    def text(self, source: bytes) -> str:  # the mutated node's lines, of the original or the mutant
        return " ".join(line.strip() for line in source.decode().splitlines()[self.lines[0] - 1 : self.lines[1]])


def sites(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and the nodes under it, less raise statements, f-strings, default arguments and progress display."""
    quiet = isinstance(node, ast.Call) and getattr(node.func, "attr", None) in QUIET
    if quiet or isinstance(node, (ast.Raise, ast.JoinedStr, ast.arguments)):
        return
    yield node
    for child in ast.iter_child_nodes(node):
        yield from sites(child)


def flip(source: bytes, start: int, end: int, op: ast.AST) -> tuple[int, int, bytes]:
    """Flip the operator ``op`` written between two operands, in ``source[start:end]`` (e.g. ``) * (``)."""
    old, new = FLIPS[type(op)]
    gap = source[start:end]
    left, right = len(gap) - len(gap.lstrip(b" \t\n\\)")), len(gap.rstrip(b" \t\n\\("))
    assert b" ".join(gap[left:right].split()) == old.encode(), gap
    return start + left, start + right, new.encode()


def edits(node: ast.AST, source: bytes, at) -> Iterator[tuple[tuple[int, int, bytes], ...]]:
    """The edits of each mutant of ``node`` itself; ``at(node)`` is its (start, end) in ``source``."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, operands, operands[1:]):
            yield (flip(source, at(a)[1], at(b)[0], op),)
    elif isinstance(node, ast.BinOp) and type(node.op) in FLIPS:
        yield (flip(source, at(node.left)[1], at(node.right)[0], node.op),)
    elif isinstance(node, ast.BoolOp):
        yield tuple(flip(source, at(a)[1], at(b)[0], node.op) for a, b in zip(node.values, node.values[1:]))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        start = at(node)[0]  # "not x" becomes " x"
        yield ((start, start + (3 if isinstance(node.op, ast.Not) else 1), b""),)
    elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
        value = node.value
        new = not value if type(value) is bool else type(value)({0: 1, 1: 0}.get(value, value + 1))
        yield ((*at(node), repr(new).encode()),)


def generate(only: str | None = None) -> list[Mutant]:
    """Every mutant of ``TARGETS`` (of one module with ``only``), in their order."""
    mutants = []
    for target in (t for t in TARGETS if only in (None, t.module)):
        source = (ROOT / target.file).read_bytes()
        starts = [0, *itertools.accumulate(len(line) for line in source.splitlines(keepends=True))]

        def at(node: ast.AST) -> tuple[int, int]:
            return starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset

        for scope in (n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))):
            methods = [f for f in scope.body if isinstance(f, ast.FunctionDef)]
            for fn in [scope] if isinstance(scope, ast.FunctionDef) else methods:
                name = fn.name if fn is scope else f"{scope.name}.{fn.name}"
                if target.functions and not {name, scope.name} & set(target.functions):
                    continue
                found = ((node, e) for stmt in fn.body for node in sites(stmt) for e in edits(node, source, at))
                for n, (node, changes) in enumerate(found, 1):
                    mutants.append(Mutant(f"{target.module}:{name}#{n}", target, (node.lineno, node.end_lineno), changes))
                    ast.parse(mutants[-1].apply(source))  # still Python
    return mutants


def named_section() -> list[str]:
    """docs/mutations.md's list of the hand-written mutations (run by name; each must be killed)."""
    lines = ["## Named mutations", "", "Each is run by name (`scripts/mutations.py NAME`) and must be killed by its tests.", "",
             "| name | file | what breaks | tests |", "|---|---|---|---|"]
    for m in MUTATIONS:
        lines.append(f"| `{m.name}` | {m.file} | {m.what} | " + ", ".join(f"`{t}`" for t in m.tests) + " |")
    return [*lines, ""]


def report(mutants: list[Mutant], results: dict[str, str]) -> str:
    """docs/mutations.md: the kill rate per module, every survivor with its verdict, what was not run. A
    survivor's verdict (kept from the file) is "equivalent: why" or "killed by <the test added for it>"."""
    old = REPORT.read_text().splitlines() if REPORT.exists() else []
    rows = [line.split(" | ") for line in old if line.startswith("| `")]
    verdicts = {row[0].strip("| `"): row[-1].rstrip(" |") for row in rows}
    lines = ["# Generated mutants of the core math", "", "By `scripts/mutations.py --generate` (see its docstring).", "",
             "| module | generated | run | killed (timed out) | survived | kill rate | with the tests added since |",
             "|---|---|---|---|---|---|---|"]
    for module in dict.fromkeys(m.target.module for m in mutants):
        ran = [m.id for m in mutants if m.target.module == module and m.id in results]
        dead = [i for i in ran if results[i] != "survived"]
        later = [i for i in ran if results[i] == "survived" and verdicts.get(i, "").startswith("killed by")]
        timeouts, total = sum(results[i] == "timeout" for i in ran), sum(m.target.module == module for m in mutants)
        rate = lambda n: f"{n}/{len(ran)} ({100 * n / max(len(ran), 1):.0f} %)"
        lines.append(f"| {module} | {total} | {len(ran)} | {len(dead)} ({timeouts}) | {len(ran) - len(dead)} "
                     f"| {rate(len(dead))} | {rate(len(dead) + len(later))} |")
    lines += ["", *named_section(), "## Survivors", "", "| mutant | line | original | mutant | verdict |",
              "|---|---|---|---|---|"]
    code = lambda text: "`" + text.replace("|", "\\|") + "`"
    for m in (m for m in mutants if results.get(m.id) == "survived"):
        source = (ROOT / m.target.file).read_bytes()
        lines.append(f"| {code(m.id)} | {m.target.file}:{m.lines[0]} | {code(m.text(source))} "
                     f"| {code(m.text(m.apply(source)))} | {verdicts.get(m.id, 'to judge')} |")
    skipped = ", ".join(f"`{m.id}`" for m in mutants if m.id not in results)
    return "\n".join([*lines, "", "## Not run", "", skipped or "None: every mutant ran.", ""])


def generated(ids: list[str], options: dict[str, str]) -> int:
    mutants = generate(options.get("only"))
    chosen = [m for m in mutants if not ids or m.id in ids]
    if len(chosen) < len(ids):
        raise SystemExit("unknown mutant id; see --generate --list")
    results, began, minutes = {}, time.monotonic(), float(options.get("minutes", "inf"))
    for m in chosen:
        source = (ROOT / m.target.file).read_bytes()
        if "list" in options:
            print(f"{m.id:45s} {m.target.file}:{m.lines[0]:<4d} {m.text(source)}  ->  {m.text(m.apply(source))}")
        elif time.monotonic() - began < 60 * minutes:
            results[m.id], seconds = mutated(m.target.file, m.apply(source), m.target.tests, m.target.timeout)
            print(f"{results[m.id]:8s} {m.id:45s} {m.target.file}:{m.lines[0]:<4d} {seconds:4.0f} s", flush=True)
    survived = sum(r == "survived" for r in results.values())
    if results:
        print(f"kill rate: {len(results) - survived}/{len(results)} run of {len(chosen)}")
    if results and not ids:
        REPORT.write_text(report(mutants, results), encoding="utf-8")
    return 1 if survived else 0


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("--")]
    options = dict(a[2:].partition("=")[::2] for a in argv if a.startswith("--"))
    return generated(names, options) if "generate" in options else curated(names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
