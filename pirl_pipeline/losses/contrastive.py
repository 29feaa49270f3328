"""L_contr: InfoNCE over L2-normalised projections with a memory queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """InfoNCE with the first view as query, the other views of the same sample as positives.

    views: (V, B, D) projections, V >= 2 (Algorithm 1: z of phi(X), z+, z-); all are L2-normalised.
    For sample b, query q = v_0[b], each positive k = v_u[b] (u >= 1):
        l = -log( exp(q·k/τ) / (exp(q·k/τ) + Σ_{n ∈ N_b} exp(q·n/τ)) ),   loss = mean over (b, u).
    Negatives N_b = every view of the OTHER samples in the batch ∪ the memory queue (K, D).
    fix: the reference uses raw dot products and in-batch negatives only (identically 0 at batch size 1);
    here the queue — detached projections of earlier steps' subjects (``enqueue``), initialised with
    random unit vectors — gives a real signal at any batch size. Same-subject embeddings of the current
    step are never negatives: the caller enqueues a step's embeddings after the step. With ``ids`` given to
    ``forward`` and ``enqueue`` the queue also remembers whose projection each entry is, and a query never
    meets its own subject's earlier projections as negatives (with 6 training subjects about 1 in 6 of the
    queue is the subject itself, which pushes its modalities apart while L_inv pulls them together).
    """

    def __init__(self, dim: int, temperature: float = 0.2, queue_size: int = 256) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # -1: no subject

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the queue held subject ids: their entries belong to no known subject
        state_dict.setdefault(prefix + "queue_ids", torch.full_like(self.queue_ids, -1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, views: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """views (V, B, D); ids (B,) subject ids (>= 0) or None (the queue is used whole)."""
        num_views, batch, _ = views.shape
        if num_views < 2:
            raise ValueError("InfoNCE needs at least 2 views per sample")
        v = F.normalize(views.float(), dim=-1)  # fix: cosine similarities (the reference: raw dot products)
        query = v[0]  # (B, D)
        pos = torch.einsum("bd,ubd->bu", query, v[1:]) / self.temperature  # (B, V-1)
        # fix: queue negatives, so the loss is not identically 0 at batch size 1 as in the reference
        queued = query @ self.queue.clone().float().T / self.temperature  # (B, K); clone: enqueue is in-place
        if ids is not None:  # fix: the subject's own earlier projections are not negatives
            queued = queued.masked_fill(ids.to(queued.device)[:, None] == self.queue_ids[None], float("-inf"))
        negatives = [queued]
        if batch > 1:
            other = torch.einsum("bd,ucd->buc", query, v) / self.temperature  # (B, V, B)
            same = torch.eye(batch, dtype=torch.bool, device=v.device).unsqueeze(1).expand_as(other)
            negatives.append(other.masked_fill(same, float("-inf")).flatten(1))
        neg = torch.cat(negatives, dim=1)  # (B, N)
        logits = torch.cat([pos.unsqueeze(-1), neg.unsqueeze(1).expand(-1, num_views - 1, -1)], dim=-1)
        return -F.log_softmax(logits, dim=-1)[..., 0].mean()

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Push detached, normalised embeddings (N, D) and their subject ids (N,) (None: -1) into the FIFO queue."""
        size = self.queue.shape[0]
        emb = F.normalize(embeddings.detach().float(), dim=1)[-size:].to(self.queue.dtype)
        idx = (self.queue_ptr + torch.arange(emb.shape[0], device=self.queue.device)) % size
        self.queue[idx] = emb
        self.queue_ids[idx] = -1 if ids is None else ids[-size:].to(self.queue_ids.device)
        self.queue_ptr.copy_((self.queue_ptr + emb.shape[0]) % size)
