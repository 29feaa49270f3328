"""torchrun / DistributedDataParallel plumbing: who am I, set up, wrap, reduce, tear down.

Collectives run on the process group's device: NCCL reduces CUDA tensors only, so every tensor a
collective sees is made on ``collective_device()`` (cuda for an NCCL group, cpu for gloo). On CUDA the
group is ``cuda:nccl,cpu:gloo``: tensors go through NCCL, Python objects (``all_gather_object``) and
barriers through gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: in a process group even alone (DDP + collectives run)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched


def backend_for(device_type: str) -> str:
    """The process-group backend for a device type: NCCL for CUDA tensors (gloo for objects), gloo on CPU."""
    return "cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo"


def device_for_backend(backend: str) -> torch.device:
    """Where a collective's tensors must live for ``backend`` (e.g. ``dist.get_backend()``): the current
    CUDA device when the group has NCCL (NCCL refuses CPU tensors), else the CPU."""
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective_device() -> torch.device:
    """The device of this process's default group (cpu when no group is initialised)."""
    return device_for_backend(dist.get_backend()) if dist.is_initialized() else torch.device("cpu")


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (see ``backend_for``), also with a single process
    (``torchrun --nproc_per_node 1`` runs the DDP and collective code paths on one GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun
    if world <= 1 and not launched:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), launched)
    if device_type == "cuda":  # before the group: NCCL binds each rank to its current device
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device_type))
    return info


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, find_unused: bool = True) -> torch.nn.Module:
    """DDP-wrap when distributed.

    ``find_unused``: DDP searches the autograd graph every step for parameters without gradient (a head or
    the decoder that a configuration never runs); without it such a parameter makes DDP fail. The trainer
    switches it off when its configuration uses every parameter (``BaseTrainer.uses_all_parameters``),
    which saves that traversal.
    """
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def reduce_means(sums: dict[str, float], counts: dict[str, int | float], info: DistInfo,
                 device: torch.device | None = None) -> dict[str, float]:
    """Weighted means over all ranks: ``sum over ranks of sums[k] / sum over ranks of counts[k]``.

    Keys are the union over ranks (gathered first), so a rank that saw no data for a key (e.g. an empty
    validation shard: ``{}``, ``{}``) still takes part, contributing 0 / 0; keys whose total count is 0 are
    left out. Every rank gets the same result. ``device``: where the reduced tensor lives (default: the
    process group's, ``collective_device()``).
    """
    if set(sums) - set(counts):
        raise ValueError(f"reduce_means: no count for {sorted(set(sums) - set(counts))}")
    keys = sorted(counts)
    if info.enabled:
        keys = sorted({k for rank_keys in gather(keys, info) for k in rank_keys})
        device = device or collective_device()
        t = torch.tensor([[float(sums.get(k, 0.0)), float(counts.get(k, 0))] for k in keys], dtype=torch.float64,
                         device=device).reshape(-1, 2)
        dist.all_reduce(t)
        totals = {k: (float(s), float(c)) for k, (s, c) in zip(keys, t.cpu().tolist())}
    else:
        totals = {k: (float(sums.get(k, 0.0)), float(counts[k])) for k in keys}
    return {k: s / c for k, (s, c) in totals.items() if c > 0}


def gather(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj`` (a list on all ranks; just ``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
