"""Where a run stands (m2m/training/progress.py); resuming from checkpoints end to end is in test_loop.py."""

from m2m.training.progress import Progress


def test_a_new_stretch_starts_only_where_the_precision_changes():
    progress = Progress()
    progress.continue_in("no")
    progress.step = 5
    progress.continue_in("no")  # resumed in the same precision: the same stretch
    progress.continue_in("bf16")
    progress.step = 9
    progress.continue_in("bf16")
    assert progress.precision == [[0, "no"], [5, "bf16"]]


def test_a_checkpoint_from_before_the_record_starts_its_first_stretch_where_it_resumed():
    progress = Progress(step=8000, precision=[])
    progress.continue_in("bf16")
    assert progress.precision == [[8000, "bf16"]]
