"""Reading and writing images with SimpleITK.

Arrays are numpy order (z, y, x) as SimpleITK returns them; ``spacing`` in the returned geometry is in the
same (z, y, x) order, while ``sitk_*`` fields keep SimpleITK's (x, y, z) order for exact restoration.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path


@dataclass(frozen=True)
class Geometry:
    """Where an image lies in physical space (SimpleITK order: x, y, z)."""

    sitk_size: tuple[int, ...]
    sitk_spacing: tuple[float, ...]
    sitk_origin: tuple[float, ...]
    sitk_direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Spacing in numpy (z, y, x) order."""
        return tuple(reversed(self.sitk_spacing))

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in numpy (z, y, x) order."""
        return tuple(reversed(self.sitk_size))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(*(tuple(d[k]) for k in ("sitk_size", "sitk_spacing", "sitk_origin", "sitk_direction")))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.sitk_spacing)
        image.SetOrigin(self.sitk_origin)
        image.SetDirection(self.sitk_direction)
        return image

    def matches(self, other: Geometry, tol: float = 1e-4) -> str | None:
        """None when both grids agree within ``tol``; otherwise a short description of the first difference."""
        if self.sitk_size != other.sitk_size:
            return f"size {self.sitk_size} != {other.sitk_size}"
        for name in ("sitk_spacing", "sitk_origin", "sitk_direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = 1.0 if name == "sitk_direction" else max(1.0, float(np.abs(a).max(initial=0)))
            if not np.allclose(a, b, atol=tol * scale * 10, rtol=0):
                return f"{name[5:]} {tuple(np.round(a, 4))} != {tuple(np.round(b, 4))}"
        return None


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one image; an unreadable or non-3D file raises PirlInputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PirlInputError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [ln.replace("sitk::ERROR:", "").strip() for ln in str(err).splitlines() if "ERROR" in ln]
        reason = lines[-1].replace(f'"{path}"', "this file") if lines else "unknown reader error"
        raise PirlInputError(f"{path}: not a readable image ({reason[:160]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PirlInputError(f"{path}: expected a 3D single-component image, got "
                             f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
    return image


def read_array(path: str | os.PathLike, dtype=np.float32) -> tuple[np.ndarray, Geometry]:
    image = read_image(path)
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False), Geometry.of(image)


def write_array(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a (z, y, x) array with the given geometry, atomically."""
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
