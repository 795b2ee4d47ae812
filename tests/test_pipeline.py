"""End to end: the real `dvc` commands on a tiny configuration, in a throwaway git repository.

Each test gets its own copy of a project that has already been reproduced and committed once,
so the tests are independent yet the expensive first `dvc repro` runs only once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from dvc_project import new_project, run, run_status, set_params, stages_run, start

from lungseg.training.tracking import read_history

pytestmark = pytest.mark.slow

TINY = {
    "synthetic": {"n_images": 30, "min_size": 64, "max_size": 96},
    "preprocess": {"image_size": 32, "workers": 1},
    "model": {"depth": 2, "base_width": 8},
    "train": {"epochs": 2, "batch_size": 4, "device": "cpu"},
    "infer": {"device": "cpu"},
    "evaluate": {"baseline_steps": 8},
    "visualize": {"n_examples": 3, "dpi": 40},
}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """A tiny lungseg project in a fresh git repo, reproduced once and committed on main."""
    project = new_project(tmp_path_factory.mktemp("base"), TINY)
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "tiny pipeline")
    return project


@pytest.fixture
def project(reproduced, tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(reproduced, copy, symlinks=True)
    (tmp_path / "home").mkdir()
    return copy


def test_repro_writes_model_metrics_and_pictures(project):
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert 0 <= metrics["test"]["dice"] <= 1 and metrics["test"]["n_images"] >= 1
    assert "dice_128px" in metrics["baseline"]
    report = json.loads((project / "results/evaluation_report.json").read_text())
    assert report["test_native"]["dice"] == metrics["test"]["dice"] and "subgroups" in report
    training = json.loads((project / "results/training_report.json").read_text())
    assert set(training["val_dice_by_postprocess"]) >= {"none", training["postprocess"]}
    for path in ["results/best_unet.pth", "results/live/metrics.json", "results/live/plots/metrics/val_dice.tsv",
                 "results/loss_curves.png", "results/dice_curves.png", "results/montage/montage.png", "results/per_image.csv"]:
        assert (project / path).stat().st_size > 0, path
    assert len(list((project / "results/preds").glob("*.png"))) == metrics["test"]["n_images"]


def numbers_in(tree) -> int:
    if isinstance(tree, dict):
        return sum(numbers_in(value) for value in tree.values())
    return int(isinstance(tree, (int, float)) and not isinstance(tree, bool))


def test_metrics_files_hold_only_the_headline_numbers(project):
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json"))
    files = shown[""]["data"] if "" in shown else shown["workspace"]["data"]
    assert set(files) == {"results/metrics.json", "results/live/metrics.json"}
    assert numbers_in({path: entry["data"] for path, entry in files.items()}) <= 15
    assert json.loads((project / "results/live/metrics.json").read_text()).keys() == {"best_epoch", "val_dice", "step"}


def test_exp_show_has_few_dependency_columns_and_the_test_dice_within_140(project):
    header = run(project, "dvc", "exp", "show", "--csv").splitlines()[0].split(",")
    assert "test.dice" in header and "best_epoch" in header
    assert header.index("test.dice") < header.index("best_epoch")  # the test scores come first
    dependencies = [column for column in header if "/" in column]  # paths: code and data the stages read
    assert len(dependencies) <= 25, dependencies
    code, table = run_status(project, "dvc", "exp", "show", "--no-pager", extra_env={"COLUMNS": "140"})
    assert code == 0, table
    title = next(line for line in table.splitlines() if "Experiment" in line)
    assert "test.dice" in title[:140], table


def test_second_repro_runs_nothing_and_status_is_clean(project):
    output = run(project, "dvc", "repro")
    assert stages_run(output) == set(), output
    assert json.loads(run(project, "dvc", "status", "--json")) == {}
    assert "Data and pipelines are up to date." in run(project, "dvc", "status")


def test_visualize_param_reruns_only_visualize(project):
    set_params(project, {"visualize": {"dpi": 50}})
    assert stages_run(run(project, "dvc", "repro")) == {"check_params", "visualize"}  # check_params: any change


def test_epochs_rerun_train_evaluate_visualize(project):
    set_params(project, {"train": {"epochs": 3}})
    assert stages_run(run(project, "dvc", "repro")) == {"check_params", "train", "evaluate", "visualize"}


def test_an_edit_to_an_image_reader_reruns_the_data_stages_but_not_training(project):
    """The code deps are phase folders: a new line in lungseg.data.images reruns what reads the
    user's files; the processed set comes out the same, so train and visualize do not rerun."""
    reader = project / "src" / "lungseg" / "data" / "images.py"
    reader.write_text(reader.read_text() + "\n# an edit that changes nothing\n")
    assert stages_run(run(project, "dvc", "repro")) == {"synthesize", "sources", "preprocess", "split", "evaluate"}


