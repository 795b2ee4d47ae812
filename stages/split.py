"""Stage split: a seeded, stratified train/val/test assignment of every image id."""

from lungseg.core import config, paths, stage
from lungseg.core.io import write_csv
from lungseg.data.processed import load_processed
from lungseg.data.split import split_ids


def main(params: dict) -> None:
    split = config.load(params, "split")
    index = load_processed(paths.PROCESSED_DIR).index
    table = split_ids(index, split.fractions, split.seed, split.stratify_by or None)
    write_csv(table, paths.SPLIT_CSV)
    print("split:", table["split"].value_counts().to_dict())


if __name__ == "__main__":
    stage.run(main)
