import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungseg.core.io import atomic_path, save_npy, sweep_folder, write_csv, write_json


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_file_appears_only_when_the_body_succeeds(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp.name.startswith(".plot.tmp-")
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert leftovers(target.parent) == []


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_directory_is_swapped_whole(tmp_path):
    target = tmp_path / "processed"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.npy").write_text("new")
    assert sorted(os.listdir(target)) == ["new.npy"]
    assert leftovers(tmp_path) == []


def test_failed_directory_write_keeps_the_old_directory(tmp_path):
    target = tmp_path / "processed"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "partial.npy").write_text("partial")
            raise ValueError("bad data found late")
    assert sorted(os.listdir(target)) == ["old.npy"]
    assert leftovers(tmp_path) == []


def test_writers_round_trip(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_npy(array, tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    write_csv(pd.DataFrame({"id": ["7"], "dice": [0.5]}), tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv").to_dict("list") == {"id": [7], "dice": [0.5]}
    write_json({"test": {"dice": 0.9}}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text().startswith("{\n")


def test_sweep_folder_removes_dead_writers_temporaries_only(tmp_path):
    dead = 2**22 + 7  # above the default pid_max: no process has it
    stale = tmp_path / f".a.tmp-{dead}-abc.png"
    live = tmp_path / f".b.tmp-{os.getpid()}-abc.png"
    user = tmp_path / ".hidden-notes.txt"
    for path in (stale, live, user):
        path.write_text("x")
    sweep_folder(tmp_path)
    assert not stale.exists() and live.exists() and user.exists()


def test_atomic_path_without_sweep_leaves_other_temporaries(tmp_path):
    stale = tmp_path / f".a.tmp-{2**22 + 7}-abc.png"
    stale.write_text("x")
    with atomic_path(tmp_path / "a.png", sweep=False) as tmp:
        tmp.write_text("new")
    assert stale.exists() and (tmp_path / "a.png").read_text() == "new"
    with atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_text("newer")
    assert not stale.exists()


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for init to reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


POOL_SCRIPT = """
import sys, time
from lungseg.core.io import worker_pool

def pid(_):
    import os
    time.sleep(0.5)  # both workers take a task
    return os.getpid()

pool = worker_pool(2)
print(*set(pool.map(pid, range(4))), flush=True)
time.sleep(60)  # killed here, its pool still up
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_pool_workers_end_when_their_parent_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "the workers outlived their killed parent"
    finally:
        parent.kill()
