"""Helpers for the tests that run the real `dvc` (test_pipeline.py, test_dvc_team.py): a copy
of the project's tracked files in a fresh git repository, with tiny params and a HOME of its
own, and commands run inside it. Not a test module; the tests import it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# what a clone of the project holds that the pipeline needs
TRACKED = ["dvc.yaml", "params.yaml", "stages", "src", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore",
           ".gitignore", "data/.gitignore", "results/.gitignore"]


def environment(cwd: Path, extra: dict | None = None) -> dict:
    """The environment commands run in: the HOME beside `cwd`, and PYTHONPATH relative on purpose,
    so every stage imports the lungseg of the copy it runs in (a queued run's copy, or a clone)."""
    return {**os.environ, "HOME": str(cwd.parent / "home"), "PYTHONPATH": "src", "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(extra or {})}


def run_status(cwd: Path, *args: str, extra_env: dict | None = None) -> tuple[int, str]:
    """Run a command in `cwd`; return its exit status and output (stdout, then stderr)."""
    done = subprocess.run(args, check=False, cwd=cwd, env=environment(cwd, extra_env), capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """Start a command in `cwd` in its own process group (so a test can interrupt it as Ctrl-C
    would); its output, stdout and stderr together, is read from .stdout."""
    return subprocess.Popen(args, cwd=cwd, env=environment(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)


def ctrl_c_as_in_a_terminal() -> None:
    """For a child a test sends SIGINT: a shell starts background jobs (`make test &`) with SIGINT
    ignored, and children inherit that, so Python would never raise KeyboardInterrupt in them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(cwd: Path, *args: str) -> str:
    """Run a command that must succeed; return its output."""
    code, output = run_status(cwd, *args)
    assert code == 0, f"{' '.join(args)} failed with {code}:\n{output}"
    return output


def set_params(project: Path, changes: dict) -> None:
    """Update sections of the project's params.yaml with `changes` ({section: {key: value}})."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def new_project(root: Path, params: dict) -> Path:
    """root/project: the tracked files with `params` applied, in a git repo on main with a user
    set, nothing committed yet; root/home is its HOME."""
    project = root / "project"
    for name in TRACKED:
        source, target = REPO / name, project / name
        if not source.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    (root / "home").mkdir(exist_ok=True)
    set_params(project, params)
    run(project, "git", "init", "-q", "-b", "main")
    run(project, "git", "config", "user.name", "lungseg tests")
    run(project, "git", "config", "user.email", "tests@lungseg.invalid")
    return project


def stages_run(output: str) -> set[str]:
    """Names of the stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}
