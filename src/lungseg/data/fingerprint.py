"""A content fingerprint of a data folder: what lungseg reads there, as one digest.

In dvc.yaml each data folder is a dependency of its own small stage (`sources` for data.dir,
`extra_sources@<name>` for each of data.extra_dirs), which writes the folder's fingerprint into
data/sources/; the stages that read the folders depend on that folder of fingerprints. DVC reruns
a fingerprint stage when anything in its folder changes, and preprocess only when a file lungseg
reads changed (a .DS_Store or a notes file changes no fingerprint).

The digest covers what lungseg may read: every visible file in the folder's image/ and mask/
folders (names and bytes), a superset of the images it pairs, and its MetaData.csv; so a stray
file there reruns preprocessing, while a changed image never goes unnoticed. Hashing a real data set takes seconds, so each file's
digest is kept in a cache keyed by its size, modification time and inode, as DVC keeps its own
hashes: a `dvc repro` that changes nothing reads no image.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lungseg.core.io import write_json
from lungseg.data.layout import find_layout

HASH_THREADS = 4  # hashlib releases the GIL on large buffers: files hash in parallel


def data_files(folder: str | Path) -> list[Path]:
    """The files lungseg may read from a data folder, in a fixed order.

    Args:
        folder: a data folder in either layout (lungseg.data.layout).

    Returns:
        Every visible file of its image/ and mask/ folders (not only those lungseg.data.layout pairs), sorted,
        then its MetaData.csv if it has one.

    Raises:
        DataError: `folder` is not a data folder.
    """
    layout = find_layout(folder)
    files = [path for directory in (layout.image_dir, layout.mask_dir) for path in sorted(directory.iterdir())
             if path.is_file() and not path.name.startswith(".")]
    return files + ([layout.metadata_path] if layout.metadata_path else [])


def stat_key(path: Path) -> list[int]:
    """What says a file is unchanged without reading it.

    Args:
        path: the file.

    Returns:
        [size, modification time (ns), inode].
    """
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


class HashCache:
    """File digests remembered by stat_key, in a JSON file that may be deleted at any time.

    Args:
        path: the cache file, or None to hash every file every time. A missing or damaged one starts empty.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.known = self._read()
        self.seen: dict[str, list] = {}

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache only costs a rehash
        return known if isinstance(known, dict) else {}

    def digests(self, files: list[Path]) -> list[str]:
        """The md5 of each file, read only where its stat_key differs from the cached one.

        Args:
            files: the files to hash.

        Returns:
            Their hex digests, in the order of `files`.
        """
        keys = [stat_key(path) for path in files]
        names = [str(path.resolve()) for path in files]
        cached = [self.known.get(name) for name in names]
        stale = [i for i, (key, entry) in enumerate(zip(keys, cached)) if not _matches(entry, key)]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            fresh = dict(zip(stale, pool.map(file_md5, [files[i] for i in stale])))
        result = [fresh[i] if i in fresh else cached[i][3] for i in range(len(files))]
        self.seen.update({name: [*key, md5] for name, key, md5 in zip(names, keys, result)})
        return result

    def save(self) -> None:
        """Write the entries of the files seen since this cache was opened (nothing without a path).

        The earlier entries of files that still exist are kept, so switching data.dir back and forth rehashes nothing.
        """
        if self.path is not None:
            kept = {name: entry for name, entry in self.known.items() if name not in self.seen and Path(name).is_file()}
            write_json({**kept, **self.seen}, self.path)


def _matches(entry, key: list[int]) -> bool:
    """Whether a cache entry ([size, mtime_ns, inode, md5]) holds the digest of a file with `key`."""
    return isinstance(entry, list) and len(entry) == 4 and entry[:3] == key and isinstance(entry[3], str)


def folder_fingerprint(folder: str | Path, cache: HashCache) -> dict:
    """The number of files lungseg reads from `folder` and one md5 over their relative names and contents.

    Args:
        folder: a data folder.
        cache: where file digests are remembered between runs.

    Returns:
        {"files": the number of files (data_files), "md5": the hex digest}.

    Raises:
        DataError: `folder` is not a data folder.
    """
    folder = Path(folder)
    files = data_files(folder)
    digest = hashlib.md5()
    for path, md5 in zip(files, cache.digests(files)):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{md5}\n".encode())
    return {"files": len(files), "md5": digest.hexdigest()}


def fingerprint_folder(folder: str | Path, cache_path: str | Path | None) -> dict:
    """The folder as given, the number of files lungseg reads there, and their md5; the cache is saved.

    Args:
        folder: a data folder.
        cache_path: the HashCache file, or None.

    Returns:
        {"dir": `folder` as given, "files": ..., "md5": ...} (folder_fingerprint).

    Raises:
        DataError: `folder` is not a data folder.
    """
    cache = HashCache(cache_path)
    entry = {"dir": os.fspath(folder), **folder_fingerprint(folder, cache)}
    cache.save()
    return entry
