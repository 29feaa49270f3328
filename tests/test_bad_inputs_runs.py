"""Bad-input battery, round two (issue 26, part B): model zips (bombs, CRC, full disk), arguments that validate
where they arrive, checkpoint writes on a full disk, damaged checkpoints and folds of other models, one run per
output folder, and the error as the last line under a progress bar. Each case asserts the exit code, one error
line naming the file, nothing partial written and inputs unchanged."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pirl_pipeline import run_lock
from pirl_pipeline.cli import model_zip
from pirl_pipeline.cli import train as train_cli
from pirl_pipeline.cli.evaluate import main as evaluate_main
from pirl_pipeline.cli.evaluate_missing import main as evaluate_missing_main
from pirl_pipeline.cli.find_best_configuration import main as find_best_main
from pirl_pipeline.cli.model_zip import export_main, install_main
from pirl_pipeline.cli.plan_and_preprocess import main as plan_main
from pirl_pipeline.cli.predict import main as predict_main
from pirl_pipeline.cli.train import main as train_main
from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.training import distributed
from tests.synthetic import pirl_roots, write_raw_dataset
from tests.test_bad_inputs import CHANNELS, TINY, damage, no_partial_output, predict_input, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = "DynUNetSegTrainer__PIRLPlans__3d_fullres"


def run(main, argv, capsys) -> tuple[int, list[str], str]:
    """Exit code, the ``error:`` lines of stderr, and its last non-empty line."""
    code = main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, [line for line in lines if line.startswith("error: ")], lines[-1] if lines else ""


def refused(result: tuple[int, list[str], str], *expected: str) -> str:
    code, errors, last = result
    assert code == 2 and len(errors) == 1 and errors[0] == last, (code, errors, last)
    assert all(e in errors[0] for e in expected), errors
    return errors[0]


@pytest.fixture
def roots(tmp_path):
    with pirl_roots(tmp_path):
        yield tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DynUNet seg model (fold 0, one step, feature size 12) and its roots (raw, pre, res)."""
    root = tmp_path_factory.mktemp("runs")
    with pirl_roots(root):
        write_raw_dataset(root / "raw", 961, "Runs", num_cases=2, shape=(16, 16, 16), channels=CHANNELS)
        assert plan_main(["-d", "961", "-np", "1"]) == 0
        assert train_main(["961", "3d_fullres", "seg", "-f", "0", "-tr", "DynUNetSegTrainer", "--feature-size", "12",
                           "--patch-size", "32", "32", "32", *TINY]) == 0
    return root


@pytest.fixture
def in_trained(trained):
    with pirl_roots(trained):
        yield trained, trained / "res" / "Dataset961_Runs" / MODEL


# ---- 1. model zips: sizes checked before writing, bounded extraction, CRC and disk errors ----

PREFIX = f"Dataset961_Runs/{MODEL}"


def _zip(path: Path, payload: bytes, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(f"{PREFIX}/fold_0/checkpoint_final.pth", payload)
        zf.writestr(f"{PREFIX}/fold_0/config.json", "{}")
    return path


class _FullDisk:
    """``open`` for writing on a full disk: the file is created, every write raises ENOSPC."""

    def __init__(self, path, mode):
        self.file = open(path, mode)  # noqa: SIM115

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("problem, expected", [
    ("bomb", "(more than 100:1, a zip bomb?); nothing was installed"),
    ("cap", "unpacks to 48.8 KiB, more than any pirl model (at most 1000 bytes)"),
    ("free_space", "write failed: no space left on device"),
    ("crc", "is damaged or unreadable (Bad CRC-32"),
    ("disk_full", "write failed: no space left on device; nothing was installed"),
])
def test_install_refuses_bombs_and_damage_before_or_without_leaving_anything(tmp_path, monkeypatch, capsys,
                                                                            problem, expected):
    results = tmp_path / "res"
    monkeypatch.setenv("PIRL_results", str(results))
    if problem == "bomb":  # 20 MiB of zeros in a ~20 KiB zip
        archive = _zip(tmp_path / "model.zip", bytes(20 << 20))
        assert archive.stat().st_size < 100_000
    else:
        archive = _zip(tmp_path / "model.zip", os.urandom(50_000), zipfile.ZIP_STORED)
    if problem == "cap":
        monkeypatch.setattr(model_zip, "MAX_INSTALL_BYTES", 1000)
    elif problem == "free_space":
        monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=1000))
    elif problem == "crc":
        data = bytearray(archive.read_bytes())
        data[1000] ^= 0xFF  # inside the stored checkpoint
        archive.write_bytes(bytes(data))
    elif problem == "disk_full":
        monkeypatch.setattr(model_zip, "open", _FullDisk, raising=False)
    before = archive.read_bytes()
    error = refused(run(install_main, [archive], capsys), expected)
    assert str(archive if problem not in ("free_space", "disk_full") else results) in error
    assert archive.read_bytes() == before
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


