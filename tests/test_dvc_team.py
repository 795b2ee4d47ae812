"""Team workflows with the real `dvc`, on a tiny configuration in throwaway git repositories:
a parameter sweep run in parallel by the experiment queue, and a DVC remote through which a
fresh clone gets the model and results instead of recomputing them (README: Scaling out).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dvc_project import new_project, run, run_status, stages_run
from PIL import Image

pytestmark = pytest.mark.slow

TINY = {
    "synthetic": {"n_images": 24, "min_size": 64, "max_size": 96},
    "preprocess": {"image_size": 32, "workers": 1},
    "model": {"depth": 2, "base_width": 4},
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
    "infer": {"device": "cpu"},
    "evaluate": {"baseline_steps": 8},
    "visualize": {"n_examples": 2, "dpi": 30},
}
SWEPT_LRS = {0.001, 0.0003}
OUTSIDE_PAIRS = 20
IGNORED_DIR = "data/raw/own"  # data/raw/ is git-ignored, so a queued run's copy lacks it
QUEUE_TIMEOUT_S = 420


def tiny_project(root: Path) -> Path:
    """The lungseg project with TINY params, committed on main in a fresh git repo under root."""
    project = new_project(root, TINY)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "tiny pipeline")
    return project


def write_plain_pairs(root: Path, n: int) -> Path:
    """n 64 px image/mask PNG pairs in the plain layout: noise, with a darker 'lung' block."""
    rng = np.random.default_rng(0)
    for folder in ("image", "mask"):
        (root / folder).mkdir(parents=True)
    for k in range(n):
        mask = np.zeros((64, 64), np.uint8)
        mask[16 + k % 8 : 48, 12:52] = 255
        image = rng.integers(120, 250, (64, 64)).astype(np.uint8) - (mask // 3)
        Image.fromarray(image).save(root / "image" / f"{k}.png")
        Image.fromarray(mask).save(root / "mask" / f"{k}.png")
    return root


# --------------------------------------------------------------------------- the queue


def queue_tasks(status: str) -> dict[str, str]:
    """Task id -> state from the table `dvc queue status` prints."""
    rows = (line.split() for line in status.splitlines())
    return {row[0]: row[-1] for row in rows if len(row) >= 4 and re.fullmatch(r"[0-9a-f]{7}", row[0])}


def queue_logs(project: Path, tasks: dict[str, str]) -> str:
    return "\n".join(f"--- dvc queue logs {task} ({state})\n{run_status(project, 'dvc', 'queue', 'logs', task)[1]}"
                     for task, state in tasks.items())


def wait_for_queue(project: Path, timeout_s: float) -> dict[str, str]:
    """Poll `dvc queue status` until no task is queued or running; fail with every log if it takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = queue_tasks(run(project, "dvc", "queue", "status"))
        if tasks and not {"Queued", "Running"} & set(tasks.values()):
            return tasks
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in {timeout_s} s: {tasks}\n{queue_logs(project, tasks)}")
        time.sleep(3)


def experiments(project: Path) -> list[dict]:
    """Every experiment `dvc exp show --json` lists: name, commit, state, params, metrics, deps."""
    table = json.loads(run(project, "dvc", "exp", "show", "--json"))
    found = []
    for commit in table:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            found.append({"name": exp.get("name"), "rev": exp["revs"][0]["rev"],
                          "state": (exp.get("executor") or {}).get("state"),
                          "params": data["params"]["params.yaml"]["data"],
                          "metrics": data["metrics"].get("results/metrics.json", {}).get("data"),
                          "deps": data["deps"]})
    return found


@dataclass
class Sweep:
    project: Path
    outside: Path  # the data folder outside the repository, given by absolute path
    queued_output: str
    tasks: dict[str, str]  # task id -> final state
    experiments: list[dict]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Iterator[Sweep]:
    """Two learning rates swept on data given by absolute path, plus one run pointed at a git-ignored
    relative folder, all through the queue with two workers."""
    root = tmp_path_factory.mktemp("queue")
    project = tiny_project(root)
    outside = write_plain_pairs(root / "outside-data", OUTSIDE_PAIRS)
    write_plain_pairs(project / IGNORED_DIR, OUTSIDE_PAIRS)
    queued = run(project, "dvc", "exp", "run", "--queue", "-S", "train.lr=1e-3,3e-4", "-S", f"data.dir={outside}")
    run(project, "dvc", "exp", "run", "--queue", "-n", "ignored-data", "-S", f"data.dir={IGNORED_DIR}")
    run(project, "dvc", "queue", "start", "-j", "2")
    try:
        tasks = wait_for_queue(project, QUEUE_TIMEOUT_S)
        yield Sweep(project, outside, queued, tasks, experiments(project))
    finally:
        run_status(project, "dvc", "queue", "stop", "--kill")  # workers also leave by themselves when idle


