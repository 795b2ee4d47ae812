"""Stage preprocess: every image/mask pair of data.dir -> compact 128 px arrays + an index table."""

import sys

from lungseg import config, paths, stage
from lungseg.data.images import set_max_pixels
from lungseg.data.integrity import summary, warnings_of
from lungseg.data.preprocess import assemble, raise_on_errors, save_processed, scan_folder


def main(params: dict) -> None:
    data, settings = config.load(params, "data", "preprocess")
    set_max_pixels(settings.max_pixels)
    scan = scan_folder(data.dir, settings)
    if warnings_of(scan.findings):
        print(f"warnings about {data.dir} (run `lungseg check {data.dir}` for every file):", file=sys.stderr)
        print(summary(warnings_of(scan.findings)).to_string(index=False), file=sys.stderr)
    raise_on_errors(scan)  # before anything is written
    images, masks, index = assemble(scan, settings)
    save_processed(images, masks, index, settings, paths.PROCESSED_DIR)
    print(f"preprocessed {len(index)} pairs from {data.dir} to {paths.PROCESSED_DIR} ({images.shape[1]} px)")


if __name__ == "__main__":
    stage.run(main)
