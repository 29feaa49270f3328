"""Translation evaluation: PSNR, NMSE and 3D SSIM per synthesised modality, inside the reference mask.

The mask of a case is the union of the non-zero (finite) voxels of ALL its reference channels — derived
from the reference only. The prediction is used exactly as written: its background is never replaced by
reference voxels (the paper's reference code does that; it inflates every score). Two sets of scores
(:func:`pirl_pipeline.evaluation.image_similarity.image_metrics`): ``PSNR``/``NMSE``/``SSIM`` on intensities that
:func:`~pirl_pipeline.evaluation.image_similarity.percentile_scale` has mapped to [0, 1] per volume (prediction and
reference each by its own 0.5/99.5 percentiles inside the mask; BraTS-synthesis style, insensitive to MRI's
arbitrary gain and offset), and ``PSNR_raw``/``NMSE_raw``/``SSIM_raw`` on the written intensities with the
data range (max - min) of the reference inside the mask. A channel with no file in the prediction folder
is not evaluated (NaN in the table); a case with no prediction file at all is an error. A predicted channel
with no reference file is an error, unless dataset.json declares ``allow_missing_channels``: then it is not
scored (NaN), logged, and listed in ``DataFrame.attrs["not_scored"]`` (``pirl_evaluate``: ``not_scored`` in
summary.json).

BraSyn-style scores (optional, ``pirl_evaluate -t translate --brasyn LABELS``; the reference ssim.py of
hongweilibran/BraSyn): ``BraSyn_SSIM_tumor`` and ``BraSyn_SSIM_non_tumor`` need the case's label map (tumour =
label > 0). Each volume is scaled by :func:`brasyn_scale` — its own 0.5/99.5 percentiles over the WHOLE
volume, background included, the lower one floored at 0 (BraSyn's ``strictlyPositive``), clipped to [0, 1] —
then both volumes are multiplied by the region (tumour, or everything outside it, scan background included)
and SSIM is averaged over the region's voxels, with the data range torchmetrics infers (the larger max - min of
the two masked volumes). Where pirl differs: the SSIM is pirl's (:func:`~pirl_pipeline.evaluation.image_similarity.ssim`,
MONAI's 11^3 Gaussian window, valid windows only), so voxels within 5 of the array border are not averaged
(torchmetrics pads them by reflection; on BraTS they are background); the floor is applied to the voxels before
the percentile (``percentile_scale`` of ``max(volume, 0)``), equal to flooring the percentile except when it falls
between a negative and a positive voxel. Synthesised MRI that pirl writes in z-score units loses its negative
half to the floor, as it would in the challenge: these scores fit outputs in non-negative units.
"""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson, list_label_files
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.evaluate import (
    check_folder,
    check_grids,
    list_channel_files,
    match_cases,
    read_on_grid,
    resolve_dataset_json,
    run_cases,
)
from pirl_pipeline.evaluation.image_similarity import (
    IMAGE_METRICS,
    SCALE_PERCENTILES,
    image_metrics,
    percentile_scale,
    ssim,
)

log = logging.getLogger("pirl")
BRASYN_METRICS = ("BraSyn_SSIM_tumor", "BraSyn_SSIM_non_tumor")
BRASYN_CONVENTIONS = {
    "BraSyn_SSIM_tumor": "BraSyn (hongweilibran/BraSyn ssim.py): each volume scaled by its own "
                         f"{SCALE_PERCENTILES[0]}/{SCALE_PERCENTILES[1]} percentiles over the whole volume (the "
                         "lower one floored at 0), clipped to [0, 1]; both multiplied by the tumour mask (label > 0 "
                         "of --brasyn); SSIM averaged over the tumour voxels, data range = the larger max-min of "
                         "the two masked volumes; NaN without tumour",
    "BraSyn_SSIM_non_tumor": "as BraSyn_SSIM_tumor, over every voxel outside the tumour (scan background included, "
                             "as BraSyn), except the 5 voxels next to the array border (valid SSIM windows)",
}


