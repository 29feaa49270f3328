"""PIRLObjective: the losses of one Algorithm-1 pre-training step, with the Table-7 ablation switches."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from pirl_pipeline.losses.contrastive import InfoNCELoss
from pirl_pipeline.losses.decomposition import DecompositionLoss
from pirl_pipeline.losses.equivariance import EquivarianceLoss
from pirl_pipeline.losses.geometric import GeometricTransforms
from pirl_pipeline.losses.invariance import InvarianceLoss, SubjectAnchors
from pirl_pipeline.losses.subject_contrastive import SubjectContrastiveLoss
from pirl_pipeline.losses.views import ViewAugmentation

TERMS = ("contrastive", "equivariance", "invariance", "decomposition")

# Supplementary Table 7, rows 1-6: which constraints are on and whether the prior O is used.
TABLE7: dict[int, dict[str, bool]] = {
    1: {"contrastive": True, "decomposition": True, "equivariance": True, "invariance": False, "prior": False},
    2: {"contrastive": True, "decomposition": True, "equivariance": False, "invariance": True, "prior": False},
    3: {"contrastive": True, "decomposition": True, "equivariance": True, "invariance": True, "prior": False},
    4: {"contrastive": True, "decomposition": True, "equivariance": True, "invariance": False, "prior": True},
    5: {"contrastive": True, "decomposition": True, "equivariance": False, "invariance": True, "prior": True},
    6: {"contrastive": True, "decomposition": True, "equivariance": True, "invariance": True, "prior": True},
}


@dataclass
class PIRLLossConfig:
    """Switches (Table 7), weights and hyper-parameters of L_pre = Σ_t w_t · L_t.

    ``prior`` is an architecture switch: build the model with PIRLNet(use_prior=config.prior); the
    objective checks that they agree. ``views``: augmented views per modality (Algorithm 1: 2);
    ``view_grad``: back-propagate through the views' encoder passes (False: they are fixed keys, as in
    MoCo; it saves their backward and activation memory).

    The representation fixes (issue 23; 0/False reproduce the reference code): ``skip_dropout``: share of the
    decoder passes whose skips are zeroed, so L_decom must be met from X_h' (else the skips carry it and X_h'
    is ignored); ``subject_contrastive``: weight of L_subj (``SubjectContrastiveLoss``; 0: off), reported as
    the term "subject"; ``queue_subject_ids``: L_contr's queue never offers a subject its own projections.
    """

    contrastive: bool = True
    equivariance: bool = True
    invariance: bool = True
    decomposition: bool = True
    prior: bool = True
    weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TERMS})  # missing terms: 1
    temperature: float = 0.2
    queue_size: int = 256
    views: int = 2
    view_grad: bool = False
    foreground_weight: float = 10.0
    augmentation: ViewAugmentation = field(default_factory=ViewAugmentation)
    skip_dropout: float = 0.0
    subject_contrastive: float = 0.0
    queue_subject_ids: bool = False

    @classmethod
    def table7(cls, row: int, **overrides: object) -> PIRLLossConfig:
        """The configuration of Table 7's row 1-6 (6 = full PIRL), with optional overrides."""
        return replace(cls(**TABLE7[row]), **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PIRLLossConfig:
        """Inverse of ``to_dict`` (e.g. a config saved with a checkpoint)."""
        data = dict(data)
        augmentation = ViewAugmentation(**data.pop("augmentation", {}))
        return cls(**data, augmentation=augmentation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def enabled(self) -> list[str]:
        """The enabled loss terms, in TERMS order."""
        return [t for t in TERMS if getattr(self, t)]


@dataclass
class StepResult:
    """loss: Σ_t w_t · terms[t] (detached when the objective ran the backward passes itself);
    terms: each enabled term, unweighted, averaged over the modalities where it is defined (detached);
    order: the modality order visited."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    order: list[int]


class PIRLObjective(nn.Module):
    """One Algorithm-1 step for a batch of subjects with all M modalities.

    For each modality i in random order: x = X^i repeated into C_in channels; t ~ U(Φ) per subject;
    E(phi_t(x)) gives z (-> L_equ, query of L_contr), the views Augment(phi_t(x)) give the positives;
    X_h' is taken back to the un-rotated frame with phi_t^-1 on the bottleneck grid for L_inv (per-subject
    running anchor, first modality sets it); D(X_h') -> phi_t^-1 -> L_decom against all modalities.
    Each term is averaged over the modalities where it is defined (L_inv: M - 1 of them).

    Optimisation scheme (fix: the reference never zeroes gradients between its per-modality steps):
    ONE optimizer step per subject batch, on L_pre = Σ_t w_t · mean_i L_t^i. With ``backward`` given,
    each modality's share is back-propagated as soon as it is computed (the anchor and the queue are
    detached, so the accumulated gradient equals that of the sum) and only one modality's graph is alive.
    The caller zeroes the gradients before and steps the optimizer after.

    Memory queue: a step's projections are enqueued only in training mode (``objective.train()``), so
    validation data never become negatives.
    """

    def __init__(
        self, config: PIRLLossConfig, patch_size: Sequence[int], num_transforms: int = 4, proj_dim: int = 512,
        bottleneck_dim: int | None = None,
    ) -> None:
        """bottleneck_dim: size of a flattened X_h' (16fs·prod(patch/32)); needed by L_subj."""
        super().__init__()
        if not config.enabled():
            raise ValueError("at least one pre-training loss must be enabled")
        if config.contrastive and config.views < 1:
            raise ValueError("the contrastive loss needs at least one augmented view")
        self.config = config
        self.transforms = GeometricTransforms(patch_size, num_transforms)
        self.augment = config.augmentation
        self.contrastive = InfoNCELoss(proj_dim, config.temperature, config.queue_size)
        self.equivariance = EquivarianceLoss()
        self.invariance = InvarianceLoss()
        self.decomposition = DecompositionLoss(config.foreground_weight)
        self.subject = None
        if config.subject_contrastive > 0:
            if bottleneck_dim is None:
                raise ValueError("L_subj (subject_contrastive > 0) needs bottleneck_dim")
            self.subject = SubjectContrastiveLoss(bottleneck_dim, config.temperature)
        self._anonymous = 0  # ids for subjects given without one: never equal to a real or earlier id

    @classmethod
    def for_model(cls, model: nn.Module, config: PIRLLossConfig) -> PIRLObjective:
        """The objective matching a PIRLNet (or a DDP wrapper of one)."""
        net = getattr(model, "module", model)
        grid = math.prod(p // 32 for p in net.patch_size)
        return cls(config, net.patch_size, net.num_transforms, net.proj_dim, net.config["feature_size"] * 16 * grid)

    def forward(
        self,
        model: nn.Module,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
        targets: torch.Tensor | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        present: torch.Tensor | None = None,
        subjects: Sequence[str] | None = None,
    ) -> StepResult:
        """images (B, M, *patch) all modalities (the network inputs, intensity-augmented in training);
        targets (B, M, *patch) what L_decom reconstructs (the same patch with the spatial transform only;
        None: ``images``); mask (B, 1, *patch) foreground or None.

        backward: e.g. ``lambda loss: scaler.scale(loss).backward()``; called once per modality (under
        ``model.no_sync()`` except for the last one when the model is DDP-wrapped), outside ``autocast``.
        None: the returned loss carries the whole graph and the caller back-propagates it.
        autocast: a context factory wrapped around each modality's forward pass and losses only.
        present: (B, M) bool, the modalities each subject has (None: all). A subject contributes only those:
        it is encoded from them, its L_inv anchor is its first one, L_decom scores only them.
        subjects: the B case names (subject ids of L_subj and of L_contr's queue); None: all distinct and new.
        """
        net = getattr(model, "module", model)
        cfg = self.config
        if net.use_prior != cfg.prior:
            raise ValueError(f"config.prior={cfg.prior} but the model has use_prior={net.use_prior}")
        if cfg.decomposition and images.shape[1] != net.out_channels:
            raise ValueError(f"L_decom predicts all {images.shape[1]} modalities; model has {net.out_channels} outputs")
        targets = images if targets is None else targets
        present = (torch.ones(images.shape[:2], dtype=torch.bool) if present is None
                   else present.to(torch.bool).cpu())
        ids = self.subject_ids(subjects, images.shape[0])
        order = torch.randperm(images.shape[1]).tolist()
        visited = [m for m in order if bool(present[:, m].any())]
        counts = self._term_counts(present, visited)
        sums: dict[str, torch.Tensor] = {}
        total = images.new_zeros((), dtype=torch.float)
        anchors, queries, query_ids = SubjectAnchors(images.shape[0]), [], []
        for step, m in enumerate(visited):
            defer_sync = backward is not None and step < len(visited) - 1 and hasattr(model, "no_sync")
            with model.no_sync() if defer_sync else nullcontext():
                with autocast():
                    terms, proj = self._modality(model, net, images, targets, m, mask, anchors, present, ids)
                    loss = sum((self.weight(t) * v / counts[t] for t, v in terms.items()),
                               total.new_zeros(()))
                if backward is not None and loss.requires_grad:
                    # fix: gradients accumulate over the modalities of ONE batch; the caller zeroes and steps once
                    backward(loss)
                    loss = loss.detach()
            total = total + loss
            for t, v in terms.items():
                sums[t] = sums.get(t, 0) + v.detach()
            if proj is not None:
                queries.append(proj.detach())
                query_ids.append(ids[present[:, m]])
        if queries and self.training:  # fix: validation batches never enter the memory queue
            self.contrastive.enqueue(torch.cat(queries), torch.cat(query_ids) if cfg.queue_subject_ids else None)
        if self.subject is not None and self.training and anchors.value is not None:
            self.subject.enqueue(anchors.value[anchors.seen.to(anchors.value.device)], ids[anchors.seen])
        return StepResult(total, {t: v / counts[t] for t, v in sums.items()}, visited)

    def weight(self, term: str) -> float:
        """w_t of a term: the config's weights for TERMS, ``subject_contrastive`` for L_subj ("subject")."""
        return self.config.subject_contrastive if term == "subject" else self.config.weights.get(term, 1.0)

    def subject_ids(self, subjects: Sequence[str] | None, batch: int) -> torch.Tensor:
        """(B,) int64 ids: a stable hash of each case name; fresh ids never seen before when None."""
        if subjects is None:
            self._anonymous += batch
            return torch.arange(self._anonymous - batch, self._anonymous) + 2**40
        if len(subjects) != batch:
            raise ValueError(f"{len(subjects)} subject names for a batch of {batch}")
        return torch.tensor([zlib.crc32(str(s).encode()) for s in subjects], dtype=torch.long)

    @staticmethod
    def _term_counts(present: torch.Tensor, visited: list[int]) -> dict[str, int]:
        """Modalities over which each term is averaged: every visited one; L_inv: those where some subject
        already had an anchor (complete data: M - 1)."""
        seen, inv = torch.zeros(present.shape[0], dtype=torch.bool), 0
        for m in visited:
            inv += int(bool((seen & present[:, m]).any()))
            seen |= present[:, m]
        return {t: max(len(visited), 1) for t in TERMS} | {"invariance": max(inv, 1), "subject": max(inv, 1)}

    def _modality(
        self,
        model: nn.Module,
        net: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        m: int,
        mask: torch.Tensor | None,
        anchors: SubjectAnchors,
        present: torch.Tensor,
        ids: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        cfg, phi = self.config, self.transforms
        rows, channels = present[:, m], None
        if not bool(rows.all()):  # only the subjects that have modality m
            index = rows.nonzero()[:, 0].to(images.device)
            images, targets = images[index], targets[index]
            mask = None if mask is None else mask[index]
        if not bool(present.all()):
            channels = present[rows].to(images.device)
        batch = images.shape[0]
        t = phi.sample(batch)
        x = phi.apply_batch(net.single_modality(images, m), t)  # repeated (reference) or its own channel
        views = torch.cat([self.augment(x) for _ in range(cfg.views)]) if cfg.contrastive else None
        # a head runs only when its loss is on: an idle head has no gradient, which DDP refuses
        heads = [h for h in ("equivariance", "contrastive") if getattr(cfg, h)]
        dropping = self.training and cfg.decomposition and cfg.skip_dropout > 0  # validation: always with skips
        drop = torch.rand(batch) < cfg.skip_dropout if dropping else None
        # fix: skip_dropout: some decoder passes get no skips, so L_decom must be met through X_h'
        out = model(x, views=views, view_grad=cfg.view_grad, decode=cfg.decomposition, heads=heads, drop_skips=drop)
        terms: dict[str, torch.Tensor] = {}
        row_ids = ids[rows]
        if cfg.contrastive:
            terms["contrastive"] = self.contrastive(
                torch.cat([out.proj[None], out.view_proj.view(cfg.views, batch, -1)]),
                ids=row_ids if cfg.queue_subject_ids else None,
            )
        if cfg.equivariance:
            terms["equivariance"] = self.equivariance(out.equ_logits, t)
        if cfg.invariance or self.subject is not None:
            x_h = phi.inverse_batch(out.x_h, t)  # un-rotated frame: phi^-1 is exact on the bottleneck grid
            if self.subject is not None and bool(anchors.seen.any()):
                # fix: L_subj pushes subjects apart at X_h' (L_inv alone only pulls: its minimiser is a constant)
                seen = anchors.seen.nonzero()[:, 0]
                subj = self.subject(x_h, row_ids, anchors.value[seen.to(anchors.value.device)], ids[seen])
                if subj is not None:
                    terms["subject"] = subj
            inv = anchors.step(self.invariance, x_h, rows)
            if inv is not None and cfg.invariance:
                terms["invariance"] = inv
        if cfg.decomposition:
            terms["decomposition"] = self.decomposition(phi.inverse_batch(out.output, t), targets, mask, channels)
        return terms, out.proj if cfg.contrastive else None
