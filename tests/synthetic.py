"""Tiny raw datasets written by the tests themselves (so the suite runs without shared data)."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MRI4 = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}


def ellipsoid(shape, center, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def write_image(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    """Write a (z, y, x) array; ``spacing``/``origin``/``direction`` in SimpleITK (x, y, z) order."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def make_case(shape=(24, 28, 26), seed=0, num_channels=4) -> tuple[np.ndarray, np.ndarray]:
    """A 'head' with a zero background and a two-class 'tumour'; returns (C, z, y, x) float32, (z, y, x) uint8."""
    rng = np.random.default_rng(seed)
    center = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    head = ellipsoid(shape, center, np.array(shape) * 0.38)
    tumour_center = center + rng.uniform(-2, 2, 3)
    core = ellipsoid(shape, tumour_center, (2.5, 2.5, 2.5))
    edema = ellipsoid(shape, tumour_center, (5, 5, 5)) & ~core
    label = np.zeros(shape, np.uint8)
    label[edema & head] = 2
    label[core & head] = 1
    data = np.zeros((num_channels, *shape), np.float32)
    for c in range(num_channels):
        data[c][head] = 100 + 50 * c + 10 * rng.standard_normal(int(head.sum()))
        data[c][label == 1] += 60 * (c + 1)
        data[c][label == 2] -= 20
    return data, label


def write_raw_dataset(raw_root: Path, dataset_id: int = 901, name: str = "Synthetic", num_cases: int = 3,
                      shape=(24, 28, 26), spacing=(1.0, 1.0, 1.0), channels: dict | None = None,
                      with_labels: bool = True, file_ending: str = ".nii.gz") -> Path:
    channels = channels or MRI4
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for i in range(num_cases):
        data, label = make_case(shape, seed=i, num_channels=len(channels))
        case = f"case{i:03d}"
        for c in range(len(channels)):
            write_image(data[c], folder / "imagesTr" / f"{case}_{c:04d}{file_ending}", spacing)
        if with_labels:
            write_image(label, folder / "labelsTr" / f"{case}{file_ending}", spacing)
    labels = {"background": 0, "core": 1, "edema": 2} if with_labels else {"background": 0}
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": channels, "labels": labels, "numTraining": num_cases, "file_ending": file_ending}))
    return folder


@contextlib.contextmanager
def pirl_roots(root: Path) -> Iterator[dict[str, str]]:
    """PIRL_raw / PIRL_preprocessed / PIRL_results under ``root`` (raw, pre, res) for a block, e.g. inside a
    module-scoped fixture, where ``monkeypatch`` is not available; yields the variables."""
    env = {"PIRL_raw": str(root / "raw"), "PIRL_preprocessed": str(root / "pre"), "PIRL_results": str(root / "res")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