# ---- 2. arguments: validated where they arrive, one line, nothing written ----

ARGUMENTS = [  # main, arguments, what the error says
    (plan_main, ["-d", "961", "--spacing", "nan", "nan", "nan"], "--spacing: 'nan' is not a finite number > 0"),
    (plan_main, ["-d", "961", "--spacing", "2", "0", "2"], "--spacing: '0' is not a finite number > 0"),
    (plan_main, ["-d", "961", "-np", "0"], "-np: '0' is not a whole number > 0"),
    (predict_main, ["-i", "in", "-o", "out", "-m", "model", "-np", "0"], "-np: '0' is not a whole number > 0"),
    *[(train_main, ["961", "3d_fullres", "seg", *argv], expected) for argv, expected in [
        (["--patch-size", "0", "0", "0"], "--patch-size: '0' is not a positive multiple of 32"),
        (["--patch-size", "-64", "64", "64"], "--patch-size: '-64' is not a positive multiple of 32"),
        (["--patch-size", "48", "64", "64"], "--patch-size: '48' is not a positive multiple of 32"),
        (["--feature-size", "0"], "--feature-size: '0' is not a positive multiple of 12"),
        (["--feature-size", "13"], "--feature-size: '13' is not a positive multiple of 12"),
        (["--batch-size", "0"], "--batch-size: '0' is not a whole number > 0"),
        (["--epochs", "0"], "--epochs: '0' is not a whole number > 0"),
        (["--iters", "-1"], "--iters: '-1' is not a whole number > 0"),
        (["--val-iters", "-1"], "--val-iters: '-1' is not a whole number >= 0"),
        (["-npa", "-2"], "-npa: '-2' is not a whole number >= 0"),
        (["--lr", "nan"], "--lr: 'nan' is not a finite number > 0"),
        (["--lr", "inf"], "--lr: 'inf' is not a finite number > 0"),
        (["--lr", "-0.001"], "--lr: '-0.001' is not a finite number > 0"),
        (["--window-size", "0"], "--window-size: '0' is not a whole number > 0"),
        (["--seed", "-1"], "--seed: '-1' is not a whole number in [0, 2**32)"),
        (["--epochs", "ten"], "--epochs: 'ten' is not a whole number > 0"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag (see pirl_train -h)"),
    ]],
    (evaluate_main, ["-ref", "r", "-pred", "p", "-d", "961", "-t", "seg", "-np", "0"], "-np: '0' is not"),
    (evaluate_missing_main, ["-d", "961", "-t", "seg", "--max_cases", "0"], "--max_cases: '0' is not"),
    (find_best_main, ["-d", "961", "-t", "seg", "-np", "-1"], "-np: '-1' is not"),
]


@pytest.mark.parametrize("main, argv, expected", ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_arguments_are_validated_where_they_arrive(roots, capsys, main, argv, expected):
    raw = write_raw_dataset(roots / "raw", 961, "Runs", num_cases=1, shape=(8, 8, 8), channels=CHANNELS)
    before = snapshot(raw)
    refused(run(main, argv, capsys), expected)
    assert not (roots / "pre").exists() and not (roots / "res").exists() and snapshot(raw) == before


# ---- 3. a checkpoint write on a full disk (torch.save raises RuntimeError, not OSError) ----

def test_checkpoint_write_on_a_full_disk_is_one_line(in_trained, capsys, monkeypatch):
    root, _ = in_trained

    def full(obj, f, *args, **kwargs):  # what torch.save raises on a full disk (measured on a 1 MiB tmpfs)
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=0))
    fold = root / "res" / "Dataset961_Runs" / MODEL / "fold_1"
    error = refused(run(train_main, ["961", "3d_fullres", "seg", "-f", "1", "-tr", "DynUNetSegTrainer", "--feature-size",
                                     "12", "--patch-size", "32", "32", "32", *TINY], capsys),
                    "write failed: no space left on device (torch.save failed: [enforce fail")
    assert error.startswith(f"error: {fold}/checkpoint_") and not list(fold.glob("*.pth"))
    no_partial_output(fold)
    assert not (fold / run_lock.LOCK_NAME).exists()
    shutil.rmtree(fold)


