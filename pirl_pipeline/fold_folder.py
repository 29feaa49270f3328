"""One trained fold, ``MODEL_FOLDER/fold_F``: the one module that knows the names of the files a fold holds.

``paths.model_folder`` owns ``TRAINER__PLANS__CONFIGURATION``; :class:`FoldFolder` owns everything below it, so
nothing else spells ``fold_`` or a file name of a fold, nor parses a fold folder's name back:

==================================== ===================================================================
``checkpoint_final.pth``             written at the end of ``pirl_train`` (what ``pirl_predict`` loads)
``checkpoint_latest.pth``            every ``save_every`` epochs (what ``pirl_train --c`` resumes)
``checkpoint_best.pth``              the epoch with the best ``val/metric``
``checkpoint_epoch_EEEE.pth``        kept every ``keep_every`` epochs, if set (:meth:`FoldFolder.epoch_checkpoint`)
``config.json``                      the run's ``TrainerConfig`` (its task, ...), written when it starts
``training_log.txt``                 one line per epoch; ``progress.png``: the history panels
``validation/``                      the final validation: ``summary.json`` (+ seg: ``CASE.nii.gz``, ``CASE.npz``)
``postprocessing.json``              seg: what the final validation chose (``pirl_predict`` applies it)
``<task.subsets_folder>/``           ``pirl_evaluate_missing``: ``per_case.csv``, ``summary.json`` and one
                                     ``NAME.csv`` + ``NAME.png`` per matrix (:func:`segmentation_matrix_name`,
                                     :func:`translation_matrix_name`); the folder names are the Task's
==================================== ===================================================================

A run's identity is what it recorded, never a folder name read back: trainer, plans and configuration from its
model folder (``paths.parse_model_folder_name``), its task from ``config.json`` (:meth:`FoldFolder.task`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import load_json
from pirl_pipeline.paths import parse_model_folder_name
from pirl_pipeline.tasks import Task
from pirl_pipeline.trainer_config import TrainerConfig

PREFIX = "fold_"
FINAL = "checkpoint_final.pth"
LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
CONFIG = "config.json"
TRAINING_LOG = "training_log.txt"
PROGRESS_PLOT = "progress.png"
VALIDATION = "validation"
SUMMARY = "summary.json"  # in validation/ and in each subsets folder
VALIDATION_SUMMARY = f"{VALIDATION}/{SUMMARY}"
PER_CASE = "per_case.csv"  # in each subsets folder
POSTPROCESSING = "postprocessing.json"
_NAME = re.compile(re.escape(PREFIX) + r"(?P<fold>[^/\\]+)")


def segmentation_matrix_name(key: str, completed: bool = False) -> str:
    """``missing_modalities_<key>[_completed]``: a seg matrix of ``pirl_evaluate_missing`` (key: "dice", ...)."""
    return f"missing_modalities_{key}" + ("_completed" if completed else "")


def translation_matrix_name(metric: str) -> str:
    """``translation_<metric>``: a translation matrix of ``pirl_evaluate_missing`` (metric: "PSNR" or "SSIM")."""
    return f"translation_{metric.lower()}"


def _fold_order(fold: str) -> tuple[int, str]:
    return (int(fold), "") if fold.isdigit() else (10**6, fold)


@dataclass(frozen=True)
class FoldFolder:
    """``model/fold_F``; ``fold`` is a string ('0', 'all'); an int is taken as its digits."""

    model: Path
    fold: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "fold", str(self.fold))
        if not _NAME.fullmatch(PREFIX + self.fold):
            raise PirlInputError(f"{self.fold!r}: not a fold (an index, or 'all')")

    @classmethod
    def folds(cls, model: str | Path, require: str | None = None) -> list[FoldFolder]:
        """The fold folders of ``model`` (none when it is missing), numeric folds in numeric order first;
        ``require``: only those holding this file (a name, or a path relative to the fold folder)."""
        model = Path(model)
        found = [cls(model, m["fold"]) for p in (model.iterdir() if model.is_dir() else [])
                 if p.is_dir() and (m := _NAME.fullmatch(p.name))]
        return sorted((f for f in found if require is None or (f.path / require).is_file()),
                      key=lambda f: _fold_order(f.fold))

    @property
    def name(self) -> str:
        """``fold_F``."""
        return PREFIX + self.fold

    @property
    def path(self) -> Path:
        return self.model / self.name

    def checkpoint(self, name: str = FINAL) -> Path:
        """A checkpoint file of the fold (``name``: :data:`FINAL`, :data:`LATEST`, :data:`BEST` or a user's)."""
        return self.path / name

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The checkpoint kept after ``epoch`` epochs (``TrainerConfig.keep_every``)."""
        return self.path / f"checkpoint_epoch_{epoch:04d}.pth"

    def checkpoints(self) -> list[Path]:
        """The ``*.pth`` files the fold holds, by name."""
        return sorted(p for p in self.path.glob("*.pth") if p.is_file())

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def training_log(self) -> Path:
        return self.path / TRAINING_LOG

    @property
    def progress_plot(self) -> Path:
        return self.path / PROGRESS_PLOT

    @property
    def validation(self) -> Path:
        """The final validation's folder (predictions and summary)."""
        return self.path / VALIDATION

    @property
    def validation_summary(self) -> Path:
        return self.path / VALIDATION_SUMMARY

    @property
    def postprocessing(self) -> Path:
        return self.path / POSTPROCESSING

    def subsets(self, task: Task) -> Path:
        """Where ``pirl_evaluate_missing -t TASK`` writes by default (``task.subsets_folder``)."""
        return self.path / task.subsets_folder

    def matrix(self, task: Task, name: str) -> Path:
        """The CSV of one ``pirl_evaluate_missing`` matrix (``name``: :func:`segmentation_matrix_name`, ...)."""
        return self.subsets(task) / f"{name}.csv"

    def subsets_summary(self, task: Task) -> Path:
        return self.subsets(task) / SUMMARY

    def records(self) -> list[Path]:
        """What describes the run besides its checkpoints (``pirl_export_model`` ships those that exist)."""
        return [self.config, self.training_log, self.progress_plot, self.validation_summary, self.postprocessing]

    @property
    def identity(self) -> tuple[str, str, str] | None:
        """(trainer, plans, configuration) of the model folder; None for a folder not named by ``model_folder``."""
        return parse_model_folder_name(self.model.name)

    def read_config(self) -> TrainerConfig | None:
        """The ``TrainerConfig`` the run recorded in ``config.json`` (None without one; a PirlInputError naming
        the file when it cannot be read)."""
        if not self.config.is_file():
            return None
        try:
            return TrainerConfig.from_dict(load_json(self.config))
        except (ValueError, TypeError) as err:  # JSONDecodeError, or not a config
            raise PirlInputError(f"{self.config}: unreadable trainer config ({err})") from None

    def task(self) -> str | None:
        """The task the run recorded (``config.json``); None before it started."""
        config = self.read_config()
        return None if config is None else config.task
