"""Stage sources: a content fingerprint of each folder of data.dir, which preprocess and evaluate
depend on in place of the folders (DVC cannot take a list of folders as deps). It runs on every
`dvc repro`; an unchanged fingerprint reruns nothing downstream."""

from lungseg import config, paths, stage
from lungseg.data.fingerprint import fingerprint_sources
from lungseg.data.layout import source_names
from lungseg.io import write_json


def main(params: dict) -> None:
    data = config.load(params, "data")
    cache = paths.HASH_CACHE if paths.HASH_CACHE.parents[1].is_dir() else None  # only inside a DVC project
    entries = fingerprint_sources(data.dirs, source_names(data.dirs), cache)
    write_json(entries, paths.SOURCES)
    print("; ".join(f"{entry['dir']}: {entry['files']} files, md5 {entry['md5'][:8]}" for entry in entries))


if __name__ == "__main__":
    stage.run(main)
