"""``PIRLPredictor``: the Python API behind ``pirl_predict`` (usable from a notebook).

    predictor = PIRLPredictor.from_model_folder(folder, folds=["0"], device="cpu")
    result = predictor.predict_case({0: t1, 3: flair}, geometry)   # any non-empty channel subset
    result.segmentation or result.images                           # on the input's grid

Preprocessing is the training one (same plans), inference is MONAI's Gaussian sliding window, and the
geometry is restored exactly: the output lies on the input's grid (size, spacing, origin, direction).
On CUDA the windows run in bf16 (``precision``), batched from the free memory (``sw_batch_size=None``) and
blended on the device; the Swin attention is the fused one (``load_model_folder(fused_attention=True)``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import RawCase
from pirl_pipeline.data.image_io import Geometry, write_array
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import save_npz
from pirl_pipeline.inference.export import (
    intensities_in_input_units,
    labels_from_probabilities,
    probabilities,
    to_original_grid,
)
from pirl_pipeline.inference.model_folder import TrainedModel, load_model_folder
from pirl_pipeline.inference.sliding_window import PRECISIONS, predict_volume
from pirl_pipeline.preprocessing.preprocessor import preprocess_arrays

log = logging.getLogger("pirl")


@dataclass
class CasePrediction:
    available: list[int]
    segmentation: np.ndarray | None = None  # (z, y, x) label map, dataset label values
    probabilities: np.ndarray | None = None  # (C, z, y, x) when requested
    images: np.ndarray | None = None  # (M, z, y, x) every modality, input units


class PIRLPredictor:
    def __init__(self, model: TrainedModel, device: torch.device | str = "cpu", step_size: float = 0.5,
                 mirror: bool = True, save_probabilities: bool = False, precision: str = "auto",
                 sw_batch_size: int | None = None) -> None:
        if not 0 < step_size <= 1:
            raise PirlInputError(f"--step_size must lie in (0, 1], got {step_size}")
        if precision not in PRECISIONS:
            raise PirlInputError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise PirlInputError(f"--sw_batch_size must be >= 1, got {sw_batch_size}")
        self.model, self.device, self.step_size, self.mirror = model, torch.device(device), step_size, mirror
        self.precision, self.sw_batch_size = precision, sw_batch_size
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every window has the same shape
        self.save_probabilities = save_probabilities
        self.config = model.plans.configuration(model.configuration)
        self.num_modalities = model.plans.num_input_channels

    @classmethod
    def from_model_folder(cls, folder: str | Path, folds: list[str] | None = None,
                          checkpoint: str = "checkpoint_final.pth", device: torch.device | str = "cpu",
                          fused_attention: bool = True, **kwargs) -> PIRLPredictor:
        return cls(load_model_folder(folder, folds, checkpoint, device, fused_attention), device, **kwargs)

    @property
    def task(self) -> str:
        return self.model.task

    def predict_case(self, images: dict[int, np.ndarray], geometry: Geometry) -> CasePrediction:
        """Predict from the channels present (``{channel: (z, y, x) array}``), all on ``geometry``."""
        available = sorted(images)
        if not available or available[-1] >= self.num_modalities or available[0] < 0:
            raise PirlInputError(f"channels {available}: need a non-empty subset of 0..{self.num_modalities - 1}")
        shape = geometry.shape
        data = np.zeros((self.num_modalities, *shape), np.float32)
        for c, array in images.items():
            data[c] = array
        body = np.any(data != 0, axis=0)  # seg: nothing is painted outside it; translate: no synthesis there
        pre, _, properties = preprocess_arrays(data, None, geometry.spacing, self.model.plans, self.config, available)
        del data  # the stacked full-size copy is not needed during the window loop
        output = predict_volume(self.model.networks, self.model.kind, torch.from_numpy(pre), available,
                                self.model.patch_size, self.step_size, self.mirror, self.sw_batch_size,
                                self.device, self.precision)
        if self.task == "seg":
            probs = probabilities(output, self.model.dataset_json).numpy()
            probs = to_original_grid(probs, properties, order=1)
            probs[:, ~body] = 0  # nothing outside the input's body mask (the crop box holds background too)
            result = CasePrediction(available, labels_from_probabilities(probs, self.model.dataset_json))
            result.probabilities = probs if self.save_probabilities else None
            return result
        restored = to_original_grid(output.numpy(), properties, order=3)
        restored = intensities_in_input_units(restored, properties, self.model.plans, self.model.configuration)
        restored[:, ~body] = 0  # outside the input's body mask, as the (skull-stripped) inputs are
        return CasePrediction(available, images=restored.astype(np.float32))

    @staticmethod
    def read_case(case: str, files: dict[int, Path]) -> tuple[dict[int, np.ndarray], Geometry]:
        """Read a case's channel files, checked: one grid, finite values."""
        channels = sorted(files)
        loaded = load_case(RawCase(case, tuple(files[c] for c in channels)), None, check=True)
        return dict(zip(channels, loaded.data)), loaded.geometry

    def export(self, case: str, result: CasePrediction, geometry: Geometry, output_folder: Path,
               file_ending: str) -> list[Path]:
        """Write the prediction as NIfTI on the input's grid (atomic, verified); returns the written paths."""
        written = []
        if result.segmentation is not None:
            path = output_folder / f"{case}{file_ending}"
            write_array(result.segmentation, geometry, path)
            written.append(path)
            if result.probabilities is not None:
                save_npz(output_folder / f"{case}.npz", probabilities=result.probabilities.astype(np.float16))
        if result.images is not None:
            for c, image in enumerate(result.images):
                path = output_folder / f"{case}_{c:04d}{file_ending}"
                write_array(image, geometry, path)
                written.append(path)
        return written
