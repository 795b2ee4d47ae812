"""A stage killed at any moment leaves its old outputs or none, never a partial file DVC could cache.

Each test runs a real stage as a subprocess, kills it (SIGINT, as Ctrl-C does, or SIGKILL, which
skips every cleanup) at several points of its run, and inspects what is left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc_project import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PARAMS = {
    "synthetic": {"n_images": 40, "min_size": 200, "max_size": 400},
    "preprocess": {"image_size": 32, "workers": 1},
    "model": {"depth": 2, "base_width": 4},
    "train": {"epochs": 3, "batch_size": 4, "device": "cpu"},
}
FRACTIONS = (0.3, 0.6, 0.85, 0.97)  # of a full run's duration


def make_project(root: Path) -> Path:
    for name in ["params.yaml", "stages", "src"]:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def start(project: Path, stage: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.Popen([sys.executable, f"stages/{stage}.py"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=ctrl_c_as_in_a_terminal)


def run(project: Path, stage: str) -> float:
    started = time.perf_counter()
    assert start(project, stage).wait() == 0, f"stage {stage} failed"
    return time.perf_counter() - started


def fingerprint(path: Path) -> str | None:
    """Hash of a file, or of every file in a folder (names and bytes); None when absent."""
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode() + file.read_bytes())
    return digest.hexdigest()


def visible(folder: Path) -> set[str]:
    """What DVC would see: every name in the folder except dot-named temporaries."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def processes_in(folder: Path) -> list[int]:
    """Running processes whose working folder is `folder` (a stage and its workers; Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(folder):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                found += [] if state in ("Z", "X") else [int(entry.name)]
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def assert_no_process_left(project: Path, seconds: float = 10) -> None:
    """A killed stage's workers end within a few seconds (lungseg.core.io.worker_pool)."""
    if not Path("/proc/self/cwd").exists():
        return  # no /proc to look in (not Linux)
    deadline = time.monotonic() + seconds
    while (left := processes_in(project)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed stage still running: {left}"


def kill_at_fractions(project: Path, stage: str, output: Path, change: dict, sig: int) -> list[str]:
    """Run `stage` once; then, with `change` applied so a new run would write something else,
    kill it at each fraction of the full duration. Returns what was found after each kill."""
    duration = run(project, stage)
    old = fingerprint(output)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in change.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outcomes, names_before = [], visible(output.parent) | {output.name}
    for fraction in FRACTIONS:
        process = start(project, stage)
        time.sleep(duration * fraction)
        process.send_signal(sig)
        process.wait()
        assert_no_process_left(project)
        now = fingerprint(output)
        assert visible(output.parent) <= names_before, "a killed stage left a visible partial file"
        if now != old:
            assert run_is_complete(output), f"{output} changed but is incomplete after a kill at {fraction:.0%}"
            old = now
            outcomes.append("new")
        else:
            outcomes.append("old")
    run(project, stage)  # the next run completes and sweeps up what the killed ones left
    assert {p.name for p in output.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name} == set()
    return outcomes


def run_is_complete(output: Path) -> bool:
    """A complete output of the stages under test (folder or checkpoint)."""
    if output.name == "synthetic":
        images = list((output / "Chest-X-Ray/Chest-X-Ray/image").glob("*.png"))
        masks = list((output / "Chest-X-Ray/Chest-X-Ray/mask").glob("*.png"))
        return (output / "MetaData.csv").is_file() and len(images) == len(masks) == PARAMS["synthetic"]["n_images"]
    if output.name == "processed":
        return {p.name for p in output.iterdir()} == {"images.npy", "masks.npy", "index.csv", "settings.json"}
    if output.suffix == ".pth":
        import torch
        return "state_dict" in torch.load(output, weights_only=True)
    raise AssertionError(output)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_synthesize_leaves_the_old_dataset_or_a_whole_new_one(tmp_path, sig):
    project = make_project(tmp_path)
    outcomes = kill_at_fractions(project, "synthesize", project / "data/raw/synthetic", {"synthetic": {"seed": 5}}, sig)
    assert "old" in outcomes  # at least one kill landed mid-run and the old set survived whole


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_preprocess_leaves_the_old_arrays_or_whole_new_ones(tmp_path, sig):
    project = make_project(tmp_path)
    run(project, "synthesize")
    outcomes = kill_at_fractions(project, "preprocess", project / "data/processed", {"preprocess": {"image_size": 16}}, sig)
    assert "old" in outcomes


def test_killed_preprocess_with_workers_leaves_no_worker_behind(tmp_path):
    project = make_project(tmp_path)
    run(project, "synthesize")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["preprocess"]["workers"] = 2  # a process pool
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "preprocess")
    (project / "data/processed").rename(project / "data/old")  # so the next run has work to do
    process = start(project, "preprocess")
    deadline = time.monotonic() + 60
    while len(processes_in(project)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the stage and its 2 workers run
    assert len(processes_in(project)) >= 3, "the stage ended before its workers could be seen"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_no_process_left(project)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_train_leaves_the_old_checkpoint_or_a_whole_new_one(tmp_path, sig):
    project = make_project(tmp_path)
    for stage in ("synthesize", "preprocess", "split"):
        run(project, stage)
    outcomes = kill_at_fractions(project, "train", project / "results/best_unet.pth", {"train": {"seed": 7}}, sig)
    assert "old" in outcomes
