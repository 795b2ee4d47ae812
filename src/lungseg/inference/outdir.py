"""The rules for an --out folder, shared by `lungseg predict`, `evaluate` and `export`.

A command checks its --out folder before it writes anything (check_out):

1. Never where an input is, not even with --overwrite: --out may not be an input folder, hold
   one, or lie inside one (a rerun would read its own outputs, and a dataset folder must not
   fill up with predictions), and it may not be the folder of an input file or hold that folder
   (below an input file's folder is fine: nothing is written beside the file, and
   `lungseg predict model.pth xray.png --out preds` must work). The model file is such an input
   file for every command.
2. An existing folder that holds any file (hidden ones such as .DS_Store aside) is refused
   unless --overwrite is given: lungseg never replaces what it did not just write.
3. With --overwrite, the folder may hold the outputs of an earlier run (the command's output
   names, OutputNames) and files of other names, which are left alone. A file or link at a
   place only lungseg writes (masks/notes.txt, masks/sub/x.png, a masks link) stops the run:
   lungseg could neither keep it (the folder would not hold one run's output) nor delete it
   (it is not lungseg's). After a successful run, remove_stale deletes the outputs of the
   earlier run that the new one did not write, so the folder holds exactly one run's output.

4. The folder must be writable: check_writable creates it and a probe file, then removes both,
   so a read-only folder or disk is refused before any image is computed.

Every refusal is a DataError, so `lungseg` prints `error: ...` and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lungseg.core.errors import DataError

SHOWN = 3  # files named in a one-line refusal


@dataclass(frozen=True)
class OutputNames:
    """What a command writes into its --out folder, relative to it.

    Args:
        files: file names at the top of the folder, e.g. "predictions.csv".
        folders: subfolders only lungseg writes into, each holding <name><suffix> files.
        suffix: the suffix of the files in `folders` (default ".png"), or a tuple of them.
    """

    files: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    suffix: str | tuple[str, ...] = ".png"

    def kind(self, relative: PurePosixPath, path: Path) -> str:
        """What an entry below --out is to lungseg.

        Args:
            relative: the entry's path below --out.
            path: the same entry on disk.

        Returns:
            'output' for a file lungseg writes, 'foreign' for anything else at a place only lungseg writes,
            'other' for the rest (left alone).
        """
        top = relative.parts[0]
        plain_file = path.is_file() and not path.is_symlink()
        if top in self.files:
            return "output" if len(relative.parts) == 1 and plain_file else "foreign"
        if top in self.folders:
            suffixes = (self.suffix,) if isinstance(self.suffix, str) else self.suffix
            fits = len(relative.parts) == 2 and relative.suffix.lower() in suffixes
            return "output" if fits and plain_file else "foreign"
        return "other"


def check_out(out: str | Path, names: OutputNames, overwrite: bool = False,
              input_folders: Sequence[str | Path] = (), input_files: Sequence[str | Path] = ()) -> Path:
    """Refuse an --out folder the command may not write into (rules in the module docstring).

    Call it before anything is written.

    Args:
        out: the --out folder as given.
        names: what the command writes there.
        overwrite: --overwrite.
        input_folders: folders the command reads (predict's INPUT folders, evaluate's --data).
        input_files: files it reads (the model, predict's INPUT files).

    Returns:
        The folder as a Path.

    Raises:
        DataError: for a folder that is, holds or lies inside an input, is not a folder, holds files without
            `overwrite`, holds foreign files where only lungseg writes, or cannot be written.
    """
    folder = Path(out)
    conflicts = input_conflicts(folder, input_folders, input_files)
    if conflicts:
        raise DataError(f"--out {out}: lungseg never writes into a folder that holds its inputs or lies inside an "
                        "input folder, not even with --overwrite; choose another folder (nothing was written):",
                        conflicts)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    entries = list(_entries(folder)) if folder.is_dir() else []
    if entries and not overwrite:
        raise DataError(f"--out {out} already holds {len(entries)} file(s) ({_some(folder, entries)}); nothing was "
                        "written. Choose a new or empty folder, or add --overwrite to replace the outputs of an "
                        "earlier run there (files of other names are left alone)")
    foreign = [folder / relative for relative in entries if names.kind(relative, folder / relative) == "foreign"]
    if foreign:
        places = ", ".join([*names.files, *(f"{name}/" for name in names.folders)])
        raise DataError(f"--out {out}: not overwritten: {len(foreign)} file(s) there are not lungseg's outputs but sit "
                        f"where only lungseg writes ({places}); move them away first (nothing was written):",
                        [str(path) for path in foreign])
    check_writable(folder, out)
    return folder


def check_writable(folder: Path, given: str | Path) -> None:
    """Refuse a folder this process cannot write into, before any work is done.

    Creates it (and any missing parents) and a probe file in it, then removes all of them again, so that a
    read-only folder or disk is refused at once instead of after every image was computed.

    Args:
        folder: the --out folder.
        given: the folder as the user wrote it, for the message.

    Raises:
        DataError: when the folder or the probe file cannot be written.
    """
    created = [path for path in (folder, *folder.parents) if not path.exists()][::-1]  # outermost first
    probe = folder / f".lungseg-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataError(f"--out {given}: cannot write there ({error.strerror or error}: {error.filename or folder}); "
                        "nothing was written") from None
    finally:
        for path in reversed(created):  # innermost first; leave no folder the run did not fill
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def input_conflicts(out: Path, input_folders: Iterable[str | Path] = (), input_files: Iterable[str | Path] = ()) -> list[str]:
    """The inputs that `out` is, holds, or lies inside (rule 1 of the module docstring).

    Args:
        out: the --out folder (it need not exist).
        input_folders: as for check_out.
        input_files: as for check_out.

    Returns:
        One line for each such input; empty when there is none.
    """
    problems = []
    for given in input_folders:
        if _within(out, Path(given)):
            relation = "is" if _same(out, Path(given)) else "lies inside"
            problems.append(f"{out} {relation} the input folder {given}")
        elif _within(Path(given), out):
            problems.append(f"{out} holds the input folder {given}")
    seen: set[Path] = set()
    for given in input_files:
        # the folder holding the name, and the one holding the data when the name is a link
        for parent in {Path(given).parent.resolve(), Path(given).resolve().parent} - seen:
            seen.add(parent)
            if _same(out, parent):
                problems.append(f"{out} is the folder of the input file {given}")
            elif _within(parent, out):
                problems.append(f"{out} holds the input file {given}")
    return problems


def remove_stale(out: Path, names: OutputNames, written: Iterable[str | Path]) -> list[Path]:
    """After a successful --overwrite run: delete lungseg's outputs in `out` that this run did not write.

    Those are an earlier run's; the output folders left empty go too. Files of other names and hidden
    files are never touched.

    Args:
        out: the --out folder.
        names: what the command writes.
        written: the files this run wrote.

    Returns:
        What was deleted.
    """
    kept = {_identity(Path(path)) for path in written}
    kept.discard(None)
    removed = []
    for relative in list(_entries(out)):
        path = out / relative
        # compared by inode, not name: on a case-insensitive disk masks/X.png is the new masks/x.png
        if names.kind(relative, path) == "output" and _identity(path) not in kept:
            path.unlink()
            removed.append(path)
    for name in names.folders:
        if (out / name).is_dir() and not any((out / name).iterdir()):
            (out / name).rmdir()
    return removed


# --------------------------------------------------------------------------- helpers


def _entries(folder: Path) -> Iterator[PurePosixPath]:
    """Every file and link below `folder`, relative to it; hidden names (and what hidden
    folders hold) are skipped, links to folders are listed, not followed."""
    for parent, subfolders, files in os.walk(folder):
        base = Path(parent)
        links = [name for name in subfolders if (base / name).is_symlink()]
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and name not in links)
        for name in sorted([*files, *links]):
            if not name.startswith("."):
                yield PurePosixPath((base / name).relative_to(folder).as_posix())


def _some(folder: Path, entries: list[PurePosixPath]) -> str:
    shown = ", ".join(str(folder / relative) for relative in entries[:SHOWN])
    return shown + (", ..." if len(entries) > SHOWN else "")


def _same(a: Path, b: Path) -> bool:
    """True when `a` and `b` name the same folder: by inode when both exist (case-insensitive
    disks, links), else by their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _within(path: Path, folder: Path) -> bool:
    """True when `path` is `folder` or lies below it (`path` need not exist)."""
    resolved = path.resolve()
    return any(_same(candidate, folder) for candidate in (resolved, *resolved.parents))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino
