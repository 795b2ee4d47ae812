"""What a stage leaves behind when it stops, however it stops: whole outputs and no workers.

A stage killed half-way must never leave a partial file that DVC could then cache, so every
writer renders into a temporary sibling and renames it onto the final path (rename is atomic
on POSIX within one file system). Nor may it leave worker processes running: `worker_pool`'s
workers end on their own once the process that started them is gone, even after a SIGKILL
(which the OOM killer, a CI timeout or `dvc queue kill` send, and which no cleanup code sees).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: str | Path, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it.

    Works for files and for whole directories (an existing directory at `path` is replaced).
    The temporary name keeps the suffix, so writers that infer the format from it still work.

    Args:
        path: the final file or directory; its parent folder is created if missing.
        sweep: first delete the temporaries of `path` that killed writers left behind. Finding them
            lists the whole folder, so a writer of thousands of files into one folder sweeps it once
            (sweep_folder) and passes False here.

    Yields:
        The temporary path to write (nothing exists there yet).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_temporaries(path)
    # unique per writer, so two processes writing the same target never share a temporary
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        _remove(tmp)


def _replace(new: Path, target: Path) -> None:
    """Move `new` onto `target`. A directory cannot be renamed over a non-empty one, so the old
    one is first renamed aside: at every instant `target` is the old complete output or the new."""
    if not (new.is_dir() and target.is_dir()):
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    os.replace(new, target)
    _remove(old)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` left by writers that were killed (SIGKILL skips every cleanup).

    Their names carry the writer's pid; those of live processes are left alone.

    Args:
        path: the final path the temporaries were for.
    """
    for pattern in (f".{path.stem}.tmp-*{path.suffix}", f".{path.name}.old-*"):
        _remove_dead_writers(path.parent.glob(pattern))


def sweep_folder(folder: str | Path) -> None:
    """Delete every temporary in `folder` (not below it) that a killed writer left behind.

    Args:
        folder: the folder to sweep; a missing one is left alone.
    """
    folder = Path(folder)
    if folder.is_dir():
        _remove_dead_writers(item for item in folder.iterdir() if item.name.startswith("."))


def _remove_dead_writers(candidates) -> None:
    for leftover in candidates:
        writer = re.search(r"\.(?:tmp|old)-(\d+)-", leftover.name)
        if writer and not _alive(int(writer.group(1))):
            _remove(leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(data, path: str | Path) -> None:
    """Write `data` as indented JSON, atomically (atomic_path).

    Args:
        data: anything json.dumps takes.
        path: the file to write.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write `table` as CSV without its row index, atomically (atomic_path).

    Args:
        table: the table.
        path: the file to write.
    """
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def save_npy(array: np.ndarray, path: str | Path) -> None:
    """Write `array` as a .npy file, atomically (atomic_path).

    Args:
        array: the array.
        path: the file to write, its name as given (no second .npy is appended).
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a handle, so numpy does not append a second .npy
            np.save(handle, array)


# --------------------------------------------------------------------------- worker processes

PARENT_POLL_SECONDS = 0.2  # how often a worker looks for its parent; it ends this long after it


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A process pool whose workers exit once this process is gone, however it ended.

    A killed parent cannot shut its pool down, and its workers hold both ends of the pool's
    queue, so they would wait for work forever (parented to init). Each worker therefore runs
    a watchdog thread that ends it when its parent changes. A thread, not Linux's
    parent-death signal, so it works on macOS too and does not fire when only the thread that
    started the worker ends.

    Args:
        workers: processes.
        initializer: run in each worker after the watchdog starts, as initializer(*initargs).
        initargs: its arguments.

    Returns:
        The pool; shut it down (or use it as a context manager) as any ProcessPoolExecutor.
    """
    return ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_without, args=(parent,), name="parent-watchdog", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_without(parent: int) -> None:
    """End this worker at once when `parent` is no longer its parent (it died; init adopted us)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # no cleanup: the parent that would collect results is gone
