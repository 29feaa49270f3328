"""Collectives and DDP without a GPU: a recording fake of torch.distributed checks that every tensor is made on
the process group's device (cuda for NCCL), real 2-process gloo runs check the sum-and-count reduction with an
empty validation shard, and Table-7 rows 2 and 5 pre-train under torchrun (DDP, 2 gloo processes)."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pirl_pipeline.training import distributed
from pirl_pipeline.training.distributed import DistInfo, reduce_means

# heavier imports (trainers, MONAI) live inside the tests: the spawned gloo processes import this module
TWO = DistInfo(rank=0, world_size=2)
VOLUME_ROWS = "volume_rows"
REPO = Path(__file__).resolve().parents[1]


def test_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.device_for_backend("nccl") == torch.device("cuda", 1)
    assert distributed.device_for_backend(distributed.backend_for("cuda")) == torch.device("cuda", 1)
    assert distributed.device_for_backend("gloo") == torch.device("cpu")
    assert distributed.backend_for("cpu") == "gloo" and "nccl" in distributed.backend_for("cuda")


class FakeGroup:
    """torch.distributed as seen by rank 0 of a 2-rank group whose other rank holds ``other``: records the
    device every collective tensor was made on (``torch.tensor`` inside ``distributed`` is intercepted, so a
    CUDA tensor can be asked for without a GPU) and adds the other rank's share in ``all_reduce``."""

    def __init__(self, backend: str, other: tuple[dict, dict]):
        self.backend, self.other = backend, other
        self.made_on: list[torch.device] = []
        self.reduced_on: list[torch.device] = []
        self.keys: list[str] = []

    def install(self, monkeypatch) -> None:
        fake = self

        class Torch:  # the real torch, except that tensors are made on the CPU and their device recorded
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def tensor(data, *, device=None, **kwargs):
                fake.made_on.append(torch.device(device or "cpu"))
                return torch.tensor(data, **kwargs)

        monkeypatch.setattr(distributed, "torch", Torch())
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: self.backend)
        monkeypatch.setattr(dist, "all_gather_object", self.all_gather_object)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def all_gather_object(self, out: list, obj) -> None:
        out[0], out[1] = obj, sorted(self.other[1])
        self.keys = sorted(set(out[0]) | set(out[1]))

    def all_reduce(self, t: torch.Tensor) -> None:
        self.reduced_on.append(self.made_on[-1])
        sums, counts = self.other
        t += torch.tensor([[sums.get(k, 0.0), counts.get(k, 0)] for k in self.keys], dtype=t.dtype)


@pytest.mark.parametrize(("backend", "device"), [("nccl", "cuda:0"), ("cuda:nccl,cpu:gloo", "cuda:0"),
                                                 ("gloo", "cpu")])
def test_collectives_use_the_group_device(monkeypatch, backend, device):
    fake = FakeGroup(backend, ({"val/loss": 6.0}, {"val/loss": 2}))
    fake.install(monkeypatch)
    means = reduce_means({"val/loss": 1.0, "train/loss": 4.0}, {"val/loss": 1, "train/loss": 2}, TWO)
    assert fake.reduced_on == [torch.device(device)]  # the old all_reduce_mean made a CPU tensor for NCCL
    assert means == {"val/loss": 7.0 / 3, "train/loss": 2.0}  # weighted by counts, keys unioned


def test_a_rank_without_data_still_reduces(monkeypatch):
    """The old code returned ``{}`` without a collective on such a rank, so the other ranks hung."""
    fake = FakeGroup("gloo", ({"val/metric": 0.5}, {"val/metric": 1}))
    fake.install(monkeypatch)
    assert reduce_means({}, {}, TWO) == {"val/metric": 0.5} and len(fake.reduced_on) == 1


def test_reduce_means_without_distribution():
    assert reduce_means({"a": 3.0, "b": 0.0}, {"a": 2, "b": 0}, DistInfo()) == {"a": 1.5}  # no count: left out
    with pytest.raises(ValueError, match="no count"):
        reduce_means({"a": 1.0}, {}, DistInfo())


def test_ddp_wrap_options(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda model, **kw: calls.append(kw) or model)
    model = torch.nn.Linear(1, 1)
    assert distributed.wrap(model, DistInfo(), torch.device("cpu"), find_unused=False) is model and not calls
    distributed.wrap(model, DistInfo(0, 2, 1), torch.device("cuda", 1), find_unused=False)
    distributed.wrap(model, DistInfo(0, 1, 0, launched=True), torch.device("cpu"))
    assert calls == [{"device_ids": [1], "find_unused_parameters": False},
                     {"device_ids": None, "find_unused_parameters": True}]


