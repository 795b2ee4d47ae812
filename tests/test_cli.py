"""Tests for lungseg.cli: the subcommands are wired to the library, and the console script works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dvc_project import ctrl_c_as_in_a_terminal
from PIL import Image

from lungseg.cli import main
from lungseg.data.images import max_pixels, set_max_pixels
from lungseg.model.checkpoint import NOT_A_MODEL, make_checkpoint, save_checkpoint
from lungseg.model.unet import UNet

ENTRY_POINT = Path(sys.executable).parent / "lungseg"  # the console script installed beside this python


def tiny_checkpoint(path: Path) -> Path:
    from tiny_models import tiny_estimator

    torch.manual_seed(0)
    model_args = {"depth": 2, "base_width": 4}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32, "normalize": "minmax"}, 0.5,
                                    dice_estimator=tiny_estimator(32).to_dict()), path)
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
    for option in ("--out", "--device", "--threshold", "--batch-size", "--alpha", "--no-overlays", "--recursive", "--workers"):
        assert option in text


@pytest.mark.parametrize("option", [["--threshold", "1.5"], ["--threshold", "0"], ["--alpha", "-0.1"], ["--batch-size", "0"],
                                    ["--device", "tpu"], ["--workers", "0"]])
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
    assert "1 of 1 file(s) segmented" in done.stdout
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


def test_evaluate_scores_are_the_same_for_any_number_of_workers(write_pair_folder, tmp_path):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=5, size=(48, 40), metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not 1, so a run that left 1 behind fails even on a 1-core machine
    tables, reports = [], []
    for workers in ("1", "3"):
        out = tmp_path / f"scores{workers}"
        assert main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out), "--params", "absent.yaml",
                     "--device", "cpu", "-q", "--workers", workers]) == 0
        tables.append(pd.read_csv(out / "per_image.csv", dtype={"id": str}))
        reports.append(json.loads((out / "evaluation_report.json").read_text())["test_native"])
    assert tables[0]["id"].tolist() == ["1", "2", "3", "4", "5"]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert reports[0] == reports[1]
    assert torch.get_num_threads() == 3  # torch's own threads are put back after the run
    torch.set_num_threads(threads)


def test_evaluate_on_a_missing_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(SystemExit) as stop:  # refused while the command line is read, as any invalid option
        main(["evaluate", "--model", str(model), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "scores"), "-q"])
    assert stop.value.code == 2 and not (tmp_path / "scores").exists()
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


def _perturbed_checkpoint(path: Path, size: int = 32) -> Path:
    """A tiny checkpoint whose masks are neither empty nor full: moved weights (tiny_models) and
    the threshold at the median probability over random images; with a Dice calibration."""
    from tiny_models import perturbed_unet, tiny_estimator

    model_args = {"depth": 2, "base_width": 4}
    model = perturbed_unet(model_args, size, seed=0)
    with torch.no_grad():
        threshold = float(torch.sigmoid(model(torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0)))).median())
    save_checkpoint(make_checkpoint(model, model_args, {"image_size": size, "normalize": "minmax"}, threshold,
                                    dice_estimator=tiny_estimator(size).to_dict()), path)
    return path


def test_evaluate_runs_exported_models_with_the_checkpoints_scores(write_pair_folder, tmp_path, capsys, monkeypatch):
    """`evaluate --model` takes what `export` writes, as predict does: .ts and .onnx score like the .pth."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    # the checkpoint in fp32 too: on CPUs with fast bf16, precision 'auto' runs checkpoints in
    # bf16 (lungseg.core.runtime.autocast_dtype), while exports always run in fp32
    monkeypatch.setattr("lungseg.inference.predictor.autocast_dtype", lambda device, precision="auto": None)
    model = _perturbed_checkpoint(tmp_path / "tiny.pth")
    assert main(["export", str(model), "--out", str(tmp_path / "exported")]) == 0
    data = write_pair_folder(tmp_path / "external", layout="plain", n=3, size=(48, 40), metadata=False)
    scores = {}
    for name in ("tiny.pth", "exported/tiny.ts", "exported/tiny.onnx"):
        out = tmp_path / f"scores-{Path(name).suffix[1:]}"
        assert main(["evaluate", "--model", str(tmp_path / name), "--data", str(data.root), "--out", str(out),
                     "--params", "absent.yaml", "--device", "cpu", "-q"]) == 0
        scores[name] = pd.read_csv(out / "per_image.csv", dtype={"id": str}).set_index("id")
    dice = scores["tiny.pth"]["dice_native"]
    assert 0.05 < dice.mean() < 0.95  # the masks are neither empty nor full: the comparison means something
    for name in ("exported/tiny.ts", "exported/tiny.onnx"):
        np.testing.assert_allclose(scores[name]["dice_native"], dice, rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(scores[name]["dice"], scores["tiny.pth"]["dice"], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_on_an_unavailable_device_exits_2_naming_it(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=1, metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    code = main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(tmp_path / "scores"),
                 "--params", "absent.yaml", "--device", "cuda", "-q"])
    assert code == 2 and not (tmp_path / "scores").exists()
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "'cuda'" in error and "Traceback" not in error


# --------------------------------------------------------------------------- exit codes and Ctrl-C


@pytest.mark.parametrize("command", [[], ["check"], ["predict"], ["evaluate"], ["export"]])
def test_help_documents_every_exit_code(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0" in text
    for code in (" 1 ", " 2 ", " 130 interrupted"):
        assert code in text


def test_ctrl_c_in_predict_prints_one_line_and_exits_130(tmp_path):
    """SIGINT (what Ctrl-C sends) to a real `lungseg predict` run, once it has written a mask:
    one line `interrupted` on stderr, exit 130, and every file it left is whole."""
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 240), np.uint8)).save(tmp_path / "in" / "0000.png")
    for k in range(1, 3000):  # hard links: thousands of inputs in no time, so the run is surely still going
        os.link(tmp_path / "in" / "0000.png", tmp_path / "in" / f"{k:04d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lungseg.cli", "predict", str(model), str(tmp_path / "in"), "--out", str(out),
               "--device", "cpu", "--batch-size", "1", "-q"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_as_in_a_terminal)

    def finished_masks() -> list[Path]:  # not the hidden temporary of the mask being written
        return [path for path in (out / "masks").glob("*.png") if not path.name.startswith(".")]

    try:
        deadline = time.monotonic() + 120
        while not (out / "masks").is_dir() or not finished_masks():
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "predict wrote no mask within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    assert stderr.splitlines() == ["interrupted"] and stdout == ""
    assert not (out / "predictions.csv").exists()  # the table is written last, once every image is done
    masks = sorted((out / "masks").iterdir())
    assert masks and all(path.name.endswith(".png") and not path.name.startswith(".") for path in masks)
    for path in masks:  # whole files only: no temporaries, no truncated PNGs
        Image.open(path).verify()


