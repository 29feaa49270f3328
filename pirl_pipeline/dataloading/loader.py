"""Training batches: a batchgenerators data loader with foreground oversampling and per-sample augmentation,
run in-process or in background worker processes (batchgenerators' (NonDet)MultiThreadedAugmenter).

Batch format (a dict)::

    data         float32 tensor (B, C, *patch_size): every channel (modality) of the case, none dropped
                 (a channel the case lacks is 0 there, and False in ``channels``)
    channels     bool tensor (B, C): the channels each case has (all True for complete datasets)
    target       int8 or int16 tensor (B, 1, *patch_size), as ``CASE_seg.npy`` is stored (``seg_dtype``): labels;
                 -1 outside the body mask and in padding. Use
                 ``target >= 0`` as the mask and ``target.clamp_min(0).long()`` for losses
    target_image float32 tensor (B, C, *patch_size), only with ``clean_targets``: ``data`` with the spatial
                 transforms and mirroring but without the intensity augmentation (image-loss targets)
    keys         list of B case names
    patch_lower  int64 array (B, 3): corner of each (unaugmented) patch in the stored (z, y, x) array
    oversampled  bool array (B,): samples centred on a foreground voxel (oversampling; a forced sample of a
                 case without foreground is a random patch and is not marked)
    batch_index  int: position of the batch in the stream

Spatial axes are those of the stored arrays and of the plans' ``patch_size`` (z, y, x).

Reproducibility: batch ``i`` of a stream is a pure function of (data, settings, ``seed``, ``rank``, ``i``):
its sampling RNG and the global numpy/torch RNGs the batchgeneratorsv2 transforms draw from are seeded from
``SeedSequence([seed, rank, i])`` (and the caller's global RNG states are restored afterwards). So the
stream is the same with 0, 1 or N ordered workers, ranks draw different samples, and a resumed run
continues the stream exactly with ``start_batch = iterations already done``.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from pirl_pipeline.dataloading.augmentation import AugmentationConfig, PatchAugmenter, describe
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.dataloading.sampling import (
    centered_position,
    is_oversampled,
    pick_foreground_voxel,
    random_position,
)
from pirl_pipeline.errors import PirlInputError
from plans.plans_manager import ConfigurationPlans

log = logging.getLogger("pirl")
DEFAULT_OVERSAMPLE = 1 / 3


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: unchanged), then restore the caller's count.
    batchgeneratorsv2's per-sample ops are small: on the 2-core dev machine they ran 2-4x slower with 2
    threads than with 1, so augmentation runs single-threaded in-process too, as in the workers."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's (CPU) global RNGs for a block, then put the caller's states back."""
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class PatchLoader(SlimDataLoaderBase):
    """Endless batches of ``batch_size`` patches from random cases (uniform, with replacement)."""

    def __init__(self, dataset: PreprocessedDataset, patch_size: tuple[int, ...], batch_size: int,
                 augmenter: PatchAugmenter, oversample_foreground: float = DEFAULT_OVERSAMPLE, seed: int = 0,
                 rank: int = 0, start_batch: int = 0, num_workers: int = 1, aug_threads: int | None = 1) -> None:
        super().__init__(dataset, batch_size, max(1, num_workers))
        self.dataset = dataset
        self.patch_size = tuple(int(p) for p in patch_size)
        self.augmenter = augmenter
        self.oversample_foreground = oversample_foreground
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        self.aug_threads = aug_threads
        self._generated = 0

    def set_thread_id(self, thread_id: int) -> None:
        """Called by the batchgenerators augmenters inside each worker process: one torch thread per worker
        (no oversubscription) and this worker's share of the batch indices (round robin)."""
        super().set_thread_id(thread_id)
        torch.set_num_threads(1)

    def generate_train_batch(self) -> dict[str, Any]:
        index = self.start_batch + self.thread_id + self._generated * self.number_of_threads_in_multithreaded
        self._generated += 1
        return self.make_batch(index)

    def make_batch(self, index: int) -> dict[str, Any]:
        """Batch number ``index`` of this stream (deterministic, see module docstring), with numpy arrays
        (``BatchStream`` turns them into tensors)."""
        sample_seq, aug_seq = np.random.SeedSequence([self.seed, self.rank, index]).spawn(2)
        rng = np.random.default_rng(sample_seq)
        plan = []
        for j in range(self.batch_size):
            name = self.dataset[int(rng.integers(len(self.dataset)))]
            data, seg = self.dataset.arrays(name)
            forced = is_oversampled(index * self.batch_size + j, self.oversample_foreground)
            voxel = pick_foreground_voxel(self.dataset.foreground_locations(name), rng) if forced else None
            if voxel is None:
                lower = random_position(data.shape[1:], self.patch_size, rng)
            else:  # centred on the voxel (as nnU-Net), so rotation/scaling about the centre keep it inside
                lower = centered_position(data.shape[1:], self.patch_size, voxel)
            plan.append((name, data, seg, lower, voxel is not None,
                         self.dataset.present_channels(name, data.shape[0])))
        images, segs, cleans = [], [], []
        aug_seed = int(aug_seq.generate_state(1, np.uint64)[0])
        with torch_threads(self.aug_threads), seeded_global_rngs(aug_seed), torch.no_grad():
            for _, data, seg, lower, _, present in plan:
                image, target, clean = self.augmenter(data, seg, lower, present)
                images.append(image)
                segs.append(target)
                cleans.append(clean)
        # numpy between processes: pickled by value (torch tensors would travel as shared-memory file
        # descriptors, which break when a worker exits while the parent is still unpickling at shutdown)
        batch = {"data": torch.stack(images).float().numpy(), "target": torch.stack(segs).numpy(),
                 "keys": [p[0] for p in plan], "patch_lower": np.stack([p[3] for p in plan]).astype(np.int64),
                 "oversampled": np.array([p[4] for p in plan]), "channels": np.stack([p[5] for p in plan]),
                 "batch_index": index}
        if self.augmenter.clean_targets:
            batch["target_image"] = torch.stack(cleans).float().numpy()
        return batch


