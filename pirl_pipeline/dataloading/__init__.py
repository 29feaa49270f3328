"""Data loading for the trainers: preprocessed cases -> augmented patch batches (batchgenerators).

A trainer calls::

    stream = make_train_loader(folder, split["train"], plans_config, AugmentationConfig(), num_workers=4,
                               seed=seed, rank=rank, world_size=world_size, start_batch=iterations_done)
    batch = next(stream)   # {"data", "target", "keys", ...}, see loader.py
    ...
    stream.close()         # stops the worker processes

    for batch in make_val_loader(folder, split["val"], plans_config, rank=rank, world_size=world_size): ...
"""
from pirl_pipeline.dataloading.augmentation import AugmentationConfig, PatchAugmenter
from pirl_pipeline.dataloading.dataset import PreprocessedDataset
from pirl_pipeline.dataloading.loader import BatchStream, PatchLoader, make_train_loader
from pirl_pipeline.dataloading.validation import ValidationPatches, make_val_loader

__all__ = ["AugmentationConfig", "BatchStream", "PatchAugmenter", "PatchLoader", "PreprocessedDataset",
           "ValidationPatches", "make_train_loader", "make_val_loader"]