def test_an_edit_to_evaluation_code_reruns_evaluate_and_visualize_only(project):
    scores = project / "src" / "lungseg" / "evaluation" / "scores.py"
    scores.write_text(scores.read_text() + "\n# an edit that changes nothing\n")
    assert stages_run(run(project, "dvc", "repro")) == {"evaluate", "visualize"}


def test_exp_run_is_listed_with_its_metrics(project):
    run(project, "dvc", "exp", "run", "-S", "train.epochs=3")
    table = json.loads(run(project, "dvc", "exp", "show", "--json"))
    experiments = [exp for commit in table for exp in (commit.get("experiments") or [])]
    assert experiments, f"no experiment listed: {table}"
    revision = experiments[0]["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["train"]["epochs"] == 3
    assert "dice" in revision["metrics"]["results/metrics.json"]["data"]["test"]


def test_metrics_diff_against_main_fits_on_one_screen(project):
    run(project, "git", "checkout", "-q", "-b", "longer")
    set_params(project, {"train": {"epochs": 6}})
    run(project, "dvc", "repro")
    run(project, "git", "commit", "-qam", "train longer")
    diff = json.loads(run(project, "dvc", "metrics", "diff", "main", "--json"))
    change = diff["results/metrics.json"]["test.dice"]
    assert change["old"] != change["new"]
    assert change["diff"] == pytest.approx(change["new"] - change["old"])
    rows = [line for line in run(project, "dvc", "metrics", "diff", "main").splitlines() if line.startswith("results/")]
    assert 3 <= len(rows) <= 20, rows


def test_plots_show_draws_the_curves_the_histogram_the_estimate_and_the_montage_and_git_ignores_them(project):
    plots = json.loads(run(project, "dvc", "plots", "show", "--json"))["data"]
    assert set(plots) == {"Loss", "Validation Dice and IoU", "results/dice_histogram.csv", "results/dice_estimate.csv",
                          "results/montage/montage.png"}
    assert "seconds" not in json.dumps(plots)
    scatter = plots["results/dice_estimate.csv"][0]["content"]
    assert scatter["mark"]["type"] == "point"  # one dot per test image
    assert (scatter["encoding"]["x"]["field"], scatter["encoding"]["y"]["field"]) == ("dice", "dice_estimate")
    estimates, per_image = pd.read_csv(project / "results/dice_estimate.csv"), pd.read_csv(project / "results/per_image.csv")
    assert estimates["id"].tolist() == per_image["id"].tolist()  # one dot per test image
    assert estimates["dice_estimate"].between(0, 1).all()
    assert plots["results/dice_histogram.csv"][0]["content"]["encoding"]["x"]["scale"] == {"zero": True}  # bars from 0
    histogram = pd.read_csv(project / "results/dice_histogram.csv")
    assert 1 <= len(histogram) <= 10
    run(project, "dvc", "plots", "show")
    assert (project / "dvc_plots/index.html").is_file() and list((project / "dvc_plots").rglob("*montage*.png"))
    assert run(project, "git", "status", "--porcelain") == ""


def test_exp_run_switches_to_a_real_kaggle_layout_folder(project, kaggle_sample):
    """The one documented command to change data: the real loader, split and subgroups all follow."""
    run(project, "dvc", "exp", "run", "-S", f"data.dir={kaggle_sample}")
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert metrics["test"]["n_images"] == 24  # 10% of the sample's 240 pairs
    report = json.loads((project / "results/evaluation_report.json").read_text())
    assert set(report["subgroups"]["county"]) == {"Montgomery", "Shenxhen"}
    assert metrics["test"]["dice_128px"] > metrics["baseline"]["dice_128px"]


def test_forced_rerun_gives_byte_identical_metrics(project):
    """Same params, data and seed: the same metrics JSON on CPU, to the last digit."""
    before = (project / "results/metrics.json").read_bytes()
    run(project, "dvc", "repro", "-f")
    assert (project / "results/metrics.json").read_bytes() == before
    assert run(project, "git", "status", "--porcelain") == "", run(project, "git", "diff", "HEAD")  # dvc.lock too


def test_a_bad_override_is_refused_with_the_key_and_what_is_allowed(project):
    code, output = run_status(project, "dvc", "exp", "run", "-S", "train.epochs=-1", "-S", "infer.threshold=2")
    assert code != 0
    assert "train.epochs=-1: must be >= 1" in output and "infer.threshold=2.0: must be in (0, 1)" in output
    assert "Traceback" not in output


# --------------------------------------------------------------------------- failures keep the last good results

GOOD_RESULTS = ["results/metrics.json", "results/best_unet.pth", "results/live/metrics.json",
                "results/live/plots/metrics/val_dice.tsv", "results/training_report.json",
                "results/evaluation_report.json", "results/per_image.csv", "results/dice_histogram.csv"]


def snapshot(project: Path) -> dict[str, bytes]:
    return {path: (project / path).read_bytes() for path in GOOD_RESULTS}


@pytest.mark.parametrize("command, edit, problem", [
    (["dvc", "repro"], {"train": {"epoch": 3}}, "train.epoch: unknown key (did you mean train.epochs?)"),
    (["dvc", "exp", "run", "-S", "train.lr=nan"], None, "train.lr=nan: expected a finite number"),
    (["dvc", "exp", "run", "-S", "train.epochs=1.5"], None, "train.epochs=1.5: expected an integer"),
    (["dvc", "repro"], {"evaluate": {"confidence": float("inf")}}, "evaluate.confidence=inf: expected a finite number"),
    (["dvc", "repro"], {"preprocess": {"image_size": 30}}, "preprocess.image_size=30: must be divisible by 2**model.depth = 4"),
], ids=["typo", "nan", "float-epochs", "infinity", "size-vs-depth"])
def test_bad_params_stop_the_run_before_dvc_removes_any_output(project, command, edit, problem):
    """Only check_params runs; every output of the last good run is still there, byte for byte."""
    before = snapshot(project)
    if edit:
        set_params(project, edit)
    code, output = run_status(project, *command)
    assert code != 0 and problem in output, output
    assert "Traceback" not in output
    assert stages_run(output) == {"check_params"}
    assert snapshot(project) == before
    assert run(project, "git", "status", "--porcelain").split() == ["M", "params.yaml"]


def read_if_there(path: Path) -> str:
    """The file's text, or "" while it is absent: DVC removes it before the stage runs, and it
    can vanish between a check and a read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_after_an_interrupted_run_git_and_dvc_checkout_bring_the_last_results_back(project):
    """DVC removes a stage's outputs before the stage runs, so a run stopped mid-training (Ctrl-C,
    a crash, a full disk) has lost them; the README's recovery commands bring them back."""
    before = snapshot(project)
    set_params(project, {"train": {"epochs": 500}})
    process = start(project, "dvc", "repro")
    live = project / "results/live/plots/metrics/train_loss.tsv"
    deadline = time.monotonic() + 120
    while (project / "results/best_unet.pth").exists() or len(read_if_there(live).splitlines()) < 2:  # training, epoch 1 done
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    assert not (project / "results/best_unet.pth").exists()  # what DVC removed is gone

    run(project, "git", "checkout", "HEAD", "--", "dvc.lock", "results")
    run(project, "dvc", "checkout")
    assert snapshot(project) == before


