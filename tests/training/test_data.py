import pytest
import torch

from m2m.training import data


class Items(torch.utils.data.Dataset):
    """``n`` items, each with a draw from torch's RNG (which ``TaskBatches`` seeds per item)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return {"index": index, "draw": torch.randint(1000, (1,))}


def test_task_batches_are_resumable_and_split_across_processes():
    def take(batches, n):
        it = iter(batches)
        return [next(it) for _ in range(n)]

    straight = take(data.TaskBatches(Items(5), batch_size=2, seed=0), 6)
    first = data.TaskBatches(Items(5), batch_size=2, seed=0)
    head = take(first, 3)
    resumed = data.TaskBatches(Items(5), batch_size=2, seed=0)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(straight, head + take(resumed, 3)):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["draw"], b["draw"])
    epoch = torch.cat([b["index"] for b in straight])[:5]
    assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4]  # every item once per epoch

    ranks = [take(data.TaskBatches(Items(5), batch_size=2, seed=0, rank=r, world_size=2), 2) for r in (0, 1)]
    interleaved = [ranks[0][0], ranks[1][0], ranks[0][1], ranks[1][1]]
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(straight, interleaved))


def test_task_batches_resume_on_another_number_of_processes():
    def items(batches, n):
        it = iter(batches)
        return torch.cat([next(it)["index"] for _ in range(n)]).tolist()

    straight = items(data.TaskBatches(Items(7), batch_size=1, seed=3), 12)
    two = [data.TaskBatches(Items(7), batch_size=1, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for ranks in two:
        items(ranks, 3)  # 3 optimizer steps of 2 processes x 1 item
    assert two[0].state_dict()["items"] == two[1].state_dict()["items"] == 6
    one = data.TaskBatches(Items(7), batch_size=2, seed=3)  # 1 process x 2 items per step
    one.load_state_dict(two[0].state_dict())
    assert items(one, 3) == straight[6:12]
    three = data.TaskBatches(Items(7), batch_size=4, seed=3, world_size=3)
    with pytest.raises(ValueError, match="6 items read, not a whole number of rounds of 3 processes x 4 items"):
        three.load_state_dict(two[0].state_dict())


def test_task_items_are_drawn_as_configured(tmp_path):
    from m2m.data.tasks_procedure import write_procedure_fixture
    from m2m.training.config import TrainConfig

    write_procedure_fixture(tmp_path, 2, image_size=18)
    for sample in ("subset", "window"):
        cfg = TrainConfig(data=None, task="procedure", task_data=tmp_path, task_sample=sample).resolved()
        batches, _ = data.training_data(cfg, 18, rank=0, world_size=1)
        assert batches.dataset.dataset.sample == sample
