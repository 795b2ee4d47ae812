"""Several data folders (data.dir and data.extra_dirs): source names, ids that stay unique, the index's
source column, a split stratified by source, `lungseg check` on several folders; and the
synthesize stage, which makes phantoms only when data.dir reads them (issue 13)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc_project import new_project, run, set_params, stages_run
from PIL import Image

from lungseg.core import config
from lungseg.core.config import PreprocessConfig
from lungseg.core.errors import DataError, ParamsError
from lungseg.data.layout import source_names
from lungseg.data.preprocess import ID_SEPARATOR, assemble, assemble_sources, raise_on_errors, scan_folder
from lungseg.data.processed import index_root, load_processed
from lungseg.data.split import PARTS, part_sizes, split_ids

SETTINGS = PreprocessConfig(image_size=16, workers=1)


def scans_of(*folders):
    scans = [scan_folder(folder, SETTINGS) for folder in folders]
    for scan in scans:
        raise_on_errors(scan)
    return scans


# --------------------------------------------------------------------------- params and names


def test_data_dir_is_one_folder_and_extra_dirs_name_the_others():
    one = config.load({"data": {"dir": "x/a"}}, "data")
    assert (one.dirs, one.names) == (("x/a",), ("a",))
    several = config.load({"data": {"dir": "x/a", "extra_dirs": {"covid": "y/b", "v1.2": "c"}}}, "data")
    assert (several.dirs, several.names) == (("x/a", "y/b", "c"), ("a", "covid", "v1.2"))


@pytest.mark.parametrize("bad", ["", 3, ["a", "b"]])
def test_a_bad_data_dir_names_the_key_and_what_is_expected(bad):
    with pytest.raises(ParamsError, match=r"data\.dir=") as raised:
        config.load({"data": {"dir": bad}}, "data")
    if isinstance(bad, list):  # the form data.dir took before data.extra_dirs: the message says where they go now
        assert "data.extra_dirs" in str(raised.value)


@pytest.mark.parametrize("bad", [["b"], {"two words": "b"}, {"@b": "b"}, {"b": ""}, {"b": 3}])
def test_a_bad_extra_dirs_names_the_key_and_what_is_expected(bad):
    with pytest.raises(ParamsError, match=r"data\.extra_dirs=.*expected named folders"):
        config.load({"data": {"dir": "a", "extra_dirs": bad}}, "data")


@pytest.mark.parametrize(("extra", "problem"), [({"a": "b"}, "already data.dir's"), ({"b": "x/../a"}, "more than once")])
def test_extra_dirs_may_not_repeat_a_name_or_a_folder(extra, problem):
    with pytest.raises(ParamsError, match=problem):
        config.load({"data": {"dir": "a", "extra_dirs": extra}}, "data")


def test_source_names_are_the_folder_names_made_unique(tmp_path):
    folders = [tmp_path / "x" / "data", tmp_path / "y" / "data", tmp_path / "covid"]
    for folder in folders:
        folder.mkdir(parents=True)
    assert source_names(folders) == ["data", "data-2", "covid"]


def test_the_same_folder_twice_is_refused(tmp_path):
    with pytest.raises(DataError, match="more than once"):
        source_names([tmp_path, tmp_path / ".." / tmp_path.name])


# --------------------------------------------------------------------------- the index


def test_one_folder_keeps_its_ids_and_paths_and_gains_a_source_column(tmp_path, write_pair_folder):
    folder = write_pair_folder(tmp_path / "kaggle", layout="kaggle", n=3)
    [scan] = scans_of(folder.root)
    _, _, plain_index = assemble(scan, SETTINGS)
    images, _, index = assemble_sources([scan], SETTINGS)
    assert index["id"].tolist() == plain_index["id"].tolist() == folder.ids
    assert index["image_file"].tolist() == plain_index["image_file"].tolist()
    assert set(index["source"]) == {"kaggle"} and len(images) == 3
    assert all((index_root(str(folder.root)) / name).is_file() for name in index["mask_file"])


def test_two_folders_with_the_same_stems_get_prefixed_unique_ids(tmp_path, write_pair_folder):
    kaggle = write_pair_folder(tmp_path / "kaggle", layout="kaggle", n=3)
    plain = write_pair_folder(tmp_path / "plain", layout="plain", n=2, metadata=False)
    images, masks, index = assemble_sources(scans_of(kaggle.root, plain.root), SETTINGS)
    assert len(images) == len(masks) == len(index) == 5
    assert index["id"].is_unique
    assert index["id"].tolist() == [f"kaggle{ID_SEPARATOR}{i}" for i in kaggle.ids] + [f"plain{ID_SEPARATOR}{i}" for i in plain.ids]
    assert index["source"].tolist() == ["kaggle"] * 3 + ["plain"] * 2
    # MetaData.csv columns: filled for the Kaggle folder's rows, empty for the plain one's
    assert (index.loc[index["source"] == "kaggle", "county"] != "").all()
    assert (index.loc[index["source"] == "plain", "county"] == "").all()
    # every file path resolves from the project folder (where the stages run)
    root = index_root([str(kaggle.root), str(plain.root)])
    assert all((root / name).is_file() for name in list(index["image_file"]) + list(index["mask_file"]))


# --------------------------------------------------------------------------- the split


def _two_source_index(n_a: int, n_b: int) -> pd.DataFrame:
    counties = ["Montgomery", "Shenzhen"]
    return pd.DataFrame({"id": [f"a__{i}" for i in range(n_a)] + [f"b__{i}" for i in range(n_b)],
                         "source": ["a"] * n_a + ["b"] * n_b,
                         "county": [counties[i % 2] for i in range(n_a)] + [""] * n_b})


@pytest.mark.parametrize("stratify_by", ["county", ""])
def test_split_keeps_each_source_share_in_every_part(stratify_by):
    index = _two_source_index(40, 20)
    split = split_ids(index, (0.8, 0.1, 0.1), 42, stratify_by or None).merge(index, on="id")
    counts = split.groupby(["source", "split"]).size()
    # source b has no counties: one stratum, cut by the fractions whatever stratify_by says
    assert [counts["b", part] for part in PARTS] == part_sizes(20, (0.8, 0.1, 0.1))
    if stratify_by:  # source a: each county cut apart
        by_county = split[split["source"] == "a"].groupby(["county", "split"]).size()
        assert [by_county["Montgomery", part] for part in PARTS] == part_sizes(20, (0.8, 0.1, 0.1))
    else:
        assert [counts["a", part] for part in PARTS] == part_sizes(40, (0.8, 0.1, 0.1))


def test_a_single_source_column_leaves_the_split_as_it_was():
    index = _two_source_index(50, 0)
    with_source = split_ids(index, (0.8, 0.1, 0.1), 7, "county")
    without = split_ids(index.drop(columns="source"), (0.8, 0.1, 0.1), 7, "county")
    pd.testing.assert_frame_equal(with_source, without)


# --------------------------------------------------------------------------- stages and the CLI


def _run(script: Path, cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": ""})


def test_preprocess_stage_reads_two_folders(tmp_path, write_pair_folder, repo_root):
    kaggle = write_pair_folder(tmp_path / "kaggle", layout="kaggle", n=3)
    plain = write_pair_folder(tmp_path / "plain", layout="plain", n=2, metadata=False)
    done = _run(repo_root / "stages" / "preprocess.py", tmp_path,
                {"data": {"dir": "kaggle", "extra_dirs": {"covid": "plain"}}, "preprocess": {"image_size": 16, "workers": 1}})
    assert done.returncode == 0, done.stderr
    index = load_processed(tmp_path / "data" / "processed").index
    # data.dir's source is its folder's name; an extra folder's is the name it is listed under
    assert index.groupby("source").size().to_dict() == {"kaggle": 3, "covid": 2}
    assert index["id"].tolist()[:3] == [f"kaggle{ID_SEPARATOR}{i}" for i in kaggle.ids]
    assert index["id"].tolist()[-1] == f"covid{ID_SEPARATOR}{plain.ids[-1]}"
    assert index["image_file"].iloc[-1] == str(Path("plain") / "image" / f"{plain.ids[-1]}.png")


def test_check_params_names_each_missing_data_folder_by_its_key(tmp_path, repo_root, write_pair_folder):
    """A mistyped folder stops `dvc repro` at check_params, named as params.yaml gives it; the
    phantoms' folder may be missing, as the synthesize stage makes it afterwards."""
    write_pair_folder(tmp_path / "real", layout="plain", n=2)
    script = repo_root / "stages" / "check_params.py"
    done = _run(script, tmp_path, {"data": {"dir": "data/raw/synthetic", "extra_dirs": {"real": "real"}}})
    assert done.returncode == 0, done.stderr
    done = _run(script, tmp_path, {"data": {"dir": "reel", "extra_dirs": {"real": "real", "covid": "../covd"}}})
    assert done.returncode == 2
    assert f"data.dir=reel: no such folder ({tmp_path / 'reel'})" in done.stderr
    assert f"data.extra_dirs.covid=../covd: no such folder ({tmp_path.parent / 'covd'})" in done.stderr
    assert "real" not in done.stderr.replace("reel", "")


