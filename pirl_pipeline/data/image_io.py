"""Reading and writing images with SimpleITK.

Arrays are numpy order (z, y, x) as SimpleITK returns them; ``spacing`` in the returned geometry is in the
same (z, y, x) order, while ``sitk_*`` fields keep SimpleITK's (x, y, z) order for exact restoration.
SimpleITK zero-fills a truncated NIfTI without a word, so :func:`data_problem` checks every image read and
written: a gzip stream must be complete (CRC and length), a NIfTI as long as its header says.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import atomic_path

NIFTI_ENDINGS = (".nii", ".nii.gz")
_CHUNK = 1 << 22


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
                return f"{name[5:]} {_rounded(a)} != {_rounded(b)}"
        return None


def _rounded(values: np.ndarray) -> str:
    """``(4.0, 1.0, 1.0)``, not ``(np.float64(4.0), ...)``."""
    return "(" + ", ".join(f"{round(float(v), 4):g}" for v in values) + ")"


def _nifti_data_end(head: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/2 needs (header offset + voxel data), from its first 544 bytes; None
    when ``head`` is not such a header."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix, offset = struct.unpack(order + "h", head[72:74])[0], struct.unpack(order + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix, offset = struct.unpack(order + "h", head[14:16])[0], struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        return int(offset) + int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * bitpix // 8
    return None


def data_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the stored voxel data of ``path`` (a damaged gzip stream, a NIfTI shorter than its
    header says), or None. Decompresses the whole stream once: gzip checks its CRC and length at the end."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = f.read(544)
                size = len(head)
                while chunk := f.read(_CHUNK):
                    size += len(chunk)
        else:
            with open(path, "rb") as f:
                head = f.read(544)
            size = path.stat().st_size
    except EOFError:
        return "truncated gzip stream: the file ends before its data does"
    except (gzip.BadGzipFile, zlib.error) as err:
        return f"damaged gzip stream ({err})"
    expected = _nifti_data_end(head) if name.endswith(NIFTI_ENDINGS) else None
    if expected is not None and size < expected:
        return f"truncated: {size} of {expected} {'uncompressed ' if name.endswith('.gz') else ''}bytes"
    return None


def check_3d(path: Path, dimension: int, components: int) -> None:
    if dimension != 3 or components != 1:
        raise PirlInputError(f"{path}: expected a 3D single-component image, got {dimension}D with "
                             f"{components} components")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one image; an unreadable or non-3D file raises PirlInputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PirlInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PirlInputError(f"{path}: empty file (0 bytes)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [ln.replace("sitk::ERROR:", "").strip() for ln in str(err).splitlines() if "ERROR" in ln]
        reason = lines[-1].replace(f'"{path}"', "this file") if lines else "unknown reader error"
        raise PirlInputError(f"{path}: not a readable image ({reason[:160]})") from None
    check_3d(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
    problem = data_problem(path)
    if problem:
        raise PirlInputError(f"{path}: {problem}")
    return image


def read_array(path: str | os.PathLike, dtype=np.float32) -> tuple[np.ndarray, Geometry]:
    image = read_image(path)
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False), Geometry.of(image)


def _written_problem(tmp: Path) -> str | None:
    """The check of a written image: :func:`data_problem` for NIfTI; a full re-read for other formats (their
    ITK readers raise on short data)."""
    if tmp.name.lower().endswith(NIFTI_ENDINGS):
        return data_problem(tmp)
    try:
        sitk.ReadImage(str(tmp))
    except RuntimeError as err:
        return f"unreadable after writing ({str(err).strip().splitlines()[-1][:120]})"
    return None


def write_array(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a (z, y, x) array with the given geometry, atomically and verified (see ``file_io``)."""
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path, _written_problem) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise OSError(f"SimpleITK: {str(err).strip().splitlines()[-1][:160]}") from None
