"""Bring every channel and the label of a case onto the grid of one channel (``--resample_to CHANNEL``).

Physical space is the truth: each file is sampled with SimpleITK at the physical voxel centres of the
reference grid (the named channel's image, which is written unchanged; so is any file already on that grid).
Choices, measured on the 16 real PET/CT subjects of ``../shared/data/sts_pet_ct`` (CT 0.98 mm and PET
3.9-5.5 mm in-plane; numbers in docs/measurements_history.md, "PET/CT on different grids"):

- images: linear. Where the reference grid is coarser along an axis, a Gaussian of sigma = (reference - own
  spacing) / 2 mm smooths that axis first (anti-aliasing, skimage's ``resize`` rule): CT onto the PET grid then
  differs from the exact mean of CT over each PET voxel by 44 HU RMS instead of 77 HU. Cubic B-spline gives the
  same 43 HU after smoothing, but onto a finer grid it overshoots: PET on the CT grid had SUVmax +3 % (up to
  +14 %) and negative SUV; linear never exceeds the source's range (SUVmax, the -1000 HU floor).
- labels (and ``--mask``): linear per class (``sitkLabelLinear``, nnU-Net's label resampling). The CT mask on
  the PET grid matched the PET mask with Dice 0.974 on average (nearest neighbour: 0.970).
- outside a channel's field of view: :data:`~pirl_pipeline.data.modalities.OUTSIDE_VALUE`, a per-modality value: CT -1000 HU (air; not the image
  minimum, which is -1024 or -3024 where scanners mark voxels outside their reconstruction), PET 0 SUV, MRI 0
  (its background).

Axes stored the other way round (a series stored feet-first: a direction cosine of -1 where the reference has
1) are resampled like any other grid: sampling is in physical space.

Refused with a PirlInputError naming the file (nothing is written): axes that are rotated or permuted against
the reference's (absolute direction cosines that differ by more than ``image_io.DIRECTION_TOLERANCE``, the grid
check's rounding tolerance: a header to fix, not a grid to interpolate); a channel that covers less than
:data:`MIN_COVERAGE` of the reference grid, a label map that does not overlap it at all; a label class that
vanishes on the grid, or whose physical volume changes by more than :data:`LABEL_VOLUME_TOLERANCE` and by more
than :data:`LABEL_VOLUME_FLOOR_VOXELS` voxels of the coarser of the two grids (cut off by the field of view, or too
small for the grid; measured: at most 1.5 % onto the PET grid, 3.1 % onto the CT grid). The floor keeps lesions of
a few PET voxels (autoPET) convertible either way: onto the CT grid, label-linear sampling shrinks a lesion of one
PET voxel from 48 to 11 mm³ and one of 2 x 2 x 1 from 192 to 144 mm³ (2 CT voxels, 3 mm³, would refuse both); a
change above the tolerance within the floor is logged as a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pirl_pipeline.data.image_io import DIRECTION_TOLERANCE, Geometry
from pirl_pipeline.data.integrity import check_same_grid
from pirl_pipeline.data.modalities import OUTSIDE_VALUE
from pirl_pipeline.errors import PirlInputError

log = logging.getLogger(__name__)
MIN_COVERAGE = 0.5
LABEL_VOLUME_TOLERANCE = 0.10
LABEL_VOLUME_FLOOR_VOXELS = 2  # a label volume change up to 2 voxels of the coarser grid is never refused
METHOD = {
    "images": "linear; Gaussian anti-aliasing (sigma = (reference - own spacing) / 2 mm) along axes where the "
              "reference grid is coarser",
    "labels": "linear per class (SimpleITK sitkLabelLinear)",
    "padding": dict(OUTSIDE_VALUE),
    "refused": {"direction_tolerance": DIRECTION_TOLERANCE, "min_coverage": MIN_COVERAGE,
                "label_volume_tolerance": LABEL_VOLUME_TOLERANCE,
                "label_volume_floor_voxels": LABEL_VOLUME_FLOOR_VOXELS},
}


def describe(geometry: Geometry) -> str:
    """``161x143x48 at 0.98x0.98x3.27 mm`` (x, y, z)."""
    size, spacing = "x".join(map(str, geometry.sitk_size)), "x".join(f"{s:.3g}" for s in geometry.sitk_spacing)
    return f"{size} at {spacing} mm"


def coverage(image: sitk.Image, reference: sitk.Image) -> float:
    """The fraction of the reference grid's box (voxel edges) that ``image``'s box covers, 0..1; the directions
    must agree up to flipped axes (:meth:`OntoGrid.check`), so ``image``'s box is axis-aligned in reference index
    space (a flipped axis swaps the two corners' order along it: min and max below)."""
    corners = [image.TransformContinuousIndexToPhysicalPoint(c)
               for c in ([-0.5] * 3, [s - 0.5 for s in image.GetSize()])]
    ends = np.array([reference.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    lo, hi = np.maximum(ends.min(0), -0.5), np.minimum(ends.max(0), np.array(reference.GetSize()) - 0.5)
    return float(np.prod(np.clip(hi - lo, 0, None)) / np.prod(reference.GetSize()))


def antialias_sigma(spacing: tuple[float, ...], reference_spacing: tuple[float, ...]) -> list[float]:
    """Per axis (x, y, z) the Gaussian sigma in mm before sampling onto a coarser grid; 0 where it is not coarser."""
    return [max(0.0, (t - s) / 2) for s, t in zip(spacing, reference_spacing, strict=True)]


class OntoGrid:
    """Puts the files of one case on the grid of ``reference`` (read from ``reference_path``).

    ``resample=False``: every file must already lie on that grid (the converters' default check).
    ``resample=True``: files on another grid are resampled, and each resampling is described in ``record``
    (``{"grid": ..., "resampled": [{"file", "as", "geometry", ...}, ...]}``) and ``log_lines``.
    """

    def __init__(self, reference: sitk.Image, reference_path: Path, resample: bool, grid_name: str = "") -> None:
        self.reference, self.reference_path, self.resample = reference, Path(reference_path), resample
        self.geometry = Geometry.of(reference)
        self.grid_name = grid_name or self.reference_path.name
        self.record: dict = {"grid": {"channel": grid_name, "file": str(Path(reference_path).absolute()),
                                      "geometry": self.geometry.to_dict()}, "resampled": []}
        self.log_lines: list[str] = []

    def _needs_resampling(self, geometry: Geometry, path: Path) -> bool:
        if not self.resample:
            check_same_grid(self.geometry, self.reference_path, geometry, path)
            return False
        return self.geometry.matches(geometry) is not None

    def check(self, image: sitk.Image, path: Path, minimum: float = MIN_COVERAGE) -> float:
        """Refuse what cannot be resampled honestly (module docstring); returns the coverage. A label map needs
        only some overlap (``minimum`` 0): its volume check is stricter."""
        # a flipped axis (cosine -1 for 1) is sampled in physical space like any grid; a rotation is refused
        turn = float(np.abs(np.abs(image.GetDirection()) - np.abs(self.reference.GetDirection())).max())
        if turn > DIRECTION_TOLERANCE:
            raise PirlInputError(f"{path}: direction cosines differ from those of {self.reference_path.name} by "
                                 f"{turn:.3g} beyond a flipped axis (> {DIRECTION_TOLERANCE}, more than rounding: a "
                                 "rotated or permuted axis); fix the header, pirl does not rotate images")
        covered = coverage(image, self.reference)
        if covered == 0:
            raise PirlInputError(f"{path}: does not overlap {self.reference_path.name} in physical space "
                                 f"(origin {np.round(image.GetOrigin(), 1).tolist()} mm vs "
                                 f"{np.round(self.reference.GetOrigin(), 1).tolist()} mm)")
        if covered < minimum:
            raise PirlInputError(f"{path}: covers only {covered:.0%} of the grid of {self.reference_path.name} "
                                 f"(at least {minimum:.0%} needed; another patient or a wrong origin?)")
        return covered

    def image(self, image: sitk.Image, path: Path, kind: str, role: str) -> np.ndarray:
        """(z, y, x) array of ``image`` on the grid: as stored when already on it, else float32 resampled
        (linear, anti-aliased) with ``OUTSIDE_VALUE[kind]`` outside its field of view."""
        geometry = Geometry.of(image)
        if not self._needs_resampling(geometry, path):
            return sitk.GetArrayFromImage(image)
        covered = self.check(image, path)
        sigma = antialias_sigma(image.GetSpacing(), self.reference.GetSpacing())
        work = sitk.Cast(image, sitk.sitkFloat32)
        if any(sigma):
            work = sitk.DiscreteGaussian(work, [s * s for s in sigma], 64, 0.01, True)
        pad = OUTSIDE_VALUE[kind]
        out = sitk.Resample(work, self.reference, sitk.Transform(), sitk.sitkLinear, pad, sitk.sitkFloat32)
        self._note(path, role, geometry, {"interpolator": "linear", "antialias_sigma_mm": sigma,
                                          "padding": pad, "coverage": round(covered, 4)},
                   f"{covered:.1%} covered, {pad:g} outside")
        return sitk.GetArrayFromImage(out)

    def label(self, label: np.ndarray, geometry: Geometry, path: Path, role: str = "label") -> np.ndarray:
        """(z, y, x) integer ``label`` (on ``geometry``) on the grid: unchanged when already on it, else linear per
        class; a foreground class that vanishes, or whose physical volume changes by more than
        LABEL_VOLUME_TOLERANCE and more than LABEL_VOLUME_FLOOR_VOXELS voxels of the coarser grid, is refused."""
        if not self._needs_resampling(geometry, path):
            return label
        image = geometry.apply_to(sitk.GetImageFromArray(label))
        covered = self.check(image, path, minimum=0)
        out = sitk.GetArrayFromImage(sitk.Resample(image, self.reference, sitk.Transform(), sitk.sitkLabelLinear))
        voxel, reference_voxel = np.prod(geometry.sitk_spacing), np.prod(self.geometry.sitk_spacing)
        floor = LABEL_VOLUME_FLOOR_VOXELS * max(voxel, reference_voxel)  # mm³
        volumes = {}
        for value in (int(v) for v in np.unique(label) if v != 0):
            before, after = (np.count_nonzero(label == value) * voxel,
                             np.count_nonzero(out == value) * reference_voxel)
            volumes[str(value)] = [round(float(before), 1), round(float(after), 1)]
            if after == 0 or abs(after - before) > max(LABEL_VOLUME_TOLERANCE * before, floor):
                raise PirlInputError(f"{path}: label {value} would change volume by {after / before - 1:+.1%} on the "
                                     f"grid of {self.reference_path.name} ({before:.0f} -> {after:.0f} mm³; at most "
                                     f"±{LABEL_VOLUME_TOLERANCE:.0%} or {LABEL_VOLUME_FLOOR_VOXELS} voxels of the "
                                     f"coarser grid, {floor:.0f} mm³, and never to nothing): cut off by that grid's "
                                     "field of view, or too small for it (resample onto a finer channel)")
            if abs(after - before) > LABEL_VOLUME_TOLERANCE * before:
                log.warning("%s: label %d changes volume by %+.1f%% on the grid of %s (%.0f -> %.0f mm³): more than "
                            "±%.0f%%, but within %d voxels of the coarser grid (a small structure); check it", path,
                            value, 100 * (after / before - 1), self.reference_path.name, before, after,
                            100 * LABEL_VOLUME_TOLERANCE, LABEL_VOLUME_FLOOR_VOXELS)
        change = ", ".join(f"label {v}: {b:.0f} -> {a:.0f} mm³ ({a / b - 1:+.1%})" for v, (b, a) in volumes.items())
        self._note(path, role, geometry, {"interpolator": "label linear", "coverage": round(covered, 4),
                                          "volume_mm3": volumes}, change or "empty")
        return out.astype(label.dtype, copy=False)

    def _note(self, path: Path, role: str, geometry: Geometry, details: dict, summary: str) -> None:
        self.record["resampled"].append({"file": str(path.absolute()), "as": role, "geometry": geometry.to_dict(),
                                         **details})
        self.log_lines.append(f"{role} {path.name} resampled onto the {self.grid_name} grid: {describe(geometry)} -> "
                              f"{describe(self.geometry)}; {summary}")
