"""Tests for lungseg.cli: the subcommands are wired to the library, and the console script works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungseg.checkpoint import make_checkpoint, save_checkpoint
from lungseg.cli import main
from lungseg.model import UNet

ENTRY_POINT = Path(sys.executable).parent / "lungseg"  # the console script installed beside this python


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model_args = {"depth": 2, "base_width": 4}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32, "normalize": "minmax"}, 0.5), path)
    return path


def test_check_reports_a_clean_folder_and_exits_0(write_pair_folder, tmp_path, capsys):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, metadata=False)
    assert main(["check", str(folder.root), "--params", str(tmp_path / "absent.yaml")]) == 0
    assert "plain layout, 3 usable pairs, 0 error(s)" in capsys.readouterr().out


def test_check_exits_1_on_an_image_without_a_mask(write_pair_folder, tmp_path, capsys):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, metadata=False)
    folder.mask_paths["2"].unlink()
    assert main(["check", str(folder.root), "--params", str(tmp_path / "absent.yaml")]) == 1
    assert "2.png" in capsys.readouterr().out


def test_predict_help_explains_the_lung_side_convention(capsys):
    with pytest.raises(SystemExit) as finished:
        main(["predict", "--help"])
    assert finished.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "patient's RIGHT lung appears on the image's LEFT" in text
    for option in ("--out", "--device", "--threshold", "--batch-size", "--alpha", "--no-overlays", "--recursive"):
        assert option in text


@pytest.mark.parametrize("option", [["--threshold", "1.5"], ["--threshold", "0"], ["--alpha", "-0.1"], ["--batch-size", "0"],
                                    ["--device", "tpu"]])
def test_predict_rejects_out_of_range_options_with_exit_2(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as finished:
        main(["predict", "model.pth", "image.png", "--out", str(tmp_path / "out"), *option])
    assert finished.value.code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_requires_out(capsys):
    with pytest.raises(SystemExit) as finished:
        main(["predict", "model.pth", "image.png"])
    assert finished.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch: about 5-10 s
def test_installed_console_script_runs_predict(tmp_path):
    if not ENTRY_POINT.is_file():
        pytest.skip(f"no lungseg console script beside {sys.executable} (install the package: pip install -e .)")
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    Image.fromarray(np.full((24, 20), 128, np.uint8)).save(tmp_path / "xray.png")
    done = subprocess.run([str(ENTRY_POINT), "predict", str(model), str(tmp_path / "xray.png"), "--out", str(tmp_path / "out"),
                           "--device", "cpu"], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 image(s) segmented" in done.stdout
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table["mask_file"].tolist() == ["masks/xray.png"]
    assert Image.open(tmp_path / "out" / "masks" / "xray.png").size == (20, 24)


def test_evaluate_writes_scores_for_an_external_folder(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=3, size=(48, 40), metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "scores"
    code = main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out), "--params", "absent.yaml",
                 "--device", "cpu", "-q"])
    assert code == 0
    report = json.loads((out / "evaluation_report.json").read_text())
    assert report["test_native"]["n_images"] == 3 and report["data"] == str(data.root.resolve())
    assert 0 <= report["test_native"]["dice_ci_low"] <= report["test_native"]["dice_ci_high"] <= 1
    metrics = json.loads((out / "metrics.json").read_text())  # the headline, as the evaluate stage writes it
    assert metrics["test"]["dice"] == report["test_native"]["dice"] and metrics["test"]["n_images"] == 3
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert sorted(per_image["id"]) == ["1", "2", "3"] and "hd95_native" in per_image
    assert "native resolution: Dice" in capsys.readouterr().out


def test_evaluate_on_a_missing_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    code = main(["evaluate", "--model", str(model), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "scores"), "-q"])
    assert code == 2 and not (tmp_path / "scores").exists()
    assert "nowhere" in capsys.readouterr().err


def test_export_then_predict_from_the_onnx_file(write_pair_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    assert main(["export", str(model), "--out", str(tmp_path / "exported")]) == 0
    assert "onnx:" in capsys.readouterr().out
    data = write_pair_folder(tmp_path / "xrays", layout="plain", n=2, size=(50, 40), metadata=False)
    runs = {}
    for name in ("tiny.pth", "exported/tiny.onnx", "exported/tiny.ts"):
        out = tmp_path / f"pred-{Path(name).suffix[1:]}"
        assert main(["predict", str(tmp_path / name), str(data.image_dir), "--out", str(out), "--device", "cpu", "-q"]) == 0
        runs[name] = pd.read_csv(out / "predictions.csv")
    for name in ("exported/tiny.onnx", "exported/tiny.ts"):
        pd.testing.assert_frame_equal(runs[name].drop(columns=["mask_file", "overlay_file"]),
                                      runs["tiny.pth"].drop(columns=["mask_file", "overlay_file"]))
