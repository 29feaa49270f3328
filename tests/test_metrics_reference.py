"""Dice, HD95, NSD and the BraTS 2023 lesion-wise metrics against the values of the reference implementations
(DeepMind surface-distance, rachitsaluja/BraTS-2023-Metrics) on the 55 real-label pairs of
``../shared/metrics_reference`` (its README: conventions and tolerances). The pairs are rebuilt by its
``make_cases.py`` into a temporary folder once per module; the spacing is read from the files."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.evaluation.evaluate import read_on_grid
from pirl_pipeline.evaluation.lesionwise import lesionwise_metrics
from pirl_pipeline.evaluation.metrics import dice, surface_metrics
from pirl_pipeline.evaluation.segmentation import SegmentationOptions, evaluate_segmentation_case
from tests.synthetic import MRI4

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "metrics_reference"
DATA = FIXTURE.parent / "data"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text()) if (FIXTURE / "expected.json").is_file() else None
MISSING = f"metrics reference fixture not found: needs {FIXTURE} and {DATA} (../shared relative to the repository)"
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
PAIRS = sorted(EXPECTED["pairs"]) if EXPECTED else [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))]
# the regions as dataset.json regions: pirl_evaluate names them by their keys
BRATS = DatasetJson(MRI4, {"background": 0, "WT": [1, 2, 3], "TC": [1, 3], "ET": 3}, 1, regions_class_order=[2, 1, 3])
NAMES = {"legacy_dice": "Dice", "legacy_hd95_mm": "HD95", "nsd_1mm": "NSD", "lesion_dice": "LesionDice",
         "lesion_hd95_mm": "LesionHD95"}

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pairs, built by the fixture's own make_cases.py (it checks every array's SHA-256)."""
    if EXPECTED is None or not (FIXTURE / "make_cases.py").is_file() or not DATA.is_dir():
        pytest.skip(MISSING)
    out = tmp_path_factory.mktemp("metrics_reference")
    run = subprocess.run([sys.executable, str(FIXTURE / "make_cases.py"), str(DATA), str(out)],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"make_cases.py failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    return out


def differences(got: dict[str, float], want: dict[str, float | None]) -> dict[str, float]:
    """|got - want| per value; NSD null (both masks empty, undefined) must be NaN here."""
    out = {}
    for key, value in got.items():
        if want[key] is None:
            out[key] = 0.0 if math.isnan(value) else math.inf
        else:
            out[key] = abs(value - want[key])
    return out


def check(pair: str, region: str, got: dict[str, float]) -> list[str]:
    tolerance = EXPECTED["tolerances_abs"]
    want = EXPECTED["pairs"][pair][region]
    return [f"{pair} {region} {key}: {got[key]} vs {want[key]}"
            for key, diff in differences(got, want).items() if not diff <= tolerance[key]]


@pytest.mark.parametrize("pair", PAIRS)
def test_every_value_matches_the_reference_code(cases: Path, pair: str):
    ref, grid = read_on_grid(cases / pair / "ref.nii.gz", None)
    pred, _ = read_on_grid(cases / pair / "pred.nii.gz", grid)
    spacing = grid.spacing  # (z, y, x) from the header; the fixture lists (x, y, z)
    assert list(spacing[::-1]) == pytest.approx(EXPECTED["pairs"][pair]["spacing_xyz_mm"], abs=1e-6)
    errors = []
    for region, values in REGIONS.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        surface = surface_metrics(p, r, spacing, tolerance_mm=1.0)
        lesions = lesionwise_metrics(p, r, spacing)
        errors += check(pair, region, {
            "legacy_dice": dice(p, r), "legacy_hd95_mm": surface["HD95"], "nsd_1mm": surface["NSD"],
            "lesion_dice": lesions.dice, "lesion_hd95_mm": lesions.hd95,
            "num_tp": lesions.num_tp, "num_fp": lesions.num_fp, "num_fn": lesions.num_fn,
            # the lesions partition the reference: their volumes sum to the reference volume
            "gt_volume_mm3": sum(lesion.volume_mm3 for lesion in lesions.lesions)})
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("pair", ["brain1__dilate2", "TCIA10_628_1x1x3__shift2", "brain1__both_empty"]
                         if EXPECTED else [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))])
def test_pirl_evaluate_scores_a_case_with_the_same_definitions(cases: Path, pair: str):
    """The per-case function of pirl_evaluate (and of validation: segmentation_metrics) on the files, two
    anisotropic grids and both masks empty."""
    options = SegmentationOptions(empty_reference="one_if_both_empty", nsd_tolerance_mm=1.0)
    metrics = evaluate_segmentation_case(cases / pair / "ref.nii.gz", cases / pair / "pred.nii.gz", BRATS, options)
    errors = []
    for region in REGIONS:
        errors += check(pair, region, {key: metrics[f"{name}/{region}"] for key, name in NAMES.items()})
    assert not errors, "\n".join(errors)
