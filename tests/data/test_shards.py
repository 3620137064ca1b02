"""MIS shard writing (resumable, reproducible), manifest verification and the train/test split."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import textwrap

import pyarrow.parquet as pq
import pytest

from m2m.cli import main
from m2m.data.shards import build_manifest, image_seeds, in_test_split, sha256_file, shard_captions, write_shard


def read_shard(tar):
    """{key: {field: bytes}} of a tar, failing on anything unreadable."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as f:
        for member in f:
            key, field = member.name.split(".", 1)
            samples.setdefault(key, {})[field] = f.extractfile(member).read()
    return samples


def test_image_seeds_depend_only_on_seed_id_and_index():
    seeds = image_seeds(0, "c0123456789ab", 25)
    assert seeds == image_seeds(0, "c0123456789ab", 25) and len(set(seeds)) == 25
    assert seeds[:3] == image_seeds(0, "c0123456789ab", 3)
    assert seeds != image_seeds(1, "c0123456789ab", 25) and seeds != image_seeds(0, "c0123456789ac", 25)
    digest = hashlib.sha256(b"0:c0123456789ab:7").digest()
    assert seeds[7] == int.from_bytes(digest[:8], "big") >> 1 < 2**63


def test_shard_holds_its_captions_in_order(tmp_path, captions_parquet, colour_generator):
    sidecar, written = write_shard(
        captions_parquet, tmp_path, 1, colour_generator, samples_per_shard=16, images_per_caption=3, seed=4
    )
    rows = pq.read_table(captions_parquet).to_pylist()[16:32]
    assert written and sidecar["keys"] == [r["id"] for r in rows] and sidecar["count"] == 16
    assert sidecar["sha256"] == sha256_file(tmp_path / "mis-000001.tar")
    assert json.loads((tmp_path / "mis-000001.json").read_text()) == sidecar
    samples = read_shard(tmp_path / "mis-000001.tar")
    assert list(samples) == sidecar["keys"]
    first = samples[rows[0]["id"]]
    assert sorted(first) == ["000.png", "001.png", "002.png", "json", "txt"]
    assert first["txt"].decode() == rows[0]["caption"]
    meta = json.loads(first["json"])
    assert meta == {
        "caption_id": rows[0]["id"],
        "seeds": image_seeds(4, rows[0]["id"], 3),
        "backend": "colour",
        "settings": {"image_size": 8, "images_per_caption": 3, "seed": 4},
        "attributes": {"length": len(rows[0]["caption"])},
    }
    assert sidecar["settings"] == meta["settings"] and sidecar["backend"] == "colour"


def test_rerun_skips_a_complete_shard_and_redoes_stale_ones(tmp_path, captions_parquet, colour_generator):
    args = dict(samples_per_shard=8, images_per_caption=2)
    first, _ = write_shard(captions_parquet, tmp_path, 0, colour_generator, **args)
    calls = colour_generator.calls
    again, written = write_shard(captions_parquet, tmp_path, 0, colour_generator, **args)
    assert (again, written, colour_generator.calls) == (first, False, calls)
    # other settings, a corrupted tar, a lost sidecar: each is redone
    _, written = write_shard(captions_parquet, tmp_path, 0, colour_generator, seed=1, **args)
    assert written
    tar = tmp_path / "mis-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    _, written = write_shard(captions_parquet, tmp_path, 0, colour_generator, seed=1, **args)
    assert written and tarfile.open(tar).getnames()
    (tmp_path / "mis-000000.json").unlink()
    sidecar, written = write_shard(captions_parquet, tmp_path, 0, colour_generator, seed=1, **args)
    assert written and sidecar["sha256"] == sha256_file(tar)


