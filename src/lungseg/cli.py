"""The `lungseg` command. `lungseg check DATA_DIR` runs the same integrity checks as the
preprocess stage and prints a summary; it exits 1 when the data has errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lungseg import config
from lungseg.data.integrity import errors, summary, warnings_of
from lungseg.errors import LungsegError
from lungseg.data.preprocess import scan_folder


def check(args: argparse.Namespace) -> int:
    params = config.read_params(args.params) if Path(args.params).is_file() else {}
    settings = config.load(params, "preprocess", source=args.params)
    scan = scan_folder(args.data_dir, settings)
    found_errors, found_warnings = errors(scan.findings), warnings_of(scan.findings)
    print(f"{args.data_dir}: {scan.layout.kind} layout, {len(scan.pairs)} usable pairs, "
          f"{len(found_errors)} error(s), {len(found_warnings)} warning(s)")
    if scan.findings:
        print(summary(scan.findings).to_string(index=False))
    for finding in found_errors + (found_warnings if args.verbose else []):
        print(f"{finding.level}: {finding.kind}: {finding.detail}")
    return 1 if found_errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation in chest X-rays.")
    commands = parser.add_subparsers(dest="command", required=True)
    checker = commands.add_parser("check", help="check a data folder for problems (exit 1 on errors)")
    checker.add_argument("data_dir", help="a folder in the Kaggle layout or with image/ and mask/")
    checker.add_argument("--params", default="params.yaml", help="take preprocess settings from here (default: params.yaml if present)")
    checker.add_argument("-v", "--verbose", action="store_true", help="list every warning, not just the summary")
    args = parser.parse_args(argv)
    try:
        return check(args)
    except LungsegError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
