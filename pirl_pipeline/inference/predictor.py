"""``PIRLPredictor``: the Python API behind ``pirl_predict`` (usable from a notebook).

    predictor = PIRLPredictor.from_model_folder(folder, task="seg", folds=["0"], device="cpu")
    result = predictor.predict_array(stack, spacing, channels=[0, 3])  # (2, z, y, x) T1 + FLAIR, raw units
    result = predictor.predict_case({0: t1, 3: flair}, geometry)       # the same, per channel (file route)
    result.segmentation or result.images                               # on the input's grid

Preprocessing is the training one (same plans), inference is MONAI's Gaussian sliding window, and the
geometry is restored exactly: the output lies on the input's grid (size, spacing, origin, direction).
On CUDA the windows run in bf16 (``precision``), batched from the free memory (``sw_batch_size=None``) and
blended on the device; the Swin attention is the fused one (``load_model_folder(fused_attention=True)``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.data.dataset_json import RawCase
from pirl_pipeline.data.image_io import Geometry, write_array
from pirl_pipeline.data.integrity import load_case
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import save_npz
from pirl_pipeline.fold_folder import FINAL
from pirl_pipeline.inference.export import (
    intensities_in_input_units,
    labels_from_probabilities,
    output_paths,
    probabilities,
    to_original_grid,
)
from pirl_pipeline.inference.model_folder import TrainedModel, load_model_folder
from pirl_pipeline.inference.postprocessing import Postprocessing, load_postprocessing
from pirl_pipeline.inference.sliding_window import PRECISIONS, predict_volume
from pirl_pipeline.preprocessing.preprocessor import preprocess_arrays
from pirl_pipeline.tasks import Task, get_task

log = logging.getLogger("pirl")


def array_geometry(shape: Sequence[int], spacing: Sequence[float]) -> Geometry:
    """The grid of an in-memory (z, y, x) array: ``spacing`` in mm, (z, y, x) order; origin 0, identity
    direction (prediction uses only shape and spacing)."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise PirlInputError(f"spacing {spacing}: expected 3 positive values in mm, (z, y, x) order")
    return Geometry(tuple(int(n) for n in reversed(shape)), tuple(reversed(spacing)), (0.0, 0.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


@dataclass
class CasePrediction:
    available: list[int]
    segmentation: np.ndarray | None = None  # (z, y, x) label map, dataset label values
    probabilities: np.ndarray | None = None  # (C, z, y, x) when requested
    images: np.ndarray | None = None  # (M, z, y, x) every modality, input units


class PIRLPredictor:
    def __init__(self, model: TrainedModel, device: torch.device | str = "cpu", step_size: float = 0.5,
                 mirror: bool = True, save_probabilities: bool = False, precision: str = "auto",
                 sw_batch_size: int | None = None, postprocessing: Postprocessing | None = None) -> None:
        """``postprocessing``: applied to every segmentation (not to the saved probabilities), as
        ``pirl_predict`` does with the folds' ``postprocessing.json`` (``inference/postprocessing.py``)."""
        if not 0 < step_size <= 1:
            raise PirlInputError(f"step_size must lie in (0, 1], got {step_size}")
        if precision not in PRECISIONS:
            raise PirlInputError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise PirlInputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.model, self.device, self.step_size, self.mirror = model, torch.device(device), step_size, mirror
        self.precision, self.sw_batch_size = precision, sw_batch_size
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every window has the same shape
        self.save_probabilities = save_probabilities
        self.postprocessing = postprocessing
        self.config = model.plans.configuration(model.configuration)
        self.num_modalities = model.plans.num_input_channels

    @classmethod
    def from_model_folder(cls, folder: str | Path, folds: list[str] | None = None,
                          checkpoint: str = FINAL, device: torch.device | str = "cpu",
                          fused_attention: bool = True, task: str | None = None, postprocess: bool = True,
                          **kwargs) -> PIRLPredictor:
        """Load ``folder`` (``TRAINER__PIRLPlans__CONFIG``; default: every trained fold). ``task`` ("seg" or
        "translate"), when given, must be the model's. ``postprocess``: apply the steps the folds'
        ``postprocessing.json`` kept (seg; as ``pirl_predict`` does, so the default gives the CLI's output). ``kwargs``: ``step_size``, ``mirror``, ``save_probabilities``,
        ``precision``, ``sw_batch_size`` (see ``__init__``)."""
        model = load_model_folder(folder, folds, checkpoint, device, fused_attention)
        if task is not None and task != model.task:
            raise PirlInputError(f"{folder}: the model was trained for {model.task}, not {task}")
        if postprocess and get_task(model.task).predicts_labels:
            kwargs["postprocessing"] = load_postprocessing(Path(folder), model.folds)
        return cls(model, device, **kwargs)

    @property
    def task(self) -> Task:
        return get_task(self.model.task)

    def predict_array(self, array: np.ndarray, spacing: Sequence[float],
                      channels: Sequence[int] | None = None) -> CasePrediction:
        """Predict one case held in memory, exactly as the file route does (nnU-Net's
        ``predict_from_list_of_npy_arrays``).

        ``array``: (C, z, y, x) in the raw intensity units: the channel files' ``sitk.GetArrayFromImage``,
        stacked. ``spacing``: (z, y, x) in mm, i.e. ``image.GetSpacing()[::-1]``. ``channels``: the model
        channel of each of the C rows (default 0..C-1; e.g. ``[0, 3]`` for T1 + FLAIR of a 4-channel model:
        the missing-modality path). The result lies on the (z, y, x) grid of ``array``: ``segmentation``
        (z, y, x) label values, ``probabilities`` (regions or classes, z, y, x) when the predictor was built
        with ``save_probabilities=True``, or ``images`` (M, z, y, x) for translation.
        """
        array = np.asarray(array)
        channels = list(range(len(array))) if channels is None else [int(c) for c in channels]
        if array.ndim != 4 or len(channels) != len(array) or len(set(channels)) != len(channels):
            raise PirlInputError(f"array of shape {array.shape} with channels {channels}: expected (C, z, y, x) "
                                 "with one distinct model channel per row")
        if not np.isfinite(array).all():
            raise PirlInputError(f"array of shape {array.shape}: NaN or Inf values")
        images = {c: array[k].astype(np.float32, copy=False) for k, c in enumerate(channels)}
        return self.predict_case(images, array_geometry(array.shape[1:], spacing))

    def predict_arrays(self, arrays: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                       channels: Sequence[int] | None = None) -> list[CasePrediction]:
        """:meth:`predict_array` for each (array, spacing) pair; ``channels`` holds for every array."""
        if len(arrays) != len(spacings):
            raise PirlInputError(f"{len(arrays)} arrays but {len(spacings)} spacings: give one spacing per array")
        return [self.predict_array(a, s, channels) for a, s in zip(arrays, spacings)]

    def predict_case(self, images: dict[int, np.ndarray], geometry: Geometry) -> CasePrediction:
        """Predict from the channels present (``{channel: (z, y, x) array}``), all on ``geometry``."""
        available = sorted(images)
        if not available or available[-1] >= self.num_modalities or available[0] < 0:
            raise PirlInputError(f"channels {available}: need a non-empty subset of 0..{self.num_modalities - 1}")
        shape = geometry.shape
        wrong = [c for c in available if images[c].shape != shape]
        if wrong:
            raise PirlInputError(f"channel {wrong[0]}: shape {images[wrong[0]].shape}, the grid is {shape}")
        data = np.zeros((self.num_modalities, *shape), np.float32)
        for c, array in images.items():
            data[c] = array
        body = np.any(data != 0, axis=0)  # seg: nothing is painted outside it; translate: no synthesis there
        pre, _, properties = preprocess_arrays(data, None, geometry.spacing, self.model.plans, self.config, available)
        del data  # the stacked full-size copy is not needed during the window loop
        output = predict_volume(self.model.networks, self.model.kind, torch.from_numpy(pre), available,
                                self.model.patch_size, self.step_size, self.mirror, self.sw_batch_size,
                                self.device, self.precision)
        if self.task.predicts_labels:
            probs = probabilities(output, self.model.dataset_json).numpy()
            probs = to_original_grid(probs, properties, 1, self.config.resampling["anisotropy_threshold"])
            probs[:, ~body] = 0  # nothing outside the input's body mask (the crop box holds background too)
            labels = labels_from_probabilities(probs, self.model.dataset_json)
            if self.postprocessing is not None:
                labels = self.postprocessing.apply(labels)
            result = CasePrediction(available, labels)
            result.probabilities = probs if self.save_probabilities else None
            return result
        restored = to_original_grid(output.numpy(), properties, 3, self.config.resampling["anisotropy_threshold"])
        restored = intensities_in_input_units(restored, properties, self.model.plans, self.model.configuration)
        restored[:, ~body] = 0  # outside the input's body mask, as the (skull-stripped) inputs are
        return CasePrediction(available, images=restored.astype(np.float32))

    def complete(self, images: dict[int, np.ndarray], geometry: Geometry) -> dict[int, np.ndarray]:
        """Every channel ``{c: (z, y, x)}``: those given, unchanged, and the absent ones synthesised by this
        translation model (what ``pirl_predict -t translate --missing_only`` writes beside the input)."""
        if self.task.predicts_labels:
            raise PirlInputError(f"completing a case needs a translation model, this one is {self.task.name}")
        if len(images) == self.num_modalities:
            return dict(images)
        synthesised = self.predict_case(images, geometry).images
        return {c: images[c] if c in images else synthesised[c] for c in range(self.num_modalities)}

    @staticmethod
    def read_case(case: str, files: dict[int, Path]) -> tuple[dict[int, np.ndarray], Geometry]:
        """Read a case's channel files, checked: one grid, finite values."""
        channels = sorted(files)
        loaded = load_case(RawCase(case, tuple(files[c] for c in channels)), None, check=True)
        return dict(zip(channels, loaded.data)), loaded.geometry

    def export(self, case: str, result: CasePrediction, geometry: Geometry, output_folder: Path,
               file_ending: str, channels: Sequence[int] | None = None) -> list[Path]:
        """Write the prediction as NIfTI on the input's grid (atomic, verified), named as
        :func:`output_paths` says; ``channels``: the image channels to write (default every one). Returns
        the written paths."""
        written = []
        if result.segmentation is not None:
            [path] = output_paths(output_folder, case, file_ending)
            write_array(result.segmentation, geometry, path)
            written.append(path)
            if result.probabilities is not None:
                save_npz(output_folder / f"{case}.npz", probabilities=result.probabilities.astype(np.float16))
        if result.images is not None:
            channels = range(len(result.images)) if channels is None else channels
            for c, path in zip(channels, output_paths(output_folder, case, file_ending, channels)):
                write_array(result.images[c], geometry, path)
                written.append(path)
        return written
