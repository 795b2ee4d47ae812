"""Stage synthesize: write deterministic synthetic chest X-ray phantoms in the Kaggle layout,
only when data.dir reads them (it is, or lists, data/raw/synthetic). Otherwise the phantoms
would cost about 20 s on the first run of a fresh clone for nothing, so the folder gets just a
README.txt saying why it is empty; pointing data.dir back at it regenerates them bit for bit."""

from pathlib import Path

from lungseg.core import config, paths, stage
from lungseg.core.io import atomic_path
from lungseg.data.synthetic import HardCases, generate_dataset

PLACEHOLDER = "README.txt"


def reads_phantoms(folders) -> bool:
    """True when one of `folders` (DataConfig.dirs) is the synthetic folder, compared resolved."""
    return any(Path(folder).resolve() == paths.SYNTHETIC_DIR.resolve() for folder in folders)


def write_placeholder(folder: Path) -> None:
    """Replace `folder` with one holding only a README.txt that says why it has no phantoms (the
    same text whatever data.dir is, so that switching between real folders changes nothing here)."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / PLACEHOLDER).write_text(
            "No phantoms here: params.yaml's data.dir does not read this folder, so the synthesize stage\n"
            f"skipped them. Set data.dir back to {paths.SYNTHETIC_DIR} (or add it to data.extra_dirs) to make them.\n")


def main(params: dict) -> None:
    data, synthetic = config.load(params, "data", "synthetic")
    if not reads_phantoms(data.dirs):
        write_placeholder(paths.SYNTHETIC_DIR)
        print(f"data.dir does not read {paths.SYNTHETIC_DIR}: no phantoms made (see {paths.SYNTHETIC_DIR / PLACEHOLDER})")
        return
    generate_dataset(paths.SYNTHETIC_DIR, synthetic.n_images, synthetic.seed, synthetic.min_size, synthetic.max_size,
                     hard=HardCases.of(synthetic))
    print(f"wrote {synthetic.n_images} phantoms to {paths.SYNTHETIC_DIR}")


if __name__ == "__main__":
    stage.run(main)
