"""dvc.yaml against the code: each stage declares exactly the lungseg files it runs (so editing
one reruns the stage), and the outputs it declares are the paths the stages write (paths.py)."""

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


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_declares_exactly_the_code_it_runs(stage):
    script = REPO / STAGES[stage]["cmd"].split("python ")[1].split()[0]
    declared = {dep for dep in STAGES[stage]["deps"] if dep.endswith(".py")}
    runs = closure(script)
    assert not runs - declared, f"{stage} runs but dvc.yaml does not declare: {sorted(runs - declared)}"
    assert not declared - runs, f"{stage} declares but no longer runs: {sorted(declared - runs)}"


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
