"""Measuring a command: wall/CPU time, peak memory of its whole process tree (polled from /proc), its output
lines with timestamps (for per-phase times) and the load average around it."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _process_table().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory(pid: int, with_pss: bool = True) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process; (0, 0) when it is gone. ``with_pss=False``: RSS from statm for both
    (O(1); smaps_rollup walks every page of the process, tens of ms for a few GB, and holds its mmap lock)."""
    rss = pss = 0
    if not with_pss:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
        except OSError:
            pass
        return rss, rss
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = pss = int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return rss, pss


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


class TreeMemoryPoller(threading.Thread):
    """Samples the summed RSS and PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float, pss: bool = True):
        super().__init__(daemon=True)
        self.root, self.interval, self.pss = root, interval, pss
        self.peak_rss = self.peak_pss = self.max_processes = self.samples = 0
        self.largest = {"rss_mb": 0.0, "cmd": ""}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = _tree(self.root)
            usage = [_memory(p, self.pss) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(u[0] for u in usage))
            self.peak_pss = max(self.peak_pss, sum(u[1] for u in usage))
            self.max_processes = max(self.max_processes, len(pids))
            top = max(range(len(pids)), key=lambda i: usage[i][0])
            if usage[top][0] / 2**20 > self.largest["rss_mb"]:
                self.largest = {"rss_mb": usage[top][0] / 2**20, "cmd": _cmdline(pids[top])}
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class OutputRecorder(threading.Thread):
    """Copies a child's output to a log, each line prefixed by the seconds since start (phase timing)."""

    def __init__(self, fd: int, log, start: float):
        super().__init__(daemon=True)
        self.fd, self.log, self.t0 = fd, log, start
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        pending, began = b"", 0.0  # a line is stamped when its first byte arrived (tqdm ends lines late)
        while chunk := os.read(self.fd, 65536):
            now = time.perf_counter() - self.t0
            parts = chunk.replace(b"\r", b"\n").split(b"\n")
            for i, part in enumerate(parts):
                if not pending:
                    began = now
                pending += part
                if i < len(parts) - 1:
                    self._emit(began, pending)
                    pending = b""
        self._emit(began, pending)

    def _emit(self, stamp: float, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if line:
            self.lines.append((stamp, line))
            self.log.write(f"[{stamp:8.2f}] {line}\n")


def phases(lines: list[tuple[float, str]], markers: list[tuple[str, str]], total: float) -> dict[str, float]:
    """Seconds per phase: a phase starts at the first output line containing its marker text."""
    starts = [("startup (interpreter, imports, dataset listing)", 0.0)]
    for text, phase in markers:
        hit = next((t for t, line in lines if text in line), None)
        if hit is not None:
            starts.append((phase, hit))
    starts.sort(key=lambda x: x[1])
    ends = [t for _, t in starts[1:]] + [total]
    out: dict[str, float] = {}
    for (phase, t0), t1 in zip(starts, ends):
        out[phase] = out.get(phase, 0.0) + t1 - t0
    return out


def measure(cmd: list[str], env: dict, log_file: Path, interval: float, cwd: Path,
            markers: list[tuple[str, str]], pss: bool = True) -> dict:
    """Run ``cmd``; wall and CPU seconds, phase seconds, peak tree PSS/RSS, largest single-process RSS (MB)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        read_fd, write_fd = os.pipe()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd, stdout=write_fd,
                                stderr=write_fd)
        os.close(write_fd)
        recorder = OutputRecorder(read_fd, log, start)
        recorder.start()
        poller = TreeMemoryPoller(proc.pid, interval, pss)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        poller.stop()
        recorder.join(timeout=30)
        os.close(read_fd)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "phase_seconds": phases(recorder.lines, markers, wall),
            "peak_tree_pss_mb": poller.peak_pss / 2**20, "peak_tree_rss_mb": poller.peak_rss / 2**20,
            "peak_single_process_rss_mb": usage.ru_maxrss / 1024,
            "largest_process_seen": poller.largest, "max_processes": poller.max_processes,
            "memory_samples": poller.samples, "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0], "log": str(log_file)}


def tail(path: str, lines: int = 15) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ nnU-Net
