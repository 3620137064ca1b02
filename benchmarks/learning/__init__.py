"""Parts of ``bench_learning.py``: the shared helpers, the task study and the report."""
