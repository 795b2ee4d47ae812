"""(e) wall time of the default `dvc repro` and of a no-op `dvc repro`, in a fresh git repository.

    python bench/dvc_repro.py

Copies the tracked project files into a temporary repository, runs `dvc repro` (every stage,
default params, synthetic data), then `dvc repro` again (nothing to do: no stage runs) and
`dvc status` (clean).
Peak memory is the largest resident size among the stage processes.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table, write_results

TRACKED = ["dvc.yaml", "params.yaml", "stages", "src", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore"]


def timed(command: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "project"
        for name in TRACKED:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
        env = {**os.environ, "PYTHONPATH": str(project / "src"), "HOME": scratch,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        rows = [{"command": "dvc repro (all stages, defaults)", "seconds": timed(["dvc", "repro"], project, env)},
                {"command": "dvc repro (nothing changed)", "seconds": timed(["dvc", "repro"], project, env)},
                {"command": "dvc status", "seconds": timed(["dvc", "status"], project, env)}]
        status = subprocess.run(["dvc", "status"], cwd=project, env=env, capture_output=True, text=True, check=True)
        print(status.stdout.strip())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print_table("DVC pipeline wall time", rows)
    print(f"peak RSS of a stage process: {peak:.0f} MiB")
    write_results("dvc_repro", rows, peak_child_rss_mb=peak)


if __name__ == "__main__":
    main()