def test_same_inputs_give_byte_identical_shards(tmp_path, captions_parquet):
    from m2m.data.procedural import ProceduralGenerator

    generator = ProceduralGenerator(image_size=16)
    args = dict(samples_per_shard=4, images_per_caption=5, seed=3)
    a, _ = write_shard(captions_parquet, tmp_path / "a", 2, generator, captions_per_call=1, **args)
    b, _ = write_shard(captions_parquet, tmp_path / "b", 2, generator, captions_per_call=3, **args)
    assert a == b
    assert (tmp_path / "a" / "mis-000002.tar").read_bytes() == (tmp_path / "b" / "mis-000002.tar").read_bytes()
    sample = read_shard(tmp_path / "a" / "mis-000002.tar")[a["keys"][0]]
    caption = sample["txt"].decode()
    assert json.loads(sample["json"])["attributes"] == generator.attributes(caption)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import ColourGenerator
    from m2m.data.shards import write_shard

    class Dies(ColourGenerator):
        def generate(self, captions, seeds):
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().generate(captions, seeds)

    write_shard({captions!r}, {out!r}, 0, Dies(), samples_per_shard=10, images_per_caption=4, captions_per_call=2)
    """
)


def test_killed_mid_shard_then_rerun_gives_exactly_the_shard(tmp_path, captions_parquet, colour_generator):
    from pathlib import Path

    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), captions=str(captions_parquet), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mis-000000.tar.tmp"]
    sidecar, written = write_shard(
        captions_parquet, tmp_path, 0, colour_generator, samples_per_shard=10, images_per_caption=4
    )
    assert written and sorted(p.name for p in tmp_path.iterdir()) == ["mis-000000.json", "mis-000000.tar"]
    samples = read_shard(tmp_path / "mis-000000.tar")
    expected = [r["id"] for r in pq.read_table(captions_parquet).to_pylist()[:10]]
    assert list(samples) == expected == sidecar["keys"]
    assert all(len(s) == 6 for s in samples.values())  # 4 pngs, json, txt
    assert build_manifest(tmp_path, tmp_path / "manifest.json")["shards"][0]["sha256"] == sha256_file(
        tmp_path / "mis-000000.tar"
    )


def test_sd_backend_writes_a_shard(tmp_path, captions_parquet, tiny_sd_folder):
    from m2m.data.sd_generator import StableDiffusionGenerator

    generator = StableDiffusionGenerator(tiny_sd_folder, steps=2, batch_size=4, device="cpu")
    sidecar, _ = write_shard(
        captions_parquet, tmp_path, 0, generator, samples_per_shard=2, images_per_caption=3, captions_per_call=2
    )
    samples = read_shard(tmp_path / "mis-000000.tar")
    assert list(samples) == sidecar["keys"] and sidecar["backend"] == "sd"
    meta = json.loads(samples[sidecar["keys"][1]]["json"])
    assert meta["settings"]["scheduler"] == "EulerDiscreteScheduler" and meta["attributes"] == {}
    assert all(samples[k]["002.png"].startswith(b"\x89PNG") for k in samples)


def test_shard_past_the_end_is_a_clear_error(captions_parquet):
    assert len(shard_captions(captions_parquet, 4, 64)) == 300 - 4 * 64
    with pytest.raises(ValueError, match=r"--shard 5: past the end of .*300 captions make shards 0\.\.4 of 64"):
        shard_captions(captions_parquet, 5, 64)


def test_manifest_counts_hashes_and_split(tmp_path, captions_parquet, colour_generator):
    shards = tmp_path / "shards"
    for k in range(3):
        write_shard(captions_parquet, shards, k, colour_generator, samples_per_shard=40, images_per_caption=1)
    (shards / ".mis-000003.tar.tmp").write_bytes(b"leftover of a killed run")
    manifest = build_manifest(shards, tmp_path / "manifest.json", test_percent=25)
    assert [s["name"] for s in manifest["shards"]] == ["mis-000000.tar", "mis-000001.tar", "mis-000002.tar"]
    assert [s["sha256"] for s in manifest["shards"]] == [sha256_file(shards / s["name"]) for s in manifest["shards"]]
    assert manifest["total"] == 120 and manifest["shards_dir"] == "shards" and manifest["test_percent"] == 25
    split = json.loads((tmp_path / "split.json").read_text())
    ids = [r["id"] for r in pq.read_table(captions_parquet).to_pylist()[:120]]
    assert sorted(split["train"] + split["test"]) == sorted(ids)
    assert split["test"] == [i for i in ids if int(hashlib.sha1(i.encode()).hexdigest(), 16) % 100 < 25]
    assert manifest["split"] == {"train": len(split["train"]), "test": len(split["test"])}
    assert 10 < len(split["test"]) < 50  # about a quarter
    assert all(in_test_split(i, 100) for i in ids) and not any(in_test_split(i, 0) for i in ids)


def test_manifest_names_a_tampered_or_unsealed_shard(tmp_path, captions_parquet, colour_generator):
    write_shard(captions_parquet, tmp_path, 0, colour_generator, samples_per_shard=4, images_per_caption=1)
    write_shard(captions_parquet, tmp_path, 1, colour_generator, samples_per_shard=4, images_per_caption=1)
    tar = tmp_path / "mis-000001.tar"
    tar.write_bytes(tar.read_bytes() + b"\0" * 512)
    with pytest.raises(ValueError, match=r"mis-000001\.tar: sha256 \w+ does not match its sidecar"):
        build_manifest(tmp_path, tmp_path / "manifest.json")
    (tmp_path / "mis-000001.json").unlink()
    with pytest.raises(ValueError, match=r"mis-000001\.tar: sidecar mis-000001\.json missing"):
        build_manifest(tmp_path, tmp_path / "manifest.json")
    assert not (tmp_path / "manifest.json").exists()


def test_manifest_names_a_missing_shard(tmp_path, captions_parquet, colour_generator):
    for shard in (0, 1, 2):
        write_shard(captions_parquet, tmp_path, shard, colour_generator, samples_per_shard=4, images_per_caption=1)
    (tmp_path / "mis-000002.tar").unlink()  # the sidecar is left without its shard
    with pytest.raises(ValueError, match=r"mis-000002\.json: sidecar without its shard mis-000002\.tar"):
        build_manifest(tmp_path, tmp_path / "manifest.json")
    (tmp_path / "mis-000002.json").unlink()
    (tmp_path / "mis-000002.tar").touch()
    (tmp_path / "mis-000002.json").write_text((tmp_path / "mis-000001.json").read_text())
    for suffix in (".tar", ".json"):  # shard 1 gone whole: a gap between 0 and 2
        (tmp_path / f"mis-000001{suffix}").unlink()
    with pytest.raises(ValueError, match=r"mis-000001\.tar is missing between mis-000000\.tar and mis-000002\.tar"):
        build_manifest(tmp_path, tmp_path / "manifest.json")
    assert not (tmp_path / "manifest.json").exists()


def test_cli_generates_then_builds_the_manifest(tmp_path, captions_parquet, capsys):
    out = tmp_path / "shards"
    common = ["--captions", str(captions_parquet), "--out", str(out), "--samples-per-shard", "3"]
    for k in ("0", "1"):
        assert main(["generate-mis", *common, "--shard", k, "--images-per-caption", "2", "--image-size", "16"]) == 0
    assert "wrote shard 1: 3 sets" in capsys.readouterr().out
    assert main(["generate-mis", *common, "--shard", "1", "--images-per-caption", "2", "--image-size", "16"]) == 0
    assert "already complete: shard 1" in capsys.readouterr().out
    assert main(["build-manifest", "--shards", str(out), "--out", str(tmp_path / "manifest.json")]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["total"] == 6
    assert main(["generate-mis", *common, "--shard", "100"]) == 2
    assert "--shard 100: past the end" in capsys.readouterr().err
    sd = ["--backend", "sd", "--sd-folder", str(tmp_path / "nowhere")]
    assert main(["generate-mis", *common, "--shard", "0", *sd]) == 2
    assert "download stabilityai/stable-diffusion-2-1-base" in capsys.readouterr().err


def test_precompute_stores_latents_beside_the_images(tmp_path, captions_parquet, tiny_sd_folder, colour_generator):
    from safetensors.torch import load

    from m2m.data.sd_generator import LatentPrecomputer

    precompute = LatentPrecomputer(tiny_sd_folder, device="cpu")
    args = dict(samples_per_shard=2, images_per_caption=3)
    sidecar, _ = write_shard(captions_parquet, tmp_path, 0, colour_generator, precompute=precompute, **args)
    assert sidecar["settings"]["precompute"] == {
        "vae": tiny_sd_folder.name,
        "dino": None,
        "dino_size": None,
        "stored_dtype": "float16",
    }
    sample = read_shard(tmp_path / "mis-000000.tar")[sidecar["keys"][0]]
    latents = load(sample["latents.safetensors"])["latents"]
    assert latents.shape == (3, 4, 4, 4)  # 8x8 images, VAE downsampling 2
    images = colour_generator.generate([sample["txt"].decode()], [json.loads(sample["json"])["seeds"]])[0]
    assert latents.equal(precompute(images)["latents"])
    _, written = write_shard(captions_parquet, tmp_path, 0, colour_generator, **args)
    assert written and "latents.safetensors" not in read_shard(tmp_path / "mis-000000.tar")[sidecar["keys"][0]]


def test_cli_precompute_uses_the_sd_folder_vae(tmp_path, captions_parquet, tiny_sd_folder, capsys):
    args = ["generate-mis", "--captions", str(captions_parquet), "--out", str(tmp_path), "--shard", "0"]
    args += ["--samples-per-shard", "2", "--images-per-caption", "2", "--image-size", "16", "--device", "cpu"]
    assert main([*args, "--dino-folder", str(tmp_path / "dino")]) == 2
    assert "--dino-folder: only used with --precompute" in capsys.readouterr().err
    assert main([*args, "--precompute", "--sd-folder", str(tiny_sd_folder)]) == 0
    sample = next(iter(read_shard(tmp_path / "mis-000000.tar").values()))
    assert "latents.safetensors" in sample and json.loads(sample["json"])["settings"]["precompute"]["vae"]


def test_cli_reports_progress_per_caption_batch_on_whole_lines(tmp_path, captions_parquet):
    """Each caption batch prints a line (sets done, images/s, ETA) while the shard is being written."""
    import re
    import subprocess
    import sys

    args = ["--captions", str(captions_parquet), "--out", str(tmp_path), "--shard", "0", "--samples-per-shard", "6"]
    done = subprocess.run(
        [sys.executable, "-m", "m2m", "generate-mis", *args, "--images-per-caption", "3", "--batch-size", "2"],
        capture_output=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.decode().split("\n")
    progress = [line for line in lines if "mis-000000.tar:" in line]
    assert len(progress) == 3 and not any("\r" in line for line in progress)
    for line, sets in zip(progress, (2, 4, 6)):
        assert re.search(rf"{sets}/6 sets, [0-9.]+ images/s, ETA \d+:\d\d:\d\d$", line), line
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("wrote shard 0"))
