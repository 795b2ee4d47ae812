"""lungseg.inference.runs through lungseg predict and merge: a run killed at any point and resumed
ends with an uninterrupted run's files, byte for byte; parts merged equal the undivided run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_estimator

from lungseg.cli import main
from lungseg.inference.runs import PARTIAL, in_part, parse_part, relative_name
from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet

REPO = Path(__file__).resolve().parents[1]


def tiny_model(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    args = {"depth": 2, "base_width": 4}
    save_checkpoint(make_checkpoint(UNet(**args), args, {"image_size": 32, "normalize": "minmax"}, 0.5,
                                    dice_estimator=tiny_estimator(32).to_dict()), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """40 small X-ray-like images in two subfolders, two sharing a name, one broken."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for i in range(40):
        folder = root / ("2019" if i % 2 else "2020")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 56), dtype=np.uint8)).save(folder / f"{i // 2 if i < 4 else i}.png")
    (root / "2020" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return root


def predict(model: Path, archive: Path, out: Path, *options: str) -> int:
    return main(["predict", str(model), str(archive), "--out", str(out), "--recursive", "--device", "cpu", "--quiet",
                 *options])


def files(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def whole(model, archive, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("whole") / "out"
    assert predict(model, archive, out) == 1  # the broken file
    return files(out)


def test_parts_merged_are_the_undivided_run_byte_for_byte(model, archive, whole, tmp_path, capsys):
    parts = [tmp_path / f"part{k}" for k in (1, 2, 3)]
    for k, out in enumerate(parts, start=1):
        predict(model, archive, out, "--part", f"{k}/3")
    sizes = [sum(1 for name in files(out) if name.startswith("masks/")) for out in parts]
    assert sum(sizes) == 40 and all(sizes)  # every readable image in exactly one part
    assert main(["merge", *map(str, reversed(parts)), "--out", str(tmp_path / "merged")]) == 0
    assert files(tmp_path / "merged") == whole
    assert "41 image(s) of 3 parts merged" in capsys.readouterr().out


def test_merge_refuses_a_missing_part_and_parts_of_another_model(model, archive, tmp_path, capsys):
    other = tiny_model(tmp_path / "other.pth", seed=1)
    predict(model, archive, tmp_path / "a", "--part", "1/2")
    predict(other, archive, tmp_path / "b", "--part", "2/2")
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "a"), "--out", str(tmp_path / "m1")]) == 2
    assert "each of the 2 parts once" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert "different models" in err and "tiny.pth" in err and "other.pth" in err
    assert not (tmp_path / "m2").exists() or not any((tmp_path / "m2").iterdir())


def test_a_part_is_decided_by_the_path_below_its_folder_alone(tmp_path):
    names = [f"2019/{i}.png" for i in range(200)]
    owners = [[k for k in range(1, 5) if in_part(name, (k, 4))] for name in names]
    assert all(len(owner) == 1 for owner in owners)  # exactly one part each
    assert 30 < sum(owner == [1] for owner in owners) < 70  # about a quarter
    (tmp_path / "archive").mkdir()
    archive = str(tmp_path / "archive")
    assert relative_name(f"{archive}/2019/7.png", [str(tmp_path / "elsewhere"), archive]) == "2019/7.png"
    with pytest.raises(ValueError, match="K/N"):
        parse_part("5/4")


def test_a_run_killed_three_times_and_resumed_ends_as_the_uninterrupted_one(model, archive, whole, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lungseg.cli", "predict", str(model), str(archive), "--out", str(out), "--recursive",
               "--device", "cpu", "--quiet", "--resume", "--workers", "1", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    rng = np.random.default_rng(7)
    killed = 0
    for target in sorted(rng.integers(2, 38, 3)):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None:  # kill once the table holds `target` rows: somewhere inside the run
            table = out / PARTIAL
            if table.is_file() and table.read_bytes().count(b"\n") > target:
                process.send_signal(signal.SIGKILL)
                killed += 1
                break
            time.sleep(0.002)
        process.wait(timeout=120)
    assert killed >= 2
    assert predict(model, archive, out, "--resume") == 1
    assert files(out) == whole


def test_resume_refuses_another_model_naming_both(model, archive, tmp_path, capsys):
    predict(model, archive, tmp_path / "out")
    other = tiny_model(tmp_path / "other.pth", seed=1)
    before = files(tmp_path / "out")
    capsys.readouterr()
    assert predict(other, archive, tmp_path / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert "tiny.pth" in err and "other.pth" in err and "--resume" in err
    assert files(tmp_path / "out") == before


def test_resume_of_a_finished_run_redoes_nothing(model, archive, whole, tmp_path, capsys):
    out = tmp_path / "out"
    predict(model, archive, out)
    masks = {path: path.stat().st_mtime_ns for path in (out / "masks").iterdir()}
    capsys.readouterr()
    predict(model, archive, out, "--resume")
    assert "(41 kept from the earlier run)" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in (out / "masks").iterdir()} == masks
    assert files(out) == whole


def test_log_every_prints_a_plain_line_every_n_images(model, archive, tmp_path, capsys):
    predict(model, archive, tmp_path / "out", "--log-every", "10")
    lines = [line for line in capsys.readouterr().err.splitlines() if " done, " in line]
    assert [line.split(" of ")[0] for line in lines] == ["10", "20", "30", "40", "41"]
    assert lines[-1].startswith("41 of 41 done, 1 failed, 0 skipped") and "images/s" in lines[-1] and "left" in lines[-1]


# --------------------------------------------------------------------------- on Ray (lungseg.inference.cluster)


def _needs_ray():
    pytest.importorskip("ray.data", reason="ray is not installed: pip install -e '.[ray]'")


def test_a_ray_run_writes_the_local_run_byte_for_byte(model, archive, whole, tmp_path, capsys):
    _needs_ray()
    assert predict(model, archive, tmp_path / "out", "--ray") == 1  # the broken file, as locally
    assert files(tmp_path / "out") == whole
    captured = capsys.readouterr()
    assert "40 of 41 file(s) segmented" in captured.out
    assert captured.err.count("error: ") == 1 and "broken.png" in captured.err


def test_ray_parts_merge_into_the_local_run(model, archive, whole, tmp_path):
    _needs_ray()
    for k in (1, 2):
        predict(model, archive, tmp_path / f"part{k}", "--part", f"{k}/2", "--ray")
    assert main(["merge", str(tmp_path / "part1"), str(tmp_path / "part2"), "--out", str(tmp_path / "merged")]) == 0
    assert files(tmp_path / "merged") == whole