def test_check_reads_several_folders_and_fails_when_one_has_errors(tmp_path, write_pair_folder):
    good = write_pair_folder(tmp_path / "good", layout="plain", n=2)
    bad = write_pair_folder(tmp_path / "bad", layout="plain", n=2)
    bad.mask_paths[bad.ids[0]].unlink()
    command = [sys.executable, "-m", "lungseg.cli", "check", "--params", "none.yaml"]
    ok = subprocess.run([*command, str(good.root), str(good.root.parent / "bad" / ".." / "good")],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 2 and "more than once" in ok.stderr  # the same folder twice
    both = subprocess.run([*command, str(good.root), str(bad.root)], capture_output=True, text=True, cwd=tmp_path)
    assert both.returncode == 1
    assert f"{good.root}: plain layout, 2 usable pairs, 0 error(s)" in both.stdout
    assert f"{bad.root}: plain layout, 1 usable pairs, 1 error(s)" in both.stdout


def test_errors_of_every_folder_are_reported_together(tmp_path, write_pair_folder):
    first = write_pair_folder(tmp_path / "first", layout="plain", n=2)
    second = write_pair_folder(tmp_path / "second", layout="plain", n=2)
    for folder in (first, second):
        folder.mask_paths[folder.ids[0]].unlink()
    with pytest.raises(DataError) as raised:
        raise_on_errors(*(scan_folder(folder.root, SETTINGS) for folder in (first, second)))
    message = str(raised.value)
    assert message.startswith("2 problem(s)") and str(first.root) in message and str(second.root) in message
    assert len(raised.value.problems) == 2


def _folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthesize_writes_only_a_note_when_data_dir_is_elsewhere(tmp_path, repo_root, write_pair_folder):
    write_pair_folder(tmp_path / "real", layout="plain", n=2)
    synthetic = {"n_images": 3, "min_size": 32, "max_size": 40}
    elsewhere = _run(repo_root / "stages" / "synthesize.py", tmp_path, {"data": {"dir": "real"}, "synthetic": synthetic})
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert [p.name for p in (tmp_path / "data" / "raw" / "synthetic").iterdir()] == ["README.txt"]
    # listed as an extra folder (spelled differently), the phantoms are made
    listed = _run(repo_root / "stages" / "synthesize.py", tmp_path,
                  {"data": {"dir": "real", "extra_dirs": {"phantoms": "./data/raw/../raw/synthetic"}}, "synthetic": synthetic})
    assert listed.returncode == 0, listed.stderr
    assert len(list((tmp_path / "data" / "raw" / "synthetic").rglob("*.png"))) == 6


@pytest.mark.slow
def test_dvc_pipeline_on_real_data_skips_the_phantoms_and_brings_them_back(tmp_path, write_pair_folder):
    """A fresh copy whose data.dir points elsewhere: synthesize writes only its note and the
    pipeline runs; back to the default, the phantoms come back bit for bit."""
    tiny = {"synthetic": {"n_images": 12, "min_size": 64, "max_size": 96},
            "preprocess": {"image_size": 32, "workers": 1}, "model": {"depth": 2, "base_width": 4},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu"}, "infer": {"device": "cpu"},
            "evaluate": {"baseline_steps": 8, "bootstrap_samples": 100}, "visualize": {"n_examples": 2, "dpi": 30}}
    project = new_project(tmp_path, tiny)
    run(project, "dvc", "repro", "synthesize")
    phantoms = _folder_digest(project / "data" / "raw" / "synthetic")
    assert len([name for name in phantoms if name.endswith(".png")]) == 24

    real = write_pair_folder(tmp_path / "real", layout="plain", n=20, size=(48, 40))
    set_params(project, {"data": {"dir": str(real.root)}})
    run(project, "dvc", "repro", "synthesize")
    assert list(_folder_digest(project / "data" / "raw" / "synthetic")) == ["README.txt"]
    assert "evaluate" in stages_run(run(project, "dvc", "repro"))

    set_params(project, {"data": {"dir": "data/raw/synthetic"}})
    run(project, "dvc", "repro", "synthesize")
    assert _folder_digest(project / "data" / "raw" / "synthetic") == phantoms


@pytest.mark.slow
def test_dvc_repro_takes_extra_folders_stays_clean_and_reruns_when_one_changes(tmp_path, write_pair_folder):
    """data.extra_dirs through real `dvc repro`: each folder is a source in the evaluation; a
    second repro runs nothing and `dvc status` is clean; a new file lungseg does not read reruns
    only that folder's fingerprint; a changed mask in the extra folder reruns preprocessing and
    what follows."""
    tiny = {"preprocess": {"image_size": 32, "workers": 1}, "model": {"depth": 2, "base_width": 4},
            "split": {"stratify_by": ""}, "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
            "infer": {"device": "cpu"}, "evaluate": {"subgroups": [], "baseline_steps": 8, "bootstrap_samples": 100},
            "visualize": {"n_examples": 2, "dpi": 30}}
    first = write_pair_folder(tmp_path / "kaggle", layout="kaggle", n=20, size=(48, 40))
    second = write_pair_folder(tmp_path / "plain", layout="plain", n=20, size=(40, 48), metadata=False)
    project = new_project(tmp_path, {**tiny, "data": {"dir": str(first.root), "extra_dirs": {"covid": "../plain"}}})
    run(project, "dvc", "repro")
    report = yaml.safe_load((project / "results" / "evaluation_report.json").read_text())
    assert set(report["subgroups"]["source"]) == {"kaggle", "covid"}
    fingerprints = {path.name: yaml.safe_load(path.read_text()) for path in (project / "data" / "sources").glob("*.json")}
    assert {name: (entry["dir"], entry["files"]) for name, entry in fingerprints.items()} == {
        "dir.json": (str(first.root), 41), "extra_dirs.covid.json": ("../plain", 40)}

    assert stages_run(run(project, "dvc", "repro")) == set()
    assert json.loads(run(project, "dvc", "status", "--json")) == {}
    (second.root / "notes.txt").write_text("a file lungseg does not read")
    assert stages_run(run(project, "dvc", "repro")) == {"extra_sources@covid"}
    redrawn = np.zeros((40, 48), np.uint8)
    redrawn[8:32, 6:20] = redrawn[8:32, 28:42] = 255
    Image.fromarray(redrawn).save(second.mask_paths["3"])
    assert {"preprocess", "split", "train", "evaluate"} <= stages_run(run(project, "dvc", "repro"))
