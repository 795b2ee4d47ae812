"""Stage check_params: check the whole of params.yaml before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command, so a stage that found a bad
value itself would already have lost the last good results. This stage depends on every key of
params.yaml (an unknown key or a typo included), runs first, and writes a file whose content
never changes; every other stage depends on that file only to run after it. A bad value stops
`dvc repro` here, with every problem listed, and the other stages' outputs stay as they were.
It also checks that the data folders exist, so that a mistyped one is named as params.yaml
gives it (DVC's own message names only the resolved path).
"""

from pathlib import Path

from lungseg.core import config, paths, stage
from lungseg.core.errors import ParamsError
from lungseg.core.io import atomic_path


def missing_folders(data: config.DataConfig) -> list[str]:
    """Each data folder that does not exist, as `key=folder (resolved)`; the phantoms' folder is
    made later, by the synthesize stage."""
    keys = ["data.dir", *(f"data.extra_dirs.{name}" for name in data.extra_dirs)]
    return [f"{key}={folder}: no such folder ({Path(folder).resolve()})" for key, folder in zip(keys, data.dirs)
            if not Path(folder).is_dir() and Path(folder).resolve() != paths.SYNTHETIC_DIR.resolve()]


def main(params: dict) -> None:  # stage.run has already checked every section and key
    if missing := missing_folders(config.load(params, "data")):
        raise ParamsError(f"params.yaml names {len(missing)} data folder(s) that do not exist:\n  - " + "\n  - ".join(missing))
    with atomic_path(paths.PARAMS_CHECKED) as tmp:
        tmp.write_text("params.yaml passed lungseg's checks\n")


if __name__ == "__main__":
    stage.run(main)
