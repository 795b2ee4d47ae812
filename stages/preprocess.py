"""Stage preprocess: every image/mask pair of data.dir and data.extra_dirs -> compact 128 px
arrays + an index table with each image's source folder."""

import sys

from lungseg.core import config, paths, stage
from lungseg.data.images import set_max_pixels
from lungseg.data.integrity import summary, warnings_of
from lungseg.data.preprocess import assemble_sources, preparation, raise_on_errors, scan_folder
from lungseg.data.processed import save_processed


def main(params: dict) -> None:
    data, settings = config.load(params, "data", "preprocess")
    set_max_pixels(settings.max_pixels)
    scans = [scan_folder(folder, settings, data.lung_labels) for folder in data.dirs]
    for scan in scans:
        if warnings_of(scan.findings):
            print(f"warnings about {scan.data_dir} (run `lungseg check {scan.data_dir}` for every file):", file=sys.stderr)
            print(summary(warnings_of(scan.findings)).to_string(index=False), file=sys.stderr)
    raise_on_errors(*scans)  # every folder's errors, before anything is written
    images, masks, index = assemble_sources(scans, settings, list(data.names))
    save_processed(images, masks, index, preparation(settings), paths.PROCESSED_DIR)
    folders = ", ".join(data.dirs)
    print(f"preprocessed {len(index)} pairs from {folders} to {paths.PROCESSED_DIR} ({images.shape[1]} px)")


if __name__ == "__main__":
    stage.run(main)
