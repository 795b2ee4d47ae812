"""Find the image/mask pairs of a data folder, in either supported layout.

Supported layouts (auto-detected, first match wins):
  kaggle: DIR/Chest-X-Ray/Chest-X-Ray/image/<id>.png and .../mask/<id>.png, plus DIR/MetaData.csv
  plain:  DIR/image/<id>.png and DIR/mask/<id>.png (MetaData.csv beside them is optional)
Image and mask files pair up by file stem (<id>); PNG, JPEG, TIFF, BMP and DICOM (.dcm, or no
extension with the DICOM preamble) are accepted (lungseg.data.images.is_image_file). Other files
and hidden ones are not read; Pairing.skipped lists them so that `lungseg check` can say so.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lungseg.core.errors import DataError  # re-exported: layout.DataError
from lungseg.data.images import IMAGE_SUFFIXES, is_image_file

# Where image/ and mask/ may sit inside the data folder, most specific first.
PAIR_ROOTS = {"kaggle": Path("Chest-X-Ray/Chest-X-Ray"), "kaggle-flat": Path("Chest-X-Ray"), "plain": Path(".")}
METADATA_NAME = "MetaData.csv"


@dataclass(frozen=True)
class Layout:
    """Where a data folder keeps its files.

    Attributes:
        kind: which layout: a key of PAIR_ROOTS ("kaggle", "kaggle-flat" or "plain").
        image_dir: the image/ folder.
        mask_dir: the mask/ folder.
        metadata_path: its MetaData.csv, in the data folder itself or in the folder holding image/; None if none.
    """

    kind: str
    image_dir: Path
    mask_dir: Path
    metadata_path: Path | None


def find_layout(data_dir: str | Path) -> Layout:
    """Detect which layout `data_dir` uses.

    Args:
        data_dir: the data folder.

    Returns:
        The first layout of PAIR_ROOTS whose image/ and mask/ folders are both there.

    Raises:
        DataError: the folder does not exist or holds no layout; it says what was expected and where we looked.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        # a relative path also as resolved: a queued experiment resolves it in its own copy of the project
        where = "" if data_dir.is_absolute() else f" ({data_dir.resolve()})"
        raise DataError(f"data folder {data_dir}{where} does not exist (see data.dir and data.extra_dirs in params.yaml)")
    for kind, root in PAIR_ROOTS.items():
        image_dir, mask_dir = data_dir / root / "image", data_dir / root / "mask"
        if image_dir.is_dir() and mask_dir.is_dir():
            return Layout(kind, image_dir, mask_dir, _find_metadata(data_dir, data_dir / root))
    looked = ", ".join(str(data_dir / root / "image") for root in PAIR_ROOTS.values())
    raise DataError(
        f"{data_dir} is not a lungseg data folder: expected an image/ and a mask/ folder in the Kaggle layout "
        f"(Chest-X-Ray/Chest-X-Ray/image and .../mask, with MetaData.csv) or directly inside it; looked for {looked}"
    )


def _find_metadata(data_dir: Path, pair_root: Path) -> Path | None:
    for folder in (data_dir, pair_root):
        if (folder / METADATA_NAME).is_file():
            return folder / METADATA_NAME
    return None


def file_id(path: Path) -> str:
    """A file's id: its stem in Unicode's composed form (NFC).

    So a name macOS stored decomposed (NFD) pairs with the same name written elsewhere: they look identical.

    Args:
        path: the file.

    Returns:
        The id.
    """
    return unicodedata.normalize("NFC", path.stem)


def _images_by_id(folder: Path) -> tuple[dict[str, Path], list[str], list[Path]]:
    """Map id (file_id) -> path for the image files in `folder`; also report ids seen twice, and
    list what else is there (hidden files, files of another type, subfolders), which is not read.

    folder: an image/ or mask/ folder.
    """
    found: dict[str, Path] = {}
    problems, skipped = [], []
    for path in sorted(folder.iterdir()):
        if not is_image_file(path):
            skipped += [path] if path.is_file() or path.is_dir() else []
        elif file_id(path) in found:
            problems.append(f"id {file_id(path)!r} appears twice: {found[file_id(path)]} and {path}")
        else:
            found[file_id(path)] = path
    return found, problems, skipped


