"""Stage preprocess: every image/mask pair of data.dir -> compact 128 px arrays + an index table."""

from lungseg import config, paths, stage
from lungseg.data.preprocess import preprocess_folder, save_processed


def main(params: dict) -> None:
    data, settings = config.load(params, "data", "preprocess")
    images, masks, index = preprocess_folder(data.dir, settings)  # raises before anything is written
    save_processed(images, masks, index, settings, paths.PROCESSED_DIR)
    print(f"preprocessed {len(index)} pairs from {data.dir} to {paths.PROCESSED_DIR} ({images.shape[1]} px)")


if __name__ == "__main__":
    stage.run(main)
