"""Stage sources (and extra_sources@<name>): the fingerprint of one data folder, which
preprocess and evaluate depend on through data/sources/. DVC runs it when anything in the folder
changed; an unchanged fingerprint (a notes file edited, say) reruns nothing downstream.

    python stages/sources.py FOLDER OUT.json
"""

import sys

from lungseg.core import paths, stage
from lungseg.core.io import write_json
from lungseg.data.fingerprint import fingerprint_folder


def main(params: dict) -> None:
    folder, out = sys.argv[1:3]
    cache = paths.HASH_CACHE if paths.HASH_CACHE.parents[1].is_dir() else None  # only inside a DVC project
    entry = fingerprint_folder(folder, cache)
    write_json(entry, out)
    print(f"{folder}: {entry['files']} files, md5 {entry['md5'][:8]}")


if __name__ == "__main__":
    stage.run(main)