def channel_targets(dj: DatasetJson) -> dict[int, str]:
    """``{channel index: name}`` from channel_names (the index is appended to duplicate names)."""
    names = [dj.channel_names[str(c)] for c in range(dj.num_channels)]
    return {c: n if names.count(n) == 1 else f"{n} ({c:04d})" for c, n in enumerate(names)}


def reference_mask(ref: np.ndarray) -> np.ndarray:
    """Brain/body mask: voxels that are non-zero and finite in any reference channel.

    ``ref`` is (C, z, y, x) — all reference channels of the case — or a single (z, y, x) image.
    """
    ref = np.asarray(ref)
    nonzero = (ref != 0) & np.isfinite(ref)
    return nonzero.any(axis=0) if ref.ndim == 4 else nonzero


def translation_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                        names: list[str] | None = None) -> dict[str, float]:
    """PSNR, NMSE, SSIM (percentile-scaled) and PSNR_raw, NMSE_raw, SSIM_raw of each channel:
    ``{"<metric>/<name>": value}``.

    ``pred`` and ``ref`` are (C, z, y, x) (or one (z, y, x) image), channel ``i`` of both being the same
    modality, named ``names[i]`` (default: the index). ``mask`` (z, y, x): default
    :func:`reference_mask` of ``ref`` — pass the mask of all reference channels when ``ref`` holds only the
    targets.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise PirlInputError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if pred.ndim == 3:
        pred, ref = pred[None], ref[None]
    mask = reference_mask(ref) if mask is None else np.asarray(mask, bool)
    if mask.shape != ref.shape[1:]:
        raise PirlInputError(f"mask shape {mask.shape} != image shape {ref.shape[1:]}")
    names = [str(i) for i in range(len(ref))] if names is None else list(names)
    out: dict[str, float] = {}
    for p, r, name in zip(pred, ref, names, strict=True):
        out.update({f"{metric}/{name}": value for metric, value in image_metrics(p, r, mask).items()})
    return out


def brasyn_scale(volume: np.ndarray) -> np.ndarray:
    """BraSyn's intensity normalisation: the volume's own 0.5/99.5 percentiles over every voxel, the lower one
    floored at 0, to [0, 1], clipped (``percentile_scale`` of ``max(volume, 0)`` over the whole volume)."""
    v = np.maximum(np.asarray(volume, np.float64), 0.0)
    return percentile_scale(v, np.ones(v.shape, bool))


def brasyn_ssim(pred: np.ndarray, ref: np.ndarray, tumor: np.ndarray) -> dict[str, float]:
    """``BraSyn_SSIM_tumor`` and ``BraSyn_SSIM_non_tumor`` of one (z, y, x) image pair; ``tumor`` (z, y, x) is
    the reference's tumour mask (see the module docstring)."""
    pred, ref, tumor = np.asarray(pred), np.asarray(ref), np.asarray(tumor, bool)
    if not pred.shape == ref.shape == tumor.shape:
        raise PirlInputError(f"shapes differ: prediction {pred.shape}, reference {ref.shape}, label {tumor.shape}")
    p, r = brasyn_scale(pred), brasyn_scale(ref)
    out = {}
    for name, region in zip(BRASYN_METRICS, (tumor, ~tumor), strict=True):
        p_region, r_region = p * region, r * region
        data_range = max(float(np.ptp(p_region)), float(np.ptp(r_region)))  # torchmetrics' default
        out[name] = ssim(p_region, r_region, region, data_range) if data_range > 0 else math.nan
    return out


