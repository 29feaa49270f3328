"""pirl_train end to end on a tiny generated dataset: pretrain -> seg / translate, baselines, resume, errors.

Tiny but real: the same CLI, trainers, loader and networks as a full run; 64^3 patches (the smallest that
SwinUNETR's instance norm accepts), feature_size 12, batch 1, one iteration per epoch.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pirl_pipeline.checkpoint import load_checkpoint
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.evaluation.segmentation import evaluate_segmentation_folder
from pirl_pipeline.file_io import save_json
from pirl_pipeline.networks.factory import build_network
from pirl_pipeline.trainer_config import TrainerConfig
from tests.synthetic import pirl_roots, write_raw_dataset

TINY = ["--epochs", "1", "--iters", "1", "--val-iters", "1", "--patch-size", "64", "64", "64", "--feature-size",
        "12", "--batch-size", "1", "-npa", "0", "-device", "cpu", "--set", "augment=false"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with pirl_roots(root) as env:
        write_raw_dataset(root / "raw", 920, "TinyTrain", num_cases=3, shape=(40, 44, 42),
                          channels={"0": "T1", "1": "FLAIR"})
        assert plan_main(["-d", "920", "-np", "1"]) == 0
        yield root, env


def fold_folder(root: Path, trainer: str, fold: str) -> Path:
    return root / "res" / "Dataset920_TinyTrain" / f"{trainer}__PIRLPlans__3d_fullres" / f"fold_{fold}"


def test_pretrain_then_finetune_all_tasks(roots):
    root, _ = roots
    assert train_main(["920", "3d_fullres", "pretrain", *TINY, "keep_every=1"]) == 0  # TINY ends in --set
    pre = fold_folder(root, "PIRLPretrainer", "all")
    assert load_checkpoint(pre / "checkpoint_epoch_0001.pth")["epoch"] == 1  # kept: a point of a training curve
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth", "progress.png",
                 "training_log.txt", "config.json", "validation/summary.json"):
        assert (pre / name).is_file(), name
    state = load_checkpoint(pre / "checkpoint_final.pth")
    assert state["epoch"] == 1 and state["trainer_name"] == "PIRLPretrainer"
    assert {"train/contrastive", "train/equivariance", "train/invariance", "train/decomposition"} <= set(
        state["history"][0])
    net = build_network(state["network_kwargs"])  # a checkpoint rebuilds its model alone
    net.load_state_dict(state["network_weights"])
    ckpt = str(pre / "checkpoint_final.pth")
    tiny_inherit = [a for a in TINY if a not in ("--patch-size", "64", "--feature-size", "12")]  # from ckpt
    for task, trainer in (("seg", "PIRLSegTrainer"), ("translate", "PIRLTranslateTrainer"),
                          ("seg", "SwinUNETRFromPIRLSegTrainer")):
        assert train_main(["920", "3d_fullres", task, "-f", "0", "-tr", trainer, "--pretrained", ckpt,
                           *tiny_inherit]) == 0
        state = load_checkpoint(fold_folder(root, trainer, "0") / "checkpoint_final.pth")
        assert state["network_kwargs"]["feature_size"] == 12
        assert not list(fold_folder(root, trainer, "0").glob("checkpoint_epoch_*"))  # keep_every=0: none kept
        assert "val/metric" in state["history"][0]
    log = (fold_folder(root, "PIRLSegTrainer", "0") / "training_log.txt").read_text()
    assert "rank 0 first batch" in log
    # representation health logged by every PIRLNet run; the config records every fix as it ran
    for trainer, fold in (("PIRLPretrainer", "all"), ("PIRLSegTrainer", "0")):
        history = load_checkpoint(fold_folder(root, trainer, fold) / "checkpoint_final.pth")["history"]
        assert {"val/health_swap", "val/health_spread", "val/health_retrieval", "val/health_prior_entropy",
                "val/health_prior_share"} <= set(history[-1]), trainer
        saved = json.loads((fold_folder(root, trainer, fold) / "config.json").read_text())
        assert saved["fusion"] == "joint" and saved["prior_attention"] == "cosine" and saved["skip_dropout"] == 0.5
        assert saved["decoder_skips"] == 5  # pinned: the network's value, inherited by the fine-tuning
    # the final validation's numbers are pirl_evaluate's on the same files
    validation = fold_folder(root, "PIRLSegTrainer", "0") / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    cases = [row["case"] for row in summary["per_case"]]
    table = evaluate_segmentation_folder(_only(root / "raw" / "Dataset920_TinyTrain" / "labelsTr", cases, root / "ref"),
                                         _only(validation, cases, root / "pred"), 920)
    for row in summary["per_case"]:
        for target, metrics in row["metrics"].items():
            for metric, value in metrics.items():
                expected = float("nan") if value is None else value  # summary.json writes NaN as null
                assert table.loc[row["case"], f"{metric}/{target}"] == pytest.approx(expected, nan_ok=True), metric


def _only(folder: Path, cases: list[str], into: Path) -> Path:
    """A folder of links to ``folder``'s label files of ``cases`` (pirl_evaluate scores whole folders)."""
    into.mkdir(exist_ok=True)
    for case in cases:
        (into / f"{case}.nii.gz").unlink(missing_ok=True)
        (into / f"{case}.nii.gz").symlink_to(folder / f"{case}.nii.gz")
    return into