# ---- 4. damaged checkpoints, and folds of another model ----

def _edit_checkpoint(source: Path, target: Path, edit) -> Path:
    state = torch.load(source, weights_only=True)
    edit(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


EDITS = {  # name -> (edit of a checkpoint, what the error says)
    "missing_tensor": (lambda s: s["network_weights"].pop(next(iter(s["network_weights"]))),
                       "its weights do not fit its network (missing "),
    "unknown_kind": (lambda s: s["network_kwargs"].update(kind="resnet"), "unknown network kind 'resnet'"),
    "bad_description": (lambda s: s["network_kwargs"].update(depth=3), "cannot rebuild its network"),
    "other_dataset": (lambda s: s["plans"].update(dataset_name="Dataset962_Other"), "plans.dataset_name"),
    "other_labels": (lambda s: s["dataset_json"]["labels"].update(edema=3), "labels.edema differ"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_damaged_checkpoints_and_foreign_folds_are_one_line(in_trained, tmp_path, capsys, edit):
    _, folder = in_trained
    change, expected = EDITS[edit]
    copy = tmp_path / MODEL
    shutil.copytree(folder / "fold_0", copy / "fold_0", ignore=shutil.ignore_patterns("validation"))
    foreign = edit.startswith("other_")  # fold_1 of another model beside an intact fold_0
    bad = _edit_checkpoint(folder / "fold_0" / "checkpoint_final.pth",
                           copy / ("fold_1" if foreign else "fold_0") / "checkpoint_final.pth", change)
    inputs = predict_input(tmp_path / "in")
    error = refused(run(predict_main, ["-i", inputs, "-o", tmp_path / "out", "-m", copy, "--disable_tta"], capsys),
                    expected, str(bad))
    if foreign:
        assert "not the model of" in error and str(copy / "fold_0" / "checkpoint_final.pth") in error
        refused(run(export_main, ["-m", copy, "-o", tmp_path / "model.zip"], capsys), expected, str(bad))
    assert not (tmp_path / "out").exists() and not (tmp_path / "model.zip").exists()


def test_install_refuses_folds_of_two_models(in_trained, tmp_path, monkeypatch, capsys):
    _, folder = in_trained
    assert export_main(["-m", str(folder), "-o", str(tmp_path / "model.zip")]) == 0
    other = _edit_checkpoint(folder / "fold_0" / "checkpoint_final.pth", tmp_path / "fold_1.pth",
                             EDITS["other_labels"][0])
    with zipfile.ZipFile(tmp_path / "model.zip", "a") as zf:
        zf.write(other, f"{PREFIX}/fold_1/checkpoint_final.pth")
    monkeypatch.setenv("PIRL_results", str(tmp_path / "res"))
    refused(run(install_main, [tmp_path / "model.zip"], capsys),
            f"model.zip/{PREFIX}/fold_1/checkpoint_final.pth: not the model of", "labels.edema differ")
    assert not (tmp_path / "res" / "Dataset961_Runs").exists()


# ---- 5. one run per output folder ----

SINCE = time.strftime("%Y-%m-%d %H:%M:%S")  # after this test process started: a lock it could hold


def _lock(folder: Path, pid: int, host: str | None = None, since: str = SINCE) -> Path:
    """A lock of ``pid`` (default: this test process, a live python that started before ``since``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "command": "pirl_train 961 x",
                                "since": since}))
    return lock


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("owner", ["live", "other_host"])
def test_a_second_plan_and_preprocess_run_is_refused(roots, capsys, owner):
    raw = write_raw_dataset(roots / "raw", 961, "Runs", num_cases=1, shape=(8, 8, 8), channels=CHANNELS)
    folder = roots / "pre" / "Dataset961_Runs"
    lock = _lock(folder, os.getpid() if owner == "live" else 12345, None if owner == "live" else "elsewhere")
    before, held = snapshot(raw), lock.read_text()
    error = refused(run(plan_main, ["-d", 961, "-np", 1], capsys), f"error: {folder}: another pirl run (pid ",
                    f"command pirl_train 961 x, since {SINCE}) is using it; delete {lock} if that run is gone")
    assert ("on elsewhere" in error) == (owner == "other_host")
    assert [p.name for p in folder.iterdir()] == [run_lock.LOCK_NAME] and lock.read_text() == held
    assert snapshot(raw) == before


def test_a_stale_lock_is_taken_over_and_released(roots, caplog):
    write_raw_dataset(roots / "raw", 961, "Runs", num_cases=1, shape=(8, 8, 8), channels=CHANNELS)
    folder = roots / "pre" / "Dataset961_Runs"
    _lock(folder, _dead_pid())
    assert plan_main(["-d", "961", "-np", "1", "--plan_only", "--clean"]) == 0
    assert "taking over the lock of a run that is no longer running" in caplog.text
    assert (folder / "PIRLPlans.json").is_file() and not (folder / run_lock.LOCK_NAME).exists()


def test_a_second_training_of_a_fold_is_refused(in_trained, capsys, monkeypatch):
    _, folder = in_trained
    before = snapshot(folder / "fold_0")
    lock = _lock(folder / "fold_0", os.getpid())

    def no_read(path, *args, **kwargs):
        raise AssertionError(f"a refused --c read {path}")
    monkeypatch.setattr(train_cli, "load_checkpoint", no_read)  # the lock comes before the checkpoint is read
    try:
        refused(run(train_main, ["961", "3d_fullres", "seg", "-f", "0", "-tr", "DynUNetSegTrainer", "--c", *TINY],
                    capsys), f"error: {folder / 'fold_0'}: another pirl run (pid {os.getpid()}")
    finally:
        lock.unlink()
    assert snapshot(folder / "fold_0") == before


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="/proc (Linux) tells a reused pid")
@pytest.mark.parametrize("owner", ["started_after_the_lock", "not_python"])
def test_a_lock_whose_pid_was_reused_is_taken_over(tmp_path, caplog, owner):
    """The lock's pid is alive but is not its run: it started after the lock was written, or it is another
    program (neither pirl nor python in its command line)."""
    other = None
    if owner == "not_python":
        other = subprocess.Popen(["sleep", "60"])
        time.sleep(0.2)
    try:
        pid = os.getpid() if other is None else other.pid
        _lock(tmp_path / "out", pid, since="2000-01-01 00:00:00" if other is None else SINCE)
        with run_lock.scope():
            lock = run_lock.acquire(tmp_path / "out")
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert "taking over the lock of a run that is no longer running" in caplog.text
    finally:
        if other is not None:
            other.kill()
            other.wait()


def test_lock_fold_shares_rank_0s_refusal(tmp_path):
    """Single process: rank 0's lock; a held fold is the PirlInputError naming its run (DDP: test_distributed)."""
    info = distributed.DistInfo()
    with run_lock.scope():
        train_cli.lock_fold(tmp_path / "fold_0", info)
        assert (tmp_path / "fold_0" / run_lock.LOCK_NAME).is_file()
    lock = _lock(tmp_path / "fold_1", os.getpid())
    with pytest.raises(PirlInputError, match=f"another pirl run .*; delete {lock} if that run is gone"):
        train_cli.lock_fold(tmp_path / "fold_1", info)


def test_lock_is_reentrant_and_removes_the_folders_it_made(tmp_path):
    folder = tmp_path / "a" / "b"
    with run_lock.scope():
        lock = run_lock.acquire(folder)
        assert run_lock.acquire(folder) == lock and json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "a").exists()


# ---- 6. the error is the last line, after the progress bar ----

def test_error_is_the_last_line_under_a_progress_bar(roots, capsys):
    raw = write_raw_dataset(roots / "raw", 961, "Runs", num_cases=2, shape=(8, 8, 8), channels=CHANNELS)
    damaged = raw / "imagesTr" / "case001_0001.nii.gz"
    expected = damage(damaged, "truncated")
    code = plan_main(["-d", "961", "-np", "1"])  # one process: the bar is iterated in a comprehension
    err = capsys.readouterr().err
    assert code == 2 and "it/s]" in err  # a bar was drawn
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: {damaged}") and expected in last, last
    assert not (roots / "pre").exists()


def test_an_internal_error_inside_a_bar_keeps_its_traceback_and_closes_the_bar():
    from tqdm import tqdm

    from pirl_pipeline.cli.common import cli_entry
    from pirl_pipeline.parallel import parallel_map

    @cli_entry
    def main(argv):
        parallel_map(int, ["1", "x"], 1, "items")
    with pytest.raises(ValueError):  # an internal failure is not a user error: its traceback stays
        main([])
    assert not [bar for bar in getattr(tqdm, "_instances", ()) if bar.desc == "items"]
