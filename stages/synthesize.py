"""Stage synthesize: write deterministic synthetic chest X-ray phantoms in the Kaggle layout."""

from lungseg import config, paths, stage
from lungseg.data.synthetic import generate_dataset


def main(params: dict) -> None:
    synthetic = config.load(params, "synthetic")
    generate_dataset(paths.SYNTHETIC_DIR, synthetic.n_images, synthetic.seed, synthetic.min_size, synthetic.max_size)
    print(f"wrote {synthetic.n_images} phantoms to {paths.SYNTHETIC_DIR}")


if __name__ == "__main__":
    stage.run(main)
