"""End to end: the real `dvc` commands on a tiny configuration, in a throwaway git repository.

Each test gets its own copy of a project that has already been reproduced and committed once,
so the tests are independent yet the expensive first `dvc repro` runs only once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dvc_project import new_project, run, run_status, set_params, stages_run

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
    assert "dice" in metrics["baseline"]
    for path in ["results/best_unet.pth", "results/history.csv", "results/loss_curves.png",
                 "results/dice_curves.png", "results/montage/montage.png", "results/per_image.csv"]:
        assert (project / path).stat().st_size > 0, path
    assert len(list((project / "results/preds").glob("*.png"))) == metrics["test"]["n_images"]


def test_second_repro_runs_nothing(project):
    output = run(project, "dvc", "repro")
    assert stages_run(output) == set()
    assert "up to date" in run(project, "dvc", "status")


def test_visualize_param_reruns_only_visualize(project):
    set_params(project, {"visualize": {"dpi": 50}})
    assert stages_run(run(project, "dvc", "repro")) == {"visualize"}


def test_epochs_rerun_train_evaluate_visualize(project):
    set_params(project, {"train": {"epochs": 3}})
    assert stages_run(run(project, "dvc", "repro")) == {"train", "evaluate", "visualize"}


def test_exp_run_is_listed_with_its_metrics(project):
    run(project, "dvc", "exp", "run", "-S", "train.epochs=3")
    table = json.loads(run(project, "dvc", "exp", "show", "--json"))
    experiments = [exp for commit in table for exp in (commit.get("experiments") or [])]
    assert experiments, f"no experiment listed: {table}"
    revision = experiments[0]["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["train"]["epochs"] == 3
    assert "dice" in revision["metrics"]["results/metrics.json"]["data"]["test"]


def test_metrics_diff_against_main_shows_the_dice_change(project):
    run(project, "git", "checkout", "-q", "-b", "longer")
    set_params(project, {"train": {"epochs": 6}})
    run(project, "dvc", "repro")
    run(project, "git", "commit", "-qam", "train longer")
    diff = json.loads(run(project, "dvc", "metrics", "diff", "main", "--json"))
    change = diff["results/metrics.json"]["test.dice"]
    assert change["old"] != change["new"]
    assert change["diff"] == pytest.approx(change["new"] - change["old"])


def test_plots_render(project):
    output = run(project, "dvc", "plots", "show", "--json")
    plots = json.loads(output)
    assert any("history.csv" in json.dumps(value) for value in plots.values())


def test_exp_run_switches_to_a_real_kaggle_layout_folder(project, kaggle_sample):
    """The one documented command to change data: the real loader, split and subgroups all follow."""
    run(project, "dvc", "exp", "run", "-S", f"data.dir={kaggle_sample}")
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert metrics["test"]["n_images"] == 24  # 10% of the sample's 240 pairs
    assert set(metrics["subgroups"]["county"]) == {"Montgomery", "Shenxhen"}
    assert metrics["test"]["dice"] > metrics["baseline"]["dice"]


def test_forced_rerun_gives_byte_identical_metrics(project):
    """Same params, data and seed: the same metrics JSON on CPU, to the last digit."""
    before = (project / "results/metrics.json").read_bytes()
    run(project, "dvc", "repro", "-f")
    assert (project / "results/metrics.json").read_bytes() == before
    assert (project / "results/train_metrics.json").read_bytes() == run_status(project, "git", "show", "HEAD:results/train_metrics.json")[1].encode()


def test_a_bad_override_is_refused_with_the_key_and_what_is_allowed(project):
    code, output = run_status(project, "dvc", "exp", "run", "-S", "train.epochs=-1", "-S", "infer.threshold=2")
    assert code != 0
    assert "train.epochs=-1: must be >= 1" in output and "infer.threshold=2.0: must be in (0, 1)" in output
    assert "Traceback" not in output