def test_pretrained_weights_of_another_size_are_refused(roots, capsys):
    root, _ = roots
    ckpt = fold_folder(root, "PIRLPretrainer", "all") / "checkpoint_final.pth"
    if not ckpt.is_file():
        assert train_main(["920", "3d_fullres", "pretrain", *TINY]) == 0
    args = [a if a != "12" else "24" for a in TINY]
    assert train_main(["920", "3d_fullres", "seg", "--pretrained", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert "pretrained weights do not fit" in err and "shape mismatch" in err and "swinViT" in err


def _train_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pirl_pipeline.cli.train", "920", "3d_fullres", "seg", "-f", "0",
            "-tr", "DynUNetSegTrainer", "--epochs", "3", "--iters", "4", "--val-iters", "1", "--patch-size", "32",
            "32", "32", "--feature-size", "12", "--batch-size", "2", "-npa", "0", "-device", "cpu", *extra]


def _resume_cmd(*extra: str) -> list[str]:
    """``--c`` without repeating the run's flags: the saved configuration (feature size 12, patch 32^3, 3 epochs
    of 4 iterations, batch 2) must win over the defaults (plans: feature size 48, patch 64^3, batch 2)."""
    return [*_train_cmd()[:10], "-device", "cpu", "--c", *extra]


def test_window_size_is_set_by_pretraining_and_inherited_by_finetuning(roots, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIRL_results", str(tmp_path / "res"))
    assert train_main(["920", "3d_fullres", "pretrain", "--window-size", "4", *TINY]) == 0
    ckpt = tmp_path / "res" / "Dataset920_TinyTrain" / "PIRLPretrainer__PIRLPlans__3d_fullres" / "fold_all"
    state = load_checkpoint(ckpt / "checkpoint_final.pth")
    assert state["network_kwargs"]["window_size"] == 4  # the plans say 7
    table = "swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"
    assert state["network_weights"][table].shape[0] == (2 * 4 - 1) ** 3
    pretrained = ["--pretrained", str(ckpt / "checkpoint_final.pth")]
    assert train_main(["920", "3d_fullres", "seg", "-f", "0", *pretrained, *TINY]) == 0
    seg = tmp_path / "res" / "Dataset920_TinyTrain" / "PIRLSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
    assert load_checkpoint(seg / "checkpoint_final.pth")["network_kwargs"]["window_size"] == 4
    assert TrainerConfig.from_dict(json.loads((seg / "config.json").read_text())).window_size == 4
    assert train_main(["920", "3d_fullres", "translate", "-f", "0", *pretrained, "--window-size", "7", *TINY]) == 2
    assert "was trained with window 4" in capsys.readouterr().err


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(roots, tmp_path):
    _, env = roots
    runs = {}
    for name in ("straight", "killed"):
        run_env = {**os.environ, **env, "PIRL_results": str(tmp_path / name), "PYTHONPATH": str(REPO)}
        out = tmp_path / name / "Dataset920_TinyTrain" / "DynUNetSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
        if name == "killed":
            proc = subprocess.Popen(_train_cmd(), env=run_env, cwd=REPO, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while not (out / "checkpoint_latest.pth").is_file() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            state = load_checkpoint(out / "checkpoint_latest.pth")
            assert 1 <= state["epoch"] < 3, "the kill should land before the last epoch"
            subprocess.run(_resume_cmd(), env=run_env, cwd=REPO, check=True, stderr=subprocess.DEVNULL)
        else:
            subprocess.run(_train_cmd(), env=run_env, cwd=REPO, check=True, stderr=subprocess.DEVNULL)
        runs[name] = load_checkpoint(out / "checkpoint_final.pth")
    a, b = runs["straight"]["network_weights"], runs["killed"]["network_weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in runs["killed"]["history"]] == [0, 1, 2]
    assert runs["killed"]["config"] == runs["straight"]["config"]


def test_resume_uses_the_saved_config_and_refuses_conflicting_flags(roots, tmp_path, monkeypatch, capsys, caplog):
    """Killed before checkpoint_latest.pth: --c starts again from config.json, not from the defaults; a flag that
    would change the run is an error naming it, --epochs a logged override."""
    monkeypatch.setenv("PIRL_results", str(tmp_path))
    out = tmp_path / "Dataset920_TinyTrain" / "DynUNetSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
    config = TrainerConfig(task="seg", trainer="DynUNetSegTrainer", epochs=1, iters_per_epoch=1, val_iters=1,
                           patch_size=[32, 32, 32], feature_size=12, batch_size=1, num_workers=0, val_volumes=False)
    save_json(config.to_dict(), out / "config.json")
    for flags, field in ((["--lr", "0.001"], "--lr 0.001 (the run has 0.0002)"),
                         (["--feature-size", "24"], "--feature-size 24 (the run has 12)"),
                         (["--set", "w_inv_finetune=0.5"], "--set w_inv_finetune 0.5 (the run has 1.0)")):
        assert train_main(_resume_cmd(*flags)[3:]) == 2
        err = capsys.readouterr().err
        assert "config.json: --c continues the run with its saved configuration" in err and field in err
    with caplog.at_level(logging.INFO, logger="pirl"):
        assert train_main(_resume_cmd("--epochs", "2")[3:]) == 0
    assert "--c: --epochs 2 overrides the run's 1" in caplog.text
    state = load_checkpoint(out / "checkpoint_final.pth")
    assert state["config"] == {**config.pinned().to_dict(), "epochs": 2} and state["network_kwargs"]["filters"][0] == 8
    assert [r["epoch"] for r in state["history"]] == [0, 1]


def test_corrupt_latest_checkpoint_is_reported(roots, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIRL_results", str(tmp_path))
    out = tmp_path / "Dataset920_TinyTrain" / "DynUNetSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
    out.mkdir(parents=True)
    (out / "checkpoint_latest.pth").write_bytes(b"PK\x03\x04 truncated")
    assert train_main(_train_cmd("--c")[3:]) == 2
    assert "checkpoint_latest.pth: corrupt or partially written" in capsys.readouterr().err


def test_ddp_two_cpu_processes(roots, tmp_path):
    _, env = roots
    run_env = {**os.environ, **env, "PIRL_results": str(tmp_path), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pirl_pipeline.cli.train",
           *_train_cmd()[3:]]
    cmd[cmd.index("--epochs") + 1], cmd[cmd.index("--iters") + 1] = "1", "2"
    done = subprocess.run(cmd, check=False, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]  # the ranks' traceback, not just "exit status 1"
    out = tmp_path / "Dataset920_TinyTrain" / "DynUNetSegTrainer__PIRLPlans__3d_fullres" / "fold_0"
    log = (out / "training_log.txt").read_text()
    assert log.count("DynUNetSegTrainer:") == 1, "only rank 0 writes"
    firsts = [line.split(": ", 1)[1] for line in log.splitlines() if "first batch" in line]
    assert len(firsts) == 2 and firsts[0] != firsts[1], "ranks must draw different patches"
    assert load_checkpoint(out / "checkpoint_final.pth")["epoch"] == 1
