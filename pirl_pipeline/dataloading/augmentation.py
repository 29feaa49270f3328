"""Training augmentation: a dataclass of settings, and the batchgeneratorsv2 transforms built from it.

The pipeline follows nnU-Net v2's default transforms (spatial, mirroring, then noise -> blur -> brightness ->
contrast -> low resolution -> inverted gamma -> gamma), applied per sample on ``{"image": (C, *S) float32,
"segmentation": (1, *S) int8 or int16}`` tensors (the dtype ``CASE_seg.npy`` is stored in). Intensity transforms draw their parameters per channel (each modality
gets its own brightness/contrast/gamma); no channel is ever dropped. Mirroring runs before the intensity
transforms (nnU-Net: after; the distribution of samples is the same) so that ``clean_targets`` can keep the
patch with the geometric transforms only: image targets (decomposition, translation) must not contain random
intensity perturbations the network cannot see in its input modality.

Spatial augmentation (instead of nnU-Net's fixed, worst-case *initial patch*): :class:`PatchAugmenter` draws
the spatial parameters first, in the frame of the chosen (unaugmented) patch; a sample that gets no spatial
transform (most samples with nnU-Net's probabilities) is a plain crop, and otherwise only the bounding box
of the voxels the rotated / scaled / deformed sampling grid reaches is read from the memory map, and the
SpatialTransform resamples the patch from it. Rotation and scaling are about the patch centre, so a
foreground voxel at the centre of an oversampled patch stays there. Seg is resampled with ``seg_mode``
("nearest" by default, or batchgeneratorsv2's label-wise "bilinear" argmax); both only produce labels present
in the input, and the value -1 (outside the body mask) is kept, also where the grid leaves the image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from pirl_pipeline.data.dataset_json import OUTSIDE_BODY
from pirl_pipeline.dataloading.sampling import crop_image, crop_padded
from pirl_pipeline.errors import PirlInputError

IMAGE_PAD = 0.0
SEG_PAD = OUTSIDE_BODY


@dataclass
class AugmentationConfig:
    """Augmentation settings (defaults: nnU-Net v2's 3D training augmentation). Probabilities are per sample.

    Ranges are (low, high) tuples. ``rotation_deg`` is per axis, in degrees. ``scaling`` > 1 zooms out (the
    patch covers more of the image). ``elastic_scale`` is the smoothing of the displacement field as a
    fraction of the patch side, ``elastic_magnitude`` its maximum in voxels. ``mirror_axes`` are spatial axes
    of the stored arrays (0, 1, 2 = z, y, x). ``enabled=False`` turns everything off (plain crops).
    """

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_deg: tuple[float, float] = (-30.0, 30.0)
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    elastic: bool = False
    p_elastic: float = 0.2
    elastic_scale: tuple[float, float] = (0.05, 0.15)
    elastic_magnitude: tuple[float, float] = (0.0, 6.0)
    seg_mode: str = "nearest"
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_gaussian_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_gaussian_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_scale: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_inverted_gamma: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON
                setattr(self, f.name, tuple(value))
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise PirlInputError(f"augmentation: {f.name} must be in [0, 1], got {value}")
        if self.seg_mode not in ("nearest", "bilinear"):
            raise PirlInputError(f"augmentation: seg_mode must be 'nearest' or 'bilinear', got {self.seg_mode!r}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise PirlInputError(f"augmentation: mirror_axes must be a subset of (0, 1, 2), got {self.mirror_axes}")

    @classmethod
    def off(cls) -> AugmentationConfig:
        """No augmentation at all: patches are plain crops of the stored arrays."""
        return cls(enabled=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (saved with checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentationConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise PirlInputError(f"augmentation: unknown setting(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    @property
    def spatial(self) -> bool:
        """Whether any resampling spatial transform (rotation, scaling, elastic) can happen."""
        return self.enabled and (self.p_rotation > 0 or self.p_scaling > 0 or (self.elastic and self.p_elastic > 0))


def build_spatial_transform(patch_size: tuple[int, ...], config: AugmentationConfig) -> SpatialTransform | None:
    """The resampling transform (rotation/scaling/elastic) around the centre of the initial patch."""
    if not config.spatial:
        return None
    return SpatialTransform(
        tuple(patch_size), patch_center_dist_from_border=0, random_crop=False,
        p_elastic_deform=config.p_elastic if config.elastic else 0.0,
        elastic_deform_scale=config.elastic_scale, elastic_deform_magnitude=config.elastic_magnitude,
        p_rotation=config.p_rotation, rotation=tuple(np.deg2rad(config.rotation_deg)),
        p_scaling=config.p_scaling, scaling=config.scaling, p_synchronize_scaling_across_axes=1,
        mode_seg=config.seg_mode, border_mode_seg="constant", padding_value_seg=SEG_PAD,
        padding_mode_image="zeros", mode_image="bilinear")


def build_mirroring(config: AugmentationConfig) -> MirrorTransform | None:
    """Random flips of ``config.mirror_axes`` (each with p=0.5), image and segmentation together."""
    return MirrorTransform(allowed_axes=tuple(config.mirror_axes)) if config.enabled and config.mirror_axes else None


def build_intensity_transforms(config: AugmentationConfig) -> ComposeTransforms | None:
    """Noise, blur, brightness, contrast, low resolution, gamma (per channel), in nnU-Net order."""
    if not config.enabled:
        return None
    steps: list[tuple[float, Any]] = [
        (config.p_gaussian_noise, GaussianNoiseTransform(config.noise_variance, p_per_channel=1,
                                                         synchronize_channels=True)),
        (config.p_gaussian_blur, GaussianBlurTransform(config.blur_sigma, synchronize_channels=False,
                                                       synchronize_axes=False, p_per_channel=0.5,
                                                       benchmark=False)),
        (config.p_brightness, MultiplicativeBrightnessTransform(config.brightness, synchronize_channels=False,
                                                                p_per_channel=1)),
        (config.p_contrast, ContrastTransform(BGContrast(config.contrast), preserve_range=True,
                                              synchronize_channels=False, p_per_channel=1)),
        (config.p_low_resolution, SimulateLowResolutionTransform(config.low_resolution_scale,
                                                                 synchronize_channels=False, synchronize_axes=True,
                                                                 ignore_axes=None, p_per_channel=0.5)),
        (config.p_inverted_gamma, GammaTransform(config.gamma, p_invert_image=1, synchronize_channels=False,
                                                 p_per_channel=1, p_retain_stats=1)),
        (config.p_gamma, GammaTransform(config.gamma, p_invert_image=0, synchronize_channels=False,
                                        p_per_channel=1, p_retain_stats=1)),
    ]
    transforms = [RandomTransform(t, apply_probability=p) for p, t in steps if p > 0]
    return ComposeTransforms(transforms) if transforms else None


class PatchAugmenter:
    """Turns (stored arrays, patch position) into one augmented ``(image, seg)`` pair of torch tensors.

    Spatial parameters are drawn first, in the frame of the unaugmented patch. A sample without a spatial
    transform is a plain crop; otherwise only the bounding box of the voxels the sampling grid reaches is
    read (plus one voxel for interpolation), and the grid is re-expressed relative to that box. Uses the
    global numpy/torch RNGs (as batchgeneratorsv2 does); the loader seeds them per batch.

    ``clean_targets``: also return the image after the spatial transform and mirroring but before the
    intensity transforms (the target of decomposition / translation losses).
    """

    def __init__(self, patch_size: tuple[int, ...], config: AugmentationConfig, clean_targets: bool = False) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.config = config
        self.clean_targets = clean_targets
        self.spatial = build_spatial_transform(self.patch_size, config)
        self.mirror = build_mirroring(config)
        self.intensity = build_intensity_transforms(config)
        # the spatial parameters only need a shape: a zero-stride view allocates nothing
        self._frame = torch.zeros(1).expand(1, *self.patch_size)

    def __call__(self, data: np.ndarray, seg: np.ndarray, lower: np.ndarray,
                 present: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image, seg, clean image or None); ``lower``: corner of the (unaugmented) patch in array
        coordinates (may be negative: padding); ``present`` (C,) bool: the channels the case has (None: all).
        An absent channel (stored as NaN) is 0 in the outputs, before and after the intensity augmentation."""
        absent = None if present is None or np.all(present) else ~np.asarray(present, bool)

        def crop(lower_: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
            return _tensor(crop_image(data, lower_, size, IMAGE_PAD, present))

        params = self.spatial.get_parameters(image=self._frame) if self.spatial is not None else None
        if params is None or params["grid"] is None:
            sample = {"image": crop(lower, self.patch_size),
                      "segmentation": _tensor(crop_padded(seg, lower, self.patch_size, SEG_PAD))}
        else:
            box_lower, box_size = grid_bounding_box(params["grid"], self.patch_size)
            reframe_grid(params["grid"], self.patch_size, box_lower, box_size)
            box_lower = np.asarray(lower) + box_lower
            sample = self.spatial.apply({"image": crop(box_lower, box_size),
                                         "segmentation": _tensor(crop_padded(seg, box_lower, box_size, SEG_PAD))},
                                        **params)
        if self.mirror is not None:
            sample = self.mirror(**sample)
        # fix: image targets get the geometric transforms only; intensity augmentation is for the input alone
        clean = sample["image"].clone() if self.clean_targets else None
        if self.intensity is not None:
            sample = self.intensity(**sample)
            if absent is not None:  # e.g. noise added to an absent channel
                sample["image"][torch.from_numpy(absent)] = 0
        return sample["image"], sample["segmentation"], clean


def grid_bounding_box(grid: torch.Tensor, frame: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(corner, size), in voxels of the frame (array axis order), of a box holding every voxel a grid_sample
    ``grid`` (last axis reversed, normalised to ``frame``, align_corners=False) reads with bilinear or
    nearest interpolation, with one voxel of margin against rounding."""
    size = torch.tensor(frame[::-1], dtype=grid.dtype)
    lo, hi = torch.aminmax(grid.reshape(-1, grid.shape[-1]), dim=0)
    box_lo = torch.floor(((lo + 1) * size - 1) / 2) - 1  # pixel = ((g + 1) * size - 1) / 2
    box_hi = torch.floor(((hi + 1) * size - 1) / 2) + 2  # exclusive; bilinear also reads floor(p) + 1
    return box_lo.numpy()[::-1].astype(int), tuple(int(v) for v in (box_hi - box_lo).numpy()[::-1])


def reframe_grid(grid: torch.Tensor, frame: tuple[int, ...], box_lower: np.ndarray,
                 box_size: tuple[int, ...]) -> None:
    """Rewrite ``grid`` (normalised to ``frame``) in place to sample the same points from a crop of the
    frame's coordinates starting at ``box_lower`` with ``box_size`` (both in array axis order)."""
    size = torch.tensor(frame[::-1], dtype=grid.dtype)
    lower = torch.tensor(np.asarray(box_lower)[::-1].copy(), dtype=grid.dtype)
    new = torch.tensor(box_size[::-1], dtype=grid.dtype)
    # g' = (((g + 1) * size - 1) / 2 - lower + 1/2) * 2 / new - 1
    grid.mul_(size / new).add_((size - 2 * lower) / new - 1)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def describe(config: AugmentationConfig) -> str:
    """One log line: what is on and the initial patch size."""
    if not config.enabled:
        return "augmentation off"
    on = [n for n, p in (("rotation", config.p_rotation), ("scaling", config.p_scaling),
                         ("elastic", config.p_elastic if config.elastic else 0), ("noise", config.p_gaussian_noise),
                         ("blur", config.p_gaussian_blur), ("brightness", config.p_brightness),
                         ("contrast", config.p_contrast), ("lowres", config.p_low_resolution),
                         ("gamma", max(config.p_gamma, config.p_inverted_gamma))) if p > 0]
    mirror = f", mirror axes {tuple(config.mirror_axes)}" if config.mirror_axes else ""
    return f"augmentation: {', '.join(on) or 'none'}{mirror}"


__all__ = ["AugmentationConfig", "PatchAugmenter", "build_intensity_transforms", "build_mirroring",
           "build_spatial_transform",
           "describe", "grid_bounding_box", "reframe_grid"]