def test_epoch_row_lets_whole_volumes_decide():
    from pirl_pipeline.training.base_trainer import VOLUME_ROWS as rows_key
    from pirl_pipeline.training.base_trainer import epoch_row

    assert rows_key == VOLUME_ROWS
    means = {"train/loss": 1.0, "val/metric": 0.2, "val/dice_a": 0.3, "volume/metric": 0.7, VOLUME_ROWS: 0.5}
    assert epoch_row(means) == {"train/loss": 1.0, "val/metric": 0.7, "val/dice_a": 0.3}
    assert epoch_row({"val/metric": 0.2, VOLUME_ROWS: 0.0}) == {"val/metric": 0.2}


# ---- real process groups ---------------------------------------------------------------------------------
SHARDS = {  # rank -> (sums, counts) as the trainer builds them: rank 1 has an empty validation shard
    0: ({"train/loss": 4.0, "val/loss": 6.0, "val/metric": -6.0, "volume/metric": 1.5, VOLUME_ROWS: 2.0},
        {"train/loss": 2, "val/loss": 3, "val/metric": 3, "volume/metric": 2, VOLUME_ROWS: 1}),
    1: ({"train/loss": 10.0, VOLUME_ROWS: 0.0}, {"train/loss": 2, VOLUME_ROWS: 1}),
}


def _reduce_in_group(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    try:
        means = reduce_means(*SHARDS[rank], DistInfo(rank, 2))
        Path(folder, f"rank{rank}.json").write_text(json.dumps(means))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(target, folder: Path) -> None:
    """``target(rank, folder)`` in two spawned processes (ranks 0 and 1); both must finish cleanly within 90 s."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, str(folder))) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung and all(p.exitcode == 0 for p in procs)


def test_empty_validation_shard_two_gloo_processes(tmp_path):
    from pirl_pipeline.training.base_trainer import epoch_row

    _run_two_ranks(_reduce_in_group, tmp_path)
    rows = [epoch_row(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert rows[0] == rows[1] == {"train/loss": 3.5, "val/loss": 2.0, "val/metric": 0.75}


def _lock_in_group(rank: int, folder: str) -> None:
    from pirl_pipeline import run_lock
    from pirl_pipeline.cli.train import lock_fold
    from pirl_pipeline.errors import PirlInputError

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    try:
        outcome = {}
        for fold in ("fold_free", "fold_held"):
            try:
                lock_fold(Path(folder, fold), DistInfo(rank, 2))
                outcome[fold] = "locked"
            except PirlInputError as err:
                outcome[fold] = str(err)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        run_lock._release_all()  # spawned children skip atexit
        dist.destroy_process_group()


def test_a_held_fold_is_every_ranks_error_two_gloo_processes(tmp_path):
    """Rank 0 tries the fold's lock; its refusal reaches rank 1 as the same PirlInputError (no rank goes on alone
    into DDP setup), and a free fold is locked by rank 0 only."""
    held = tmp_path / "fold_held"
    held.mkdir()
    (held / ".pirl-lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "command": "pirl_train x", "time": time.time(),
                                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    _run_two_ranks(_lock_in_group, tmp_path)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0] == outcomes[1] and outcomes[0]["fold_free"] == "locked"
    assert f"another pirl run (pid {os.getpid()}" in outcomes[0]["fold_held"]


# ---- Table-7 rows under DDP --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrain_roots(tmp_path_factory):
    from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
    from tests.synthetic import pirl_roots, write_raw_dataset

    root = tmp_path_factory.mktemp("ddp")
    with pirl_roots(root) as env:
        write_raw_dataset(root / "raw", 921, "TinyDDP", num_cases=3, shape=(40, 44, 42),
                          channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "921", "-np", "1"]) == 0
    plans = root / "pre" / "Dataset921_TinyDDP" / "PIRLPlans.json"
    data = json.loads(plans.read_text())
    for config in data["configurations"].values():  # the smallest Swin: one block per stage, window 4
        config["network"].update(depths=[1, 1, 1, 1], window_size=4)
    plans.write_text(json.dumps(data))
    return root, env


@pytest.mark.parametrize(("row", "disabled"), [(2, ["equivariance", "prior"]), (5, ["equivariance"])])
def test_ddp_table7_rows_without_equivariance(pretrain_roots, tmp_path, row, disabled):
    from pirl_pipeline.checkpoint import load_checkpoint
    from tests.test_training_e2e import TINY

    _, env = pretrain_roots
    run_env = {**os.environ, **env, "PIRL_results": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = list(TINY)
    args[args.index("--iters") + 1] = "2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pirl_pipeline.cli.train",
           "921", "3d_fullres", "pretrain", *args, "--disable", *disabled]
    done = subprocess.run(cmd, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "Dataset921_TinyDDP" / "PIRLPretrainer__PIRLPlans__3d_fullres" / "fold_all"
    state = load_checkpoint(out / "checkpoint_final.pth")
    history = state["history"][0]
    assert state["epoch"] == 1 and "train/equivariance" not in history and "train/contrastive" in history
    assert "val/loss" in history and (state["network_kwargs"]["use_prior"] is (row == 5))