# --------------------------------------------------------------------------- model files lungseg did not write


def _text_file(path: Path) -> Path:
    path.write_text("hello, I am a text file\n")
    return path


def _random_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
        archive.writestr("weights/blob.bin", np.random.default_rng(0).bytes(64))
    return path


@pytest.mark.parametrize("write", [_text_file, _random_zip])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_model_file_lungseg_did_not_write_says_so_in_one_line(write, command, write_pair_folder, tmp_path, capsys):
    model = write(tmp_path / "model.pth")
    data = write_pair_folder(tmp_path / "data", layout="plain", n=2, metadata=False)
    out = tmp_path / "out"
    argv = {"predict": ["predict", str(model), str(data.image_dir), "--out", str(out), "-q"],
            "evaluate": ["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out), "-q",
                         "--params", str(tmp_path / "absent.yaml")],
            "export": ["export", str(model), "--out", str(out), "--format", "torchscript"]}[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {model}: {NOT_A_MODEL}\n"
    assert "Traceback" not in captured.out and not out.exists()


# --------------------------------------------------------------------------- --out for evaluate and export


def test_evaluate_refuses_an_out_folder_in_its_data_even_with_overwrite(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=3, metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    for out, relation in ((data.root, "is"), (data.root / "scores", "lies inside")):
        code = main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out), "--params", "absent.yaml",
                     "--device", "cpu", "-q", "--overwrite"])
        assert code == 2
        assert f"{out} {relation} the input folder {data.root}" in capsys.readouterr().err
    assert not (data.root / "scores").exists() and not (data.root / "metrics.json").exists()


