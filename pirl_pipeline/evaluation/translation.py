"""Translation evaluation: PSNR, NMSE and 3D SSIM per synthesised modality, inside the reference mask.

The mask of a case is the union of the non-zero (finite) voxels of ALL its reference channels — derived
from the reference only. The prediction is used exactly as written: its background is never replaced by
reference voxels (the paper's reference code does that; it inflates every score). Two sets of scores
(:func:`pirl_pipeline.evaluation.metrics.image_metrics`): ``PSNR``/``NMSE``/``SSIM`` on intensities that
:func:`~pirl_pipeline.evaluation.metrics.percentile_scale` has mapped to [0, 1] per volume (prediction and
reference each by its own 0.5/99.5 percentiles inside the mask; BraTS-synthesis style, insensitive to MRI's
arbitrary gain and offset), and ``PSNR_raw``/``NMSE_raw``/``SSIM_raw`` on the written intensities with the
data range (max - min) of the reference inside the mask. A channel with no file in the prediction folder
is not evaluated (NaN in the table); a case with no prediction file at all is an error. A predicted channel
with no reference file is an error, unless dataset.json declares ``allow_missing_channels``: then it is not
scored (NaN), logged, and listed in ``DataFrame.attrs["not_scored"]`` (``pirl_evaluate``: ``not_scored`` in
summary.json).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pirl_pipeline.data.dataset_json import DatasetJson
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
from pirl_pipeline.evaluation.metrics import IMAGE_METRICS, image_metrics

log = logging.getLogger("pirl")


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


def evaluate_translation_case(ref_files: dict[int, Path], pred_files: dict[int, Path],
                              dataset_json: DatasetJson) -> dict[str, float]:
    """Metrics of one case from its reference channel files and predicted channel files (same grid); a
    predicted channel without a reference is left out when the dataset allows missing channels."""
    unknown = sorted(set(pred_files) - set(ref_files))
    if unknown and not dataset_json.allow_missing_channels:
        raise PirlInputError(f"{pred_files[unknown[0]]}: no reference image for channel {unknown[0]:04d} "
                             f"in {ref_files[min(ref_files)].parent} (a dataset whose cases lack channels "
                             'declares "allow_missing_channels": true)')
    first = ref_files[min(ref_files)]
    ref0, grid = read_on_grid(first, None)
    refs = {c: (ref0 if f == first else read_on_grid(f, grid, first)[0]) for c, f in ref_files.items()}
    mask = reference_mask(np.stack(list(refs.values())))
    names = channel_targets(dataset_json)
    out: dict[str, float] = {}
    for c, f in sorted(pred_files.items()):
        if c not in refs:
            continue
        pred = read_on_grid(f, grid, first)[0]
        out.update(translation_metrics(pred, refs[c], mask, [names[c]]))
    return out


def _case_job(pair: tuple[dict[int, Path], dict[int, Path]], dataset_json: DatasetJson) -> dict[str, float]:
    return evaluate_translation_case(pair[0], pair[1], dataset_json)


def evaluate_translation_folder(ref_dir: str | Path, pred_dir: str | Path,
                                dataset_json: DatasetJson | str | Path | int,
                                num_processes: int = 1) -> pd.DataFrame:
    """Per-case table (index ``case``, columns ``"<metric>/<channel name>"``) of ``pred_dir/CASE_XXXX``
    against ``ref_dir/CASE_XXXX``; columns only for channels predicted in at least one case.
    ``attrs["not_scored"]``: the predicted files without a reference (allowed with missing channels)."""
    dj = resolve_dataset_json(dataset_json)
    ref_dir, pred_dir = check_folder(ref_dir, "reference"), check_folder(pred_dir, "prediction")
    ref, pred = list_channel_files(ref_dir, dj), list_channel_files(pred_dir, dj)
    cases = match_cases(ref, pred, ref_dir, pred_dir, f"CASE_XXXX{dj.file_ending}")
    check_grids([[*ref[c].values(), *pred[c].values()] for c in cases])
    rows = run_cases(functools.partial(_case_job, dataset_json=dj), [(ref[c], pred[c]) for c in cases],
                     num_processes, "evaluate translate")
    names = channel_targets(dj)
    predicted = sorted({ch for c in cases for ch in pred[c]})
    columns = [f"{m}/{names[ch]}" for m in IMAGE_METRICS for ch in predicted]
    table = pd.DataFrame(rows, index=pd.Index(cases, name="case"), columns=columns)
    table.attrs["not_scored"] = [pred[c][ch].name for c in cases for ch in sorted(pred[c]) if ch not in ref[c]]
    if table.attrs["not_scored"]:
        shown = table.attrs["not_scored"]
        log.warning("%d predicted channel(s) not scored: no reference image (allow_missing_channels): %s",
                    len(shown), ", ".join(shown[:8]) + (f" (+{len(shown) - 8} more)" if len(shown) > 8 else ""))
    return table
