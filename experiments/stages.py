"""Runs the experiment's pirl commands as subprocesses: one log file each, timed, skipped when done; and
says, without running anything, what a run would do and about how long it would take (``--dry-run``)."""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pirl_pipeline.file_io import load_json, save_json

TIMINGS = "timings.json"  # in the work folder: each stage's wall time and command


def shown_command(argv: list[str]) -> str:
    """A stage's command as ``timings.json`` records it: ``python -m MODULE ...``."""
    return shlex.join(["python", "-m", *argv])


def is_done(name: str, argv: list[str], done: Path, timings: dict, same_command: bool = False) -> bool:
    """A stage whose ``done`` file exists (``same_command``: and that last ran with this very command)."""
    return done.exists() and (not same_command or timings.get(name, {}).get("command") == shown_command(argv))


def _kinds(name: str) -> list[tuple[str, ...]]:
    """``train pirl_seed2 seg4 fold0`` -> [("train", "seg4"), ("train",)]: stages of one kind, then of one verb,
    take about as long per step."""
    words = name.split()
    part = words[2:3] if words[0] in ("pretrain", "train", "evaluate") else words[1:2]
    return [(words[0], *part), (words[0],)]


def _steps(command: list[str]) -> int:
    """Optimiser steps of a training command (``--epochs`` x ``--iters``); 1 for any other stage."""
    value = {flag: int(command[i + 1]) for i, flag in enumerate(command[:-1]) if flag in ("--epochs", "--iters")}
    return value.get("--epochs", 1) * value.get("--iters", 1)


def _timings(folder: Path) -> dict:
    return load_json(folder / TIMINGS) if (folder / TIMINGS).is_file() else {}


def plan_table(stages: list[tuple], work: Path, records: Path) -> str:
    """What a run would do, without running it: each planned stage (``Experiment.stages``) done in ``work``,
    recorded only (in ``records``' timings: a rerun repeats it and replaces its record) or to run, with its
    expected minutes: its own recorded wall time, else its steps times the median seconds per step of the
    recorded stages of its kind (else of its verb: a translation's training from the seg trainings)."""
    timings, recorded = _timings(work), _timings(records)
    known = {**recorded, **timings}
    per_step: dict[tuple[str, ...], list[float]] = {}
    for name, entry in known.items():
        for kind in _kinds(name):
            per_step.setdefault(kind, []).append(entry["seconds"] / _steps(shlex.split(entry.get("command", ""))))
    lines = ["| stage | status | minutes |", "|---|---|---|"]
    todo, minutes, unknown = 0, 0.0, 0
    for name, _, done, argv, same_command in stages:
        if is_done(name, argv, done, timings, same_command):
            lines.append(f"| {name} | done | - |")
            continue
        todo += 1
        rates = next((per_step[k] for k in _kinds(name) if k in per_step), None)
        seconds = known[name]["seconds"] if name in known else (
            None if rates is None else statistics.median(rates) * _steps(argv))
        minutes += (seconds or 0) / 60
        unknown += seconds is None
        status = "to run (recorded: a rerun replaces the record)" if name in recorded else "to run"
        lines.append(f"| {name} | {status} | {'?' if seconds is None else f'{seconds / 60:.1f}'} |")
    lines.append(f"\n{todo} of {len(stages)} stages to run, about {minutes:.0f} min by the recorded wall times"
                 + (f" ({unknown} without one)" if unknown else "") + "; data preparation not counted.")
    return "\n".join(lines)


class StageFailed(RuntimeError):
    """A stage's command exited non-zero: an internal failure (its traceback is in the stage's log, whose last
    lines the message carries), not bad input, so it is not turned into a one-line error."""


class StageRunner:
    """``run(name, module_argv, done=..., results=...)``: ``python -m module ...`` with the work folder's
    PIRL_raw / PIRL_preprocessed and a chosen PIRL_results; its output goes to ``logs/NAME.txt``.

    A stage whose ``done`` file exists is skipped, so an interrupted run continues where it stopped.
    Wall times (with the command) accumulate in ``timings.json``.
    """

    def __init__(self, work: Path, total: int) -> None:
        self.work, self.total, self.count = work, total, 0
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings_file = work / TIMINGS
        self.timings: dict[str, dict] = _timings(work)

    def env(self, results: str) -> dict[str, str]:
        return {**os.environ, "PIRL_raw": str(self.work / "raw"), "PIRL_preprocessed": str(self.work / "preprocessed"),
                "PIRL_results": str(self.work / "results" / results), "PYTHONUNBUFFERED": "1"}

    def run(self, name: str, argv: list[str], done: Path, results: str = "shared", same_command: bool = False) -> None:
        """``same_command``: done only when ``done`` exists AND the stage last ran with this very command (a
        measurement whose inputs grew, e.g. more checkpoints, runs again; a training never does)."""
        self.count += 1
        head = f"[{self.count}/{self.total}] {name}"
        command = [sys.executable, "-m", *argv]
        shown = shown_command(argv)
        if is_done(name, argv, done, self.timings, same_command):
            print(f"{head}: done before ({done.relative_to(self.work)})", flush=True)
            return
        log_file = self.logs / f"{name.replace(' ', '_').replace('/', '-')}.txt"
        print(f"{head}: {shown}\n    log: {log_file}", flush=True)
        start = time.perf_counter()
        with open(log_file, "w") as out:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=self.env(results))
        seconds = time.perf_counter() - start
        if code != 0:
            tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
            raise StageFailed(f"experiment stage {name!r} failed (exit {code}); last lines of {log_file}:\n{tail}")
        self.timings[name] = {"seconds": round(seconds, 1), "command": shown, "results": results}
        # merged with the file: another experiments run may share the work folder
        on_disk = _timings(self.work)
        save_json({**on_disk, **self.timings}, self.timings_file)
        print(f"    finished in {seconds / 60:.1f} min", flush=True)
