"""Which grid serves PET/CT lesion segmentation: the same network trained on the PET grid and on the CT grid,
each prediction scored against the expert's contour on BOTH grids (issue 24, "PET grid or CT grid").

Inputs: two raw datasets converted from the same cases (``pirl_convert_folder ... --resample_to PET`` and
``--resample_to CT``; their ``labelsTr`` are the contour on each grid) and, per trained grid, a folder of
predicted label maps (``pirl_predict`` output: ``CASE.nii.gz`` on that dataset's grid). A prediction is scored on
each grid after SimpleITK's label-linear resampling in physical space (the converter's label rule,
``dataset_conversion/resample.py``; on its own grid the identity), so both models meet the same reference on
each grid; the mean table keeps the cases both models predicted.

    python -m experiments.grid_comparison --raw PET=RAW_PET_GRID CT=RAW_CT_GRID \\
        --predictions PET=PRED_DIR CT=PRED_DIR --out grid_comparison.csv

Writes one row per (case, trained grid, scored grid) with the lesion Dice; prints the mean table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from experiments.tables import write_csv
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.metrics import dice


def resample_label(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``label`` sampled at ``reference``'s voxel centres (label-linear per class, 0 outside)."""
    return sitk.Resample(label, reference, sitk.Transform(), sitk.sitkLabelLinear, 0, label.GetPixelID())


def score(predictions: dict[str, Path], raw: dict[str, Path]) -> pd.DataFrame:
    """Lesion Dice (label > 0) of every prediction on every grid: columns case, trained, scored, Dice."""
    rows = []
    for trained, folder in predictions.items():
        files = sorted(folder.glob("*.nii.gz"))
        if not files:
            raise PirlInputError(f"{folder}: no predictions (*.nii.gz)")
        for path in files:
            case = path.name.removesuffix(".nii.gz")
            prediction = sitk.ReadImage(str(path))
            for scored, dataset in raw.items():
                reference_path = dataset / "labelsTr" / path.name
                if not reference_path.is_file():
                    raise PirlInputError(f"{reference_path}: no reference label for the prediction {path}")
                reference = sitk.ReadImage(str(reference_path))
                on_grid = resample_label(prediction, reference)  # on its own grid: the identity
                rows.append({"case": case, "trained": trained, "scored": scored,
                             "Dice": dice(sitk.GetArrayFromImage(on_grid) > 0,
                                          sitk.GetArrayFromImage(reference) > 0)})
    return pd.DataFrame(rows)


def mean_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice over the cases every trained grid predicted: index trained grid, columns scored grid, plus n."""
    common = set.intersection(*(set(g["case"]) for _, g in rows.groupby("trained")))
    rows = rows[rows["case"].isin(common)]
    table = rows.pivot_table(index="trained", columns="scored", values="Dice", aggfunc="mean")
    table["n"] = len(common)
    return table


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    try:
        return {name: Path(path) for name, path in (v.split("=", 1) for v in values)}
    except ValueError:
        raise PirlInputError(f"{flag} expects GRID=FOLDER pairs, got {values}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", nargs=2, required=True, metavar="GRID=RAW_DATASET",
                   help="the raw dataset converted onto each grid (its labelsTr is the reference there)")
    p.add_argument("--predictions", nargs="+", required=True, metavar="GRID=FOLDER",
                   help="label maps predicted by the model trained on GRID (on that grid)")
    p.add_argument("--out", type=Path, required=True, help="per-case CSV")
    args = p.parse_args(argv)
    raw, predictions = _pairs(args.raw, "--raw"), _pairs(args.predictions, "--predictions")
    if not set(predictions) <= set(raw):
        raise PirlInputError(f"--predictions grids {sorted(predictions)} must be among --raw {sorted(raw)}")
    rows = score(predictions, raw)
    write_csv(rows, args.out, index=False)
    print(mean_table(rows).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
