"""Several trainers of one dataset and task as one predictor (``pirl_predict -tr A B``; what
``pirl_find_best_configuration`` recommends when an ensemble wins).

Each member (a model folder, ``TRAINER__PLANS__CONFIG``) predicts the case as it would alone (its folds, its
preprocessing and patch size, TTA), without post-processing; the members' probabilities (seg; on the input's
grid, 0 outside its body mask) or images (translate; input units) are averaged with equal weight per trainer
(nnU-Net's ensembling of configurations). Seg then paints labels as one model does
(``labels_from_probabilities``) and applies the post-processing every fold of every member kept
(:func:`common_postprocessing`: a step one member's validation rejected is not applied to the ensemble).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pirl_pipeline.data.image_io import Geometry
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.fold_folder import FINAL
from pirl_pipeline.inference.export import labels_from_probabilities
from pirl_pipeline.inference.postprocessing import Postprocessing, load_postprocessing
from pirl_pipeline.inference.predictor import CasePrediction, PIRLPredictor
from pirl_pipeline.tasks import Task


def common_postprocessing(parts: Sequence[Postprocessing | None]) -> Postprocessing | None:
    """The steps every part kept, in the first part's order; None when a part has none on record (a fold
    without ``postprocessing.json``), as :func:`load_postprocessing` does for the folds of one model."""
    if not parts or any(p is None for p in parts):
        return None
    return Postprocessing([s for s in parts[0].keep_largest if all(s in p.keep_largest for p in parts[1:])])


class TrainerEnsemble:
    """The members' averaged prediction, with :class:`PIRLPredictor`'s interface as ``pirl_predict`` uses it
    (``model``: the first member's, whose dataset, task and channels every member shares)."""

    def __init__(self, members: list[PIRLPredictor], postprocessing: Postprocessing | None = None,
                 save_probabilities: bool = False) -> None:
        if len(members) < 2:
            raise PirlInputError(f"an ensemble needs at least two trainers, got {len(members)}")
        self.members, self.postprocessing, self.save_probabilities = members, postprocessing, save_probabilities
        for member in members:  # raw predictions: the ensemble post-processes the average itself
            member.postprocessing, member.save_probabilities = None, True
        self.model = members[0].model
        self.mirror = members[0].mirror
        self.num_modalities = members[0].num_modalities

    @classmethod
    def from_model_folders(cls, folders: Sequence[str | Path], folds: list[str] | None = None,
                           checkpoint: str = FINAL, device: torch.device | str = "cpu",
                           fused_attention: bool = True, task: str | None = None, postprocess: bool = True,
                           **kwargs) -> TrainerEnsemble:
        """Load every folder as :meth:`PIRLPredictor.from_model_folder` does (same ``folds``, ``checkpoint`` and
        ``kwargs``); the folders must be distinct models of one dataset (channels, labels) and task."""
        folders = [Path(f) for f in folders]
        if len({f.resolve() for f in folders}) != len(folders):
            raise PirlInputError(f"{', '.join(map(str, folders))}: a model folder is named twice")
        save = kwargs.pop("save_probabilities", False)
        members = [PIRLPredictor.from_model_folder(f, folds, checkpoint, device, fused_attention, task,
                                                   postprocess=False, **kwargs) for f in folders]
        first = members[0].model
        for folder, member in zip(folders[1:], members[1:]):
            if member.model.task != first.task:
                raise PirlInputError(f"{folder}: a {member.model.task} model; {folders[0]} is {first.task}: "
                                     "an ensemble needs one task")
            if member.model.dataset_json.to_dict() != first.dataset_json.to_dict():
                raise PirlInputError(f"{folder}: trained on another dataset.json than {folders[0]} (channels or "
                                     "labels differ); cannot ensemble")
        postprocessing = None
        if postprocess and members[0].task.predicts_labels:
            postprocessing = common_postprocessing([load_postprocessing(f, m.model.folds)
                                                    for f, m in zip(folders, members)])
        return cls(members, postprocessing, save)

    @property
    def task(self) -> Task:
        return self.members[0].task

    read_case = staticmethod(PIRLPredictor.read_case)

    def predict_case(self, images: dict[int, np.ndarray], geometry: Geometry) -> CasePrediction:
        """Every member's prediction of the case, averaged (see the module docstring)."""
        total, available = None, None
        for member in self.members:  # a running sum: one member's output in memory at a time
            result = member.predict_case(images, geometry)
            output = result.probabilities if self.task.predicts_labels else result.images
            if total is None:
                total = output.astype(np.float32)
            else:
                total += output
            available = result.available
        mean = total / len(self.members)
        if not self.task.predicts_labels:
            return CasePrediction(available, images=mean)
        labels = labels_from_probabilities(mean, self.model.dataset_json)
        if self.postprocessing is not None:
            labels = self.postprocessing.apply(labels)
        return CasePrediction(available, labels, mean if self.save_probabilities else None)

    def export(self, *args, **kwargs) -> list[Path]:
        """:meth:`PIRLPredictor.export` (it depends on the result alone)."""
        return self.members[0].export(*args, **kwargs)


def load_predictor(folders: Sequence[str | Path], folds: list[str] | None = None,
                   **kwargs) -> PIRLPredictor | TrainerEnsemble:
    """One folder: :meth:`PIRLPredictor.from_model_folder` (unchanged single-trainer behaviour); several: their
    :class:`TrainerEnsemble`. ``kwargs`` as those take them."""
    if len(folders) == 1:
        return PIRLPredictor.from_model_folder(folders[0], folds, **kwargs)
    return TrainerEnsemble.from_model_folders(folders, folds, **kwargs)