def skip_reason(path: Path) -> str:
    """Why a file in image/ or mask/ was not read, for `lungseg check`.

    Args:
        path: a file listed in Pairing.skipped.

    Returns:
        One line naming the file and the reason.
    """
    if path.name.startswith("."):
        return f"{path}: hidden file, not read"
    if path.is_dir():
        return f"{path}: a subfolder, not read (lungseg reads the files in image/ and mask/, not below them)"
    return (f"{path}: not read: not an image file (expected {', '.join(IMAGE_SUFFIXES)}, "
            "or a DICOM file without an extension)")


@dataclass
class Pairing:
    """The image/mask pairs of a layout, and what kept other files from pairing (fields: see comments)."""

    pairs: pd.DataFrame  # id, image_path, mask_path of every complete pair
    problems: list[str]  # a message for every file unpaired or sharing its id with another
    ids_with_files: set[str]  # every id with an image or a mask file
    skipped: list[Path] = field(default_factory=list)  # files in image/ and mask/ not read: hidden or not images


def pair_files(layout: Layout) -> Pairing:
    """Pair the image and mask files of `layout` by id, listing each folder once.

    Args:
        layout: find_layout's result.

    Returns:
        The pairs (in natural order of id), the problems and the files not read.

    Raises:
        DataError: image/ holds no image at all.
    """
    images, problems, skipped = _images_by_id(layout.image_dir)
    masks, mask_problems, mask_skipped = _images_by_id(layout.mask_dir)
    problems += mask_problems
    problems += [f"image without a mask: {images[i]} ({_missing(layout.mask_dir, i, mask_skipped)})"
                 for i in sorted(images.keys() - masks.keys())]
    problems += [f"mask without an image: {masks[i]} ({_missing(layout.image_dir, i, skipped)})"
                 for i in sorted(masks.keys() - images.keys())]
    if not images:
        others = f"; {len(skipped)} other file(s) there were not read, e.g. {skipped[0].name}" if skipped else ""
        raise DataError(f"no images found in {layout.image_dir} (expected <id> files ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}, or DICOM files without an extension){others}")
    ids = sorted(images.keys() & masks.keys(), key=_natural_key)
    pairs = pd.DataFrame({"id": ids, "image_path": [images[i] for i in ids], "mask_path": [masks[i] for i in ids]})
    return Pairing(pairs, problems, set(images) | set(masks), skipped + mask_skipped)


def _missing(folder: Path, file_id_: str, skipped: list[Path]) -> str:
    """What the pairing looked for in `folder`: a file of that id it did not read, or none at all."""
    unread = [path for path in skipped if path.is_file() and file_id(path) == file_id_]
    if unread:
        return f"{unread[0]} is there, but not a format lungseg reads ({', '.join(IMAGE_SUFFIXES)})"
    return f"no {folder}/{file_id_}.* found"


def list_pairs(layout: Layout) -> pd.DataFrame:
    """Table of id, image_path, mask_path for every pair.

    Args:
        layout: find_layout's result.

    Returns:
        pair_files' pairs.

    Raises:
        DataError: naming every unpaired or duplicate file, if there is one; or image/ holds no image.
    """
    pairing = pair_files(layout)
    if pairing.problems:
        raise DataError(f"{len(pairing.problems)} problem(s) pairing images and masks under {layout.image_dir.parent}:",
                        pairing.problems)
    return pairing.pairs


def source_names(folders) -> list[str]:
    """A short name for each data folder, for the index's `source` column and prefixed ids.

    Args:
        folders: the data folders (DataConfig.dirs, or those `lungseg check` is given).

    Returns:
        Each folder's own name, with -2, -3... added to the later ones of folders that share a name.

    Raises:
        DataError: two of them are the same folder (it would be read twice).
    """
    resolved = [Path(folder).resolve() for folder in folders]
    repeated = sorted({str(folder) for folder in folders if resolved.count(Path(folder).resolve()) > 1})
    if repeated:
        raise DataError(f"the same folder is named more than once: {repeated}; name each folder once")
    names: list[str] = []
    for folder in resolved:
        base, count = folder.name or "data", 1
        name = base
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def _natural_key(stem: str):
    """Sort '2' before '10' while still ordering arbitrary names."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
