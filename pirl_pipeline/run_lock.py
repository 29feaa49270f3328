"""One pirl run per output folder: ``FOLDER/.pirl-lock``, created with ``O_CREAT | O_EXCL`` and holding the pid,
host, command and start time of the run that writes there.

A second run on the folder is a PirlInputError naming the first (and how to free the folder); a lock of this
host is stale, and taken over with a log line, when its pid is no longer running (a killed run) or, on Linux,
when that pid now belongs to another program (:func:`_reused`: its command line names neither pirl nor python,
or it started after the lock was written). :func:`acquire` holds a lock until the enclosing
:func:`scope` ends (``cli_entry`` opens one per command) or the process exits; a folder it had to create is
removed again when nothing else was written into it."""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pirl_pipeline.errors import PirlInputError
from pirl_pipeline.file_io import make_dirs, os_reason

log = logging.getLogger("pirl")
LOCK_NAME = ".pirl-lock"
_held: dict[Path, tuple[int, list[Path]]] = {}  # lock file -> (pid that took it, folders it created, deepest first)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _proc_start(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch (Linux: ``/proc/PID/stat`` field 22, clock ticks after
    boot, plus ``btime`` of ``/proc/stat``); None where unknown."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # fields 3.. after comm
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _locked_at(owner: dict) -> float | None:
    """When the lock was written (seconds since the epoch): ``time``, else ``since`` read as local time."""
    if isinstance(owner.get("time"), (int, float)):
        return float(owner["time"])
    try:
        return time.mktime(time.strptime(str(owner.get("since")), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _reused(pid: int, owner: dict) -> bool:
    """True when the live ``pid`` demonstrably is not the run that wrote the lock ``owner`` (Linux only, from
    /proc): its command line names neither pirl nor python, or it started after the lock was written (2 s
    slack: ``btime`` and ``since`` are whole seconds). False where /proc cannot tell (other systems)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").lower()
    except OSError:
        return False
    if "pirl" not in cmdline and "python" not in cmdline:
        return True
    started, locked = _proc_start(pid), _locked_at(owner)
    return started is not None and locked is not None and started > locked + 2


def _describe(owner: dict) -> str:
    host = owner.get("host")
    return (f"pid {owner.get('pid', '?')}" + (f" on {host}" if host and host != socket.gethostname() else "")
            + f", command {owner.get('command', '?')}, since {owner.get('since', '?')}")


def _create(lock: Path, owner: dict) -> bool:
    """Create ``lock`` holding ``owner``; False when it exists."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise PirlInputError(f"{lock}: cannot create the run lock ({os_reason(err)})") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
    except OSError:  # a full disk: the empty lock still excludes (as a run unknown), the run's writes report the disk
        pass
    return True


def _read(lock: Path) -> tuple[str, dict]:
    try:
        text = lock.read_text()
        owner = json.loads(text)
    except FileNotFoundError:
        return "", {}
    except (OSError, ValueError):  # being written, or damaged: treated as held
        return "?", {}
    return text, owner if isinstance(owner, dict) else {}


def acquire(folder: str | os.PathLike, command: str | None = None) -> Path:
    """Lock ``folder`` (created when missing) for this process; returns the lock file. Another live run's lock is
    a PirlInputError naming that run; a stale one's (same host: its run is gone, see :func:`_reused`) is taken
    over."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if lock in _held:
        return lock
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    make_dirs(folder)
    now = time.time()
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "time": now,
             "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
    for _ in range(3):  # a lock that vanishes or goes stale between the steps: try again
        if _create(lock, owner):
            _held[lock] = (os.getpid(), created)
            return lock
        text, other = _read(lock)
        if not text:
            continue
        pid = other.get("pid")
        stale = other.get("host") == socket.gethostname() and isinstance(pid, int) \
            and (not _alive(pid) or _reused(pid, other))
        if not stale:
            raise PirlInputError(f"{folder}: another pirl run ({_describe(other)}) is using it; delete {lock} if "
                                 "that run is gone")
        claimed = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(lock, claimed)  # atomic: of two runs taking over, one moves the stale lock
            if claimed.read_text() != text:  # a live lock was taken in between: give it back, try again
                os.replace(claimed, lock)
                continue
            claimed.unlink()
            log.warning("%s: taking over the lock of a run that is no longer running (%s)", folder, _describe(other))
    raise PirlInputError(f"{lock}: cannot take the run lock (it keeps changing; is another run starting?)")


def release(lock: Path) -> None:
    """Remove a lock this process holds, and the folders :func:`acquire` created while they are empty."""
    pid, created = _held.pop(lock, (None, []))
    if pid != os.getpid():  # a forked child never releases its parent's locks
        return
    lock.unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote something
            break


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Release the locks acquired inside the block when it ends."""
    before = set(_held)
    try:
        yield
    finally:
        for lock in [lk for lk in _held if lk not in before]:
            release(lock)


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        release(lock)