def test_evaluate_overwrites_an_earlier_report_only_when_asked(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=3, metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "scores"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier report
    (out / "notes.txt").write_text("mine")
    argv = ["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out), "--params", "absent.yaml",
            "--device", "cpu", "-q"]
    assert main(argv) == 2
    assert "already holds 2 file(s)" in capsys.readouterr().err and (out / "metrics.json").read_text() == "{}"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n_images"] == 3
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["dice_estimate.png", "dice_histogram.csv", "errors", "evaluation_report.json",
                                                      "index.html", "metrics.json", "montage.png", "notes.txt", "per_image.csv",
                                                      "thumbnails", "views"]
    assert sorted(p.name for p in (out / "errors").iterdir()) == ["1.png", "2.png", "3.png"]
    report = json.loads((out / "evaluation_report.json").read_text())
    assert report["dice_estimate"]["n_images"] == 3 and report["dice_estimate"]["against"] == "dice_native"


def test_evaluate_max_pixels_refuses_larger_images(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=2, size=(48, 40), metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    before = max_pixels()
    try:
        code = main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(tmp_path / "scores"),
                     "--params", "absent.yaml", "--device", "cpu", "-q", "--max-pixels", "1000"])
    finally:
        set_max_pixels(before)
    assert code == 2 and "over the limit of 1,000 pixels" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()


def test_check_max_pixels_reports_larger_images(write_pair_folder, tmp_path, capsys):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, metadata=False)  # 40 x 30 pixels
    before = max_pixels()
    try:
        code = main(["check", str(folder.root), "--params", str(tmp_path / "absent.yaml"), "--max-pixels", "1000"])
    finally:
        set_max_pixels(before)
    assert code == 1 and "over the limit of 1,000 pixels" in capsys.readouterr().out


def test_export_refuses_the_models_own_folder_even_with_overwrite(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "models" / "tiny.pth")
    for out, relation in ((tmp_path / "models", "is the folder of"), (tmp_path, "holds")):
        assert main(["export", str(model), "--out", str(out), "--format", "torchscript", "--overwrite"]) == 2
        assert f"{out} {relation} the input file {model}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny.pth"]
    # below the model's folder is fine: nothing is written beside the model
    assert main(["export", str(model), "--out", str(tmp_path / "models" / "exported"), "--format", "torchscript"]) == 0


