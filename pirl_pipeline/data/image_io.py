"""Reading and writing images with SimpleITK.

Arrays are numpy order (z, y, x) as SimpleITK returns them; ``spacing`` in the returned geometry is in the
same (z, y, x) order, while ``sitk_*`` fields keep SimpleITK's (x, y, z) order for exact restoration.
SimpleITK zero-fills a truncated NIfTI without a word, so :func:`data_problem` checks every image read and
written: a gzip stream must be complete (CRC and length), a NIfTI as long as its header says. A NIfTI file is
checked before ITK reads it (:class:`NiftiHeader`, parsed here): every size >= 1, every voxel size finite and
non-zero (ITK reads 0 as 1 mm whatever the sform says), and ``vox_offset`` + voxels x bytes per voxel (of the
datatype) within the file's size, uncompressed (the gzip stream is decompressed once, counting bytes, 4 MiB at a
time), so a header claiming 1000^3 voxels in a small file never makes ITK allocate them.
"""
from __future__ import annotations

import gzip
import math
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
_HEAD = 544  # bytes of a NIfTI-2 header (NIfTI-1: 348) and its extension flag
# NIfTI datatype code -> bytes per voxel (ITK sizes voxels by the datatype, not by bitpix)
# the largest difference of two direction cosines that is rounding (a float32 header), not a rotation: one
# grid tolerance for Geometry.matches and for --resample_to's direction check
DIRECTION_TOLERANCE = 1e-3
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}


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
        """None when both grids agree (spacing and origin within ``10 * tol`` relative to their largest value, at
        least 1 mm; direction cosines within DIRECTION_TOLERANCE); otherwise a short description of the first
        difference."""
        if self.sitk_size != other.sitk_size:
            return f"size {self.sitk_size} != {other.sitk_size}"
        for name in ("sitk_spacing", "sitk_origin", "sitk_direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = max(1.0, float(np.abs(a).max(initial=0)))
            atol = DIRECTION_TOLERANCE if name == "sitk_direction" else tol * scale * 10
            if not np.allclose(a, b, atol=atol, rtol=0):
                return f"{name[5:]} {_rounded(a)} != {_rounded(b)}"
        return None


def _rounded(values: np.ndarray) -> str:
    """``(4.0, 1.0, 1.0)``, not ``(np.float64(4.0), ...)``."""
    return "(" + ", ".join(f"{round(float(v), 4):g}" for v in values) + ")"


@dataclass(frozen=True)
class NiftiHeader:
    """What pirl checks of a single-file NIfTI-1/2 header: sizes ``dim[1..dim[0]]``, voxel sizes ``pixdim`` (the
    same axes), bytes per voxel (None: unknown datatype) and ``vox_offset``."""

    dims: tuple[int, ...]
    pixdim: tuple[float, ...]
    bytes_per_voxel: float | None
    vox_offset: float

    @classmethod
    def parse(cls, head: bytes) -> NiftiHeader | None:
        """The header in the first bytes of a file (decompressed); None when they are not a NIfTI-1/2 header."""
        for order in "<>":
            if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
                dims = struct.unpack(order + "8h", head[40:56])
                datatype, bitpix = struct.unpack(order + "2h", head[70:74])
                pixdim, offset = struct.unpack(order + "8f", head[76:108]), struct.unpack(order + "f", head[108:112])[0]
            elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
                datatype, bitpix = struct.unpack(order + "2h", head[12:16])
                dims = struct.unpack(order + "8q", head[16:80])
                pixdim, offset = struct.unpack(order + "8d", head[104:168]), struct.unpack(order + "q", head[168:176])[0]
            else:
                continue
            if not 1 <= dims[0] <= 7:
                return None
            size = _NIFTI_BYTES.get(datatype, bitpix / 8 if bitpix > 0 else None)
            return cls(tuple(dims[1:dims[0] + 1]), tuple(pixdim[1:dims[0] + 1]), size, float(offset))
        return None

    def problem(self) -> str | None:
        """A header ITK would misread or that claims absurd sizes: a size < 1, a spatial voxel size 0 or not
        finite, a vox_offset < 0 or not finite; None when none."""
        if min(self.dims) < 1:
            return f"NIfTI header dim {list(self.dims)}: every size must be >= 1"
        spacing = self.pixdim[:3]
        if not all(math.isfinite(v) and v != 0 for v in spacing):
            return (f"NIfTI header pixdim {[float(v) for v in spacing]}: a voxel size of 0 or NaN/Inf (ITK would "
                    "read it as 1 mm, whatever the sform says); write the voxel size into pixdim")
        if not (math.isfinite(self.vox_offset) and self.vox_offset >= 0):
            return f"NIfTI header vox_offset {self.vox_offset}: must be a byte offset >= 0"
        return None

    @property
    def data_end(self) -> int | None:
        """Bytes the file needs: header offset + voxel data (None when the datatype is unknown)."""
        if self.bytes_per_voxel is None or self.problem():
            return None
        return int(self.vox_offset) + math.ceil(math.prod(self.dims) * self.bytes_per_voxel)


def _nifti_header(path: Path) -> NiftiHeader | None:
    """The NIfTI header of ``path`` (a ``.nii``/``.nii.gz`` file); None when it has none or cannot be read (the
    reader then reports the file)."""
    if not path.name.lower().endswith(NIFTI_ENDINGS):
        return None
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
            return NiftiHeader.parse(f.read(_HEAD))
    except (OSError, EOFError, zlib.error):
        return None


def data_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the stored voxel data of ``path`` (a damaged gzip stream, a NIfTI shorter than its
    header says), or None. Decompresses the whole stream once: gzip checks its CRC and length at the end."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = f.read(_HEAD)
                size = len(head)
                while chunk := f.read(_CHUNK):
                    size += len(chunk)
        else:
            with open(path, "rb") as f:
                head = f.read(_HEAD)
            size = path.stat().st_size
    except EOFError:
        return "truncated gzip stream: the file ends before its data does"
    except (gzip.BadGzipFile, zlib.error) as err:
        return f"damaged gzip stream ({err})"
    header = NiftiHeader.parse(head) if name.endswith(NIFTI_ENDINGS) else None
    expected = header.data_end if header is not None else None
    if expected is not None and size < expected:
        return f"truncated: {size} of {expected} {'uncompressed ' if name.endswith('.gz') else ''}bytes"
    return None


def check_3d(path: Path, dimension: int, components: int) -> None:
    if dimension != 3 or components != 1:
        raise PirlInputError(f"{path}: expected a 3D single-component image, got {dimension}D with "
                             f"{components} components")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one image; an unreadable, damaged or non-3D file raises PirlInputError naming it. A NIfTI file's
    header and length are checked before ITK reads it (module docstring), other files' streams after."""
    path = Path(path)
    if not path.is_file():
        raise PirlInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PirlInputError(f"{path}: empty file (0 bytes)")
    header = _nifti_header(path)
    if header is not None and (problem := header.problem() or data_problem(path)):
        raise PirlInputError(f"{path}: {problem}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [ln.replace("sitk::ERROR:", "").strip() for ln in str(err).splitlines() if "ERROR" in ln]
        reason = lines[-1].replace(f'"{path}"', "this file") if lines else "unknown reader error"
        raise PirlInputError(f"{path}: not a readable image ({reason[:160]})") from None
    check_3d(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
    if header is None and (problem := data_problem(path)):
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
