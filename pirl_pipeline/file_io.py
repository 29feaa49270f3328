"""Atomic file writing: write to a hidden temp file beside the target, then rename.

A crash never leaves a half-written file under the final name, so a resumed step can trust what exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path with the same suffix; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