def swept(sweep: Sweep) -> list[dict]:
    return [exp for exp in sweep.experiments if exp["params"]["data"]["dir"] == str(sweep.outside)]


def test_a_comma_list_in_set_param_queues_one_experiment_per_value(sweep):
    assert sweep.queued_output.count("Queued experiment") == len(SWEPT_LRS), sweep.queued_output
    assert {exp["params"]["train"]["lr"] for exp in swept(sweep)} == SWEPT_LRS


def test_every_swept_run_succeeds_with_its_own_test_metrics(sweep):
    runs = swept(sweep)
    states = {exp["name"]: exp["state"] for exp in runs}
    if list(states.values()) != ["success"] * len(SWEPT_LRS):
        pytest.fail(f"swept runs: {states}\n{queue_logs(sweep.project, sweep.tasks)}")
    for exp in runs:
        assert 0 <= exp["metrics"]["test"]["dice"] <= 1, (exp["name"], exp["metrics"])
        # the log a queued run leaves has one plain line per epoch (dvc queue logs --follow shows them as they come)
        assert "epoch 1/1  train_loss" in run(sweep.project, "dvc", "queue", "logs", exp["name"])


def test_a_queued_run_reads_a_data_folder_given_by_absolute_path(sweep):
    for exp in swept(sweep):
        # the sources stage fingerprints data.dir's files: what that run's preprocess depended on
        source = json.loads(run(sweep.project, "git", "show", f"{exp['rev']}:data/sources/dir.json"))
        assert (source["dir"], source["files"]) == (str(sweep.outside), 2 * OUTSIDE_PAIRS), source


def test_a_queued_run_cannot_see_a_git_ignored_relative_data_folder(sweep):
    """The queue runs a copy of the git-tracked files only: the folder exists here, not there."""
    assert run(sweep.project, "git", "check-ignore", IGNORED_DIR).strip() == IGNORED_DIR
    [failed] = [exp for exp in sweep.experiments if exp["name"] == "ignored-data"]
    assert failed["state"] == "failed"
    log = run(sweep.project, "dvc", "queue", "logs", "ignored-data")
    assert re.search(rf"data\.dir={IGNORED_DIR}: no such folder \(\S*/\.dvc/tmp/exps/\w+/{IGNORED_DIR}\)", log), log


# --------------------------------------------------------------------------- the remote


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Path:
    """A reproduced tiny project committed with a folder as its default DVC remote, pushed."""
    root = tmp_path_factory.mktemp("remote")
    first = tiny_project(root)
    run(first, "dvc", "repro")
    run(first, "dvc", "remote", "add", "-d", "shared", str(root / "dvc-storage"))
    run(first, "git", "add", "-A")
    run(first, "git", "commit", "-qm", "results, and the team's remote")
    run(first, "dvc", "push")
    return first


def test_a_fresh_clone_pulls_model_and_results_and_reruns_only_the_phantoms(pushed, tmp_path):
    first, clone = pushed, tmp_path / "clone"
    (tmp_path / "home").mkdir()
    run(first, "git", "clone", "-q", str(first), str(clone))
    run(clone, "dvc", "pull")
    model = "results/best_unet.pth"
    assert (clone / model).read_bytes() == (first / model).read_bytes()
    # data/raw/synthetic is `cache: false` in dvc.yaml: never pushed, so the only thing missing
    changes = json.loads(run(clone, "dvc", "status", "--json"))
    assert set(changes) == {"synthesize", "sources"}, changes
    changed = {path for stage in changes.values() for change in stage if isinstance(change, dict)
               for kind in change.values() for path in kind}
    assert changed == {"data/raw/synthetic"}, changes

    # the phantoms come back bit for bit, so their fingerprint matches and nothing downstream reruns
    assert stages_run(run(clone, "dvc", "repro")) == {"synthesize"}
    assert json.loads(run(clone, "dvc", "status", "--json")) == {}
    assert run(clone, "git", "status", "--porcelain") == ""
    assert (clone / model).read_bytes() == (first / model).read_bytes()


def test_a_tagged_model_version_downloads_through_the_remote_without_a_clone(pushed, tmp_path):
    """dvc.yaml declares the checkpoint as the artifact lung-unet: `dvc artifacts get` fetches a
    version tagged in GTO's format from the remote, with no clone and nothing run."""
    run(pushed, "git", "tag", "-a", "lung-unet@v1.0.0", "-m", "lung-unet 1.0.0")
    downloaded = tmp_path / "downloaded.pth"
    run(pushed, "dvc", "artifacts", "get", str(pushed), "lung-unet", "--rev", "v1.0.0", "-o", str(downloaded))
    assert downloaded.read_bytes() == (pushed / "results/best_unet.pth").read_bytes()
