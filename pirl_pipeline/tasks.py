"""The fine-tuning tasks of Algorithm 2 and what differs between them: the one place that knows task names.

=========== ================================= ============================= ===========================
task        output channels                   scored against                pirl_evaluate_missing folder
=========== ================================= ============================= ===========================
seg         one per region, or per label      the label maps (labelsTs)     ``missing_modalities/``
translate   one image per modality            the input images themselves   ``translation_matrix/``
=========== ================================= ============================= ===========================

Everything else asks the Task (``get_task(name)``) instead of comparing ``"seg"`` / ``"translate"`` strings.
Pre-training (Algorithm 1) is not a fine-tuning task: its trainer and folder have the name ``PRETRAIN``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pirl_pipeline.data.dataset_json import DatasetJson
from pirl_pipeline.errors import PirlInputError

PRETRAIN = "pretrain"


@dataclass(frozen=True)
class Task:
    """name: the ``-t`` / ``pirl_train TASK`` word; default_trainer: the ``-tr`` default; predicts_labels: a label
    map per case (else one image per modality); subsets_folder: where ``pirl_evaluate_missing`` writes in
    fold_F."""

    name: str
    default_trainer: str
    predicts_labels: bool
    subsets_folder: str

    def out_channels(self, dataset_json: DatasetJson, modalities: int) -> int:
        """Output channels of the network: regions (sigmoid) or labels (softmax) for seg; every modality for
        translation."""
        if not self.predicts_labels:
            return modalities
        return len(dataset_json.regions()) if dataset_json.has_regions else len(dataset_json.label_values)

    def reference_folder(self, images: Path, labels: Path) -> Path:
        """What a prediction folder of this task is scored against: the label folder, or the images."""
        return labels if self.predicts_labels else images


SEG = Task("seg", "PIRLSegTrainer", True, "missing_modalities")
TRANSLATE = Task("translate", "PIRLTranslateTrainer", False, "translation_matrix")
TASKS: dict[str, Task] = {task.name: task for task in (SEG, TRANSLATE)}


def get_task(name: str) -> Task:
    """The Task called ``name`` ("seg" or "translate")."""
    if name not in TASKS:
        raise PirlInputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}"
                             + (" (pre-training is not a fine-tuning task)" if name == PRETRAIN else ""))
    return TASKS[name]
