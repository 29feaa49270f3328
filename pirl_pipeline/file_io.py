"""Atomic, verified file writing: a hidden temp file beside the target is written, flushed to disk (fsync),
checked, and only then renamed over the target.

A crash never leaves a half-written file under the final name, and neither does a full disk (SimpleITK then
writes a stub without raising; the check catches it), so a resumed step can trust what exists. Every writer
goes through :func:`atomic_path`; a failure is one :class:`PirlWriteError` naming the target and the cause.
Temp names have one pattern, :func:`temp_name`: ``.tmp-`` + 8 hex digits + ``-`` + the target's name;
:func:`remove_stale` clears only names of that pattern an interrupted (kill -9) run left, never a user's own
``.tmp-notes``. JSON is read by :func:`loads` (duplicate keys and absurd nesting refused).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pirl_pipeline.errors import PirlWriteError

log = logging.getLogger("pirl")
TEMP_PREFIX = ".tmp-"
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
LOW_SPACE_BYTES = 1 << 20  # a failed check with less free space than this is reported as a full disk

Verify = Callable[[Path], "str | None"]  # the written temp file -> what is wrong with it, or None


def os_reason(err: OSError) -> str:
    """'no space left on device' for an OSError with an errno, else its text."""
    return os.strerror(err.errno).lower() if err.errno else str(err)


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p``; a failure (a file in the way, a full disk) is a PirlWriteError naming the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PirlWriteError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PirlWriteError(f"{folder}: cannot create the folder ({os_reason(err)})") from err
    return folder


def temp_name(name: str, prefix: str = TEMP_PREFIX) -> str:
    """``PREFIX`` + 8 hex digits + ``-`` + ``name``: the one pattern of pirl's temp names (see remove_stale)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}-{name}"


def _temp_pattern(prefixes: tuple[str, ...], target: str | None) -> re.Pattern:
    return re.compile(f"(?:{'|'.join(map(re.escape, prefixes))})[0-9a-f]{{8}}-"
                      + (re.escape(target) if target is not None else ".+"), re.DOTALL)


def _fsync(path: Path, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if not (folder and err.errno in (errno.EINVAL, errno.ENOTSUP)):  # some file systems refuse it for folders
            raise
    finally:
        os.close(fd)


def _failure(target: Path, problem: str) -> PirlWriteError:
    if problem != os.strerror(errno.ENOSPC).lower() and shutil.disk_usage(target.parent).free < LOW_SPACE_BYTES:
        problem = f"no space left on device ({problem})"
    return PirlWriteError(f"{target}: write failed: {problem}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, verify: Verify | None = None) -> Iterator[Path]:
    """Yield a temp path with the same suffix for the block to write; then fsync it, check it (not empty, and
    ``verify(tmp)`` finds nothing wrong) and rename it over ``path``. On any error the temp file is removed;
    an OSError or a failed check is a PirlWriteError naming ``path`` and the cause."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    if len(os.fsencode(tmp.name)) > NAME_MAX:
        raise PirlWriteError(f"{path}: file name too long ({len(os.fsencode(path.name))} bytes; pirl's temp name "
                             f"adds {len(tmp.name) - len(path.name)}, and a file name holds at most {NAME_MAX})")
    make_dirs(path.parent)
    try:
        yield tmp
        _fsync(tmp)
        problem = "empty file" if tmp.stat().st_size == 0 else None
        if problem is None and verify is not None:
            problem = verify(tmp)
        if problem:
            raise _failure(path, problem)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except OSError as err:
        raise _failure(path, os_reason(err)) from err
    finally:
        tmp.unlink(missing_ok=True)


def temp_entries(folder: str | os.PathLike, target: str | None = None, prefixes: tuple[str, ...] = (TEMP_PREFIX,)
                 ) -> list[Path]:
    """The entries of ``folder`` named by :func:`temp_name` with one of ``prefixes`` (of ``target`` only, when
    given), sorted; none when ``folder`` is not a folder."""
    pattern = _temp_pattern(prefixes, target)
    return sorted(p for p in Path(folder).iterdir() if pattern.fullmatch(p.name)) if Path(folder).is_dir() else []


def remove_stale(folder: str | os.PathLike, target: str | None = None, prefixes: tuple[str, ...] = (TEMP_PREFIX,)
                 ) -> int:
    """Delete the temp entries (files or folders) of ``folder`` an interrupted run left: names :func:`temp_name`
    built with one of ``prefixes`` (of ``target`` only, when given), nothing else; logs and returns how many.
    Call it before a run writes into ``folder``, never during one."""
    stale = temp_entries(folder, target, prefixes)
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if stale:
        log.info("%s: removed %d unfinished temp file(s) of an interrupted run (%s)", folder, len(stale),
                 stale[0].name)
    return len(stale)


def size_is(expected: int) -> Verify:
    """A check that the written file holds exactly ``expected`` bytes."""
    return lambda tmp: None if (n := tmp.stat().st_size) == expected else f"{n} of {expected} bytes written"


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode()


def save_json(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> None:
    data = json_bytes(obj, indent)
    with atomic_path(path, size_is(len(data))) as tmp:
        tmp.write_bytes(data)


class JsonStructureError(json.JSONDecodeError):
    """Valid JSON syntax that pirl refuses (a key twice in one object, nesting too deep); a JSONDecodeError, so
    every reader that reports invalid JSON reports it too."""

    def __init__(self, msg: str, doc: str = "", pos: int = 0) -> None:
        ValueError.__init__(self, msg)
        self.msg, self.doc, self.pos, self.lineno, self.colno = msg, doc, pos, 1, 1


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise JsonStructureError(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice in one object")
    return dict(pairs)


def loads(text: str) -> Any:
    """``json.loads`` that refuses a key given twice in one object (Python keeps the last one without a word)
    and nesting deeper than the interpreter's recursion limit (JsonStructureError)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JsonStructureError("nested too deeply") from None


def load_json(path: str | os.PathLike) -> Any:
    return loads(Path(path).read_text())


def _npy_problem(tmp: Path, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    try:
        stored = np.load(tmp, mmap_mode="r")
    except (ValueError, OSError) as err:
        return f"unreadable .npy ({err})"
    if stored.shape != shape or stored.dtype != dtype:
        return f"stored {stored.dtype}{stored.shape}, expected {dtype}{shape}"
    return None


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """``np.save``, verified by mapping the written file back (its header and full length)."""
    with atomic_path(path, lambda tmp: _npy_problem(tmp, array.shape, array.dtype)) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _npz_problem(tmp: Path, names: list[str]) -> str | None:
    try:
        with zipfile.ZipFile(tmp) as archive:
            bad = archive.testzip()
            stored = sorted(n.removesuffix(".npy") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        return f"damaged .npz ({err})"
    return f"damaged member {bad}" if bad else None if stored == sorted(names) else f"holds {stored}"


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed``, verified by testing every member's CRC in the written archive."""
    with atomic_path(path, lambda tmp: _npz_problem(tmp, list(arrays))) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
