"""Stage check_params: check the whole of params.yaml before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command, so a stage that found a bad
value itself would already have lost the last good results. This stage depends on every key of
params.yaml (an unknown key or a typo included), runs first, and writes a file whose content
never changes; every other stage depends on that file only to run after it. A bad value stops
`dvc repro` here, with every problem listed, and the other stages' outputs stay as they were.
"""

from lungseg import paths, stage
from lungseg.io import atomic_path


def main(params: dict) -> None:  # stage.run has already checked every section and key
    with atomic_path(paths.PARAMS_CHECKED) as tmp:
        tmp.write_text("params.yaml passed lungseg's checks\n")


if __name__ == "__main__":
    stage.run(main)