class BatchStream:
    """An endless iterator of batches; ``close()`` (or ``with``) stops the worker processes."""

    def __init__(self, loader: PatchLoader, num_workers: int = 0, pin_memory: bool = False,
                 ordered: bool = True, num_cached_per_worker: int = 2) -> None:
        self.loader = loader
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if num_workers == 0:
            self._augmenter: Any = SingleThreadedAugmenter(loader, None)
        elif ordered:
            self._augmenter = MultiThreadedAugmenter(loader, None, num_workers, num_cached_per_worker)
        else:
            self._augmenter = NonDetMultiThreadedAugmenter(loader, None, num_workers,
                                                           max(2, num_cached_per_worker * num_workers))

    @property
    def seed(self) -> int:
        return self.loader.seed

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._augmenter)
        for key in ("data", "target", "target_image", "channels"):
            if key not in batch:
                continue
            batch[key] = torch.from_numpy(batch[key])
            if self.pin_memory:
                batch[key] = batch[key].pin_memory()
        return batch

    def close(self) -> None:
        """Stop and join the workers (no-op for num_workers=0); safe to call twice."""
        finish = getattr(self._augmenter, "_finish", None)
        if finish is not None:
            finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_patch_and_batch(plans_config: ConfigurationPlans | None, patch_size: tuple[int, ...] | None,
                            batch_size: int | None) -> tuple[tuple[int, ...], int]:
    """Explicit values win over the plans configuration; one of the two is required."""
    if patch_size is None or batch_size is None:
        if plans_config is None:
            raise PirlInputError("data loader: give a plans configuration or both patch_size and batch_size")
        patch_size = plans_config.patch_size if patch_size is None else patch_size
        batch_size = plans_config.batch_size if batch_size is None else batch_size
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1 or int(batch_size) < 1:
        raise PirlInputError(f"data loader: invalid patch_size {patch_size} / batch_size {batch_size}")
    return patch, int(batch_size)


def make_train_loader(preprocessed_folder: str | Path, case_names: list[str] | None,
                      plans_config: ConfigurationPlans | None = None, aug_config: AugmentationConfig | None = None,
                      *, batch_size: int | None = None, patch_size: tuple[int, ...] | None = None,
                      num_workers: int = 0, seed: int | None = None, rank: int = 0, world_size: int = 1,
                      oversample_foreground: float = DEFAULT_OVERSAMPLE, start_batch: int = 0,
                      pin_memory: bool = False, ordered: bool = True, clean_targets: bool = False) -> BatchStream:
    """Endless augmented training batches (see the module docstring for the format).

    ``preprocessed_folder``: the configuration folder holding the ``CASE.npy`` files. ``batch_size`` is per
    rank. ``seed=None`` draws one (``stream.seed`` tells which). ``start_batch``: batches already consumed
    (resume). ``ordered=False`` uses the NonDetMultiThreadedAugmenter (same batches, arrival order not fixed).
    ``clean_targets``: batches also carry ``target_image`` (no intensity augmentation), see the module docstring.
    Call ``close()`` on the result (or use it as a context manager) to stop the workers.
    """
    if not 0 <= rank < world_size:
        raise PirlInputError(f"data loader: rank {rank} outside world size {world_size}")
    if num_workers < 0 or start_batch < 0 or (seed is not None and seed < 0):
        raise PirlInputError("data loader: num_workers, start_batch and seed must be >= 0")
    if not 0.0 <= oversample_foreground <= 1.0:
        raise PirlInputError(f"data loader: oversample_foreground must be in [0, 1], got {oversample_foreground}")
    patch, batch = resolve_patch_and_batch(plans_config, patch_size, batch_size)
    aug_config = AugmentationConfig() if aug_config is None else aug_config
    seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)
    dataset = PreprocessedDataset(preprocessed_folder, case_names)
    augmenter = PatchAugmenter(patch, aug_config, clean_targets)
    loader = PatchLoader(dataset, patch, batch, augmenter, oversample_foreground, seed, rank, start_batch, num_workers)
    log.info("train loader: %d cases, patch %s, batch %d, %d worker(s), seed %d, rank %d/%d; %s", len(dataset),
             patch, batch, num_workers, seed, rank, world_size, describe(aug_config))
    return BatchStream(loader, num_workers, pin_memory=pin_memory, ordered=ordered)
