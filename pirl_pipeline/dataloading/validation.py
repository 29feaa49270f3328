"""Patch-level validation batches: fixed patches, no augmentation, the same every epoch.

Per case: the centre patch (``center_patch``) and ``foreground_patches_per_case`` patches centred on a
foreground voxel (drawn once from ``SeedSequence([seed, crc32(case)])``; none for cases without foreground).
With DDP, rank ``r`` takes patches ``r, r + world_size, ...``: the ranks' shares are disjoint and cover all
patches, but their numbers of batches may differ by one, so reduce the metric sums once after the loop
rather than per batch. Batches have the training format (see ``loader``), ``oversampled`` marking the
foreground-centred patches.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pirl_pipeline.dataloading.augmentation import IMAGE_PAD, SEG_PAD
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.dataloading.loader import resolve_patch_and_batch
from pirl_pipeline.dataloading.sampling import centered_position, crop_image, crop_padded, pick_foreground_voxel
from pirl_pipeline.errors import PirlInputError
from plans.plans_manager import ConfigurationPlans


class ValidationPatches:
    """A finite, re-iterable sequence of validation batches (``len()`` = number of batches on this rank)."""

    def __init__(self, dataset: PreprocessedDataset, patch_size: tuple[int, ...], batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, center_patch: bool = True,
                 foreground_patches_per_case: int = 1) -> None:
        self.dataset = dataset
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        items = []
        for name in dataset.case_names:
            shape = dataset.arrays(name)[0].shape[1:]
            if center_patch:
                items.append((name, centered_position(shape, self.patch_size), False))
            rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
            locations = dataset.foreground_locations(name)
            for _ in range(foreground_patches_per_case):
                voxel = pick_foreground_voxel(locations, rng)
                if voxel is not None:
                    items.append((name, centered_position(shape, self.patch_size, voxel), True))
        self.items = items[rank::world_size]

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def close(self) -> None:
        """Nothing to stop (no workers); here so that trainers can treat all loaders alike."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self.items), self.batch_size):
            chunk = self.items[start:start + self.batch_size]
            images, segs, channels = [], [], []
            for name, lower, _ in chunk:
                data, seg = self.dataset.arrays(name)
                channels.append(self.dataset.present_channels(name, data.shape[0]))
                images.append(torch.from_numpy(crop_image(data, lower, self.patch_size, IMAGE_PAD, channels[-1])))
                segs.append(torch.from_numpy(crop_padded(seg, lower, self.patch_size, SEG_PAD)))
            yield {"data": torch.stack(images).float(), "target": torch.stack(segs),
                   "channels": torch.from_numpy(np.stack(channels)),
                   "keys": [c[0] for c in chunk], "patch_lower": np.stack([c[1] for c in chunk]).astype(np.int64),
                   "oversampled": np.array([c[2] for c in chunk]), "batch_index": start // self.batch_size}


def make_val_loader(preprocessed_folder: str | Path, case_names: list[str] | None,
                    plans_config: ConfigurationPlans | None = None, *, batch_size: int | None = None,
                    patch_size: tuple[int, ...] | None = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                    center_patch: bool = True, foreground_patches_per_case: int = 1) -> ValidationPatches:
    """Fixed, unaugmented validation patches of the validation cases (single process: crops are cheap)."""
    if not 0 <= rank < world_size:
        raise PirlInputError(f"validation loader: rank {rank} outside world size {world_size}")
    patch, batch = resolve_patch_and_batch(plans_config, patch_size, batch_size)
    return ValidationPatches(PreprocessedDataset(preprocessed_folder, case_names), patch, batch, rank, world_size,
                             seed, center_patch, foreground_patches_per_case)