def test_export_overwrite_replaces_its_files_and_drops_a_format_not_exported_again(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "tiny.onnx").write_bytes(b"an earlier export")
    (out / "other.onnx").write_bytes(b"someone else's model")
    assert main(["export", str(model), "--out", str(out), "--format", "torchscript"]) == 2
    assert "already holds 2 file(s)" in capsys.readouterr().err
    assert main(["export", str(model), "--out", str(out), "--format", "torchscript", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["other.onnx", "tiny.ts"]
    assert (out / "other.onnx").read_bytes() == b"someone else's model"


def _old_checkpoint(path: Path) -> Path:
    """A tiny checkpoint saved without a Dice calibration, as models were before estimates."""
    torch.manual_seed(0)
    model_args = {"depth": 2, "base_width": 4}
    save_checkpoint(make_checkpoint(UNet(**model_args), model_args, {"image_size": 32, "normalize": "minmax"}, 0.5), path)
    return path


def test_calibrate_writes_a_calibrated_copy_and_leaves_the_model_alone(write_pair_folder, tmp_path, capsys):
    from lungseg.inference.formats import load_predictor

    data = write_pair_folder(tmp_path / "site", layout="plain", n=4, metadata=False)
    model = _old_checkpoint(tmp_path / "old.pth")
    before = model.read_bytes()
    assert main(["calibrate", str(model), "--data", str(data.root), "--out", str(tmp_path / "calibrated"),
                 "--draws", "2"]) == 0
    assert model.read_bytes() == before
    written = tmp_path / "calibrated" / "old.pth"
    predictor = load_predictor(written, "cpu")
    assert predictor.estimator is not None
    assert predictor.estimator.calibration | {"fit_mae": 0} == {"images": 4, "draws": 2, "seed": 0, "n_masks": 12,
                                                                 "data": "site", "fit_mae": 0}
    out = capsys.readouterr()
    assert f"{written}: Dice estimate fitted on 4 image(s)" in out.out and "few for a calibration" in out.err
    assert main(["predict", str(written), str(data.image_dir), "--out", str(tmp_path / "pred"), "--device", "cpu", "-q"]) == 0
    assert "carries no Dice calibration" not in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert table["dice_estimate"].between(0, 1).all()


def test_calibrate_refuses_an_export_and_an_out_inside_the_data_writing_nothing(write_pair_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    data = write_pair_folder(tmp_path / "site", layout="plain", n=3, metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    assert main(["export", str(model), "--out", str(tmp_path / "exported"), "--format", "onnx"]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(tmp_path / "exported" / "tiny.onnx"), "--data", str(data.root),
                 "--out", str(tmp_path / "calibrated")]) == 2
    assert "calibrate the checkpoint it came from" in capsys.readouterr().err
    assert not (tmp_path / "calibrated").exists() or not any((tmp_path / "calibrated").iterdir())
    assert main(["calibrate", str(model), "--data", str(data.root), "--out", str(data.root / "calibrated")]) == 2
    assert not (data.root / "calibrated").exists()


def test_evaluate_on_a_full_disk_ends_with_one_line_and_exit_1(write_pair_folder, tmp_path, small_disk, capsys):
    disk = small_disk("8k")
    data = write_pair_folder(tmp_path / "external", layout="plain", n=3, metadata=False)
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    argv = ["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(disk / "scores"),
            "--params", "absent.yaml", "--device", "cpu", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device (ENOSPC)")
    assert not [path for path in disk.rglob("*") if path.name.startswith(".")]  # no temporary left


def test_check_reads_label_masks_as_lung_and_says_by_which_rule(write_pair_folder, tmp_path, capsys):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, metadata=False, mask_value=2)  # label 2
    assert main(["check", str(folder.root), "--params", str(tmp_path / "absent.yaml")]) == 0
    out = capsys.readouterr().out
    assert "3 usable pairs, 0 error(s), 0 warning(s)" in out  # not "empty mask"
    assert "mask read by rule" in out and "labels 2 read as lung" in out


def test_a_missing_data_folder_is_named_without_talking_of_params(tmp_path, capsys):
    for argv in (["check", str(tmp_path / "nowhere")],
                 ["evaluate", "--model", "m.pth", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'nowhere'}: no such folder" in err and "params.yaml" not in err


def test_evaluate_says_what_check_says_and_scores_no_empty_truth(write_pair_folder, tmp_path, capsys):
    data = write_pair_folder(tmp_path / "external", layout="plain", n=4, metadata=False)
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(data.mask_paths["2"])  # one truth with no lung
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "scores"
    assert main(["evaluate", "--model", str(model), "--data", str(data.root), "--out", str(out),
                 "--params", "absent.yaml", "--device", "cpu", "-q"]) == 0
    err = capsys.readouterr().err
    assert f"warning: empty mask: {data.mask_paths['2']}" in err
    assert "not scored: 1 pair(s) whose truth mask holds no lung (mask/2.png)" in err
    assert pd.read_csv(out / "per_image.csv", dtype={"id": str})["id"].tolist() == ["1", "3", "4"]
    report = json.loads((out / "evaluation_report.json").read_text())
    assert report["excluded"] == {"empty_truth": ["mask/2.png"]} and report["test"]["n_images"] == 3


def test_check_reads_only_the_lung_labels_params_names(write_pair_folder, tmp_path, capsys):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, metadata=False)
    for path in folder.mask_paths.values():  # label 1 and 2 are lungs, 3 is a heart drawn beside them
        labels = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        labels[:, labels.shape[1] // 2:] *= 2
        labels[0:4, 0:4] = 3
        Image.fromarray(labels).save(path)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  lung_labels: [1, 2]\n")
    assert main(["check", str(folder.root), "--params", str(params)]) == 0
    assert "labels 1, 2 read as lung, 3 as background (data.lung_labels)" in capsys.readouterr().out


def test_calibrate_reads_label_maps_with_the_lung_labels_params_names(write_pair_folder, tmp_path, capsys):
    """Masks holding only label 3 (a heart, say): every label is lung by default, none under
    data.lung_labels [1, 2], which calibrate follows as check and evaluate do."""
    data = write_pair_folder(tmp_path / "site", layout="plain", n=4, metadata=False)
    for path in data.mask_paths.values():
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8) * 3).save(path)
    model = _old_checkpoint(tmp_path / "old.pth")
    command = ["calibrate", str(model), "--data", str(data.root), "--draws", "1"]
    assert main([*command, "--out", str(tmp_path / "every-label"), "--params", "absent.yaml"]) == 0
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  lung_labels: [1, 2]\n")
    capsys.readouterr()
    assert main([*command, "--out", str(tmp_path / "lungs-only"), "--params", str(params)]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "lungs-only" / "old.pth").exists()
