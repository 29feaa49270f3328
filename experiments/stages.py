"""Runs the experiment's pirl commands as subprocesses: one log file each, timed, skipped when done."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pirl_pipeline.file_io import load_json, save_json

TIMINGS = "timings.json"  # in the work folder: each stage's wall time and command


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
        self.timings: dict[str, dict] = load_json(self.timings_file) if self.timings_file.is_file() else {}

    def env(self, results: str) -> dict[str, str]:
        return {**os.environ, "PIRL_raw": str(self.work / "raw"), "PIRL_preprocessed": str(self.work / "preprocessed"),
                "PIRL_results": str(self.work / "results" / results), "PYTHONUNBUFFERED": "1"}

    def run(self, name: str, argv: list[str], done: Path, results: str = "shared", same_command: bool = False) -> None:
        """``same_command``: done only when ``done`` exists AND the stage last ran with this very command (a
        measurement whose inputs grew, e.g. more checkpoints, runs again; a training never does)."""
        self.count += 1
        head = f"[{self.count}/{self.total}] {name}"
        command = [sys.executable, "-m", *argv]
        shown = shlex.join(["python", *command[1:]])  # as recorded in timings.json
        if done.exists() and (not same_command or self.timings.get(name, {}).get("command") == shown):
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
        on_disk = load_json(self.timings_file) if self.timings_file.is_file() else {}
        save_json({**on_disk, **self.timings}, self.timings_file)
        print(f"    finished in {seconds / 60:.1f} min", flush=True)
