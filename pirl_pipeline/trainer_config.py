"""Trainer hyper-parameters as one dataclass: defaults here, overrides from the command line, saved with
every checkpoint (``config.json`` beside it), so a run is reproducible without subclassing anything.
A resumed run (``--c``) reads its config back; the command line may change only ``RESUME_SAFE`` fields."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.losses.objective import TERMS
from pirl_pipeline.networks.modalities import FUSIONS
from pirl_pipeline.networks.pirl_net import SKIP_LEVELS
from pirl_pipeline.networks.prior import PRIOR_ATTENTIONS
from pirl_pipeline.tasks import PRETRAIN, TASKS

TRAINING_TASKS = (PRETRAIN, *TASKS)  # what pirl_train trains
ABLATIONS = tuple(sorted((*TERMS, "prior")))  # the Table-7 switches: the objective's terms and the prior O
#: The representation fixes (issue 23), each a TrainerConfig field whose None means "the ``variant``'s value".
#: "paper" reproduces the reference code; "default" is what measurement chose (docs/training.md, experiments/table11).
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"skip_dropout": 0.0, "subject_contrastive": 0.0, "queue_subject_ids": False,
              "prior_attention": "dot", "fusion": "mean", "decoder_skips": 5},
    "default": {"skip_dropout": 0.5, "subject_contrastive": 1.0, "queue_subject_ids": True,
                "prior_attention": "cosine", "fusion": "joint", "decoder_skips": 5},
}
REPRESENTATION_FIXES = tuple(VARIANTS["paper"])
#: the fixes that are PIRLNet arguments: a fine-tuning inherits them from its pre-trained network
NETWORK_FIXES = ("prior_attention", "fusion", "decoder_skips")
#: what a resumed run may change (logged): how long it runs, how it validates and saves, how it executes —
#: never what its finished epochs computed (lr, iterations, batch, patch, network, losses, data, seed)
RESUME_SAFE = ("epochs", "val_iters", "num_workers", "save_every", "keep_every", "save_probabilities", "amp",
               "fused_attention",
               "grad_checkpoint", "compile", "health_subjects")


@dataclass
class TrainerConfig:
    """Everything a training run depends on besides the plans and the data."""

    task: str = "pretrain"
    trainer: str = ""  # registry name; empty -> the task's default trainer
    pretrained: str | None = None  # --pretrained file the run started from (absolute path; None: from scratch)
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 20
    lr: float = 2e-4  # the paper's learning rate (supplementary F.2)
    weight_decay: float = 1e-5
    lr_schedule: str = "poly"  # "poly" (nnU-Net, exponent 0.9) or "constant"
    grad_clip: float = 12.0
    batch_size: int | None = None  # None -> plans
    patch_size: list[int] | None = None  # None -> plans; multiples of 32
    feature_size: int | None = None  # None -> plans; multiple of 12
    #: Swin attention window in tokens; None -> plans (the paper's 7). A 64^3 patch has token grids 32/16/8/4,
    #: which window 7 pads to 35/21/14 (3.4x the CPU time of window 4 per fine-tuning step, benchmarks/RESULTS.md)
    window_size: int | None = None
    seed: int = 12345
    num_workers: int | None = None  # None -> min(8, CPUs // 2) on CUDA, 0 on the CPU (base_trainer.default_num_workers)
    amp: bool = True  # autocast on CUDA (bf16 when supported, else fp16 + grad scaler); --fp32 turns it off
    oversample_foreground: float = 1 / 3
    augment: bool = True
    save_every: int = 1  # epochs between checkpoint_latest.pth writes
    keep_every: int = 0  # N > 0: also keep checkpoint_epoch_EEEE.pth every N epochs (how long to train: a curve)
    save_probabilities: bool = False  # --npz: keep the final validation's probabilities (seg)
    # PIRL loss weights (Algorithm 1) and the Table-7 ablation switches
    w_contrastive: float = 1.0
    w_equivariance: float = 1.0
    w_invariance: float = 1.0
    w_decomposition: float = 1.0
    use_prior: bool = True
    disabled: list[str] = field(default_factory=list)  # subset of ABLATIONS switched off
    temperature: float = 0.2
    # the representation fixes (VARIANTS); None: the variant's value; ``resolved(field)`` reads them
    variant: str = "default"  # "default" (chosen by measurement) or "paper" (the reference code's behaviour)
    skip_dropout: float | None = None  # pre-training: share of decoder passes without skips (D must use X_h')
    subject_contrastive: float | None = None  # weight of L_subj: a subject's X_h' nearer its own modalities'
    queue_subject_ids: bool | None = None  # L_contr's queue never holds the query subject's own projections
    prior_attention: str | None = None  # "dot" (reference) or "cosine" (PriorFusion)
    fusion: str | None = None  # "mean" (reference), "max" or "joint" (networks.modalities.FUSIONS)
    decoder_skips: int | None = None  # encoder skips the decoder reads, finest first (5: all; PIRLNet)
    health_subjects: int = 4  # validation subjects of the per-epoch representation health (0: off)
    # fine-tuning (Algorithm 2)
    w_inv_finetune: float = 1.0
    modality_dropout: bool = True  # random non-empty modality subsets per sample
    #: with modality_dropout: share of samples that keep every modality they have (0: uniform over the 2^M - 1
    #: subsets, so all four MRI modalities in 1 of 15 samples)
    full_modality_share: float = 0.0
    class_weights: str = "auto"  # weighted CE: "auto" (training-label frequencies, see SegmentationLoss) or "none"
    class_weight_max: float = 2.0  # upper clip of the "auto" weights (a BCE weight w moves p=0.5 to 1/(1+w))
    val_volumes: bool = True  # whole validation volumes each epoch (curves, 'best' checkpoint); False: patches
    translate_loss: str = "l1"  # "l1" or "mse", on the foreground
    # device and speed (issue 12): how a run executes, not what it computes (results equal to float rounding)
    fused_attention: bool = True  # Swin window attention via scaled_dot_product_attention (training too)
    grad_checkpoint: bool = False  # recompute the Swin blocks' activations in backward (less memory, ~30% slower)
    compile: bool = False  # torch.compile the network (opt-in; first steps compile)

    def __post_init__(self) -> None:
        if self.task not in TRAINING_TASKS:
            raise PirlInputError(f"task must be one of {TRAINING_TASKS}, got {self.task!r}")
        unknown = sorted(set(self.disabled) - set(ABLATIONS))
        if unknown:
            raise PirlInputError(f"unknown ablation(s) {unknown}; choose from {ABLATIONS}")
        self.disabled = sorted(set(self.disabled))
        if "prior" in self.disabled:
            self.use_prior = False
        if self.patch_size is not None and (len(self.patch_size) != 3
                                            or any(p <= 0 or p % 32 for p in self.patch_size)):
            raise PirlInputError(f"patch_size needs 3 sides, each a positive multiple of 32; got {self.patch_size}")
        if self.feature_size is not None and (self.feature_size <= 0 or self.feature_size % 12):
            raise PirlInputError(f"feature_size must be a positive multiple of 12 (SwinUNETR); got {self.feature_size}")
        for name in ("epochs", "iters_per_epoch", "batch_size", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PirlInputError(f"{name} must be at least 1, got {value}")
        for name in ("val_iters", "keep_every"):
            if getattr(self, name) < 0:
                raise PirlInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr >= 0):  # 0 is allowed: a run that keeps its weights (tests)
            raise PirlInputError(f"lr must be a finite number >= 0, got {self.lr}")
        if self.window_size is not None and self.window_size < 1:
            raise PirlInputError(f"window_size must be a positive number of tokens; got {self.window_size}")
        if not (_whole(self.seed) and 0 <= self.seed < 2**32):  # the CLI's --seed range (numpy's)
            raise PirlInputError(f"seed must be a whole number in [0, 2**32), got {self.seed!r}")
        if self.num_workers is not None and not (_whole(self.num_workers) and self.num_workers >= 0):
            raise PirlInputError(f"num_workers must be a whole number >= 0, or None (the default), got "
                                 f"{self.num_workers!r}")
        if self.class_weights not in ("auto", "none"):
            raise PirlInputError(f"class_weights must be 'auto' or 'none', got {self.class_weights!r}")
        if not 0.0 <= self.full_modality_share <= 1.0:
            raise PirlInputError(f"full_modality_share must be in [0, 1], got {self.full_modality_share}")
        if self.variant not in VARIANTS:
            raise PirlInputError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if not 0.0 <= self.resolved("skip_dropout") <= 1.0:
            raise PirlInputError(f"skip_dropout must be in [0, 1], got {self.skip_dropout}")
        if not self.resolved("subject_contrastive") >= 0.0:
            raise PirlInputError(f"subject_contrastive must be >= 0, got {self.subject_contrastive}")
        if self.resolved("prior_attention") not in PRIOR_ATTENTIONS:
            raise PirlInputError(f"prior_attention must be one of {PRIOR_ATTENTIONS}, got {self.prior_attention!r}")
        if self.resolved("fusion") not in FUSIONS:
            raise PirlInputError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0 <= self.resolved("decoder_skips") <= SKIP_LEVELS:
            raise PirlInputError(f"decoder_skips must be 0..{SKIP_LEVELS}, got {self.decoder_skips}")
        if self.health_subjects < 0 or self.health_subjects == 1:
            raise PirlInputError(f"health_subjects must be 0 (off) or >= 2, got {self.health_subjects}")
        if self.lr_schedule not in ("poly", "constant"):
            raise PirlInputError(f"lr_schedule must be 'poly' or 'constant', got {self.lr_schedule!r}")

    def resolved(self, name: str) -> Any:
        """A representation fix (REPRESENTATION_FIXES): the field when set, else the variant's value."""
        value = getattr(self, name)
        return VARIANTS[self.variant][name] if value is None else value

    def representation_fixes(self) -> dict[str, Any]:
        """Every representation fix as this run uses it (recorded with each checkpoint's config)."""
        return {name: self.resolved(name) for name in REPRESENTATION_FIXES}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def pinned(self, **actual: Any) -> TrainerConfig:
        """This config with every representation fix written out (the variant's value where unset), so a later
        change of VARIANTS cannot change what a saved run means; ``actual`` (e.g. the fusion a fine-tuning
        inherited from its pre-trained network) wins."""
        return dataclasses.replace(self, **(self.representation_fixes() | actual))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerConfig:
        known = {f.name for f in fields(cls)}
        if "variant" not in d:  # saved before the representation fixes existed: it ran the reference behaviour
            d = {**d, "variant": "paper"}
        else:  # a fix added after the config was saved (saved configs pin every fix): the run did not use it
            d = {**VARIANTS["paper"], **d}
        return cls(**{k: v for k, v in d.items() if k in known})

    def changes(self, other: TrainerConfig) -> list[tuple[str, Any, Any]]:
        """(field, value here, value in ``other``) for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]

    def with_overrides(self, pairs: list[str]) -> TrainerConfig:
        """Apply ``key=value`` strings (``--set lr=1e-3``), parsed with the field's type."""
        d = self.to_dict()
        types = typing.get_type_hints(TrainerConfig)
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in d:
                raise PirlInputError(f"{pair!r}: expected FIELD=VALUE with FIELD one of {sorted(d)}")
            try:
                d[key] = _parse(value, types[key])
            except ValueError as err:
                kind = getattr(types[key], "__name__", str(types[key]))
                raise PirlInputError(f"{pair!r}: {key} takes {kind}; {err}") from None
        return TrainerConfig.from_dict(d)


def _whole(value: Any) -> bool:
    """An int or numpy integer, not a bool."""
    return hasattr(value, "__index__") and not isinstance(value, bool)


def _parse(value: str, kind: Any) -> Any:
    """``value`` as the field type ``kind`` (a real type from ``typing.get_type_hints``: bool, int, float, str,
    list[X], or X | None)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if type(None) in typing.get_args(kind):  # X | None
        return None if value.lower() in ("none", "null") else _parse(value, args[0])
    if typing.get_origin(kind) is list:
        return [_parse(v, args[0]) for v in value.split(",") if v]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return kind(value)  # int, float, str
