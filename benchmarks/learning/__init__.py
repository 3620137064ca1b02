"""Parts of ``bench_learning.py``: the shared helpers, the task study, the judge, the control and the report."""
