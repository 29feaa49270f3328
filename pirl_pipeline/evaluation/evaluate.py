"""Shared plumbing of folder evaluation: dataset.json resolution, case listing and matching, reading with
grid checks, mean/std summaries and the atomic ``summary.json`` + ``summary.csv`` writer.

Metric tables are pandas DataFrames indexed by case with flat columns ``"<metric>/<target>"`` (e.g.
``"Dice/whole tumor"``, ``"LesionHD95/whole tumor"``, ``"PSNR/T2"``, ``"PSNR_raw/T2"``); ``summary.json``
nests them as ``{target: {metric: value}}`` and explains every metric name in ``metric_conventions``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pirl_pipeline.data.dataset_json import DatasetJson, group_channel_files, load_dataset_json
from pirl_pipeline.data.image_io import Geometry, check_3d, read_image
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.evaluation.metrics import CONVENTIONS
from pirl_pipeline.file_io import atomic_path, json_bytes, size_is
from pirl_pipeline.parallel import parallel_map
from pirl_pipeline.paths import find_dataset_name, raw_root

T = TypeVar("T")


def resolve_dataset_json(dataset_json: DatasetJson | str | Path | int) -> DatasetJson:
    """A DatasetJson, a dataset.json file or its folder, or a dataset id/name looked up in $PIRL_raw."""
    if isinstance(dataset_json, DatasetJson):
        return dataset_json
    if isinstance(dataset_json, int) or re.fullmatch(r"\d+|Dataset\d{3}_.+", str(dataset_json)):
        return load_dataset_json(raw_root() / find_dataset_name(dataset_json))
    path = Path(dataset_json)
    if path.is_file():
        if path.name != "dataset.json":
            raise PirlInputError(f"{path}: expected a file named dataset.json (or its folder)")
        path = path.parent
    return load_dataset_json(path)


def check_folder(folder: str | Path, role: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise PirlInputError(f"{folder}: {role} folder not found")
    return folder


def list_channel_files(folder: Path, dj: DatasetJson) -> dict[str, dict[int, Path]]:
    """``{case: {channel: path}}`` for every ``CASE_XXXX<ending>`` file; other files are ignored."""
    return group_channel_files(folder, dj, strict=False)


def _some(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def match_cases(ref: dict, pred: dict, ref_dir: Path, pred_dir: Path, pattern: str) -> list[str]:
    """Sorted common case names; an error naming the cases missing on either side when the sets differ."""
    if not ref:
        raise PirlInputError(f"{ref_dir}: no reference files (expected {pattern})")
    if not pred:
        raise PirlInputError(f"{pred_dir}: no prediction files (expected {pattern})")
    no_pred = sorted(set(ref) - set(pred))
    no_ref = sorted(set(pred) - set(ref))
    if no_pred or no_ref:
        parts = ([f"{len(no_pred)} reference case(s) have no prediction in {pred_dir}: {_some(no_pred)}"]
                 if no_pred else [])
        parts += ([f"{len(no_ref)} predicted case(s) have no reference in {ref_dir}: {_some(no_ref)}"]
                  if no_ref else [])
        raise PirlInputError("case sets differ: " + "; ".join(parts))
    return sorted(ref)


def read_on_grid(path: Path, grid: Geometry | None, grid_file: Path | None = None) -> tuple[np.ndarray, Geometry]:
    """Read ``path`` as a (z, y, x) array; when ``grid`` is given the image must lie on it (else an error)."""
    image = read_image(path)
    geometry = Geometry.of(image)
    if grid is not None:
        diff = grid.matches(geometry)
        if diff is not None:
            raise PirlInputError(f"{path}: not on the grid of {grid_file} ({diff})")
    return sitk.GetArrayFromImage(image), geometry


def read_geometry(path: Path) -> Geometry:
    """The grid of an image from its header only (fast: no voxel data is read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        read_image(path)  # raises the standard one-line error naming the file
        raise
    check_3d(path, reader.GetDimension(), reader.GetNumberOfComponents())
    return Geometry(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def check_grids(groups: list[list[Path]]) -> None:
    """Fail fast, before any voxel is read: every file of a group must lie on the grid of its first file."""
    for files in groups:
        grid = read_geometry(files[0])
        for f in files[1:]:
            diff = grid.matches(read_geometry(f))
            if diff is not None:
                raise PirlInputError(f"{f}: not on the grid of {files[0]} ({diff})")


def run_cases(fn: Callable[[T], dict[str, float]], items: list[T], num_processes: int,
              desc: str) -> list[dict[str, float]]:
    """parallel_map that re-raises a worker's PirlInputError only after the progress bar is gone (the
    original traceback keeps the bar alive, which would print it again after the CLI's error line)."""
    message = None
    try:
        return parallel_map(fn, items, num_processes, desc)
    except PirlInputError as err:
        message = str(err)
    raise PirlInputError(message)


def _jsonable(x: float) -> float | str | None:
    x = float(x)
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def nest(row: pd.Series) -> dict[str, dict[str, float | str | None]]:
    """``{"<metric>/<target>": v}`` -> ``{target: {metric: v}}`` (targets in column order)."""
    out: dict[str, dict] = {}
    for column, value in row.items():
        metric, target = str(column).split("/", 1)
        out.setdefault(target, {})[metric] = _jsonable(value)
    return out


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ``mean``, ``std`` (ddof=1) and ``count`` over cases, NaN skipped (inf kept: mean is then inf)."""
    numeric = table.astype(float)
    return pd.DataFrame({"mean": numeric.mean(skipna=True), "std": numeric.std(skipna=True, ddof=1),
                         "count": numeric.count()}).T


def mean_table(table: pd.DataFrame, stat: str = "mean") -> pd.DataFrame:
    """One statistic (mean/std/count) of a per-case table as targets x metrics, e.g. rows "whole tumor",
    columns "Dice", "TPR", ..."""
    out: dict[str, dict[str, float]] = {}
    for column, value in summarize(table).loc[stat].items():
        metric, target = str(column).split("/", 1)
        out.setdefault(target, {})[metric] = value
    return pd.DataFrame.from_dict(out, orient="index")


def check_output(output: str | Path | None, ref_dir: Path, pred_dir: Path) -> Path:
    """The summary.json path: default PRED_DIR/summary.json; a folder gets summary.json; never in REF_DIR."""
    path = pred_dir / "summary.json" if output is None else Path(output)
    if path.is_dir():
        path = path / "summary.json"
    if path.suffix != ".json":
        raise PirlInputError(f"{path}: the output must be a .json file (summary.csv is written beside it)")
    resolved, ref = path.resolve(), ref_dir.resolve()
    if resolved == ref or ref in resolved.parents:
        raise PirlInputError(f"{path}: output inside the reference folder {ref_dir}; choose another -o")
    return path


def write_summary(table: pd.DataFrame, path: Path, info: dict) -> None:
    """``path`` (summary.json: info, conventions, mean/std/count, per case) and ``path.csv`` (per-case rows);
    ``info["metric_conventions"]`` (an option's metrics) joins the standard :data:`CONVENTIONS`."""
    stats = summarize(table)
    conventions = {**CONVENTIONS, **info.get("metric_conventions", {})}  # an option's metrics explained too
    summary = {**info, "num_cases": len(table), "metric_conventions": conventions,
               "mean": nest(stats.loc["mean"]), "std": nest(stats.loc["std"]),
               "count": {t: {m: int(v) for m, v in d.items()} for t, d in nest(stats.loc["count"]).items()},
               "per_case": [{"case": str(case), "metrics": nest(row)} for case, row in table.iterrows()]}
    data = json_bytes(summary)
    # both written before either is renamed: a full disk leaves neither (nor a stale pair of mixed runs)
    with atomic_path(path.with_suffix(".csv")) as csv_tmp, atomic_path(path, size_is(len(data))) as json_tmp:
        table.to_csv(csv_tmp, index_label="case")
        json_tmp.write_bytes(data)
