"""Where each stage writes, relative to the project folder. dvc.yaml declares the same paths."""

from pathlib import Path

PARAMS_CHECKED = Path("data/params_checked.txt")
SYNTHETIC_DIR = Path("data/raw/synthetic")
SOURCES_DIR = Path("data/sources")  # one fingerprint per data folder (stages/sources.py)
# file digests kept between runs; DVC keeps its own temporaries here too and never tracks them
HASH_CACHE = Path(".dvc/tmp/lungseg-file-hashes.json")
PROCESSED_DIR = Path("data/processed")
SPLIT_CSV = Path("data/split.csv")

RESULTS = Path("results")
MODEL = RESULTS / "best_unet.pth"
LIVE_DIR = RESULTS / "live"  # dvclive: metrics.json and plots/metrics/*.tsv, written as each epoch ends
TRAINING_REPORT = RESULTS / "training_report.json"
METRICS = RESULTS / "metrics.json"
EVALUATION_REPORT = RESULTS / "evaluation_report.json"
PER_IMAGE = RESULTS / "per_image.csv"
PREDICTIONS = RESULTS / "test_predictions.npz"
DICE_HISTOGRAM = RESULTS / "dice_histogram.csv"
DICE_ESTIMATE = RESULTS / "dice_estimate.csv"  # true and estimated Dice per test image
REVIEW_DIR = RESULTS / "review"  # the test split's review page (index.html) and its pictures
MONTAGE_DIR = RESULTS / "montage"
PREDS_DIR = RESULTS / "preds"
LOSS_CURVES = RESULTS / "loss_curves.png"
DICE_CURVES = RESULTS / "dice_curves.png"
