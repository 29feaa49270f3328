"""L_subj: a subject's X_h' must be nearer its own other modalities than any other subject (issue 23).

L_inv alone pulls a subject's modalities together and never pushes subjects apart, so its minimiser is one
constant X_h' for everybody (measured: between-subject cosine 0.997-1.000 after pre-training). L_subj keeps
L_inv's pull and adds the push, in two parts:
- an InfoNCE on centred, L2-normalised flattened X_h' whose positive is the subject's running L_inv anchor (its
  earlier modalities, detached) and whose negatives are the other subjects' anchors of the batch and a queue
  of other subjects' earlier anchors: the direction of X_h' must name the subject;
- a margin on the root-mean-square distance to every negative, mean(relu(margin - rms(q - n))): cosines are
  blind to scale, and measured with the InfoNCE alone (40 steps on BraTS-2018) the subjects' X_h' kept their
  directions but shrank together (within-subject variance 1e-5 of X_h''s, between-subject about as small).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SubjectContrastiveLoss(nn.Module):
    """InfoNCE over subjects on centred X_h'.

    query (b, D) flattened X_h' of b subjects seen through one modality, with subject ids (b,);
    keys (n, D) detached anchors of the batch's subjects with ids (n,). Each query's positive is the key with
    its id; negatives are every key and queue entry with another id. All vectors are centred by ``center``
    (an exponential moving average of the enqueued anchors, so a large component shared by all subjects does
    not make every cosine ~1) and L2-normalised; logits are cosines / temperature. Plus the margin term on the
    un-normalised distances to the negatives (``margin`` in X_h' units, RMS over the features). Queries without
    a positive key (a subject's first modality) are skipped; None when no query has one.
    """

    def __init__(self, dim: int, temperature: float = 0.2, queue_size: int = 64, momentum: float = 0.9,
                 margin: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature, self.momentum, self.margin = temperature, momentum, margin
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # -1: empty slot
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("center_set", torch.zeros((), dtype=torch.bool))

    def _unit(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(t.flatten(1).float() - self.center, dim=1)

    def forward(self, query: torch.Tensor, query_ids: torch.Tensor, keys: torch.Tensor,
                key_ids: torch.Tensor) -> torch.Tensor | None:
        q = self._unit(query)
        raw = torch.cat([keys.detach().flatten(1).float(), self.queue.clone().float()])
        k = F.normalize(raw - self.center, dim=1)
        ids = torch.cat([key_ids.to(q.device), self.queue_ids.clone()])
        valid = ids >= 0
        logits = (q @ k.T / self.temperature).masked_fill(~valid[None], float("-inf"))  # (b, n + K)
        positive = query_ids.to(q.device)[:, None] == ids[None]
        positive &= torch.arange(ids.numel(), device=q.device)[None] < keys.shape[0]  # positives: the batch's anchors
        has = positive.any(dim=1)
        if not bool(has.any()):
            return None
        # the queue may hold the subject's own earlier anchors: neither positive nor negative
        own_queued = (query_ids.to(q.device)[:, None] == ids[None]) & ~positive
        logits = logits.masked_fill(own_queued, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = torch.logsumexp(log_prob.masked_fill(~positive, float("-inf")), dim=1)
        negative = valid[None] & (query_ids.to(q.device)[:, None] != ids[None])  # (b, n + K)
        rms = ((query.flatten(1).float()[:, None] - raw[None]) ** 2).mean(-1).clamp_min(1e-12).sqrt()
        hinge = (F.relu(self.margin - rms) * negative)[has].sum() / negative[has].sum().clamp_min(1)
        return -pos[has].mean() + hinge

    @torch.no_grad()
    def enqueue(self, anchors: torch.Tensor, ids: torch.Tensor) -> None:
        """Push detached anchors (n, D) and their subject ids (n,); update the centre."""
        flat = anchors.detach().flatten(1).float()
        if not bool(self.center_set):
            self.center.copy_(flat.mean(0))
            self.center_set.fill_(True)
        else:
            self.center.mul_(self.momentum).add_(flat.mean(0), alpha=1 - self.momentum)
        size = self.queue.shape[0]
        flat, ids = flat[-size:], ids[-size:]
        idx = (self.queue_ptr + torch.arange(flat.shape[0], device=self.queue.device)) % size
        self.queue[idx] = flat.to(self.queue.dtype)
        self.queue_ids[idx] = ids.to(self.queue_ids.device)
        self.queue_ptr.copy_((self.queue_ptr + flat.shape[0]) % size)
