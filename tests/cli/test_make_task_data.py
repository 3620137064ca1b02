"""``m2m make-task-data``: writes a readable fixture, replaces an old one whole, keeps it on bad input."""

import subprocess
import sys

from m2m.cli import main
from m2m.data.tasks_nvs import NVSDataset
from m2m.data.tasks_procedure import ProcedureDataset


def test_writes_readable_nvs_and_procedure_data(tmp_path, capsys):
    assert main(["make-task-data", "--kind", "nvs", "--out", str(tmp_path / "nvs"), "--count", "2"]) == 0
    assert "wrote 2 nvs items" in capsys.readouterr().out
    assert len(NVSDataset(tmp_path / "nvs")) == 2
    out = tmp_path / "procedure"
    assert main(["make-task-data", "--kind", "procedure", "--out", str(out), "--count", "3", "--steps", "5"]) == 0
    assert ProcedureDataset(out, n_images=5)[0]["cond"].tolist() == [1, 2, 3, 4, 5]


def test_rerun_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "nvs"
    assert main(["make-task-data", "--kind", "nvs", "--out", str(out), "--count", "3", "--image-size", "16"]) == 0
    (out / "stale.txt").write_text("from an earlier run")
    assert main(["make-task-data", "--kind", "nvs", "--out", str(out), "--count", "1", "--image-size", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["object-00000"]
    assert [p.name for p in tmp_path.iterdir()] == ["nvs"]


def test_bad_input_is_one_line_and_keeps_the_old_folder(tmp_path):
    out = tmp_path / "procedure"
    assert main(["make-task-data", "--kind", "procedure", "--out", str(out), "--count", "1"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "m2m", "make-task-data", "--kind", "procedure", "--out", str(out), "--steps", "40"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "m2m make-task-data: error: need n_methods >= 1, image_size >= 8 and 1 <= n_steps <= image_size // 3; "
        "got 64, 32, 40"
    ]
    assert sorted(p.name for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["procedure"]
