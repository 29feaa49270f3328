"""One pirl run per output folder: ``FOLDER/.pirl-lock``, created with ``O_CREAT | O_EXCL`` and holding the pid,
host, command and start time of the run that writes there.

A second run on the folder is a PirlInputError naming the first; a lock whose pid is no longer running on this
host (a killed run) is taken over, with a log line. :func:`acquire` holds a lock until the enclosing
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
    a PirlInputError naming that run; a dead one's (same host) is taken over."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if lock in _held:
        return lock
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    make_dirs(folder)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
    for _ in range(3):  # a lock that vanishes or goes stale between the steps: try again
        if _create(lock, owner):
            _held[lock] = (os.getpid(), created)
            return lock
        text, other = _read(lock)
        if not text:
            continue
        stale = other.get("host") == socket.gethostname() and isinstance(other.get("pid"), int) \
            and not _alive(other["pid"])
        if not stale:
            hint = "" if other.get("host") == socket.gethostname() else f"; delete {lock} if that run is gone"
            raise PirlInputError(f"{folder}: another pirl run ({_describe(other)}) is using it{hint}")
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