def test_each_epoch_is_visible_while_the_run_is_still_training(project):
    """dvclive rewrites the metrics file as each epoch ends, so `dvc exp show` (which reads it)
    shows progress; the log gets one plain line per epoch, no progress bar, as stdout is a pipe."""
    epochs = 40
    process = start(project, "dvc", "exp", "run", "-S", f"train.epochs={epochs}")
    live, steps_seen = project / "results/live/metrics.json", set()
    while process.poll() is None:
        text = read_if_there(live)
        if text.rstrip().endswith("}"):  # not caught halfway through a rewrite
            steps_seen.add(json.loads(text)["step"])
        time.sleep(0.05)
    output = process.stdout.read()
    assert process.returncode == 0, output
    assert any(3 <= step < epochs for step in steps_seen), steps_seen  # (the previous run reached step 2)
    epoch_lines = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == [f"{k}/{epochs}" for k in range(1, epochs + 1)]
    assert "train:" not in output  # no tqdm bar in a log
    assert read_history(project / "results/live")["epoch"].tolist() == list(range(1, epochs + 1))


def test_a_fresh_clone_reproduces_everything_and_leaves_git_status_clean(project, tmp_path):
    """Nothing that differs from run to run (such as seconds per epoch) is in a git-tracked file."""
    clone = tmp_path / "clone"
    run(project, "git", "clone", "-q", str(project), str(clone))
    assert {"train", "evaluate", "visualize"} <= stages_run(run(clone, "dvc", "repro"))  # no cache: all reran
    assert run(clone, "git", "status", "--porcelain") == "", run(clone, "git", "diff", "HEAD")
