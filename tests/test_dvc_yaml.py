"""dvc.yaml against the code: each stage's code deps (its script, and phase folders or files of
src/lungseg) cover every lungseg file it runs and none it does not (so editing one reruns the
stage, and nothing else does); the outputs it declares are the paths the stages write (paths.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from lungseg.core import paths

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src"
# a foreach stage (extra_sources) as the template its stages are made from
STAGES = {name: stage.get("do", stage) for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()}


def module_file(name: str) -> Path | None:
    """The file of a lungseg module (None for other packages); packages' empty __init__ are left out."""
    if name != "lungseg" and not name.startswith("lungseg."):
        return None
    base = PACKAGE / Path(*name.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def imported_files(path: Path) -> set[Path]:
    """lungseg files `path` imports, at module level or inside functions ("from lungseg import x"
    counts x when x is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {file for file in map(module_file, names) if file is not None}
    return found


def closure(script: Path) -> set[str]:
    """The stage script and every lungseg file it runs, as paths relative to the repository."""
    seen, todo = set(), [script]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported_files(current)
    return {str(path.relative_to(REPO)) for path in seen}


def code_deps(stage: str) -> list[str]:
    """The deps of `stage` that are code: its script, and folders or files of src/lungseg."""
    return [dep for dep in STAGES[stage]["deps"] if dep.startswith(("stages/", "src/lungseg"))]


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_the_code_it_runs_and_no_other(stage):
    script = REPO / STAGES[stage]["cmd"].split("python ")[1].split()[0]
    runs, deps = closure(script), code_deps(stage)
    uncovered = sorted(file for file in runs if not any(covers(dep, file) for dep in deps))
    assert not uncovered, f"{stage} runs but dvc.yaml does not declare: {uncovered}"
    unused = [dep for dep in deps if not any(covers(dep, file) for file in runs)]
    assert not unused, f"{stage} declares but no longer runs anything in: {unused}"
    assert all((REPO / dep).exists() for dep in deps)


READERS = [path for path in (PACKAGE / "lungseg" / "data").glob("*.py") if path.name not in ("processed.py", "__init__.py")]


@pytest.mark.parametrize("stage", ["train", "visualize"])
def test_an_edit_to_a_data_reader_does_not_rerun_training_or_the_pictures(stage):
    readers = [str(path.relative_to(REPO)) for path in READERS]
    assert readers and not [file for file in readers if any(covers(dep, file) for dep in code_deps(stage))]


def test_an_edit_to_evaluation_code_reruns_only_evaluate_and_visualize():
    evaluation = [str(path.relative_to(REPO)) for path in (PACKAGE / "lungseg" / "evaluation").glob("*.py")]
    rerun = {stage for stage in STAGES for file in evaluation if any(covers(dep, file) for dep in code_deps(stage))}
    assert rerun == {"evaluate", "visualize"}


def test_phase_folders_import_downwards_only():
    """core <- data <- model <- postprocessing <- training | inference <- evaluation: a module
    imports its own phase or those below it, never one above or beside it (training and
    inference know nothing of each other, nor evaluation of training; cli.py, at the package root,
    sits above them all)."""
    level = {"core": 0, "data": 1, "model": 2, "postprocessing": 3, "training": 4, "inference": 4, "evaluation": 5}
    assert {path.name for path in (PACKAGE / "lungseg").iterdir() if path.is_dir() and path.name != "__pycache__"} == set(level)
    wrong = []
    for path in (PACKAGE / "lungseg").glob("*/*.py"):
        phase = path.parent.name
        for file in imported_files(path):
            target = file.relative_to(PACKAGE / "lungseg").parts
            beside = (phase, target[0]) == ("evaluation", "training")  # scores models, whoever trained them
            if len(target) > 1 and target[0] != phase and (level[target[0]] >= level[phase] or beside):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {file.relative_to(PACKAGE)}")
    assert not wrong, wrong


def declared_outputs() -> set[str]:
    out = set()
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                out.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    # the fingerprint stages' files, one per data folder, lie in the folder paths.py names
    return {str(paths.SOURCES_DIR) if Path(path).parent == paths.SOURCES_DIR else path for path in out}


def written_paths() -> set[str]:
    """Every path paths.py names, with the dvclive folder as the two outputs dvclive writes in it;
    the hash cache is a temporary, not an output."""
    named = {str(value) for name, value in vars(paths).items() if isinstance(value, Path) and name.isupper()}
    named -= {str(paths.RESULTS), str(paths.LIVE_DIR), str(paths.HASH_CACHE)}
    return named | {str(paths.LIVE_DIR / "metrics.json"), str(paths.LIVE_DIR / "plots")}


def test_paths_py_and_dvc_yaml_name_the_same_outputs():
    assert written_paths() == declared_outputs()
