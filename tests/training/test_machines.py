"""Training on two machines: two `m2m train --num-machines 2 --machine-rank r` process groups on this host
(gloo on the CPU, one process each), against one process accumulating the same global batch in pytest.

The two "machines" share a folder or are each given their own (`--checkpoint-dir` per machine stands for
a disk of its own); docs/training.md, "Several machines", says which layouts work.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from m2m.training import loop
from m2m.training.config import TrainConfig
from tests.netns import loopback_only
from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")]

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# Every setting but the machines is the same in the pytest run and on the machines.
SETTINGS = dict(variant="dino", batch_size=2, micro_batch_size=1, n_images=3, log_every=1, sample_steps=1)
SHARED_FILES = {
    "model.safetensors", "optimizer.bin", "scheduler.bin", "ema.safetensors", "ema.json", "trainer_state.json",
}
STEP_2 = "checkpoint-000002/model.safetensors"


def one_process(out, data, **overrides) -> dict:
    """The run in this process: 1 process x micro-batch 1 x accumulation 2 = the machines' global batch."""
    return loop.train(TrainConfig(out=out, data=data, **{**SETTINGS, **overrides}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(data, out, *args: str, per_machine=((), ())) -> list[tuple[int, str]]:
    """Both machines' `m2m train` (the same command, its own rank and ``per_machine`` words each), run at
    once; each one's exit status and output."""
    settings = [word for key, value in SETTINGS.items() for word in (f"--{key.replace('_', '-')}", str(value))]
    common = [
        "train", *settings, "--data", str(data), "--out", str(out), "--num-processes", "2",
        "--num-machines", "2", "--main-process-ip", "127.0.0.1", "--main-process-port", str(free_port()), *args,
    ]
    env = {
        **os.environ, "M2M_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    with loopback_only() as network:  # the rendezvous port listens on every interface: loopback only here
        machines = [
            subprocess.Popen(
                [*network, sys.executable, "-m", "m2m", *common, "--machine-rank", str(rank), *extra],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for rank, extra in enumerate(per_machine)
        ]
        return [(machine.wait(timeout=300), machine.communicate()[0]) for machine in machines]


def assert_ran(results) -> None:
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"machine {rank}:\n{output[-3000:]}"


def assert_close(a_file, b_file) -> None:
    """The same tensors to float rounding (here they come out bit for bit: a mean of two gradients is exact)."""
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def losses(folder) -> list[float]:
    return [float(row.split(",")[1]) for row in (folder / "loss.csv").read_text().splitlines()[1:]]


def test_two_machines_train_what_one_process_trains_and_one_process_resumes_them(mis, tmp_path):
    one_process(tmp_path / "one", mis, steps=2, checkpoint_every=1)
    assert_ran(two_machines(mis, tmp_path / "two", "--steps", "2", "--checkpoint-every", "1"))

    assert_close(tmp_path / "one" / UNET_WEIGHTS, tmp_path / "two" / UNET_WEIGHTS)  # the saved (EMA) model
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)
    shared = tmp_path / "two.ckpt"
    assert sorted(p.name for p in shared.iterdir()) == ["checkpoint-000001", "checkpoint-000002"]  # no tmp, no probe
    written = {p.name for p in (shared / "checkpoint-000002").iterdir()}
    assert SHARED_FILES | {"data_0.json", "data_1.json", "random_states_0.pkl", "random_states_1.pkl"} <= written
    assert_close(tmp_path / "one.ckpt" / STEP_2, shared / STEP_2)

    # one process resumes the two machines' step 1 and ends where the one-process run did
    shutil.copytree(shared / "checkpoint-000001", tmp_path / "resumed.ckpt" / "checkpoint-000001")
    metrics = one_process(tmp_path / "resumed", mis, steps=2, checkpoint_every=1, resume=True)
    assert metrics["resumed_from"] == 1 and metrics["num_processes"] == 1
    assert_close(tmp_path / "one" / UNET_WEIGHTS, tmp_path / "resumed" / UNET_WEIGHTS)
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)


def test_machines_with_folders_of_their_own_each_keep_a_whole_checkpoint(mis, tmp_path):
    one_process(tmp_path / "one", mis, steps=3, checkpoint_every=1, keep_checkpoints=3)
    folders = [tmp_path / "machine-0", tmp_path / "machine-1"]
    for folder in folders:  # the one-process step 1, copied to each machine's own disk
        shutil.copytree(tmp_path / "one.ckpt" / "checkpoint-000001", folder / "checkpoint-000001")

    assert_ran(two_machines(
        mis, tmp_path / "two", "--steps", "2", "--checkpoint-every", "1", "--resume", "--save-on-each-node",
        per_machine=[("--checkpoint-dir", str(folder)) for folder in folders],
    ))
    for rank, folder in enumerate(folders):
        written = {p.name for p in (folder / "checkpoint-000002").iterdir()}
        assert SHARED_FILES | {f"data_{rank}.json", f"random_states_{rank}.pkl"} <= written, rank
        assert f"data_{1 - rank}.json" not in written  # the other machine's processes wrote to their own disk
        assert_close(tmp_path / "one.ckpt" / STEP_2, folder / STEP_2)

    # machine 1's copy alone is enough for one process to finish the run
    metrics = one_process(
        tmp_path / "continued", mis, steps=3, checkpoint_every=1, resume=True, checkpoint_dir=folders[1]
    )
    assert metrics["resumed_from"] == 2
    assert_close(tmp_path / "one" / UNET_WEIGHTS, tmp_path / "continued" / UNET_WEIGHTS)


def test_machines_that_do_not_share_the_folder_they_should_stop_before_training(mis, tmp_path):
    folders = [tmp_path / "machine-0", tmp_path / "machine-1"]
    results = two_machines(
        mis, tmp_path / "two", "--steps", "2", "--checkpoint-every", "1",
        per_machine=[("--checkpoint-dir", str(folder)) for folder in folders],  # own disks, without --save-on-each-node
    )
    line = (f"m2m train: error: --checkpoint-dir {folders[0]}: process 1 does not see what the main process writes "
            "there; give every machine the same shared folder, or pass --save-on-each-node")
    for rank, (code, output) in enumerate(results):
        assert code != 0 and line.replace(str(folders[0]), str(folders[rank])) in output.splitlines(), output[-3000:]
    assert not any(folder.exists() and any(folder.iterdir()) for folder in folders)  # nothing half-written
    assert not (tmp_path / "two").exists()
