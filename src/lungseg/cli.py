"""The `lungseg` command.

`lungseg check DATA_DIR` runs the same integrity checks as the preprocess stage and prints a
summary; it exits 1 when the data has errors.
`lungseg predict MODEL INPUT... --out DIR` segments new X-rays (lungseg.inference.predict); it exits 1
when some files could not be read.
`lungseg evaluate --model MODEL --data DIR --out OUT` scores a trained model on any folder of
image/mask pairs it never saw (external validation), exactly as the evaluate stage scores the
test split.
`lungseg calibrate MODEL --data DIR --out OUT` fits a checkpoint's Dice estimate on labelled
X-rays (lungseg.training.recipe.recalibrate) and writes the calibrated copy into OUT.
`lungseg export MODEL --out DIR` writes TorchScript and ONNX copies of a checkpoint (lungseg.inference.export).

Every --out folder follows lungseg.inference.outdir: never where an input is, and an existing folder with
files only with --overwrite. Problems that stop a command before it starts (a bad path, model,
--out folder or setting) exit 2; Ctrl-C prints `interrupted` and exits 130 (EXIT_CODES)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lungseg.core import config
from lungseg.core.errors import LungsegError, os_error_text
from lungseg.data import images
from lungseg.data.integrity import errors, summary, warnings_of
from lungseg.data.layout import source_names
from lungseg.data.preprocess import scan_folder

INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
EXIT_CODES = """\
exit status: 0 done; 1 `check` found errors in the data, `predict` could not read some
files (see the error column of predictions.csv), or a write failed mid-run (a full disk); 2 bad input or parameters (a missing path, an
unusable model, a refused --out folder, an invalid option), nothing written; 130 interrupted
(Ctrl-C): files already written stay whole, each is written under a temporary name and renamed."""
OUT_RULES = """\
--out: never a folder that holds an input or lies inside an input folder (not even with
--overwrite); an existing folder must hold no files unless --overwrite is given, which replaces
the outputs of an earlier run there, deletes those this run does not write, and leaves files of
other names alone."""
EXPORT_OUT_RULES = """\
--out: never the model file's folder or a folder holding it (not even with --overwrite); a
folder below it is fine. An existing folder must hold no files unless --overwrite is given,
which replaces MODEL's earlier <name>.ts and <name>.onnx there, deletes the one of a format not
exported this time, and leaves files of other names alone."""


def limit_pixels(args: argparse.Namespace, default: int | None = None) -> None:
    """Set the image reader's pixel limit before anything is read.

    --max-pixels when given, else `default` (params.yaml's preprocess.max_pixels), else the reader's own default.

    Args:
        args: the parsed command line (max_pixels: int or None).
        default: the limit from params.yaml.
    """
    limit = args.max_pixels if args.max_pixels is not None else default
    if limit is not None:
        images.set_max_pixels(limit)


def check(args: argparse.Namespace) -> int:
    """`lungseg check`: check each data folder as the preprocess stage would read it, and print what was found.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 1 when a folder has errors, else 0.

    Raises:
        ParamsError: the --params file exists but cannot be used.
        DataError: a folder named twice, or one with no layout or no images, or an unusable MetaData.csv.
        LungsegError: preprocess.normalize is clahe but OpenCV is missing.
    """
    params = config.read_params(args.params) if Path(args.params).is_file() else {}
    settings, data = config.load(params, "preprocess", "data", source=args.params)
    limit_pixels(args, settings.max_pixels)  # as the preprocess stage reads the data
    source_names(args.data_dir)  # several folders: none named twice, as params.yaml's data section would refuse
    return max(check_folder(folder, settings, args.verbose, data.lung_labels) for folder in args.data_dir)


def check_folder(folder: str, settings: config.PreprocessConfig, verbose: bool, lung_labels: tuple[int, ...] = ()) -> int:
    """Check one data folder and print what was found.

    Args:
        folder: the data folder.
        settings: the preprocess settings.
        verbose: print every warning too.
        lung_labels: which labels of label-map masks are lung (data.lung_labels).

    Returns:
        1 when the folder has errors, else 0.

    Raises:
        DataError: the folder has no layout or no images, or its MetaData.csv cannot be used.
        LungsegError: settings.normalize is clahe but OpenCV is missing.
    """
    scan = scan_folder(folder, settings, lung_labels)
    found_errors, found_warnings = errors(scan.findings), warnings_of(scan.findings)
    print(f"{folder}: {scan.layout.kind} layout, {len(scan.pairs)} usable pairs, "
          f"{len(found_errors)} error(s), {len(found_warnings)} warning(s)")
    if scan.findings:
        print(summary(scan.findings).to_string(index=False))
    for finding in found_errors + (found_warnings if verbose else []):
        print(f"{finding.level}: {finding.kind}: {finding.detail}")
    return 1 if found_errors else 0


def predict(args: argparse.Namespace) -> int:
    """`lungseg predict`: segment new X-rays (lungseg.inference.predict.run).

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 all written, 1 some files could not be read or a write failed mid-run.

    Raises:
        DataError: an input path missing, no images found, or a refused --out folder (nothing written).
        CheckpointError: a model file that is missing or not written by lungseg.
        ParamsError: a --device that is not available.
        LungsegError: a model that cannot be loaded on --device, or clahe without OpenCV.
    """
    # imported here so that `lungseg check` does not pay for importing torch
    from lungseg.inference import predict as predicting

    limit_pixels(args)
    return predicting.run(args.model, args.inputs, args.out, device=args.device, threshold=args.threshold,
                          batch_size=args.batch_size, alpha=args.alpha, overlays=not args.no_overlays,
                          recursive=args.recursive, quiet=args.quiet, overwrite=args.overwrite,
                          workers=args.workers, estimate=not args.no_estimate,
                          limits=predicting.quality.Limits(min_dice=args.min_dice), report=not args.no_report,
                          resume=args.resume, part=args.part, log_every=args.log_every, ray=args.ray)


EVALUATE_FILES = ("per_image.csv", "dice_histogram.csv", "evaluation_report.json", "metrics.json", "dice_estimate.png")


def evaluate(args: argparse.Namespace) -> int:
    """`lungseg evaluate`: score a model on a folder of image/mask pairs, as the evaluate stage scores the test split.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0.

    Raises:
        ParamsError: the --params file exists but cannot be used, or a --device that is not available.
        DataError: a refused --out folder, a data folder with errors (each listed), or only empty truth masks.
        CheckpointError: a model file that is missing or not written by lungseg.
        LungsegError: a model that cannot be loaded on --device, or clahe without OpenCV.
    """
    from lungseg.evaluation import pictures
    from lungseg.evaluation.pictures import montage_rows
    from lungseg.evaluation.report import REVIEW_NAMES, EvaluationFiles, score_lines, write_evaluation, write_review
    from lungseg.evaluation.scores import evaluate_folder
    from lungseg.inference import review
    from lungseg.inference.formats import load_predictor
    from lungseg.inference.outdir import OutputNames, check_out
    from lungseg.inference.predictor import default_workers, torch_threads
    from lungseg.model.checkpoint import synthetic_warning
    from lungseg.postprocessing import quality

    params = config.read_params(args.params) if Path(args.params).is_file() else {}
    settings, preprocess, visual, flags, data = config.load(params, "evaluate", "preprocess", "visualize", "quality",
                                                              "data", source=args.params)
    files = (*EVALUATE_FILES, "montage.png")  # the best, median and worst image, as the visualize stage draws them
    names = OutputNames(files=(*files, review.PAGE), folders=REVIEW_NAMES[1:], suffix=(".png", ".jpg"))
    out = check_out(args.out, names, args.overwrite, input_folders=[args.data], input_files=[args.model])
    limit_pixels(args, preprocess.max_pixels)  # as the evaluate stage reads the original masks
    predictor = load_predictor(args.model, args.device)
    if warning := synthetic_warning(args.model, predictor.info):
        print(warning, file=sys.stderr)
    if predictor.estimator is None:
        print(quality.NO_ESTIMATOR.format(model=args.model), file=sys.stderr)
    workers, limits = args.workers or default_workers(), quality.Limits.of(flags)
    with torch_threads(1 if workers > 1 else None):  # the worker threads share the cores, not torch's pool
        result = evaluate_folder(predictor, args.data, settings, args.batch_size, settings.subgroups, not args.quiet,
                                 workers, limits, data.lung_labels)
    for finding in result.warnings:  # what `lungseg check` would say of this folder
        print(f"warning: {finding.kind}: {finding.detail}", file=sys.stderr)
    if excluded := result.metrics["excluded"]["empty_truth"]:
        print(f"not scored: {len(excluded)} pair(s) whose truth mask holds no lung "
              f"({', '.join(excluded[:3])}{', ...' if len(excluded) > 3 else ''}); "
              "listed under 'excluded' in evaluation_report.json", file=sys.stderr)
    result.metrics["data"] = str(Path(args.data).resolve())
    per_image, histogram, report, metrics, scatter = (out / name for name in EVALUATE_FILES)
    write_evaluation(result, EvaluationFiles(per_image, histogram, report, metrics, estimate_png=scatter),
                     visual.dpi, limits.min_dice)
    # the best, median and worst images, drawn as the visualize stage draws the test split's
    rows = montage_rows(result.scores, result.images, result.truths, result.masks, 3)
    pictures.save_montage(rows, out / "montage.png", visual.dpi, visual.overlay_alpha)
    if not args.no_report:
        header = review.model_header(f"lungseg evaluate: {args.data}", args.model, predictor.info)
        header.scatter = scatter.name if scatter.is_file() else None
        page = write_review(out, result, header, visual.overlay_alpha)
    print(score_lines(result.metrics))
    if not args.no_report:
        print(f"review page, worst Dice first: {page}")
    return 0


PREDICT_EPILOG = """\
writes DIR/masks/<stem>.png (0/255, original size), DIR/overlays/<stem>.png (lungs in red)
and DIR/predictions.csv (one row per input: input, mask_file, overlay_file, height, width,
lung_fraction, right_lung_px, left_lung_px, right_lung_cm2, left_lung_cm2, n_components, error,
right_share, left_share, balance, dice_estimate, flag; the cm2 columns are filled for DICOM
files with a pixel spacing). Inputs sharing a stem get <stem>-2, <stem>-3, ... in the order given.

DIR/index.html is a review page: every input as a card, worst first, with filters, a search and
a keyboard viewer; open it in a browser (its pictures: DIR/thumbnails/, DIR/views/).

dice_estimate: the Dice this mask should expect against an expert's mask drawn like the training
masks, estimated from the model's own output and calibrated on its validation images. flag: why
a mask deserves a second look (an estimate below --min-dice, no lung, one lung, 3+ pieces).

lung sides: in a standard PA chest X-ray the patient's RIGHT lung appears on the image's LEFT.
Of the two largest connected components of the mask, the one whose centre lies further left in
the image is counted as the right lung; a single component counts as the right lung when its
centre is in the left half of the image, else as the left lung. AP or mirrored images swap them.

exit status: 0 all written, 1 some files could not be read (error column), 2 nothing done
(an input path missing, no images found, an unusable model, a refused --out folder or an
invalid option), 130 interrupted (Ctrl-C; the files written so far stay whole).

--out DIR: never a folder that holds an INPUT folder or lies inside one, nor the folder of an
INPUT file or of MODEL or one holding it (not even with --overwrite). An existing DIR must hold
no files unless --overwrite is given; then the masks, overlays and table of the earlier run are
replaced, those of its images this run does not write are deleted, and files of other names are
left alone (a file of another kind inside masks/ or overlays/ stops the run).

hidden files (names starting with '.') in INPUT folders are skipped, with one line saying how many."""


def fraction(exclusive: bool):
    """An argparse type for a number in (0, 1) (exclusive) or in [0, 1].

    Args:
        exclusive: True for (0, 1), False for [0, 1].

    Returns:
        The parser: text -> float, raising argparse.ArgumentTypeError (argparse's usage error, exit 2) otherwise.
    """
    def parse(text: str) -> float:
        """`text` as a number in the range.

        Raises:
            argparse.ArgumentTypeError: not a number, or outside the range.
        """
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 < value < 1 if exclusive else 0 <= value <= 1):
            raise argparse.ArgumentTypeError(f"{text} is outside {'(0, 1)' if exclusive else '[0, 1]'}")
        return value
    return parse


def at_least(minimum: int):
    """An argparse type for a whole number of at least `minimum`.

    Args:
        minimum: the smallest number allowed.

    Returns:
        The parser: text -> int, raising argparse.ArgumentTypeError for anything else (argparse
        reports it and exits 2).
    """
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {minimum}")
        return int(text)
    return parse


positive_int, whole_number = at_least(1), at_least(0)


def existing_folder(text: str) -> str:
    """An argparse type for a data folder named on the command line (params.yaml's data.dir is checked by its stages).

    Args:
        text: the value as given.

    Returns:
        `text`, unchanged.

    Raises:
        argparse.ArgumentTypeError: no such folder, or not a folder (argparse reports it and exits 2).
    """
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if Path(text).exists() else f"{text}: no such folder")
    return text


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """Add --max-pixels (the image reader's pixel limit, for limit_pixels) to `parser`."""
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images with more than N pixels, unread (a guard against decompression bombs; "
                             "default: preprocess.max_pixels in params.yaml, else 200000000)")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """Add --overwrite (write into an --out folder that already holds files) to `parser`."""
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that already holds files: replace an earlier run's outputs "
                             "and delete those this run does not write (other files are left alone)")


def add_check(commands) -> None:
    """Add the `check` command to `commands`, the subparsers of main's parser."""
    checker = commands.add_parser("check", help="check a data folder for problems (exit 1 on errors)",
                                  description="Check a data folder as the preprocess stage would read it.",
                                  epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    checker.add_argument("data_dir", nargs="+", type=existing_folder, help="a folder in the Kaggle layout or with image/ and mask/ "
                                                     "(several: each is checked, as data.dir and data.extra_dirs are read)")
    checker.add_argument("--params", default="params.yaml", help="take preprocess settings from here (default: params.yaml if present)")
    checker.add_argument("-v", "--verbose", action="store_true", help="list every warning, not just the summary")
    add_max_pixels(checker)
    checker.set_defaults(handler=check)


def add_predict(commands) -> None:
    """Add the `predict` command to `commands`, the subparsers of main's parser."""
    predictor = commands.add_parser(
        "predict", help="segment the lungs in new X-rays: masks, red overlays and a CSV (exit 1 if a file failed)",
        description="Segment the lungs in chest X-rays (PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM, any bit depth) with a trained lungseg model.",
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    predictor.add_argument("model", help="a lungseg checkpoint (.pth), or a model exported by `lungseg export` (.onnx, .ts)")
    predictor.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    predictor.add_argument("--out", required=True, metavar="DIR", help="folder to write masks/, overlays/, predictions.csv and the "
                           "review page index.html (with thumbnails/ and views/) into")
    predictor.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="auto: CUDA, then MPS, then CPU (default: auto)")
    predictor.add_argument("--threshold", type=fraction(exclusive=True), default=None, metavar="P", help="lung where probability > this (default: the checkpoint's)")
    predictor.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="images read and run at once (default: 16)")
    predictor.add_argument("--alpha", type=fraction(exclusive=False), default=0.4, metavar="A", help="opacity of the red lungs in the overlays (default: 0.4)")
    predictor.add_argument("--no-overlays", action="store_true", help="write no full-size overlays (the review page keeps "
                           "its thumbnails unless --no-report)")
    predictor.add_argument("--no-report", action="store_true", help="write no review page (index.html) and none of "
                           "its thumbnails/ and views/")
    predictor.add_argument("--recursive", action="store_true", help="also take images from subfolders of INPUT folders")
    predictor.add_argument("--no-estimate", action="store_true", help="leave dice_estimate empty (a little faster); "
                           "only the hard rules flag")
    predictor.add_argument("--min-dice", type=fraction(exclusive=False), default=config.QualityConfig().min_dice,
                           metavar="D", help="flag masks whose dice_estimate is below D (default: %(default)s, as "
                           "quality.min_dice in params.yaml)")
    predictor.add_argument("--workers", type=positive_int, default=None, metavar="N",
                           help="threads reading and writing images beside the model (default: one per core; "
                                "the outputs are the same for any N)")
    predictor.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    predictor.add_argument("--resume", action="store_true", help="go on with the run --out holds (after a crash, a kill "
                           "or a full disk): the inputs its predictions table lists are kept, the others done; refused "
                           "for another model")
    predictor.add_argument("--part", type=part_of, default=None, metavar="K/N",
                           help="segment only part K of N of the inputs (by a hash of each file's path below its "
                                "folder, so parts stay put as an archive grows); join the parts with lungseg merge")
    predictor.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                           help="run on a Ray cluster (pip install 'lungseg[ray]'): actors hold the model, one per GPU or "
                                "core, and write into --out, which every node must see; without ADDRESS, Ray starts here")
    predictor.add_argument("--log-every", type=positive_int, default=0, metavar="N",
                           help="a plain line every N images on stderr (done, failed, skipped, flagged, images/s, time left), "
                                "for batch logs")
    add_overwrite(predictor)
    add_max_pixels(predictor)
    predictor.set_defaults(handler=predict)


def part_of(text: str) -> tuple[int, int]:
    """An argparse type for --part: "K/N" with 1 <= K <= N."""
    from lungseg.inference.runs import parse_part

    try:
        return parse_part(text)
    except ValueError as problem:
        raise argparse.ArgumentTypeError(str(problem)) from None


def merge(args: argparse.Namespace) -> int:
    """`lungseg merge`: join the --out folders of every part of one predict run into one folder.

    Args:
        args: the parsed command line (parts, out, overwrite, no_report).

    Returns:
        The exit status: 0.

    Raises:
        DataError: parts of different runs or models, a part missing, twice or unfinished, or a refused --out.
    """
    from lungseg.inference import predict as predicting
    from lungseg.inference import review, runs
    from lungseg.inference.outdir import check_out

    parts = [Path(folder) for folder in args.parts]
    out = check_out(args.out, predicting.OUTPUT_NAMES, args.overwrite, input_folders=parts)
    record, count = runs.merge_parts(parts, out, predicting.COLUMNS, predicting.TABLE, (review.THUMBNAILS, review.VIEWS))
    if not args.no_report:
        predicting.write_page(out, runs.read_rows(out / predicting.TABLE), record)
    print(f"{count} image(s) of {len(parts)} parts merged into {out}")
    return 0


def add_merge(commands) -> None:
    """The `lungseg merge` subcommand."""
    merger = commands.add_parser(
        "merge", help="join the outputs of lungseg predict --part K/N runs into one folder",
        description="Join the --out folders of all N parts of one `lungseg predict --part K/N` run: one "
                    "predictions.csv in the order of the whole listing, every mask, overlay and picture, and one "
                    "review page; the result is the folder one undivided run writes. Parts of different models "
                    "or inputs, a missing part or an unfinished one are refused.",
        epilog=OUT_RULES + "\n\n" + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    merger.add_argument("parts", nargs="+", metavar="PART", type=existing_folder, help="the --out folder of each part")
    merger.add_argument("--out", required=True, metavar="DIR", help="folder to write the merged run into")
    merger.add_argument("--no-report", action="store_true", help="write no review page")
    add_overwrite(merger)
    merger.set_defaults(handler=merge)


def export(args: argparse.Namespace) -> int:
    """`lungseg export`: write TorchScript and/or ONNX copies of a checkpoint (lungseg.inference.export).

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0.

    Raises:
        DataError: a refused --out folder.
        CheckpointError: a checkpoint that is missing or cannot be read.
        ExportError: an exported model given, ONNX packages missing, or an export that disagrees with PyTorch.
    """
    from lungseg.inference.export import SUFFIXES, export_model
    from lungseg.inference.outdir import OutputNames, check_out, remove_stale

    # every format's name is lungseg's, so --overwrite with fewer formats deletes the others' old files
    names = OutputNames(files=tuple(f"{Path(args.model).stem}{suffix}" for suffix in SUFFIXES.values()))
    out = check_out(args.out, names, args.overwrite, input_files=[args.model])
    results = export_model(args.model, out, tuple(args.format))
    if args.overwrite:
        remove_stale(out, names, [result["path"] for result in results.values()])
    for name, result in results.items():
        print(f"{name}: {result['path']} (max |logit difference| against PyTorch: {result['max_abs_diff']:.2e})")
    return 0


def add_export(commands) -> None:
    """Add the `export` command to `commands`, the subparsers of main's parser."""
    exporter = commands.add_parser(
        "export", help="export a checkpoint to TorchScript and/or ONNX, checked against PyTorch (max logit difference <= 1e-4)",
        description="Export a trained model so it runs without lungseg's model code (TorchScript) or without PyTorch "
                    "(ONNX, with onnxruntime). Each file carries the threshold, post-processing and preprocessing "
                    "settings, so `lungseg predict FILE ...` uses it like the checkpoint. A file whose logits differ "
                    "from the checkpoint's by more than 1e-4 is not written.",
        epilog=EXPORT_OUT_RULES + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    exporter.add_argument("model", help="a lungseg checkpoint (.pth), e.g. results/best_unet.pth")
    exporter.add_argument("--out", required=True, metavar="DIR", help="folder to write <name>.ts and <name>.onnx into")
    exporter.add_argument("--format", nargs="+", choices=("torchscript", "onnx"), default=["torchscript", "onnx"],
                          help="which formats (default: both; onnx needs pip install -e '.[onnx]')")
    add_overwrite(exporter)
    exporter.set_defaults(handler=export)


def calibrate(args: argparse.Namespace) -> int:
    """`lungseg calibrate`: fit a checkpoint's Dice estimate on labelled X-rays (lungseg.training.recipe.recalibrate).

    Writes the calibrated copy into --out, and warns when fewer than MIN_CALIBRATION_IMAGES images were used.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0.

    Raises:
        ParamsError: the --params file exists but cannot be used.
        DataError: a refused --out folder, or a data folder with errors (each listed).
        CheckpointError: an exported model, or a checkpoint that is missing, cannot be read or cannot be built.
    """
    from lungseg.core.errors import CheckpointError
    from lungseg.data.preprocess import preprocess_folder
    from lungseg.inference.formats import is_exported
    from lungseg.inference.outdir import OutputNames, check_out
    from lungseg.model.checkpoint import load_checkpoint, save_checkpoint
    from lungseg.training.recipe import recalibrate

    name = f"{Path(args.model).stem}.pth"
    out = check_out(args.out, OutputNames(files=(name,)), args.overwrite, input_folders=[args.data], input_files=[args.model])
    if Path(args.model).is_file() and is_exported(args.model):
        raise CheckpointError(f"{args.model}: an exported model; calibrate the checkpoint it came from "
                              "(results/best_unet.pth), then export that again")
    params = config.read_params(args.params) if Path(args.params).is_file() else {}
    data, preprocess = config.load(params, "data", "preprocess", source=args.params)
    limit_pixels(args, preprocess.max_pixels)
    checkpoint = load_checkpoint(args.model)
    settings = config.PreprocessConfig(**checkpoint["preprocess"])
    # raises DataError listing every bad file; label-map masks read with params.yaml's data.lung_labels
    images_, masks, _ = preprocess_folder(args.data, settings, data.lung_labels)
    calibrated = recalibrate(checkpoint, images_, masks, args.draws, args.seed, Path(args.data).resolve().name)
    save_checkpoint(calibrated, out / name)
    record = calibrated["dice_estimator"]["calibration"]
    print(f"{out / name}: Dice estimate fitted on {record['images']} image(s) of {args.data} and "
          f"{record['draws']} degraded copies of each ({record['n_masks']} masks; mean absolute error of the fit "
          f"{record['fit_mae']:.3f})")
    if record["images"] < MIN_CALIBRATION_IMAGES:
        print(f"warning: {record['images']} image(s) are few for a calibration; {MIN_CALIBRATION_IMAGES} or more "
              "give steadier estimates", file=sys.stderr)
    return 0


MIN_CALIBRATION_IMAGES = 20  # about a validation split of the 240-image sample (24)


def add_calibrate(commands) -> None:
    """Add the `calibrate` command to `commands`, the subparsers of main's parser."""
    calibrator = commands.add_parser(
        "calibrate", help="fit a model's Dice estimate on labelled X-rays of your own (writes a new checkpoint)",
        description="Fit the Dice estimate of a trained checkpoint (the dice_estimate column of predict and "
                    "evaluate) on a folder of image/mask pairs, and write the checkpoint with it into --out. "
                    "The train stage does this on its validation images; use this command for a model saved "
                    "before estimates existed, or to make the estimate speak of masks drawn as at your site. "
                    "Use images the model was not trained on.",
        epilog=OUT_RULES + "\n\n" + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrator.add_argument("model", help="a lungseg checkpoint (.pth), e.g. results/best_unet.pth (not changed)")
    calibrator.add_argument("--data", required=True, metavar="DIR", type=existing_folder, help="a folder in the Kaggle layout or with image/ and mask/")
    calibrator.add_argument("--out", required=True, metavar="DIR", help="folder to write the calibrated <model name>.pth into")
    calibrator.add_argument("--draws", type=whole_number, default=config.QualityConfig().calibration_draws, metavar="N",
                            help="degraded copies of each image to fit on (default: %(default)s, as quality.calibration_draws)")
    calibrator.add_argument("--seed", type=int, default=0, help="seed of the degraded copies (default: 0)")
    calibrator.add_argument("--params", default="params.yaml", help="take data.lung_labels and preprocess.max_pixels from here "
                            "(default: params.yaml if present)")
    add_overwrite(calibrator)
    add_max_pixels(calibrator)
    calibrator.set_defaults(handler=calibrate)


def add_evaluate(commands) -> None:
    """Add the `evaluate` command to `commands`, the subparsers of main's parser."""
    evaluator = commands.add_parser(
        "evaluate", help="score a trained model on another folder of image/mask pairs (external validation)",
        description="Score a trained model on a folder of image/mask pairs in any layout lungseg reads: Dice, IoU "
                    "and HD95 with bootstrap intervals, at model size and at each image's original resolution.",
        epilog=OUT_RULES + "\n\n" + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluator.add_argument("--model", required=True, help="a lungseg checkpoint (.pth), or a model exported by `lungseg export` (.onnx, .ts)")
    evaluator.add_argument("--data", required=True, metavar="DIR", type=existing_folder, help="a folder in the Kaggle layout or with image/ and mask/")
    evaluator.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json (headline scores), evaluation_report.json (every interval and "
                           "subgroup), per_image.csv, dice_histogram.csv, dice_estimate.png (estimated against true Dice) and montage.png")
    evaluator.add_argument("--params", default="params.yaml", help="take the evaluate section from here (default: params.yaml if present)")
    evaluator.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    evaluator.add_argument("--no-report", action="store_true", help="write no review page (index.html) and none of "
                           "its thumbnails/, views/ and errors/")
    evaluator.add_argument("--batch-size", type=positive_int, default=32, metavar="N")
    evaluator.add_argument("--workers", type=positive_int, default=None, metavar="N",
                           help="threads scoring the masks at native resolution (default: one per core; "
                                "the scores are the same for any N)")
    evaluator.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_overwrite(evaluator)
    add_max_pixels(evaluator)
    evaluator.set_defaults(handler=evaluate)


def main(argv: list[str] | None = None) -> int:
    """Run one `lungseg` command and return its exit status (EXIT_CODES).

    A LungsegError the command lets through is printed as one line and exits 2, an OSError (a write
    failed mid-run) exits 1, and Ctrl-C exits 130 (INTERRUPTED).

    Args:
        argv: the arguments after `lungseg` (default: sys.argv[1:]).

    Returns:
        The exit status.

    Raises:
        SystemExit: from argparse, for --help (0) or an invalid command line (2).
    """
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation in chest X-rays.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_check(commands)
    add_predict(commands)
    add_evaluate(commands)
    add_calibrate(commands)
    add_export(commands)
    add_merge(commands)
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except LungsegError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except OSError as problem:  # a disk that fills up or turns read-only mid-run: one line, not a traceback
        where = f": {problem.filename}" if problem.filename else ""
        print(f"error: {os_error_text(problem)}{where}; lungseg writes every file under a temporary "
              "name first, so none is left half-written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # one line instead of a traceback; every output is written atomically (lungseg.core.io), so
        # what was written before Ctrl-C is whole and the file being written is not there
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