def evaluate_translation_case(ref_files: dict[int, Path], pred_files: dict[int, Path],
                              dataset_json: DatasetJson, label_file: Path | None = None) -> dict[str, float]:
    """Metrics of one case from its reference channel files and predicted channel files (same grid); a
    predicted channel without a reference is left out when the dataset allows missing channels. With
    ``label_file`` (the case's label map, same grid), also :data:`BRASYN_METRICS`."""
    unknown = sorted(set(pred_files) - set(ref_files))
    if unknown and not dataset_json.allow_missing_channels:
        raise PirlInputError(f"{pred_files[unknown[0]]}: no reference image for channel {unknown[0]:04d} "
                             f"in {ref_files[min(ref_files)].parent} (a dataset whose cases lack channels "
                             'declares "allow_missing_channels": true)')
    first = ref_files[min(ref_files)]
    ref0, grid = read_on_grid(first, None)
    refs = {c: (ref0 if f == first else read_on_grid(f, grid, first)[0]) for c, f in ref_files.items()}
    mask = reference_mask(np.stack(list(refs.values())))
    tumor = None if label_file is None else read_on_grid(label_file, grid, first)[0] > 0
    names = channel_targets(dataset_json)
    out: dict[str, float] = {}
    for c, f in sorted(pred_files.items()):
        if c not in refs:
            continue
        pred = read_on_grid(f, grid, first)[0]
        out.update(translation_metrics(pred, refs[c], mask, [names[c]]))
        if tumor is not None:
            out.update({f"{metric}/{names[c]}": v for metric, v in brasyn_ssim(pred, refs[c], tumor).items()})
    return out


def _case_job(job: tuple[dict[int, Path], dict[int, Path], Path | None], dataset_json: DatasetJson) -> dict[str, float]:
    return evaluate_translation_case(job[0], job[1], dataset_json, job[2])


def brasyn_label_files(label_dir: str | Path, cases: list[str], dj: DatasetJson) -> dict[str, Path]:
    """``{case: label file}`` for the BraSyn scores; PirlInputError naming the first case without one."""
    label_dir = check_folder(label_dir, "label (--brasyn)")
    labels = list_label_files(label_dir, dj.file_ending)
    missing = [c for c in cases if c not in labels]
    if missing:
        raise PirlInputError(f"{label_dir / (missing[0] + dj.file_ending)}: no label map for the BraSyn tumour / "
                             f"non-tumour SSIM ({len(missing)} case(s) lack one)")
    return {c: labels[c] for c in cases}


def evaluate_translation_folder(ref_dir: str | Path, pred_dir: str | Path,
                                dataset_json: DatasetJson | str | Path | int,
                                num_processes: int = 1, brasyn_labels: str | Path | None = None) -> pd.DataFrame:
    """Per-case table (index ``case``, columns ``"<metric>/<channel name>"``) of ``pred_dir/CASE_XXXX``
    against ``ref_dir/CASE_XXXX``; columns only for channels predicted in at least one case.
    ``attrs["not_scored"]``: the predicted files without a reference (allowed with missing channels).
    ``brasyn_labels``: a folder of ``CASE<ending>`` label maps (every case needs one, on its grid); adds the
    :data:`BRASYN_METRICS` columns."""
    dj = resolve_dataset_json(dataset_json)
    ref_dir, pred_dir = check_folder(ref_dir, "reference"), check_folder(pred_dir, "prediction")
    ref, pred = list_channel_files(ref_dir, dj), list_channel_files(pred_dir, dj)
    cases = match_cases(ref, pred, ref_dir, pred_dir, f"CASE_XXXX{dj.file_ending}")
    labels = brasyn_label_files(brasyn_labels, cases, dj) if brasyn_labels is not None else {}
    check_grids([[*ref[c].values(), *pred[c].values(), *([labels[c]] if labels else [])] for c in cases])
    rows = run_cases(functools.partial(_case_job, dataset_json=dj),
                     [(ref[c], pred[c], labels.get(c)) for c in cases], num_processes, "evaluate translate")
    names = channel_targets(dj)
    predicted = sorted({ch for c in cases for ch in pred[c]})
    metrics = IMAGE_METRICS + (BRASYN_METRICS if labels else ())
    columns = [f"{m}/{names[ch]}" for m in metrics for ch in predicted]
    table = pd.DataFrame(rows, index=pd.Index(cases, name="case"), columns=columns)
    table.attrs["not_scored"] = [pred[c][ch].name for c in cases for ch in sorted(pred[c]) if ch not in ref[c]]
    if table.attrs["not_scored"]:
        shown = table.attrs["not_scored"]
        log.warning("%d predicted channel(s) not scored: no reference image (allow_missing_channels): %s",
                    len(shown), ", ".join(shown[:8]) + (f" (+{len(shown) - 8} more)" if len(shown) > 8 else ""))
    return table
