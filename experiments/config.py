"""What the experiments run: the budget (one dataclass, a full and a quick preset) and the compared models.

Equal optimisation budget: every fine-tuning runs the same number of optimiser steps (``finetune_iters``)
with the same learning rate, batch, patch, augmentation and seed. The fine-tuning settings per task (lr,
schedule, modality dropout) are the demo's, chosen on the demo's validation volumes (``pirl_pipeline.demo``,
``FINETUNE_LR`` and ``FINETUNE_SET``). PIRL additionally ran ``pretrain_iters``
steps of Algorithm 1 before, so one baseline gets those steps too ("equal total steps"): pre-training must
beat spending the same number of steps on the task itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pirl_pipeline.losses.objective import TABLE7

TRANSLATION_ID, TRANSLATION_NAME = 601, "RealBraTS4"
SEGMENTATION_ID, SEGMENTATION_NAME = 602, "BraTS2015Expert"
SEGMENTATION2_ID, SEGMENTATION2_NAME = 603, "BraTS2018FlairT1"  # 6 BraTS-2018 FLAIR + T1 cases, whole tumour
SEGMENTATION2_FOLDS = 3  # 4 train / 2 validate each
SEGMENTATION4_ID, SEGMENTATION4_NAME = 604, "BraTS2018Four"  # 8 BraTS-2018 cases, 4 modalities, expert labels
SEGMENTATION4_FOLDS = 4  # 6 train / 2 validate each: Table 11 by cross-validation
PETCT_ID, PETCT_NAME = 605, "STSPetCT"  # 16 real FDG PET/CT soft-tissue-sarcoma crops, on the PET grid
PETCT_FOLDS = 4  # 12 train / 4 validate each (pirl's own seeded k-fold, splits.make_splits)


def eval_folder(work: Path, run: str, part: str, fold: int | str) -> Path:
    """``WORK/eval/RUN/PART_foldF``: one run's evaluation of a part's fold (``run``: a run key, ``reference_KIND``
    or ``references``, whose folder holds the reference stage's ``done``); ``fold="*"``: a glob pattern."""
    return work / "eval" / run / f"{part}_fold{fold}"


def representation_csv(work: Path, part: str | None = None) -> Path:
    """The representation measurement's rows: ``eval/representation/`` (the translation data's Table-7 rows) or
    ``eval/representation_PART/`` (the pre-trainings of ``part``, e.g. seg4's)."""
    return work / "eval" / ("representation" if part is None else f"representation_{part}") / "representation.csv"


#: the experiment's parts: dataset (folder name), task, folds attribute of the Budget
PARTS = {
    "translation": (f"Dataset{TRANSLATION_ID}_{TRANSLATION_NAME}", "translate"),
    "seg": (f"Dataset{SEGMENTATION_ID}_{SEGMENTATION_NAME}", "seg"),
    "seg2": (f"Dataset{SEGMENTATION2_ID}_{SEGMENTATION2_NAME}", "seg"),
    "seg4": (f"Dataset{SEGMENTATION4_ID}_{SEGMENTATION4_NAME}", "seg"),
    "seg4_translation": (f"Dataset{SEGMENTATION4_ID}_{SEGMENTATION4_NAME}", "translate"),  # Table 11's data
    "petct": (f"Dataset{PETCT_ID}_{PETCT_NAME}", "seg"),
    "petct_translation": (f"Dataset{PETCT_ID}_{PETCT_NAME}", "translate"),  # the same data: PET <-> CT
}
#: parts that share another part's data, folds and pre-trainings (one pre-training serves both tasks)
SHARED_PART = {"seg4_translation": "seg4", "petct_translation": "petct"}


@dataclass(frozen=True)
class Budget:
    """Sizes and step counts of one experiment run (CPU-feasible by default).

    Chosen from the learning curves (``python -m experiments.curves``, experiments/RESULTS.md): at 3 mm one
    64^3 patch holds the whole brain. At window 4 on 2 cores a BraTS-2015 seg run of 200 steps (2 modalities,
    whole-volume validation every epoch) takes ~5 min and its 40-step pre-training ~2.5 min (window 7: 23 and
    14 min). Pre-training runs at a constant lr; fine-tuning decays it (poly, the demo's choice).
    """

    spacing: float = 3.0  # mm, isotropic target spacing (pirl_plan_and_preprocess --spacing)
    patch: int = 64
    feature_size: int = 12
    batch_size: int = 1
    epochs: int = 10
    pretrain_iters_per_epoch: int = 4  # 40 steps of Algorithm 1 (~25 s each with 4 modalities)
    finetune_iters_per_epoch: int = 20  # 200 seg steps
    translate_iters_per_epoch: int = 10  # 100 translation steps
    val_iters: int = 1
    lr_schedule: str = "constant"  # pre-training (lr 2e-4); fine-tuning: finetune_options
    #: Swin attention window in tokens: 4 tiles the 64^3 patch's token grids, the paper's 7 pads them (3.3-3.4x
    #: the CPU time per step; benchmarks/RESULTS.md)
    window_size: int = 4
    seeds: tuple[int, ...] = (12345, 2)  # main rows; most on-request rows: the first only (Model.all_seeds)
    translation_folds: tuple[int, ...] = (0,)
    seg_folds: tuple[int, ...] = (0, 1)
    seg2_folds: tuple[int, ...] = (0,)
    seg4_folds: tuple[int, ...] = (0,)
    petct_folds: tuple[int, ...] = (0,)  # the full run: (0, 1, 2, 3), every subject tested once
    #: petct's target spacing (mm, isotropic); None: the planner's own, i.e. the PET grid (3.27 x 5.47 x 5.47 mm
    #: median), where one 64^3 patch already holds a whole crop (~52 x 29 x 29 voxels), so ``spacing`` (the
    #: coarsening that makes a whole brain fit the patch on CPU) has nothing to do there
    petct_spacing: float | None = None
    ablation_rows: tuple[int, ...] = (1, 2, 3, 4, 5)  # Table-7 rows besides row 6 (= full PIRL)
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    @property
    def pretrain_steps(self) -> int:
        return self.epochs * self.pretrain_iters_per_epoch

    def finetune_steps(self, task: str) -> int:
        return self.epochs * (self.translate_iters_per_epoch if task == "translate" else self.finetune_iters_per_epoch)

    def folds(self, part: str) -> tuple[int, ...]:
        return getattr(self, f"{SHARED_PART.get(part, part)}_folds")

    def part_spacing(self, part: str) -> float | None:
        """The ``--spacing`` of a part's plan_and_preprocess (None: the planner's own)."""
        return self.petct_spacing if SHARED_PART.get(part, part) == "petct" else self.spacing

    def to_dict(self) -> dict:
        return {**asdict(self), "pretrain_steps": self.pretrain_steps,
                "finetune_steps": {t: self.finetune_steps(t) for t in ("seg", "translate")}}


FULL = Budget()
QUICK = Budget(epochs=1, pretrain_iters_per_epoch=2, finetune_iters_per_epoch=2, translate_iters_per_epoch=2,
               seeds=(12345,), translation_folds=(0,), seg_folds=(0,), seg2_folds=(0,), seg4_folds=(0,), petct_folds=(0,),
               ablation_rows=(4,))


def run_key(model_key: str, seed: int, budget: Budget) -> str:
    """Folder name of one (model, seed) run: the model key for the first seed, ``KEY_seedS`` for others.
    ``model_of_run`` reads it back; nothing else builds or parses it."""
    return model_key if seed == budget.seeds[0] else f"{model_key}_seed{seed}"


def model_of_run(key: str) -> tuple[str, str]:
    """(model key, seed label) of a run folder name (inverse of ``run_key``; 'first' for the first seed)."""
    model, sep, seed = key.rpartition("_seed")
    return (model, seed) if sep and seed.isdigit() else (key, "first")


@dataclass(frozen=True)
class Model:
    """One compared model: its trainer, its pre-training (None: from scratch) and its step count."""

    key: str  # folder and table id
    label: str
    network: str  # "PIRL" or "SwinUNETR"
    disabled: tuple[str, ...] | None  # Table-7 terms switched off in pre-training; None = no pre-training
    equal_total_steps: bool = False  # fine-tune for pretrain_steps + finetune_steps
    all_seeds: bool = True  # False: the budget's first seed only
    variant: str = "default"  # TrainerConfig.variant of its pre-training and fine-tuning ("paper": the reference)
    sets: tuple[str, ...] = ()  # further ``--set FIELD=VALUE`` of both (e.g. "fusion=max")
    from_pretraining_of: str | None = None  # fine-tune from another model's pre-training (its key)
    pretrain_only: bool = False  # a diagnostic pre-training: measured by its representation, not fine-tuned
    on_request: bool = False  # planned only when named in ``--models``
    #: pre-train for this many times the budget's steps, keeping a checkpoint after every multiple of them (a
    #: pre-training-length curve: each kept checkpoint's representation is measured, the last one fine-tuned)
    pretrain_scale: int = 1

    def trainer(self, task: str) -> str:
        """The registry name: e.g. PIRLSegTrainer; a SwinUNETR started from a PIRL pre-training is
        SwinUNETRFromPIRL...Trainer (the plain SwinUNETR trainers refuse weights)."""
        source = "FromPIRL" if self.network == "SwinUNETR" and self.pretrain_key is not None else ""
        return f"{self.network}{source}{'Seg' if task == 'seg' else 'Translate'}Trainer"

    def steps(self, budget: Budget, task: str) -> int:
        return budget.finetune_steps(task) + (budget.pretrain_steps if self.equal_total_steps else 0)

    def iters_per_epoch(self, budget: Budget, task: str) -> int:
        return self.steps(budget, task) // budget.epochs

    def keep_every(self, budget: Budget) -> int:
        """Its pre-training's ``keep_every`` (epochs): one checkpoint per budget's worth of steps; 0: none."""
        return budget.epochs if self.pretrain_scale > 1 else 0

    def seeds(self, budget: Budget) -> tuple[int, ...]:
        return budget.seeds if self.all_seeds else budget.seeds[:1]

    @property
    def pretrain_key(self) -> str | None:
        """Folder of the pre-training this model starts from (shared by the tasks' fine-tunings)."""
        if self.from_pretraining_of is not None:
            return self.from_pretraining_of
        return None if self.disabled is None else self.key

    def settings(self) -> list[str]:
        """The ``--set`` values of its runs beyond the budget's: the variant and ``sets``."""
        return [f"variant={self.variant}", *self.sets]


COMPARISON = (
    Model("pirl", "PIRL pre-train -> fine-tune", "PIRL", ()),
    Model("pirl_scratch", "PIRLNet from scratch", "PIRL", None),
    Model("swin_scratch", "SwinUNETR from scratch", "SwinUNETR", None),
    Model("swin_scratch_long", "SwinUNETR from scratch, equal total steps", "SwinUNETR", None, True, False),
)


#: Table 11 (BraTS-2018, 4 modalities, 15 subsets): the representation fixes (issue 23) against the paper preset
TABLE11 = (
    Model("pirl", "PIRL (default: fixes on)", "PIRL", ()),
    Model("pirl_paper", "PIRL, paper preset", "PIRL", (), variant="paper"),
    Model("pirl_default_mean", "PIRL, default with mean fusion", "PIRL", (), sets=("fusion=mean",), all_seeds=False,
          pretrain_only=True),
    Model("pirl_scratch", "PIRLNet from scratch (default)", "PIRL", None),
    Model("pirl_scratch_paper", "PIRLNet from scratch, paper preset (mean fusion)", "PIRL", None, variant="paper"),
    Model("pirl_scratch_max", "PIRLNet from scratch, max fusion", "PIRL", None, sets=("fusion=max",),
          all_seeds=False),
    Model("swin_scratch", "SwinUNETR from scratch", "SwinUNETR", None),
    Model("swin_pirl", "SwinUNETR from the PIRL weights", "SwinUNETR", None, from_pretraining_of="pirl"),
    # on request (issue 23: the steps the health metrics say pre-training needs): 5x the pre-training, first seed
    Model("pirl_long", "PIRL (default), 5x pre-training", "PIRL", (), all_seeds=False, on_request=True,
          pretrain_scale=5),
    Model("pirl_paper_long", "PIRL, paper preset, 5x pre-training", "PIRL", (), variant="paper", all_seeds=False,
          on_request=True, pretrain_scale=5),
)

#: translation on Table 11's data (``seg4_translation``): fine-tunings of seg4's pre-trainings, both presets
TABLE11_TRANSLATION = tuple(m for m in TABLE11 if m.key in ("pirl", "pirl_paper", "pirl_scratch", "swin_scratch"))


@dataclass(frozen=True)
class ExternalTest:
    """A part's models ``keys`` scored again on EVERY case of another part's dataset (``dataset_part``; none of
    them seen in training), the results named ``name`` in ``eval/`` (``RUN/NAME_foldF``; the references
    ``reference_KIND/NAME_foldF``). The references stage, planned first, refuses a different channel set."""

    name: str
    dataset_part: str
    keys: tuple[str, ...]


#: Table 11's translation models (trained on 6 BraTS-2018 cases) also on the 8 four-modality cases of the
#: translation data: with the 2 held-out BraTS-2018 cases, 10 of the 16 four-modality cases in ../shared/data
#: (no subject in both: FLAIR correlation <= 0.40 between each BraTS-2018 case and the 7 Dataset601 cases on its
#: 240x240x155 grid; the eighth, ex0 (GLISTR), lies on another grid and was not compared)
EXTERNAL_TESTS = {"seg4_translation": ExternalTest("seg4_translation_external", "translation",
                                                   tuple(m.key for m in TABLE11_TRANSLATION))}

#: Table 8 on real PET/CT (``petct``): every network trained with modality dropout on PET + CT, then scored on
#: PET + CT and on PET alone (``pirl_evaluate_missing``: every channel subset of the one model); the Table-7
#: pre-training rows 1-5 (row 6 = "pirl") only on request (``--models ablation_row1 ...``), with every seed
PETCT = (
    Model("pirl", "PIRL pre-train -> fine-tune (PIRLNet)", "PIRL", ()),
    Model("swin_pirl", "SwinUNETR from the PIRL weights", "SwinUNETR", None, from_pretraining_of="pirl"),
    Model("swin_scratch", "SwinUNETR from scratch", "SwinUNETR", None),
    Model("dynunet_scratch", "DynUNet (nnU-Net-like) from scratch", "DynUNet", None),
    Model("pirl_scratch", "PIRLNet from scratch", "PIRL", None, on_request=True),  # not in the paper's Table 8
)
#: PET -> CT and CT -> PET (``petct_translation``): the PIRL fine-tuning starts from petct's pre-training
PETCT_TRANSLATION = (
    Model("pirl", "PIRL pre-train -> fine-tune (PIRLNet)", "PIRL", ()),
    Model("pirl_scratch", "PIRLNet from scratch", "PIRL", None),
    Model("swin_scratch", "SwinUNETR from scratch", "SwinUNETR", None),
)


def ablation_model(row: int, variant: str = "default") -> Model:
    """Table-7 row ``row`` (1-5): PIRL pre-training with the row's terms off, then the part's fine-tuning
    (translation in the ``ablation`` and ``seg4_translation`` parts, segmentation in ``petct``); ``variant``: the
    preset of both (its key gets the suffix ``_VARIANT`` unless it is the default)."""
    off = tuple(term for term, on in TABLE7[row].items() if not on)
    suffix, label = ("", "") if variant == "default" else (f"_{variant}", f", {variant} preset")
    return Model(f"ablation_row{row}{suffix}", f"Table 7 row {row}{label}", "PIRL", off, all_seeds=False,
                 variant=variant)


#: Table 7 on Table 11's data (``seg4_translation``, on request, first seed): rows 1-5 of both presets; row 6 is
#: the preset's PIRL row ("pirl", "pirl_paper")
TABLE11_ABLATION = tuple(dataclasses.replace(ablation_model(row, variant), on_request=True)
                         for variant in ("default", "paper") for row in range(1, 6))
TABLE11_ROW6 = {"default": "pirl", "paper": "pirl_paper"}

PART_MODELS = {"seg4": TABLE11, "seg4_translation": (*TABLE11_TRANSLATION, *TABLE11_ABLATION),  # others: COMPARISON
               "petct": (*PETCT, *(dataclasses.replace(ablation_model(r), on_request=True, all_seeds=True)
                                   for r in range(1, 6))),
               "petct_translation": PETCT_TRANSLATION}


def table7_terms(row: int) -> str:
    """``+ Contrastive + Decomposition + ...`` as in the paper's Table 7."""
    names = {"contrastive": "Contrastive", "decomposition": "Decomposition", "equivariance": "Equivariance",
             "invariance": "Invariance", "prior": "O"}
    return " ".join(f"+ {names[t]}" for t, on in TABLE7[row].items() if on)
