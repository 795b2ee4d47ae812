"""How the quality flag's limits trade finding poor masks against flagging good ones.

Reads the per-image quality columns that `python bench/robustness.py --keep-scores DIR` saved
(the development set, covid-cxr-sample, with each image's Dice; and the sample's own validation
images) and recomputes the flag with lungseg.quality.reasons under other limits: the lung
fraction range and the edge uncertainty limit. Per option, averaged over the split seeds:
recall of development images below 0.85 Dice, the share of development images flagged, and the
share of validation images flagged. No test split is read.

    python bench/robustness.py --variants after --keep-scores /tmp/robust_scores
    python bench/flag_choice.py /tmp/robust_scores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from common import print_table, write_results

from lungseg import quality

LOW_DICE = 0.85
FRACTION_RANGES = {"0.10-0.55": (0.10, 0.55), "0.07-0.60": (0.07, 0.60)}
UNCERTAINTY_LIMITS = np.round(np.arange(0.36, 0.461, 0.01), 2)


def flagged(table: pd.DataFrame, fraction_range, uncertainty_max: float) -> np.ndarray:
    """Whether each row would be flagged under these limits. Its pieces are taken from the flag
    the current code wrote ("3+ components"), as predictions.csv keeps no piece count."""
    def one(row) -> bool:
        pieces = 3 if "3+ components" in row.flag else min(int(row.n_components), 2)
        uncertainty = None if pd.isna(row.uncertainty) else float(row.uncertainty)
        found = quality.reasons(int(row.n_components), int(row.right_lung_px), int(row.left_lung_px), float(row.lung_fraction),
                                float(row.balance), uncertainty, pieces, fraction_range, uncertainty_max)
        return bool(found)
    return np.array([one(row) for row in table.itertuples()])


def score(folder: Path, variant: str, fraction_range, uncertainty_max: float) -> dict:
    rows = []
    for dev_file in sorted(folder.glob(f"dev_{variant}_*.csv")):
        dev = pd.read_csv(dev_file, keep_default_na=False, na_values={"uncertainty": [""]})
        val = pd.read_csv(dev_file.with_name(dev_file.name.replace("dev_", "val_")), keep_default_na=False,
                          na_values={"uncertainty": [""]})
        low, dev_flags = dev["dice"].to_numpy() < LOW_DICE, flagged(dev, fraction_range, uncertainty_max)
        rows.append({"recall": (dev_flags & low).sum() / max(low.sum(), 1), "dev_flag_rate": dev_flags.mean(),
                     "val_flag_rate": flagged(val, fraction_range, uncertainty_max).mean()})
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} | {"seeds": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", type=Path, help="the --keep-scores folder of bench/robustness.py")
    parser.add_argument("--variant", default="after")
    args = parser.parse_args()
    rows = [{"lung_fraction": name, "uncertainty_max": float(limit), **score(args.scores, args.variant, bounds, limit)}
            for name, bounds in FRACTION_RANGES.items() for limit in UNCERTAINTY_LIMITS]
    print_table(f"flag limits (recall: dev images below {LOW_DICE} Dice that are flagged)", rows)
    write_results("flag_choice", rows, low_dice=LOW_DICE, current={"lung_fraction": quality.LUNG_FRACTION_RANGE,
                  "uncertainty_max": quality.UNCERTAINTY_MAX, "min_piece": quality.MIN_PIECE})


if __name__ == "__main__":
    main()
