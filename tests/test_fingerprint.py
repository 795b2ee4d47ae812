"""lungseg.data.fingerprint: the digest that stands in for a data folder in DVC changes
exactly when a file lungseg reads changes, and its cache spares rereading unchanged files."""

from __future__ import annotations

import json
import os

import pytest

from lungseg.core.errors import DataError
from lungseg.data.fingerprint import HashCache, data_files, fingerprint_folder, folder_fingerprint, stat_key


def fingerprint(folder, cache_path=None) -> dict:
    cache = HashCache(cache_path)
    found = folder_fingerprint(folder, cache)
    cache.save()
    return found


def test_data_files_are_the_pairs_and_the_metadata(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "kaggle", layout="kaggle", n=2)
    (folder.image_dir / ".DS_Store").write_bytes(b"finder")
    (folder.root / "notes.txt").write_text("not read by lungseg")
    names = [path.relative_to(folder.root).as_posix() for path in data_files(folder.root)]
    assert names == ["Chest-X-Ray/Chest-X-Ray/image/1.png", "Chest-X-Ray/Chest-X-Ray/image/2.png",
                     "Chest-X-Ray/Chest-X-Ray/mask/1.png", "Chest-X-Ray/Chest-X-Ray/mask/2.png", "MetaData.csv"]


def test_digest_follows_contents_and_names_not_times(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=3, metadata=False)
    first = fingerprint(folder.root)
    assert first["files"] == 6
    os.utime(folder.image_paths["1"], ns=(1, 1))  # touched: same bytes
    (folder.root / "README.md").write_text("outside image/ and mask/")
    assert fingerprint(folder.root) == first

    folder.image_paths["2"].write_bytes(folder.image_paths["1"].read_bytes())  # another image's bytes
    assert fingerprint(folder.root)["md5"] != first["md5"]


def test_renaming_a_pair_changes_the_digest(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    before = fingerprint(folder.root)
    for path in (folder.image_paths["2"], folder.mask_paths["2"]):
        path.rename(path.with_name("7.png"))
    after = fingerprint(folder.root)
    assert after["files"] == before["files"] and after["md5"] != before["md5"]


def test_cache_is_trusted_while_a_file_is_unchanged_and_refreshed_when_it_changes(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2, metadata=False)
    cache_path = tmp_path / "cache" / "hashes.json"
    honest = fingerprint(folder.root, cache_path)
    entries = json.loads(cache_path.read_text())
    image = str(folder.image_paths["1"].resolve())
    assert entries[image][:3] == stat_key(folder.image_paths["1"]) and len(entries) == 4

    # an entry whose stat key matches is used without reading the file: proof the cache is read
    entries[image][3] = "0" * 32
    cache_path.write_text(json.dumps(entries))
    assert fingerprint(folder.root, cache_path)["md5"] != honest["md5"]

    os.utime(folder.image_paths["1"], ns=(5, 5))  # the key no longer matches: the file is reread
    assert fingerprint(folder.root, cache_path)["md5"] == honest["md5"]


def test_a_damaged_cache_only_costs_a_rehash(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "data", layout="plain", n=2)
    cache_path = tmp_path / "hashes.json"
    cache_path.write_text("{not json")
    assert fingerprint(folder.root, cache_path) == fingerprint(folder.root)
    entries = json.loads(cache_path.read_text())  # rewritten whole
    image, mask = (str(path.resolve()) for path in (folder.image_paths["1"], folder.mask_paths["1"]))
    entries[image], entries[mask] = entries[image][:3], "garbled"  # valid JSON, entries of no use
    cache_path.write_text(json.dumps(entries))
    assert fingerprint(folder.root, cache_path) == fingerprint(folder.root)


def test_cache_keeps_other_folders_and_forgets_deleted_files(tmp_path, write_pair_folder):
    first = write_pair_folder(tmp_path / "a", layout="plain", n=2, metadata=False)
    second = write_pair_folder(tmp_path / "b", layout="plain", n=2, metadata=False)
    cache_path = tmp_path / "hashes.json"
    fingerprint_folder(first.root, cache_path)
    fingerprint_folder(second.root, cache_path)
    second.image_paths["2"].unlink()
    fingerprint_folder(first.root, cache_path)  # one folder's stage ran again
    kept = set(json.loads(cache_path.read_text()))
    assert str(first.image_paths["1"].resolve()) in kept and str(second.mask_paths["2"].resolve()) in kept
    assert str(second.image_paths["2"].resolve()) not in kept


def test_a_folder_entry_names_the_folder_as_given(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "a", layout="plain", n=3, metadata=False)
    entry = fingerprint_folder(str(folder.root), None)
    assert (entry["dir"], entry["files"]) == (str(folder.root), 6) and len(entry["md5"]) == 32


def test_a_folder_that_is_not_data_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty is not a lungseg data folder"):
        fingerprint(tmp_path / "empty")
