"""Atomic file writing: an output either appears whole or not at all.

A stage killed half-way must never leave a partial file that DVC could then cache, so every
writer renders into a temporary sibling and renames it onto the final path (rename is atomic
on POSIX within one file system).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
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

    sweep: first delete the temporaries of `path` that killed writers left behind. Finding them
    lists the whole folder, so a writer of thousands of files into one folder sweeps it once
    (sweep_folder) and passes False here.
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
    Their names carry the writer's pid; those of live processes are left alone."""
    for pattern in (f".{path.stem}.tmp-*{path.suffix}", f".{path.name}.old-*"):
        _remove_dead_writers(path.parent.glob(pattern))


def sweep_folder(folder: str | Path) -> None:
    """Delete every temporary in `folder` (not below it) that a killed writer left behind."""
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
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def save_npy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a handle, so numpy does not append a second .npy
            np.save(handle, array)
