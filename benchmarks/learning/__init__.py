"""Parts of ``bench_learning.py``: the shared helpers, the task study, the judge, the control and the report."""


def __getattr__(name: str):
    """``learning.KindToken``: where ``from_pretrained`` looks for a saved control's encoder class (diffusers
    records a component's library as its top-level package)."""
    if name == "KindToken":
        from learning.control import KindToken

        return KindToken
    raise AttributeError(f"module 'learning' has no attribute {name!r}")
